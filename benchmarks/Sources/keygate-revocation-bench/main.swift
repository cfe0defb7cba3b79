// Revocation propagation across nodes: for each of N keys cached as valid on every node, revoke it
// (through the same KeyStore and Lua script as `keygate keys revoke`) and time, per node, from the
// revoke call returning to the first 401 that node sends for it.
//
//   keygate-revocation-bench --url redis://127.0.0.1:6379 --namespace bench --ports 8080,8082,8084 \
//                            --count 1000 [--csv samples.csv]
//
// Each node is polled back to back on its own keep-alive connection (one request in flight), so the
// resolution is one loopback round trip (tens of microseconds) and a sample includes the round trip
// of the answering request. Prints p50/p99/max in milliseconds over all nodes and per node.
import Foundation
import KeygateCore
import KeygateRedis
import NIOCore
import NIOPosix

var url = "redis://127.0.0.1:6379", namespace = "keygate", count = 1_000, ports: [Int] = [], csv: String?
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let flag = arguments.next() {
    guard let value = arguments.next() else { fatalError("\(flag) needs a value") }
    switch flag {
    case "--url": url = value
    case "--namespace": namespace = value
    case "--count": count = Int(value)!
    case "--ports": ports = value.split(separator: ",").map { Int($0)! }
    case "--csv": csv = value
    default: fatalError("unknown flag \(flag)")
    }
}
precondition(!ports.isEmpty, "--ports is required")

/// A keep-alive connection that sends one GET /auth at a time and reports each response's status.
final class Prober: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private var received = ByteBuffer()
    private var pending: EventLoopPromise<Int>?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        received.writeBuffer(&bytes)
        let text = String(buffer: received)
        guard let headEnd = text.range(of: "\r\n\r\n") else { return }
        let head = text[..<headEnd.lowerBound]
        let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
            .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
        let total = text.utf8.distance(from: text.startIndex, to: headEnd.upperBound) + length
        guard received.readableBytes >= total else { return }
        received.moveReaderIndex(forwardBy: total)
        received.discardReadBytes()
        let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        let promise = pending
        pending = nil
        promise?.succeed(status)
    }

    func channelInactive(context: ChannelHandlerContext) {
        pending?.fail(ChannelError.ioOnClosedChannel)
    }

    /// On the channel's loop: sends one request for `key`, completes with the status.
    func send(_ key: String, on channel: any Channel) -> EventLoopFuture<Int> {
        let promise = channel.eventLoop.makePromise(of: Int.self)
        pending = promise
        channel.writeAndFlush(ByteBuffer(string: "GET /auth HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: \(key)\r\n\r\n"), promise: nil)
        return promise.futureResult
    }

    /// Polls until the node answers 401; completes with the uptime nanoseconds of that answer.
    func untilRefused(_ key: String, on channel: any Channel, deadline: UInt64) -> EventLoopFuture<UInt64> {
        send(key, on: channel).flatMap { status in
            let now = NIODeadline.now().uptimeNanoseconds
            if status == 401 { return channel.eventLoop.makeSucceededFuture(now) }
            if now > deadline { return channel.eventLoop.makeFailedFuture(BenchError("still \(status) after 5 s")) }
            return self.untilRefused(key, on: channel, deadline: deadline)
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
var configuration = try RedisConfiguration(url: url)
configuration.commandTimeout = .seconds(30)
let redis = try RedisClient(configuration: configuration, eventLoopGroup: group)
let store = KeyStore(redis: redis, layout: try KeyStoreLayout(namespace: namespace), format: try KeyFormat(), hasher: KeyHasher())

var probers: [(Prober, any Channel)] = []
for port in ports {
    let prober = Prober()
    let channel = try await ClientBootstrap(group: group)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(prober) } }
        .connect(host: "127.0.0.1", port: port).get()
    probers.append((prober, channel))
}

var samples: [[Double]] = Array(repeating: [], count: ports.count) // milliseconds, per node
for _ in 0..<count {
    let created = try await store.create(.init(user: "revocation-bench"), actor: "bench")
    for (prober, channel) in probers { // cached as valid on every node
        let status = try await channel.eventLoop.flatSubmit { prober.send(created.key, on: channel) }.get()
        guard status == 200 else { throw BenchError("a new key got \(status) before its revocation") }
    }
    try await store.revoke(id: created.record.id, actor: "bench")
    let returned = NIODeadline.now().uptimeNanoseconds
    let deadline = returned + 5_000_000_000
    let refusals = probers.map { prober, channel in
        channel.eventLoop.flatSubmit { prober.untilRefused(created.key, on: channel, deadline: deadline) }
    }
    for (node, refusal) in refusals.enumerated() {
        samples[node].append(Double(try await refusal.get() &- returned) / 1e6)
    }
}

func percentile(_ sorted: [Double], _ p: Double) -> Double { // nearest rank
    let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
    return sorted[max(0, min(sorted.count - 1, rank - 1))]
}
func summary(_ values: [Double]) -> String {
    let sorted = values.sorted()
    return String(format: "p50_ms=%.3f p99_ms=%.3f max_ms=%.3f", percentile(sorted, 50), percentile(sorted, 99), sorted.last ?? 0)
}
if let csv {
    var text = "revocation,node_port,milliseconds\n"
    for (node, values) in samples.enumerated() {
        for (index, value) in values.enumerated() { text += "\(index),\(ports[node]),\(String(format: "%.4f", value))\n" }
    }
    try text.write(toFile: csv, atomically: true, encoding: .utf8)
}
print("revocations=\(count) nodes=\(ports.count) samples=\(samples.joined().count) \(summary(Array(samples.joined())))")
for (node, values) in samples.enumerated() { print("node=\(ports[node]) \(summary(values))") }
for (_, channel) in probers { try? await channel.close() }
await redis.shutdown()
try await group.shutdownGracefully()
