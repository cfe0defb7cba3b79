public import KeygateRedis
public import Logging
public import NIOCore
public import ServiceLifecycle
public import Synchronization

/// Keeps the verdict cache consistent with Redis (rules 1, 2 and 4 of the reliability notes).
///
/// Subscribes to the namespace's invalidation channel and evicts each hash it receives. On any loss
/// of the channel (EOF, ping timeout, unsolicited unsubscribe, slow-consumer close) the cache becomes
/// suspect at once: the generation is bumped and every request reads Redis. After resubscribing it
/// replays the event Stream from the last id known to be delivered, flushes the whole cache if
/// the Stream was trimmed past that id, and only then trusts the cache again.
///
/// A master change (Sentinel failover, a Redis restarted with a new `run_id`) flushes the cache at
/// once and throws the replay position away: the new master's Stream may be shorter than the old
/// one's (a replica that missed the last events, a restore from an older snapshot), so an id read
/// from the old master says nothing about what the new one holds, and a cached verdict may rest on
/// data the new master never had.
public final class InvalidationService: Service, Sendable {
    public struct Settings: Sendable, Equatable {
        /// `P`: ping interval on the subscriber connection.
        public var pingInterval: Duration = .seconds(1)
        /// `Pt`: a pong later than this declares the channel dead. Detection time D = P + Pt.
        public var pingTimeout: Duration = .seconds(1)
        /// How often the replay baseline is moved forward while healthy.
        public var baselineInterval: Duration = .seconds(5)
        public init() {}
    }

    private let store: KeyStore
    private let cache: VerdictCache
    private let subscriberConfiguration: RedisConfiguration
    private let settings: Settings
    private let eventLoop: any EventLoop
    private let logger: Logger
    public let metrics: InvalidationMetrics
    private let subscriber: RedisSubscriber
    /// The last Stream id whose invalidation is known applied, and the topology generation (the
    /// master) it was read from.
    private let baseline = Mutex<Baseline?>(nil)

    private struct Baseline {
        var id: StreamID
        var generation: UInt64
    }

    public init(store: KeyStore, cache: VerdictCache, subscriberConfiguration: RedisConfiguration,
                settings: Settings = Settings(), eventLoop: any EventLoop, logger: Logger) {
        self.store = store
        self.cache = cache
        self.subscriberConfiguration = subscriberConfiguration
        self.settings = settings
        self.eventLoop = eventLoop
        self.logger = logger
        let metrics = InvalidationMetrics()
        self.metrics = metrics
        self.subscriber = RedisSubscriber(configuration: subscriberConfiguration, topology: store.topology,
                                          channels: [store.invalidationChannel],
                                          pingInterval: settings.pingInterval, pingTimeout: settings.pingTimeout,
                                          eventLoop: eventLoop) { _, payload in
            // On the subscriber's event loop, as the message arrives.
            metrics.received.add(1, ordering: .relaxed)
            if let hash = KeyHash(hex: String(buffer: payload)) { cache.invalidate(hash) }
        } lossHandler: {
            // Rule 2 at once, on the event loop; the consumer below logs and counts the loss.
            cache.markSuspect()
        }
        store.topology.onMasterChange { [weak self] generation in
            // Before anything reads the new master through the cache: what it holds may be older.
            cache.markSuspect()
            cache.removeAll()
            metrics.flushes(reason: .masterChange)
            self?.baseline.withLock { $0 = nil }
            logger.warning("Redis master changed; verdict cache flushed, replay restarts from the new master's Stream",
                           metadata: ["generation": "\(generation)", "master": "\(store.topology.currentMaster ?? "?")"])
        }
    }

    /// Seconds since the subscriber's last pong (nil before the first), for the metrics.
    public var secondsSinceLastPong: Double? { subscriber.secondsSinceLastPong }

