import ArgumentParser
import Foundation
import KeygateCore
import KeygateRedis
import NIOPosix

/// Options every command shares; each falls back to a `KEYGATE_*` environment variable.
struct GlobalOptions: ParsableArguments {
    @Option(help: "Redis URL: redis://[user:pass@]host[:port][/db], rediss://..., redis-sentinel://host1:26379,host2:26379#master, redis-cluster://host1:6379,host2:6379, unix:///path (env KEYGATE_REDIS_URL).")
    var redisURL: String?

    @Option(help: "Prefix of every Redis key and channel (env KEYGATE_NAMESPACE, default keygate).")
    var namespace: String?

    @Option(help: "Prefix of issued keys, 1-16 lowercase letters or digits (env KEYGATE_KEY_PREFIX, default kg).")
    var keyPrefix: String?

    @Option(help: "Replicas that must confirm a change before it succeeds (env KEYGATE_REDIS_WAIT_REPLICAS, default 1 with Sentinel, 0 otherwise).")
    var redisWaitReplicas: Int?

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    static let environment = ProcessInfo.processInfo.environment

    var resolvedRedisURL: String { redisURL ?? Self.environment["KEYGATE_REDIS_URL"] ?? "redis://127.0.0.1:6379" }

    /// Runs `body` with a store connected to Redis, and turns failures into a message and exit code.
    func withStore<T>(_ body: (KeyStore) async throws -> T) async throws -> T {
        do {
            var redisConfiguration = try RedisConfiguration(url: resolvedRedisURL)
            redisConfiguration.clientName = "keygate-cli"
            redisConfiguration.commandTimeout = .seconds(5) // admin scripts (revoke a whole user) may take longer
            if let replicas = try redisWaitReplicas ?? Self.environment["KEYGATE_REDIS_WAIT_REPLICAS"].map(Self.waitReplicas) {
                redisConfiguration.waitReplicas = replicas
            }
            if let text = Self.environment["KEYGATE_REDIS_WAIT_TIMEOUT"], !text.isEmpty {
                guard let timeout = HumanDuration(argument: text) else {
                    throw CLIFailure(message: "KEYGATE_REDIS_WAIT_TIMEOUT='\(text)' is not a duration", exitCode: CLIFailure.usage)
                }
                redisConfiguration.waitTimeout = timeout.duration
            }
            try redisConfiguration.validateWait()
            let layout = try KeyStoreLayout(namespace: namespace ?? Self.environment["KEYGATE_NAMESPACE"] ?? "keygate")
            let format = try KeyFormat(prefix: keyPrefix ?? Self.environment["KEYGATE_KEY_PREFIX"] ?? "kg")
            let hasher = KeyHasher(pepper: try KeyHasher.pepperFromEnvironment())
            let redis = try RedisClient(configuration: redisConfiguration, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
            let store = KeyStore(redis: redis, layout: layout, format: format, hasher: hasher)
            do {
                let result = try await body(store)
                await redis.shutdown()
                return result
            } catch {
                await redis.shutdown()
                throw error
            }
        } catch {
            throw CLIFailure(error, redisURL: resolvedRedisURL)
        }
    }

    private static func waitReplicas(_ text: String) throws -> Int {
        guard let value = Int(text) else {
            throw CLIFailure(message: "KEYGATE_REDIS_WAIT_REPLICAS='\(text)' is not a number", exitCode: CLIFailure.usage)
        }
        return value
    }

    /// Who made a change, recorded in the audit Stream.
    static var actor: String { "cli:\(environment["USER"] ?? environment["LOGNAME"] ?? "unknown")" }
}

/// A failure printed as `error: ...` with a hint, exiting with a code per kind.
struct CLIFailure: Error, CustomStringConvertible {
    let description: String
    let exitCode: Int32

    init(_ error: any Error, redisURL: String) {
        switch error {
        case let failure as CLIFailure:
            self = failure
        case let error as KeygateError where error.code == .unavailable:
            let target = RedisURLRedaction.redact(redisURL)
            if error.message.contains("replica") || error.message.contains("refused") {
                // Reachable, but not a server Keygate can use now (a replica, loading, ...).
                description = "Redis at \(target) cannot serve this: \(error.message)\nKeygate needs the master: point --redis-url or KEYGATE_REDIS_URL at it."
            } else {
                description = "cannot reach Redis at \(target): \(error.message)\nIs redis-server running? Point Keygate at it with --redis-url or KEYGATE_REDIS_URL."
            }
            exitCode = 4
        case let error as KeygateError where error.code == .notReplicated:
            description = "\(error.message)\nThe change is on the master but may not survive a failover; run the same command again once the replicas are back."
            exitCode = 4
        case let error as KeygateError where error.code == .notFound:
            description = "\(error.message). List a user's keys with: keygate keys list --user USER"
            exitCode = 3
        case let error as KeygateError where error.code == .conflict || error.code == .duplicate:
            description = error.message
            exitCode = 5
        case let error as KeygateError where error.code == .invalidConfiguration:
            description = error.message // a bad --namespace or --key-prefix: command-line usage
            exitCode = CLIFailure.usage
        case let error as KeygateError:
            description = error.field.map { "\($0): \(error.message)" } ?? error.message
            exitCode = 1
        case let error as RedisError:
            description = error.code == .invalidURL ? error.message : "Redis: \(error)"
            exitCode = error.code == .invalidURL ? CLIFailure.usage : 4
        default:
            description = "\(error)"
            exitCode = 1
        }
    }

    /// Bad command-line usage, as ArgumentParser reports its own (EX_USAGE): a malformed flag value
    /// or Redis URL exits with this from every command, `serve` included.
    static let usage: Int32 = 64

    init(message: String, exitCode: Int32) {
        self.description = message
        self.exitCode = exitCode
    }
}

enum RedisURLRedaction {
    /// The URL without its password, for messages.
    static func redact(_ url: String) -> String {
        (try? RedisConfiguration(url: url).redactedTarget) ?? "the configured URL"
    }
}

extension AsyncParsableCommand {
    /// Runs a command body; a CLIFailure becomes "error: ..." on stderr and its exit code.
    func reportingFailures(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let failure as CLIFailure {
            FileHandle.standardError.write(Data("error: \(failure.description)\n".utf8))
            throw ExitCode(failure.exitCode)
        }
    }
}
