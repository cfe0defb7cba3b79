import Foundation
@testable import KeygateCore
@testable import KeygateDataPlane
import KeygateNode
import KeygateRedis
import KeygateTestSupport
import NIOCore
import NIOPosix
import Testing

/// Keygate nodes started in-process on ephemeral ports against a real redis-server.
@Suite struct NodeIntegrationTests {
    static func adminStore(url: String, namespace: String) throws -> KeyStore {
        KeyStore(redis: try TestRedis.client(TestRedis.configuration(url: url)), layout: try KeyStoreLayout(namespace: namespace),
                 format: try KeyFormat(), hasher: KeyHasher())
    }

    static func auth(_ key: String, port: Int, header: String = "X-API-Key", extra: [String] = []) async throws -> RawHTTP.Response {
        try await RawHTTP.get("/auth", port: port, headers: ["\(header): \(key)"] + extra)
    }

    /// Polls every 2 ms (at most `limit`) until `port` answers `key` with `status`; returns how long that took.
    static func timeUntil(_ status: Int, _ key: String, port: Int, limit: Duration = .seconds(2)) async throws -> Duration? {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < limit {
            if try await auth(key, port: port).status == status { return ContinuousClock.now - start }
            try await Task.sleep(for: .milliseconds(2))
        }
        return nil
    }

    /// Time from `acknowledged` (the change call returned) to the node applying an invalidation that
    /// arrived after `since`; zero if it was applied before the call returned. Nil after 2 s.
    static func propagation(on node: TestNode, since: UInt64, acknowledged: UInt64) async throws -> Duration? {
        let metrics = node.node.verifier.metrics.cache
        let deadline = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < deadline {
            let applied = metrics.lastInvalidationUptimeNanoseconds.load(ordering: .relaxed)
            if applied > since { return .nanoseconds(Int64(applied > acknowledged ? applied - acknowledged : 0)) }
            try await Task.sleep(for: .milliseconds(1))
        }
        return nil
    }

    static func timeUntilRefused(_ key: String, port: Int, limit: Duration = .seconds(2)) async throws -> Duration? {
        try await timeUntil(401, key, port: port, limit: limit)
    }

    @Test func aRevokeReachesTheOtherNodeWithin100Milliseconds() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("node")
        let store = try Self.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        try await TestNode.with(redisURL: url, namespace: ns) { a in
            try await TestNode.with(redisURL: url, namespace: ns) { b in
                let issued = try await store.create(.init(user: "alice", scopes: ["read"]), actor: "test")
                for node in [a, b] {
                    let response = try await Self.auth(issued.key, port: node.port)
                    #expect(response.status == 200)
                    #expect(response.header("X-Keygate-User") == "alice")
                    #expect(response.header("X-Keygate-Key-Id") == issued.record.id)
                    #expect(response.header("X-Keygate-Scopes") == "read")
                }
                // Warm: the next answers come from each node's cache.
                #expect(try await Self.auth(issued.key, port: b.port).status == 200)

                // A key cached as unknown on both nodes, created afterwards, works at once.
                let later = store.format.generate()
                for node in [a, b] { #expect(try await Self.auth(later, port: node.port).status == 401) }
                // Propagation is measured on each node (when it applied the invalidation, against when the
                // change returned), so the test client's own connection costs do not count; the polling
                // then checks that the answer really changed.
                let beforeCreate = NIODeadline.now().uptimeNanoseconds
                _ = try await store.create(.init(user: "bob"), actor: "test", now: Date(), plaintext: later)
                let created = NIODeadline.now().uptimeNanoseconds
                for node in [a, b] {
                    let propagation = try await Self.propagation(on: node, since: beforeCreate, acknowledged: created)
                    #expect(propagation != nil && propagation! < .milliseconds(100), "create propagated in \(String(describing: propagation))")
                    #expect(try await Self.timeUntil(200, later, port: node.port) != nil, "the new key is accepted")
                }

                let beforeRevoke = NIODeadline.now().uptimeNanoseconds
                try await store.revoke(id: issued.record.id, actor: "test")
                let revoked = NIODeadline.now().uptimeNanoseconds
                for node in [b, a] {
                    let propagation = try await Self.propagation(on: node, since: beforeRevoke, acknowledged: revoked)
                    #expect(propagation != nil && propagation! < .milliseconds(100), "revoke propagated in \(String(describing: propagation))")
                    #expect(try await Self.timeUntilRefused(issued.key, port: node.port) != nil, "the revoked key is refused")
                }
            }
        }
    }

