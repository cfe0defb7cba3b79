import KeygateCore
import NIOCore

/// HTTP/1.1 responses written as bytes: the fixed ones are encoded once, the 200 of forward auth
/// is assembled from a few writes. One generic 401 for every kind of bad key (CWE-204).
enum Responses {
    static let unauthorizedBody = #"{"error":"unauthorized","message":"A valid API key is required in the X-API-Key header."}"#
    static let forbiddenBody = #"{"error":"forbidden","message":"The API key lacks a scope this route requires."}"#
    static let unavailableBody = #"{"error":"unavailable","message":"The API key could not be checked right now. Retry later."}"#
    static let notFoundBody = #"{"error":"not_found","message":"No such endpoint."}"#
    static let multipleKeysBody = #"{"error":"bad_request","message":"Send exactly one API key."}"#
    static let keyInURLBody = #"{"error":"bad_request","message":"API keys must not be sent in the URL; use the X-API-Key header."}"#
    static let badRequestBody = #"{"error":"bad_request","message":"Malformed request."}"#
    static let badVerifyBody = #"{"error":"bad_request","message":"Expected a JSON body {\"key\": \"...\"} with an optional \"cost\" of 0-1000000."}"#
    static let badCostBody = #"{"error":"bad_request","message":"X-Keygate-Cost must be one whole number 0-1000000."}"#
    static let rateLimitedBody = #"{"error":"too_many_requests","message":"Too many failed verifications from this address. Retry later."}"#
    static let tooLargeBody = #"{"error":"payload_too_large","message":"Request body too large."}"#
    static let requestTimeoutBody = #"{"error":"request_timeout","message":"The request did not arrive in time."}"#
    static let headersTooLargeBody = #"{"error":"header_fields_too_large","message":"Request headers too large."}"#
    static let methodBody = #"{"error":"method_not_allowed","message":"Method not allowed here; see the Allow header."}"#
    static let badGatewayBody = #"{"error":"bad_gateway","message":"The upstream server could not be reached or gave no valid response."}"#
    static let gatewayTimeoutBody = #"{"error":"gateway_timeout","message":"The upstream server did not answer in time."}"#
    static let upgradeBody = #"{"error":"not_implemented","message":"Connection upgrades (WebSocket) are not proxied by Keygate."}"#
    static let continueLine = "HTTP/1.1 100 Continue\r\n\r\n"
    static let liveBody = #"{"status":"ok"}"#
    static let readyBody = #"{"status":"ready"}"#
    static let notReadyBody = #"{"status":"not_ready"}"#

    /// Writes a complete response with a JSON body.
    static func json(_ status: HTTPStatusLine, body: String, extraHeaders: String = "", close: Bool,
                     omitBody: Bool = false, into buffer: inout ByteBuffer) {
        buffer.writeString(status.rawValue)
        buffer.writeStaticString("Content-Type: application/json\r\nContent-Length: ")
        buffer.writeString(String(body.utf8.count))
        buffer.writeStaticString("\r\n")
        buffer.writeString(extraHeaders)
        if close { buffer.writeStaticString("Connection: close\r\n") }
        buffer.writeStaticString("\r\n")
        if !omitBody { buffer.writeString(body) } // HEAD: same headers, no body
    }

    static let wwwAuthenticate = "WWW-Authenticate: ApiKey realm=\"keygate\"\r\n"

    static func unauthorized(close: Bool, omitBody: Bool, into buffer: inout ByteBuffer) {
        json(.unauthorized, body: unauthorizedBody, extraHeaders: wwwAuthenticate, close: close, omitBody: omitBody, into: &buffer)
    }

    static func unavailable(retryAfter: Int, close: Bool, omitBody: Bool, into buffer: inout ByteBuffer) {
        json(.serviceUnavailable, body: unavailableBody, extraHeaders: "Retry-After: \(retryAfter)\r\n", close: close,
             omitBody: omitBody, into: &buffer)
    }

