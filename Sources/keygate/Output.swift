import Foundation
import KeygateCore

/// Human tables and JSON for the CLI. JSON field names are the admin API's (snake_case). Text from
/// Redis (user and key names, metadata, actors) is printed through `DisplayText.escaped`, so a name
/// holding terminal controls or bidi overrides shows as `\u{...}` instead of acting on the terminal.
/// `--json` carries names exactly as stored: it is for programs, and JSON escapes C0 controls.
enum Output {
    static func json(_ value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = RFC3339.dateEncoding
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }

    static func date(_ date: Date?) -> String {
        guard let date else { return "-" }
        return RFC3339.string(date)
    }

    static func table(_ headers: [String], _ rows: [[String]]) {
        let rows = rows.map { $0.map(DisplayText.escaped) }
        var widths = headers.map(\.count)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        let line = { (cells: [String]) in
            zip(cells, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }
        print(line(headers))
        for row in rows { print(line(row)) }
    }

    static func keyRows(_ records: [KeyRecord]) -> [[String]] {
        let now = Date()
        return records.map { record in
            [record.id, record.user, record.name.isEmpty ? "-" : record.name,
             record.scopes.isEmpty ? "-" : record.scopes.joined(separator: ","),
             record.effectiveStatus(at: now).rawValue, date(record.createdAt), date(record.expiresAt),
             date(record.lastUsedAt), String(record.version)]
        }
    }

    static let keyHeaders = ["ID", "USER", "NAME", "SCOPES", "STATUS", "CREATED", "EXPIRES", "LAST USED", "VERSION"]

    static func details(_ record: KeyRecord) {
        let rows: [(String, String)] = [
            ("id", record.id), ("user", record.user), ("name", record.name.isEmpty ? "-" : record.name),
            ("scopes", record.scopes.isEmpty ? "-" : record.scopes.joined(separator: " ")),
            ("status", record.effectiveStatus(at: Date()).rawValue), ("created_at", date(record.createdAt)),
            ("expires_at", date(record.expiresAt)), ("revoked_at", date(record.revokedAt)),
            ("last_used_at", date(record.lastUsedAt)), ("version", String(record.version)),
            ("rotated_from", record.rotatedFrom ?? "-"), ("rotated_to", record.rotatedTo ?? "-"),
            ("metadata", record.metadata.isEmpty ? "-" : record.metadata.sorted { $0.key < $1.key }.map { "\($0)=\($1)" }.joined(separator: " ")),
            ("rate_limits", record.rateLimits.isEmpty ? "-" : record.rateLimits.map(\.text).joined(separator: " ")),
            ("credits", credits(record.credits)),
        ]
        for (label, value) in rows { print(label.padding(toLength: 13, withPad: " ", startingAt: 0) + DisplayText.escaped(value)) }
    }

    /// The plaintext key, shown once, with the reminder that nothing can show it again.
    /// The daily buckets, then the last 24 hours that saw any request, with refusals by reason.
    static func usageTables(daily: [KeyUsage.Bucket], hourly: [KeyUsage.Bucket]) {
        let columns = ["COUNT", "RATE_LIMITED", "USAGE_EXCEEDED", "FORBIDDEN"]
        func row(_ bucket: KeyUsage.Bucket) -> [String] {
            [bucket.period, String(bucket.count), String(bucket.refused.rateLimited), String(bucket.refused.usageExceeded),
             String(bucket.refused.forbidden)]
        }
        table(["DAY"] + columns, daily.map(row))
        let recent = hourly.suffix(24).filter { $0.count > 0 || !$0.refused.isZero }
        if !recent.isEmpty {
            print("")
            table(["HOUR (UTC)"] + columns, recent.map(row))
        }
    }

    /// `1000 left, refilled to 1000/month`, or `-` without credits.
    static func credits(_ credits: Credits?) -> String {
        credits.map { "\($0.remaining) left" + ($0.refill.map { ", refilled to \($0.text)" } ?? "") } ?? "-"
    }

    static func issued(_ issued: IssuedKey) {
        details(issued.record)
        print("")
        print("key          \(issued.key)")
        print("")
        print("Store this key now: Keygate keeps only its hash and cannot show it again.")
    }
}
