import Foundation
import KeygateCore
import KeygateTestSupport
import Testing

/// A user's own limits, shared by all of the user's keys, on real nodes sharing one Redis.
@Suite struct UserLimitsNodeTests {
    static func statuses(_ responses: [RawHTTP.Response]) -> [Int: Int] { CreditsNodeTests.statuses(responses) }

    /// `count` sequential `/auth` calls, alternating keys and nodes.
    static func alternate(_ keys: [String], ports: [Int], count: Int) async throws -> [RawHTTP.Response] {
        var responses: [RawHTTP.Response] = []
        for index in 0..<count {
            responses.append(try await RawHTTP.get("/auth", port: ports[index % ports.count], headers: ["X-API-Key: \(keys[index % keys.count])"]))
        }
        return responses
    }

    @Test func aUsersRateLimitIsSharedByItsKeysOnEveryNodeIncludingNewAndRotatedOnes() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("userlimits")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let first = try await store.create(.init(user: "alice"), actor: "test")
        let second = try await store.create(.init(user: "alice"), actor: "test")
        let other = try await store.create(.init(user: "bob"), actor: "test")
        let set = try await store.setUserLimits(user: "alice", rateLimits: [try RateLimit(parsing: "plan=10/1h")], credits: nil, actor: "test")
        #expect(set.keysUpdated == 2 && set.rateLimits.map(\.text) == ["plan=10/1h"])
        try await RateLimitNodeTests.withNodes(2, url: url, namespace: ns) { nodes in
            let ports = nodes.map(\.port)
            let responses = try await Self.alternate([first.key, second.key], ports: ports, count: 30)
            #expect(Self.statuses(responses) == [200: 10, 429: 20], "\(Self.statuses(responses))")
            let refused = try #require(responses.first { $0.status == 429 })
            #expect(refused.header("RateLimit-Policy") == #""plan";q=10;w=3600"#)
            #expect(refused.header("Retry-After") != nil)
            // Another user is not limited by alice's plan.
            #expect(try await Self.alternate([other.key], ports: ports, count: 12).allSatisfy { $0.status == 200 })
            // A key created afterwards, and a rotation's successor, draw on the same exhausted window.
            let third = try await store.create(.init(user: "alice"), actor: "test")
            #expect(third.record.userRateLimits.map(\.text) == ["plan=10/1h"])
            let successor = try await store.rotate(id: first.record.id, grace: .seconds(60), actor: "test")
            #expect(successor.record.userRateLimits.map(\.text) == ["plan=10/1h"])
            #expect(try await Self.alternate([third.key, successor.key], ports: ports, count: 4).allSatisfy { $0.status == 429 })
            // Lifted: every key of the user is admitted again on both nodes, within the invalidation bound.
            let lifted = try await store.setUserLimits(user: "alice", rateLimits: [], credits: nil, actor: "test")
            #expect(lifted.keysUpdated == 4)
            try await Task.sleep(for: .milliseconds(100))
            #expect(try await Self.alternate([first.key, second.key, third.key, successor.key], ports: ports, count: 8).allSatisfy { $0.status == 200 })
        }
        // Each copy is an audit event of its key.
        let events = try await store.events(count: 1_000).filter { $0.fields == "user_limits" }
        // Two keys took the plan, four the lift; the new key and the successor got it when written.
        let expected = 2 + 4
        #expect(events.count == expected, "\(events.map(\.keyID))")
    }

    @Test func aUsersCreditsAreSharedAndARefusalCostsTheKeysOwnNothing() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("userlimits")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        try await store.setUserLimits(user: "carol", rateLimits: nil, credits: .some(try Credits(remaining: 25)), actor: "test")
        // Created after the setting: the keys take it at creation. One has credits of its own too.
        let own = try await store.create(.init(user: "carol", credits: try Credits(remaining: 1_000)), actor: "test")
        let plain = try await store.create(.init(user: "carol"), actor: "test")
        try await RateLimitNodeTests.withNodes(3, url: url, namespace: ns) { nodes in
            var responses: [RawHTTP.Response] = []
            responses += try await RateLimitNodeTests.burst(own.key, ports: nodes.map(\.port), requests: 100)
            responses += try await RateLimitNodeTests.burst(plain.key, ports: nodes.map(\.port), requests: 100)
            #expect(Self.statuses(responses) == [200: 25, 429: 175], "\(Self.statuses(responses))")
            #expect(responses.filter { $0.status == 429 }.allSatisfy { $0.body.contains(#""error":"usage_exceeded""#) })
        } // stopped gracefully: unspent credits go back to both balances
        let admittedOwn = try await store.usage(id: own.record.id).total
        #expect(try await store.userLimits(user: "carol").credits?.remaining == 0)
        // The key's own balance paid only for the requests the user's credits admitted.
        #expect(try await store.record(id: own.record.id).credits?.remaining == 1_000 - Int(admittedOwn), "admitted \(admittedOwn)")
        #expect(try await store.usage(id: plain.record.id).total + admittedOwn == 25)
    }

    @Test func aKeysOwnLimitOfTheSameNameReplacesTheUsersForThatKey() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("userlimits")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        try await store.setUserLimits(user: "dave", rateLimits: [try RateLimit(parsing: "plan=2/1h")], credits: nil, actor: "test")
        let generous = try await store.create(.init(user: "dave", rateLimits: [try RateLimit(parsing: "plan=6/1h")]), actor: "test")
        let plain = try await store.create(.init(user: "dave"), actor: "test")
        try await RateLimitNodeTests.withNodes(1, url: url, namespace: ns) { nodes in
            let own = Self.statuses(try await Self.alternate([generous.key], ports: [nodes[0].port], count: 10))
            let shared = Self.statuses(try await Self.alternate([plain.key], ports: [nodes[0].port], count: 5))
            #expect(own == [200: 6, 429: 4])
            #expect(shared == [200: 2, 429: 3])
        }
    }

    @Test func aUserLimitSetWhileTrafficRunsAppliesOnEveryNode() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("userlimits")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let key = try await store.create(.init(user: "erin"), actor: "test")
        try await RateLimitNodeTests.withNodes(2, url: url, namespace: ns) { nodes in
            let ports = nodes.map(\.port)
            #expect(try await RateLimitNodeTests.burst(key.key, ports: ports, requests: 20).allSatisfy { $0.status == 200 }) // cached on both
            try await store.setUserLimits(user: "erin", rateLimits: nil, credits: .some(try Credits(remaining: 4)), actor: "test")
            try await Task.sleep(for: .milliseconds(100)) // the invalidation bound
            #expect(Self.statuses(try await RateLimitNodeTests.burst(key.key, ports: ports, requests: 20)) == [200: 4, 429: 16])
        }
    }
}
