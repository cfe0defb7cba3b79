import Foundation
import KeygateCore
import KeygateRedis
import KeygateTestSupport
import NIOCore
import NIOPosix
import Testing

/// The key lifecycle against the real redis-server, each test in its own namespace.
@Suite struct KeyStoreIntegrationTests {
    static func makeStore(_ namespace: String = TestRedis.uniqueNamespace("ks")) throws -> KeyStore {
        var config = try TestRedis.configuration()
        config.commandTimeout = .seconds(10)
        return KeyStore(redis: try TestRedis.client(config), layout: try KeyStoreLayout(namespace: namespace),
                        format: try KeyFormat(), hasher: KeyHasher())
    }

    static func streamLength(_ store: KeyStore) async throws -> Int64 {
        try await store.redis.send(RedisCommand("XLEN", [.string(store.layout.events)])).int ?? -1
    }

    @Test func everyMutationChangesTheRecordAppendsOneEventAndPublishesItsHash() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        // A generous pong timeout: under the full suite a 1 s ping could time out, and a message
        // published while the subscriber reconnects is lost (pub/sub), failing the count below.
        let subscriber = RedisSubscriber(configuration: try TestRedis.configuration(),
                                         channels: [store.layout.invalidationChannel],
                                         pingTimeout: .seconds(10),
                                         eventLoop: MultiThreadedEventLoopGroup.singleton.any())
        let events = EventRecorder(subscriber.events)
        let running = Task { await subscriber.run() }
        defer { running.cancel() }
        #expect(await events.waitFor(timeout: .seconds(5)) { $0 == .subscribed } != nil)

        var published = 0
        /// Runs one mutation and checks: one event, and the messages `expectedHashes` (in order): a
        /// change publishes its hash when the record changes and again when its event is logged.
        func expectOneEventAndMessages(_ label: String, hashes expectedHashes: @escaping () -> [KeyHash?],
                                       _ mutation: () async throws -> Void) async throws {
            let before = try await Self.streamLength(store)
            try await mutation()
            #expect(try await Self.streamLength(store) == before + 1, "\(label): exactly one event")
            let expected = expectedHashes()
            let messageIndex = await events.waitFor(from: published + expected.count, timeout: .seconds(5)) { event in
                if case .message = event { return true } else { return false }
            }
            #expect(messageIndex != nil, "\(label): its messages")
            try await Task.sleep(for: .milliseconds(50))
            let messages = events.all.compactMap { event -> KeyHash? in
                if case .message(_, let payload) = event { return KeyHash(hex: String(buffer: payload)) } else { return nil }
            }
            #expect(Array(messages.dropFirst(published)) == expected, "\(label): the messages are the key's hash")
            published = messages.count
        }

        var issued: IssuedKey?
        try await expectOneEventAndMessages("create", hashes: { [issued?.record.hash, issued?.record.hash] }) {
            issued = try await store.create(.init(user: "alice", name: "ci", scopes: ["read"]), actor: "test")
        }
        let key = try #require(issued)
        #expect(try await store.record(id: key.record.id).version == 1)

        try await expectOneEventAndMessages("update", hashes: { [key.record.hash, key.record.hash] }) {
            let updated = try await store.update(id: key.record.id, .init(name: "renamed", scopes: ["read", "write"], metadata: ["plan": "pro"]), actor: "test")
            #expect(updated.name == "renamed" && updated.scopes == ["read", "write"] && updated.metadata == ["plan": "pro"])
            #expect(updated.version == 2)
        }
        try await expectOneEventAndMessages("disable", hashes: { [key.record.hash, key.record.hash] }) {
            let disabled = try await store.setEnabled(id: key.record.id, false, actor: "test")
            #expect(disabled.status == .disabled && disabled.version == 3)
        }
        try await expectOneEventAndMessages("enable", hashes: { [key.record.hash, key.record.hash] }) {
            let enabled = try await store.setEnabled(id: key.record.id, true, actor: "test")
            #expect(enabled.status == .active && enabled.version == 4)
        }
        var successor: IssuedKey?
        try await expectOneEventAndMessages("rotate", hashes: { [key.record.hash, successor?.record.hash, key.record.hash] }) {
            successor = try await store.rotate(id: key.record.id, grace: .seconds(3600), actor: "test")
        }
        let old = try await store.record(id: key.record.id)
        #expect(old.rotatedTo == successor?.record.id && successor?.record.rotatedFrom == old.id)
        #expect(old.expiresAt.map { abs($0.timeIntervalSinceNow - 3600) < 60 } == true, "old key expires after the grace")
        #expect(successor?.record.scopes == ["read", "write"] && successor?.record.user == "alice")

