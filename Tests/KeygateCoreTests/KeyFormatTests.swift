import Foundation
import Testing
@testable import KeygateCore

@Suite struct KeyFormatTests {
    let format = try! KeyFormat(prefix: "kg")

    @Test func generatedKeysHaveTheDocumentedShape() {
        let key = format.generate()
        #expect(key.hasPrefix("kg_"))
        #expect(key.utf8.count == 2 + 1 + 43 + 6)
        #expect(key.dropFirst(3).allSatisfy { $0.isLetter || $0.isNumber })
    }

    @Test func hundredThousandKeysRoundTripAndAreDistinct() {
        var seen = Set<String>()
        for _ in 0..<100_000 {
            let key = format.generate()
            #expect(format.isWellFormed(key))
            seen.insert(key)
        }
        #expect(seen.count == 100_000)
    }

    @Test func everySingleCharacterChangeIsRejected() {
        let key = Array(format.generate().utf8)
        let alphabet = Base62.alphabet + Array("_-!~ \u{7F}".utf8)
        var accepted = 0, tried = 0
        for position in key.indices {
            for replacement in alphabet where replacement != key[position] {
                var mutated = key
                mutated[position] = replacement
                tried += 1
                if mutated.withUnsafeBytes({ format.isWellFormed($0) }) { accepted += 1 }
            }
        }
        #expect(tried > 3_000)
        #expect(accepted == 0, "CRC-32 detects every single-symbol error")
    }

    @Test(arguments: [
        "", "kg_", "kg", "xx_\(String(repeating: "A", count: 49))", "kg-\(String(repeating: "A", count: 49))",
        "kg_\(String(repeating: "A", count: 48))", "kg_\(String(repeating: "A", count: 50))",
        "KG_\(String(repeating: "A", count: 49))", "kg_\(String(repeating: "+", count: 49))",
        "kg_\(String(repeating: "z", count: 49))", // valid charset and length, checksum overflows 32 bits
    ])
    func rejectsMalformedKeys(key: String) {
        #expect(!format.isWellFormed(key))
    }

    @Test func rejectsTruncationsAndExtensions() {
        let key = format.generate()
        #expect(!format.isWellFormed(String(key.dropLast())))
        #expect(!format.isWellFormed(key + "0"))
        #expect(!format.isWellFormed(" " + key))
        #expect(!format.isWellFormed(key + "\n"))
    }

    @Test func theParserNeverTrapsOnRandomBytes() {
        var generator = SystemRandomNumberGenerator()
        for length in [0, 1, 3, 51, 52, 53, 64, 300] {
            for _ in 0..<2_000 {
                var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
                if length == 52, Bool.random() { bytes.replaceSubrange(0..<3, with: Array("kg_".utf8)) }
                _ = bytes.withUnsafeBytes { format.isWellFormed($0) }
            }
        }
    }

    @Test func prefixesAreValidated() throws {
        #expect(try KeyFormat(prefix: "acme2").generate().hasPrefix("acme2_"))
        for bad in ["", "Acme", "a_b", "with space", String(repeating: "a", count: 17)] {
            let error = #expect(throws: KeygateError.self) { try KeyFormat(prefix: bad) }
            #expect(error?.code == .invalidConfiguration)
        }
        let other = try KeyFormat(prefix: "acme")
        #expect(!other.isWellFormed(format.generate()), "a key of another prefix is malformed here")
    }

    @Test func crc32KnownAnswer() {
        // The standard check value of CRC-32/ISO-HDLC.
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([UInt8]()) == 0)
    }

    @Test func base62EncodesFixedWidth() {
        #expect(String(decoding: Base62.encode(0), as: UTF8.self) == "000000")
        #expect(String(decoding: Base62.encode(UInt32.max), as: UTF8.self) == "4gfFC3")
        #expect(String(decoding: Base62.encode([0, 0, 61], width: 4), as: UTF8.self) == "000z")
        #expect(String(decoding: Base62.encode([1, 0], width: 3), as: UTF8.self) == "048") // 256 = 4*62 + 8
    }

    /// Slice-by-8 against the byte-at-a-time definition, for every length around the 8-byte steps.
    @Test func crc32MatchesTheBytewiseDefinition() {
        func reference(_ bytes: [UInt8]) -> UInt32 {
            var crc: UInt32 = 0xFFFF_FFFF
            for byte in bytes {
                crc ^= UInt32(byte)
                for _ in 0..<8 { crc = crc & 1 == 1 ? 0xEDB8_8320 ^ (crc >> 1) : crc >> 1 }
            }
            return crc ^ 0xFFFF_FFFF
        }
        var generator = SystemRandomNumberGenerator()
        for length in 0..<80 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            #expect(CRC32.checksum(bytes) == reference(bytes), "length \(length)")
        }
    }
}
