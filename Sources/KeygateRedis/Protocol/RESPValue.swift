public import NIOCore

/// One RESP2 reply from Redis.
///
/// Bulk strings stay as `ByteBuffer` so binary values (key hashes, Lua results) pass through
/// untouched; use the accessors to read them as text or numbers.
public enum RESPValue: Sendable, Equatable {
    /// `+OK`: a status reply.
    case simpleString(String)
    /// `-ERR ...`: an error reply. The connection stays usable.
    case error(String)
    /// `:42`
    case integer(Int64)
    /// `$3\r\nfoo`: binary-safe bytes.
    case bulkString(ByteBuffer)
    /// `$-1` or `*-1`.
    case null
    /// `*N`: nested replies.
    case array([RESPValue])
}

extension RESPValue {
    /// The reply as UTF-8 text (status, bulk string or integer), or nil.
    public var string: String? {
        switch self {
        case .simpleString(let text): return text
        case .bulkString(let buffer): return String(buffer: buffer)
        case .integer(let value): return String(value)
        default: return nil
        }
    }

    /// The reply as an integer: an integer reply or a bulk string holding a decimal number.
    public var int: Int64? {
        switch self {
        case .integer(let value): return value
        case .bulkString(let buffer): return Int64(String(buffer: buffer))
        default: return nil
        }
    }

    /// The elements of an array reply, or nil for anything else (including a null array).
    public var array: [RESPValue]? {
        if case .array(let values) = self { return values }
        return nil
    }

    /// The raw bytes of a bulk string, or nil.
    public var bytes: ByteBuffer? {
        if case .bulkString(let buffer) = self { return buffer }
        return nil
    }

    public var isNull: Bool { self == .null }

    /// Flat `[field, value, field, value]` array (HGETALL, XRANGE fields) as a dictionary of text.
    public var stringPairs: [String: String]? {
        guard let values = array, values.count % 2 == 0 else { return nil }
        var result: [String: String] = [:]
        result.reserveCapacity(values.count / 2)
        var index = 0
        while index < values.count {
            guard let field = values[index].string, let value = values[index + 1].string else { return nil }
            result[field] = value
            index += 2
        }
        return result
    }
}
