import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing
@testable import KeygateCore

/// Credit settings, refill periods, and the node's ledger against an in-memory balance.
@Suite struct CreditsTests {
    static func milliseconds(_ text: String) -> Int64 {
        Int64((ISO8601DateFormatter().date(from: text)!.timeIntervalSince1970 * 1_000).rounded())
    }

    @Test func refillsParseFromTheCLIFormAndRefuseNonsense() throws {
        #expect(try Credits.Refill(parsing: "1000/month") == Credits.Refill(amount: 1_000, interval: .monthly))
        #expect(try Credits.Refill(parsing: "1000/month:15") == Credits.Refill(amount: 1_000, interval: .monthly, day: 15))
        #expect(try Credits.Refill(parsing: "100/day") == Credits.Refill(amount: 100, interval: .daily))
        for bad in ["0/day", "100/week", "100", "100/day:3", "100/month:0", "100/month:32", "x/month", "100/month:x", "-5/day"] {
            #expect(throws: KeygateError.self, "\(bad)") { try Credits.Refill(parsing: bad) }
        }
        #expect(throws: KeygateError.self) { try Credits(remaining: -1) }
    }

    @Test func dailyPeriodsStartAtUTCMidnight() throws {
        let daily = try Credits.Refill(amount: 1, interval: .daily)
        let period = daily.period(at: Self.milliseconds("2027-03-10T23:59:59Z"))
        #expect(daily.period(at: Self.milliseconds("2027-03-11T00:00:00Z")) == period + 1)
        #expect(daily.start(ofPeriod: period + 1) == Self.milliseconds("2027-03-11T00:00:00Z"))
    }

    @Test func monthlyPeriodsStartOnTheRefillDayOrTheMonthsLastDay() throws {
        let fifteenth = try Credits.Refill(amount: 1, interval: .monthly, day: 15)
        let march = fifteenth.period(at: Self.milliseconds("2027-03-15T00:00:00Z"))
        #expect(fifteenth.period(at: Self.milliseconds("2027-03-14T23:59:59Z")) == march - 1)
        #expect(fifteenth.period(at: Self.milliseconds("2027-04-14T23:59:59Z")) == march)
        #expect(fifteenth.start(ofPeriod: march + 1) == Self.milliseconds("2027-04-15T00:00:00Z"))
        // The 31st: February refills on its last day (the 28th, or the 29th in a leap year).
        let last = try Credits.Refill(amount: 1, interval: .monthly, day: 31)
        let february = last.period(at: Self.milliseconds("2027-02-28T00:00:00Z"))
        #expect(last.period(at: Self.milliseconds("2027-02-27T23:59:59Z")) == february - 1)
        #expect(last.start(ofPeriod: february) == Self.milliseconds("2027-02-28T00:00:00Z"))
        #expect(last.start(ofPeriod: february + 1) == Self.milliseconds("2027-03-31T00:00:00Z"))
        #expect(last.start(ofPeriod: last.period(at: Self.milliseconds("2028-02-29T12:00:00Z"))) == Self.milliseconds("2028-02-29T00:00:00Z"))
        // Across a year end, and before 1970's periods are not needed but stay monotonic.
        let first = try Credits.Refill(amount: 1, interval: .monthly)
        let december = first.period(at: Self.milliseconds("2027-12-31T23:59:59Z"))
        #expect(first.start(ofPeriod: december + 1) == Self.milliseconds("2028-01-01T00:00:00Z"))
    }

    @Test func settingsRoundTripThroughTheRecordText() throws {
        for credits in [try Credits(remaining: 7), try Credits(remaining: 0, refill: Credits.Refill(amount: 5, interval: .daily)),
                        try Credits(remaining: 1_000, refill: Credits.Refill(amount: 1_000, interval: .monthly, day: 31))] {
            let setting = CreditSetting(credits, setAt: Self.milliseconds("2027-01-20T10:00:00Z"))
            #expect(CreditSetting(storage: Substring(setting.storageText)) == setting)
        }
        for bad in ["", "x:1:2", "1:2", "5:1:2:0:daily", "5:1:2:5:weekly", "5:1:2:5:daily:3", "-1:1:2"] {
            #expect(CreditSetting(storage: Substring(bad)) == nil, "\(bad)")
        }
    }

