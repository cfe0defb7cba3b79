/// Reads one HTTP/1.1 request head straight from the connection's bytes, keeping only what the data
import KeygateCore
/// plane needs (method, route, the key header, a few others) as offsets: no header dictionary, no
/// String per header, no allocation for a request without a query string.
///
/// It is strict, because a verification node must not be confused by smuggling tricks: CRLF line
/// endings only, no whitespace before a header colon, no obsolete line folding, no control characters
/// in values, one Content-Length at most, no Transfer-Encoding but a lone `chunked` (read by gateway
/// mode only, never together with a Content-Length),
/// exactly one Host in HTTP/1.1 (at most one in HTTP/1.0), as RFC 9112 section 3.2 requires.
struct HTTPRequestScanner {
    enum Method { case get, head, post, other }

    struct Head {
        var method: Method
        var route: DataPlaneHandler.Route
        /// Bytes of the head, request line to the blank line included.
        var length: Int
        var contentLength = 0
        var keepAlive: Bool
        /// How many key-bearing headers there were, and where the last one's value is.
        var keyCount = 0
        var key: Range<Int>?
        var keyInURL = false
        var requiredScopes: Range<Int>?
        var extraScopeHeaders = 0
        /// `X-Keygate-Cost`, set by the proxy per route: the units a request spends of the key's limits.
        var cost: Range<Int>?
        var extraCostHeaders = 0
        var requestID: Range<Int>?
        /// The last `X-Forwarded-For` (read only from trusted proxies).
        var forwardedFor: Range<Int>?
        var http11 = true
        /// `Expect: 100-continue`: the client waits for a 100 before sending the body (gateway mode).
        var expectsContinue = false
        /// An `Upgrade` field (WebSocket): not proxied.
        var upgrade = false
        /// `Transfer-Encoding: chunked` (and no `Content-Length`): only gateway mode reads such a body.
        var chunked = false
    }

    enum Outcome {
        case incomplete
        case head(Head)
        case malformed
        case tooLarge
    }

    /// Lowercased names of the headers that carry a key.
    let keyHeaders: [[UInt8]]
    let acceptBearer: Bool
    /// The issued keys' format, to refuse a key sent in the URL.
    let keyFormat: KeyFormat
    let maxHeaderBytes: Int

    init(keyHeaders: [String], acceptBearer: Bool, keyFormat: KeyFormat, maxHeaderBytes: Int) {
        self.keyHeaders = keyHeaders.map { Array($0.lowercased().utf8) }
        self.acceptBearer = acceptBearer
        self.keyFormat = keyFormat
        self.maxHeaderBytes = maxHeaderBytes
    }

    private static let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n"), sp = UInt8(ascii: " "), tab = UInt8(ascii: "\t")

