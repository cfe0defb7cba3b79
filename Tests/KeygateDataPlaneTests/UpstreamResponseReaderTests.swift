@testable import KeygateDataPlane
import NIOCore
import Testing

/// The gateway's reader of upstream response heads: strict, and the framing RFC 9112 section 6.3 gives.
struct UpstreamResponseReaderTests {
    func head(_ text: String) -> UpstreamResponseHead? {
        UpstreamResponseReader.parseHead(ByteBuffer(string: text))
    }

    func framing(_ text: String, head requestWasHead: Bool = false) -> UpstreamResponseReader.Framing? {
        head(text).flatMap { UpstreamResponseReader.framing($0, requestWasHead: requestWasHead) }
    }

    @Test func readsTheStatusReasonFieldsAndConnection() throws {
        let parsed = try #require(head("HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close, X-Hop\r\nX-A:  b \r\n\r\n"))
        #expect(parsed.status == 404 && !parsed.keepAlive && parsed.connectionTokens == ["x-hop"])
        let text = { (range: Range<Int>) in String(decoding: parsed.bytes.readableBytesView[range], as: UTF8.self) }
        #expect(text(parsed.reason) == "Not Found")
        #expect(parsed.fields.map { "\(text($0.name))=\(text($0.value))" } == ["Content-Length=3", "Connection=close, X-Hop", "X-A=b"])
        #expect(head("HTTP/1.0 200 OK\r\n\r\n")?.keepAlive == false)
        #expect(head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n")?.keepAlive == true)
        #expect(head("HTTP/1.1 204\r\n\r\n")?.status == 204, "a status line without a reason")
    }

    @Test(arguments: ["HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 20x OK\r\n\r\n", "HTTP/1.1 099 Low\r\n\r\n",
                      "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n", "HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n", "HTTP/1.1 200 OK\r\nX-A: b\nX-B: c\r\n\r\n",
                      "HTTP/1.1 200 OK\r\nX-A: b\u{1}\r\n\r\n", "HTTP/1.1 200 OK\r\n: b\r\n\r\n"])
    func malformedHeadsAreRefused(text: String) {
        #expect(head(text) == nil, "\(text.debugDescription)")
    }

    @Test func framingFollowsRFC9112() {
        #expect(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n") == .length(5))
        #expect(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head: true) == UpstreamResponseReader.Framing.none)
        #expect(framing("HTTP/1.1 204 No Content\r\n\r\n") == UpstreamResponseReader.Framing.none)
        #expect(framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n") == UpstreamResponseReader.Framing.none)
        #expect(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") == .chunked)
        #expect(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 5\r\n\r\n") == .chunked, "chunked wins")
        #expect(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n") == .untilClose)
        #expect(framing("HTTP/1.1 200 OK\r\n\r\n") == .untilClose)
        #expect(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n") == .length(5))
        #expect(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n") == nil, "two lengths")
        #expect(framing("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n") == nil)
        #expect(framing("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n") == nil)
    }

    @Test func theHeadEndsAtTheFirstBlankLine() {
        #expect(UpstreamResponseReader.headEnd(ByteBuffer(string: "HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody")) == 25)
        #expect(UpstreamResponseReader.headEnd(ByteBuffer(string: "HTTP/1.1 200 OK\r\nA: b\r\n")) == nil)
    }
}
