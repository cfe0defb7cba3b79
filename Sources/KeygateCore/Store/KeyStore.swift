public import Foundation
public import KeygateRedis
public import NIOCore
internal import CCrypto
public import Synchronization

/// Creates, changes and reads keys in Redis. The CLI, the admin API and the node all use this type,
/// so every change has exactly one implementation (a Lua script in `KeyStoreScripts`).
public final class KeyStore: Sendable {
    public let redis: RedisClient
    public let layout: KeyStoreLayout
    public let format: KeyFormat
    public let hasher: KeyHasher
    /// Approximate cap of the event Stream (`XADD MAXLEN ~`). A node that was away longer than this
    /// many events flushes its whole cache instead of replaying.
    public let streamMaxLength: Int
    /// Mutations and usage batches that fewer replicas than `waitReplicas` confirmed.
    public let durability = DurabilityMetrics()
    /// Tests make a mutation stop between its steps with it.
    let injectedCrash = InjectedCrash()

    public init(redis: RedisClient, layout: KeyStoreLayout, format: KeyFormat, hasher: KeyHasher,
                streamMaxLength: Int = 100_000) {
        self.redis = redis
        self.layout = layout
        self.format = format
        self.hasher = hasher
        self.streamMaxLength = streamMaxLength
        // On a Cluster, invalidation subscribers use the primary of the Stream's slot.
        redis.topology.clusterSubscriberKey = layout.events
    }

    /// The master (or Cluster primaries) this store's changes go to, and their changes: what the
    /// invalidation subscriber follows.
    public var topology: RedisTopology { redis.topology }

    /// The pub/sub channel every change publishes the changed key's hash on.
    public var invalidationChannel: String { layout.invalidationChannel }

    /// What `create` needs; validated by `create`.
    public struct NewKey: Sendable {
        public var user: String
        public var name: String
        public var scopes: [String]
        public var expiresAt: Date?
        public var metadata: [String: String]
        public var rateLimits: [RateLimit]
        /// nil: unlimited.
        public var credits: Credits?
        /// Draw on another key's rate-limit windows and credits (that key's `limitID`); nil: the key's own.
        public var limitID: String?
        /// With `limitID`: the credit setting of that key, so the new key shares its balance.
        var sharedCreditSetting: CreditSetting?

        public init(user: String, name: String = "", scopes: [String] = [], expiresAt: Date? = nil,
                    metadata: [String: String] = [:], rateLimits: [RateLimit] = [], credits: Credits? = nil) {
            self.user = user; self.name = name; self.scopes = scopes
            self.expiresAt = expiresAt; self.metadata = metadata; self.rateLimits = rateLimits; self.credits = credits
        }

        /// The new key carries `record`'s rate limits and credits and draws on the same windows and
        /// balance (a self-service key's keys cannot escape its limits).
        public mutating func shareLimits(of record: KeyRecord) {
            rateLimits = record.rateLimits
            limitID = record.limitID
            credits = nil
            sharedCreditSetting = record.creditSetting
        }
    }

    /// Changes for `update`; nil fields stay as they are.
    public struct KeyChanges: Sendable {
        public var name: String?
        public var scopes: [String]?
        /// `.some(nil)` removes the expiry.
        public var expiresAt: Date??
        public var metadata: [String: String]?
        /// The whole list (an empty one removes every limit).
        public var rateLimits: [RateLimit]?
        /// Sets the balance (and refill) anew; `.some(nil)` removes the credits (unlimited).
        public var credits: Credits??

        public init(name: String? = nil, scopes: [String]? = nil, expiresAt: Date?? = nil, metadata: [String: String]? = nil,
                    rateLimits: [RateLimit]? = nil, credits: Credits?? = nil) {
            self.name = name; self.scopes = scopes; self.expiresAt = expiresAt; self.metadata = metadata
            self.rateLimits = rateLimits; self.credits = credits
        }
        var isEmpty: Bool { name == nil && scopes == nil && expiresAt == nil && metadata == nil && rateLimits == nil && credits == nil }
    }

    // MARK: mutations

    /// Issues a new key. The plaintext is in the result and nowhere else.
    /// - Parameter maxActiveKeys: refuse (`limitReached`) when the user already holds this many active
    ///   keys; nil for no limit. Self-service creation sets it.
    public func create(_ request: NewKey, actor: String, maxActiveKeys: Int? = nil, now: Date = Date()) async throws(KeygateError) -> IssuedKey {
        try await create(request, actor: actor, maxActiveKeys: maxActiveKeys, now: now, plaintext: format.generate())
    }

