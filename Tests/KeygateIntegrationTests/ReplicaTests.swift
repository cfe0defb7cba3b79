import Foundation
import KeygateCore
import KeygateRedis
import KeygateTestSupport
import Testing

/// A node or the CLI pointed at a replica (issue 14, "any topology"): Keygate checks with ROLE that
/// it talks to a master and treats anything else as "Redis unavailable here": readiness 503, the
/// data plane 503 (never 401), the admin API 503 `unavailable` (not 500), the CLI exit 4.
@Suite(.serialized) struct ReplicaTests {
    static func withReplica(_ body: (RedisServerProcess, RedisServerProcess) async throws -> Void) async throws {
        // No 5 s wait before the master sends the replica its first copy (diskless sync delay).
        try await RedisServerProcess.withServer(extraArguments: ["--repl-diskless-sync-delay", "0"]) { master in
            try await RedisServerProcess.withServer(extraArguments: ["--replicaof", "127.0.0.1", "\(master.port)"]) { replica in
                // Wait (bounded) until the replica has synchronised, so data written on the master is there.
                let client = try TestRedis.client(TestRedis.configuration(url: master.url))
                defer { Task { await client.shutdown() } }
                for _ in 0..<200 {
                    let info = try await client.send(RedisCommand("INFO", ["replication"])).string ?? ""
                    if info.contains("state=online") { break }
                    try await Task.sleep(for: .milliseconds(25))
                }
                try await body(master, replica)
            }
        }
    }

    @Test func aNodePointedAtAReplicaIsNotReadyAndAnswers503() async throws {
        try await Self.withReplica { master, replica in
            let ns = TestRedis.uniqueNamespace("replica")
            let store = try NodeIntegrationTests.adminStore(url: master.url, namespace: ns)
            defer { Task { await store.redis.shutdown() } }
            let admin = try await store.create(.init(user: "ops", scopes: ["keygate:admin"]), actor: "test")
            let user = try await store.create(.init(user: "alice"), actor: "test")
            let node = try await TestNode.start(redisURL: replica.url, namespace: ns, waitForReady: false)
            do {
                try await Task.sleep(for: .milliseconds(500))
                #expect(try await RawHTTP.get("/health/ready", port: node.port).status == 503)
                #expect(try await RawHTTP.get("/health/ready", port: node.controlPort).status == 503)
                let auth = try await NodeIntegrationTests.auth(user.key, port: node.port)
                #expect(auth.status == 503 && auth.header("Retry-After") != nil, "a valid key on a replica: \(auth.status), never 401")
                let keys = try await SecurityReviewTests.api("GET", "/v1/keys?user=alice", key: admin.key, port: node.controlPort)
                #expect(keys.status == 503 && (SecurityReviewTests.json(keys)["type"] as? String)?.hasSuffix("/unavailable") == true,
                        "admin API on a replica: \(keys.status) \(keys.body)")
            }
            await node.stop()
        }
    }

    @Test func theCLIPointedAtAReplicaExits4SayingWhy() async throws {
        try await Self.withReplica { _, replica in
            var environment = try cliTestEnvironment(label: "replica")
            environment["KEYGATE_REDIS_URL"] = replica.url
            let result = try await runCommand(try keygateBinary(), ["keys", "create", "--user", "alice"], environment: environment)
            #expect(result.exitCode == 4, "exit \(result.exitCode ?? -1): \(result.stderr)")
            #expect(result.stderr.contains("replica"), "\(result.stderr)")
        }
    }

    @Test func writesRefusedByTheServerAreUnavailableNotInternal() async throws {
        try await Self.withReplica { _, replica in
            // Without the ROLE check, the replica's own refusal (READONLY) must still read as 503 / exit 4.
            var configuration = try TestRedis.configuration(url: replica.url)
            configuration.requiresMaster = false
            let store = KeyStore(redis: try TestRedis.client(configuration), layout: try KeyStoreLayout(namespace: TestRedis.uniqueNamespace("ro")),
                                 format: try KeyFormat(), hasher: KeyHasher())
            defer { Task { await store.redis.shutdown() } }
            let error = await #expect(throws: KeygateError.self) { try await store.create(.init(user: "alice"), actor: "test") }
            #expect(error?.code == .unavailable && error?.message.contains("READONLY") == true, "\(String(describing: error))")
        }
    }
}
