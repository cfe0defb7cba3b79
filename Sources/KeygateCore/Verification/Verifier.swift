import Foundation
public import NIOCore
public import Synchronization

/// Decides whether a key is valid: format and checksum (no I/O), SHA-256, cache, then a
/// single-flight Redis lookup on the caller's own event-loop connection. Expiry is checked at
/// decision time. Used by the data plane and by the control plane's admin authentication.
public final class Verifier: Sendable {
    public struct Settings: Sendable, Equatable {
        public var cache = VerdictCache.Settings()
        /// Serve a cached valid key for this long after the invalidation path was lost, and only
        /// while Redis cannot be reached (rule 2). Zero (the default) disables it.
        public var staleIfError: Duration = .zero
        /// Redis lookups in flight at once per node; past it requests get 503 (rule 8).
        public var maxConcurrentLookups = 1_024
        public init() {}
    }

    /// A decision now (cache hit, malformed key) or later (Redis lookup).
    public enum Result: Sendable {
        case decided(Decision)
        case pending(EventLoopFuture<Decision>)
    }

    public let store: KeyStore
    public let cache: VerdictCache
    public let settings: Settings
    public let metrics: VerifierMetrics
    private let staleWindow: UInt64
    private let lookupsInFlight = Atomic<Int>(0)

    public init(store: KeyStore, settings: Settings = Settings(), metrics: VerifierMetrics = VerifierMetrics()) {
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.cache = VerdictCache(settings: settings.cache, metrics: metrics.cache)
        self.staleWindow = UInt64(TimeAmount(settings.staleIfError).nanoseconds)
    }

    /// Verifies `key` for a caller on `eventLoop`. A hit or a malformed key is answered at once; a
    /// malformed key costs no hashing and no Redis command. Also returns the key's hash (nil when
    /// malformed), which the caller needs to count the use.
    /// `now` (uptime nanoseconds) lets a caller that already read the clock share that reading.
    public func verifyReturningHash(_ key: UnsafeRawBufferPointer, on eventLoop: any EventLoop,
                                    now: UInt64 = NIODeadline.now().uptimeNanoseconds) -> (Result, KeyHash?) {
        guard store.format.isWellFormed(key) else { return (.decided(.invalid(.malformed)), nil) }
        let hash = store.hasher.hash(key)
        return (verify(hash: hash, on: eventLoop, now: now), hash)
    }

    public func verify(_ key: UnsafeRawBufferPointer, on eventLoop: any EventLoop) -> Result {
        verifyReturningHash(key, on: eventLoop).0
    }

    public func verify(_ key: String, on eventLoop: any EventLoop) -> Result {
        var key = key
        return key.withUTF8 { verify(UnsafeRawBufferPointer($0), on: eventLoop) }
    }

    /// The async form, for the control plane.
    public func verify(_ key: String, on eventLoop: any EventLoop) async -> Decision {
        switch verify(key, on: eventLoop) as Result {
        case .decided(let decision): return decision
        case .pending(let future): return (try? await future.get()) ?? .unavailable
        }
    }

    /// The decision for `key` when it is a valid key already in the cache (and not expired); nil
    /// otherwise. Costs no Redis command and starts no lookup: the failure limiter serves such keys
    /// to an address that is over its limit.
    public func cachedValid(_ key: UnsafeRawBufferPointer) -> (Decision, KeyHash)? {
        guard store.format.isWellFormed(key) else { return nil }
        let hash = store.hasher.hash(key)
        guard let cached = cache.cached(hash, now: NIODeadline.now().uptimeNanoseconds),
              case .valid = decideAtRequestTime(cached) else { return nil }
        return (cached, hash)
    }

    /// Verifies a key already known to be well formed, by hash.
    public func verify(hash: KeyHash, on eventLoop: any EventLoop, now: UInt64 = NIODeadline.now().uptimeNanoseconds) -> Result {
        switch cache.probe(hash, now: now, eventLoop: eventLoop) {
        case .hit(let decision):
            return .decided(decideAtRequestTime(decision))
        case .wait(let future):
            return .pending(future.map { self.decideAtRequestTime($0) })
        case .lookup(let placeholder):
            return lookup(hash, placeholder, on: eventLoop)
        }
    }

