import Foundation
import KeygateCore
import KeygateTestSupport
import Testing

/// Per-key counts of refused requests (rate limited, usage exceeded, forbidden scope) next to the
/// uses, flushed by real nodes and read back through the usage API.
@Suite struct RefusalCountsNodeTests {
    @Test func refusalsAreCountedPerKeyByReasonAndAreNotUses() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("refusals")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let limited = try await store.create(.init(user: "alice", scopes: ["read"], rateLimits: [try RateLimit(parsing: "3/1h")]),
                                             actor: "test")
        let credited = try await store.create(.init(user: "bob", credits: try Credits(remaining: 2)), actor: "test")
        try await RateLimitNodeTests.withNodes(2, url: url, namespace: ns) { nodes in
            // 10 requests of the limited key over both nodes: 3 admitted, 7 rate limited.
            var statuses: [Int] = []
            for index in 0..<10 {
                statuses.append(try await NodeIntegrationTests.auth(limited.key, port: nodes[index % 2].port).status)
            }
            #expect(statuses.filter { $0 == 200 }.count == 3 && statuses.filter { $0 == 429 }.count == 7, "\(statuses)")
            // A scope the key lacks: 403 on both nodes, before any limit is spent.
            for node in nodes {
                #expect(try await NodeIntegrationTests.auth(limited.key, port: node.port, extra: ["X-Keygate-Required-Scopes: admin"]).status == 403)
            }
            // 5 requests of the credited key: 2 admitted, 3 without credits.
            var credits: [Int] = []
            for index in 0..<5 { credits.append(try await NodeIntegrationTests.auth(credited.key, port: nodes[index % 2].port).status) }
            #expect(credits.sorted() == [200, 200, 429, 429, 429], "\(credits)")
        } // the nodes stop gracefully: their last usage batches are flushed

        let usage = try await store.usage(id: limited.record.id, days: 2)
        #expect(usage.total == 3)
        let hour = try #require(usage.hourly.last), day = try #require(usage.daily.last)
        for bucket in [hour, day] {
            #expect(bucket.count == 3)
            #expect(bucket.refused == RefusalCounts(rateLimited: 7, usageExceeded: 0, forbidden: 2), "\(bucket)")
        }
        #expect(usage.daily.first?.refused == RefusalCounts(), "yesterday: nothing")
        let bob = try await store.usage(id: credited.record.id)
        #expect(bob.total == 2)
        #expect(bob.hourly.last?.refused == RefusalCounts(usageExceeded: 3))
        #expect(bob.daily.last?.refused == RefusalCounts(usageExceeded: 3))
        // The JSON the admin API and `keys usage --json` return: flat fields per bucket.
        let json = String(decoding: try JSONEncoder().encode(hour), as: UTF8.self)
        #expect(json.contains(#""rate_limited":7"#) && json.contains(#""usage_exceeded":0"#) && json.contains(#""forbidden":2"#), "\(json)")
    }

    @Test func aKeyOnlyRefusedHasNoUseAndNoLastUsedTime() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("refusals")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "carol", credits: try Credits(remaining: 0)), actor: "test")
        try await RateLimitNodeTests.withNodes(1, url: url, namespace: ns) { nodes in
            for _ in 0..<4 {
                let response = try await NodeIntegrationTests.auth(issued.key, port: nodes[0].port)
                #expect(response.status == 429)
            }
        }
        let usage = try await store.usage(id: issued.record.id)
        #expect(usage.total == 0)
        #expect(usage.lastUsedAt == nil)
        #expect(usage.hourly.last?.count == 0)
        #expect(usage.hourly.last?.refused.usageExceeded == 4)
        #expect(try await store.record(id: issued.record.id).lastUsedAt == nil)
    }
}
