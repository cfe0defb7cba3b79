public import NIOCore
import NIOPosix
import NIOSSL

/// One connection to Redis: pipelined commands with a deadline each, answered in order.
///
/// Obtain one with `connect`; it is usable once the handshake (AUTH, SELECT, CLIENT SETNAME) has
/// succeeded. Any timeout or protocol error fails everything pending and closes the connection:
/// a connection whose reader state is unknown is never reused.
public final class RedisConnection: Sendable {
    public let eventLoop: any EventLoop
    let channel: any Channel
    private let handler: NIOLoopBound<RedisChannelHandler>
    /// The server's `run_id` from the handshake; nil without `INFO` (a Sentinel, or an ACL without it).
    public let serverRunID: String?

    private init(channel: any Channel, handler: RedisChannelHandler) {
        self.eventLoop = channel.eventLoop
        self.channel = channel
        self.handler = NIOLoopBound(handler, eventLoop: channel.eventLoop)
        self.serverRunID = handler.serverRunID
    }

    /// Connects and runs the handshake within `configuration.connectTimeout`.
    public static func connect(
        configuration: RedisConfiguration,
        eventLoop: any EventLoop
    ) -> EventLoopFuture<RedisConnection> {
        do {
            let tls = try makeTLSContext(configuration)
            return connect(configuration: configuration, tlsContext: tls, eventLoop: eventLoop)
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
    }

    /// Builds the TLS context once; reconnects reuse it (loading certificates is not cheap).
    static func makeTLSContext(_ configuration: RedisConfiguration) throws(RedisError) -> NIOSSLContext? {
        guard let tls = configuration.tls else { return nil }
        var settings = TLSConfiguration.makeClientConfiguration()
        if let caFile = tls.caFile { settings.trustRoots = .file(caFile) }
        do {
            return try NIOSSLContext(configuration: settings)
        } catch {
            throw RedisError(.connectFailed, "TLS setup failed (CA file \(tls.caFile ?? "system"))", underlying: error)
        }
    }

    static func connect(
        configuration: RedisConfiguration,
        tlsContext: NIOSSLContext?,
        eventLoop: any EventLoop
    ) -> EventLoopFuture<RedisConnection> {
        let serverName = configuration.tls?.serverName
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(configuration.connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext {
                        let name = serverName.flatMap { $0.first?.isNumber == true || $0.contains(":") ? nil : $0 }
                        let tlsHandler = try NIOSSLClientHandler(context: tlsContext, serverHostname: name)
                        try channel.pipeline.syncOperations.addHandler(tlsHandler)
                    }
                    let handler = RedisChannelHandler(configuration: configuration, eventLoop: channel.eventLoop)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let connected: EventLoopFuture<any Channel>
        switch configuration.endpoint {
        case .tcp(let host, let port):
            connected = bootstrap.connect(host: host, port: port)
        case .unix(let path):
            connected = bootstrap.connect(unixDomainSocketPath: path)
        }
        let target = configuration.redactedTarget
        return connected
            .flatMapErrorThrowing { error in
                throw RedisError(.connectFailed, "cannot connect to \(target)", underlying: error)
            }
            .flatMap { channel in
                // flatMap runs on the channel's event loop, where the pipeline may be read synchronously.
                let handler: NIOLoopBound<RedisChannelHandler>
                do {
                    handler = NIOLoopBound(try channel.pipeline.syncOperations.handler(type: RedisChannelHandler.self),
                                           eventLoop: channel.eventLoop)
                } catch {
                    // The channel closed before we got here (a refused TLS handshake tears the pipeline
                    // down first): report it as a failed connect, not as a pipeline detail.
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(
                        RedisError(.connectFailed, "connection to \(target) closed during setup", underlying: error))
                }
                return handler.value.ready.futureResult.map {
                    RedisConnection(channel: channel, handler: handler.value)
                }.flatMapError { error in
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
    }

    /// True until the connection closed (for any reason).
    public var isActive: Bool { channel.isActive }

    /// Completes when the channel has closed.
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    /// Sends one command. An error reply (`-ERR ...`) fails the future with `.serverError`.
    public func send(_ command: RedisCommand) -> EventLoopFuture<RESPValue> {
        let promise = eventLoop.makePromise(of: RESPValue.self)
        if eventLoop.inEventLoop {
            handler.value.send(command, promise: promise)
        } else {
            let handler = self.handler
            eventLoop.execute { handler.value.send(command, promise: promise) }
        }
        return promise.futureResult.flatMapThrowing { [channel] value in
            if case .error(let message) = value {
                if message.hasPrefix("READONLY") {
                    // Demoted by a failover: this connection leads to a replica now. Close it, so
                    // the reconnect asks where the master is.
                    channel.close(promise: nil)
                    throw RedisError(.notWritableMaster, "the server became a replica: \(message)")
                }
                throw RedisError(.serverError, message)
            }
            return value
        }
    }

    /// Sends commands as one pipeline with one flush; one reply per command, error replies included.
    public func pipeline(_ commands: [RedisCommand]) -> EventLoopFuture<[RESPValue]> {
        if commands.isEmpty { return eventLoop.makeSucceededFuture([]) }
        let promise = eventLoop.makePromise(of: [RESPValue].self)
        if eventLoop.inEventLoop {
            handler.value.send(batch: commands, promise: promise)
        } else {
            let handler = self.handler
            eventLoop.execute { handler.value.send(batch: commands, promise: promise) }
        }
        return promise.futureResult.map { [channel] replies in
            if replies.contains(where: { if case .error(let message) = $0 { message.hasPrefix("READONLY") } else { false } }) {
                channel.close(promise: nil) // demoted by a failover, as in `send`
            }
            return replies
        }
    }

    /// Closes the connection; pending commands fail with `.connectionClosed`.
    public func close() -> EventLoopFuture<Void> {
        channel.close().recover { _ in }
    }

    // MARK: subscriber support

    func enterPushMode(onPush: @escaping (RESPValue) -> Void) {
        eventLoop.preconditionInEventLoop()
        handler.value.onPush = onPush
        handler.value.enterPushMode()
    }

    func sendPushCommand(_ command: RedisCommand) {
        eventLoop.preconditionInEventLoop()
        handler.value.sendPushCommand(command)
    }

    func fail(_ error: RedisError) {
        eventLoop.preconditionInEventLoop()
        handler.value.fail(error)
    }
}

extension RedisConnection {
    public func send(_ command: RedisCommand) async throws -> RESPValue {
        try await send(command).get()
    }

    public func pipeline(_ commands: [RedisCommand]) async throws -> [RESPValue] {
        try await pipeline(commands).get()
    }
}
