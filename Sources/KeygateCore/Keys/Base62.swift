/// Base62 (`0-9A-Za-z`) for key bodies, checksums and ids: URL-safe, no padding, double-click selectable.
enum Base62 {
    static let alphabet: [UInt8] = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    /// Value of each ASCII byte, or 0xFF for bytes outside the alphabet.
    static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, byte) in alphabet.enumerated() { table[Int(byte)] = UInt8(index) }
        return table
    }()

    /// Encodes big-endian `bytes` as exactly `width` digits (left-padded with "0").
    static func encode(_ bytes: [UInt8], width: Int) -> [UInt8] {
        var number = bytes // big-endian base-256 digits, divided by 62 in place
        var digits = [UInt8](repeating: alphabet[0], count: width)
        var position = width - 1
        while position >= 0 {
            var remainder = 0
            var allZero = true
            for index in number.indices {
                let accumulator = remainder * 256 + Int(number[index])
                number[index] = UInt8(accumulator / 62)
                remainder = accumulator % 62
                if number[index] != 0 { allZero = false }
            }
            digits[position] = alphabet[remainder]
            position -= 1
            if allZero { break }
        }
        return digits
    }

    /// Encodes a 32-bit value as exactly 6 digits (62^6 > 2^32).
    static func encode(_ value: UInt32) -> [UInt8] {
        var value = value
        var digits = [UInt8](repeating: alphabet[0], count: 6)
        for position in stride(from: 5, through: 0, by: -1) {
            digits[position] = alphabet[Int(value % 62)]
            value /= 62
        }
        return digits
    }
}
