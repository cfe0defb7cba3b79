public import NIOCore

/// A key's limits for one request, in one step: the key's rate limits, the user's rate limits
/// (`RateLimiter`), then the key's credits and the user's credits (`CreditLedger`). A request
/// refused by any of them costs nothing: what the earlier steps took is given back.
///
/// Every step decided from what this node holds stays on the event loop, so a cache hit of a
/// limited key never waits; only a step that needs a lease continues in a future.
public final class LimitEnforcer: Sendable {
    public let rateLimiter: RateLimiter
    public let credits: CreditLedger

    public enum Outcome: Sendable, Equatable {
        /// `rate`: the rate limit with the least left (nil without rate limits); `credits` the
        /// balance with the least left (nil without credits).
        case admitted(rate: RateLimiter.Quota?, credits: CreditLedger.Quota?)
        case rateLimited(RateLimiter.Quota)
        case usageExceeded(CreditLedger.Quota)
        /// Credits were needed and Redis could not be asked (503).
        case unavailable
    }

    public enum Step: Sendable {
        case decided(Outcome)
        case pending(EventLoopFuture<Outcome>)
    }

    public init(rateLimiter: RateLimiter, credits: CreditLedger) {
        self.rateLimiter = rateLimiter
        self.credits = credits
    }

    public func admit(_ limits: KeyLimits, cost: Int, on eventLoop: any EventLoop) -> Step {
        guard !limits.rateLimits.isEmpty else { return admitUserRates(limits, tightest: nil, cost: cost, on: eventLoop) }
        switch rateLimiter.admit(limits.subject, limits.rateLimits, cost: cost, on: eventLoop) {
        case .decided(.refused(let quota)):
            return .decided(.rateLimited(quota))
        case .decided(.admitted(let quota)):
            return admitUserRates(limits, tightest: quota, cost: cost, on: eventLoop)
        case .pending(let future):
            return .pending(future.flatMap { outcome in
                switch outcome {
                case .refused(let quota): return eventLoop.makeSucceededFuture(.rateLimited(quota))
                case .admitted(let quota): return Self.future(self.admitUserRates(limits, tightest: quota, cost: cost, on: eventLoop), on: eventLoop)
                }
            })
        }
    }

    /// The user's rate limits, after the key's admitted the request (`tightest`: their quota).
    private func admitUserRates(_ limits: KeyLimits, tightest: RateLimiter.Quota?, cost: Int, on eventLoop: any EventLoop) -> Step {
        guard !limits.userRateLimits.isEmpty else { return spendCredits(limits, rate: tightest, cost: cost, on: eventLoop) }
        switch rateLimiter.admit(limits.userSubject, limits.userRateLimits, cost: cost, on: eventLoop) {
        case .decided(let outcome):
            return afterUserRates(outcome, limits, tightest: tightest, cost: cost, on: eventLoop)
        case .pending(let future):
            return .pending(future.flatMap { outcome in
                Self.future(self.afterUserRates(outcome, limits, tightest: tightest, cost: cost, on: eventLoop), on: eventLoop)
            })
        }
    }

    private func afterUserRates(_ outcome: RateLimiter.Outcome, _ limits: KeyLimits, tightest: RateLimiter.Quota?, cost: Int,
                                on eventLoop: any EventLoop) -> Step {
        switch outcome {
        case .refused(let quota):
            refundRates(limits, user: false, cost: cost)
            return .decided(.rateLimited(quota))
        case .admitted(let quota):
            let rate = tightest.map { $0.remaining <= quota.remaining ? $0 : quota } ?? quota
            return spendCredits(limits, rate: rate, cost: cost, on: eventLoop)
        }
    }

    /// The key's credits, then the user's.
    private func spendCredits(_ limits: KeyLimits, rate: RateLimiter.Quota?, cost: Int, on eventLoop: any EventLoop) -> Step {
        guard let setting = limits.credits else { return spendUserCredits(limits, rate: rate, keyCredits: nil, cost: cost, on: eventLoop) }
        switch credits.spend(limits.subject, setting, cost: cost, on: eventLoop) {
        case .decided(let admission):
            return afterKeyCredits(admission, limits, rate: rate, cost: cost, on: eventLoop)
        case .pending(let future):
            return .pending(future.flatMap { admission in
                Self.future(self.afterKeyCredits(admission, limits, rate: rate, cost: cost, on: eventLoop), on: eventLoop)
            })
        }
    }

    private func afterKeyCredits(_ admission: CreditLedger.Admission, _ limits: KeyLimits, rate: RateLimiter.Quota?, cost: Int,
                                 on eventLoop: any EventLoop) -> Step {
        switch admission {
        case .admitted(let quota):
            return spendUserCredits(limits, rate: rate, keyCredits: quota, cost: cost, on: eventLoop)
        case .exhausted(let quota):
            refundRates(limits, user: true, cost: cost)
            return .decided(.usageExceeded(quota))
        case .unavailable:
            refundRates(limits, user: true, cost: cost)
            return .decided(.unavailable)
        }
    }

    private func spendUserCredits(_ limits: KeyLimits, rate: RateLimiter.Quota?, keyCredits: CreditLedger.Quota?, cost: Int,
                                  on eventLoop: any EventLoop) -> Step {
        guard let setting = limits.userCredits else { return .decided(.admitted(rate: rate, credits: keyCredits)) }
        switch credits.spend(limits.userSubject, setting, cost: cost, on: eventLoop) {
        case .decided(let admission):
            return .decided(settle(admission, limits, rate: rate, keyCredits: keyCredits, cost: cost))
        case .pending(let future):
            return .pending(future.map { self.settle($0, limits, rate: rate, keyCredits: keyCredits, cost: cost) })
        }
    }

    private func settle(_ admission: CreditLedger.Admission, _ limits: KeyLimits, rate: RateLimiter.Quota?,
                        keyCredits: CreditLedger.Quota?, cost: Int) -> Outcome {
        switch admission {
        case .admitted(let quota):
            return .admitted(rate: rate, credits: keyCredits.map { $0.remaining <= quota.remaining ? $0 : quota } ?? quota)
        case .exhausted, .unavailable:
            if let setting = limits.credits { credits.refund(limits.subject, setting, cost: cost) }
            refundRates(limits, user: true, cost: cost)
            if case .exhausted(let quota) = admission { return .usageExceeded(quota) }
            return .unavailable
        }
    }

    /// Gives back the units the key's rate limits (and, with `user`, the user's) took.
    private func refundRates(_ limits: KeyLimits, user: Bool, cost: Int) {
        for limit in limits.rateLimits { rateLimiter.refund(limits.subject, limit, cost: cost) }
        if user { for limit in limits.userRateLimits { rateLimiter.refund(limits.userSubject, limit, cost: cost) } }
    }

    private static func future(_ step: Step, on eventLoop: any EventLoop) -> EventLoopFuture<Outcome> {
        switch step {
        case .decided(let outcome): return eventLoop.makeSucceededFuture(outcome)
        case .pending(let future): return future
        }
    }
}
