/// Writes the Prometheus text exposition format (version 0.0.4), the format `promtool check
/// metrics` validates. Each family is written once with its HELP and TYPE lines; label values are
/// escaped. Labels must come from small fixed sets (outcome, reason, code), never from a key.
public struct PrometheusText: Sendable {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public private(set) var text = ""

    public init() {}

    public mutating func counter(_ name: String, help: String, _ value: some BinaryInteger) {
        counter(name, help: help, samples: [([], Double(value))])
    }

    /// A counter family with one sample per label set. `name` must end in `_total`.
    public mutating func counter(_ name: String, help: String, samples: [([(String, String)], Double)]) {
        precondition(name.hasSuffix("_total"), "counter names end in _total")
        family(name, help: help, type: "counter", samples: samples)
    }

    public mutating func gauge(_ name: String, help: String, _ value: Double) {
        gauge(name, help: help, samples: [([], value)])
    }

    public mutating func gauge(_ name: String, help: String, samples: [([(String, String)], Double)]) {
        family(name, help: help, type: "gauge", samples: samples)
    }

    /// A histogram family; `name` ends in `_seconds`.
    public mutating func histogram(_ name: String, help: String, samples: [([(String, String)], LatencyHistogram.Snapshot)]) {
        header(name, help: help, type: "histogram")
        for (labels, snapshot) in samples {
            for (bound, count) in zip(snapshot.bounds, snapshot.cumulativeCounts) {
                line(name + "_bucket", labels + [("le", Self.format(bound))], Double(count))
            }
            line(name + "_bucket", labels + [("le", "+Inf")], Double(snapshot.count))
            line(name + "_sum", labels, snapshot.sumSeconds)
            line(name + "_count", labels, Double(snapshot.count))
        }
    }

    private mutating func family(_ name: String, help: String, type: String, samples: [([(String, String)], Double)]) {
        header(name, help: help, type: type)
        for (labels, value) in samples { line(name, labels, value) }
    }

    private mutating func header(_ name: String, help: String, type: String) {
        text += "# HELP \(name) \(Self.escape(help, quotes: false))\n"
        text += "# TYPE \(name) \(type)\n"
    }

    private mutating func line(_ name: String, _ labels: [(String, String)], _ value: Double) {
        text += name
        if !labels.isEmpty {
            text += "{" + labels.map { "\($0)=\"\(Self.escape($1))\"" }.joined(separator: ",") + "}"
        }
        text += " " + Self.format(value) + "\n"
    }

    /// Label values escape backslash, quote and newline; HELP text only backslash and newline.
    static func escape(_ value: String, quotes: Bool = true) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"" where quotes: out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }

    /// Integers without a fraction (`42`), other values in Swift's shortest round-trip form.
    static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}
