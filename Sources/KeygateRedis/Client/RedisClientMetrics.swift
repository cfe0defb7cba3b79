public import KeygateMetrics
import NIOCore

/// Latency and failures of the commands a `RedisClient` sends, read by the metrics endpoint.
public final class RedisClientMetrics: Sendable {
    /// Time from handing a command (or pipeline) to the connection until its reply or failure.
    public let commandLatency = LatencyHistogram()
    /// Failures by `RedisError.Code`; index order is `errorCodes`.
    private let errors: [AtomicCounter]
    public static let errorCodes: [RedisError.Code] = [.connectionClosed, .timeout, .protocolError, .serverError,
                                                       .circuitOpen, .cancelled, .connectFailed, .authenticationFailed,
                                                       .notWritableMaster, .discoveryFailed]

    /// Cluster only: `MOVED` and `ASK` redirects followed, retries after `TRYAGAIN`/`CLUSTERDOWN`/
    /// `LOADING` or an unreachable primary, slot-map refreshes and refreshes that found no node.
    public let movedRedirects = AtomicCounter()
    public let askRedirects = AtomicCounter()
    public let clusterRetries = AtomicCounter()
    public let slotMapRefreshes = AtomicCounter()
    public let slotMapRefreshFailures = AtomicCounter()

    public init() {
        errors = Self.errorCodes.map { _ in AtomicCounter() }
    }

    /// Failed commands per error code, every code listed (zero included) so rates are well defined.
    public var errorCounts: [(code: String, count: UInt64)] {
        zip(Self.errorCodes, errors).map { ($0.description, $1.load()) }
    }

    /// Times `future` and counts its failure. Cheap: one clock read now and one on completion.
    func measure<Value>(_ future: EventLoopFuture<Value>) -> EventLoopFuture<Value> {
        let start = NIODeadline.now()
        future.whenComplete { result in
            self.commandLatency.observe(nanoseconds: NIODeadline.now().uptimeNanoseconds &- start.uptimeNanoseconds)
            if case .failure(let error) = result {
                let code = (error as? RedisError)?.code ?? .connectionClosed
                if let index = Self.errorCodes.firstIndex(of: code) { self.errors[index].add() }
            }
        }
        return future
    }
}
