import NIOCore
import Synchronization

/// The connection one event loop owns, and its reconnect loop.
///
/// All mutable state is touched on `eventLoop` only. After a connection closes, the slot reconnects
/// at once and then with exponential backoff and full jitter. While the client-wide circuit is open,
/// callers get `circuitOpen` immediately instead of waiting.
final class RedisConnectionSlot: Sendable {
    let eventLoop: any EventLoop
    private let configuration: RedisConfiguration
    private let topology: RedisTopology
    private let circuit: RedisCircuit
    private let metrics: RedisClientMetrics
    private let state: NIOLoopBoundBox<State>
    /// Readable from any thread, so async callers can prefer a healthy slot.
    let isHealthy = Atomic<Bool>(false)
    /// Why the last connect failed (nil once connected), for readiness answers and logs.
    let lastError = Mutex<String?>(nil)

    private struct State {
        var connection: RedisConnection?
        /// The topology generation `connection` belongs to.
        var generation: UInt64 = 0
        var attempt: EventLoopFuture<RedisConnection>?
        /// The connect of `attempt` while it waits out its backoff delay.
        var pendingConnect: Scheduled<Void>?
        var pendingPromise: EventLoopPromise<(RedisConnection, UInt64)>?
        var consecutiveFailures = 0
        var isShutDown = false
        /// Before the first connection a caller waits up to the connect timeout (starting up is not an
        /// outage); afterwards, up to the command deadline.
        var everConnected = false
    }

    init(eventLoop: any EventLoop, configuration: RedisConfiguration, topology: RedisTopology,
         circuit: RedisCircuit, metrics: RedisClientMetrics) {
        self.eventLoop = eventLoop
        self.topology = topology
        self.metrics = metrics
        self.circuit = circuit
        self.configuration = configuration
        self.state = .makeBoxSendingValue(State(), eventLoop: eventLoop)
    }

    /// The live connection, or one as soon as it is up (bounded by `patience`; by default the connect
    /// timeout for the first connection and the command timeout after that). On the loop.
    func connection(patience: Duration? = nil) -> EventLoopFuture<RedisConnection> {
        eventLoop.assertInEventLoop()
        if state.value.isShutDown {
            return eventLoop.makeFailedFuture(RedisError(.cancelled, "client shut down"))
        }
        if let connection = state.value.connection, connection.isActive {
            return eventLoop.makeSucceededFuture(connection)
        }
        if circuit.isOpen {
            return eventLoop.makeFailedFuture(RedisError(.circuitOpen, "Redis at \(configuration.redactedTarget) unreachable; failing fast"))
        }
        let attempt = state.value.attempt ?? startAttempt(after: .zero)
        let defaultPatience = state.value.everConnected ? configuration.commandTimeout : configuration.connectTimeout
        return withDeadline(attempt, TimeAmount(patience ?? defaultPatience))
    }

    /// Sends on this loop's connection; the data plane's no-hop path.
    func send(_ command: RedisCommand) -> EventLoopFuture<RESPValue> {
        eventLoop.assertInEventLoop()
        if let connection = state.value.connection, connection.isActive {
            return metrics.measure(connection.send(command))
        }
        return metrics.measure(connection().flatMap { $0.send(command) })
    }

    /// Sends a pipeline on this loop's connection (one flush, one reply array).
    func pipeline(_ commands: [RedisCommand]) -> EventLoopFuture<[RESPValue]> {
        eventLoop.assertInEventLoop()
        if let connection = state.value.connection, connection.isActive {
            return metrics.measure(connection.pipeline(commands))
        }
        return metrics.measure(connection().flatMap { $0.pipeline(commands) })
    }

    func shutdown() -> EventLoopFuture<Void> {
        eventLoop.flatSubmit {
            self.state.value.isShutDown = true
            self.isHealthy.store(false, ordering: .relaxed)
            guard let connection = self.state.value.connection else { return self.eventLoop.makeSucceededVoidFuture() }
            self.state.value.connection = nil
            return connection.close()
        }
    }

    // MARK: reconnect loop

