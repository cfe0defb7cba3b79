import NIOCore
import NIOSSL
import Synchronization

/// Sends commands to the primary that serves their slot, for a `RedisClient` on a Redis Cluster.
///
/// The slot map comes from `CLUSTER SLOTS`, asked of the known primaries and then the seeds in turn.
/// Each event loop has one connection per primary (a `RedisConnectionSlot`, with its own reconnect
/// loop, `ROLE` check and circuit). Replies steer the routing, as the Cluster specification says:
/// `MOVED` updates the map for that slot, asks for a refresh and retries; `ASK` sends `ASKING` and
/// the command once to the importing node, leaving the map alone; `TRYAGAIN`, `CLUSTERDOWN`,
/// `LOADING` and `MASTERDOWN`, and a primary that cannot be reached (a failover in progress), are
/// retried with backoff inside the command deadline, the map refreshed first. A command whose
/// reply was lost (a timeout, a closed connection) is never resent: it may have run. The map is also
/// refreshed every `refreshInterval`. A refresh that finds other primaries (a failover, a primary
/// added or removed), or the watched key's slot on another primary, calls `onPrimariesChanged`.
final class RedisClusterRouter: Sendable {
    private let configuration: RedisConfiguration
    private let tlsContext: NIOSSLContext?
    private let loops: [any EventLoop]
    private let loopIndex: [ObjectIdentifier: Int]
    private let metrics: RedisClientMetrics
    private let onPrimariesChanged: @Sendable () -> Void
    /// The key whose slot's primary the subscriber uses (the event Stream's): when that slot moves
    /// to another primary, the subscriber must follow it, as after a failover.
    private let watchedKey: @Sendable () -> String?
    private let state = Mutex(State())
    static let maximumRedirects = 5
    static let refreshInterval: TimeAmount = .seconds(5)

    private struct State {
        var map: ClusterSlotMap? { didSet { byPrimaryIndex = [] } }
        /// `connections` by loop index and then the current map's primary index, so a lookup on the
        /// data plane finds its connection without building a string key; cleared with each new map.
        var byPrimaryIndex: [[RedisConnectionSlot?]] = []
        var refreshing: EventLoopFuture<ClusterSlotMap>?
        var lastRefresh: NIODeadline?
        var lastError: String?
        /// `"<loop index>@<host:port>"` -> that loop's connection to that primary.
        var connections: [String: RedisConnectionSlot] = [:]
        var topologies: [String: RedisTopology] = [:]
        var circuits: [String: RedisCircuit] = [:]
        var periodic: RepeatedTask?
        var isShutDown = false

        func cached(loop: Int, index: Int) -> RedisConnectionSlot? {
            loop < byPrimaryIndex.count && index < byPrimaryIndex[loop].count ? byPrimaryIndex[loop][index] : nil
        }
    }

    init(configuration: RedisConfiguration, tlsContext: NIOSSLContext?, loops: [any EventLoop], metrics: RedisClientMetrics,
         watchedKey: @escaping @Sendable () -> String? = { nil }, onPrimariesChanged: @escaping @Sendable () -> Void) {
        self.configuration = configuration
        self.tlsContext = tlsContext
        self.loops = loops
        var index: [ObjectIdentifier: Int] = [:]
        for (position, loop) in loops.enumerated() { index[ObjectIdentifier(loop)] = position }
        self.loopIndex = index
        self.metrics = metrics
        self.onPrimariesChanged = onPrimariesChanged
        self.watchedKey = watchedKey
    }

    // MARK: sending

    func send(_ command: RedisCommand, on eventLoop: any EventLoop) -> EventLoopFuture<RESPValue> {
        let deadline = NIODeadline.now() + TimeAmount(configuration.commandTimeout)
        return attempt(command, on: eventLoop, asking: nil, tries: 0, deadline: deadline)
    }

    /// One pipeline per primary, sent at once, replies put back in order. A keyless command (`WAIT`
    /// after a write) goes with the command before it. Error replies are values; a redirected or
    /// retryable one is resent alone, and the keyless commands after it get `orphanedFollower`.
    func pipeline(_ commands: [RedisCommand], on eventLoop: any EventLoop) -> EventLoopFuture<[RESPValue]> {
        pipeline(commands, on: eventLoop, tries: 0, deadline: NIODeadline.now() + TimeAmount(configuration.commandTimeout))
    }

