import KeygateRedis
import Foundation

/// Field rules for key requests; each failure names the field (for 422 and CLI messages).
enum KeyValidation {
    /// A new user name: 1-128 bytes, no whitespace, and nothing a terminal acts on or hides (controls,
    /// C1 included; bidi overrides and other format characters such as zero-width spaces; line
    /// separators; private-use or unassigned code points). Names are byte strings: no normalisation,
    /// compared byte for byte (`ExactText`).
    static func user(_ user: String) throws(KeygateError) {
        guard !user.isEmpty, user.utf8.count <= 128,
              !user.unicodeScalars.contains(where: { $0.properties.isWhitespace || DisplayText.needsEscaping($0) }) else {
            throw KeygateError(.invalidArgument, "user must be 1-128 bytes with no spaces, control, format (bidi, zero-width) or unassigned characters", field: "user")
        }
    }

    /// A user name to look up, or read back from a record: the rule names were created under before
    /// (no whitespace, no ASCII control characters), so users created earlier stay reachable.
    static func existingUser(_ user: String) throws(KeygateError) {
        guard !user.isEmpty, user.utf8.count <= 128,
              !user.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F }) else {
            throw KeygateError(.invalidArgument, "user must be 1-128 bytes with no spaces or control characters", field: "user")
        }
    }

    /// A key's label: at most 128 bytes, no control characters (C0, DEL or C1). Other invisible
    /// characters are allowed (emoji sequences need zero-width joiners) and escaped when printed.
    static func name(_ name: String) throws(KeygateError) {
        guard name.utf8.count <= 128, !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw KeygateError(.invalidArgument, "name must be at most 128 bytes with no control characters", field: "name")
        }
    }

    /// Letters, digits and `: . _ - * /`, as bytes (a `Set<Character>` would also match the KELVIN
    /// SIGN for `K`, being canonically equivalent).
    private static let scopeBytes: [Bool] = (0..<256).map { byte in
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:._-*/".utf8.contains(UInt8(byte))
    }

    static func scopes(_ scopes: [String]) throws(KeygateError) {
        guard scopes.count <= 32 else {
            throw KeygateError(.invalidArgument, "at most 32 scopes per key", field: "scopes")
        }
        for scope in scopes where scope.utf8.isEmpty || scope.utf8.count > 64 || !scope.utf8.allSatisfy({ scopeBytes[Int($0)] }) {
            throw KeygateError(.invalidArgument, "scope '\(DisplayText.escaped(String(scope.prefix(64))))' must be 1-64 characters of letters, digits and : . _ - * /", field: "scopes")
        }
        guard Set(scopes.map(ExactString.init)).count == scopes.count else {
            throw KeygateError(.invalidArgument, "scopes must not repeat", field: "scopes")
        }
    }

    static func metadata(_ metadata: [String: String]) throws(KeygateError) {
        guard metadata.count <= 32 else { throw KeygateError(.invalidArgument, "at most 32 metadata entries", field: "metadata") }
        for (key, value) in metadata where key.isEmpty || key.utf8.count > 64 || value.utf8.count > 512 {
            throw KeygateError(.invalidArgument, "metadata keys must be 1-64 bytes and values at most 512", field: "metadata")
        }
    }

    static func encodeMetadata(_ metadata: [String: String]) throws(KeygateError) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        guard let data = try? encoder.encode(metadata) else {
            throw KeygateError(.invalidArgument, "metadata cannot be encoded", field: "metadata")
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// A Redis Stream id as the audit log hands them out: `<ms>-<seq>`, each an unsigned 64-bit
    /// decimal (Redis refuses anything larger with an error that would otherwise surface as a 500).
    static func isEventID(_ text: String) -> Bool {
        let parts = text.utf8.split(separator: UInt8(ascii: "-"), omittingEmptySubsequences: false)
        return parts.count == 2 && parts.allSatisfy { part in
            !part.isEmpty && part.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
                && UInt64(String(decoding: part, as: UTF8.self)) != nil
        }
    }

    /// `key_` followed by 1-32 base62 characters: anything else cannot be an id, so it is not looked up.
    static func isKeyID(_ id: String) -> Bool {
        let bytes = Array(id.utf8)
        guard bytes.count > 4, bytes.count <= 36, bytes.starts(with: Array("key_".utf8)) else { return false }
        return bytes.dropFirst(4).allSatisfy { Base62.values[Int($0)] != 0xFF }
    }
}

/// Redis replies to records and events.
enum KeyStoreDecoding {
    static func record(hash: KeyHash, fields: [String: String]) -> KeyRecord? {
        guard let id = fields["id"], let user = fields["user"],
              let status = fields["status"].flatMap(KeyStatus.init(rawValue:)),
              let created = fields["created_at"].flatMap(Int64.init),
              let version = fields["version"].flatMap(Int64.init) else { return nil }
        let metadata = fields["metadata"].flatMap { text in
            try? JSONDecoder().decode([String: String].self, from: Data(text.utf8))
        } ?? [:]
        var record = KeyRecord(
            hash: hash, id: id, user: user, name: fields["name"] ?? "",
            scopes: (fields["scopes"] ?? "").split(separator: " ").map(String.init),
            status: status, createdAt: Date(milliseconds: created),
            expiresAt: fields["expires_at"].flatMap(Int64.init).map(Date.init(milliseconds:)),
            revokedAt: fields["revoked_at"].flatMap(Int64.init).map(Date.init(milliseconds:)),
            lastUsedAt: nil, version: version, metadata: metadata,
            rateLimits: fields["rate_limits"].flatMap { RateLimit.fromStorage(Substring($0)) } ?? [],
            creditSetting: fields["credits"].flatMap { $0.isEmpty ? nil : CreditSetting(storage: Substring($0)) },
            limitID: fields["limit_id"].flatMap { $0.isEmpty ? nil : $0 },
            rotatedFrom: fields["rotated_from"].flatMap { $0.isEmpty ? nil : $0 },
            rotatedTo: fields["rotated_to"].flatMap { $0.isEmpty ? nil : $0 })
        record.userRateLimits = fields["user_rate_limits"].flatMap { RateLimit.fromStorage(Substring($0)) } ?? []
        record.userCreditSetting = fields["user_credits"].flatMap { $0.isEmpty ? nil : CreditSetting(storage: Substring($0)) }
        return record
    }

    /// One XRANGE entry `[id, [field, value, ...]]`.
    static func event(_ entry: KeygateRedis.RESPValue) -> KeyEvent? {
        guard let parts = entry.array, parts.count == 2, let id = parts[0].string, let fields = parts[1].stringPairs,
              let type = fields["type"], let keyID = fields["key_id"],
              let time = fields["time"].flatMap(Int64.init) else { return nil }
        return KeyEvent(id: id, type: type, keyID: keyID, user: fields["user"] ?? "", actor: fields["actor"] ?? "",
                        time: Date(milliseconds: time), version: fields["version"].flatMap(Int64.init) ?? 0,
                        successorID: fields["successor_id"], fields: fields["fields"])
    }
}
