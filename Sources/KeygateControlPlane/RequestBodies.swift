import Foundation
import Hummingbird
import KeygateCore

/// Strict JSON request bodies: a size cap, `application/json` only, unknown fields rejected, and
/// every decoding failure reported as a problem naming the field.
enum JSONBody {
    static func decode<Body: Decodable>(_ type: Body.Type, from request: Request, limit: Int,
                                        allowEmpty: Bool = false) async throws -> Body {
        var request = request
        let buffer = try await request.collectBody(upTo: limit)
        if buffer.readableBytes == 0 {
            guard allowEmpty else { throw Problem(.malformedBody, "a JSON object is required") }
            return try decode(type, data: Data("{}".utf8))
        }
        if let contentType = request.headers[.contentType],
           contentType.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased() != "application/json" {
            throw Problem(.unsupportedMediaType, "send Content-Type: application/json")
        }
        return try decode(type, data: Data(buffer.readableBytesView))
    }

    static func decode<Body: Decodable>(_ type: Body.Type, data: Data) throws -> Body {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch let problem as Problem {
            throw problem
        } catch let error as DecodingError {
            throw problem(for: error)
        }
    }

    private static func problem(for error: DecodingError) -> Problem {
        func name(_ path: [any CodingKey]) -> String { path.map(\.stringValue).joined(separator: ".") }
        switch error {
        case .keyNotFound(let key, let context):
            let field = name(context.codingPath + [key])
            return Problem(.invalidField, "\(field) is required", field: field)
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            let field = name(context.codingPath)
            guard !field.isEmpty else { return Problem(.malformedBody, "the body must be a JSON object") }
            return Problem(.invalidField, "\(field) has the wrong type", field: field)
        case .dataCorrupted(let context):
            let field = name(context.codingPath)
            guard !field.isEmpty else { return Problem(.malformedBody, "the body is not valid JSON") }
            return Problem(.invalidField, "\(field): \(context.debugDescription)", field: field)
        @unknown default:
            return Problem(.malformedBody, "the body could not be decoded")
        }
    }
}

/// Any JSON object key, to list the keys a body actually sent.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension Decoder {
    /// Throws a problem for the first key of the object not in `allowed`.
    func rejectUnknownFields(allowed: Set<String>) throws {
        let container = try container(keyedBy: AnyKey.self)
        if let unknown = container.allKeys.map(\.stringValue).sorted().first(where: { !allowed.contains($0) }) {
            throw Problem(.invalidField, "unknown field '\(unknown.prefix(64))'", field: String(unknown.prefix(64)))
        }
    }
}

extension KeyedDecodingContainer {
    /// Like `decodeIfPresent`, but an explicit null is an error: only `expires_at` may be null.
    func decodeField<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard contains(key) else { return nil }
        if try decodeNil(forKey: key) {
            throw Problem(.invalidField, "\(key.stringValue) must not be null", field: key.stringValue)
        }
        return try decode(type, forKey: key)
    }

    /// `[{"name": "default", "limit": 100, "duration_ms": 60000, "exact": false}]` (name and exact
    /// optional), each checked as `RateLimit` checks it, and the list as a key's list must be.
    func decodeRateLimits(forKey key: Key) throws -> [RateLimit]? {
        guard let items = try decodeField([RateLimitItem].self, forKey: key) else { return nil }
        do throws(KeygateError) {
            let limits = try items.map { item throws(KeygateError) in
                try RateLimit(name: item.name ?? "default", limit: item.limit, durationMilliseconds: item.durationMilliseconds,
                              exact: item.exact ?? false)
            }
            try RateLimit.validate(limits)
            return limits
        } catch {
            throw Problem(.invalidField, "rate_limits: \(error.message)", field: key.stringValue)
        }
    }

    /// `{"remaining": 1000, "refill": {"amount": 1000, "interval": "monthly", "day": 1}}` (refill
    /// optional); `.some(nil)` for an explicit `null` (no credits: unlimited), nil when absent.
    func decodeCredits(forKey key: Key) throws -> Credits?? {
        guard contains(key) else { return nil }
        if try decodeNil(forKey: key) { return .some(nil) }
        let item = try decode(CreditsItem.self, forKey: key)
        do throws(KeygateError) {
            let refill = try item.refill.map { refill throws(KeygateError) in
                try Credits.Refill(amount: refill.amount, interval: refill.interval, day: refill.day)
            }
            return .some(try Credits(remaining: item.remaining, refill: refill))
        } catch {
            throw Problem(.invalidField, error.message, field: error.field ?? key.stringValue)
        }
    }

    /// An RFC 3339 timestamp (`2027-01-31T00:00:00Z`, fractional seconds allowed).
    func decodeTimestamp(forKey key: Key) throws -> Date {
        let text = try decode(String.self, forKey: key)
        guard let date = Timestamp.parse(text) else {
            throw Problem(.invalidField, "\(key.stringValue) must be an RFC 3339 timestamp such as 2027-01-31T00:00:00Z", field: key.stringValue)
        }
        return date
    }
}

