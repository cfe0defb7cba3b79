import Foundation
import KeygateCore
import KeygateRedis
import KeygateTestSupport
import NIOPosix
import Testing

/// Data written by earlier versions (one multi-key script per change, `ns:epoch`, usage batch markers
/// `ns:usage-batch:*`) is read and changed by this one without a migration. The keys below are
/// written with plain commands exactly as those versions stored them.
@Suite struct LayoutCompatibilityTests {
    @Test func keysUsageAndEventsWrittenByTheEarlierLayoutKeepWorking() async throws {
        var config = try TestRedis.configuration()
        config.commandTimeout = .seconds(10)
        let ns = TestRedis.uniqueNamespace("compat")
        let store = KeyStore(redis: try TestRedis.client(config), layout: try KeyStoreLayout(namespace: ns),
                             format: try KeyFormat(), hasher: KeyHasher())
        defer { Task { await store.redis.shutdown() } }
        let plaintext = store.format.generate()
        let hash = store.hasher.hash(plaintext)
        let id = "key_0000000000000compat"
        let created = Int64(Date().timeIntervalSince1970 * 1000) - 86_400_000
        let day = { () -> String in
            let formatter = DateFormatter()
            formatter.timeZone = TimeZone(identifier: "UTC"); formatter.dateFormat = "yyyyMMdd"
            return formatter.string(from: Date())
        }()
        let old: [RedisCommand] = [
            RedisCommand("HSET", [.string("\(ns):key:{\(hash.hex)}"), "id", .string(id), "user", "olduser", "name", "legacy",
                                  "scopes", "read write", "status", "active", "created_at", .string(String(created)),
                                  "expires_at", "", "metadata", "{\"plan\":\"pro\"}", "version", "1"]),
            RedisCommand("SET", [.string("\(ns):id:\(id)"), .string(hash.hex)]),
            RedisCommand("SADD", [.string("\(ns):user:olduser"), .string(id)]),
            RedisCommand("XADD", [.string("\(ns):events"), "MAXLEN", "~", "100000", "*", "type", "created", "key_id", .string(id),
                                  "user", "olduser", "actor", "v0.1", "time", .string(String(created)), "version", "1", "hash", .string(hash.hex)]),
            RedisCommand("INCR", [.string("\(ns):epoch")]),
            RedisCommand("HSET", [.string("\(ns):usage:{\(hash.hex)}"), "total", "41", "last_used_at", .string(String(created))]),
            RedisCommand("SET", [.string("\(ns):usage:{\(hash.hex)}:d:\(day)"), "41"]),
            RedisCommand("SET", [.string("\(ns):usage-batch:oldnode:7"), "1", "EX", "86400"]),
        ]
        for reply in try await store.redis.pipeline(old) { if case .error(let message) = reply { Issue.record("\(message)") } }

        // Read as it is.
        let listed = try await store.list(user: "olduser")
        #expect(listed.map(\.id) == [id] && listed.first?.scopes == ["read", "write"] && listed.first?.metadata == ["plan": "pro"])
        #expect(try await store.usage(id: id, days: 1).total == 41)
        #expect(try await store.usage(id: id, days: 1).daily.last?.count == 41)
        #expect(try await store.events().map(\.type) == ["created"])
        if case .active(let active) = try await store.lookup(hash, on: MultiThreadedEventLoopGroup.singleton.any()).get() {
            #expect(active.id == id)
        } else {
            Issue.record("the old record is found by the lookup")
        }

        // Changed by this version: counted, rotated, revoked, all logged in the same Stream.
        #expect(try await store.applyUsage(batchID: "newnode:1", [.init(hash: hash, count: 1, lastUsedAt: Date())]))
        #expect(try await store.usage(id: id, days: 1).total == 42)
        let successor = try await store.rotate(id: id, grace: .seconds(60), actor: "v0.2")
        #expect(successor.record.name == "legacy" && successor.record.metadata == ["plan": "pro"])
        #expect(try await store.revokeAll(user: "olduser", actor: "v0.2") == 2)
        #expect(try await store.events().map(\.type) == ["created", "rotated", "revoked", "revoked"])
        #expect(try await store.repair() == RepairReport(), "nothing left half-done")
    }
}