    /// `create` with a given plaintext: tests use it to cache a key as unknown before it exists.
    func create(_ request: NewKey, actor: String, maxActiveKeys: Int? = nil, now: Date, plaintext: String) async throws(KeygateError) -> IssuedKey {
        try KeyValidation.user(request.user)
        try KeyValidation.name(request.name)
        try KeyValidation.scopes(request.scopes)
        try KeyValidation.metadata(request.metadata)
        try RateLimit.validate(request.rateLimits)
        if let limitID = request.limitID, !KeyValidation.isKeyID(limitID) {
            throw KeygateError(.invalidArgument, "limit_id must be a key id", field: "limit_id")
        }
        if let expiresAt = request.expiresAt, expiresAt <= now {
            throw KeygateError(.invalidArgument, "expires_at must be in the future", field: "expires_at")
        }
        let hash = hasher.hash(plaintext)
        let id = Self.newKeyID()
        let metadata = try KeyValidation.encodeMetadata(request.metadata)
        let now = now.truncatedToMilliseconds
        let operation = PendingOperation(op: PendingOperation.newID(), kind: .create, hash: hash.hex, keyID: id, user: request.user,
                                         event: ["type", "created", "key_id", id, "user", request.user, "actor", actor,
                                                 "time", String(now.milliseconds), "hash", hash.hex])
        // The user's own limits go into the record; a change to them while this runs is caught below.
        let userLimits = try await storedUserLimits(request.user)
        let create = { () async throws(KeygateError) -> Void in
            let results = try await self.perform([operation], calls: { issued in
                [ScriptCall(script: KeyStoreScripts.applyCreate, keys: [self.layout.record(hash), self.layout.unlogged(hash)],
                            arguments: [operation.op, String(issued), String(Self.applyWindowMilliseconds), self.layout.invalidationChannel,
                                        hash.hex, id, request.user, request.name, request.scopes.joined(separator: " "),
                                        request.expiresAt.map { String($0.milliseconds) } ?? "", metadata, String(now.milliseconds),
                                        RateLimit.storageText(request.rateLimits), request.limitID ?? "",
                                        request.sharedCreditSetting?.storageText
                                            ?? request.credits.map { CreditSetting($0, setAt: issued).storageText } ?? "",
                                        userLimits.rateLimits, userLimits.credits])]
            }, afterApply: { applied throws(KeygateError) in
                for (operation, _) in applied { try await self.finishSideEffects(operation) }
            })
            _ = try results[0].get()
        }
        if let maxActiveKeys {
            try await withCreateLock(user: request.user) { () async throws(KeygateError) in
                let active = try await self.list(user: request.user).filter { $0.effectiveStatus(at: now) == .active }.count
                if active >= max(0, maxActiveKeys) {
                    throw KeygateError(.limitReached, "the user already has \(active) active keys")
                }
                try await create()
            }
        } else {
            try await create()
        }
        if try await storedUserLimits(request.user) != userLimits {
            try await copyUserLimits(user: request.user, to: [id], actor: actor, now: now)
            return IssuedKey(record: try await self.record(id: id), key: plaintext)
        }
        var record = KeyRecord(hash: hash, id: id, user: request.user, name: request.name, scopes: request.scopes,
                               status: .active, createdAt: now, expiresAt: request.expiresAt?.truncatedToMilliseconds,
                               revokedAt: nil, lastUsedAt: nil, version: 1, metadata: request.metadata,
                               rateLimits: request.rateLimits, limitID: request.limitID, rotatedFrom: nil, rotatedTo: nil)
        record.userRateLimits = RateLimit.fromStorage(Substring(userLimits.rateLimits)) ?? []
        record.userCreditSetting = CreditSetting(storage: Substring(userLimits.credits))
        // Credits are stamped with the log server's clock: read back what was stored.
        if request.credits != nil || request.sharedCreditSetting != nil {
            return IssuedKey(record: try await self.record(id: id), key: plaintext)
        }
        return IssuedKey(record: record, key: plaintext)
    }

    /// Revokes a key for good. Revoking a revoked key succeeds and changes nothing.
    @discardableResult
    public func revoke(id: String, actor: String, now: Date = Date()) async throws(KeygateError) -> KeyRecord {
        try await setStatus(id: id, to: .revoked, actor: actor, now: now)
    }

    /// Disables (`enabled: false`) or re-enables a key; revoked keys cannot be re-enabled.
    @discardableResult
    public func setEnabled(id: String, _ enabled: Bool, actor: String, now: Date = Date()) async throws(KeygateError) -> KeyRecord {
        try await setStatus(id: id, to: enabled ? .active : .disabled, actor: actor, now: now)
    }

    private func setStatus(id: String, to status: KeyStatus, actor: String, now: Date) async throws(KeygateError) -> KeyRecord {
        let current = try await record(id: id)
        let operation = statusOperation(id: id, hash: current.hash, user: current.user, to: status, actor: actor, now: now)
        _ = try await perform([operation.0], calls: { issued in [operation.1(issued)] })[0].get()
        return try await record(id: id)
    }

    /// A status change's registration and its step-2 call.
    private func statusOperation(id: String, hash: KeyHash, user: String, to status: KeyStatus, actor: String,
                                 now: Date) -> (PendingOperation, (Int64) -> ScriptCall) {
        let kind = [KeyStatus.revoked: "revoked", .disabled: "disabled", .active: "enabled"][status] ?? status.rawValue
        let operation = PendingOperation(op: PendingOperation.newID(), kind: .status, hash: hash.hex, keyID: id, user: user,
                                         event: ["type", kind, "key_id", id, "user", user, "actor", actor,
                                                 "time", String(now.milliseconds), "hash", hash.hex])
        return (operation, { issued in
            ScriptCall(script: KeyStoreScripts.applyStatus, keys: [self.layout.record(hash), self.layout.unlogged(hash)],
                       arguments: [operation.op, String(issued), String(Self.applyWindowMilliseconds), self.layout.invalidationChannel,
                                   hash.hex, id, status.rawValue, String(now.milliseconds)])
        })
    }