    /// What `KeyStoreScripts.leaseCredits` does with one balance, plus a switch for "Redis down".
    final class FakeBalance: Sendable {
        let remaining: Mutex<Int>
        let down = Atomic<Bool>(false)
        init(_ remaining: Int) { self.remaining = Mutex(remaining) }

        func lease(_ subject: String, _ setting: CreditSetting, _ period: Int64, _ need: Int, _ wanted: Int, _ loop: any EventLoop)
            -> EventLoopFuture<CreditLedger.Grant> {
            guard !down.load(ordering: .relaxed) else { return loop.makeFailedFuture(KeygateError(.unavailable, "Redis is down")) }
            let grant = remaining.withLock { remaining -> CreditLedger.Grant in
                let take = need <= remaining ? min(remaining, need + min(wanted, (remaining - need) / 4)) : 0
                remaining -= take
                return CreditLedger.Grant(granted: take, balance: remaining, period: period)
            }
            // Completes later, on the loop, as a Redis reply would.
            return loop.scheduleTask(in: .microseconds(200)) { grant }.futureResult
        }

        func giveBack(_ subject: String, _ setting: CreditSetting, _ period: Int64, _ credits: Int) async throws -> Bool {
            remaining.withLock { $0 += credits }
            return true
        }
    }

    static func ledger(_ balance: FakeBalance) -> CreditLedger {
        CreditLedger(clock: { Int64((Date().timeIntervalSince1970 * 1_000).rounded(.down)) }, lease: balance.lease, giveBack: balance.giveBack)
    }

    static func admitted(_ step: CreditLedger.Step) async throws -> CreditLedger.Admission {
        switch step {
        case .decided(let admission): return admission
        case .pending(let future): return try await future.get()
        }
    }

    @Test func threeLedgersOnOneBalanceAdmitExactlyTheBalance() async throws {
        let balance = FakeBalance(97)
        let ledgers = (0..<3).map { _ in Self.ledger(balance) }
        let setting = CreditSetting(try Credits(remaining: 97), setAt: 1)
        let group = MultiThreadedEventLoopGroup.singleton
        let admissions = try await withThrowingTaskGroup(of: CreditLedger.Admission.self) { tasks in
            for index in 0..<600 {
                tasks.addTask { try await Self.admitted(ledgers[index % 3].spend("key_a", setting, on: group.next())) }
            }
            return try await tasks.reduce(into: []) { $0.append($1) }
        }
        #expect(admissions.filter { if case .admitted = $0 { true } else { false } }.count == 97)
        #expect(admissions.filter { if case .exhausted = $0 { true } else { false } }.count == 503)
        #expect(ledgers.reduce(0) { $0 + $1.held("key_a") } == 0)
    }

    @Test func withRedisDownOnlyTheCreditsHeldAreSpent() async throws {
        let balance = FakeBalance(1_000)
        let ledger = Self.ledger(balance)
        let setting = CreditSetting(try Credits(remaining: 1_000), setAt: 1)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        for _ in 0..<30 { _ = try await Self.admitted(ledger.spend("key_a", setting, on: loop)) }
        try await Task.sleep(for: .milliseconds(20))
        balance.down.store(true, ordering: .relaxed)
        let held = ledger.held("key_a")
        var results: [CreditLedger.Admission] = []
        for _ in 0..<(held + 3) { results.append(try await Self.admitted(ledger.spend("key_a", setting, on: loop))) }
        #expect(results.filter { if case .admitted = $0 { true } else { false } }.count == held)
        #expect(results.suffix(3).allSatisfy { $0 == .unavailable })
        #expect(ledger.snapshot.leaseFailures >= 3)
    }

    @Test func idleCreditsGoBack() async throws {
        let balance = FakeBalance(1_000)
        let ledger = Self.ledger(balance)
        let setting = CreditSetting(try Credits(remaining: 1_000), setAt: 1)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        for _ in 0..<50 { _ = try await Self.admitted(ledger.spend("key_a", setting, on: loop)) }
        try await Task.sleep(for: .milliseconds(20))
        let held = ledger.held("key_a")
        #expect(await ledger.returnUnused(idleMilliseconds: 60_000) == 0, "not idle yet")
        #expect(await ledger.returnUnused(idleMilliseconds: 0) == held)
        #expect(balance.remaining.withLock { $0 } == 950)
        #expect(ledger.snapshot.creditsReturned == UInt64(held))
    }
}
