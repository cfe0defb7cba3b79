import Foundation
public import Logging
public import ServiceLifecycle
public import Synchronization

/// Moves usage counts from the event loops to Redis every `interval`, exactly once (rule 10).
///
/// A batch gets an id (`node:sequence`) and is frozen until Redis acknowledges it: a retry after a
/// timeout resends the same id and contents, and the batch script ignores a sequence it already
/// applied (the next batch is cut only once this one is acknowledged, so sequences arrive in order).
/// New counts accumulate meanwhile. Past `maxPendingKeys` distinct keys the accumulated counts are
/// appended to a local spill file instead of being dropped, and replayed (with their batch ids) as
/// soon as Redis takes a batch again, or at the next start. On graceful shutdown it flushes once
/// more within `shutdownDeadline`, then spills what is left. Residual loss: up to one interval of counts on `kill -9`.
public final class UsageFlusher: Service, Sendable {
    public struct Settings: Sendable, Equatable {
        public var interval: Duration = .seconds(1)
        /// Keys per batch script call.
        public var maxBatchKeys = 1_000
        /// Distinct keys held in memory while Redis is failing before spilling to disk.
        public var maxPendingKeys = 100_000
        /// Spill file; nil disables spilling (then counts past the cap are dropped and counted).
        public var spillPath: String? = nil
        public var shutdownDeadline: Duration = .seconds(5)
        /// How long a batch the primary applied but no replica confirmed (`WAIT` short) is resent,
        /// so a failover in the meantime cannot lose it (the new primary lacks its mark too and
        /// applies it again). After that it is taken as counted: with no replica left (the one that
        /// took over has none yet), waiting longer would only hold every count back.
        public var maxReplicationWait: Duration = .seconds(10)
        public init() {}
    }

    private struct Batch: Codable, Sendable {
        var id: String
        var deltas: [Entry]
        struct Entry: Codable, Sendable {
            var hash: String
            var count: Int64
            var lastUsedMilliseconds: Int64
            /// Absent in spill files written before refusals were counted.
            var refused: RefusalCounts?

            init(_ hash: KeyHash, _ delta: UsageRecorder.Delta) {
                self.hash = hash.hex
                count = delta.count
                lastUsedMilliseconds = delta.lastUsedMilliseconds
                refused = delta.refused.isZero ? nil : delta.refused
            }

            var delta: KeyStore.UsageDelta? {
                KeyHash(hex: hash).map {
                    KeyStore.UsageDelta(hash: $0, count: count, lastUsedAt: Date(milliseconds: lastUsedMilliseconds),
                                        refused: refused ?? RefusalCounts())
                }
            }
        }
    }

    private struct State {
        var accumulating: [KeyHash: UsageRecorder.Delta] = [:]
        var frozen: Batch?
        var sequence = 0
        /// Memory-cap spills so far: each one is its own batch series (`<node>-spill<n>:1`), since
        /// it is replayed after later batches of the node's own series (`KeyStore.applyUsage`).
        var spills = 0
        /// Failed rounds in a row, and when the last warning was logged (an outage logs a line
        /// every 10 s, not one per retry).
        var failedRounds = 0
        var lastWarning: ContinuousClock.Instant?
        /// When the frozen batch was first applied without a replica's confirmation.
        var unconfirmedSince: ContinuousClock.Instant?
        /// Shutting down: a batch the primary applied is taken as counted at once.
        var stopping = false
    }

    private let store: KeyStore
    private let recorder: UsageRecorder
    private let settings: Settings
    private let nodeID: String
    private let logger: Logger
    private let state = Mutex(State())
    /// A spill file may hold counts: replay it as soon as Redis takes batches again (not only at the
    /// next start). True at start, to look once.
    private let spillPending = Atomic<Bool>(true)
    public let metrics = UsageMetrics()

    public init(store: KeyStore, recorder: UsageRecorder, settings: Settings = Settings(), nodeID: String, logger: Logger) {
        self.store = store
        self.recorder = recorder
        self.settings = settings
        self.nodeID = nodeID
        self.logger = logger
    }