    /// Changes name, scopes, expiry or metadata.
    @discardableResult
    public func update(id: String, _ changes: KeyChanges, actor: String, now: Date = Date()) async throws(KeygateError) -> KeyRecord {
        guard !changes.isEmpty else { return try await record(id: id) }
        var pairs: [String] = []
        if let name = changes.name { try KeyValidation.name(name); pairs += ["name", name] }
        if let scopes = changes.scopes { try KeyValidation.scopes(scopes); pairs += ["scopes", scopes.joined(separator: " ")] }
        if let expiresAt = changes.expiresAt {
            if let expiresAt, expiresAt <= now {
                throw KeygateError(.invalidArgument, "expires_at must be in the future", field: "expires_at")
            }
            pairs += ["expires_at", expiresAt.map { String($0.milliseconds) } ?? ""]
        }
        if let metadata = changes.metadata {
            try KeyValidation.metadata(metadata)
            pairs += ["metadata", try KeyValidation.encodeMetadata(metadata)]
        }
        if let rateLimits = changes.rateLimits {
            try RateLimit.validate(rateLimits)
            pairs += ["rate_limits", RateLimit.storageText(rateLimits)]
        }
        if case .some(.some(let credits)) = changes.credits { _ = try Credits(remaining: credits.remaining, refill: credits.refill) }
        let current = try await record(id: id)
        let hash = current.hash
        let fields = (stride(from: 0, to: pairs.count, by: 2).map { pairs[$0] } + (changes.credits == nil ? [] : ["credits"]))
            .joined(separator: ",")
        let operation = PendingOperation(op: PendingOperation.newID(), kind: .update, hash: hash.hex, keyID: id, user: current.user,
                                         event: ["type", "updated", "key_id", id, "user", current.user, "actor", actor,
                                                 "time", String(now.milliseconds), "fields", fields, "hash", hash.hex])
        _ = try await perform([operation], calls: { issued in
            [ScriptCall(script: KeyStoreScripts.applyUpdate, keys: [self.layout.record(hash), self.layout.unlogged(hash)],
                        arguments: [operation.op, String(issued), String(Self.applyWindowMilliseconds), self.layout.invalidationChannel,
                                    hash.hex, id] + pairs
                            + (changes.credits.map { ["credits", $0.map { CreditSetting($0, setAt: issued).storageText } ?? ""] } ?? []))]
        })[0].get()
        return try await record(id: id)
    }

    /// Issues a successor with the same user, name, scopes, metadata, rate limits (and their windows:
    /// both keys draw on the same ones) and expiry, and makes the old key
    /// expire after `grace` (or at its own expiry, if sooner). Both stay readable, linked by
    /// `rotated_to` / `rotated_from`, with their own usage history.
    public func rotate(id: String, grace: Duration, actor: String, now: Date = Date()) async throws(KeygateError) -> IssuedKey {
        guard grace >= .zero else { throw KeygateError(.invalidArgument, "grace must not be negative", field: "grace") }
        let graceEnd = now.addingTimeInterval(Double(grace.components.seconds) + Double(grace.components.attoseconds) / 1e18)
        // The successor copies the record as read; a change in between (STALE) means read it again.
        for attempt in 1...3 {
            let old = try await record(id: id)
            let plaintext = format.generate()
            let newHash = hasher.hash(plaintext)
            let newID = Self.newKeyID()
            let successor = PendingOperation.Successor(
                hash: newHash.hex, id: newID, name: old.name, scopes: old.scopes.joined(separator: " "),
                expiresAt: old.expiresAt.map { String($0.milliseconds) } ?? "",
                metadata: try KeyValidation.encodeMetadata(old.metadata), createdAt: String(now.milliseconds),
                rateLimits: RateLimit.storageText(old.rateLimits), limitID: old.limitID, credits: old.creditSetting?.storageText,
                userRateLimits: RateLimit.storageText(old.userRateLimits), userCredits: old.userCreditSetting?.storageText)
            let operation = PendingOperation(op: PendingOperation.newID(), kind: .rotate, hash: old.hash.hex, keyID: id, user: old.user,
                                             event: ["type", "rotated", "key_id", id, "user", old.user, "actor", actor,
                                                     "time", String(now.milliseconds), "successor_id", newID, "hash", old.hash.hex],
                                             successor: successor)
            let results = try await perform([operation], calls: { issued in
                [ScriptCall(script: KeyStoreScripts.applyRotate, keys: [self.layout.record(old.hash), self.layout.unlogged(old.hash)],
                            arguments: [operation.op, String(issued), String(Self.applyWindowMilliseconds), self.layout.invalidationChannel,
                                        old.hash.hex, id, String(old.version), newID, String(graceEnd.milliseconds)])]
            }, afterApply: { applied throws(KeygateError) in
                for (operation, outcome) in applied where outcome.changed { try await self.finishSideEffects(operation) }
            })
            switch results[0] {
            case .success:
                // A change of the user's limits that listed the keys before the successor existed.
                if try await storedUserLimits(old.user).version > 0 {
                    try await copyUserLimits(user: old.user, to: [newID], actor: actor, now: now)
                }
                return IssuedKey(record: try await record(id: newID), key: plaintext)
            case .failure(let error) where error.code == .conflict && error.message.hasPrefix("the key changed") && attempt < 3:
                continue
            case .failure(let error):
                throw error
            }
        }
        throw KeygateError(.conflict, "the key kept changing while it was being rotated; try again")
    }

