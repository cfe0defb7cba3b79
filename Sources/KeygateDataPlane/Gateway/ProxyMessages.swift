import KeygateCore
import NIOCore
import NIOHTTP1

/// How a request and a response are rewritten on their way through the gateway (RFC 9110 7.6).
enum ProxyMessages {
    // Hop-by-hop fields (RFC 9110 7.6.1 and the older ones still sent) are meant for one connection
    // and never forwarded: Connection and the fields it names, Keep-Alive, Proxy-Connection, TE,
    // Trailer, Transfer-Encoding, Upgrade, Proxy-Authenticate, Proxy-Authorization.

    /// A request on its way upstream: its head as bytes (without the identity fields and the blank
    /// line, which `addIdentity` writes once the key is known), and what the gateway needs to know.
    struct UpstreamRequest {
        var method: HTTPMethod
        /// The target's path, without the query (for the route table).
        var path: String
        var bytes: ByteBuffer
    }

    /// The request to send upstream, from the client's head (already checked by `HTTPRequestScanner`,
    /// so its lines are well formed), written as bytes: the field lines the upstream may see are
    /// copied as they came; hop-by-hop fields, the key and every `X-Keygate-*` field the client sent
    /// are left out; `X-Forwarded-For` and `Forwarded` get the client's address appended,
    /// `X-Forwarded-Proto` says `http`, and `Content-Length` is the body's as forwarded.
    static func request(_ bytes: UnsafeRawBufferPointer, head: HTTPRequestScanner.Head, bodyLength: Int, keyHeaders: [[UInt8]],
                        removeAuthorization: Bool, client: SocketAddress?, defaultHost: String, allocator: ByteBufferAllocator) -> UpstreamRequest {
        // Byte offsets of each field line's name and (trimmed) value: one pass, no String until kept.
        var fields: [(name: Range<Int>, value: Range<Int>)] = []
        var index = 0
        while index < head.length && bytes[index] != lf { index += 1 }
        let requestLine = 0..<max(0, index - 1)
        index += 1
        while index + 1 < head.length, bytes[index] != cr {
            let start = index
            while bytes[index] != UInt8(ascii: ":") { index += 1 }
            let name = start..<index
            index += 1
            while bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\t") { index += 1 }
            let valueStart = index
            while bytes[index] != cr { index += 1 }
            var valueEnd = index
            while valueEnd > valueStart && (bytes[valueEnd - 1] == UInt8(ascii: " ") || bytes[valueEnd - 1] == UInt8(ascii: "\t")) { valueEnd -= 1 }
            fields.append((name, valueStart..<valueEnd))
            index += 2
        }
        let slice = { (range: Range<Int>) in UnsafeRawBufferPointer(rebasing: bytes[range]) }
        let line = slice(requestLine)
        let firstSpace = line.firstIndex(of: UInt8(ascii: " ")) ?? 0
        let secondSpace = line[(firstSpace + 1)...].firstIndex(of: UInt8(ascii: " ")) ?? line.count
        let method = HTTPMethod(rawValue: String(decoding: UnsafeRawBufferPointer(rebasing: line[..<firstSpace]), as: UTF8.self))
        let target = UnsafeRawBufferPointer(rebasing: line[(firstSpace + 1)..<secondSpace])
        let path = String(decoding: UnsafeRawBufferPointer(rebasing: target[..<(target.firstIndex(of: UInt8(ascii: "?")) ?? target.count)]),
                          as: UTF8.self)

        // Fields named in Connection are hop-by-hop too (rare: only then are names compared as text).
        var connectionTokens: [String] = []
        for field in fields where named(bytes, field.name, "connection") {
            for token in String(decoding: slice(field.value), as: UTF8.self).split(separator: ",") {
                let trimmed = token.trimmingWhitespace().lowercased()
                if !trimmed.isEmpty && trimmed != "close" && trimmed != "keep-alive" { connectionTokens.append(trimmed) }
            }
        }
        var out = allocator.buffer(capacity: head.length + 256)
        out.writeBytes(UnsafeRawBufferPointer(rebasing: line[..<secondSpace])) // METHOD SP target
        out.writeStaticString(" HTTP/1.1\r\n")
        var forwardedFor: [Range<Int>] = [], forwarded: [Range<Int>] = []
        var sawHost = false
        for (name, value) in fields {
            if name.count == 4 && named(bytes, name, "host") { sawHost = true }
            if isHopByHop(bytes, name) || isDropped(bytes, name, keyHeaders: keyHeaders, removeAuthorization: removeAuthorization) { continue }
            if named(bytes, name, "x-forwarded-for") { forwardedFor.append(value); continue }
            if named(bytes, name, "forwarded") { forwarded.append(value); continue }
            if !connectionTokens.isEmpty && connectionTokens.contains(String(decoding: slice(name), as: UTF8.self).lowercased()) { continue }
            out.writeBytes(slice(name))
            out.writeStaticString(": ")
            out.writeBytes(slice(value))
            out.writeStaticString("\r\n")
        }
        if !sawHost { // an HTTP/1.0 client may send none; HTTP/1.1 upstream needs one (nginx sends its upstream's name)
            out.writeStaticString("Host: ")
            out.writeString(defaultHost)
            out.writeStaticString("\r\n")
        }
        let address = client?.ipAddress ?? "unknown"
        out.writeStaticString("X-Forwarded-For: ")
        for value in forwardedFor {
            out.writeBytes(slice(value))
            out.writeStaticString(", ")
        }
        out.writeString(address)
        out.writeStaticString("\r\nForwarded: ")
        for value in forwarded {
            out.writeBytes(slice(value))
            out.writeStaticString(", ")
        }
        out.writeStaticString("for=")
        out.writeString(address.contains(":") ? "\"[\(address)]\"" : address)
        out.writeStaticString(";proto=http\r\nX-Forwarded-Proto: http\r\n")
        if bodyLength > 0 || ![.GET, .HEAD, .DELETE, .OPTIONS, .TRACE].contains(method) {
            out.writeStaticString("Content-Length: ")
            out.writeString(String(bodyLength))
            out.writeStaticString("\r\n")
        }
        return UpstreamRequest(method: method, path: path, bytes: out)
    }

