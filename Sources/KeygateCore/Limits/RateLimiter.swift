public import NIOCore
import Synchronization

/// The node's side of cluster-wide rate limits: tokens leased from Redis (`KeyStore.leaseTokens`)
/// per subject (a key's rotation chain), limit and fixed window, then spent here without a Redis
/// command per request.
///
/// Exact across nodes: a node admits a request only with a token it holds, and Redis hands out at
/// most `limit` tokens per window in all, so the nodes together admit at most `limit` units in any
/// one window (a period of `duration` that straddles two windows can see up to twice that, as with
/// every fixed-window limiter). What a node leases and does not spend before the window ends is
/// lost: the error is only ever fewer admitted, never more. A lease asks for a block of
/// `limit / 20` tokens (1-1,000), and Redis grants at most half of what the window has left, so
/// blocks shrink as the window fills and a small limit is decided token by token in Redis. A node
/// leases the next block before its tokens run out (below half a block), so a busy key stays on the
/// synchronous path. An `exact` limit leases exactly what the waiting requests cost and holds no
/// tokens: every request is decided in Redis, and none are lost to another node's unspent lease.
///
/// With Redis unreachable, a pool without tokens tops itself up, once per window, to what this node
/// leased in its previous window (its demonstrated share of the key's traffic; the whole limit if it
/// has none yet), less what it leased in this window already, and counts those decisions in
/// `localDecisions`. So a node alone never admits more than its share in a window, Redis or not.
public final class RateLimiter: Sendable {
    public typealias Lease = @Sendable (_ subject: String, _ limit: RateLimit, _ window: Int64, _ wanted: Int, _ on: any EventLoop)
        -> EventLoopFuture<(granted: Int, handedOut: Int)>

    public enum Admission: Sendable, Equatable {
        /// `remaining`: what the window has left as this node knows it (an estimate: other nodes spend too).
        case admitted(remaining: Int, resetsAt: Int64)
        /// No tokens left in this window; `resetsAt` is its end (Unix milliseconds).
        case refused(resetsAt: Int64)
    }

    public enum Step: Sendable {
        case decided(Admission)
        case pending(EventLoopFuture<Admission>)
    }

    /// Where one limit stood for a request: what is left in its window, and when the window ends.
    public struct Quota: Sendable, Equatable {
        public var limit: RateLimit
        public var remaining: Int
        /// Unix milliseconds.
        public var resetsAt: Int64
    }

    /// A request against all of a key's limits.
    public enum Outcome: Sendable, Equatable {
        /// Every limit admitted it; the quota is the one with the least left (for the `RateLimit` field).
        case admitted(Quota)
        /// This limit had nothing left; the limits before it were given their units back.
        case refused(Quota)
    }

    public enum OutcomeStep: Sendable {
        case decided(Outcome)
        case pending(EventLoopFuture<Outcome>)
    }

    private struct PoolKey: Hashable {
        var subject: String
        /// The whole limit: an edited limit starts a fresh pool rather than reusing the old one's tokens.
        var limit: RateLimit
    }

    private struct Waiter {
        var cost: Int
        var promise: EventLoopPromise<Admission>
    }

    private struct Pool {
        var window: Int64
        /// Held by this node, not spent yet.
        var tokens = 0
        /// Handed out in the window by Redis to every node, as of this node's last lease.
        var handedOut = 0
        /// Redis had none left for this window.
        var exhausted = false
        /// A lease is in flight (one at a time per pool, so a burst on one node cannot take every
        /// token of the window before the other nodes ask); requests that found no token wait here
        /// for it, in order.
        var leasing = false
        var waiters: [Waiter] = []
        /// Leased in this window, and in this node's previous window of this pool (its share).
        var leased = 0
        var previouslyLeased: Int?
        /// The local allowance for Redis being unreachable was used in this window.
        var fellBack = false
    }

    /// Per limit checked (a request against two limits counts twice); the data plane counts requests.
    public struct Counters: Sendable {
        public var admitted: UInt64 = 0
        public var refused: UInt64 = 0
        public var leases: UInt64 = 0
        public var tokensLeased: UInt64 = 0
        public var leaseFailures: UInt64 = 0
        /// Requests decided with the local allowance while Redis could not be asked.
        public var localDecisions: UInt64 = 0
    }

    private let pools = Mutex<[PoolKey: Pool]>([:])
    private let counters = Mutex(Counters())
    private let lease: Lease
    private let clock: @Sendable () -> Int64
    private let capacity: Int

    /// - Parameters:
    ///   - clock: Unix milliseconds (tests inject one).
    ///   - capacity: pools kept; past it, pools of ended windows are dropped first.
    public init(capacity: Int = 100_000, clock: @escaping @Sendable () -> Int64, lease: @escaping Lease) {
        self.capacity = capacity
        self.clock = clock
        self.lease = lease
    }

    public var snapshot: Counters {
        var snapshot = counters.withLock { $0 }
        snapshot.admitted += admittedFromHeld.load(ordering: .relaxed)
        return snapshot
    }
    /// Requests admitted from tokens already held: the hit path's counter, an atomic rather than a lock.
    private let admittedFromHeld = Atomic<UInt64>(0)