    /// Revokes every key of `user`; returns how many changed (already revoked ones do not count).
    /// Keys created while it runs may stay active (it revokes the keys the user held when it read the
    /// user's set).
    /// - Throws: `KeygateError.notFound` when the user holds no keys at all, revoked or not.
    public func revokeAll(user: String, actor: String, now: Date = Date()) async throws(KeygateError) -> Int {
        try KeyValidation.existingUser(user)
        let ids = (try await command(RedisCommand("SMEMBERS", [.string(layout.userKeys(user))])).array ?? []).compactMap(\.string)
        guard !ids.isEmpty else { throw KeygateError(.notFound, "user '\(DisplayText.escaped(user))' has no keys") }
        var revoked = 0
        for chunk in stride(from: 0, to: ids.count, by: 200).map({ Array(ids[$0..<min($0 + 200, ids.count)]) }) {
            let hashes = try await pipeline(chunk.map { RedisCommand("GET", [.string(layout.idIndex($0))]) })
            let operations = zip(chunk, hashes).compactMap { id, reply in
                reply.string.flatMap(KeyHash.init(hex:)).map { statusOperation(id: id, hash: $0, user: user, to: .revoked, actor: actor, now: now) }
            }
            guard !operations.isEmpty else { continue }
            let results = try await perform(operations.map(\.0), calls: { issued in operations.map { $0.1(issued) } })
            for result in results {
                switch result {
                case .success(let outcome): if outcome.changed { revoked += 1 }
                case .failure(let error) where error.code == .notFound: continue // deleted meanwhile
                case .failure(let error): throw error
                }
            }
        }
        return revoked
    }

    /// Holds `ns:create-lock:<user>` while `body` runs, so two limited creates for one user cannot
    /// both pass the count. Waits up to 2 s for another holder; the lock expires after 5 s if its
    /// holder dies (then, and only then, two creates could both pass).
    private func withCreateLock(user: String, _ body: () async throws(KeygateError) -> Void) async throws(KeygateError) {
        let lock = layout.createLock(user)
        let token = PendingOperation.newID()
        var acquired = false
        for _ in 0..<40 {
            let reply = try await command(RedisCommand("SET", [.string(lock), .string(token), "NX", "PX", "5000"]))
            if reply.string == "OK" { acquired = true; break }
            try? await Task.sleep(for: .milliseconds(50))
        }
        guard acquired else { throw KeygateError(.unavailable, "another key is being created for this user; try again") }
        let outcome: Result<Void, KeygateError>
        do { try await body(); outcome = .success(()) } catch { outcome = .failure(error) }
        _ = try? await runScripts([ScriptCall(script: KeyStoreScripts.unlock, keys: [lock], arguments: [token])])
        try outcome.get()
    }

    // MARK: reads

    /// The key with this id.
    /// - Throws: `KeygateError.notFound`.
    public func record(id: String) async throws(KeygateError) -> KeyRecord {
        let hash = try await hash(forID: id)
        guard let record = try await records(hashes: [hash]).first else {
            throw KeygateError(.notFound, "no key with id '\(id)'")
        }
        return record
    }

    /// The record stored for this hash, or nil (the node's lookup).
    public func record(hash: KeyHash) async throws(KeygateError) -> KeyRecord? {
        try await records(hashes: [hash]).first
    }

    /// A user's keys, oldest first (empty for an unknown user).
    public func list(user: String) async throws(KeygateError) -> [KeyRecord] {
        try KeyValidation.existingUser(user)
        let ids = try await command(RedisCommand("SMEMBERS", [.string(layout.userKeys(user))])).array ?? []
        guard !ids.isEmpty else { return [] }
        // One GET per id (not MGET): the index keys live in different Cluster slots.
        let hashes = try await pipeline(ids.compactMap { $0.string.map { RedisCommand("GET", [.string(layout.idIndex($0))]) } })
        let found = hashes.compactMap { $0.string.flatMap { KeyHash(hex: $0) } }
        return try await records(hashes: found).sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
    }

    /// Lifecycle events after the Stream id `after` (exclusive; nil for the oldest), at most `count`.
    /// - Throws: `invalidArgument` for an `after` that is not an event id (`after`) or a count
    ///   outside 1-10,000 (`limit`).
    public func events(after: String? = nil, count: Int = 100) async throws(KeygateError) -> [KeyEvent] {
        if let after, !KeyValidation.isEventID(after) {
            throw KeygateError(.invalidArgument, "after must be an event id: two unsigned 64-bit numbers joined by '-', such as 1733011200000-0", field: "after")
        }
        guard (1...10_000).contains(count) else {
            throw KeygateError(.invalidArgument, "limit must be 1-10000", field: "limit")
        }
        // Nothing can follow the largest id (and Redis refuses an exclusive range starting there).
        if after == "\(UInt64.max)-\(UInt64.max)" { return [] }
        let start = after.map { "(" + $0 } ?? "-"
        let reply = try await command(RedisCommand("XRANGE", [.string(layout.events), .string(start), "+", "COUNT", .integer(Int64(count))]))
        return (reply.array ?? []).compactMap(KeyStoreDecoding.event)
    }

    /// One Stream entry as the invalidation replay needs it: its id and the changed key's hash.
    public struct ReplayEntry: Sendable, Equatable {
        public var eventID: String
        /// Nil for an entry without a readable hash (not written by Keygate).
        public var hash: KeyHash?
    }

