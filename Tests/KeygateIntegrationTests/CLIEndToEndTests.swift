import Foundation
import KeygateTestSupport
import Testing

/// The `keygate` binary, run as a user would, against the test Redis.
@Suite struct CLIEndToEndTests {
    let environment: [String: String]
    let binary: String

    init() throws {
        binary = try keygateBinary()
        environment = try cliTestEnvironment(label: "cli")
    }

    func keygate(_ arguments: String..., environment extra: [String: String] = [:]) async throws -> CommandResult {
        try await runCommand(binary, arguments, environment: environment.merging(extra) { $1 })
    }

    func json(_ result: CommandResult) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(result.stdout.utf8))
    }

    @Test func theKeyLifecycleFromTheCommandLine() async throws {
        let created = try await keygate("keys", "create", "--user", "alice", "--name", "laptop", "--scope", "read",
                                        "--scope", "write", "--expires-in", "30d", "--json")
        #expect(created.exitCode == 0, "\(created.stderr)")
        let key = try #require(try json(created) as? [String: Any])
        let id = try #require(key["id"] as? String)
        let plaintext = try #require(key["key"] as? String)
        #expect(plaintext.hasPrefix("kg_") && plaintext.count == 52)
        for field in ["id", "key", "user", "name", "scopes", "status", "created_at", "expires_at", "last_used_at", "version"] {
            #expect(key.keys.contains(field), "create --json has \(field)")
        }
        #expect(key["scopes"] as? [String] == ["read", "write"] && key["status"] as? String == "active")

        let human = try await keygate("keys", "create", "--user", "alice")
        #expect(human.exitCode == 0 && human.stdout.contains("Store this key now"))

        let list = try await keygate("keys", "list", "--user", "alice", "--json")
        let records = try #require(try json(list) as? [[String: Any]])
        #expect(records.count == 2 && records.allSatisfy { $0["key"] == nil }, "list never shows a key")
        #expect(!list.stdout.contains(plaintext))

        let table = try await keygate("keys", "list", "--user", "alice")
        #expect(table.stdout.hasPrefix("ID") && table.stdout.contains(id))

        let show = try await keygate("keys", "show", id, "--json")
        #expect((try json(show) as? [String: Any])?["name"] as? String == "laptop")

        let rotated = try await keygate("keys", "rotate", id, "--grace", "1h", "--json")
        let successor = try #require(try json(rotated) as? [String: Any])
        #expect(successor["key"] is String && successor["id"] as? String != id)
        #expect(successor["rotated_from"] as? String == id)

        let usage = try await keygate("keys", "usage", id, "--days", "3", "--json")
        let usageJSON = try #require(try json(usage) as? [String: Any])
        #expect(usageJSON["total"] as? Int == 0 && (usageJSON["daily"] as? [Any])?.count == 3)
        for field in ["id", "total", "daily", "hourly", "last_used_at"] { #expect(usageJSON.keys.contains(field)) }

        let revoked = try await keygate("keys", "revoke", id)
        #expect(revoked.exitCode == 0 && revoked.stdout.contains("revoked \(id)"))
        #expect(try await keygate("keys", "revoke", id).exitCode == 0, "revoking twice succeeds")

        let all = try await keygate("users", "revoke", "alice")
        #expect(all.exitCode == 0 && all.stdout.contains("revoked 2 key(s) of alice"))

        let events = try await keygate("events", "--json")
        let types = try #require(try json(events) as? [[String: Any]]).compactMap { $0["type"] as? String }
        #expect(types == ["created", "created", "rotated", "revoked", "revoked", "revoked"])
        let first = try #require(try json(events) as? [[String: Any]]).first?["id"] as? String
        let page = try await keygate("events", "--after", try #require(first), "--json")
        #expect((try json(page) as? [Any])?.count == 5)
        #expect(!events.stdout.contains("hash"), "the audit output shows no key hash")
    }

    @Test func limitsAndCreditsFromTheCommandLine() async throws {
        let created = try await keygate("keys", "create", "--user", "dana", "--rate-limit", "100/1m", "--rate-limit", "hourly=5000/1h",
                                        "--credits", "1000", "--refill", "1000/month:15", "--json")
        #expect(created.exitCode == 0, "\(created.stderr)")
        let key = try #require(try json(created) as? [String: Any])
        let id = try #require(key["id"] as? String)
        #expect((key["rate_limits"] as? [[String: Any]])?.map { $0["name"] as? String } == ["1m", "hourly"])
        let credits = try #require(key["credits"] as? [String: Any])
        #expect(credits["remaining"] as? Int == 1000)
        #expect((credits["refill"] as? [String: Any])?["day"] as? Int == 15)
        let shown = try await keygate("keys", "show", id)
        #expect(shown.stdout.contains("1000 left, refilled to 1000/month:15"), "\(shown.stdout)")

        let updated = try await keygate("keys", "update", id, "--credits", "5", "--no-rate-limits", "--json")
        #expect(updated.exitCode == 0, "\(updated.stderr)")
        let record = try #require(try json(updated) as? [String: Any])
        #expect((record["credits"] as? [String: Any])?["remaining"] as? Int == 5 && (record["rate_limits"] as? [Any])?.isEmpty == true)
        let lifted = try await keygate("keys", "update", id, "--no-credits", "--json")
        #expect((try json(lifted) as? [String: Any])?["credits"] is NSNull)

        // Bad input is a usage error and changes nothing.
        for bad in [["--credits", "-1"], ["--credits", "5", "--refill", "5/week"], ["--refill", "5/day"], ["--no-credits", "--credits", "5"]] {
            let result = try await runCommand(binary, ["keys", "update", id] + bad, environment: environment)
            #expect(result.exitCode != 0, "\(bad)")
        }
        let events = try await keygate("events", "--json")
        let fields = try #require(try json(events) as? [[String: Any]]).compactMap { $0["fields"] as? String }
        #expect(fields == ["rate_limits,credits", "credits"], "\(fields)")
    }

    @Test func usersListAndUsageFromTheCommandLine() async throws {
        for user in ["hank", "hanna", "ida"] {
            let created = try await keygate("keys", "create", "--user", user)
            #expect(created.exitCode == 0, "\(created.stderr)")
        }
        let listed = try await keygate("users", "list", "--prefix", "han", "--json")
        #expect((try json(listed) as? [String: Any])?["users"] as? [String] == ["hank", "hanna"], "\(listed.stdout)")
        let paged = try await keygate("users", "list", "--prefix", "han", "--limit", "1")
        #expect(paged.stdout.contains("hank") && paged.stdout.contains("--after hank") && !paged.stdout.contains("hanna"), "\(paged.stdout)")
        let usage = try await keygate("users", "usage", "ida", "--days", "2")
        #expect(usage.exitCode == 0 && usage.stdout.contains("total         0") && usage.stdout.contains("RATE_LIMITED"), "\(usage.stdout)")
        #expect(try await keygate("users", "usage", "nobody").exitCode == 3)
    }

    @Test func userLimitsFromTheCommandLine() async throws {
        let created = try await keygate("keys", "create", "--user", "gina", "--json")
        #expect(created.exitCode == 0, "\(created.stderr)")
        let set = try await keygate("users", "limits", "gina", "--rate-limit", "plan=100/1m", "--credits", "500", "--refill", "500/month")
        #expect(set.exitCode == 0, "\(set.stderr)")
        #expect(set.stdout.contains("100/1m"), "\(set.stdout)")
        #expect(set.stdout.contains("500 left, refilled to 500/month") && set.stdout.contains("keys_updated  1"), "\(set.stdout)")
        // Options given replace their part only.
        let lifted = try await keygate("users", "limits", "gina", "--no-rate-limits", "--json")
        let shown = try #require(try json(lifted) as? [String: Any])
        #expect((shown["rate_limits"] as? [Any])?.isEmpty == true)
        #expect((shown["credits"] as? [String: Any])?["remaining"] as? Int == 500)
        let read = try await keygate("users", "limits", "gina", "--json")
        #expect((try json(read) as? [String: Any])?["keys_updated"] == nil)
        for bad in [["--credits", "-1"], ["--rate-limit", "0/1m"], ["--no-credits", "--credits", "5"], ["--refill", "5/day"]] {
            let result = try await runCommand(binary, ["users", "limits", "gina"] + bad, environment: environment)
            #expect(result.exitCode != 0, "\(bad)")
        }
    }

    @Test func serveAnswersThenStopsGracefullyOnSIGTERMWithCountsFlushed() async throws {
        let created = try await keygate("keys", "create", "--user", "carol", "--json")
        let key = try #require((try json(created) as? [String: Any])?["key"] as? String)
        let id = try #require((try json(created) as? [String: Any])?["id"] as? String)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("serve.log").path
        var env = environment
        env["KEYGATE_DATA_PORT"] = "0" // the kernel picks; the log says which
        env["KEYGATE_CONTROL_PORT"] = "0"
        env["KEYGATE_USAGE_FLUSH_INTERVAL"] = "1h" // only the final flush on SIGTERM can count these
        env["KEYGATE_USAGE_SPILL_PATH"] = directory.appendingPathComponent("spill.jsonl").path
        env["KEYGATE_LOG_LEVEL"] = "debug" // per-request lines too: they must carry ids, never keys
        let server = try ChildProcess(executable: binary, arguments: ["serve", "--threads", "2"], stdoutPath: log, stderrPath: log, environment: env)
        let deadline = ContinuousClock.now + .seconds(15)
        var port = 0
        var ready = false
        while !ready && ContinuousClock.now < deadline && server.isRunning {
            // The data plane's line: the control plane logs its own address too, in either order.
            if port == 0, let text = try? String(contentsOfFile: log, encoding: .utf8),
               let line = text.split(separator: "\n").first(where: { $0.contains("data plane listening") }),
               let range = line.range(of: "address=127.0.0.1:") {
                port = Int(line[range.upperBound...].prefix { $0.isNumber }) ?? 0
            }
            if port != 0 { ready = (try? await RawHTTP.get("/health/ready", port: port).status) == 200 }
            if !ready { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(ready, "serve became ready: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        var ok = 0
        for _ in 0..<7 where try await RawHTTP.get("/auth", port: port, headers: ["X-API-Key: \(key)", "X-Request-Id: req-42 <b>"]).status == 200 { ok += 1 }
        #expect(ok == 7)
        let unknown = "kg_" + String(repeating: "A", count: 49)
        _ = try await RawHTTP.get("/auth", port: port, headers: ["X-API-Key: \(unknown)"])
        server.signal(SIGTERM)
        await server.waitForExit(timeout: .seconds(15))
        #expect(server.exitCode == 0)
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(!output.contains(key) && !output.contains(String(key.dropFirst(3).prefix(20))), "the log never holds a key")
        #expect(!output.contains(unknown))
        #expect(output.contains("key_id=\(id)") && output.contains("request_id=req-42b") && !output.contains("<b>"), "request lines carry ids")
        let usage = try await keygate("keys", "usage", id, "--json")
        #expect((try json(usage) as? [String: Any])?["total"] as? Int == 7)
    }

    @Test func errorsGoToStderrWithAnExitCodeAndAHint() async throws {
        let missing = try await keygate("keys", "show", "key_doesnotexist")
        #expect(missing.exitCode == 3)
        #expect(missing.stderr.contains("no key with id 'key_doesnotexist'") && missing.stderr.contains("keys list"))
        #expect(missing.stdout.isEmpty)

        let badDuration = try await keygate("keys", "create", "--user", "u", "--expires-in", "3x")
        #expect(badDuration.exitCode == 64)
        #expect(badDuration.stderr.contains("--expires-in") && badDuration.stderr.contains("e.g. 30d"))

        let badUser = try await keygate("keys", "create", "--user", "two words")
        #expect(badUser.exitCode == 1 && badUser.stderr.contains("user"))

        let unreachable = try ReservedPort()
        let down = try await keygate("keys", "list", "--user", "u", environment: ["KEYGATE_REDIS_URL": "redis://127.0.0.1:\(unreachable.port)"])
        #expect(down.exitCode == 4)
        #expect(down.stderr.contains("cannot reach Redis") && down.stderr.contains("KEYGATE_REDIS_URL"))

        let badURL = try await keygate("keys", "list", "--user", "u", "--redis-url", "http://x")
        #expect(badURL.exitCode == 64 && badURL.stderr.contains("unsupported scheme"), "bad usage: 64, as ArgumentParser's own")

        let badPrefix = try await keygate("keys", "create", "--user", "u", environment: ["KEYGATE_KEY_PREFIX": "Bad_"])
        #expect(badPrefix.exitCode == 64 && badPrefix.stderr.contains("key prefix"))
        withExtendedLifetime(unreachable) {}
    }
}
