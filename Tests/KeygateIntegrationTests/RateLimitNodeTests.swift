import Foundation
import KeygateCore
import KeygateNode
import KeygateRedis
import KeygateTestSupport
import Testing

/// Keys' rate limits on real nodes sharing one Redis: the cluster-wide bound, the 429 and its
/// headers, rotation, edits while traffic runs, and `/v1/verify`.
@Suite struct RateLimitNodeTests {
    static func milliseconds() -> Int64 { Int64((Date().timeIntervalSince1970 * 1_000).rounded(.down)) }

    /// Sleeps until just after the next window of `limit` starts, so a short burst stays in one window.
    static func waitForWindowStart(_ limit: RateLimit) async throws {
        let now = milliseconds()
        try await Task.sleep(for: .milliseconds(limit.window(at: now).endsAt - now + 5))
    }

    /// Runs `body` with `count` nodes on one Redis namespace.
    static func withNodes(_ count: Int, url: String, namespace: String, _ body: ([TestNode]) async throws -> Void) async throws {
        var nodes: [TestNode] = []
        do {
            for _ in 0..<count { nodes.append(try await TestNode.start(redisURL: url, namespace: namespace)) }
            try await body(nodes)
        } catch {
            for node in nodes { await node.stop() }
            throw error
        }
        for node in nodes { await node.stop() }
    }

    /// `requests` concurrent `/auth` calls spread over the nodes' ports.
    static func burst(_ key: String, ports: [Int], requests: Int, extra: [String] = []) async throws -> [RawHTTP.Response] {
        try await withThrowingTaskGroup(of: RawHTTP.Response.self) { group in
            for index in 0..<requests {
                group.addTask { try await RawHTTP.get("/auth", port: ports[index % ports.count], headers: ["X-API-Key: \(key)"] + extra) }
            }
            var responses: [RawHTTP.Response] = []
            for try await response in group { responses.append(response) }
            return responses
        }
    }

