import Foundation
import HTTPTypes
import Hummingbird
import KeygateCore

/// The admin API under `/v1`. Admin keys (`keygate:admin`) may do everything; self-service keys
/// (`keygate:self`) may list, create and revoke keys of their own user only, and another user's key
/// looks to them as if it did not exist (404, no oracle). The key that authenticates a request cannot
/// change, revoke or rotate itself, nor revoke its own user (409): an operator cannot lock themselves
/// out by mistake; another admin key or the CLI can.
struct KeyRoutes {
    let store: KeyStore
    let settings: ControlPlaneSettings

    func register(on v1: RouterGroup<ControlPlaneContext>, table: RouteTable) {
        func route(_ method: HTTPRequest.Method, _ path: String,
                   _ handler: @Sendable @escaping (Request, ControlPlaneContext) async throws -> Response) {
            v1.on(path, method, recordIn: table, prefix: "/v1", use: handler)
        }
        route(.post, "keys") { request, context in try await create(request, context) }
        route(.get, "keys") { request, context in try await list(request, context) }
        route(.get, "keys/:id") { _, context in
            try requireAdmin(context)
            return try JSONResponse.make(try await store.record(id: try Self.parameter("id", context)))
        }
        route(.patch, "keys/:id") { request, context in try await update(request, context) }
        route(.post, "keys/:id/revoke") { _, context in try await revoke(context) }
        route(.post, "keys/:id/rotate") { request, context in try await rotate(request, context) }
        route(.get, "keys/:id/usage") { request, context in try await usage(request, context) }
        route(.post, "users/:user/revoke") { _, context in
            let caller = try requireAdmin(context)
            let user = try Self.parameter("user", context)
            guard !caller.owns(user: user) else {
                throw Problem(.selfModification, "the calling key belongs to user '\(user)'; revoke it with another admin key or the CLI")
            }
            let revoked = try await store.revokeAll(user: user, actor: caller.actor)
            return try JSONResponse.make(UserRevocation(user: user, revoked: revoked))
        }
        route(.get, "me") { _, context in
            let caller = try context.requireCaller()
            return try JSONResponse.make(CallerInfo(user: caller.user, keyID: caller.keyID, scopes: caller.scopes, admin: caller.isAdmin))
        }
        route(.get, "users") { request, context in
            try requireAdmin(context)
            let query = request.uri.queryParameters
            let limit = try Self.integer(request, "limit", default: 100, range: 1...1_000)
            return try JSONResponse.make(try await store.users(prefix: query.get("prefix") ?? "", after: query.get("after"), limit: limit))
        }
        route(.get, "users/:user/usage") { request, context in
            try requireAdmin(context)
            let days = try Self.integer(request, "days", default: 7, range: 1...KeyStoreLayout.dailyRetentionDays)
            return try JSONResponse.make(try await store.usage(user: try Self.parameter("user", context), days: days))
        }
        route(.post, "users/:user/console-sessions") { request, context in
            try requireAdmin(context)
            let body = try await JSONBody.decode(ConsoleSessionBody.self, from: request, limit: settings.maxBodyBytes, allowEmpty: true)
            let session = try await store.createConsoleSession(user: try Self.parameter("user", context), scopes: body.scopes ?? [],
                                                               ttlSeconds: body.ttlSeconds ?? 900)
            return try JSONResponse.make(session, status: .created)
        }
        route(.get, "users/:user/limits") { _, context in
            try requireAdmin(context)
            return try JSONResponse.make(try await store.userLimits(user: try Self.parameter("user", context)))
        }
        route(.put, "users/:user/limits") { request, context in
            let caller = try requireAdmin(context)
            let user = try Self.parameter("user", context)
            let body = try await JSONBody.decode(UserLimitsBody.self, from: request, limit: settings.maxBodyBytes)
            // PUT replaces the whole setting: an absent field means none.
            return try JSONResponse.make(try await store.setUserLimits(user: user, rateLimits: body.rateLimits ?? [],
                                                                       credits: .some(body.credits ?? nil), actor: caller.actor))
        }
        route(.get, "events") { request, context in try await events(request, context) }
    }

    private func rejectSelf(_ id: String, _ caller: Caller) throws {
        guard !id.hasSameBytes(as: caller.keyID) else {
            throw Problem(.selfModification, "key \(id) authenticates this request; change it with another admin key or the CLI")
        }
    }

    @discardableResult
    private func requireAdmin(_ context: ControlPlaneContext) throws -> Caller {
        let caller = try context.requireCaller()
        guard caller.isAdmin else { throw Problem(.forbidden, "this endpoint needs scope keygate:admin") }
        return caller
    }

