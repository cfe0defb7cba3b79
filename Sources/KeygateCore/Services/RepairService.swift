public import Logging
public import ServiceLifecycle
public import Synchronization

/// Finishes mutations a writer left half-done (`KeyStore.repair`): every node runs it at start and
/// then every `interval`, so an operation whose writer crashed between steps is logged (or dropped,
/// if it was never applied) within `KeyStore.repairAge + interval`, whichever node gets there first.
public final class RepairService: Service, Sendable {
    private let store: KeyStore
    private let interval: Duration
    private let logger: Logger
    public let metrics = RepairMetrics()

    public init(store: KeyStore, interval: Duration = .seconds(30), logger: Logger) {
        self.store = store
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.repairOnce()
                try? await Task.sleep(for: self.interval)
            }
        }
    }

    /// One pass; failures (Redis unreachable) wait for the next.
    public func repairOnce() async {
        do {
            let report = try await store.repair()
            metrics.completed.add(report.completed, ordering: .relaxed)
            metrics.dropped.add(report.dropped, ordering: .relaxed)
            if report.completed + report.dropped > 0 {
                logger.warning("finished changes a writer left half-done",
                               metadata: ["completed": "\(report.completed)", "dropped": "\(report.dropped)"])
            }
        } catch {
            metrics.failures.add(1, ordering: .relaxed)
            logger.debug("repair pass failed; next pass retries", metadata: ["error": "\(error)"])
        }
    }
}

/// Counters of `RepairService`, read by the metrics endpoint.
public final class RepairMetrics: Sendable {
    /// Half-done changes found applied, and logged now.
    public let completed = Atomic<Int>(0)
    /// Registrations of changes that were never applied, dropped.
    public let dropped = Atomic<Int>(0)
    public let failures = Atomic<Int>(0)
    public init() {}
}