/// RFC 3339 `date-time` (section 5.6), strictly: `2027-01-31T00:00:00Z`, with optional fractional
/// seconds and a `Z` or `±hh:mm` offset. Every field has its fixed width and a valid range (no
/// February 30th, no `+24:00`); `T` and `Z` may be lowercase, as the RFC allows. Fractional digits are
/// kept to the millisecond (the store's resolution), rounding down. Leap seconds (`:60`) are refused:
/// the clock Keygate compares against has none.
enum Timestamp {
    static func parse(_ text: String) -> Date? {
        let bytes = Array(text.utf8)
        var index = 0
        func digits(_ count: Int) -> Int? {
            guard index + count <= bytes.count else { return nil }
            var value = 0
            for byte in bytes[index..<index + count] {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            index += count
            return value
        }
        func expect(_ characters: String) -> Bool {
            guard index < bytes.count, characters.utf8.contains(bytes[index]) else { return false }
            index += 1
            return true
        }
        guard let year = digits(4), expect("-"), let month = digits(2), expect("-"), let day = digits(2),
              expect("Tt"), let hour = digits(2), expect(":"), let minute = digits(2), expect(":"), let second = digits(2),
              (1...12).contains(month), (1...daysIn(month: month, year: year)).contains(day),
              hour < 24, minute < 60, second < 60 else { return nil }
        var milliseconds = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            let start = index
            while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
                if index - start < 3 { milliseconds = milliseconds * 10 + Int(bytes[index] - UInt8(ascii: "0")) }
                index += 1
            }
            let count = index - start
            guard count > 0, count <= 9 else { return nil }
            if count < 3 { for _ in count..<3 { milliseconds *= 10 } }
        }
        var offsetSeconds = 0
        if expect("Zz") {
            offsetSeconds = 0
        } else if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
            let sign = bytes[index] == UInt8(ascii: "-") ? -1 : 1
            index += 1
            guard let offsetHours = digits(2), expect(":"), let offsetMinutes = digits(2), offsetHours < 24, offsetMinutes < 60 else { return nil }
            offsetSeconds = sign * (offsetHours * 3600 + offsetMinutes * 60)
        } else {
            return nil
        }
        guard index == bytes.count else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds = Int64(days) * 86_400 + Int64(hour * 3600 + minute * 60 + second) - Int64(offsetSeconds)
        return Date(timeIntervalSince1970: Double(seconds) + Double(milliseconds) / 1000)
    }

    private static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's algorithm).
    private static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}

/// `POST /v1/keys`.
struct CreateKeyBody: Decodable {
    var user: String?
    var name: String?
    var scopes: [String]?
    var expiresAt: Date?
    var metadata: [String: String]?
    var rateLimits: [RateLimit]?
    /// `null` or absent: unlimited.
    var credits: Credits??

    enum CodingKeys: String, CodingKey, CaseIterable {
        case user, name, scopes, metadata, credits
        case expiresAt = "expires_at", rateLimits = "rate_limits"
    }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        user = try container.decodeField(String.self, forKey: .user)
        name = try container.decodeField(String.self, forKey: .name)
        scopes = try container.decodeField([String].self, forKey: .scopes)
        metadata = try container.decodeField([String: String].self, forKey: .metadata)
        rateLimits = try container.decodeRateLimits(forKey: .rateLimits)
        credits = try container.decodeCredits(forKey: .credits)
        if container.contains(.expiresAt), try !container.decodeNil(forKey: .expiresAt) {
            expiresAt = try container.decodeTimestamp(forKey: .expiresAt)
        }
    }
}

/// `PATCH /v1/keys/{id}`. `expires_at: null` removes the expiry, `credits: null` the credits; an
/// absent field stays as it is. `credits` sets the balance anew.
struct UpdateKeyBody: Decodable {
    var changes = KeyStore.KeyChanges()
    var enabled: Bool?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, scopes, metadata, enabled, credits
        case expiresAt = "expires_at", rateLimits = "rate_limits"
    }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        changes.name = try container.decodeField(String.self, forKey: .name)
        changes.scopes = try container.decodeField([String].self, forKey: .scopes)
        changes.metadata = try container.decodeField([String: String].self, forKey: .metadata)
        changes.rateLimits = try container.decodeRateLimits(forKey: .rateLimits)
        changes.credits = try container.decodeCredits(forKey: .credits)
        if container.contains(.expiresAt) {
            changes.expiresAt = .some(try container.decodeNil(forKey: .expiresAt) ? nil : container.decodeTimestamp(forKey: .expiresAt))
        }
        enabled = try container.decodeField(Bool.self, forKey: .enabled)
    }
}