    /// Stream entries after `position` (exclusive), at most `count`, for the invalidation replay.
    public func replay(after position: String, count: Int = 1_000) async throws(KeygateError) -> [ReplayEntry] {
        let reply = try await command(RedisCommand("XRANGE", [.string(layout.events), .string("(" + position), "+", "COUNT", .integer(Int64(count))]))
        return (reply.array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { return nil }
            return ReplayEntry(eventID: id, hash: parts[1].stringPairs?["hash"].flatMap(KeyHash.init(hex:)))
        }
    }

    /// Where the Stream stands: its last id ever generated, and the largest id trimmed away (an
    /// older replay position cannot be trusted: entries after it are gone). Nil fields for a Stream
    /// that does not exist yet or never lost an entry.
    public struct StreamPosition: Sendable, Equatable {
        public var lastGenerated: String?
        public var maxDeleted: String?
    }

    public func streamPosition() async throws(KeygateError) -> StreamPosition {
        let reply: RESPValue
        do {
            reply = try await redis.send(RedisCommand("XINFO", ["STREAM", .string(layout.events)]))
        } catch let error as RedisError where error.code == .serverError && error.message.contains("no such key") {
            return StreamPosition(lastGenerated: nil, maxDeleted: nil) // no event yet
        } catch {
            throw Self.map(error)
        }
        guard let values = reply.array else { return StreamPosition(lastGenerated: nil, maxDeleted: nil) }
        var fields: [String: RESPValue] = [:]
        var index = 0
        while index + 1 < values.count {
            if let name = values[index].string { fields[name] = values[index + 1] }
            index += 2
        }
        let maxDeleted = fields["max-deleted-entry-id"]?.string.flatMap { $0 == "0-0" ? nil : $0 }
        return StreamPosition(lastGenerated: fields["last-generated-id"]?.string, maxDeleted: maxDeleted)
    }

    /// What the node's verifier learns from one lookup (`KeyStoreScripts.lookup`).
    public enum Lookup: Sendable {
        case active(ActiveRecord)
        case refused(InvalidReason)
        /// Not a reply the lookup script gives: a record or server Keygate did not write.
        case malformed
    }

    /// The fields of an active record a verdict needs, as stored (limits fields empty without limits).
    public struct ActiveRecord: Sendable {
        public var id: String
        public var user: String
        public var scopes: String
        public var expiresAt: RESPValue
        /// `rate_limits` (`RateLimit.storageText`).
        public var rateLimits: Substring
        /// `limit_id`: empty for a key that is not a successor (then its own id).
        public var limitSubject: String
        /// `credits` (`CreditSetting.storageText`).
        public var credits: Substring
        /// The user's limits copied into the record (`setUserLimits`).
        public var userRateLimits: Substring
        public var userCredits: Substring
    }

    /// Looks a key up by hash on `eventLoop`'s connection, for the verifier: one `HMGET` of the few
    /// fields a verdict needs, status first. A refusal (unknown, revoked, disabled) is decided from
    /// the status alone, without reading or allocating anything else, so an unknown and a revoked key
    /// cost the node the same work (what still differs is Redis's reply: a revoked record's fields
    /// travel back; B5 in the README).
    public func lookup(_ hash: KeyHash, on eventLoop: any EventLoop) -> EventLoopFuture<Lookup> {
        let command = RedisCommand("HMGET", [.string(layout.record(hash)), "status", "id", "user", "scopes", "expires_at",
                                             "rate_limits", "limit_id", "credits", "user_rate_limits", "user_credits"])
        return redis.send(command, on: eventLoop).map { reply in
            guard case .array(let fields) = reply, fields.count == 10 else { return .malformed }
            guard case .bulkString(let status) = fields[0] else { return fields[0].isNull ? .refused(.notFound) : .malformed }
            if status.readableBytesView.elementsEqual("revoked".utf8) { return .refused(.revoked) }
            if status.readableBytesView.elementsEqual("disabled".utf8) { return .refused(.disabled) }
            guard status.readableBytesView.elementsEqual("active".utf8), let id = fields[1].string, let user = fields[2].string else {
                return .malformed
            }
            return .active(ActiveRecord(id: id, user: user, scopes: fields[3].string ?? "", expiresAt: fields[4],
                                        rateLimits: Substring(fields[5].string ?? ""), limitSubject: fields[6].string ?? "",
                                        credits: Substring(fields[7].string ?? ""), userRateLimits: Substring(fields[8].string ?? ""),
                                        userCredits: Substring(fields[9].string ?? "")))
        }
    }

