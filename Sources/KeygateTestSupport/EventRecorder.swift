import Synchronization

/// Collects values from an async sequence in the background, so a test can wait for one with a
/// bounded deadline instead of blocking on `next()`.
public final class EventRecorder<Element: Sendable>: Sendable {
    private final class Storage: Sendable {
        let events = Mutex<[Element]>([])
    }
    private let storage = Storage()
    private let task: Task<Void, Never>

    public init<S: AsyncSequence & Sendable>(_ sequence: S) where S.Element == Element {
        let storage = self.storage
        task = Task {
            do {
                for try await event in sequence { storage.events.withLock { $0.append(event) } }
            } catch {}
        }
    }

    deinit { task.cancel() }

    public var all: [Element] { storage.events.withLock { $0 } }

    /// Waits (polling every 5 ms, at most `timeout`) until an event at or after index `from` matches;
    /// returns its index, or nil on timeout.
    public func waitFor(from: Int = 0, timeout: Duration, _ matches: (Element) -> Bool) async -> Int? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let snapshot = all
            if from < snapshot.count, let index = snapshot[from...].firstIndex(where: matches) { return index }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return nil
    }
}
