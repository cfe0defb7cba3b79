import Foundation
public import KeygateCore
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
    }

    var isDraining: Bool { draining.load(ordering: .relaxed) }
    func startDraining() { draining.store(true, ordering: .relaxed) }

    enum Outcome {
        case decided(Decision, KeyHash?)
        case pending(EventLoopFuture<Decision>, KeyHash?)
    }

    /// Verifies and times the verification (a hit costs one more clock read and two atomic adds).
    func verify(_ key: UnsafeRawBufferPointer, on eventLoop: any EventLoop) -> Outcome {
        let start = NIODeadline.now().uptimeNanoseconds
        let (result, hash) = verifier.verifyReturningHash(key, on: eventLoop)
        switch result {
        case .decided(let decision):
            metrics.latency.observe(nanoseconds: NIODeadline.now().uptimeNanoseconds &- start)
            return .decided(decision, hash)
        case .pending(let future):
            let latency = metrics.latency
            future.whenComplete { _ in latency.observe(nanoseconds: NIODeadline.now().uptimeNanoseconds &- start) }
            return .pending(future, hash)
        }
    }

    func writeAuthDecision(_ decision: Decision, hash: KeyHash?, required: [Substring], close: Bool, omitBody: Bool,
                           requestID: String? = nil, eventLoop: any EventLoop, into buffer: inout ByteBuffer) {
        logDecision(decision, hash: hash, requestID: requestID)
        switch decision {
        case .valid(let verdict):
            guard verdict.principal.grants(required) else {
                metrics.count(.forbidden)
                Responses.json(.forbidden, body: Responses.forbiddenBody, close: close, omitBody: omitBody, into: &buffer)
                return
            }
            metrics.count(.ok)
            if let hash { usage.record(hash, nowMilliseconds: Self.nowMilliseconds(), on: eventLoop) }
            Responses.authorized(KeygateVerdictView(user: verdict.principal.user, keyID: verdict.keyID,
                                                    scopes: verdict.principal.scopesHeader), close: close, into: &buffer)
        case .invalid(let reason):
            metrics.count(DataPlaneMetrics.Outcome(reason))
            Responses.unauthorized(close: close, omitBody: omitBody, into: &buffer)
        case .unavailable:
            metrics.count(.unavailable)
            Responses.unavailable(retryAfter: settings.retryAfterSeconds, close: close, omitBody: omitBody, into: &buffer)
        }
    }

    func writeVerifyDecision(_ decision: Decision, hash: KeyHash?, close: Bool, requestID: String? = nil,
                             eventLoop: any EventLoop, into buffer: inout ByteBuffer) {
        logDecision(decision, hash: hash, requestID: requestID)
        var body: [String: Any]
        switch decision {
        case .valid(let verdict):
            metrics.count(.ok)
            if let hash { usage.record(hash, nowMilliseconds: Self.nowMilliseconds(), on: eventLoop) }
            body = ["valid": true, "code": "VALID", "user": verdict.principal.user, "key_id": verdict.keyID.description,
                    "scopes": verdict.principal.scopes,
                    "expires_at": verdict.expiresAtMilliseconds == Int64.max ? NSNull() as Any
                        : ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(verdict.expiresAtMilliseconds) / 1000))]
        case .invalid(let reason):
            metrics.count(DataPlaneMetrics.Outcome(reason))
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

    static func nowMilliseconds() -> Int64 {
        Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
    }
}

/// Verification results by outcome, read by the metrics endpoint.
public final class DataPlaneMetrics: Sendable {
    public enum Outcome: Int, CaseIterable, Sendable {
        case ok, missing, malformed, unknown, revoked, disabled, expired, forbidden, unavailable, badRequest

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
            default: return "\(self)"
            }
        }
    }

    private let counters: [AtomicCounter]
    /// Time to a decision, from the key read to the verdict (cache hit or Redis lookup).
    public let latency = LatencyHistogram()
    public let openConnections = Atomic<Int>(0)
    public let refusedConnections = Atomic<Int>(0)

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
