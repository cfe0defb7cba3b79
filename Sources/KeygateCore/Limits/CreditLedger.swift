public import NIOCore
import Synchronization

/// The node's side of usage credits: credits leased from a key's balance in Redis
/// (`KeyStore.leaseCredits`) and spent here without a Redis command per request.
///
/// Exact across nodes: a request is admitted only with a credit this node holds, and Redis
/// subtracts every credit it leases, so all nodes together never admit more than the balance. What a
/// node holds and does not spend it gives back once the key has been idle on it for
/// `returnAfterIdle` (and at a graceful shutdown), if the balance is still the one the credits came
/// from. A node killed with `kill -9` loses what it held for each key: at most one block, which is
/// about 250 ms of this node's recent spending on the key, at most 1,000 credits and at most a
/// quarter of the balance it last saw (the README states it). Held credits are topped up to a block
/// before they run out, so a busy key stays on the synchronous path and a quiet one holds almost
/// nothing.
///
/// A lease that finds the balance too small refuses the waiting requests, and the node refuses the
/// key's requests that cost more than that balance locally for a second (a refill period starting, or a new setting, ends that at
/// once) before asking again: credits another node gave back are found within that second. With
/// Redis unreachable no credit is granted beyond those held: a request that needs one is
/// `unavailable` (503, never a wrong 429).
public final class CreditLedger: Sendable {
    public struct Grant: Sendable, Equatable {
        public var granted: Int
        /// The balance in Redis after this lease.
        public var balance: Int
        /// The balance's refill period (the setting's period while no refill has happened).
        public var period: Int64
        public init(granted: Int, balance: Int, period: Int64) {
            self.granted = granted; self.balance = balance; self.period = period
        }
    }

    public typealias Lease = @Sendable (_ subject: String, _ setting: CreditSetting, _ period: Int64, _ need: Int, _ wanted: Int,
                                        _ on: any EventLoop) -> EventLoopFuture<Grant>
    /// Gives unspent credits back; true when Redis took them (false: the balance was replaced).
    public typealias GiveBack = @Sendable (_ subject: String, _ setting: CreditSetting, _ period: Int64, _ credits: Int) async throws -> Bool

    /// Where a key's credits stood for a request, as this node knows it (other nodes spend too).
    public struct Quota: Sendable, Equatable {
        public var remaining: Int
        /// The next refill (Unix milliseconds); nil without a refill.
        public var refillsAt: Int64?
        /// Whole seconds to the next refill at the decision (at least 1), by the ledger's clock.
        public var refillsInSeconds: Int?

        init(remaining: Int, refillsAt: Int64?, now: Int64) {
            self.remaining = remaining
            self.refillsAt = refillsAt
            self.refillsInSeconds = refillsAt.map { Int(max(1, ($0 - now + 999) / 1_000)) }
        }
    }

    public enum Admission: Sendable, Equatable {
        case admitted(Quota)
        /// Not enough credits left for this request's cost.
        case exhausted(Quota)
        /// Redis could not be asked and this node holds too few credits.
        case unavailable
    }

    public enum Step: Sendable {
        case decided(Admission)
        case pending(EventLoopFuture<Admission>)
    }

    public struct Counters: Sendable {
        public var admitted: UInt64 = 0
        public var exhausted: UInt64 = 0
        public var unavailable: UInt64 = 0
        public var leases: UInt64 = 0
        public var leaseFailures: UInt64 = 0
        public var creditsLeased: UInt64 = 0
        public var creditsReturned: UInt64 = 0
        /// Unspent credits that could not go back: the balance was refilled or set anew meanwhile,
        /// or Redis could not be reached at shutdown.
        public var creditsDropped: UInt64 = 0
    }

    private struct PoolKey: Hashable {
        var subject: String
        /// A new setting (an operator set the balance) starts a fresh pool.
        var setting: CreditSetting
    }

    private struct Waiter {
        var cost: Int
        var promise: EventLoopPromise<Admission>
    }

    private struct Pool {
        /// Held by this node, not spent yet, leased from the balance of refill period `period`.
        var tokens = 0
        var period: Int64?
        /// The balance in Redis as of the last lease.
        var balance = 0
        /// When a lease found too few credits (Unix ms): refused locally for `recheckAfter`.
        var exhaustedAt: Int64?
        var leasing = false
        var waiters: [Waiter] = []
        /// Credits a lease asks for beyond what waits (~250 ms of recent spending).
        var block = 1
        var lastLeaseAt: Int64
        var spentSinceLease = 0
        var lastUsedAt: Int64
    }

    private let pools = Mutex<[PoolKey: Pool]>([:])
    private let counters = Mutex(Counters())
    private let lease: Lease
    private let giveBack: GiveBack
    private let clock: @Sendable () -> Int64
    static let recheckAfter: Int64 = 1_000
    static let maximumBlock = 1_000

