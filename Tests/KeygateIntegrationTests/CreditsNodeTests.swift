import Foundation
import KeygateCore
import KeygateNode
import KeygateRedis
import KeygateTestSupport
import Synchronization
import Testing

/// Keys' credits on real nodes sharing one Redis: exact across nodes, a crashed node's lease, refill
/// at a period boundary, rotation, edits while traffic runs, Redis down, and `/v1/verify`.
@Suite struct CreditsNodeTests {
    static func store(_ url: String, _ namespace: String) throws -> KeyStore {
        try NodeIntegrationTests.adminStore(url: url, namespace: namespace)
    }

    static func statuses(_ responses: [RawHTTP.Response]) -> [Int: Int] {
        responses.reduce(into: [:]) { $0[$1.status, default: 0] += 1 }
    }

    @Test func fiftyCreditsAdmitExactlyFiftyOf500OverThreeNodes() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("credits")
        let store = try Self.store(url, ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice", credits: try Credits(remaining: 50)), actor: "test")
        #expect(issued.record.credits?.remaining == 50)
        try await RateLimitNodeTests.withNodes(3, url: url, namespace: ns) { nodes in
            let responses = try await RateLimitNodeTests.burst(issued.key, ports: nodes.map(\.port), requests: 500)
            #expect(Self.statuses(responses) == [200: 50, 429: 450], "\(Self.statuses(responses))")
            for refused in responses where refused.status == 429 {
                #expect(refused.body.contains(#""error":"usage_exceeded""#))
                #expect(refused.header("Retry-After") == nil, "no refill: nothing to wait for")
            }
            #expect(nodes.reduce(0) { $0 + Int($1.node.dataPlane.metrics.value(.ok)) } == 50)
            #expect(nodes.reduce(0) { $0 + Int($1.node.dataPlane.metrics.value(.usageExceeded)) } == 450)
            #expect(nodes.reduce(0) { $0 + Int($1.node.credits.snapshot.creditsLeased) } == 50)
        }
        #expect(try await store.record(id: issued.record.id).credits?.remaining == 0)
        // Only admitted requests are uses.
        #expect(try await store.usage(id: issued.record.id).total == 50)
    }

