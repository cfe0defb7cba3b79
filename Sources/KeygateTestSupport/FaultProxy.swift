import NIOCore
import NIOPosix
import Synchronization

/// A userspace TCP proxy between a node and Redis that breaks things on purpose (the fault suite).
///
/// Connections are classified by the name the node gives them in its handshake (`CLIENT SETNAME`):
/// the invalidation subscriber's name contains "invalidation", everything else is a data
/// connection. Each class has its own mode, switchable at any time:
/// - `pass`: forward both ways;
/// - `delay`: forward after a fixed delay per direction (order kept);
/// - `blackHole`: accept and keep connections open, forward nothing, never close; what was sent
///   meanwhile is delivered when the mode changes back, as TCP retransmission would after a real
///   network black hole;
/// - `reset`: close connections with a TCP reset (existing ones at once, new ones on accept);
/// - `dropReplies`: forward requests to Redis, swallow Redis's answers;
/// - `stall`: stop reading from Redis, so Redis's output buffer for that client fills up (the proxy's
///   receive buffer toward Redis is kept small so the kernel cannot absorb megabytes first).
public final class FaultProxy: Sendable {
    public enum Mode: Sendable, Equatable {
        case pass
        case delay(toRedis: Duration, toClient: Duration)
        case blackHole
        case reset
        case dropReplies
        case stall
    }

    public enum ConnectionClass: Sendable, CaseIterable { case data, subscriber }

    public let port: Int
    private let upstreamPort: Int
    private let channel: any Channel
    private let state: Mutex<State>

    private struct State {
        var modes: [ConnectionClass: Mode] = [.data: .pass, .subscriber: .pass]
        var pairs: [ObjectIdentifier: Pair] = [:]
    }

    /// One proxied connection: the node's side and Redis's side.
    final class Pair: Sendable {
        let client: any Channel
        let upstream: EventLoopFuture<any Channel>
        let connectionClass = Mutex<ConnectionClass?>(nil)
        /// Bytes held while black-holed, per direction, delivered in order on release.
        let held = Mutex<(toRedis: [ByteBuffer], toClient: [ByteBuffer])>(([], []))
        init(client: any Channel, upstream: EventLoopFuture<any Channel>) {
            self.client = client
            self.upstream = upstream
        }
    }

    /// Starts a proxy on an ephemeral loopback port in front of Redis on `upstreamPort`.
    public static func start(upstreamPort: Int) async throws -> FaultProxy {
        let group = MultiThreadedEventLoopGroup.singleton
        let box = ProxyBox()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { client in
                guard let proxy = box.proxy else { return client.close() }
                return proxy.accept(client)
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let proxy = FaultProxy(channel: channel, upstreamPort: upstreamPort)
        box.proxy = proxy
        return proxy
    }

    private init(channel: any Channel, upstreamPort: Int) {
        self.channel = channel
        self.port = channel.localAddress?.port ?? 0
        self.upstreamPort = upstreamPort
        self.state = Mutex(State())
    }

    public var url: String { "redis://127.0.0.1:\(port)" }

    /// Sets the mode of one class of connections (both when `of` is nil).
    public func set(_ mode: Mode, of connectionClass: ConnectionClass? = nil) {
        let pairs = state.withLock { state in
            for item in ConnectionClass.allCases where connectionClass == nil || item == connectionClass {
                state.modes[item] = mode
            }
            return Array(state.pairs.values)
        }
        for pair in pairs {
            let current = pair.connectionClass.withLock { $0 } ?? .data
            guard connectionClass == nil || current == connectionClass else { continue }
            apply(mode, to: pair)
        }
    }

    func mode(of pair: Pair) -> Mode {
        let connectionClass = pair.connectionClass.withLock { $0 } ?? .data
        return state.withLock { $0.modes[connectionClass] ?? .pass }
    }

    /// Stops accepting and closes every proxied connection.
    public func stop() async {
        try? await channel.close()
        for pair in state.withLock({ Array($0.pairs.values) }) { Self.close(pair) }
    }

    // MARK: wiring

    private func accept(_ client: any Channel) -> EventLoopFuture<Void> {
        let upstream = ClientBootstrap(group: client.eventLoop)
            // Linux autotunes loopback receive buffers up to tcp_rmem's maximum (32 MiB here): a fixed
            // small buffer keeps a stalled reader's backlog in Redis, where its limits apply.
            .channelOption(.socketOption(.so_rcvbuf), value: 64 * 1024)
            .connect(host: "127.0.0.1", port: upstreamPort)
        let pair = Pair(client: client, upstream: upstream)
        state.withLock { $0.pairs[ObjectIdentifier(client)] = pair }
        client.closeFuture.whenComplete { _ in
            self.state.withLock { _ = $0.pairs.removeValue(forKey: ObjectIdentifier(client)) }
            upstream.whenSuccess { _ = $0.close() }
        }
        upstream.whenComplete { result in
            switch result {
            case .success(let redis):
                redis.closeFuture.whenComplete { _ in
                    // Redis closed (or was closed): the node sees it, unless we are hiding everything.
                    if self.mode(of: pair) != .blackHole { client.close(promise: nil) }
                }
                _ = redis.pipeline.addHandler(Forwarder(proxy: self, pair: pair, direction: .toClient))
                if self.mode(of: pair) == .stall { redis.setOption(.autoRead, value: false).whenComplete { _ in } }
            case .failure:
                client.close(promise: nil)
            }
        }
        return client.pipeline.addHandler(Forwarder(proxy: self, pair: pair, direction: .toRedis)).map {
            if self.mode(of: pair) == .reset { Self.reset(pair) }
        }
    }

    private func apply(_ mode: Mode, to pair: Pair) {
        if mode != .blackHole { release(pair) }
        if mode == .reset { Self.reset(pair) }
        // Reading from Redis stops while stalled and resumes with any other mode.
        pair.upstream.whenSuccess { $0.setOption(.autoRead, value: mode != .stall).whenComplete { _ in } }
    }

    /// Delivers what a black hole held, in order (on the pair's event loop, which both sides share).
    private func release(_ pair: Pair) {
        pair.client.eventLoop.execute { Self.drainHeld(pair) }
    }

    /// On the pair's event loop: writes held bytes before anything newer.
    static func drainHeld(_ pair: Pair) {
        let (toRedis, toClient) = pair.held.withLock { held in
            defer { held = ([], []) }
            return (held.toRedis, held.toClient)
        }
        if !toRedis.isEmpty {
            pair.upstream.whenSuccess { redis in
                for buffer in toRedis { redis.write(buffer, promise: nil) }
                redis.flush()
            }
        }
        if !toClient.isEmpty {
            for buffer in toClient { pair.client.write(buffer, promise: nil) }
            pair.client.flush()
        }
    }

    private static func reset(_ pair: Pair) {
        // SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        @Sendable func abort(_ channel: any Channel) {
            guard let socket = channel as? any SocketOptionProvider else { return channel.close(promise: nil) }
            socket.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
        }
        abort(pair.client)
        pair.upstream.whenSuccess(abort)
    }

