public import NIOCore
import NIOSSL
import Synchronization

/// Where the master is, and whether it is still the same server: shared by a client's connections
/// and the subscriber that goes with it.
///
/// Every connection asks `connect`, which finds the master (the fixed endpoint, or the Sentinels'
/// answer), connects with the handshake's `ROLE` check, and reports the server's identity: its
/// `run_id` (from `INFO server`), or its address when the ACL forbids `INFO`. A different identity
/// than the last one is a master change: `generation` goes up and the `onMasterChange` handlers run.
/// A change means the new master's data may differ from what the node has seen (a replica that
/// missed the last writes, a Redis restarted empty or from an older snapshot): caches built on the
/// old master and Stream positions read from it must not be trusted any more.
public final class RedisTopology: Sendable {
    /// The server a connection reached.
    public struct MasterIdentity: Sendable, Equatable {
        public var endpoint: RedisConfiguration.Endpoint
        /// Redis's `run_id`; nil when `INFO` is not allowed to this ACL user.
        public var runID: String?

        func isSameServer(as other: MasterIdentity) -> Bool {
            if let runID, let otherRunID = other.runID { return runID == otherRunID }
            return endpoint == other.endpoint
        }
    }

    public let configuration: RedisConfiguration
    let discovery: SentinelDiscovery?
    /// Built once from `configuration` by the client; every connection of the topology reuses it.
    private let tlsContext: NIOSSLContext?
    private let state = Mutex(State())
    private let generationValue = Atomic<UInt64>(0)

    private struct State {
        var current: MasterIdentity?
        var changes = 0
        var changeHandlers: [@Sendable (UInt64) -> Void] = []
        /// Cluster only: finds the primary a subscriber should use (set by the client).
        var clusterLocator: (@Sendable (any EventLoop) -> EventLoopFuture<RedisConfiguration.Endpoint>)?
        var subscriberKey: String?
        var switchHandlers: [@Sendable () -> Void] = []
    }

    init(configuration: RedisConfiguration, tlsContext: NIOSSLContext?) {
        self.configuration = configuration
        self.tlsContext = tlsContext
        self.discovery = configuration.sentinel.map { SentinelDiscovery(configuration: configuration, sentinel: $0, tlsContext: tlsContext) }
    }

    /// Counts master changes; 0 until the first change after the first connection. A connection or
    /// Stream position taken at an older generation belongs to a master that is no longer current.
    public var generation: UInt64 { generationValue.load(ordering: .acquiring) }

    /// Master changes seen since start (for the metrics).
    public var masterChanges: Int { state.withLock { $0.changes } }

    /// The server the last connection reached (address without credentials), nil before the first.
    public var currentMaster: String? {
        state.withLock { $0.current }.map { identity in
            var copy = configuration
            copy.sentinel = nil
            copy.endpoint = identity.endpoint
            return copy.endpointDescription
        }
    }

    /// The endpoint of the server the last connection reached.
    var currentEndpoint: RedisConfiguration.Endpoint? { state.withLock { $0.current?.endpoint } }

    /// Runs `handler(newGeneration)` after every master change, on the thread that noticed it.
    public func onMasterChange(_ handler: @escaping @Sendable (UInt64) -> Void) {
        state.withLock { $0.changeHandlers.append(handler) }
    }

    /// Runs `handler` when a Sentinel announces a new master (or a periodic check finds one), so
    /// reconnecting connections stop waiting out their backoff.
    func onSwitch(_ handler: @escaping @Sendable () -> Void) {
        state.withLock { $0.switchHandlers.append(handler) }
    }

    /// The master moved (a Sentinel said so): wake everything that reconnects.
    public func masterSwitched() {
        for handler in state.withLock({ $0.switchHandlers }) { handler() }
    }

    /// Finds the master and connects to it. `configuration` gives the connection's own settings
    /// (client name, timeouts); its endpoint is replaced by the master's address.
    /// - Returns: the connection and the generation it belongs to.
    func connect(_ configuration: RedisConfiguration, on eventLoop: any EventLoop) -> EventLoopFuture<(RedisConnection, UInt64)> {
        if let locator = state.withLock({ $0.clusterLocator }) {
            // A Cluster's primaries are followed by the client's slot map, which bumps the generation
            // when they change; which primary a subscriber reached is not an identity change.
            return locator(eventLoop).flatMap { endpoint in
                var target = configuration
                target.cluster = nil
                target.endpoint = endpoint
                if case .tcp(let host, _) = endpoint, target.tls != nil { target.tls?.serverName = host }
                let generation = self.generation
                return RedisConnection.connect(configuration: target, tlsContext: self.tlsContext, eventLoop: eventLoop).map { ($0, generation) }
            }
        }
        return locateMaster(on: eventLoop).flatMap { endpoint in
            var target = configuration
            if target.sentinel != nil, case .tcp(let host, _) = endpoint { target.tls?.serverName = host }
            target.sentinel = nil // the connection's errors name the master's address, not the Sentinels
            target.endpoint = endpoint
            return RedisConnection.connect(configuration: target, tlsContext: self.tlsContext, eventLoop: eventLoop).map { connection in
                let identity = MasterIdentity(endpoint: endpoint, runID: connection.serverRunID)
                return (connection, self.record(identity))
            }
        }
    }

    /// The master's address: the configured endpoint, or the first Sentinel's answer.
    public func locateMaster(on eventLoop: any EventLoop) -> EventLoopFuture<RedisConfiguration.Endpoint> {
        guard let discovery else { return eventLoop.makeSucceededFuture(configuration.endpoint) }
        return discovery.locate(on: eventLoop)
    }

    func setClusterLocator(_ locator: @escaping @Sendable (any EventLoop) -> EventLoopFuture<RedisConfiguration.Endpoint>) {
        state.withLock { $0.clusterLocator = locator }
    }

    /// On a Cluster, subscribers connect to the primary serving this key's slot: the slot of the
    /// Stream whose writes publish the invalidations, so a pong received after a publish on that
    /// server proves the publish arrived (the ordering the Stream baseline relies on).
    public var clusterSubscriberKey: String? {
        get { state.withLock { $0.subscriberKey } }
        set { state.withLock { $0.subscriberKey = newValue } }
    }

    /// A Cluster's primaries changed (a failover, a primary added or removed): what was read from the
    /// old ones may be gone, as after a Sentinel switch. Bumps the generation and runs the handlers.
    func clusterPrimariesChanged() {
        let (generation, handlers) = state.withLock { state -> (UInt64, [@Sendable (UInt64) -> Void]) in
            state.changes += 1
            return (generationValue.wrappingAdd(1, ordering: .releasing).newValue, state.changeHandlers)
        }
        for handler in handlers { handler(generation) }
    }

    /// Notes which server a connection reached; returns the generation it belongs to.
    func record(_ identity: MasterIdentity) -> UInt64 {
        let (generation, handlers) = state.withLock { state -> (UInt64, [@Sendable (UInt64) -> Void]) in
            defer { state.current = identity }
            guard let current = state.current, !current.isSameServer(as: identity) else {
                return (generationValue.load(ordering: .relaxed), [])
            }
            state.changes += 1
            let next = generationValue.wrappingAdd(1, ordering: .releasing).newValue
            return (next, state.changeHandlers)
        }
        for handler in handlers { handler(generation) }
        return generation
    }
}
