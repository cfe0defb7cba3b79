#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import Synchronization

/// Limits failed verifications per client address, so key enumeration cannot drive unbounded Redis
/// lookups (B6). Past `limit` failures within `window`, an address gets 429 for whatever needs a
/// Redis lookup or fails; a valid key already in the cache is still served (it costs nothing, and
/// keeps users behind a shared address working).
///
/// The client address is the connection's peer, or, when the peer is a trusted proxy, the rightmost
/// address in `X-Forwarded-For` that is not a trusted proxy (entries further left are client-supplied
/// and spoofable). Only failures touch the table; the valid-key path reads nothing here.
public final class FailureLimiter: Sendable {
    /// An IPv4 or IPv6 address as 16 bytes (IPv4 mapped into IPv6).
    public struct Client: Hashable, Sendable {
        var high: UInt64
        var low: UInt64
    }

    public let limit: Int
    private let window: UInt64
    private let trustedProxies: [CIDR]
    private let maxTracked: Int
    private let shards: [Shard]

    private struct Entry {
        var windowStart: UInt64
        var failures: Int
    }

    /// A Mutex in a class, so several can live in an array.
    private final class Shard: Sendable {
        let table = Mutex<[Client: Entry]>([:])
    }

    /// - Parameters:
    ///   - limit: failures allowed per address and window; 0 disables the limiter.
    ///   - maxTracked: addresses remembered at most (expired ones are dropped first; past it, new
    ///     addresses are not limited rather than evicting ones that are).
    public init(limit: Int, window: Duration, trustedProxies: [CIDR], maxTracked: Int = 100_000) {
        self.limit = limit
        self.window = UInt64(TimeAmount(window).nanoseconds)
        self.trustedProxies = trustedProxies
        self.maxTracked = maxTracked
        self.shards = (0..<16).map { _ in Shard() }
    }

    public var isEnabled: Bool { limit > 0 }

    func isTrustedProxy(_ client: Client) -> Bool { trustedProxies.contains { $0.contains(client) } }

    /// The address to account a request to.
    /// - Parameter forwardedFor: the `X-Forwarded-For` value, read only when `peer` is trusted.
    func client(peer: Client, forwardedFor: UnsafeRawBufferPointer?) -> Client {
        guard let forwardedFor, isTrustedProxy(peer) else { return peer }
        var end = forwardedFor.count
        while end > 0 {
            var start = end
            while start > 0 && forwardedFor[start - 1] != UInt8(ascii: ",") { start -= 1 }
            let entry = UnsafeRawBufferPointer(rebasing: forwardedFor[start..<end])
            guard let address = Client(text: entry) else { return peer } // garbage: do not guess
            if !isTrustedProxy(address) { return address }
            end = start - 1
        }
        return peer
    }

    /// True while `client` is over the limit.
    func isBlocked(_ client: Client, now: UInt64) -> Bool {
        guard isEnabled else { return false }
        return shard(client).table.withLock { table in
            guard let entry = table[client], now &- entry.windowStart < window else { return false }
            return entry.failures >= limit
        }
    }

    /// Counts one failed verification.
    func recordFailure(_ client: Client, now: UInt64) {
        guard isEnabled else { return }
        let maxPerShard = max(1, maxTracked / shards.count)
        shard(client).table.withLock { table in
            if var entry = table[client], now &- entry.windowStart < window {
                entry.failures += 1
                table[client] = entry
                return
            }
            if table.count >= maxPerShard {
                table = table.filter { now &- $0.value.windowStart < window }
                guard table.count < maxPerShard else { return }
            }
            table[client] = Entry(windowStart: now, failures: 1)
        }
    }

    /// Whole seconds until `client`'s window ends (for `Retry-After`), at least 1.
    func retryAfterSeconds(_ client: Client, now: UInt64) -> Int {
        let start = shard(client).table.withLock { $0[client]?.windowStart } ?? now
        let remaining = window &- min(window, now &- start)
        return max(1, Int((remaining + 999_999_999) / 1_000_000_000))
    }

    private func shard(_ client: Client) -> Shard {
        shards[Int((client.low ^ client.high) % UInt64(shards.count))]
    }
}

extension FailureLimiter.Client {
    /// From a socket address; nil for a Unix socket peer.
    init?(_ address: SocketAddress?) {
        guard let address else { return nil }
        switch address {
        case .v4(let v4):
            self.init(ipv4: UInt32(bigEndian: v4.address.sin_addr.s_addr))
        case .v6(let v6):
            var raw = v6.address.sin6_addr
            let bytes = withUnsafeBytes(of: &raw) { Array($0) }
            self.init(bytes: bytes)
        default:
            return nil
        }
    }

    init(ipv4: UInt32) {
        self.init(high: 0, low: 0x0000_FFFF_0000_0000 | UInt64(ipv4))
    }

    init(bytes: [UInt8]) {
        var high: UInt64 = 0, low: UInt64 = 0
        for index in 0..<8 { high = high << 8 | UInt64(bytes[index]) }
        for index in 8..<16 { low = low << 8 | UInt64(bytes[index]) }
        self.init(high: high, low: low)
    }

    /// Parses `1.2.3.4` or `2001:db8::1` (surrounding spaces allowed); nil for anything else.
    init?(text: UnsafeRawBufferPointer) {
        var start = 0, end = text.count
        while start < end && (text[start] == 0x20 || text[start] == 0x09) { start += 1 }
        while end > start && (text[end - 1] == 0x20 || text[end - 1] == 0x09) { end -= 1 }
        let length = end - start
        guard length > 0 && length < 46 else { return nil }
        var cString = [CChar](repeating: 0, count: 48)
        for index in 0..<length { cString[index] = CChar(bitPattern: text[start + index]) }
        var v4 = in_addr()
        if inet_pton(AF_INET, cString, &v4) == 1 {
            self.init(ipv4: UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, cString, &v6) == 1 else { return nil }
        self.init(bytes: withUnsafeBytes(of: &v6) { Array($0) })
    }

    init?(_ text: String) {
        var text = text
        guard let parsed = text.withUTF8({ Self(text: UnsafeRawBufferPointer($0)) }) else { return nil }
        self = parsed
    }
}

/// An address range such as `10.0.0.0/8`, `127.0.0.1` or `fd00::/8`.
public struct CIDR: Sendable, Equatable, CustomStringConvertible {
    let network: FailureLimiter.Client
    let prefixLength: Int
    public let description: String

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1)
        guard let first = parts.first, let address = FailureLimiter.Client(String(first)) else { return nil }
        let isV4 = !first.contains(":")
        let maximum = isV4 ? 32 : 128
        let given = parts.count == 2 ? Int(parts[1]) : maximum
        guard let given, (0...maximum).contains(given) else { return nil }
        prefixLength = isV4 ? given + 96 : given
        network = Self.mask(address, prefixLength)
        description = text
    }

    func contains(_ client: FailureLimiter.Client) -> Bool {
        Self.mask(client, prefixLength) == network
    }

    private static func mask(_ client: FailureLimiter.Client, _ length: Int) -> FailureLimiter.Client {
        func keep(_ bits: Int) -> UInt64 { bits <= 0 ? 0 : bits >= 64 ? .max : ~(UInt64.max >> UInt64(bits)) }
        return FailureLimiter.Client(high: client.high & keep(length), low: client.low & keep(length - 64))
    }
}
