import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A small HTTP/1.1 server on loopback, the API behind a gateway in tests. What it answers depends
/// on the path:
///
/// - `/echo...` (or any other path): 200 with JSON `{method, uri, headers: [[name, value]], body}`.
/// - `/chunked`: 200 with a chunked body of three chunks, `hello chunked world`.
/// - `/bytes/<n>`: 200 with `n` bytes (`Content-Length`), written 64 KiB at a time as fast as
///   the connection takes them; `bytesWritten` tracks how far it got.
/// - `/slow/<ms>`: the echo, after `ms` milliseconds.
/// - `/cut`: a head promising 1,000 bytes, 10 of them, then the connection closes.
public final class TestUpstream: Sendable {
    public let port: Int
    private let channel: any Channel
    private let state: State

    final class State: Sendable {
        let bytesWritten = Atomic<Int>(0)
        let requests = Atomic<Int>(0)
        let connections = Atomic<Int>(0)
    }

    /// Body bytes of `/bytes/<n>` the server has handed to the kernel so far.
    public var bytesWritten: Int { state.bytesWritten.load(ordering: .relaxed) }
    /// Requests received.
    public var requests: Int { state.requests.load(ordering: .relaxed) }
    /// Connections accepted (a gateway that keeps connections alive opens few).
    public var connections: Int { state.connections.load(ordering: .relaxed) }

    public static func start() async throws -> TestUpstream {
        let state = State()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                state.connections.add(1, ordering: .relaxed)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(state: state))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return TestUpstream(port: channel.localAddress?.port ?? 0, channel: channel, state: state)
    }

    private init(port: Int, channel: any Channel, state: State) {
        self.port = port
        self.channel = channel
        self.state = state
    }

    public func stop() async {
        try? await channel.close()
    }

    public var url: String { "http://127.0.0.1:\(port)" }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let state: State
        var head: HTTPRequestHead?
        var body: [UInt8] = []
        var remaining = 0 // of a /bytes response still to write

        init(state: State) { self.state = state }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
                body = []
            case .body(var buffer):
                body += buffer.readBytes(length: buffer.readableBytes) ?? []
            case .end:
                state.requests.add(1, ordering: .relaxed)
                guard let head else { return }
                respond(head, context: context)
            }
        }

        private func respond(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
            let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            if path == "/chunked" {
                var headers = HTTPHeaders()
                headers.add(name: "Transfer-Encoding", value: "chunked")
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
                for part in ["hello ", "chunked ", "world"] {
                    context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: part)))), promise: nil)
                }
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            } else if path.hasPrefix("/bytes/"), let count = Int(path.dropFirst("/bytes/".count)) {
                var headers = HTTPHeaders()
                headers.add(name: "Content-Length", value: String(count))
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
                remaining = count
                writeMore(context: context)
            } else if path.hasPrefix("/slow/"), let milliseconds = Int64(path.dropFirst("/slow/".count)) {
                let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                context.eventLoop.scheduleTask(in: .milliseconds(milliseconds)) {
                    let (handler, context) = loopBound.value
                    guard context.channel.isActive else { return }
                    handler.echo(head, context: context)
                }
            } else if path == "/cut" {
                var headers = HTTPHeaders()
                headers.add(name: "Content-Length", value: "1000")
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: "0123456789")))))
                    .whenComplete { _ in channel.close(promise: nil) }
            } else {
                echo(head, context: context)
            }
        }

        private func echo(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
            let reply: [String: Any] = ["method": head.method.rawValue, "uri": head.uri,
                                        "headers": head.headers.map { [$0.name, $0.value] },
                                        "body": String(decoding: body, as: UTF8.self)]
            let data = (try? JSONSerialization.data(withJSONObject: reply, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(data.count))
            headers.add(name: "Connection", value: "X-Hop")
            headers.add(name: "X-Hop", value: "for the gateway only")
            headers.add(name: "Keep-Alive", value: "timeout=5")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: data)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }

        /// Writes the next 64 KiB of a /bytes response while the connection is writable.
        private func writeMore(context: ChannelHandlerContext) {
            while remaining > 0 && context.channel.isWritable {
                let size = min(remaining, 64 * 1024)
                remaining -= size
                let state = self.state
                context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(repeating: UInt8(ascii: "x"), count: size)))))
                    .whenSuccess { state.bytesWritten.add(size, ordering: .relaxed) }
            }
            if remaining == 0 { context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil) }
        }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if remaining > 0 { writeMore(context: context) }
            context.fireChannelWritabilityChanged()
        }
    }
}
