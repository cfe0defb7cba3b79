import Foundation
public import NIOCore

/// Counts verified requests per key on each event loop, with no lock shared between loops: the
/// data plane calls `record` on its own loop; the flusher drains every loop now and then.
///
/// A use is stamped with the monotonic reading the verification already took (no wall-clock read
/// per request); `drain` turns the stamps into Unix milliseconds with one pair of clock readings.
public final class UsageRecorder: Sendable {
    /// Uses (admitted requests) and refusals of one key since the last drain, as the flusher sees them.
    struct Delta {
        var count: Int64
        var lastUsedMilliseconds: Int64
        var refused = RefusalCounts()
    }

    /// One event loop's counts. Data-plane connections keep their loop's counter, so a use costs one
    /// dictionary update and no lookup of the loop.
    public final class LoopCounter: @unchecked Sendable { // touched only on `eventLoop`
        struct Uses {
            var count: Int64
            var lastUptimeNanoseconds: UInt64
            var refused = RefusalCounts()
        }

        let eventLoop: any EventLoop
        fileprivate var uses: [KeyHash: Uses] = [:]

        init(eventLoop: any EventLoop) { self.eventLoop = eventLoop }

        /// Counts one use of `hash` at `uptimeNanoseconds` (`NIODeadline` uptime). Call on `eventLoop`.
        public func record(_ hash: KeyHash, uptimeNanoseconds: UInt64) {
            eventLoop.assertInEventLoop()
            uses[hash, default: Uses(count: 0, lastUptimeNanoseconds: 0)].record(at: uptimeNanoseconds) // one lookup
        }

        /// Counts one refused request of the valid key `hash` (not a use: its last-used time stays).
        public func recordRefusal(_ hash: KeyHash, _ reason: RefusalCounts.Reason) {
            eventLoop.assertInEventLoop()
            uses[hash, default: Uses(count: 0, lastUptimeNanoseconds: 0)].refused.add(reason)
        }
    }

    private let counters: [ObjectIdentifier: LoopCounter]
    private let loops: [any EventLoop]

    public init(eventLoopGroup: any EventLoopGroup) {
        var counters: [ObjectIdentifier: LoopCounter] = [:]
        var loops: [any EventLoop] = []
        for loop in eventLoopGroup.makeIterator() {
            counters[ObjectIdentifier(loop)] = LoopCounter(eventLoop: loop)
            loops.append(loop)
        }
        self.counters = counters
        self.loops = loops
    }

    /// The counter of `eventLoop`, which must belong to the group.
    public func counter(for eventLoop: any EventLoop) -> LoopCounter {
        guard let counter = counters[ObjectIdentifier(eventLoop)] else {
            preconditionFailure("UsageRecorder used for an event loop outside its group")
        }
        return counter
    }

    /// Takes every loop's counts, leaving them empty.
    func drain() async -> [KeyHash: Delta] {
        var merged: [KeyHash: Delta] = [:]
        for loop in loops {
            guard let counter = counters[ObjectIdentifier(loop)] else { continue }
            // One wall-clock reading per loop converts every monotonic stamp taken on it.
            typealias Taken = (uses: [KeyHash: LoopCounter.Uses], nowMilliseconds: Int64, nowUptime: UInt64)
            guard let taken = try? await loop.submit({ () -> Taken in
                let uses = counter.uses
                counter.uses = [:]
                return (uses, Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)), NIODeadline.now().uptimeNanoseconds)
            }).get() else { continue }
            for (hash, use) in taken.uses {
                // A key only refused on this loop has no use time.
                let lastUsed = use.count == 0 ? 0 : taken.nowMilliseconds - Int64((taken.nowUptime &- use.lastUptimeNanoseconds) / 1_000_000)
                merged[hash, default: Delta(count: 0, lastUsedMilliseconds: 0)].merge(Delta(count: use.count, lastUsedMilliseconds: lastUsed,
                                                                                           refused: use.refused))
            }
        }
        return merged
    }
}

extension UsageRecorder.LoopCounter.Uses {
    mutating func record(at uptimeNanoseconds: UInt64) {
        count += 1
        lastUptimeNanoseconds = max(lastUptimeNanoseconds, uptimeNanoseconds)
    }
}

extension UsageRecorder.Delta: Sendable {
    mutating func merge(_ other: Self) {
        count += other.count
        lastUsedMilliseconds = max(lastUsedMilliseconds, other.lastUsedMilliseconds)
        refused = refused + other.refused
    }
}
