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
    private let process: Process

    /// TLS material for `--tls-port`: PEM paths for the server and the CA that signed it.
    public struct TLSFiles: Sendable {
        public var certificate: String
        public var privateKey: String
        public var caCertificate: String
    }

    /// Starts `redis-server` with `extraArguments` and waits until it answers PING (at most 10 s).
    public static func start(extraArguments: [String] = [], tls: TLSFiles? = nil) async throws -> RedisServerProcess {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("keygate-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let port = try await freeLoopbackPort()
        var arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--dir", directory.path, "--daemonize", "no", "--loglevel", "warning",
                         "--logfile", directory.appendingPathComponent("redis.log").path]
        var tlsPort: Int?
        if let tls {
            let chosen = try await freeLoopbackPort()
            tlsPort = chosen
            arguments += ["--tls-port", String(chosen), "--tls-cert-file", tls.certificate,
                          "--tls-key-file", tls.privateKey, "--tls-ca-cert-file", tls.caCertificate,
                          "--tls-auth-clients", "no"]
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try which("redis-server"))
        process.arguments = arguments + extraArguments
        try process.run()
        let server = RedisServerProcess(port: port, tlsPort: tlsPort, directory: directory, process: process)
        try await server.waitUntilReady()
        return server
    }

    private init(port: Int, tlsPort: Int?, directory: URL, process: Process) {
        self.port = port
        self.tlsPort = tlsPort
        self.directory = directory
        self.process = process
    }

    deinit { stop() }

    public var pid: Int32 { process.processIdentifier }
    public var url: String { "redis://127.0.0.1:\(port)" }

    /// SIGSTOP: the server keeps its sockets open but answers nothing (a hung Redis).
    public func pause() { kill(pid, SIGSTOP) }
    /// SIGCONT after `pause()`.
    public func resume() { kill(pid, SIGCONT) }

    /// Stops the server and removes its folder; safe to call twice.
    public func stop() {
        guard process.isRunning else { return }
        kill(pid, SIGCONT)
        process.terminate()
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(pid, SIGKILL) }
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: directory)
    }

    private func waitUntilReady() async throws {
        var configuration = RedisConfiguration()
        configuration.endpoint = .tcp(host: "127.0.0.1", port: port)
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if !process.isRunning { throw TestSupportError("redis-server exited at start; see \(directory.path)/redis.log") }
            if let connection = try? await RedisConnection.connect(configuration: configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.any()).get() {
                defer { _ = connection.close() }
                if (try? await connection.send(RedisCommand("PING"))) != nil { return }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestSupportError("redis-server on port \(port) did not answer PING within 10 s")
    }
}

/// Binds port 0 on loopback, reads the port the kernel chose, and releases it.
public func freeLoopbackPort() async throws -> Int {
    let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .bind(host: "127.0.0.1", port: 0).get()
    let port = channel.localAddress?.port
    try await channel.close().get()
    guard let port else { throw TestSupportError("no local port") }
    return port
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
