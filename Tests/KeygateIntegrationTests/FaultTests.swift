import Foundation
@testable import KeygateCore
import KeygateNode
import KeygateRedis
import KeygateTestSupport
import NIOCore
import Testing

/// The fault suite (numbering from the reliability notes): Redis broken on purpose through the fault
/// proxy, with the history checker asserting the revocation bound and exact usage counts.
/// `KEYGATE_FAULT_ITERATIONS` raises the loop counts for longer local runs (CI uses the defaults).
@Suite struct FaultTests {
    static func iterations(_ ci: Int) -> Int {
        ProcessInfo.processInfo.environment["KEYGATE_FAULT_ITERATIONS"].flatMap(Int.init) ?? ci
    }

    static func auth(_ key: String, _ node: TestNode) async throws -> Int {
        try await NodeIntegrationTests.auth(key, port: node.port).status
    }

    /// Polls `condition` every 5 ms for at most `limit`.
    static func eventually(_ limit: Duration = .seconds(3), _ condition: () async throws -> Bool) async rethrows -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return try await condition()
    }

    /// A throwaway Redis, the fault proxy in front of it, a store that talks to Redis directly (the
    /// operator) and a node that talks through the proxy.
    static func withProxiedNode(namespace: String, redisArguments: [String] = [],
                                configure: (inout NodeConfiguration) -> Void = { _ in },
                                _ body: (RedisServerProcess, FaultProxy, KeyStore, TestNode) async throws -> Void) async throws {
        try await RedisServerProcess.withServer(extraArguments: redisArguments) { redis in
            let proxy = try await FaultProxy.start(upstreamPort: redis.port)
            defer { Task { await proxy.stop() } }
            let store = try NodeIntegrationTests.adminStore(url: redis.url, namespace: namespace)
            defer { Task { await store.redis.shutdown() } }
            try await TestNode.with(redisURL: proxy.url, namespace: namespace, configure: configure) { node in
                try await body(redis, proxy, store, node)
            }
        }
    }

    /// F1: warm caches on three nodes (a valid key, and a cached miss for a key created afterwards);
    /// revoke and create; every node refuses the revoked key within 100 ms of the revoke returning and
    /// accepts the new key at once (its creation evicts the cached miss).
    @Test func f1PropagationBoundOnThreeNodes() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("f1")
        let store = try NodeIntegrationTests.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let history = History()
        try await TestNode.with(redisURL: url, namespace: ns) { a in
            try await TestNode.with(redisURL: url, namespace: ns) { b in
                try await TestNode.with(redisURL: url, namespace: ns) { c in
                    let nodes = [a, b, c]
                    var slowestCreate: Duration = .zero
                    for _ in 0..<Self.iterations(30) {
                        let revokedKey = try await store.create(.init(user: "f1"), actor: "test")
                        let laterKey = store.format.generate()
                        for (index, node) in nodes.enumerated() {
                            #expect(try await history.record(node: index, key: revokedKey.key) { try await Self.auth(revokedKey.key, node) } == 200)
                            #expect(try await Self.auth(laterKey, node) == 401, "cached as unknown")
                        }
                        try await store.revoke(id: revokedKey.record.id, actor: "test")
                        history.revoked(revokedKey.key)
                        let created = ContinuousClock.now
                        _ = try await store.create(.init(user: "f1"), actor: "test", now: Date(), plaintext: laterKey)
                        for (index, node) in nodes.enumerated() {
                            let refused = try await Self.eventually(.seconds(2)) {
                                try await history.record(node: index, key: revokedKey.key) { try await Self.auth(revokedKey.key, node) } == 401
                            }
                            #expect(refused)
                            #expect(try await Self.eventually(.seconds(5)) { try await Self.auth(laterKey, node) == 200 })
                            slowestCreate = max(slowestCreate, ContinuousClock.now - created)
                        }
                    }
                    #expect(slowestCreate < .seconds(5), "a new key is accepted within the negative TTL")
                }
            }
        }
        let violations = history.violations(bound: .milliseconds(100))
        #expect(violations.isEmpty, "\(violations.prefix(5))")
    }

    /// F6: Redis black-holed (connections accepted, nothing forwarded, nothing closed). Uncached keys
    /// get 503 within the deadline, the invalidation channel is reported down, and a revoke made
    /// meanwhile is honoured once the path is back.
    @Test func f6BlackHoleThenRecovery() async throws {
        try await Self.withProxiedNode(namespace: "f6", configure: {
            $0.redis.commandTimeout = .milliseconds(300)
        }) { _, proxy, store, node in
            let warm = try await store.create(.init(user: "f6"), actor: "test")
            let cold = try await store.create(.init(user: "f6"), actor: "test")
            #expect(try await Self.auth(warm.key, node) == 200)

            proxy.set(.blackHole)
            // Timed on the node (the verification latency histogram), not through the test client,
            // which a loaded 2-core machine can stall on its own.
            let latency = node.node.dataPlane.metrics.latency
            let withinASecond = { latency.snapshot().cumulativeCounts[latency.bounds.firstIndex(of: 1)!] }
            let before = withinASecond()
            let coldStatus = try await Self.auth(cold.key, node)
            #expect(coldStatus == 503, "an uncached key cannot be checked: 503, never 401")
            #expect(withinASecond() == before + 1, "answered within 1 s (the deadline is 300 ms): no pile-up")
            #expect(await Self.eventually(.seconds(3)) { !node.node.invalidation.metrics.channelUp.load(ordering: .relaxed) },
                    "the channel is reported down within ping interval + timeout")
            #expect(try await Self.auth(warm.key, node) == 503, "without stale-if-error a suspect cache is not trusted")
            try await store.revoke(id: warm.record.id, actor: "test")

            // Recovered: both event loops' connections answer again (four requests in a row each
            // way), within 2 s of the path coming back; the revoke made meanwhile is honoured.
            proxy.set(.pass)
            let restored = ContinuousClock.now
            let recovered = try await Self.eventually(.seconds(5)) {
                for _ in 0..<4 {
                    guard try await Self.auth(cold.key, node) == 200, try await Self.auth(warm.key, node) == 401 else { return false }
                }
                return true
            }
            let recovery = ContinuousClock.now - restored
            #expect(recovered && recovery < .seconds(2), "recovered: \(recovered) after \(recovery)")
        }
    }

    /// F7: Redis restarts (append-only file on). The node notices, flushes its cache (a new
    /// generation), resubscribes, keeps serving keys that survived in the AOF, honours a revoke made
    /// after the restart, and counts every use exactly once.
    @Test func f7RedisRestartWithAOF() async throws {
        try await RedisServerProcess.withServer(extraArguments: ["--appendonly", "yes", "--appendfsync", "always"]) { redis in
            let store = try NodeIntegrationTests.adminStore(url: redis.url, namespace: "f7")
            defer { Task { await store.redis.shutdown() } }
            let history = History()
            let (key, other) = try await TestNode.with(redisURL: redis.url, namespace: "f7") { node in
                let key = try await store.create(.init(user: "f7"), actor: "test")
                let other = try await store.create(.init(user: "f7"), actor: "test")
                for _ in 0..<5 { #expect(try await history.record(node: 0, key: key.key) { try await Self.auth(key.key, node) } == 200) }
                let generation = node.node.verifier.cache.generation

                try await redis.restart()
                #expect(await Self.eventually(.seconds(5)) { node.node.verifier.cache.generation > generation && node.node.isReady },
                        "the loss was noticed (new cache generation) and the node is ready again")
                #expect(try await Self.auth(other.key, node) == 200, "a key that survived in the AOF")
                for _ in 0..<5 { #expect(try await history.record(node: 0, key: key.key) { try await Self.auth(key.key, node) } == 200) }
                try await store.revoke(id: key.record.id, actor: "test")
                history.revoked(key.key)
                #expect(try await Self.eventually(.seconds(2)) {
                    try await history.record(node: 0, key: key.key) { try await Self.auth(key.key, node) } == 401
                })
                return (key, other)
            }
            // The node has stopped gracefully: every count is in Redis, once.
            #expect(try await store.usage(id: key.record.id).total == Int64(history.successes(of: key.key)))
            #expect(try await store.usage(id: other.record.id).total == 1)
            #expect(history.violations(bound: .milliseconds(100)).isEmpty)
        }
    }

    /// F4: a slow subscriber. The node's subscriber connection stops reading (the proxy stalls it)
    /// while 16 MiB of junk floods the channel; Redis closes it at its pub/sub output-buffer limit.
    /// The node sees the close, flushes, resubscribes and replays the Stream, so a revoke made
    /// meanwhile holds.
    @Test func f4SlowSubscriberClosedByTheOutputBufferLimit() async throws {
        try await Self.withProxiedNode(namespace: "f4", redisArguments: ["--client-output-buffer-limit", "pubsub", "256kb", "64kb", "1"],
                                       configure: {
            $0.invalidation.pingTimeout = .seconds(5) // let the output buffer, not the ping, end it
            $0.invalidation.pingInterval = .seconds(1)
        }) { redis, proxy, store, node in
            let key = try await store.create(.init(user: "f4"), actor: "test")
            #expect(try await Self.auth(key.key, node) == 200)
            let losses = node.node.invalidation.metrics.losses.load(ordering: .relaxed)

            proxy.set(.stall, of: .subscriber)
            let junk = String(repeating: "x", count: 32 * 1024)
            for _ in 0..<2 {
                _ = try await store.redis.pipeline((0..<256).map { _ in
                    RedisCommand("PUBLISH", [.string(store.layout.invalidationChannel), .string(junk)])
                })
            }
            try await store.revoke(id: key.record.id, actor: "test")
            let log = redis.directory.appendingPathComponent("redis.log")
            #expect(await Self.eventually(.seconds(5)) {
                ((try? String(contentsOf: log, encoding: .utf8)) ?? "").contains("overcoming of output buffer limits")
            }, "Redis closed the subscriber at its output-buffer limit")
            proxy.set(.pass)
            #expect(try await Self.eventually(.seconds(5)) { try await Self.auth(key.key, node) == 401 },
                    "the revoke is honoured once the node caught up")
            // The cache turned suspect on the event loop; the loss is counted by a task just after.
            #expect(await Self.eventually(.seconds(2)) { node.node.invalidation.metrics.losses.load(ordering: .relaxed) > losses },
                    "the close was noticed")
            // Ready means resubscribed and caught up: by then the Stream replay has run.
            #expect(await Self.eventually(.seconds(5)) { node.node.isReady })
            let metrics = node.node.invalidation.metrics
            #expect(metrics.replayedEvents.load(ordering: .relaxed) >= 1 || metrics.flushesReplayGap.load(ordering: .relaxed) >= 1,
                    "caught up from the Stream")
        }
    }

    /// F5: Redis hung (SIGSTOP) under an open-loop load of uncached keys. Requests get 503 within
    /// the deadline (no pile-up), a cached key is served only inside the stale-if-error window, and
    /// the node recovers within 2 s of SIGCONT.
    @Test func f5RedisHungUnderLoad() async throws {
        try await RedisServerProcess.withServer { redis in
            let store = try NodeIntegrationTests.adminStore(url: redis.url, namespace: "f5")
            defer { Task { await store.redis.shutdown() } }
            try await TestNode.with(redisURL: redis.url, namespace: "f5", configure: {
                $0.redis.commandTimeout = .milliseconds(300)
                $0.verifier.staleIfError = .seconds(1)
            }) { node in
                let warm = try await store.create(.init(user: "f5"), actor: "test")
                let cold = try await store.create(.init(user: "f5"), actor: "test")
                #expect(try await Self.auth(warm.key, node) == 200)
                let latency = node.node.dataPlane.metrics.latency
                let halfSecond = latency.bounds.firstIndex(of: 0.5)!
                let before = latency.snapshot()

                redis.pause()
                let paused = ContinuousClock.now
                // 200 requests per second for 2 s, each sent on schedule (not after the previous answer).
                let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                    for index in 0..<400 {
                        try await Task.sleep(until: paused + .milliseconds(5 * index))
                        group.addTask { try await Self.auth(store.format.generate(), node) }
                    }
                    return try await group.reduce(into: [Int]()) { $0.append($1) }
                }
                let staleWhilePaused = try await Self.auth(warm.key, node)
                redis.resume()
                let resumed = ContinuousClock.now

                #expect(Set(statuses) == [503], "uncached keys cannot be checked: \(Set(statuses))")
                let after = latency.snapshot()
                let answered = after.count - before.count
                let withinHalfASecond = after.cumulativeCounts[halfSecond] - before.cumulativeCounts[halfSecond]
                #expect(answered >= 401 && withinHalfASecond == answered,
                        "every verdict within 0.5 s (deadline 300 ms): \(withinHalfASecond) of \(answered)")
                #expect(staleWhilePaused == 503, "past the 1 s stale-if-error window a cached key is not served")
                #expect(try await Self.eventually(.seconds(2)) { try await Self.auth(cold.key, node) == 200 },
                        "recovered within 2 s of SIGCONT")
                #expect(ContinuousClock.now - resumed < .seconds(3))
            }
        }
    }

    /// F11: Redis unavailable for seconds while the node keeps counting (cached keys, served through
    /// stale-if-error), with a small in-memory cap so counts go to the spill file. Once Redis answers
    /// again every count is in Redis, once, and the spill file is gone. (This test found that spilled
    /// counts waited for the node's next start; they are now replayed as soon as Redis is back.)
    @Test func f11RedisDownWithCountersPending() async throws {
        try await RedisServerProcess.withServer { redis in
            let store = try NodeIntegrationTests.adminStore(url: redis.url, namespace: "f11")
            defer { Task { await store.redis.shutdown() } }
            let spill = FileManager.default.temporaryDirectory.appendingPathComponent("f11-\(UUID().uuidString).jsonl").path
            defer { try? FileManager.default.removeItem(atPath: spill) }
            let keys = try await (0..<8).asyncMap { _ in try await store.create(.init(user: "f11"), actor: "test") }
            var oks = 0
            try await TestNode.with(redisURL: redis.url, namespace: "f11", configure: {
                $0.usage.maxPendingKeys = 3
                $0.usage.spillPath = spill
                $0.verifier.staleIfError = .seconds(30) // keep serving cached keys through the outage
                $0.redis.commandTimeout = .milliseconds(300)
            }) { node in
                for key in keys { if try await Self.auth(key.key, node) == 200 { oks += 1 } }
                // The outage: Redis stops answering (SIGSTOP); the node notices at its ping deadline.
                redis.pause()
                #expect(await Self.eventually(.seconds(5)) { !node.node.invalidation.metrics.channelUp.load(ordering: .relaxed) },
                        "the node saw Redis go")
                // Two waves: the first becomes the batch being retried, the second piles up past the
                // in-memory cap of 3 keys and goes to the spill file.
                for wave in 0..<2 {
                    for round in 0..<16 { if try await Self.auth(keys[(round + wave) % keys.count].key, node) == 200 { oks += 1 } }
                    try await Task.sleep(for: .milliseconds(400))
                }
                #expect(node.node.flusher.metrics.spilled.load(ordering: .relaxed) > 0, "the cap was hit and the spill file used")
                redis.resume()
                #expect(await Self.eventually(.seconds(10)) {
                    node.node.flusher.metrics.pendingKeys.load(ordering: .relaxed) == 0
                        && !FileManager.default.fileExists(atPath: spill)
                }, "everything flushed after Redis returned")
                #expect(node.node.flusher.metrics.dropped.load(ordering: .relaxed) == 0)
            }
            // The operator's client may still be failing fast from the outage: retry the read.
            var total: Int64 = -1
            _ = await Self.eventually(.seconds(5)) {
                var sum: Int64 = 0
                for key in keys {
                    guard let usage = try? await store.usage(id: key.record.id) else { return false }
                    sum += usage.total
                }
                total = sum
                return true
            }
            #expect(total == Int64(oks), "\(total) counted for \(oks) successful requests")
        }
    }

    /// F10: a usage flush whose reply is lost (the write happened) is retried with the same batch id
    /// and counted exactly once.
    @Test func f10AmbiguousUsageFlushCountsOnce() async throws {
        try await Self.withProxiedNode(namespace: "f10", configure: {
            $0.redis.commandTimeout = .milliseconds(300)
            // This test is about the usage flush. A pong late by 500 ms under the full suite's load
            // made the subscriber resubscribe, and its Stream replay (on the data connection, whose
            // replies are dropped here) kept the cache untrusted: every request 503 (seen once).
            $0.invalidation.pingTimeout = .seconds(3)
        }) { _, proxy, store, node in
            let keys = try await (0..<5).asyncMap { _ in try await store.create(.init(user: "f10"), actor: "test") }
            for key in keys { #expect(try await Self.auth(key.key, node) == 200) } // cached from now on
            try await Task.sleep(for: .milliseconds(300)) // the warm-up uses are flushed
            let flushed = node.node.flusher.metrics.flushedBatches.load(ordering: .relaxed)

            proxy.set(.dropReplies, of: .data)
            var oks = 0
            for round in 0..<40 { if try await Self.auth(keys[round % keys.count].key, node) == 200 { oks += 1 } }
            #expect(oks == 40, "cache hits need no Redis")
            #expect(await Self.eventually(.seconds(5)) { node.node.flusher.metrics.flushFailures.load(ordering: .relaxed) > 0 })
            proxy.set(.pass)
            #expect(await Self.eventually(.seconds(5)) {
                node.node.flusher.metrics.flushedBatches.load(ordering: .relaxed) > flushed
                    && node.node.flusher.metrics.pendingKeys.load(ordering: .relaxed) == 0
            })
            var total: Int64 = 0
            for key in keys { total += try await store.usage(id: key.record.id).total }
            #expect(total == 5 + 40, "every use counted once, none twice")
            #expect(node.node.flusher.metrics.duplicateBatches.load(ordering: .relaxed) >= 1,
                    "the retry found its batch already applied")
        }
    }

    /// F12: the lookup/invalidation race. The data connection's replies are delayed 50 ms; a key is
    /// looked up, revoked 10 ms later (the invalidation arrives before the lookup's reply), and the
    /// next request must not be a 200 from a cached stale verdict.
    @Test func f12LookupRacingAnInvalidationIsNeverCached() async throws {
        try await Self.withProxiedNode(namespace: "f12") { _, proxy, store, node in
            proxy.set(.delay(toRedis: .zero, toClient: .milliseconds(50)), of: .data)
            var staleAnswers = 0, cases = 0
            for _ in 0..<Self.iterations(20) {
                // Five keys at once per round: five independent races.
                let results = try await withThrowingTaskGroup(of: Int.self) { group in
                    for _ in 0..<5 {
                        group.addTask {
                            let key = try await store.create(.init(user: "f12"), actor: "test")
                            async let first = Self.auth(key.key, node)
                            try await Task.sleep(for: .milliseconds(10))
                            try await store.revoke(id: key.record.id, actor: "test")
                            _ = try await first // started before the revoke: either answer is allowed
                            return try await Self.auth(key.key, node)
                        }
                    }
                    return try await group.reduce(into: [Int]()) { $0.append($1) }
                }
                cases += results.count
                staleAnswers += results.filter { $0 == 200 }.count
                let understood = results.allSatisfy { [200, 401].contains($0) }
                #expect(understood, "\(results)")
            }
            #expect(staleAnswers == 0, "\(staleAnswers) of \(cases) requests after a revoke got 200")
            #expect(node.node.verifier.metrics.cache.placeholderDiscards.load(ordering: .relaxed) > 0,
                    "the race actually happened")
        }
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}
