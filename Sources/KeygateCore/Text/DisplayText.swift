/// Names from Redis made safe to print on a terminal or in a log line.
///
/// A user or key name may hold characters a terminal acts on or hides: C0 and C1 controls (`\u{9B}` is
/// CSI, which starts an escape sequence), bidi overrides (`\u{202E}` reverses what follows), zero-width
/// characters and line separators. New user names cannot contain them (`KeyValidation.user`), key
/// names cannot contain controls, but existing data can: the CLI's tables and details, and the
/// control plane's internal-error log line, print them as `\u{XXXX}` instead.
public enum DisplayText {
    /// `text` with every control, format (Cf), separator, private-use or unassigned scalar written
    /// as `\u{XXXX}`.
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: needsEscaping) else { return text }
        var result = ""
        result.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            if needsEscaping(scalar) {
                result += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
        return result
    }

    /// Controls (C0, DEL, C1), format characters (bidi controls, zero-width characters, BOM), line
    /// or paragraph separators, and private-use or unassigned code points (no known glyph).
    public static func needsEscaping(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator, .privateUse, .unassigned, .surrogate: return true
        default: return false
        }
    }
}
