import Foundation
import KeygateRedis
internal import CCrypto
import Synchronization

/// A mutation registered before it is applied (step 1 of `KeyStoreScripts`): what its event will
/// say and what a repair needs to finish it. Stored as JSON in `{ns:events}:pending`.
struct PendingOperation: Codable, Sendable, Equatable {
    enum Kind: String, Codable, Sendable { case create, status, update, rotate }

    var op: String
    var kind: Kind
    /// The record's hash hex (the old key's, for a rotation).
    var hash: String
    var keyID: String
    var user: String
    /// The event's field/value pairs, without the version (known once applied).
    var event: [String]
    /// Rotation only: the successor, as `writeSuccessor` writes it (hash, id, name, scopes,
    /// expires_at, metadata, created_at).
    var successor: Successor?

    struct Successor: Codable, Sendable, Equatable {
        var hash: String
        var id: String
        var name: String
        var scopes: String
        var expiresAt: String
        var metadata: String
        var createdAt: String
        /// nil in operations registered before rate limits existed.
        var rateLimits: String?
        var limitID: String?
        /// The credit setting (`CreditSetting.storageText`), shared with the predecessor's balance.
        var credits: String?
        /// The user's limits as the predecessor carried them (nil in operations registered before them).
        var userRateLimits: String?
        var userCredits: String?
    }

    static func newID() -> String {
        var random = [UInt8](repeating: 0, count: 12)
        let status = random.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32($0.count)) }
        precondition(status == 1, "RAND_bytes failed")
        return "op_" + String(decoding: Base62.encode(random, width: 17), as: UTF8.self)
    }
}

/// One step-2 script call.
struct ScriptCall: Sendable {
    var script: RedisScript
    var keys: [String]
    var arguments: [String]
}

/// What step 2 reported for one operation.
struct AppliedOperation: Sendable {
    var changed: Bool
    var version: Int64
    /// Other operations on the same key that were applied but not logged yet (a crashed writer's):
    /// completed before this one returns, so a retried revoke cannot report success while the
    /// first attempt's event is missing.
    var unloggedOthers: [String]
}

/// A test hook: makes `perform` stop (as a crashed writer would) after a step.
final class InjectedCrash: Sendable {
    enum Step: Sendable { case begin, apply, afterApply }
    private let step = Mutex<Step?>(nil)
    func set(_ value: Step?) { step.withLock { $0 = value } }
    func check(_ reached: Step) throws(KeygateError) {
        if step.withLock({ $0 == reached }) { throw KeygateError(.unavailable, "injected crash after \(reached)") }
    }
}

/// What `KeyStore.repair` did.
public struct RepairReport: Sendable, Equatable, Encodable {
    /// Operations found applied and logged now.
    public var completed = 0
    /// Operations never applied, whose registration was dropped.
    public var dropped = 0
    /// Operations younger than the repair age, left to their writer.
    public var inFlight = 0
    /// Users of keys created before the users index existed, added to it now (once per deployment).
    public var usersIndexed = 0
    public init(completed: Int = 0, dropped: Int = 0, inFlight: Int = 0) {
        self.completed = completed; self.dropped = dropped; self.inFlight = inFlight
    }
    /// The JSON names follow the rest of the CLI's output (snake case).
    private enum CodingKeys: String, CodingKey {
        case completed, dropped
        case inFlight = "in_flight", usersIndexed = "users_indexed"
    }
}

extension KeyStore {
    /// Step 2 must run within this long of step 1 (or it refuses, `EXPIRED`).
    static let applyWindowMilliseconds: Int64 = 10_000
    /// A repair completes or drops an operation registered at least this long ago: the apply window
    /// plus a margin for clock differences between the log's server and the key's.
    public static let repairAge: Duration = .seconds(30)

