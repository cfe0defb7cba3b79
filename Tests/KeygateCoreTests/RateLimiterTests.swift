import NIOCore
import NIOPosix
import Synchronization
import Testing
@testable import KeygateCore

/// The node side of rate limits against an in-memory stand-in for the Redis lease script (same
/// rule: at most half of what the window has left, at least one), with an injected clock.
@Suite struct RateLimiterTests {
    /// What `KeyStoreScripts.leaseTokens` does, per window key, plus a switch to make Redis "down".
    final class FakeRedis: Sendable {
        let handedOut = Mutex<[String: Int]>([:])
        let leases = Atomic<Int>(0)
        let down = Atomic<Bool>(false)

        func lease(_ subject: String, _ limit: RateLimit, _ window: Int64, _ wanted: Int, _ loop: any EventLoop)
            -> EventLoopFuture<(granted: Int, handedOut: Int)> {
            leases.add(1, ordering: .relaxed)
            guard !down.load(ordering: .relaxed) else { return loop.makeFailedFuture(KeygateError(.unavailable, "Redis is down")) }
            let grant = handedOut.withLock { table -> (Int, Int) in
                let key = "\(subject):\(limit.name):\(window)"
                let used = table[key, default: 0], left = limit.limit - used
                guard left > 0 else { return (0, used) }
                let take = min(wanted, max(1, left / 2))
                table[key] = used + take
                return (take, used + take)
            }
            return loop.makeSucceededFuture(grant)
        }
    }

    final class Clock: Sendable {
        let now = Atomic<Int64>(1_800_000_000_000)
        func advance(milliseconds: Int64) { now.add(milliseconds, ordering: .relaxed) }
    }

    static func limiter(_ redis: FakeRedis, _ clock: Clock) -> RateLimiter {
        RateLimiter(clock: { clock.now.load(ordering: .relaxed) }, lease: redis.lease)
    }

    static let loop = MultiThreadedEventLoopGroup.singleton.next()
    static let hash = "key_rate_limited"

    static func admitted(_ step: RateLimiter.Step) async throws -> Bool {
        switch step {
        case .decided(let admission): if case .admitted = admission { return true } else { return false }
        case .pending(let future): if case .admitted = try await future.get() { return true } else { return false }
        }
    }

    @Test func limitsParseFromTheCLIFormAndRefuseNonsense() throws {
        #expect(try RateLimit(parsing: "100/1m") == RateLimit(name: "default", limit: 100, durationMilliseconds: 60_000))
        #expect(try RateLimit(parsing: "burst=10/2s") == RateLimit(name: "burst", limit: 10, durationMilliseconds: 2_000))
        #expect(try RateLimit(parsing: "5000/1h").durationMilliseconds == 3_600_000)
        #expect(try RateLimit(parsing: "7/1500ms").durationMilliseconds == 1_500)
        #expect(try RateLimit(parsing: "1/d").durationMilliseconds == 86_400_000)
        for bad in ["0/1m", "10/0s", "x/1m", "10/1w", "10", "BAD=1/1m", "a b=1/1m", "10/500ms", "10/31d", "-1/1m"] {
            #expect(throws: KeygateError.self, "\(bad)") { try RateLimit(parsing: bad) }
        }
    }

    @Test func threeNodesTogetherAdmitExactlyTheLimitPerWindow() async throws {
        let redis = FakeRedis(), clock = Clock()
        let nodes = (0..<3).map { _ in Self.limiter(redis, clock) }
        let limit = try RateLimit(name: "default", limit: 10, durationMilliseconds: 2_000)
        var admitted = 0
        for index in 0..<100 where try await Self.admitted(nodes[index % 3].admit(Self.hash, limit, on: Self.loop)) { admitted += 1 }
        #expect(admitted == 10)
        // The next window admits again.
        clock.advance(milliseconds: 2_000)
        admitted = 0
        for index in 0..<30 where try await Self.admitted(nodes[index % 3].admit(Self.hash, limit, on: Self.loop)) { admitted += 1 }
        #expect(admitted == 10)
    }

