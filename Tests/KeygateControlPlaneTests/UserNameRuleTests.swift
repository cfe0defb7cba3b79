import Foundation
@testable import KeygateControlPlane
@testable import KeygateCore
import Testing

/// The user-name rule of issue 13, item 1, as a property: two names that are different byte strings
/// never reach each other's keys, however alike Swift's `==` thinks they are (canonical equivalence:
/// NFC against NFD, singleton decompositions such as KELVIN SIGN and ANGSTROM SIGN).
@Suite struct UserNameRuleTests {
    /// Scalars that make canonically equivalent pairs likely: letters with precomposed and decomposed
    /// forms, combining marks in different orders, singletons, Hangul.
    static let pool: [Unicode.Scalar] = [
        "K", "\u{212A}", "A", "\u{C5}", "\u{212B}", "e", "\u{E9}", "\u{301}", "\u{300}", "\u{323}", "\u{302}", "o", "\u{F4}",
        "\u{1E63}", "s", "\u{307}", "\u{1100}", "\u{1161}", "\u{AC00}", "\u{3A9}", "\u{2126}", "a", "b", "1", "-",
    ]

    static func randomName(_ generator: inout some RandomNumberGenerator) -> String {
        var scalars = String.UnicodeScalarView()
        for _ in 0..<Int.random(in: 1...6, using: &generator) { scalars.append(pool.randomElement(using: &generator)!) }
        return String(scalars)
    }

    /// Alternative spellings of `name` that Swift may consider equal to it.
    static func variants(of name: String) -> [String] {
        [name.decomposedStringWithCanonicalMapping, name.precomposedStringWithCanonicalMapping,
         String(String.UnicodeScalarView(name.unicodeScalars.reversed()))]
    }

    @Test func differentBytesNeverOwnEachOther() async throws {
        var generator = SystemRandomNumberGenerator()
        let layout = try KeyStoreLayout(namespace: "ns")
        var equivalentPairs = 0, pairs = 0
        var failures: [String] = []
        for round in 0..<2_000 {
            let owner = Self.randomName(&generator)
            let caller = Caller(user: owner, keyID: "key_a", scopes: ["keygate:self"])
            for other in Self.variants(of: owner) + [Self.randomName(&generator)] {
                pairs += 1
                let sameBytes = Array(owner.utf8) == Array(other.utf8)
                if !sameBytes && owner == other { equivalentPairs += 1 }
                // Access is granted exactly when the bytes are equal, and the Redis keys the two
                // names address are different exactly when the bytes are.
                if caller.owns(user: other) != sameBytes
                    || (Array(layout.userKeys(owner).utf8) == Array(layout.userKeys(other).utf8)) != sameBytes {
                    failures.append("\(owner.debugDescription) vs \(other.debugDescription)")
                }
            }
            if round % 200 == 0 { await Task.yield() } // a CPU-bound loop must not starve the other tests
        }
        #expect(failures.isEmpty, "\(failures.count) of \(pairs) pairs, e.g. \(failures.prefix(3))")
        #expect(equivalentPairs > 50, "the generator produced canonically equivalent pairs (\(equivalentPairs))")
    }

    @Test func scopesAreComparedByBytes() {
        let caller = Caller(user: "u", keyID: "key_a", scopes: ["\u{212A}eygate:admin", "keygate:self"])
        #expect(!caller.isAdmin && caller.isSelfService)
        #expect(throws: KeygateError.self) { try KeyValidation.scopes(["\u{212A}"]) }
    }

    @Test func displayTextEscapesWhatTerminalsActOn() {
        #expect(DisplayText.escaped("a\u{9B}31mb") == "a\\u{9B}31mb")
        #expect(DisplayText.escaped("x\u{202E}y\u{200B}z\u{2028}") == "x\\u{202E}y\\u{200B}z\\u{2028}")
        #expect(DisplayText.escaped("café 👩‍💻") == "café 👩\\u{200D}💻")
        #expect(DisplayText.escaped("plain") == "plain")
    }
}
