import Foundation
import KeygateRedis
import KeygateTestSupport
import NIOPosix
import Testing

@Suite struct RedisTLSIntegrationTests {
    @Test func connectsOverRedissWithAPrivateCA() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("keygate-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let files = try await TestCertificates.make(in: directory)
        try await RedisServerProcess.withServer(tls: files) { server in
            try await Self.check(server, caFile: files.caCertificate)
        }
    }

    static func check(_ server: RedisServerProcess, caFile: String) async throws {
        let port = try #require(server.tlsPort)

        let trusted = try TestRedis.configuration(url: "rediss://127.0.0.1:\(port)?ca_file=\(caFile)")
        let client = try RedisClient(configuration: trusted, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        #expect(try await client.send(RedisCommand("SET", ["tls-key", "over-tls"])) == .simpleString("OK"))
        #expect(try await client.send(RedisCommand("GET", ["tls-key"])).string == "over-tls")
        await client.shutdown()

        // Without our CA the server's certificate must be refused, not silently accepted.
        let untrusted = try TestRedis.configuration(url: "rediss://127.0.0.1:\(port)")
        let error = await #expect(throws: RedisError.self) {
            try await RedisConnection.connect(configuration: untrusted, eventLoop: MultiThreadedEventLoopGroup.singleton.any()).get()
        }
        #expect(error?.isUnavailable == true)
    }
}