    /// Runs mutations through the four steps of `KeyStoreScripts`. `calls` builds each operation's
    /// step-2 script from the registration time; `afterApply` does what must exist before the event
    /// is logged (the id index and user set of a new key, a rotation's successor).
    ///
    /// - Returns: one result per operation: a definite refusal (the script or the server refused;
    ///   nothing changed, the registration is dropped) or what was applied.
    /// - Throws: when a step's outcome is unknown (a timeout, a lost connection): the registration
    ///   stays for `repair`. `notReplicated` after every step ran, when too few replicas confirmed.
    func perform(_ operations: [PendingOperation], calls: (Int64) -> [ScriptCall],
                 afterApply: ([(PendingOperation, AppliedOperation)]) async throws(KeygateError) -> Void = { _ throws(KeygateError) in })
        async throws(KeygateError) -> [Result<AppliedOperation, KeygateError>] {
        let issued = try await begin(operations)
        try injectedCrash.check(.begin)
        let (replies, applyShortfall) = try await runScripts(calls(issued))
        try injectedCrash.check(.apply)
        var results: [Result<AppliedOperation, KeygateError>] = []
        var applied: [(PendingOperation, AppliedOperation)] = []
        for (operation, reply) in zip(operations, replies) {
            switch Self.decodeApplied(reply) {
            case .success(let outcome):
                results.append(.success(outcome))
                applied.append((operation, outcome))
            case .failure(let error):
                results.append(.failure(error))
            }
        }
        for (operation, outcome) in applied {
            guard let hash = KeyHash(hex: operation.hash) else { continue }
            for other in outcome.unloggedOthers { _ = try? await complete(operationID: other, hash: hash) }
        }
        try await afterApply(applied)
        try injectedCrash.check(.afterApply)
        // Refused operations are logged with version 0: their registration goes, no event is written.
        let versions = zip(operations, results).map { operation, result -> (PendingOperation, Int64) in
            guard case .success(let outcome) = result, outcome.changed else { return (operation, 0) }
            return (operation, outcome.version)
        }
        let logShortfall = try await log(versions)
        let marks = applied.filter(\.1.changed).compactMap { operation, _ in
            KeyHash(hex: operation.hash).map { RedisCommand("HDEL", [.string(layout.unlogged($0)), .string(operation.op)]) }
        }
        // Best effort: a mark left behind is cleared by the next change of the key or a repair.
        if !marks.isEmpty { _ = try? await pipeline(marks) }
        if let shortfall = applyShortfall ?? logShortfall {
            durability.notReplicated.add(1, ordering: .relaxed)
            throw shortfall
        }
        return results
    }

    /// Finishes or drops operations registered at least `olderThan` ago by a writer that did not
    /// finish them (it crashed, or lost its connection between steps). Safe to run on every node at
    /// once: the log step appends each event exactly once.
    /// - Throws: `invalidArgument` for an age under `minimumRepairAge`: a younger operation may
    ///   still be applied by its writer, after a repair dropped it.
    public func repair(olderThan age: Duration = KeyStore.repairAge) async throws(KeygateError) -> RepairReport {
        guard age >= Self.minimumRepairAge else {
            throw KeygateError(.invalidArgument, "the repair age must be at least \(Self.minimumRepairAge) (changes younger than that may still be applied)", field: "older_than")
        }
        var report = try await repairPending(olderThan: age)
        report.usersIndexed = try await indexUsers()
        return report
    }

    /// The apply window plus 5 s for clock differences between two Redis servers.
    public static let minimumRepairAge: Duration = .milliseconds(applyWindowMilliseconds) + .seconds(5)

    /// `repair` without the age floor: tests use it with operations they know are not in flight.
    func repairPending(olderThan age: Duration) async throws(KeygateError) -> RepairReport {
        let reply: RESPValue
        do { reply = try await redis.evalSHA(KeyStoreScripts.pending, keys: [.string(layout.pending)], arguments: []) } catch { throw Self.map(error) }
        guard let parts = reply.array, let now = parts.first?.int else { throw KeygateError(.internalError, "malformed pending list") }
        let ageMilliseconds = Int64(age.components.seconds) * 1000 + age.components.attoseconds / 1_000_000_000_000_000
        var report = RepairReport()
        var index = 1
        while index + 1 < parts.count {
            defer { index += 2 }
            guard let opID = parts[index].string, let entry = parts[index + 1].string,
                  let (registered, operation) = Self.decodePending(entry) else { continue }
            guard now - registered >= ageMilliseconds else { report.inFlight += 1; continue }
            guard let hash = KeyHash(hex: operation.hash) else { continue }
            if try await complete(operationID: opID, hash: hash, known: operation) {
                report.completed += 1
            } else {
                _ = try await log([(operation, 0)])
                report.dropped += 1
            }
        }
        return report
    }