    public func run() async throws {
        await replaySpill()
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: self.settings.interval)
                await self.flush()
            }
        }
        // Graceful shutdown: the data plane has stopped taking requests; flush what is left.
        state.withLock { $0.stopping = true }
        let deadline = ContinuousClock.now + settings.shutdownDeadline
        await flush()
        while pendingCount > 0 && ContinuousClock.now + .milliseconds(100) < deadline && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100)) // Redis is failing: retry, do not spin
            await flush()
        }
        if pendingCount > 0 { spillEverything(reason: "shutdown") }
        logger.info("usage flusher stopped", metadata: ["pending_keys": "\(pendingCount)"])
    }

    /// Distinct keys not yet acknowledged by Redis.
    public var pendingCount: Int {
        state.withLock { $0.accumulating.count + ($0.frozen?.deltas.count ?? 0) }
    }

    /// One round: drain the loops, then send batches until Redis fails or nothing is left.
    public func flush() async {
        let drained = await recorder.drain()
        state.withLock { state in
            for (hash, delta) in drained {
                state.accumulating[hash, default: UsageRecorder.Delta(count: 0, lastUsedMilliseconds: 0)].merge(delta)
            }
        }
        var failed = false
        while let batch = nextBatch() {
            do {
                let deltas = batch.deltas.compactMap(\.delta)
                let applied: Bool
                do {
                    applied = try await store.applyUsage(batchID: batch.id, deltas)
                } catch let error where error.code == .notReplicated && acceptUnconfirmed() {
                    metrics.unconfirmedBatches.add(1, ordering: .relaxed)
                    logger.warning("usage batch applied on the primary but no replica confirmed it; counted as it is",
                                   metadata: ["batch": "\(batch.id)", "error": "\(error)"])
                    applied = true
                }
                let recoveredAfter = state.withLock { state -> Int in
                    state.frozen = nil
                    state.unconfirmedSince = nil
                    defer { state.failedRounds = 0; state.lastWarning = nil }
                    return state.failedRounds
                }
                if recoveredAfter > 0 { logger.info("usage flush recovered", metadata: ["failed_rounds": "\(recoveredAfter)"]) }
                metrics.flushedBatches.add(1, ordering: .relaxed)
                if !applied { metrics.duplicateBatches.add(1, ordering: .relaxed) }
            } catch {
                metrics.flushFailures.add(1, ordering: .relaxed)
                let (rounds, warn) = state.withLock { state -> (Int, Bool) in
                    state.failedRounds += 1
                    let now = ContinuousClock.now
                    guard state.lastWarning.map({ now - $0 >= .seconds(10) }) ?? true else { return (state.failedRounds, false) }
                    state.lastWarning = now
                    return (state.failedRounds, true)
                }
                if warn {
                    logger.warning("usage flush failed; will retry the same batch",
                                   metadata: ["batch": "\(batch.id)", "error": "\(error)", "failed_rounds": "\(rounds)"])
                }
                if state.withLock({ $0.accumulating.count }) > settings.maxPendingKeys { spillAccumulating() }
                failed = true
                break
            }
        }
        // Redis takes batches again: bring back what an outage pushed to disk.
        if !failed && spillPending.load(ordering: .relaxed) { await replaySpill() }
        metrics.pendingKeys.store(pendingCount, ordering: .relaxed)
    }

    /// Whether a batch the primary applied without a replica's confirmation is taken as counted now
    /// (shutting down, or resent for `maxReplicationWait` already); starts the wait otherwise.
    private func acceptUnconfirmed() -> Bool {
        state.withLock { state in
            let now = ContinuousClock.now
            let since = state.unconfirmedSince ?? now
            state.unconfirmedSince = since
            return state.stopping || now - since >= settings.maxReplicationWait
        }
    }

    /// The frozen batch (a retry), or a new one cut from the accumulated counts.
    private func nextBatch() -> Batch? {
        state.withLock { state in
            if let frozen = state.frozen { return frozen }
            guard !state.accumulating.isEmpty else { return nil }
            state.sequence += 1
            var entries: [Batch.Entry] = []
            entries.reserveCapacity(min(settings.maxBatchKeys, state.accumulating.count))
            for (hash, delta) in state.accumulating {
                entries.append(Batch.Entry(hash, delta))
                if entries.count == settings.maxBatchKeys { break }
            }
            for entry in entries { state.accumulating.removeValue(forKey: KeyHash(hex: entry.hash)!) }
            let batch = Batch(id: "\(nodeID):\(state.sequence)", deltas: entries)
            state.frozen = batch
            return batch
        }
    }

    // MARK: spill file

    private func spillAccumulating() {
        let batch: Batch? = state.withLock { state in
            guard !state.accumulating.isEmpty else { return nil }
            state.spills += 1
            let entries = state.accumulating.map { Batch.Entry($0.key, $0.value) }
            state.accumulating = [:]
            return Batch(id: "\(nodeID)-spill\(state.spills):1", deltas: entries)
        }
        if let batch { write([batch], reason: "memory cap") }
    }

    private func spillEverything(reason: String) {
        let batches: [Batch] = state.withLock { state in
            var batches: [Batch] = []
            if let frozen = state.frozen { batches.append(frozen) }
            if !state.accumulating.isEmpty {
                state.sequence += 1
                batches.append(Batch(id: "\(nodeID):\(state.sequence)", deltas: state.accumulating.map { Batch.Entry($0.key, $0.value) }))
            }
            state.frozen = nil
            state.accumulating = [:]
            return batches
        }
        write(batches, reason: reason)
    }

    /// Appends batches as JSON lines; without a spill file (or if writing fails) they are dropped
    /// and counted in `usage_dropped_total`.
    private func write(_ batches: [Batch], reason: String) {
        let keys = batches.reduce(0) { $0 + $1.deltas.count }
        guard keys > 0 else { return }
        guard let path = settings.spillPath else {
            metrics.dropped.add(keys, ordering: .relaxed)
            logger.error("usage counts dropped: no spill file configured", metadata: ["keys": "\(keys)", "reason": "\(reason)"])
            return
        }
        let encoder = JSONEncoder()
        var data = Data()
        for batch in batches {
            guard let line = try? encoder.encode(batch) else { continue }
            data.append(line)
            data.append(UInt8(ascii: "\n"))
        }
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: path) else {
            metrics.dropped.add(keys, ordering: .relaxed)
            logger.error("usage counts dropped: cannot open spill file", metadata: ["path": "\(path)", "keys": "\(keys)"])
            return
        }
        defer { try? handle.close() }
        do {
            try handle.seekToEnd()
            try handle.write(contentsOf: data)
            try handle.synchronize()
            spillPending.store(true, ordering: .relaxed)
            metrics.spilled.add(keys, ordering: .relaxed)
            logger.warning("usage counts spilled to disk", metadata: ["path": "\(path)", "keys": "\(keys)", "reason": "\(reason)"])
        } catch {
            metrics.dropped.add(keys, ordering: .relaxed)
            logger.error("usage counts dropped: spill write failed", metadata: ["path": "\(path)", "error": "\(error)"])
        }
    }

    /// Applies spilled batches with their own ids (so a batch already applied before a crash is not
    /// counted twice), then removes the file. Left in place if Redis is unavailable.
    func replaySpill() async {
        guard let path = settings.spillPath, let data = FileManager.default.contents(atPath: path), !data.isEmpty else {
            spillPending.store(false, ordering: .relaxed)
            return
        }
        let decoder = JSONDecoder()
        let batches = data.split(separator: UInt8(ascii: "\n")).compactMap { try? decoder.decode(Batch.self, from: Data($0)) }
        for batch in batches {
            let deltas = batch.deltas.compactMap(\.delta)
            do {
                try await store.applyUsage(batchID: batch.id, deltas)
            } catch {
                logger.warning("spilled usage not replayed yet; Redis unavailable", metadata: ["path": "\(path)"])
                return
            }
        }
        try? FileManager.default.removeItem(atPath: path)
        spillPending.store(false, ordering: .relaxed)
        logger.info("spilled usage replayed", metadata: ["batches": "\(batches.count)"])
    }
}

/// Counters of usage counting, read by the metrics endpoint.
public final class UsageMetrics: Sendable {
    public let pendingKeys = Atomic<Int>(0)
    public let flushedBatches = Atomic<Int>(0)
    public let duplicateBatches = Atomic<Int>(0)
    public let flushFailures = Atomic<Int>(0)
    public let spilled = Atomic<Int>(0)
    public let dropped = Atomic<Int>(0)
    /// Batches taken as counted although no replica confirmed them (`maxReplicationWait`).
    public let unconfirmedBatches = Atomic<Int>(0)
    public init() {}
}