    static func block(for limit: RateLimit) -> Int { limit.exact ? 1 : min(1_000, max(1, limit.limit / 20)) }

    /// Spends `cost` units of every limit in `limits` for `subject`, in order; a refusal gives the
    /// units taken from the earlier limits back, so a refused request costs nothing.
    public func admit(_ subject: String, _ limits: [RateLimit], cost: Int = 1, on eventLoop: any EventLoop) -> OutcomeStep {
        admit(subject, limits, from: 0, cost: cost, tightest: nil, on: eventLoop)
    }

    private func admit(_ subject: String, _ limits: [RateLimit], from start: Int, cost: Int, tightest: Quota?,
                       on eventLoop: any EventLoop) -> OutcomeStep {
        var tightest = tightest
        var index = start
        while index < limits.count {
            switch admit(subject, limits[index], cost: cost, on: eventLoop) {
            case .decided(let admission):
                switch apply(admission, subject, limits, at: index, cost: cost, tightest: tightest) {
                case .done(let outcome): return .decided(outcome)
                case .next(let quota): tightest = quota
                }
                index += 1
            case .pending(let future):
                let at = index, sofar = tightest
                return .pending(future.flatMap { admission in
                    switch self.apply(admission, subject, limits, at: at, cost: cost, tightest: sofar) {
                    case .done(let outcome): return eventLoop.makeSucceededFuture(outcome)
                    case .next(let quota):
                        switch self.admit(subject, limits, from: at + 1, cost: cost, tightest: quota, on: eventLoop) {
                        case .decided(let outcome): return eventLoop.makeSucceededFuture(outcome)
                        case .pending(let next): return next
                        }
                    }
                })
            }
        }
        guard let tightest else { preconditionFailure("admit needs at least one limit") }
        return .decided(.admitted(tightest))
    }

    private enum Progress { case done(Outcome), next(Quota) }

    /// One limit's answer: the outcome (a refusal gives the earlier limits their units back), or
    /// the quota with the least left so far, to go on with the next limit.
    private func apply(_ admission: Admission, _ subject: String, _ limits: [RateLimit], at index: Int, cost: Int,
                       tightest: Quota?) -> Progress {
        let limit = limits[index]
        switch admission {
        case .admitted(let remaining, let resetsAt):
            if let tightest, tightest.remaining <= remaining { return .next(tightest) }
            return .next(Quota(limit: limit, remaining: remaining, resetsAt: resetsAt))
        case .refused(let resetsAt):
            for earlier in limits[..<index] { refund(subject, earlier, cost: cost) }
            return .done(.refused(Quota(limit: limit, remaining: 0, resetsAt: resetsAt)))
        }
    }

    /// Gives `cost` units back to this node's tokens of `limit`'s current window (a request admitted
    /// by it was refused by another limit). Redis still counts them as handed out: they are spent
    /// by this node's next requests, never handed out twice.
    func refund(_ subject: String, _ limit: RateLimit, cost: Int) {
        let key = PoolKey(subject: subject, limit: limit)
        let window = limit.window(at: clock()).index
        pools.withLock { pools in
            guard var pool = pools[key], pool.window == window else { return }
            pool.tokens += cost
            pools[key] = pool
        }
    }

    /// Spends `cost` units of `limit` for `subject`: decided now from the tokens held, or after a lease.
    public func admit(_ subject: String, _ limit: RateLimit, cost: Int = 1, on eventLoop: any EventLoop) -> Step {
        let key = PoolKey(subject: subject, limit: limit)
        let now = clock()
        let (window, resetsAt) = limit.window(at: now)
        let block = Self.block(for: limit)
        let next = pools.withLock { pools -> Next in
            // One hash of the key per request: the pool is changed in place through its index.
            let index: Dictionary<PoolKey, Pool>.Index
            if let found = pools.index(forKey: key) {
                index = found
            } else {
                pools[key] = Self.pool(inserting: key, window: window, now: now, into: &pools, capacity: capacity)
                index = pools.index(forKey: key)!
            }
            return Self.take(&pools.values[index], cost: cost, window: window, limit: limit, block: block, on: eventLoop)
        }
        switch next {
        case .admitted(let remaining, let lease):
            admittedFromHeld.add(1, ordering: .relaxed)
            if lease { self.lease(key, window: window, resetsAt: resetsAt, on: eventLoop) }
            return .decided(.admitted(remaining: remaining, resetsAt: resetsAt))
        case .refused:
            count { $0.refused += 1 }
            return .decided(.refused(resetsAt: resetsAt))
        case .wait(let future, let lease):
            if lease { self.lease(key, window: window, resetsAt: resetsAt, on: eventLoop) }
            return .pending(future)
        }
    }

    private enum Next { case admitted(Int, lease: Bool), refused, wait(EventLoopFuture<Admission>, lease: Bool) }

