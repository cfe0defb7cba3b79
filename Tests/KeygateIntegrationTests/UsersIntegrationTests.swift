import Foundation
import KeygateCore
import KeygateRedis
import KeygateTestSupport
import Testing

/// Listing users (prefix search, cursor paging, the one-time index of older deployments) and a
/// user's usage added up over their keys, against the real Redis.
@Suite struct UsersIntegrationTests {
    @Test func usersAreListedByPrefixInPagesAndStayListedAfterRevocation() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("users")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        for user in ["bob", "alice", "alina", "al", "alfred", "zoe", "café"] { _ = try await store.create(.init(user: user), actor: "test") }
        _ = try await store.create(.init(user: "alice"), actor: "test") // a second key: listed once
        #expect(try await store.users().users == ["al", "alfred", "alice", "alina", "bob", "café", "zoe"])
        #expect(try await store.users(prefix: "ali").users == ["alice", "alina"])
        #expect(try await store.users(prefix: "caf").users == ["café"])
        #expect(try await store.users(prefix: "x").users.isEmpty)
        // Pages of two: each page's last name is the next cursor; the last page has none.
        var seen: [String] = [], after: String? = nil
        for _ in 0..<10 {
            let page = try await store.users(prefix: "al", after: after, limit: 2)
            seen += page.users
            guard let next = page.nextAfter else { break }
            #expect(page.users.count == 2)
            after = next
        }
        #expect(seen == ["al", "alfred", "alice", "alina"])
        // A cursor before the prefix starts at the prefix; one past it gives nothing.
        #expect(try await store.users(prefix: "ali", after: "a").users == ["alice", "alina"])
        #expect(try await store.users(prefix: "al", after: "am").users.isEmpty)
        _ = try await store.revokeAll(user: "bob", actor: "test")
        #expect(try await store.users(prefix: "b").users == ["bob"])
        await #expect(throws: KeygateError.self) { try await store.users(limit: 0) }
        await #expect(throws: KeygateError.self) { try await store.users(after: "bad\u{1}name") }
    }

    @Test func usersOfAnOlderDeploymentAreIndexedOnceByTheRepair() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("users")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        _ = try await store.create(.init(user: "new"), actor: "test")
        // Data as an earlier version left it: user sets, no index, no mark.
        for user in ["old-1", "old-2", "new"] {
            _ = try await store.redis.send(RedisCommand("SADD", [.string(store.layout.userKeys(user)), "key_legacy"]))
        }
        #expect(try await store.users().users == ["new"])
        let report = try await store.repair()
        #expect(report.usersIndexed == 2)
        #expect(try await store.users().users == ["new", "old-1", "old-2"])
        // Once marked, later passes do not scan again.
        _ = try await store.redis.send(RedisCommand("SADD", [.string(store.layout.userKeys("old-3")), "key_legacy"]))
        #expect(try await store.repair().usersIndexed == 0)
        #expect(!(try await store.users().users.contains("old-3")))
    }

    @Test func aUsersUsageAddsUpTheirKeys() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("users")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let first = try await store.create(.init(user: "dana"), actor: "test")
        let second = try await store.create(.init(user: "dana"), actor: "test")
        let other = try await store.create(.init(user: "eve"), actor: "test")
        let now = Date()
        try await store.applyUsage(batchID: "users-test:1", [
            .init(hash: first.record.hash, count: 3, lastUsedAt: now.addingTimeInterval(-60), refused: RefusalCounts(rateLimited: 2)),
            .init(hash: second.record.hash, count: 4, lastUsedAt: now, refused: RefusalCounts(forbidden: 1)),
            .init(hash: other.record.hash, count: 100, lastUsedAt: now),
        ], at: now)
        let usage = try await store.usage(user: "dana", days: 3, now: now)
        #expect(usage.total == 7)
        #expect(usage.daily.count == 3 && usage.hourly.count == 48)
        #expect(usage.daily.last?.count == 7 && usage.hourly.last?.count == 7)
        #expect(usage.hourly.last?.refused == RefusalCounts(rateLimited: 2, forbidden: 1))
        #expect(usage.lastUsedAt?.timeIntervalSince1970.rounded() == now.timeIntervalSince1970.rounded())
        #expect(Set(usage.keys.map(\.id)) == [first.record.id, second.record.id])
        await #expect(throws: KeygateError.self) { try await store.usage(user: "nobody") }
    }
}
