public import Foundation

/// The stored state of a key, as Redis keeps it and as the CLI and admin API show it. No secret:
/// the plaintext exists only in the response to create and rotate.
public struct KeyRecord: Sendable, Equatable, Codable {
    /// Public id, safe to log and show (`key_...`).
    public var id: String
    public var user: String
    public var name: String
    public var scopes: [String]
    /// Stored status; `effectiveStatus(at:)` also accounts for expiry.
    public var status: KeyStatus
    public var createdAt: Date
    public var expiresAt: Date?
    public var revokedAt: Date?
    public var lastUsedAt: Date?
    /// Bumped by every mutation.
    public var version: Int64
    /// Free-form string pairs for the operator (plan, team...). Never used for decisions.
    public var metadata: [String: String]
    /// Enforced on every node; a request must pass all of them. Empty: unlimited.
    public var rateLimits: [RateLimit]
    /// Usage credits (nil: unlimited); `remaining` is the balance when the record was read (credits
    /// nodes hold in leases count as spent until they give them back).
    public var credits: Credits?
    /// The setting behind `credits`, as the record stores it. Not shown.
    public internal(set) var creditSetting: CreditSetting?
    /// Whose rate-limit windows the key draws on: the first key of its rotation chain (copied to
    /// each successor, and to keys a self-service key creates). Not shown.
    public internal(set) var limitID: String
    /// The user's limits (`KeyStore.setUserLimits`), copied into each of the user's keys so a lookup
    /// reads them with the record; they draw on the user's windows and balance. Not shown (the
    /// user's limits are read with `KeyStore.userLimits`).
    public internal(set) var userRateLimits: [RateLimit] = []
    public internal(set) var userCreditSetting: CreditSetting?
    /// Rotation links: the key this one replaced, and the key that replaced it.
    public var rotatedFrom: String?
    public var rotatedTo: String?
    /// SHA-256 of the key, which locates the record; kept out of every output.
    public var hash: KeyHash

    /// `expired` once `expiresAt` has passed for a key that is otherwise active.
    public func effectiveStatus(at now: Date) -> KeyStatus {
        if status == .active, let expiresAt, expiresAt <= now { return .expired }
        return status
    }

    enum CodingKeys: String, CodingKey {
        case id, user, name, scopes, status, version, metadata
        case rateLimits = "rate_limits", credits
        case createdAt = "created_at", expiresAt = "expires_at", revokedAt = "revoked_at"
        case lastUsedAt = "last_used_at", rotatedFrom = "rotated_from", rotatedTo = "rotated_to"
    }

    public init(from decoder: any Decoder) throws {
        throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "key records are read from Redis, not decoded"))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(user, forKey: .user)
        try container.encode(name, forKey: .name)
        try container.encode(scopes, forKey: .scopes)
        try container.encode(effectiveStatus(at: Date()), forKey: .status)
        try container.encode(createdAt, forKey: .createdAt)
        try container.encode(expiresAt, forKey: .expiresAt)
        try container.encode(revokedAt, forKey: .revokedAt)
        try container.encode(lastUsedAt, forKey: .lastUsedAt)
        try container.encode(version, forKey: .version)
        try container.encode(metadata, forKey: .metadata)
        try container.encode(rateLimits, forKey: .rateLimits)
        try container.encode(credits, forKey: .credits)
        try container.encode(rotatedFrom, forKey: .rotatedFrom)
        try container.encode(rotatedTo, forKey: .rotatedTo)
    }

    init(hash: KeyHash, id: String, user: String, name: String, scopes: [String], status: KeyStatus,
         createdAt: Date, expiresAt: Date?, revokedAt: Date?, lastUsedAt: Date?, version: Int64,
         metadata: [String: String], rateLimits: [RateLimit] = [], creditSetting: CreditSetting? = nil, limitID: String? = nil, rotatedFrom: String?, rotatedTo: String?) {
        self.hash = hash; self.id = id; self.user = user; self.name = name; self.scopes = scopes
        self.status = status; self.createdAt = createdAt; self.expiresAt = expiresAt
        self.revokedAt = revokedAt; self.lastUsedAt = lastUsedAt; self.version = version
        self.metadata = metadata; self.rotatedFrom = rotatedFrom; self.rotatedTo = rotatedTo
        self.rateLimits = rateLimits; self.limitID = limitID ?? id
        self.creditSetting = creditSetting
        self.credits = creditSetting.flatMap { try? Credits(remaining: $0.remaining, refill: $0.refill) }
    }
}

