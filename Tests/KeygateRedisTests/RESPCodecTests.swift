import NIOCore
import Testing
@testable import KeygateRedis

@Suite struct RESPCodecTests {
    @Test func encodesBinarySafeArguments() {
        var buffer = ByteBuffer()
        let raw = ByteBuffer(bytes: [0, 13, 10, 255])
        RedisCommand("SET", ["k", .bytes(raw), .integer(-42)]).encode(into: &buffer)
        var expectedBytes = Array("*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n".utf8)
        expectedBytes += [0, 13, 10, 255]
        expectedBytes += Array("\r\n$3\r\n-42\r\n".utf8)
        #expect(Array(buffer.readableBytesView) == expectedBytes)
    }

    @Test func parsesEveryReplyType() throws {
        let reader = RESPReplyReader(maxArrayElements: 16, maxReplyBytes: 1 << 20)
        try reader.feed(ByteBuffer(string: "+OK\r\n-ERR bad\r\n:42\r\n$3\r\nfoo\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\n*-1\r\n"))
        #expect(try reader.next() == .simpleString("OK"))
        #expect(try reader.next() == .error("ERR bad"))
        #expect(try reader.next() == .integer(42))
        #expect(try reader.next() == .bulkString(ByteBuffer(string: "foo")))
        #expect(try reader.next() == .null)
        #expect(try reader.next() == .array([.integer(1), .array([.bulkString(ByteBuffer())])]))
        #expect(try reader.next() == .null)
        #expect(try reader.next() == nil)
    }

    @Test func assemblesRepliesFedOneByteAtATime() throws {
        let reader = RESPReplyReader(maxArrayElements: 16, maxReplyBytes: 1 << 20)
        let wire = Array("*3\r\n$5\r\nhello\r\n:-7\r\n+PONG\r\n$2\r\nhi\r\n".utf8)
        var replies: [RESPValue] = []
        for byte in wire {
            try reader.feed(ByteBuffer(bytes: [byte]))
            while let reply = try reader.next() { replies.append(reply) }
        }
        #expect(replies == [
            .array([.bulkString(ByteBuffer(string: "hello")), .integer(-7), .simpleString("PONG")]),
            .bulkString(ByteBuffer(string: "hi")),
        ])
    }

    @Test(arguments: [
        ("%2\r\n", "RESP3 map type byte"),
        (">1\r\n", "RESP3 push type byte"),
        ("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", "9-deep nesting"),
        ("*2147483647\r\n", "a 2^31-1 element array"),
        ("*17\r\n", "an array over the element limit"),
        ("$abc\r\n", "a malformed length"),
    ])
    func rejectsHostileRepliesCleanly(wire: String, label: String) throws {
        let reader = RESPReplyReader(maxArrayElements: 16, maxReplyBytes: 1 << 20)
        let error = #expect(throws: RedisError.self, "\(label)") {
            try reader.feed(ByteBuffer(string: wire))
            _ = try reader.next()
        }
        #expect(error?.code == .protocolError)
        // Errors are sticky: the reader refuses to go on, so the connection must be dropped.
        #expect(throws: RedisError.self) { try reader.next() }
    }

    @Test func capsTheBytesOfAReplyInProgress() throws {
        let reader = RESPReplyReader(maxArrayElements: 16, maxReplyBytes: 64 * 1024)
        try reader.feed(ByteBuffer(string: "$1000000000\r\n"))
        #expect(try reader.next() == nil)
        let chunk = ByteBuffer(repeating: UInt8(ascii: "x"), count: 16 * 1024)
        var caught: RedisError?
        for _ in 0..<8 where caught == nil {
            do { try reader.feed(chunk) } catch { caught = error }
        }
        #expect(caught?.code == .protocolError)
        #expect(caught?.message.contains("cap") == true)
    }

    @Test func theByteCapDoesNotLimitManySmallReplies() throws {
        let reader = RESPReplyReader(maxArrayElements: 16, maxReplyBytes: 1024)
        var count = 0
        for _ in 0..<1_000 {
            try reader.feed(ByteBuffer(string: "$5\r\nhello\r\n:1\r\n"))
            while try reader.next() != nil { count += 1 }
        }
        #expect(count == 2_000)
    }

    @Test func scriptSHA1MatchesRedis() {
        // redis-cli SCRIPT LOAD "return 1" -> e0e1f9fabfc9d4800c877a703b823ac0578ff8db
        #expect(RedisScript("return 1").sha1 == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db")
    }
}