    /// Usage of a key: total, the last `days` days (at most 90) and the last 48 hours, each bucket
    /// with the key's refused requests by reason.
    public func usage(id: String, days: Int = 7, now: Date = Date()) async throws(KeygateError) -> KeyUsage {
        guard (1...KeyStoreLayout.dailyRetentionDays).contains(days) else {
            throw KeygateError(.invalidArgument, "days must be 1-\(KeyStoreLayout.dailyRetentionDays)", field: "days")
        }
        let hash = try await hash(forID: id)
        let dayNames = UsageBuckets.days(endingAt: now, count: days)
        let hourNames = UsageBuckets.hours(endingAt: now, count: KeyStoreLayout.hourlyRetentionHours)
        let refusalFields: [RedisArgument] = ["rate_limited", "usage_exceeded", "forbidden"]
        let replies = try await pipeline([
            RedisCommand("HMGET", [.string(layout.usage(hash)), "total", "last_used_at"]),
            RedisCommand("MGET", dayNames.map { .string(layout.dailyUsage(hash, day: $0.key)) }),
            RedisCommand("MGET", hourNames.map { .string(layout.hourlyUsage(hash, hour: $0.key)) }),
        ] + dayNames.map { RedisCommand("HMGET", [.string(layout.dailyRefusals(hash, day: $0.key))] + refusalFields) }
          + hourNames.map { RedisCommand("HMGET", [.string(layout.hourlyRefusals(hash, hour: $0.key))] + refusalFields) })
        let totals = replies[0].array ?? []
        func refused(_ reply: RESPValue) -> RefusalCounts {
            let values = reply.array ?? []
            func value(_ index: Int) -> Int64 { index < values.count ? values[index].int ?? 0 : 0 }
            return RefusalCounts(rateLimited: value(0), usageExceeded: value(1), forbidden: value(2))
        }
        let daily = zip(dayNames.indices, replies[1].array ?? []).map { index, count in
            KeyUsage.Bucket(period: dayNames[index].label, count: count.int ?? 0, refused: refused(replies[3 + index]))
        }
        let hourly = zip(hourNames.indices, replies[2].array ?? []).map { index, count in
            KeyUsage.Bucket(period: hourNames[index].label, count: count.int ?? 0, refused: refused(replies[3 + dayNames.count + index]))
        }
        return KeyUsage(id: id, total: totals.first?.int ?? 0, daily: daily, hourly: hourly,
                        lastUsedAt: totals.count > 1 ? totals[1].int.map(Date.init(milliseconds:)) : nil)
    }

    // MARK: usage write side (the node's flusher)

    /// One key's uses in a batch.
    public struct UsageDelta: Sendable, Equatable {
        public var hash: KeyHash
        /// Admitted requests (uses); `lastUsedAt` is that of the last one (ignored without uses).
        public var count: Int64
        public var lastUsedAt: Date
        public var refused: RefusalCounts
        public init(hash: KeyHash, count: Int64, lastUsedAt: Date, refused: RefusalCounts = RefusalCounts()) {
            self.hash = hash; self.count = count; self.lastUsedAt = lastUsedAt; self.refused = refused
        }
    }

    /// Adds a batch to the counters exactly once per `batchID` (`<node run>:<sequence>`, e.g.
    /// `node-a-12-99:42`). A node run's batches must be applied in sequence order, each one resent
    /// unchanged until it is acknowledged (as `UsageFlusher` does): the batch is split by the slot of
    /// its keys' counters and each slot keeps the last sequence applied, so a retry after an
    /// ambiguous failure cannot double count.
    /// - Returns: true when some part was applied now, false when all of it had been applied before.
    @discardableResult
    public func applyUsage(batchID: String, _ deltas: [UsageDelta], at now: Date = Date()) async throws(KeygateError) -> Bool {
        guard !deltas.isEmpty else { return true }
        guard let colon = batchID.lastIndex(of: ":"), let sequence = Int64(batchID[batchID.index(after: colon)...]), sequence > 0,
              colon > batchID.startIndex else {
            throw KeygateError(.invalidArgument, "a usage batch id is '<node run>:<sequence>', got '\(batchID)'")
        }
        let run = String(batchID[..<colon])
        let bucket = UsageBuckets.names(at: now)
        var groups: [Int: [UsageDelta]] = [:]
        for delta in deltas { groups[redis.scriptGroup(forKey: layout.usage(delta.hash)), default: []].append(delta) }
        let calls = groups.sorted { $0.key < $1.key }.map { slot, deltas in
            let used = deltas.filter { $0.count > 0 }
            var keys = [layout.usageApplied(slot: slot, run: run)]
            var arguments = [String(sequence), "86400", String(91 * 86_400), String(49 * 3_600), String(used.count)]
            for delta in used {
                keys += [layout.usage(delta.hash), layout.dailyUsage(delta.hash, day: bucket.day),
                         layout.hourlyUsage(delta.hash, hour: bucket.hour)]
                arguments += [String(delta.count), String(delta.lastUsedAt.milliseconds)]
            }
            for delta in deltas where !delta.refused.isZero {
                keys += [layout.dailyRefusals(delta.hash, day: bucket.day), layout.hourlyRefusals(delta.hash, hour: bucket.hour)]
                arguments += [String(delta.refused.rateLimited), String(delta.refused.usageExceeded), String(delta.refused.forbidden)]
            }
            return ScriptCall(script: KeyStoreScripts.applyUsage, keys: keys, arguments: arguments)
        }
        let (replies, shortfall) = try await runScripts(calls, throwingErrors: true)
        if let shortfall {
            durability.notReplicated.add(1, ordering: .relaxed)
            throw shortfall
        }
        return replies.contains { $0.int == 1 }
    }

    // MARK: rate limits

    /// Leases up to `wanted` tokens of `limit`'s window number `window` for the key `hash`, on
    /// `eventLoop`'s connection (the verifier's path). The window's counter lives until a window
    /// after its end, so a late lease still sees it.
    public func leaseTokens(subject: String, limit: RateLimit, window: Int64, wanted: Int,
                            on eventLoop: any EventLoop) -> EventLoopFuture<(granted: Int, handedOut: Int)> {
        let key = layout.rateLimitWindow(subject: subject, name: limit.name, window: window)
        return redis.evalSHA(KeyStoreScripts.leaseTokens, keys: [.string(key)],
                             arguments: [.integer(Int64(limit.limit)), .integer(Int64(max(1, wanted))),
                                         .integer(2 * limit.durationMilliseconds)], on: eventLoop)
            .flatMapThrowing { reply in
                guard let parts = reply.array, parts.count == 2, let granted = parts[0].int, let handedOut = parts[1].int else {
                    throw KeygateError(.internalError, "unexpected reply to a rate-limit lease")
                }
                return (Int(granted), Int(handedOut))
            }
    }

