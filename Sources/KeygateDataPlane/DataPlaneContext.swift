import Foundation
import KeygateCore
public import KeygateMetrics
import Logging
import NIOCore
public import Synchronization

/// What every data-plane connection shares: the verifier, usage counting, settings and counters.
final class DataPlaneContext: Sendable {
    let settings: DataPlaneSettings
    let verifier: Verifier
    let usage: UsageRecorder
    let metrics: DataPlaneMetrics
    let limiter: FailureLimiter
    let isReady: @Sendable () -> Bool
    let logger: Logger
    /// Per-request logs are debug level; checked once so a production node pays nothing for them.
    let logsRequests: Bool
    private let draining = Atomic<Bool>(false)
    private let requestCounter = Atomic<UInt64>(0)

    init(settings: DataPlaneSettings, verifier: Verifier, usage: UsageRecorder, metrics: DataPlaneMetrics,
         logger: Logger, isReady: @escaping @Sendable () -> Bool) {
        self.settings = settings
        self.logger = logger
        self.logsRequests = logger.logLevel <= .debug
        self.verifier = verifier
        self.usage = usage
        self.metrics = metrics
        self.isReady = isReady
        self.limiter = FailureLimiter(limit: settings.failureLimit, window: settings.failureWindow,
                                      trustedProxies: settings.trustedProxies)
    }

    enum LimitCheck {
        case proceed
        /// Over the limit, but a valid key already cached: serve it (no Redis cost).
        case serveCached(Decision, KeyHash)
        /// Over the limit: 429 with this Retry-After.
        case refuse(retryAfter: Int)
    }

    /// What to do with a request from `client` given the failure limiter.
    func checkLimit(_ key: UnsafeRawBufferPointer, client: FailureLimiter.Client?) -> LimitCheck {
        guard let client, limiter.isEnabled else { return .proceed }
        let now = NIODeadline.now().uptimeNanoseconds
        guard limiter.isBlocked(client, now: now) else { return .proceed }
        if let (decision, hash) = verifier.cachedValid(key) { return .serveCached(decision, hash) }
        metrics.count(.rateLimited)
        return .refuse(retryAfter: limiter.retryAfterSeconds(client, now: now))
    }

    private func countFailure(_ client: FailureLimiter.Client?) {
        guard let client, limiter.isEnabled else { return }
        limiter.recordFailure(client, now: NIODeadline.now().uptimeNanoseconds)
    }

    var isDraining: Bool { draining.load(ordering: .relaxed) }
    func startDraining() { draining.store(true, ordering: .relaxed) }

    enum Outcome {
        /// Decided now; `at` is the clock reading that ended the verification (uptime nanoseconds).
        case decided(Decision, KeyHash?, at: UInt64)
        case pending(EventLoopFuture<Decision>, KeyHash?)
    }

    /// Verifies and times the verification (a hit costs one more clock read and two atomic adds).
    func verify(_ key: UnsafeRawBufferPointer, on eventLoop: any EventLoop) -> Outcome {
        let start = NIODeadline.now().uptimeNanoseconds
        let (result, hash) = verifier.verifyReturningHash(key, on: eventLoop, now: start)
        switch result {
        case .decided(let decision):
            let end = NIODeadline.now().uptimeNanoseconds
            metrics.latency.observe(nanoseconds: end &- start)
            return .decided(decision, hash, at: end)
        case .pending(let future):
            let latency = metrics.latency
            future.whenComplete { _ in latency.observe(nanoseconds: NIODeadline.now().uptimeNanoseconds &- start) }
            return .pending(future, hash)
        }
    }

    func writeAuthDecision(_ decision: Decision, hash: KeyHash?, required: [Substring], close: Bool, omitBody: Bool,
                           requestID: String? = nil, client: FailureLimiter.Client? = nil, usage: UsageRecorder.LoopCounter,
                           at uptimeNanoseconds: UInt64, into buffer: inout ByteBuffer) {
        logDecision(decision, hash: hash, requestID: requestID)
        switch decision {
        case .valid(let verdict):
            guard required.isEmpty || verdict.principal.grants(required) else {
                metrics.count(.forbidden)
                Responses.json(.forbidden, body: Responses.forbiddenBody, close: close, omitBody: omitBody, into: &buffer)
                return
            }
            metrics.count(.ok)
            if let hash { usage.record(hash, uptimeNanoseconds: uptimeNanoseconds) }
            Responses.authorized(verdict, close: close, into: &buffer)
        case .invalid(let reason):
            metrics.count(DataPlaneMetrics.Outcome(reason))
            countFailure(client)
            Responses.unauthorized(close: close, omitBody: omitBody, into: &buffer)
        case .unavailable:
            metrics.count(.unavailable)
            Responses.unavailable(retryAfter: settings.retryAfterSeconds, close: close, omitBody: omitBody, into: &buffer)
        }
    }