    private func pipeline(_ commands: [RedisCommand], on eventLoop: any EventLoop, tries: Int, deadline: NIODeadline) -> EventLoopFuture<[RESPValue]> {
        if let map = state.withLock({ $0.map }) { return pipeline(commands, with: map, on: eventLoop, tries: tries, deadline: deadline) }
        return currentMap(on: eventLoop).flatMap { map in self.pipeline(commands, with: map, on: eventLoop, tries: tries, deadline: deadline) }
    }

    private func pipeline(_ commands: [RedisCommand], with map: ClusterSlotMap, on eventLoop: any EventLoop, tries: Int,
                          deadline: NIODeadline) -> EventLoopFuture<[RESPValue]> {
        // Groups by the primary's index in the map, in the order of their first command.
        var groups: [(primary: Int, indices: [Int])] = []
        var previous: Int?
        for (index, command) in commands.enumerated() {
            let target: Int
            switch command.routing {
            case .slot(let slot): target = map.primaryIndex(forSlot: slot) ?? 0 // answered CLUSTERDOWN, retried below
            case .keyless: target = previous ?? 0
            case .crossSlot:
                return eventLoop.makeFailedFuture(RedisError(.crossSlot, "the keys of \(command.name) are in different Cluster slots"))
            }
            previous = target
            if let position = groups.firstIndex(where: { $0.primary == target }) { groups[position].indices.append(index) } else { groups.append((target, [index])) }
        }
        let sends = groups.map { target, indices in
            let group = groups.count == 1 ? commands : indices.map { commands[$0] }
            return Self.pipeline(group, on: self.connection(on: eventLoop, index: target, of: map)).flatMapError { error in
                // A group that never reached its primary (down, or no longer a primary) is sent
                // again once the map is fresh; a group that may have run is not.
                guard let redisError = error as? RedisError, Self.neverSent.contains(redisError.code), tries < Self.maximumRedirects else {
                    return eventLoop.makeFailedFuture(error)
                }
                let delay = TimeAmount.milliseconds(min(500, 25 << Int64(tries)))
                guard NIODeadline.now() + delay < deadline else { return eventLoop.makeFailedFuture(error) }
                self.metrics.clusterRetries.add()
                self.refreshSoon(on: eventLoop, force: true)
                return eventLoop.scheduleTask(in: delay) {}.futureResult.flatMap {
                    self.pipeline(group, on: eventLoop, tries: tries + 1, deadline: deadline)
                }
            }.map { (indices, $0) }
        }
        // One primary (every command in one slot, or in slots of one primary): no gathering.
        let gathered = sends.count == 1 ? sends[0].map { [$0] } : EventLoopFuture.whenAllSucceed(sends, on: eventLoop)
        return gathered.flatMap { results in
            var replies = [RESPValue](repeating: .null, count: commands.count)
            var again: [Int] = []
            var orphaned: [Int] = []
            for (indices, groupReplies) in results {
                for (position, (index, reply)) in zip(indices, groupReplies).enumerated() {
                    replies[index] = reply
                    guard case .error(let message) = reply, Self.isRedirectOrRetryable(message) else { continue }
                    again.append(index)
                    // The keyless commands that rode along (a WAIT after its mark) ran on the
                    // server that refused the write: their replies say nothing about it.
                    for follower in indices.dropFirst(position + 1) {
                        guard commands[follower].routing == .keyless else { break }
                        orphaned.append(follower)
                    }
                }
            }
            for index in orphaned { replies[index] = .error(Self.orphanedFollower) }
            guard !again.isEmpty else { return eventLoop.makeSucceededFuture(replies) }
            let first = replies
            let resent = again.map { index in
                let message: String
                if case .error(let text) = first[index] { message = text } else { message = "" }
                return self.recover(RedisError(.serverError, message), commands[index], on: eventLoop, target: map.primaries[0],
                                    tries: 0, deadline: deadline)
                    .flatMapError { error in
                        // A resent command that fails again reports its error reply, as a pipeline does.
                        if let redisError = error as? RedisError, redisError.code == .serverError {
                            return eventLoop.makeSucceededFuture(.error(redisError.message))
                        }
                        return eventLoop.makeFailedFuture(error)
                    }
                    .map { (index, $0) }
            }
            return EventLoopFuture.whenAllSucceed(resent, on: eventLoop).map { pairs in
                var merged = first
                for (index, reply) in pairs { merged[index] = reply }
                return merged
            }
        }
    }

