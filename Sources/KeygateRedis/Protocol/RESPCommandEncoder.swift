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

    /// The command name, for logs and metrics (never the arguments: they can hold secrets).
    public var name: String {
        if case .string(let text) = arguments.first { return text.uppercased() }
        return "?"
    }

    /// Appends the RESP2 encoding (`*N\r\n$len\r\narg\r\n...`) to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
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
    /// Writes a decimal integer in ASCII without allocating a String.
    @inlinable
    mutating func writeDecimal<I: BinaryInteger>(_ value: I) {
        if value == 0 { writeInteger(UInt8(ascii: "0")); return }
        var magnitude = value.magnitude
        if value < 0 { writeInteger(UInt8(ascii: "-")) }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0) // 24 bytes of scratch, enough for 20 digits
        var count = 0
        withUnsafeMutableBytes(of: &digits) { scratch in
            while magnitude > 0 {
                scratch[count] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
                count += 1
            }
            for index in stride(from: count - 1, through: 0, by: -1) {
                writeInteger(scratch[index])
            }
        }
    }
}