    func writeVerifyDecision(_ decision: Decision, hash: KeyHash?, close: Bool, requestID: String? = nil,
                             client: FailureLimiter.Client? = nil, usage: UsageRecorder.LoopCounter, at uptimeNanoseconds: UInt64,
                             into buffer: inout ByteBuffer) {
        logDecision(decision, hash: hash, requestID: requestID)
        var body: [String: Any]
        switch decision {
        case .valid(let verdict):
            metrics.count(.ok)
            if let hash { usage.record(hash, uptimeNanoseconds: uptimeNanoseconds) }
            body = ["valid": true, "code": "VALID", "user": verdict.principal.user, "key_id": verdict.keyID.description,
                    "scopes": verdict.principal.scopes,
                    "expires_at": verdict.expiresAtMilliseconds == Int64.max ? NSNull() as Any
                        : RFC3339.string(Date(timeIntervalSince1970: Double(verdict.expiresAtMilliseconds) / 1000))]
        case .invalid(let reason):
            metrics.count(DataPlaneMetrics.Outcome(reason))
            countFailure(client)
            body = ["valid": false, "code": settings.detailedVerifyCodes ? reason.code : "INVALID", "user": NSNull(),
                    "key_id": NSNull(), "scopes": [String](), "expires_at": NSNull()]
        case .unavailable:
            metrics.count(.unavailable)
            Responses.unavailable(retryAfter: settings.retryAfterSeconds, close: close, omitBody: false, into: &buffer)
            return
        }
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data("{}".utf8)
        Responses.json(.ok, body: String(decoding: data, as: UTF8.self), close: close, into: &buffer)
    }

    /// One debug line per decided request: request id, outcome, and the key id (valid keys) or the
    /// first 8 hex characters of the hash. Never the key, never the full hash.
    func logDecision(_ decision: Decision, hash: KeyHash?, requestID: String?) {
        guard logsRequests else { return }
        let id = requestID ?? "kg-\(requestCounter.add(1, ordering: .relaxed).newValue)"
        var metadata: Logger.Metadata = ["request_id": "\(id)"]
        switch decision {
        case .valid(let verdict):
            metadata["outcome"] = "valid"
            metadata["key_id"] = "\(verdict.keyID)"
        case .invalid(let reason):
            metadata["outcome"] = "\(reason)"
            if let hash { metadata["key_hash_prefix"] = "\(hash.logPrefix)" }
        case .unavailable:
            metadata["outcome"] = "unavailable"
        }
        logger.debug("verified", metadata: metadata)
    }

    /// `X-Request-Id` from the proxy, reduced to a safe token (no CR/LF, at most 64 characters).
    static func requestID(_ value: String?) -> String? {
        guard let value else { return nil }
        let safe = value.unicodeScalars.filter { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-_.:".unicodeScalars.contains($0)) }
        guard !safe.isEmpty else { return nil }
        return String(String.UnicodeScalarView(safe.prefix(64)))
    }
}

/// Verification results by outcome, read by the metrics endpoint.
public final class DataPlaneMetrics: Sendable {
    public enum Outcome: Int, CaseIterable, Sendable {
        case ok, missing, malformed, unknown, revoked, disabled, expired, forbidden, unavailable, badRequest, rateLimited

        init(_ reason: InvalidReason) {
            switch reason {
            case .missing: self = .missing
            case .malformed: self = .malformed
            case .notFound: self = .unknown
            case .revoked: self = .revoked
            case .disabled: self = .disabled
            case .expired: self = .expired
            }
        }

        public var label: String {
            switch self {
            case .badRequest: return "bad_request"
            case .rateLimited: return "ratelimited"
            default: return "\(self)"
            }
        }

        /// The label `/metrics` shows without `--metrics-refusal-reasons`: unknown, revoked, disabled
        /// and expired keys are all `invalid`. Anyone who reaches the control port could otherwise
        /// send a key and watch which series moved: a revoked-or-unknown oracle (the 401 is generic).
        public var publicLabel: String {
            switch self {
            case .unknown, .revoked, .disabled, .expired: return "invalid"
            default: return label
            }
        }
    }

    private let counters: [AtomicCounter]
    /// Time to a decision, from the key read to the verdict (cache hit or Redis lookup).
    public let latency = LatencyHistogram()
    public let openConnections = Atomic<Int>(0)
    public let refusedConnections = Atomic<Int>(0)
    /// Connections closed with 408 because a request did not arrive within the request timeout.
    public let requestTimeouts = Atomic<Int>(0)

    public init() {
        counters = Outcome.allCases.map { _ in AtomicCounter() }
    }

    func count(_ outcome: Outcome) {
        counters[outcome.rawValue].add()
    }

    public func value(_ outcome: Outcome) -> UInt64 {
        counters[outcome.rawValue].load()
    }
}
