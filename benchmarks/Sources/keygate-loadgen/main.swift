// An open-loop HTTP/1.1 load generator, free of coordinated omission (the wrk2 method):
//
//   keygate-loadgen --port 8080 --rate 20000 --duration 10 [--connections 64] [--path /auth]
//                   [--keys-file keys.txt] [--warmup 1] [--spin false] [--ports 8080,8090] [--window-ms 2000]
//
// Every connection has a fixed schedule of intended send times (rate / connections per second,
// staggered across connections). A request is sent at its intended time, or as soon as the
// connection's previous response arrives if that is later; its latency is measured from the
// intended time, so a stall is charged to every request it delayed instead of being hidden by a
// client that stopped sending. Latencies go into an HdrHistogram (1 ns to 60 s, 3 digits).
// Requests rotate over the keys of --keys-file in X-API-Key (none without it).
//
// The loop busy-polls epoll (timeout 0) on one thread instead of sleeping until the next send:
// on these VMs a timer wake-up from idle came tens of microseconds to milliseconds late (measured
// with SwiftNIO's scheduled tasks: send lag p50 60 us, p99 8-18 ms at 2,000-20,000 req/s), and that
// lateness would be reported as server latency. It costs the generator's core, which run.sh gives
// it alone. `send_lag_*` reports how late requests actually left (should be a few microseconds).
// `--spin false` sleeps up to 1 ms between polls instead: for background load whose latency is
// not measured, so several generators can share a core with a measuring client.
//
// `--ports` spreads the connections round robin over several servers (nodes sharing a rate limit).
// `--window-ms W` also counts the 200s per fixed window of the wall clock (Unix ms / W, as Keygate's
// rate-limit windows are cut), by the time each request was sent, and prints them as
// `windows_200=<window>:<count>,...`, for the admitted-count error of a limit across nodes.
//
// Prints one line of key=value pairs: sent, completed, status counts, errors, achieved rate,
// p50/p90/p99/p99.9/max in microseconds (after the warm-up) and the send lag.
import Foundation
import CEpoll
import Histogram
#if canImport(Glibc)
import Glibc
#endif

struct Options {
    var host = "127.0.0.1", ports = [8080], path = "/auth"
    var rate = 1_000.0, duration = 10.0, warmup = 1.0
    var connections = 64
    var keysFile: String?
    var spin = true
    var windowMilliseconds: Int64 = 0

    init(_ arguments: [String]) {
        var iterator = arguments.makeIterator()
        while let flag = iterator.next() {
            guard let value = iterator.next() else { fatalError("\(flag) needs a value") }
            switch flag {
            case "--host": host = value
            case "--port": ports = [Int(value)!]
            case "--ports": ports = value.split(separator: ",").map { Int($0)! }
            case "--window-ms": windowMilliseconds = Int64(value)!
            case "--path": path = value
            case "--rate": rate = Double(value)!
            case "--duration": duration = Double(value)!
            case "--warmup": warmup = Double(value)!
            case "--connections": connections = Int(value)!
            case "--keys-file": keysFile = value
            case "--spin": spin = value != "false"
            default: fatalError("unknown flag \(flag)")
            }
        }
        precondition(rate > 0 && duration > 0 && connections > 0, "rate, duration and connections must be positive")
    }
}

func wallMilliseconds() -> Int64 {
    var time = timespec()
    clock_gettime(CLOCK_REALTIME, &time)
    return Int64(time.tv_sec) * 1_000 + Int64(time.tv_nsec) / 1_000_000
}

func monotonicNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// One keep-alive connection with its own schedule and at most one request in flight.
final class Connection {
    let fd: Int32
    var nextIntended: UInt64
    var inFlight: UInt64?
    /// When the request in flight left (Unix ms), with --window-ms.
    var sentAtWall: Int64 = 0
    var received: [UInt8] = []
    var open = true

    init(fd: Int32, firstIntended: UInt64) {
        self.fd = fd
        self.nextIntended = firstIntended
    }

