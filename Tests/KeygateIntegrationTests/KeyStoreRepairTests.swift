import Foundation
@testable import KeygateCore
import KeygateRedis
import KeygateTestSupport
import NIOPosix
import Testing

/// A mutation runs in steps, each atomic in its own slot (`KeyStoreScripts`). These tests stop a
/// writer between steps (as a crash would) and check what is left, what a repair does with it, and
/// that a retry cannot report success while the first attempt's event is missing.
@Suite struct KeyStoreRepairTests {
    static func makeStore() throws -> KeyStore {
        var config = try TestRedis.configuration()
        config.commandTimeout = .seconds(10)
        return KeyStore(redis: try TestRedis.client(config), layout: try KeyStoreLayout(namespace: TestRedis.uniqueNamespace("repair")),
                        format: try KeyFormat(), hasher: KeyHasher())
    }

    static func events(_ store: KeyStore) async throws -> [KeyEvent] { try await store.events(count: 1_000) }

    static func pendingCount(_ store: KeyStore) async throws -> Int64 {
        try await store.redis.send(RedisCommand("HLEN", [.string(store.layout.pending)])).int ?? -1
    }

    static func unloggedCount(_ store: KeyStore, _ hash: KeyHash) async throws -> Int64 {
        try await store.redis.send(RedisCommand("HLEN", [.string(store.layout.unlogged(hash))])).int ?? -1
    }

    /// Runs `body` with the writer stopping after `step`; the stop surfaces as `unavailable`.
    static func crashing<T>(_ store: KeyStore, after step: InjectedCrash.Step, _ body: () async throws -> T) async throws {
        store.injectedCrash.set(step)
        defer { store.injectedCrash.set(nil) }
        let error = await #expect(throws: KeygateError.self) { _ = try await body() }
        #expect(error?.code == .unavailable && error?.message.hasPrefix("injected crash") == true)
    }

    @Test func aRevokeAppliedButNotLoggedIsRefusedAtOnceAndLoggedByTheRepair() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice"), actor: "test")
        try await Self.crashing(store, after: .apply) { try await store.revoke(id: issued.record.id, actor: "ops") }

        // The record is revoked (every lookup refuses it); its event is not logged yet.
        #expect(try await store.record(id: issued.record.id).status == .revoked)
        if case .refused(.revoked) = try await store.lookup(issued.record.hash, on: MultiThreadedEventLoopGroup.singleton.any()).get() {} else {
            Issue.record("a lookup after the apply step refuses the key")
        }
        #expect(try await Self.events(store).map(\.type) == ["created"])
        #expect(try await Self.pendingCount(store) == 1)
        #expect(try await Self.unloggedCount(store, issued.record.hash) == 1)

