// Throughput of the KeygateRedis client, shaped like redis-benchmark so the two can be compared:
//
//   redis-client-bench --url redis://127.0.0.1:6379 --mode pipelined --clients 50 --pipeline 16 --requests 1000000
//   redis-client-bench --url ... --mode unpipelined --clients 50 --requests 200000
//
// `clients` concurrent callers share the client's connections (one per event loop), each sending
// GET of one key: `pipelined` sends batches of `pipeline` commands with one flush, `unpipelined`
// sends one command and waits for its reply. `--keys N` spreads the GETs over N keys (on a
// Cluster URL, over its primaries): with `--spread command` each pipeline mixes keys and is split
// per primary; with `--spread caller` each caller keeps to one key, so its pipelines go to one
// primary, as redis-benchmark --cluster's clients do. Prints one line: "<mode> <requests/s>".
import Foundation
import KeygateRedis
import NIOCore
import NIOPosix

struct Options {
    var url = "redis://127.0.0.1:6379"
    var mode = "pipelined"
    var clients = 50
    var pipeline = 16
    var requests = 1_000_000
    var threads = 1
    var keys = 1
    var spread = "command"
    /// `event-loop` runs the callers' tasks on NIO's event loop (NIO's global-executor option), as a
    /// server whose handlers live on the loop would; `default` uses Swift's cooperative pool, which
    /// adds two thread hops per command or batch.
    var executor = "event-loop"

    init(_ arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let flag = iterator.next() {
            guard let value = iterator.next() else { fatalError("\(flag) needs a value") }
            switch flag {
            case "--url": url = value
            case "--mode": mode = value
            case "--clients": clients = Int(value)!
            case "--pipeline": pipeline = Int(value)!
            case "--requests": requests = Int(value)!
            case "--threads": threads = Int(value)!
            case "--keys": keys = Int(value)!
            case "--spread": spread = value
            case "--executor": executor = value
            default: fatalError("unknown flag \(flag)")
            }
        }
    }
}

let options = Options(CommandLine.arguments)
var configuration = try RedisConfiguration(url: options.url)
configuration.commandTimeout = .seconds(10)
let group: MultiThreadedEventLoopGroup
if options.executor == "event-loop" {
    NIOSingletons.groupLoopCountSuggestion = options.threads
    guard NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor() else {
        fatalError("could not install the event loop group as the global executor")
    }
    group = MultiThreadedEventLoopGroup.singleton
} else {
    group = MultiThreadedEventLoopGroup(numberOfThreads: options.threads)
}
let client = try RedisClient(configuration: configuration, eventLoopGroup: group)
try await client.connect()
let names = options.keys == 1 ? ["bench:key"] : (0..<options.keys).map { "bench:key:\($0)" }
for name in names { _ = try await client.send(RedisCommand("SET", [.string(name), "xxx"])) }
let gets = names.map { RedisCommand("GET", [.string($0)]) }
// Built once: batch i holds the `pipeline` GETs that start at key i.
let batches = gets.indices.map { start in (0..<options.pipeline).map { gets[(start + $0) % gets.count] } }
let sameKey = gets.map { Array(repeating: $0, count: options.pipeline) }

let perClient = options.requests / options.clients
let started = ContinuousClock.now
try await withThrowingTaskGroup(of: Void.self) { tasks in
    for caller in 0..<options.clients {
        tasks.addTask {
            var next = options.spread == "caller" ? caller % gets.count : Int.random(in: 0..<gets.count)
            let step = options.spread == "caller" ? 0 : 1
            switch options.mode {
            case "pipelined":
                for _ in 0..<(perClient / options.pipeline) {
                    let batch = options.spread == "caller" ? sameKey[next] : batches[next % batches.count]
                    next += step
                    let replies = try await client.pipeline(batch)
                    precondition(replies.count == options.pipeline && replies[0].string == "xxx")
                }
            case "unpipelined":
                for _ in 0..<perClient {
                    let reply = try await client.send(gets[next % gets.count])
                    next += step
                    precondition(reply.string == "xxx")
                }
            default:
                fatalError("mode is pipelined or unpipelined")
            }
        }
    }
    try await tasks.waitForAll()
}
let elapsed = ContinuousClock.now - started
let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
let done = options.mode == "pipelined" ? (perClient / options.pipeline) * options.pipeline * options.clients : perClient * options.clients
print("\(options.mode) \(Int(Double(done) / seconds))")
await client.shutdown()
if options.executor != "event-loop" { try await group.shutdownGracefully() }
