import NIOCore
import NIOPosix
import Testing
@testable import KeygateRedis

@Suite("Cluster hash slots and redirects")
struct HashSlotTests {
    @Test("CRC16 is the specification's XMODEM variant")
    func crc16CheckValue() {
        // The check value the cluster specification gives for its reference implementation.
        #expect(HashSlot.crc16(Array("123456789".utf8)) == 0x31C3)
        #expect(HashSlot.crc16([UInt8]()) == 0)
    }

    @Test("slots match Redis's CLUSTER KEYSLOT for known keys")
    func knownSlots() {
        // Values from `redis-cli CLUSTER KEYSLOT` (Redis 7.0), also in the Redis documentation.
        #expect(HashSlot.of("foo") == 12182)
        #expect(HashSlot.of("bar") == 5061)
        #expect(HashSlot.of("hello") == 866)
        #expect(HashSlot.of("somekey") == 11058)
        #expect(HashSlot.of("") == 0)
        // The CLUSTER KEYSLOT page's examples.
        #expect(HashSlot.of("foo{hash_tag}") == 2515)
        #expect(HashSlot.of("bar{hash_tag}") == 2515)
    }

    @Test("hash tags follow the specification's examples")
    func hashTags() {
        // {user1000}.following and {user1000}.followers hash only "user1000".
        #expect(HashSlot.of("{user1000}.following") == HashSlot.of("user1000"))
        #expect(HashSlot.of("{user1000}.followers") == HashSlot.of("user1000"))
        // foo{}{bar}: the first { is followed directly by }, so the whole key is hashed.
        #expect(HashSlot.of("foo{}{bar}") == Int(HashSlot.crc16(Array("foo{}{bar}".utf8)) & 0x3FFF))
        // foo{{bar}}zap: "{bar" is hashed (from the first { to the first } after it).
        #expect(HashSlot.of("foo{{bar}}zap") == HashSlot.of("{bar"))
        // foo{bar}{zap}: only "bar".
        #expect(HashSlot.of("foo{bar}{zap}") == HashSlot.of("bar"))
        // No closing brace: the whole key.
        #expect(HashSlot.of("foo{bar") == Int(HashSlot.crc16(Array("foo{bar".utf8)) & 0x3FFF))
        // Keygate's own layout: a record and its counters share the key hash's slot.
        #expect(HashSlot.of("keygate:key:{abc}") == HashSlot.of("keygate:usage:{abc}:d:20261203"))
    }

    @Test("every slot has a tag that maps to it")
    func slotTags() {
        for slot in [0, 1, 866, 5061, 12182, 16383] {
            #expect(HashSlot.of("marker:{\(HashSlot.tag(forSlot: slot))}:x") == slot)
        }
        var all = Set<Int>()
        for slot in 0..<HashSlot.count { all.insert(HashSlot.of(HashSlot.tag(forSlot: slot))) }
        #expect(all.count == HashSlot.count)
        #expect((0..<HashSlot.count).allSatisfy { HashSlot.tag(forSlot: $0).utf8.count <= 4 })
    }

    @Test("MOVED and ASK replies parse; anything else does not")
    func redirects() {
        #expect(ClusterRedirect(errorMessage: "MOVED 3999 127.0.0.1:6381") == ClusterRedirect(kind: .moved, slot: 3999, host: "127.0.0.1", port: 6381))
        #expect(ClusterRedirect(errorMessage: "ASK 0 10.0.0.2:7002") == ClusterRedirect(kind: .ask, slot: 0, host: "10.0.0.2", port: 7002))
        #expect(ClusterRedirect(errorMessage: "MOVED 16383 ::1:7000") == ClusterRedirect(kind: .moved, slot: 16383, host: "::1", port: 7000))
        #expect(ClusterRedirect(errorMessage: "MOVED 12 [::1]:7000")?.host == "::1")
        #expect(ClusterRedirect(errorMessage: "MOVED 12 redis-0.redis:6379")?.host == "redis-0.redis")
        // An empty host means the node that answered.
        #expect(ClusterRedirect(errorMessage: "MOVED 3999 :6381") == ClusterRedirect(kind: .moved, slot: 3999, host: "", port: 6381))
        for bad in ["MOVED", "MOVED 3999", "MOVED 16384 127.0.0.1:6381", "MOVED -1 127.0.0.1:6381", "MOVED x 127.0.0.1:6381",
                    "MOVED 1 127.0.0.1", "MOVED 1 127.0.0.1:0", "MOVED 1 127.0.0.1:70000", "MOVED 1 ?:6379",
                    "ERR MOVED 1 a:1", "moved 1 a:1", "MOVED 1 a:1 extra", "CROSSSLOT Keys in request don't hash to the same slot"] {
            #expect(ClusterRedirect(errorMessage: bad) == nil, "\(bad)")
        }
    }
}

