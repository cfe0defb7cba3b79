import KeygateCore

/// Keys must not travel in URLs (they end up in access logs, proxies' logs and browser history): a
/// request whose target carries one is refused (400) before anything else.
enum KeyExtractor {
    /// Query parameters that commonly carry keys; any of them in the URL is refused.
    private static let queryNames: Set<String> = ["api_key", "apikey", "api-key", "key", "x-api-key", "token", "access_token"]

    /// True when the request target carries a key: anywhere in it (path or query, as sent or
    /// percent-decoded, up to three times) a well-formed key of this format; or a query parameter
    /// named like a key; or a query value with the key prefix (`kg_...`).
    static func targetCarriesKey(_ target: UnsafeRawBufferPointer, format: KeyFormat) -> Bool {
        var text = Array(target)
        for _ in 0..<4 {
            if containsWellFormedKey(text, format: format) || queryCarriesKey(text, prefix: format.prefix) { return true }
            guard let decoded = percentDecoded(text) else { return false }
            text = decoded
        }
        return false
    }

    /// Every place the prefix and separator start, checked as a whole key (length, alphabet, checksum).
    private static func containsWellFormedKey(_ bytes: [UInt8], format: KeyFormat) -> Bool {
        let marker = Array((format.prefix + "_").utf8)
        guard bytes.count >= format.keyLength else { return false }
        return bytes.withUnsafeBytes { raw in
            var start = 0
            while start + format.keyLength <= raw.count {
                if raw[start] == marker[0], raw[start..<start + marker.count].elementsEqual(marker),
                   format.isWellFormed(UnsafeRawBufferPointer(rebasing: raw[start..<start + format.keyLength])) {
                    return true
                }
                start += 1
            }
            return false
        }
    }

    private static func queryCarriesKey(_ bytes: [UInt8], prefix: String) -> Bool {
        guard let mark = bytes.firstIndex(of: UInt8(ascii: "?")) else { return false }
        for pair in bytes[(mark + 1)...].split(separator: UInt8(ascii: "&")) {
            let parts = pair.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
            if queryNames.contains(String(decoding: parts[0], as: UTF8.self).lowercased()) { return true }
            if parts.count == 2, parts[1].starts(with: (prefix + "_").utf8) { return true }
        }
        return false
    }

    /// `%XX` sequences decoded; nil when there is none (nothing left to decode).
    private static func percentDecoded(_ bytes: [UInt8]) -> [UInt8]? {
        guard bytes.contains(UInt8(ascii: "%")) else { return nil }
        var result: [UInt8] = []
        result.reserveCapacity(bytes.count)
        var index = 0
        var changed = false
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.count,
               let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2]) {
                result.append(high << 4 | low)
                index += 3
                changed = true
            } else {
                result.append(bytes[index])
                index += 1
            }
        }
        return changed ? result : nil
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
