import Foundation
@testable import KeygateCore
import KeygateRedis
import KeygateTestSupport
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Testing

@Suite struct UsageFlusherIntegrationTests {
    @Test func countsSurviveAnOutageThroughTheSpillFileAndCountOnce() async throws {
        let ns = TestRedis.uniqueNamespace("spill")
        let live = KeyStore(redis: try TestRedis.client(), layout: try KeyStoreLayout(namespace: ns), format: try KeyFormat(), hasher: KeyHasher())
        defer { Task { await live.redis.shutdown() } }
        let a = try await live.create(.init(user: "u"), actor: "test")
        let b = try await live.create(.init(user: "u"), actor: "test")

        // A flusher whose Redis is unreachable (a bound port that refuses connections).
        let unreachable = try ReservedPort()
        var deadConfig = RedisConfiguration()
        deadConfig.endpoint = .tcp(host: "127.0.0.1", port: unreachable.port)
        deadConfig.commandTimeout = .milliseconds(200)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let dead = KeyStore(redis: try RedisClient(configuration: deadConfig, eventLoopGroup: group), layout: live.layout,
                            format: live.format, hasher: live.hasher)
        let spill = FileManager.default.temporaryDirectory.appendingPathComponent("spill-\(UUID().uuidString).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: spill) }
        var settings = UsageFlusher.Settings()
        settings.interval = .milliseconds(50)
        settings.maxPendingKeys = 0 // spill whatever cannot be sent
        settings.spillPath = spill
        settings.shutdownDeadline = .milliseconds(300)
        let recorder = UsageRecorder(eventLoopGroup: group)
        let flusher = UsageFlusher(store: dead, recorder: recorder, settings: settings, nodeID: "n1", logger: Logger(label: "test"))
        let loop = group.next()
        func use(_ key: IssuedKey, times: Int) async throws {
            let counter = recorder.counter(for: loop)
            try await loop.submit {
                for _ in 0..<times { counter.record(key.record.hash, uptimeNanoseconds: NIODeadline.now().uptimeNanoseconds) }
            }.get()
        }
        let services = ServiceGroup(configuration: .init(services: [flusher], logger: Logger(label: "test")))
        let running = Task { try await services.run() }
        try await use(a, times: 5)
        try await Task.sleep(for: .milliseconds(300))
        try await use(b, times: 3)
        try await use(a, times: 2)
        try await Task.sleep(for: .milliseconds(300))
        await services.triggerGracefulShutdown()
        try await running.value
        #expect(flusher.metrics.flushFailures.load(ordering: .relaxed) > 0)
        #expect(flusher.metrics.dropped.load(ordering: .relaxed) == 0, "nothing dropped")
        #expect(flusher.pendingCount == 0, "everything went to the spill file")
        let spilled = try String(contentsOfFile: spill, encoding: .utf8)
        #expect(!spilled.isEmpty)

        // Redis is back: a node starting with the spill file applies it, exactly once even if replayed twice.
        let copy = spill + ".copy"
        try spilled.write(toFile: copy, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: copy) }
        settings.spillPath = spill
        await UsageFlusher(store: live, recorder: recorder, settings: settings, nodeID: "n2", logger: Logger(label: "test")).replaySpill()
        #expect(!FileManager.default.fileExists(atPath: spill), "removed once applied")
        settings.spillPath = copy
        await UsageFlusher(store: live, recorder: recorder, settings: settings, nodeID: "n3", logger: Logger(label: "test")).replaySpill()
        #expect(try await live.usage(id: a.record.id).total == 7)
        #expect(try await live.usage(id: b.record.id).total == 3)
        await dead.redis.shutdown()
        try await group.shutdownGracefully()
        withExtendedLifetime(unreachable) {}
    }
}
