public import KeygateControlPlane
public import KeygateCore
public import KeygateDataPlane
public import KeygateRedis
public import Logging
import Foundation
import NIOCore
public import NIOPosix
public import ServiceLifecycle

/// One Keygate node: the parts, wired, and the services that run them in dependency order
/// (Redis client, invalidation, usage flusher, repair, control plane, data plane). Shutdown runs in reverse:
/// stop accepting and drain, flush usage counts, stop the subscriber, close Redis.
public final class KeygateNode: Sendable {
    public static let version = "0.1.0"

    public let configuration: NodeConfiguration
    public let redis: RedisClient
    /// The data plane's lookups use `store`; changes (admin API) and usage batches use this one, on
    /// their own connections, so a `WAIT` never holds a lookup up.
    public let adminStore: KeyStore
    public let store: KeyStore
    /// Follows `+switch-master` when Redis is reached through Sentinels.
    public let sentinelWatcher: RedisSentinelWatcher?
    public let verifier: Verifier
    public let invalidation: InvalidationService
    public let usage: UsageRecorder
    /// Keys' rate limits: tokens leased from Redis and spent on this node.
    public let rateLimiter: RateLimiter
    /// Keys' credits: leased from their balances, spent here, given back when idle and at shutdown.
    public let credits: CreditLedger
    let creditReturns: CreditReturnService
    public let flusher: UsageFlusher
    /// Finishes changes a crashed writer left half-done.
    public let repair: RepairService
    public let dataPlane: DataPlaneServer
    public let controlPlane: ControlPlane
    public let eventLoopGroup: MultiThreadedEventLoopGroup
    private let logger: Logger

