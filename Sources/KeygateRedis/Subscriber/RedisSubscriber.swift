public import NIOCore

import Synchronization

/// A pub/sub subscriber on its own connection, with liveness checks.
///
/// Pub/sub is at-most-once: anything published while the connection is down is lost. So the
/// subscriber never fails silently. It reports `.subscribed` once Redis has acknowledged every
/// channel, and `.disconnected` on any loss: EOF, reader error, an unsolicited `unsubscribe`, or a
/// ping whose pong did not arrive within `pingTimeout` (detection time `pingInterval + pingTimeout`).
/// Then it reconnects with backoff and resubscribes until `run()` is cancelled.
public final class RedisSubscriber: Sendable {
    public enum Event: Sendable, Equatable {
        /// Every channel is subscribed: messages from now on are delivered.
        case subscribed
        /// A message published on `channel`.
        case message(channel: String, payload: ByteBuffer)
        /// The connection was lost (or could not be made); messages may have been missed.
        case disconnected(reason: String)
    }

    public let channels: [String]
    public let events: AsyncStream<Event>
    private let continuation: AsyncStream<Event>.Continuation
    private let configuration: RedisConfiguration
    /// Opens a connection and says which topology generation it belongs to.
    private let connector: @Sendable (any EventLoop) -> EventLoopFuture<(RedisConnection, UInt64)>
    /// The topology's generation now, when it has one: a connection opened for an older one is stale.
    private let currentGeneration: (@Sendable () -> UInt64)?
    /// The live connection and its generation, so `reconnect()` can close it.
    private let current = Mutex<(connection: RedisConnection, generation: UInt64)?>(nil)
    /// Bumped by `reconnect()`: cuts a backoff sleep short.
    private let wakeups = Atomic<UInt64>(0)
    private let pingInterval: TimeAmount
    private let pingTimeout: TimeAmount
    private let eventLoop: any EventLoop
    /// Nanoseconds since boot (`NIODeadline.uptimeNanoseconds`) of the last pong; 0 before the first.
    private let lastPong = Atomic<UInt64>(0)
    /// When set, messages go here, synchronously on the subscriber's event loop, instead of `events`.
    private let messageHandler: (@Sendable (_ channel: String, _ payload: ByteBuffer) -> Void)?
    /// Called on the event loop the moment a connection closes, before `.disconnected` is queued.
    fileprivate let lossHandler: (@Sendable () -> Void)?

    /// - Parameters:
    ///   - configuration: connection settings; give it a `clientName` so operators can find it.
    ///   - channels: channel names (pub/sub ignores the database: prefix them with a namespace).
    ///   - pingInterval: `P`, how often to send `PING <nonce>` (default 1 s).
    ///   - pingTimeout: `Pt`, how long a pong may take before the connection is declared dead (default 1 s).
    ///   - bufferLimit: events queued for a slow consumer before the connection is dropped
    ///     (so an overflow is reported as a disconnect, never as silent loss).
    ///   - messageHandler: receives messages on the event loop as they arrive (no task hop: the
    ///     latency of an invalidation must not depend on how busy the cooperative pool is); `events`
    ///     then carries only `.subscribed` and `.disconnected`.
    ///   - lossHandler: called on the event loop as soon as a connection closes, for the same
    ///     reason (a cache must stop trusting itself at once, not when a task gets scheduled).
    ///   - topology: the client's topology, to follow its master (Sentinel discovery, master
    ///     changes); nil connects to `configuration`'s endpoint.
    public convenience init(configuration: RedisConfiguration, topology: RedisTopology? = nil, channels: [String],
                            pingInterval: Duration = .seconds(1), pingTimeout: Duration = .seconds(1),
                            bufferLimit: Int = 100_000,
                            eventLoop: any EventLoop,
                            messageHandler: (@Sendable (_ channel: String, _ payload: ByteBuffer) -> Void)? = nil,
                            lossHandler: (@Sendable () -> Void)? = nil) {
        let connector: @Sendable (any EventLoop) -> EventLoopFuture<(RedisConnection, UInt64)>
        var currentGeneration: (@Sendable () -> UInt64)?
        if let topology {
            currentGeneration = { topology.generation }
            connector = { loop in topology.connect(configuration, on: loop) }
        } else {
            connector = { loop in RedisConnection.connect(configuration: configuration, eventLoop: loop).map { ($0, 0) } }
        }
        self.init(configuration: configuration, connector: connector,
                  currentGeneration: currentGeneration,
                  channels: channels, pingInterval: pingInterval,
                  pingTimeout: pingTimeout, bufferLimit: bufferLimit, eventLoop: eventLoop,
                  messageHandler: messageHandler, lossHandler: lossHandler)
        if let topology {
            // A connection to an older master must go; a Sentinel's news wakes a reconnect at once.
            topology.onMasterChange { [weak self] generation in
                guard let self, let live = self.current.withLock({ $0 }), live.generation < generation else { return }
                self.reconnect()
            }
            topology.onSwitch { [weak self] in self?.reconnect() }
        }
    }

