public import NIOCore

/// A key's limits for one request, in one step: its rate limits (`RateLimiter`), then its credits
/// (`CreditLedger`). A request refused by either costs nothing: credits are spent only once every
/// rate limit admitted it, and a rate limit's units come back when the credits refuse.
public final class LimitEnforcer: Sendable {
    public let rateLimiter: RateLimiter
    public let credits: CreditLedger

    public enum Outcome: Sendable, Equatable {
        /// `rate`: the rate limit with the least left (nil without rate limits); `credits` nil without credits.
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
        guard !limits.rateLimits.isEmpty else { return spendCredits(limits, rate: nil, cost: cost, on: eventLoop) }
        switch rateLimiter.admit(limits.subject, limits.rateLimits, cost: cost, on: eventLoop) {
        case .decided(.refused(let quota)):
            return .decided(.rateLimited(quota))
        case .decided(.admitted(let quota)):
            return spendCredits(limits, rate: quota, cost: cost, on: eventLoop)
        case .pending(let future):
            return .pending(future.flatMap { outcome in
                switch outcome {
                case .refused(let quota): return eventLoop.makeSucceededFuture(.rateLimited(quota))
                case .admitted(let quota):
                    switch self.spendCredits(limits, rate: quota, cost: cost, on: eventLoop) {
                    case .decided(let outcome): return eventLoop.makeSucceededFuture(outcome)
                    case .pending(let next): return next
                    }
                }
            })
        }
    }

    private func spendCredits(_ limits: KeyLimits, rate: RateLimiter.Quota?, cost: Int, on eventLoop: any EventLoop) -> Step {
        guard let setting = limits.credits else { return .decided(.admitted(rate: rate, credits: nil)) }
        switch credits.spend(limits.subject, setting, cost: cost, on: eventLoop) {
        case .decided(let admission): return .decided(settle(admission, limits, rate: rate, cost: cost))
        case .pending(let future): return .pending(future.map { self.settle($0, limits, rate: rate, cost: cost) })
        }
    }

    private func settle(_ admission: CreditLedger.Admission, _ limits: KeyLimits, rate: RateLimiter.Quota?, cost: Int) -> Outcome {
        switch admission {
        case .admitted(let quota):
            return .admitted(rate: rate, credits: quota)
        case .exhausted(let quota):
            for limit in limits.rateLimits { rateLimiter.refund(limits.subject, limit, cost: cost) }
            return .usageExceeded(quota)
        case .unavailable:
            for limit in limits.rateLimits { rateLimiter.refund(limits.subject, limit, cost: cost) }
            return .unavailable
        }
    }
}
