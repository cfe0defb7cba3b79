/// An error from Keygate's core: the store, the key format, the configuration.
/// Compare codes: `error.code == .notFound`. HTTP and CLI exit codes are mapped from it in one place each.
public struct KeygateError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Sendable {
            case notFound, duplicate, invalidArgument, invalidConfiguration, conflict, limitReached, unavailable, notReplicated, internalError
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// No key with that id (or user).
        public static let notFound = Code(.notFound)
        /// A key with the same hash already exists (astronomically unlikely unless re-imported).
        public static let duplicate = Code(.duplicate)
        /// A field is invalid; `field` names it.
        public static let invalidArgument = Code(.invalidArgument)
        /// A setting (prefix, pepper, namespace) is invalid.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// The change conflicts with the key's state (rotating a key already rotated or revoked).
        public static let conflict = Code(.conflict)
        /// The user already holds the most active keys self-service allows.
        public static let limitReached = Code(.limitReached)
        /// Redis could not be reached or did not answer in time.
        public static let unavailable = Code(.unavailable)
        /// The change was applied on the master, but fewer replicas than required confirmed it
        /// (`WAIT`): it may not survive a failover. Retrying is safe.
        public static let notReplicated = Code(.notReplicated)
        /// Redis answered something the store does not understand.
        public static let internalError = Code(.internalError)

        public var description: String { value.rawValue }
    }

    public let code: Code
    public let message: String
    /// The request field at fault, for `invalidArgument`.
    public let field: String?
    public let underlying: (any Error)?

    public init(_ code: Code, _ message: String, field: String? = nil, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.field = field
        self.underlying = underlying
    }

    public var description: String { message }
}