    private func create(_ request: Request, _ context: ControlPlaneContext) async throws -> Response {
        let caller = try context.requireCaller()
        let body = try await JSONBody.decode(CreateKeyBody.self, from: request, limit: settings.maxBodyBytes)
        var limit: Int? = nil
        let user: String
        if caller.isAdmin {
            guard let requested = body.user else { throw Problem(.invalidField, "user is required", field: "user") }
            user = requested
        } else {
            user = body.user ?? caller.user
            guard caller.owns(user: user) else {
                throw Problem(.forbidden, "a self-service key may only create keys for its own user")
            }
            // A self-service key cannot grant more than it holds.
            let extra = (body.scopes ?? []).filter { !caller.scopes.containsSameBytes(as: $0) }
            guard extra.isEmpty else {
                throw Problem(.forbidden, "a self-service key may only grant scopes it holds itself (not: \(extra.joined(separator: " ")))")
            }
            limit = settings.selfServiceMaxActiveKeys
        }
        var request = KeyStore.NewKey(user: user, name: body.name ?? "", scopes: body.scopes ?? [], expiresAt: body.expiresAt,
                                      metadata: body.metadata ?? [:], rateLimits: body.rateLimits ?? [],
                                      credits: body.credits ?? nil)
        if !caller.isAdmin {
            // A user must not escape a limit by minting keys: a self-service key's keys carry its
            // limits and credits and draw on its windows and balance.
            guard body.rateLimits == nil else { throw Problem(.forbidden, "only an admin key sets rate limits") }
            guard body.credits == nil else { throw Problem(.forbidden, "only an admin key sets credits") }
            request.shareLimits(of: try await store.record(id: caller.keyID))
        }
        let issued = try await store.create(request, actor: caller.actor, maxActiveKeys: limit)
        return try JSONResponse.make(issued, status: .created, location: "/v1/keys/\(issued.record.id)")
    }

    private func list(_ request: Request, _ context: ControlPlaneContext) async throws -> Response {
        let caller = try context.requireCaller()
        let requested = request.uri.queryParameters.get("user")
        let user: String
        if caller.isAdmin {
            guard let requested else { throw Problem(.invalidField, "the query parameter user is required", field: "user") }
            user = requested
        } else {
            user = requested ?? caller.user
            guard caller.owns(user: user) else { throw Problem(.forbidden, "a self-service key may only list its own user's keys") }
        }
        return try JSONResponse.make(KeyList(keys: try await store.list(user: user)))
    }

    private func update(_ request: Request, _ context: ControlPlaneContext) async throws -> Response {
        let caller = try requireAdmin(context)
        let id = try Self.parameter("id", context)
        try rejectSelf(id, caller)
        let body = try await JSONBody.decode(UpdateKeyBody.self, from: request, limit: settings.maxBodyBytes)
        var record = try await store.update(id: id, body.changes, actor: caller.actor)
        if let enabled = body.enabled {
            record = try await store.setEnabled(id: id, enabled, actor: caller.actor)
        }
        return try JSONResponse.make(record)
    }

    private func revoke(_ context: ControlPlaneContext) async throws -> Response {
        let caller = try context.requireCaller()
        let id = try Self.parameter("id", context)
        try rejectSelf(id, caller)
        if !caller.isAdmin {
            let record = try await store.record(id: id)
            guard caller.owns(user: record.user) else { throw Problem(.notFound, "no key with id '\(id)'") }
        }
        return try JSONResponse.make(try await store.revoke(id: id, actor: caller.actor))
    }

    private func rotate(_ request: Request, _ context: ControlPlaneContext) async throws -> Response {
        let caller = try context.requireCaller()
        let id = try Self.parameter("id", context)
        try rejectSelf(id, caller)
        if !caller.isAdmin {
            // A user rotates their own keys (their "API keys" page); another user's key does not exist.
            let record = try await store.record(id: id)
            guard caller.owns(user: record.user) else { throw Problem(.notFound, "no key with id '\(id)'") }
        }
        let body = try await JSONBody.decode(RotateKeyBody.self, from: request, limit: settings.maxBodyBytes, allowEmpty: true)
        let issued = try await store.rotate(id: id, grace: .seconds(body.graceSeconds), actor: caller.actor)
        return try JSONResponse.make(issued, status: .created, location: "/v1/keys/\(issued.record.id)")
    }

