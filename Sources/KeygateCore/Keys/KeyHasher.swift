internal import CCrypto
public import Foundation

/// Hashes keys with libcrypto: SHA-256, or HMAC-SHA-256 when a pepper is configured.
///
/// Plain SHA-256 goes through libcrypto's low-level interface (no provider dispatch per call); the
/// HMAC's `EVP_MD` is fetched once (a fetch per call costs more than the hash itself).
/// Warning: changing or removing the pepper changes every hash, so every existing key stops working.
public final class KeyHasher: @unchecked Sendable {
    // EVP_MD is immutable after fetch and documented as safe to share between threads.
    private let digest: OpaquePointer
    private let pepper: [UInt8]?

    /// - Parameter pepper: secret bytes for HMAC-SHA-256; nil for plain SHA-256.
    public init(pepper: [UInt8]? = nil) {
        guard let digest = EVP_MD_fetch(nil, "SHA256", nil) else {
            fatalError("libcrypto has no SHA256 (OpenSSL 3 is required)")
        }
        self.digest = digest
        self.pepper = pepper.flatMap { $0.isEmpty ? nil : $0 }
    }

    deinit { EVP_MD_free(digest) }

    /// The pepper from `KEYGATE_PEPPER` (the value) or `KEYGATE_PEPPER_FILE` (a file whose contents,
    /// minus one trailing newline, are the pepper); nil when neither is set.
    /// - Throws: `KeygateError.invalidConfiguration` when the file cannot be read or both are set.
    public static func pepperFromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(KeygateError) -> [UInt8]? {
        let value = environment["KEYGATE_PEPPER"].flatMap { $0.isEmpty ? nil : $0 }
        let file = environment["KEYGATE_PEPPER_FILE"].flatMap { $0.isEmpty ? nil : $0 }
        switch (value, file) {
        case (nil, nil): return nil
        case (_?, _?): throw KeygateError(.invalidConfiguration, "set KEYGATE_PEPPER or KEYGATE_PEPPER_FILE, not both")
        case (let value?, nil): return Array(value.utf8)
        case (nil, let path?):
            guard var bytes = FileManager.default.contents(atPath: path).map(Array.init) else {
                throw KeygateError(.invalidConfiguration, "cannot read KEYGATE_PEPPER_FILE '\(path)'")
            }
            if bytes.last == UInt8(ascii: "\n") { bytes.removeLast() }
            guard !bytes.isEmpty else { throw KeygateError(.invalidConfiguration, "KEYGATE_PEPPER_FILE '\(path)' is empty") }
            return bytes
        }
    }

    public func hash(_ key: UnsafeRawBufferPointer) -> KeyHash {
        var output = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &output) { out in
            let target = out.baseAddress!.assumingMemoryBound(to: UInt8.self)
            if let pepper {
                var length: UInt32 = 32
                let result = pepper.withUnsafeBytes { secret in
                    HMAC(digest, secret.baseAddress, Int32(secret.count), key.baseAddress?.assumingMemoryBound(to: UInt8.self), key.count, target, &length)
                }
                precondition(result != nil && length == 32, "HMAC-SHA-256 failed")
            } else {
                precondition(keygate_sha256(key.baseAddress, key.count, target) == 1, "SHA-256 failed")
            }
        }
        return withUnsafeBytes(of: &output) { KeyHash(bytes: $0) }
    }

    public func hash(_ key: String) -> KeyHash {
        var key = key
        return key.withUTF8 { hash(UnsafeRawBufferPointer($0)) }
    }
}

/// Constant-time comparison of secret material (`CRYPTO_memcmp`): the time does not depend on where
/// the inputs differ.
public func constantTimeEqual(_ lhs: UnsafeRawBufferPointer, _ rhs: UnsafeRawBufferPointer) -> Bool {
    guard lhs.count == rhs.count else { return false }
    if lhs.count == 0 { return true }
    return CRYPTO_memcmp(lhs.baseAddress, rhs.baseAddress, lhs.count) == 0
}

extension KeyHash {
    /// Constant-time equality, for comparing a computed hash against a stored one.
    public func constantTimeEquals(_ other: KeyHash) -> Bool {
        var lhs = self, rhs = other
        return withUnsafeBytes(of: &lhs) { l in withUnsafeBytes(of: &rhs) { r in constantTimeEqual(l, r) } }
    }
}
