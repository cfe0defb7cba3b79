import NIOCore
import NIOPosix
import Synchronization
import Testing
@testable import KeygateRedis

/// The cluster router against an in-process fake cluster: three RESP servers on loopback that share
/// one table of slot owners and answer `MOVED`, `ASK` and `TRYAGAIN` as a real cluster would while
/// slots move. Each server records the commands it received, so a test can see where each went.
@Suite struct ClusterRouterFakeTests {
    /// The state the fake nodes share.
    struct ClusterState {
        /// Who serves each slot now; `CLUSTER SLOTS` reports `advertised` (the same unless a test
        /// makes the map stale on purpose; -1 there: no one).
        var owner = [Int](repeating: 0, count: HashSlot.count)
        var advertised: [Int]?
        /// slot -> node importing it: the owner answers `ASK` for it, the importer serves it after `ASKING`.
        var importing: [Int: Int] = [:]
        /// The next this many keyed commands get `TRYAGAIN`.
        var tryAgain = 0
        var values: [String: String] = [:]
        /// Per node, the commands it received after the handshake, in order.
        var received: [[[String]]] = [[], [], []]
        var slotQueries = 0
        /// A suffix of the node ids, changed to simulate a failover (replicas have other ids).
        var generation = 0
    }

    final class FakeCluster: Sendable {
        let state = Mutex(ClusterState())
        private let channels: [any Channel]
        var ports: [Int] { channels.map { $0.localAddress?.port ?? 0 } }

        static func start() async throws -> FakeCluster {
            let box = Box()
            var channels: [any Channel] = []
            for index in 0..<3 {
                channels.append(try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .childChannelInitializer { child in
                        child.eventLoop.makeCompletedFuture {
                            try child.pipeline.syncOperations.addHandler(FakeNodeHandler(cluster: box.cluster!, index: index))
                        }
                    }
                    .bind(host: "127.0.0.1", port: 0).get())
            }
            let cluster = FakeCluster(channels: channels)
            box.cluster = cluster
            return cluster
        }

        private init(channels: [any Channel]) { self.channels = channels }

        func stop() async { for channel in channels { try? await channel.close() } }

        func received(by node: Int) -> [[String]] { state.withLock { $0.received[node] } }

        /// Slots `range` served by `node`, in the map and in fact.
        func assign(_ range: ClosedRange<Int>, to node: Int) {
            state.withLock { state in for slot in range { state.owner[slot] = node } }
        }

        /// The reply to one command from node `index` (`asking`: the connection sent `ASKING` just before).
        func reply(to command: [String], node index: Int, asking: Bool) -> String {
            let name = command.first?.uppercased() ?? ""
            return state.withLock { state -> String in
                switch name {
                case "ROLE": return "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"
                case "INFO": return Self.bulk("# Server\r\nrun_id:\(String(repeating: String(index), count: 40))\r\n")
                case "PING": return "+PONG\r\n"
                case "CLIENT", "ASKING": return "+OK\r\n"
                case "CLUSTER":
                    state.slotQueries += 1
                    return Self.clusterSlots(owner: state.advertised ?? state.owner, ports: ports, generation: state.generation)
                case "WAIT":
                    state.received[index].append(command)
                    return ":1\r\n"
                default: break
                }
                state.received[index].append(command)
                guard command.count >= 2 else { return "-ERR wrong number of arguments\r\n" }
                let key = command[1]
                let slot = HashSlot.of(key)
                if state.tryAgain > 0 {
                    state.tryAgain -= 1
                    return "-TRYAGAIN Multiple keys request during rehashing of slot\r\n"
                }
                let serves = state.owner[slot] == index && state.importing[slot] == nil
                    || state.importing[slot] == index && asking
                guard serves else {
                    if state.owner[slot] == index, let importer = state.importing[slot] {
                        return "-ASK \(slot) 127.0.0.1:\(ports[importer])\r\n"
                    }
                    return "-MOVED \(slot) 127.0.0.1:\(ports[state.owner[slot]])\r\n"
                }
                switch name {
                case "SET":
                    state.values[key] = command.count > 2 ? command[2] : ""
                    return "+OK\r\n"
                case "GET":
                    return state.values[key].map(Self.bulk) ?? "$-1\r\n"
                default: return "-ERR unknown command '\(name)'\r\n"
                }
            }
        }

