import Foundation
public import KeygateRedis
import NIOPosix

/// The shared test Redis started by scripts/test.sh (`REDIS_URL`).
public enum TestRedis {
    /// `REDIS_URL` from the environment; integration tests fail with a clear message without it.
    public static func url() throws -> String {
        guard let url = ProcessInfo.processInfo.environment["REDIS_URL"], !url.isEmpty else {
            throw TestSupportError("REDIS_URL is not set: run the tests with scripts/test.sh, which starts redis-server")
        }
        return url
    }

    /// The shared Redis with a 5 s command deadline: it serves every test in parallel on a 2-core
    /// machine with a debug build, so the production 500 ms would measure load, not behaviour. Tests
    /// about deadlines set their own.
    public static func configuration() throws -> RedisConfiguration {
        try configuration(url: url())
    }

    /// Any test server's URL with the test deadline (see `configuration()`).
    public static func configuration(url: String) throws -> RedisConfiguration {
        var configuration = try RedisConfiguration(url: url)
        configuration.commandTimeout = .seconds(5)
        return configuration
    }

    /// A client on the shared singleton event loop group.
    public static func client(_ configuration: RedisConfiguration? = nil) throws -> RedisClient {
        try RedisClient(configuration: configuration ?? self.configuration(),
                        eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
    }

    /// A namespace no other test uses, so tests can run in parallel on one Redis.
    public static func uniqueNamespace(_ label: String = "test") -> String {
        "\(label)-\(UUID().uuidString.prefix(8).lowercased())"
    }
}