    public func run() async throws {
        // The baseline is taken before subscribing: anything that changes after it is replayed.
        let generation = store.topology.generation
        if let last = try? await lastStreamID(), store.topology.generation == generation {
            baseline.withLock { $0 = Baseline(id: last, generation: generation) }
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.subscriber.run() }
            group.addTask { await self.advanceBaselineWhileHealthy() }
            await cancelWhenGracefulShutdown { await self.consumeEvents() }
            group.cancelAll()
        }
        metrics.channelUp.store(false, ordering: .relaxed)
    }

    private func consumeEvents() async {
        for await event in subscriber.events {
            switch event {
            case .subscribed:
                logger.info("invalidation channel subscribed", metadata: ["channel": "\(store.invalidationChannel)"])
                await catchUpUntilTrusted()
            case .message:
                break // handled on the event loop by the subscriber's message handler
            case .disconnected(let reason):
                cache.markSuspect() // already done by the loss handler, unless the connect itself failed
                metrics.channelUp.store(false, ordering: .relaxed)
                metrics.losses.add(1, ordering: .relaxed)
                logger.warning("invalidation channel lost; reading Redis for every request until resubscribed",
                               metadata: ["reason": "\(reason)"])
            }
            if Task.isCancelled { break }
        }
    }

    /// Replays what was missed, retrying while Redis answers the subscriber but not the commands.
    private func catchUpUntilTrusted() async {
        var attempt = 0
        while !Task.isCancelled {
            do {
                try await catchUp()
                metrics.channelUp.store(true, ordering: .relaxed)
                cache.markTrusted()
                return
            } catch {
                attempt += 1
                logger.warning("invalidation replay failed; retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                try? await Task.sleep(for: .milliseconds(min(1_000, 50 << min(attempt, 5))))
            }
        }
    }

    /// The replay is valid only if the subscriber, the commands and the baseline all saw one master.
    private func catchUp() async throws {
        let topology = store.topology
        let generation = topology.generation
        guard subscriber.connectionGeneration == generation else {
            // The subscriber is moving to the new master, and its subscribe replays again. A live
            // connection from an older generation is told to move: it would never replay otherwise.
            if let live = subscriber.connectionGeneration, live < generation { subscriber.reconnect() }
            throw MasterChanged()
        }
        defer { if topology.generation != generation { cache.markSuspect() } }
        guard let known = baseline.withLock({ $0 }), known.generation == generation else {
            // No baseline (Redis was down at start, or the master changed): nothing cached can be vouched for.
            cache.removeAll()
            metrics.flushes(reason: .noBaseline)
            baseline.withLock { $0 = nil }
            let last = try await lastStreamID()
            guard topology.generation == generation else { throw MasterChanged() }
            baseline.withLock { $0 = Baseline(id: last, generation: generation) }
            return
        }
        let start = known.id
        let info = try await streamInfo()
        if let maxDeleted = info.maxDeleted, maxDeleted > start {
            // XREAD would silently skip what was trimmed: flush instead of trusting a partial replay.
            cache.removeAll()
            metrics.flushes(reason: .replayGap)
            logger.warning("invalidation replay window trimmed past our position; cache flushed")
            guard topology.generation == generation else { throw MasterChanged() }
            baseline.withLock { $0 = Baseline(id: info.last, generation: generation) }
            return
        }
        var position = start
        var replayed = 0
        while true {
            let entries = try await store.replay(after: position.description)
            for entry in entries {
                guard let id = StreamID(entry.eventID) else { continue }
                if let hash = entry.hash { cache.invalidate(hash) }
                position = id
                replayed += 1
            }
            if entries.count < 1_000 { break }
        }
        guard topology.generation == generation else { throw MasterChanged() }
        metrics.replays.add(1, ordering: .relaxed)
        metrics.replayedEvents.add(replayed, ordering: .relaxed)
        baseline.withLock { $0 = Baseline(id: position, generation: generation) }
    }

    private struct MasterChanged: Error, CustomStringConvertible {
        var description: String { "the Redis master changed during the replay" }
    }

    /// While subscribed, move the baseline to the Stream's end as of time t once a pong sent after t
    /// has arrived: Redis delivers a publish before a later pong on the same connection, so every
    /// event up to that id has reached us.
    private func advanceBaselineWhileHealthy() async {
        let pingTimeout = UInt64(TimeAmount(settings.pingTimeout).nanoseconds)
        while !Task.isCancelled {
            try? await Task.sleep(for: settings.baselineInterval)
            let generation = store.topology.generation
            guard cache.isTrusted, let candidate = try? await lastStreamID() else { continue }
            let fetchedAt = NIODeadline.now().uptimeNanoseconds
            try? await Task.sleep(for: settings.pingInterval + settings.pingTimeout + .milliseconds(100))
            if cache.isTrusted, subscriber.lastPongUptimeNanoseconds > fetchedAt + pingTimeout,
               store.topology.generation == generation, subscriber.connectionGeneration == generation {
                baseline.withLock { current in
                    if let known = current, known.generation == generation, candidate > known.id {
                        current = Baseline(id: candidate, generation: generation)
                    }
                }
            }
        }
    }

    private struct StreamInfo {
        var last: StreamID
        var maxDeleted: StreamID?
    }

    private func streamInfo() async throws -> StreamInfo {
        let position = try await store.streamPosition()
        return StreamInfo(last: position.lastGenerated.flatMap(StreamID.init) ?? .zero,
                          maxDeleted: position.maxDeleted.flatMap(StreamID.init).flatMap { $0 == .zero ? nil : $0 })
    }

    private func lastStreamID() async throws -> StreamID {
        try await streamInfo().last
    }
}

/// A Redis Stream entry id, `milliseconds-sequence`, ordered.
struct StreamID: Comparable, Sendable, CustomStringConvertible {
    var milliseconds: UInt64
    var sequence: UInt64
    static let zero = StreamID(milliseconds: 0, sequence: 0)

    init(milliseconds: UInt64, sequence: UInt64) {
        self.milliseconds = milliseconds
        self.sequence = sequence
    }

    init?(_ text: String) {
        let parts = text.split(separator: "-")
        guard parts.count == 2, let ms = UInt64(parts[0]), let seq = UInt64(parts[1]) else { return nil }
        self.init(milliseconds: ms, sequence: seq)
    }

    static func < (lhs: StreamID, rhs: StreamID) -> Bool {
        (lhs.milliseconds, lhs.sequence) < (rhs.milliseconds, rhs.sequence)
    }

    var description: String { "\(milliseconds)-\(sequence)" }
}

/// Counters of the invalidation path, read by the metrics endpoint.
public final class InvalidationMetrics: Sendable {
    public enum FlushReason: String, Sendable, CaseIterable {
        case replayGap = "replay_gap", noBaseline = "no_baseline", masterChange = "master_change"
    }
    /// 1 while subscribed and caught up.
    public let channelUp = Atomic<Bool>(false)
    public let received = Atomic<Int>(0)
    public let losses = Atomic<Int>(0)
    public let replays = Atomic<Int>(0)
    public let replayedEvents = Atomic<Int>(0)
    public let flushesReplayGap = Atomic<Int>(0)
    public let flushesNoBaseline = Atomic<Int>(0)
    public let flushesMasterChange = Atomic<Int>(0)

    func flushes(reason: FlushReason) {
        switch reason {
        case .replayGap: flushesReplayGap.add(1, ordering: .relaxed)
        case .noBaseline: flushesNoBaseline.add(1, ordering: .relaxed)
        case .masterChange: flushesMasterChange.add(1, ordering: .relaxed)
        }
    }
}
