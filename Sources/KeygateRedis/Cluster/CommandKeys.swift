/// Which arguments of a command are Redis keys, after Redis's own key specifications (`COMMAND
/// INFO`): the one table the Cluster client routes by, so no call site can forget to say where a
/// command goes, and a command whose keys hash to different slots is refused before it is sent, on
/// every topology (tests against one standalone Redis catch what a Cluster would refuse).
public enum CommandRouting: Sendable, Equatable {
    /// A server or connection command (PING, AUTH, SCRIPT, WAIT, PUBLISH...): any node, or the
    /// connection it follows.
    case keyless
    /// Every key is in this slot.
    case slot(Int)
    /// Keys in different slots: no server of a Cluster can run it.
    case crossSlot
}

extension RedisCommand {
    /// Where the command must run (computed from the key table; CRC16 of each key).
    public var routing: CommandRouting {
        // One key in second position (GET, HMGET, ...: the data plane's lookups): no index list.
        if keyShape == .first {
            guard arguments.count > 1 else { return .keyless }
            switch arguments[1] {
            case .string(let key): return .slot(HashSlot.of(key))
            case .bytes(let bytes): return .slot(HashSlot.of(bytes.readableBytesView))
            case .integer: break
            }
        }
        var slot: Int?
        for index in keyIndices {
            guard case .string(let key) = arguments[index] else {
                if case .bytes(let bytes) = arguments[index] {
                    let keySlot = HashSlot.of(bytes.readableBytesView)
                    if let slot, slot != keySlot { return .crossSlot }
                    slot = keySlot
                }
                continue
            }
            let keySlot = HashSlot.of(key)
            if let slot, slot != keySlot { return .crossSlot }
            slot = keySlot
        }
        return slot.map(CommandRouting.slot) ?? .keyless
    }

    /// The command's key positions, by its name as written (upper case for every command Keygate
    /// builds, so no case conversion per command on the lookup path).
    private var keyShape: CommandKeys.Shape {
        guard case .string(let written) = arguments.first else { return .keyless }
        return CommandKeys.shape(of: written)
    }

    /// More than one key: the only commands that can be cross-slot.
    var hasSeveralKeys: Bool {
        switch keyShape {
        case .allArguments, .alternate: return arguments.count > 2
        case .script: return (arguments.count > 2 ? Int(argumentText(2) ?? "") ?? 0 : 0) > 1
        default: return false
        }
    }

    /// Positions of the key arguments (0 is the command name).
    var keyIndices: [Int] {
        switch keyShape {
        case .keyless: return []
        case .first: return arguments.count > 1 ? [1] : []
        case .second: return arguments.count > 2 ? [2] : []
        case .allArguments: return Array(1..<max(1, arguments.count))
        case .alternate: return Array(stride(from: 1, to: arguments.count, by: 2))
        case .script:
            guard arguments.count > 2, let count = Int(argumentText(2) ?? ""), count > 0 else { return [] }
            return Array(3..<min(arguments.count, 3 + count))
        }
    }

    private func argumentText(_ index: Int) -> String? {
        switch arguments[index] {
        case .string(let text): return text
        case .integer(let value): return String(value)
        case .bytes(let bytes): return String(buffer: bytes)
        }
    }
}

enum CommandKeys {
    enum Shape { case keyless, first, second, allArguments, alternate, script }

    static func shape(of name: String) -> Shape {
        // The commands of the data plane and the usage flush, without hashing the name.
        switch name {
        case "HMGET", "GET", "SET", "HGETALL": return .first
        case "EVALSHA": return .script
        case "WAIT": return .keyless
        default: break
        }
        if let shape = table[name] ?? table[name.uppercased()] { return shape }
        assertionFailure("RedisCommand \(name): add its key positions to CommandKeys.table, so a Cluster can route it")
        return .keyless
    }

    private static let table: [String: Shape] = {
        var table: [String: Shape] = [:]
        for name in ["PING", "AUTH", "SELECT", "HELLO", "QUIT", "ECHO", "SCRIPT", "WAIT", "ROLE", "INFO", "CLIENT", "SENTINEL",
                     "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE", "PUNSUBSCRIBE", "PUBLISH", "PUBSUB", "CLUSTER", "ASKING", "READONLY",
                     "READWRITE", "TIME", "DBSIZE", "FLUSHALL", "FLUSHDB", "CONFIG", "DEBUG", "SLOWLOG", "MULTI", "EXEC", "DISCARD",
                     "COMMAND", "REPLICAOF", "SLAVEOF", "SHUTDOWN", "MEMORY", "BGSAVE", "BGREWRITEAOF", "SAVE", "LASTSAVE",
                     "FAILOVER", "KEYS", "SCAN", "RANDOMKEY", "LATENCY", "RESET", "ACL", "MODULE", "FUNCTION", "LOLWUT"] {
            table[name] = .keyless
        }
        for name in ["GET", "SET", "SETNX", "SETEX", "PSETEX", "GETSET", "GETDEL", "GETEX", "APPEND", "STRLEN", "INCR", "INCRBY",
                     "DECR", "DECRBY", "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "TTL", "PTTL", "PERSIST", "TYPE", "DUMP",
                     "RESTORE", "HGET", "HSET", "HSETNX", "HMSET", "HDEL", "HMGET", "HGETALL", "HINCRBY", "HLEN", "HKEYS", "HVALS",
                     "HEXISTS", "HSCAN", "SADD", "SREM", "SMEMBERS", "SISMEMBER", "SCARD", "SSCAN", "XADD", "XRANGE", "XREVRANGE",
                     "XLEN", "XTRIM", "XDEL", "ZADD", "ZRANGE", "ZRANGEBYSCORE", "ZRANGEBYLEX", "ZREM", "ZCARD", "ZSCORE", "LPUSH", "RPUSH",
                     "LRANGE", "LLEN", "LPOP", "RPOP", "LTRIM", "SPUBLISH", "SSUBSCRIBE", "SUNSUBSCRIBE"] {
            table[name] = .first
        }
        for name in ["XINFO", "OBJECT"] { table[name] = .second }
        for name in ["MGET", "DEL", "UNLINK", "EXISTS", "TOUCH"] { table[name] = .allArguments }
        table["MSET"] = .alternate
        for name in ["EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL"] { table[name] = .script }
        return table
    }()
}
