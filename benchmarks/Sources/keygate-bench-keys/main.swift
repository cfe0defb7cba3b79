// Creates N keys for benchmarks and writes their plaintexts, one per line:
//
//   keygate-bench-keys --url redis://127.0.0.1:6379 --namespace bench --count 100000 --out keys.txt
//   keygate-bench-keys --count 50000 --out unknown.txt --unknown   # well formed, never stored
//
// 64 concurrent creators through the same KeyStore (and Lua scripts) as the CLI.
import Foundation
import KeygateCore
import KeygateRedis
import NIOPosix

var url = "redis://127.0.0.1:6379", namespace = "keygate", count = 1, out = "keys.txt", user = "bench"
var arguments = CommandLine.arguments.dropFirst().filter { $0 != "--unknown" }.makeIterator()
if CommandLine.arguments.contains("--unknown") {
    // Keys with a valid format and checksum that no store knows: each costs a node one lookup.
    var count = 1, out = "keys.txt"
    while let flag = arguments.next(), let value = arguments.next() {
        if flag == "--count" { count = Int(value)! } else if flag == "--out" { out = value }
    }
    let format = try KeyFormat()
    try ((0..<count).map { _ in format.generate() }.joined(separator: "\n") + "\n").write(toFile: out, atomically: true, encoding: .utf8)
    print("generated \(count) unknown keys")
    exit(0)
}
while let flag = arguments.next() {
    guard let value = arguments.next() else { fatalError("\(flag) needs a value") }
    switch flag {
    case "--url": url = value
    case "--namespace": namespace = value
    case "--count": count = Int(value)!
    case "--out": out = value
    case "--user": user = value
    default: fatalError("unknown flag \(flag)")
    }
}
var configuration = try RedisConfiguration(url: url)
configuration.commandTimeout = .seconds(30)
let redis = try RedisClient(configuration: configuration, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
let store = KeyStore(redis: redis, layout: try KeyStoreLayout(namespace: namespace), format: try KeyFormat(), hasher: KeyHasher())
let workers = 64
let total = count, owner = user
let keys = try await withThrowingTaskGroup(of: [String].self) { group in
    for worker in 0..<workers {
        group.addTask {
            var made: [String] = []
            for _ in stride(from: worker, to: total, by: workers) {
                made.append(try await store.create(.init(user: owner, scopes: ["read"]), actor: "bench").key)
            }
            return made
        }
    }
    var all: [String] = []
    for try await made in group { all += made }
    return all
}
try (keys.joined(separator: "\n") + "\n").write(toFile: out, atomically: true, encoding: .utf8)
print("created \(keys.count) keys in namespace \(namespace)")
await redis.shutdown()
