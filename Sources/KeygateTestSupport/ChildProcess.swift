#if canImport(Glibc)
public import Glibc
#elseif canImport(Darwin)
public import Darwin
#endif

/// A child process started with posix_spawn and reaped with waitpid, without blocking a thread.
///
/// Foundation's `Process.isRunning` on Linux can lag seconds behind the real exit, which made every
/// test that stops a server slow; this is the small part of it the tests need.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    private var exitStatus: Int32?

    /// Starts `executable` with `arguments`. stdout and stderr go to the given files (created or
    /// truncated), or to /dev/null. `environment` replaces the inherited one when given.
    public init(executable: String, arguments: [String], stdoutPath: String = "/dev/null",
                stderrPath: String = "/dev/null", environment: [String: String]? = nil) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        // Nothing else is inherited. NIO does not mark its sockets close-on-exec, so a child spawned
        // while a test's connection was open held a copy of it: closing it sent no FIN until that
        // child (a redis-server) exited, and clients waited seconds for the end of a response.
        #if canImport(Glibc)
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }
        #endif
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup("\($0)=\($1)") } + [nil] }
        defer { for pointer in envp ?? [] { free(pointer) } }
        // Default signal handling and nothing blocked. A child inherits ignored signals and the
        // spawning thread's signal mask; under the test runner, redis-servers started without this
        // did not stop on SIGTERM, and every stop waited for the SIGKILL after 5 s.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t(), empty = sigset_t()
        sigfillset(&defaults)
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        var child: pid_t = 0
        let status = envp.map { envp in posix_spawn(&child, executable, &actions, &attributes, argv, envp) }
            ?? posix_spawn(&child, executable, &actions, &attributes, argv, environ)
        guard status == 0 else { throw TestSupportError("cannot start \(executable): error \(status)") }
        pid = child
    }

    #if canImport(Glibc)
    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), which the Glibc module does not export.
    private static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()
    #endif

    /// True until the process exited (reaps it when it has).
    public var isRunning: Bool {
        if exitStatus != nil { return false }
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid || result == -1 {
            exitStatus = status
            return false
        }
        return true
    }

    /// The raw wait status once exited; nil while running.
    public var terminationStatus: Int32? { isRunning ? nil : exitStatus }

    /// Exit code for a normal exit, or nil.
    public var exitCode: Int32? {
        guard let status = terminationStatus, status & 0x7f == 0 else { return nil }
        return (status >> 8) & 0xff
    }

    public func signal(_ signal: Int32) {
        if exitStatus == nil { kill(pid, signal) }
    }

    /// Waits for the exit, polling every 5 ms; sends SIGKILL after `timeout`.
    public func waitForExit(timeout: Duration = .seconds(30)) async {
        let deadline = ContinuousClock.now + timeout
        while isRunning {
            if ContinuousClock.now >= deadline { signal(SIGKILL) }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// SIGTERM (after SIGCONT, in case it was stopped), then SIGKILL after `grace`.
    public func terminate(grace: Duration = .seconds(5)) async {
        signal(SIGCONT)
        signal(SIGTERM)
        await waitForExit(timeout: grace)
    }

    deinit {
        if exitStatus == nil {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
    }
}
