import NIOCore
import Synchronization

/// The client-wide record of a Redis outage, shared by every event loop's connection slot.
///
/// When any slot fails to reach Redis the outage starts; when any slot connects it ends. Once an
/// outage has lasted `failFastAfter`, every slot answers at once with `circuitOpen` instead of
/// making callers wait for a reconnect that keeps failing. When an outage ends, `onRecovery` runs so
/// the other slots reconnect at once instead of waiting out their backoff (up to the maximum delay).
final class RedisCircuit: Sendable {
    private let failFastAfter: Int64
    /// `NIODeadline.uptimeNanoseconds` when the outage began; 0 while Redis is reachable.
    private let outageStart = Atomic<UInt64>(0)
    private let recoveryHandler = Mutex<(@Sendable () -> Void)?>(nil)

    /// Called (on the thread that saw the success) each time an outage ends.
    func onRecovery(_ handler: @escaping @Sendable () -> Void) {
        recoveryHandler.withLock { $0 = handler }
    }

    init(failFastAfter: Duration) {
        self.failFastAfter = TimeAmount(failFastAfter).nanoseconds
    }

    func recordFailure() {
        _ = outageStart.compareExchange(expected: 0, desired: max(1, NIODeadline.now().uptimeNanoseconds), ordering: .relaxed)
    }

    func recordSuccess() {
        guard outageStart.exchange(0, ordering: .relaxed) != 0 else { return }
        recoveryHandler.withLock { $0 }?()
    }

    /// True once the current outage is older than `failFastAfter`.
    var isOpen: Bool {
        let start = outageStart.load(ordering: .relaxed)
        guard start != 0 else { return false }
        return Int64(NIODeadline.now().uptimeNanoseconds &- start) > failFastAfter
    }
}
