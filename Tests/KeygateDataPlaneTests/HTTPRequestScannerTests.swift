import Foundation
import Testing
import KeygateCore
@testable import KeygateDataPlane

@Suite struct HTTPRequestScannerTests {
    let scanner = HTTPRequestScanner(keyHeaders: ["X-API-Key"], acceptBearer: true, keyFormat: try! KeyFormat(prefix: "kg"), maxHeaderBytes: 8192)

    /// Scans `text`; an HTTP/1.1 request without a Host line gets `Host: x` after its request line
    /// (every request needs one, and most cases here are about something else).
    func scan(_ text: String, addingHost: Bool = true) -> HTTPRequestScanner.Outcome {
        Array(prepared(text, addingHost: addingHost).utf8).withUnsafeBytes { scanner.scan($0) }
    }

    func prepared(_ text: String, addingHost: Bool = true) -> String {
        var text = text
        if addingHost, text.contains(" HTTP/1.1\r\n"), !text.lowercased().contains("\r\nhost:"),
           let lineEnd = text.range(of: "\r\n") {
            text.insert(contentsOf: "Host: x\r\n", at: lineEnd.upperBound)
        }
        return text
    }

    func head(_ text: String, addingHost: Bool = true) -> HTTPRequestScanner.Head? {
        if case .head(let head) = scan(text, addingHost: addingHost) { return head }
        return nil
    }

    func value(_ text: String, _ range: Range<Int>?) -> String? {
        range.map { String(decoding: Array(prepared(text).utf8)[$0], as: UTF8.self) }
    }

    @Test func readsTheKeyTheRouteAndKeepAlive() throws {
        let request = "GET /auth/orders?page=2 HTTP/1.1\r\nHost: x\r\nx-api-key:  kg_abc \r\nX-Request-Id: r1\r\n\r\n"
        let parsed = try #require(head(request))
        #expect(parsed.route == .forwardAuth && parsed.method == .get && parsed.keepAlive)
        #expect(parsed.keyCount == 1 && value(request, parsed.key) == "kg_abc", "case-insensitive name, trimmed value")
        #expect(!parsed.keyInURL && value(request, parsed.requestID) == "r1")
        #expect(parsed.length == request.utf8.count)
    }

    @Test func connectionHandling() throws {
        #expect(head("GET /auth HTTP/1.1\r\nConnection: close\r\n\r\n")?.keepAlive == false)
        #expect(head("GET /auth HTTP/1.0\r\n\r\n")?.keepAlive == false)
        #expect(head("GET /auth HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")?.keepAlive == true)
    }

    @Test func countsEveryKeyCarrier() throws {
        #expect(head("GET /auth HTTP/1.1\r\nX-API-Key: a\r\nX-Api-Key: b\r\n\r\n")?.keyCount == 2)
        #expect(head("GET /auth HTTP/1.1\r\nX-API-Key: a\r\nAuthorization: Bearer b\r\n\r\n")?.keyCount == 2)
        let bearer = "GET /auth HTTP/1.1\r\nAuthorization: bearer kg_x\r\n\r\n"
        #expect(value(bearer, head(bearer)?.key) == "kg_x")
        #expect(head("GET /auth?api_key=z HTTP/1.1\r\n\r\n")?.keyInURL == true)
        #expect(head("GET /auth?q=kg_secret HTTP/1.1\r\n\r\n")?.keyInURL == true)
        #expect(head("GET /auth?q=1 HTTP/1.1\r\n\r\n")?.keyInURL == false)
    }