    /// Completes one operation if step 2 applied it: the successor and indexes it needs, its event,
    /// its unlogged mark. Returns false when it was not applied (nothing done).
    @discardableResult
    func complete(operationID: String, hash: KeyHash, known: PendingOperation? = nil) async throws(KeygateError) -> Bool {
        let replies = try await pipeline([RedisCommand("HGET", [.string(layout.unlogged(hash)), .string(operationID)]),
                                          RedisCommand("HGET", [.string(layout.pending), .string(operationID)])])
        guard let version = replies[0].string.flatMap(Int64.init) else { return false }
        guard let operation = known ?? replies[1].string.flatMap({ Self.decodePending($0)?.1 }) else {
            // Logged already (by its writer or another repair); only the mark was left.
            _ = try await command(RedisCommand("HDEL", [.string(layout.unlogged(hash)), .string(operationID)]))
            return true
        }
        try await finishSideEffects(operation)
        _ = try await log([(operation, version)])
        _ = try await command(RedisCommand("HDEL", [.string(layout.unlogged(hash)), .string(operationID)]))
        return true
    }

    /// What a create or rotation needs besides its record: the successor record, the id index, the
    /// user set. Idempotent.
    func finishSideEffects(_ operation: PendingOperation) async throws(KeygateError) {
        switch operation.kind {
        case .create:
            try await index(id: operation.keyID, hash: operation.hash, user: operation.user)
        case .rotate:
            guard let successor = operation.successor else { return }
            _ = try await runScripts([ScriptCall(script: KeyStoreScripts.writeSuccessor, keys: [layout.record(KeyHash(hex: successor.hash)!)],
                                                 arguments: [layout.invalidationChannel, successor.hash, successor.id, operation.user,
                                                             successor.name, successor.scopes, successor.expiresAt, successor.metadata,
                                                             successor.createdAt, operation.keyID, successor.rateLimits ?? "",
                                                             successor.limitID ?? operation.keyID, successor.credits ?? "",
                                                             successor.userRateLimits ?? "", successor.userCredits ?? ""])],
                                     throwingErrors: true)
            try await index(id: successor.id, hash: successor.hash, user: operation.user)
        case .status, .update:
            break
        }
    }

    private func index(id: String, hash: String, user: String) async throws(KeygateError) {
        _ = try await pipeline([RedisCommand("SET", [.string(layout.idIndex(id)), .string(hash)]),
                                RedisCommand("SADD", [.string(layout.userKeys(user)), .string(id)]),
                                RedisCommand("ZADD", [.string(layout.users), 0, .string(user)])])
    }

    // MARK: steps

    private func begin(_ operations: [PendingOperation]) async throws(KeygateError) -> Int64 {
        var arguments: [RedisArgument] = []
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        for operation in operations {
            guard let payload = try? encoder.encode(operation) else { throw KeygateError(.internalError, "cannot encode an operation") }
            arguments += [.string(operation.op), .string(String(decoding: payload, as: UTF8.self))]
        }
        let reply: RESPValue
        do { reply = try await redis.evalSHA(KeyStoreScripts.begin, keys: [.string(layout.pending)], arguments: arguments) } catch { throw Self.map(error) }
        guard let issued = reply.int else { throw KeygateError(.internalError, "malformed reply to begin") }
        return issued
    }

    /// Step 3; returns a `notReplicated` error (not thrown) when `WAIT` fell short.
    private func log(_ operations: [(PendingOperation, Int64)]) async throws(KeygateError) -> KeygateError? {
        var arguments = [String(streamMaxLength), layout.invalidationChannel]
        for (operation, version) in operations { arguments += [operation.op, String(version), operation.hash] }
        return try await runScripts([ScriptCall(script: KeyStoreScripts.log, keys: [layout.pending, layout.events, layout.epoch],
                                                arguments: arguments)], throwingErrors: true).shortfall
    }

    static func decodePending(_ entry: String) -> (Int64, PendingOperation)? {
        guard let space = entry.firstIndex(of: " "), let registered = Int64(entry[..<space]),
              let operation = try? JSONDecoder().decode(PendingOperation.self, from: Data(entry[entry.index(after: space)...].utf8)) else { return nil }
        return (registered, operation)
    }

    static func decodeApplied(_ reply: RESPValue) -> Result<AppliedOperation, KeygateError> {
        if case .error(let message) = reply { return .failure(map(RedisError(.serverError, message))) }
        guard let parts = reply.array, parts.count >= 2, let changed = parts[0].int, let version = parts[1].int else {
            return .failure(KeygateError(.internalError, "malformed reply to a change"))
        }
        return .success(AppliedOperation(changed: changed == 1, version: version, unloggedOthers: parts.dropFirst(2).compactMap(\.string)))
    }
}