    /// One request against a pool, under the lock: admitted from the tokens held (asking for the
    /// next block before this one runs out), refused (the window is exhausted), or queued for a lease.
    private static func take(_ pool: inout Pool, cost: Int, window: Int64, limit: RateLimit, block: Int,
                             on eventLoop: any EventLoop) -> Next {
        roll(&pool, to: window)
        if pool.tokens >= cost && pool.waiters.isEmpty {
            pool.tokens -= cost
            let ahead = !limit.exact && !pool.exhausted && !pool.leasing && pool.tokens < block / 2
            if ahead { pool.leasing = true }
            return .admitted(max(0, limit.limit - pool.handedOut + pool.tokens), lease: ahead)
        }
        if pool.exhausted { return .refused }
        let promise = eventLoop.makePromise(of: Admission.self)
        pool.waiters.append(Waiter(cost: cost, promise: promise))
        let start = !pool.leasing
        pool.leasing = true
        return .wait(promise.futureResult, lease: start)
    }

    /// A new window: the tokens held for the old one are gone, its lease total becomes the share.
    private static func roll(_ pool: inout Pool, to window: Int64) {
        guard pool.window != window else { return }
        let share = pool.window == window - 1 ? pool.leased : nil
        pool = Pool(window: window)
        pool.previouslyLeased = share
    }

    private static func pool(inserting key: PoolKey, window: Int64, now: Int64, into pools: inout [PoolKey: Pool], capacity: Int) -> Pool {
        if pools.count >= capacity {
            // Pools of ended windows hold nothing worth keeping; if every pool is current, drop any
            // half (their tokens are lost: fewer admitted, never more).
            pools = pools.filter { $0.value.window >= $0.key.limit.window(at: now).index }
            if pools.count >= capacity { pools = Dictionary(uniqueKeysWithValues: pools.prefix(capacity / 2).map { ($0.key, $0.value) }) }
        }
        return Pool(window: window)
    }

    /// Leases a block (enough for the waiters), then serves the waiters in order; leases again while
    /// some still wait and the window has tokens left, refuses them once it has none.
    private func lease(_ key: PoolKey, window: Int64, resetsAt: Int64, on eventLoop: any EventLoop) {
        let wanted = pools.withLock { pools in
            let pool = pools[key]
            return max(Self.block(for: key.limit), (pool?.waiters.reduce(0) { $0 + $1.cost } ?? 0) - (pool?.tokens ?? 0))
        }
        count { $0.leases += 1 }
        lease(key.subject, key.limit, window, wanted, eventLoop).whenComplete { result in
            self.record(result)
            var settled: [(EventLoopPromise<Admission>, Admission)] = []
            var again = false
            var local = 0
            self.pools.withLock { pools in
                guard var pool = pools[key] else { return }
                defer { pools[key] = pool }
                guard pool.window == window else {
                    // The window ended while the lease was out: its tokens are of no use now.
                    settled = pool.waiters.map { ($0.promise, .refused(resetsAt: resetsAt)) }
                    pool.waiters = []
                    return
                }
                switch result {
                case .success(let grant):
                    Self.add(grant, limit: key.limit, to: &pool)
                case .failure:
                    // Redis could not be asked: the local allowance, once per window.
                    local = pool.waiters.count
                    if !pool.fellBack {
                        pool.fellBack = true
                        pool.tokens += max(0, (pool.previouslyLeased ?? key.limit.limit) - pool.leased)
                    }
                }
                while let first = pool.waiters.first, pool.tokens >= first.cost {
                    pool.tokens -= first.cost
                    pool.waiters.removeFirst()
                    settled.append((first.promise, .admitted(remaining: max(0, key.limit.limit - pool.handedOut + pool.tokens), resetsAt: resetsAt)))
                }
                if pool.waiters.isEmpty || pool.exhausted || local > 0 {
                    settled += pool.waiters.map { ($0.promise, .refused(resetsAt: resetsAt)) }
                    pool.waiters = []
                    pool.leasing = false
                } else {
                    again = true
                }
            }
            let admitted = settled.filter { if case .admitted = $0.1 { return true } else { return false } }.count
            self.count { counters in
                counters.admitted += UInt64(admitted)
                counters.refused += UInt64(settled.count - admitted)
                counters.localDecisions += UInt64(min(local, settled.count))
            }
            for (promise, admission) in settled { promise.succeed(admission) }
            if again { self.lease(key, window: window, resetsAt: resetsAt, on: eventLoop) }
        }
    }

    private static func add(_ grant: (granted: Int, handedOut: Int), limit: RateLimit, to pool: inout Pool) {
        pool.tokens += grant.granted
        pool.leased += grant.granted
        pool.handedOut = max(pool.handedOut, grant.handedOut)
        if grant.granted == 0 || grant.handedOut >= limit.limit { pool.exhausted = true }
    }

    private func record(_ result: Result<(granted: Int, handedOut: Int), any Error>) {
        switch result {
        case .success(let grant): count { $0.tokensLeased += UInt64(grant.granted) }
        case .failure: count { $0.leaseFailures += 1 }
        }
    }

    private func count(_ change: (inout Counters) -> Void) { counters.withLock { change(&$0) } }
}
