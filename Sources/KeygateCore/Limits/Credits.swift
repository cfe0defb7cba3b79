import Foundation

/// Usage credits of a key: a balance every admitted request spends `cost` of, optionally set back
/// to `refill.amount` every day or month (UTC), as Unkey's `remaining` and `refill` do. A key
/// without credits is unlimited.
public struct Credits: Sendable, Equatable, Codable {
    /// The balance this setting starts from (`remaining` when read back from a key: what is left).
    public var remaining: Int
    public var refill: Refill?

    public struct Refill: Sendable, Equatable, Hashable, Codable {
        public enum Interval: String, Sendable, Codable { case daily, monthly }
        /// The balance after each refill (a refill sets it, it does not add to it).
        public var amount: Int
        public var interval: Interval
        /// Monthly only: the day of the month (1-31; a shorter month refills on its last day). Default 1.
        public var day: Int?

        public init(amount: Int, interval: Interval, day: Int? = nil) throws(KeygateError) {
            guard (1...Credits.maximum).contains(amount) else {
                throw KeygateError(.invalidArgument, "a refill amount is 1-\(Credits.maximum), got \(amount)", field: "credits.refill.amount")
            }
            if let day {
                guard interval == .monthly else {
                    throw KeygateError(.invalidArgument, "a refill day is for a monthly refill only", field: "credits.refill.day")
                }
                guard (1...31).contains(day) else {
                    throw KeygateError(.invalidArgument, "a refill day is 1-31, got \(day)", field: "credits.refill.day")
                }
            }
            self.amount = amount
            self.interval = interval
            self.day = day
        }

        /// `1000/day`, `1000/month`, `1000/month:15`.
        public init(parsing text: String) throws(KeygateError) {
            let parts = text.split(separator: "/", omittingEmptySubsequences: false)
            let period = parts.count == 2 ? parts[1].split(separator: ":", omittingEmptySubsequences: false) : []
            guard parts.count == 2, let amount = Int(parts[0]), (1...2).contains(period.count),
                  let interval = ["day": Interval.daily, "month": .monthly][String(period[0])] else {
                throw KeygateError(.invalidArgument, "a refill is AMOUNT/day or AMOUNT/month[:DAY] such as 1000/month, got '\(DisplayText.escaped(text))'",
                                   field: "credits.refill")
            }
            var day: Int?
            if period.count == 2 {
                guard let parsed = Int(period[1]) else {
                    throw KeygateError(.invalidArgument, "a refill day is a number 1-31, got '\(DisplayText.escaped(String(period[1])))'", field: "credits.refill.day")
                }
                day = parsed
            }
            try self.init(amount: amount, interval: interval, day: day)
        }

        public var text: String {
            switch interval {
            case .daily: return "\(amount)/day"
            case .monthly: return "\(amount)/month" + (day.map { ":\($0)" } ?? "")
            }
        }

        /// The refill period a moment (Unix milliseconds) falls in: days since 1970 for a daily
        /// refill; for a monthly one, months since 1970 counted from the refill day (the 14th of a
        /// month refilled on the 15th still belongs to the previous month's period).
        public func period(at milliseconds: Int64) -> Int64 {
            switch interval {
            case .daily:
                return Int64(floor(Double(milliseconds) / 86_400_000))
            case .monthly:
                let date = Date(timeIntervalSince1970: Double(milliseconds) / 1_000)
                let parts = Self.calendar.dateComponents([.year, .month, .day], from: date)
                let month = Int64(parts.year! - 1970) * 12 + Int64(parts.month! - 1)
                return parts.day! >= refillDay(year: parts.year!, month: parts.month!) ? month : month - 1
            }
        }

        /// When period `period + 1` starts (Unix milliseconds): the next refill.
        public func start(ofPeriod period: Int64) -> Int64 {
            switch interval {
            case .daily:
                return period * 86_400_000
            case .monthly:
                let year = Int(1970 + Int64(floor(Double(period) / 12))), month = Int(period - Int64(year - 1970) * 12) + 1
                let date = Self.calendar.date(from: DateComponents(year: year, month: month, day: refillDay(year: year, month: month)))!
                return Int64((date.timeIntervalSince1970 * 1_000).rounded())
            }
        }

        private func refillDay(year: Int, month: Int) -> Int {
            let first = Self.calendar.date(from: DateComponents(year: year, month: month, day: 1))!
            let days = Self.calendar.range(of: .day, in: .month, for: first)!.count
            return min(day ?? 1, days)
        }

        private static let calendar: Calendar = {
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = TimeZone(identifier: "UTC")!
            return calendar
        }()
    }

    public init(remaining: Int, refill: Refill? = nil) throws(KeygateError) {
        guard (0...Self.maximum).contains(remaining) else {
            throw KeygateError(.invalidArgument, "credits remaining is 0-\(Self.maximum), got \(remaining)", field: "credits.remaining")
        }
        self.remaining = remaining
        self.refill = refill
    }

    public static let maximum = 1_000_000_000_000

    private enum CodingKeys: String, CodingKey { case remaining, refill }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(remaining: try container.decode(Int.self, forKey: .remaining),
                      refill: try container.decodeIfPresent(Refill.self, forKey: .refill))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(remaining, forKey: .remaining)
        try container.encode(refill, forKey: .refill)
    }
}

extension Credits.Refill {
    private enum CodingKeys: String, CodingKey { case amount, interval, day }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(amount: try container.decode(Int.self, forKey: .amount),
                      interval: try container.decode(Interval.self, forKey: .interval),
                      day: try container.decodeIfPresent(Int.self, forKey: .day))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(amount, forKey: .amount)
        try container.encode(interval, forKey: .interval)
        try container.encodeIfPresent(day, forKey: .day)
    }
}

/// A key's credits as its record stores them (field `credits`): the balance an operator set, when
/// (`setAt`, the log server's clock at the change, so later settings compare greater) and the
/// refill period then. The live balance is in `ns:credits:{subject}`, started from this setting by
/// the first lease after it (`KeyStoreScripts.leaseCredits`), so setting credits touches the
/// record's slot only. Text: `<remaining>:<set ms>:<period>[:<amount>:daily|monthly[:<day>]]`.
public struct CreditSetting: Sendable, Equatable, Hashable {
    public var remaining: Int
    public var setAt: Int64
    public var period: Int64
    public var refill: Credits.Refill?

    public init(_ credits: Credits, setAt: Int64) {
        self.remaining = credits.remaining
        self.setAt = setAt
        self.refill = credits.refill
        self.period = credits.refill?.period(at: setAt) ?? 0
    }

    public var storageText: String {
        var text = "\(remaining):\(setAt):\(period)"
        if let refill {
            text += ":\(refill.amount):\(refill.interval.rawValue)" + (refill.day.map { ":\($0)" } ?? "")
        }
        return text
    }

    /// nil for text `storageText` does not write.
    public init?(storage text: Substring) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3 || parts.count == 5 || parts.count == 6,
              let remaining = Int(parts[0]), remaining >= 0, let setAt = Int64(parts[1]), let period = Int64(parts[2]) else { return nil }
        self.remaining = remaining
        self.setAt = setAt
        self.period = period
        if parts.count > 3 {
            guard let amount = Int(parts[3]), let interval = Credits.Refill.Interval(rawValue: String(parts[4])) else { return nil }
            var day: Int?
            if parts.count == 6 {
                guard let parsed = Int(parts[5]) else { return nil }
                day = parsed
            }
            guard let refill = try? Credits.Refill(amount: amount, interval: interval, day: day) else { return nil }
            self.refill = refill
        } else {
            self.refill = nil
        }
    }
}
