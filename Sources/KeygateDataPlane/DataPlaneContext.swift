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
    /// Keys' own rate limits and credits (the failure limiter above limits clients that fail).
    let keyLimits: LimitEnforcer
    let isReady: @Sendable () -> Bool
    let logger: Logger
    /// Per-request logs are debug level; checked once so a production node pays nothing for them.
    let logsRequests: Bool
    private let draining = Atomic<Bool>(false)
    private let requestCounter = Atomic<UInt64>(0)

    init(settings: DataPlaneSettings, verifier: Verifier, usage: UsageRecorder, keyLimits: LimitEnforcer, metrics: DataPlaneMetrics,
         logger: Logger, isReady: @escaping @Sendable () -> Bool) {
        self.settings = settings
        self.keyLimits = keyLimits
        self.logger = logger
        self.logsRequests = logger.logLevel <= .debug
        self.verifier = verifier
        self.usage = usage
        self.metrics = metrics
        self.isReady = isReady
        self.limiter = FailureLimiter(limit: settings.failureLimit, window: settings.failureWindow,
                                      trustedProxies: settings.trustedProxies)
        self.gatewayPools = settings.gateway.isEnabled ? GatewayPools(settings: settings.gateway, metrics: metrics) : nil
    }

    /// Gateway mode's upstream connections (nil when no upstream is configured).
    let gatewayPools: GatewayPools?

    var isDraining: Bool { draining.load(ordering: .relaxed) }
    func startDraining() { draining.store(true, ordering: .relaxed) }

    // MARK: the verification step

    /// What checking one request's key came to, ready to render: every count it implies (outcome
    /// metrics, the key's use, the failure limiter, the log line) is already taken.
    enum Verification {
        case allowed(Verdict)
        /// Allowed by the key's limits: `rate` is the rate limit with the least left (nil without
        /// rate limits), `credits` the key's credits (nil without).
        case allowedWithin(Verdict, rate: RateLimiter.Quota?, credits: CreditLedger.Quota?)
        /// A rate limit of the key has nothing left in its window (429).
        case overLimit(Verdict, RateLimiter.Quota)
        /// The key's credits are used up (429, no use counted).
        case usageExceeded(Verdict, CreditLedger.Quota)
        /// A valid key without a scope the route requires (403).
        case forbidden
        case invalid(InvalidReason)
        /// Redis could not be asked, or could not answer in time (503: never 401 for "could not check").
        case unavailable
        /// The failure limiter refuses this client for now (429).
        case limited(retryAfter: Int)
    }

    /// A verification decided on the event loop (a cache hit, a refusal), or one waiting for Redis
    /// (its future completes on the request's event loop).
    enum Step {
        case done(Verification)
        case pending(EventLoopFuture<Verification>)
    }

    /// One request's verification, in order: the failure limiter, the verifier (cache, then Redis),
    /// the route's required scopes, the key's rate limits and credits (`cost` units), then the accounting. A
    /// cache hit of a key whose limits hold tokens on this node never leaves the event loop.
    func check(_ key: UnsafeRawBufferPointer, required: [Substring] = [], cost: Int = 1, client: FailureLimiter.Client?,
               requestID: String?, usage: UsageRecorder.LoopCounter, on eventLoop: any EventLoop) -> Step {
        if let client, limiter.isEnabled {
            let now = NIODeadline.now().uptimeNanoseconds
            if limiter.isBlocked(client, now: now) {
                // Over the limit, but a valid key already cached is served (it costs no Redis).
                guard let (decision, hash) = verifier.cachedValid(key) else {
                    metrics.count(.rateLimited)
                    return .done(.limited(retryAfter: limiter.retryAfterSeconds(client, now: now)))
                }
                return settle(decision, hash: hash, required: required, cost: cost, client: nil, requestID: requestID, usage: usage,
                              at: now, on: eventLoop)
            }
        }
        let start = NIODeadline.now().uptimeNanoseconds
        let (result, hash) = verifier.verifyReturningHash(key, on: eventLoop, now: start)
        switch result {
        case .decided(let decision):
            let end = NIODeadline.now().uptimeNanoseconds
            metrics.latency.observe(nanoseconds: end &- start)
            return settle(decision, hash: hash, required: required, cost: cost, client: client, requestID: requestID, usage: usage,
                          at: end, on: eventLoop)
        case .pending(let future):
            let latency = metrics.latency
            return .pending(future.hop(to: eventLoop).recover { _ in .unavailable }.flatMap { decision in
                let end = NIODeadline.now().uptimeNanoseconds
                latency.observe(nanoseconds: end &- start)
                switch self.settle(decision, hash: hash, required: required, cost: cost, client: client, requestID: requestID,
                                   usage: usage, at: end, on: eventLoop) {
                case .done(let verification): return eventLoop.makeSucceededFuture(verification)
                case .pending(let verification): return verification
                }
            })
        }
    }

    /// The accounting of one decision (on the request's event loop: `usage` is that loop's counter).
    private func settle(_ decision: Decision, hash: KeyHash?, required: [Substring], cost: Int, client: FailureLimiter.Client?,
                        requestID: String?, usage: UsageRecorder.LoopCounter, at uptimeNanoseconds: UInt64,
                        on eventLoop: any EventLoop) -> Step {
        logDecision(decision, hash: hash, requestID: requestID)
        switch decision {
        case .valid(let verdict):
            guard required.isEmpty || verdict.principal.grants(required) else {
                metrics.count(.forbidden)
                if let hash { usage.recordRefusal(hash, .forbidden) }
                return .done(.forbidden)
            }
            guard let limits = verdict.limits else {
                metrics.count(.ok)
                if let hash { usage.record(hash, uptimeNanoseconds: uptimeNanoseconds) }
                return .done(.allowed(verdict))
            }
            switch keyLimits.admit(limits, cost: cost, on: eventLoop) {
            case .decided(let outcome):
                return .done(count(outcome, verdict, hash: hash, usage: usage, at: uptimeNanoseconds))
            case .pending(let future):
                return .pending(future.hop(to: eventLoop).map { outcome in
                    self.count(outcome, verdict, hash: hash, usage: usage, at: NIODeadline.now().uptimeNanoseconds)
                })
            }
        case .invalid(let reason):
            metrics.count(DataPlaneMetrics.Outcome(reason))
            if let client, limiter.isEnabled { limiter.recordFailure(client, now: NIODeadline.now().uptimeNanoseconds) }
            return .done(.invalid(reason))
        case .unavailable:
            metrics.count(.unavailable)
            return .done(.unavailable)
        }
    }

    /// The accounting of a limits outcome: only an admitted request is a use of the key; a refusal is
    /// counted as one, by reason.
    private func count(_ outcome: LimitEnforcer.Outcome, _ verdict: Verdict, hash: KeyHash?, usage: UsageRecorder.LoopCounter,
                       at uptimeNanoseconds: UInt64) -> Verification {
        switch outcome {
        case .admitted(let rate, let credits):
            metrics.count(.ok)
            if let hash { usage.record(hash, uptimeNanoseconds: uptimeNanoseconds) }
            return .allowedWithin(verdict, rate: rate, credits: credits)
        case .rateLimited(let quota):
            metrics.count(.overLimit)
            if let hash { usage.recordRefusal(hash, .rateLimited) }
            return .overLimit(verdict, quota)
        case .usageExceeded(let quota):
            metrics.count(.usageExceeded)
            if let hash { usage.recordRefusal(hash, .usageExceeded) }
            return .usageExceeded(verdict, quota)
        case .unavailable:
            metrics.count(.unavailable)
            return .unavailable
        }
    }

    /// Whole seconds until the next refill, at least 1; nil without a refill.
    func secondsToRefill(_ quota: CreditLedger.Quota) -> Int? { quota.refillsInSeconds }

    /// Whole seconds until `quota`'s window ends, at least 1 (`Retry-After`, the `t` of `RateLimit`).
    func secondsToReset(_ quota: RateLimiter.Quota) -> Int {
        let now = Int64((Date().timeIntervalSince1970 * 1_000).rounded(.down))
        return Int(max(1, (quota.resetsAt - now + 999) / 1_000))
    }

    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), CRLF-terminated.
    func rateLimitHeaders(_ verdict: Verdict, _ quota: RateLimiter.Quota, retryAfter: Bool) -> String {
        let reset = secondsToReset(quota)
        var headers = "RateLimit-Policy: \(verdict.limits?.policyHeader ?? "")\r\nRateLimit: \"\(quota.limit.name)\";r=\(quota.remaining);t=\(reset)\r\n"
        if retryAfter { headers += "Retry-After: \(reset)\r\n" }
        return headers
    }

    // MARK: rendering

    /// The forward-auth answer (`/auth`): 200 with the identity headers, or the refusal.
    /// Gateway mode: the `RateLimit-Policy` and `RateLimit` fields `/auth` would send for an admitted
    /// request of a limited key, for the proxied response; nil for a key without rate limits.
    func rateLimitFields(_ verification: Verification, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard case .allowedWithin(let verdict, let quota, _) = verification, let quota, let limits = verdict.limits else { return nil }
        var buffer = allocator.buffer(capacity: 128)
        Responses.writeRateLimitFields(policy: limits.policyHeaderField, name: quota.limit.name, remaining: quota.remaining,
                                       reset: secondsToReset(quota), into: &buffer)
        return buffer
    }

    func renderAuth(_ verification: Verification, close: Bool, omitBody: Bool, into buffer: inout ByteBuffer) {
        switch verification {
        case .allowed(let verdict): Responses.authorized(verdict, close: close, into: &buffer)
        case .allowedWithin(let verdict, let quota, _):
            guard let quota, let limits = verdict.limits else { return Responses.authorized(verdict, close: close, into: &buffer) }
            // Written field by field: building a String per answer cost the limited hit path several percent.
            Responses.authorizedHead(verdict, into: &buffer)
            Responses.writeRateLimitFields(policy: limits.policyHeaderField, name: quota.limit.name, remaining: quota.remaining,
                                           reset: secondsToReset(quota), into: &buffer)
            Responses.endHead(close: close, into: &buffer)
        case .overLimit(let verdict, let quota):
            Responses.json(.tooManyRequests, body: Responses.overLimitBody(quota, retryAfter: secondsToReset(quota)),
                           extraHeaders: rateLimitHeaders(verdict, quota, retryAfter: true), close: close, omitBody: omitBody, into: &buffer)
        case .usageExceeded(_, let quota):
            let refill = secondsToRefill(quota)
            Responses.json(.tooManyRequests, body: Responses.usageExceededBody(refillsIn: refill),
                           extraHeaders: refill.map { "Retry-After: \($0)\r\n" } ?? "", close: close, omitBody: omitBody, into: &buffer)
        case .forbidden: Responses.json(.forbidden, body: Responses.forbiddenBody, close: close, omitBody: omitBody, into: &buffer)
        case .invalid: Responses.unauthorized(close: close, omitBody: omitBody, into: &buffer)
        case .unavailable: Responses.unavailable(retryAfter: settings.retryAfterSeconds, close: close, omitBody: omitBody, into: &buffer)
        case .limited(let retryAfter): Responses.rateLimited(retryAfter: retryAfter, close: close, omitBody: omitBody, into: &buffer)
        }
    }

    /// The `/v1/verify` answer: 200 with `valid` and `code`, 429 from the failure limiter, 503 when
    /// the verdict could not be established.
    func renderVerify(_ verification: Verification, close: Bool, into buffer: inout ByteBuffer) {
        var body: [String: Any]
        func identity(_ verdict: Verdict, valid: Bool, code: String) -> [String: Any] {
            ["valid": valid, "code": code, "user": verdict.principal.user, "key_id": verdict.keyID.description,
             "scopes": verdict.principal.scopes,
             "expires_at": verdict.expiresAtMilliseconds == Int64.max ? NSNull() as Any
                 : RFC3339.string(Date(timeIntervalSince1970: Double(verdict.expiresAtMilliseconds) / 1000))]
        }
        func rateLimit(_ quota: RateLimiter.Quota) -> [String: Any] {
            ["name": quota.limit.name, "limit": quota.limit.limit, "duration_ms": quota.limit.durationMilliseconds,
             "remaining": quota.remaining, "reset": secondsToReset(quota)]
        }
        switch verification {
        case .allowed(let verdict):
            body = identity(verdict, valid: true, code: "VALID")
        case .allowedWithin(let verdict, let quota, let credits):
            body = identity(verdict, valid: true, code: "VALID")
            if let quota { body["rate_limit"] = rateLimit(quota) }
            if let credits { body["credits"] = self.credits(credits) }
        case .usageExceeded(let verdict, let credits):
            body = identity(verdict, valid: false, code: "USAGE_EXCEEDED")
            body["credits"] = self.credits(credits)
        case .overLimit(let verdict, let quota):
            body = identity(verdict, valid: false, code: "RATE_LIMITED")
            body["rate_limit"] = rateLimit(quota)
        case .invalid(let reason):
            body = ["valid": false, "code": settings.detailedVerifyCodes ? reason.code : "INVALID", "user": NSNull(),
                    "key_id": NSNull(), "scopes": [String](), "expires_at": NSNull()]
        case .forbidden, .unavailable: // /v1/verify requires no scope: only unavailable reaches here
            return Responses.unavailable(retryAfter: settings.retryAfterSeconds, close: close, omitBody: false, into: &buffer)
        case .limited(let retryAfter):
            return Responses.rateLimited(retryAfter: retryAfter, close: close, omitBody: false, into: &buffer)
        }
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data("{}".utf8)
        Responses.json(.ok, body: String(decoding: data, as: UTF8.self), close: close, into: &buffer)
    }

    /// `credits` of `/v1/verify`: what is left, and the seconds to the next refill (null without).
    private func credits(_ quota: CreditLedger.Quota) -> [String: Any] {
        ["remaining": quota.remaining, "reset": secondsToRefill(quota).map { $0 as Any } ?? NSNull()]
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
        /// A valid key over one of its own rate limits (`rateLimited` is the failure limiter's 429).
        case overLimit
        /// A valid key whose credits are used up.
        case usageExceeded

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
            case .overLimit: return "over_limit"
            case .usageExceeded: return "usage_exceeded"
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
    /// Gateway mode: time from choosing an upstream to the response's end.
    public let upstreamLatency = LatencyHistogram()
    /// Gateway mode: upstream responses by status class (index 1-5), 502/504 of the gateway included.
    private let upstreamStatus = (0..<6).map { _ in AtomicCounter() }
    /// Gateway mode: exchanges that ended in 502/504 or a truncated response.
    public let gatewayErrors = Atomic<Int>(0)
    /// Gateway mode: connections to an upstream server that failed (the server is then skipped a while).
    public let gatewayConnectFailures = Atomic<Int>(0)

    public init() {
        counters = Outcome.allCases.map { _ in AtomicCounter() }
    }

    func count(_ outcome: Outcome) {
        counters[outcome.rawValue].add()
    }

    public func value(_ outcome: Outcome) -> UInt64 {
        counters[outcome.rawValue].load()
    }

    func countUpstreamStatus(_ code: UInt) {
        upstreamStatus[Int(min(code / 100, 5))].add()
    }

    /// Upstream responses of one status class (`2` for 2xx).
    public func upstreamResponses(statusClass: Int) -> UInt64 {
        upstreamStatus[statusClass].load()
    }
}
