/// A fixed-capacity least-recently-used map from key hash to a small value, in flat arrays with
/// intrusive links (no allocation per entry once warm). Not thread-safe: `VerdictCache` guards it.
struct LRUCache<Value> {
    private struct Slot {
        var hash: KeyHash
        var value: Value
        var newer: Int32 // towards the most recently used; -1 at the head
        var older: Int32 // towards the least recently used; -1 at the tail
    }

    let capacity: Int
    private var index: [KeyHash: Int32] = [:]
    private var slots: ContiguousArray<Slot> = []
    private var freeSlots: [Int32] = []
    private var newest: Int32 = -1
    private var oldest: Int32 = -1

    init(capacity: Int) {
        precondition(capacity > 0 && capacity < Int(Int32.max))
        self.capacity = capacity
    }

    var count: Int { index.count }

    /// The value, marking it most recently used.
    mutating func get(_ hash: KeyHash) -> Value? {
        guard let slot = index[hash] else { return nil }
        moveToFront(slot)
        return slots[Int(slot)].value
    }

    /// Inserts or replaces; returns true when this evicted the least recently used entry.
    @discardableResult
    mutating func set(_ hash: KeyHash, _ value: Value) -> Bool {
        if let slot = index[hash] {
            slots[Int(slot)].value = value
            moveToFront(slot)
            return false
        }
        var evicted = false
        let slot: Int32
        if index.count >= capacity {
            slot = oldest
            index.removeValue(forKey: slots[Int(slot)].hash)
            unlink(slot)
            slots[Int(slot)] = Slot(hash: hash, value: value, newer: -1, older: -1)
            evicted = true
        } else if let reused = freeSlots.popLast() {
            slot = reused
            slots[Int(slot)] = Slot(hash: hash, value: value, newer: -1, older: -1)
        } else {
            slot = Int32(slots.count)
            slots.append(Slot(hash: hash, value: value, newer: -1, older: -1))
        }
        index[hash] = slot
        linkAtFront(slot)
        return evicted
    }

    @discardableResult
    mutating func remove(_ hash: KeyHash) -> Bool {
        guard let slot = index.removeValue(forKey: hash) else { return false }
        unlink(slot)
        freeSlots.append(slot)
        return true
    }

    mutating func removeAll() {
        index.removeAll(keepingCapacity: true)
        slots.removeAll(keepingCapacity: true)
        freeSlots.removeAll()
        newest = -1
        oldest = -1
    }

    private mutating func moveToFront(_ slot: Int32) {
        guard slot != newest else { return }
        unlink(slot)
        linkAtFront(slot)
    }

    private mutating func linkAtFront(_ slot: Int32) {
        slots[Int(slot)].older = newest
        slots[Int(slot)].newer = -1
        if newest >= 0 { slots[Int(newest)].newer = slot }
        newest = slot
        if oldest < 0 { oldest = slot }
    }

    private mutating func unlink(_ slot: Int32) {
        let newer = slots[Int(slot)].newer, older = slots[Int(slot)].older
        if newer >= 0 { slots[Int(newer)].older = older } else { newest = older }
        if older >= 0 { slots[Int(older)].newer = newer } else { oldest = newer }
        slots[Int(slot)].newer = -1
        slots[Int(slot)].older = -1
    }
}
