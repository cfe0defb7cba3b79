/// A fixed-capacity least-recently-used map from key hash to a small value, in flat arrays with
/// intrusive links and an open-addressing index of 32-bit slot numbers: about 8 bytes of index and
/// one slot (hash, value, two links) per entry, no allocation per entry. Sized once; pages of the
/// slot array are touched only as entries arrive. Not thread-safe: `VerdictCache` guards it.
struct LRUCache<Value> {
    private struct Slot {
        var hash: KeyHash
        var value: Value
        var newer: Int32 // towards the most recently used; -1 at the head
        var older: Int32 // towards the least recently used; -1 at the tail
    }

    let capacity: Int
    /// Slot number per bucket, -1 when empty. Linear probing; at most half full.
    private var table: [Int32]
    private let mask: Int
    private var slots: ContiguousArray<Slot> = []
    private var freeSlots: [Int32] = []
    private var newest: Int32 = -1
    private var oldest: Int32 = -1
    private(set) var count = 0

    init(capacity: Int) {
        precondition(capacity > 0 && capacity < Int(Int32.max) / 4)
        self.capacity = capacity
        var buckets = 16
        while buckets < capacity * 2 { buckets <<= 1 }
        table = Array(repeating: -1, count: buckets)
        mask = buckets - 1
        slots.reserveCapacity(capacity)
    }

    /// The value, marking it most recently used.
    mutating func get(_ hash: KeyHash) -> Value? {
        guard case (_, let slot?) = find(hash) else { return nil }
        moveToFront(slot)
        return slots[Int(slot)].value
    }

    /// Inserts or replaces; returns true when this evicted the least recently used entry.
    @discardableResult
    mutating func set(_ hash: KeyHash, _ value: Value) -> Bool {
        let (bucket, existing) = find(hash)
        if let slot = existing {
            slots[Int(slot)].value = value
            moveToFront(slot)
            return false
        }
        if count >= capacity {
            let victim = oldest
            removeFromTable(slots[Int(victim)].hash)
            unlink(victim)
            slots[Int(victim)] = Slot(hash: hash, value: value, newer: -1, older: -1)
            insertIntoTable(hash, victim) // the table changed: probe again
            linkAtFront(victim)
            return true
        }
        let slot: Int32
        if let reused = freeSlots.popLast() {
            slot = reused
            slots[Int(slot)] = Slot(hash: hash, value: value, newer: -1, older: -1)
        } else {
            slot = Int32(slots.count)
            slots.append(Slot(hash: hash, value: value, newer: -1, older: -1))
        }
        table[bucket] = slot
        count += 1
        linkAtFront(slot)
        return false
    }

    @discardableResult
    mutating func remove(_ hash: KeyHash) -> Bool {
        guard case (_, let slot?) = find(hash) else { return false }
        removeFromTable(hash)
        unlink(slot)
        freeSlots.append(slot)
        count -= 1
        return true
    }

    mutating func removeAll() {
        for index in table.indices { table[index] = -1 }
        slots.removeAll(keepingCapacity: true)
        freeSlots.removeAll()
        newest = -1
        oldest = -1
        count = 0
    }

    // MARK: index

    private func home(_ hash: KeyHash) -> Int { Int(truncatingIfNeeded: hash.a) & mask }

    /// The bucket holding `hash` (with its slot), or the empty bucket where it would go.
    private func find(_ hash: KeyHash) -> (bucket: Int, slot: Int32?) {
        var bucket = home(hash)
        while true {
            let slot = table[bucket]
            if slot < 0 { return (bucket, nil) }
            if slots[Int(slot)].hash == hash { return (bucket, slot) }
            bucket = (bucket + 1) & mask
        }
    }

    private mutating func insertIntoTable(_ hash: KeyHash, _ slot: Int32) {
        table[find(hash).bucket] = slot
    }

    /// Backward-shift deletion: keeps every probe chain unbroken without tombstones.
    private mutating func removeFromTable(_ hash: KeyHash) {
        var hole = find(hash).bucket
        table[hole] = -1
        var next = hole
        while true {
            next = (next + 1) & mask
            let slot = table[next]
            if slot < 0 { return }
            let ideal = home(slots[Int(slot)].hash)
            // Move the entry back into the hole unless its home lies cyclically in (hole, next].
            let stays = hole <= next ? (ideal > hole && ideal <= next) : (ideal > hole || ideal <= next)
            if !stays {
                table[hole] = slot
                table[next] = -1
                hole = next
            }
        }
    }

    // MARK: recency list

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
