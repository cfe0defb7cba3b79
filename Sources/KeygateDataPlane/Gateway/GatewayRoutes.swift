public import KeygateCore

/// Gateway mode's route table: the scopes a request's key must hold and what the request costs of
/// the key's rate limits and credits, by path prefix and optionally method
/// (`--gateway-route 'POST /reports/=reports:write cost=10'`). The longest matching prefix wins; a
/// route naming the request's method beats one for any method with the same prefix. No match: no
/// scope is required and the request costs 1.
///
/// Prefixes are matched against the path as an upstream may read it: percent-decoded, with `.` and
/// `..` segments resolved and repeated slashes collapsed, and against the raw path too; the scopes
/// of both matches are required (and the higher cost is spent). `/%6Frders/1`, `/x/../orders/1` and
/// `//orders/1` need what `/orders/1` needs. Matching is case-sensitive.
public struct GatewayRoute: Sendable, Equatable, CustomStringConvertible {
    public var method: String?
    public var prefix: String
    public var scopes: [String]
    /// Units of the key's rate limits and credits a matching request spends (0-1,000,000).
    public var cost: Int

    public init(method: String? = nil, prefix: String, scopes: [String], cost: Int = 1) {
        self.method = method
        self.prefix = prefix
        self.scopes = scopes
        self.cost = cost
    }

    /// `[METHOD ]PREFIX=[SCOPE[,SCOPE...]][ cost=N]`, such as `/orders/=orders:read`,
    /// `POST /orders/=orders:write` or `/search/= cost=5`.
    public init(parsing text: String) throws(KeygateError) {
        let invalid = KeygateError(.invalidConfiguration,
                                   "a gateway route is [METHOD ]/PREFIX=[SCOPE[,SCOPE...]][ cost=N] such as 'POST /orders/=orders:write cost=5', got '\(DisplayText.escaped(text))'",
                                   field: "gateway_route")
        guard let equals = text.firstIndex(of: "=") else { throw invalid }
        let left = text[..<equals].split(separator: " ", omittingEmptySubsequences: true)
        var right = text[text.index(after: equals)...].split(separator: " ", omittingEmptySubsequences: true)
        var cost = 1
        if let last = right.last, last.hasPrefix("cost=") {
            guard let parsed = Int(last.dropFirst("cost=".count)), (0...VerifyJSON.maximumCost).contains(parsed) else { throw invalid }
            cost = parsed
            right.removeLast()
        }
        guard right.count <= 1 else { throw invalid }
        let scopes = right.first.map { $0.split(separator: ",").map(String.init) } ?? []
        guard (1...2).contains(left.count), !scopes.isEmpty || cost != 1, scopes.allSatisfy({ !$0.isEmpty }) else { throw invalid }
        let prefix = String(left[left.count - 1])
        guard prefix.hasPrefix("/") else { throw invalid }
        var method: String?
        if left.count == 2 {
            guard left[0].allSatisfy({ $0.isUppercase && $0.isLetter }) else { throw invalid }
            method = String(left[0])
        }
        self.init(method: method, prefix: prefix, scopes: scopes, cost: cost)
    }

    public var description: String {
        (method.map { "\($0) " } ?? "") + prefix + "=" + scopes.joined(separator: ",") + (cost == 1 ? "" : " cost=\(cost)")
    }

    /// The scopes `routes` require of a request, and what it costs (1 without a matching route).
    static func requirements(_ routes: [GatewayRoute], method: String, path: String) -> (scopes: [Substring], cost: Int) {
        guard !routes.isEmpty else { return ([], 1) }
        var required: [Substring] = []
        var cost: Int?
        let normalized = normalize(path)
        for candidate in normalized == path ? [path] : [path, normalized] {
            var best: GatewayRoute?
            for route in routes where candidate.hasPrefix(route.prefix) && (route.method == nil || route.method == method) {
                guard let current = best else { best = route; continue }
                if route.prefix.count > current.prefix.count || (route.prefix.count == current.prefix.count && current.method == nil) {
                    best = route
                }
            }
            for scope in best?.scopes ?? [] where !required.contains(Substring(scope)) { required.append(Substring(scope)) }
            if let best { cost = max(cost ?? 0, best.cost) }
        }
        return (required, cost ?? 1)
    }

    /// Percent-decoded (every `%XX`), repeated slashes collapsed, `.` and `..` segments resolved.
    static func normalize(_ path: String) -> String {
        var bytes: [UInt8] = []
        let raw = Array(path.utf8)
        var index = 0
        while index < raw.count {
            if raw[index] == UInt8(ascii: "%"), index + 2 < raw.count, let high = HTTPRequestScanner.hexValue(raw[index + 1]), let low = HTTPRequestScanner.hexValue(raw[index + 2]) {
                bytes.append(UInt8(high << 4 | low))
                index += 3
            } else {
                bytes.append(raw[index])
                index += 1
            }
        }
        var segments: [ArraySlice<UInt8>] = []
        for segment in bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if segment.elementsEqual(".".utf8) { continue }
            if segment.elementsEqual("..".utf8) { _ = segments.popLast(); continue }
            segments.append(segment)
        }
        var result = "/" + segments.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/")
        if bytes.last == UInt8(ascii: "/") && result != "/" { result += "/" }
        return result
    }

}