    /// Scans `bytes` (the unread input) for one complete request head, in one pass: each byte is
    /// looked at once, while checking it (this runs for every request, so it is written for speed).
    func scan(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        // The head must end within `limit`; running out of bytes before that means "wait for more".
        let limit = Swift.min(bytes.count, maxHeaderBytes)
        let unfinished: Outcome = bytes.count >= maxHeaderBytes ? .tooLarge : .incomplete

        // Request line: METHOD SP target SP HTTP/1.x CRLF
        var index = 0
        while index < limit && Self.isTokenCharacter(bytes[index]) { index += 1 }
        guard index < limit else { return unfinished }
        let firstSpace = index
        guard firstSpace > 0, bytes[firstSpace] == Self.sp else { return .malformed }
        index += 1
        var question = -1
        while index < limit {
            let byte = bytes[index]
            if byte <= Self.sp || byte == 0x7F { break }
            if byte == UInt8(ascii: "?") && question < 0 { question = index }
            index += 1
        }
        guard index < limit else { return unfinished }
        let target = (firstSpace + 1)..<index
        guard bytes[index] == Self.sp, !target.isEmpty, bytes[target.lowerBound] == UInt8(ascii: "/") else { return .malformed }
        let version = index + 1
        guard version + 10 <= limit else { return unfinished } // HTTP/1.x CRLF
        guard Self.equals(bytes, version, "HTTP/1."), bytes[version + 7] == UInt8(ascii: "1") || bytes[version + 7] == UInt8(ascii: "0"),
              bytes[version + 8] == Self.cr, bytes[version + 9] == Self.lf else { return .malformed }
        let http11 = bytes[version + 7] == UInt8(ascii: "1")
        let method: Method
        switch firstSpace {
        case 3 where Self.equals(bytes, 0, "GET"): method = .get
        case 4 where Self.equals(bytes, 0, "HEAD"): method = .head
        case 4 where Self.equals(bytes, 0, "POST"): method = .post
        default: method = .other
        }
        let path = question >= 0 ? target.lowerBound..<question : target
        var head = Head(method: method, route: Self.route(bytes, path, method: method), length: 0, keepAlive: http11)
        head.http11 = http11
        // A plain `/auth` is too short to hold a key: the hit path pays nothing for this check.
        head.keyInURL = (question >= 0 || target.count >= keyFormat.keyLength)
            && KeyExtractor.targetCarriesKey(UnsafeRawBufferPointer(rebasing: bytes[target]), format: keyFormat)

        // Header lines until the blank line.
        var sawContentLength = false
        var hosts = 0
        index = version + 10
        while true {
            guard index + 1 < limit else { return unfinished }
            if bytes[index] == Self.cr {
                guard bytes[index + 1] == Self.lf else { return .malformed }
                // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host; two are never valid.
                guard hosts == 1 || (hosts == 0 && !http11) else { return .malformed }
                guard !(head.chunked && sawContentLength) else { return .malformed } // CL with TE: smuggling
                head.length = index + 2
                return .head(head)
            }
            // The name: token characters up to the colon (no whitespace before it, no obsolete
            // line folding, which starts a line with whitespace).
            let nameStart = index
            while index < limit && Self.isTokenCharacter(bytes[index]) { index += 1 }
            guard index < limit else { return unfinished }
            guard index > nameStart, bytes[index] == UInt8(ascii: ":") else { return .malformed }
            let name = nameStart..<index
            index += 1
            // The value: no control characters but tab; CRLF ends it; surrounding whitespace trimmed.
            while index < limit && (bytes[index] == Self.sp || bytes[index] == Self.tab) { index += 1 }
            let valueStart = index
            while index < limit {
                let byte = bytes[index]
                if byte < Self.sp || byte == 0x7F {
                    if byte == Self.cr { break }
                    guard byte == Self.tab else { return .malformed }
                }
                index += 1
            }
            guard index + 1 < limit else { return unfinished }
            guard bytes[index + 1] == Self.lf else { return .malformed }
            var valueEnd = index
            while valueEnd > valueStart && (bytes[valueEnd - 1] == Self.sp || bytes[valueEnd - 1] == Self.tab) { valueEnd -= 1 }
            index += 2
            if name.count == 4 && Self.equalsIgnoringCase(bytes, name, "host") { hosts += 1; continue }
            guard record(name, valueStart..<valueEnd, bytes, into: &head, sawContentLength: &sawContentLength) else { return .malformed }
        }
    }

    /// Keeps what the data plane needs from one header; false when the header makes the request malformed.
    private func record(_ name: Range<Int>, _ value: Range<Int>, _ bytes: UnsafeRawBufferPointer, into head: inout Head,
                        sawContentLength: inout Bool) -> Bool {
        for keyHeader in keyHeaders where Self.equalsIgnoringCase(bytes, name, keyHeader) {
            head.keyCount += 1
            head.key = value
            return true
        }
        switch name.count {
        case 13 where Self.equalsIgnoringCase(bytes, name, "authorization"):
            if acceptBearer, value.count > 7, Self.equalsIgnoringCase(bytes, value.lowerBound..<value.lowerBound + 7, "bearer ") {
                head.keyCount += 1
                var start = value.lowerBound + 7
                while start < value.upperBound && bytes[start] == Self.sp { start += 1 }
                head.key = start..<value.upperBound
            }
        case 14 where Self.equalsIgnoringCase(bytes, name, "content-length"):
            guard !sawContentLength, !value.isEmpty, value.count <= 9 else { return false }
            var length = 0
            for position in value {
                let digit = bytes[position]
                guard digit >= UInt8(ascii: "0") && digit <= UInt8(ascii: "9") else { return false }
                length = length * 10 + Int(digit - UInt8(ascii: "0"))
            }
            sawContentLength = true
            head.contentLength = length
        case 17 where Self.equalsIgnoringCase(bytes, name, "transfer-encoding"):
            // `chunked` alone, once: any other coding, or a second field, is refused. Only gateway
            // mode then reads the body; every other route refuses it (see DataPlaneHandler).
            guard !head.chunked, Self.equalsIgnoringCase(bytes, value, "chunked") else { return false }
            head.chunked = true
        case 10 where Self.equalsIgnoringCase(bytes, name, "connection"):
            if Self.containsIgnoringCase(bytes, value, "close") { head.keepAlive = false }
            else if Self.containsIgnoringCase(bytes, value, "keep-alive") { head.keepAlive = true }
        case 25 where Self.equalsIgnoringCase(bytes, name, "x-keygate-required-scopes"):
            if head.requiredScopes == nil { head.requiredScopes = value } else { head.extraScopeHeaders += 1 }
        case 14 where Self.equalsIgnoringCase(bytes, name, "x-keygate-cost"):
            if head.cost == nil { head.cost = value } else { head.extraCostHeaders += 1 }
        case 6 where Self.equalsIgnoringCase(bytes, name, "expect"):
            head.expectsContinue = Self.containsIgnoringCase(bytes, value, "100-continue")
        case 7 where Self.equalsIgnoringCase(bytes, name, "upgrade"):
            head.upgrade = true
        case 12 where Self.equalsIgnoringCase(bytes, name, "x-request-id"):
            head.requestID = value
        case 15 where Self.equalsIgnoringCase(bytes, name, "x-forwarded-for"):
            head.forwardedFor = value
        default:
            break
        }
        return true
    }

