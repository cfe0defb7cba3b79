import Testing
@testable import KeygateRedis

@Suite struct RedisURLTests {
    @Test func parsesTheFullForm() throws {
        let config = try RedisConfiguration(url: "redis://app:s%40cret@10.0.0.5:6380/3")
        #expect(config.endpoint == .tcp(host: "10.0.0.5", port: 6380))
        #expect(config.username == "app")
        #expect(config.password == "s@cret")
        #expect(config.database == 3)
        #expect(config.tls == nil)
    }

    @Test func defaultsAndPasswordOnly() throws {
        let config = try RedisConfiguration(url: "redis://:pw@localhost")
        #expect(config.endpoint == .tcp(host: "127.0.0.1", port: 6379))
        #expect(config.username == nil)
        #expect(config.password == "pw")
        #expect(config.database == 0)
    }

    @Test func tlsWithCAFileAndIPv6() throws {
        let config = try RedisConfiguration(url: "rediss://[::1]:6390/1?ca_file=/etc/ca.pem")
        #expect(config.endpoint == .tcp(host: "::1", port: 6390))
        #expect(config.tls?.caFile == "/etc/ca.pem")
        #expect(config.database == 1)
    }

    @Test func unixSocket() throws {
        let config = try RedisConfiguration(url: "unix:///run/redis/redis.sock?db=2&password=pw")
        #expect(config.endpoint == .unix(path: "/run/redis/redis.sock"))
        #expect(config.database == 2)
        #expect(config.password == "pw")
    }

    @Test(arguments: [
        ("127.0.0.1:6379", "missing scheme"),
        ("http://127.0.0.1", "unsupported scheme 'http'"),
        ("redis://127.0.0.1:abc", "port must be a number"),
        ("redis://127.0.0.1:70000", "port must be a number"),
        ("redis://127.0.0.1/x", "database must be a non-negative number"),
        ("redis://", "missing host"),
        ("unix://relative.sock", "absolute socket path"),
        ("redis://h?timeout=1", "unknown query parameter 'timeout'"),
        ("redis://[::1", "unterminated IPv6"),
        ("redis://h1:6379,h2:6380", "a list of hosts"),
    ])
    func rejectsBadURLsNamingTheProblem(url: String, problem: String) {
        let error = #expect(throws: RedisError.self) { try RedisConfiguration(url: url) }
        #expect(error?.code == .invalidURL)
        #expect(error?.message.contains(problem) == true, "\(error?.message ?? "")")
    }

    @Test func errorsNeverShowThePassword() {
        let error = #expect(throws: RedisError.self) { try RedisConfiguration(url: "redis://u:topsecret@h:notaport") }
        #expect(error?.message.contains("topsecret") == false)
        #expect(error?.message.contains("u:***@") == true)
    }
}

@Suite struct SentinelURLTests {
    @Test func parsesSentinelsMasterNameAndCredentials() throws {
        let config = try RedisConfiguration(
            url: "redis-sentinel://app:pw@10.0.0.1:26380,sentinel-b,[::1]:26381/2?sentinel_user=watch&sentinel_password=s%23cret#orders")
        let sentinel = try #require(config.sentinel)
        #expect(sentinel.addresses == [.init(host: "10.0.0.1", port: 26380), .init(host: "sentinel-b", port: 26379),
                                       .init(host: "::1", port: 26381)])
        #expect(sentinel.masterName == "orders")
        #expect(sentinel.username == "watch")
        #expect(sentinel.password == "s#cret")
        #expect(config.username == "app")
        #expect(config.password == "pw")
        #expect(config.database == 2)
        #expect(config.tls == nil)
        #expect(config.effectiveWaitReplicas == 1)
        #expect(config.redactedTarget == "redis-sentinel://10.0.0.1:26380,sentinel-b:26379,[::1]:26381/2#orders")
    }

    @Test func tlsSentinelAndDefaults() throws {
        let config = try RedisConfiguration(url: "rediss-sentinel://localhost?ca_file=/ca.pem#m")
        #expect(config.sentinel?.addresses == [.init(host: "127.0.0.1", port: 26379)])
        #expect(config.tls?.caFile == "/ca.pem")
        #expect(config.sentinel?.password == nil)
        #expect(try RedisConfiguration(url: "redis://h").effectiveWaitReplicas == 0)
    }

    @Test(arguments: [
        ("redis-sentinel://h1:26379,h2:26379", "missing master name"),
        ("redis-sentinel://h1:26379#", "missing master name"),
        ("redis-sentinel://h1:26379,,h2#m", "empty entry in the list of Sentinels"),
        ("redis-sentinel://h1:x#m", "port must be a number"),
        ("redis-sentinel://#m", "missing host"),
        ("redis-sentinel://h1/abc#m", "database must be a non-negative number"),
        ("redis-sentinel://h1?password=x#m", "unknown query parameter 'password'"),
        ("redis://h1#m", "belongs to a Sentinel URL"),
        ("rediss://h1:6379,h2:6380", "rediss-sentinel://"),
        ("sentinel://h1#m", "unsupported scheme 'sentinel'"),
    ])
    func rejectsBadSentinelURLs(url: String, problem: String) {
        let error = #expect(throws: RedisError.self) { try RedisConfiguration(url: url) }
        #expect(error?.code == .invalidURL)
        #expect(error?.message.contains(problem) == true, "\(error?.message ?? "")")
    }

    @Test func sentinelPasswordIsRedactedInErrors() {
        let error = #expect(throws: RedisError.self) {
            try RedisConfiguration(url: "redis-sentinel://u:topsecret@h:x?sentinel_password=alsosecret#m")
        }
        #expect(error?.message.contains("topsecret") == false)
        #expect(error?.message.contains("alsosecret") == false)
    }
}

