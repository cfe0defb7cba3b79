import Foundation

/// A named rate limit: at most `limit` units (requests, or their cost) per fixed window of
/// `duration`, counted across every node. A key may carry several; a request must pass all.
public struct RateLimit: Sendable, Equatable, Hashable, Codable {
    public var name: String
    public var limit: Int
    public var durationMilliseconds: Int64
    /// Decided in Redis for every request (no tokens held by a node): nothing is lost to tokens a
    /// node leased and did not spend, at the price of a Redis round trip per request.
    public var exact: Bool

    public init(name: String, limit: Int, durationMilliseconds: Int64, exact: Bool = false) throws(KeygateError) {
        guard Self.isValidName(name) else {
            throw KeygateError(.invalidArgument, "a rate limit's name is 1-32 of a-z, 0-9, '_' and '-', got '\(DisplayText.escaped(name))'", field: "name")
        }
        guard (1...Self.maximumLimit).contains(limit) else {
            throw KeygateError(.invalidArgument, "a rate limit's limit is 1-\(Self.maximumLimit), got \(limit)", field: "limit")
        }
        guard (Self.minimumDuration...Self.maximumDuration).contains(durationMilliseconds) else {
            throw KeygateError(.invalidArgument, "a rate limit's duration is 1 s to 30 days in milliseconds, got \(durationMilliseconds)",
                               field: "duration_ms")
        }
        self.name = name
        self.limit = limit
        self.durationMilliseconds = durationMilliseconds
        self.exact = exact
    }

    public static let maximumLimit = 1_000_000_000
    public static let minimumDuration: Int64 = 1_000
    public static let maximumDuration: Int64 = 30 * 86_400_000

    /// Lower-case letters, digits, `_` and `-`: safe inside a Redis key name and a header value.
    public static func isValidName(_ name: String) -> Bool {
        (1...32).contains(name.utf8.count) && name.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
    }

    /// `100/1m`, `5000/1h`, `10/2s`, `name=100/1m`, `100/1m:exact` (the name defaults to
    /// `defaultName`). Units: ms, s, m, h, d.
    public init(parsing text: String, defaultName: String = "default") throws(KeygateError) {
        var body = Substring(text)
        var name = defaultName
        var exact = false
        if body.hasSuffix(":exact") {
            exact = true
            body = body.dropLast(":exact".count)
        }
        if let equals = body.firstIndex(of: "=") {
            name = String(body[..<equals])
            body = body[body.index(after: equals)...]
        }
        let parts = body.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let limit = Int(parts[0]), let duration = Self.milliseconds(parts[1]) else {
            throw KeygateError(.invalidArgument, "a rate limit is [NAME=]LIMIT/DURATION[:exact] such as 100/1m or hourly=5000/1h, got '\(DisplayText.escaped(text))'",
                               field: "rate_limits")
        }
        try self.init(name: name, limit: limit, durationMilliseconds: duration, exact: exact)
    }

    /// How the record stores a key's limits: `name:limit:duration_ms[:exact]`, space separated (names
    /// hold neither character), read on every cache miss without a JSON parser.
    public static func storageText(_ limits: [RateLimit]) -> String {
        limits.map { "\($0.name):\($0.limit):\($0.durationMilliseconds)\($0.exact ? ":exact" : "")" }.joined(separator: " ")
    }

    /// The limits in a record's field; nil when the text is not one `storageText` writes.
    public static func fromStorage(_ text: Substring) -> [RateLimit]? {
        var limits: [RateLimit] = []
        for item in text.split(separator: " ") {
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 3 || (parts.count == 4 && parts[3] == "exact"),
                  let limit = Int(parts[1]), let duration = Int64(parts[2]),
                  let parsed = try? RateLimit(name: String(parts[0]), limit: limit, durationMilliseconds: duration,
                                              exact: parts.count == 4) else { return nil }
            limits.append(parsed)
        }
        return limits
    }

    /// The rules for a key's list: at most 8, names not repeated.
    public static func validate(_ limits: [RateLimit]) throws(KeygateError) {
        guard limits.count <= maximumPerKey else {
            throw KeygateError(.invalidArgument, "at most \(maximumPerKey) rate limits per key", field: "rate_limits")
        }
        guard Set(limits.map(\.name)).count == limits.count else {
            throw KeygateError(.invalidArgument, "rate limit names must not repeat (name them: hourly=5000/1h)", field: "rate_limits")
        }
    }

    public static let maximumPerKey = 8

    /// `100/1m` style, the form the CLI reads.
    public var text: String {
        let units: [(String, Int64)] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)]
        let duration = units.first { durationMilliseconds % $0.1 == 0 }.map { "\(durationMilliseconds / $0.1)\($0.0)" }
            ?? "\(durationMilliseconds)ms"
        return "\(name)=\(limit)/\(duration)\(exact ? ":exact" : "")"
    }

    private static func milliseconds(_ text: Substring) -> Int64? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count)
            // "ms" before "s" and "m": the first matching suffix wins.
            guard let value = Int64(number.isEmpty ? "1" : number), value > 0, value <= Int64.max / factor else { return nil }
            return value * factor
        }
        return nil
    }

    /// The window a moment falls in, and when that window ends (Unix milliseconds).
    public func window(at milliseconds: Int64) -> (index: Int64, endsAt: Int64) {
        let index = milliseconds / durationMilliseconds
        return (index, (index + 1) * durationMilliseconds)
    }

    private enum CodingKeys: String, CodingKey {
        case name, limit, exact
        case durationMilliseconds = "duration_ms"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(name: try container.decodeIfPresent(String.self, forKey: .name) ?? "default",
                      limit: try container.decode(Int.self, forKey: .limit),
                      durationMilliseconds: try container.decode(Int64.self, forKey: .durationMilliseconds),
                      exact: try container.decodeIfPresent(Bool.self, forKey: .exact) ?? false)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(limit, forKey: .limit)
        try container.encode(durationMilliseconds, forKey: .durationMilliseconds)
        try container.encode(exact, forKey: .exact)
    }
}
