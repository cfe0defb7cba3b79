import Foundation
@testable import KeygateRedis
import KeygateTestSupport
import NIOCore
import NIOPosix
import Synchronization
import Testing

@Suite struct RedisSubscriberIntegrationTests {
    typealias Event = RedisSubscriber.Event

    static func isSubscribed(_ event: Event) -> Bool { event == .subscribed }
    static func isDisconnected(_ event: Event) -> Bool {
        if case .disconnected = event { return true } else { return false }
    }
    static func isMessage(_ payload: String) -> (Event) -> Bool {
        { event in
            if case .message(_, let bytes) = event { return String(buffer: bytes) == payload }
            return false
        }
    }

    /// Runs a subscriber for the duration of `body`.
    static func withSubscriber(
        _ configuration: RedisConfiguration, channel: String,
        ping: Duration = .seconds(1), pingTimeout: Duration = .seconds(1),
        _ body: (EventRecorder<Event>) async throws -> Void
    ) async throws {
        let subscriber = RedisSubscriber(configuration: configuration, channels: [channel],
                                         pingInterval: ping, pingTimeout: pingTimeout,
                                         eventLoop: MultiThreadedEventLoopGroup.singleton.any())
        let recorder = EventRecorder(subscriber.events)
        let running = Task { await subscriber.run() }
        defer { running.cancel() }
        try await body(recorder)
    }

    @Test func deliversMessagesOnceSubscribed() async throws {
        let channel = TestRedis.uniqueNamespace("ch")
        let publisher = try TestRedis.client()
        defer { Task { await publisher.shutdown() } }
        try await Self.withSubscriber(TestRedis.configuration(), channel: channel) { events in
            #expect(await events.waitFor(timeout: .seconds(5), Self.isSubscribed) == 0)
            let receivers = try await publisher.send(RedisCommand("PUBLISH", [.string(channel), "first"]))
            #expect(receivers == .integer(1))
            _ = try await publisher.send(RedisCommand("PUBLISH", [.string(channel), .bytes(ByteBuffer(bytes: [0, 1, 2]))]))
            #expect(await events.waitFor(timeout: .seconds(5), Self.isMessage("first")) != nil)
            let binary = await events.waitFor(timeout: .seconds(5)) { event in
                if case .message(_, let bytes) = event { return Array(bytes.readableBytesView) == [0, 1, 2] }
                return false
            }
            #expect(binary != nil)
        }
    }

    @Test func reportsADisconnectAndResubscribesAfterClientKillTypePubsub() async throws {
        try await RedisServerProcess.withServer { server in try await killScenario(server) }
    }

    func killScenario(_ server: RedisServerProcess) async throws {
        let config = try TestRedis.configuration(url: server.url)
        let admin = try TestRedis.client(config)
        defer { Task { await admin.shutdown() } }
        try await Self.withSubscriber(config, channel: "inval") { events in
            guard let first = await events.waitFor(timeout: .seconds(5), Self.isSubscribed) else {
                Issue.record("never subscribed"); return
            }
            let killed = try await admin.send(RedisCommand("CLIENT", ["KILL", "TYPE", "pubsub"]))
            #expect(killed == .integer(1))
            // A publish while disconnected is lost (pub/sub is at-most-once): the disconnect event is
            // how a consumer learns that it must replay from the durable log.
            let lost = await events.waitFor(from: first + 1, timeout: .seconds(5), Self.isDisconnected)
            #expect(lost != nil)
            let again = await events.waitFor(from: (lost ?? first) + 1, timeout: .seconds(5), Self.isSubscribed)
            #expect(again != nil)
            _ = try await admin.send(RedisCommand("PUBLISH", ["inval", "after-reconnect"]))
            #expect(await events.waitFor(timeout: .seconds(5), Self.isMessage("after-reconnect")) != nil)
        }
    }

    @Test func detectsAHungRedisWithinPingIntervalPlusTimeout() async throws {
        try await RedisServerProcess.withServer { server in try await hangScenario(server) }
    }

    func hangScenario(_ server: RedisServerProcess) async throws {
        let config = try TestRedis.configuration(url: server.url)
        let ping = Duration.milliseconds(200), timeout = Duration.milliseconds(200)
        try await Self.withSubscriber(config, channel: "inval", ping: ping, pingTimeout: timeout) { events in
            guard let first = await events.waitFor(timeout: .seconds(5), Self.isSubscribed) else {
                Issue.record("never subscribed"); return
            }
            server.pause() // SIGSTOP: sockets stay open, nothing answers; only the ping can tell
            let paused = ContinuousClock.now
            let lost = await events.waitFor(from: first + 1, timeout: .seconds(5), Self.isDisconnected)
            let detection = ContinuousClock.now - paused
            server.resume()
            #expect(lost != nil, "a hung Redis must be reported, not waited on forever")
            // D = P + Pt = 400 ms; allow scheduling slack on a loaded 2-core machine.
            #expect(detection < .seconds(2), "detected after \(detection)")
            if case .disconnected(let reason)? = lost.map({ events.all[$0] }) {
                #expect(reason.contains("pong"))
            }
            let again = await events.waitFor(from: (lost ?? first) + 1, timeout: .seconds(10), Self.isSubscribed)
            #expect(again != nil, "resubscribes once Redis answers again")
        }
    }

    /// A master change while the subscriber is connecting finds no connection to drop; the
    /// connection then made belongs to the old generation and must be replaced, or the replay,
    /// which trusts only a subscriber of the current generation, retries forever (seen once after
    /// a Cluster failover).
    @Test func replacesAConnectionMadeWhileTheMasterChanged() async throws {
        let configuration = try TestRedis.configuration()
        let generation = Atomic<UInt64>(0)
        let connects = Atomic<Int>(0)
        let subscriber = RedisSubscriber(
            configuration: configuration,
            connector: { loop in
                let seen = generation.load(ordering: .relaxed)
                return RedisConnection.connect(configuration: configuration, eventLoop: loop).map { connection in
                    // The first connect races a change: it completes for the generation it started in.
                    if connects.add(1, ordering: .relaxed).newValue == 1 { generation.store(1, ordering: .relaxed) }
                    return (connection, seen)
                }
            },
            currentGeneration: { generation.load(ordering: .relaxed) },
            channels: [TestRedis.uniqueNamespace("ch")], pingInterval: .seconds(1), pingTimeout: .seconds(1),
            bufferLimit: 100, eventLoop: MultiThreadedEventLoopGroup.singleton.any(), messageHandler: nil, lossHandler: nil)
        let events = EventRecorder(subscriber.events)
        let running = Task { await subscriber.run() }
        defer { running.cancel() }
        #expect(await events.waitFor(timeout: .seconds(5), Self.isSubscribed) != nil)
        #expect(subscriber.connectionGeneration == 1, "the subscribed connection belongs to the current generation")
        #expect(connects.load(ordering: .relaxed) == 2)
    }
}
