import Foundation
import KeygateRedis
import KeygateTestSupport
import NIOCore
import NIOPosix
import Testing

@Suite struct RedisClientIntegrationTests {
    @Test func basicCommandsRoundTrip() async throws {
        let client = try TestRedis.client()
        defer { Task { await client.shutdown() } }
        let ns = TestRedis.uniqueNamespace()
        #expect(try await client.send(RedisCommand("SET", [.string("\(ns):s"), "hello"])) == .simpleString("OK"))
        #expect(try await client.send(RedisCommand("GET", [.string("\(ns):s")])).string == "hello")
        #expect(try await client.send(RedisCommand("GET", [.string("\(ns):missing")])) == .null)
        #expect(try await client.send(RedisCommand("HINCRBY", [.string("\(ns):h"), "total", 5])) == .integer(5))
        #expect(try await client.send(RedisCommand("HINCRBY", [.string("\(ns):h"), "total", 2])) == .integer(7))
        _ = try await client.send(RedisCommand("HSET", [.string("\(ns):h"), "name", "n"]))
        let all = try await client.send(RedisCommand("HGETALL", [.string("\(ns):h")]))
        #expect(all.stringPairs == ["total": "7", "name": "n"])
        // Binary-safe values survive the round trip.
        let raw = ByteBuffer(bytes: (0...255).map { UInt8($0) })
        _ = try await client.send(RedisCommand("SET", [.string("\(ns):b"), .bytes(raw)]))
        #expect(try await client.send(RedisCommand("GET", [.string("\(ns):b")])).bytes == raw)
        // A Redis error reply is a serverError carrying Redis's message.
        let error = await #expect(throws: RedisError.self) {
            try await client.send(RedisCommand("HINCRBY", [.string("\(ns):h"), "name", 1]))
        }
        #expect(error?.code == .serverError)
        #expect(error?.message.contains("not an integer") == true)
    }

    @Test func evalSHALoadsTheScriptOnNOSCRIPT() async throws {
        let client = try TestRedis.client()
        defer { Task { await client.shutdown() } }
        let ns = TestRedis.uniqueNamespace()
        let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1]) -- \(ns)")
        // The script is new to this server (unique text), so the first call must go through SCRIPT LOAD.
        #expect(try await client.evalSHA(script, keys: [.string("\(ns):n")], arguments: [3]) == .integer(3))
        #expect(try await client.evalSHA(script, keys: [.string("\(ns):n")], arguments: [4]) == .integer(7))
        let exists = try await client.send(RedisCommand("SCRIPT", ["EXISTS", .string(script.sha1)]))
        #expect(exists == .array([.integer(1)]))
    }

    @Test func hundredThousandPipelinedCommandsFromFiftyCallers() async throws {
        // 50 callers share two connections, so a batch can queue behind 49 others: a generous
        // deadline keeps this a test of ordering and exactness, not of a debug build's speed.
        var config = try TestRedis.configuration()
        config.commandTimeout = .seconds(10)
        let client = try TestRedis.client(config)
        defer { Task { await client.shutdown() } }
        let ns = TestRedis.uniqueNamespace()
        let callers = 50, perCaller = 2_000, batch = 500
        try await withThrowingTaskGroup(of: Void.self) { group in
            for caller in 0..<callers {
                group.addTask {
                    let key = RedisArgument.string("\(ns):c\(caller)")
                    var expected: Int64 = 1
                    for _ in 0..<(perCaller / batch) {
                        let replies = try await client.pipeline(Array(repeating: RedisCommand("INCR", [key]), count: batch))
                        for reply in replies {
                            guard reply == .integer(expected) else {
                                throw TestSupportError("caller \(caller): expected \(expected), got \(reply)")
                            }
                            expected += 1
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let keys = (0..<callers).map { RedisArgument.string("\(ns):c\($0)") }
        let values = try await client.pipeline(keys.map { RedisCommand("GET", [$0]) })
        #expect(values.map(\.int) == Array(repeating: Int64(perCaller), count: callers))
    }

    @Test func sendOnTheCallersEventLoopUsesThatLoopsConnection() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let client = try RedisClient(configuration: TestRedis.configuration(), eventLoopGroup: group)
        try await client.connect()
        var ids: [Int64] = []
        for loop in group.makeIterator() {
            let id = try await loop.flatSubmit {
                client.send(RedisCommand("CLIENT", ["ID"]), on: loop).map { value -> Int64 in
                    precondition(loop.inEventLoop, "the reply must be delivered on the caller's loop")
                    return value.int ?? -1
                }
            }.get()
            let again = try await loop.flatSubmit { client.send(RedisCommand("CLIENT", ["ID"]), on: loop) }.get()
            #expect(again.int == id, "a loop keeps its own connection")
            ids.append(id)
        }
        #expect(Set(ids).count == 2, "each loop owns a distinct connection")
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    @Test func aclUserAuthAndAClearErrorOnAWrongPassword() async throws {
        let admin = try TestRedis.client()
        defer { Task { await admin.shutdown() } }
        let user = TestRedis.uniqueNamespace("user")
        _ = try await admin.send(RedisCommand("ACL", ["SETUSER", .string(user), "on", ">right-pw", "~*", "+@all"]))
        defer { Task { _ = try? await admin.send(RedisCommand("ACL", ["DELUSER", .string(user)])) } }
        let base = try TestRedis.configuration()
        guard case .tcp(let host, let port) = base.endpoint else { return }

        let good = try TestRedis.configuration(url: "redis://\(user):right-pw@\(host):\(port)")
        let connection = try await RedisConnection.connect(configuration: good, eventLoop: MultiThreadedEventLoopGroup.singleton.any()).get()
        #expect(try await connection.send(RedisCommand("ACL", ["WHOAMI"])).string == user)
        try await connection.close().get()

        let bad = try TestRedis.configuration(url: "redis://\(user):wrong-pw@\(host):\(port)")
        let error = await #expect(throws: RedisError.self) {
            try await RedisConnection.connect(configuration: bad, eventLoop: MultiThreadedEventLoopGroup.singleton.any()).get()
        }
        #expect(error?.code == .authenticationFailed)
        #expect(error?.message.contains("WRONGPASS") == true)
        #expect(error?.description.contains("wrong-pw") == false)
    }

    @Test func selectChoosesTheDatabase() async throws {
        var config = try TestRedis.configuration()
        config.database = 5
        let db5 = try TestRedis.client(config)
        let db0 = try TestRedis.client()
        defer { Task { await db5.shutdown(); await db0.shutdown() } }
        let key = RedisArgument.string(TestRedis.uniqueNamespace())
        _ = try await db5.send(RedisCommand("SET", [key, "in-5"]))
        #expect(try await db5.send(RedisCommand("GET", [key])).string == "in-5")
        #expect(try await db0.send(RedisCommand("GET", [key])) == .null)
        _ = try await db5.send(RedisCommand("DEL", [key]))
    }

    @Test func recoversAfterItsConnectionIsKilled() async throws {
        let name = TestRedis.uniqueNamespace("kill")
        let client = try TestRedis.client(TestRedis.configuration().named(name))
        let killer = try TestRedis.client()
        defer { Task { await client.shutdown(); await killer.shutdown() } }
        try await client.connect()
        let before = try await clientIDs(named: name, using: killer)
        #expect(!before.isEmpty)
        for id in before { _ = try await killer.send(RedisCommand("CLIENT", ["KILL", "ID", .integer(id)])) }

        // Bounded: within 2 s the client has reconnected by itself and commands work again.
        let deadline = ContinuousClock.now + .seconds(2)
        var recovered = false
        while !recovered && ContinuousClock.now < deadline {
            recovered = (try? await client.send(RedisCommand("PING"))) == .simpleString("PONG")
            if !recovered { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(recovered)
        let after = try await clientIDs(named: name, using: killer)
        #expect(!after.isEmpty && Set(after).isDisjoint(with: before))
    }

    @Test func failsFastWhileRedisIsUnreachable() async throws {
        let reserved = try ReservedPort() // bound, not listening: connections are refused
        var config = RedisConfiguration()
        config.endpoint = .tcp(host: "127.0.0.1", port: reserved.port)
        config.failFastAfter = .milliseconds(200)
        config.commandTimeout = .seconds(3)
        let client = try RedisClient(configuration: config, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        defer { Task { await client.shutdown() } }
        let first = await #expect(throws: RedisError.self) { try await client.send(RedisCommand("PING")) }
        #expect(first?.isUnavailable == true)
        try await Task.sleep(for: .milliseconds(300))
        let started = ContinuousClock.now
        let later = await #expect(throws: RedisError.self) { try await client.send(RedisCommand("PING")) }
        // circuitOpen itself says it did not wait (that would be a timeout); the clock bound is loose
        // because a loaded 2-core CI machine can stall the test task itself.
        #expect(later?.code == .circuitOpen)
        #expect(ContinuousClock.now - started < .milliseconds(2_500), "an open circuit answers without waiting for the 3 s deadline")
        withExtendedLifetime(reserved) {}
    }
}

/// Ids of the connections whose CLIENT SETNAME is `name`.
func clientIDs(named name: String, using client: RedisClient) async throws -> [Int64] {
    let list = try await client.send(RedisCommand("CLIENT", ["LIST"])).string ?? ""
    return list.split(separator: "\n").compactMap { line -> Int64? in
        let fields = line.split(separator: " ")
        guard fields.contains(Substring("name=\(name)")),
              let id = fields.first(where: { $0.hasPrefix("id=") }) else { return nil }
        return Int64(id.dropFirst(3))
    }
}