    static func route(_ bytes: UnsafeRawBufferPointer, _ path: Range<Int>, method: Method) -> DataPlaneHandler.Route {
        if equals(bytes, path, "/auth") || (path.count > 6 && equals(bytes, path.lowerBound, "/auth/")) { return .forwardAuth }
        if equals(bytes, path, "/v1/verify") { return method == .post ? .verify : .methodNotAllowed(allow: .post) }
        let readOnly = method == .get || method == .head
        if equals(bytes, path, "/health/live") { return readOnly ? .live : .methodNotAllowed(allow: .getAndHead) }
        if equals(bytes, path, "/health/ready") { return readOnly ? .ready : .methodNotAllowed(allow: .getAndHead) }
        return .notFound
    }

    // MARK: byte helpers

    private static func equals(_ bytes: UnsafeRawBufferPointer, _ at: Int, _ text: StaticString) -> Bool {
        let count = text.utf8CodeUnitCount
        guard at + count <= bytes.count else { return false }
        let pointer = text.utf8Start
        for offset in 0..<count where bytes[at + offset] != pointer[offset] { return false }
        return true
    }

    private static func equals(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ text: StaticString) -> Bool {
        range.count == text.utf8CodeUnitCount && equals(bytes, range.lowerBound, text)
    }

    static func lower(_ byte: UInt8) -> UInt8 {
        byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
    }

    static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercased: [UInt8]) -> Bool {
        guard range.count == lowercased.count else { return false }
        var offset = 0
        for position in range {
            if lower(bytes[position]) != lowercased[offset] { return false }
            offset += 1
        }
        return true
    }

    /// The value of a hexadecimal digit (chunk sizes, percent-encoding), nil for any other byte.
    static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return Int(byte - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return Int(byte - UInt8(ascii: "A")) + 10
        default: return nil
        }
    }

    static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercased: StaticString) -> Bool {
        guard range.count == lowercased.utf8CodeUnitCount else { return false }
        let pointer = lowercased.utf8Start
        var offset = 0
        for position in range {
            if lower(bytes[position]) != pointer[offset] { return false }
            offset += 1
        }
        return true
    }

    private static func containsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercased: StaticString) -> Bool {
        let count = lowercased.utf8CodeUnitCount
        guard range.count >= count else { return false }
        for start in range.lowerBound...(range.upperBound - count)
        where equalsIgnoringCase(bytes, start..<start + count, lowercased) { return true }
        return false
    }

    /// RFC 9110 token characters (method and header names) as a bit set over ASCII: bit `b` of
    /// `tokenLow` (bytes 0-63) or of `tokenHigh` (bytes 64-127) is set for a token character.
    /// `HTTPRequestScannerTests` checks both masks against the RFC's list.
    static let tokenLow: UInt64 = 0x03FF_6CFA_0000_0000
    static let tokenHigh: UInt64 = 0x57FF_FFFF_C7FF_FFFE

    @inline(__always)
    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        byte < 64 ? (tokenLow >> UInt64(byte)) & 1 == 1 : byte < 128 && (tokenHigh >> UInt64(byte &- 64)) & 1 == 1
    }
}
