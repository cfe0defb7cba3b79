import Foundation
public import KeygateRedis
import NIOPosix

/// A master, its replica and three Sentinels on loopback, as operators run Redis for failover.
///
/// Sentinels use `down-after-milliseconds` 1000 and quorum 2, so a killed master is replaced in a
/// few seconds. `url` is the `redis-sentinel://` URL a node is given.
public final class SentinelTopology: @unchecked Sendable {
    public static let masterName = "keygate-test"
    public private(set) var master: RedisServerProcess
    public private(set) var replica: RedisServerProcess
    public let sentinelPorts: [Int]
    private var sentinels: [ChildProcess] = []
    private let directory: URL

    /// Starts everything and waits (bounded) until every Sentinel sees the replica and the other two.
    public static func start(extraServerArguments: [String] = []) async throws -> SentinelTopology {
        let serverArguments = ["--repl-diskless-sync-delay", "0"] + extraServerArguments
        let master = try await RedisServerProcess.start(extraArguments: serverArguments)
        let replica = try await RedisServerProcess.start(extraArguments: serverArguments + ["--replicaof", "127.0.0.1", "\(master.port)"])
        var ports: [Int] = []
        for _ in 0..<3 { ports.append(try await freeServerPort()) }
        let topology = SentinelTopology(master: master, replica: replica, sentinelPorts: ports)
        do {
            try await topology.waitUntil(timeout: .seconds(15), "the replica to synchronise") {
                try await topology.info(port: master.port, "replication").contains("state=online")
            }
            for port in ports { try topology.startSentinel(port: port) }
            try await topology.waitUntil(timeout: .seconds(20), "every Sentinel to see the replica and the other Sentinels") {
                for port in ports {
                    let fields = try await topology.sentinelMasterFields(port: port)
                    guard fields["num-slaves"] == "1", fields["num-other-sentinels"] == "2" else { return false }
                }
                return true
            }
        } catch {
            await topology.stop()
            throw error
        }
        return topology
    }

    private init(master: RedisServerProcess, replica: RedisServerProcess, sentinelPorts: [Int]) {
        self.master = master
        self.replica = replica
        self.sentinelPorts = sentinelPorts
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("keygate-sentinels-\(UUID().uuidString)")
    }

    public var url: String {
        "redis-sentinel://" + sentinelPorts.map { "127.0.0.1:\($0)" }.joined(separator: ",") + "#\(Self.masterName)"
    }

    private func startSentinel(port: Int) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let config = directory.appendingPathComponent("sentinel-\(port).conf")
        let text = """
        port \(port)
        bind 127.0.0.1
        dir \(directory.path)
        logfile \(directory.appendingPathComponent("sentinel-\(port).log").path)
        sentinel monitor \(Self.masterName) 127.0.0.1 \(master.port) 2
        sentinel down-after-milliseconds \(Self.masterName) 1000
        sentinel failover-timeout \(Self.masterName) 10000
        sentinel parallel-syncs \(Self.masterName) 1

        """
        try text.write(to: config, atomically: true, encoding: .utf8)
        sentinels.append(try ChildProcess(executable: try which("redis-server"), arguments: [config.path, "--sentinel"]))
    }

    /// What the Sentinel on `port` reports about the master (`SENTINEL MASTER`), as field pairs.
    public func sentinelMasterFields(port: Int) async throws -> [String: String] {
        let reply = try await command(port: port, RedisCommand("SENTINEL", ["MASTER", .string(Self.masterName)]))
        return reply.stringPairs ?? [:]
    }

    /// The port the Sentinels name as the master's, or nil if they cannot say.
    public func announcedMasterPort() async -> Int? {
        for port in sentinelPorts {
            if let reply = try? await command(port: port, RedisCommand("SENTINEL", ["get-master-addr-by-name", .string(Self.masterName)])),
               let fields = reply.array, fields.count == 2, let text = fields[1].string, let value = Int(text) {
                return value
            }
        }
        return nil
    }

    /// SIGKILL of the master; then waits (at most `timeout`) until a Sentinel names the replica
    /// as master, and swaps the two roles here. Returns when that was seen.
    @discardableResult
    public func killMasterAndAwaitPromotion(timeout: Duration = .seconds(30)) async throws -> ContinuousClock.Instant {
        await master.kill()
        try await waitUntil(timeout: timeout, "a Sentinel to promote the replica") {
            guard await self.announcedMasterPort() == self.replica.port else { return false }
            return try await self.role(port: self.replica.port) == "master"
        }
        let promoted = ContinuousClock.now
        (master, replica) = (replica, master)
        return promoted
    }

    /// Starts the killed server again on its port with its old arguments: empty (persistence is
    /// off) and, for a moment, a master, until a Sentinel sees it and makes it a replica of the
    /// current master. The dangerous moment a node must not mistake for the master.
    public func restartOldMasterEmpty() async throws {
        try await replica.restart()
    }

    public func role(port: Int) async throws -> String? {
        try await command(port: port, RedisCommand("ROLE")).array?.first?.string
    }

    public func info(port: Int, _ section: String) async throws -> String {
        try await command(port: port, RedisCommand("INFO", [.string(section)])).string ?? ""
    }

    /// One command on a fresh connection to one of its servers (no ROLE check).
    public func command(port: Int, _ command: RedisCommand) async throws -> RESPValue {
        try await loopbackCommand(port: port, command, timeout: .seconds(1))
    }

    public func waitUntil(timeout: Duration, _ what: String, _ condition: () async throws -> Bool) async throws {
        try await KeygateTestSupport.waitUntil(timeout: timeout, what, every: .milliseconds(50), condition)
    }

    public func stop() async {
        for sentinel in sentinels { await sentinel.terminate(grace: .seconds(2)) }
        await master.stop()
        await replica.stop()
        try? FileManager.default.removeItem(at: directory)
    }

    public static func with<T>(_ body: (SentinelTopology) async throws -> T) async throws -> T {
        let topology = try await start()
        do {
            let result = try await body(topology)
            await topology.stop()
            return result
        } catch {
            await topology.stop()
            throw error
        }
    }
}
