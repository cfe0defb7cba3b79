/// Byte-exact comparison for every name that decides access: users, scopes, key ids, namespaces.
///
/// Swift's `==` on strings (and `Set<String>`, dictionary keys, `contains`) treats canonically
/// equivalent strings as equal: `"\u{212A}en" == "Ken"` (KELVIN SIGN) and NFC `"josé"` == NFD
/// `"jose\u{301}"`. Redis keys are byte strings, so those are two different users there; comparing
/// them with `==` let one user's self-service key reach the other's keys. Names are kept exactly as
/// given (no normalisation), so existing data keeps working, and compared byte for byte.
extension StringProtocol {
    /// True when both have the same UTF-8 bytes.
    @inlinable
    public func hasSameBytes(as other: some StringProtocol) -> Bool {
        utf8.elementsEqual(other.utf8)
    }
}

extension Sequence where Element: StringProtocol {
    /// True when some element has exactly the bytes of `value`.
    @inlinable
    public func containsSameBytes(as value: some StringProtocol) -> Bool {
        contains { $0.hasSameBytes(as: value) }
    }
}

/// A string used as a dictionary or set key with byte-exact equality and hashing (see above).
public struct ExactString: Hashable, Sendable {
    public let value: String
    public init(_ value: String) { self.value = value }
    public static func == (lhs: ExactString, rhs: ExactString) -> Bool { lhs.value.hasSameBytes(as: rhs.value) }
    public func hash(into hasher: inout Hasher) {
        for byte in value.utf8 { hasher.combine(byte) }
        hasher.combine(value.utf8.count)
    }
}