    @Test func aBusyKeyIsDecidedLocallyFromLeasedBlocks() async throws {
        let redis = FakeRedis(), clock = Clock()
        let node = Self.limiter(redis, clock)
        let limit = try RateLimit(name: "default", limit: 100_000, durationMilliseconds: 60_000)
        var synchronous = 0
        for _ in 0..<10_000 {
            let step = node.admit(Self.hash, limit, on: Self.loop)
            if case .decided(.admitted) = step { synchronous += 1 }
            #expect(try await Self.admitted(step))
        }
        // Blocks of 1,000 leased ahead of need: about one lease per thousand requests.
        #expect(redis.leases.load(ordering: .relaxed) <= 12, "\(redis.leases.load(ordering: .relaxed)) leases")
        #expect(synchronous >= 9_990)
        #expect(node.snapshot.admitted == 10_000)
    }

    @Test func aCostSpendsThatManyUnitsAndARefusalSpendsNothing() async throws {
        let redis = FakeRedis(), clock = Clock()
        let node = Self.limiter(redis, clock)
        let limit = try RateLimit(name: "units", limit: 10, durationMilliseconds: 10_000)
        #expect(try await Self.admitted(node.admit(Self.hash, limit, cost: 4, on: Self.loop)))
        #expect(try await Self.admitted(node.admit(Self.hash, limit, cost: 4, on: Self.loop)))
        #expect(try await !Self.admitted(node.admit(Self.hash, limit, cost: 4, on: Self.loop)), "8 of 10 spent: 4 more do not fit")
        #expect(try await Self.admitted(node.admit(Self.hash, limit, cost: 2, on: Self.loop)), "the refused 4 cost nothing")
    }

    @Test func anEditedLimitStartsAFreshPool() async throws {
        let redis = FakeRedis(), clock = Clock()
        let node = Self.limiter(redis, clock)
        let old = try RateLimit(name: "default", limit: 2, durationMilliseconds: 60_000)
        for _ in 0..<2 { #expect(try await Self.admitted(node.admit(Self.hash, old, on: Self.loop))) }
        #expect(try await !Self.admitted(node.admit(Self.hash, old, on: Self.loop)))
        let raised = try RateLimit(name: "higher", limit: 5, durationMilliseconds: 60_000)
        #expect(try await Self.admitted(node.admit(Self.hash, raised, on: Self.loop)))
    }

    @Test func withRedisDownANodeAdmitsItsPreviousShareOncePerWindow() async throws {
        let redis = FakeRedis(), clock = Clock()
        let node = Self.limiter(redis, clock)
        let limit = try RateLimit(name: "default", limit: 8, durationMilliseconds: 1_000)
        clock.now.store(1_800_000_000_000, ordering: .relaxed) // a window boundary
        var admitted = 0
        for _ in 0..<20 where try await Self.admitted(node.admit(Self.hash, limit, on: Self.loop)) { admitted += 1 }
        #expect(admitted == 8)
        let share = Int(node.snapshot.tokensLeased)
        clock.advance(milliseconds: 1_000)
        redis.down.store(true, ordering: .relaxed)
        admitted = 0
        for _ in 0..<20 where try await Self.admitted(node.admit(Self.hash, limit, on: Self.loop)) { admitted += 1 }
        #expect(admitted == share, "the share it leased in the window before")
        #expect(node.snapshot.localDecisions == 13, "the first admission and the 12 refusals asked Redis and fell back")
        #expect(node.snapshot.leaseFailures == 13)
    }

    @Test func theRecordFormRoundTripsAndRefusesWhatItDidNotWrite() throws {
        let limits = [try RateLimit(parsing: "100/1m"), try RateLimit(parsing: "hourly=5000/1h:exact")]
        #expect(limits[1].exact)
        let text = RateLimit.storageText(limits)
        #expect(text == "default:100:60000 hourly:5000:3600000:exact")
        #expect(RateLimit.fromStorage(Substring(text)) == limits)
        #expect(RateLimit.fromStorage("") == [])
        for bad in ["default:100", "default:0:60000", "Bad:1:1000", "x:1:1000:fast", "x:1:10"] {
            #expect(RateLimit.fromStorage(Substring(bad)) == nil, "\(bad)")
        }
        #expect(limits.map(\.text) == ["default=100/1m", "hourly=5000/1h:exact"])
        #expect(throws: KeygateError.self) { try RateLimit.validate([limits[0], limits[0]]) }
        #expect(throws: KeygateError.self) {
            try RateLimit.validate((0..<9).map { try RateLimit(name: "l\($0)", limit: 1, durationMilliseconds: 1_000) })
        }
    }

