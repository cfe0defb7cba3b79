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
        /// The secret (`kgs_...`): in the link's fragment, which browsers never send to a server.
        public var session: String
        /// `/console/#session=<secret>`, relative to the control plane's address.
        public var url: String
        public var expiresAt: Date

        enum CodingKeys: String, CodingKey { case user, session, url, expiresAt = "expires_at" }
    }

    public static let consoleSessionTTLRange: ClosedRange<Int> = 60...3_600
    /// How long the key a link is exchanged for lives.
    public static let consoleKeyLifetime: TimeInterval = 3_600

    /// A single-use link for `user`, valid for `ttlSeconds` (60-3,600).
    public func createConsoleSession(user: String, ttlSeconds: Int = 900, now: Date = Date()) async throws(KeygateError) -> ConsoleSession {
        try KeyValidation.existingUser(user)
        guard Self.consoleSessionTTLRange.contains(ttlSeconds) else {
            throw KeygateError(.invalidArgument, "ttl_seconds must be \(Self.consoleSessionTTLRange.lowerBound)-\(Self.consoleSessionTTLRange.upperBound)",
                               field: "ttl_seconds")
        }
        var random = [UInt8](repeating: 0, count: 24)
        let status = random.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32($0.count)) }
        guard status == 1 else { throw KeygateError(.internalError, "no random bytes for a console session") }
        let secret = "kgs_" + String(decoding: Base62.encode(random, width: 33), as: UTF8.self)
        _ = try await runScripts([ScriptCall(script: KeyStoreScripts.setWithExpiry, keys: [layout.consoleSession(hasher.hash(secret).hex)],
                                             arguments: [user, String(ttlSeconds * 1_000)])], throwingErrors: true)
        return ConsoleSession(user: user, session: secret, url: "/console/#session=\(secret)",
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
        guard let user = reply.string else {
            throw KeygateError(.notFound, "the console link is not valid, was used already, or has expired")
        }
        return try await create(NewKey(user: user, name: "console session", scopes: ["keygate:self"],
                                       expiresAt: now.addingTimeInterval(Self.consoleKeyLifetime), metadata: ["source": "console-link"]),
                                actor: "console-link", now: now)
    }
}
