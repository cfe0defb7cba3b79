import NIOCore
import NIOPosix

/// A tiny HTTP/1.1 client over raw sockets: sends exactly the given bytes and returns exactly what
/// came back, so tests can send malformed requests and compare responses byte for byte.
public enum RawHTTP {
    public struct Response: Sendable {
        public var raw: String
        public var status: Int
        public var headers: [(String, String)]
        public var body: String

        public func header(_ name: String) -> String? {
            headers.first { $0.0.lowercased() == name.lowercased() }?.1
        }
    }

    /// Sends `request` (it should say `Connection: close`) and reads until the server closes.
    public static func send(_ request: String, port: Int, timeout: Duration = .seconds(10)) async throws -> Response {
        let raw = try await exchange(Array(request.utf8), port: port, timeout: timeout)
        return parse(raw)
    }

    /// A GET with the given extra header lines.
    public static func get(_ path: String, port: Int, headers: [String] = []) async throws -> Response {
        var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        for header in headers { request += header + "\r\n" }
        return try await send(request + "\r\n", port: port)
    }

    public static func exchange(_ bytes: [UInt8], port: Int, timeout: Duration = .seconds(10)) async throws -> String {
        try await converse(port: port, timeout: timeout) { channel in
            // A server may answer and close before reading (a refused connection): keep what it sent.
            try? await channel.writeAndFlush(channel.allocator.buffer(bytes: bytes)).get()
        }
    }

    /// Sends each part, `pause` apart, and returns what came back once the server closes (or after
    /// `timeout`): a head first, then its body, as a client that waits for `100 Continue` does.
    public static func exchange(parts: [[UInt8]], pause: Duration, port: Int, timeout: Duration = .seconds(10)) async throws -> String {
        try await converse(port: port, timeout: timeout) { channel in
            for (index, part) in parts.enumerated() where channel.isActive {
                if index > 0 { try? await Task.sleep(for: pause) }
                try? await channel.writeAndFlush(channel.allocator.buffer(bytes: part)).get()
            }
        }
    }

    /// Sends `bytes` one at a time, `every` apart, and returns what came back once the server closes
    /// (or after `timeout`): a slow client.
    public static func trickle(_ bytes: [UInt8], every interval: Duration, port: Int, timeout: Duration) async throws -> String {
        try await converse(port: port, timeout: timeout) { channel in
            for (index, byte) in bytes.enumerated() where channel.isActive {
                try? await channel.writeAndFlush(channel.allocator.buffer(bytes: [byte])).get()
                if index > 0 { try? await Task.sleep(for: interval) }
            }
        }
    }

    /// Connects, runs `send` while collecting what the server sends, and returns that once the server
    /// closes the connection (or after `timeout`, when it is closed here).
    private static func converse(port: Int, timeout: Duration,
                                 _ send: @escaping @Sendable (any Channel) async -> Void) async throws -> String {
        let collector = CollectingHandler()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(2))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let timer = channel.eventLoop.scheduleTask(in: TimeAmount.nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000)) {
            channel.close(promise: nil)
        }
        let sender = Task { await send(channel) }
        try await channel.closeFuture.get()
        timer.cancel()
        sender.cancel()
        return try await channel.eventLoop.submit { collector.text }.get()
    }

    static func parse(_ raw: String) -> Response {
        let parts = raw.components(separatedBy: "\r\n\r\n")
        let headLines = (parts.first ?? "").components(separatedBy: "\r\n")
        let status = headLines.first.flatMap { line in line.split(separator: " ").dropFirst().first.flatMap { Int($0) } } ?? 0
        let headers = headLines.dropFirst().compactMap { line -> (String, String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        return Response(raw: raw, status: status, headers: headers, body: parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    private final class CollectingHandler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var text = ""
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            text += String(buffer: unwrapInboundIn(data))
        }
    }
}

import Foundation