    /// One key per primary among `keys` (in their order), by the current map: a caller that follows
    /// writes with `WAIT` needs one on each primary written to. Without a map yet, the first key.
    func primaryRepresentatives(of keys: [String]) -> [String] {
        guard let map = state.withLock({ $0.map }) else { return Array(keys.prefix(1)) }
        var seen: [ClusterSlotMap.Primary] = []
        var representatives: [String] = []
        for key in keys {
            guard let primary = map.primary(forSlot: HashSlot.of(key)), !seen.contains(primary) else { continue }
            seen.append(primary)
            representatives.append(key)
        }
        return representatives.isEmpty ? Array(keys.prefix(1)) : representatives
    }

    /// The primaries of the current map (fetched first if there is none yet).
    func primaries(on eventLoop: any EventLoop) -> EventLoopFuture<[ClusterSlotMap.Primary]> {
        currentMap(on: eventLoop).map(\.primaries)
    }

    /// Sends `command` to one primary as it is, without routing or retries (a `SCAN` cursor walk,
    /// whose cursor only means something to the server that gave it).
    func send(_ command: RedisCommand, toPrimary primary: ClusterSlotMap.Primary, on eventLoop: any EventLoop) -> EventLoopFuture<RESPValue> {
        Self.send(command, on: connection(on: eventLoop, to: primary))
    }

    /// Sends `command` to every primary (`SCRIPT LOAD`, so `EVALSHA` finds it wherever it runs).
    func broadcast(_ command: RedisCommand, on eventLoop: any EventLoop) -> EventLoopFuture<[RESPValue]> {
        currentMap(on: eventLoop).flatMap { map in
            EventLoopFuture.whenAllSucceed(map.primaries.map { Self.send(command, on: self.connection(on: eventLoop, to: $0)) }, on: eventLoop)
        }
    }

    private func attempt(_ command: RedisCommand, on eventLoop: any EventLoop, asking: ClusterSlotMap.Primary?, tries: Int,
                         deadline: NIODeadline) -> EventLoopFuture<RESPValue> {
        // The common case, a keyed command with the map known: no future before the send.
        if asking == nil, case .slot(let slot) = command.routing, let (target, connection) = knownConnection(forSlot: slot, on: eventLoop) {
            return Self.send(command, on: connection).flatMapError { error in
                self.recover(error, command, on: eventLoop, target: target, tries: tries, deadline: deadline)
            }
        }
        return currentMap(on: eventLoop).flatMap { map in
            let target: ClusterSlotMap.Primary
            if let asking {
                target = asking
            } else {
                switch command.routing {
                case .slot(let slot):
                    guard let primary = map.primary(forSlot: slot) else {
                        return self.recover(RedisError(.serverError, "CLUSTERDOWN slot \(slot) is not served by any primary"),
                                            command, on: eventLoop, target: map.primaries[0], tries: tries, deadline: deadline)
                    }
                    target = primary
                case .keyless: target = map.primaries[0]
                case .crossSlot:
                    return eventLoop.makeFailedFuture(RedisError(.crossSlot, "the keys of \(command.name) are in different Cluster slots"))
                }
            }
            let connection = self.connection(on: eventLoop, to: target)
            let sent: EventLoopFuture<RESPValue>
            if asking != nil {
                sent = Self.pipeline([RedisCommand("ASKING"), command], on: connection).flatMapThrowing { replies in
                    if case .error(let message) = replies[1] { throw RedisError(.serverError, message) }
                    return replies[1]
                }
            } else {
                sent = Self.send(command, on: connection)
            }
            return sent.flatMapError { error in
                self.recover(error, command, on: eventLoop, target: target, tries: tries, deadline: deadline)
            }
        }
    }

