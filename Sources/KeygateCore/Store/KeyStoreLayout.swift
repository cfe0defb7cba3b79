import Foundation
import KeygateRedis

/// Where everything lives in Redis, under one namespace (`KEYGATE_NAMESPACE`, default `keygate`).
///
/// Every script touches one Redis Cluster slot (`KeyStoreScripts`): a key's record, its counters and
/// its unlogged-operation marks share the `{hash}` hash tag; the Stream, the epoch and the pending
/// operations share the Stream's slot (`{ns:events}`, the slot of the untagged name `ns:events`);
/// the id index and the user sets are single Redis keys, read and written on their own. Nothing
/// stored contains a plaintext key. The names are those of earlier versions, so existing data is
/// read as it is (README, "Data model").
///
/// | Redis key | type | content |
/// |---|---|---|
/// | `ns:key:{<sha256 hex>}` | hash | the record (id, user, name, scopes, status, times, version, metadata, rotation links) |
/// | `ns:ratelimit:{<subject>}:<name>:<window>` | string | rate-limit tokens handed out in one window, expires two windows on |
/// | `ns:credits:{<subject>}` | hash | live credit balance: `remaining`, `set` (the setting's ms), `period` (last refill period applied) |
/// | `ns:unlogged:{<hash>}` | hash | operations applied to the record whose event is not logged yet: op id -> version |
/// | `ns:id:<key id>` | string | the key's hash hex: id -> record |
/// | `ns:user:<user>` | set | the user's key ids |
/// | `ns:console-session:{<secret hash>}` | string | a console link's user, until it is used or expires (15 minutes by default) |
/// | `ns:users` | sorted set | every user that ever held a key (score 0: byte order, for prefix search and paging) |
/// | `ns:users-indexed` | string | set once `ns:users` also holds the users of keys created before it existed |
/// | `ns:usage:{<hash>}` | hash | `total`, `last_used_at` (ms) |
/// | `ns:usage:{<hash>}:d:<yyyymmdd>` | string | per-day count, expires after 91 days |
/// | `ns:usage:{<hash>}:h:<yyyymmddhh>` | string | per-hour count, expires after 49 hours |
/// | `ns:usage:{<hash>}:rd:<yyyymmdd>` | hash | per-day refusals of the valid key: `rate_limited`, `usage_exceeded`, `forbidden`; expires after 91 days |
/// | `ns:usage:{<hash>}:rh:<yyyymmddhh>` | hash | per-hour refusals, as above; expires after 49 hours |
/// | `ns:usage-applied:{<slot tag>}:<node run>` | string | last usage batch of that node run applied to the slot's counters, expires after 24 h |
/// | `ns:events` | stream | lifecycle events (audit log and invalidation replay), capped |
/// | `{ns:events}:epoch` | string | incremented by every logged mutation |
/// | `{ns:events}:pending` | hash | registered operations not yet logged: op id -> "<registered ms> <payload JSON>" |
/// | `ns:create-lock:<user>` | string | held while a limited create counts the user's keys |
/// | `ns:user-limits:<user>` | hash | the user's limits: `rate_limits`, `credits` (as in a record), `version` (bumped by every change) |
/// | `ns:replication-mark:{<slot tag>}` | string | written before each `WAIT`, so a retried no-op change is confirmed too |
/// | channel `ns:invalidations` | pub/sub | the hash hex of every changed key |
public struct KeyStoreLayout: Sendable, Equatable {
    public let namespace: String

    /// - Throws: `KeygateError.invalidConfiguration` unless the namespace is 1-64 characters of
    ///   letters, digits, `-`, `_` or `.`.
    public init(namespace: String = "keygate") throws(KeygateError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        guard !namespace.isEmpty, namespace.count <= 64, namespace.allSatisfy(allowed.contains) else {
            throw KeygateError(.invalidConfiguration, "namespace must be 1-64 letters, digits, '-', '_' or '.', got '\(namespace)'")
        }
        self.namespace = namespace
    }