    init(configuration: RedisConfiguration,
         connector: @escaping @Sendable (any EventLoop) -> EventLoopFuture<(RedisConnection, UInt64)>,
         currentGeneration: (@Sendable () -> UInt64)? = nil,
         channels: [String], pingInterval: Duration, pingTimeout: Duration, bufferLimit: Int, eventLoop: any EventLoop,
         messageHandler: (@Sendable (_ channel: String, _ payload: ByteBuffer) -> Void)?,
         lossHandler: (@Sendable () -> Void)?) {
        self.connector = connector
        self.currentGeneration = currentGeneration
        self.messageHandler = messageHandler
        self.lossHandler = lossHandler
        precondition(!channels.isEmpty, "subscribe to at least one channel")
        self.configuration = configuration
        self.channels = channels
        self.pingInterval = TimeAmount(pingInterval)
        self.pingTimeout = TimeAmount(pingTimeout)
        self.eventLoop = eventLoop
        (events, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .bufferingOldest(bufferLimit))
    }

    /// The topology generation of the live connection; nil while disconnected.
    public var connectionGeneration: UInt64? { current.withLock { $0?.generation } }

    /// Drops the connection (if any) and reconnects now, skipping any backoff delay.
    public func reconnect() {
        wakeups.add(1, ordering: .relaxed)
        if let live = current.withLock({ $0 }) { _ = live.connection.close() }
    }

    /// `NIODeadline.uptimeNanoseconds` of the last pong (or subscribe acknowledgement); 0 before.
    public var lastPongUptimeNanoseconds: UInt64 { lastPong.load(ordering: .relaxed) }

    /// Seconds since the last pong, or nil before the first one (for the metrics).
    public var secondsSinceLastPong: Double? {
        let last = lastPong.load(ordering: .relaxed)
        guard last > 0 else { return nil }
        return Double(NIODeadline.now().uptimeNanoseconds - last) / 1e9
    }

    /// Connects, subscribes and keeps doing so until cancelled; then finishes `events`.
    public func run() async {
        var failures = 0
        var wasSubscribed = false
        while !Task.isCancelled {
            let reason: String
            do {
                let (connection, generation) = try await connector(eventLoop).get()
                current.withLock { $0 = (connection, generation) }
                if let currentGeneration, currentGeneration() > generation {
                    // The master changed while this connection was being made: the change handler
                    // found no connection to drop, and nothing else would ever replace this one.
                    current.withLock { $0 = nil }
                    _ = connection.close()
                    continue
                }
                let session = SubscriberSession(subscriber: self, connection: connection)
                let outcome = await withTaskCancellationHandler {
                    await session.run()
                } onCancel: {
                    _ = connection.close()
                }
                current.withLock { $0 = nil }
                if outcome.subscribed { failures = 0; wasSubscribed = true }
                reason = outcome.reason
            } catch {
                reason = "\(error)"
            }
            if Task.isCancelled { break }
            // Report every loss of a subscribed connection; while it stays down, report once.
            if wasSubscribed || failures == 0 { continuation.yield(.disconnected(reason: reason)) }
            wasSubscribed = false
            failures += 1
            await sleepUnlessWoken(backoff(failures: failures))
        }
        continuation.finish()
    }

    /// Sleeps for `duration`, in short steps so that `reconnect()` ends it early.
    private func sleepUnlessWoken(_ duration: Duration) async {
        let wakeup = wakeups.load(ordering: .relaxed)
        let end = ContinuousClock.now + duration
        while ContinuousClock.now < end, wakeups.load(ordering: .relaxed) == wakeup, !Task.isCancelled {
            try? await Task.sleep(for: min(.milliseconds(20), end - ContinuousClock.now))
        }
    }

    private func backoff(failures: Int) -> Duration {
        if failures <= 1 { return .zero } // a single drop resubscribes at once
        let initial = TimeAmount(configuration.reconnectInitialDelay).nanoseconds
        let maximum = TimeAmount(configuration.reconnectMaxDelay).nanoseconds
        let ceiling = min(maximum, initial << min(failures, 20))
        return .nanoseconds(Int64.random(in: 0...max(ceiling, 1)))
    }

