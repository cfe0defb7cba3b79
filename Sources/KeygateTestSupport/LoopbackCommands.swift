public import KeygateRedis
import NIOPosix

/// One command on a fresh connection to the server at `port` on loopback, with no `ROLE` check and
/// no slot rule (Sentinels, replicas and Cluster nodes answer too): what test topologies use to
/// inspect and steer their servers.
public func loopbackCommand(port: Int, _ command: RedisCommand, timeout: Duration = .seconds(1)) async throws -> RESPValue {
    var configuration = RedisConfiguration()
    configuration.endpoint = .tcp(host: "127.0.0.1", port: port)
    configuration.requiresMaster = false
    configuration.enforcesClusterSlots = false
    configuration.connectTimeout = .seconds(1)
    configuration.commandTimeout = timeout
    let connection = try await RedisConnection.connect(configuration: configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.any()).get()
    defer { _ = connection.close() }
    return try await connection.send(command)
}

/// Polls `condition` (errors count as "not yet") until it holds, at most `timeout`.
/// - Throws: `TestSupportError` naming `what` on timeout.
public func waitUntil(timeout: Duration, _ what: String, every interval: Duration = .milliseconds(50),
                      _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? await condition()) == true { return }
        try await Task.sleep(for: interval)
    }
    throw TestSupportError("timed out after \(timeout) waiting for \(what)")
}