    @Test func aRevokeMadeWhileTheSubscriberWasDisconnectedIsReplayed() async throws {
        try await RedisServerProcess.withServer { server in
            let ns = TestRedis.uniqueNamespace("replay")
            let store = try Self.adminStore(url: server.url, namespace: ns)
            defer { Task { await store.redis.shutdown() } }
            try await TestNode.with(redisURL: server.url, namespace: ns) { node in
                let issued = try await store.create(.init(user: "alice"), actor: "test")
                #expect(try await Self.auth(issued.key, port: node.port).status == 200)
                #expect(try await Self.auth(issued.key, port: node.port).status == 200) // cached

                // Kill the subscriber and revoke (the store's steps: register, apply, log) in one
                // pipeline: the revoke lands while it is down, so both of its publishes are lost and
                // only the Stream replay can deliver it.
                let hash = issued.record.hash
                let now = String(Int64(Date().timeIntervalSince1970 * 1000))
                let operation = PendingOperation(op: PendingOperation.newID(), kind: .status, hash: hash.hex, keyID: issued.record.id,
                                                 user: "alice", event: ["type", "revoked", "key_id", issued.record.id, "user", "alice",
                                                                        "actor", "test", "time", now, "hash", hash.hex])
                let payload = String(decoding: try JSONEncoder().encode(operation), as: UTF8.self)
                for script in [KeyStoreScripts.begin, KeyStoreScripts.applyStatus, KeyStoreScripts.log] {
                    _ = try await store.redis.send(RedisCommand("SCRIPT", ["LOAD", .string(script.source)]))
                }
                let replies = try await store.redis.pipeline([
                    RedisCommand("CLIENT", ["KILL", "TYPE", "pubsub"]),
                    RedisCommand("EVALSHA", [.string(KeyStoreScripts.begin.sha1), 1, .string(store.layout.pending),
                                             .string(operation.op), .string(payload)]),
                    RedisCommand("EVALSHA", [.string(KeyStoreScripts.applyStatus.sha1), 2,
                                             .string(store.layout.record(hash)), .string(store.layout.unlogged(hash)),
                                             .string(operation.op), .string(now), "10000", .string(store.layout.invalidationChannel),
                                             .string(hash.hex), .string(issued.record.id), "revoked", .string(now)]),
                    RedisCommand("EVALSHA", [.string(KeyStoreScripts.log.sha1), 3,
                                             .string(store.layout.pending), .string(store.layout.events), .string(store.layout.epoch),
                                             "100000", .string(store.layout.invalidationChannel), .string(operation.op), "2", .string(hash.hex)]),
                ])
                #expect(replies[2].array?.first == .integer(1), "the revoke was applied: \(replies[2])")
                #expect(replies[3].array?.first?.string?.isEmpty == false, "and logged: \(replies[3])")
                #expect(replies[0] == .integer(1))
                let elapsed = try await Self.timeUntilRefused(issued.key, port: node.port, limit: .seconds(5))
                #expect(elapsed != nil, "the revoked key is refused after the reconnect")
                let deadline = ContinuousClock.now + .seconds(5)
                while !node.node.isReady && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
                #expect(node.node.invalidation.metrics.losses.load(ordering: .relaxed) >= 1)
                #expect(node.node.invalidation.metrics.replayedEvents.load(ordering: .relaxed) >= 1, "the revoke came from the Stream")
                #expect(try await Self.auth(issued.key, port: node.port).status == 401, "and stays refused once the cache is trusted again")
            }
        }
    }