    static func outcome(_ step: RateLimiter.OutcomeStep) async throws -> RateLimiter.Outcome {
        switch step {
        case .decided(let outcome): return outcome
        case .pending(let future): return try await future.get()
        }
    }

    @Test func aRequestMustPassEveryLimitAndARefusalGivesTheOthersBack() async throws {
        let redis = FakeRedis(), clock = Clock()
        let node = Self.limiter(redis, clock)
        let wide = try RateLimit(name: "wide", limit: 2, durationMilliseconds: 60_000)
        let narrow = try RateLimit(name: "narrow", limit: 1, durationMilliseconds: 60_000)
        guard case .admitted(let quota) = try await Self.outcome(node.admit(Self.hash, [wide, narrow], on: Self.loop)) else {
            Issue.record("the first request was refused"); return
        }
        #expect(quota.limit == narrow && quota.remaining == 0, "the quota shown is the one with the least left")
        guard case .refused(let refusal) = try await Self.outcome(node.admit(Self.hash, [wide, narrow], on: Self.loop)) else {
            Issue.record("the second request was admitted past the narrow limit"); return
        }
        #expect(refusal.limit == narrow)
        // The unit the wide limit gave the refused request came back: one is still there.
        #expect(try await Self.admitted(node.admit(Self.hash, wide, on: Self.loop)))
        #expect(try await !Self.admitted(node.admit(Self.hash, wide, on: Self.loop)))
    }

    @Test func anExactLimitHoldsNoTokensOnAnyNode() async throws {
        let redis = FakeRedis(), clock = Clock()
        let nodes = (0..<3).map { _ in Self.limiter(redis, clock) }
        let limit = try RateLimit(name: "default", limit: 1_000, durationMilliseconds: 60_000, exact: true)
        var admitted = 0
        for index in 0..<300 where try await Self.admitted(nodes[index % 3].admit(Self.hash, limit, on: Self.loop)) { admitted += 1 }
        #expect(admitted == 300)
        // Every unit handed out was spent: no node leased ahead of a request.
        #expect(redis.handedOut.withLock { $0.values.reduce(0, +) } == 300)
        #expect(redis.leases.load(ordering: .relaxed) == 300)
    }

    @Test func redisGoingDownMidWindowAdmitsNoMoreThanTheShare() async throws {
        let redis = FakeRedis(), clock = Clock()
        let node = Self.limiter(redis, clock)
        let limit = try RateLimit(name: "default", limit: 5, durationMilliseconds: 3_600_000)
        for _ in 0..<3 { #expect(try await Self.admitted(node.admit(Self.hash, limit, on: Self.loop))) }
        redis.down.store(true, ordering: .relaxed)
        var admitted = 0
        for _ in 0..<6 where try await Self.admitted(node.admit(Self.hash, limit, on: Self.loop)) { admitted += 1 }
        #expect(admitted == 2, "no previous window: the whole limit is the share, 3 of it leased already")
    }
}
