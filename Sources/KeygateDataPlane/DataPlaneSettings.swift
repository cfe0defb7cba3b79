/// Settings of the data plane (port 8080). Every field has a default; `keygate serve` maps flags and
/// `KEYGATE_*` variables onto them.
public struct DataPlaneSettings: Sendable, Equatable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// Header names that may carry the key, compared case-insensitively.
    public var keyHeaders: [String] = ["X-API-Key"]
    /// Also accept `Authorization: Bearer <key>`.
    public var acceptBearer = false
    /// `/v1/verify` reports MALFORMED / NOT_FOUND / REVOKED / EXPIRED / DISABLED instead of INVALID.
    /// Detailed codes help a trusted backend and are an oracle for anyone else: off by default.
    public var detailedVerifyCodes = false
    /// Request line plus headers, in bytes; more gets 431.
    public var maxHeaderBytes = 8 * 1024
    /// Request body, in bytes (only `/v1/verify` reads one); more gets 413.
    public var maxBodyBytes = 4 * 1024
    /// A connection with no request activity for this long is closed.
    public var idleTimeout: Duration = .seconds(60)
    /// A request's head and body must arrive within this long of its first byte (408 and close
    /// otherwise): the header timeout and minimum-progress rule against slow clients. Zero turns it off.
    public var requestTimeout: Duration = .seconds(5)
    /// Open connections at most; more are closed on accept.
    public var maxConnections = 10_000
    /// Requests read ahead on one connection while an earlier one waits for Redis.
    public var maxPipelinedRequests = 32
    /// Seconds suggested in `Retry-After` with a 503.
    public var retryAfterSeconds = 1
    /// Failed verifications per client address within `failureWindow` before 429; 0 (the default)
    /// turns the limiter off. Off by default because behind a proxy every request comes from the
    /// proxy's address: enable it together with `trustedProxies` (the proxy must set
    /// X-Forwarded-For), or when clients connect directly.
    public var failureLimit = 0
    public var failureWindow: Duration = .seconds(10)
    /// Proxies whose `X-Forwarded-For` names the client (for the failure limiter); none by default.
    public var trustedProxies: [CIDR] = []
    /// Gateway mode: forward verified requests to upstream servers (off without any).
    public var gateway = GatewaySettings()

    public init() {}
}
