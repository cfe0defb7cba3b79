public import Foundation

/// How Keygate writes times (admin API, CLI, `/v1/verify`): RFC 3339 in UTC, with milliseconds
/// when the time has any (the store keeps milliseconds), so `2030-01-01T00:00:00.900Z` is not shown
/// as the second before it.
public enum RFC3339 {
    public static func string(_ date: Date) -> String {
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        let seconds = milliseconds >= 0 ? milliseconds / 1000 : (milliseconds - 999) / 1000 // floor
        let fraction = milliseconds - seconds * 1000
        var text = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(seconds))) // ...T00:00:00Z
        if fraction != 0 {
            text.removeLast()
            text += "." + String(fraction + 1000).dropFirst() + "Z"
        }
        return text
    }

    /// The JSON encoding of dates everywhere Keygate writes JSON.
    public static let dateEncoding: JSONEncoder.DateEncodingStrategy = .custom { date, encoder in
        var container = encoder.singleValueContainer()
        try container.encode(string(date))
    }
}
