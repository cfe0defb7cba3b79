import Foundation
import Testing
@testable import KeygateCore

@Suite struct KeyHasherTests {
    @Test func sha256KnownAnswers() {
        let hasher = KeyHasher()
        #expect(hasher.hash("abc").hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hasher.hash("").hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func hmacSHA256KnownAnswer() {
        // RFC 4231 test case 2.
        let hasher = KeyHasher(pepper: Array("Jefe".utf8))
        #expect(hasher.hash("what do ya want for nothing?").hex == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    @Test func thePepperChangesEveryHash() {
        let key = try! KeyFormat().generate()
        #expect(KeyHasher().hash(key) != KeyHasher(pepper: Array("p1".utf8)).hash(key))
        #expect(KeyHasher(pepper: Array("p1".utf8)).hash(key) != KeyHasher(pepper: Array("p2".utf8)).hash(key))
        #expect(KeyHasher(pepper: []).hash(key) == KeyHasher().hash(key), "an empty pepper means none")
    }

    @Test func pepperFromEnvironmentAndFile() throws {
        #expect(try KeyHasher.pepperFromEnvironment([:]) == nil)
        #expect(try KeyHasher.pepperFromEnvironment(["KEYGATE_PEPPER": "s3"]) == Array("s3".utf8))
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("pepper-\(UUID().uuidString)").path
        try "from-file\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try KeyHasher.pepperFromEnvironment(["KEYGATE_PEPPER_FILE": path]) == Array("from-file".utf8))
        #expect(throws: KeygateError.self) { try KeyHasher.pepperFromEnvironment(["KEYGATE_PEPPER_FILE": "/nonexistent/pepper"]) }
        #expect(throws: KeygateError.self) { try KeyHasher.pepperFromEnvironment(["KEYGATE_PEPPER": "a", "KEYGATE_PEPPER_FILE": path]) }
    }

    @Test func keyHashHexRoundTripAndConstantTimeEquality() {
        let hash = KeyHasher().hash("abc")
        #expect(KeyHash(hex: hash.hex) == hash)
        #expect(KeyHash(hex: hash.hex.uppercased()) == hash)
        #expect(KeyHash(hex: "xyz") == nil)
        #expect(KeyHash(hex: String(repeating: "g", count: 64)) == nil)
        #expect(hash.constantTimeEquals(hash))
        #expect(!hash.constantTimeEquals(KeyHasher().hash("abd")))
        #expect(hash.logPrefix == "ba7816bf")
        #expect(MemoryLayout<KeyHash>.size == 32, "stored inline: no allocation per cache entry")
    }

    @Test func constantTimeEqualCompares() {
        let a: [UInt8] = [1, 2, 3], b: [UInt8] = [1, 2, 4]
        a.withUnsafeBytes { a in
            #expect(constantTimeEqual(a, a))
            b.withUnsafeBytes { b in #expect(!constantTimeEqual(a, b)) }
            [UInt8]([1, 2]).withUnsafeBytes { short in #expect(!constantTimeEqual(a, short)) }
        }
    }
}
