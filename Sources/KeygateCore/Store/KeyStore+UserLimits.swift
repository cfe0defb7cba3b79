public import Foundation
import KeygateRedis

/// A user's own limits: rate limits and credits shared by all of the user's keys (Unkey's
/// identities), on top of each key's own.
///
/// The user's setting lives in `ns:user-limits:<user>` and is copied into every key record of the
/// user (`user_rate_limits`, `user_credits`), so a node reads it with the key's one `HMGET` and a
/// change reaches every node through each key's invalidation, within the revocation bound. The
/// copy runs as an ordinary update of each key (its own audit event, `fields: user_limits`). A
/// change made while another is being copied, or a key created meanwhile, is caught by reading
/// the setting's version again at the end and copying again until it holds still.
extension KeyStore {
    public struct UserLimits: Sendable, Equatable, Encodable {
        public var user: String
        public var rateLimits: [RateLimit]
        /// The balance now, as for a key (credits nodes hold count as spent); nil: unlimited.
        public var credits: Credits?
        /// Keys whose records took this setting (a change only; nil when read).
        public var keysUpdated: Int?

        enum CodingKeys: String, CodingKey { case user, rateLimits = "rate_limits", credits, keysUpdated = "keys_updated" }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(user, forKey: .user)
            try container.encode(rateLimits, forKey: .rateLimits)
            try container.encode(credits, forKey: .credits)
            try container.encodeIfPresent(keysUpdated, forKey: .keysUpdated)
        }
    }

    /// The user's setting as stored: texts as a record holds them, and the version.
    struct StoredUserLimits: Equatable {
        var rateLimits = ""
        var credits = ""
        var version: Int64 = 0
    }

    func storedUserLimits(_ user: String) async throws(KeygateError) -> StoredUserLimits {
        let reply = try await command(RedisCommand("HMGET", [.string(layout.userLimits(user)), "rate_limits", "credits", "version"]))
        let fields = reply.array ?? []
        guard fields.count == 3 else { return StoredUserLimits() }
        return StoredUserLimits(rateLimits: fields[0].string ?? "", credits: fields[1].string ?? "", version: fields[2].int ?? 0)
    }

    /// The user's own limits (empty for a user without any, or unknown).
    public func userLimits(user: String) async throws(KeygateError) -> UserLimits {
        try KeyValidation.existingUser(user)
        let stored = try await storedUserLimits(user)
        var credits: Credits?
        if let setting = CreditSetting(storage: Substring(stored.credits)) {
            let balance = try await command(RedisCommand("HMGET", [.string(layout.credits(subject: KeyLimits.userSubject(user))),
                                                                    "remaining", "set", "period"]))
            credits = liveCredits(setting, balance: balance, now: Date())
        }
        return UserLimits(user: user, rateLimits: RateLimit.fromStorage(Substring(stored.rateLimits)) ?? [], credits: credits)
    }

    /// Sets the user's rate limits and/or credits (nil: leave as it is; `credits: .some(nil)`
    /// removes them; new credits set the balance anew) and copies them into every key of the user.
    /// - Throws: `invalidArgument` for limits a key could not hold either; `conflict` when the
    ///   setting kept changing while it was copied.
    @discardableResult
    public func setUserLimits(user: String, rateLimits: [RateLimit]?, credits: Credits??, actor: String,
                              now: Date = Date()) async throws(KeygateError) -> UserLimits {
        try KeyValidation.existingUser(user)
        if let rateLimits { try RateLimit.validate(rateLimits) }
        var creditsText = "-"
        if let credits {
            if let credits {
                _ = try Credits(remaining: credits.remaining, refill: credits.refill)
                // Stamped later than the setting it replaces, so the balance starts anew from it.
                let previous = CreditSetting(storage: Substring(try await storedUserLimits(user).credits))?.setAt ?? 0
                let time = try await command(RedisCommand("TIME", [])).array ?? []
                let serverNow = (time.first?.int ?? now.milliseconds / 1_000) * 1_000 + (time.count > 1 ? (time[1].int ?? 0) / 1_000 : 0)
                creditsText = CreditSetting(credits, setAt: max(serverNow, previous + 1)).storageText
            } else {
                creditsText = ""
            }
        }
        _ = try await runScripts([ScriptCall(script: KeyStoreScripts.setUserLimits, keys: [layout.userLimits(user)],
                                             arguments: [rateLimits.map(RateLimit.storageText) ?? "-", creditsText])],
                                 throwingErrors: true)
        var limits = try await userLimits(user: user)
        limits.keysUpdated = try await copyUserLimits(user: user, to: nil, actor: actor, now: now)
        return limits
    }

    /// Copies the user's setting into the records of `ids` (nil: every key of the user) whose copy
    /// differs, then reads the version again and repeats while it moved. Returns the keys updated.
    /// A new key or a rotation's successor calls it for itself once indexed: a change whose copy
    /// listed the user's keys before that missed it.
    @discardableResult
    func copyUserLimits(user: String, to ids: [String]?, actor: String, now: Date) async throws(KeygateError) -> Int {
        var updated = 0
        for _ in 0..<5 {
            let stored = try await storedUserLimits(user)
            var targets = ids ?? []
            if ids == nil {
                targets = (try await command(RedisCommand("SMEMBERS", [.string(layout.userKeys(user))])).array ?? []).compactMap(\.string)
            }
            for chunk in stride(from: 0, to: targets.count, by: 200).map({ Array(targets[$0..<min($0 + 200, targets.count)]) }) {
                updated += try await copyUserLimits(stored, user: user, to: chunk, actor: actor, now: now)
            }
            if try await storedUserLimits(user).version == stored.version { return updated }
        }
        throw KeygateError(.conflict, "the user's limits kept changing while they were applied to the keys; try again")
    }

    private func copyUserLimits(_ stored: StoredUserLimits, user: String, to ids: [String], actor: String,
                                now: Date) async throws(KeygateError) -> Int {
        let hashes = try await pipeline(ids.map { RedisCommand("GET", [.string(layout.idIndex($0))]) })
        let found = zip(ids, hashes).compactMap { id, reply in reply.string.flatMap(KeyHash.init(hex:)).map { (id, $0) } }
        guard !found.isEmpty else { return 0 }
        // Only the records whose copy differs (a revoked key keeps what it had: revocation is final).
        let current = try await pipeline(found.map { _, hash in
            RedisCommand("HMGET", [.string(layout.record(hash)), "user_rate_limits", "user_credits", "status"])
        })
        let stale = zip(found, current).filter { _, reply in
            let fields = reply.array ?? []
            return fields.count == 3 && fields[2].string != KeyStatus.revoked.rawValue
                && ((fields[0].string ?? "") != stored.rateLimits || (fields[1].string ?? "") != stored.credits)
        }.map(\.0)
        guard !stale.isEmpty else { return 0 }
        let operations = stale.map { id, hash in
            PendingOperation(op: PendingOperation.newID(), kind: .update, hash: hash.hex, keyID: id, user: user,
                             event: ["type", "updated", "key_id", id, "user", user, "actor", actor,
                                     "time", String(now.milliseconds), "fields", "user_limits", "hash", hash.hex])
        }
        let results = try await perform(operations, calls: { issued in
            zip(operations, stale).map { operation, key in
                ScriptCall(script: KeyStoreScripts.applyUpdate, keys: [self.layout.record(key.1), self.layout.unlogged(key.1)],
                           arguments: [operation.op, String(issued), String(Self.applyWindowMilliseconds), self.layout.invalidationChannel,
                                       key.1.hex, key.0, "user_rate_limits", stored.rateLimits, "user_credits", stored.credits])
            }
        })
        var updated = 0
        for result in results {
            switch result {
            case .success: updated += 1
            case .failure(let error) where error.code == .notFound || error.code == .conflict: continue // deleted or revoked meanwhile
            case .failure(let error): throw error
            }
        }
        return updated
    }
}
