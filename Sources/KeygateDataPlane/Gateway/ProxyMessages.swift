import KeygateCore
import NIOCore
import NIOHTTP1

/// How a request and a response are rewritten on their way through the gateway (RFC 9110 7.6).
enum ProxyMessages {
    /// Hop-by-hop fields (RFC 9110 7.6.1 and the older ones still sent): meant for one connection,
    /// never forwarded. Fields named in `Connection` are dropped as well.
    static let hopByHop: Set<String> = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                                        "upgrade", "proxy-authorization", "proxy-authenticate"]

    /// The request to send upstream, from the client's head (already checked by `HTTPRequestScanner`,
    /// so its lines are well formed): hop-by-hop fields, the key and every `X-Keygate-*` field the
    /// client sent are removed; `X-Forwarded-For` and `Forwarded` get the client's address appended and
    /// `X-Forwarded-Proto` says `http`. `addIdentity` then adds who the key belongs to.
    static func request(_ bytes: UnsafeRawBufferPointer, head: HTTPRequestScanner.Head, bodyLength: Int,
                        keyHeaders: [[UInt8]], removeAuthorization: Bool, client: SocketAddress?) -> HTTPRequestHead {
        let lines = UnsafeRawBufferPointer(rebasing: bytes[0..<head.length - 2]).split(separator: UInt8(ascii: "\n"))
        let requestLine = lines[0].dropLast() // CR
        let parts = requestLine.split(separator: UInt8(ascii: " "), maxSplits: 2)
        let method = HTTPMethod(rawValue: String(decoding: parts[0], as: UTF8.self))
        let uri = String(decoding: parts[1], as: UTF8.self)
        var fields: [(name: String, value: String)] = []
        var connectionTokens: Set<String> = []
        for line in lines.dropFirst() {
            let text = line.dropLast() // CR
            guard let colon = text.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let name = String(decoding: text[..<colon], as: UTF8.self)
            let value = String(decoding: text[(colon + 1)...], as: UTF8.self).trimmingWhitespace()
            let lowered = name.lowercased()
            if lowered == "connection" {
                for token in value.split(separator: ",") { connectionTokens.insert(token.trimmingWhitespace().lowercased()) }
            }
            fields.append((name, value))
        }
        var headers = HTTPHeaders()
        var forwardedFor: String?, forwarded: String?
        for (name, value) in fields {
            let lowered = name.lowercased()
            if hopByHop.contains(lowered) || connectionTokens.contains(lowered) { continue }
            if keyHeaders.contains(Array(lowered.utf8)) || (removeAuthorization && lowered == "authorization") { continue }
            if lowered.hasPrefix("x-keygate-") { continue } // identity is Keygate's to say
            switch lowered {
            case "content-length", "expect", "x-forwarded-proto": continue // set below; the body is already here
            case "x-forwarded-for": forwardedFor = forwardedFor.map { "\($0), \(value)" } ?? value
            case "forwarded": forwarded = forwarded.map { "\($0), \(value)" } ?? value
            default: headers.add(name: name, value: value)
            }
        }
        let address = client?.ipAddress ?? "unknown"
        headers.add(name: "X-Forwarded-For", value: forwardedFor.map { "\($0), \(address)" } ?? address)
        let node = address.contains(":") ? "\"[\(address)]\"" : address
        headers.add(name: "Forwarded", value: (forwarded.map { "\($0), " } ?? "") + "for=\(node);proto=http")
        headers.add(name: "X-Forwarded-Proto", value: "http")
        if bodyLength > 0 || ![.GET, .HEAD, .DELETE, .OPTIONS, .TRACE].contains(method) {
            headers.add(name: "Content-Length", value: String(bodyLength))
        }
        return HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)
    }

    /// The identity fields, as on forward auth's 200.
    static func addIdentity(_ verdict: Verdict, to headers: inout HTTPHeaders) {
        headers.add(name: "X-Keygate-User", value: verdict.principal.user)
        headers.add(name: "X-Keygate-Key-Id", value: verdict.keyID.description)
        headers.add(name: "X-Keygate-Scopes", value: verdict.principal.scopesHeader)
    }

    /// How the response body travels to the client.
    enum Framing: Equatable {
        /// No body (HEAD, 1xx, 204, 304).
        case none
        /// The upstream's `Content-Length`, passed through.
        case length
        /// Re-chunked: the upstream's length is unknown (chunked, or until it closes).
        case chunked
        /// Until the connection closes (an HTTP/1.0 client and an unknown length).
        case close
    }

    /// Writes the response head for the client: the upstream's status and end-to-end fields, the
    /// framing chosen for this client, and `Connection: close` when the connection ends after it.
    static func writeResponseHead(_ head: HTTPResponseHead, requestWasHead: Bool, clientHTTP11: Bool, close: Bool,
                                  into buffer: inout ByteBuffer) -> (Framing, close: Bool) {
        let status = head.status.code
        let noBody = requestWasHead || (100..<200).contains(status) || status == 204 || status == 304
        let length = head.headers.first(name: "content-length")
        let chunkedUpstream = head.headers["transfer-encoding"].contains { $0.lowercased().contains("chunked") }
        var framing: Framing
        if noBody { framing = .none } else if length != nil && !chunkedUpstream { framing = .length } else { framing = clientHTTP11 ? .chunked : .close }
        let closing = close || framing == .close
        buffer.writeString("HTTP/1.1 \(status) \(head.status.reasonPhrase)\r\n")
        var connectionTokens: Set<String> = []
        for value in head.headers["connection"] {
            for token in value.split(separator: ",") { connectionTokens.insert(token.trimmingWhitespace().lowercased()) }
        }
        for (name, value) in head.headers {
            let lowered = name.lowercased()
            if hopByHop.contains(lowered) || connectionTokens.contains(lowered) { continue }
            if lowered == "content-length" && framing != .length && !(noBody && !chunkedUpstream) { continue }
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        if framing == .chunked { buffer.writeStaticString("Transfer-Encoding: chunked\r\n") }
        if closing { buffer.writeStaticString("Connection: close\r\n") }
        buffer.writeStaticString("\r\n")
        return (framing, closing)
    }

    /// One piece of the body in the client's framing.
    static func writeBody(_ body: inout ByteBuffer, framing: Framing, into buffer: inout ByteBuffer) {
        guard body.readableBytes > 0 else { return }
        switch framing {
        case .none: return
        case .length, .close: buffer.writeBuffer(&body)
        case .chunked:
            buffer.writeString(String(body.readableBytes, radix: 16))
            buffer.writeStaticString("\r\n")
            buffer.writeBuffer(&body)
            buffer.writeStaticString("\r\n")
        }
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}
