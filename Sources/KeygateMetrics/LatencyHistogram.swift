import Synchronization

/// A fixed-bucket latency histogram that any thread can observe into without a lock: one relaxed
/// atomic add for the bucket and one for the sum. Buckets are stored non-cumulatively and summed
/// when scraped, so an observation touches exactly two counters.
public final class LatencyHistogram: Sendable {
    /// Upper bounds in seconds; the last bucket (+Inf) is implicit.
    public let bounds: [Double]
    private let boundsNanoseconds: [UInt64]
    private let buckets: [AtomicCounter]
    private let sumNanoseconds = Atomic<UInt64>(0)

    /// 50 us to 2.5 s: a cache hit lands in the first bucket, a Redis deadline in the last few.
    public static let defaultBounds: [Double] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

    public init(bounds: [Double] = LatencyHistogram.defaultBounds) {
        precondition(!bounds.isEmpty && zip(bounds, bounds.dropFirst()).allSatisfy { $0 < $1 }, "bounds must increase")
        self.bounds = bounds
        self.boundsNanoseconds = bounds.map { UInt64(($0 * 1e9).rounded()) }
        self.buckets = (0...bounds.count).map { _ in AtomicCounter() }
    }

    public func observe(nanoseconds: UInt64) {
        var index = 0
        while index < boundsNanoseconds.count && nanoseconds > boundsNanoseconds[index] { index += 1 }
        buckets[index].add()
        sumNanoseconds.add(nanoseconds, ordering: .relaxed)
    }

    /// A consistent-enough copy for one scrape: cumulative counts per bound, then +Inf.
    public func snapshot() -> Snapshot {
        var cumulative: [UInt64] = []
        var running: UInt64 = 0
        for bucket in buckets {
            running += bucket.load()
            cumulative.append(running)
        }
        return Snapshot(bounds: bounds, cumulativeCounts: cumulative,
                        sumSeconds: Double(sumNanoseconds.load(ordering: .relaxed)) / 1e9)
    }

    public struct Snapshot: Sendable {
        public var bounds: [Double]
        /// One per bound, then the +Inf count (the total).
        public var cumulativeCounts: [UInt64]
        public var sumSeconds: Double
        public var count: UInt64 { cumulativeCounts.last ?? 0 }
    }
}

/// A counter in a class, so several can live in an array; relaxed ordering, as metrics need.
public final class AtomicCounter: Sendable {
    private let value = Atomic<UInt64>(0)
    public init() {}
    public func add(_ amount: UInt64 = 1) { value.add(amount, ordering: .relaxed) }
    public func load() -> UInt64 { value.load(ordering: .relaxed) }
}