    /// Follows a redirect or retries, or gives the error back.
    private func recover(_ error: any Error, _ command: RedisCommand, on eventLoop: any EventLoop, target: ClusterSlotMap.Primary,
                         tries: Int, deadline: NIODeadline) -> EventLoopFuture<RESPValue> {
        guard let redisError = error as? RedisError, tries < Self.maximumRedirects else { return eventLoop.makeFailedFuture(error) }
        if redisError.code == .serverError, let redirect = ClusterRedirect(errorMessage: redisError.message) {
            let host = redirect.host.isEmpty ? target.host : redirect.host
            switch redirect.kind {
            case .moved:
                metrics.movedRedirects.add()
                let watchedMoved = state.withLock { state -> Bool in
                    guard let old = state.map else { return false }
                    state.map = old.moving(slot: redirect.slot, toHost: host, port: redirect.port)
                    return state.map.map { watchedSlotMoved(from: old, to: $0) } ?? false
                }
                if watchedMoved { onPrimariesChanged() }
                refreshSoon(on: eventLoop)
                return attempt(command, on: eventLoop, asking: nil, tries: tries + 1, deadline: deadline)
            case .ask:
                metrics.askRedirects.add()
                return attempt(command, on: eventLoop, asking: .init(host: host, port: redirect.port, id: ""), tries: tries + 1, deadline: deadline)
            }
        }
        let retryable = redisError.code == .serverError ? Self.isRetryable(redisError.message)
            : Self.neverSent.contains(redisError.code)
        guard retryable else { return eventLoop.makeFailedFuture(error) }
        let delay = TimeAmount.milliseconds(min(500, 25 << Int64(tries)))
        guard NIODeadline.now() + delay < deadline else { return eventLoop.makeFailedFuture(error) }
        metrics.clusterRetries.add()
        if redisError.code != .serverError || redisError.message.hasPrefix("CLUSTERDOWN") { refreshSoon(on: eventLoop, force: true) }
        return eventLoop.scheduleTask(in: delay) {}.futureResult.flatMap {
            self.attempt(command, on: eventLoop, asking: nil, tries: tries + 1, deadline: deadline)
        }
    }

    /// Whether the watched key's slot is served by another primary in `new` than in `old`.
    private func watchedSlotMoved(from old: ClusterSlotMap, to new: ClusterSlotMap) -> Bool {
        guard let key = watchedKey() else { return false }
        let slot = HashSlot.of(key)
        let before = old.primary(forSlot: slot), after = new.primary(forSlot: slot)
        return before?.host != after?.host || before?.port != after?.port
    }

    /// The reply given to a keyless command that followed a redirected one in a pipeline.
    static let orphanedFollower = "TRYAGAIN the command before this one was redirected to another primary; not sent there"

    /// Failures before the command left: safe to send again once the map says where.
    static let neverSent: [RedisError.Code] = [.connectFailed, .circuitOpen, .notWritableMaster]

    static func isRetryable(_ message: String) -> Bool {
        ["TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN"].contains { message.hasPrefix($0) }
    }

    static func isRedirectOrRetryable(_ message: String) -> Bool {
        message.hasPrefix("MOVED ") || message.hasPrefix("ASK ") || isRetryable(message)
    }

    // MARK: the slot map

    /// The map, fetched first if there is none yet.
    private func currentMap(on eventLoop: any EventLoop) -> EventLoopFuture<ClusterSlotMap> {
        if let map = state.withLock({ $0.map }) { return eventLoop.makeSucceededFuture(map) }
        return refresh(on: eventLoop)
    }

    /// Asks for a refresh unless one ran in the last 100 ms (a burst of redirects asks once).
    func refreshSoon(on eventLoop: any EventLoop, force: Bool = false) {
        let due = state.withLock { state in
            force || state.lastRefresh.map { NIODeadline.now() - $0 > .milliseconds(100) } ?? true
        }
        if due { _ = refresh(on: eventLoop) }
    }

    /// Fetches `CLUSTER SLOTS` from the known primaries, then the seeds, until one answers. One
    /// refresh at a time: concurrent callers share it.
    func refresh(on eventLoop: any EventLoop) -> EventLoopFuture<ClusterSlotMap> {
        let (existing, promise, candidates) = state.withLock { state -> (EventLoopFuture<ClusterSlotMap>?, EventLoopPromise<ClusterSlotMap>?, [(String, Int)]) in
            if let refreshing = state.refreshing { return (refreshing, nil, []) }
            let promise = eventLoop.makePromise(of: ClusterSlotMap.self)
            state.refreshing = promise.futureResult
            var candidates = (state.map?.primaries ?? []).map { ($0.host, $0.port) }
            for seed in configuration.cluster?.seeds ?? [] where !candidates.contains(where: { $0 == (seed.host, seed.port) }) {
                candidates.append((seed.host, seed.port))
            }
            return (nil, promise, candidates)
        }
        if let existing { return existing.hop(to: eventLoop) }
        guard let promise else { preconditionFailure("unreachable") }
        ask(candidates, index: 0, errors: [], on: eventLoop).whenComplete { result in
            let changed = self.state.withLock { state -> Bool in
                state.refreshing = nil
                state.lastRefresh = .now()
                guard case .success(let map) = result else {
                    if case .failure(let error) = result { state.lastError = "\(error)" }
                    return false
                }
                defer { state.map = map; state.lastError = nil }
                guard let old = state.map else { return false }
                return old.primaryIDs != map.primaryIDs || self.watchedSlotMoved(from: old, to: map)
            }
            switch result {
            case .success: self.metrics.slotMapRefreshes.add()
            case .failure: self.metrics.slotMapRefreshFailures.add()
            }
            if changed { self.onPrimariesChanged() }
            if case .success(let map) = result { self.connectMissing(map) }
            promise.completeWith(result)
        }
        return promise.futureResult
    }