@Suite("Command routing from the key table")
struct CommandRoutingTests {
    @Test("single-key, multi-key, script and keyless commands route by their keys")
    func routing() {
        #expect(RedisCommand("GET", ["foo"]).routing == .slot(12182))
        #expect(RedisCommand("HMGET", ["keygate:key:{abc}", "status", "id"]).routing == .slot(HashSlot.of("abc")))
        #expect(RedisCommand("MGET", ["{u}:a", "{u}:b"]).routing == .slot(HashSlot.of("u")))
        #expect(RedisCommand("MGET", ["foo", "bar"]).routing == .crossSlot)
        #expect(RedisCommand("DEL", ["foo", "{foo}:x"]).routing == .slot(12182))
        #expect(RedisCommand("XINFO", ["STREAM", "keygate:events"]).routing == .slot(HashSlot.of("keygate:events")))
        #expect(RedisCommand("MSET", ["{t}a", "1", "{t}b", "2"]).routing == .slot(HashSlot.of("t")))
        #expect(RedisCommand("MSET", ["foo", "bar", "bar", "foo"]).routing == .crossSlot, "keys foo and bar; values are not keys")
        // EVALSHA: numkeys, then the keys; arguments after them are not keys.
        #expect(RedisCommand("EVALSHA", ["sha", 2, "{h}:record", "{h}:unlogged", "foo", "bar"]).routing == .slot(HashSlot.of("h")))
        #expect(RedisCommand("EVALSHA", ["sha", 2, "foo", "bar"]).routing == .crossSlot)
        #expect(RedisCommand("EVALSHA", ["sha", 0, "foo"]).routing == .keyless)
        for keyless in ["PING", "WAIT", "SCRIPT", "PUBLISH", "ROLE", "CLUSTER"] {
            #expect(RedisCommand(keyless, ["a", "b"]).routing == .keyless, "\(keyless)")
        }
        #expect(RedisCommand("SPUBLISH", ["chan", "msg"]).routing == .slot(HashSlot.of("chan")), "a shard channel routes as a key")
    }

    @Test("the store's own layout never builds a cross-slot script")
    func keygateLayoutIsSingleSlot() {
        let hash = String(repeating: "ab", count: 32)
        let record = "keygate:key:{\(hash)}", unlogged = "keygate:unlogged:{\(hash)}", usage = "keygate:usage:{\(hash)}"
        #expect(RedisCommand("EVALSHA", ["s", 2, .string(record), .string(unlogged)]).routing == .slot(HashSlot.of(hash)))
        #expect(RedisCommand("EVALSHA", ["s", 3, .string(usage), .string(usage + ":d:20261203"), .string(usage + ":h:2026120301")]).routing
                == .slot(HashSlot.of(hash)))
        #expect(RedisCommand("EVALSHA", ["s", 3, "{keygate:events}:pending", "keygate:events", "{keygate:events}:epoch"]).routing
                == .slot(HashSlot.of("keygate:events")))
    }

    @Test("a cross-slot command is refused before it is sent where slots are enforced")
    func crossSlotRefused() async throws {
        var configuration = RedisConfiguration()
        configuration.enforcesClusterSlots = true
        let client = try RedisClient(configuration: configuration, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        defer { Task { await client.shutdown() } }
        let error = #expect(throws: RedisError.self) { try client.refuseCrossSlot([RedisCommand("MGET", ["foo", "bar"])]) }
        #expect(error?.code == .crossSlot)
        #expect(throws: Never.self) { try client.refuseCrossSlot([RedisCommand("MGET", ["{x}1", "{x}2"]), RedisCommand("GET", ["foo"])]) }
        #expect(client.scriptGroup(forKey: "foo") == 12182)
        // A single server without the rule takes any keys together.
        var single = RedisConfiguration()
        single.enforcesClusterSlots = false
        let plain = try RedisClient(configuration: single, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        defer { Task { await plain.shutdown() } }
        #expect(throws: Never.self) { try plain.refuseCrossSlot([RedisCommand("MGET", ["foo", "bar"])]) }
        #expect(plain.scriptGroup(forKey: "foo") == 0)
    }

    @Test("a primary learnt from MOVED is not a changed primary once a refresh names it")
    func movedPrimaryWithoutIDIsNotAFailover() throws {
        func node(_ port: Int64, _ id: String) -> RESPValue {
            .array([.bulkString(ByteBuffer(string: "127.0.0.1")), .integer(port), .bulkString(ByteBuffer(string: id))])
        }
        func slots(_ ranges: [(Int64, Int64, RESPValue)]) -> RESPValue {
            .array(ranges.map { .array([.integer($0.0), .integer($0.1), $0.2]) })
        }
        let a = node(7000, "a"), b = node(7001, "b")
        // Three slots' worth of map is enough: slot 0 on a, the rest on b.
        let map = try #require(ClusterSlotMap(clusterSlots: slots([(0, 0, a), (1, 16_383, b)]), answeredBy: "127.0.0.1"))
        #expect(map.primaryIDs == ["a", "b"])
        // MOVED to b's address: b is known, so no primary is added.
        #expect(map.moving(slot: 0, toHost: "127.0.0.1", port: 7001).primaries.count == 2)
        // MOVED to an address the map does not know: added without an id, which does not count...
        let moved = map.moving(slot: 0, toHost: "127.0.0.1", port: 7002)
        #expect(moved.primaries.count == 3)
        #expect(moved.primary(forSlot: 0)?.port == 7002)
        #expect(moved.primaryIDs == ["a", "b"])
        // ...so the refresh that names it as a primary that was there before is no change,
        let named = try #require(ClusterSlotMap(clusterSlots: slots([(0, 0, node(7002, "a")), (1, 16_383, b)]), answeredBy: "127.0.0.1"))
        #expect(named.primaryIDs == moved.primaryIDs)
        // and one that names a new node is.
        let replaced = try #require(ClusterSlotMap(clusterSlots: slots([(0, 0, node(7002, "c")), (1, 16_383, b)]), answeredBy: "127.0.0.1"))
        #expect(replaced.primaryIDs != moved.primaryIDs)
    }
}