    private static func close(_ pair: Pair) {
        pair.client.close(promise: nil)
        pair.upstream.whenSuccess { $0.close(promise: nil) }
    }

    /// Forwards one direction, applying the pair's current mode to each chunk.
    final class Forwarder: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        enum Direction { case toRedis, toClient }

        let proxy: FaultProxy
        let pair: Pair
        let direction: Direction

        init(proxy: FaultProxy, pair: Pair, direction: Direction) {
            self.proxy = proxy
            self.pair = pair
            self.direction = direction
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            if direction == .toRedis { classify(buffer) }
            let mode = proxy.mode(of: pair)
            if mode != .blackHole { FaultProxy.drainHeld(pair) }
            switch mode {
            case .pass:
                forward(buffer, after: nil, eventLoop: context.eventLoop)
            case .delay(let toRedis, let toClient):
                forward(buffer, after: direction == .toRedis ? toRedis : toClient, eventLoop: context.eventLoop)
            case .dropReplies:
                if direction == .toRedis { forward(buffer, after: nil, eventLoop: context.eventLoop) }
            case .blackHole:
                pair.held.withLock { held in
                    if direction == .toRedis { held.toRedis.append(buffer) } else { held.toClient.append(buffer) }
                }
            case .stall:
                // Requests still go to Redis (the subscriber's pings); answers wait in Redis.
                if direction == .toRedis { forward(buffer, after: nil, eventLoop: context.eventLoop) }
            case .reset:
                break
            }
        }

        /// The handshake names the connection; later chunks keep the first classification.
        private func classify(_ buffer: ByteBuffer) {
            pair.connectionClass.withLock { current in
                guard current == nil else { return }
                let text = String(decoding: buffer.readableBytesView, as: UTF8.self)
                current = text.contains("invalidation") ? .subscriber : .data
            }
        }

        private func forward(_ buffer: ByteBuffer, after delay: Duration?, eventLoop: any EventLoop) {
            let send: @Sendable (any Channel) -> Void = { target in
                if let delay, delay > .zero {
                    target.eventLoop.scheduleTask(in: .nanoseconds(Int64(delay.components.seconds) * 1_000_000_000
                                                                    + Int64(delay.components.attoseconds / 1_000_000_000))) {
                        target.writeAndFlush(buffer, promise: nil)
                    }
                } else {
                    target.writeAndFlush(buffer, promise: nil)
                }
            }
            switch direction {
            case .toRedis: pair.upstream.whenSuccess(send)
            case .toClient: send(pair.client)
            }
        }
    }
}

/// Lets the accept closure, created before the proxy, reach it.
private final class ProxyBox: @unchecked Sendable {
    // Set once, right after bind and before any connection can be accepted in a test.
    var proxy: FaultProxy?
}
