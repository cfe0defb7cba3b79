import Foundation
public import KeygateRedis
import NIOPosix

/// A real Redis Cluster on loopback: three primaries and three replicas (six `redis-server`
/// processes), created with `redis-cli --cluster create`, node timeout 2 s so a killed primary's
/// replica takes over in a few seconds. `url` is the `redis-cluster://` URL a node is given.
public final class ClusterTopology: @unchecked Sendable {
    public private(set) var servers: [RedisServerProcess]

    public static func start() async throws -> ClusterTopology {
        var servers: [RedisServerProcess] = []
        do {
            for _ in 0..<6 {
                servers.append(try await RedisServerProcess.start(extraArguments: [
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                    "--repl-diskless-sync-delay", "0",
                ]))
            }
            let topology = ClusterTopology(servers: servers)
            let log = servers[0].directory.appendingPathComponent("cluster-create.log").path
            let create = try ChildProcess(executable: try which("redis-cli"),
                                          arguments: ["--cluster", "create"] + servers.map { "127.0.0.1:\($0.port)" }
                                              + ["--cluster-replicas", "1", "--cluster-yes"],
                                          stdoutPath: log, stderrPath: log)
            await create.waitForExit(timeout: .seconds(60))
            guard create.exitCode == 0 else {
                throw TestSupportError("redis-cli --cluster create failed: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
            }
            try await topology.waitUntil(timeout: .seconds(30), "every node to report cluster_state:ok with three replicas") {
                for server in servers {
                    let info = try await topology.command(port: server.port, RedisCommand("CLUSTER", ["INFO"])).string ?? ""
                    guard info.contains("cluster_state:ok"), info.contains("cluster_known_nodes:6") else { return false }
                }
                let primaries = try await topology.primaryPorts()
                guard primaries.count == 3 else { return false }
                // Each primary's replica synchronised, so WAIT 1 can be answered.
                for port in primaries {
                    let replication = try await topology.command(port: port, RedisCommand("INFO", ["replication"])).string ?? ""
                    guard replication.contains("connected_slaves:1"), replication.contains("state=online") else { return false }
                }
                return true
            }
            // A write each primary's replica has acknowledged: the replication links carry writes now,
            // so a test's first WAIT is not spent on the link's first round trip.
            try await topology.waitUntil(timeout: .seconds(15), "every replica to acknowledge a write") {
                let slots = try await topology.command(port: servers[0].port, RedisCommand("CLUSTER", ["SLOTS"]))
                guard let map = ClusterSlotMap(clusterSlots: slots, answeredBy: "127.0.0.1") else { return false }
                for port in try await topology.primaryPorts() {
                    guard let slot = (0..<HashSlot.count).first(where: { map.primary(forSlot: $0)?.port == port }) else { return false }
                    let written = try await topology.command(port: port, RedisCommand("SET", [.string("warmup:{\(HashSlot.tag(forSlot: slot))}"), "1", "PX", "1000"]))
                    guard written.string == "OK",
                          try await topology.command(port: port, RedisCommand("WAIT", [1, 1000])).int == 1 else { return false }
                }
                return true
            }
            return topology
        } catch {
            for server in servers { await server.stop() }
            throw error
        }
    }

    private init(servers: [RedisServerProcess]) { self.servers = servers }

    /// Seeds for the client: two of the six nodes (it learns the rest from them).
    public var url: String { "redis-cluster://127.0.0.1:\(servers[0].port),127.0.0.1:\(servers[1].port)" }

    /// Ports of the nodes that are primaries now (from their own `ROLE`).
    public func primaryPorts() async throws -> [Int] {
        var ports: [Int] = []
        for server in servers where server.isRunning {
            if try await command(port: server.port, RedisCommand("ROLE")).array?.first?.string == "master" { ports.append(server.port) }
        }
        return ports
    }

    /// The port of the primary serving `key` (asks a live node's `CLUSTER SLOTS`).
    public func primaryPort(forKey key: String) async throws -> Int? {
        let slot = HashSlot.of(key)
        for server in servers where server.isRunning {
            let reply = try await command(port: server.port, RedisCommand("CLUSTER", ["SLOTS"]))
            return ClusterSlotMap(clusterSlots: reply, answeredBy: "127.0.0.1")?.primary(forSlot: slot)?.port
        }
        return nil
    }

    /// SIGKILLs the primary at `port` and waits until its replica has taken its slots (every live
    /// node reports cluster_state:ok again). Returns when the promotion was seen.
    public func killPrimaryAndAwaitFailover(port: Int, timeout: Duration = .seconds(30)) async throws -> ContinuousClock.Instant {
        guard let victim = servers.first(where: { $0.port == port }) else { throw TestSupportError("no server on \(port)") }
        await victim.kill()
        try await waitUntil(timeout: timeout, "a replica to take over from \(port)") {
            for server in self.servers where server.isRunning {
                let info = try await self.command(port: server.port, RedisCommand("CLUSTER", ["INFO"])).string ?? ""
                guard info.contains("cluster_state:ok") else { return false }
            }
            return try await self.primaryPorts().count == 3
        }
        return .now
    }

    public func nodeID(port: Int) async throws -> String {
        guard let id = try await command(port: port, RedisCommand("CLUSTER", ["MYID"])).string else { throw TestSupportError("no CLUSTER MYID from \(port)") }
        return id
    }

    /// Moves `slot` from the primary at `source` to the one at `target` the way `redis-cli --cluster
    /// reshard` does (IMPORTING / MIGRATING, MIGRATE key by key, then NODE everywhere), pausing
    /// between keys so clients meet the slot half-moved (`ASK`, `TRYAGAIN`).
    public func migrateSlot(_ slot: Int, from source: Int, to target: Int, pauseBetweenKeys: Duration = .milliseconds(50)) async throws {
        let sourceID = try await nodeID(port: source), targetID = try await nodeID(port: target)
        _ = try await command(port: target, RedisCommand("CLUSTER", ["SETSLOT", .integer(Int64(slot)), "IMPORTING", .string(sourceID)]))
        _ = try await command(port: source, RedisCommand("CLUSTER", ["SETSLOT", .integer(Int64(slot)), "MIGRATING", .string(targetID)]))
        while true {
            let keys = try await command(port: source, RedisCommand("CLUSTER", ["GETKEYSINSLOT", .integer(Int64(slot)), 1])).array ?? []
            guard let key = keys.first?.string else { break }
            let moved = try await command(port: source, RedisCommand("MIGRATE", ["127.0.0.1", .integer(Int64(target)), "", 0, 5000, "KEYS", .string(key)]))
            if case .error(let message) = moved { throw TestSupportError("MIGRATE failed: \(message)") }
            try await Task.sleep(for: pauseBetweenKeys)
        }
        // The target first (it owns the slot from then on), then the source, then the other primaries.
        let primaries = try await primaryPorts()
        for port in [target, source] + primaries.filter({ $0 != target && $0 != source }) {
            let reply = try await command(port: port, RedisCommand("CLUSTER", ["SETSLOT", .integer(Int64(slot)), "NODE", .string(targetID)]))
            if case .error(let message) = reply { throw TestSupportError("SETSLOT NODE on \(port) failed: \(message)") }
        }
    }

    /// `redis-cli --cluster reshard`: moves `count` slots from `source` to `target`; waits for it.
    public func reshard(count: Int, from source: Int, to target: Int) async throws {
        let sourceID = try await nodeID(port: source), targetID = try await nodeID(port: target)
        let log = servers[0].directory.appendingPathComponent("reshard.log").path
        let process = try ChildProcess(executable: try which("redis-cli"),
                                       arguments: ["--cluster", "reshard", "127.0.0.1:\(source)", "--cluster-from", sourceID,
                                                   "--cluster-to", targetID, "--cluster-slots", String(count), "--cluster-yes"],
                                       stdoutPath: log, stderrPath: log)
        await process.waitForExit(timeout: .seconds(120))
        guard process.exitCode == 0 else {
            throw TestSupportError("redis-cli --cluster reshard failed: \((try? String(contentsOfFile: log, encoding: .utf8))?.suffix(2000) ?? "")")
        }
    }

    /// One command on a fresh connection to one of its servers (no ROLE check).
    public func command(port: Int, _ command: RedisCommand) async throws -> RESPValue {
        try await loopbackCommand(port: port, command, timeout: .seconds(5))
    }

    public func waitUntil(timeout: Duration, _ what: String, _ condition: () async throws -> Bool) async throws {
        try await KeygateTestSupport.waitUntil(timeout: timeout, what, every: .milliseconds(100), condition)
    }

    public func stop() async {
        for server in servers { await server.stop() }
    }

    public static func with<T>(_ body: (ClusterTopology) async throws -> T) async throws -> T {
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
