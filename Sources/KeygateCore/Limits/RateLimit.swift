import Foundation

/// A named rate limit: at most `limit` units (requests, or their cost) per fixed window of
/// `duration`, counted across every node. A key may carry several; a request must pass all.
public struct RateLimit: Sendable, Equatable, Hashable, Codable {
    public var name: String
    public var limit: Int
    public var durationMilliseconds: Int64

    public init(name: String, limit: Int, durationMilliseconds: Int64) throws(KeygateError) {
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

    /// `100/1m`, `5000/1h`, `10/2s`, `name=100/1m` (the name defaults to `default`, or to the duration
    /// text when several are given: the CLI names them). Units: ms, s, m, h, d.
    public init(parsing text: String, defaultName: String = "default") throws(KeygateError) {
        var body = Substring(text)
        var name = defaultName
        if let equals = body.firstIndex(of: "=") {
            name = String(body[..<equals])
            body = body[body.index(after: equals)...]
        }
        let parts = body.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let limit = Int(parts[0]), let duration = Self.milliseconds(parts[1]) else {
            throw KeygateError(.invalidArgument, "a rate limit is LIMIT/DURATION such as 100/1m or 5000/1h, got '\(DisplayText.escaped(text))'",
                               field: "rate_limits")
        }
        try self.init(name: name, limit: limit, durationMilliseconds: duration)
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
        case name, limit
        case durationMilliseconds = "duration_ms"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(name: try container.decode(String.self, forKey: .name), limit: try container.decode(Int.self, forKey: .limit),
                      durationMilliseconds: try container.decode(Int64.self, forKey: .durationMilliseconds))
    }
}
