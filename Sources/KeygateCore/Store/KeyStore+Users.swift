public import Foundation
import KeygateRedis
import NIOCore

/// Users as the operator console lists them: every user that ever held a key, by name, and a
/// user's usage summed over their keys.
extension KeyStore {
    /// One page of users: names in byte order, and the cursor of the next page (nil on the last).
    public struct UserPage: Sendable, Equatable, Encodable {
        public var users: [String]
        /// Pass as `after` for the next page; nil when this page is the last.
        public var nextAfter: String?

        enum CodingKeys: String, CodingKey { case users, nextAfter = "next_after" }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(users, forKey: .users)
            try container.encode(nextAfter, forKey: .nextAfter)
        }
    }

    /// Users whose name starts with `prefix` (byte for byte), after the name `after` (exclusive), at
    /// most `limit` (1-1,000). A user stays listed after their keys are revoked: their usage and
    /// audit trail remain.
    public func users(prefix: String = "", after: String? = nil, limit: Int = 100) async throws(KeygateError) -> UserPage {
        guard (1...1_000).contains(limit) else { throw KeygateError(.invalidArgument, "limit must be 1-1000", field: "limit") }
        guard prefix.utf8.count <= 128 else { throw KeygateError(.invalidArgument, "prefix is at most 128 bytes", field: "prefix") }
        if let after { try KeyValidation.existingUser(after) }
        // Lexicographic range: from the cursor (or the prefix) to the prefix followed by 0xFF, a
        // byte no UTF-8 name contains, so every name with the prefix sorts below it.
        let start: RedisArgument
        if let after, after.utf8.lexicographicallyPrecedes(prefix.utf8) == false {
            start = .string("(" + after)
        } else {
            start = prefix.isEmpty ? "-" : .string("[" + prefix)
        }
        var end = ByteBuffer()
        end.writeString("[" + prefix)
        end.writeInteger(UInt8(0xFF))
        let stop: RedisArgument = prefix.isEmpty ? "+" : .bytes(end)
        let reply = try await command(RedisCommand("ZRANGEBYLEX", [.string(layout.users), start, stop, "LIMIT", 0, .integer(Int64(limit))]))
        let users = (reply.array ?? []).compactMap(\.string)
        return UserPage(users: users, nextAfter: users.count == limit ? users.last : nil)
    }

    /// Adds the users of keys created before the users index existed, once per deployment (a
    /// `SCAN` of the user sets, on each primary of a Cluster), then marks it done. Returns how many
    /// users were added.
    @discardableResult
    func indexUsers() async throws(KeygateError) -> Int {
        guard try await command(RedisCommand("GET", [.string(layout.usersIndexed)])).isNull else { return 0 }
        let prefix = layout.userKeys("")
        let keys: [String]
        do { keys = try await redis.scanKeys(matching: prefix + "*") } catch { throw Self.map(error) }
        var added = 0
        let users = keys.map { String($0.dropFirst(prefix.count)) }.filter { !$0.isEmpty }
        for chunk in stride(from: 0, to: users.count, by: 500).map({ Array(users[$0..<min($0 + 500, users.count)]) }) {
            var arguments: [RedisArgument] = [.string(layout.users)]
            for user in chunk { arguments += [0, .string(user)] }
            added += Int(try await command(RedisCommand("ZADD", arguments)).int ?? 0)
        }
        _ = try await command(RedisCommand("SET", [.string(layout.usersIndexed), "1"]))
        return added
    }

    /// A user's usage: the buckets of every key of the user added up (uses and refusals), the
    /// lifetime total, the last use, and each key's total.
    public struct UserUsage: Sendable, Equatable, Encodable {
        public var user: String
        public var total: Int64
        public var daily: [KeyUsage.Bucket]
        public var hourly: [KeyUsage.Bucket]
        public var lastUsedAt: Date?
        public var keys: [KeyTotal]

        public struct KeyTotal: Sendable, Equatable, Encodable {
            public var id: String
            public var total: Int64
        }

        enum CodingKeys: String, CodingKey { case user, total, daily, hourly, keys, lastUsedAt = "last_used_at" }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(user, forKey: .user)
            try container.encode(total, forKey: .total)
            try container.encode(daily, forKey: .daily)
            try container.encode(hourly, forKey: .hourly)
            try container.encode(lastUsedAt, forKey: .lastUsedAt)
            try container.encode(keys, forKey: .keys)
        }
    }

    /// The usage of every key of `user` added up (the last `days` days, at most 90, and 48 hours).
    /// - Throws: `notFound` for a user who never held a key.
    public func usage(user: String, days: Int = 7, now: Date = Date()) async throws(KeygateError) -> UserUsage {
        let records = try await list(user: user)
        guard !records.isEmpty else { throw KeygateError(.notFound, "user '\(DisplayText.escaped(user))' has no keys") }
        var result = UserUsage(user: user, total: 0, daily: [], hourly: [], lastUsedAt: nil, keys: [])
        for record in records {
            let usage = try await self.usage(id: record.id, days: days, now: now)
            result.total += usage.total
            result.keys.append(.init(id: record.id, total: usage.total))
            if let last = usage.lastUsedAt, last > (result.lastUsedAt ?? .distantPast) { result.lastUsedAt = last }
            result.daily = Self.add(result.daily, usage.daily)
            result.hourly = Self.add(result.hourly, usage.hourly)
        }
        return result
    }

    /// Bucket by bucket (both lists cover the same periods, oldest first).
    private static func add(_ sum: [KeyUsage.Bucket], _ more: [KeyUsage.Bucket]) -> [KeyUsage.Bucket] {
        guard !sum.isEmpty else { return more }
        return zip(sum, more).map { KeyUsage.Bucket(period: $0.period, count: $0.count + $1.count, refused: $0.refused + $1.refused) }
    }
}
