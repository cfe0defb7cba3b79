import Foundation
/// How to reach Redis and how patient to be with it. Every field has a default.
public struct RedisConfiguration: Sendable, Equatable {
    /// Where Redis listens.
    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    /// TLS settings for `rediss://` (swift-nio-ssl; hiredis 0.14 has no TLS).
    public struct TLS: Sendable, Equatable {
        /// PEM file with the CA certificates to trust; nil trusts the system store.
        public var caFile: String?
        /// Name to verify in the server certificate; defaults to the URL host.
        public var serverName: String?
        public init(caFile: String? = nil, serverName: String? = nil) {
            self.caFile = caFile
            self.serverName = serverName
        }
    }

    /// Sentinels that know where the master is, and the master's name among them.
    public struct Sentinel: Sendable, Equatable {
        public struct Address: Sendable, Equatable, CustomStringConvertible {
            public var host: String
            public var port: Int
            public init(host: String, port: Int) { self.host = host; self.port = port }
            public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
        }
        public var addresses: [Address]
        public var masterName: String
        /// The Sentinels' own credentials (`sentinel_user`, `sentinel_password`); the URL's
        /// credentials are the master's.
        public var username: String?
        public var password: String?
        public init(addresses: [Address], masterName: String, username: String? = nil, password: String? = nil) {
            self.addresses = addresses; self.masterName = masterName
            self.username = username; self.password = password
        }
    }

    /// A Redis Cluster: the client learns the slot map from these seeds (any nodes of the cluster)
    /// and then talks to every primary.
    public struct Cluster: Sendable, Equatable {
        public var seeds: [Sentinel.Address]
        public init(seeds: [Sentinel.Address]) { self.seeds = seeds }
    }

    /// Where Redis listens. With `sentinel` set, the master's address is asked of the Sentinels
    /// before every connect and this field is not dialled; with `cluster`, it is the first seed.
    public var endpoint: Endpoint = .tcp(host: "127.0.0.1", port: 6379)
    public var sentinel: Sentinel?
    public var cluster: Cluster?
    public var tls: TLS?
    /// ACL user; nil means `AUTH <password>` (the default user).
    public var username: String?
    public var password: String?
    /// `SELECT` target; pub/sub ignores it, so channel names carry the namespace instead.
    public var database: Int = 0
    /// `CLIENT SETNAME`, so operators can find (and tests can kill) a connection by role.
    public var clientName: String?
    /// Check with `ROLE` in every connection's handshake that the server is a master, and refuse it
    /// otherwise (`notWritableMaster`): a replica may miss a revoke or lag behind one, and refuses
    /// writes. On by default; a Sentinel connection (not a data server) turns it off.
    public var requiresMaster = true

    /// Apply Redis Cluster's one-slot rule on a single server too: a multi-key command or script
    /// whose keys are in different slots is refused (`crossSlot`), and `scriptGroup` splits by slot.
    /// A single server does not need it (one script may touch any keys there); the test suite turns
    /// it on (`KEYGATE_REDIS_CLUSTER_SLOTS=1`), so a change that would fail on a Cluster fails there.
    public var enforcesClusterSlots = RedisConfiguration.clusterSlotsFromEnvironment
    /// Slot rules apply: a Cluster, or `enforcesClusterSlots`.
    public var usesClusterSlots: Bool { cluster != nil || enforcesClusterSlots }

    static let clusterSlotsFromEnvironment = ProcessInfo.processInfo.environment["KEYGATE_REDIS_CLUSTER_SLOTS"] == "1"

    /// `WAIT` after every mutation for this many replicas; nil picks the topology's default (1 with
    /// Sentinel, where a failover is expected; 0 for a single server, where `WAIT` would only fail).
    public var waitReplicas: Int?
    /// How long `WAIT` may block for them.
    public var waitTimeout: Duration = .milliseconds(200)
    public var effectiveWaitReplicas: Int { waitReplicas ?? (sentinel == nil && cluster == nil ? 0 : 1) }

    /// `WAIT` must fit inside the command deadline of the pipeline that carries it.
    public func validateWait() throws(RedisError) {
        if let waitReplicas, !(0...100).contains(waitReplicas) {
            throw RedisError(.invalidURL, "--redis-wait-replicas must be 0-100, got \(waitReplicas)")
        }
        guard waitTimeout > .zero, waitTimeout < commandTimeout else {
            throw RedisError(.invalidURL, "--redis-wait-timeout must be above 0 and below the Redis command timeout (\(commandTimeout))")
        }
    }

    /// Deadline for TCP/TLS connect plus the pipelined handshake.
    public var connectTimeout: Duration = .seconds(2)
    /// Deadline for every command; on expiry the connection is dropped (its reader state is unknown).
    public var commandTimeout: Duration = .milliseconds(500)
    /// Arrays in replies longer than this are a protocol error (hiredis would reserve memory blindly).
    public var maxArrayElements: Int = 65_536
    /// A reply that needs more bytes than this before it completes is a protocol error.
    public var maxReplyBytes: Int = 8 * 1024 * 1024

    /// Reconnect backoff: first delay, doubled per failure up to `reconnectMaxDelay`, with full jitter.
    public var reconnectInitialDelay: Duration = .milliseconds(50)
    public var reconnectMaxDelay: Duration = .seconds(2)
    /// After this long without a working connection, commands fail at once with `circuitOpen`
    /// instead of waiting for a reconnect.
    public var failFastAfter: Duration = .seconds(1)

    public init() {}

    /// Parses `redis://[user:pass@]host[:port][/db]`, `rediss://...[?ca_file=PATH]`,
    /// `redis-sentinel://[user:pass@]host1[:port1][,host2...][/db][?sentinel_user=U&sentinel_password=P]#master`
    /// (and `rediss-sentinel://`), and `unix:///path[?db=N&password=P&user=U]`.
    public init(url: String) throws(RedisError) {
        self = try RedisURLParser.parse(url)
    }

    /// Same as this configuration with `clientName` replaced.
    public func named(_ name: String) -> RedisConfiguration {
        var copy = self
        copy.clientName = name
        return copy
    }

    /// The target as `host:port` or the socket path, without credentials: safe to log.
    public var redactedTarget: String {
        if let cluster {
            return "\(tls == nil ? "redis" : "rediss")-cluster://" + cluster.seeds.map(\.description).joined(separator: ",")
        }
        if let sentinel {
            let hosts = sentinel.addresses.map(\.description).joined(separator: ",")
            return "\(tls == nil ? "redis" : "rediss")-sentinel://\(hosts)/\(database)#\(sentinel.masterName)"
        }
        return endpointDescription
    }

    /// The endpoint alone (for a Sentinel topology: the master it resolved to), without credentials.
    public var endpointDescription: String {
        switch endpoint {
        case .tcp(let host, let port):
            return "\(tls == nil ? "redis" : "rediss")://\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database)"
        case .unix(let path):
            return "unix://\(path)?db=\(database)"
        }
    }
}
