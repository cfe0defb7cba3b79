import NIOCore

/// A response head from an upstream server: its bytes and where each field line's name and value
/// lie in them, plus what framing and connection reuse follow from it.
struct UpstreamResponseHead {
    var bytes: ByteBuffer
    var status: Int
    /// The reason phrase, after the status code (may be empty).
    var reason: Range<Int>
    var fields: [(name: Range<Int>, value: Range<Int>)]
    var keepAlive: Bool
    /// Lowercased names listed in `Connection` (besides close and keep-alive): hop-by-hop too.
    var connectionTokens: [String]
    /// How the body follows (set by the reader once it knows the request's method).
    var framing = UpstreamResponseReader.Framing.none
}

/// One part of an upstream response, as the reader hands it to the exchange.
enum UpstreamResponsePart {
    case head(UpstreamResponseHead)
    /// Body data (de-chunked: chunk framing and trailers stay on the upstream's side).
    case body(ByteBuffer)
    /// The response is whole; `reusable` when the connection may carry another request.
    case end(reusable: Bool)
}

/// The response side of an upstream connection, read straight from the socket's bytes (no HTTP
/// codec in the pipeline): strict like the request scanner, because what it accepts goes to a client.
/// Informational (1xx) responses are skipped; 101, a malformed head, a bad chunk, or two different
/// `Content-Length`s close the connection, which the exchange turns into 502 (or a truncated
/// response, once part of it was sent). A connection with no exchange (idle) that sends anything or
/// closes is dropped.
final class UpstreamResponseReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    weak var pool: UpstreamPool?
    weak var connection: UpstreamConnection?
    var exchange: GatewayExchange?

    private enum State {
        case awaitingHead
        case length(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case untilClose
        case complete
    }

    private var state = State.complete
    private var requestWasHead = false
    private var pending: ByteBuffer?
    private var keepAlive = true

    static let maxHeadBytes = 64 * 1024
    private static let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n")

    /// A request was sent on this connection: read its response next.
    func expectResponse(toHead: Bool) {
        state = .awaitingHead
        requestWasHead = toHead
        pending = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        guard exchange != nil else {
            context.close(promise: nil) // an idle connection has nothing to say
            return
        }
        if pending == nil || pending!.readableBytes == 0 {
            pending = bytes
        } else {
            pending!.writeBuffer(&bytes)
        }
        guard process() else {
            pending = nil
            context.close(promise: nil) // malformed: channelInactive tells the exchange
            return
        }
        if let buffer = pending, buffer.readableBytes == 0 { pending = nil }
    }

    /// Works through the pending bytes; false when they break the protocol.
    private func process() -> Bool {
        while var buffer = pending, buffer.readableBytes > 0 {
            switch state {
            case .complete:
                return false // bytes after a whole response, before another request
            case .awaitingHead:
                guard let end = Self.headEnd(buffer) else { return buffer.readableBytes <= Self.maxHeadBytes }
                guard end <= Self.maxHeadBytes, var head = Self.parseHead(buffer.readSlice(length: end)!) else { return false }
                pending = buffer
                if (100..<200).contains(head.status) {
                    guard head.status != 101 else { return false } // no upgrade was asked for
                    continue // informational: the final response follows
                }
                guard let framing = Self.framing(head, requestWasHead: requestWasHead) else { return false }
                head.framing = framing
                keepAlive = head.keepAlive
                exchange?.upstreamSent(.head(head))
                switch framing {
                case .none: finishResponse()
                case .length(let count): if count == 0 { finishResponse() } else { state = .length(remaining: count) }
                case .chunked: state = .chunkSize
                case .untilClose:
                    state = .untilClose
                    keepAlive = false
                }
            case .length(let remaining):
                let count = min(remaining, buffer.readableBytes)
                let piece = buffer.readSlice(length: count)!
                pending = buffer
                exchange?.upstreamSent(.body(piece))
                if remaining == count { finishResponse() } else { state = .length(remaining: remaining - count) }
            case .untilClose:
                let piece = buffer.readSlice(length: buffer.readableBytes)!
                pending = buffer
                exchange?.upstreamSent(.body(piece))
            case .chunkSize:
                guard let line = Self.line(buffer, limit: 1024) else { return buffer.readableBytes <= 1024 }
                guard let size = Self.chunkSize(buffer, line) else { return false }
                buffer.moveReaderIndex(forwardBy: line.count + 2)
                pending = buffer
                state = size == 0 ? .trailers : .chunkData(remaining: size)
            case .chunkData(let remaining):
                let count = min(remaining, buffer.readableBytes)
                let piece = buffer.readSlice(length: count)!
                pending = buffer
                exchange?.upstreamSent(.body(piece))
                state = remaining == count ? .chunkDataEnd : .chunkData(remaining: remaining - count)
            case .chunkDataEnd:
                guard buffer.readableBytes >= 2 else { return true }
                guard buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == Self.cr,
                      buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) == Self.lf else { return false }
                buffer.moveReaderIndex(forwardBy: 2)
                pending = buffer
                state = .chunkSize
            case .trailers: // dropped: only an empty line ends them
                guard let line = Self.line(buffer, limit: 8 * 1024) else { return buffer.readableBytes <= 8 * 1024 }
                buffer.moveReaderIndex(forwardBy: line.count + 2)
                pending = buffer
                if line.isEmpty { finishResponse() }
            }
        }
        return true
    }

    private func finishResponse() {
        state = .complete
        let leftover = (pending?.readableBytes ?? 0) > 0
        exchange?.upstreamSent(.end(reusable: keepAlive && !leftover))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if let exchange {
            exchange.upstreamReadComplete()
        } else {
            context.read() // idle: keep one read pending, to notice the server closing it
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let connection { pool?.remove(connection) }
        if case .untilClose = state, let exchange {
            state = .complete
            exchange.upstreamSent(.end(reusable: false)) // the close is the end of such a body
        } else {
            exchange?.upstreamFailed()
        }
        exchange = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil) // a reset: channelInactive tells the exchange
    }

    // MARK: parsing

    enum Framing: Equatable { case none, length(Int), chunked, untilClose }

    /// RFC 9112 6.3: no body after HEAD, 204 or 304; chunked wins over a length; a length; else the
    /// body runs until the connection closes. Nil for conflicting or malformed lengths.
    static func framing(_ head: UpstreamResponseHead, requestWasHead: Bool) -> Framing? {
        if requestWasHead || head.status == 204 || head.status == 304 { return Framing.none }
        var length: Int?, chunked = false, transferEncoding = false
        for (name, value) in head.fields {
            if equalsIgnoringCase(head.bytes, name, "transfer-encoding") {
                transferEncoding = true
                let text = String(decoding: head.bytes.readableBytesView[value], as: UTF8.self).lowercased()
                chunked = text.split(separator: ",").last.map { $0.trimmingWhitespace() == "chunked" } ?? false
            } else if equalsIgnoringCase(head.bytes, name, "content-length") {
                guard !value.isEmpty, value.count <= 18,
                      let parsed = Int(String(decoding: head.bytes.readableBytesView[value], as: UTF8.self)), parsed >= 0 else { return nil }
                if let length, length != parsed { return nil }
                length = parsed
            }
        }
        if transferEncoding { return chunked ? .chunked : .untilClose }
        if let length { return .length(length) }
        return .untilClose
    }

    /// Where the head ends (after its blank line), relative to the reader index; nil while incomplete.
    static func headEnd(_ buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            guard bytes.count >= 4 else { return nil }
            var index = 3
            while index < bytes.count {
                if bytes[index] == lf && bytes[index - 1] == cr && bytes[index - 2] == lf && bytes[index - 3] == cr { return index + 1 }
                index += 1
            }
            return nil
        }
    }

    /// A line's bytes before its CRLF (relative to the reader index); nil while incomplete or too long.
    private static func line(_ buffer: ByteBuffer, limit: Int) -> Range<Int>? {
        buffer.withUnsafeReadableBytes { bytes -> Range<Int>? in
            var index = 0
            while index + 1 < bytes.count && index <= limit {
                if bytes[index] == cr && bytes[index + 1] == lf { return 0..<index }
                index += 1
            }
            return nil
        }
    }

    /// A chunk-size line: hex digits, then optional extensions after `;`.
    private static func chunkSize(_ buffer: ByteBuffer, _ line: Range<Int>) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            var size = 0, digits = 0, index = line.lowerBound
            while index < line.upperBound, let value = HTTPRequestScanner.hexValue(bytes[index]) {
                size = size * 16 + value
                digits += 1
                guard digits <= 15 else { return nil }
                index += 1
            }
            guard digits > 0, index == line.upperBound || bytes[index] == UInt8(ascii: ";") || bytes[index] == UInt8(ascii: " ")
                    || bytes[index] == UInt8(ascii: "\t") else { return nil }
            return size
        }
    }

    /// The status line and field lines, strictly: `HTTP/1.x NNN reason`, then `name: value` lines
    /// with CRLF, no whitespace before a colon, no obsolete folding, no control characters.
    static func parseHead(_ head: ByteBuffer) -> UpstreamResponseHead? {
        head.withUnsafeReadableBytes { bytes -> UpstreamResponseHead? in
            let count = bytes.count - 2 // without the blank line's CRLF
            guard count >= 14 else { return nil }
            guard bytes[0] == UInt8(ascii: "H"), bytes[1] == UInt8(ascii: "T"), bytes[2] == UInt8(ascii: "T"), bytes[3] == UInt8(ascii: "P"),
                  bytes[4] == UInt8(ascii: "/"), bytes[5] == UInt8(ascii: "1"), bytes[6] == UInt8(ascii: "."),
                  bytes[7] == UInt8(ascii: "0") || bytes[7] == UInt8(ascii: "1"), bytes[8] == UInt8(ascii: " ") else { return nil }
            let http11 = bytes[7] == UInt8(ascii: "1")
            var status = 0
            for index in 9..<12 {
                guard bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") else { return nil }
                status = status * 10 + Int(bytes[index] - UInt8(ascii: "0"))
            }
            guard status >= 100 else { return nil }
            var index = 12
            var reasonStart = 12
            if bytes[index] == UInt8(ascii: " ") {
                index += 1
                reasonStart = index
            } else {
                guard bytes[index] == cr else { return nil } // a fourth digit, or anything but the reason
            }
            while index < count && bytes[index] != cr {
                guard bytes[index] >= 0x20 || bytes[index] == 0x09, bytes[index] != 0x7F else { return nil }
                index += 1
            }
            guard index + 1 < bytes.count, bytes[index] == cr, bytes[index + 1] == lf else { return nil }
            let reason = reasonStart..<index
            index += 2
            var fields: [(name: Range<Int>, value: Range<Int>)] = []
            var keepAlive = http11
            var tokens: [String] = []
            while index < count {
                let nameStart = index
                while index < count && HTTPRequestScanner.isTokenCharacter(bytes[index]) { index += 1 }
                guard index > nameStart, index < count, bytes[index] == UInt8(ascii: ":") else { return nil }
                let name = nameStart..<index
                index += 1
                while index < count && (bytes[index] == UInt8(ascii: " ") || bytes[index] == 0x09) { index += 1 }
                let valueStart = index
                while index < count && bytes[index] != cr {
                    guard bytes[index] >= 0x20 || bytes[index] == 0x09, bytes[index] != 0x7F else { return nil }
                    index += 1
                }
                guard index + 1 < bytes.count, bytes[index] == cr, bytes[index + 1] == lf else { return nil }
                var valueEnd = index
                while valueEnd > valueStart && (bytes[valueEnd - 1] == UInt8(ascii: " ") || bytes[valueEnd - 1] == 0x09) { valueEnd -= 1 }
                fields.append((name, valueStart..<valueEnd))
                index += 2
                if name.count == 10 && HTTPRequestScanner.equalsIgnoringCase(bytes, name, "connection") {
                    for token in String(decoding: UnsafeRawBufferPointer(rebasing: bytes[valueStart..<valueEnd]), as: UTF8.self).split(separator: ",") {
                        let lowered = token.trimmingWhitespace().lowercased()
                        if lowered == "close" { keepAlive = false } else if lowered == "keep-alive" { keepAlive = true }
                        else if !lowered.isEmpty { tokens.append(lowered) }
                    }
                }
            }
            return UpstreamResponseHead(bytes: head, status: status, reason: reason, fields: fields, keepAlive: keepAlive,
                                        connectionTokens: tokens)
        }
    }


    static func equalsIgnoringCase(_ buffer: ByteBuffer, _ range: Range<Int>, _ lowercased: StaticString) -> Bool {
        buffer.withUnsafeReadableBytes { HTTPRequestScanner.equalsIgnoringCase($0, range, lowercased) }
    }
}
