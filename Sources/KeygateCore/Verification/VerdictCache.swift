public import NIOCore
public import Synchronization

/// The node's cache of verdicts, shared by all event loops (16 lock stripes by hash; critical
/// sections are a dictionary probe).
///
/// - Positive entries (active keys) live at most `positiveMaxAge` (rule 6); negative entries
///   (unknown, revoked, disabled) sit in a separate, smaller LRU for `negativeTTL`, so a flood of
///   unknown keys cannot evict good entries (rule 7).
/// - A miss installs a placeholder carrying the current generation; concurrent misses for the same
///   hash wait on it (single flight). An invalidation removes the placeholder and a lost invalidation
///   channel bumps the generation, so a lookup that raced either is answered but never stored (rule 3).
/// - While the invalidation channel is not confirmed (`isTrusted == false`) nothing is served from the
///   cache: every request reads Redis (rule 1).
public final class VerdictCache: Sendable {
    public struct Settings: Sendable, Equatable {
        public var capacity = 1_000_000
        public var negativeCapacity = 100_000
        public var positiveMaxAge: Duration = .seconds(60)
        public var negativeTTL: Duration = .seconds(5)
        public init() {}
    }

    struct PositiveEntry {
        var verdict: Verdict
        var cachedAt: UInt64 // NIODeadline uptime nanoseconds
    }

    struct NegativeEntry {
        var reason: InvalidReason
        var cachedAt: UInt64
    }

    /// A lookup in flight for one hash; its waiters get its decision.
    final class Placeholder: @unchecked Sendable { // mutated only under its shard's lock
        let generation: UInt64
        var waiters: [EventLoopPromise<Decision>] = []
        init(generation: UInt64) { self.generation = generation }
    }

    private struct Shard {
        var positive: LRUCache<PositiveEntry>
        var negative: LRUCache<NegativeEntry>
        var placeholders: [KeyHash: Placeholder] = [:]
        var principals: [PrincipalKey: Principal] = [:]
    }

    /// Byte-exact (`ExactString`): `Ken` and `\u{212A}en` are two users and must not share a principal.
    private struct PrincipalKey: Hashable {
        var user: ExactString
        var scopes: [ExactString]
    }

    private final class ShardBox: Sendable {
        let state: Mutex<Shard>
        init(positiveCapacity: Int, negativeCapacity: Int) {
            state = Mutex(Shard(positive: LRUCache(capacity: positiveCapacity), negative: LRUCache(capacity: negativeCapacity)))
        }
    }

    static let shardCount = 16
    public let settings: Settings
    private let shards: [ShardBox]
    private let positiveMaxAge: UInt64
    private let negativeTTL: UInt64
    private let generationCounter = Atomic<UInt64>(1)
    private let trusted = Atomic<Bool>(false)
    /// Uptime ns when the invalidation path was lost (0 while trusted): the start of the stale window.
    private let suspectSince = Atomic<UInt64>(0)
    let metrics: CacheMetrics

    public init(settings: Settings = Settings(), metrics: CacheMetrics = CacheMetrics()) {
        self.settings = settings
        self.metrics = metrics
        let positivePerShard = max(1, settings.capacity / Self.shardCount)
        let negativePerShard = max(1, settings.negativeCapacity / Self.shardCount)
        shards = (0..<Self.shardCount).map { _ in
            ShardBox(positiveCapacity: positivePerShard, negativeCapacity: negativePerShard)
        }
        positiveMaxAge = UInt64(TimeAmount(settings.positiveMaxAge).nanoseconds)
        negativeTTL = UInt64(TimeAmount(settings.negativeTTL).nanoseconds)
    }

    private func shard(_ hash: KeyHash) -> ShardBox { shards[Int(hash.d & UInt64(Self.shardCount - 1))] }

    public var generation: UInt64 { generationCounter.load(ordering: .acquiring) }
    public var isTrusted: Bool { trusted.load(ordering: .acquiring) }

    // MARK: the request path

    enum Probe {
        /// Answered from the cache.
        case hit(Decision)
        /// Another request is already looking this hash up: wait for its answer.
        case wait(EventLoopFuture<Decision>)
        /// This request must look it up; complete with `finish`.
        case lookup(Placeholder)
    }

    func probe(_ hash: KeyHash, now: UInt64, eventLoop: any EventLoop) -> Probe {
        let trustedNow = isTrusted
        let generation = self.generation
        return shard(hash).state.withLock { shard -> Probe in
            if trustedNow, let decision = fresh(hash, in: &shard, now: now) { return .hit(decision) }
            metrics.misses.add(1, ordering: .relaxed)
            if let placeholder = shard.placeholders[hash], placeholder.generation == generation {
                let promise = eventLoop.makePromise(of: Decision.self)
                placeholder.waiters.append(promise)
                return .wait(promise.futureResult)
            }
            let placeholder = Placeholder(generation: generation)
            shard.placeholders[hash] = placeholder
            return .lookup(placeholder)
        }
    }

    /// The cached decision, if the cache is trusted and holds a fresh entry; nil otherwise. Unlike
    /// `probe` it never starts a lookup (and counts nothing on a miss): the failure limiter serves a
    /// cached valid key this way to an address that is over its limit.
    func cached(_ hash: KeyHash, now: UInt64) -> Decision? {
        guard isTrusted else { return nil }
        return shard(hash).state.withLock { fresh(hash, in: &$0, now: now) }
    }

