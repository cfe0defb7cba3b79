public import KeygateControlPlane
public import KeygateCore
public import KeygateDataPlane
public import KeygateRedis
import Foundation

/// Everything a node needs, every field defaulted. `keygate serve` fills it from flags and
/// `KEYGATE_*` variables; tests fill it directly.
public struct NodeConfiguration: Sendable {
    public var redis = RedisConfiguration()
    /// Prefix of every Redis key and channel.
    public var namespace = "keygate"
    /// Prefix of issued keys.
    public var keyPrefix = "kg"
    /// HMAC pepper; nil for plain SHA-256.
    public var pepper: [UInt8]?
    public var dataPlane = DataPlaneSettings()
    public var controlPlane = ControlPlaneSettings()
    public var verifier = Verifier.Settings()
    public var invalidation = InvalidationService.Settings()
    public var usage = UsageFlusher.Settings()
    /// Unique per process: usage batch ids start with it.
    public var nodeID = NodeConfiguration.makeNodeID()
    /// `/metrics` shows why keys were refused (unknown, revoked, disabled, expired) instead of one
    /// `invalid` result. Off by default: with it, whoever can reach the control port and send a key
    /// learns which refusal it got. Turn it on only where the control port is operator-only.
    public var metricsRefusalReasons = false
    /// Event loops for both the data plane and Redis (one Redis connection per loop).
    public var eventLoopThreads = ProcessInfo.processInfo.activeProcessorCount
    /// Unix milliseconds, for rate-limit windows and credit refill periods (tests inject one).
    public var clock: @Sendable () -> Int64 = { Int64((Date().timeIntervalSince1970 * 1_000).rounded(.down)) }

    public init() {}

    public static func makeNodeID() -> String {
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "node"
        return "\(host)-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))"
    }
}
