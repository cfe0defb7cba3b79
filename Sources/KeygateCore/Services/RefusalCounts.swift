/// Requests of a valid key that were refused, by reason, counted next to the key's uses (which are
/// its admitted requests) for monitoring and the console. Unknown, revoked and expired keys are not
/// counted per key: they are the metrics' business, and a flood of them must not write to Redis.
public struct RefusalCounts: Sendable, Equatable, Codable {
    /// Over one of its rate limits (429 `rate_limited`).
    public var rateLimited: Int64 = 0
    /// No credits left (429 `usage_exceeded`).
    public var usageExceeded: Int64 = 0
    /// Without a scope the route requires (403).
    public var forbidden: Int64 = 0

    public enum Reason: Sendable { case rateLimited, usageExceeded, forbidden }

    public init(rateLimited: Int64 = 0, usageExceeded: Int64 = 0, forbidden: Int64 = 0) {
        self.rateLimited = rateLimited; self.usageExceeded = usageExceeded; self.forbidden = forbidden
    }

    public var isZero: Bool { rateLimited == 0 && usageExceeded == 0 && forbidden == 0 }

    mutating func add(_ reason: Reason) {
        switch reason {
        case .rateLimited: rateLimited += 1
        case .usageExceeded: usageExceeded += 1
        case .forbidden: forbidden += 1
        }
    }

    static func + (lhs: Self, rhs: Self) -> Self {
        RefusalCounts(rateLimited: lhs.rateLimited + rhs.rateLimited, usageExceeded: lhs.usageExceeded + rhs.usageExceeded,
                      forbidden: lhs.forbidden + rhs.forbidden)
    }

    enum CodingKeys: String, CodingKey {
        case rateLimited = "rate_limited", usageExceeded = "usage_exceeded", forbidden
    }
}
