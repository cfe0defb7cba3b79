public import KeygateCore

/// Gateway mode (`keygate serve --upstream http://host:port`): the data plane checks the key of every
/// request that is not one of Keygate's own paths and forwards it to an upstream server, instead of
/// answering a proxy's `auth_request`. Off while `upstreams` is empty.
public struct GatewaySettings: Sendable, Equatable {
    public var upstreams: [Upstream] = []
    /// Scopes required per path prefix (and method); see `GatewayRoute`.
    public var routes: [GatewayRoute] = []
    /// Connecting to an upstream server; past it the server is skipped for `downFor` and the next is tried.
    public var connectTimeout: Duration = .seconds(2)
    /// From the request sent to the response's head; past it the client gets 504.
    public var responseTimeout: Duration = .seconds(30)
    /// How long a server that refused a connection or timed out is skipped (passive health).
    public var downFor: Duration = .seconds(5)
    /// Request bodies forwarded in gateway mode (Content-Length), in bytes; more gets 413.
    public var maxBodyBytes = 1024 * 1024
    /// Idle keep-alive connections kept per upstream server and event loop.
    public var maxIdlePerUpstream = 64

    public init() {}

    public var isEnabled: Bool { !upstreams.isEmpty }

    /// One upstream server, `http://host:port` (plain HTTP/1.1; TLS to the upstream is not built).
    public struct Upstream: Sendable, Equatable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// `http://host[:port][/]`: no path, query, user or `https` (said plainly rather than ignored).
        public init(parsing text: String) throws(KeygateError) {
            let invalid = KeygateError(.invalidConfiguration, "an upstream is http://host:port, got '\(DisplayText.escaped(text))'",
                                       field: "upstream")
            guard text.lowercased().hasPrefix("http://") else {
                throw text.lowercased().hasPrefix("https://")
                    ? KeygateError(.invalidConfiguration, "TLS to the upstream is not supported yet: use http://", field: "upstream")
                    : invalid
            }
            var rest = Substring(text.dropFirst("http://".count))
            if rest.hasSuffix("/") { rest = rest.dropLast() }
            guard !rest.isEmpty, !rest.contains(where: { "/?#@ ".contains($0) }) else { throw invalid }
            var host = rest, port = 80
            if rest.hasPrefix("[") { // [IPv6]:port
                guard let close = rest.firstIndex(of: "]") else { throw invalid }
                host = rest[rest.index(after: rest.startIndex)..<close]
                let after = rest[rest.index(after: close)...]
                if !after.isEmpty {
                    guard after.hasPrefix(":"), let parsed = Int(after.dropFirst()) else { throw invalid }
                    port = parsed
                }
            } else if let colon = rest.lastIndex(of: ":") {
                guard let parsed = Int(rest[rest.index(after: colon)...]) else { throw invalid }
                host = rest[..<colon]
                port = parsed
            }
            guard !host.isEmpty, (1...65_535).contains(port) else { throw invalid }
            self.init(host: String(host), port: port)
        }

        public var description: String { host.contains(":") ? "http://[\(host)]:\(port)" : "http://\(host):\(port)" }
    }
}
