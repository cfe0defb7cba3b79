import Foundation
import KeygateCore
import KeygateDataPlane
import KeygateNode
import KeygateTestSupport
import NIOPosix
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Gateway mode (`--upstream`): a real node and Redis in front of a real upstream server
/// (`TestUpstream`), through real sockets. Serialized: each test starts a node and a server.
@Suite(.serialized) struct GatewayTests {
    static func withGateway(upstreams: [String]? = nil, configure: @escaping (inout NodeConfiguration) -> Void = { _ in },
                            _ body: (TestNode, TestUpstream, KeyStore) async throws -> Void) async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("gw")
        let upstream = try await TestUpstream.start()
        do {
            try await TestNode.with(redisURL: url, namespace: ns, configure: { configuration in
                configuration.dataPlane.gateway.upstreams = (upstreams ?? [upstream.url]).map { try! GatewaySettings.Upstream(parsing: $0) }
                configure(&configuration)
            }) { node in
                try await body(node, upstream, node.node.store)
            }
        } catch {
            await upstream.stop()
            throw error
        }
        await upstream.stop()
    }

    static func request(_ target: String, key: String?, headers: [String] = [], port: Int) async throws -> RawHTTP.Response {
        try await request("GET", target, key: key, headers: headers, port: port)
    }

    static func request(_ method: String, _ target: String, key: String?, headers: [String] = [], body: String? = nil,
                        port: Int) async throws -> RawHTTP.Response {
        var text = "\(method) \(target) HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n"
        if let key { text += "X-API-Key: \(key)\r\n" }
        for header in headers { text += header + "\r\n" }
        if let body { text += "Content-Length: \(body.utf8.count)\r\n\r\n\(body)" } else { text += "\r\n" }
        return try await RawHTTP.send(text, port: port)
    }

    /// The upstream's echo: the request as it arrived there.
    struct Echo {
        var method: String, uri: String, body: String
        var headers: [(String, String)]
        func all(_ name: String) -> [String] { headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1) }

        init(_ response: RawHTTP.Response) throws {
            let json = try #require(try JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any], "\(response.raw)")
            method = json["method"] as? String ?? ""
            uri = json["uri"] as? String ?? ""
            body = json["body"] as? String ?? ""
            headers = (json["headers"] as? [[String]] ?? []).map { ($0[0], $0[1]) }
        }
    }

    @Test func theUpstreamGetsKeygatesIdentityAndNeverTheKey() async throws {
        try await Self.withGateway { node, upstream, store in
            let issued = try await store.create(.init(user: "alice", scopes: ["orders:read"]), actor: "test")
            let response = try await Self.request("GET", "/orders/7?expand=items", key: issued.key, headers: [
                "X-Keygate-User: mallory", "X-Keygate-Scopes: keygate:admin", "X-Keygate-Key-Id: key_forged",
                "Connection: close, X-Secret", "X-Secret: for the gateway only", "Keep-Alive: timeout=9", "TE: trailers",
                "X-Forwarded-For: 10.0.0.1", "Forwarded: for=10.0.0.1", "X-Forwarded-Proto: https", "Accept: application/json",
            ], port: node.port)
            #expect(response.status == 200, "\(response.raw)")
            let echo = try Echo(response)
            #expect(echo.method == "GET" && echo.uri == "/orders/7?expand=items")
            #expect(echo.all("X-Keygate-User") == ["alice"] && echo.all("X-Keygate-Scopes") == ["orders:read"])
            #expect(echo.all("X-Keygate-Key-Id") == [issued.record.id])
            #expect(echo.all("X-API-Key").isEmpty, "the key went upstream")
            for hop in ["X-Secret", "Keep-Alive", "TE", "Connection"] where hop != "Connection" {
                #expect(echo.all(hop).isEmpty, "\(hop) went upstream")
            }
            #expect(echo.all("Host") == ["api.example"] && echo.all("Accept") == ["application/json"])
            #expect(echo.all("X-Forwarded-For") == ["10.0.0.1, 127.0.0.1"])
            #expect(echo.all("Forwarded") == ["for=10.0.0.1, for=127.0.0.1;proto=http"])
            #expect(echo.all("X-Forwarded-Proto") == ["http"])
            // The upstream's hop-by-hop fields stay on its side too.
            #expect(response.header("X-Hop") == nil && response.header("Keep-Alive") == nil)
            #expect(response.header("Content-Type") == "application/json")

            // Keygate's own paths are still its own.
            #expect(try await RawHTTP.get("/health/live", port: node.port).body == #"{"status":"ok"}"#)
            #expect(try await NodeIntegrationTests.auth(issued.key, port: node.port).header("X-Keygate-User") == "alice")
            #expect(upstream.requests == 1)
        }
    }

    @Test func refusalsAndUncheckedKeysNeverReachTheUpstream() async throws {
        try await Self.withGateway { node, upstream, store in
            let revoked = try await store.create(.init(user: "bob"), actor: "test")
            _ = try await store.revoke(id: revoked.record.id, actor: "test")
            let limited = try await store.create(.init(user: "carol", rateLimits: [try RateLimit(name: "default", limit: 1, durationMilliseconds: 60_000)]),
                                                 actor: "test")
            #expect(try await Self.request("/a", key: nil, port: node.port).status == 401)
            #expect(try await Self.request("/a", key: "kg_notakey", port: node.port).status == 401)
            #expect(try await Self.request("/a", key: revoked.key, port: node.port).status == 401)
            let admitted = try await Self.request("/a", key: limited.key, port: node.port)
            #expect(admitted.status == 200 && admitted.header("RateLimit")?.hasPrefix(#""default";r=0;t="#) == true,
                    "a limited key's proxied answer carries its RateLimit fields: \(admitted.raw)")
            #expect(admitted.header("RateLimit-Policy")?.contains("default") == true)
            let over = try await Self.request("/a", key: limited.key, port: node.port)
            #expect(over.status == 429 && over.body.contains("rate_limited"), "\(over.raw)")
            // A client cannot make its request free or demand nothing with Keygate's own fields.
            #expect(try await Self.request("/a", key: limited.key, headers: ["X-Keygate-Cost: 0"], port: node.port).status == 429)
            let twoKeys = try await Self.request("/a", key: limited.key, headers: ["X-API-Key: kg_other"], port: node.port)
            #expect(twoKeys.status == 400)
            let upgrade = try await Self.request("/socket", key: limited.key, headers: ["Upgrade: websocket", "Connection: Upgrade"], port: node.port)
            #expect(upgrade.status == 501 && upgrade.body.contains("not proxied"), "\(upgrade.raw)")
            #expect(upstream.requests == 1, "only the one admitted request went upstream")
        }
        // Redis unreachable: 503, never 401, and nothing forwarded.
        let unreachable = try ReservedPort()
        let upstream = try await TestUpstream.start()
        let node = try await TestNode.start(redisURL: "redis://127.0.0.1:\(unreachable.port)", namespace: "gw-down", waitForReady: false) {
            $0.dataPlane.gateway.upstreams = [try! GatewaySettings.Upstream(parsing: upstream.url)]
        }
        let wellFormed = try KeyFormat(prefix: "kg").generate() // so only Redis could say whether it is valid
        let response = try await Self.request("/a", key: wellFormed, port: node.port)
        await node.stop()
        await upstream.stop()
        #expect(response.status == 503, "\(response.raw)")
        #expect(upstream.requests == 0)
    }

    @Test func theRouteTableDecidesTheScopesAClientCannot() async throws {
        try await Self.withGateway(configure: { configuration in
            configuration.dataPlane.gateway.routes = try! ["/orders/=orders:read", "POST /orders/=orders:write"].map { try GatewayRoute(parsing: $0) }
        }) { node, upstream, store in
            let reader = try await store.create(.init(user: "ivy", scopes: ["orders:read"]), actor: "test").key
            let nobody = try await store.create(.init(user: "jon"), actor: "test").key
            #expect(try await Self.request("/orders/1", key: reader, port: node.port).status == 200)
            #expect(try await Self.request("POST", "/orders", key: reader, body: "{}", port: node.port).status == 200, "/orders is not under /orders/")
            #expect(try await Self.request("POST", "/orders/1", key: reader, body: "{}", port: node.port).status == 403)
            for path in ["/orders/1", "/%6Frders/1", "/x/../orders/1", "//orders/1"] {
                let response = try await Self.request(path, key: nobody, headers: ["X-Keygate-Required-Scopes: "], port: node.port)
                #expect(response.status == 403 && response.body.contains("forbidden"), "\(path): \(response.status)")
            }
            #expect(try await Self.request("/other", key: nobody, port: node.port).status == 200)
            #expect(upstream.requests == 3)
        }
        // A route's cost is what a request spends of the key's credits.
        try await Self.withGateway(configure: { configuration in
            configuration.dataPlane.gateway.routes = try! ["/reports/= cost=4"].map { try GatewayRoute(parsing: $0) }
        }) { node, upstream, store in
            let key = try await store.create(.init(user: "kim", credits: try Credits(remaining: 10)), actor: "test").key
            #expect(try await Self.request("/reports/1", key: key, port: node.port).status == 200)
            #expect(try await Self.request("/reports/2", key: key, port: node.port).status == 200)
            let third = try await Self.request("/reports/3", key: key, port: node.port)
            #expect(third.status == 429 && third.body.contains("usage_exceeded"), "10 credits pay for two reports of 4: \(third.raw)")
            #expect(try await Self.request("/cheap", key: key, port: node.port).status == 200, "2 credits left for requests of 1")
            #expect(upstream.requests == 3)
        }
    }

    @Test func responsesAreStreamedChunkedOrCut() async throws {
        try await Self.withGateway(configure: { $0.dataPlane.gateway.responseTimeout = .milliseconds(300) }) { node, _, store in
            let key = try await store.create(.init(user: "dan"), actor: "test").key
            let chunked = try await Self.request("/chunked", key: key, port: node.port)
            #expect(chunked.status == 200 && chunked.header("Transfer-Encoding") == "chunked")
            #expect(chunked.body == "6\r\nhello \r\n8\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n", "\(chunked.raw)")
            // HTTP/1.0 clients get the body until the connection closes instead of chunks.
            let old = try await RawHTTP.send("GET /chunked HTTP/1.0\r\nX-API-Key: \(key)\r\n\r\n", port: node.port)
            #expect(old.body == "hello chunked world" && old.header("Connection") == "close", "\(old.raw)")
            // No Host from an HTTP/1.0 client: the upstream still gets one (HTTP/1.1 requires it).
            let hostless = try await RawHTTP.send("GET /echo HTTP/1.0\r\nX-API-Key: \(key)\r\n\r\n", port: node.port)
            #expect(try Echo(hostless).all("Host").count == 1, "\(hostless.raw)")
            // HEAD: the head only.
            let head = try await Self.request("HEAD", "/echo", key: key, port: node.port)
            #expect(head.status == 200 && head.body.isEmpty)
            // The upstream closes mid-body: the client's connection closes too, the response visibly short.
            let cut = try await Self.request("/cut", key: key, port: node.port)
            #expect(cut.status == 200 && cut.header("Content-Length") == "1000" && cut.body == "0123456789", "\(cut.raw)")
            // Slow: 504 past the response timeout.
            let slow = try await Self.request("/slow/2000", key: key, port: node.port)
            #expect(slow.status == 504 && slow.body.contains("gateway_timeout"), "\(slow.raw)")
            #expect(try await Self.request("/slow/10", key: key, port: node.port).status == 200)
        }
    }

    @Test func anUpstreamThatIsDownIsSkippedOrGets502() async throws {
        let down = try ReservedPort()
        try await Self.withGateway(upstreams: ["http://127.0.0.1:\(down.port)"]) { node, _, store in
            let key = try await store.create(.init(user: "erin"), actor: "test").key
            let response = try await Self.request("/a", key: key, port: node.port)
            #expect(response.status == 502 && response.body.contains("bad_gateway"), "\(response.raw)")
            #expect(node.node.dataPlane.metrics.gatewayConnectFailures.load(ordering: .relaxed) >= 1)
        }
        // Two servers, one refusing: every request still succeeds (the other is tried, then the
        // refusing one is skipped for a while).
        let upstream = try await TestUpstream.start()
        try await Self.withGateway(upstreams: ["http://127.0.0.1:\(down.port)", upstream.url]) { node, _, store in
            let key = try await store.create(.init(user: "erin"), actor: "test").key
            for index in 0..<10 {
                #expect(try await Self.request("/a/\(index)", key: key, port: node.port).status == 200)
            }
            #expect(upstream.requests == 10)
        }
        await upstream.stop()
    }

    @Test func requestBodiesPipeliningAndKeepAlive() async throws {
        try await Self.withGateway { node, upstream, store in
            let key = try await store.create(.init(user: "fay"), actor: "test").key
            let posted = try await Self.request("POST", "/orders", key: key, headers: ["Content-Type: application/json"],
                                                body: #"{"item":"tea"}"#, port: node.port)
            let echo = try Echo(posted)
            #expect(echo.method == "POST" && echo.body == #"{"item":"tea"}"# && echo.all("Content-Length") == ["14"])
            // Expect: 100-continue: the head first; the body only after Keygate's 100.
            let head = "PUT /orders/1 HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
            let raw = try await RawHTTP.exchange(parts: [Array(head.utf8), Array("hello".utf8)], pause: .milliseconds(200), port: node.port)
            #expect(raw.hasPrefix("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"), "\(raw)")
            #expect(raw.contains(#""body":"hello""#) && !raw.contains("100-continue"))
            // A chunked body is read whole and forwarded with its length; the next request follows it.
            let chunked = "POST /chunky HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                + "GET /after HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nConnection: close\r\n\r\n"
            let both = try await RawHTTP.exchange(Array(chunked.utf8), port: node.port)
            #expect(both.contains(#""body":"hello world""#) && both.contains(#""Content-Length","11""#), "\(both)")
            #expect(!both.contains("X-Trailer") && !both.contains(#""Transfer-Encoding""#) && both.contains(#""uri":"/after""#))
            // Too large: 413 before anything goes upstream.
            let before = upstream.requests
            let large = try await Self.request("POST", "/big", key: key, body: String(repeating: "x", count: 1024 * 1024 + 1), port: node.port)
            #expect(large.status == 413 && upstream.requests == before)

            // Pipelined requests are answered in order, a slow one first.
            var pipelined = ""
            for (index, path) in ["/slow/200", "/echo/2", "/echo/3"].enumerated() {
                pipelined += "GET \(path) HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\n\(index == 2 ? "Connection: close\r\n" : "")\r\n"
            }
            let answers = try await RawHTTP.exchange(Array(pipelined.utf8), port: node.port)
            let order = ["/slow/200", "/echo/2", "/echo/3"].map { answers.range(of: #""uri":"\#($0)""#)?.lowerBound }
            #expect(order.allSatisfy { $0 != nil } && order[0]! < order[1]! && order[1]! < order[2]!, "\(answers)")

            // Keep-alive to the upstream: many client connections, few upstream connections.
            let connectionsBefore = upstream.connections
            for index in 0..<20 { #expect(try await Self.request("/k/\(index)", key: key, port: node.port).status == 200) }
            #expect(upstream.connections - connectionsBefore <= 2, "\(upstream.connections - connectionsBefore) new upstream connections for 20 requests")
        }
    }

    @Test func smugglingAttemptsAreRefusedBeforeTheUpstream() async throws {
        try await Self.withGateway { node, upstream, store in
            let key = try await store.create(.init(user: "gus"), actor: "test").key
            let attempts = [
                "POST /a HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
                "POST /a HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "POST /a HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n",
                "POST /a HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloGET /b HTTP/1.1\r\n\r\n",
                "POST /auth HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "POST /a HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                "GET /a HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nX-Fold: a\r\n b\r\n\r\n",
                "GET /a HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nContent-Length : 0\r\n\r\n",
                "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-API-Key: \(key)\r\n\r\n",
                "GET /a HTTP/1.1\nHost: a\nX-API-Key: \(key)\n\n",
            ]
            for attempt in attempts {
                let response = RawHTTPParse.first(try await RawHTTP.exchange(Array(attempt.utf8), port: node.port, timeout: .seconds(3)))
                #expect(response == 400, "\(attempt.debugDescription): \(response)")
            }
            #expect(upstream.requests == 0, "a smuggling attempt reached the upstream")
        }
    }

    @Test func aSlowClientHoldsBackTheUpstreamInsteadOfFillingTheNodesMemory() async throws {
        try await Self.withGateway { node, upstream, store in
            let key = try await store.create(.init(user: "hal"), actor: "test").key
            let size = 32 * 1024 * 1024
            let client = try SlowClient(port: node.port)
            try client.send("GET /bytes/\(size) HTTP/1.1\r\nHost: a\r\nX-API-Key: \(key)\r\nConnection: close\r\n\r\n")
            try await Task.sleep(for: .milliseconds(1500)) // the client reads nothing meanwhile
            let ahead = upstream.bytesWritten
            // Only socket buffers lie between (about 14 MiB on loopback at most): without back-pressure
            // the node would have read all 32 MiB into its own memory within this second and a half.
            #expect(ahead < 20 * 1024 * 1024, "the upstream got \(ahead) bytes ahead of a client that read nothing")
            // Blocking reads, off the cooperative threads the rest of the suite runs on.
            let received = try await NIOThreadPool.singleton.runIfActive { try client.readAll(timeout: .seconds(30)) }
            #expect(received.body == size && received.head.contains("Content-Length: \(size)"), "\(received.head) \(received.body)")
        }
    }
}

/// The status of the first response in raw bytes (0 when none came).
enum RawHTTPParse {
    static func first(_ raw: String) -> Int {
        raw.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? 0
    }
}

/// A blocking client with a small receive buffer that reads only when told: a slow reader.
final class SlowClient: @unchecked Sendable { // used by one thread at a time
    private let descriptor: Int32

    init(port: Int) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var small: Int32 = 64 * 1024
        setsockopt(descriptor, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { close(descriptor); throw TestSupportError("connect failed") }
    }

    deinit { close(descriptor) }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ Glibc.send(descriptor, $0.baseAddress, $0.count, 0) }) == bytes.count else {
            throw TestSupportError("send failed")
        }
    }

    /// Reads until the server closes: the head as text, and how many body bytes followed it.
    func readAll(timeout: Duration) throws -> (head: String, body: Int) {
        var timeval = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeval, socklen_t(MemoryLayout<timeval>.size))
        var head: [UInt8] = [], body = 0, inHead = true
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            if inHead {
                head += buffer[0..<count]
                if let end = head.firstRange(of: Array("\r\n\r\n".utf8)) {
                    body = head.count - end.upperBound
                    head = Array(head[..<end.upperBound])
                    inHead = false
                }
            } else {
                body += count
            }
        }
        return (String(decoding: head, as: UTF8.self), body)
    }
}