    static func connect(host: String, port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        precondition(fd >= 0, "socket failed")
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &address.sin_addr)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        precondition(result == 0, "cannot connect to \(host):\(port): errno \(errno)")
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }
}

/// Parses complete responses (head plus Content-Length body) off the front of a connection's bytes.
enum ResponseParser {
    private static let contentLengthName = Array("\ncontent-length:".utf8)

    /// The status and length of the first complete response, if it has fully arrived.
    static func first(_ bytes: UnsafeRawBufferPointer) -> (status: Int, length: Int)? {
        guard let headEnd = headEnd(bytes), headEnd >= 12 else { return nil }
        let status = Int(bytes[9] &- 48) * 100 + Int(bytes[10] &- 48) * 10 + Int(bytes[11] &- 48)
        let length = headEnd + 4 + contentLength(UnsafeRawBufferPointer(rebasing: bytes[0..<headEnd]))
        return bytes.count >= length ? (status, length) : nil
    }

    private static func headEnd(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var index = 3
        while index < bytes.count {
            if bytes[index] == 10, bytes[index - 1] == 13, bytes[index - 2] == 10, bytes[index - 3] == 13 { return index - 3 }
            index += 1
        }
        return nil
    }

    private static func contentLength(_ head: UnsafeRawBufferPointer) -> Int {
        let name = contentLengthName
        var index = 0
        outer: while index + name.count <= head.count {
            for offset in 0..<name.count where head[index + offset] | (offset > 0 ? 0x20 : 0) != name[offset] {
                index += 1
                continue outer
            }
            var value = 0, cursor = index + name.count
            while cursor < head.count, head[cursor] == 32 { cursor += 1 }
            while cursor < head.count, head[cursor] >= 48, head[cursor] <= 57 {
                value = value * 10 + Int(head[cursor] - 48)
                cursor += 1
            }
            return value
        }
        return 0
    }
}

let options = Options(Array(CommandLine.arguments.dropFirst()))
let keys: [String?] = try options.keysFile.map { path in
    try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { String($0) }.filter { !$0.isEmpty }
} ?? [nil]
precondition(!keys.isEmpty, "no keys in \(options.keysFile ?? "")")
let requests: [[UInt8]] = keys.map { key in
    var text = "GET \(options.path) HTTP/1.1\r\nHost: \(options.host)\r\n"
    if let key { text += "X-API-Key: \(key)\r\n" }
    return Array((text + "\r\n").utf8)
}

