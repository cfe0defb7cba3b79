import NIOCore
import NIOSSL
import Synchronization

/// Asks Sentinels where the master is: `SENTINEL get-master-addr-by-name`, one Sentinel after the
/// other, starting with the last one that answered. The address is only a candidate: the data
/// connection's handshake confirms with `ROLE` that it is a master (a Sentinel cut off from the
/// others may name an old master).
final class SentinelDiscovery: Sendable {
    let sentinel: RedisConfiguration.Sentinel
    private let base: RedisConfiguration
    private let tlsContext: NIOSSLContext?
    /// Index of the Sentinel that answered last; asked first next time.
    private let preferred = Atomic<Int>(0)

    init(configuration: RedisConfiguration, sentinel: RedisConfiguration.Sentinel, tlsContext: NIOSSLContext?) {
        self.base = configuration
        self.sentinel = sentinel
        self.tlsContext = tlsContext
    }

    /// How to reach Sentinel `address`: its own credentials, no database, no `ROLE` check (a
    /// Sentinel has no role), the client's TLS settings and timeouts.
    func configuration(for address: RedisConfiguration.Sentinel.Address) -> RedisConfiguration {
        var config = RedisConfiguration()
        config.endpoint = .tcp(host: address.host, port: address.port)
        config.tls = base.tls
        config.tls?.serverName = address.host
        config.username = sentinel.username
        config.password = sentinel.password
        config.clientName = "keygate-discovery"
        config.requiresMaster = false
        config.connectTimeout = base.connectTimeout
        config.commandTimeout = base.commandTimeout
        return config
    }

    /// The address of the master, or `discoveryFailed` naming what each Sentinel said.
    func locate(on eventLoop: any EventLoop) -> EventLoopFuture<RedisConfiguration.Endpoint> {
        let start = preferred.load(ordering: .relaxed)
        let order = (0..<sentinel.addresses.count).map { (start + $0) % sentinel.addresses.count }
        return ask(order[...], problems: [], on: eventLoop)
    }

    private func ask(_ order: ArraySlice<Int>, problems: [String], on eventLoop: any EventLoop) -> EventLoopFuture<RedisConfiguration.Endpoint> {
        guard let index = order.first else {
            return eventLoop.makeFailedFuture(Self.failure(masterName: sentinel.masterName, problems: problems))
        }
        let address = sentinel.addresses[index]
        return query(address, on: eventLoop).flatMap { answer in
            switch answer {
            case .master(let endpoint):
                self.preferred.store(index, ordering: .relaxed)
                return eventLoop.makeSucceededFuture(endpoint)
            case .unknownMaster:
                return self.ask(order.dropFirst(), problems: problems + ["\(address): no master named '\(self.sentinel.masterName)'"], on: eventLoop)
            }
        }.flatMapError { error in
            guard (error as? RedisError)?.code != .discoveryFailed else { return eventLoop.makeFailedFuture(error) }
            return self.ask(order.dropFirst(), problems: problems + ["\(address): \(Self.describe(error))"], on: eventLoop)
        }
    }

    enum Answer: Equatable {
        case master(RedisConfiguration.Endpoint)
        case unknownMaster
    }

    /// A connection to Sentinel `address`, with the client's TLS context.
    func connect(to address: RedisConfiguration.Sentinel.Address, on eventLoop: any EventLoop) -> EventLoopFuture<RedisConnection> {
        RedisConnection.connect(configuration: configuration(for: address), tlsContext: tlsContext, eventLoop: eventLoop)
    }

    private func query(_ address: RedisConfiguration.Sentinel.Address, on eventLoop: any EventLoop) -> EventLoopFuture<Answer> {
        connect(to: address, on: eventLoop)
            .flatMap { connection in
                connection.send(RedisCommand("SENTINEL", ["get-master-addr-by-name", .string(self.sentinel.masterName)]))
                    .flatMapThrowing(Self.answer)
                    .always { _ in _ = connection.close() }
            }
    }

    /// Reads `SENTINEL get-master-addr-by-name`: `[ip, port]`, or null for a name it does not monitor.
    static func answer(_ reply: RESPValue) throws -> Answer {
        if reply.isNull { return .unknownMaster }
        guard case .array(let fields) = reply, fields.count == 2, let host = fields[0].string, !host.isEmpty,
              let port = fields[1].string.flatMap({ Int($0) }), (1...65_535).contains(port) else {
            throw RedisError.protocolError("a Sentinel answered get-master-addr-by-name with something that is not [ip, port]")
        }
        return .master(.tcp(host: host, port: port))
    }

    static func failure(masterName: String, problems: [String]) -> RedisError {
        let everyAnswerUnknown = !problems.isEmpty && problems.allSatisfy { $0.hasSuffix("no master named '\(masterName)'") }
        let summary = everyAnswerUnknown
            ? "no Sentinel knows a master named '\(masterName)' (check the name after '#' in the URL)"
            : "no Sentinel gave the address of master '\(masterName)'"
        return RedisError(.discoveryFailed, "\(summary): \(problems.joined(separator: "; "))")
    }

    private static func describe(_ error: any Error) -> String {
        guard let redisError = error as? RedisError else { return "\(error)" }
        if let underlying = redisError.underlying { return "\(redisError.message) (\(underlying))" }
        return redisError.message
    }
}
