public import NIOCore

/// Counts verified requests per key on each event loop, with no lock shared between loops: the
/// data plane calls `record` on its own loop; the flusher drains every loop now and then.
public final class UsageRecorder: Sendable {
    struct Delta {
        var count: Int64
        var lastUsedMilliseconds: Int64

        mutating func use(at milliseconds: Int64) {
            count += 1
            lastUsedMilliseconds = milliseconds
        }
    }

    private final class LoopCounts {
        var deltas: [KeyHash: Delta] = [:]
    }

    private let counts: [ObjectIdentifier: NIOLoopBoundBox<LoopCounts>]
    private let loops: [any EventLoop]

    public init(eventLoopGroup: any EventLoopGroup) {
        var counts: [ObjectIdentifier: NIOLoopBoundBox<LoopCounts>] = [:]
        var loops: [any EventLoop] = []
        for loop in eventLoopGroup.makeIterator() {
            counts[ObjectIdentifier(loop)] = NIOLoopBoundBox.makeBoxSendingValue(LoopCounts(), eventLoop: loop)
            loops.append(loop)
        }
        self.counts = counts
        self.loops = loops
    }

    /// Counts one use of `hash`. Call on `eventLoop`, which must belong to the group.
    public func record(_ hash: KeyHash, nowMilliseconds: Int64, on eventLoop: any EventLoop) {
        guard let box = counts[ObjectIdentifier(eventLoop)] else {
            preconditionFailure("UsageRecorder.record called for an event loop outside its group")
        }
        box.value.deltas[hash, default: Delta(count: 0, lastUsedMilliseconds: 0)].use(at: nowMilliseconds) // one lookup
    }

    /// Takes every loop's counts, leaving them empty.
    func drain() async -> [KeyHash: Delta] {
        var merged: [KeyHash: Delta] = [:]
        for loop in loops {
            guard let box = counts[ObjectIdentifier(loop)] else { continue }
            let taken = try? await loop.submit { () -> [KeyHash: Delta] in
                let deltas = box.value.deltas
                box.value.deltas = [:]
                return deltas
            }.get()
            for (hash, delta) in taken ?? [:] {
                merged[hash, default: Delta(count: 0, lastUsedMilliseconds: 0)].count += delta.count
                merged[hash]!.lastUsedMilliseconds = max(merged[hash]!.lastUsedMilliseconds, delta.lastUsedMilliseconds)
            }
        }
        return merged
    }
}

extension UsageRecorder.Delta: Sendable {}
