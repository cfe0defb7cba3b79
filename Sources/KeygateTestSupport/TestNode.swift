public import KeygateNode
import KeygateRedis
import Logging
import ServiceLifecycle

/// A Keygate node running in-process on an ephemeral port, for integration tests.
public final class TestNode: Sendable {
    public let node: KeygateNode
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    /// The data plane's port.
    public var port: Int { node.dataPlane.port }
    /// The control plane's port.
    public var controlPort: Int { node.controlPlane.port }

    /// Starts a node against `redisURL` in `namespace` and waits (at most 10 s) until it is ready,
    /// or, with `waitForReady: false`, only until both planes listen.
    public static func start(redisURL: String, namespace: String, waitForReady: Bool = true,
                             configure: (inout NodeConfiguration) -> Void = { _ in }) async throws -> TestNode {
        var configuration = NodeConfiguration()
        configuration.redis = try TestRedis.configuration(url: redisURL)
        configuration.redis.commandTimeout = .seconds(2)
        configuration.namespace = namespace
        configuration.dataPlane.port = 0
        configuration.controlPlane.port = 0
        configuration.eventLoopThreads = 2
        configuration.invalidation.pingInterval = .milliseconds(200)
        configuration.invalidation.pingTimeout = .milliseconds(500)
        configuration.usage.interval = .milliseconds(100)
        configure(&configuration)
        var logger = Logger(label: "keygate-test-node")
        logger.logLevel = .warning
        let node = try KeygateNode(configuration: configuration, logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: node.services.map { .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup,
                                                   failureTerminationBehavior: .gracefullyShutdownGroup) },
            logger: logger))
        let task = Task { try await group.run() }
        let testNode = TestNode(node: node, group: group, task: task)
        let deadline = ContinuousClock.now + .seconds(10)
        while !((node.isReady || !waitForReady) && node.dataPlane.port != 0 && node.controlPlane.port != 0) {
            guard ContinuousClock.now < deadline else {
                await testNode.stop()
                throw TestSupportError("node did not become ready within 10 s")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        return testNode
    }

    private init(node: KeygateNode, group: ServiceGroup, task: Task<Void, any Error>) {
        self.node = node
        self.group = group
        self.task = task
    }

    /// Graceful stop, as on SIGTERM: drain, flush usage counters, close Redis.
    public func stop() async {
        await group.triggerGracefulShutdown()
        _ = await task.result
    }

    /// Runs `body` with a node and stops it afterwards, also when `body` throws.
    public static func with<T>(redisURL: String, namespace: String,
                               configure: (inout NodeConfiguration) -> Void = { _ in },
                               _ body: (TestNode) async throws -> T) async throws -> T {
        let node = try await start(redisURL: redisURL, namespace: namespace, configure: configure)
        do {
            let result = try await body(node)
            await node.stop()
            return result
        } catch {
            await node.stop()
            throw error
        }
    }
}
