import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing
@testable import KeygateRedis

/// The connection handler against NIO's EmbeddedChannel: bytes in, bytes out, a manual clock.
@Suite struct RedisChannelHandlerTests {
    struct Harness {
        let loop = EmbeddedEventLoop()
        let channel: EmbeddedChannel
        let handler: RedisChannelHandler

        /// Connects; unless told otherwise, answers the default handshake (ROLE: a master) so the connection is ready.
        init(completeHandshake: Bool = true, _ configure: (inout RedisConfiguration) -> Void = { _ in }) throws {
            var configuration = RedisConfiguration()
            configure(&configuration)
            handler = RedisChannelHandler(configuration: configuration, eventLoop: loop)
            channel = EmbeddedChannel(handler: handler, loop: loop)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
            if completeHandshake {
                _ = try written()
                try reply(RedisChannelHandlerTests.masterHandshake)
                guard case .success? = RedisChannelHandlerTests.outcome(handler.ready.futureResult) else {
                    throw RedisError(.protocolError, "handshake did not complete")
                }
            }
        }

        func written() throws -> String {
            var text = ""
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
            return text
        }

        func reply(_ wire: String) throws {
            try channel.writeInbound(ByteBuffer(string: wire))
        }

        func send(_ command: RedisCommand) -> EventLoopFuture<RESPValue> {
            let promise = loop.makePromise(of: RESPValue.self)
            handler.send(command, promise: promise)
            return promise.futureResult
        }
    }

    /// The outcome of a future on the embedded loop, or nil while it is pending. Never blocks:
    /// `wait()` on an EmbeddedEventLoop future that nobody completes would hang the test run.
    static func outcome<T: Sendable>(_ future: EventLoopFuture<T>) -> Result<T, any Error>? {
        let result = NIOLockedValueBox<Result<T, any Error>?>(nil)
        future.whenComplete { outcome in result.withLockedValue { $0 = outcome } }
        return result.withLockedValue { $0 }
    }

    static func failure<T: Sendable>(_ future: EventLoopFuture<T>) -> RedisError? {
        guard case .failure(let error)? = outcome(future) else { return nil }
        return error as? RedisError
    }

    /// `ROLE` on a master without replicas.
    static let masterRole = "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"
    /// `INFO server`, cut to the line the handshake reads.
    static let serverInfo = "$59\r\n# Server\r\nrun_id:0123456789abcdef0123456789abcdef01234567\r\n\r\n"
    /// The replies to the default handshake (ROLE, INFO server) of a master.
    static let masterHandshake = masterRole + serverInfo

    static func encoded(_ commands: RedisCommand...) -> String {
        var buffer = ByteBuffer()
        for command in commands { command.encode(into: &buffer) }
        return String(buffer: buffer)
    }