    /// - Parameter clock: Unix milliseconds (tests inject one: refill periods follow it).
    public init(clock: @escaping @Sendable () -> Int64, lease: @escaping Lease, giveBack: @escaping GiveBack) {
        self.clock = clock
        self.lease = lease
        self.giveBack = giveBack
    }

    public var snapshot: Counters {
        var snapshot = counters.withLock { $0 }
        snapshot.admitted += admittedFromHeld.load(ordering: .relaxed)
        return snapshot
    }
    /// Requests admitted from credits already held: the hit path's counter, an atomic rather than a lock.
    private let admittedFromHeld = Atomic<UInt64>(0)

    /// Spends `cost` credits of `subject`'s balance: decided now from the credits held, or after a lease.
    public func spend(_ subject: String, _ setting: CreditSetting, cost: Int = 1, on eventLoop: any EventLoop) -> Step {
        let key = PoolKey(subject: subject, setting: setting)
        let now = clock()
        let period = setting.refill?.period(at: now) ?? setting.period
        let refillsAt = setting.refill.map { $0.start(ofPeriod: period + 1) }
        enum Next { case admitted(Int, lease: Bool), exhausted(Int), wait(EventLoopFuture<Admission>, lease: Bool) }
        let next = pools.withLock { pools -> Next in
            var pool = pools[key] ?? Pool(lastLeaseAt: now, lastUsedAt: now)
            defer { pools[key] = pool }
            if let held = pool.period, held < period {
                // A refill: the balance is the refill amount again; credits of the old period are
                // not spent in the new one (that could admit more than the amount).
                count { $0.creditsDropped += UInt64(pool.tokens) }
                pool.tokens = 0
                pool.period = nil
                pool.exhaustedAt = nil
            }
            pool.lastUsedAt = now
            if pool.tokens >= cost && pool.waiters.isEmpty {
                pool.tokens -= cost
                pool.spentSinceLease += cost
                let ahead = pool.block > 1 && !pool.leasing && pool.exhaustedAt == nil && pool.tokens * 2 < pool.block
                if ahead { pool.leasing = true }
                return .admitted(pool.balance + pool.tokens, lease: ahead)
            }
            // Redis's balance was too small a moment ago: a request it cannot cover is refused here.
            if let exhaustedAt = pool.exhaustedAt, now - exhaustedAt < Self.recheckAfter, pool.waiters.isEmpty,
               cost > pool.tokens + pool.balance {
                return .exhausted(pool.balance + pool.tokens)
            }
            let promise = eventLoop.makePromise(of: Admission.self)
            pool.waiters.append(Waiter(cost: cost, promise: promise))
            let start = !pool.leasing
            pool.leasing = true
            return .wait(promise.futureResult, lease: start)
        }
        switch next {
        case .admitted(let remaining, let lease):
            admittedFromHeld.add(1, ordering: .relaxed)
            if lease { self.lease(key, period: period, refillsAt: refillsAt, on: eventLoop) }
            return .decided(.admitted(Quota(remaining: remaining, refillsAt: refillsAt, now: now)))
        case .exhausted(let remaining):
            count { $0.exhausted += 1 }
            return .decided(.exhausted(Quota(remaining: remaining, refillsAt: refillsAt, now: now)))
        case .wait(let future, let lease):
            if lease { self.lease(key, period: period, refillsAt: refillsAt, on: eventLoop) }
            return .pending(future)
        }
    }