    // MARK: used by the session, on the event loop

    fileprivate func deliver(_ event: Event) -> Bool {
        if let messageHandler, case .message(let channel, let payload) = event {
            messageHandler(channel, payload)
            return true
        }
        if case .dropped = continuation.yield(event) { return false }
        return true
    }

    fileprivate func recordPong() {
        lastPong.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed)
    }

    fileprivate var timing: (interval: TimeAmount, timeout: TimeAmount) { (pingInterval, pingTimeout) }
}

/// One subscribed connection's lifetime: subscribe, pump messages, ping, notice death.
private final class SubscriberSession: Sendable {
    private let subscriber: RedisSubscriber
    private let connection: RedisConnection
    private let state: NIOLoopBoundBox<State>

    private struct State {
        var acknowledged = Set<String>()
        var subscribed = false
        var outstandingPing: UInt64?
        var nextNonce: UInt64 = UInt64.random(in: 1...UInt64.max / 2)
        var closeReason = "connection closed"
        var pingTask: RepeatedTask?
    }

    init(subscriber: RedisSubscriber, connection: RedisConnection) {
        self.subscriber = subscriber
        self.connection = connection
        self.state = .makeBoxSendingValue(State(), eventLoop: connection.eventLoop)
    }

    /// Returns once the connection closed: whether it had been fully subscribed, and why it ended.
    func run() async -> (subscribed: Bool, reason: String) {
        let loop = connection.eventLoop
        if let lossHandler = subscriber.lossHandler {
            connection.closeFuture.whenComplete { _ in lossHandler() }
        }
        loop.execute {
            self.connection.enterPushMode { [self] value in self.handle(value) }
            self.connection.sendPushCommand(RedisCommand("SUBSCRIBE", self.subscriber.channels.map { .string($0) }))
            let (interval, _) = self.subscriber.timing
            self.state.value.pingTask = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
                self.sendPing()
            }
        }
        try? await connection.closeFuture.get()
        let outcome = try? await loop.submit {
            self.state.value.pingTask?.cancel()
            return (self.state.value.subscribed, self.state.value.closeReason)
        }.get()
        return outcome ?? (false, "event loop shut down")
    }

    private func handle(_ value: RESPValue) {
        guard let parts = value.array, let kind = parts.first?.string?.lowercased() else {
            fail("unexpected push reply")
            return
        }
        switch kind {
        case "message" where parts.count == 3:
            guard let channel = parts[1].string, let payload = parts[2].bytes else { return fail("malformed message") }
            if !subscriber.deliver(.message(channel: channel, payload: payload)) {
                fail("event buffer full: consumer too slow")
            }
        case "subscribe" where parts.count == 3:
            if let channel = parts[1].string { state.value.acknowledged.insert(channel) }
            if !state.value.subscribed, state.value.acknowledged.isSuperset(of: subscriber.channels) {
                state.value.subscribed = true
                subscriber.recordPong() // the subscribe ack proves liveness as a pong does
                _ = subscriber.deliver(.subscribed)
            }
        case "pong":
            let payload = parts.count > 1 ? parts[1].string : nil
            if let payload, let nonce = UInt64(payload), nonce == state.value.outstandingPing {
                state.value.outstandingPing = nil
                subscriber.recordPong()
            }
        case "unsubscribe", "sunsubscribe":
            fail("Redis unsubscribed us from \(parts.count > 1 ? parts[1].string ?? "?" : "?")")
        default:
            fail("unexpected push '\(kind)'")
        }
    }

    private func sendPing() {
        guard state.value.outstandingPing == nil else { return } // the timeout check below handles it
        let nonce = state.value.nextNonce
        state.value.nextNonce &+= 1
        state.value.outstandingPing = nonce
        connection.sendPushCommand(RedisCommand("PING", [.string(String(nonce))]))
        let (_, timeout) = subscriber.timing
        connection.eventLoop.scheduleTask(in: timeout) {
            if self.state.value.outstandingPing == nonce {
                self.fail("no pong within \(timeout.nanoseconds / 1_000_000) ms")
            }
        }
    }

    private func fail(_ reason: String) {
        if state.value.closeReason == "connection closed" { state.value.closeReason = reason }
        connection.fail(RedisError(.timeout, reason))
        _ = connection.close()
    }
}
