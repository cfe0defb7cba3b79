import NIOCore
import NIOPosix
import Synchronization
import Testing
@testable import KeygateRedis

/// Discovery against in-process fake Sentinels: a RESP server on loopback that answers
/// `SENTINEL get-master-addr-by-name` as told and records every command it received.
@Suite struct SentinelDiscoveryFakeTests {
    final class FakeSentinel: Sendable {
        /// The raw RESP reply to `SENTINEL get-master-addr-by-name`.
        let answer: String
        let received = Mutex<[[String]]>([])
        private let channel: any Channel
        var port: Int { channel.localAddress?.port ?? 0 }
        var queries: Int { received.withLock { $0.filter { $0.first == "SENTINEL" }.count } }

        static func start(answer: String) async throws -> FakeSentinel {
            let box = Box()
            let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .childChannelInitializer { child in
                    child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.addHandler(FakeSentinelHandler(sentinel: box.sentinel!))
                    }
                }
                .bind(host: "127.0.0.1", port: 0).get()
            let sentinel = FakeSentinel(channel: channel, answer: answer)
            box.sentinel = sentinel
            return sentinel
        }

        private init(channel: any Channel, answer: String) {
            self.channel = channel
            self.answer = answer
        }

        func stop() async { try? await channel.close() }

        /// Set once before the server accepts; read by each connection's handler.
        private final class Box: @unchecked Sendable { var sentinel: FakeSentinel? }
    }

    /// Reads commands (arrays of bulk strings), answers each in order.
    final class FakeSentinelHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let sentinel: FakeSentinel
        var pending = ByteBuffer()
        init(sentinel: FakeSentinel) { self.sentinel = sentinel }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            pending.writeBuffer(&bytes)
            while let command = Self.nextCommand(&pending) {
                sentinel.received.withLock { $0.append(command) }
                let reply = command.first == "SENTINEL" ? sentinel.answer : "+OK\r\n"
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply)), promise: nil)
            }
        }

        /// One complete `*N\r\n($len\r\narg\r\n)*N` from the front of `buffer`, or nil if incomplete.
        static func nextCommand(_ buffer: inout ByteBuffer) -> [String]? {
            var copy = buffer
            func line() -> String? {
                let view = copy.readableBytesView
                guard let end = view.firstIndex(of: UInt8(ascii: "\r")), view.index(after: end) < view.endIndex else { return nil }
                let text = copy.readString(length: end - view.startIndex)
                copy.moveReaderIndex(forwardBy: 2)
                return text
            }
            guard let header = line(), header.hasPrefix("*"), let count = Int(header.dropFirst()) else { return nil }
            var parts: [String] = []
            for _ in 0..<count {
                guard let length = line().flatMap({ Int($0.dropFirst()) }), copy.readableBytes >= length + 2,
                      let part = copy.readString(length: length) else { return nil }
                copy.moveReaderIndex(forwardBy: 2)
                parts.append(part)
            }
            buffer = copy
            return parts
        }
    }

    static func address(_ port: Int) -> String { "*2\r\n$9\r\n127.0.0.1\r\n$\(String(port).count)\r\n\(port)\r\n" }
    static let unknown = "*-1\r\n"

    static func discovery(_ sentinels: [FakeSentinel], extraPorts: [Int] = [], password: String? = nil) -> SentinelDiscovery {
        var configuration = RedisConfiguration()
        configuration.password = "master-secret"
        configuration.connectTimeout = .seconds(1)
        let addresses = sentinels.map { RedisConfiguration.Sentinel.Address(host: "127.0.0.1", port: $0.port) }
            + extraPorts.map { RedisConfiguration.Sentinel.Address(host: "127.0.0.1", port: $0) }
        let sentinel = RedisConfiguration.Sentinel(addresses: addresses, masterName: "orders", username: password.map { _ in "watcher" },
                                                   password: password)
        configuration.sentinel = sentinel
        return SentinelDiscovery(configuration: configuration, sentinel: sentinel, tlsContext: nil)
    }

    static var loop: any EventLoop { MultiThreadedEventLoopGroup.singleton.any() }

    @Test func asksInTurnAndStartsWithTheOneThatAnsweredLast() async throws {
        let first = try await FakeSentinel.start(answer: Self.unknown)
        let second = try await FakeSentinel.start(answer: Self.address(6390))
        let discovery = Self.discovery([first, second])
        #expect(try await discovery.locate(on: Self.loop).get() == .tcp(host: "127.0.0.1", port: 6390))
        #expect(try await discovery.locate(on: Self.loop).get() == .tcp(host: "127.0.0.1", port: 6390))
        #expect(first.queries == 1, "the Sentinel that did not know is not asked first again")
        #expect(second.queries == 2)
        // Each query names the master and goes through the Sentinel's own handshake.
        #expect(second.received.withLock { $0 }.contains(["SENTINEL", "get-master-addr-by-name", "orders"]))
        #expect(second.received.withLock { $0 }.contains(["CLIENT", "SETNAME", "keygate-discovery"]))
        await first.stop(); await second.stop()
    }

    @Test func aMalformedAnswerMovesOnToTheNextSentinel() async throws {
        let broken = try await FakeSentinel.start(answer: "*2\r\n$9\r\n127.0.0.1\r\n$4\r\nport\r\n")
        let good = try await FakeSentinel.start(answer: Self.address(6391))
        #expect(try await Self.discovery([broken, good]).locate(on: Self.loop).get() == .tcp(host: "127.0.0.1", port: 6391))
        await broken.stop(); await good.stop()
    }

    @Test func aNameNoSentinelKnowsIsSaidSo() async throws {
        let a = try await FakeSentinel.start(answer: Self.unknown)
        let b = try await FakeSentinel.start(answer: Self.unknown)
        let error = await #expect(throws: RedisError.self) { try await Self.discovery([a, b]).locate(on: Self.loop).get() }
        #expect(error?.code == .discoveryFailed)
        #expect(error?.message.contains("no Sentinel knows a master named 'orders'") == true, "\(error?.message ?? "")")
        await a.stop(); await b.stop()
    }

    @Test func unreachableSentinelsAreNamedWithWhatEachSaid() async throws {
        let a = try await FakeSentinel.start(answer: Self.unknown)
        let closed = try await FakeSentinel.start(answer: Self.unknown)
        let closedPort = closed.port
        await closed.stop()
        let error = await #expect(throws: RedisError.self) {
            try await Self.discovery([a], extraPorts: [closedPort]).locate(on: Self.loop).get()
        }
        #expect(error?.code == .discoveryFailed)
        #expect(error?.message.contains("no Sentinel gave the address of master 'orders'") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("127.0.0.1:\(closedPort)") == true)
        #expect(error?.message.contains("127.0.0.1:\(a.port): no master named 'orders'") == true)
        await a.stop()
    }

    @Test func sentinelsGetTheirOwnCredentialsNotTheMasters() async throws {
        let sentinel = try await FakeSentinel.start(answer: Self.address(6392))
        _ = try await Self.discovery([sentinel], password: "sentinel-secret").locate(on: Self.loop).get()
        let commands = sentinel.received.withLock { $0 }
        #expect(commands.first == ["AUTH", "watcher", "sentinel-secret"])
        #expect(!commands.flatMap { $0 }.contains("master-secret"))
        await sentinel.stop()
    }
}