    @Test func unspentCreditsGoBackWhenAKeyIsIdleAndAtShutdown() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("credits")
        let store = try Self.store(url, ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice", credits: try Credits(remaining: 10_000)), actor: "test")
        let node = try await TestNode.start(redisURL: url, namespace: ns)
        // A quick run of requests makes the node lease ahead: it holds credits it has not spent.
        for _ in 0..<40 { #expect(try await NodeIntegrationTests.auth(issued.key, port: node.port).status == 200) }
        try await Task.sleep(for: .milliseconds(100)) // a lease ahead may still be out
        let held = node.node.credits.held(issued.record.limitID)
        let balance = try await store.record(id: issued.record.id).credits?.remaining ?? -1
        #expect(balance == 10_000 - 40 - held, "held \(held), balance \(balance)")
        // Idle for a second: given back.
        let deadline = ContinuousClock.now + .seconds(5)
        while node.node.credits.held(issued.record.limitID) > 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(try await store.record(id: issued.record.id).credits?.remaining == 10_000 - 40)
        // At shutdown, whatever is held goes back too.
        for _ in 0..<40 { _ = try await NodeIntegrationTests.auth(issued.key, port: node.port) }
        await node.stop()
        #expect(try await store.record(id: issued.record.id).credits?.remaining == 10_000 - 80)
    }

    @Test func aNodeKilledHoldingALeaseGrantsNoCreditTwice() async throws {
        let binary = try keygateBinary()
        var environment = try cliTestEnvironment(label: "credits-kill")
        let url = try #require(environment["KEYGATE_REDIS_URL"]), ns = try #require(environment["KEYGATE_NAMESPACE"])
        let store = try Self.store(url, ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice", credits: try Credits(remaining: 300)), actor: "test")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("credits-kill-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("serve.log").path
        environment["KEYGATE_DATA_PORT"] = "0"
        environment["KEYGATE_CONTROL_PORT"] = "0"
        let server = try ChildProcess(executable: binary, arguments: ["serve", "--threads", "2"], stdoutPath: log, stderrPath: log,
                                      environment: environment)
        var ports: [String: Int] = [:]
        let deadline = ContinuousClock.now + .seconds(15)
        while ports.count < 2 && ContinuousClock.now < deadline && server.isRunning {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") {
                for plane in ["data plane", "control plane"] where line.contains("\(plane) listening") {
                    if let range = line.range(of: "address=127.0.0.1:") { ports[plane] = Int(line[range.upperBound...].prefix { $0.isNumber }) }
                }
            }
            if ports.count < 2 { try await Task.sleep(for: .milliseconds(50)) }
        }
        let port = try #require(ports["data plane"]), control = try #require(ports["control plane"])
        while (try? await RawHTTP.get("/health/ready", port: port).status) != 200 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        // Concurrent requests make the node lease more than it spends at once.
        var admittedByKilled = 0
        for _ in 0..<3 {
            admittedByKilled += try await RateLimitNodeTests.burst(issued.key, ports: [port], requests: 20).filter { $0.status == 200 }.count
        }
        let metrics = try await RawHTTP.get("/metrics", port: control).body
        let leased = try #require(Self.sample(metrics, "keygate_credits_leased_total"))
        let returned = try #require(Self.sample(metrics, "keygate_credits_returned_total"))
        let held = leased - returned - admittedByKilled
        server.signal(SIGKILL)
        await server.waitForExit(timeout: .seconds(10))
        #expect(admittedByKilled == 60)
        // The stated cost of a crash: what the node held, at most one lease (a quarter of the balance, at most 1,000).
        #expect(held >= 0 && held <= 300 / 4 + 20, "held \(held), leased \(leased), returned \(returned), admitted \(admittedByKilled)")
        let left = 300 - leased + returned
        #expect(try await store.record(id: issued.record.id).credits?.remaining == left)

        // The other nodes spend the rest: exactly what Redis had left, nothing the dead node held.
        try await RateLimitNodeTests.withNodes(2, url: url, namespace: ns) { nodes in
            let responses = try await RateLimitNodeTests.burst(issued.key, ports: nodes.map(\.port), requests: 800)
            let admitted = responses.filter { $0.status == 200 }.count
            #expect(admitted == left, "admitted \(admitted) after the kill, \(admittedByKilled) before, \(held) lost")
            #expect(admitted + admittedByKilled + held == 300)
        }
    }

    /// The value of an unlabelled counter in Prometheus text.
    static func sample(_ text: String, _ name: String) -> Int? {
        text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }.map { Int($0) }
    }

    final class Clock: Sendable {
        let now = Atomic<Int64>(Int64((Date().timeIntervalSince1970 * 1_000).rounded(.down)))
        func set(_ milliseconds: Int64) { now.store(milliseconds, ordering: .relaxed) }
    }