        static func bulk(_ text: String) -> String { "$\(text.utf8.count)\r\n\(text)\r\n" }

        /// `CLUSTER SLOTS`: one `[start, end, [host, port, id]]` per run of slots with one owner.
        static func clusterSlots(owner: [Int], ports: [Int], generation: Int) -> String {
            var ranges: [String] = []
            var start = 0
            for slot in 1...HashSlot.count where slot == HashSlot.count || owner[slot] != owner[start] {
                let node = owner[start]
                defer { start = slot }
                guard node >= 0 else { continue }
                let id = String(repeating: String(node), count: 39) + String(generation)
                ranges.append("*3\r\n:\(start)\r\n:\(slot - 1)\r\n*3\r\n\(bulk("127.0.0.1")):\(ports[node])\r\n\(bulk(id))")
            }
            return "*\(ranges.count)\r\n" + ranges.joined()
        }

        private final class Box: @unchecked Sendable { var cluster: FakeCluster? }
    }

    /// Reads commands, answers each in order; remembers an `ASKING` for the next command only.
    final class FakeNodeHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let cluster: FakeCluster
        let index: Int
        var pending = ByteBuffer()
        var asking = false
        init(cluster: FakeCluster, index: Int) { self.cluster = cluster; self.index = index }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            pending.writeBuffer(&bytes)
            while let command = SentinelDiscoveryFakeTests.FakeSentinelHandler.nextCommand(&pending) {
                let reply = cluster.reply(to: command, node: index, asking: asking)
                asking = command.first?.uppercased() == "ASKING"
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply)), promise: nil)
            }
        }
    }

    final class Flag: Sendable { let raised = Atomic<Int>(0) }

    static func router(_ cluster: FakeCluster, changed: Flag = Flag(), watching: String? = nil) -> (RedisClusterRouter, RedisClientMetrics) {
        var configuration = RedisConfiguration()
        configuration.cluster = .init(seeds: cluster.ports.map { .init(host: "127.0.0.1", port: $0) })
        configuration.endpoint = .tcp(host: "127.0.0.1", port: cluster.ports[0])
        configuration.connectTimeout = .seconds(1)
        configuration.commandTimeout = .seconds(2)
        let metrics = RedisClientMetrics()
        let router = RedisClusterRouter(configuration: configuration, tlsContext: nil, loops: [Self.loop], metrics: metrics,
                                        watchedKey: { watching }, onPrimariesChanged: { changed.raised.add(1, ordering: .relaxed) })
        return (router, metrics)
    }

    static let loop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()

    /// A key whose slot is not `avoiding`'s, found by counting.
    static func key(inSlotOtherThan avoiding: Set<Int> = [], prefix: String = "k") -> (key: String, slot: Int) {
        for n in 0..<10_000 where !avoiding.contains(HashSlot.of("\(prefix)\(n)")) {
            return ("\(prefix)\(n)", HashSlot.of("\(prefix)\(n)"))
        }
        preconditionFailure("no key found")
    }

    @Test func movedUpdatesTheMapForThatSlotAndLaterCommandsGoStraightThere() async throws {
        let cluster = try await FakeCluster.start()
        defer { Task { await cluster.stop() } }
        let (router, metrics) = Self.router(cluster)
        let (key, slot) = Self.key()
        #expect(try await router.send(RedisCommand("SET", [.string(key), "v1"]), on: Self.loop).get().string == "OK")
        #expect(cluster.received(by: 0).count == 1, "every slot starts on node 0")
        // The slot moves to node 1; the router's map still says node 0, and CLUSTER SLOTS keeps
        // saying so for a while (a node that has not heard yet), so only the MOVED can steer it.
        cluster.state.withLock { state in
            state.advertised = state.owner
            state.owner[slot] = 1
            state.values[key] = "v1"
        }
        #expect(try await router.send(RedisCommand("GET", [.string(key)]), on: Self.loop).get().string == "v1")
        #expect(try await router.send(RedisCommand("GET", [.string(key)]), on: Self.loop).get().string == "v1")
        #expect(cluster.received(by: 0).count == 2, "one MOVED from the old owner, then no more")
        #expect(cluster.received(by: 1) == [["GET", key], ["GET", key]])
        #expect(metrics.movedRedirects.load() == 1)
        await router.shutdown()
    }

    @Test func askSendsAskingAndTheCommandOnceAndLeavesTheMapAlone() async throws {
        let cluster = try await FakeCluster.start()
        defer { Task { await cluster.stop() } }
        let (router, metrics) = Self.router(cluster)
        let (key, slot) = Self.key()
        _ = try await router.refresh(on: Self.loop).get()
        cluster.state.withLock { $0.importing[slot] = 2 } // node 0 is migrating the slot to node 2
        for value in ["a", "b"] {
            #expect(try await router.send(RedisCommand("SET", [.string(key), .string(value)]), on: Self.loop).get().string == "OK")
        }
        #expect(cluster.received(by: 0) == [["SET", key, "a"], ["SET", key, "b"]], "ASK does not move the slot in the map")
        #expect(cluster.received(by: 2) == [["SET", key, "a"], ["SET", key, "b"]])
        #expect(metrics.askRedirects.load() == 2)
        #expect(cluster.state.withLock { $0.values[key] } == "b")
        await router.shutdown()
    }

    @Test func tryAgainIsRetriedWithBackoffInsideTheDeadline() async throws {
        let cluster = try await FakeCluster.start()
        defer { Task { await cluster.stop() } }
        let (router, metrics) = Self.router(cluster)
        let (key, _) = Self.key()
        _ = try await router.refresh(on: Self.loop).get()
        cluster.state.withLock { $0.tryAgain = 3 }
        #expect(try await router.send(RedisCommand("SET", [.string(key), "x"]), on: Self.loop).get().string == "OK")
        #expect(cluster.received(by: 0).count == 4)
        #expect(metrics.clusterRetries.load() == 3)
        // Past the command deadline the error comes back instead of another retry.
        cluster.state.withLock { $0.tryAgain = 1_000 }
        let error = await #expect(throws: RedisError.self) {
            try await router.send(RedisCommand("SET", [.string(key), "y"]), on: Self.loop).get()
        }
        #expect(error?.message.hasPrefix("TRYAGAIN") == true)
        await router.shutdown()
    }

    @Test func aPipelineIsSplitPerPrimaryAndItsRepliesComeBackInOrder() async throws {
        let cluster = try await FakeCluster.start()
        defer { Task { await cluster.stop() } }
        cluster.assign(5_461...10_922, to: 1)
        cluster.assign(10_923...16_383, to: 2)
        let (router, _) = Self.router(cluster)
        let keys = (0..<30).map { "user:\($0)" }
        let owners = keys.map { HashSlot.of($0) < 5_461 ? 0 : HashSlot.of($0) < 10_923 ? 1 : 2 }
        #expect(Set(owners).count == 3, "the keys cover the three nodes")
        let writes = keys.map { RedisCommand("SET", [.string($0), .string("value of \($0)")]) }
        _ = try await router.pipeline(writes, on: Self.loop).get()
        let replies = try await router.pipeline(keys.map { RedisCommand("GET", [.string($0)]) }, on: Self.loop).get()
        #expect(replies.map(\.string) == keys.map { "value of \($0)" })
        for node in 0..<3 {
            let expected = zip(keys, owners).filter { $0.1 == node }.map { $0.0 }
            #expect(cluster.received(by: node).filter { $0[0] == "GET" }.map { $0[1] } == expected, "node \(node) got only its keys, in order")
        }
        // One representative key per primary, for the WAITs that follow writes to several of them.
        let representatives = router.primaryRepresentatives(of: keys)
        #expect(representatives.count == 3)
        #expect(Set(representatives.map { keys.firstIndex(of: $0).map { owners[$0] } }) == [0, 1, 2])
        await router.shutdown()
    }

    @Test func aWaitThatFollowedARedirectedWriteDoesNotVouchForIt() async throws {
        let cluster = try await FakeCluster.start()
        defer { Task { await cluster.stop() } }
        let (router, _) = Self.router(cluster)
        let (key, slot) = Self.key()
        _ = try await router.refresh(on: Self.loop).get()
        cluster.state.withLock { state in
            state.advertised = state.owner
            state.owner[slot] = 1
        }
        let replies = try await router.pipeline([RedisCommand("SET", [.string(key), "v"]), RedisCommand("WAIT", [1, 100])],
                                                on: Self.loop).get()
        #expect(replies[0].string == "OK", "the write was resent to its new owner")
        guard case .error(let message) = replies[1] else {
            Issue.record("the WAIT that ran on the old owner was reported as \(replies[1])")
            return
        }
        #expect(message == RedisClusterRouter.orphanedFollower)
        await router.shutdown()
    }

    @Test func aRefreshThatFindsOtherPrimariesReportsAFailoverAndReadinessFollowsCoverage() async throws {
        let cluster = try await FakeCluster.start()
        defer { Task { await cluster.stop() } }
        let changed = Flag()
        let (router, _) = Self.router(cluster, changed: changed)
        try await router.connectAll()
        #expect(router.isHealthy)
        _ = try await router.refresh(on: Self.loop).get()
        #expect(changed.raised.load(ordering: .relaxed) == 0, "the same primaries: no failover")
        cluster.state.withLock { $0.generation = 1 } // a replica with another id took over
        _ = try await router.refresh(on: Self.loop).get()
        #expect(changed.raised.load(ordering: .relaxed) == 1)
        // A map that leaves slots unserved makes the node unready.
        cluster.state.withLock { state in
            state.advertised = state.owner
            for slot in 16_000..<HashSlot.count { state.advertised?[slot] = -1 }
        }
        _ = try await router.refresh(on: Self.loop).get()
        #expect(!router.isHealthy)
        await router.shutdown()
    }

    @Test func theStreamsSlotMovingToAnotherPrimaryIsTreatedLikeAFailover() async throws {
        let cluster = try await FakeCluster.start()
        defer { Task { await cluster.stop() } }
        let changed = Flag()
        let stream = "{ns:events}"
        cluster.assign(5_461...10_922, to: 1) // three primaries from the start, as a real cluster
        cluster.assign(10_923...16_383, to: 2)
        let (router, _) = Self.router(cluster, changed: changed, watching: stream)
        _ = try await router.refresh(on: Self.loop).get()
        let (other, otherSlot) = Self.key(inSlotOtherThan: [HashSlot.of(stream)])
        let otherOwner = otherSlot < 5_461 ? 0 : otherSlot < 10_923 ? 1 : 2
        cluster.assign(otherSlot...otherSlot, to: (otherOwner + 1) % 3) // resharding moves some other slot: nothing to do
        _ = try await router.refresh(on: Self.loop).get()
        #expect(changed.raised.load(ordering: .relaxed) == 0, "\(other) moved, not the Stream")
        let streamOwner = HashSlot.of(stream) < 5_461 ? 0 : HashSlot.of(stream) < 10_923 ? 1 : 2
        cluster.assign(HashSlot.of(stream)...HashSlot.of(stream), to: (streamOwner + 1) % 3) // the Stream's slot moves
        _ = try await router.refresh(on: Self.loop).get()
        #expect(changed.raised.load(ordering: .relaxed) == 1, "the subscriber must follow the Stream to its new primary")
        // Learnt from a MOVED instead of a refresh: the same.
        cluster.state.withLock { state in
            state.advertised = state.owner
            state.owner[HashSlot.of(stream)] = streamOwner
        }
        _ = try await router.send(RedisCommand("GET", [.string(stream)]), on: Self.loop).get()
        #expect(changed.raised.load(ordering: .relaxed) == 2)
        await router.shutdown()
    }
}
