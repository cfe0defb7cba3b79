import NIOCore
import Testing
@testable import KeygateDataPlane

/// The answer fields written byte by byte on the hit path.
@Suite struct ResponsesTests {
    @Test(arguments: [(0, "0"), (7, "7"), (10, "10"), (1_234_567_890, "1234567890"), (Int.max, String(Int.max)), (-5, "0")])
    func decimalsAreWrittenAsASCIIDigits(_ value: Int, _ expected: String) {
        var buffer = ByteBuffer()
        Responses.writeDecimal(value, into: &buffer)
        #expect(String(buffer: buffer) == expected)
    }

    @Test func rateLimitFieldsFollowTheDraftsSyntax() {
        var buffer = ByteBuffer()
        Responses.writeRateLimitFields(policy: Array("RateLimit-Policy: \"default\";q=100;w=60\r\n".utf8), name: "default",
                                       remaining: 42, reset: 17, into: &buffer)
        #expect(String(buffer: buffer) == "RateLimit-Policy: \"default\";q=100;w=60\r\nRateLimit: \"default\";r=42;t=17\r\n")
    }
}