    @Test(arguments: [Credits.Refill.Interval.monthly, .daily])
    func creditsRefillAtThePeriodBoundary(_ interval: Credits.Refill.Interval) async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("credits-refill")
        let store = try Self.store(url, ns)
        defer { Task { await store.redis.shutdown() } }
        let refill = try Credits.Refill(amount: 5, interval: interval, day: interval == .monthly ? 31 : nil)
        let issued = try await store.create(.init(user: "alice", credits: try Credits(remaining: 3, refill: refill)), actor: "test")
        let setting = try #require(issued.record.creditSetting)
        let clock = Clock()
        clock.set(setting.setAt)
        try await TestNode.with(redisURL: url, namespace: ns, configure: { configuration in
            configuration.clock = { clock.now.load(ordering: .relaxed) }
        }) { node in
            var statuses: [Int] = []
            for _ in 0..<5 { statuses.append(try await NodeIntegrationTests.auth(issued.key, port: node.port).status) }
            #expect(statuses == [200, 200, 200, 429, 429])
            // The refusal says when the refill comes.
            let next = refill.start(ofPeriod: setting.period + 1)
            let refused = try await NodeIntegrationTests.auth(issued.key, port: node.port)
            let retryAfter = try #require(refused.header("Retry-After").flatMap(Int64.init))
            #expect(abs(retryAfter - (next - clock.now.load(ordering: .relaxed)) / 1_000) <= 1)
            // A millisecond before the boundary: still none.
            clock.set(next - 1)
            #expect(try await NodeIntegrationTests.auth(issued.key, port: node.port).status == 429)
            // At the boundary: the refill amount, not more.
            clock.set(next)
            statuses = []
            for _ in 0..<7 { statuses.append(try await NodeIntegrationTests.auth(issued.key, port: node.port).status) }
            #expect(statuses == [200, 200, 200, 200, 200, 429, 429], "\(statuses)")
        }
    }

    @Test func rotationCarriesTheCreditsAndTheirBalance() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("credits")
        let store = try Self.store(url, ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice", credits: try Credits(remaining: 5)), actor: "test")
        try await TestNode.with(redisURL: url, namespace: ns) { node in
            for _ in 0..<2 { #expect(try await NodeIntegrationTests.auth(issued.key, port: node.port).status == 200) }
            let successor = try await store.rotate(id: issued.record.id, grace: .seconds(60), actor: "test")
            #expect(successor.record.credits != nil && successor.record.limitID == issued.record.id)
            var statuses: [Int] = []
            for _ in 0..<4 { statuses.append(try await NodeIntegrationTests.auth(successor.key, port: node.port).status) }
            #expect(statuses == [200, 200, 200, 429])
            #expect(try await NodeIntegrationTests.auth(issued.key, port: node.port).status == 429)
        }
    }

    @Test func creditsEditedWhileTrafficRunsApplyOnEveryNode() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("credits")
        let store = try Self.store(url, ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice", credits: try Credits(remaining: 1_000)), actor: "test")
        try await RateLimitNodeTests.withNodes(2, url: url, namespace: ns) { nodes in
            let ports = nodes.map(\.port)
            #expect(try await RateLimitNodeTests.burst(issued.key, ports: ports, requests: 20).allSatisfy { $0.status == 200 })
            // Both nodes hold leases of the old balance; a new setting replaces it everywhere.
            _ = try await store.update(id: issued.record.id, .init(credits: .some(try Credits(remaining: 3))), actor: "test")
            try await Task.sleep(for: .milliseconds(100)) // the invalidation bound
            let limited = try await RateLimitNodeTests.burst(issued.key, ports: ports, requests: 20)
            #expect(Self.statuses(limited) == [200: 3, 429: 17], "\(Self.statuses(limited))")
            // Removing the credits lifts them everywhere.
            _ = try await store.update(id: issued.record.id, .init(credits: .some(nil)), actor: "test")
            try await Task.sleep(for: .milliseconds(100))
            #expect(try await RateLimitNodeTests.burst(issued.key, ports: ports, requests: 10).allSatisfy { $0.status == 200 })
        }
    }

    @Test func verifyReportsTheCreditsAndSpendsTheCost() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("credits")
        let store = try Self.store(url, ns)
        defer { Task { await store.redis.shutdown() } }
        let issued = try await store.create(.init(user: "alice", credits: try Credits(remaining: 5)), actor: "test")
        try await TestNode.with(redisURL: url, namespace: ns) { node in
            func verify(cost: Int) async throws -> [String: Any] {
                let body = #"{"key":"\#(issued.key)","cost":\#(cost)}"#
                let response = try await RawHTTP.send("POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                                      + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)", port: node.port)
                #expect(response.status == 200)
                let object = try JSONSerialization.jsonObject(with: Data(response.body.utf8))
                return object as? [String: Any] ?? [:]
            }
            let first = try await verify(cost: 3)
            #expect(first["code"] as? String == "VALID")
            #expect((first["credits"] as? [String: Any])?["remaining"] as? Int == 2)
            #expect((first["credits"] as? [String: Any])?["reset"] is NSNull)
            let refused = try await verify(cost: 3)
            #expect(refused["code"] as? String == "USAGE_EXCEEDED" && refused["valid"] as? Bool == false)
            #expect((refused["credits"] as? [String: Any])?["remaining"] as? Int == 2)
            // The refused request cost nothing: 2 still fit.
            #expect(try await verify(cost: 2)["code"] as? String == "VALID")
            #expect(try await verify(cost: 1)["code"] as? String == "USAGE_EXCEEDED")
        }
    }

    @Test func aRateLimitRefusalSpendsNoCreditAndACreditRefusalNoRateLimitUnit() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("credits")
        let store = try Self.store(url, ns)
        defer { Task { await store.redis.shutdown() } }
        let limit = try RateLimit(parsing: "4/1h")
        let issued = try await store.create(.init(user: "alice", rateLimits: [limit], credits: try Credits(remaining: 2)), actor: "test")
        try await TestNode.with(redisURL: url, namespace: ns) { node in
            if limit.window(at: RateLimitNodeTests.milliseconds()).endsAt - RateLimitNodeTests.milliseconds() < 30_000 {
                try await RateLimitNodeTests.waitForWindowStart(limit)
            }
            var statuses: [Int] = []
            for _ in 0..<4 { statuses.append(try await NodeIntegrationTests.auth(issued.key, port: node.port).status) }
            #expect(statuses == [200, 200, 429, 429])
            // The two credit refusals gave their rate-limit units back: with credits again, 2 more fit the window.
            _ = try await store.update(id: issued.record.id, .init(credits: .some(try Credits(remaining: 100))), actor: "test")
            try await Task.sleep(for: .milliseconds(100))
            statuses = []
            for _ in 0..<3 { statuses.append(try await NodeIntegrationTests.auth(issued.key, port: node.port).status) }
            #expect(statuses == [200, 200, 429], "\(statuses)")
        }
    }

    /// With Redis gone, a node spends only the credits it holds, then answers 503 (it cannot know
    /// whether the balance has more): never a credit beyond its leases, never a wrong 429.
    @Test func withRedisDownNoCreditIsGrantedBeyondTheLeasesHeld() async throws {
        let server = try await RedisServerProcess.start()
        let ns = TestRedis.uniqueNamespace("credits-down")
        let store = try Self.store(server.url, ns)
        let issued = try await store.create(.init(user: "alice", credits: try Credits(remaining: 1_000)), actor: "test")
        await store.redis.shutdown()
        let node = try await TestNode.start(redisURL: server.url, namespace: ns) { $0.verifier.staleIfError = .seconds(30) }
        for _ in 0..<3 { _ = try await RateLimitNodeTests.burst(issued.key, ports: [node.port], requests: 20) }
        await server.stop()
        let held = node.node.credits.held(issued.record.limitID)
        var statuses: [Int: Int] = [:]
        for _ in 0..<(held + 5) { statuses[try await NodeIntegrationTests.auth(issued.key, port: node.port).status, default: 0] += 1 }
        #expect(statuses[200] == held && statuses[503] == 5, "held \(held): \(statuses) \(node.node.credits.snapshot) verifier \(node.node.verifier.metrics.staleServed.load(ordering: .relaxed))")
        #expect(node.node.credits.snapshot.leaseFailures > 0)
        #expect(try await RawHTTP.get("/health/live", port: node.port).status == 200)
        await node.stop()
    }
}
