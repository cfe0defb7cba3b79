/// Which primary serves each of the 16,384 slots, as `CLUSTER SLOTS` reported it.
public struct ClusterSlotMap: Sendable, Equatable {
    public struct Primary: Sendable, Equatable, Hashable {
        public var host: String
        public var port: Int
        /// The node's id in the cluster (40 hex characters).
        public var id: String
        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    public private(set) var primaries: [Primary]
    /// Index into `primaries` per slot; `unassigned` where no primary serves it.
    private var owners: [UInt16]
    private static let unassigned = UInt16.max

    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...], replica...], ...]`. An
    /// empty host means the node that answered (`answeredBy`).
    public init?(clusterSlots reply: RESPValue, answeredBy host: String) {
        guard let ranges = reply.array else { return nil }
        var primaries: [Primary] = []
        var owners = [UInt16](repeating: Self.unassigned, count: HashSlot.count)
        for range in ranges {
            guard let parts = range.array, parts.count >= 3, let start = parts[0].int, let end = parts[1].int,
                  0 <= start, start <= end, end < HashSlot.count,
                  let node = parts[2].array, node.count >= 2, let nodeHost = node[0].string, let port = node[1].int,
                  (1...65_535).contains(port) else { return nil }
            let primary = Primary(host: nodeHost.isEmpty ? host : nodeHost, port: Int(port),
                                  id: node.count > 2 ? node[2].string ?? "" : "")
            let index: Int
            if let known = primaries.firstIndex(of: primary) { index = known } else { primaries.append(primary); index = primaries.count - 1 }
            for slot in Int(start)...Int(end) { owners[slot] = UInt16(index) }
        }
        guard !primaries.isEmpty else { return nil }
        self.primaries = primaries
        self.owners = owners
    }

    /// The primary serving `slot`, nil when none does.
    public func primary(forSlot slot: Int) -> Primary? {
        let owner = owners[slot]
        return owner == Self.unassigned ? nil : primaries[Int(owner)]
    }

    /// The index in `primaries` of the primary serving `slot`, nil when none does.
    public func primaryIndex(forSlot slot: Int) -> Int? {
        let owner = owners[slot]
        return owner == Self.unassigned ? nil : Int(owner)
    }

    /// Slots some primary serves (16,384 when the cluster covers every slot).
    public var coveredSlots: Int { owners.reduce(0) { $0 + ($1 == Self.unassigned ? 0 : 1) } }

    /// The map after a `MOVED`: `slot` is served by `host:port` now (a primary not known yet is
    /// added without an id until the next refresh).
    public func moving(slot: Int, toHost host: String, port: Int) -> ClusterSlotMap {
        var copy = self
        let index: Int
        if let known = primaries.firstIndex(where: { $0.host == host && $0.port == port }) {
            index = known
        } else {
            copy.primaries.append(Primary(host: host, port: port, id: ""))
            index = copy.primaries.count - 1
        }
        copy.owners[slot] = UInt16(index)
        return copy
    }

    /// The primaries' node ids: a different set after a refresh means a failover (a replica took
    /// over) or a primary added or removed, not merely slots moved between the same primaries. A
    /// primary learnt from a `MOVED` has no id yet and does not count: the refresh that follows
    /// names it, and comparing its empty id would report a change that did not happen.
    public var primaryIDs: Set<String> { Set(primaries.map(\.id).filter { !$0.isEmpty }) }
}
