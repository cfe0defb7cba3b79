import Foundation
@testable import KeygateCore
import KeygateRedis
import KeygateTestSupport
import NIOPosix
import Testing

/// The key lifecycle on a real six-process Redis Cluster (three primaries, three replicas) on
/// loopback. One cluster for the suite's tests, one after the other.
@Suite(.serialized) struct ClusterTests {
    static func makeStore(url: String, namespace: String = TestRedis.uniqueNamespace("cluster")) throws -> KeyStore {
        var config = try RedisConfiguration(url: url)
        config.commandTimeout = .seconds(5)
        config.connectTimeout = .seconds(2)
        return KeyStore(redis: try RedisClient(configuration: config, eventLoopGroup: MultiThreadedEventLoopGroup.singleton),
                        layout: try KeyStoreLayout(namespace: namespace), format: try KeyFormat(), hasher: KeyHasher())
    }

    @Test func theLifecycleWorksAcrossThreePrimaries() async throws {
        try await ClusterTopology.with { cluster in
            let store = try Self.makeStore(url: cluster.url)
            defer { Task { await store.redis.shutdown() } }
            try await store.redis.connect()
            #expect(store.redis.clusterSlotMap?.primaries.count == 3)
            #expect(store.redis.clusterSlotMap?.coveredSlots == HashSlot.count)
            #expect(store.redis.isConnected)

            // Enough keys for one user that they sit on every primary.
            var issued: [IssuedKey] = []
            for index in 0..<12 { issued.append(try await store.create(.init(user: "spread", name: "k\(index)"), actor: "test")) }
            var owners = Set<Int>()
            for key in issued { if let port = try await cluster.primaryPort(forKey: store.layout.record(key.record.hash)) { owners.insert(port) } }
            #expect(owners.count == 3, "the user's keys live on all three primaries")
            #expect(try await store.list(user: "spread").count == 12)

            let first = issued[0]
            if case .active(let id, _, _, _) = try await store.lookup(first.record.hash, on: MultiThreadedEventLoopGroup.singleton.any()).get() {
                #expect(id == first.record.id)
            } else {
                Issue.record("a lookup routed to the key's primary finds it")
            }
            let rotated = try await store.rotate(id: first.record.id, grace: .seconds(60), actor: "test")
            #expect(rotated.record.rotatedFrom == first.record.id)
            #expect(try await store.setEnabled(id: issued[1].record.id, false, actor: "test").status == .disabled)
            #expect(try await store.revoke(id: issued[2].record.id, actor: "test").status == .revoked)

            // Usage for keys on every primary, split per slot and applied once.
            let now = Date()
            let deltas = issued.map { KeyStore.UsageDelta(hash: $0.record.hash, count: 3, lastUsedAt: now) }
            #expect(try await store.applyUsage(batchID: "cluster-run:1", deltas, at: now))
            #expect(try await store.applyUsage(batchID: "cluster-run:1", deltas, at: now) == false, "a retry counts nothing")
            for key in issued { #expect(try await store.usage(id: key.record.id, now: now).total == 3) }

            // users revoke: keys in different slots, each step routed to its key's primary.
            #expect(try await store.revokeAll(user: "spread", actor: "test") == 12, "12 + 1 successor, minus the one revoked before")
            #expect(try await store.list(user: "spread").allSatisfy { $0.status == .revoked })
            let types = try await store.events(count: 1_000).map(\.type)
            #expect(types.filter { $0 == "created" }.count == 12 && types.filter { $0 == "revoked" }.count == 13)
            #expect(types.contains("rotated") && types.contains("disabled"))
            #expect(try await store.repair() == RepairReport())
            #expect(store.redis.metrics.movedRedirects.load() == 0, "the map routed every command without a redirect")
        }
    }
}
