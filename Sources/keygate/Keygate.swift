import ArgumentParser
import KeygateNode

/// `keygate`: the node and its operator CLI, one binary.
@main
struct Keygate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygate",
        abstract: "API-key verification node and key management.",
        discussion: """
        Every command reads --redis-url (env KEYGATE_REDIS_URL, default redis://127.0.0.1:6379), \
        --namespace (env KEYGATE_NAMESPACE, default keygate) and --key-prefix (env KEYGATE_KEY_PREFIX, \
        default kg). Keys are stored as SHA-256 hashes, or HMAC-SHA-256 with the pepper from \
        KEYGATE_PEPPER or KEYGATE_PEPPER_FILE. Changing the pepper invalidates every existing key.

        Exit codes: 0 success, 1 invalid input or other error, 3 not found, 4 Redis unavailable, \
        5 conflict, 64 bad command-line usage (an unknown flag, a malformed value or Redis URL).
        """,
        version: KeygateNode.version,
        subcommands: [ServeCommand.self, KeysCommand.self, UsersCommand.self, EventsCommand.self, RepairCommand.self]
    )
}
