import Foundation
import KeygateCore
import NIOCore
import NIOHTTP1

/// One data-plane connection: reads HTTP/1.1 requests and answers them in order.
///
/// A cache hit is decided and written synchronously on the event loop; a miss waits for the Redis
/// lookup on this loop's own connection while later pipelined requests queue behind it. Responses are
/// written as bytes and flushed once per read burst.
final class DataPlaneHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer

    private struct Request {
        var head: HTTPRequestHead
        var route: Route
        var body: ByteBuffer?
        var bodyTooLarge = false
        var headersTooLarge = false
    }

    enum Route {
        case forwardAuth, verify, live, ready, notFound, methodNotAllowed
    }

    private let node: DataPlaneContext
    private var reading: Request?
    private var queued = CircularBuffer<Request>(initialCapacity: 4)
    /// A response is waiting for Redis; later requests wait in `queued`.
    private var waitingForRedis = false
    private var needsFlush = false
    /// Close once the responses owed have been written (Connection: close, drain, protocol error).
    private var closeAfterResponses = false

    init(node: DataPlaneContext) {
        self.node = node
    }

    // MARK: reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            var headerBytes = head.uri.utf8.count + 16
            for (name, value) in head.headers { headerBytes += name.utf8.count + value.utf8.count + 4 }
            var request = Request(head: head, route: Self.route(head))
            request.headersTooLarge = headerBytes > node.settings.maxHeaderBytes
            if request.route == .verify { request.body = context.channel.allocator.buffer(capacity: 256) }
            reading = request
        case .body(var chunk):
            guard var request = reading, request.body != nil, !request.bodyTooLarge else { return }
            if request.body!.readableBytes + chunk.readableBytes > node.settings.maxBodyBytes {
                request.bodyTooLarge = true
                request.body = nil
            } else {
                request.body!.writeBuffer(&chunk)
            }
            reading = request
        case .end:
            guard let request = reading else { return }
            reading = nil
            if queued.count >= node.settings.maxPipelinedRequests {
                context.close(promise: nil) // a client pipelining without reading its answers
                return
            }
            queued.append(request)
            processQueue(context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded(context: context)
        context.fireChannelReadComplete()
    }

    private func flushIfNeeded(context: ChannelHandlerContext) {
        guard needsFlush else { return }
        needsFlush = false
        if closeAfterResponses && queued.isEmpty && !waitingForRedis {
            context.writeAndFlush(NIOAny(context.channel.allocator.buffer(capacity: 0))).whenComplete { _ in context.close(promise: nil) }
        } else {
            context.flush()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent || event is DrainEvent {
            if reading == nil && queued.isEmpty && !waitingForRedis {
                context.close(promise: nil)
            } else {
                closeAfterResponses = true
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Malformed HTTP: answer once, then close. Never crash, never echo the input.
        var buffer = context.channel.allocator.buffer(capacity: 256)
        if let parserError = error as? HTTPParserError, case .headerOverflow = parserError {
            Responses.json(.headersTooLarge, body: Responses.headersTooLargeBody, close: true, into: &buffer)
        } else {
            Responses.json(.badRequest, body: Responses.badRequestBody, close: true, into: &buffer)
        }
        node.metrics.count(.badRequest)
        context.writeAndFlush(NIOAny(buffer)).whenComplete { _ in context.close(promise: nil) }
    }

    // MARK: answering

    private func processQueue(context: ChannelHandlerContext) {
        while !waitingForRedis, let request = queued.popFirst() {
            let close = !request.head.isKeepAlive || closeAfterResponses || node.isDraining
            handle(request, close: close, context: context)
            if close {
                closeAfterResponses = true
                queued.removeAll()
            }
        }
    }

    private func handle(_ request: Request, close: Bool, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 256)
        let omitBody = request.head.method == .HEAD
        if request.headersTooLarge {
            Responses.json(.headersTooLarge, body: Responses.headersTooLargeBody, close: close, omitBody: omitBody, into: &buffer)
            return write(buffer, context: context)
        }
        switch request.route {
        case .forwardAuth:
            authorize(request, close: close, context: context)
            return
        case .verify:
            verifyBody(request, close: close, context: context)
            return
        case .live:
            Responses.json(.ok, body: Responses.liveBody, close: close, omitBody: omitBody, into: &buffer)
        case .ready:
            let ready = node.isReady()
            Responses.json(ready ? .ok : .serviceUnavailable, body: ready ? Responses.readyBody : Responses.notReadyBody,
                           close: close, omitBody: omitBody, into: &buffer)
        case .notFound:
            Responses.json(.notFound, body: Responses.notFoundBody, close: close, omitBody: omitBody, into: &buffer)
        case .methodNotAllowed:
            Responses.json(.methodNotAllowed, body: Responses.methodBody, extraHeaders: "Allow: POST\r\n", close: close, into: &buffer)
        }
        write(buffer, context: context)
    }

    /// Forward auth (`/auth`, `/auth/...`, any method).
    private func authorize(_ request: Request, close: Bool, context: ChannelHandlerContext) {
        let omitBody = request.head.method == .HEAD
        var buffer = context.channel.allocator.buffer(capacity: 256)
        switch node.extractor.extract(request.head) {
        case .inURL:
            node.metrics.count(.badRequest)
            Responses.json(.badRequest, body: Responses.keyInURLBody, close: close, omitBody: omitBody, into: &buffer)
        case .multiple:
            node.metrics.count(.badRequest)
            Responses.json(.badRequest, body: Responses.multipleKeysBody, close: close, omitBody: omitBody, into: &buffer)
        case .none:
            node.metrics.count(.missing)
            Responses.unauthorized(close: close, omitBody: omitBody, into: &buffer)
        case .key(let key):
            let required = KeyExtractor.requiredScopes(request.head)
            let requestID = node.logsRequests ? DataPlaneContext.requestID(request.head.headers.first(name: "X-Request-Id")) : nil
            switch node.verify(key, on: context.eventLoop) {
            case .decided(let decision, let hash):
                node.writeAuthDecision(decision, hash: hash, required: required, close: close, omitBody: omitBody,
                                       requestID: requestID, eventLoop: context.eventLoop, into: &buffer)
            case .pending(let future, let hash):
                waitForRedis(future, context: context) { decision, buffer in
                    self.node.writeAuthDecision(decision, hash: hash, required: required, close: close, omitBody: omitBody,
                                                requestID: requestID, eventLoop: context.eventLoop, into: &buffer)
                }
                return
            }
        }
        write(buffer, context: context)
    }

    /// `POST /v1/verify` with `{"key": "..."}`: always 200 with `valid` and `code`, except 503 when the
    /// verdict cannot be established.
    private func verifyBody(_ request: Request, close: Bool, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 256)
        guard !request.bodyTooLarge else {
            Responses.json(.payloadTooLarge, body: Responses.tooLargeBody, close: true, into: &buffer)
            closeAfterResponses = true
            return write(buffer, context: context)
        }
        guard let body = request.body, let key = VerifyJSON.key(from: body) else {
            node.metrics.count(.badRequest)
            Responses.json(.badRequest, body: Responses.badVerifyBody, close: close, into: &buffer)
            return write(buffer, context: context)
        }
        switch node.verify(key, on: context.eventLoop) {
        case .decided(let decision, let hash):
            node.writeVerifyDecision(decision, hash: hash, close: close, eventLoop: context.eventLoop, into: &buffer)
            write(buffer, context: context)
        case .pending(let future, let hash):
            waitForRedis(future, context: context) { decision, buffer in
                self.node.writeVerifyDecision(decision, hash: hash, close: close, eventLoop: context.eventLoop, into: &buffer)
            }
        }
    }

    /// Holds the connection's later requests until the lookup answers, then writes and continues.
    private func waitForRedis(_ future: EventLoopFuture<Decision>, context: ChannelHandlerContext,
                              render: @escaping (Decision, inout ByteBuffer) -> Void) {
        waitingForRedis = true
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        future.hop(to: context.eventLoop).whenComplete { result in
            let (handler, context) = loopBound.value
            handler.waitingForRedis = false
            guard context.channel.isActive else { return }
            var buffer = context.channel.allocator.buffer(capacity: 256)
            render((try? result.get()) ?? .unavailable, &buffer)
            handler.write(buffer, context: context)
            handler.processQueue(context: context)
            handler.flushIfNeeded(context: context)
        }
    }

    private func write(_ buffer: ByteBuffer, context: ChannelHandlerContext) {
        context.write(NIOAny(buffer), promise: nil)
        needsFlush = true
    }

    static func route(_ head: HTTPRequestHead) -> Route {
        let uri = head.uri
        let path = uri.firstIndex(of: "?").map { uri[..<$0] } ?? uri[...]
        if path == "/auth" || path.hasPrefix("/auth/") { return .forwardAuth }
        switch path {
        case "/v1/verify": return head.method == .POST ? .verify : .methodNotAllowed
        case "/health/live": return .live
        case "/health/ready": return .ready
        default: return .notFound
        }
    }
}

/// Sent to every connection when the node drains for shutdown.
struct DrainEvent {}

/// The `/v1/verify` request body.
enum VerifyJSON {
    static func key(from body: ByteBuffer) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any],
              let key = object["key"] as? String else { return nil }
        return key
    }
}
