import NIOCore
import NIOPosix
import Synchronization

/// One keep-alive connection to an upstream server, owned by one event loop.
final class UpstreamConnection {
    let channel: any Channel
    let upstream: Int
    let handler: UpstreamResponseReader
    /// True once it served a response: a reused connection may have been closed by the server
    /// meanwhile, so an idempotent request that fails on it before any answer is retried once.
    var reused = false

    init(channel: any Channel, upstream: Int, handler: UpstreamResponseReader) {
        self.channel = channel
        self.upstream = upstream
        self.handler = handler
    }
}

/// The upstream connections of one event loop: round robin over the servers, idle keep-alive
/// connections reused, and passive health (a server that refuses a connection or times out is
/// skipped for `downFor`; each loop learns this by itself, no lock on the request path).
final class UpstreamPool {
    let eventLoop: any EventLoop
    let settings: GatewaySettings
    private var idle: [[UpstreamConnection]]
    private var downUntil: [NIODeadline]
    private var next = 0
    let metrics: DataPlaneMetrics

    /// `Host` for a request that came without one (HTTP/1.0): the first upstream's address.
    let defaultHost: String

    init(eventLoop: any EventLoop, settings: GatewaySettings, metrics: DataPlaneMetrics) {
        self.eventLoop = eventLoop
        let first = settings.upstreams.first
        defaultHost = first.map { $0.host.contains(":") ? "[\($0.host)]:\($0.port)" : "\($0.host):\($0.port)" } ?? "localhost"
        self.settings = settings
        self.metrics = metrics
        idle = Array(repeating: [], count: settings.upstreams.count)
        downUntil = Array(repeating: .uptimeNanoseconds(0), count: settings.upstreams.count)
    }

    /// An idle connection to the next healthy server in turn, or nil when it has none (then
    /// `checkout` connects). Passes over servers marked down, like `checkout`.
    func takeIdle() -> UpstreamConnection? {
        let count = settings.upstreams.count
        let now = NIODeadline.now()
        for offset in 0..<count {
            let index = (next + offset) % count
            guard downUntil[index] <= now else { continue }
            while let connection = idle[index].popLast() {
                guard connection.channel.isActive else { continue }
                next = (index + 1) % count
                return connection
            }
            return nil
        }
        return nil
    }

    /// A connection to the next healthy server, given to `done` on this loop: an idle one, or a new
    /// one. Servers that refuse are marked down and the next is tried; nil once every server failed.
    func checkout(_ done: @escaping (UpstreamConnection?) -> Void) {
        let count = settings.upstreams.count
        let now = NIODeadline.now()
        var order: [Int] = []
        for offset in 0..<count {
            let index = (next + offset) % count
            if downUntil[index] <= now { order.append(index) }
        }
        if order.isEmpty { order = (0..<count).map { (next + $0) % count } } // all down: try them anyway
        next = (next + 1) % count
        attempt(order[...], done)
    }

    private func attempt(_ order: ArraySlice<Int>, _ done: @escaping (UpstreamConnection?) -> Void) {
        guard let index = order.first else { return done(nil) }
        while let connection = idle[index].popLast() {
            if connection.channel.isActive { return done(connection) }
        }
        let upstream = settings.upstreams[index]
        let loopBound = NIOLoopBound((self, done), eventLoop: eventLoop)
        ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(settings.connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.autoRead, value: false) // the gateway reads as fast as the client takes the response
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(UpstreamResponseReader())
                }
            }
            .connect(host: upstream.host, port: upstream.port)
            .whenComplete { result in
                let (pool, done) = loopBound.value
                guard case .success(let channel) = result,
                      let handler = try? channel.pipeline.syncOperations.handler(type: UpstreamResponseReader.self) else {
                    pool.markDown(index)
                    pool.metrics.gatewayConnectFailures.add(1, ordering: .relaxed)
                    return pool.attempt(order.dropFirst(), done)
                }
                let connection = UpstreamConnection(channel: channel, upstream: index, handler: handler)
                handler.pool = pool
                handler.connection = connection
                done(connection)
            }
    }

    func markDown(_ index: Int) {
        downUntil[index] = .now() + TimeAmount(settings.downFor)
    }

    /// Back to the idle list after a whole response, or closed. An idle connection keeps one read
    /// pending, so a server that closes it is noticed (and it leaves the list) before it is reused.
    func release(_ connection: UpstreamConnection, reusable: Bool) {
        connection.handler.exchange = nil
        guard reusable, connection.channel.isActive, idle[connection.upstream].count < settings.maxIdlePerUpstream else {
            connection.channel.close(promise: nil)
            return
        }
        connection.reused = true
        idle[connection.upstream].append(connection)
        connection.channel.read()
    }

    func remove(_ connection: UpstreamConnection) {
        idle[connection.upstream].removeAll { $0 === connection }
    }
}

/// The upstream pools of every event loop, made on a loop's first connection. Each pool is used only
/// on its own loop; the lock guards the dictionary, taken once per client connection.
final class GatewayPools: @unchecked Sendable {
    private let settings: GatewaySettings
    private let metrics: DataPlaneMetrics
    private let pools = Mutex<[ObjectIdentifier: UpstreamPool]>([:])

    init(settings: GatewaySettings, metrics: DataPlaneMetrics) {
        self.settings = settings
        self.metrics = metrics
    }

    func pool(for eventLoop: any EventLoop) -> UpstreamPool {
        pools.withLock { pools in
            if let pool = pools[ObjectIdentifier(eventLoop)] { return pool }
            let pool = UpstreamPool(eventLoop: eventLoop, settings: settings, metrics: metrics)
            pools[ObjectIdentifier(eventLoop)] = pool
            return pool
        }
    }
}