/// `POST /v1/keys/{id}/rotate`; the body is optional.
struct RotateKeyBody: Decodable {
    /// The old key keeps working this long (default 24 h, as the CLI).
    var graceSeconds: Int

    static let maximumGraceSeconds = 90 * 86_400

    enum CodingKeys: String, CodingKey, CaseIterable { case graceSeconds = "grace_seconds" }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        graceSeconds = try container.decodeField(Int.self, forKey: .graceSeconds) ?? 86_400
        guard (0...Self.maximumGraceSeconds).contains(graceSeconds) else {
            throw Problem(.invalidField, "grace_seconds must be 0-\(Self.maximumGraceSeconds)", field: "grace_seconds")
        }
    }
}

/// One entry of `rate_limits` in a request body.
struct RateLimitItem: Decodable {
    var name: String?
    var limit: Int
    var durationMilliseconds: Int64
    var exact: Bool?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, limit, exact
        case durationMilliseconds = "duration_ms"
    }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decodeField(String.self, forKey: .name)
        guard let limit = try container.decodeField(Int.self, forKey: .limit) else {
            throw Problem(.invalidField, "rate_limits: every limit needs a limit", field: "rate_limits")
        }
        guard let duration = try container.decodeField(Int64.self, forKey: .durationMilliseconds) else {
            throw Problem(.invalidField, "rate_limits: every limit needs a duration_ms", field: "rate_limits")
        }
        self.limit = limit
        self.durationMilliseconds = duration
        exact = try container.decodeField(Bool.self, forKey: .exact)
    }
}

/// `POST /v1/users/{user}/console-sessions` (the body may be empty).
struct ConsoleSessionBody: Decodable {
    var ttlSeconds: Int?
    var scopes: [String]?

    enum CodingKeys: String, CodingKey, CaseIterable { case ttlSeconds = "ttl_seconds", scopes }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        ttlSeconds = try container.decodeField(Int.self, forKey: .ttlSeconds)
        scopes = try container.decodeField([String].self, forKey: .scopes)
    }
}

/// `POST /console/session`: a console link's secret, exchanged once for a short-lived key.
struct RedeemConsoleSessionBody: Decodable {
    var session: String

    enum CodingKeys: String, CodingKey, CaseIterable { case session }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        guard let session = try decoder.container(keyedBy: CodingKeys.self).decodeField(String.self, forKey: .session) else {
            throw Problem(.invalidField, "session is required", field: "session")
        }
        self.session = session
    }
}

/// `PUT /v1/users/{user}/limits`: the user's whole setting (an absent field: none).
struct UserLimitsBody: Decodable {
    var rateLimits: [RateLimit]?
    var credits: Credits??

    enum CodingKeys: String, CodingKey, CaseIterable {
        case credits
        case rateLimits = "rate_limits"
    }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        rateLimits = try container.decodeRateLimits(forKey: .rateLimits)
        credits = try container.decodeCredits(forKey: .credits)
    }
}

/// `credits` in a request body.
struct CreditsItem: Decodable {
    var remaining: Int
    var refill: Refill?

    struct Refill: Decodable {
        var amount: Int
        var interval: Credits.Refill.Interval
        var day: Int?

        enum CodingKeys: String, CodingKey, CaseIterable { case amount, interval, day }

        init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
            let container = try decoder.container(keyedBy: CodingKeys.self)
            guard let amount = try container.decodeField(Int.self, forKey: .amount) else {
                throw Problem(.invalidField, "credits.refill needs an amount", field: "credits.refill.amount")
            }
            guard let interval = try container.decodeField(String.self, forKey: .interval) else {
                throw Problem(.invalidField, "credits.refill needs an interval (daily or monthly)", field: "credits.refill.interval")
            }
            guard let parsed = Credits.Refill.Interval(rawValue: interval) else {
                throw Problem(.invalidField, "credits.refill.interval is daily or monthly", field: "credits.refill.interval")
            }
            self.amount = amount
            self.interval = parsed
            day = try container.decodeField(Int.self, forKey: .day)
        }
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case remaining, refill }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        guard let remaining = try container.decodeField(Int.self, forKey: .remaining) else {
            throw Problem(.invalidField, "credits needs remaining (null credits: unlimited)", field: "credits.remaining")
        }
        self.remaining = remaining
        refill = try container.contains(.refill) && container.decodeNil(forKey: .refill) ? nil : container.decodeField(Refill.self, forKey: .refill)
    }
}
