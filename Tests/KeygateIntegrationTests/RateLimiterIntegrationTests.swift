import Foundation
@testable import KeygateCore
import KeygateRedis
import KeygateTestSupport
import NIOCore
import NIOPosix
import Testing

/// Rate-limit leases against the real Redis: three limiters, each with its own store and client as
/// three nodes would have, spending one key's limit concurrently.
@Suite struct RateLimiterIntegrationTests {
    static func nodes(_ count: Int, namespace: String) throws -> [(KeyStore, RateLimiter)] {
        try (0..<count).map { _ in
            let store = KeyStore(redis: try TestRedis.client(TestRedis.configuration(url: TestRedis.url())),
                                 layout: try KeyStoreLayout(namespace: namespace), format: try KeyFormat(), hasher: KeyHasher())
            let limiter = RateLimiter(clock: { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }) { hash, limit, window, wanted, loop in
                store.leaseTokens(subject: hash, limit: limit, window: window, wanted: wanted, on: loop)
            }
            return (store, limiter)
        }
    }

    /// Fires `requests` admissions at once, spread over the nodes; returns how many were admitted.
    static func burst(_ nodes: [(KeyStore, RateLimiter)], hash: String, limit: RateLimit, requests: Int) async throws -> Int {
        let group = MultiThreadedEventLoopGroup.singleton
        let steps = (0..<requests).map { index in nodes[index % nodes.count].1.admit(hash, limit, on: group.next()) }
        var admitted = 0
        for step in steps {
            let admission: RateLimiter.Admission
            switch step {
            case .decided(let decided): admission = decided
            case .pending(let future): admission = try await future.get()
            }
            if case .admitted = admission { admitted += 1 }
        }
        return admitted
    }

    static func handedOut(_ store: KeyStore, _ hash: String, _ limit: RateLimit, window: Int64) async throws -> Int {
        let reply = try await store.redis.send(RedisCommand("GET", [.string(store.layout.rateLimitWindow(subject: hash, name: limit.name, window: window))]))
        return reply.string.flatMap { Int($0) } ?? 0
    }

    @Test func aSmallLimitIsExactOverThreeNodes() async throws {
        let nodes = try Self.nodes(3, namespace: TestRedis.uniqueNamespace("rate"))
        defer { for (store, _) in nodes { Task { await store.redis.shutdown() } } }
        let limit = try RateLimit(name: "default", limit: 10, durationMilliseconds: 2_000)
        let hash = "key_small_limit"
        // Start right after a window boundary, so the burst stays in one window.
        let now = Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
        try await Task.sleep(for: .milliseconds(limit.window(at: now).endsAt - now + 5))
        let window = limit.window(at: Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))).index
        #expect(try await Self.burst(nodes, hash: hash, limit: limit, requests: 100) == 10)
        #expect(try await Self.handedOut(nodes[0].0, hash, limit, window: window) == 10, "token by token: none left unspent")
        // Allowed again in the next window.
        try await Task.sleep(for: .milliseconds(2_000))
        #expect(try await Self.burst(nodes, hash: hash, limit: limit, requests: 5) == 5)
    }

    @Test func aLargeLimitIsLeasedInBlocksAndNeverOverAdmitted() async throws {
        let nodes = try Self.nodes(3, namespace: TestRedis.uniqueNamespace("rate"))
        defer { for (store, _) in nodes { Task { await store.redis.shutdown() } } }
        let limit = try RateLimit(name: "default", limit: 1_000, durationMilliseconds: 30_000)
        let hash = "key_large_limit"
        let now = Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
        if limit.window(at: now).endsAt - now < 5_000 { try await Task.sleep(for: .milliseconds(limit.window(at: now).endsAt - now + 5)) }
        let admitted = try await Self.burst(nodes, hash: hash, limit: limit, requests: 1_800)
        // Blocks of 50 shrink to half of what is left: at most a block or so per node stays unspent.
        #expect(admitted <= 1_000)
        #expect(admitted >= 850, "\(admitted) admitted; \(nodes.map { $0.1.snapshot })")
        let leases = nodes.reduce(UInt64(0)) { $0 + $1.1.snapshot.leases }
        #expect(leases < 200, "\(leases) leases for \(admitted) admissions")
    }
}
