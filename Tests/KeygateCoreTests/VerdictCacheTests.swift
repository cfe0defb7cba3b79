import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing
@testable import KeygateCore

/// The verdict cache with a manual clock (uptime nanoseconds passed in) and an embedded loop.
@Suite struct VerdictCacheTests {
    let loop = EmbeddedEventLoop()
    static let second: UInt64 = 1_000_000_000

    func hash(_ n: Int) -> KeyHash { KeyHasher().hash("key-\(n)") }

    func makeCache(capacity: Int = 1_000, negative: Int = 1_000) -> VerdictCache {
        var settings = VerdictCache.Settings()
        settings.capacity = capacity
        settings.negativeCapacity = negative
        settings.positiveMaxAge = .seconds(60)
        settings.negativeTTL = .seconds(5)
        let cache = VerdictCache(settings: settings)
        cache.markTrusted()
        return cache
    }

    func verdict(_ cache: VerdictCache, _ h: KeyHash) -> Verdict {
        Verdict(keyID: InlineKeyID("key_test")!, principal: cache.principal(user: "u", scopes: ["read"], for: h),
                expiresAtMilliseconds: .max)
    }

    /// Looks `h` up and completes the lookup with `outcome` at `now`.
    @discardableResult
    func fill(_ cache: VerdictCache, _ h: KeyHash, _ outcome: VerdictCache.LookupOutcome, now: UInt64) -> Bool {
        guard case .lookup(let placeholder) = cache.probe(h, now: now, eventLoop: loop) else { return false }
        _ = cache.finish(h, placeholder, outcome: outcome, now: now)
        return true
    }

    func isHit(_ cache: VerdictCache, _ h: KeyHash, now: UInt64) -> Bool {
        if case .hit = cache.probe(h, now: now, eventLoop: loop) { return true }
        return false
    }

    @Test func anInvalidationDuringALookupKeepsTheStaleReplyOutOfTheCache() {
        let cache = makeCache()
        let h = hash(1)
        guard case .lookup(let placeholder) = cache.probe(h, now: 0, eventLoop: loop) else { Issue.record("expected a lookup"); return }
        cache.invalidate(h)                        // the revoke's message arrives first...
        _ = cache.finish(h, placeholder, outcome: .active(verdict(cache, h)), now: 1) // ...then the pre-revoke reply
        #expect(!isHit(cache, h, now: 2), "the reply that raced the invalidation was not stored")
        #expect(cache.metrics.placeholderDiscards.load(ordering: .relaxed) == 1)
    }

    @Test func aLostChannelDuringALookupKeepsTheReplyOutOfTheCache() {
        let cache = makeCache()
        let h = hash(2)
        guard case .lookup(let placeholder) = cache.probe(h, now: 0, eventLoop: loop) else { Issue.record("expected a lookup"); return }
        cache.markSuspect(now: 1)                  // generation bump
        _ = cache.finish(h, placeholder, outcome: .active(verdict(cache, h)), now: 2)
        cache.markTrusted()
        #expect(!isHit(cache, h, now: 3))
    }

    @Test func aRequestAfterTheInvalidationDoesNotJoinTheOldLookup() {
        let cache = makeCache()
        let h = hash(3)
        guard case .lookup = cache.probe(h, now: 0, eventLoop: loop) else { Issue.record("expected a lookup"); return }
        cache.invalidate(h)
        guard case .lookup = cache.probe(h, now: 1, eventLoop: loop) else {
            Issue.record("a request after the invalidation must read Redis afresh"); return
        }
    }

    @Test func thousandConcurrentMissesMakeOneLookup() throws {
        let cache = makeCache()
        let h = hash(4)
        var lookups: [VerdictCache.Placeholder] = []
        var waiters: [EventLoopFuture<Decision>] = []
        for _ in 0..<1_000 {
            switch cache.probe(h, now: 0, eventLoop: loop) {
            case .lookup(let placeholder): lookups.append(placeholder)
            case .wait(let future): waiters.append(future)
            case .hit: Issue.record("nothing is cached yet")
            }
        }
        #expect(lookups.count == 1 && waiters.count == 999)
        let pending = cache.finish(h, lookups[0], outcome: .refused(.revoked), now: 1)
        #expect(pending.count == 999)
        for promise in pending { promise.succeed(.invalid(.revoked)) }
        let answered = NIOLockedValueBox(0)
        for future in waiters { future.whenSuccess { if case .invalid(.revoked) = $0 { answered.withLockedValue { $0 += 1 } } } }
        #expect(answered.withLockedValue { $0 } == 999)
        #expect(isHit(cache, h, now: 2), "the answer was stored for the next requests")
    }

    @Test func positiveEntriesExpireAtTheHardMaximumAge() {
        let cache = makeCache()
        let h = hash(5)
        fill(cache, h, .active(verdict(cache, h)), now: 0)
        #expect(isHit(cache, h, now: 59 * Self.second))
        #expect(!isHit(cache, h, now: 60 * Self.second), "past 60 s it is read from Redis again, even with no invalidation")
    }

