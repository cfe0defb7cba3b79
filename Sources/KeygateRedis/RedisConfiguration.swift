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

    public var endpoint: Endpoint = .tcp(host: "127.0.0.1", port: 6379)
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

    /// Parses `redis://[user:pass@]host[:port][/db]`, `rediss://...[?ca_file=PATH]` and
    /// `unix:///path[?db=N&password=P&user=U]`.
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
        switch endpoint {
        case .tcp(let host, let port):
            return "\(tls == nil ? "redis" : "rediss")://\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database)"
        case .unix(let path):
            return "unix://\(path)?db=\(database)"
        }
    }
}