    public init(configuration: NodeConfiguration, logger: Logger = Logger(label: "keygate")) throws {
        self.configuration = configuration
        self.logger = logger
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.eventLoopThreads))
        self.eventLoopGroup = group
        var redisConfiguration = configuration.redis
        redisConfiguration.clientName = redisConfiguration.clientName ?? "keygate-node"
        let redis = try RedisClient(configuration: redisConfiguration, eventLoopGroup: group, logger: logger)
        self.redis = redis
        let layout = try KeyStoreLayout(namespace: configuration.namespace)
        let format = try KeyFormat(prefix: configuration.keyPrefix)
        let hasher = KeyHasher(pepper: configuration.pepper)
        let store = KeyStore(redis: redis, layout: layout, format: format, hasher: hasher)
        self.store = store
        let adminRedis = try RedisClient(configuration: redisConfiguration.named("keygate-admin"), eventLoopGroup: group,
                                         logger: logger, sharingTopologyWith: redis)
        let adminStore = KeyStore(redis: adminRedis, layout: layout, format: format, hasher: hasher)
        self.adminStore = adminStore
        self.sentinelWatcher = RedisSentinelWatcher(client: redis, eventLoop: group.any(), logger: logger)
        let verifier = Verifier(store: store, settings: configuration.verifier)
        self.verifier = verifier
        self.invalidation = InvalidationService(store: store, cache: verifier.cache,
                                                subscriberConfiguration: redisConfiguration.named("keygate-invalidation"),
                                                settings: configuration.invalidation, eventLoop: group.any(), logger: logger)
        let usage = UsageRecorder(eventLoopGroup: group)
        self.usage = usage
        self.flusher = UsageFlusher(store: adminStore, recorder: usage, settings: configuration.usage,
                                    nodeID: configuration.nodeID, logger: logger)
        self.repair = RepairService(store: adminStore, logger: logger)
        let cache = verifier.cache
        let clock = configuration.clock
        let rateLimiter = RateLimiter(clock: clock) { subject, limit, window, wanted, loop in
            store.leaseTokens(subject: subject, limit: limit, window: window, wanted: wanted, on: loop)
        }
        self.rateLimiter = rateLimiter
        let credits = CreditLedger(clock: clock, lease: { subject, setting, period, need, wanted, loop in
            store.leaseCredits(subject: subject, setting: setting, period: period, need: need, wanted: wanted, on: loop)
        }, giveBack: { subject, setting, period, credits in
            try await adminStore.returnCredits(subject: subject, setting: setting, period: period, credits: credits)
        })
        self.credits = credits
        self.creditReturns = CreditReturnService(ledger: credits)
        self.dataPlane = DataPlaneServer(settings: configuration.dataPlane, verifier: verifier, usage: usage,
                                         keyLimits: LimitEnforcer(rateLimiter: rateLimiter, credits: credits), group: group,
                                         logger: logger, isReady: { redis.isConnected && cache.isTrusted })
        let metricsSource = MetricsSource()
        self.controlPlane = ControlPlane(settings: configuration.controlPlane, store: adminStore, verifier: verifier,
                                         eventLoopGroup: group, logger: logger,
                                         isReady: { redis.isConnected && cache.isTrusted },
                                         notReadyReason: { Self.notReadyReason(redis: redis, cache: cache) },
                                         metricsText: { metricsSource.node.map(NodeMetrics.render) ?? "" },
                                         nodeStatus: { [nodeID = configuration.nodeID] in
                                             NodeStatus(version: Self.version, nodeID: nodeID, redisConnected: redis.isConnected,
                                                        invalidationTrusted: cache.isTrusted, cachedKeys: cache.count)
                                         })
        metricsSource.node = self
    }

    /// The services in dependency order.
    public var services: [any Service] {
        var services: [any Service] = [RedisClientService(clients: [redis, adminStore.redis], group: eventLoopGroup)]
        if let sentinelWatcher { services.append(SentinelWatcherService(watcher: sentinelWatcher)) }
        // Credits go back after the data plane has drained (shutdown runs in reverse order).
        return services + [invalidation, flusher, creditReturns, repair, controlPlane, dataPlane]
    }

    /// What `/health/ready` says when not ready: Redis's last error, or the invalidation state.
    static func notReadyReason(redis: RedisClient, cache: VerdictCache) -> String? {
        if let reason = redis.unavailableReason { return "redis: \(reason)" }
        if !cache.isTrusted { return "invalidation channel not subscribed and caught up yet" }
        return nil
    }

    /// Runs until SIGTERM or SIGINT (graceful: drain, flush, exit) or a service fails.
    public func run() async throws {
        let group = ServiceGroup(configuration: .init(
            services: services.map { .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup,
                                              failureTerminationBehavior: .gracefullyShutdownGroup) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
    }

    /// Ready: Redis reachable and the invalidation channel subscribed and caught up.
    public var isReady: Bool { redis.isConnected && verifier.cache.isTrusted }
}

/// Opens the Redis connections at start and closes them last.
struct RedisClientService: Service {
    let clients: [RedisClient]
    let group: MultiThreadedEventLoopGroup

    func run() async throws {
        for client in clients { try? await client.connect() } // not fatal: the node answers 503 and reconnects by itself
        try? await gracefulShutdown()
        for client in clients { await client.shutdown() }
        try? await group.shutdownGracefully()
    }
}

/// Gives back the credits of keys idle on this node for a second, every second, and all that is
/// held at shutdown (after the data plane drained), so a stopped node costs no credit.
struct CreditReturnService: Service {
    let ledger: CreditLedger
    static let idleMilliseconds: Int64 = 1_000

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            await ledger.returnUnused(idleMilliseconds: Self.idleMilliseconds)
        }
        await ledger.returnUnused(idleMilliseconds: 0)
    }
}

/// Runs the Sentinel watcher until shutdown.
struct SentinelWatcherService: Service {
    let watcher: RedisSentinelWatcher

    func run() async throws {
        await cancelWhenGracefulShutdown { await watcher.run() }
    }
}

/// Lets the control plane's `/metrics` read the node that owns it (set once, after init).
private final class MetricsSource: @unchecked Sendable {
    // Written once in KeygateNode.init before any service runs; read-only afterwards.
    weak var node: KeygateNode?
}
