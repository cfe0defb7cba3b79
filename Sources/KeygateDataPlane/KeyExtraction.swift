import NIOHTTP1

/// Finds the API key in a request: exactly one of the configured headers (or a Bearer token when
/// enabled), and never in the URL.
struct KeyExtractor: Sendable {
    enum Outcome: Equatable {
        case none
        case key(String)
        case multiple
        case inURL
    }

    /// Lowercased header names.
    private let names: [String]
    private let acceptBearer: Bool
    private let keyPrefix: String
    /// Query parameters that commonly carry keys; any of them in the URL is refused.
    private static let queryNames: Set<String> = ["api_key", "apikey", "api-key", "key", "x-api-key", "token", "access_token"]

    init(headerNames: [String], acceptBearer: Bool, keyPrefix: String) {
        self.names = headerNames.map { $0.lowercased() }
        self.acceptBearer = acceptBearer
        self.keyPrefix = keyPrefix + "_"
    }

    func extract(_ head: HTTPRequestHead) -> Outcome {
        if head.uri.utf8.contains(UInt8(ascii: "?")), Self.urlCarriesKey(head.uri, prefix: keyPrefix) { return .inURL }
        var found: String?
        var count = 0
        for (name, value) in head.headers {
            if names.contains(where: { Self.equalsIgnoringASCIICase(name, lowercased: $0) }) {
                count += 1
                found = value
            } else if acceptBearer, Self.equalsIgnoringASCIICase(name, lowercased: "authorization") {
                let parts = value.split(separator: " ", maxSplits: 1)
                if parts.count == 2, parts[0].lowercased() == "bearer" {
                    count += 1
                    found = String(parts[1])
                }
            }
        }
        if count > 1 { return .multiple }
        return found.map(Outcome.key) ?? .none
    }

    /// Compares without allocating (header names are ASCII tokens).
    static func equalsIgnoringASCIICase(_ name: String, lowercased: String) -> Bool {
        guard name.utf8.count == lowercased.utf8.count else { return false }
        for (a, b) in zip(name.utf8, lowercased.utf8) {
            let folded = (a >= UInt8(ascii: "A") && a <= UInt8(ascii: "Z")) ? a | 0x20 : a
            if folded != b { return false }
        }
        return true
    }

    /// A query parameter named like a key, or any value with the key prefix.
    static func urlCarriesKey(_ uri: String, prefix: String) -> Bool {
        guard let mark = uri.firstIndex(of: "?") else { return false }
        for pair in uri[uri.index(after: mark)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if queryNames.contains(parts[0].lowercased()) { return true }
            if parts.count == 2, parts[1].hasPrefix(prefix) { return true }
        }
        return false
    }

    /// Required scopes set by the proxy for the route (`X-Keygate-Required-Scopes`, space or comma separated).
    static func requiredScopes(_ head: HTTPRequestHead) -> [Substring] {
        var scopes: [Substring] = []
        for (name, value) in head.headers where equalsIgnoringASCIICase(name, lowercased: "x-keygate-required-scopes") {
            scopes += value.split(whereSeparator: { $0 == " " || $0 == "," })
        }
        return scopes
    }
}
