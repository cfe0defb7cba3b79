/// Keys must not travel in URLs (they end up in access logs and browser history).
enum KeyExtractor {
    /// Query parameters that commonly carry keys; any of them in the URL is refused.
    private static let queryNames: Set<String> = ["api_key", "apikey", "api-key", "key", "x-api-key", "token", "access_token"]

    /// A query parameter named like a key, or any value with the key prefix (`kg_`).
    static func urlCarriesKey(_ uri: String, prefix: String) -> Bool {
        guard let mark = uri.firstIndex(of: "?") else { return false }
        for pair in uri[uri.index(after: mark)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if queryNames.contains(parts[0].lowercased()) { return true }
            if parts.count == 2, parts[1].hasPrefix(prefix + "_") { return true }
        }
        return false
    }
}
