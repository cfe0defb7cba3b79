public import KeygateMetrics

/// Verification results of the control plane's own authentication, read by `/metrics`.
public final class ControlPlaneMetrics: Sendable {
    public enum Outcome: Int, CaseIterable, Sendable {
        case ok, missing, invalid, forbidden, unavailable, badRequest
        public var label: String { self == .badRequest ? "bad_request" : "\(self)" }
    }

    private let counters = (0..<Outcome.allCases.count).map { _ in AtomicCounter() }
    /// Time to authenticate a request's key.
    public let latency = LatencyHistogram()

    public init() {}

    func count(_ outcome: Outcome) { counters[outcome.rawValue].add() }

    public func value(_ outcome: Outcome) -> UInt64 { counters[outcome.rawValue].load() }
}
