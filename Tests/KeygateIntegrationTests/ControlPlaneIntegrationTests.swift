import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
@testable import KeygateCore
import KeygateNode
import KeygateRedis
import KeygateTestSupport
import NIOCore
import Testing

/// The admin API against a real node and redis-server, through Hummingbird's router test client
/// (the node's own router, store and verifier), plus live HTTP for /metrics and the data plane.
@Suite struct ControlPlaneIntegrationTests {
    struct Reply {
        var status: HTTPResponse.Status
        var headers: HTTPFields
        var text: String
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:] }
        var problemType: String? { (json["type"] as? String)?.replacingOccurrences(of: "https://keygate.dev/problems/", with: "") }
    }

    /// Runs `body` with a node in a fresh namespace, a router client for its control plane, and the
    /// plaintext of an admin key created through the store (the CLI's bootstrap path).
    static func withAPI(configure: (inout NodeConfiguration) -> Void = { _ in },
                        _ body: @escaping @Sendable (TestNode, Client, String) async throws -> Void) async throws {
        let url = try TestRedis.url(), ns = TestRedis.uniqueNamespace("api")
        try await TestNode.with(redisURL: url, namespace: ns, configure: configure) { node in
            let admin = try await node.node.store.create(.init(user: "ops", scopes: ["keygate:admin"]), actor: "test")
            let application = Application(router: node.node.controlPlane.makeRouter())
            try await application.test(.router) { client in
                try await body(node, Client(client: client), admin.key)
            }
        }
    }

    struct Client: Sendable {
        let client: any TestClientProtocol

        func call(_ method: HTTPRequest.Method, _ uri: String, key: String?, json: String? = nil,
                  headers: HTTPFields = [:]) async throws -> Reply {
            var headers = headers
            if let key { headers[HTTPField.Name("X-API-Key")!] = key }
            if json != nil, headers[.contentType] == nil { headers[.contentType] = "application/json" }
            let response = try await client.executeRequest(uri: uri, method: method, headers: headers,
                                                           body: json.map { ByteBuffer(string: $0) })
            return Reply(status: response.status, headers: response.headers, text: String(buffer: response.body))
        }
    }

    @Test func authenticationFailuresAreProblems() async throws {
        try await Self.withAPI { node, api, _ in
            let missing = try await api.call(.get, "/v1/keys?user=alice", key: nil)
            #expect(missing.status == .unauthorized)
            #expect(missing.headers[.contentType] == "application/problem+json")
            #expect(missing.headers[.wwwAuthenticate] == "ApiKey realm=\"keygate\"")
            #expect(missing.problemType == "unauthorized")
            #expect(missing.json["status"] as? Int == 401)

            let bogus = try await api.call(.get, "/v1/keys?user=alice", key: "kg_notakey")
            #expect(bogus.status == .unauthorized)

            let plain = try await node.node.store.create(.init(user: "alice", scopes: ["orders:read"]), actor: "test")
            let forbidden = try await api.call(.get, "/v1/keys?user=alice", key: plain.key)
            #expect(forbidden.status == .forbidden && forbidden.problemType == "forbidden")
        }
    }

    @Test func adminLifecycleThroughTheAPI() async throws {
        try await Self.withAPI { node, api, admin in
            let created = try await api.call(.post, "/v1/keys", key: admin,
                                             json: #"{"user":"alice","name":"ci","scopes":["orders:read"],"metadata":{"plan":"pro"}}"#)
            #expect(created.status == .created)
            let id = try #require(created.json["id"] as? String)
            let key = try #require(created.json["key"] as? String)
            #expect(created.headers[.location] == "/v1/keys/\(id)")
            #expect(key.hasPrefix("kg_"))

            let shown = try await api.call(.get, "/v1/keys/\(id)", key: admin)
            #expect(shown.status == .ok && shown.json["name"] as? String == "ci" && shown.json["key"] == nil, "no secret after create")

            let listed = try await api.call(.get, "/v1/keys?user=alice", key: admin)
            #expect((listed.json["keys"] as? [[String: Any]])?.map { $0["id"] as? String } == [id])

            let patched = try await api.call(.patch, "/v1/keys/\(id)", key: admin,
                                             json: #"{"name":"deploy","expires_at":"2099-01-01T00:00:00Z","enabled":false}"#)
            #expect(patched.status == .ok)
            #expect(patched.json["name"] as? String == "deploy" && patched.json["status"] as? String == "disabled")
            #expect(patched.json["expires_at"] as? String == "2099-01-01T00:00:00Z")
            let enabled = try await api.call(.patch, "/v1/keys/\(id)", key: admin, json: #"{"enabled":true,"expires_at":null}"#)
            #expect(enabled.json["status"] as? String == "active" && enabled.json["expires_at"] is NSNull)

            let rotated = try await api.call(.post, "/v1/keys/\(id)/rotate", key: admin, json: #"{"grace_seconds":60}"#)
            #expect(rotated.status == .created && rotated.json["rotated_from"] as? String == id)
            let successor = try #require(rotated.json["id"] as? String)
            #expect(try await api.call(.get, "/v1/keys/\(id)", key: admin).json["rotated_to"] as? String == successor)
            let again = try await api.call(.post, "/v1/keys/\(id)/rotate", key: admin)
            #expect(again.status == .conflict && again.problemType == "conflict", "a key is rotated once")

            let usage = try await api.call(.get, "/v1/keys/\(id)/usage?days=3", key: admin)
            #expect(usage.status == .ok && (usage.json["daily"] as? [Any])?.count == 3 && usage.json["total"] as? Int == 0)

            let revoked = try await api.call(.post, "/v1/keys/\(id)/revoke", key: admin)
            #expect(revoked.status == .ok && revoked.json["status"] as? String == "revoked")
            let patchRevoked = try await api.call(.patch, "/v1/keys/\(id)", key: admin, json: #"{"name":"x"}"#)
            #expect(patchRevoked.status == .conflict)

            let everything = try await api.call(.post, "/v1/users/alice/revoke", key: admin)
            #expect(everything.status == .ok && everything.json["revoked"] as? Int == 1, "the successor")

            // The audit trail, paged: every change above, with the API key as the actor.
            var after: String? = nil
            var events: [[String: Any]] = []
            repeat {
                let page = try await api.call(.get, "/v1/events?limit=2" + (after.map { "&after=\($0)" } ?? ""), key: admin)
                #expect(page.status == .ok)
                events += page.json["events"] as? [[String: Any]] ?? []
                after = page.json["next_after"] as? String
            } while after != nil && events.count < 50
            let mine = events.filter { $0["user"] as? String == "alice" }
            #expect(mine.map { $0["type"] as? String } == ["created", "updated", "disabled", "updated", "enabled", "rotated", "revoked", "revoked"],
                    "a PATCH applies its fields, then enabled")
            #expect(mine.allSatisfy { ($0["actor"] as? String)?.hasPrefix("api:key_") == true })
            _ = node
        }
    }

    @Test func errorsNameTheProblem() async throws {
        try await Self.withAPI { _, api, admin in
            let missing = try await api.call(.get, "/v1/keys/key_doesnotexist123", key: admin)
            #expect(missing.status == .notFound && missing.problemType == "not-found")
            let badScope = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"alice","scopes":["has space"]}"#)
            #expect(badScope.status == .unprocessableContent && badScope.json["field"] as? String == "scopes")
            let unknownField = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"alice","admin":true}"#)
            #expect(unknownField.status == .unprocessableContent && unknownField.json["field"] as? String == "admin")
            let noUser = try await api.call(.post, "/v1/keys", key: admin, json: #"{}"#)
            #expect(noUser.status == .unprocessableContent && noUser.json["field"] as? String == "user")
            let past = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"alice","expires_at":"2001-01-01T00:00:00Z"}"#)
            #expect(past.status == .unprocessableContent && past.json["field"] as? String == "expires_at")
            let malformed = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"#)
            #expect(malformed.status == .badRequest && malformed.problemType == "malformed-body")
            let form = try await api.call(.post, "/v1/keys", key: admin, json: "user=alice",
                                          headers: [.contentType: "application/x-www-form-urlencoded"])
            #expect(form.status == .unsupportedMediaType)
            let huge = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"alice","name":""# + String(repeating: "a", count: 70_000) + #""}"#)
            #expect(huge.status == .contentTooLarge && huge.problemType == "body-too-large")
            let badDays = try await api.call(.get, "/v1/keys/key_doesnotexist123/usage?days=500", key: admin)
            #expect(badDays.status == .unprocessableContent && badDays.json["field"] as? String == "days")
            let badAfter = try await api.call(.get, "/v1/events?after=yesterday", key: admin)
            #expect(badAfter.status == .unprocessableContent && badAfter.json["field"] as? String == "after")
            let trace = try await api.call(.init(rawValue: "TRACE")!, "/v1/keys", key: admin)
            #expect(trace.status == .methodNotAllowed && trace.headers[.allow] == "GET, HEAD, POST")
            let nowhere = try await api.call(.get, "/v1/nothing", key: admin)
            #expect(nowhere.status == .notFound && nowhere.headers[.contentType] == "application/problem+json")
        }
    }

    @Test func aKeyCannotLockItselfOut() async throws {
        try await Self.withAPI { node, api, admin in
            let adminID = try #require(try await node.node.store.list(user: "ops").first?.id)
            for (method, path, json) in [(HTTPRequest.Method.post, "/v1/keys/\(adminID)/revoke", nil as String?),
                                         (.patch, "/v1/keys/\(adminID)", #"{"enabled":false}"#),
                                         (.post, "/v1/keys/\(adminID)/rotate", nil), (.post, "/v1/users/ops/revoke", nil)] {
                let reply = try await api.call(method, path, key: admin, json: json)
                #expect(reply.status == .conflict && reply.problemType == "self-modification", "\(method) \(path)")
            }
            #expect(try await api.call(.get, "/v1/keys?user=ops", key: admin).status == .ok, "still works")
        }
    }

    @Test func selfServiceKeysManageOnlyTheirOwnUser() async throws {
        try await Self.withAPI(configure: { $0.controlPlane.selfServiceMaxActiveKeys = 3 }) { node, api, admin in
            let mine = try await node.node.store.create(.init(user: "alice", scopes: ["keygate:self", "orders:read"]), actor: "test")
            let theirs = try await node.node.store.create(.init(user: "bob", scopes: ["orders:read"]), actor: "test")

            let created = try await api.call(.post, "/v1/keys", key: mine.key, json: #"{"name":"laptop","scopes":["orders:read"]}"#)
            #expect(created.status == .created && created.json["user"] as? String == "alice")
            let createdID = try #require(created.json["id"] as? String)

            let forBob = try await api.call(.post, "/v1/keys", key: mine.key, json: #"{"user":"bob"}"#)
            #expect(forBob.status == .forbidden)
            let escalate = try await api.call(.post, "/v1/keys", key: mine.key, json: #"{"scopes":["keygate:admin"]}"#)
            #expect(escalate.status == .forbidden, "cannot grant a scope it does not hold")

            let listed = try await api.call(.get, "/v1/keys", key: mine.key)
            #expect((listed.json["keys"] as? [[String: Any]])?.count == 2)
            #expect(try await api.call(.get, "/v1/keys?user=bob", key: mine.key).status == .forbidden)

            let revokeBob = try await api.call(.post, "/v1/keys/\(theirs.record.id)/revoke", key: mine.key)
            #expect(revokeBob.status == .notFound, "another user's key looks absent")
            #expect(try await node.node.store.record(id: theirs.record.id).status == .active)
            #expect(try await api.call(.post, "/v1/keys/\(createdID)/revoke", key: mine.key).status == .ok)

            // Admin-only endpoints.
            for (method, path) in [(HTTPRequest.Method.get, "/v1/keys/\(createdID)"), (.get, "/v1/events"),
                                   (.post, "/v1/users/bob/revoke")] {
                #expect(try await api.call(method, path, key: mine.key).status == .forbidden, "\(method) \(path)")
            }
            // Usage: of the user's own keys only (the console charts it); another user's key looks absent.
            #expect(try await api.call(.get, "/v1/keys/\(createdID)/usage", key: mine.key).status == .ok)
            #expect(try await api.call(.get, "/v1/keys/\(theirs.record.id)/usage", key: mine.key).status == .notFound)

            // The limit counts active keys: alice holds 1 (the caller); two more fit, the fourth does not.
            #expect(try await api.call(.post, "/v1/keys", key: mine.key, json: "{}").status == .created)
            #expect(try await api.call(.post, "/v1/keys", key: mine.key, json: "{}").status == .created)
            let over = try await api.call(.post, "/v1/keys", key: mine.key, json: "{}")
            #expect(over.status == .conflict && over.problemType == "key-limit-reached")
            // Admins are not limited.
            #expect(try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"alice"}"#).status == .created)
        }
    }

    @Test func rateLimitsThroughTheAPI() async throws {
        try await Self.withAPI { node, api, admin in
            let created = try await api.call(.post, "/v1/keys", key: admin, json: #"""
                {"user":"alice","scopes":["keygate:self"],"rate_limits":[{"limit":100,"duration_ms":60000},{"name":"hourly","limit":5000,"duration_ms":3600000,"exact":true}]}
                """#)
            #expect(created.status == .created)
            let limits = created.json["rate_limits"] as? [[String: Any]]
            #expect(limits?.count == 2)
            #expect(limits?.first?["name"] as? String == "default")
            #expect(limits?.last?["exact"] as? Bool == true)
            let id = try #require(created.json["id"] as? String)
            let key = try #require(created.json["key"] as? String)

            // Each bad list is a 422 naming the field, and changes nothing.
            for bad in [#"[{"limit":0,"duration_ms":60000}]"#, #"[{"limit":10,"duration_ms":10}]"#, #"[{"name":"Bad Name","limit":1,"duration_ms":1000}]"#,
                        #"[{"limit":1,"duration_ms":1000},{"limit":2,"duration_ms":2000}]"#, #"[{"limit":1}]"#, #"[{"limit":1,"duration_ms":1000,"burst":2}]"#,
                        #"{"limit":1}"#] {
                let reply = try await api.call(.patch, "/v1/keys/\(id)", key: admin, json: #"{"rate_limits":\#(bad)}"#)
                #expect(reply.status == .unprocessableContent, "\(bad): \(reply.status)")
                if !bad.contains("burst") && bad.hasPrefix("[") {
                    #expect(reply.json["field"] as? String == "rate_limits", "\(bad): \(reply.text)")
                }
            }
            #expect(try await node.node.store.record(id: id).rateLimits.count == 2)

            // PATCH replaces the list; the audit event names the field.
            let patched = try await api.call(.patch, "/v1/keys/\(id)", key: admin, json: #"{"rate_limits":[{"limit":7,"duration_ms":1000}]}"#)
            #expect(patched.status == .ok)
            #expect((patched.json["rate_limits"] as? [[String: Any]])?.first?["limit"] as? Int == 7)
            let events = try await api.call(.get, "/v1/events", key: admin)
            let updated = (events.json["events"] as? [[String: Any]])?.last { $0["type"] as? String == "updated" }
            #expect(updated?["key_id"] as? String == id)

            // A self-service key cannot set limits, and the keys it creates carry its own and share its windows.
            let escape = try await api.call(.post, "/v1/keys", key: key, json: #"{"rate_limits":[]}"#)
            #expect(escape.status == .forbidden)
            let child = try await api.call(.post, "/v1/keys", key: key, json: "{}")
            #expect(child.status == .created)
            let childID = try #require(child.json["id"] as? String)
            let childRecord = try await node.node.store.record(id: childID)
            #expect(childRecord.rateLimits == (try await node.node.store.record(id: id)).rateLimits)
            #expect(childRecord.limitID == id)
        }
    }

    @Test func theConsoleIsServedWithAStrictPolicyAndTheCallerCanAskWhoItIs() async throws {
        try await Self.withAPI { node, api, admin in
            for path in ["/console/", "/console", "/console/console.js", "/console/console.css"] {
                let page = try await api.call(.get, path, key: nil)
                #expect(page.status == .ok, "\(path)")
                let policy = page.headers[HTTPField.Name("Content-Security-Policy")!] ?? ""
                #expect(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'") && !policy.contains("unsafe-inline"), "\(path)")
                #expect(page.headers[HTTPField.Name("X-Frame-Options")!] == "DENY")
                #expect(page.headers[HTTPField.Name("X-Content-Type-Options")!] == "nosniff")
            }
            let html = try await api.call(.get, "/console/", key: nil)
            #expect(html.headers[.contentType]?.hasPrefix("text/html") == true)
            #expect(!html.text.contains("<script>") && html.text.contains(#"<script src="/console/console.js" defer></script>"#), "no inline script")
            #expect(try await api.call(.get, "/console/console.js", key: nil).headers[.contentType]?.hasPrefix("text/javascript") == true)

            let me = try await api.call(.get, "/v1/me", key: admin)
            #expect(me.json["user"] as? String == "ops" && me.json["admin"] as? Bool == true)
            let own = try await node.node.store.create(.init(user: "hal", scopes: ["keygate:self"]), actor: "test")
            let other = try await node.node.store.create(.init(user: "ivy"), actor: "test")
            let mine = try await api.call(.get, "/v1/me", key: own.key)
            #expect(mine.json["user"] as? String == "hal" && mine.json["admin"] as? Bool == false && mine.json["key_id"] as? String == own.record.id)
            // A user reads the usage of their own keys (their page charts it), never another user's.
            #expect(try await api.call(.get, "/v1/keys/\(own.record.id)/usage", key: own.key).status == .ok)
            #expect(try await api.call(.get, "/v1/keys/\(other.record.id)/usage", key: own.key).status == .notFound)
        }
    }

    @Test func usersRotateTheirOwnKeysAndOperatorsFilterTheAuditLogAndReadTheNodesHealth() async throws {
        try await Self.withAPI { node, api, admin in
            let mine = try await node.node.store.create(.init(user: "jo", scopes: ["keygate:self"]), actor: "test")
            let spare = try await node.node.store.create(.init(user: "jo", name: "spare"), actor: "test")
            let theirs = try await node.node.store.create(.init(user: "kim"), actor: "test")
            let rotated = try await api.call(.post, "/v1/keys/\(spare.record.id)/rotate", key: mine.key, json: #"{"grace_seconds":60}"#)
            #expect(rotated.status == .created && rotated.json["user"] as? String == "jo", "\(rotated.text)")
            #expect(try await api.call(.post, "/v1/keys/\(theirs.record.id)/rotate", key: mine.key, json: "{}").status == .notFound)
            #expect(try await api.call(.post, "/v1/keys/\(mine.record.id)/rotate", key: mine.key, json: "{}").status == .conflict)

            // The audit log by user, by key and by kind.
            let byUser = try await api.call(.get, "/v1/events?user=jo", key: admin)
            let events = try #require(byUser.json["events"] as? [[String: Any]])
            #expect(events.count == 3 && events.allSatisfy { $0["user"] as? String == "jo" }, "\(byUser.text)")
            #expect(byUser.json["next_after"] is NSNull)
            let rotations = try await api.call(.get, "/v1/events?type=rotated", key: admin)
            #expect((rotations.json["events"] as? [[String: Any]])?.map { $0["key_id"] as? String } == [spare.record.id])
            let byKey = try await api.call(.get, "/v1/events?key_id=\(theirs.record.id)&limit=1", key: admin)
            #expect((byKey.json["events"] as? [[String: Any]])?.count == 1 && byKey.json["next_after"] as? String != nil)
            #expect(try await api.call(.get, "/v1/events?user=jo", key: mine.key).status == .forbidden)
            #expect(try await api.call(.get, "/v1/events?type=deleted", key: admin).status == .unprocessableContent)

            // The node's health, for operators.
            let status = try await api.call(.get, "/v1/node", key: admin)
            #expect(status.status == .ok && status.json["ready"] as? Bool == true && status.json["redis_connected"] as? Bool == true, "\(status.text)")
            #expect(status.json["version"] as? String == KeygateNode.version && status.json["reason"] is NSNull)
            #expect(try await api.call(.get, "/v1/node", key: mine.key).status == .forbidden)
        }
    }

    @Test func consoleLinksOpenOneUsersKeysOnceThroughTheAPI() async throws {
        try await Self.withAPI { node, api, admin in
            _ = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"gwen"}"#)
            _ = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"other"}"#)
            let created = try await api.call(.post, "/v1/users/gwen/console-sessions", key: admin, json: #"{"ttl_seconds":600}"#)
            #expect(created.status == .created, "\(created.text)")
            let secret = try #require(created.json["session"] as? String)
            #expect(secret.hasPrefix("kgs_") && created.json["url"] as? String == "/console/#session=\(secret)")
            #expect(created.json["expires_at"] is String && created.json["user"] as? String == "gwen")
            // Redis holds the secret's hash, never the secret.
            let stored = try await node.node.store.redis.send(RedisCommand("KEYS", [.string("\(node.node.store.layout.namespace):console-session:*")]))
            #expect(stored.array?.count == 1 && stored.array?.first?.string?.contains(secret) == false)

            // Exchanged once, without a key, for a short-lived keygate:self key of that user only.
            let redeemed = try await api.call(.post, "/console/session", key: nil, json: #"{"session":"\#(secret)"}"#)
            #expect(redeemed.status == .created, "\(redeemed.text)")
            let key = try #require(redeemed.json["key"] as? String)
            #expect(redeemed.json["user"] as? String == "gwen" && redeemed.json["scopes"] as? [String] == ["keygate:self"])
            let expires = try #require(redeemed.json["expires_at"] as? String)
            #expect(expires > ISO8601DateFormatter().string(from: Date().addingTimeInterval(3_500)))
            let mine = try await api.call(.get, "/v1/keys", key: key)
            #expect(mine.status == .ok && (mine.json["keys"] as? [[String: Any]])?.allSatisfy { $0["user"] as? String == "gwen" } == true)
            #expect(try await api.call(.get, "/v1/keys?user=other", key: key).status == .forbidden)
            #expect(try await api.call(.post, "/console/session", key: nil, json: #"{"session":"\#(secret)"}"#).status == .notFound, "single use")
            for bad in [#"{"session":"kgs_nope"}"#, #"{"session":""}"#, #"{}"#, #"{"session":"kgs_000000000000000000000000000000000"}"#] {
                let reply = try await api.call(.post, "/console/session", key: nil, json: bad)
                #expect(reply.status == .notFound || reply.status == .unprocessableContent, "\(bad): \(reply.status)")
            }
            // An expired link is refused like a used one.
            let late = try await node.node.store.createConsoleSession(user: "gwen", ttlSeconds: 60)
            _ = try await node.node.store.redis.send(RedisCommand("PEXPIRE", [.string(node.node.store.layout.consoleSession(node.node.store.hasher.hash(late.session).hex)), 1]))
            try await Task.sleep(for: .milliseconds(20))
            #expect(try await api.call(.post, "/console/session", key: nil, json: #"{"session":"\#(late.session)"}"#).status == .notFound)
            // Admins only create links; the lifetime is bounded.
            #expect(try await api.call(.post, "/v1/users/gwen/console-sessions", key: key, json: "{}").status == .forbidden)
            #expect(try await api.call(.post, "/v1/users/gwen/console-sessions", key: admin, json: #"{"ttl_seconds":5}"#).status == .unprocessableContent)
            #expect(try await api.call(.post, "/v1/users/gwen/console-sessions", key: admin).status == .created, "an empty body: the default lifetime")

            // A link may let the user grant some scopes (its key holds them), never keygate:admin.
            let scoped = try await api.call(.post, "/v1/users/gwen/console-sessions", key: admin,
                                            json: #"{"scopes":["orders:read","orders:write"]}"#)
            #expect(scoped.json["scopes"] as? [String] == ["orders:read", "orders:write"])
            let scopedKey = try await api.call(.post, "/console/session", key: nil, json: #"{"session":"\#(scoped.json["session"] as? String ?? "")"}"#)
            #expect(scopedKey.json["scopes"] as? [String] == ["keygate:self", "orders:read", "orders:write"], "\(scopedKey.text)")
            let userKey = try #require(scopedKey.json["key"] as? String)
            #expect(try await api.call(.post, "/v1/keys", key: userKey, json: #"{"scopes":["orders:read"]}"#).status == .created)
            #expect(try await api.call(.post, "/v1/keys", key: userKey, json: #"{"scopes":["billing:read"]}"#).status == .forbidden)
            for bad in [#"{"scopes":["keygate:admin"]}"#, #"{"scopes":["a b"]}"#, #"{"scopes":"orders:read"}"#] {
                let reply = try await api.call(.post, "/v1/users/gwen/console-sessions", key: admin, json: bad)
                #expect(reply.status == .unprocessableContent, "\(bad): \(reply.status)")
            }
        }
    }

    @Test func usersAndTheirUsageThroughTheAPI() async throws {
        try await Self.withAPI { node, api, admin in
            for user in ["anna", "andrew", "ben"] {
                #expect(try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"\#(user)"}"#).status == .created)
            }
            let all = try await api.call(.get, "/v1/users", key: admin)
            #expect(all.status == .ok && all.json["users"] as? [String] == ["andrew", "anna", "ben", "ops"], "\(all.text)")
            #expect(all.json["next_after"] is NSNull)
            let page = try await api.call(.get, "/v1/users?prefix=an&limit=1", key: admin)
            #expect(page.json["users"] as? [String] == ["andrew"] && page.json["next_after"] as? String == "andrew")
            let next = try await api.call(.get, "/v1/users?prefix=an&limit=1&after=andrew", key: admin)
            #expect(next.json["users"] as? [String] == ["anna"])
            #expect(try await api.call(.get, "/v1/users?limit=0", key: admin).status == .unprocessableContent)

            // A user's usage: their keys' counts added up.
            let created = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"anna","scopes":["keygate:self"]}"#)
            let key = try #require(created.json["key"] as? String)
            for _ in 0..<3 { #expect(try await NodeIntegrationTests.auth(key, port: node.port).status == 200) }
            await node.node.flusher.flush()
            let usage = try await api.call(.get, "/v1/users/anna/usage?days=2", key: admin)
            #expect(usage.status == .ok && usage.json["total"] as? Int == 3, "\(usage.text)")
            #expect((usage.json["keys"] as? [[String: Any]])?.count == 2)
            #expect((usage.json["daily"] as? [[String: Any]])?.count == 2)
            #expect(try await api.call(.get, "/v1/users/nobody/usage", key: admin).status == .notFound)
            // Admin only.
            #expect(try await api.call(.get, "/v1/users", key: key).status == .forbidden)
            #expect(try await api.call(.get, "/v1/users/anna/usage", key: key).status == .forbidden)
        }
    }

    @Test func userLimitsThroughTheAPI() async throws {
        try await Self.withAPI { node, api, admin in
            let created = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"frank","scopes":["keygate:self"]}"#)
            let selfKey = try #require(created.json["key"] as? String)
            #expect(try await api.call(.get, "/v1/users/frank/limits", key: admin).json["rate_limits"] as? [Any] != nil)
            let put = try await api.call(.put, "/v1/users/frank/limits", key: admin, json: #"""
                {"rate_limits":[{"name":"plan","limit":600,"duration_ms":60000}],"credits":{"remaining":100,"refill":{"amount":100,"interval":"daily"}}}
                """#)
            #expect(put.status == .ok, "\(put.text)")
            #expect(put.json["keys_updated"] as? Int == 1)
            #expect((put.json["rate_limits"] as? [[String: Any]])?.first?["name"] as? String == "plan")
            #expect((put.json["credits"] as? [String: Any])?["remaining"] as? Int == 100)
            let read = try await api.call(.get, "/v1/users/frank/limits", key: admin)
            #expect(read.status == .ok && read.json["keys_updated"] == nil)
            #expect((read.json["credits"] as? [String: Any])?["remaining"] as? Int == 100, "\(read.text)")
            // The user's credits are spent by the user's keys.
            #expect(try await NodeIntegrationTests.auth(selfKey, port: node.port).status == 200)
            await node.node.credits.returnUnused(idleMilliseconds: 0)
            let spent = try await api.call(.get, "/v1/users/frank/limits", key: admin)
            #expect((spent.json["credits"] as? [String: Any])?["remaining"] as? Int == 99, "\(spent.text)")

            // Bad settings are 422 and change nothing; only an admin may read or set them.
            for bad in [#"{"rate_limits":[{"limit":0,"duration_ms":1000}]}"#, #"{"credits":{"remaining":-1}}"#, #"{"plan":"gold"}"#, "[]"] {
                let reply = try await api.call(.put, "/v1/users/frank/limits", key: admin, json: bad)
                #expect(reply.status.code == 422 || reply.status.code == 400, "\(bad): \(reply.status)")
            }
            #expect(try await node.node.store.userLimits(user: "frank").rateLimits.map(\.text) == ["plan=600/1m"])
            #expect(try await api.call(.get, "/v1/users/frank/limits", key: selfKey).status == .forbidden)
            #expect(try await api.call(.put, "/v1/users/frank/limits", key: selfKey, json: "{}").status == .forbidden)

            // PUT replaces the whole setting: an empty object removes both.
            let cleared = try await api.call(.put, "/v1/users/frank/limits", key: admin, json: "{}")
            #expect((cleared.json["rate_limits"] as? [Any])?.isEmpty == true && cleared.json["credits"] is NSNull, "\(cleared.text)")
            let events = try await api.call(.get, "/v1/events", key: admin)
            let copies = (events.json["events"] as? [[String: Any]])?.filter { $0["fields"] as? String == "user_limits" }
            #expect(copies?.count == 2)
        }
    }

    @Test func creditsThroughTheAPI() async throws {
        try await Self.withAPI { node, api, admin in
            let created = try await api.call(.post, "/v1/keys", key: admin, json: #"""
                {"user":"alice","scopes":["keygate:self"],"credits":{"remaining":3,"refill":{"amount":10,"interval":"monthly","day":15}}}
                """#)
            #expect(created.status == .created, "\(created.text)")
            let credits = try #require(created.json["credits"] as? [String: Any])
            #expect(credits["remaining"] as? Int == 3)
            let refill = try #require(credits["refill"] as? [String: Any])
            #expect(refill["amount"] as? Int == 10 && refill["interval"] as? String == "monthly" && refill["day"] as? Int == 15)
            let id = try #require(created.json["id"] as? String)
            let key = try #require(created.json["key"] as? String)
            // Spent on the data plane, read back live.
            #expect(try await NodeIntegrationTests.auth(key, port: node.port).status == 200)
            await node.node.credits.returnUnused(idleMilliseconds: 0)
            let read = try await api.call(.get, "/v1/keys/\(id)", key: admin)
            #expect((read.json["credits"] as? [String: Any])?["remaining"] as? Int == 2, "\(read.text)")

            // Each bad setting is a 422 naming the field, and changes nothing.
            for (bad, field) in [(#"{"remaining":-1}"#, "credits.remaining"), (#"{}"#, "credits.remaining"),
                                 (#"{"remaining":1,"refill":{"amount":0,"interval":"daily"}}"#, "credits.refill.amount"),
                                 (#"{"remaining":1,"refill":{"amount":5,"interval":"weekly"}}"#, "credits.refill.interval"),
                                 (#"{"remaining":1,"refill":{"amount":5,"interval":"daily","day":3}}"#, "credits.refill.day"),
                                 (#"{"remaining":1,"refill":{"amount":5,"interval":"monthly","day":32}}"#, "credits.refill.day")] {
                let reply = try await api.call(.patch, "/v1/keys/\(id)", key: admin, json: #"{"credits":\#(bad)}"#)
                #expect(reply.status == .unprocessableContent, "\(bad): \(reply.status)")
                #expect(reply.json["field"] as? String == field, "\(bad): \(reply.text)")
            }
            let unknownField = try await api.call(.patch, "/v1/keys/\(id)", key: admin, json: #"{"credits":{"remaining":1,"bonus":2}}"#)
            #expect(unknownField.status.code >= 400 && unknownField.status.code < 500)
            #expect(try await node.node.store.record(id: id).credits?.remaining == 2)

            // PATCH sets the balance anew; null removes the credits; the audit event names the field.
            let patched = try await api.call(.patch, "/v1/keys/\(id)", key: admin, json: #"{"credits":{"remaining":7}}"#)
            #expect(patched.status == .ok)
            #expect((patched.json["credits"] as? [String: Any])?["remaining"] as? Int == 7)
            let events = try await api.call(.get, "/v1/events", key: admin)
            let updated = (events.json["events"] as? [[String: Any]])?.last { $0["type"] as? String == "updated" }
            #expect(updated?["fields"] as? String == "credits", "\(String(describing: updated))")

            // A self-service key cannot set credits; the keys it creates share its balance.
            #expect(try await api.call(.post, "/v1/keys", key: key, json: #"{"credits":{"remaining":1000}}"#).status == .forbidden)
            let child = try await api.call(.post, "/v1/keys", key: key, json: "{}")
            #expect(child.status == .created)
            #expect((child.json["credits"] as? [String: Any])?["remaining"] as? Int == 7, "\(child.text)")

            let removed = try await api.call(.patch, "/v1/keys/\(id)", key: admin, json: #"{"credits":null}"#)
            #expect(removed.status == .ok && removed.json["credits"] is NSNull)
        }
    }

    @Test func aRevokeThroughTheAPIIsSeenByTheDataPlane() async throws {
        try await Self.withAPI { node, api, admin in
            let created = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"carol"}"#)
            let key = try #require(created.json["key"] as? String), id = try #require(created.json["id"] as? String)
            #expect(try await NodeIntegrationTests.auth(key, port: node.port).status == 200)
            #expect(try await api.call(.post, "/v1/keys/\(id)/revoke", key: admin).status == .ok)
            #expect(try await NodeIntegrationTests.timeUntilRefused(key, port: node.port, limit: .seconds(1)) != nil)
        }
    }

    @Test func metricsMoveWithTraffic() async throws {
        try await Self.withAPI { node, api, admin in
            func okCount() async throws -> Double {
                let metrics = try await RawHTTP.get("/metrics", port: node.controlPort)
                #expect(metrics.status == 200 && metrics.header("Content-Type")?.hasPrefix("text/plain; version=0.0.4") == true)
                let line = metrics.body.split(separator: "\n").first { $0.hasPrefix(#"keygate_verify_result_total{plane="data",result="ok"}"#) }
                return Double(line?.split(separator: " ").last ?? "") ?? -1
            }
            let created = try await api.call(.post, "/v1/keys", key: admin, json: #"{"user":"dave"}"#)
            let key = try #require(created.json["key"] as? String)
            let before = try await okCount()
            for _ in 0..<3 { #expect(try await NodeIntegrationTests.auth(key, port: node.port).status == 200) }
            #expect(try await okCount() == before + 3)
            let metrics = try await RawHTTP.get("/metrics", port: node.controlPort).body
            #expect(!metrics.contains(key) && !metrics.contains(String(key.dropFirst(3).prefix(12))), "no key material in metrics")
            #expect(metrics.contains("keygate_invalidation_channel_up 1"))
            let spec = try await RawHTTP.get("/openapi.yaml", port: node.controlPort)
            #expect(spec.status == 200 && spec.body.hasPrefix("openapi: 3.1.0"))
        }
    }

    @Test func redisDownGives503NotA401() async throws {
        try await RedisServerProcess.withServer { redis in
            try await TestNode.with(redisURL: redis.url, namespace: "down", configure: { $0.redis.commandTimeout = .milliseconds(300) }) { node in
                let admin = try await node.node.store.create(.init(user: "ops", scopes: ["keygate:admin"]), actor: "test")
                let application = Application(router: node.node.controlPlane.makeRouter())
                try await application.test(.router) { client in
                    let api = Client(client: client)
                    #expect(try await api.call(.get, "/v1/keys?user=x", key: admin.key).status == .ok) // caches the admin key
                    await redis.stop()
                    let down = try await api.call(.get, "/v1/keys?user=x", key: admin.key)
                    #expect(down.status == .serviceUnavailable && down.problemType == "unavailable")
                    #expect(down.headers[.retryAfter] != nil)
                    let unknown = try await api.call(.get, "/v1/keys?user=x", key: node.node.store.format.generate())
                    #expect(unknown.status == .serviceUnavailable, "an uncached key cannot be checked: 503, never 401")
                }
            }
        }
    }
}
