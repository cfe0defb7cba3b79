import ArgumentParser

/// `250ms`, `90s`, `15m`, `24h`, `30d`, `2w`: a whole number and one unit.
struct HumanDuration: ExpressibleByArgument, Sendable {
    let duration: Duration
    let text: String

    init?(argument: String) {
        if argument.hasSuffix("ms"), let value = Int64(argument.dropLast(2)), value >= 0, value <= 86_400_000 {
            duration = .milliseconds(value)
            text = argument
            return
        }
        guard let unit = argument.last, let value = Int64(argument.dropLast()), value >= 0, value <= 100 * 365 * 86_400 else { return nil }
        let seconds: Int64
        switch unit {
        case "s": seconds = value
        case "m": seconds = value * 60
        case "h": seconds = value * 3_600
        case "d": seconds = value * 86_400
        case "w": seconds = value * 7 * 86_400
        default: return nil
        }
        duration = .seconds(seconds)
        text = argument
    }

    var seconds: Double { Double(duration.components.seconds) }

    static var defaultCompletionKind: CompletionKind { .default }
}

extension HumanDuration {
    /// ArgumentParser prints this when parsing fails.
    static let formatHelp = "a number followed by ms, s, m, h, d or w, e.g. 30d"
}
