public import KeygateCore
public import Logging
public import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization

/// The data plane (port 8080) as a service: binds, serves until graceful shutdown, then stops
/// accepting, lets each connection finish the responses it owes, and closes them.
public final class DataPlaneServer: Service, Sendable {
    public let settings: DataPlaneSettings
    public let metrics = DataPlaneMetrics()
    private let context: DataPlaneContext
    private let group: any EventLoopGroup
    private let logger: Logger
    private let connections = Mutex<[ObjectIdentifier: any Channel]>([:])
    private let boundPort = Atomic<Int>(0)

    public init(settings: DataPlaneSettings, verifier: Verifier, usage: UsageRecorder, keyLimits: LimitEnforcer, group: any EventLoopGroup,
                logger: Logger, isReady: @escaping @Sendable () -> Bool) {
        self.settings = settings
        self.group = group
        self.logger = logger
        self.context = DataPlaneContext(settings: settings, verifier: verifier, usage: usage, keyLimits: keyLimits, metrics: metrics,
                                        logger: logger, isReady: isReady)
    }

    /// The port actually bound (useful with port 0), or 0 before binding.
    public var port: Int { boundPort.load(ordering: .acquiring) }

    public func run() async throws {
        let channel = try await bind()
        logger.info("data plane listening", metadata: ["address": "\(settings.host):\(port)"])
        // Wait for graceful shutdown (or cancellation), then drain.
        try? await gracefulShutdown()
        context.startDraining()
        try? await channel.close()
        let open = connections.withLock { Array($0.values) }
        for connection in open {
            connection.eventLoop.execute { connection.pipeline.fireUserInboundEventTriggered(DrainEvent()) }
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while connections.withLock({ !$0.isEmpty }) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        for connection in connections.withLock({ Array($0.values) }) { try? await connection.close() }
        logger.info("data plane stopped")
    }

    func bind() async throws -> any Channel {
        let context = self.context
        let settings = self.settings
        let metrics = self.metrics
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                let open = metrics.openConnections.add(1, ordering: .relaxed).newValue
                channel.closeFuture.whenComplete { _ in
                    metrics.openConnections.subtract(1, ordering: .relaxed)
                    self.connections.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(channel)) }
                }
                if open > settings.maxConnections || context.isDraining {
                    // Over the cap (or shutting down): a 503 the client can act on, then close.
                    metrics.refusedConnections.add(1, ordering: .relaxed)
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(RefuseConnectionHandler(retryAfter: settings.retryAfterSeconds))
                    }
                }
                self.connections.withLock { $0[ObjectIdentifier(channel)] = channel }
                return channel.eventLoop.makeCompletedFuture {
                    // One handler: every handler in the pipeline costs each request a hop both ways.
                    try channel.pipeline.syncOperations.addHandler(DataPlaneHandler(node: context, eventLoop: channel.eventLoop))
                }
            }
            .bind(host: settings.host, port: settings.port)
            .get()
        boundPort.store(channel.localAddress?.port ?? settings.port, ordering: .releasing)
        return channel
    }
}

/// Answers a connection the node will not serve with one 503 and closes it.
final class RefuseConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let retryAfter: Int

    init(retryAfter: Int) { self.retryAfter = retryAfter }

    func channelActive(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 256)
        Responses.unavailable(retryAfter: retryAfter, close: true, omitBody: false, into: &buffer)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(NIOAny(buffer)).whenComplete { _ in loopBound.value.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {} // nothing it sends is read
}
