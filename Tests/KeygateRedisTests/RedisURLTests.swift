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