/// The pieces of Sentinel discovery that need no server: reading the answer, naming the failure.
@Suite struct SentinelDiscoveryTests {
    @Test func readsTheMastersAddress() throws {
        let reply = RESPValue.array([.bulkString(.init(string: "10.0.0.7")), .bulkString(.init(string: "6380"))])
        #expect(try SentinelDiscovery.answer(reply) == .master(.tcp(host: "10.0.0.7", port: 6380)))
        #expect(try SentinelDiscovery.answer(.null) == .unknownMaster)
    }

    @Test(arguments: [
        RESPValue.array([.bulkString(.init(string: "10.0.0.7"))]),
        RESPValue.array([.bulkString(.init(string: "10.0.0.7")), .bulkString(.init(string: "port"))]),
        RESPValue.array([.bulkString(.init(string: "")), .bulkString(.init(string: "6379"))]),
        RESPValue.integer(1),
    ])
    func refusesAnythingElse(reply: RESPValue) {
        #expect(throws: RedisError.self) { try SentinelDiscovery.answer(reply) }
    }

    @Test func theFailureNamesWhatEachSentinelSaid() {
        let unknown = SentinelDiscovery.failure(masterName: "orders", problems: ["a:1: no master named 'orders'", "b:2: no master named 'orders'"])
        #expect(unknown.code == .discoveryFailed)
        #expect(unknown.message.contains("no Sentinel knows a master named 'orders'"))
        let mixed = SentinelDiscovery.failure(masterName: "orders", problems: ["a:1: no master named 'orders'", "b:2: connection refused"])
        #expect(mixed.message.contains("no Sentinel gave the address of master 'orders'"))
        #expect(mixed.message.contains("b:2: connection refused"))
        #expect(mixed.isUnavailable)
    }
}

@Suite struct ClusterURLTests {
    @Test func parsesSeedsCredentialsAndTLS() throws {
        let config = try RedisConfiguration(url: "redis-cluster://app:pw@10.0.0.1:7000,redis-b,[::1]:7002")
        #expect(config.cluster?.seeds == [.init(host: "10.0.0.1", port: 7000), .init(host: "redis-b", port: 6379), .init(host: "::1", port: 7002)])
        #expect(config.username == "app" && config.password == "pw")
        #expect(config.database == 0 && config.tls == nil)
        #expect(config.effectiveWaitReplicas == 1, "primaries have replicas: WAIT 1 by default")
        #expect(config.usesClusterSlots)
        #expect(config.redactedTarget == "redis-cluster://10.0.0.1:7000,redis-b:6379,[::1]:7002")
        let tls = try RedisConfiguration(url: "rediss-cluster://localhost:7000?ca_file=/ca.pem")
        #expect(tls.tls?.caFile == "/ca.pem" && tls.cluster?.seeds == [.init(host: "127.0.0.1", port: 7000)])
    }

    @Test(arguments: [
        ("redis-cluster://h1:7000/2", "only database 0"),
        ("redis-cluster://h1:7000?db=1", "only database 0"),
        ("redis-cluster://h1,,h2", "empty entry in the list of cluster nodes"),
        ("redis-cluster://h1#m", "unexpected '#'"),
        ("redis-cluster://", "missing host"),
        ("redis-cluster://h1?sentinel_user=x", "unknown query parameter 'sentinel_user'"),
    ])
    func rejectsBadClusterURLs(url: String, problem: String) {
        let error = #expect(throws: RedisError.self) { try RedisConfiguration(url: url) }
        #expect(error?.code == .invalidURL)
        #expect(error?.message.contains(problem) == true, "\(error?.message ?? "")")
    }
}
