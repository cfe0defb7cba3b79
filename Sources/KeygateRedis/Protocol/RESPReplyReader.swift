internal import CHiredis
import NIOCore

/// Parses RESP2 replies with hiredis's reader, guarded against hostile or broken servers.
///
/// hiredis 0.14 accepts any array length and buffers bulk strings without limit; this wrapper refuses
/// arrays longer than `maxArrayElements` and replies that need more than `maxReplyBytes` bytes before
/// they complete. Every reader error is sticky: after the first one the reader must be dropped, and so
/// must the connection it served.
final class RESPReplyReader {
    private let reader: UnsafeMutablePointer<redisReader>
    private let maxReplyBytes: Int
    /// Bytes fed since the last complete reply (an upper bound on the reply being assembled).
    @exclusivity(unchecked) private var bytesInCurrentReply = 0 // event-loop confined, hot
    private var failed = false

    init(maxArrayElements: Int, maxReplyBytes: Int) {
        guard let reader = keygate_reader_create(Int64(maxArrayElements)) else {
            fatalError("hiredis could not allocate a reader (out of memory)")
        }
        self.reader = reader
        self.maxReplyBytes = maxReplyBytes
    }

    deinit {
        keygate_reader_free(reader)
    }

    /// Appends bytes received from the socket.
    func feed(_ buffer: ByteBuffer) throws(RedisError) {
        if failed { throw RedisError.protocolError("reader already failed") }
        bytesInCurrentReply += buffer.readableBytes
        if bytesInCurrentReply > maxReplyBytes {
            failed = true
            throw RedisError.protocolError("reply larger than the \(maxReplyBytes)-byte cap")
        }
        let status = buffer.withUnsafeReadableBytes { bytes -> Int32 in
            guard let base = bytes.baseAddress, bytes.count > 0 else { return REDIS_OK }
            return redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        if status != REDIS_OK { throw readerError() }
    }

    /// The next complete reply, or nil when more bytes are needed.
    func next() throws(RedisError) -> RESPValue? {
        if failed { throw RedisError.protocolError("reader already failed") }
        var replyPointer: UnsafeMutableRawPointer?
        guard redisReaderGetReply(reader, &replyPointer) == REDIS_OK else { throw readerError() }
        guard let replyPointer else { return nil }
        defer { freeReplyObject(replyPointer) }
        bytesInCurrentReply = keygate_reader_buffered(reader)
        return Self.convert(replyPointer.assumingMemoryBound(to: redisReply.self))
    }

    private func readerError() -> RedisError {
        failed = true
        if keygate_reader_array_rejected(reader) != 0 {
            return RedisError.protocolError("array reply larger than the configured element limit")
        }
        let message = withUnsafeBytes(of: reader.pointee.errstr) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return RedisError.protocolError(message.isEmpty ? "hiredis reader error" : message)
    }

    private static func convert(_ reply: UnsafeMutablePointer<redisReply>) -> RESPValue {
        let node = reply.pointee
        switch node.type {
        case REDIS_REPLY_STRING:
            return .bulkString(Self.buffer(node.str, node.len))
        case REDIS_REPLY_STATUS:
            return .simpleString(Self.text(node.str, node.len))
        case REDIS_REPLY_ERROR:
            return .error(Self.text(node.str, node.len))
        case REDIS_REPLY_INTEGER:
            return .integer(node.integer)
        case REDIS_REPLY_ARRAY:
            var values: [RESPValue] = []
            values.reserveCapacity(node.elements)
            for index in 0..<node.elements {
                if let child = node.element[index] { values.append(convert(child)) }
            }
            return .array(values)
        default:
            return .null
        }
    }

    private static let allocator = ByteBufferAllocator()

    private static func buffer(_ pointer: UnsafeMutablePointer<CChar>?, _ length: Int) -> ByteBuffer {
        guard let pointer, length > 0 else { return allocator.buffer(capacity: 0) }
        return allocator.buffer(bytes: UnsafeRawBufferPointer(start: pointer, count: length))
    }

    private static func text(_ pointer: UnsafeMutablePointer<CChar>?, _ length: Int) -> String {
        guard let pointer, length > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: length), as: UTF8.self)
    }
}