    private func ask(_ candidates: [(String, Int)], index: Int, errors: [String], on eventLoop: any EventLoop) -> EventLoopFuture<ClusterSlotMap> {
        guard index < candidates.count else {
            return eventLoop.makeFailedFuture(RedisError(.connectFailed, "no cluster node answered CLUSTER SLOTS (\(errors.joined(separator: "; ")))"))
        }
        let (host, port) = candidates[index]
        var probe = nodeConfiguration(host: host, port: port)
        probe.requiresMaster = false // a replica knows the map too
        probe.clientName = "keygate-cluster-map"
        return RedisConnection.connect(configuration: probe, tlsContext: tlsContext, eventLoop: eventLoop).flatMap { connection in
            connection.send(RedisCommand("CLUSTER", ["SLOTS"])).always { _ in _ = connection.close() }
        }.flatMapThrowing { reply -> ClusterSlotMap in
            guard let map = ClusterSlotMap(clusterSlots: reply, answeredBy: host) else {
                throw RedisError(.protocolError, "\(host):\(port) gave no usable CLUSTER SLOTS reply (is it a cluster node with slots assigned?)")
            }
            return map
        }.flatMapError { error in
            self.ask(candidates, index: index + 1, errors: errors + ["\(host):\(port): \(error)"], on: eventLoop)
        }
    }

    /// The primary serving `key`'s slot (any primary without a key), from a fresh map: a subscriber
    /// reconnecting after losing its server must not go back to a primary that was replaced.
    func primaryEndpoint(forKey key: String?, on eventLoop: any EventLoop) -> EventLoopFuture<RedisConfiguration.Endpoint> {
        refresh(on: eventLoop).flatMapError { _ in self.currentMap(on: eventLoop) }.map { map in
            let primary = key.flatMap { map.primary(forSlot: HashSlot.of($0)) } ?? map.primaries[0]
            return .tcp(host: primary.host, port: primary.port)
        }
    }

    /// Starts the periodic refresh.
    func start() {
        guard let loop = loops.first else { return }
        let task = loop.scheduleRepeatedTask(initialDelay: Self.refreshInterval, delay: Self.refreshInterval) { _ in
            _ = self.refresh(on: loop)
        }
        state.withLock { $0.periodic = task }
    }

    // MARK: connections

    /// A slot's methods run on its own loop.
    private static func send(_ command: RedisCommand, on slot: RedisConnectionSlot) -> EventLoopFuture<RESPValue> {
        slot.eventLoop.inEventLoop ? slot.send(command) : slot.eventLoop.flatSubmit { slot.send(command) }
    }

    private static func pipeline(_ commands: [RedisCommand], on slot: RedisConnectionSlot) -> EventLoopFuture<[RESPValue]> {
        slot.eventLoop.inEventLoop ? slot.pipeline(commands) : slot.eventLoop.flatSubmit { slot.pipeline(commands) }
    }

    private func nodeConfiguration(host: String, port: Int) -> RedisConfiguration {
        var node = configuration
        node.cluster = nil
        node.endpoint = .tcp(host: host, port: port)
        if var tls = node.tls, tls.serverName == nil || configuration.cluster?.seeds.first?.host == tls.serverName {
            tls.serverName = host
            node.tls = tls
        }
        return node
    }

    /// This loop's connection to the primary serving `slot` by the current map, nil without a map
    /// or when no primary serves the slot (the slow path then refreshes or fails).
    private func knownConnection(forSlot slot: Int, on eventLoop: any EventLoop) -> (ClusterSlotMap.Primary, RedisConnectionSlot)? {
        let loop = loopIndex[ObjectIdentifier(eventLoop)] ?? 0
        let known = state.withLock { state -> (ClusterSlotMap, Int, RedisConnectionSlot?)? in
            guard let map = state.map, let index = map.primaryIndex(forSlot: slot) else { return nil }
            return (map, index, state.cached(loop: loop, index: index))
        }
        guard let (map, index, cached) = known else { return nil }
        return (map.primaries[index], cached ?? connection(on: eventLoop, index: index, of: map))
    }