    @Test func negativeEntriesExpireAfterTheirTTL() {
        let cache = makeCache()
        let h = hash(6)
        fill(cache, h, .refused(.notFound), now: 0)
        #expect(isHit(cache, h, now: 4 * Self.second))
        #expect(!isHit(cache, h, now: 5 * Self.second))
    }

    @Test func aFloodOfUnknownKeysCannotEvictValidOnes() {
        let cache = makeCache(capacity: 16 * 40, negative: 16 * 4) // room for the valid keys in any stripe
        let good = (0..<40).map { hash(1_000 + $0) }
        for h in good { fill(cache, h, .active(verdict(cache, h)), now: 0) }
        for n in 0..<10_000 { fill(cache, hash(n + 10_000), .refused(.notFound), now: 0) }
        var allHit = true
        for h in good where !isHit(cache, h, now: 1) { allHit = false }
        #expect(allHit)
        #expect(cache.negativeCount <= 16 * 4)
    }

    @Test func theLeastRecentlyUsedEntryIsEvicted() {
        var lru = LRUCache<Int>(capacity: 3)
        lru.set(hash(1), 1); lru.set(hash(2), 2); lru.set(hash(3), 3)
        _ = lru.get(hash(1))                       // 2 is now the least recently used
        let evictedOnInsert = lru.set(hash(4), 4)
        #expect(evictedOnInsert, "inserting past capacity evicts")
        let two = lru.get(hash(2)), one = lru.get(hash(1)), three = lru.get(hash(3)), four = lru.get(hash(4))
        #expect(two == nil && one == 1 && three == 3 && four == 4)
        let removed = lru.remove(hash(3))
        #expect(removed && lru.count == 2)
        lru.set(hash(5), 5); lru.set(hash(6), 6)   // reuses the freed slot, then evicts the oldest (1)
        let evicted = lru.get(hash(1))
        #expect(lru.count == 3 && evicted == nil)
    }

    @Test func nothingIsServedFromTheCacheWhileSuspect() {
        let cache = makeCache()
        let h = hash(7)
        fill(cache, h, .active(verdict(cache, h)), now: 0)
        cache.markSuspect(now: 1)
        #expect(!isHit(cache, h, now: 2), "every request reads Redis until the channel is back and caught up")
        cache.markTrusted()
        #expect(isHit(cache, h, now: 3))
    }

    @Test func staleEntriesOnlyInsideTheWindowAndOnlyWhileSuspect() {
        let cache = makeCache()
        let h = hash(8)
        fill(cache, h, .active(verdict(cache, h)), now: 0)
        #expect(cache.staleEntry(h, now: 1, window: 30 * Self.second) == nil, "trusted: no stale answers")
        cache.markSuspect(now: 10 * Self.second)
        #expect(cache.staleEntry(h, now: 20 * Self.second, window: 30 * Self.second) != nil)
        #expect(cache.staleEntry(h, now: 41 * Self.second, window: 30 * Self.second) == nil, "after S: rejected")
        #expect(cache.staleEntry(h, now: 20 * Self.second, window: 0) == nil, "S = 0 disables it")
    }

    @Test func principalsAreShared() {
        let cache = makeCache()
        let a = cache.principal(user: "u", scopes: ["read"], for: hash(1))
        let b = cache.principal(user: "u", scopes: ["read"], for: hash(1))
        #expect(a === b)
        #expect(a.grants(["read"]) && !a.grants(["read", "write"]) && a.grants([String]()))
        #expect(InlineKeyID("key_1PKTt680DHA6thJJo")?.description == "key_1PKTt680DHA6thJJo")
        #expect(InlineKeyID(String(repeating: "x", count: 24)) == nil)
        #expect(MemoryLayout<InlineKeyID>.size == 24)
    }
}

/// The LRU against a simple reference model, through random operations including collisions.
@Suite struct LRUCacheModelTests {
    @Test func randomOperationsMatchAReferenceModel() {
        var lru = LRUCache<Int>(capacity: 64)
        var model: [KeyHash: Int] = [:]
        var order: [KeyHash] = [] // least recently used first
        var generator = SystemRandomNumberGenerator()
        // Hashes with few distinct `a` values force long probe chains and wrap-around.
        let hashes = (0..<200).map { KeyHash(a: UInt64($0 % 7) << 60 | UInt64($0 % 3), b: UInt64($0), c: 0, d: 0) }
        for step in 0..<20_000 {
            let hash = hashes[Int.random(in: 0..<hashes.count, using: &generator)]
            switch Int.random(in: 0..<3, using: &generator) {
            case 0:
                let evicted = lru.set(hash, step)
                if model[hash] != nil {
                    #expect(!evicted)
                    order.removeAll { $0 == hash }
                } else if model.count == 64 {
                    #expect(evicted)
                    model.removeValue(forKey: order.removeFirst())
                }
                model[hash] = step
                order.append(hash)
            case 1:
                let value = lru.get(hash)
                #expect(value == model[hash])
                if value != nil { order.removeAll { $0 == hash }; order.append(hash) }
            default:
                let removed = lru.remove(hash)
                #expect(removed == (model.removeValue(forKey: hash) != nil))
                order.removeAll { $0 == hash }
            }
            #expect(lru.count == model.count)
        }
    }
}
