/// A Redis Cluster redirection error reply: `MOVED <slot> <host>:<port>` (the slot lives elsewhere
/// now: update the map) or `ASK <slot> <host>:<port>` (the slot is being migrated: ask that node
/// once, after `ASKING`, and leave the map as it is).
public struct ClusterRedirect: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case moved, ask }

    public let kind: Kind
    public let slot: Int
    /// Empty when the server announced no host (`MOVED 3999 :6381`): the host of the node that
    /// answered, per the specification.
    public let host: String
    public let port: Int

    public init(kind: Kind, slot: Int, host: String, port: Int) {
        self.kind = kind; self.slot = slot; self.host = host; self.port = port
    }

    /// Parses an error reply's text; nil when it is not a well-formed redirect.
    public init?(errorMessage: String) {
        let parts = errorMessage.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        switch parts[0] {
        case "MOVED": kind = .moved
        case "ASK": kind = .ask
        default: return nil
        }
        guard let slot = Int(parts[1]), (0..<HashSlot.count).contains(slot) else { return nil }
        // The port follows the last colon, so an IPv6 address (`::1:7000`) keeps its own colons.
        let endpoint = parts[2]
        guard let colon = endpoint.lastIndex(of: ":"), let port = Int(endpoint[endpoint.index(after: colon)...]),
              (1...65_535).contains(port) else { return nil }
        let host = endpoint[..<colon]
        // `?` is "unknown endpoint" (cluster-preferred-endpoint-type unknown-endpoint): no address to follow.
        guard host != "?" else { return nil }
        self.slot = slot
        self.host = String(host.hasPrefix("[") && host.hasSuffix("]") ? host.dropFirst().dropLast() : host)
        self.port = port
    }
}
