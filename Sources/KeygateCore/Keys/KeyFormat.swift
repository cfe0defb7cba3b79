internal import CCrypto

/// The shape of a Keygate API key: `<prefix>_<43 base62 chars: 256 random bits><6 base62 chars: CRC-32>`.
///
/// The prefix lets secret scanners find leaked keys; the checksum lets every node reject typos,
/// truncations and random strings in O(length) without allocating, before any cache or Redis access
/// (the GitHub token design). The checksum covers the prefix, the separator and the body.
public struct KeyFormat: Sendable, Equatable {
    /// Random bytes per key body (256 bits; SP 800-63B needs >= 112 for a fast hash to be enough).
    public static let randomBytes = 32
    static let bodyLength = 43   // ceil(256 / log2(62))
    static let checksumLength = 6
    /// Longest prefix accepted (`KEYGATE_KEY_PREFIX`).
    public static let maxPrefixLength = 16

    public let prefix: String
    private let prefixBytes: [UInt8]
    /// Total length of every valid key with this prefix.
    public let keyLength: Int

    /// - Throws: `KeygateError.invalidConfiguration` unless the prefix is 1-16 lowercase letters or digits.
    public init(prefix: String = "kg") throws(KeygateError) {
        let bytes = Array(prefix.utf8)
        guard !bytes.isEmpty, bytes.count <= Self.maxPrefixLength,
              bytes.allSatisfy({ (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) })
        else {
            throw KeygateError(.invalidConfiguration, "key prefix must be 1-\(Self.maxPrefixLength) lowercase letters or digits, got '\(prefix)'")
        }
        self.prefix = prefix
        self.prefixBytes = bytes
        self.keyLength = bytes.count + 1 + Self.bodyLength + Self.checksumLength
    }

    /// A new key from `RAND_bytes`.
    public func generate() -> String {
        var random = [UInt8](repeating: 0, count: Self.randomBytes)
        let status = random.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32($0.count)) }
        precondition(status == 1, "RAND_bytes failed: the system CSPRNG is unavailable")
        var key = prefixBytes + [UInt8(ascii: "_")] + Base62.encode(random, width: Self.bodyLength)
        key += Base62.encode(CRC32.checksum(key))
        return String(decoding: key, as: UTF8.self)
    }

    /// True when `key` has this prefix, the separator, the right length and alphabet, and a matching
    /// checksum. O(length), no allocation.
    public func isWellFormed(_ key: UnsafeRawBufferPointer) -> Bool {
        guard key.count == keyLength else { return false }
        let prefixCount = prefixBytes.count
        for index in 0..<prefixCount where key[index] != prefixBytes[index] { return false }
        guard key[prefixCount] == UInt8(ascii: "_") else { return false }
        let bodyEnd = prefixCount + 1 + Self.bodyLength
        return Base62.values.withUnsafeBufferPointer { values -> Bool in
            for index in (prefixCount + 1)..<bodyEnd where values[Int(key[index])] == 0xFF { return false }
            var checksum: UInt32 = 0
            for index in bodyEnd..<key.count {
                let digit = values[Int(key[index])]
                guard digit != 0xFF else { return false }
                let (product, overflow) = checksum.multipliedReportingOverflow(by: 62)
                guard !overflow else { return false }
                let (sum, overflowSum) = product.addingReportingOverflow(UInt32(digit))
                guard !overflowSum else { return false }
                checksum = sum
            }
            return CRC32.checksum(UnsafeRawBufferPointer(rebasing: key[0..<bodyEnd])) == checksum
        }
    }

    public func isWellFormed(_ key: String) -> Bool {
        var key = key
        return key.withUTF8 { isWellFormed(UnsafeRawBufferPointer($0)) }
    }
}