    /// A fresh entry's decision (marking it recently used), dropping an expired one. Under the lock.
    private func fresh(_ hash: KeyHash, in shard: inout Shard, now: UInt64) -> Decision? {
        if let entry = shard.positive.get(hash) {
            if now &- entry.cachedAt < positiveMaxAge {
                metrics.hits.add(1, ordering: .relaxed)
                return .valid(entry.verdict)
            }
            shard.positive.remove(hash) // past the hard maximum age: refresh from Redis
        } else if let entry = shard.negative.get(hash) {
            if now &- entry.cachedAt < negativeTTL {
                metrics.hits.add(1, ordering: .relaxed)
                return .invalid(entry.reason)
            }
            shard.negative.remove(hash)
        }
        return nil
    }

    /// Ends a lookup: stores the outcome only if its placeholder survived (no invalidation, no
    /// generation change), and returns the waiters to answer.
    func finish(_ hash: KeyHash, _ placeholder: Placeholder, outcome: LookupOutcome, now: UInt64) -> [EventLoopPromise<Decision>] {
        let generation = self.generation
        return shard(hash).state.withLock { shard in
            let current = shard.placeholders[hash] === placeholder
            if current { shard.placeholders.removeValue(forKey: hash) }
            let waiters = placeholder.waiters
            placeholder.waiters = []
            guard current, placeholder.generation == generation else {
                metrics.placeholderDiscards.add(1, ordering: .relaxed)
                return waiters
            }
            switch outcome {
            case .active(let verdict):
                shard.negative.remove(hash)
                if shard.positive.set(hash, PositiveEntry(verdict: verdict, cachedAt: now)) { metrics.evictions.add(1, ordering: .relaxed) }
            case .refused(let reason):
                shard.positive.remove(hash)
                if shard.negative.set(hash, NegativeEntry(reason: reason, cachedAt: now)) { metrics.evictions.add(1, ordering: .relaxed) }
            case .failed:
                break
            }
            return waiters
        }
    }

    /// What Redis said about a hash.
    enum LookupOutcome {
        case active(Verdict)
        case refused(InvalidReason)
        case failed
    }

    /// A valid entry for serving during the stale-if-error window, regardless of trust; nil if none.
    func staleEntry(_ hash: KeyHash, now: UInt64, window: UInt64) -> Verdict? {
        guard window > 0 else { return nil }
        let since = suspectSince.load(ordering: .acquiring)
        // Trusted (Redis failing for an uncached-by-age entry) has no stale window: rule 6.
        guard since != 0, now &- since <= window else { return nil }
        return shard(hash).state.withLock { shard in
            guard let entry = shard.positive.get(hash), now &- entry.cachedAt < positiveMaxAge &+ window else { return nil }
            return entry.verdict
        }
    }

    /// The shared principal for a user and scopes (interned per shard; reset when it grows large).
    func principal(user: String, scopes: [String], for hash: KeyHash) -> Principal {
        shard(hash).state.withLock { shard in
            let key = PrincipalKey(user: ExactString(user), scopes: scopes.map(ExactString.init))
            if let existing = shard.principals[key] { return existing }
            if shard.principals.count >= 50_000 { shard.principals.removeAll(keepingCapacity: true) }
            let principal = Principal(user: user, scopes: scopes)
            shard.principals[key] = principal
            return principal
        }
    }

    // MARK: invalidation

    /// Drops everything known about `hash` (positive, negative, and any lookup in flight).
    public func invalidate(_ hash: KeyHash) {
        shard(hash).state.withLock { shard in
            shard.positive.remove(hash)
            shard.negative.remove(hash)
            shard.placeholders.removeValue(forKey: hash)
        }
        metrics.invalidationsApplied.add(1, ordering: .relaxed)
        metrics.lastInvalidationUptimeNanoseconds.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed)
    }

    /// The invalidation path was lost (rule 2): bump the generation so lookups in flight are not
    /// stored, stop serving from the cache, and start the stale window.
    public func markSuspect(now: UInt64 = NIODeadline.now().uptimeNanoseconds) {
        generationCounter.add(1, ordering: .acquiringAndReleasing)
        if trusted.exchange(false, ordering: .acquiringAndReleasing) {
            suspectSince.store(max(1, now), ordering: .releasing)
        } else if suspectSince.load(ordering: .acquiring) == 0 {
            suspectSince.store(max(1, now), ordering: .releasing)
        }
        for shard in shards { shard.state.withLock { $0.placeholders.removeAll() } }
    }

    /// The channel is subscribed and caught up: serve from the cache again.
    public func markTrusted() {
        suspectSince.store(0, ordering: .releasing)
        trusted.store(true, ordering: .releasing)
    }

    /// Empties both caches (after a replay gap, or on request).
    public func removeAll() {
        generationCounter.add(1, ordering: .acquiringAndReleasing)
        for shard in shards {
            shard.state.withLock { shard in
                shard.positive.removeAll()
                shard.negative.removeAll()
                shard.placeholders.removeAll()
            }
        }
    }

    /// Entries in the positive cache.
    public var count: Int { shards.reduce(0) { total, shard in total + shard.state.withLock { $0.positive.count } } }
    public var negativeCount: Int { shards.reduce(0) { total, shard in total + shard.state.withLock { $0.negative.count } } }
}

/// Counters of the cache, read by the metrics endpoint.
public final class CacheMetrics: Sendable {
    public let hits = Atomic<Int>(0)
    public let misses = Atomic<Int>(0)
    public let evictions = Atomic<Int>(0)
    public let placeholderDiscards = Atomic<Int>(0)
    public let invalidationsApplied = Atomic<Int>(0)
    /// When the last invalidation was applied (`NIODeadline.uptimeNanoseconds`): the node-side end of
    /// a propagation measurement.
    public let lastInvalidationUptimeNanoseconds = Atomic<UInt64>(0)
    public init() {}
}