    @Test func handshakeIsPipelinedInOrderAndGatesReadiness() throws {
        let harness = try Harness(completeHandshake: false) {
            $0.username = "app"; $0.password = "pw"; $0.database = 2; $0.clientName = "keygate-test"
        }
        #expect(try harness.written() == Self.encoded(
            RedisCommand("AUTH", ["app", "pw"]),
            RedisCommand("SELECT", [2]),
            RedisCommand("CLIENT", ["SETNAME", "keygate-test"]),
            RedisCommand("ROLE"),
            RedisCommand("INFO", ["server"])))
        let ready = NIOLockedValueBox(false)
        harness.handler.ready.futureResult.whenSuccess { ready.withLockedValue { $0 = true } }
        try harness.reply("+OK\r\n+OK\r\n+OK\r\n")
        #expect(!ready.withLockedValue { $0 })
        try harness.reply(Self.masterHandshake)
        #expect(ready.withLockedValue { $0 })
    }

    @Test func withoutSettingsTheHandshakeIsARoleCheckAndTheServersIdentity() throws {
        let harness = try Harness(completeHandshake: false)
        #expect(try harness.written() == Self.encoded(RedisCommand("ROLE"), RedisCommand("INFO", ["server"])))
        let ready = NIOLockedValueBox(false)
        harness.handler.ready.futureResult.whenSuccess { ready.withLockedValue { $0 = true } }
        try harness.reply(Self.masterRole)
        #expect(!ready.withLockedValue { $0 })
        try harness.reply(Self.serverInfo)
        #expect(ready.withLockedValue { $0 })
        #expect(harness.handler.serverRunID == "0123456789abcdef0123456789abcdef01234567")
    }

    @Test(arguments: [
        ("*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:10\r\n", "replica of 127.0.0.1:6379 (replication connected)"),
        ("*2\r\n$8\r\nsentinel\r\n*0\r\n", "role is 'sentinel'"),
    ])
    func aServerThatIsNotAMasterIsRefused(role: String, message: String) throws {
        let harness = try Harness(completeHandshake: false)
        _ = try harness.written()
        let failure = NIOLockedValueBox<RedisError?>(nil)
        harness.handler.ready.futureResult.whenFailure { error in failure.withLockedValue { $0 = error as? RedisError } }
        try harness.reply(role)
        #expect(failure.withLockedValue { $0 }?.code == .notWritableMaster)
        #expect(failure.withLockedValue { $0 }?.message.contains(message) == true, "\(failure.withLockedValue { $0 }?.message ?? "")")
        #expect(!harness.channel.isActive)
    }

    @Test func anACLUserWithoutRoleIsLetThrough() throws {
        let harness = try Harness(completeHandshake: false)
        _ = try harness.written()
        try harness.reply("-NOPERM User keygate has no permissions to run the 'role' command\r\n")
        try harness.reply("-NOPERM User keygate has no permissions to run the 'info' command\r\n")
        guard case .success? = Self.outcome(harness.handler.ready.futureResult) else {
            Issue.record("the handshake failed on NOPERM for ROLE or INFO")
            return
        }
        #expect(harness.handler.serverRunID == nil)
    }

    @Test func withoutTheRoleCheckTheHandshakeIsAPing() throws {
        let harness = try Harness(completeHandshake: false) { $0.requiresMaster = false }
        #expect(try harness.written() == Self.encoded(RedisCommand("PING")))
    }

    @Test func aSilentServerFailsTheHandshakeAtTheConnectDeadline() throws {
        let harness = try Harness(completeHandshake: false) { $0.connectTimeout = .seconds(2) }
        let failure = NIOLockedValueBox<RedisError?>(nil)
        harness.handler.ready.futureResult.whenFailure { error in failure.withLockedValue { $0 = error as? RedisError } }
        harness.loop.advanceTime(by: .seconds(2))
        #expect(failure.withLockedValue { $0 }?.code == .timeout)
        #expect(!harness.channel.isActive)
    }

    @Test func wrongPasswordFailsTheHandshakeAndCloses() throws {
        let harness = try Harness(completeHandshake: false) { $0.password = "wrong" }
        _ = try harness.written()
        let failure = NIOLockedValueBox<RedisError?>(nil)
        harness.handler.ready.futureResult.whenFailure { error in failure.withLockedValue { $0 = error as? RedisError } }
        try harness.reply("-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        #expect(failure.withLockedValue { $0 }?.code == .authenticationFailed)
        #expect(failure.withLockedValue { $0 }?.message.contains("WRONGPASS") == true)
        #expect(!harness.channel.isActive)
    }

    @Test func thousandPipelinedCommandsAreAnsweredInOrder() throws {
        let harness = try Harness()
        let commands = (0..<1_000).map { RedisCommand("INCR", [.string("k\($0)")]) }
        let batch = harness.loop.makePromise(of: [RESPValue].self)
        harness.handler.send(batch: commands, promise: batch)
        let single = harness.send(RedisCommand("GET", ["after"])) // queued behind the batch
        #expect(try harness.channel.readOutbound(as: ByteBuffer.self) == nil, "flushed at the end of the tick")
        harness.loop.run()
        // One batch, one buffer: the whole pipeline leaves in one piece, flushed with the GET.
        let first = try harness.channel.readOutbound(as: ByteBuffer.self)
        #expect(first.map { String(buffer: $0) } == Self.encodedAll(commands))
        _ = try harness.channel.readOutbound(as: ByteBuffer.self) // the single GET

        // Replies arrive split at arbitrary points, including mid-frame.
        #expect(Self.outcome(batch.futureResult) == nil)
        let wire = Array(((0..<1_000).map { ":\($0)\r\n" }.joined() + "$1\r\nx\r\n").utf8)
        var offset = 0
        while offset < wire.count {
            let end = min(wire.count, offset + 37)
            try harness.channel.writeInbound(ByteBuffer(bytes: wire[offset..<end]))
            offset = end
        }
        #expect(try Self.outcome(batch.futureResult)?.get() == (0..<1_000).map { RESPValue.integer(Int64($0)) })
        #expect(try Self.outcome(single)?.get() == .bulkString(ByteBuffer(string: "x")))
    }

    static func encodedAll(_ commands: [RedisCommand]) -> String {
        var buffer = ByteBuffer()
        for command in commands { command.encode(into: &buffer) }
        return String(buffer: buffer)
    }

    @Test func aDeadlineFailsEveryPendingCommandAndCloses() throws {
        let harness = try Harness { $0.commandTimeout = .milliseconds(500) }
        let futures = (0..<3).map { harness.send(RedisCommand("GET", [.string("k\($0)")])) }
        harness.loop.advanceTime(by: .milliseconds(200))
        let late = harness.send(RedisCommand("GET", ["late"]))
        harness.loop.advanceTime(by: .milliseconds(299))
        #expect(harness.channel.isActive)
        harness.loop.advanceTime(by: .milliseconds(2))
        for future in futures + [late] {
            #expect(Self.failure(future)?.code == .timeout)
        }
        #expect(!harness.channel.isActive)
        // A closed connection refuses new work at once rather than queueing it.
        #expect(Self.failure(harness.send(RedisCommand("PING")))?.code == .timeout)
    }

    @Test func aShortCommandDeadlineIsEnforcedBehindALongHandshakeDeadline() throws {
        let harness = try Harness(completeHandshake: false) {
            $0.connectTimeout = .seconds(10); $0.commandTimeout = .milliseconds(100)
        }
        let future = harness.send(RedisCommand("GET", ["k"])) // queued behind the handshake's ROLE
        harness.loop.advanceTime(by: .milliseconds(50))
        try harness.reply(Self.masterHandshake)
        harness.loop.advanceTime(by: .milliseconds(60))
        #expect(Self.failure(future)?.code == .timeout, "100 ms deadline, not the 10 s handshake one")
    }

    @Test func commandsSentInOneTickAreFlushedTogetherAtItsEnd() throws {
        let harness = try Harness()
        let futures = (0..<3).map { harness.send(RedisCommand("GET", [.string("k\($0)")])) }
        #expect(try harness.channel.readOutbound(as: ByteBuffer.self) == nil, "not flushed one by one")
        harness.loop.run()
        #expect(try harness.written() == (0..<3).map { Self.encoded(RedisCommand("GET", [.string("k\($0)")])) }.joined())
        try harness.reply("$1\r\na\r\n$1\r\nb\r\n$-1\r\n")
        #expect(futures.compactMap { try? Self.outcome($0)?.get() } == [.bulkString(ByteBuffer(string: "a")), .bulkString(ByteBuffer(string: "b")), .null])
    }

    @Test func answeredCommandsDoNotTimeOut() throws {
        let harness = try Harness { $0.commandTimeout = .milliseconds(100) }
        for round in 0..<10 {
            let future = harness.send(RedisCommand("PING"))
            harness.loop.advanceTime(by: .milliseconds(60))
            try harness.reply("+PONG\r\n")
            #expect(try Self.outcome(future)?.get() == .simpleString("PONG"), "round \(round)")
        }
        harness.loop.advanceTime(by: .seconds(1))
        #expect(harness.channel.isActive)
    }

    @Test(arguments: ["%1\r\n:1\r\n:2\r\n", "*2147483647\r\n", "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"])
    func aProtocolErrorFailsEveryPendingCommandAndCloses(wire: String) throws {
        let harness = try Harness()
        let first = harness.send(RedisCommand("GET", ["a"]))
        let second = harness.send(RedisCommand("GET", ["b"]))
        try harness.reply(wire)
        for future in [first, second] {
            #expect(Self.failure(future)?.code == .protocolError)
        }
        #expect(!harness.channel.isActive)
    }

    @Test func anUnsolicitedReplyClosesTheConnection() throws {
        let harness = try Harness()
        try harness.reply(":1\r\n")
        #expect(!harness.channel.isActive)
    }

    @Test func errorRepliesAreValuesAndKeepTheConnection() throws {
        let harness = try Harness()
        let future = harness.send(RedisCommand("INCR", ["text"]))
        try harness.reply("-ERR value is not an integer or out of range\r\n")
        #expect(try Self.outcome(future)?.get() == .error("ERR value is not an integer or out of range"))
        #expect(harness.channel.isActive)
    }

    @Test func pushModeDeliversUnrequestedReplies() throws {
        let harness = try Harness()
        var pushed: [RESPValue] = []
        harness.handler.onPush = { pushed.append($0) }
        harness.handler.enterPushMode()
        try harness.reply("*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nabc\r\n*2\r\n$4\r\npong\r\n$1\r\n7\r\n")
        #expect(pushed.count == 2)
        #expect(pushed.first?.array?.first?.string == "message")
        #expect(harness.channel.isActive)
    }

    @Test func aBatchFailsAsAWholeWhenTheConnectionDrops() throws {
        let harness = try Harness()
        let batch = harness.loop.makePromise(of: [RESPValue].self)
        harness.handler.send(batch: [RedisCommand("PING"), RedisCommand("PING")], promise: batch)
        try harness.reply("+PONG\r\n") // half the batch answered
        harness.channel.pipeline.fireChannelInactive()
        #expect(Self.failure(batch.futureResult)?.code == .connectionClosed)
    }

    @Test func peerCloseFailsPendingWithConnectionClosed() throws {
        let harness = try Harness()
        let future = harness.send(RedisCommand("PING"))
        harness.channel.pipeline.fireChannelInactive()
        #expect(Self.failure(future)?.code == .connectionClosed)
    }
}
