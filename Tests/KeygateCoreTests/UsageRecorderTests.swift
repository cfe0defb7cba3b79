import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import KeygateCore

@Suite struct UsageRecorderTests {
    static func wallMilliseconds() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }

    static func use(_ hash: KeyHash, _ recorder: UsageRecorder, on loop: any EventLoop) async throws {
        try await loop.submit { recorder.counter(for: loop).record(hash, uptimeNanoseconds: NIODeadline.now().uptimeNanoseconds) }.get()
    }

    @Test func drainSumsEveryLoopAndStampsWallClockTime() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let recorder = UsageRecorder(eventLoopGroup: group)
        let hash = KeyHasher().hash("abc"), other = KeyHasher().hash("def")
        let before = Self.wallMilliseconds()
        for loop in group.makeIterator() {
            try await Self.use(hash, recorder, on: loop)
            try await Self.use(hash, recorder, on: loop)
        }
        try await Self.use(other, recorder, on: group.next())
        let after = Self.wallMilliseconds()

        let drained = await recorder.drain()
        #expect(drained[hash]?.count == 4 && drained[other]?.count == 1 && drained.count == 2)
        let lastUsed = try #require(drained[hash]?.lastUsedMilliseconds)
        // Monotonic stamps become Unix milliseconds at drain time (rounding: a millisecond or two).
        #expect(lastUsed >= before - 2 && lastUsed <= after + 2, "\(before) <= \(lastUsed) <= \(after)")
        #expect(await recorder.drain().isEmpty, "a drain empties the counters")
        try await group.shutdownGracefully()
    }
}