    @Test func aKeyLimitedTo10Per2SecondsAdmits10Of100OverThreeNodes() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("limits")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let limit = try RateLimit(parsing: "10/2s")
        let issued = try await store.create(.init(user: "alice", rateLimits: [limit]), actor: "test")
        try await Self.withNodes(3, url: url, namespace: ns) { nodes in
            let ports = nodes.map(\.port)
            try await Self.waitForWindowStart(limit)
            let responses = try await Self.burst(issued.key, ports: ports, requests: 100)
            let admitted = responses.filter { $0.status == 200 }
            let refused = responses.filter { $0.status == 429 }
            // The stated bound: never more than the limit in a window; for a limit this small every
            // token is leased one at a time, so none is lost either.
            #expect(admitted.count == 10, "admitted \(admitted.count) of 100")
            #expect(refused.count == 90, "every other answer is a 429: \(Set(responses.map(\.status)))")
            for response in admitted {
                #expect(response.header("RateLimit-Policy") == #""default";q=10;w=2"#)
                #expect(response.header("RateLimit")?.hasPrefix(#""default";r="#) == true)
            }
            for response in refused {
                let retryAfter = response.header("Retry-After").flatMap(Int.init)
                #expect(retryAfter != nil && (1...2).contains(retryAfter!), "Retry-After \(String(describing: retryAfter))")
                #expect(response.header("RateLimit")?.hasPrefix(#""default";r=0;t="#) == true)
                #expect(response.header("RateLimit-Policy") == #""default";q=10;w=2"#)
                #expect(response.body.contains(#""error":"rate_limited""#))
            }
            // Allowed again in the next window.
            try await Self.waitForWindowStart(limit)
            let again = try await Self.burst(issued.key, ports: ports, requests: 6)
            #expect(again.filter { $0.status == 200 }.count == 6)
            // Only admitted requests are uses of the key.
            let usage = nodes.reduce(0) { $0 + Int($1.node.dataPlane.metrics.value(.ok)) }
            #expect(usage == 16)
            #expect(nodes.reduce(0) { $0 + Int($1.node.dataPlane.metrics.value(.overLimit)) } == 90)
        }
    }

    @Test func rotationCarriesTheLimitsAndTheirWindows() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("limits")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let limit = try RateLimit(parsing: "minute=3/1m")
        let issued = try await store.create(.init(user: "alice", rateLimits: [limit]), actor: "test")
        try await Self.withNodes(1, url: url, namespace: ns) { nodes in
            let port = nodes[0].port
            // Keep clear of a minute boundary: the test needs one window.
            if limit.window(at: Self.milliseconds()).endsAt - Self.milliseconds() < 10_000 { try await Self.waitForWindowStart(limit) }
            for _ in 0..<2 { #expect(try await NodeIntegrationTests.auth(issued.key, port: port).status == 200) }
            let successor = try await store.rotate(id: issued.record.id, grace: .seconds(60), actor: "test")
            #expect(successor.record.rateLimits == [limit])
            // The successor draws on the same window: one unit left for the two keys together.
            #expect(try await NodeIntegrationTests.auth(successor.key, port: port).status == 200)
            #expect(try await NodeIntegrationTests.auth(successor.key, port: port).status == 429)
            #expect(try await NodeIntegrationTests.auth(issued.key, port: port).status == 429)
        }
    }

    @Test func limitsEditedWhileTrafficRunsApplyOnEveryNode() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("limits")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice"), actor: "test")
        try await Self.withNodes(2, url: url, namespace: ns) { nodes in
            let ports = nodes.map(\.port)
            // Unlimited, and cached on both nodes.
            #expect(try await Self.burst(issued.key, ports: ports, requests: 20).allSatisfy { $0.status == 200 })
            let limit = try RateLimit(parsing: "2/1m")
            if limit.window(at: Self.milliseconds()).endsAt - Self.milliseconds() < 10_000 { try await Self.waitForWindowStart(limit) }
            let record = try await store.update(id: issued.record.id, .init(rateLimits: [limit]), actor: "test")
            #expect(record.rateLimits == [limit])
            try await Task.sleep(for: .milliseconds(100)) // the invalidation bound
            let limited = try await Self.burst(issued.key, ports: ports, requests: 20)
            #expect(limited.filter { $0.status == 200 }.count == 2, "\(limited.map(\.status))")
            // Removing the limits lifts them everywhere.
            _ = try await store.update(id: issued.record.id, .init(rateLimits: []), actor: "test")
            try await Task.sleep(for: .milliseconds(100))
            let lifted = try await Self.burst(issued.key, ports: ports, requests: 10)
            #expect(lifted.allSatisfy { $0.status == 200 && $0.header("RateLimit") == nil })
        }
    }

    @Test func verifyReportsTheLimitAndSpendsTheCost() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("limits")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let limit = try RateLimit(parsing: "units=10/1m")
        let issued = try await store.create(.init(user: "alice", rateLimits: [limit]), actor: "test")
        try await Self.withNodes(1, url: url, namespace: ns) { nodes in
            let port = nodes[0].port
            if limit.window(at: Self.milliseconds()).endsAt - Self.milliseconds() < 10_000 { try await Self.waitForWindowStart(limit) }
            func verify(cost: Int?) async throws -> [String: Any] {
                let body = cost.map { #"{"key":"\#(issued.key)","cost":\#($0)}"# } ?? #"{"key":"\#(issued.key)"}"#
                let response = try await RawHTTP.send("POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                                      + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)", port: port)
                #expect(response.status == 200)
                return try #require(try JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any])
            }
            let first = try await verify(cost: 6)
            #expect(first["code"] as? String == "VALID")
            let quota = try #require(first["rate_limit"] as? [String: Any])
            #expect(quota["name"] as? String == "units")
            #expect(quota["limit"] as? Int == 10)
            #expect((quota["reset"] as? Int).map { (1...60).contains($0) } == true)
            let refused = try await verify(cost: 5)
            #expect(refused["code"] as? String == "RATE_LIMITED")
            #expect(refused["valid"] as? Bool == false)
            #expect((refused["rate_limit"] as? [String: Any])?["remaining"] as? Int == 0)
            // The refused 5 cost nothing: 4 still fit, through /auth with the proxy's cost header.
            #expect(try await NodeIntegrationTests.auth(issued.key, port: port, extra: ["X-Keygate-Cost: 4"]).status == 200)
            #expect(try await NodeIntegrationTests.auth(issued.key, port: port, extra: ["X-Keygate-Cost: 1"]).status == 429)
            // A cost of 0 checks without spending; a malformed or repeated cost is a 400.
            #expect(try await NodeIntegrationTests.auth(issued.key, port: port, extra: ["X-Keygate-Cost: 0"]).status == 200)
            for bad in [["X-Keygate-Cost: -1"], ["X-Keygate-Cost: 1.5"], ["X-Keygate-Cost: 10000000"], ["X-Keygate-Cost: 1", "X-Keygate-Cost: 0"]] {
                #expect(try await NodeIntegrationTests.auth(issued.key, port: port, extra: bad).status == 400, "\(bad)")
            }
        }
    }

    /// With Redis gone and `--stale-if-error` serving cached keys, the node keeps limiting with its
    /// own share: it never admits more in the window than the limit it leased against, and says so.
    @Test func withRedisDownANodeKeepsLimitingWithItsShare() async throws {
        let server = try await RedisServerProcess.start()
        let ns = TestRedis.uniqueNamespace("limits-down")
        let store = try NodeIntegrationTests.adminStore(url: server.url, namespace: ns)
        let limit = try RateLimit(parsing: "5/1h")
        let issued = try await store.create(.init(user: "alice", rateLimits: [limit]), actor: "test")
        await store.redis.shutdown()
        let node = try await TestNode.start(redisURL: server.url, namespace: ns) { $0.verifier.staleIfError = .seconds(30) }
        if limit.window(at: Self.milliseconds()).endsAt - Self.milliseconds() < 30_000 { try await Self.waitForWindowStart(limit) }
        for _ in 0..<3 { #expect(try await NodeIntegrationTests.auth(issued.key, port: node.port).status == 200) }
        await server.stop()
        var statuses: [Int] = []
        for _ in 0..<6 { statuses.append(try await NodeIntegrationTests.auth(issued.key, port: node.port).status) }
        #expect(statuses.filter { $0 == 200 }.count == 2, "3 leased before, 2 of its share left: \(statuses)")
        #expect(statuses.filter { $0 == 429 }.count == 4)
        #expect(node.node.rateLimiter.snapshot.localDecisions > 0)
        #expect(try await RawHTTP.get("/health/live", port: node.port).status == 200)
        await node.stop()
    }
}
