// Cost of the usage flush per key: the node's batch write (`KeyStore.applyUsage`, the same scripts
// the flusher runs) timed on a given Redis, so standalone and Cluster can be compared:
//
//   usage-flush-bench --url redis-cluster://127.0.0.1:7000 --namespace bench --keys keys.txt --batches 20 [--wait-replicas 1]
//
// Reads plaintext keys (from keygate-bench-keys), applies `batches` batches that each count one use
// of every key, one batch after the other as a node does, and prints one line:
// "usage <microseconds per key> <keys per second> <batch milliseconds, median>".
import Foundation
import KeygateCore
import KeygateRedis
import NIOPosix

var url = "redis://127.0.0.1:6379", namespace = "keygate", keysPath = "keys.txt", batches = 20
var waitReplicas: Int?
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let flag = arguments.next() {
    guard let value = arguments.next() else { fatalError("\(flag) needs a value") }
    switch flag {
    case "--url": url = value
    case "--namespace": namespace = value
    case "--keys": keysPath = value
    case "--batches": batches = Int(value)!
    case "--wait-replicas": waitReplicas = Int(value)!
    default: fatalError("unknown flag \(flag)")
    }
}
var configuration = try RedisConfiguration(url: url)
configuration.commandTimeout = .seconds(30)
configuration.waitReplicas = waitReplicas ?? configuration.waitReplicas
let redis = try RedisClient(configuration: configuration, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
try await redis.connect()
let store = KeyStore(redis: redis, layout: try KeyStoreLayout(namespace: namespace), format: try KeyFormat(), hasher: KeyHasher())
let hasher = KeyHasher()
let hashes = try String(contentsOfFile: keysPath, encoding: .utf8).split(separator: "\n").map { hasher.hash(String($0)) }
let run = "flush-bench-\(UInt32.random(in: 0...UInt32.max))"
var durations: [Duration] = []
for sequence in 1...batches {
    let now = Date()
    let deltas = hashes.map { KeyStore.UsageDelta(hash: $0, count: 1, lastUsedAt: now) }
    let started = ContinuousClock.now
    try await store.applyUsage(batchID: "\(run):\(sequence)", deltas)
    durations.append(ContinuousClock.now - started)
}
func milliseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1_000 + Double(duration.components.attoseconds) / 1e15
}
let total = durations.reduce(0) { $0 + milliseconds($1) }
let median = durations.map(milliseconds).sorted()[durations.count / 2]
let perKey = total * 1_000 / Double(batches * hashes.count)
print(String(format: "usage %.2f %d %.1f", perKey, Int(Double(batches * hashes.count) / (total / 1_000)), median))
await redis.shutdown()
