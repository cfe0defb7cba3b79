/// Redis Cluster's key-to-slot mapping (cluster specification, "Keys distribution model"):
/// `CRC16(key) mod 16384`, where only the hash tag is hashed when the key has one: the bytes between
/// the first `{` and the first `}` after it, if there is at least one byte between them.
public enum HashSlot {
    public static let count = 16_384

    /// The slot of a key given as bytes.
    public static func of<Bytes: Collection<UInt8>>(_ key: Bytes) -> Int {
        Int(crc16(hashedPart(of: key)) & 0x3FFF)
    }

    /// The slot of a key given as text (its UTF-8 bytes).
    public static func of(_ key: String) -> Int {
        // A native string's bytes in place (every key Keygate builds); a copy only for bridged ones.
        key.utf8.withContiguousStorageIfAvailable { of($0) } ?? of(Array(key.utf8))
    }

    /// The part of the key that is hashed: the hash tag, or the whole key.
    static func hashedPart<Bytes: Collection<UInt8>>(of key: Bytes) -> Bytes.SubSequence {
        guard let open = key.firstIndex(of: UInt8(ascii: "{")) else { return key[...] }
        let afterOpen = key.index(after: open)
        guard let close = key[afterOpen...].firstIndex(of: UInt8(ascii: "}")), close != afterOpen else { return key[...] }
        return key[afterOpen..<close]
    }

    /// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection, as the spec's
    /// reference implementation; `crc16("123456789") == 0x31C3`.
    public static func crc16<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> UInt16 {
        table.withUnsafeBufferPointer { table in
            var crc: UInt16 = 0
            for byte in bytes {
                crc = (crc << 8) ^ table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)]
            }
            return crc
        }
    }

    private static let table: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }

    /// A short hash tag (without braces) for every slot: `"{" + tag(s) + "}"` in a key puts it in slot
    /// `s`. Keys that must live with a group of other keys whose own names cannot be chosen (a
    /// per-slot marker next to counters of many keys) use it. Deterministic: every process builds the
    /// same table, from the shortest base62 strings in order.
    public static func tag(forSlot slot: Int) -> String {
        precondition((0..<count).contains(slot), "slot out of range")
        return tags[slot]
    }

    private static let tags: [String] = {
        let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)
        var found = [String?](repeating: nil, count: count)
        var missing = count
        var length = 1
        while missing > 0 {
            var digits = [Int](repeating: 0, count: length)
            enumerate: while true {
                let bytes = digits.map { alphabet[$0] }
                let slot = Int(crc16(bytes) & 0x3FFF)
                if found[slot] == nil {
                    found[slot] = String(decoding: bytes, as: UTF8.self)
                    missing -= 1
                    if missing == 0 { break enumerate }
                }
                // Next string of this length (odometer order).
                var position = length - 1
                while position >= 0 {
                    digits[position] += 1
                    if digits[position] < alphabet.count { break }
                    digits[position] = 0
                    position -= 1
                }
                if position < 0 { break }
            }
            length += 1
        }
        return found.map { $0! }
    }()
}
