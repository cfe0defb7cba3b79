/// Reads one HTTP/1.1 request head straight from the connection's bytes, keeping only what the data
/// plane needs (method, route, the key header, a few others) as offsets: no header dictionary, no
/// String per header, no allocation for a request without a query string.
///
/// It is strict, because a verification node must not be confused by smuggling tricks: CRLF line
/// endings only, no whitespace before a header colon, no obsolete line folding, no control characters
/// in values, one Content-Length at most, no Transfer-Encoding (bodies must have a Content-Length).
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
        var requestID: Range<Int>?
        /// The last `X-Forwarded-For` (read only from trusted proxies).
        var forwardedFor: Range<Int>?
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
    /// Issued keys' prefix without the separator (`kg`).
    let keyPrefix: String
    let maxHeaderBytes: Int

    init(keyHeaders: [String], acceptBearer: Bool, keyPrefix: String, maxHeaderBytes: Int) {
        self.keyHeaders = keyHeaders.map { Array($0.lowercased().utf8) }
        self.acceptBearer = acceptBearer
        self.keyPrefix = keyPrefix
        self.maxHeaderBytes = maxHeaderBytes
    }

    private static let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n"), sp = UInt8(ascii: " "), tab = UInt8(ascii: "\t")

    /// Scans `bytes` (the unread input) for one complete request head.
    func scan(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        // Find the end of the head, within the limit.
        var end = -1
        var index = 0
        while index + 3 < bytes.count && index + 4 <= maxHeaderBytes {
            if bytes[index] == Self.lf && (index == 0 || bytes[index - 1] != Self.cr) { return .malformed } // bare LF
            if bytes[index] == Self.cr && bytes[index + 1] == Self.lf && bytes[index + 2] == Self.cr && bytes[index + 3] == Self.lf {
                end = index + 4
                break
            }
            index += 1
        }
        if end < 0 { return bytes.count >= maxHeaderBytes ? .tooLarge : .incomplete }

        // Request line: METHOD SP target SP HTTP/1.x CRLF
        guard let lineEnd = Self.lineEnd(bytes, from: 0, to: end) else { return .malformed }
        guard let firstSpace = Self.find(Self.sp, bytes, 0, lineEnd), firstSpace > 0,
              let secondSpace = Self.find(Self.sp, bytes, firstSpace + 1, lineEnd), secondSpace > firstSpace + 1,
              lineEnd - secondSpace - 1 == 8 else { return .malformed }
        for position in 0..<firstSpace where !Self.isTokenCharacter(bytes[position]) { return .malformed }
        let method: Method
        switch firstSpace {
        case 3 where Self.equals(bytes, 0, "GET"): method = .get
        case 4 where Self.equals(bytes, 0, "HEAD"): method = .head
        case 4 where Self.equals(bytes, 0, "POST"): method = .post
        default: method = .other
        }
        let target = (firstSpace + 1)..<secondSpace
        guard bytes[target.lowerBound] == UInt8(ascii: "/") else { return .malformed }
        for position in target where bytes[position] <= Self.sp || bytes[position] == 0x7F { return .malformed }
        let version = secondSpace + 1
        guard Self.equals(bytes, version, "HTTP/1."), bytes[version + 7] == UInt8(ascii: "1") || bytes[version + 7] == UInt8(ascii: "0") else {
            return .malformed
        }
        let http11 = bytes[version + 7] == UInt8(ascii: "1")

        var path = target
        var keyInURL = false
        if let question = Self.find(UInt8(ascii: "?"), bytes, target.lowerBound, target.upperBound) {
            path = target.lowerBound..<question
            let uri = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[target]), as: UTF8.self)
            keyInURL = KeyExtractor.urlCarriesKey(uri, prefix: keyPrefix)
        }
        var head = Head(method: method, route: Self.route(bytes, path, method: method), length: end, keepAlive: http11)
        head.keyInURL = keyInURL

        // Header lines until the blank line.
        var lineStart = lineEnd + 2
        var sawContentLength = false
        while lineStart < end - 2 {
            guard let nameEnd = Self.lineEnd(bytes, from: lineStart, to: end) else { return .malformed }
            let line = lineStart..<nameEnd
            lineStart = nameEnd + 2
            guard let colon = Self.find(UInt8(ascii: ":"), bytes, line.lowerBound, line.upperBound), colon > line.lowerBound else {
                return .malformed // includes obsolete line folding (a line starting with whitespace)
            }
            for position in line.lowerBound..<colon where !Self.isTokenCharacter(bytes[position]) { return .malformed }
            var valueStart = colon + 1, valueEnd = line.upperBound
            while valueStart < valueEnd && (bytes[valueStart] == Self.sp || bytes[valueStart] == Self.tab) { valueStart += 1 }
            while valueEnd > valueStart && (bytes[valueEnd - 1] == Self.sp || bytes[valueEnd - 1] == Self.tab) { valueEnd -= 1 }
            for position in valueStart..<valueEnd {
                let byte = bytes[position]
                if (byte < Self.sp && byte != Self.tab) || byte == 0x7F { return .malformed }
            }
            let name = line.lowerBound..<colon
            let value = valueStart..<valueEnd
            if keyHeaders.contains(where: { Self.equalsIgnoringCase(bytes, name, $0) }) {
                head.keyCount += 1
                head.key = value
            } else if Self.equalsIgnoringCase(bytes, name, "authorization") {
                if acceptBearer, value.count > 7, Self.equalsIgnoringCase(bytes, value.lowerBound..<value.lowerBound + 7, "bearer ") {
                    head.keyCount += 1
                    var start = value.lowerBound + 7
                    while start < value.upperBound && bytes[start] == Self.sp { start += 1 }
                    head.key = start..<value.upperBound
                }
            } else if Self.equalsIgnoringCase(bytes, name, "content-length") {
                guard !sawContentLength, !value.isEmpty, value.count <= 9 else { return .malformed }
                var length = 0
                for position in value {
                    let digit = bytes[position]
                    guard digit >= UInt8(ascii: "0") && digit <= UInt8(ascii: "9") else { return .malformed }
                    length = length * 10 + Int(digit - UInt8(ascii: "0"))
                }
                sawContentLength = true
                head.contentLength = length
            } else if Self.equalsIgnoringCase(bytes, name, "transfer-encoding") {
                return .malformed // bodies need a Content-Length here (and TE + CL is a smuggling vector)
            } else if Self.equalsIgnoringCase(bytes, name, "connection") {
                if Self.containsIgnoringCase(bytes, value, "close") { head.keepAlive = false }
                else if Self.containsIgnoringCase(bytes, value, "keep-alive") { head.keepAlive = true }
            } else if Self.equalsIgnoringCase(bytes, name, "x-keygate-required-scopes") {
                if head.requiredScopes == nil { head.requiredScopes = value } else { head.extraScopeHeaders += 1 }
            } else if Self.equalsIgnoringCase(bytes, name, "x-request-id") {
                head.requestID = value
            } else if Self.equalsIgnoringCase(bytes, name, "x-forwarded-for") {
                head.forwardedFor = value
            }
        }
        return .head(head)
    }

    static func route(_ bytes: UnsafeRawBufferPointer, _ path: Range<Int>, method: Method) -> DataPlaneHandler.Route {
        if equals(bytes, path, "/auth") || (path.count > 6 && equals(bytes, path.lowerBound, "/auth/")) { return .forwardAuth }
        if equals(bytes, path, "/v1/verify") { return method == .post ? .verify : .methodNotAllowed(allow: "POST") }
        let readOnly = method == .get || method == .head
        if equals(bytes, path, "/health/live") { return readOnly ? .live : .methodNotAllowed(allow: "GET, HEAD") }
        if equals(bytes, path, "/health/ready") { return readOnly ? .ready : .methodNotAllowed(allow: "GET, HEAD") }
        return .notFound
    }

    // MARK: byte helpers

    /// Index of the CR of the CRLF ending the line that starts at `from`; nil for a bare CR or LF.
    private static func lineEnd(_ bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
        var index = from
        while index + 1 < to {
            if bytes[index] == cr { return bytes[index + 1] == lf ? index : nil }
            if bytes[index] == lf { return nil }
            index += 1
        }
        return nil
    }

    private static func find(_ byte: UInt8, _ bytes: UnsafeRawBufferPointer, _ from: Int, _ to: Int) -> Int? {
        var index = from
        while index < to {
            if bytes[index] == byte { return index }
            index += 1
        }
        return nil
    }

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

    private static func lower(_ byte: UInt8) -> UInt8 {
        byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
    }

    private static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercased: [UInt8]) -> Bool {
        guard range.count == lowercased.count else { return false }
        var offset = 0
        for position in range {
            if lower(bytes[position]) != lowercased[offset] { return false }
            offset += 1
        }
        return true
    }

    private static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercased: StaticString) -> Bool {
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

    /// RFC 9110 token characters (method and header names).
    private static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): return true
        default: return "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }
}