    public func record(_ hash: KeyHash) -> String { "\(namespace):key:{\(hash.hex)}" }
    public func idIndex(_ id: String) -> String { "\(namespace):id:\(id)" }
    public func userKeys(_ user: String) -> String { "\(namespace):user:\(user)" }
    /// A console link's secret (by its hash): the user it opens; expires with the link.
    public func consoleSession(_ secretHash: String) -> String { "\(namespace):console-session:{\(secretHash)}" }
    /// Every user that ever held a key, in byte order (sorted set, score 0), for listing users.
    public var users: String { "\(namespace):users" }
    /// Set once `users` holds the users of keys created before it existed (`KeyStore.indexUsers`).
    public var usersIndexed: String { "\(namespace):users-indexed" }
    public func usage(_ hash: KeyHash) -> String { "\(namespace):usage:{\(hash.hex)}" }
    public func dailyUsage(_ hash: KeyHash, day: String) -> String { "\(namespace):usage:{\(hash.hex)}:d:\(day)" }
    public func hourlyUsage(_ hash: KeyHash, hour: String) -> String { "\(namespace):usage:{\(hash.hex)}:h:\(hour)" }
    public func dailyRefusals(_ hash: KeyHash, day: String) -> String { "\(namespace):usage:{\(hash.hex)}:rd:\(day)" }
    public func hourlyRefusals(_ hash: KeyHash, hour: String) -> String { "\(namespace):usage:{\(hash.hex)}:rh:\(hour)" }
    /// Tokens handed out in one window of a key's rate limit (`window`: the window's index).
    /// `subject`: a key id (the first of its rotation chain), safe inside a hash tag.
    public func rateLimitWindow(subject: String, name: String, window: Int64) -> String {
        "\(namespace):ratelimit:{\(subject)}:\(name):\(window)"
    }
    /// The live credit balance of a key's rotation chain (`subject`, as for rate limits).
    public func credits(subject: String) -> String { "\(namespace):credits:{\(subject)}" }
    public func unlogged(_ hash: KeyHash) -> String { "\(namespace):unlogged:{\(hash.hex)}" }
    /// The high-water mark of one node run's usage batches in one slot.
    public func usageApplied(slot: Int, run: String) -> String { "\(namespace):usage-applied:{\(HashSlot.tag(forSlot: slot))}:\(run)" }
    public var events: String { "\(namespace):events" }
    /// In the Stream's slot: the hash tag is the Stream's whole name.
    public var epoch: String { "{\(events)}:epoch" }
    public var pending: String { "{\(events)}:pending" }
    public func createLock(_ user: String) -> String { "\(namespace):create-lock:\(user)" }
    /// The user's own limits (shared by all of the user's keys); copied into each key's record.
    public func userLimits(_ user: String) -> String { "\(namespace):user-limits:\(user)" }
    /// One per slot, so the mark is written on the server (and connection) that ran the change.
    public func replicationMark(slotOf key: String) -> String {
        "\(namespace):replication-mark:{\(HashSlot.tag(forSlot: HashSlot.of(key)))}"
    }
    /// Pub/sub ignores the database number, so the channel carries the namespace.
    public var invalidationChannel: String { "\(namespace):invalidations" }

    /// Days kept for daily buckets, hours for hourly ones.
    public static let dailyRetentionDays = 90
    public static let hourlyRetentionHours = 48
}

/// UTC bucket names for usage counters.
enum UsageBuckets {
    private static let calendar: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    /// (`yyyymmdd`, `yyyymmddhh`) for the instant.
    static func names(at date: Date) -> (day: String, hour: String) {
        let parts = calendar.dateComponents([.year, .month, .day, .hour], from: date)
        let day = String(format: "%04d%02d%02d", parts.year!, parts.month!, parts.day!)
        return (day, day + String(format: "%02d", parts.hour!))
    }

    /// The last `count` days ending today, oldest first, as (`yyyymmdd`, `yyyy-mm-dd`).
    static func days(endingAt date: Date, count: Int) -> [(key: String, label: String)] {
        (0..<count).reversed().map { offset in
            let day = calendar.date(byAdding: .day, value: -offset, to: date)!
            let parts = calendar.dateComponents([.year, .month, .day], from: day)
            return (String(format: "%04d%02d%02d", parts.year!, parts.month!, parts.day!),
                    String(format: "%04d-%02d-%02d", parts.year!, parts.month!, parts.day!))
        }
    }

    /// The last `count` hours ending with the current one, oldest first, as (`yyyymmddhh`, `yyyy-mm-ddThh`).
    static func hours(endingAt date: Date, count: Int) -> [(key: String, label: String)] {
        (0..<count).reversed().map { offset in
            let hour = calendar.date(byAdding: .hour, value: -offset, to: date)!
            let p = calendar.dateComponents([.year, .month, .day, .hour], from: hour)
            return (String(format: "%04d%02d%02d%02d", p.year!, p.month!, p.day!, p.hour!),
                    String(format: "%04d-%02d-%02dT%02d", p.year!, p.month!, p.day!, p.hour!))
        }
    }
}