public enum KeyStatus: String, Sendable, Codable, CaseIterable {
    case active, disabled, revoked
    /// Derived, never stored: active but past `expires_at`.
    case expired
}

/// A newly issued key: the record plus the plaintext, which is shown once and never stored.
public struct IssuedKey: Sendable, Encodable {
    public var record: KeyRecord
    public var key: String

    public func encode(to encoder: any Encoder) throws {
        try record.encode(to: encoder)
        var container = encoder.container(keyedBy: ExtraKeys.self)
        try container.encode(key, forKey: .key)
    }
    private enum ExtraKeys: String, CodingKey { case key }
}

/// One lifecycle event from the audit Stream.
public struct KeyEvent: Sendable, Equatable, Codable {
    /// Stream id, for paging (`events --after ID`).
    public var id: String
    /// created, revoked, disabled, enabled, updated, rotated.
    public var type: String
    public var keyID: String
    public var user: String
    public var actor: String
    public var time: Date
    public var version: Int64
    /// For `rotated`: the successor's id.
    public var successorID: String?
    /// For `updated`: the fields changed, comma separated (`scopes,rate_limits,credits`).
    public var fields: String? = nil

    enum CodingKeys: String, CodingKey {
        case id, type, user, actor, time, version, fields
        case keyID = "key_id", successorID = "successor_id"
    }
}

/// A key's usage: lifetime total, per-day (90 days kept) and per-hour (48 h kept) counts of uses
/// and of refusals.
public struct KeyUsage: Sendable, Equatable, Codable {
    public struct Bucket: Sendable, Equatable, Codable {
        /// `2026-12-01` for days, `2026-12-01T13` for hours (UTC).
        public var period: String
        /// Uses: requests admitted.
        public var count: Int64
        /// Requests of the key refused by its rate limits, credits or a route's scopes (not uses).
        public var refused: RefusalCounts

        public init(period: String, count: Int64, refused: RefusalCounts = RefusalCounts()) {
            self.period = period; self.count = count; self.refused = refused
        }

        enum CodingKeys: String, CodingKey { case period, count, rateLimited = "rate_limited", usageExceeded = "usage_exceeded", forbidden }

        /// Flat: `{"period", "count", "rate_limited", "usage_exceeded", "forbidden"}`.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(period, forKey: .period)
            try container.encode(count, forKey: .count)
            try container.encode(refused.rateLimited, forKey: .rateLimited)
            try container.encode(refused.usageExceeded, forKey: .usageExceeded)
            try container.encode(refused.forbidden, forKey: .forbidden)
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            period = try container.decode(String.self, forKey: .period)
            count = try container.decode(Int64.self, forKey: .count)
            refused = RefusalCounts(rateLimited: try container.decodeIfPresent(Int64.self, forKey: .rateLimited) ?? 0,
                                    usageExceeded: try container.decodeIfPresent(Int64.self, forKey: .usageExceeded) ?? 0,
                                    forbidden: try container.decodeIfPresent(Int64.self, forKey: .forbidden) ?? 0)
        }
    }
    public var id: String
    public var total: Int64
    public var daily: [Bucket]
    public var hourly: [Bucket]
    public var lastUsedAt: Date?

    enum CodingKeys: String, CodingKey {
        case id, total, daily, hourly
        case lastUsedAt = "last_used_at"
    }

    /// Every field is always present (`last_used_at` is null for an unused key).
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(total, forKey: .total)
        try container.encode(daily, forKey: .daily)
        try container.encode(hourly, forKey: .hourly)
        try container.encode(lastUsedAt, forKey: .lastUsedAt)
    }
}