        // Too young for the node's repair pass; an explicit repair of old operations finishes it.
        #expect(try await store.repair(olderThan: KeyStore.repairAge) == RepairReport(completed: 0, dropped: 0, inFlight: 1))
        #expect(try await store.repairPending(olderThan: .zero) == RepairReport(completed: 1, dropped: 0, inFlight: 0))
        let events = try await Self.events(store)
        #expect(events.map(\.type) == ["created", "revoked"] && events.last?.actor == "ops" && events.last?.version == 2)
        #expect(try await Self.pendingCount(store) == 0)
        #expect(try await Self.unloggedCount(store, issued.record.hash) == 0)
        #expect(try await store.repairPending(olderThan: .zero) == RepairReport(), "a second pass finds nothing")
        #expect(try await Self.events(store).count == 2, "logged exactly once")
    }

    @Test func aRetriedRevokeLogsTheFirstAttemptBeforeItReturns() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice"), actor: "test")
        try await Self.crashing(store, after: .apply) { try await store.revoke(id: issued.record.id, actor: "first") }
        // The retry changes nothing itself, but must not succeed while the revocation's event (which
        // a node that missed the publish replays) is missing.
        let again = try await store.revoke(id: issued.record.id, actor: "retry")
        #expect(again.status == .revoked && again.version == 2)
        #expect(try await Self.events(store).map { "\($0.type) \($0.actor)" } == ["created test", "revoked first"])
        #expect(try await Self.pendingCount(store) == 0)
        #expect(try await Self.unloggedCount(store, issued.record.hash) == 0)
    }

    @Test func aChangeRegisteredButNeverAppliedIsDroppedAndCanNoLongerApply() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice"), actor: "test")
        try await Self.crashing(store, after: .begin) { try await store.setEnabled(id: issued.record.id, false, actor: "ops") }
        #expect(try await store.record(id: issued.record.id).status == .active)
        #expect(try await Self.pendingCount(store) == 1)
        #expect(try await store.repairPending(olderThan: .zero) == RepairReport(completed: 0, dropped: 1, inFlight: 0))
        #expect(try await Self.pendingCount(store) == 0)
        #expect(try await Self.events(store).map(\.type) == ["created"], "nothing happened, nothing logged")

        // A step 2 that arrives after its window (a delayed packet, a stalled writer) is refused, so it
        // cannot act behind the repair's back.
        let late = String(Int64(Date().timeIntervalSince1970 * 1000) - KeyStore.applyWindowMilliseconds - 1_000)
        let error = await #expect(throws: RedisError.self) {
            try await store.redis.evalSHA(KeyStoreScripts.applyStatus,
                                          keys: [.string(store.layout.record(issued.record.hash)), .string(store.layout.unlogged(issued.record.hash))],
                                          arguments: ["op_late", .string(late), .string(String(KeyStore.applyWindowMilliseconds)),
                                                      .string(store.layout.invalidationChannel), .string(issued.record.hash.hex),
                                                      .string(issued.record.id), "disabled", .string(late)])
        }
        #expect(error?.message.hasPrefix("EXPIRED") == true)
        #expect(try await store.record(id: issued.record.id).status == .active)
    }

    @Test func aCreateAppliedButNotIndexedIsCompletedByTheRepair() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        try await Self.crashing(store, after: .apply) { try await store.create(.init(user: "bob", name: "half"), actor: "ops") }
        #expect(try await store.list(user: "bob").isEmpty, "not indexed yet (and its plaintext was never returned)")
        #expect(try await store.repairPending(olderThan: .zero).completed == 1)
        let keys = try await store.list(user: "bob")
        #expect(keys.count == 1 && keys.first?.name == "half")
        #expect(try await Self.events(store).map(\.type) == ["created"])
    }

    @Test func aRotationWhoseSuccessorWasNotWrittenIsCompletedByTheRepair() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "carol", name: "ci", scopes: ["read"], metadata: ["plan": "pro"]), actor: "test")
        try await Self.crashing(store, after: .apply) { try await store.rotate(id: issued.record.id, grace: .seconds(60), actor: "ops") }
        let old = try await store.record(id: issued.record.id)
        let successorID = try #require(old.rotatedTo)
        #expect(try await store.repairPending(olderThan: .zero).completed == 1)
        let successor = try await store.record(id: successorID)
        #expect(successor.rotatedFrom == issued.record.id && successor.name == "ci" && successor.scopes == ["read"]
                && successor.metadata == ["plan": "pro"] && successor.status == .active)
        #expect(try await store.list(user: "carol").map(\.id).sorted() == [issued.record.id, successorID].sorted())
        #expect(try await Self.events(store).map(\.type) == ["created", "rotated"])
        // The successor's plaintext was never shown, so the rotation is best finished by rotating again
        // or revoking it; either works on the repaired record.
        #expect(try await store.revoke(id: successorID, actor: "ops").status == .revoked)
    }

    @Test func aUsageBatchRetriedAfterItsWriteLandedCountsOnce() async throws {
        let store = try Self.makeStore()
        defer { Task { await store.redis.shutdown() } }
        let a = try await store.create(.init(user: "u"), actor: "test")
        let now = Date()
        #expect(try await store.applyUsage(batchID: "run-a:1", [.init(hash: a.record.hash, count: 5, lastUsedAt: now)], at: now))
        #expect(try await store.applyUsage(batchID: "run-a:1", [.init(hash: a.record.hash, count: 5, lastUsedAt: now)], at: now) == false)
        #expect(try await store.applyUsage(batchID: "run-a:2", [.init(hash: a.record.hash, count: 1, lastUsedAt: now)], at: now))
        // Another node run (or a spill series) has its own sequence.
        #expect(try await store.applyUsage(batchID: "run-b:1", [.init(hash: a.record.hash, count: 3, lastUsedAt: now)], at: now))
        #expect(try await store.usage(id: a.record.id, now: now).total == 9)
        for bad in ["no-sequence", ":1", "run:0", "run:x", "run:-1"] {
            let error = await #expect(throws: KeygateError.self) { try await store.applyUsage(batchID: bad, [.init(hash: a.record.hash, count: 1, lastUsedAt: now)]) }
            #expect(error?.code == .invalidArgument, "\(bad)")
        }
    }
}