/// The run: every connection and counter, used from this one thread only.
final class Generator {
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    var sendLag = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .two)
    var sent = 0, completed = 0, errors = 0, nextRequest = 0
    var statuses: [Int: Int] = [:]
    /// 200s per rate-limit window (--window-ms).
    var admittedPerWindow: [Int64: Int] = [:]
    let windowMilliseconds: Int64
    let requests: [[UInt8]]
    let epoll = cepoll_create()
    var connections: [Connection] = []
    let interval: UInt64, recordFrom: UInt64, stopAt: UInt64
    let pollTimeoutMilliseconds: Int32

    init(options: Options, requests: [[UInt8]]) {
        self.requests = requests
        windowMilliseconds = options.windowMilliseconds
        pollTimeoutMilliseconds = options.spin ? 0 : 1
        interval = UInt64(Double(options.connections) / options.rate * 1e9)
        let start = monotonicNanoseconds() + 100_000_000
        for index in 0..<options.connections {
            let fd = Connection.connect(host: options.host, port: options.ports[index % options.ports.count])
            cepoll_add(epoll, fd, UInt32(index))
            connections.append(Connection(fd: fd, firstIntended: start + interval * UInt64(index) / UInt64(options.connections)))
        }
        recordFrom = start + UInt64(options.warmup * 1e9)
        stopAt = recordFrom + UInt64(options.duration * 1e9)
    }

    func pump(_ connection: Connection, now: UInt64) {
        guard connection.open, connection.inFlight == nil, connection.nextIntended <= now, connection.nextIntended < stopAt else { return }
        if connection.nextIntended >= recordFrom { sendLag.record(now - connection.nextIntended) }
        nextRequest = (nextRequest + 1) % requests.count
        let request = requests[nextRequest]
        let written = request.withUnsafeBytes { send(connection.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard written == request.count else { // a request is far smaller than the socket buffer
            errors += 1
            connection.open = false
            return
        }
        connection.inFlight = connection.nextIntended
        if windowMilliseconds > 0 { connection.sentAtWall = wallMilliseconds() }
        connection.nextIntended += interval
        sent += 1
    }

    /// Runs the schedule, then gives answers still in flight two seconds.
    func run() {
        let drainUntil = stopAt + 2_000_000_000
        var tokens = [UInt32](repeating: 0, count: 256)
        var scratch = [UInt8](repeating: 0, count: 65_536)
        while true {
            let now = monotonicNanoseconds()
            if now >= drainUntil || (now >= stopAt && !connections.contains { $0.open && $0.inFlight != nil }) { break }
            let ready = Int(cepoll_poll(epoll, &tokens, Int32(tokens.count), pollTimeoutMilliseconds))
            for token in tokens.prefix(max(ready, 0)) {
                read(connections[Int(token)], into: &scratch)
            }
            let after = monotonicNanoseconds()
            for connection in connections { pump(connection, now: after) }
        }
        for connection in connections { close(connection.fd) }
    }

    private func read(_ connection: Connection, into scratch: inout [UInt8]) {
        let count = scratch.withUnsafeMutableBytes { recv(connection.fd, $0.baseAddress, $0.count, 0) }
        if count <= 0 {
            if count == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) {
                if connection.open && (connection.inFlight != nil || connection.nextIntended < stopAt) { errors += 1 }
                connection.open = false
                connection.inFlight = nil
                cepoll_remove(epoll, connection.fd)
            }
            return
        }
        connection.received.append(contentsOf: scratch[0..<count])
        let arrived = monotonicNanoseconds()
        while let response = connection.received.withUnsafeBytes({ ResponseParser.first($0) }) {
            connection.received.removeFirst(response.length)
            if let intended = connection.inFlight, intended >= recordFrom {
                histogram.record(arrived &- intended)
                completed += 1
                statuses[response.status, default: 0] += 1
                if windowMilliseconds > 0 && response.status == 200 {
                    admittedPerWindow[connection.sentAtWall / windowMilliseconds, default: 0] += 1
                }
            }
            connection.inFlight = nil
            pump(connection, now: arrived)
        }
    }
}

let generator = Generator(options: options, requests: requests)
generator.run()

func micros(_ value: UInt64) -> String { String(format: "%.1f", Double(value) / 1_000) }
print(([
    "target_rate=\(Int(options.rate))",
    "achieved_rate=\(Int(Double(generator.completed) / options.duration))",
    "sent=\(generator.sent) completed=\(generator.completed) errors=\(generator.errors)",
    generator.statuses.sorted { $0.key < $1.key }.map { "status_\($0.key)=\($0.value)" }.joined(separator: " "),
    "p50_us=\(micros(generator.histogram.valueAtPercentile(50)))",
    "p90_us=\(micros(generator.histogram.valueAtPercentile(90)))",
    "p99_us=\(micros(generator.histogram.valueAtPercentile(99)))",
    "p999_us=\(micros(generator.histogram.valueAtPercentile(99.9)))",
    "max_us=\(micros(generator.histogram.max))",
    "send_lag_p50_us=\(micros(generator.sendLag.valueAtPercentile(50))) send_lag_p99_us=\(micros(generator.sendLag.valueAtPercentile(99)))",
] + (options.windowMilliseconds > 0
    ? ["windows_200=" + generator.admittedPerWindow.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ",")] : [])
).joined(separator: " "))
