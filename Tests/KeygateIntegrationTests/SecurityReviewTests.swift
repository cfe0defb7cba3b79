import Foundation
import KeygateCore
import KeygateDataPlane
import KeygateNode
import KeygateTestSupport
import Synchronization
import Testing

/// The security review's findings (issue 13), each tested where a user meets it: the admin API over
/// real sockets, the data plane over raw sockets, the CLI as a process. Each of these failed on the
/// code before its fix. Serialized: each test starts a node, and the rest of the suite runs
/// alongside on two cores.
@Suite(.serialized) struct SecurityReviewTests {
    /// One admin API call over a real socket to the node's control port.
    static func api(_ method: String, _ target: String, key: String, json: String? = nil, port: Int) async throws -> RawHTTP.Response {
        var request = "\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: \(key)\r\nConnection: close\r\n"
        if let json {
            request += "Content-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\n\r\n\(json)"
        } else {
            request += "Content-Length: 0\r\n\r\n"
        }
        return try await RawHTTP.send(request, port: port)
    }

    static func json(_ response: RawHTTP.Response) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(response.body.utf8))) as? [String: Any] ?? [:]
    }

    /// Everything but ASCII letters and digits as %XX (Foundation's `.alphanumerics` keeps é).
    static func percentEncoded(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")) ?? text
    }

    static func withNode(_ body: (TestNode, KeyStore, String) async throws -> Void) async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("sec")
        try await TestNode.with(redisURL: url, namespace: ns) { node in
            let admin = try await node.node.store.create(.init(user: "ops", scopes: ["keygate:admin"]), actor: "test")
            try await body(node, node.node.store, admin.key)
        }
    }

    // 1. User names are byte strings: a canonically equivalent name is another user.
    @Test(arguments: [("Ken", "\u{212A}en"), ("jos\u{E9}", "jose\u{301}"), ("\u{C5}sa", "\u{212B}sa")])
    func aSelfServiceKeyNeverReachesAnEquivalentlySpelledUser(victim: String, attacker: String) async throws {
        try await Self.withNode { node, store, _ in
            let victimKey = try await store.create(.init(user: victim, scopes: ["read"]), actor: "test")
            let selfKey = try await store.create(.init(user: attacker, scopes: ["keygate:self", "read"]), actor: "test")
            // The victim's key is cached first, so an interned identity could be shared.
            #expect(try await NodeIntegrationTests.auth(victimKey.key, port: node.port).header("X-Keygate-User") == victim)

            let list = try await Self.api("GET", "/v1/keys?user=\(Self.percentEncoded(victim))", key: selfKey.key, port: node.controlPort)
            #expect(list.status == 403, "listed another user's keys: \(list.status) \(list.body)")
            let create = try await Self.api("POST", "/v1/keys", key: selfKey.key,
                                            json: #"{"user":"\#(victim)","scopes":["read"]}"#, port: node.controlPort)
            #expect(create.status == 403, "created a key for another user: \(create.status)")
            let revoke = try await Self.api("POST", "/v1/keys/\(victimKey.record.id)/revoke", key: selfKey.key, port: node.controlPort)
            #expect(revoke.status == 404, "revoked another user's key: \(revoke.status)")
            #expect(try await store.record(id: victimKey.record.id).status == .active)

            // The attacker's own keys say who they belong to, byte for byte.
            let own = try await Self.api("GET", "/v1/keys", key: selfKey.key, port: node.controlPort)
            let users = (Self.json(own)["keys"] as? [[String: Any]])?.compactMap { $0["user"] as? String } ?? []
            #expect(own.status == 200 && users.count == 1 && users.allSatisfy { Array($0.utf8) == Array(attacker.utf8) })
            let header = try await NodeIntegrationTests.auth(selfKey.key, port: node.port).header("X-Keygate-User")
            #expect(header.map { Array($0.utf8) } == Array(attacker.utf8), "X-Keygate-User of the attacker's key: \(header ?? "-")")
        }
    }

    // 2. A request must arrive within the request timeout (5 s by default) of its first byte.
    @Test func partialRequestsAreClosedOnBothPlanes() async throws {
        try await Self.withNode { node, _, _ in
            func closedAfter(_ port: Int, trickle: Bool) async throws -> (Duration, String) {
                let start = ContinuousClock.now
                let head = Array("GET /health/live HTTP/1.1\r\nHost: x\r\n".utf8)
                let reply: String
                if trickle {
                    reply = try await RawHTTP.trickle(head + Array("X-Pad: aaaaaaaaaaaaaaaaaaaa".utf8), every: .seconds(1), port: port,
                                                      timeout: .seconds(15))
                } else {
                    reply = try await RawHTTP.exchange(head, port: port, timeout: .seconds(15))
                }
                return (ContinuousClock.now - start, reply)
            }
            async let dataSilent = closedAfter(node.port, trickle: false)
            async let dataTrickle = closedAfter(node.port, trickle: true)
            async let controlSilent = closedAfter(node.controlPort, trickle: false)
            async let controlTrickle = closedAfter(node.controlPort, trickle: true)
            for (name, (elapsed, reply)) in [("data, half a head", try await dataSilent), ("data, trickling", try await dataTrickle),
                                             ("control, half a head", try await controlSilent),
                                             ("control, trickling", try await controlTrickle)] {
                #expect(elapsed >= .milliseconds(4_500) && elapsed < .seconds(9), "\(name): closed after \(elapsed)")
                #expect(!reply.hasPrefix("HTTP/1.1 200"), "\(name): \(reply.prefix(40))")
            }
            let (_, dataReply) = try await dataSilent
            #expect(dataReply.hasPrefix("HTTP/1.1 408"), "the data plane says why: \(dataReply.prefix(40))")
        }
    }

    @Test func gracefulStopDoesNotWaitForAPartialRequest() async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("sec")
        let node = try await TestNode.start(redisURL: url, namespace: ns)
        let partial = Task { try await RawHTTP.exchange(Array("GET /auth HTTP/1.1\r\nHost: x\r\n".utf8), port: node.port, timeout: .seconds(15)) }
        let metrics = node.node.dataPlane.metrics
        for _ in 0..<500 where metrics.openConnections.load(ordering: .relaxed) == 0 { try await Task.sleep(for: .milliseconds(10)) }
        try await Task.sleep(for: .milliseconds(100)) // the partial head has been read
        let start = ContinuousClock.now
        await node.stop()
        let stopped = ContinuousClock.now - start
        _ = try await partial.value
        #expect(stopped < .seconds(2), "SIGTERM-equivalent stop took \(stopped) with one partial connection open")
    }

    // 4. Path parameters are percent-decoded; revoking a user with no keys is not a success.
    @Test func usersRevokeDecodesThePathAndSaysWhenThereIsNobody() async throws {
        try await Self.withNode { node, store, admin in
            for user in ["caf\u{E9}", "a/b", "50%off"] {
                let issued = try await store.create(.init(user: user), actor: "test")
                #expect(try await NodeIntegrationTests.auth(issued.key, port: node.port).status == 200)
                let revoked = try await Self.api("POST", "/v1/users/\(Self.percentEncoded(user))/revoke", key: admin, port: node.controlPort)
                #expect(revoked.status == 200 && Self.json(revoked)["revoked"] as? Int == 1, "\(user): \(revoked.status) \(revoked.body)")
                #expect(Self.json(revoked)["user"] as? String == user)
                #expect(try await store.record(id: issued.record.id).status == .revoked, "\(user)'s key still active")
                #expect(try await NodeIntegrationTests.timeUntilRefused(issued.key, port: node.port) != nil)
                let again = try await Self.api("POST", "/v1/users/\(Self.percentEncoded(user))/revoke", key: admin, port: node.controlPort)
                #expect(again.status == 200 && Self.json(again)["revoked"] as? Int == 0, "a user whose keys are all revoked: 200, 0")
            }
            let nobody = try await Self.api("POST", "/v1/users/nobody-at-all/revoke", key: admin, port: node.controlPort)
            #expect(nobody.status == 404, "a user with no keys: \(nobody.status) \(nobody.body)")
            #expect((Self.json(nobody)["type"] as? String)?.hasSuffix("/not-found") == true)
            let shown = try await Self.api("GET", "/v1/keys/\(Self.percentEncoded("key_x"))", key: admin, port: node.controlPort)
            #expect(shown.status == 404)
        }
    }

    // 3. Event ids are two unsigned 64-bit numbers: anything else is the caller's mistake (422).
    @Test func eventIdsOutOfRangeAre422() async throws {
        try await Self.withNode { node, _, admin in
            for after in ["99999999999999999999-99999999999999999999", "18446744073709551616-0", "1-18446744073709551616", "1--1", "x-1"] {
                let response = try await Self.api("GET", "/v1/events?after=\(after)", key: admin, port: node.controlPort)
                #expect(response.status == 422 && Self.json(response)["field"] as? String == "after", "\(after): \(response.status)")
            }
            let largest = try await Self.api("GET", "/v1/events?after=18446744073709551615-18446744073709551615", key: admin, port: node.controlPort)
            #expect(largest.status == 200, "the largest event id is valid: \(largest.status) \(largest.body)")
        }
    }

    // 5. A key anywhere in the request target is refused, however it is spelled.
    @Test func aKeyAnywhereInTheURLIsRefused() async throws {
        try await Self.withNode { node, store, _ in
            let issued = try await store.create(.init(user: "alice"), actor: "test")
            let key = issued.key
            let encoded = key.utf8.map { String(format: "%%%02X", $0) }.joined()
            let doubly = encoded.replacingOccurrences(of: "%", with: "%25")
            for target in ["/auth?\(key)", "/auth/\(key)", "/auth/x/\(key)/y", "/auth?next=%2F\(key)", "/auth/\(encoded)",
                           "/auth?q=\(encoded)", "/auth/\(doubly)", "/health/live?\(key)", "/auth?api_key=1"] {
                let response = try await RawHTTP.get(target, port: node.port, headers: ["X-API-Key: \(key)"])
                #expect(response.status == 400, "\(target.prefix(40))...: \(response.status)")
            }
            // A path that merely looks like the prefix is not a key.
            #expect(try await RawHTTP.get("/auth/kg_docs/page", port: node.port, headers: ["X-API-Key: \(key)"]).status == 200)
            #expect(try await RawHTTP.get("/auth?page=2", port: node.port, headers: ["X-API-Key: \(key)"]).status == 200)
        }
    }

    // 6. /metrics does not tell which refusal a key got.
    @Test func metricsDoNotTellRevokedFromUnknown() async throws {
        try await Self.withNode { node, store, _ in
            let revoked = try await store.create(.init(user: "alice"), actor: "test")
            try await store.revoke(id: revoked.record.id, actor: "test")
            let results = { try await Self.dataResults(port: node.controlPort) }
            let before = try await results()
            #expect(try await NodeIntegrationTests.auth(revoked.key, port: node.port).status == 401)
            let afterRevoked = try await results()
            #expect(try await NodeIntegrationTests.auth(store.format.generate(), port: node.port).status == 401)
            let afterUnknown = try await results()
            for label in ["revoked", "unknown", "disabled", "expired"] {
                #expect(afterUnknown[label] == nil, "a result=\"\(label)\" series is exported")
            }
            #expect(afterRevoked["invalid"] == (before["invalid"] ?? 0) + 1 && afterUnknown["invalid"] == (before["invalid"] ?? 0) + 2)
        }
    }

    /// `keygate_verify_result_total{plane="data"}` by result label.
    static func dataResults(port: Int) async throws -> [String: Double] {
        let body = try await RawHTTP.get("/metrics", port: port).body
        var values: [String: Double] = [:]
        for line in body.split(separator: "\n") where line.hasPrefix(#"keygate_verify_result_total{plane="data",result=""#) {
            let label = line.split(separator: "\"")[3]
            values[String(label)] = Double(line.split(separator: " ").last ?? "")
        }
        return values
    }

    // 8. expires_at is RFC 3339, strictly.
    @Test func expiresAtIsStrictRFC3339() async throws {
        try await Self.withNode { node, store, admin in
            for text in ["2027-02-30T00:00:00Z", "2027-01-01T00:00:00+99:00", "2027-01-01T00:00:00+24:00", "2027-1-05T00:00:00Z",
                         "2027-01-01T0:00:00Z", "2027-01-01T00:00:00", "2027-01-01 00:00:00Z", "2027-13-01T00:00:00Z",
                         "2027-01-01T24:00:00Z", "2027-01-01T00:00:60Z", "2027-01-01T00:00:00.Z", "+2027-01-01T00:00:00Z"] {
                let response = try await Self.api("POST", "/v1/keys", key: admin, json: #"{"user":"t","expires_at":"\#(text)"}"#,
                                                  port: node.controlPort)
                #expect(response.status == 422 && Self.json(response)["field"] as? String == "expires_at", "\(text): \(response.status)")
            }
            let cases: [(String, Double)] = [("2030-01-01T00:00:00.9Z", 1_893_456_000.9), ("2030-01-01T01:00:00.123456+01:00", 1_893_456_000.123),
                                             ("2028-02-29t12:30:00z", 1_835_440_200)]
            for (text, expected) in cases {
                let response = try await Self.api("POST", "/v1/keys", key: admin, json: #"{"user":"t","expires_at":"\#(text)"}"#,
                                                  port: node.controlPort)
                #expect(response.status == 201, "\(text): \(response.status) \(response.body)")
                let id = try #require(Self.json(response)["id"] as? String)
                if text.hasPrefix("2030-01-01T00:00:00.9Z") {
                    #expect(Self.json(response)["expires_at"] as? String == "2030-01-01T00:00:00.900Z", "shown as \(response.body)")
                }
                let stored = try #require(try await store.record(id: id).expiresAt)
                #expect(abs(stored.timeIntervalSince1970 - expected) < 0.0005, "\(text) stored as \(stored.timeIntervalSince1970)")
            }
        }
    }

    // 10. RFC 9112 3.2: exactly one Host in HTTP/1.1.
    @Test func requestsWithoutOrWithTwoHostsAre400() async throws {
        try await Self.withNode { node, store, admin in
            let issued = try await store.create(.init(user: "alice"), actor: "test")
            for port in [node.port, node.controlPort] {
                let none = try await RawHTTP.send("GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n", port: port)
                #expect(none.status == 400, "no Host on port \(port): \(none.status)")
                let two = try await RawHTTP.send("GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", port: port)
                #expect(two.status == 400, "two Hosts on port \(port): \(two.status)")
            }
            let auth = try await RawHTTP.send("GET /auth HTTP/1.1\r\nX-API-Key: \(issued.key)\r\nConnection: close\r\n\r\n", port: node.port)
            #expect(auth.status == 400, "forward auth without Host: \(auth.status)")
            let keys = try await RawHTTP.send("GET /v1/keys?user=alice HTTP/1.1\r\nX-API-Key: \(admin)\r\nConnection: close\r\n\r\n",
                                              port: node.controlPort)
            #expect(keys.status == 400, "admin API without Host: \(keys.status)")
            // HTTP/1.0 has no Host requirement.
            #expect(try await RawHTTP.send("GET /health/live HTTP/1.0\r\n\r\n", port: node.port).status == 200)
        }
    }
}
