public import NIOCore

/// Who a valid key belongs to and what it may do: shared by every cached key with the same user and
/// scopes, so a million cached keys of a few users do not hold a million copies of these strings.
public final class Principal: Sendable {
    public let user: String
    public let scopes: [String]
    /// `X-Keygate-Scopes` value: the scopes separated by spaces (the OAuth convention).
    public let scopesHeader: String

    /// The identity headers of the data plane's 200 as bytes, encoded once per principal rather than
    /// once per request: `\r\nX-Keygate-User: <user>\r\nX-Keygate-Scopes: <scopes>\r\n`, written right
    /// after `X-Keygate-Key-Id: <id>`. Safe as header text: the verifier caches only users and scopes
    /// that pass `KeyValidation` (no whitespace in users, no control characters anywhere).
    public let identityHeaders: [UInt8]

    init(user: String, scopes: [String]) {
        self.user = user
        self.scopes = scopes
        self.scopesHeader = scopes.joined(separator: " ")
        self.identityHeaders = Array("\r\nX-Keygate-User: \(user)\r\nX-Keygate-Scopes: \(scopesHeader)\r\n".utf8)
    }

    /// True when every scope in `required` is granted, compared byte for byte (`ExactText`).
    public func grants<S: Sequence>(_ required: S) -> Bool where S.Element: StringProtocol {
        required.allSatisfy { needed in scopes.containsSameBytes(as: needed) }
    }
}

/// A key id stored inline (no heap allocation per cached key). Ids are `key_` plus 17 base62
/// characters; anything up to 23 bytes fits.
public struct InlineKeyID: Hashable, Sendable, CustomStringConvertible {
    private var storage: (UInt64, UInt64, UInt64) = (0, 0, 0) // 23 bytes of id, then the length

    public init?(_ id: String) {
        let bytes = Array(id.utf8)
        guard !bytes.isEmpty, bytes.count <= 23 else { return nil }
        withUnsafeMutableBytes(of: &storage) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
            raw[23] = UInt8(bytes.count)
        }
    }

    public static func == (lhs: InlineKeyID, rhs: InlineKeyID) -> Bool {
        lhs.storage == rhs.storage
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(storage.0)
        hasher.combine(storage.1)
        hasher.combine(storage.2)
    }

    /// Appends the id's bytes (no String in between).
    public func write(into buffer: inout ByteBuffer) {
        withUnsafeBytes(of: storage) { raw in
            _ = buffer.writeBytes(UnsafeRawBufferPointer(rebasing: raw[0..<Int(raw[23])]))
        }
    }

    public var description: String {
        withUnsafeBytes(of: storage) { raw in
            String(decoding: UnsafeRawBufferPointer(rebasing: raw[0..<Int(raw[23])]), as: UTF8.self)
        }
    }
}

/// What the node knows about a valid (active) key. Expiry is checked when a request is decided,
/// not only when the entry was cached.
public struct Verdict: Sendable {
    public var keyID: InlineKeyID
    public var principal: Principal
    /// Unix milliseconds, or `Int64.max` for no expiry.
    public var expiresAtMilliseconds: Int64
    /// nil for a key without limits (most keys: the hit path then checks nothing more).
    public var limits: KeyLimits?

    public init(keyID: InlineKeyID, principal: Principal, expiresAtMilliseconds: Int64, limits: KeyLimits? = nil) {
        self.keyID = keyID
        self.principal = principal
        self.expiresAtMilliseconds = expiresAtMilliseconds
        self.limits = limits
    }
}

/// A key's rate limits and credits as the data plane applies them, built once per lookup and
/// shared by the cache entry: the key's own, then its user's (shared by all of the user's keys).
public final class KeyLimits: Sendable {
    /// Whose windows and balance the key's own limits use: the id of the first key of a rotation
    /// chain, so a key and its successor draw on the same ones during the grace period instead of
    /// doubling them.
    public let subject: String
    public let rateLimits: [RateLimit]
    public let credits: CreditSetting?
    /// Whose windows and balance the user's limits use (`KeyLimits.userSubject(_:)`).
    public let userSubject: String
    /// The user's rate limits, less those named like one of the key's own (the key's wins, as in Unkey).
    public let userRateLimits: [RateLimit]
    public let userCredits: CreditSetting?
    /// The `RateLimit-Policy` field value (draft-ietf-httpapi-ratelimit-headers), encoded once:
    /// `"default";q=100;w=60, "hourly";q=5000;w=3600`.
    public let policyHeader: String
    /// `RateLimit-Policy: <policyHeader>\r\n` as bytes, written as is into every answer.
    public let policyHeaderField: [UInt8]

    public init(subject: String, rateLimits: [RateLimit], credits: CreditSetting? = nil, user: String = "",
                userRateLimits: [RateLimit] = [], userCredits: CreditSetting? = nil) {
        self.subject = subject
        self.rateLimits = rateLimits
        self.credits = credits
        self.userSubject = Self.userSubject(user)
        let ownNames = Set(rateLimits.map(\.name))
        self.userRateLimits = userRateLimits.filter { !ownNames.contains($0.name) }
        self.userCredits = userCredits
        self.policyHeader = (rateLimits + self.userRateLimits).map { limit in
            "\"\(limit.name)\";q=\(limit.limit);w=\(max(1, (limit.durationMilliseconds + 999) / 1_000))"
        }.joined(separator: ", ")
        self.policyHeaderField = Array("RateLimit-Policy: \(policyHeader)\r\n".utf8)
    }

    /// The subject of a user's windows and balance: `user:<name>` (a key's is its chain's key id,
    /// `key_...`, so the two never meet).
    public static func userSubject(_ user: String) -> String { "user:" + user }
}

/// Why a key was refused. Clients of `/auth` see one generic 401 for all of them (no oracle);
/// `/v1/verify` shows them only when the operator enables detailed codes.
public enum InvalidReason: UInt8, Sendable {
    case missing, malformed, notFound, revoked, disabled, expired

    /// The `code` of `/v1/verify`.
    public var code: String {
        switch self {
        case .missing, .malformed: return "MALFORMED"
        case .notFound: return "NOT_FOUND"
        case .revoked: return "REVOKED"
        case .disabled: return "DISABLED"
        case .expired: return "EXPIRED"
        }
    }
}

/// The answer for one request.
public enum Decision: Sendable {
    case valid(Verdict)
    case invalid(InvalidReason)
    /// The verdict could not be established (Redis unreachable or overloaded, nothing usable cached).
    case unavailable
}