    // MARK: credits

    /// Leases credits of `subject`'s balance for `setting` (`KeyStoreScripts.leaseCredits`): `need`
    /// whole or nothing, plus up to `wanted` more. On `eventLoop`'s connection (the verifier's path).
    public func leaseCredits(subject: String, setting: CreditSetting, period: Int64, need: Int, wanted: Int,
                             on eventLoop: any EventLoop) -> EventLoopFuture<CreditLedger.Grant> {
        redis.evalSHA(KeyStoreScripts.leaseCredits, keys: [.string(layout.credits(subject: subject))],
                      arguments: [.integer(Int64(setting.remaining)), .integer(setting.setAt), .integer(setting.period),
                                  .integer(Int64(setting.refill?.amount ?? -1)), .integer(period), .integer(Int64(need)),
                                  .integer(Int64(max(0, wanted)))], on: eventLoop)
            .flatMapThrowing { reply in
                guard let parts = reply.array, parts.count == 3, let granted = parts[0].int, let balance = parts[1].int,
                      let period = parts[2].int else {
                    throw KeygateError(.internalError, "unexpected reply to a credits lease")
                }
                return CreditLedger.Grant(granted: Int(granted), balance: Int(balance), period: period)
            }
    }

    /// Gives back credits a node leased and did not spend; false when the balance is no longer the
    /// one they came from (refilled or set anew), and they are dropped.
    public func returnCredits(subject: String, setting: CreditSetting, period: Int64, credits: Int) async throws(KeygateError) -> Bool {
        let reply = try await runScripts([ScriptCall(script: KeyStoreScripts.returnCredits, keys: [layout.credits(subject: subject)],
                                                     arguments: [String(setting.setAt), String(period), String(credits)])],
                                         throwingErrors: true)
        return reply.replies.first?.int == 1
    }

    /// What the balance of `record`'s credits is now, as the next lease would see it (credits nodes
    /// hold count as spent).
    func liveCredits(_ setting: CreditSetting, balance: RESPValue, now: Date) -> Credits? {
        let fields = balance.array ?? []
        var remaining = setting.remaining, period = setting.period
        if fields.count == 3, let stored = fields[0].int, let set = fields[1].int, let storedPeriod = fields[2].int, set >= setting.setAt {
            remaining = Int(stored)
            period = storedPeriod
        }
        if let refill = setting.refill, refill.period(at: now.milliseconds) > period { remaining = refill.amount }
        return try? Credits(remaining: max(0, remaining), refill: setting.refill)
    }

    // MARK: plumbing

    private func hash(forID id: String) async throws(KeygateError) -> KeyHash {
        guard KeyValidation.isKeyID(id) else { throw KeygateError(.notFound, "no key with id '\(id)'") }
        let reply = try await command(RedisCommand("GET", [.string(layout.idIndex(id))]))
        guard let text = reply.string, let hash = KeyHash(hex: text) else {
            throw KeygateError(.notFound, "no key with id '\(id)'")
        }
        return hash
    }

    private func records(hashes: [KeyHash]) async throws(KeygateError) -> [KeyRecord] {
        guard !hashes.isEmpty else { return [] }
        var commands: [RedisCommand] = []
        for hash in hashes {
            commands.append(RedisCommand("HGETALL", [.string(layout.record(hash))]))
            commands.append(RedisCommand("HGET", [.string(layout.usage(hash)), "last_used_at"]))
        }
        let replies = try await pipeline(commands)
        var result: [KeyRecord] = []
        for (index, hash) in hashes.enumerated() {
            guard let fields = replies[index * 2].stringPairs, !fields.isEmpty else { continue }
            guard var record = KeyStoreDecoding.record(hash: hash, fields: fields) else {
                throw KeygateError(.internalError, "the record for key \(fields["id"] ?? hash.logPrefix) is malformed")
            }
            record.lastUsedAt = replies[index * 2 + 1].int.map(Date.init(milliseconds:))
            result.append(record)
        }
        // Balances live in their own slots ({limit id}): one more round trip, for keys with credits only.
        let withCredits = result.indices.filter { result[$0].creditSetting != nil }
        if !withCredits.isEmpty {
            let balances = try await pipeline(withCredits.map {
                RedisCommand("HMGET", [.string(layout.credits(subject: result[$0].limitID)), "remaining", "set", "period"])
            })
            let now = Date()
            for (index, balance) in zip(withCredits, balances) {
                result[index].credits = liveCredits(result[index].creditSetting!, balance: balance, now: now)
            }
        }
        return result
    }

