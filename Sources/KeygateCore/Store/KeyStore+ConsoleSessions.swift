public import Foundation
import KeygateRedis
internal import CCrypto

/// Console links, like a billing portal's sessions: an admin asks for a short-lived link that opens
/// the "API keys" page of one user; the page exchanges the link's secret, once, for a short-lived
/// `keygate:self` key of that user, held in the page's memory. Redis keeps only the secret's hash.
extension KeyStore {
    /// A console link, shown once.
    public struct ConsoleSession: Sendable, Equatable, Encodable {
        public var user: String
        /// The scopes the user may give their keys on the page (the link's key holds them besides
        /// `keygate:self`, and a self-service key grants only scopes it holds).
        public var scopes: [String]
        /// The secret (`kgs_...`): in the link's fragment, which browsers never send to a server.
        public var session: String
        /// `/console/#session=<secret>`, relative to the control plane's address.
        public var url: String
        public var expiresAt: Date

        enum CodingKeys: String, CodingKey { case user, scopes, session, url, expiresAt = "expires_at" }
    }

    public static let consoleSessionTTLRange: ClosedRange<Int> = 60...3_600
    /// How long the key a link is exchanged for lives.
    public static let consoleKeyLifetime: TimeInterval = 3_600

    /// A single-use link for `user`, valid for `ttlSeconds` (60-3,600), whose page may grant `scopes`
    /// (never `keygate:admin`: a link is handed to the user, and must not make them an operator).
    public func createConsoleSession(user: String, scopes: [String] = [], ttlSeconds: Int = 900,
                                     now: Date = Date()) async throws(KeygateError) -> ConsoleSession {
        try KeyValidation.existingUser(user)
        try KeyValidation.scopes(scopes)
        guard !scopes.containsSameBytes(as: "keygate:admin") else {
            throw KeygateError(.invalidArgument, "a console link cannot grant keygate:admin", field: "scopes")
        }
        guard Self.consoleSessionTTLRange.contains(ttlSeconds) else {
            throw KeygateError(.invalidArgument, "ttl_seconds must be \(Self.consoleSessionTTLRange.lowerBound)-\(Self.consoleSessionTTLRange.upperBound)",
                               field: "ttl_seconds")
        }
        var random = [UInt8](repeating: 0, count: 24)
        let status = random.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32($0.count)) }
        guard status == 1 else { throw KeygateError(.internalError, "no random bytes for a console session") }
        let secret = "kgs_" + String(decoding: Base62.encode(random, width: 33), as: UTF8.self)
        _ = try await runScripts([ScriptCall(script: KeyStoreScripts.setWithExpiry, keys: [layout.consoleSession(hasher.hash(secret).hex)],
                                             arguments: [Self.sessionValue(user: user, scopes: scopes), String(ttlSeconds * 1_000)])],
                                  throwingErrors: true)
        return ConsoleSession(user: user, scopes: scopes, session: secret, url: "/console/#session=\(secret)",
                              expiresAt: now.addingTimeInterval(TimeInterval(ttlSeconds)).truncatedToMilliseconds)
    }

    /// Redeems a link's secret, once: a new `keygate:self` key of its user that expires in an hour.
    /// - Throws: `notFound` for a secret that is unknown, used or expired (the same answer for each).
    public func redeemConsoleSession(_ secret: String, now: Date = Date()) async throws(KeygateError) -> IssuedKey {
        let body = secret.utf8.dropFirst(4)
        guard secret.hasPrefix("kgs_"), body.count == 33, body.allSatisfy({ Base62.values[Int($0)] != 0xFF }) else {
            throw KeygateError(.notFound, "the console link is not valid, was used already, or has expired")
        }
        let reply = try await command(RedisCommand("GETDEL", [.string(layout.consoleSession(hasher.hash(secret).hex))]))
        guard let value = reply.string else {
            throw KeygateError(.notFound, "the console link is not valid, was used already, or has expired")
        }
        let (user, scopes) = Self.parseSessionValue(value)
        let granted = ["keygate:self"] + scopes.filter { $0 != "keygate:self" }
        return try await create(NewKey(user: user, name: "console session", scopes: granted,
                                       expiresAt: now.addingTimeInterval(Self.consoleKeyLifetime), metadata: ["source": "console-link"]),
                                actor: "console-link", now: now)
    }

    /// What Redis keeps for a link: the user, then its scopes, space separated (neither a user name
    /// nor a scope holds a space). A link made before scopes existed holds the user alone.
    static func sessionValue(user: String, scopes: [String]) -> String {
        ([user] + scopes).joined(separator: " ")
    }

    static func parseSessionValue(_ value: String) -> (user: String, scopes: [String]) {
        let parts = value.split(separator: " ").map(String.init)
        return (parts.first ?? "", Array(parts.dropFirst()))
    }
}
