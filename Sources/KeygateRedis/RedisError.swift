/// An error from the Redis client. Compare with the static members: `error.code == .timeout`.
public struct RedisError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is; stable across releases.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Sendable {
            case connectionClosed, timeout, protocolError, serverError, circuitOpen, cancelled
            case connectFailed, authenticationFailed, invalidURL, notWritableMaster, discoveryFailed, crossSlot
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// The connection closed (or was closed by us) before the reply arrived.
        public static let connectionClosed = Code(.connectionClosed)
        /// No reply within the command deadline; the connection was dropped.
        public static let timeout = Code(.timeout)
        /// The server sent bytes that are not valid, or not allowed, RESP2; the connection was dropped.
        public static let protocolError = Code(.protocolError)
        /// Redis answered with an error reply (`-ERR ...`); `message` holds it.
        public static let serverError = Code(.serverError)
        /// Redis has been unreachable for a while; the client fails fast instead of queueing.
        public static let circuitOpen = Code(.circuitOpen)
        /// The caller's task was cancelled, or the client was shut down.
        public static let cancelled = Code(.cancelled)
        /// The TCP, TLS or Unix socket connection could not be established.
        public static let connectFailed = Code(.connectFailed)
        /// AUTH was refused (wrong password or user).
        public static let authenticationFailed = Code(.authenticationFailed)
        /// The Redis URL is malformed; `message` names the problem.
        public static let invalidURL = Code(.invalidURL)
        /// The server is not a writable master (a replica, say): Keygate does not use it.
        public static let notWritableMaster = Code(.notWritableMaster)
        /// No Sentinel gave the master's address (all unreachable, or none knows the master's name).
        public static let discoveryFailed = Code(.discoveryFailed)
        /// A command's keys are in different Cluster slots: refused before sending, on every
        /// topology, since no Cluster server could run it. A programming error in the caller.
        public static let crossSlot = Code(.crossSlot)

        public var description: String { value.rawValue }
    }

    public let code: Code
    /// Human-readable detail; for `serverError` the Redis error text. Never contains command arguments.
    public let message: String
    public let underlying: (any Error)?
    public let file: String
    public let line: Int

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil,
                file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.underlying = underlying
        self.file = file
        self.line = line
    }

    public var description: String {
        var text = "Redis \(code): \(message)"
        if let underlying { text += " (\(underlying))" }
        return text
    }

    /// True for failures where Redis could not be asked (as opposed to Redis saying no).
    public var isUnavailable: Bool {
        [.connectionClosed, .timeout, .protocolError, .circuitOpen, .connectFailed, .notWritableMaster, .discoveryFailed].contains(code)
    }

    static func protocolError(_ message: String, file: String = #fileID, line: Int = #line) -> RedisError {
        RedisError(.protocolError, message, file: file, line: line)
    }

    static func closed(_ message: String = "connection closed", file: String = #fileID, line: Int = #line) -> RedisError {
        RedisError(.connectionClosed, message, file: file, line: line)
    }
}