    /// Leases what the first waiter needs plus a block (and what the others wait for), serves the
    /// waiters in order, and leases again while some wait and the balance had enough.
    private func lease(_ key: PoolKey, period: Int64, refillsAt: Int64?, on eventLoop: any EventLoop) {
        let now = clock()
        let (need, wanted) = pools.withLock { pools -> (Int, Int) in
            guard var pool = pools[key] else { return (0, 1) }
            // The block follows this node's spending rate (about 250 ms of it), and is at most
            // 1,000 and a quarter of the balance as last seen: what a crash can cost.
            let elapsed = max(1, now - pool.lastLeaseAt)
            pool.block = min(Self.maximumBlock, max(1, pool.balance / 4), max(1, Int(Int64(pool.spentSinceLease) * 250 / elapsed)))
            pool.spentSinceLease = 0
            pool.lastLeaseAt = now
            pools[key] = pool
            // The first waiter whole, the other waiters, then a top-up of what is held to a block.
            let waiting = pool.waiters.reduce(0) { $0 + $1.cost }
            let need = max(0, (pool.waiters.first?.cost ?? 0) - pool.tokens)
            let shortfall = max(0, waiting - pool.tokens)
            let topUp = max(0, pool.block - max(0, pool.tokens - waiting))
            return (need, max(0, shortfall + topUp - need))
        }
        count { $0.leases += 1 }
        lease(key.subject, key.setting, period, need, wanted, eventLoop).whenComplete { result in
            var settled: [(EventLoopPromise<Admission>, Admission)] = []
            var again = false
            self.pools.withLock { pools in
                guard var pool = pools[key] else { return }
                defer { pools[key] = pool }
                switch result {
                case .success(let grant):
                    self.count { $0.creditsLeased += UInt64(grant.granted) }
                    if let held = pool.period, held != grant.period {
                        self.count { $0.creditsDropped += UInt64(pool.tokens) }
                        pool.tokens = 0
                    }
                    pool.tokens += grant.granted
                    pool.period = grant.period
                    pool.balance = grant.balance
                    while let first = pool.waiters.first, pool.tokens >= first.cost {
                        pool.tokens -= first.cost
                        pool.spentSinceLease += first.cost
                        pool.waiters.removeFirst()
                        settled.append((first.promise, .admitted(Quota(remaining: pool.balance + pool.tokens, refillsAt: refillsAt, now: now))))
                    }
                    if pool.waiters.isEmpty {
                        pool.exhaustedAt = nil
                    } else if grant.granted == 0 {
                        pool.exhaustedAt = self.clock()
                        settled += pool.waiters.map { ($0.promise, .exhausted(Quota(remaining: pool.balance + pool.tokens, refillsAt: refillsAt, now: now))) }
                        pool.waiters = []
                    } else {
                        again = true
                    }
                case .failure:
                    self.count { $0.leaseFailures += 1 }
                    settled = pool.waiters.map { ($0.promise, .unavailable) }
                    pool.waiters = []
                }
                if !again { pool.leasing = false }
            }
            self.count { counters in
                for (_, admission) in settled {
                    switch admission {
                    case .admitted: counters.admitted += 1
                    case .exhausted: counters.exhausted += 1
                    case .unavailable: counters.unavailable += 1
                    }
                }
            }
            for (promise, admission) in settled { promise.succeed(admission) }
            if again { self.lease(key, period: period, refillsAt: refillsAt, on: eventLoop) }
        }
    }

    /// Gives back the credits of keys not used on this node for `idleMilliseconds` (0 at shutdown:
    /// all of them), and forgets pools idle for a minute. Returns the credits given back.
    @discardableResult
    public func returnUnused(idleMilliseconds: Int64) async -> Int {
        let now = clock()
        let unused = pools.withLock { pools -> [(PoolKey, Int64, Int)] in
            var unused: [(PoolKey, Int64, Int)] = []
            for (key, var pool) in pools where !pool.leasing && now - pool.lastUsedAt >= idleMilliseconds {
                if pool.tokens > 0, let period = pool.period {
                    unused.append((key, period, pool.tokens))
                    pool.tokens = 0
                    pools[key] = pool
                }
                if now - pool.lastUsedAt >= 60_000 || idleMilliseconds == 0 { pools[key] = nil }
            }
            return unused
        }
        var returned = 0
        for (key, period, credits) in unused {
            switch try? await giveBack(key.subject, key.setting, period, credits) {
            case true?:
                returned += credits
                count { $0.creditsReturned += UInt64(credits) }
            case false?:
                count { $0.creditsDropped += UInt64(credits) } // the balance was refilled or set anew
            case nil:
                // Redis could not take them: keep them (spent here later, or given back next time),
                // unless this was the shutdown's last chance.
                let kept = idleMilliseconds > 0 && pools.withLock { pools in
                    guard var pool = pools[key], pool.period == period else { return false }
                    pool.tokens += credits
                    pools[key] = pool
                    return true
                }
                if !kept { count { $0.creditsDropped += UInt64(credits) } }
            }
        }
        return returned
    }

    /// Gives `cost` credits back to this node's holding for `subject` (a request they admitted was
    /// refused by a later limit). Redis still counts them as leased: this node spends them next,
    /// or gives them back to the balance when the key goes idle; never granted twice.
    func refund(_ subject: String, _ setting: CreditSetting, cost: Int) {
        let key = PoolKey(subject: subject, setting: setting)
        let period = setting.refill?.period(at: clock()) ?? setting.period
        pools.withLock { pools in
            guard var pool = pools[key], pool.period == period else { return }
            pool.tokens += cost
            pools[key] = pool
        }
    }

    /// Credits this node holds for `subject` now (tests and diagnostics).
    public func held(_ subject: String) -> Int {
        pools.withLock { pools in pools.filter { $0.key.subject == subject }.reduce(0) { $0 + $1.value.tokens } }
    }

    private func count(_ change: (inout Counters) -> Void) { counters.withLock { change(&$0) } }
}
