public import NIOCore

/// One Redis command: its arguments, binary-safe.
public struct RedisCommand: Sendable {
    /// Arguments as sent, the command name first.
    public var arguments: [RedisArgument]

    public init(_ name: String, _ arguments: [RedisArgument] = []) {
        self.arguments = [.string(name)] + arguments
    }

    public init(arguments: [RedisArgument]) {
        self.arguments = arguments
    }

    /// At most the bytes `encode` writes, so one reservation covers the whole command.
    var encodedLengthUpperBound: Int {
        var total = 16
        for argument in arguments {
            switch argument {
            case .string(let text): total += text.utf8.count + 16
            case .integer: total += 36
            case .bytes(let bytes): total += bytes.readableBytes + 16
            }
        }
        return total
    }

    /// The command name, for logs and metrics (never the arguments: they can hold secrets).
    public var name: String {
        if case .string(let text) = arguments.first { return text.uppercased() }
        return "?"
    }

    /// Appends the RESP2 encoding (`*N\r\n$len\r\narg\r\n...`) to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.reserveCapacity(minimumWritableBytes: encodedLengthUpperBound)
        buffer.writeStaticString("*")
        buffer.writeDecimal(arguments.count)
        buffer.writeStaticString("\r\n")
        for argument in arguments {
            argument.encode(into: &buffer)
        }
    }
}

/// One argument of a command: text, an integer or raw bytes.
public enum RedisArgument: Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    case string(String)
    case integer(Int64)
    case bytes(ByteBuffer)

    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }

    func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .string(let text):
            buffer.writeStaticString("$")
            buffer.writeDecimal(text.utf8.count)
            buffer.writeStaticString("\r\n")
            buffer.writeString(text)
            buffer.writeStaticString("\r\n")
        case .integer(let value):
            RedisArgument.string(String(value)).encode(into: &buffer) // small strings do not allocate
        case .bytes(let bytes):
            buffer.writeStaticString("$")
            buffer.writeDecimal(bytes.readableBytes)
            buffer.writeStaticString("\r\n")
            buffer.writeImmutableBuffer(bytes)
            buffer.writeStaticString("\r\n")
        }
    }
}

extension ByteBuffer {
    /// Writes a decimal integer in ASCII with one bulk write and no String.
    @inlinable
    mutating func writeDecimal<I: BinaryInteger>(_ value: I) {
        var scratch: (UInt64, UInt64, UInt64) = (0, 0, 0) // 24 bytes: sign and 20 digits fit
        let count = withUnsafeMutableBytes(of: &scratch) { scratch -> Int in
            var magnitude = value.magnitude
            var position = scratch.count
            repeat {
                position -= 1
                scratch[position] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: magnitude % 10)
                magnitude /= 10
            } while magnitude > 0
            if value < 0 {
                position -= 1
                scratch[position] = UInt8(ascii: "-")
            }
            return scratch.count - position
        }
        withUnsafeBytes(of: &scratch) { scratch in
            _ = writeBytes(UnsafeRawBufferPointer(rebasing: scratch[(scratch.count - count)...]))
        }
    }
}
