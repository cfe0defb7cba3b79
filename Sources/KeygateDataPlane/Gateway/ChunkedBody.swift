/// A chunked request body (RFC 9112 section 7.1), decoded from the receive buffer in gateway mode
/// before the request is forwarded with a `Content-Length`. Strict, like the head scanner: hex sizes
/// without signs or spaces, CRLF line endings only, chunk extensions skipped, trailer fields dropped.
enum ChunkedBody {
    enum Outcome: Equatable {
        case incomplete
        case malformed
        case tooLarge
        /// The body's pieces (ranges of the input), and the bytes the whole chunked body took.
        case complete(pieces: [Range<Int>], end: Int)
    }

    private static let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n")

    /// Decodes the chunked body that starts at `start` in `bytes`, at most `limit` bytes of data.
    static func decode(_ bytes: UnsafeRawBufferPointer, from start: Int, limit: Int) -> Outcome {
        var index = start, total = 0
        var pieces: [Range<Int>] = []
        while true {
            // chunk-size [; extensions] CRLF
            var size = 0, digits = 0
            while index < bytes.count, let value = HTTPRequestScanner.hexValue(bytes[index]) {
                size = size * 16 + value
                digits += 1
                guard digits <= 8 else { return .malformed } // more than 4 GiB in one chunk: not a request body
                index += 1
            }
            guard index < bytes.count else { return .incomplete }
            guard digits > 0 else { return .malformed }
            if bytes[index] == UInt8(ascii: ";") { // an extension: skip to the line's end
                while index < bytes.count && bytes[index] != cr {
                    guard bytes[index] != lf, bytes[index] >= 0x20 || bytes[index] == 0x09 else { return .malformed }
                    index += 1
                }
            }
            guard index + 1 < bytes.count else { return .incomplete }
            guard bytes[index] == cr, bytes[index + 1] == lf else { return .malformed }
            index += 2
            if size == 0 {
                // Trailer fields until an empty line; they are dropped (none is forwarded).
                while true {
                    let lineStart = index
                    while index < bytes.count && bytes[index] != cr {
                        guard bytes[index] != lf else { return .malformed }
                        index += 1
                    }
                    guard index + 1 < bytes.count else { return .incomplete }
                    guard bytes[index + 1] == lf else { return .malformed }
                    index += 2
                    if index - 2 == lineStart { return .complete(pieces: pieces, end: index) }
                }
            }
            total += size
            guard total <= limit else { return .tooLarge }
            guard index + size + 2 <= bytes.count else { return .incomplete }
            pieces.append(index..<index + size)
            index += size
            guard bytes[index] == cr, bytes[index + 1] == lf else { return .malformed }
            index += 2
        }
    }
}