    static func rateLimited(retryAfter: Int, close: Bool, omitBody: Bool, into buffer: inout ByteBuffer) {
        json(.tooManyRequests, body: rateLimitedBody, extraHeaders: "Retry-After: \(retryAfter)\r\n", close: close,
             omitBody: omitBody, into: &buffer)
    }

    /// 200 for forward auth, with the identity headers the proxy copies upstream (the user's and
    /// scopes' part pre-encoded per principal): four copies into the buffer.
    static func authorized(_ verdict: Verdict, close: Bool, into buffer: inout ByteBuffer) {
        authorizedHead(verdict, into: &buffer)
        endHead(close: close, into: &buffer)
    }

    /// The 200's status line and identity fields; more fields may follow, then `endHead`.
    static func authorizedHead(_ verdict: Verdict, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Keygate-Key-Id: ")
        verdict.keyID.write(into: &buffer)
        buffer.writeBytes(verdict.principal.identityHeaders)
    }

    static func endHead(close: Bool, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(close ? "Connection: close\r\n\r\n" : "\r\n")
    }

    /// `RateLimit-Policy` (the key's, encoded once per lookup) and `RateLimit: "<name>";r=<n>;t=<s>`
    /// (draft-ietf-httpapi-ratelimit-headers), without building a String.
    static func writeRateLimitFields(policy: [UInt8], name: String, remaining: Int, reset: Int, into buffer: inout ByteBuffer) {
        buffer.writeBytes(policy)
        buffer.writeStaticString("RateLimit: \"")
        buffer.writeString(name)
        buffer.writeStaticString("\";r=")
        writeDecimal(remaining, into: &buffer)
        buffer.writeStaticString(";t=")
        writeDecimal(reset, into: &buffer)
        buffer.writeStaticString("\r\n")
    }

    /// A non-negative integer in ASCII digits (negative values are written as 0).
    static func writeDecimal(_ value: Int, into buffer: inout ByteBuffer) {
        var value = max(0, value)
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0) // room for 24 digits, more than Int.max has
        withUnsafeMutableBytes(of: &digits) { scratch in
            var index = scratch.count
            repeat {
                index -= 1
                scratch[index] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
            } while value > 0
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: scratch[index...]))
        }
    }

    /// The 429 of a key over its own limit (names are `[a-z0-9_-]`: no escaping needed).
    static func overLimitBody(_ quota: RateLimiter.Quota, retryAfter: Int) -> String {
        #"{"error":"rate_limited","limit":"\#(quota.limit.name)","message":"This API key's rate limit '\#(quota.limit.name)' "#
            + #"(\#(quota.limit.limit) per \#(quota.limit.durationMilliseconds) ms) is used up. Retry after \#(retryAfter) s."}"#
    }
}

extension Responses {
    /// The 429 of a key whose credits are used up.
    static func usageExceededBody(refillsIn seconds: Int?) -> String {
        #"{"error":"usage_exceeded","message":"This API key has no credits left"#
            + (seconds.map { #"; they are refilled in \#($0) s."}"# } ?? #"."}"#)
    }
}

enum HTTPStatusLine: String {
    case ok = "HTTP/1.1 200 OK\r\n"
    case badRequest = "HTTP/1.1 400 Bad Request\r\n"
    case unauthorized = "HTTP/1.1 401 Unauthorized\r\n"
    case forbidden = "HTTP/1.1 403 Forbidden\r\n"
    case notFound = "HTTP/1.1 404 Not Found\r\n"
    case methodNotAllowed = "HTTP/1.1 405 Method Not Allowed\r\n"
    case requestTimeout = "HTTP/1.1 408 Request Timeout\r\n"
    case payloadTooLarge = "HTTP/1.1 413 Payload Too Large\r\n"
    case tooManyRequests = "HTTP/1.1 429 Too Many Requests\r\n"
    case headersTooLarge = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
    case notImplemented = "HTTP/1.1 501 Not Implemented\r\n"
    case badGateway = "HTTP/1.1 502 Bad Gateway\r\n"
    case serviceUnavailable = "HTTP/1.1 503 Service Unavailable\r\n"
    case gatewayTimeout = "HTTP/1.1 504 Gateway Timeout\r\n"
}
