@testable import KeygateDataPlane
import Testing

@Suite struct FailureLimiterTests {
    func client(_ text: String) -> FailureLimiter.Client { FailureLimiter.Client(text)! }

    func forwarded(_ limiter: FailureLimiter, peer: String, _ header: String) -> FailureLimiter.Client {
        var header = header
        return header.withUTF8 { limiter.client(peer: client(peer), forwardedFor: UnsafeRawBufferPointer($0)) }
    }

    @Test func parsesAddressesAndRanges() {
        #expect(FailureLimiter.Client("10.1.2.3") != nil)
        #expect(FailureLimiter.Client(" 2001:db8::1 ") != nil)
        #expect(FailureLimiter.Client("10.1.2") == nil)
        #expect(FailureLimiter.Client("example.com") == nil)
        #expect(FailureLimiter.Client("::ffff:10.1.2.3") == FailureLimiter.Client("10.1.2.3"), "IPv4-mapped is the same client")
        let private10 = CIDR("10.0.0.0/8")!
        #expect(private10.contains(client("10.200.0.1")) && !private10.contains(client("11.0.0.1")))
        #expect(CIDR("127.0.0.1")!.contains(client("127.0.0.1")) && !CIDR("127.0.0.1")!.contains(client("127.0.0.2")))
        #expect(CIDR("fd00::/8")!.contains(client("fd12::5")) && !CIDR("fd00::/8")!.contains(client("fe80::1")))
        #expect(CIDR("0.0.0.0/0")!.contains(client("8.8.8.8")) && !CIDR("0.0.0.0/0")!.contains(client("::1")))
        #expect(CIDR("10.0.0.0/33") == nil && CIDR("nonsense") == nil && CIDR("::/129") == nil)
    }

    @Test func forwardedForIsReadOnlyFromTrustedProxiesAndFromTheRight() {
        let limiter = FailureLimiter(limit: 5, window: .seconds(10), trustedProxies: [CIDR("127.0.0.1")!, CIDR("10.0.0.0/8")!])
        #expect(forwarded(limiter, peer: "127.0.0.1", "203.0.113.7") == client("203.0.113.7"))
        // The client may put anything on the left; the rightmost untrusted entry is the one our proxies saw.
        #expect(forwarded(limiter, peer: "127.0.0.1", "1.1.1.1, 203.0.113.7, 10.0.0.5") == client("203.0.113.7"))
        #expect(forwarded(limiter, peer: "198.51.100.1", "203.0.113.7") == client("198.51.100.1"), "untrusted peer: header ignored")
        #expect(forwarded(limiter, peer: "127.0.0.1", "garbage") == client("127.0.0.1"), "unparsable: the peer, never a guess")
        #expect(forwarded(limiter, peer: "127.0.0.1", "10.0.0.1, 10.0.0.2") == client("127.0.0.1"), "only proxies: the peer")
    }

    @Test func blocksPastTheLimitUntilTheWindowEnds() {
        let limiter = FailureLimiter(limit: 3, window: .seconds(10), trustedProxies: [])
        let a = client("192.0.2.1"), b = client("192.0.2.2")
        let second: UInt64 = 1_000_000_000
        for _ in 0..<3 { limiter.recordFailure(a, now: 1 * second) }
        #expect(limiter.isBlocked(a, now: 2 * second))
        #expect(!limiter.isBlocked(b, now: 2 * second), "other addresses are not affected")
        #expect(limiter.retryAfterSeconds(a, now: 2 * second) == 9)
        #expect(!limiter.isBlocked(a, now: 12 * second), "a new window starts clean")
        #expect(!FailureLimiter(limit: 0, window: .seconds(10), trustedProxies: []).isEnabled)
    }

    @Test func theTableIsBounded() {
        let limiter = FailureLimiter(limit: 1, window: .seconds(10), trustedProxies: [], maxTracked: 32)
        for index in 0..<1_000 { limiter.recordFailure(FailureLimiter.Client(ipv4: UInt32(index)), now: 1) }
        let blocked = (0..<1_000).filter { limiter.isBlocked(FailureLimiter.Client(ipv4: UInt32($0)), now: 2) }.count
        #expect(blocked <= 32, "past the bound new addresses are not tracked (\(blocked))")
        #expect(blocked > 0)
    }
}

