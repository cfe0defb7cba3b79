import Foundation
@testable import KeygateCore
import KeygateNode
import KeygateRedis
import KeygateTestSupport
import NIOCore
import NIOPosix
import Synchronization
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
            var owners = Set<Int>()
            while issued.count < 12 || (owners.count < 3 && issued.count < 60) {
                let key = try await store.create(.init(user: "spread", name: "k\(issued.count)"), actor: "test")
                issued.append(key)
                if let port = try await cluster.primaryPort(forKey: store.layout.record(key.record.hash)) { owners.insert(port) }
            }
            #expect(owners.count == 3, "the user's keys live on all three primaries")
            #expect(try await store.list(user: "spread").count == issued.count)

            let first = issued[0]
            if case .active(let active) = try await store.lookup(first.record.hash, on: MultiThreadedEventLoopGroup.singleton.any()).get() {
                #expect(active.id == first.record.id)
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

            // A user's limits: stored once, copied to the keys on every primary (the revoked one keeps none).
            let plan = try await store.setUserLimits(user: "spread", rateLimits: [try RateLimit(parsing: "plan=100/1m")],
                                                     credits: .some(try Credits(remaining: 50)), actor: "test")
            #expect(plan.keysUpdated == issued.count, "the keys + 1 successor, minus the one revoked before")
            #expect(try await store.list(user: "spread").filter { $0.status != .revoked }.allSatisfy { $0.userRateLimits == plan.rateLimits })
            #expect(try await store.userLimits(user: "spread").credits?.remaining == 50)

            // users revoke: keys in different slots, each step routed to its key's primary.
            #expect(try await store.revokeAll(user: "spread", actor: "test") == issued.count, "the keys + 1 successor, minus the one revoked before")
            #expect(try await store.list(user: "spread").allSatisfy { $0.status == .revoked })
            let types = try await store.events(count: 1_000).map(\.type)
            #expect(types.filter { $0 == "created" }.count == issued.count && types.filter { $0 == "revoked" }.count == issued.count + 1)
            #expect(types.contains("rotated") && types.contains("disabled"))
            #expect(try await store.repair() == RepairReport())
            #expect(store.redis.metrics.movedRedirects.load() == 0, "the map routed every command without a redirect")

            // The same through the command line, as an operator would run it.
            let binary = try keygateBinary()
            let environment = try cliTestEnvironment(label: "ccli").merging(["KEYGATE_REDIS_URL": cluster.url]) { $1 }
            var ids: [String] = []
            for _ in 0..<4 {
                let created = try await runCommand(binary, ["keys", "create", "--user", "cli-user", "--json"], environment: environment)
                #expect(created.exitCode == 0, "\(created.stderr)")
                if let object = try JSONSerialization.jsonObject(with: Data(created.stdout.utf8)) as? [String: Any], let id = object["id"] as? String { ids.append(id) }
            }
            let listed = try await runCommand(binary, ["keys", "list", "--user", "cli-user", "--json"], environment: environment)
            #expect((try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [Any])?.count == 4)
            #expect(try await runCommand(binary, ["keys", "revoke", ids[0]], environment: environment).exitCode == 0)
            let all = try await runCommand(binary, ["users", "revoke", "cli-user", "--json"], environment: environment)
            #expect(all.exitCode == 0 && all.stdout.contains("\"revoked\" : \"3\""), "\(all.stdout) \(all.stderr)")
            let events = try await runCommand(binary, ["events", "--json"], environment: environment)
            #expect((try JSONSerialization.jsonObject(with: Data(events.stdout.utf8)) as? [Any])?.count == 8, "4 created, 4 revoked")
            let repaired = try await runCommand(binary, ["repair"], environment: environment)
            #expect(repaired.exitCode == 0 && repaired.stdout.contains("completed 0, dropped 0"), "\(repaired.stdout)")
            let report = try await runCommand(binary, ["repair", "--json"], environment: environment)
            let fields = try JSONSerialization.jsonObject(with: Data(report.stdout.utf8)) as? [String: Int]
            #expect(fields == ["completed": 0, "dropped": 0, "in_flight": 0, "users_indexed": 0], "\(report.stdout)")
        }
    }

    /// A standalone deployment moves to a Cluster as it is: the layout is the same on both, so
    /// `redis-cli --cluster import` (each key copied to its slot's primary, with its TTL) is the
    /// migration, and running it again changes nothing.
    @Test func aStandaloneDeploymentMovesToTheClusterWithRedisCliImport() async throws {
        try await RedisServerProcess.withServer { standalone in
            let namespace = TestRedis.uniqueNamespace("import")
            let source = try Self.makeStore(url: standalone.url, namespace: namespace)
            defer { Task { await source.redis.shutdown() } }
            var issued: [IssuedKey] = []
            for index in 0..<8 {
                issued.append(try await source.create(.init(user: "user-\(index % 2)", scopes: ["orders:read"]), actor: "test"))
            }
            try await source.revoke(id: issued[0].record.id, actor: "test")
            let now = Date()
            try await source.applyUsage(batchID: "standalone-run:1", issued.map { .init(hash: $0.record.hash, count: 5, lastUsedAt: now) }, at: now)
            let events = try await source.events()
            #expect(events.count == 9)

            try await ClusterTopology.with { cluster in
                for run in 1...2 { // the second run finds everything there already and replaces it with the same
                    let result = try await runCommand("/usr/bin/redis-cli", [
                        "--cluster", "import", "127.0.0.1:\(cluster.servers[0].port)",
                        "--cluster-from", "127.0.0.1:\(standalone.port)", "--cluster-copy", "--cluster-replace",
                    ])
                    #expect(result.exitCode == 0, "import run \(run): \(result.stdout.suffix(500)) \(result.stderr)")
                }
                let target = try Self.makeStore(url: cluster.url, namespace: namespace)
                defer { Task { await target.redis.shutdown() } }
                try await target.redis.connect()
                let loop = MultiThreadedEventLoopGroup.singleton.any()
                for (index, key) in issued.enumerated() {
                    switch try await target.lookup(key.record.hash, on: loop).get() {
                    case .active(let active):
                        #expect(index != 0 && active.id == key.record.id && active.scopes == "orders:read")
                    case .refused(let reason):
                        #expect(index == 0 && reason == .revoked, "key \(index) refused: \(reason)")
                    case .malformed:
                        Issue.record("key \(index) came back malformed")
                    }
                    #expect(try await target.usage(id: key.record.id, now: now).total == 5)
                }
                #expect(try await target.list(user: "user-1").count == 4)
                #expect(try await target.events() == events, "the audit trail came along")
                // And the store keeps working there.
                let fresh = try await target.create(.init(user: "user-1"), actor: "test")
                #expect(try await target.list(user: "user-1").count == 5)
                try await target.revoke(id: fresh.record.id, actor: "test")
                #expect(try await target.events().count == 11)
            }
        }
    }
}