    private func lookup(_ hash: KeyHash, _ placeholder: VerdictCache.Placeholder, on eventLoop: any EventLoop) -> Result {
        if lookupsInFlight.add(1, ordering: .relaxed).newValue > settings.maxConcurrentLookups {
            lookupsInFlight.subtract(1, ordering: .relaxed)
            metrics.shed.add(1, ordering: .relaxed)
            let waiters = cache.finish(hash, placeholder, outcome: .failed, now: NIODeadline.now().uptimeNanoseconds)
            for waiter in waiters { waiter.succeed(.unavailable) }
            return .decided(.unavailable)
        }
        metrics.lookups.add(1, ordering: .relaxed)
        let future = store.lookup(hash, on: eventLoop).map { lookup -> VerdictCache.LookupOutcome in
            self.outcome(for: hash, lookup)
        }.recover { _ in
            .failed
        }.map { outcome -> Decision in
            self.lookupsInFlight.subtract(1, ordering: .relaxed)
            let now = NIODeadline.now().uptimeNanoseconds
            let waiters = self.cache.finish(hash, placeholder, outcome: outcome, now: now)
            let decision = self.decision(for: outcome, hash: hash, now: now)
            for waiter in waiters { waiter.succeed(decision) }
            return self.decideAtRequestTime(decision)
        }
        return .pending(future)
    }

    /// Turns the store's lookup into a cache outcome; a malformed record counts as unavailable, never
    /// valid.
    private func outcome(for hash: KeyHash, _ lookup: KeyStore.Lookup) -> VerdictCache.LookupOutcome {
        switch lookup {
        case .refused(let reason):
            return .refused(reason)
        case .malformed:
            metrics.malformedRecords.add(1, ordering: .relaxed)
            return .failed
        case .active(let record):
            let scopes = record.scopes.split(separator: " ").map(String.init)
            // What goes into response headers must be what the store would have accepted: a record
            // edited by hand (a user with a line break, say) is refused, not echoed.
            guard KeyValidation.isKeyID(record.id), let keyID = InlineKeyID(record.id), (try? KeyValidation.existingUser(record.user)) != nil,
                  (try? KeyValidation.scopes(scopes)) != nil, let rateLimits = RateLimit.fromStorage(record.rateLimits),
                  let userRateLimits = RateLimit.fromStorage(record.userRateLimits) else {
                metrics.malformedRecords.add(1, ordering: .relaxed)
                return .failed
            }
            let credits = record.credits.isEmpty ? nil : CreditSetting(storage: record.credits)
            let userCredits = record.userCredits.isEmpty ? nil : CreditSetting(storage: record.userCredits)
            guard record.credits.isEmpty || credits != nil, record.userCredits.isEmpty || userCredits != nil else {
                metrics.malformedRecords.add(1, ordering: .relaxed)
                return .failed
            }
            let expires: Int64
            switch record.expiresAt {
            case .null: expires = .max
            case let value: expires = value.int ?? (value.string?.isEmpty == true ? .max : .min)
            }
            guard expires != .min else {
                metrics.malformedRecords.add(1, ordering: .relaxed)
                return .failed
            }
            let principal = cache.principal(user: record.user, scopes: scopes, for: hash)
            let limits = rateLimits.isEmpty && credits == nil && userRateLimits.isEmpty && userCredits == nil ? nil
                : KeyLimits(subject: record.limitSubject.isEmpty ? record.id : record.limitSubject, rateLimits: rateLimits, credits: credits,
                            user: record.user, userRateLimits: userRateLimits, userCredits: userCredits)
            return .active(Verdict(keyID: keyID, principal: principal, expiresAtMilliseconds: expires, limits: limits))
        }
    }

    private func decision(for outcome: VerdictCache.LookupOutcome, hash: KeyHash, now: UInt64) -> Decision {
        switch outcome {
        case .active(let verdict): return .valid(verdict)
        case .refused(let reason): return .invalid(reason)
        case .failed:
            if let stale = cache.staleEntry(hash, now: now, window: staleWindow) {
                metrics.staleServed.add(1, ordering: .relaxed)
                return .valid(stale)
            }
            return .unavailable
        }
    }

    /// Expiry is enforced now, whatever the cache said when it stored the entry (rule 17).
    private func decideAtRequestTime(_ decision: Decision) -> Decision {
        guard case .valid(let verdict) = decision, verdict.expiresAtMilliseconds != Int64.max else { return decision }
        let nowMilliseconds = Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
        return verdict.expiresAtMilliseconds <= nowMilliseconds ? .invalid(.expired) : decision
    }
}

/// Counters of the verification path, read by the metrics endpoint.
public final class VerifierMetrics: Sendable {
    public let cache = CacheMetrics()
    /// Redis lookups sent (cache misses that led a single flight).
    public let lookups = Atomic<Int>(0)
    /// Requests refused with 503 because too many lookups were in flight.
    public let shed = Atomic<Int>(0)
    /// Valid answers served from a stale entry while Redis was unreachable.
    public let staleServed = Atomic<Int>(0)
    public let malformedRecords = Atomic<Int>(0)
    public init() {}
}