    @Test func routes() {
        #expect(head("POST /v1/verify HTTP/1.1\r\nContent-Length: 2\r\n\r\n")?.route == .verify)
        #expect(head("POST /v1/verify HTTP/1.1\r\nContent-Length: 2\r\n\r\n")?.contentLength == 2)
        #expect(head("GET /v1/verify HTTP/1.1\r\n\r\n")?.route == .methodNotAllowed(allow: .post))
        #expect(head("TRACE /health/live HTTP/1.1\r\n\r\n")?.route == .methodNotAllowed(allow: .getAndHead))
        #expect(head("HEAD /health/ready HTTP/1.1\r\n\r\n")?.route == .ready)
        #expect(head("GET /health/ready HTTP/1.1\r\n\r\n")?.route == .ready)
        #expect(head("HEAD /auth HTTP/1.1\r\n\r\n")?.method == .head)
        #expect(head("GET /authx HTTP/1.1\r\n\r\n")?.route == .notFound)
    }

    @Test(arguments: [
        "GET /auth HTTP/1.1\nHost: x\n\n",                          // bare LF
        "GET /auth HTTP/1.1\r\nHost : x\r\n\r\n",                   // space before the colon
        "GET /auth HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",         // obsolete line folding
        "GET /auth HTTP/1.1\r\nX-API-Key: a\u{1}b\r\n\r\n",         // control character
        "GET /auth HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "GET /auth HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",  // TE with CL: smuggling
        "POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",                 // only a lone chunked
        "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /x HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "GET auth HTTP/1.1\r\n\r\n",                                // not origin-form
        "GET /auth HTTP/2.0\r\n\r\n",
        "GE(T /auth HTTP/1.1\r\n\r\n",
        "GET  /auth HTTP/1.1\r\n\r\n",
        "NOT HTTP AT ALL\r\n\r\n",
    ])
    func refusesMalformedHeads(request: String) {
        if case .malformed = scan(request) {} else { Issue.record("accepted: \(request.debugDescription)") }
    }

    @Test func aLoneChunkedCodingIsMarkedForTheGateway() {
        #expect(head("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")?.chunked == true)
        #expect(head("POST /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")?.chunked == true)
        #expect(head("POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n")?.chunked == false)
    }

