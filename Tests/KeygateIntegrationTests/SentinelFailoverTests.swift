import Foundation
import KeygateCore
import KeygateRedis
import KeygateTestSupport
import Synchronization
import Testing

/// Issue 14 with real processes on loopback: a master, a replica and three Sentinels; nodes given
/// the `redis-sentinel://` URL. Each test starts its own topology (a failover changes it for good).
@Suite(.serialized) struct SentinelFailoverTests {
    /// One request's outcome, for the checks after the run.
    struct Sample {
        var node: Int
        var valid: Bool
        var status: Int
        /// When the request was sent, and when its answer arrived.
        var sent: ContinuousClock.Instant
        var at: ContinuousClock.Instant
        var key: String
    }

    /// What the traffic saw, shared with its tasks.
    final class TrafficLog: Sendable {
        private let list = Mutex<[Sample]>([])
        private let running = Atomic<Bool>(true)
        var samples: [Sample] { list.withLock { $0 } }
        var isRunning: Bool { running.load(ordering: .relaxed) }
        func stop() { running.store(false, ordering: .relaxed) }
        func append(_ sample: Sample) { list.withLock { $0.append(sample) } }
    }

    /// Steady traffic on every node, valid and revoked keys mixed, until `log.stop()` (at most 60 s).
    static func traffic(ports: [Int], valid: [String], revoked: [String], log: TrafficLog) async {
        await withTaskGroup(of: Void.self) { group in
            for (index, port) in ports.enumerated() {
                group.addTask {
                    var round = 0
                    let end = ContinuousClock.now + .seconds(60) // bounded even if the test stalls
                    while log.isRunning, ContinuousClock.now < end {
                        round += 1
                        let isValid = round % 3 != 0
                        let key = isValid ? valid[round % valid.count] : revoked[round % revoked.count]
                        let sent = ContinuousClock.now
                        let request = "GET /auth HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\nConnection: close\r\n\r\n"
                        let response = try? await RawHTTP.send(request, port: port, timeout: .seconds(5))
                        log.append(Sample(node: index, valid: isValid, status: response?.status ?? 0, sent: sent, at: .now, key: key))
                        try? await Task.sleep(for: .milliseconds(5))
                    }
                }
            }
        }
    }

    static func nodesServing(_ samples: [Sample], after instant: ContinuousClock.Instant) -> Set<Int> {
        var nodes = Set<Int>()
        for sample in samples where sample.at > instant && sample.status == 200 { nodes.insert(sample.node) }
        return nodes
    }

    /// When the first 200 arrived for a request `node` was sent after `instant`.
    static func firstSuccess(_ samples: [Sample], node: Int, after instant: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        var first: ContinuousClock.Instant?
        for sample in samples where sample.node == node && sample.sent > instant && sample.status == 200 {
            if first.map({ sample.at < $0 }) ?? true { first = sample.at }
        }
        return first
    }

    /// Each key's usage total in Redis, for the keys used at least once.
    static func usageTotals(_ store: KeyStore, keys: [String]) async throws -> [String: Int] {
        var totals: [String: Int] = [:]
        for key in keys {
            guard let record = try await store.record(hash: store.hasher.hash(key)) else { continue }
            let total = Int(try await store.usage(id: record.id).total)
            if total > 0 { totals[key] = total }
        }
        return totals
    }

    static func store(url: String, namespace: String) throws -> KeyStore {
        KeyStore(redis: try TestRedis.client(TestRedis.configuration(url: url)), layout: try KeyStoreLayout(namespace: namespace),
                 format: try KeyFormat(), hasher: KeyHasher())
    }

