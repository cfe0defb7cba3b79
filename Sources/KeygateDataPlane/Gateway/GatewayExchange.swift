import NIOCore
import NIOHTTP1

/// One request forwarded upstream and its response streamed back to the client, on the client's
/// event loop. The upstream connection reads only while the client connection is writable, so a
/// slow client holds back the upstream (TCP back-pressure) instead of making the node buffer.
final class GatewayExchange {
    private let client: ChannelHandlerContext
    /// Told once the exchange is over (`proxyFinished`); it owns this exchange.
    private unowned let owner: DataPlaneHandler
    private let pool: UpstreamPool
    private let request: ProxyMessages.UpstreamRequest
    private let body: ByteBuffer?
    private let clientHTTP11: Bool
    private let closeAfter: Bool
    private let metrics: DataPlaneMetrics
    /// Fields Keygate adds to the response (a limited key's `RateLimit`), written before the blank line.
    private let extraFields: ByteBuffer?

    private var connection: UpstreamConnection?
    private var framing = ProxyMessages.Framing.none
    private var closeClient = false
    private var responseStarted = false
    private var retried = false
    private var finished = false
    private var waitingForWritability = false
    private var responseTimeout: Scheduled<Void>?
    private var started = NIODeadline.now()

    init(client: ChannelHandlerContext, owner: DataPlaneHandler, pool: UpstreamPool, request: ProxyMessages.UpstreamRequest,
         body: ByteBuffer?, clientHTTP11: Bool, closeAfter: Bool, metrics: DataPlaneMetrics, extraFields: ByteBuffer? = nil) {
        self.client = client
        self.owner = owner
        self.pool = pool
        self.request = request
        self.body = body
        self.clientHTTP11 = clientHTTP11
        self.closeAfter = closeAfter
        self.metrics = metrics
        self.extraFields = extraFields
    }

    func start() {
        started = .now()
        if let idle = pool.takeIdle() { return send(on: idle) } // the usual case: no closure, no future
        pool.checkout { connection in
            if let connection { self.send(on: connection) } else { self.failBeforeResponse(.badGateway) }
        }
    }

    private func send(on connection: UpstreamConnection) {
        guard !finished else { return pool.release(connection, reusable: false) }
        self.connection = connection
        connection.handler.exchange = self
        let channel = connection.channel
        connection.handler.expectResponse(toHead: request.method == .HEAD)
        channel.write(request.bytes, promise: nil)
        if let body, body.readableBytes > 0 { channel.write(body, promise: nil) }
        channel.flush()
        channel.read()
        let loopBound = NIOLoopBound(self, eventLoop: pool.eventLoop)
        responseTimeout = pool.eventLoop.scheduleTask(in: TimeAmount(pool.settings.responseTimeout)) {
            loopBound.value.timedOut()
        }
    }

    /// A part of the upstream's response, written to the client (flushed at the burst's end).
    func upstreamSent(_ part: UpstreamResponsePart) {
        guard !finished, connection != nil else { return }
        switch part {
        case .head(let head):
            responseTimeout?.cancel()
            responseTimeout = nil
            responseStarted = true
            var buffer = client.channel.allocator.buffer(capacity: head.bytes.readableBytes + 64)
            (framing, closeClient) = ProxyMessages.writeResponseHead(head, clientHTTP11: clientHTTP11, close: closeAfter,
                                                                    extraFields: extraFields, into: &buffer)
            metrics.countUpstreamStatus(UInt(head.status))
            client.write(NIOAny(buffer), promise: nil)
        case .body(let bytes):
            if framing == .chunked {
                var size = client.channel.allocator.buffer(capacity: 16)
                size.writeString(String(bytes.readableBytes, radix: 16))
                size.writeStaticString("\r\n")
                client.write(NIOAny(size), promise: nil)
                client.write(NIOAny(bytes), promise: nil) // the data itself, not copied
                client.write(NIOAny(client.channel.allocator.buffer(staticString: "\r\n")), promise: nil)
            } else if framing != .none {
                client.write(NIOAny(bytes), promise: nil) // zero copy: a slice of what the upstream sent
            }
        case .end(let reusable):
            if framing == .chunked { client.write(NIOAny(client.channel.allocator.buffer(staticString: "0\r\n\r\n")), promise: nil) }
            metrics.upstreamLatency.observe(nanoseconds: UInt64(max(0, (NIODeadline.now() - started).nanoseconds)))
            finish(reusable: reusable) // the client handler flushes
        }
    }

    /// The end of one read burst from the upstream: flush what it brought to the client (once per
    /// burst, not per part), and read on only while the client's connection takes more.
    func upstreamReadComplete() {
        guard !finished, let connection else { return }
        client.flush()
        if client.channel.isWritable { connection.channel.read() } else { waitingForWritability = true }
    }

    /// The client connection drained its write buffer: read on from the upstream.
    func clientWritable() {
        guard waitingForWritability, client.channel.isWritable, let connection else { return }
        waitingForWritability = false
        connection.channel.read()
    }

    /// The upstream connection closed or failed before the response ended.
    func upstreamFailed() {
        guard !finished else { return }
        responseTimeout?.cancel()
        let connection = self.connection
        self.connection = nil
        if responseStarted {
            // Part of the response is already with the client: the only honest signal left is to
            // close its connection, so it sees a truncated response rather than a complete one.
            metrics.gatewayErrors.add(1, ordering: .relaxed)
            closeClient = true
            finished = true
            client.flush()
            owner.proxyFinished(closeClient: true, context: client)
            return
        }
        let idempotent: [HTTPMethod] = [.GET, .HEAD, .PUT, .DELETE, .OPTIONS, .TRACE]
        if let connection, connection.reused, !retried, idempotent.contains(request.method) {
            retried = true // the server closed an idle keep-alive connection as we reused it
            return start()
        }
        failBeforeResponse(.badGateway)
    }

    /// The client went away: the upstream connection cannot be reused mid-response.
    func clientClosed() {
        guard !finished else { return }
        finished = true
        responseTimeout?.cancel()
        if let connection { pool.release(connection, reusable: false) }
        connection = nil
    }

    private func timedOut() {
        guard !finished, !responseStarted else { return }
        if let connection { pool.markDown(connection.upstream) }
        failBeforeResponse(.gatewayTimeout)
    }

    /// 502 or 504 with a small body, before any of the upstream's response was sent.
    private func failBeforeResponse(_ status: GatewayFailure) {
        guard !finished else { return }
        metrics.gatewayErrors.add(1, ordering: .relaxed)
        metrics.countUpstreamStatus(status == .badGateway ? 502 : 504)
        if let connection {
            connection.handler.exchange = nil
            pool.release(connection, reusable: false)
        }
        connection = nil
        finished = true
        responseTimeout?.cancel()
        var buffer = client.channel.allocator.buffer(capacity: 256)
        Responses.json(status == .badGateway ? .badGateway : .gatewayTimeout,
                       body: status == .badGateway ? Responses.badGatewayBody : Responses.gatewayTimeoutBody,
                       close: closeAfter, omitBody: request.method == .HEAD, into: &buffer)
        client.write(NIOAny(buffer), promise: nil)
        owner.proxyFinished(closeClient: closeAfter, context: client)
    }

    private func finish(reusable: Bool) {
        finished = true
        if let connection { pool.release(connection, reusable: reusable) }
        connection = nil
        owner.proxyFinished(closeClient: closeClient, context: client)
    }

    enum GatewayFailure { case badGateway, gatewayTimeout }
}