    /// Runs scripts as one pipeline on one connection; with `waitReplicas` > 0, follows them with
    /// `WAIT` on that connection, so a shortfall means fewer replicas than required hold the writes.
    /// - Parameter throwingErrors: throw the first error reply instead of returning it.
    /// - Returns: one reply per call, and a `notReplicated` error (not thrown: the writes happened)
    ///   when `WAIT` fell short.
    func runScripts(_ calls: [ScriptCall], throwingErrors: Bool = false) async throws(KeygateError) -> (replies: [RESPValue], shortfall: KeygateError?) {
        guard calls.first?.keys.first != nil else { return ([], nil) }
        let encoded = calls.map { (script: $0.script, keys: $0.keys.map { RedisArgument.string($0) }, arguments: $0.arguments.map { RedisArgument.string($0) }) }
        let replicas = redis.configuration.effectiveWaitReplicas
        let timeout = Int64(TimeAmount(redis.configuration.waitTimeout).nanoseconds / 1_000_000)
        // A script that changed nothing (a retried revoke, a batch applied before) replicates nothing,
        // and WAIT alone would then vouch for an older offset. The mark is always written, and the
        // replication stream is ordered: a replica that has the mark has every earlier write. On a
        // Cluster each primary written to gets its own mark and WAIT (which runs where its mark went).
        let written = replicas > 0 ? redis.primaryRepresentatives(of: calls.compactMap(\.keys.first)) : []
        let followers = written.flatMap { key in
            [RedisCommand("SET", [.string(layout.replicationMark(slotOf: key)), "1", "PX", "86400000"]),
             RedisCommand("WAIT", [.integer(Int64(replicas)), .integer(max(1, timeout))])]
        }
        let replies: [RESPValue]
        do { replies = try await redis.evalSHA(encoded, followedBy: followers) } catch { throw Self.map(error) }
        let scriptReplies = Array(replies.prefix(calls.count))
        if throwingErrors, let message = scriptReplies.lazy.compactMap({ reply -> String? in
            if case .error(let message) = reply { return message } else { return nil }
        }).first {
            throw Self.map(RedisError(.serverError, message))
        }
        guard replicas > 0 else { return (scriptReplies, nil) }
        // The fewest confirmations of any primary (a WAIT that could not run there counts as none).
        let acknowledged = written.indices.map { replies[calls.count + 2 * $0 + 1].int ?? 0 }.min() ?? 0
        guard acknowledged < replicas else { return (scriptReplies, nil) }
        return (scriptReplies, KeygateError(.notReplicated, "only \(acknowledged) of \(replicas) replica(s) confirmed the change within \(timeout) ms"))
    }

    func command(_ command: RedisCommand) async throws(KeygateError) -> RESPValue {
        do { return try await redis.send(command) } catch { throw Self.map(error) }
    }

    func pipeline(_ commands: [RedisCommand]) async throws(KeygateError) -> [RESPValue] {
        let replies: [RESPValue]
        do { replies = try await redis.pipeline(commands) } catch { throw Self.map(error) }
        for reply in replies {
            if case .error(let message) = reply { throw Self.map(RedisError(.serverError, message)) }
        }
        return replies
    }

    /// Redis failures to store errors: the script's leading word picks the code.
    static func map(_ error: any Error) -> KeygateError {
        guard let redisError = error as? RedisError else {
            return KeygateError(.internalError, "unexpected error: \(error)", underlying: error)
        }
        if redisError.code == .serverError {
            let message = redisError.message
            let detail = message.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? message
            if message.hasPrefix("NOTFOUND") { return KeygateError(.notFound, detail, underlying: error) }
            if message.hasPrefix("CONFLICT") { return KeygateError(.conflict, detail, underlying: error) }
            if message.hasPrefix("DUPLICATE") { return KeygateError(.duplicate, detail, underlying: error) }
            if message.hasPrefix("LIMIT") { return KeygateError(.limitReached, detail, underlying: error) }
            if message.hasPrefix("STALE") { return KeygateError(.conflict, detail, underlying: error) }
            if message.hasPrefix("EXPIRED") { return KeygateError(.unavailable, detail + "; try again", underlying: error) }
            // The server cannot take the change here and now (a replica, loading its data, cut off
            // from its master, short of replicas): "could not check", never an internal error.
            if Self.unavailableReplies.contains(where: { message.hasPrefix($0) }) {
                return KeygateError(.unavailable, "Redis refused the command: \(message)", underlying: error)
            }
            return KeygateError(.internalError, "Redis refused the command: \(message)", underlying: error)
        }
        return KeygateError(.unavailable, "Redis is unavailable (\(redisError.code)): \(redisError.message)", underlying: error)
    }

    /// Error replies that mean "this server cannot do that now", not "the request is wrong".
    static let unavailableReplies = ["READONLY", "LOADING", "MASTERDOWN", "NOREPLICAS", "BUSY", "TRYAGAIN", "CLUSTERDOWN"]

    /// `key_` and 17 base62 characters (96 random bits): public, safe to log.
    static func newKeyID() -> String {
        var random = [UInt8](repeating: 0, count: 12)
        let status = random.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32($0.count)) }
        precondition(status == 1, "RAND_bytes failed")
        return "key_" + String(decoding: Base62.encode(random, width: 17), as: UTF8.self)
    }
}

/// Counters of `WAIT` outcomes, read by the metrics endpoint.
public final class DurabilityMetrics: Sendable {
    /// Changes the master applied but fewer replicas than required confirmed (reported as not durable).
    public let notReplicated = Atomic<Int>(0)
    init() {}
}

extension Date {
    var milliseconds: Int64 { Int64((timeIntervalSince1970 * 1000).rounded(.down)) }
    init(milliseconds: Int64) { self.init(timeIntervalSince1970: Double(milliseconds) / 1000) }
    var truncatedToMilliseconds: Date { Date(milliseconds: milliseconds) }
}