    @Test func aKilledMasterIsReplacedWithoutWrongAnswersAndUsageStaysExact() async throws {
        try await SentinelTopology.with { topology in
            let ns = TestRedis.uniqueNamespace("sentinel")
            let store = try Self.store(url: topology.url, namespace: ns)
            defer { Task { await store.redis.shutdown() } }
            // Every change returns only once the replica has it (WAIT 1, the Sentinel default).
            var valid: [String] = []
            for index in 0..<4 { valid.append(try await store.create(.init(user: "user\(index)"), actor: "test").key) }
            var revoked: [String] = []
            for index in 0..<2 {
                let issued = try await store.create(.init(user: "gone\(index)"), actor: "test")
                try await store.revoke(id: issued.record.id, actor: "test")
                revoked.append(issued.key)
            }
            let nodes = [try await TestNode.start(redisURL: topology.url, namespace: ns),
                         try await TestNode.start(redisURL: topology.url, namespace: ns)]
            let log = TrafficLog()
            let validKeys = valid, revokedKeys = revoked
            let ports = nodes.map(\.port)
            let traffic = Task { await Self.traffic(ports: ports, valid: validKeys, revoked: revokedKeys, log: log) }
            try await Task.sleep(for: .seconds(1))
            let killed = ContinuousClock.now
            let promoted = try await topology.killMasterAndAwaitPromotion()
            // Every node serves a valid key again, without a restart.
            try await topology.waitUntil(timeout: .seconds(10), "both nodes to answer 200 after the promotion") {
                Self.nodesServing(log.samples, after: promoted).count == nodes.count
            }
            // The old master comes back empty (persistence off) and is briefly a master.
            try await topology.restartOldMasterEmpty()
            try await Task.sleep(for: .seconds(3))
            log.stop()
            await traffic.value

            let all = log.samples
            let wrongValid: [Sample] = all.filter { (sample: Sample) -> Bool in sample.valid && (sample.status == 401 || sample.status == 403) }
            let wrongRevoked: [Sample] = all.filter { (sample: Sample) -> Bool in !sample.valid && sample.status == 200 }
            #expect(wrongValid.isEmpty, "valid keys refused: \(wrongValid.count) of \(all.count) samples")
            #expect(wrongRevoked.isEmpty, "revoked keys accepted: \(wrongRevoked.count)")
            let outage: Duration = promoted - killed
            var report = "failover: kill to promotion seen \(outage)"
            for node in 0..<nodes.count {
                let recovery: Duration? = Self.firstSuccess(all, node: node, after: killed).map { (first: ContinuousClock.Instant) -> Duration in first - promoted }
                let text: String = recovery.map { (value: Duration) -> String in "\(value)" } ?? "never"
                #expect(recovery != nil && recovery! <= .seconds(1), "node \(node): first 200 \(text) after the promotion (kill to promotion \(outage))")
                #expect(nodes[node].node.redis.topology.masterChanges >= 1)
                report += ", node \(node) first 200 \(text) after it"
            }
            print(report) // the figures behind the README's failover numbers
            let successes: [Sample] = all.filter { (sample: Sample) -> Bool in sample.status == 200 }
            #expect(successes.count > 50, "traffic kept flowing: \(all.count) samples")

            // Usage: what Redis holds equals the 200s served, across the failover.
            var served: [String: Int] = [:]
            for sample in successes { served[sample.key, default: 0] += 1 }
            var last: [String: Int] = [:]
            let deadline = ContinuousClock.now + .seconds(15)
            while ContinuousClock.now < deadline {
                last = (try? await Self.usageTotals(store, keys: valid + revoked)) ?? [:]
                if last == served { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(last == served, "usage in Redis \(last) vs 200s served \(served)")
            for node in nodes { await node.stop() }
        }
    }

    @Test func aRevokeNoReplicaConfirmedIsReportedNotDurable() async throws {
        try await SentinelTopology.with { topology in
            let ns = TestRedis.uniqueNamespace("durable")
            let store = try Self.store(url: topology.url, namespace: ns)
            defer { Task { await store.redis.shutdown() } }
            let issued = try await store.create(.init(user: "alice"), actor: "test")

            // A master name no Sentinel knows, and Sentinels that are all gone, are named as such.
            var environment = try cliTestEnvironment(label: "durable")
            environment["KEYGATE_NAMESPACE"] = ns
            let misnamedURL = topology.url.replacingOccurrences(of: "#\(SentinelTopology.masterName)", with: "#no-such-master")
            environment["KEYGATE_REDIS_URL"] = misnamedURL
            let unknown = try await runCommand(try keygateBinary(), ["keys", "list", "--user", "alice"], environment: environment)
            #expect(unknown.exitCode == 4 && unknown.stderr.contains("no Sentinel knows a master named 'no-such-master'"), "\(unknown.stderr)")
            environment["KEYGATE_REDIS_URL"] = "redis-sentinel://127.0.0.1:1,127.0.0.1:2#\(SentinelTopology.masterName)"
            let gone = try await runCommand(try keygateBinary(), ["keys", "list", "--user", "alice"], environment: environment)
            #expect(gone.exitCode == 4 && gone.stderr.contains("no Sentinel gave the address") && gone.stderr.contains("127.0.0.1:2"), "\(gone.stderr)")
            let misnamed = try await TestNode.start(redisURL: misnamedURL, namespace: ns, waitForReady: false)
            try await Task.sleep(for: .milliseconds(300))
            let ready = try await RawHTTP.get("/health/ready", port: misnamed.controlPort)
            #expect(ready.status == 503 && ready.body.contains("no Sentinel knows a master named"), "\(ready.body)")
            await misnamed.stop()

            topology.replica.pause()
            defer { topology.replica.resume() }
            let error = await #expect(throws: KeygateError.self) { try await store.revoke(id: issued.record.id, actor: "test") }
            #expect(error?.code == .notReplicated, "\(String(describing: error))")
            #expect(store.durability.notReplicated.load(ordering: .relaxed) == 1)

            // The CLI says so with exit 4; the change itself is on the master, and the event stays.
            environment["KEYGATE_REDIS_URL"] = topology.url
            let result = try await runCommand(try keygateBinary(), ["keys", "revoke", issued.record.id], environment: environment)
            #expect(result.exitCode == 4, "exit \(result.exitCode ?? -1): \(result.stderr)")
            #expect(result.stderr.contains("replica"), "\(result.stderr)")
            #expect(try await store.record(id: issued.record.id).status == .revoked)
            let events = try await store.events()
            #expect(events.contains { $0.type == "revoked" && $0.keyID == issued.record.id })

            // The admin API answers 503 not-replicated with Retry-After.
            topology.replica.resume()
            let admin = try await store.create(.init(user: "ops", scopes: ["keygate:admin"]), actor: "test")
            let other = try await store.create(.init(user: "bob"), actor: "test")
            topology.replica.pause()
            try await TestNode.with(redisURL: topology.url, namespace: ns) { node in
                let response = try await SecurityReviewTests.api("POST", "/v1/keys/\(other.record.id)/revoke", key: admin.key, port: node.controlPort)
                #expect(response.status == 503 && response.header("Retry-After") != nil, "\(response.status) \(response.body)")
                #expect((SecurityReviewTests.json(response)["type"] as? String)?.hasSuffix("/not-replicated") == true, "\(response.body)")
            }
        }
    }
}

/// A revoke that returned success survives the failover of the master to the replica that
/// confirmed it. Trials of: revoke, SIGKILL of the master at once, promotion of the replica. In every
/// other trial the replication link is cut first (a black hole between master and replica), which
/// is when a revoke without `WAIT` would return success and then vanish with the master.
@Suite(.serialized) struct RevokeDurabilityTrials {
    @Test func noRevokeThatSucceededComesBackAfterAFailover() async throws {
        let trials = FaultTests.iterations(8)
        var outcomes: [TrialOutcome] = []
        for trial in 0..<trials { outcomes.append(try await Self.trial(cutLink: trial % 2 == 1)) }
        let confirmed = outcomes.filter { $0 != .reportedNotDurable }
        let resurrected = outcomes.filter { $0 == .confirmedButActiveAfterFailover }
        let cut = outcomes.enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
        #expect(resurrected.isEmpty, "revokes that returned success, active again after a failover: \(resurrected.count) of \(confirmed.count)")
        #expect(confirmed.count == (trials + 1) / 2, "with the link up every revoke is confirmed: \(outcomes)")
        #expect(cut.allSatisfy { $0 == .reportedNotDurable }, "with the link cut every revoke is reported not durable: \(outcomes)")
    }

    enum TrialOutcome: Equatable {
        case confirmedAndRevokedAfterFailover, confirmedButActiveAfterFailover, reportedNotDurable
    }

    /// Master, a black-hole-capable link, replica; revoke (WAIT 1); SIGKILL the master; promote.
    static func trial(cutLink: Bool) async throws -> TrialOutcome {
        let arguments = ["--repl-diskless-sync-delay", "0"]
        let master = try await RedisServerProcess.start(extraArguments: arguments)
        let link = try await FaultProxy.start(upstreamPort: master.port)
        let replica = try await RedisServerProcess.start(extraArguments: arguments + ["--replicaof", "127.0.0.1", "\(link.port)"])
        defer { Task { await link.stop(); await master.stop(); await replica.stop() } }
        try await waitForSync(master: master)
        var configuration = try TestRedis.configuration(url: master.url)
        configuration.waitReplicas = 1
        configuration.waitTimeout = .seconds(1) // returns as soon as the replica confirms; only a cut link waits it out
        let namespace = TestRedis.uniqueNamespace("trial")
        let store = KeyStore(redis: try TestRedis.client(configuration), layout: try KeyStoreLayout(namespace: namespace),
                             format: try KeyFormat(), hasher: KeyHasher())
        let key = try await store.create(.init(user: "alice"), actor: "test")
        if cutLink { link.set(.blackHole) }
        let confirmed = try await revokeConfirmed(store, id: key.record.id)
        await master.kill() // at once: nothing else reaches the replica
        await store.redis.shutdown()
        _ = try await command(port: replica.port, RedisCommand("REPLICAOF", ["NO", "ONE"]))
        let promoted = KeyStore(redis: try TestRedis.client(TestRedis.configuration(url: replica.url)),
                                layout: try KeyStoreLayout(namespace: namespace), format: try KeyFormat(), hasher: KeyHasher())
        defer { Task { await promoted.redis.shutdown() } }
        guard confirmed else { return .reportedNotDurable }
        let status = try await promoted.record(id: key.record.id).status
        return status == .revoked ? .confirmedAndRevokedAfterFailover : .confirmedButActiveAfterFailover
    }

    /// True when the revoke returned success; false when it was reported not durable.
    static func revokeConfirmed(_ store: KeyStore, id: String) async throws -> Bool {
        do {
            try await store.revoke(id: id, actor: "test")
            return true
        } catch {
            if error.code == .notReplicated { return false }
            throw error
        }
    }

    static func waitForSync(master: RedisServerProcess) async throws {
        for _ in 0..<400 {
            let info = try await command(port: master.port, RedisCommand("INFO", ["replication"])).string ?? ""
            if info.contains("state=online") { return }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw TestSupportError("the replica did not synchronise within 10 s")
    }

    static func command(port: Int, _ command: RedisCommand) async throws -> RESPValue {
        var configuration = RedisConfiguration()
        configuration.endpoint = .tcp(host: "127.0.0.1", port: port)
        configuration.requiresMaster = false
        configuration.commandTimeout = .seconds(5) // the test deadline (TestRedis): the full suite loads both cores
        let client = try TestRedis.client(configuration)
        defer { Task { await client.shutdown() } }
        return try await client.send(command)
    }
}

