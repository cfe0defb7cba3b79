import Foundation

/// Runs a command to completion and captures its output, without blocking a thread.
public struct CommandResult: Sendable {
    public var exitCode: Int32?
    public var stdout: String
    public var stderr: String
}

public func runCommand(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                       timeout: Duration = .seconds(60)) async throws -> CommandResult {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("keygate-cmd-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let out = directory.appendingPathComponent("stdout").path, err = directory.appendingPathComponent("stderr").path
    let process = try ChildProcess(executable: executable, arguments: arguments, stdoutPath: out, stderrPath: err,
                                   environment: environment)
    await process.waitForExit(timeout: timeout)
    return CommandResult(exitCode: process.exitCode,
                         stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                         stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
}

/// The built `keygate` binary: `KEYGATE_BIN`, or the one next to the test bundle.
public func keygateBinary() throws -> String {
    if let path = ProcessInfo.processInfo.environment["KEYGATE_BIN"], !path.isEmpty { return path }
    let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [bundle, bundle.deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent("keygate").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    throw TestSupportError("keygate binary not found; run scripts/test.sh (it exports KEYGATE_BIN)")
}

/// The environment a CLI test runs `keygate` in: the test Redis, a namespace of its own (`label`
/// plus a random suffix), a PATH, and `USER=ops` for the audit trail's actor.
public func cliTestEnvironment(label: String) throws -> [String: String] {
    [
        "KEYGATE_REDIS_URL": try TestRedis.url(),
        "KEYGATE_NAMESPACE": TestRedis.uniqueNamespace(label),
        "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
        "USER": "ops",
    ]
}