/// Nodes (`keygate serve` in process) on a real Cluster: invalidation, usage, failover.
@Suite(.serialized) struct ClusterNodeTests {
    static func auth(_ key: String, port: Int) async throws -> Int {
        try await NodeIntegrationTests.auth(key, port: port).status
    }

    @Test func twoNodesVerifyRevokeWithin100MillisecondsAndCountUsageExactly() async throws {
        try await ClusterTopology.with { cluster in
            let ns = TestRedis.uniqueNamespace("cnode")
            let store = try ClusterTests.makeStore(url: cluster.url, namespace: ns)
            defer { Task { await store.redis.shutdown() } }
            let a = try await TestNode.start(redisURL: cluster.url, namespace: ns)
            let b = try await TestNode.start(redisURL: cluster.url, namespace: ns)
            var keys: [IssuedKey] = []
            for index in 0..<6 { keys.append(try await store.create(.init(user: "u\(index % 2)", scopes: ["read"]), actor: "test")) }
            var ok = [Int](repeating: 0, count: keys.count)
            for round in 0..<4 {
                for (index, key) in keys.enumerated() {
                    let status = try await Self.auth(key.key, port: round % 2 == 0 ? a.port : b.port)
                    #expect(status == 200)
                    if status == 200 { ok[index] += 1 }
                }
            }
            // Revoke on the Cluster: both nodes refuse within 100 ms (measured on each node).
            let before = NIODeadline.now().uptimeNanoseconds
            try await store.revoke(id: keys[0].record.id, actor: "test")
            let acknowledged = NIODeadline.now().uptimeNanoseconds
            for node in [a, b] {
                let propagation = try await NodeIntegrationTests.propagation(on: node, since: before, acknowledged: acknowledged)
                #expect(propagation != nil && propagation! < .milliseconds(100), "revoke propagated in \(String(describing: propagation))")
                #expect(try await NodeIntegrationTests.timeUntilRefused(keys[0].key, port: node.port) != nil)
            }
            // Disable, rotate, users revoke through the nodes' view.
            try await store.setEnabled(id: keys[1].record.id, false, actor: "test")
            let successor = try await store.rotate(id: keys[2].record.id, grace: .seconds(60), actor: "test")
            #expect(try await NodeIntegrationTests.timeUntilRefused(keys[1].key, port: a.port) != nil)
            #expect(try await NodeIntegrationTests.timeUntil(200, successor.key, port: b.port) != nil)
            await a.stop()
            await b.stop()
            // Usage exact after a graceful stop for the keys only this test's rounds used (the polls
            // above may add a use to keys 0-2 before their change arrived); the successor's one use
            // is its own.
            for (index, key) in keys.enumerated() {
                let total = try await store.usage(id: key.record.id).total
                if index >= 3 { #expect(total == Int64(ok[index]), "key \(index)") } else { #expect(total >= Int64(ok[index]), "key \(index)") }
            }
            #expect(try await store.usage(id: successor.record.id).total == 1)
            #expect(try await store.revokeAll(user: "u1", actor: "test") >= 1)
        }
    }

    /// One request per valid key and one for the revoked key on every node; true when every valid
    /// key got 200. A valid key refused as invalid, or the revoked key accepted, is a wrong answer
    /// (503 while a primary is down is not: it says "could not check").
    static func round(_ nodes: [TestNode], _ valid: [IssuedKey], _ revoked: IssuedKey, _ ok: inout [Int], _ wrong: inout [String]) async throws -> Bool {
        var allServed = true
        for node in nodes {
            for (index, key) in valid.enumerated() {
                let status = try await auth(key.key, port: node.port)
                if status == 200 { ok[index] += 1 } else { allServed = false }
                if status == 401 || status == 403 { wrong.append("valid key \(index) got \(status)") }
            }
            if try await auth(revoked.key, port: node.port) == 200 { wrong.append("the revoked key got 200") }
        }
        return allServed
    }

    @Test func aKilledPrimaryIsReplacedAndEveryNodeServesAgainWithNoWrongAnswer() async throws {
        try await ClusterTopology.with { cluster in
            let ns = TestRedis.uniqueNamespace("cfail")
            let store = try ClusterTests.makeStore(url: cluster.url, namespace: ns)
            defer { Task { await store.redis.shutdown() } }
            let nodes = [try await TestNode.start(redisURL: cluster.url, namespace: ns),
                         try await TestNode.start(redisURL: cluster.url, namespace: ns)]
            var valid: [IssuedKey] = []
            for index in 0..<9 { valid.append(try await store.create(.init(user: "v\(index)"), actor: "test")) }
            let revoked = try await store.create(.init(user: "gone"), actor: "test")
            try await store.revoke(id: revoked.record.id, actor: "test")
            let victimPort = try #require(try await cluster.primaryPort(forKey: store.layout.record(valid[0].record.hash)))

            var ok = [Int](repeating: 0, count: valid.count)
            var wrong: [String] = []
            #expect(try await Self.round(nodes, valid, revoked, &ok, &wrong))
            let killed = ContinuousClock.now
            let promoted = try await cluster.killPrimaryAndAwaitFailover(port: victimPort)
            // Traffic until every node serves every key again (bounded: 60 s).
            var servedAgain: ContinuousClock.Instant?
            while ContinuousClock.now - killed < .seconds(60) {
                if try await Self.round(nodes, valid, revoked, &ok, &wrong) { servedAgain = .now; break }
                try await Task.sleep(for: .milliseconds(50))
            }
            let served = try #require(servedAgain, "every node serves every key again after the failover")
            print("cluster failover: replica promoted \(promoted - killed) after the kill; every node served every key again \(served - promoted) after the promotion")
            #expect(wrong.isEmpty, "\(wrong)")
            #expect(try await Self.round(nodes, valid, revoked, &ok, &wrong))
            for node in nodes { await node.stop() }
            for (index, key) in valid.enumerated() {
                #expect(try await store.usage(id: key.record.id).total == Int64(ok[index]), "key \(index): usage equals its 200s")
            }
        }
    }

    @Test func slotsMovedWhileTrafficRunsCostRetriesNeverAWrongAnswerOrACount() async throws {
        try await ClusterTopology.with { cluster in
            let ns = TestRedis.uniqueNamespace("creshard")
            let store = try ClusterTests.makeStore(url: cluster.url, namespace: ns)
            defer { Task { await store.redis.shutdown() } }
            // Verdicts expire after 100 ms, so requests keep looking keys up while their slots move.
            let shortCache: (inout NodeConfiguration) -> Void = { $0.verifier.cache.positiveMaxAge = .milliseconds(100) }
            let nodes = [try await TestNode.start(redisURL: cluster.url, namespace: ns, configure: shortCache),
                         try await TestNode.start(redisURL: cluster.url, namespace: ns, configure: shortCache)]
            var valid: [IssuedKey] = []
            for index in 0..<6 { valid.append(try await store.create(.init(user: "r\(index)"), actor: "test")) }
            let revoked = try await store.create(.init(user: "gone"), actor: "test")
            try await store.revoke(id: revoked.record.id, actor: "test")
            var ok = [Int](repeating: 0, count: valid.count)
            var wrong: [String] = []
            #expect(try await Self.round(nodes, valid, revoked, &ok, &wrong))

            // Traffic runs in the background while the slots move.
            let keysToMove = Array(valid.prefix(3)), layout = store.layout
            let done = DoneFlag()
            let moving = Task {
                defer { done.value.store(true, ordering: .releasing) }
                let primaries = try await cluster.primaryPorts()
                // The slots of three keys, key by key (record, counters, marks), to another primary.
                for key in keysToMove {
                    let slot = HashSlot.of(layout.record(key.record.hash))
                    guard let owner = try await cluster.primaryPort(forKey: layout.record(key.record.hash)),
                          let target = primaries.first(where: { $0 != owner }) else { continue }
                    try await cluster.migrateSlot(slot, from: owner, to: target, pauseBetweenKeys: .milliseconds(200))
                }
                // And 300 slots with redis-cli, as an operator reshards.
                try await cluster.reshard(count: 300, from: primaries[0], to: primaries[1])
            }
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                _ = try await Self.round(nodes, valid, revoked, &ok, &wrong)
                if done.value.load(ordering: .acquiring) { break }
            }
            try await moving.value
            #expect(try await Self.round(nodes, valid, revoked, &ok, &wrong), "every key served after the move")
            #expect(wrong.isEmpty, "\(wrong)")
            let redirects = nodes.reduce(UInt64(0)) { $0 + $1.node.redis.metrics.movedRedirects.load() + $1.node.redis.metrics.askRedirects.load()
                + $1.node.adminStore.redis.metrics.movedRedirects.load() + $1.node.adminStore.redis.metrics.askRedirects.load() }
            print("resharding: \(ok.reduce(0, +)) requests answered 200 while slots moved; \(redirects) redirects followed by the nodes")
            for node in nodes { await node.stop() }
            for (index, key) in valid.enumerated() {
                #expect(try await store.usage(id: key.record.id).total == Int64(ok[index]), "key \(index): usage equals its 200s")
            }
            // Changes still work on moved slots.
            #expect(try await store.revoke(id: valid[0].record.id, actor: "test").status == .revoked)
        }
    }

}

/// Set by a background task when it is done.
final class DoneFlag: Sendable {
    let value = Atomic<Bool>(false)
}