    private func usage(_ request: Request, _ context: ControlPlaneContext) async throws -> Response {
        let caller = try context.requireCaller()
        let id = try Self.parameter("id", context)
        if !caller.isAdmin {
            // A user's own keys only (their "API keys" page charts them); another user's key does not exist.
            let record = try await store.record(id: id)
            guard caller.owns(user: record.user) else { throw Problem(.notFound, "no key with id '\(id)'") }
        }
        let days = try Self.integer(request, "days", default: 7, range: 1...KeyStoreLayout.dailyRetentionDays)
        return try JSONResponse.make(try await store.usage(id: id, days: days))
    }

    private func events(_ request: Request, _ context: ControlPlaneContext) async throws -> Response {
        try requireAdmin(context)
        let query = request.uri.queryParameters
        let after = query.get("after")
        let limit = try Self.integer(request, "limit", default: 100, range: 1...1_000)
        let filter = EventFilter(user: query.get("user"), keyID: query.get("key_id"), type: query.get("type"))
        if let type = filter.type, !EventFilter.types.contains(type) {
            throw Problem(.invalidField, "type is one of \(EventFilter.types.sorted().joined(separator: ", "))", field: "type")
        }
        guard !filter.isEmpty else {
            let events = try await store.events(after: after, count: limit)
            return try JSONResponse.make(EventPage(events: events, nextAfter: events.count == limit ? events.last?.id : nil))
        }
        // Filtered: read on in pages until `limit` match or 10,000 events were read; `next_after`
        // then continues from the last event read (null only once the log is exhausted).
        var matched: [KeyEvent] = []
        var cursor = after
        var read = 0
        var exhausted = false
        scan: while matched.count < limit && read < 10_000 {
            let page = try await store.events(after: cursor, count: 1_000)
            for event in page {
                read += 1
                cursor = event.id
                if filter.matches(event) {
                    matched.append(event)
                    if matched.count == limit { break scan }
                }
            }
            if page.count < 1_000 { exhausted = true; break }
        }
        return try JSONResponse.make(EventPage(events: matched, nextAfter: exhausted ? nil : cursor))
    }

    /// `GET /v1/events` filters, each compared byte for byte.
    struct EventFilter {
        var user: String?, keyID: String?, type: String?
        static let types: Set<String> = ["created", "revoked", "disabled", "enabled", "updated", "rotated"]
        var isEmpty: Bool { user == nil && keyID == nil && type == nil }
        func matches(_ event: KeyEvent) -> Bool {
            (user.map { event.user.hasSameBytes(as: $0) } ?? true) && (keyID.map { event.keyID.hasSameBytes(as: $0) } ?? true)
                && (type.map { event.type.hasSameBytes(as: $0) } ?? true)
        }
    }

    /// A path parameter, percent-decoded: Hummingbird hands them over as sent, so `caf%C3%A9` would
    /// otherwise name another user than `café` (and `a%2Fb` than `a/b`). Invalid encoding is a 400.
    static func parameter(_ name: String, _ context: ControlPlaneContext) throws -> String {
        let raw = try context.parameters.require(name)
        guard let decoded = raw.removingPercentEncoding else {
            throw Problem(.badRequest, "the \(name) in the path is not valid percent-encoded UTF-8")
        }
        return decoded
    }

    static func integer(_ request: Request, _ name: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text = request.uri.queryParameters.get(name) else { return value }
        guard let number = Int(text), range.contains(number) else {
            throw Problem(.invalidField, "\(name) must be an integer in \(range.lowerBound)-\(range.upperBound)", field: name)
        }
        return number
    }

}

struct KeyList: Encodable { var keys: [KeyRecord] }

struct UserRevocation: Encodable { var user: String; var revoked: Int }

/// `GET /v1/me`: who the calling key belongs to (the console's first call).
struct CallerInfo: Encodable {
    var user: String
    var keyID: String
    var scopes: [String]
    var admin: Bool
    enum CodingKeys: String, CodingKey { case user, scopes, admin, keyID = "key_id" }
}

struct EventPage: Encodable {
    var events: [KeyEvent]
    /// Pass as `after` for the next page; null when this page is the last.
    var nextAfter: String?
    enum CodingKeys: String, CodingKey { case events, nextAfter = "next_after" }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(events, forKey: .events)
        try container.encode(nextAfter, forKey: .nextAfter)
    }
}

/// JSON responses with the same encoding as the CLI's `--json` (snake_case, RFC 3339 dates).
enum JSONResponse {
    static func make(_ value: some Encodable, status: HTTPResponse.Status = .ok, location: String? = nil) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = RFC3339.dateEncoding
        var headers: HTTPFields = [.contentType: "application/json", .cacheControl: "no-store"]
        if let location { headers[.location] = location }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(value))))
    }
}