    /// The identity fields, as on forward auth's 200, and the blank line that ends the head.
    static func addIdentity(_ verdict: Verdict, to request: inout UpstreamRequest) {
        request.bytes.writeStaticString("X-Keygate-Key-Id: ")
        verdict.keyID.write(into: &request.bytes)
        request.bytes.writeBytes(verdict.principal.identityHeaders) // CRLF X-Keygate-User: .. CRLF X-Keygate-Scopes: .. CRLF
        request.bytes.writeStaticString("\r\n")
    }

    private static let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n")

    /// A field name compared with a lowercase constant, as the request scanner compares them.
    private static func named(_ bytes: UnsafeRawBufferPointer, _ name: Range<Int>, _ lowercased: StaticString) -> Bool {
        HTTPRequestScanner.equalsIgnoringCase(bytes, name, lowercased)
    }

    private static func isHopByHop(_ bytes: UnsafeRawBufferPointer, _ name: Range<Int>) -> Bool {
        switch name.count {
        case 2: return named(bytes, name, "te")
        case 7: return named(bytes, name, "trailer") || named(bytes, name, "upgrade")
        case 10: return named(bytes, name, "connection") || named(bytes, name, "keep-alive")
        case 16: return named(bytes, name, "proxy-connection")
        case 17: return named(bytes, name, "transfer-encoding")
        case 18: return named(bytes, name, "proxy-authenticate")
        case 19: return named(bytes, name, "proxy-authorization")
        default: return false
        }
    }

    /// The key, `X-Keygate-*` (identity is Keygate's to say), and what is set anew below.
    private static func isDropped(_ bytes: UnsafeRawBufferPointer, _ name: Range<Int>, keyHeaders: [[UInt8]],
                                  removeAuthorization: Bool) -> Bool {
        if name.count > 10 && named(bytes, name.lowerBound..<name.lowerBound + 10, "x-keygate-") { return true }
        for key in keyHeaders where HTTPRequestScanner.equalsIgnoringCase(bytes, name, key) { return true }
        switch name.count {
        case 6: return named(bytes, name, "expect") // the body is already here
        case 13: return removeAuthorization && named(bytes, name, "authorization")
        case 14: return named(bytes, name, "content-length") // set from the body forwarded
        case 17: return named(bytes, name, "x-forwarded-proto")
        default: return false
        }
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

    /// Writes the response head for the client: the upstream's status and end-to-end field lines as
    /// they came, the framing chosen for this client, Keygate's own fields (`extraFields`), and
    /// `Connection: close` when the connection ends after it.
    static func writeResponseHead(_ head: UpstreamResponseHead, clientHTTP11: Bool, close: Bool, extraFields: ByteBuffer? = nil,
                                  into buffer: inout ByteBuffer) -> (Framing, close: Bool) {
        let framing: Framing
        switch head.framing {
        case .none: framing = .none
        case .length: framing = .length
        case .chunked, .untilClose: framing = clientHTTP11 ? .chunked : .close // the reader hands over de-chunked data
        }
        let closing = close || framing == .close
        buffer.writeStaticString("HTTP/1.1 ")
        buffer.writeString(String(head.status))
        buffer.writeStaticString(" ")
        head.bytes.withUnsafeReadableBytes { bytes in
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[head.reason]))
            buffer.writeStaticString("\r\n")
            for (name, value) in head.fields {
                if isHopByHop(bytes, name) { continue }
                if !head.connectionTokens.isEmpty,
                   head.connectionTokens.contains(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[name]), as: UTF8.self).lowercased()) { continue }
                // A length stays when the body passes as it is, and on a bodiless answer (HEAD, 304) it describes.
                if named(bytes, name, "content-length") && framing != .length && head.framing != .none { continue }
                if extraFields != nil && (named(bytes, name, "ratelimit") || named(bytes, name, "ratelimit-policy")) {
                    continue // Keygate's own
                }
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[name]))
                buffer.writeStaticString(": ")
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[value]))
                buffer.writeStaticString("\r\n")
            }
        }
        if framing == .chunked { buffer.writeStaticString("Transfer-Encoding: chunked\r\n") }
        if var extraFields { buffer.writeBuffer(&extraFields) }
        if closing { buffer.writeStaticString("Connection: close\r\n") }
        buffer.writeStaticString("\r\n")
        return (framing, closing)
    }

}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        guard let first = firstIndex(where: { $0 != " " && $0 != "\t" }),
              let last = lastIndex(where: { $0 != " " && $0 != "\t" }) else { return "" }
        return String(self[first...last])
    }
}
