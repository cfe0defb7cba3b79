import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes

/// Hummingbird's HTTP/1.1 channel with a request deadline in front: from the first byte of a
/// request, its head and body must arrive within `requestTimeout`, or the connection is closed. A
/// client that sends half a head and then nothing, or trickles a byte every second, cannot hold a
/// connection; Hummingbird's idle timeout alone only closes connections that send nothing at all.
struct ControlPlaneChannel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value

    let http1: HTTP1Channel
    let requestTimeout: TimeAmount

    init(responder: @escaping HTTPChannelHandler.Responder, idleTimeout: TimeAmount, requestTimeout: TimeAmount) {
        self.http1 = HTTP1Channel(responder: responder,
                                  configuration: .init(additionalChannelHandlers: [RequestEndHandler()], idleTimeout: idleTimeout))
        self.requestTimeout = requestTimeout
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let requestTimeout = self.requestTimeout
        return channel.eventLoop.makeCompletedFuture {
            // First in the pipeline: it sees the bytes before the HTTP decoder does.
            try channel.pipeline.syncOperations.addHandler(RequestDeadlineHandler(timeout: requestTimeout))
        }.flatMap {
            self.http1.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await http1.handle(value: value, logger: logger)
    }
}

/// Starts the deadline at the first byte of a request and closes the connection when it passes
/// before `RequestEndHandler` reports the request's end.
final class RequestDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let timeout: TimeAmount
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount) { self.timeout = timeout }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if deadline == nil, timeout.nanoseconds > 0, unwrapInboundIn(data).readableBytes > 0 {
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            deadline = context.eventLoop.scheduleTask(in: timeout) { loopBound.value.close(promise: nil) }
        }
        context.fireChannelRead(data)
    }

    /// The request whose first byte armed the deadline was read completely.
    func requestEnded() {
        deadline?.cancel()
        deadline = nil
    }

    func handlerRemoved(context: ChannelHandlerContext) { requestEnded() }
}

/// After HTTP decoding: tells the deadline handler when a request's last part arrived.
final class RequestEndHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    private var deadline: RequestDeadlineHandler?

    func handlerAdded(context: ChannelHandlerContext) {
        deadline = try? context.pipeline.syncOperations.handler(type: RequestDeadlineHandler.self)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .end = unwrapInboundIn(data) { deadline?.requestEnded() }
        context.fireChannelRead(data)
    }
}

/// RFC 9112 section 3.2: a request has exactly one Host. Hummingbird moves the first into the
/// request's authority and leaves any further one among the headers.
struct HostHeaderMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.head.authority != nil, request.headers[values: hostField].isEmpty else {
            throw Problem(.badRequest, "send exactly one Host header")
        }
        return try await next(request, context)
    }
}

private let hostField = HTTPField.Name("Host")!
