import Synchronization

/// The fault suite's history checker: every request (start, end, node, key, status) and every
/// revoke acknowledgement. `violations(bound:)` lists the 200s for a key that started after its
/// revoke returned plus `bound`; `successes(of:)` counts the 200s, to compare with usage totals.
public final class History: Sendable {
    public struct Request: Sendable {
        public var start: ContinuousClock.Instant
        public var end: ContinuousClock.Instant
        public var node: Int
        public var key: String
        public var status: Int
    }

    private let state = Mutex<(requests: [Request], revoked: [String: ContinuousClock.Instant])>(([], [:]))

    public init() {}

    /// Runs `request`, records it, and returns its status.
    @discardableResult
    public func record(node: Int, key: String, _ request: () async throws -> Int) async rethrows -> Int {
        let start = ContinuousClock.now
        let status = try await request()
        let entry = Request(start: start, end: .now, node: node, key: key, status: status)
        state.withLock { $0.requests.append(entry) }
        return status
    }

    /// The revoke of `key` returned now.
    public func revoked(_ key: String, at instant: ContinuousClock.Instant = .now) {
        state.withLock { $0.revoked[key] = instant }
    }

    public var requests: [Request] { state.withLock { $0.requests } }

    /// Human-readable violations: a 200 for a revoked key that started later than `bound` after the revoke returned.
    public func violations(bound: Duration) -> [String] {
        state.withLock { state in
            state.requests.compactMap { request in
                guard request.status == 200, let acknowledged = state.revoked[request.key],
                      request.start > acknowledged + bound else { return nil }
                return "node \(request.node): 200 for a key revoked \(request.start - acknowledged) before the request started"
            }
        }
    }

    public func successes(of key: String) -> Int {
        state.withLock { $0.requests.filter { $0.key == key && $0.status == 200 }.count }
    }
}