    @Test func usageTotalsEqualThe200sAfterAGracefulStop() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("usage")
        let store = try Self.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        var keys: [IssuedKey] = []
        for index in 0..<3 { keys.append(try await store.create(.init(user: "u\(index)"), actor: "test")) }
        let a = try await TestNode.start(redisURL: url, namespace: ns) { $0.usage.interval = .seconds(30) } // only the final flush
        let b = try await TestNode.start(redisURL: url, namespace: ns)
        var ok = [0, 0, 0]
        for request in 0..<300 {
            let keyIndex = request % 3
            let port = request % 2 == 0 ? a.port : b.port
            if try await Self.auth(keys[keyIndex].key, port: port).status == 200 { ok[keyIndex] += 1 }
        }
        await a.stop()
        await b.stop()
        #expect(ok == [100, 100, 100])
        for (index, key) in keys.enumerated() {
            #expect(try await store.usage(id: key.record.id).total == Int64(ok[index]), "key \(index)")
        }
    }

    /// B6: a flood of random well-formed keys from one address. Past the limit the address gets 429
    /// and causes no more Redis lookups; a valid key it already used is still served; other
    /// addresses (by X-Forwarded-For from a trusted proxy) are not affected; a spoofed leftmost entry
    /// does not help.
    @Test func enumerationIsLimitedPerClientAddress() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("b6")
        let store = try Self.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        try await TestNode.with(redisURL: url, namespace: ns, configure: {
            $0.dataPlane.failureLimit = 20
            $0.dataPlane.failureWindow = .seconds(60)
            $0.dataPlane.trustedProxies = [CIDR("127.0.0.1")!]
        }) { node in
            let valid = try await store.create(.init(user: "b6"), actor: "test")
            let fresh = try await store.create(.init(user: "b6"), actor: "test")
            let attacker = ["X-Forwarded-For: 203.0.113.9"]
            #expect(try await Self.auth(valid.key, port: node.port, extra: attacker).status == 200)
            let lookupsBefore = node.node.verifier.metrics.lookups.load(ordering: .relaxed)
            var statuses: [Int: Int] = [:]
            for _ in 0..<200 {
                statuses[try await Self.auth(store.format.generate(), port: node.port, extra: attacker).status, default: 0] += 1
            }
            let lookups = node.node.verifier.metrics.lookups.load(ordering: .relaxed) - lookupsBefore
            #expect(statuses == [401: 20, 429: 180], "\(statuses)")
            #expect(lookups == 20, "Redis lookups stop at the limit (\(lookups))")
            let limited = try await Self.auth(store.format.generate(), port: node.port, extra: attacker)
            #expect(limited.status == 429 && Int(limited.header("Retry-After") ?? "") ?? 0 >= 1)
            #expect(try await Self.auth(valid.key, port: node.port, extra: attacker).status == 200, "a cached valid key still works")
            #expect(try await Self.auth(fresh.key, port: node.port, extra: attacker).status == 429, "an uncached key would cost a lookup")
            #expect(try await Self.auth(fresh.key, port: node.port, extra: ["X-Forwarded-For: 198.51.100.4"]).status == 200,
                    "another client is not affected")
            #expect(try await Self.auth(store.format.generate(), port: node.port,
                                        extra: ["X-Forwarded-For: 198.51.100.77, 203.0.113.9"]).status == 429,
                    "a spoofed leftmost entry does not escape the limit")
            #expect(node.node.dataPlane.metrics.value(.rateLimited) >= 182)
        }
    }

    @Test func malformedKeysCauseNoRedisCommands() async throws {
        try await RedisServerProcess.withServer { server in
            let ns = TestRedis.uniqueNamespace("malformed")
            try await TestNode.with(redisURL: server.url, namespace: ns) { node in
                let admin = try TestRedis.client(TestRedis.configuration(url: server.url))
                defer { Task { await admin.shutdown() } }
                let format = try KeyFormat()
                let valid = format.generate()
                var badChecksum = Array(valid)
                badChecksum[10] = badChecksum[10] == "A" ? "B" : "A"
                let keys = ["", "kg_", "short", "xx_" + valid.dropFirst(3), String(badChecksum), valid + "0",
                            String(repeating: "A", count: 8_000), "kg_" + String(repeating: "!", count: 49)]
                let before = try await Self.dataCommandCount(admin)
                for round in 0..<25 {
                    for key in keys { _ = try await Self.auth(key, port: node.port, extra: round == 0 ? [] : ["X-Round: \(round)"]) }
                }
                let after = try await Self.dataCommandCount(admin)
                #expect(after - before == 1, "only our own INFO call: malformed keys cost zero Redis commands")
            }
        }
    }

    /// Calls of every command except the node's background ones (subscriber PING and SUBSCRIBE, the
    /// replay's XINFO and XRANGE, CLIENT) and INFO itself.
    static func dataCommandCount(_ client: RedisClient) async throws -> Int {
        let info = try await client.send(RedisCommand("INFO", ["commandstats"])).string ?? ""
        var total = 0
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            let name = line.dropFirst(8).prefix { $0 != ":" }
            if ["ping", "subscribe", "xinfo|stream", "xinfo", "xrange", "client|setname", "client|kill", "client|list", "client"].contains(String(name)) { continue }
            if let calls = line.split(separator: ",").first?.split(separator: "=").last, let value = Int(calls) { total += value }
        }
        return total
    }

    @Test func withRedisGoneAnUncachedKeyGets503AndTheNodeStaysUp() async throws {
        let server = try await RedisServerProcess.start()
        let ns = TestRedis.uniqueNamespace("down")
        let node = try await TestNode.start(redisURL: server.url, namespace: ns)
        await server.stop()
        let unknown = try KeyFormat().generate()
        for _ in 0..<3 {
            let response = try await Self.auth(unknown, port: node.port)
            #expect(response.status == 503, "never 401 when the key could not be checked")
            #expect(response.header("Retry-After") == "1")
        }
        #expect(try await RawHTTP.get("/health/live", port: node.port).status == 200)
        let deadline = ContinuousClock.now + .seconds(5)
        var ready = 200
        while ready == 200 && ContinuousClock.now < deadline {
            ready = try await RawHTTP.get("/health/ready", port: node.port).status
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(ready == 503)
        await node.stop()
    }

    @Test func aRecordEditedToCarryHeaderTextIsRefusedNotEchoed() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("edited")
        let store = try Self.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice", scopes: ["read"]), actor: "test")
        // Someone edits the record in Redis by hand: the user now ends in a second header.
        _ = try await store.redis.send(RedisCommand("HSET", [.string(store.layout.record(issued.record.hash)), "user", "alice\r\nX-Evil: 1"]))
        try await TestNode.with(redisURL: url, namespace: ns) { node in
            let response = try await Self.auth(issued.key, port: node.port)
            #expect(response.status == 503, "a record the store would not have written is not a verdict")
            #expect(response.header("X-Evil") == nil && response.header("X-Keygate-User") == nil)
            #expect(node.node.verifier.metrics.malformedRecords.load(ordering: .relaxed) == 1)
        }
    }

    @Test func everyKindOfBadKeyGetsTheSameBytes() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("oracle")
        let store = try Self.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let revoked = try await store.create(.init(user: "u"), actor: "test")
        try await store.revoke(id: revoked.record.id, actor: "test")
        let disabled = try await store.create(.init(user: "u"), actor: "test")
        try await store.setEnabled(id: disabled.record.id, false, actor: "test")
        let expiresAt = Date().addingTimeInterval(2)
        let expiring = try await store.create(.init(user: "u", expiresAt: expiresAt), actor: "test")
        try await TestNode.with(redisURL: url, namespace: ns) { node in
            #expect(try await Self.auth(expiring.key, port: node.port).status == 200)
            // Expired while cached: decided at request time.
            try await Task.sleep(for: .milliseconds(Int64(max(0, expiresAt.timeIntervalSinceNow) * 1000) + 200))
            let responses = [
                try await RawHTTP.get("/auth", port: node.port),
                try await Self.auth("not-a-key", port: node.port),
                try await Self.auth(store.format.generate(), port: node.port),
                try await Self.auth(revoked.key, port: node.port),
                try await Self.auth(disabled.key, port: node.port),
                try await Self.auth(expiring.key, port: node.port),
            ]
            #expect(responses.allSatisfy { $0.status == 401 })
            #expect(Set(responses.map(\.raw)).count == 1, "byte-identical: missing, malformed, unknown, revoked, disabled, expired")
            #expect(responses[0].header("WWW-Authenticate") == "ApiKey realm=\"keygate\"")
        }
    }

    @Test func theSeedExamplesWorkVerbatim() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("seed")
        let store = try Self.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice"), actor: "test")
        try await TestNode.with(redisURL: url, namespace: ns) { node in
            let endpoint = "http://127.0.0.1:\(node.port)/auth"
            let curl = try await runCommand(try which("curl"), ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "GET", endpoint,
                                                               "-H", "X-API-Key: \(issued.key)"])
            #expect(curl.stdout == "200")
            for header in ["X-API-Key", "x-api-key"] {
                let script = """
                import requests
                api_key = '\(issued.key)'
                api_url = '\(endpoint)'
                headers = { '\(header)': api_key }
                response = requests.get(api_url, headers=headers)
                print(response.status_code, response.headers.get('X-Keygate-User'))
                """
                let python = try await runCommand(try which("python3"), ["-c", script])
                #expect(python.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "200 alice", "\(header): \(python.stderr)")
            }
        }
    }

    @Test func connectionsPastTheCapGet503() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("cap")
        try await TestNode.with(redisURL: url, namespace: ns, configure: { $0.dataPlane.maxConnections = 1 }) { node in
            // Hold the one allowed connection open, then try a second.
            let holder = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: node.port).get()
            try await Task.sleep(for: .milliseconds(100))
            let refused = try await RawHTTP.get("/health/live", port: node.port)
            #expect(refused.status == 503 && refused.header("Retry-After") == "1")
            #expect(node.node.dataPlane.metrics.refusedConnections.load(ordering: .relaxed) >= 1)
            try await holder.close()
        }
    }

    /// B2: abusive header values over raw sockets get a 4xx (never a 5xx or a crash), and the node
    /// keeps answering; a valid key padded with spaces is still the key.
    @Test func headerAbuseGetsA4xxAndNeverCrashes() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("b2")
        let store = try Self.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "b2"), actor: "test")
        try await TestNode.with(redisURL: url, namespace: ns) { node in
            let headerLines: [(String, [UInt8])] = [
                ("empty value", Array("X-API-Key: \r\n".utf8)),
                ("NUL", Array("X-API-Key: kg_ab".utf8) + [0] + Array("cd\r\n".utf8)),
                ("bare CR", Array("X-API-Key: kg_ab\rcd\r\n".utf8)),
                ("bare LF", Array("X-API-Key: kg_ab\ncd\r\n".utf8)),
                ("folded line", Array("X-API-Key: kg_abc\r\n continued\r\n".utf8)),
                ("non-UTF-8", Array("X-API-Key: kg_".utf8) + [0xFF, 0xFE, 0xC3, 0x28] + Array("\r\n".utf8)),
                ("space before the colon", Array("X-API-Key : \(issued.key)\r\n".utf8)),
                ("DEL character", Array("X-API-Key: kg_ab".utf8) + [0x7F] + Array("\r\n".utf8)),
                ("8 KiB key", Array("X-API-Key: kg_\(String(repeating: "a", count: 8_192))\r\n".utf8)),
                ("duplicated header", Array("X-API-Key: \(issued.key)\r\nx-api-key: \(issued.key)\r\n".utf8)),
            ]
            for (name, line) in headerLines {
                let request = Array("GET /auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".utf8) + line + Array("\r\n".utf8)
                let raw = try await RawHTTP.exchange(request, port: node.port)
                let status = Int(raw.dropFirst("HTTP/1.1 ".count).prefix(3)) ?? 0
                #expect((400..<500).contains(status), "\(name): \(status)")
                #expect(!raw.contains(issued.key), "\(name): the key is never echoed")
                #expect(try await RawHTTP.get("/health/live", port: node.port).status == 200, "alive after \(name)")
            }
            let padded = try await Self.auth("  \(issued.key)\t", port: node.port)
            #expect(padded.status == 200, "surrounding whitespace is not part of the value (RFC 9110)")
        }
    }

    /// B5: no timing oracle. Unknown and revoked keys, both uncached (each costs one lookup), take
    /// indistinguishable time, sampled interleaved so drift hits both alike.
    @Test func unknownAndRevokedKeysTakeTheSameTime() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("b5")
        let store = try Self.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let samples = FaultTests.iterations(150)
        var revoked: [String] = []
        for _ in 0..<samples {
            let key = try await store.create(.init(user: "b5"), actor: "test")
            try await store.revoke(id: key.record.id, actor: "test")
            revoked.append(key.key)
        }
        try await TestNode.with(redisURL: url, namespace: ns) { node in
            var unknownTimes: [Duration] = [], revokedTimes: [Duration] = []
            for index in 0..<samples {
                for (key, into) in [(store.format.generate(), 0), (revoked[index], 1)] {
                    let start = ContinuousClock.now
                    let response = try await Self.auth(key, port: node.port)
                    let elapsed = ContinuousClock.now - start
                    #expect(response.status == 401)
                    if into == 0 { unknownTimes.append(elapsed) } else { revokedTimes.append(elapsed) }
                }
            }
            func percentile(_ times: [Duration], _ p: Double) -> Double {
                let sorted = times.sorted()
                let value = sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
                return Double(value.components.seconds) + Double(value.components.attoseconds) / 1e18
            }
            for p in [0.5, 0.9] {
                let unknown = percentile(unknownTimes, p), gone = percentile(revokedTimes, p)
                #expect(max(unknown, gone) / min(unknown, gone) < 1.5,
                        "p\(Int(p * 100)): unknown \(unknown * 1e6) us, revoked \(gone * 1e6) us")
            }
        }
    }

    /// An idle keep-alive connection is closed between 1 and 1.5 idle timeouts after its last
    /// request; one that never sends anything too. (2 s: the client's own write can lag by
    /// hundreds of milliseconds while the whole suite runs.)
    @Test func idleConnectionsAreClosed() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("idle")
        try await TestNode.with(redisURL: url, namespace: ns, configure: { $0.dataPlane.idleTimeout = .seconds(2) }) { node in
            async let silent: Duration = {
                let start = ContinuousClock.now
                _ = try await RawHTTP.exchange([], port: node.port, timeout: .seconds(10))
                return ContinuousClock.now - start
            }()
            let keepAliveStart = ContinuousClock.now
            let raw = try await RawHTTP.exchange(Array("GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n".utf8), port: node.port, timeout: .seconds(10))
            let keptAlive = ContinuousClock.now - keepAliveStart
            #expect(raw.hasPrefix("HTTP/1.1 200 OK"))
            #expect(keptAlive >= .milliseconds(1_900) && keptAlive < .seconds(6), "idle keep-alive connection closed after \(keptAlive)")
            let silentFor = try await silent
            #expect(silentFor >= .milliseconds(1_900) && silentFor < .seconds(6), "silent connection closed after \(silentFor)")
        }
    }

    @Test func httpEdgeCases() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("http")
        let store = try Self.adminStore(url: url, namespace: ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice", scopes: ["read"]), actor: "test")
        try await TestNode.with(redisURL: url, namespace: ns) { node in
            // Keep-alive and pipelining: three requests in one write, answered in order.
            let pipelined = "GET /auth HTTP/1.1\r\nHost: x\r\nX-API-Key: \(issued.key)\r\n\r\n"
                + "GET /auth HTTP/1.1\r\nHost: x\r\n\r\n"
                + "GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            let raw = try await RawHTTP.exchange(Array(pipelined.utf8), port: node.port)
            let statuses = raw.components(separatedBy: "HTTP/1.1 ").dropFirst().map { String($0.prefix(3)) }
            #expect(statuses == ["200", "401", "200"])

            #expect(try await Self.auth(issued.key, port: node.port, extra: ["X-Keygate-Required-Scopes: read"]).status == 200)
            #expect(try await Self.auth(issued.key, port: node.port, extra: ["X-Keygate-Required-Scopes: read, admin"]).status == 403)
            #expect(try await Self.auth(issued.key, port: node.port, extra: ["X-API-Key: \(issued.key)"]).status == 400, "two keys")
            #expect(try await RawHTTP.get("/auth?api_key=\(issued.key)", port: node.port).status == 400, "key in the URL")
            #expect(try await RawHTTP.get("/nope", port: node.port).status == 404)
            #expect(try await RawHTTP.get("/v1/verify", port: node.port).status == 405)
            // Identity headers come from the node only: a client's copy is not echoed back.
            let spoofed = try await Self.auth(issued.key, port: node.port, extra: ["X-Keygate-User: mallory"])
            #expect(spoofed.headers.filter { $0.0.lowercased() == "x-keygate-user" }.map(\.1) == ["alice"])

            let big = try await Self.auth(String(repeating: "a", count: 16 * 1024), port: node.port)
            #expect(big.status == 431)
            let huge = try await Self.auth(String(repeating: "a", count: 1 << 20), port: node.port)
            #expect(huge.status == 431 || huge.status == 400)
            let garbage = try await RawHTTP.send("NOT HTTP AT ALL\r\n\r\n", port: node.port)
            #expect(garbage.status == 400)

            let body = "{\"key\":\"\(issued.key)\"}"
            let verify = try await RawHTTP.send("POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)", port: node.port)
            #expect(verify.status == 200 && verify.body.contains("\"valid\":true") && verify.body.contains("\"user\":\"alice\""))
            let unknownBody = "{\"key\":\"\(store.format.generate())\"}"
            let unknown = try await RawHTTP.send("POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Length: \(unknownBody.utf8.count)\r\nConnection: close\r\n\r\n\(unknownBody)", port: node.port)
            #expect(unknown.status == 200 && unknown.body.contains("\"valid\":false") && unknown.body.contains("\"code\":\"INVALID\""))
            let tooBig = String(repeating: "x", count: 10_000)
            let large = try await RawHTTP.send("POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Length: \(tooBig.utf8.count)\r\nConnection: close\r\n\r\n\(tooBig)", port: node.port)
            #expect(large.status == 413)
            #expect(try await RawHTTP.get("/health/live", port: node.port).status == 200, "still up after all that")
        }
    }
}