    @discardableResult
    private func startAttempt(after delay: TimeAmount) -> EventLoopFuture<RedisConnection> {
        let promise = eventLoop.makePromise(of: (RedisConnection, UInt64).self)
        // Registered first, so the slot holds the connection before any waiter uses it.
        promise.futureResult.whenComplete { result in self.attemptFinished(result) }
        let attempt = promise.futureResult.map { $0.0 }
        state.value.attempt = attempt
        state.value.pendingPromise = promise
        state.value.pendingConnect = eventLoop.scheduleTask(in: delay) {
            self.state.value.pendingConnect = nil
            self.dial().cascade(to: promise)
        }
        return attempt
    }

    private func dial() -> EventLoopFuture<(RedisConnection, UInt64)> {
        topology.connect(configuration, on: eventLoop)
    }

    /// The master changed (to `generation`): a connection to an older one must not serve another
    /// command. Called from any thread.
    func dropConnection(olderThan generation: UInt64) {
        eventLoop.execute {
            guard let connection = self.state.value.connection, self.state.value.generation < generation else { return }
            _ = connection.close()
        }
    }

    /// The master moved: close the connection (it may lead to the old master) and reconnect at once.
    func reconnectToNewMaster() {
        eventLoop.execute {
            if let connection = self.state.value.connection { _ = connection.close() }
        }
        reconnectNow()
    }

    /// Redis is reachable again (another slot connected): forget the backoff, and skip the rest of
    /// a pending delay.
    func reconnectNow() {
        eventLoop.execute {
            self.state.value.consecutiveFailures = 0
            guard let pending = self.state.value.pendingConnect, let promise = self.state.value.pendingPromise else { return }
            pending.cancel()
            self.state.value.pendingConnect = nil
            self.dial().cascade(to: promise)
        }
    }

    private func attemptFinished(_ result: Result<(RedisConnection, UInt64), any Error>) {
        state.value.attempt = nil
        state.value.pendingPromise = nil
        switch result {
        case .success(let (connection, generation)):
            if state.value.isShutDown || generation < topology.generation {
                _ = connection.close() // shut down, or the master changed again while connecting
                if !state.value.isShutDown { startAttempt(after: .zero) }
                return
            }
            lastError.withLock { $0 = nil }
            state.value.connection = connection
            state.value.generation = generation
            state.value.everConnected = true
            state.value.consecutiveFailures = 0
            circuit.recordSuccess()
            isHealthy.store(true, ordering: .relaxed)
            connection.closeFuture.whenComplete { _ in self.connectionClosed(connection) }
        case .failure(let error):
            lastError.withLock { $0 = "\(error)" }
            noteFailure()
            guard !state.value.isShutDown else { return }
            startAttempt(after: backoff())
        }
    }

    private func connectionClosed(_ connection: RedisConnection) {
        guard state.value.connection === connection else { return }
        state.value.connection = nil
        isHealthy.store(false, ordering: .relaxed)
        guard !state.value.isShutDown else { return }
        noteFailure()
        if state.value.attempt == nil { startAttempt(after: .zero) } // a single drop reconnects at once
    }

    private func noteFailure() {
        circuit.recordFailure()
        state.value.consecutiveFailures += 1
    }

    /// Full jitter: uniform in [0, min(max, initial * 2^failures)].
    private func backoff() -> TimeAmount {
        let initial = TimeAmount(configuration.reconnectInitialDelay).nanoseconds
        let maximum = TimeAmount(configuration.reconnectMaxDelay).nanoseconds
        let exponent = min(state.value.consecutiveFailures, 20)
        let ceiling = min(maximum, initial << exponent)
        return .nanoseconds(Int64.random(in: 0...max(ceiling, 1)))
    }

    private func withDeadline(_ future: EventLoopFuture<RedisConnection>, _ timeout: TimeAmount) -> EventLoopFuture<RedisConnection> {
        let promise = eventLoop.makePromise(of: RedisConnection.self)
        let timer = eventLoop.scheduleTask(in: timeout) {
            promise.fail(RedisError(.timeout, "no Redis connection within the command deadline"))
        }
        future.whenComplete { result in
            timer.cancel()
            promise.completeWith(result)
        }
        return promise.futureResult
    }
}

extension TimeAmount {
    static let zero = TimeAmount.nanoseconds(0)
}
