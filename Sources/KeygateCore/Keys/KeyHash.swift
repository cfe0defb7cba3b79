/// SHA-256 (or HMAC-SHA-256) of a key: 32 bytes stored inline, so cache entries need no String.
///
/// It is what Redis stores instead of the key. Logs show only `logPrefix` (8 hex characters),
/// never the full hash.
public struct KeyHash: Hashable, Sendable {
    public var a: UInt64, b: UInt64, c: UInt64, d: UInt64

    public init(a: UInt64, b: UInt64, c: UInt64, d: UInt64) {
        (self.a, self.b, self.c, self.d) = (a, b, c, d)
    }

    /// From 32 bytes in digest order.
    public init(bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == 32)
        a = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        b = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        c = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        d = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
    }

    /// From 64 lowercase or uppercase hex characters; nil otherwise.
    public init?(hex: some StringProtocol) {
        let bytes = Array(hex.utf8)
        guard bytes.count == 64 else { return nil }
        var words: [UInt64] = [0, 0, 0, 0]
        for (index, byte) in bytes.enumerated() {
            let nibble: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = byte - UInt8(ascii: "A") + 10
            default: return nil
            }
            words[index / 16] = words[index / 16] << 4 | UInt64(nibble)
        }
        (a, b, c, d) = (words[0], words[1], words[2], words[3])
    }

    /// 64 lowercase hex characters: the form used in Redis key names and invalidation messages.
    public var hex: String {
        var text = [UInt8]()
        text.reserveCapacity(64)
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        for word in [a, b, c, d] {
            for shift in stride(from: 60, through: 0, by: -4) { text.append(digits[Int((word >> UInt64(shift)) & 0xF)]) }
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// The first 8 hex characters: enough to correlate log lines, useless to an attacker.
    public var logPrefix: String { String(hex.prefix(8)) }
}
