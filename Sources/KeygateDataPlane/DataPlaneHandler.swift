import Foundation
import KeygateCore
import NIOCore

/// One data-plane connection: scans HTTP/1.1 requests straight from the socket's bytes and answers
/// them in order.
///
/// A cache hit is decided and written synchronously on the event loop, with the key hashed from the
/// receive buffer (no String); a miss waits for the Redis lookup on this loop's own connection while
/// later pipelined requests stay in the buffer. Responses are flushed once per read burst.
final class DataPlaneHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Route: Equatable {
        case forwardAuth, verify, live, ready, notFound
        case methodNotAllowed(allow: AllowedMethods)
    }

    /// The `Allow` header of a 405 (an enum, so a scanned request head holds no reference).
    enum AllowedMethods: String {
        case post = "POST"
        case getAndHead = "GET, HEAD"
    }

    /// Where the connection is: answering requests as they are read; waiting for one verdict from
    /// Redis (later pipelined requests stay in the buffer), and whether to close once it is written;
    /// closing once what is owed is flushed (Connection: close, drain, errors); closed.
    enum State: Equatable {
        case reading
        case awaitingVerdict(thenClose: Bool)
        case closing
        case closed
    }

    private let node: DataPlaneContext
    private let scanner: HTTPRequestScanner
    private var state = State.reading
    /// Received bytes not yet answered (pipelined requests wait here).
    private var inbound: ByteBuffer?
    private var needsFlush = false
    /// The last response handed to the channel, recycled by `responseBuffer` for the next one.
    private var lastWritten: ByteBuffer?
    /// The peer's address, for the failure limiter (nil for a Unix socket); read on first use.
    private var peer: FailureLimiter.Client??
    /// Idle timeout without a handler or a clock read per request: a check every half timeout
    /// closes the connection when nothing was read since the previous check (so an idle
    /// connection closes between 1 and 1.5 times the timeout after its last request).
    private var readSinceCheck = true
    private var idleCheck: RepeatedTask?
    /// Armed while a request is partly received: its head and body must arrive within the request
    /// timeout of its first byte, or the connection gets 408 and is closed (slow or trickling
    /// clients cannot hold connections). Requests that arrive whole, the usual case, never arm it.
    private var requestDeadline: Scheduled<Void>?
    /// This loop's usage counter, looked up once per connection.
    private let usage: UsageRecorder.LoopCounter
    /// Gateway mode: this loop's upstream connections, and the request being proxied.
    private let gateway: UpstreamPool?
    private var exchange: GatewayExchange?
    /// A `100 Continue` was sent for the request whose body is arriving.
    private var continueSent = false

    init(node: DataPlaneContext, eventLoop: any EventLoop) {
        self.node = node
        self.usage = node.usage.counter(for: eventLoop)
        self.gateway = node.gatewayPools?.pool(for: eventLoop)
        self.scanner = HTTPRequestScanner(keyHeaders: node.settings.keyHeaders, acceptBearer: node.settings.acceptBearer,
                                          keyFormat: node.verifier.store.format,
                                          maxHeaderBytes: node.settings.maxHeaderBytes)
    }

    // MARK: reading

    func handlerAdded(context: ChannelHandlerContext) {
        let half = TimeAmount(node.settings.idleTimeout).nanoseconds / 2
        guard half > 0 else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        idleCheck = context.eventLoop.scheduleRepeatedTask(initialDelay: .nanoseconds(half), delay: .nanoseconds(half)) { _ in
            let (handler, context) = loopBound.value
            if !handler.readSinceCheck { handler.closeWhenIdle(context: context) }
            handler.readSinceCheck = false
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleCheck?.cancel()
        idleCheck = nil
        requestDeadline?.cancel()
        requestDeadline = nil
        exchange?.clientClosed()
        exchange = nil
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        exchange?.clientWritable()
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        readSinceCheck = true
        var bytes = unwrapInboundIn(data)
        if inbound == nil || inbound!.readableBytes == 0 {
            inbound = bytes
        } else {
            inbound!.writeBuffer(&bytes)
        }
        let limit = (node.settings.maxHeaderBytes + node.settings.maxBodyBytes) * node.settings.maxPipelinedRequests
            + (gateway == nil ? 0 : node.settings.gateway.maxBodyBytes) // one proxied body at a time
        if inbound!.readableBytes > limit {
            context.close(promise: nil) // pipelining far ahead without reading the answers
            return
        }
        processInbound(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded(context: context)
        context.fireChannelReadComplete()
    }

    private func flushIfNeeded(context: ChannelHandlerContext) {
        guard needsFlush else { return }
        needsFlush = false
        if state == .closing {
            state = .closed
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(NIOAny(context.channel.allocator.buffer(capacity: 0))).whenComplete { _ in
                loopBound.value.close(promise: nil)
            }
        } else {
            context.flush()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is DrainEvent { return closeWhenIdle(context: context) }
        context.fireUserInboundEventTriggered(event)
    }

    /// Idle or draining: close now, or after the response still owed. Bytes left in the buffer
    /// while no lookup is pending are an incomplete request, which is not worth waiting for.
    private func closeWhenIdle(context: ChannelHandlerContext) {
        if case .awaitingVerdict = state {
            state = .awaitingVerdict(thenClose: true)
        } else {
            context.close(promise: nil)
        }
    }

    /// After answering what the buffer held: arm the request deadline when a request is still
    /// incomplete, disarm it once that request has been answered.
    private func checkRequestDeadline(answered: Bool, context: ChannelHandlerContext) {
        if answered, let deadline = requestDeadline {
            deadline.cancel()
            requestDeadline = nil
        }
        guard requestDeadline == nil, state == .reading || state == .closing, (inbound?.readableBytes ?? 0) > 0 else { return }
        let timeout = TimeAmount(node.settings.requestTimeout)
        guard timeout.nanoseconds > 0 else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        requestDeadline = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = loopBound.value
            handler.requestDeadline = nil
            guard handler.state == .reading || handler.state == .closing, (handler.inbound?.readableBytes ?? 0) > 0 else { return }
            handler.node.metrics.requestTimeouts.add(1, ordering: .relaxed)
            handler.fail(.requestTimeout, body: Responses.requestTimeoutBody, context: context)
            handler.flushIfNeeded(context: context)
        }
    }

    // MARK: answering

    /// Answers every complete request in the buffer, in order, until one must wait for Redis.
    private func processInbound(context: ChannelHandlerContext) {
        var answered = false
        defer { checkRequestDeadline(answered: answered, context: context) }
        while state == .reading, var buffer = inbound, buffer.readableBytes > 0 {
            let consumed = buffer.withUnsafeReadableBytes { bytes -> Int? in
                switch scanner.scan(bytes) {
                case .incomplete:
                    return nil
                case .tooLarge:
                    fail(.headersTooLarge, body: Responses.headersTooLargeBody, context: context)
                    return nil
                case .malformed:
                    fail(.badRequest, body: Responses.badRequestBody, context: context)
                    return nil
                case .head(let head):
                    let proxied = gateway != nil && head.route == .notFound
                    if head.chunked {
                        return chunkedRequest(head, bytes: bytes, proxied: proxied, context: context)
                    }
                    if head.contentLength > (proxied ? node.settings.gateway.maxBodyBytes : node.settings.maxBodyBytes) {
                        fail(.payloadTooLarge, body: Responses.tooLargeBody, context: context)
                        return nil
                    }
                    guard bytes.count >= head.length + head.contentLength else { // body still arriving
                        if proxied { sendContinueIfExpected(head, context: context) }
                        return nil
                    }
                    continueSent = false
                    let body = UnsafeRawBufferPointer(rebasing: bytes[head.length..<head.length + head.contentLength])
                    handle(head, bytes: bytes, body: body, context: context)
                    return head.length + head.contentLength
                }
            }
            guard let consumed else { break }
            answered = true
            buffer.moveReaderIndex(forwardBy: consumed)
            inbound = buffer
        }
        if var buffer = inbound, buffer.readerIndex > 4096 {
            buffer.discardReadBytes()
            inbound = buffer
        }
    }

    /// `Expect: 100-continue`: the client waits for this before sending the body (gateway mode).
    private func sendContinueIfExpected(_ head: HTTPRequestScanner.Head, context: ChannelHandlerContext) {
        guard head.expectsContinue, !continueSent else { return }
        continueSent = true
        var buffer = context.channel.allocator.buffer(capacity: 32)
        buffer.writeString(Responses.continueLine)
        context.write(NIOAny(buffer), promise: nil)
        needsFlush = true
    }

    /// A request with a chunked body: read whole in gateway mode (then forwarded with a length),
    /// refused on Keygate's own routes as before. Returns the bytes consumed, nil to wait or stop.
    private func chunkedRequest(_ head: HTTPRequestScanner.Head, bytes: UnsafeRawBufferPointer, proxied: Bool,
                                context: ChannelHandlerContext) -> Int? {
        guard proxied else {
            fail(.badRequest, body: Responses.badRequestBody, context: context)
            return nil
        }
        switch ChunkedBody.decode(bytes, from: head.length, limit: node.settings.gateway.maxBodyBytes) {
        case .incomplete:
            sendContinueIfExpected(head, context: context)
            return nil
        case .malformed:
            fail(.badRequest, body: Responses.badRequestBody, context: context)
            return nil
        case .tooLarge:
            fail(.payloadTooLarge, body: Responses.tooLargeBody, context: context)
            return nil
        case .complete(let pieces, let end):
            continueSent = false
            var body: [UInt8] = []
            body.reserveCapacity(pieces.reduce(0) { $0 + $1.count })
            for piece in pieces { body.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[piece])) }
            body.withUnsafeBytes { handle(head, bytes: bytes, body: $0, context: context) }
            return end
        }
    }

    /// Answers malformed input once and closes. Never crashes, never echoes the input.
    private func fail(_ status: HTTPStatusLine, body: String, context: ChannelHandlerContext) {
        if status != .requestTimeout { node.metrics.count(.badRequest) }
        inbound = nil
        state = .closing
        writeJSON(status, body: body, close: true, omitBody: false, context: context)
    }

    private func handle(_ head: HTTPRequestScanner.Head, bytes: UnsafeRawBufferPointer, body: UnsafeRawBufferPointer,
                        context: ChannelHandlerContext) {
        let close = !head.keepAlive || node.isDraining
        if close { state = .closing }
        let omitBody = head.method == .head
        if head.keyInURL {
            // On every route: the key already leaked into logs on the way here; say so loudly.
            node.metrics.count(.badRequest)
            return writeJSON(.badRequest, body: Responses.keyInURLBody, close: close, omitBody: omitBody, context: context)
        }
        switch head.route {
        case .forwardAuth:
            authorize(head, bytes: bytes, close: close, omitBody: omitBody, context: context)
        case .verify:
            verifyBody(body, head: head, bytes: bytes, close: close, context: context)
        case .live:
            writeJSON(.ok, body: Responses.liveBody, close: close, omitBody: omitBody, context: context)
        case .ready:
            let ready = node.isReady()
            writeJSON(ready ? .ok : .serviceUnavailable, body: ready ? Responses.readyBody : Responses.notReadyBody,
                      close: close, omitBody: omitBody, context: context)
        case .notFound:
            if let gateway {
                proxy(head, bytes: bytes, body: body, close: close, pool: gateway, context: context)
            } else {
                writeJSON(.notFound, body: Responses.notFoundBody, close: close, omitBody: omitBody, context: context)
            }
        case .methodNotAllowed(let allow):
            writeJSON(.methodNotAllowed, body: Responses.methodBody, extraHeaders: "Allow: \(allow.rawValue)\r\n", close: close,
                      omitBody: false, context: context)
        }
    }

    /// A fixed JSON answer in the connection's recycled response buffer.
    private func writeJSON(_ status: HTTPStatusLine, body: String, extraHeaders: String = "", close: Bool, omitBody: Bool,
                           context: ChannelHandlerContext) {
        var buffer = responseBuffer(context: context)
        Responses.json(status, body: body, extraHeaders: extraHeaders, close: close, omitBody: omitBody, into: &buffer)
        write(buffer, context: context)
    }

    /// Where the request's one key is; nil after answering 400 (two keys) or 401 (none), as forward
    /// auth and gateway mode both do.
    private func singleKey(_ head: HTTPRequestScanner.Head, close: Bool, omitBody: Bool, context: ChannelHandlerContext) -> Range<Int>? {
        guard head.keyCount <= 1 else {
            node.metrics.count(.badRequest)
            writeJSON(.badRequest, body: Responses.multipleKeysBody, close: close, omitBody: omitBody, context: context)
            return nil
        }
        guard let keyRange = head.key else {
            node.metrics.count(.missing)
            var buffer = responseBuffer(context: context)
            Responses.unauthorized(close: close, omitBody: omitBody, into: &buffer)
            write(buffer, context: context)
            return nil
        }
        return keyRange
    }

    /// Forward auth (`/auth`, `/auth/...`, any method).
    private func authorize(_ head: HTTPRequestScanner.Head, bytes: UnsafeRawBufferPointer, close: Bool, omitBody: Bool,
                           context: ChannelHandlerContext) {
        guard let keyRange = singleKey(head, close: close, omitBody: omitBody, context: context) else { return }
        guard let cost = Self.cost(head, bytes) else {
            node.metrics.count(.badRequest)
            return writeJSON(.badRequest, body: Responses.badCostBody, close: close, omitBody: omitBody, context: context)
        }
        let step = node.check(UnsafeRawBufferPointer(rebasing: bytes[keyRange]), required: Self.scopes(head, bytes), cost: cost,
                              client: limiterClient(head, bytes, context: context), requestID: requestID(head, bytes),
                              usage: usage, on: context.eventLoop)
        switch step {
        case .done(let verification): // a cache hit or a refusal: rendered here, no closure
            var buffer = responseBuffer(context: context)
            node.renderAuth(verification, close: close, omitBody: omitBody, into: &buffer)
            write(buffer, context: context)
        case .pending(let future):
            waitForVerdict(future, context: context) { node, verification, buffer in
                node.renderAuth(verification, close: close, omitBody: omitBody, into: &buffer)
            }
        }
    }

    /// Gateway mode: any path that is not Keygate's own. The key is checked exactly as on `/auth`
    /// (same cache, refusals and counts; the scopes and the cost come from the route table, whatever
    /// `X-Keygate-*` fields the client sends), then the request goes upstream. The connection reads no
    /// further request until the response has been streamed back.
    private func proxy(_ head: HTTPRequestScanner.Head, bytes: UnsafeRawBufferPointer, body: UnsafeRawBufferPointer, close: Bool,
                       pool: UpstreamPool, context: ChannelHandlerContext) {
        let omitBody = head.method == .head
        if head.upgrade {
            return writeJSON(.notImplemented, body: Responses.upgradeBody, close: close, omitBody: omitBody, context: context)
        }
        guard let keyRange = singleKey(head, close: close, omitBody: omitBody, context: context) else { return }
        // What the upstream gets is taken from the receive buffer now: it moves on once this returns.
        let request = ProxyMessages.request(bytes, head: head, bodyLength: body.count, keyHeaders: scanner.keyHeaders,
                                            removeAuthorization: node.settings.acceptBearer, client: context.channel.remoteAddress,
                                            defaultHost: pool.defaultHost, allocator: context.channel.allocator)
        let payload = body.isEmpty ? nil : context.channel.allocator.buffer(bytes: body)
        let route = GatewayRoute.requirements(node.settings.gateway.routes, method: request.method.rawValue, path: request.path)
        let step = node.check(UnsafeRawBufferPointer(rebasing: bytes[keyRange]), required: route.scopes, cost: route.cost,
                              client: limiterClient(head, bytes, context: context), requestID: requestID(head, bytes),
                              usage: usage, on: context.eventLoop)
        state = .awaitingVerdict(thenClose: state == .closing) // busy until the response is back
        let proxied = ProxiedRequest(request: request, body: payload, http11: head.http11, close: close, omitBody: omitBody)
        switch step {
        case .done(let verification):
            forward(proxied, verification, pool: pool, context: context)
        case .pending(let future):
            let loopBound = NIOLoopBound((self, context, proxied, pool), eventLoop: context.eventLoop)
            future.whenComplete { result in
                let (handler, context, proxied, pool) = loopBound.value
                guard context.channel.isActive else { return }
                handler.forward(proxied, (try? result.get()) ?? .unavailable, pool: pool, context: context)
            }
        }
    }

    /// A proxied request waiting for its verdict.
    struct ProxiedRequest {
        var request: ProxyMessages.UpstreamRequest
        var body: ByteBuffer?
        var http11: Bool
        var close: Bool
        var omitBody: Bool
    }

    /// Sends an admitted request upstream; answers any other verdict as `/auth` does.
    private func forward(_ proxied: ProxiedRequest, _ verification: DataPlaneContext.Verification, pool: UpstreamPool,
                         context: ChannelHandlerContext) {
        switch verification {
        case .allowed(let verdict), .allowedWithin(let verdict, _, _):
            var request = proxied.request
            ProxyMessages.addIdentity(verdict, to: &request)
            let exchange = GatewayExchange(client: context, owner: self, pool: pool, request: request, body: proxied.body,
                                           clientHTTP11: proxied.http11, closeAfter: proxied.close, metrics: node.metrics,
                                           extraFields: node.rateLimitFields(verification, allocator: context.channel.allocator))
            self.exchange = exchange
            exchange.start()
        default: // refused, or could not check: the same answer as /auth, and nothing goes upstream
            var buffer = responseBuffer(context: context)
            node.renderAuth(verification, close: proxied.close, omitBody: proxied.omitBody, into: &buffer)
            write(buffer, context: context)
            proxyFinished(closeClient: proxied.close, context: context)
        }
    }

    /// The proxied request was answered: flush, then read on (or close) on a fresh stack when
    /// requests were pipelined behind it.
    func proxyFinished(closeClient: Bool, context: ChannelHandlerContext) {
        exchange = nil
        var thenClose = closeClient
        if case .awaitingVerdict(let close) = state { thenClose = thenClose || close }
        state = thenClose ? .closing : .reading
        needsFlush = true
        flushIfNeeded(context: context)
        guard state == .reading, (inbound?.readableBytes ?? 0) > 0 else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = loopBound.value
            guard context.channel.isActive, handler.state == .reading else { return }
            handler.processInbound(context: context)
            handler.flushIfNeeded(context: context)
        }
    }

    /// `POST /v1/verify` with `{"key": "..."}`: always 200 with `valid` and `code`, except 503 when the
    /// verdict cannot be established.
    private func verifyBody(_ body: UnsafeRawBufferPointer, head: HTTPRequestScanner.Head, bytes: UnsafeRawBufferPointer,
                            close: Bool, context: ChannelHandlerContext) {
        guard let request = VerifyJSON.request(from: body) else {
            node.metrics.count(.badRequest)
            return writeJSON(.badRequest, body: Responses.badVerifyBody, close: close, omitBody: false, context: context)
        }
        var key = request.key
        let client = limiterClient(head, bytes, context: context), requestID = requestID(head, bytes)
        let step = key.withUTF8 {
            node.check(UnsafeRawBufferPointer($0), cost: request.cost, client: client, requestID: requestID, usage: usage,
                       on: context.eventLoop)
        }
        switch step {
        case .done(let verification):
            var buffer = responseBuffer(context: context)
            node.renderVerify(verification, close: close, into: &buffer)
            write(buffer, context: context)
        case .pending(let future):
            waitForVerdict(future, context: context) { node, verification, buffer in
                node.renderVerify(verification, close: close, into: &buffer)
            }
        }
    }

    /// The proxy's `X-Request-Id` for the log line, only when request logs are on.
    private func requestID(_ head: HTTPRequestScanner.Head, _ bytes: UnsafeRawBufferPointer) -> String? {
        guard node.logsRequests, let range = head.requestID else { return nil }
        return DataPlaneContext.requestID(Self.text(bytes, range))
    }

    /// The address failures are counted against: the peer, or from `X-Forwarded-For` when the peer
    /// is a trusted proxy. Nil when the limiter is off or the peer is a Unix socket.
    private func limiterClient(_ head: HTTPRequestScanner.Head, _ bytes: UnsafeRawBufferPointer,
                               context: ChannelHandlerContext) -> FailureLimiter.Client? {
        guard node.limiter.isEnabled else { return nil }
        if peer == nil { peer = .some(FailureLimiter.Client(context.channel.remoteAddress)) }
        guard let peer = peer ?? nil else { return nil }
        return node.limiter.client(peer: peer, forwardedFor: head.forwardedFor.map { UnsafeRawBufferPointer(rebasing: bytes[$0]) })
    }

    /// Waits for the verdict (the future completes on this event loop), then writes it and answers
    /// the requests read meanwhile.
    private func waitForVerdict(_ future: EventLoopFuture<DataPlaneContext.Verification>, context: ChannelHandlerContext,
                                render: @escaping (DataPlaneContext, DataPlaneContext.Verification, inout ByteBuffer) -> Void) {
        state = .awaitingVerdict(thenClose: state == .closing)
        // The handler, its context and the renderer belong to this event loop.
        let loopBound = NIOLoopBound((self, context, render), eventLoop: context.eventLoop)
        future.whenComplete { result in
            let (handler, context, render) = loopBound.value
            if case .awaitingVerdict(let thenClose) = handler.state { handler.state = thenClose ? .closing : .reading }
            guard context.channel.isActive else { return }
            var buffer = handler.responseBuffer(context: context)
            render(handler.node, (try? result.get()) ?? .unavailable, &buffer)
            handler.write(buffer, context: context)
            handler.flushIfNeeded(context: context)
            // Continue with the requests read meanwhile on a fresh stack. A lookup that fails at once
            // (Redis unreachable, circuit open) completes synchronously, and continuing inline
            // recursed once per request until the stack overflowed (found by scripts/soak.py).
            context.eventLoop.execute {
                let (handler, context, _) = loopBound.value
                guard context.channel.isActive else { return }
                handler.processInbound(context: context)
                handler.flushIfNeeded(context: context)
            }
        }
    }

    private func write(_ buffer: ByteBuffer, context: ChannelHandlerContext) {
        context.write(NIOAny(buffer), promise: nil)
        lastWritten = buffer
        needsFlush = true
    }

    /// An empty buffer for the next response: the last one written, once the channel has let go of
    /// it (flushed), so a keep-alive connection allocates no buffer per request. While the channel
    /// still holds it (pipelined answers not flushed yet), `clear()` copies on write instead.
    private func responseBuffer(context: ChannelHandlerContext) -> ByteBuffer {
        guard var buffer = lastWritten else { return context.channel.allocator.buffer(capacity: 256) }
        lastWritten = nil
        buffer.clear()
        return buffer
    }

    /// Required scopes from `X-Keygate-Required-Scopes` (space or comma separated); empty without it.
    /// The proxy sets exactly one; a second one makes the requirement unsatisfiable (403) rather than
    /// letting a client-added header be ignored or merged.
    private static func scopes(_ head: HTTPRequestScanner.Head, _ bytes: UnsafeRawBufferPointer) -> [Substring] {
        guard let range = head.requiredScopes else { return [] }
        var scopes = text(bytes, range)[...].split(whereSeparator: { $0 == " " || $0 == "," })
        if head.extraScopeHeaders > 0 { scopes.append("\u{0}unsatisfiable") }
        return scopes
    }

    /// `X-Keygate-Cost` (0-1,000,000; 1 without it). Nil for anything else, or for two of them: the
    /// proxy sets exactly one, and a client must not pick the cheaper of two.
    private static func cost(_ head: HTTPRequestScanner.Head, _ bytes: UnsafeRawBufferPointer) -> Int? {
        guard let range = head.cost else { return 1 }
        guard head.extraCostHeaders == 0, !range.isEmpty, range.count <= 7 else { return nil }
        var cost = 0
        for index in range {
            let digit = bytes[index]
            guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
            cost = cost * 10 + Int(digit - UInt8(ascii: "0"))
        }
        return cost <= VerifyJSON.maximumCost ? cost : nil
    }

    private static func text(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }
}

/// Sent to every connection when the node drains for shutdown.
struct DrainEvent {}

/// The `/v1/verify` request body: `{"key": "...", "cost": 1}` (`cost` optional).
enum VerifyJSON {
    static let maximumCost = 1_000_000

    private struct Body: Decodable {
        var key: String
        var cost: Int?

        enum CodingKeys: String, CodingKey { case key, cost }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            key = try container.decode(String.self, forKey: .key)
            // Present means a number: `"cost": null` is a mistake, not "the default".
            cost = container.contains(.cost) ? try container.decode(Int.self, forKey: .cost) : nil
        }
    }

    /// Nil unless `key` is a string and `cost`, if present, a whole number in range (the decoder
    /// refuses `true`, `1.5`, `"1"` and `null`).
    static func request(from body: UnsafeRawBufferPointer) -> (key: String, cost: Int)? {
        guard !body.isEmpty, let decoded = try? JSONDecoder().decode(Body.self, from: Data(body)) else { return nil }
        let cost = decoded.cost ?? 1
        guard (0...maximumCost).contains(cost) else { return nil }
        return (decoded.key, cost)
    }
}
