public import Foundation
import KeygateRedis
import NIOCore
import NIOPosix

/// A throwaway `redis-server` on a free loopback port, for tests that must break or reconfigure
/// their own server (SIGSTOP, ACL users, TLS). Persistence is off; the data folder is temporary.
public final class RedisServerProcess: @unchecked Sendable {
    public let port: Int
    /// The TLS port when started with `tls:`.
    public let tlsPort: Int?
    public let directory: URL
    /// Replaced by `restart()`; touched by the test's task only.
    private var process: ChildProcess
    private var arguments: [String] = []

    /// TLS material for `--tls-port`: PEM paths for the server and the CA that signed it.
    public struct TLSFiles: Sendable {
        public var certificate: String
        public var privateKey: String
        public var caCertificate: String
    }

    /// Runs `body` with a fresh server and stops it afterwards, also when `body` throws.
    public static func withServer<T>(
        extraArguments: [String] = [], tls: TLSFiles? = nil,
        _ body: (RedisServerProcess) async throws -> T
    ) async throws -> T {
        let server = try await start(extraArguments: extraArguments, tls: tls)
        do {
            let result = try await body(server)
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }

    /// Starts `redis-server` with `extraArguments` and waits until it answers PING (at most 10 s).
    /// Retries on another port when the chosen one was taken in the meantime.
    public static func start(extraArguments: [String] = [], tls: TLSFiles? = nil) async throws -> RedisServerProcess {
        var lastError: (any Error)?
        for _ in 0..<5 {
            do {
                return try await startOnce(extraArguments: extraArguments, tls: tls)
            } catch let error as PortTakenError {
                lastError = error
            }
        }
        throw lastError ?? TestSupportError("no free port for redis-server")
    }

    private struct PortTakenError: Error {}

    private static func startOnce(extraArguments: [String], tls: TLSFiles?) async throws -> RedisServerProcess {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("keygate-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let port = try await freeServerPort()
        let log = directory.appendingPathComponent("redis.log")
        var arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--dir", directory.path, "--daemonize", "no", "--loglevel", "notice",
                         "--logfile", log.path]
        var tlsPort: Int?
        if let tls {
            let chosen = try await freeServerPort()
            tlsPort = chosen
            arguments += ["--tls-port", String(chosen), "--tls-cert-file", tls.certificate,
                          "--tls-key-file", tls.privateKey, "--tls-ca-cert-file", tls.caCertificate,
                          "--tls-auth-clients", "no"]
        }
        let process = try ChildProcess(executable: try which("redis-server"), arguments: arguments + extraArguments)
        let server = RedisServerProcess(port: port, tlsPort: tlsPort, directory: directory, process: process)
        server.arguments = arguments + extraArguments
        do {
            try await server.waitUntilReady()
        } catch {
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            await server.stop()
            if text.contains("Address already in use") { throw PortTakenError() }
            throw TestSupportError("redis-server did not start: \(text.suffix(600))")
        }
        return server
    }

    private init(port: Int, tlsPort: Int?, directory: URL, process: ChildProcess) {
        self.port = port
        self.tlsPort = tlsPort
        self.directory = directory
        self.process = process
    }

    public var pid: Int32 { process.pid }
    /// False once it exited (killed, or stopped).
    public var isRunning: Bool { process.isRunning }
    public var url: String { "redis://127.0.0.1:\(port)" }

    /// Stops the server (SIGTERM: with `--appendonly yes` it syncs the append-only file) and starts it
    /// again on the same port with the same folder and arguments, as a Redis restart.
    /// - Parameter downFor: how long Redis stays down between the two (an outage, not a blip).
    public func restart(downFor: Duration = .zero) async throws {
        await process.terminate()
        if downFor > .zero { try await Task.sleep(for: downFor) }
        process = try ChildProcess(executable: try which("redis-server"), arguments: arguments)
        try await waitUntilReady()
    }

    /// SIGKILL, as a crashed host: nothing is flushed, clients see their connections reset.
    public func kill() async {
        process.signal(SIGKILL)
        await process.waitForExit(timeout: .seconds(5))
    }

    /// SIGSTOP: the server keeps its sockets open but answers nothing (a hung Redis).
    public func pause() { process.signal(SIGSTOP) }
    /// SIGCONT after `pause()`.
    public func resume() { process.signal(SIGCONT) }

    /// Stops the server (SIGTERM, SIGKILL after 5 s) and removes its folder; safe to call twice.
    /// Never blocks a thread: the cooperative pool has only as many threads as cores.
    public func stop() async {
        await process.terminate()
        try? FileManager.default.removeItem(at: directory)
    }

    private func waitUntilReady() async throws {
        var configuration = RedisConfiguration()
        configuration.endpoint = .tcp(host: "127.0.0.1", port: port)
        configuration.requiresMaster = false // a replica is up too, once it answers
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if !process.isRunning { throw TestSupportError("redis-server exited at start") }
            if let connection = try? await RedisConnection.connect(configuration: configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.any()).get() {
                defer { _ = connection.close() }
                if (try? await connection.send(RedisCommand("PING"))) != nil { return }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestSupportError("redis-server on port \(port) did not answer PING within 10 s")
    }
}

/// A loopback port for a test server, below Linux's ephemeral range (32768-60999) so that the
/// tests' own outgoing connections cannot be holding it; checked free by binding it once.
public func freeServerPort() async throws -> Int {
    for _ in 0..<50 {
        let candidate = Int.random(in: 20_000..<30_000)
        if let channel = try? await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: candidate).get() {
            try await channel.close().get()
            return candidate
        }
    }
    throw TestSupportError("no free port in 20000-29999")
}

/// Absolute path of an executable on PATH (or /usr/sbin, where Debian puts some servers).
public func which(_ name: String) throws -> String {
    let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        + ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
    for directory in paths {
        let candidate = directory + "/" + name
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    throw TestSupportError("\(name) not found on PATH; scripts/test.sh installs it")
}

public struct TestSupportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
