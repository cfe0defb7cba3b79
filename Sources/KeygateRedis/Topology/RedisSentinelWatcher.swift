import KeygateMetrics
public import Logging
public import NIOCore
import Synchronization

/// Follows a Sentinel topology's master while a node runs: subscribes to `+switch-master` on one
/// Sentinel (the next one after any loss), and asks the Sentinels where the master is every
/// `refreshInterval` and after every resubscribe (a switch announced while unsubscribed is not
/// replayed). Either way a new address wakes the client's connections and its subscriber, so they
/// reconnect at once instead of waiting out their backoff against a dead master.
public final class RedisSentinelWatcher: Sendable {
    private let topology: RedisTopology
    private let discovery: SentinelDiscovery
    private let subscriber: RedisSubscriber
    private let refreshInterval: Duration
    private let eventLoop: any EventLoop
    private let logger: Logger
    /// `+switch-master` messages for our master (for tests and the metrics).
    private let announcements = AtomicCounter()
    public var switchesAnnounced: UInt64 { announcements.load() }

    /// - Returns: nil when `client` does not use Sentinels.
    public init?(client: RedisClient, refreshInterval: Duration = .seconds(5), eventLoop: any EventLoop, logger: Logger) {
        guard let discovery = client.topology.discovery else { return nil }
        self.topology = client.topology
        self.discovery = discovery
        self.refreshInterval = refreshInterval
        self.eventLoop = eventLoop
        self.logger = logger
        let addresses = discovery.sentinel.addresses
        let next = Atomic<Int>(0)
        let masterName = discovery.sentinel.masterName
        let topology = client.topology
        let announced = announcements
        subscriber = RedisSubscriber(
            configuration: discovery.configuration(for: addresses[0]),
            connector: { loop in
                let address = addresses[next.wrappingAdd(1, ordering: .relaxed).oldValue % addresses.count]
                return discovery.connect(to: address, on: loop).map { ($0, 0) }
            },
            channels: ["+switch-master"], pingInterval: .seconds(1), pingTimeout: .seconds(1), bufferLimit: 1_000,
            eventLoop: eventLoop,
            messageHandler: { _, payload in
                // "<master-name> <old-ip> <old-port> <new-ip> <new-port>"
                let fields = String(buffer: payload).split(separator: " ")
                guard fields.count == 5, fields[0] == masterName else { return }
                announced.add()
                logger.warning("Sentinel announced a new master", metadata: ["master": "\(masterName)", "from": "\(fields[1]):\(fields[2])",
                                                                             "to": "\(fields[3]):\(fields[4])"])
                topology.masterSwitched()
            },
            lossHandler: nil)
    }

    /// Runs until cancelled.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.subscriber.run() }
            group.addTask {
                for await event in self.subscriber.events {
                    if case .subscribed = event { await self.checkMaster() }
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: self.refreshInterval)
                    await self.checkMaster()
                }
            }
            await group.next()
            group.cancelAll()
        }
    }

    /// Asks the Sentinels; a master other than the one the connections reached is a switch.
    private func checkMaster() async {
        guard let located = try? await discovery.locate(on: eventLoop).get(),
              let current = topology.currentEndpoint, located != current else { return }
        logger.warning("Sentinels name a different master than the one in use; reconnecting",
                       metadata: ["master": "\(discovery.sentinel.masterName)"])
        topology.masterSwitched()
    }
}
