public import Logging
public import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// A Redis client that owns one connection per event loop of its group.
///
/// A caller already on event loop L (the data plane's channel handlers) sends on L's connection with no
/// thread hop: `send(_:on:)`. Async callers use any healthy connection. Connections reconnect by
/// themselves; during a long outage commands fail fast with `RedisError.Code.circuitOpen`.
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    /// Where the master is and whether it changed; shared with the subscriber that goes with this client.
    public let topology: RedisTopology
    public let metrics = RedisClientMetrics()
    private let slots: [RedisConnectionSlot]
    private let slotByLoop: [ObjectIdentifier: RedisConnectionSlot]
    /// Set on a Redis Cluster: routes every command to its slot's primary (`slots` is then empty).
    private let router: RedisClusterRouter?
    private let loops: [any EventLoop]
    private let nextSlot = Atomic<UInt>(0)
    private let logger: Logger

    /// - Parameter sharingTopologyWith: another client to the same Redis whose master discovery and
    ///   master changes this one follows (a node's second client, for work that must not queue
    ///   behind the data plane's lookups).
    /// - Throws: `RedisError` when the TLS settings cannot be loaded.
    public init(configuration: RedisConfiguration, eventLoopGroup: any EventLoopGroup, logger: Logger = Logger(label: "keygate.redis"),
                sharingTopologyWith other: RedisClient? = nil) throws(RedisError) {
        self.configuration = configuration
        self.logger = logger
        let tls = try RedisConnection.makeTLSContext(configuration)
        let topology = other?.topology ?? RedisTopology(configuration: configuration, tlsContext: tls)
        self.topology = topology
        let loops = Array(eventLoopGroup.makeIterator())
        self.loops = loops
        var slots: [RedisConnectionSlot] = []
        var byLoop: [ObjectIdentifier: RedisConnectionSlot] = [:]
        if configuration.cluster != nil {
            let metrics = self.metrics
            let router = RedisClusterRouter(configuration: configuration, tlsContext: tls, loops: loops, metrics: metrics,
                                            watchedKey: { topology.clusterSubscriberKey },
                                            onPrimariesChanged: { topology.clusterPrimariesChanged() })
            self.router = router
            topology.setClusterLocator { loop in
                router.primaryEndpoint(forKey: topology.clusterSubscriberKey, on: loop)
            }
            self.slots = []
            self.slotByLoop = [:]
            return
        }
        self.router = nil
        let circuit = RedisCircuit(failFastAfter: configuration.failFastAfter)
        for loop in loops {
            let slot = RedisConnectionSlot(eventLoop: loop, configuration: configuration, topology: topology,
                                           circuit: circuit, metrics: metrics)
            slots.append(slot)
            byLoop[ObjectIdentifier(loop)] = slot
        }
        self.slots = slots
        self.slotByLoop = byLoop
        let allSlots = slots
        circuit.onRecovery { for slot in allSlots { slot.reconnectNow() } }
        topology.onMasterChange { generation in for slot in allSlots { slot.dropConnection(olderThan: generation) } }
        topology.onSwitch { for slot in allSlots { slot.reconnectToNewMaster() } }
    }

    /// Sends a command on `eventLoop`'s own connection. Call it on that loop for the no-hop path;
    /// from elsewhere it hops. An error reply fails with `.serverError`.
    public func send(_ command: RedisCommand, on eventLoop: any EventLoop) -> EventLoopFuture<RESPValue> {
        if let router { return router.send(command, on: eventLoop) }
        let slot = slotByLoop[ObjectIdentifier(eventLoop)] ?? anySlot()
        if slot.eventLoop.inEventLoop { return slot.send(command) }
        return slot.eventLoop.flatSubmit { slot.send(command) }
    }

    /// Sends a command on any healthy connection.
    public func send(_ command: RedisCommand) async throws -> RESPValue {
        try refuseCrossSlot([command])
        if let router { return try await router.send(command, on: routerLoop()).get() }
        let slot = currentLoopSlot() ?? anySlot()
        if slot.eventLoop.inEventLoop { return try await slot.send(command).get() }
        return try await slot.eventLoop.flatSubmit { slot.send(command) }.get()
    }

    /// Sends commands as one pipeline (one flush); returns one reply per command, error replies as values.
    public func pipeline(_ commands: [RedisCommand]) async throws -> [RESPValue] {
        try refuseCrossSlot(commands)
        if let router { return try await router.pipeline(commands, on: routerLoop()).get() }
        let slot = currentLoopSlot() ?? anySlot()
        if slot.eventLoop.inEventLoop { return try await slot.pipeline(commands).get() }
        return try await slot.eventLoop.flatSubmit { slot.pipeline(commands) }.get()
    }

    /// Runs a Lua script with `EVALSHA`, loading it first if Redis answers `NOSCRIPT`.
    public func evalSHA(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument]) async throws -> RESPValue {
        do {
            return try await send(Self.evalSHACommand(script, keys: keys, arguments: arguments))
        } catch let error as RedisError where error.code == .serverError && error.message.hasPrefix("NOSCRIPT") {
            try await load(script)
            return try await send(Self.evalSHACommand(script, keys: keys, arguments: arguments))
        }
    }

    /// Several `EVALSHA`s and then `followers` on one connection, as one pipeline: `WAIT` after a
    /// write must run on the connection that wrote. A script Redis does not know (`NOSCRIPT`) is
    /// loaded and only the calls that were refused are sent again (with the followers), so no script
    /// runs twice. Returns one reply per call, then one per follower; error replies are values.
    public func evalSHA(_ calls: [(script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument])],
                        followedBy followers: [RedisCommand]) async throws -> [RESPValue] {
        var replies = try await pipeline(calls.map { Self.evalSHACommand($0.script, keys: $0.keys, arguments: $0.arguments) } + followers)
        let refused = calls.indices.filter { if case .error(let message) = replies[$0] { return message.hasPrefix("NOSCRIPT") } else { return false } }
        guard !refused.isEmpty else { return replies }
        for script in Set(refused.map { calls[$0].script }) { try await load(script) }
        let again = try await pipeline(refused.map { Self.evalSHACommand(calls[$0].script, keys: calls[$0].keys, arguments: calls[$0].arguments) } + followers)
        for (position, index) in refused.enumerated() { replies[index] = again[position] }
        for position in followers.indices { replies[calls.count + position] = again[refused.count + position] }
        return replies
    }

    /// `evalSHA` on `eventLoop`'s own connection, for callers on the event loop.
    public func evalSHA(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument], on eventLoop: any EventLoop) -> EventLoopFuture<RESPValue> {
        let command = Self.evalSHACommand(script, keys: keys, arguments: arguments)
        return send(command, on: eventLoop).flatMapError { error in
            guard let redisError = error as? RedisError, redisError.code == .serverError,
                  redisError.message.hasPrefix("NOSCRIPT") else {
                return eventLoop.makeFailedFuture(error)
            }
            let load = RedisCommand("SCRIPT", ["LOAD", .string(script.source)])
            let loaded = self.router.map { $0.broadcast(load, on: eventLoop).map { _ in RESPValue.null } } ?? self.send(load, on: eventLoop)
            return loaded.flatMap { _ in self.send(command, on: eventLoop) }
        }
    }

    /// Every key matching `pattern` (a `SCAN MATCH` walk): on the server, or on each primary of a
    /// Cluster in turn. For rare administrative passes (an index backfill), never a request path.
    public func scanKeys(matching pattern: String) async throws -> [String] {
        guard let router else { return try await Self.scan(pattern) { try await self.send($0) } }
        let loop = routerLoop()
        var keys: [String] = []
        for primary in try await router.primaries(on: loop).get() {
            keys += try await Self.scan(pattern) { try await router.send($0, toPrimary: primary, on: loop).get() }
        }
        return keys
    }

    private static func scan(_ pattern: String, _ send: (RedisCommand) async throws -> RESPValue) async throws -> [String] {
        var cursor = "0"
        var keys: [String] = []
        repeat {
            let reply = try await send(RedisCommand("SCAN", [.string(cursor), "MATCH", .string(pattern), "COUNT", 1000]))
            guard let parts = reply.array, parts.count == 2, let next = parts[0].string, let found = parts[1].array else {
                throw RedisError(.protocolError, "unexpected reply to SCAN")
            }
            keys += found.compactMap(\.string)
            cursor = next
        } while cursor != "0"
        return keys
    }

    /// Loads a script where `EVALSHA` will look for it: the server, or every primary of a Cluster.
    private func load(_ script: RedisScript) async throws {
        let command = RedisCommand("SCRIPT", ["LOAD", .string(script.source)])
        if let router { _ = try await router.broadcast(command, on: routerLoop()).get() } else { _ = try await send(command) }
    }

    /// The loop an async caller's cluster command runs on: the caller's own, when it is one of ours.
    private func routerLoop() -> any EventLoop {
        if let current = MultiThreadedEventLoopGroup.currentEventLoop, loops.contains(where: { $0 === current }) { return current }
        return loops[Int(nextSlot.wrappingAdd(1, ordering: .relaxed).oldValue % UInt(loops.count))]
    }

    /// Which keys one script may touch together: keys with the same group run on one server in one
    /// script. A standalone or Sentinel-managed Redis is one server (every key is in group 0); a
    /// Cluster's group (and with `enforcesClusterSlots`, a single server's) is the key's hash slot.
    public func scriptGroup(forKey key: String) -> Int {
        configuration.usesClusterSlots ? HashSlot.of(key) : 0
    }

    /// One key per Redis primary among `keys`: a single key unless on a Cluster, where the current slot
    /// map groups them. Writes to several primaries need a `WAIT` on each.
    public func primaryRepresentatives(of keys: [String]) -> [String] {
        router?.primaryRepresentatives(of: keys) ?? Array(keys.prefix(1))
    }

    /// Multi-key commands whose keys are in different slots fail here when slots matter (a Cluster,
    /// or `enforcesClusterSlots`); the data plane's single-key lookups never need the check.
    func refuseCrossSlot(_ commands: [RedisCommand]) throws(RedisError) {
        guard configuration.usesClusterSlots else { return }
        for command in commands where command.hasSeveralKeys && command.routing == .crossSlot {
            throw RedisError(.crossSlot, "the keys of \(command.name) are in different Cluster slots")
        }
    }

    static func evalSHACommand(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument]) -> RedisCommand {
        RedisCommand("EVALSHA", [.string(script.sha1), .integer(Int64(keys.count))] + keys + arguments)
    }

    /// Opens every loop's connection now, so the first requests do not pay for it.
    /// - Throws: the first connection error.
    public func connect() async throws {
        if let router {
            router.start()
            try await router.connectAll()
            return
        }
        for slot in slots {
            let patience = configuration.connectTimeout
            _ = try await slot.eventLoop.flatSubmit { slot.connection(patience: patience) }.get()
        }
    }

    /// Why the connections are down (the last connect error), or nil while one is up.
    public var unavailableReason: String? {
        if let router { return router.unavailableReason }
        guard !isConnected else { return nil }
        return slots.lazy.compactMap { $0.lastError.withLock { $0 } }.first ?? "not connected yet"
    }

    /// True when at least one connection is up.
    public var isConnected: Bool {
        if let router { return router.isHealthy }
        return slots.contains { $0.isHealthy.load(ordering: .relaxed) }
    }

    /// A Cluster's slot map as last fetched (nil on other topologies, or before the first).
    public var clusterSlotMap: ClusterSlotMap? { router?.slotMap }

    /// Closes every connection and stops reconnecting; later commands fail with `.cancelled`.
    public func shutdown() async {
        await router?.shutdown()
        for slot in slots { try? await slot.shutdown().get() }
    }

    /// The slot of the event loop this code runs on, when Swift concurrency runs on NIO's loops
    /// (an event loop as task executor): then an async caller needs no thread hop either.
    private func currentLoopSlot() -> RedisConnectionSlot? {
        guard let current = MultiThreadedEventLoopGroup.currentEventLoop else { return nil }
        let slot = slotByLoop[ObjectIdentifier(current)]
        return slot?.isHealthy.load(ordering: .relaxed) == true ? slot : nil
    }

    /// Round robin, preferring a slot whose connection is up.
    private func anySlot() -> RedisConnectionSlot {
        let start = Int(nextSlot.wrappingAdd(1, ordering: .relaxed).oldValue % UInt(slots.count))
        for offset in 0..<slots.count {
            let slot = slots[(start + offset) % slots.count]
            if slot.isHealthy.load(ordering: .relaxed) { return slot }
        }
        return slots[start]
    }
}