    @Test(arguments: [
        ("5\r\nhello\r\n0\r\n\r\n", "hello"),
        ("5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
        ("A\r\n0123456789\r\n0\r\nX-Trailer: dropped\r\n\r\n", "0123456789"),
        ("0\r\n\r\n", ""),
    ])
    func chunkedBodiesDecode(encoded: String, decoded: String) {
        let bytes = Array(("HEAD" + encoded + "NEXT").utf8)
        let outcome = bytes.withUnsafeBytes { ChunkedBody.decode($0, from: 4, limit: 100) }
        guard case .complete(let pieces, let end) = outcome else { Issue.record("\(encoded.debugDescription): \(outcome)"); return }
        #expect(String(decoding: pieces.flatMap { bytes[$0] }, as: UTF8.self) == decoded)
        #expect(end == bytes.count - 4, "the next request starts right after")
    }

    @Test(arguments: ["5\r\nhel", "5\r\nhello\r\n", "5\r\nhello\r\n0\r\n", "5", ""])
    func partialChunkedBodiesWait(encoded: String) {
        #expect(Array(encoded.utf8).withUnsafeBytes { ChunkedBody.decode($0, from: 0, limit: 100) } == .incomplete)
    }

    @Test(arguments: ["x\r\n", "-5\r\nhello\r\n0\r\n\r\n", " 5\r\nhello\r\n0\r\n\r\n", "5\nhello\n0\n\n",
                      "5\r\nhelloXX0\r\n\r\n", "123456789\r\n", "5\r\nhello\r\n0\r\nbad\nline\r\n\r\n"])
    func malformedChunkedBodiesAreRefused(encoded: String) {
        #expect(Array(encoded.utf8).withUnsafeBytes { ChunkedBody.decode($0, from: 0, limit: 100) } == .malformed, "\(encoded.debugDescription)")
    }

    @Test func aChunkedBodyOverTheLimitIsTooLarge() {
        #expect(Array("65\r\n".utf8).withUnsafeBytes { ChunkedBody.decode($0, from: 0, limit: 100) } == .tooLarge)
    }

    @Test func exactlyOneHostInHTTP11() {
        if case .malformed = scan("GET /auth HTTP/1.1\r\n\r\n", addingHost: false) {} else { Issue.record("no Host accepted") }
        if case .malformed = scan("GET /auth HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n") {} else { Issue.record("two Hosts accepted") }
        if case .malformed = scan("GET /auth HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n") {} else { Issue.record("two Hosts in 1.0") }
        #expect(head("GET /auth HTTP/1.0\r\n\r\n", addingHost: false) != nil, "HTTP/1.0 needs no Host")
        #expect(head("GET /auth HTTP/1.1\r\nHOST: a\r\n\r\n", addingHost: false) != nil)
    }

    @Test func aKeyAnywhereInTheTargetIsFound() throws {
        let key = try KeyFormat(prefix: "kg").generate()
        let encoded = key.utf8.map { String(format: "%%%02x", $0) }.joined()
        for target in ["/auth?\(key)", "/auth/\(key)", "/auth/a\(key)b", "/auth?x=%2F\(key)", "/auth/\(encoded)",
                       "/auth/\(encoded.replacingOccurrences(of: "%", with: "%25"))", "/v1/verify?\(key)"] {
            #expect(head("GET \(target) HTTP/1.1\r\n\r\n")?.keyInURL == true, "\(target)")
        }
        let almost = String(key.dropLast()) + (key.last == "a" ? "b" : "a") // checksum broken: not a key
        for target in ["/auth", "/auth/kg_docs", "/auth/\(almost)", "/auth?page=2&sort=kg", "/auth/%zz%4"] {
            #expect(head("GET \(target) HTTP/1.1\r\n\r\n")?.keyInURL == false, "\(target)")
        }
    }

    @Test func waitsForAWholeHeadAndCapsItsSize() {
        if case .incomplete = scan("GET /auth HTTP/1.1\r\nX-API-Key: a\r\n") {} else { Issue.record("expected incomplete") }
        let huge = "GET /auth HTTP/1.1\r\nX-Pad: " + String(repeating: "a", count: 9000)
        if case .tooLarge = scan(huge) {} else { Issue.record("expected tooLarge") }
    }

    @Test func everyPrefixOfAHeadIsIncomplete() {
        let request = Array("POST /v1/verify?x=1 HTTP/1.1\r\nHost: x\r\nX-API-Key: \tkg_a b \r\nContent-Length: 2\r\n\r\n".utf8)
        for length in 0..<request.count {
            let outcome = request[..<length].withUnsafeBytes { scanner.scan($0) }
            if case .incomplete = outcome {} else { Issue.record("prefix of \(length) bytes: \(outcome)") }
        }
        #expect(request.withUnsafeBytes { scanner.scan($0) }.isHead)
    }

    @Test func tokenCharactersAreRFC9110s() {
        let tchar = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for byte in UInt8.min...UInt8.max {
            #expect(HTTPRequestScanner.isTokenCharacter(byte) == tchar.contains(byte), "byte \(byte)")
        }
    }

    @Test func neverTrapsOnRandomBytes() async {
        var generator = SystemRandomNumberGenerator()
        let pieces = ["GET ", "/auth", " HTTP/1.1", "\r\n", "\r\n\r\n", ":", " ", "X-API-Key", "Content-Length: ", "9", "?", "kg_", "%", "Host: x\r\n"]
        for round in 0..<20_000 {
            if round % 1_000 == 0 { await Task.yield() } // CPU-bound: leave the shared threads to the other tests
            var bytes: [UInt8] = []
            for _ in 0..<Int.random(in: 0...12, using: &generator) {
                if Bool.random(using: &generator) {
                    bytes += Array(pieces.randomElement(using: &generator)!.utf8)
                } else {
                    bytes += (0..<Int.random(in: 1...6, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
                }
            }
            _ = bytes.withUnsafeBytes { scanner.scan($0) }
        }
    }
}

extension HTTPRequestScanner.Outcome {
    var isHead: Bool { if case .head = self { return true } else { return false } }
}