        try await expectOneEventAndMessages("revoke", hashes: { [key.record.hash, key.record.hash] }) {
            let revoked = try await store.revoke(id: key.record.id, actor: "test")
            #expect(revoked.status == .revoked && revoked.revokedAt != nil)
        }
        // Revoking twice is a no-op success: no event, no message.
        let before = try await Self.streamLength(store)
        let again = try await store.revoke(id: key.record.id, actor: "test")
        #expect(again.status == .revoked && again.version == old.version + 1)
        #expect(try await Self.streamLength(store) == before)
        // A revoked key cannot come back.
        let error = await #expect(throws: KeygateError.self) { try await store.setEnabled(id: key.record.id, true, actor: "test") }
        #expect(error?.code == .conflict)

        try await expectOneEventAndMessages("revoke all of a user", hashes: { [successor?.record.hash, successor?.record.hash] }) {
            let count = try await store.revokeAll(user: "alice", actor: "test")
            #expect(count == 1) // only the successor was still live
        }
        let audit = try await store.events()
        #expect(audit.map(\.type) == ["created", "updated", "disabled", "enabled", "rotated", "revoked", "revoked"])
        #expect(audit.allSatisfy { $0.actor == "test" && $0.user == "alice" })
        #expect(try await store.events(after: audit[4].id).map(\.type) == ["revoked", "revoked"])
    }

    @Test func noPlaintextKeyAnywhereInRedisAfterAThousandKeys() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        var bodies = Set<String>()
        for index in 0..<1_000 {
            let issued = try await store.create(.init(user: "user\(index % 10)", name: "k\(index)", scopes: ["read"]), actor: "test")
            bodies.insert(String(issued.key.dropFirst(3).prefix(43)))
        }
        _ = try await store.rotate(id: try await store.list(user: "user0")[0].id, grace: .seconds(60), actor: "test")
        // Dump every key name and value in the namespace.
        var dump: [String] = []
        var cursor = "0"
        repeat {
            let reply = try await store.redis.send(RedisCommand("SCAN", [.string(cursor), "MATCH", .string("\(store.layout.namespace):*"), "COUNT", 1000])).array ?? []
            cursor = reply.first?.string ?? "0"
            for name in reply.last?.array?.compactMap(\.string) ?? [] {
                dump.append(name)
                switch try await store.redis.send(RedisCommand("TYPE", [.string(name)])).string {
                case "hash": dump += (try await store.redis.send(RedisCommand("HGETALL", [.string(name)])).array ?? []).compactMap(\.string)
                case "string": dump.append(try await store.redis.send(RedisCommand("GET", [.string(name)])).string ?? "")
                case "set": dump += (try await store.redis.send(RedisCommand("SMEMBERS", [.string(name)])).array ?? []).compactMap(\.string)
                case "zset": dump += (try await store.redis.send(RedisCommand("ZRANGE", [.string(name), 0, -1])).array ?? []).compactMap(\.string)
                case "stream":
                    let entries = try await store.redis.send(RedisCommand("XRANGE", [.string(name), "-", "+"])).array ?? []
                    for entry in entries { dump += (entry.array?.last?.array ?? []).compactMap(\.string) }
                default: Issue.record("unexpected type for \(name)")
                }
            }
        } while cursor != "0"
        #expect(dump.count > 5_000)
        #expect(!dump.contains { $0.contains("kg_") }, "no key prefix stored anywhere")
        // Any stored run of 43+ base62 characters is checked against every key body.
        var checked = 0
        for text in dump {
            for token in text.split(whereSeparator: { !($0.isASCII && ($0.isLetter || $0.isNumber)) }) where token.count >= 43 {
                let characters = Array(token)
                for start in 0...(characters.count - 43) {
                    checked += 1
                    #expect(!bodies.contains(String(characters[start..<start + 43])))
                }
            }
        }
        #expect(checked > 1_000, "hashes were scanned")
    }

    @Test func concurrentRotationsLeaveExactlyOneSuccessor() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "bob"), actor: "test")
        let outcomes = await withTaskGroup(of: Result<String, KeygateError>.self) { group in
            for _ in 0..<20 {
                group.addTask {
                    do { return .success(try await store.rotate(id: issued.record.id, grace: .seconds(60), actor: "test").record.id) }
                    catch let error as KeygateError { return .failure(error) }
                    catch { return .failure(KeygateError(.internalError, "\(error)")) }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let successes = outcomes.compactMap { try? $0.get() }
        #expect(successes.count == 1)
        #expect(outcomes.allSatisfy { if case .failure(let error) = $0 { return error.code == .conflict } else { return true } })
        #expect(try await store.list(user: "bob").map(\.id).sorted() == [issued.record.id, successes[0]].sorted())
    }

    @Test func revokingEveryKeyOfAUserWithAThousandKeys() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        for _ in 0..<1_000 { _ = try await store.create(.init(user: "big"), actor: "test") }
        _ = try await store.create(.init(user: "other"), actor: "test")
        let before = try await Self.streamLength(store)
        #expect(try await store.revokeAll(user: "big", actor: "admin") == 1_000)
        #expect(try await Self.streamLength(store) == before + 1_000, "one event per key")
        let keys = try await store.list(user: "big")
        #expect(keys.count == 1_000 && keys.allSatisfy { $0.status == .revoked })
        #expect(try await store.list(user: "other").first?.status == .active, "other users are untouched")
        #expect(try await store.revokeAll(user: "big", actor: "admin") == 0, "again: nothing left to revoke")
    }

    @Test func aUsageBatchAppliedTwiceCountsOnce() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        let a = try await store.create(.init(user: "u"), actor: "test")
        let b = try await store.create(.init(user: "u"), actor: "test")
        let now = Date()
        let batch = [KeyStore.UsageDelta(hash: a.record.hash, count: 5, lastUsedAt: now),
                     KeyStore.UsageDelta(hash: b.record.hash, count: 2, lastUsedAt: now)]
        #expect(try await store.applyUsage(batchID: "node-a:1", batch, at: now))
        #expect(try await store.applyUsage(batchID: "node-a:1", batch, at: now) == false, "a retry is a no-op")
        #expect(try await store.applyUsage(batchID: "node-a:2", [.init(hash: a.record.hash, count: 1, lastUsedAt: now)], at: now))
        let usage = try await store.usage(id: a.record.id, days: 7, now: now)
        #expect(usage.total == 6)
        #expect(usage.daily.count == 7 && usage.daily.last?.count == 6 && usage.daily.dropLast().allSatisfy { $0.count == 0 })
        #expect(usage.hourly.count == 48 && usage.hourly.last?.count == 6)
        #expect(usage.lastUsedAt.map { abs($0.timeIntervalSince(now)) < 0.01 } == true)
        #expect(try await store.usage(id: b.record.id, now: now).total == 2)
        #expect(try await store.record(id: a.record.id).lastUsedAt != nil)
        // Buckets expire: hourly after 49 h, daily after 91 days.
        let hourKey = store.layout.usage(a.record.hash) + ":h:" + usage.hourly.last!.period.replacingOccurrences(of: "-", with: "").replacingOccurrences(of: "T", with: "")
        let ttl = try await store.redis.send(RedisCommand("TTL", [.string(hourKey)])).int ?? -1
        #expect(ttl > 48 * 3600 && ttl <= 49 * 3600)
    }

    @Test func rotationKeepsBothUsageHistories() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        let old = try await store.create(.init(user: "r", scopes: ["read"]), actor: "test")
        try await store.applyUsage(batchID: "n:1", [.init(hash: old.record.hash, count: 3, lastUsedAt: Date())])
        let new = try await store.rotate(id: old.record.id, grace: .seconds(0), actor: "test")
        try await store.applyUsage(batchID: "n:2", [.init(hash: new.record.hash, count: 4, lastUsedAt: Date())])
        #expect(try await store.usage(id: old.record.id).total == 3)
        #expect(try await store.usage(id: new.record.id).total == 4)
        #expect(try await store.record(id: old.record.id).effectiveStatus(at: Date().addingTimeInterval(1)) == .expired)
    }

    @Test func clearErrorsForBadInput() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        for (request, field) in [(KeyStore.NewKey(user: ""), "user"), (.init(user: "a b"), "user"),
                                 (.init(user: "u", scopes: ["bad scope"]), "scopes"),
                                 (.init(user: "u", expiresAt: Date().addingTimeInterval(-1)), "expires_at")] {
            let error = await #expect(throws: KeygateError.self) { try await store.create(request, actor: "test") }
            #expect(error?.code == .invalidArgument && error?.field == field)
        }
        let missing = await #expect(throws: KeygateError.self) { try await store.record(id: "key_doesnotexist") }
        #expect(missing?.code == .notFound)
        let bogus = await #expect(throws: KeygateError.self) { try await store.revoke(id: "../../etc", actor: "test") }
        #expect(bogus?.code == .notFound)
        #expect(try await store.events().isEmpty, "failed requests change nothing")
    }
}