    /// This loop's connection to primary number `index` of `map`, remembered by index while `map`
    /// is the current one.
    private func connection(on eventLoop: any EventLoop, index: Int, of map: ClusterSlotMap) -> RedisConnectionSlot {
        let loop = loopIndex[ObjectIdentifier(eventLoop)] ?? 0
        if let cached = state.withLock({ $0.map == map ? $0.cached(loop: loop, index: index) : nil }) { return cached }
        let created = connection(on: eventLoop, to: map.primaries[index])
        state.withLock { state in
            guard state.map == map else { return }
            while state.byPrimaryIndex.count <= loop { state.byPrimaryIndex.append([]) }
            while state.byPrimaryIndex[loop].count <= index { state.byPrimaryIndex[loop].append(nil) }
            state.byPrimaryIndex[loop][index] = created
        }
        return created
    }

    /// This loop's connection to `primary`, created on first use.
    private func connection(on eventLoop: any EventLoop, to primary: ClusterSlotMap.Primary) -> RedisConnectionSlot {
        let loop = loopIndex[ObjectIdentifier(eventLoop)] ?? 0
        let key = "\(loop)@\(primary.description)"
        return state.withLock { state in
            if let existing = state.connections[key] { return existing }
            let node = nodeConfiguration(host: primary.host, port: primary.port)
            let topology = state.topologies[primary.description] ?? RedisTopology(configuration: node, tlsContext: tlsContext)
            state.topologies[primary.description] = topology
            let circuit = state.circuits[primary.description] ?? RedisCircuit(failFastAfter: configuration.failFastAfter)
            state.circuits[primary.description] = circuit
            let slot = RedisConnectionSlot(eventLoop: loops[loop], configuration: node, topology: topology, circuit: circuit, metrics: metrics)
            state.connections[key] = slot
            return slot
        }
    }

    /// Opens the connections a map needs that no command has opened yet (a replica promoted while
    /// no traffic went to its slots): readiness counts every primary, used or not.
    private func connectMissing(_ map: ClusterSlotMap) {
        for (index, loop) in loops.enumerated() {
            for primary in map.primaries {
                let key = "\(index)@\(primary.description)"
                guard state.withLock({ $0.connections[key] == nil && !$0.isShutDown }) else { continue }
                let slot = connection(on: loop, to: primary)
                slot.eventLoop.execute { _ = slot.connection(patience: self.configuration.connectTimeout) }
            }
        }
    }

    /// Opens every loop's connection to every primary.
    func connectAll() async throws {
        let map = try await refresh(on: loops[0]).get()
        for loop in loops {
            for primary in map.primaries {
                let slot = connection(on: loop, to: primary)
                _ = try await slot.eventLoop.flatSubmit { slot.connection(patience: self.configuration.connectTimeout) }.get()
            }
        }
    }

    /// Ready: every slot is served and this node reaches every primary.
    var isHealthy: Bool {
        state.withLock { state in
            guard let map = state.map, map.coveredSlots == HashSlot.count else { return false }
            return map.primaries.allSatisfy { primary in
                state.connections.contains { $0.key.hasSuffix("@" + primary.description) && $0.value.isHealthy.load(ordering: .relaxed) }
            }
        }
    }

    /// Why the cluster is not usable, nil while it is.
    var unavailableReason: String? {
        guard !isHealthy else { return nil }
        return state.withLock { state in
            guard let map = state.map else { return state.lastError ?? "no slot map yet" }
            if map.coveredSlots < HashSlot.count { return "only \(map.coveredSlots) of \(HashSlot.count) slots are served" }
            let down = map.primaries.filter { primary in
                !state.connections.contains { $0.key.hasSuffix("@" + primary.description) && $0.value.isHealthy.load(ordering: .relaxed) }
            }
            return "primaries not reached: " + down.map(\.description).joined(separator: ", ")
        }
    }

    var slotMap: ClusterSlotMap? { state.withLock { $0.map } }

    func shutdown() async {
        let (connections, periodic) = state.withLock { state -> ([RedisConnectionSlot], RepeatedTask?) in
            state.isShutDown = true
            return (Array(state.connections.values), state.periodic)
        }
        periodic?.cancel()
        for connection in connections { try? await connection.shutdown().get() }
    }
}
