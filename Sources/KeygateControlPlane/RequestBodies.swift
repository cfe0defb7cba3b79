import Foundation
import Hummingbird
import KeygateCore

/// Strict JSON request bodies: a size cap, `application/json` only, unknown fields rejected, and
/// every decoding failure reported as a problem naming the field.
enum JSONBody {
    static func decode<Body: Decodable>(_ type: Body.Type, from request: Request, limit: Int,
                                        allowEmpty: Bool = false) async throws -> Body {
        var request = request
        let buffer = try await request.collectBody(upTo: limit)
        if buffer.readableBytes == 0 {
            guard allowEmpty else { throw Problem(.malformedBody, "a JSON object is required") }
            return try decode(type, data: Data("{}".utf8))
        }
        if let contentType = request.headers[.contentType],
           contentType.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased() != "application/json" {
            throw Problem(.unsupportedMediaType, "send Content-Type: application/json")
        }
        return try decode(type, data: Data(buffer.readableBytesView))
    }

    static func decode<Body: Decodable>(_ type: Body.Type, data: Data) throws -> Body {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch let problem as Problem {
            throw problem
        } catch let error as DecodingError {
            throw problem(for: error)
        }
    }

    private static func problem(for error: DecodingError) -> Problem {
        func name(_ path: [any CodingKey]) -> String { path.map(\.stringValue).joined(separator: ".") }
        switch error {
        case .keyNotFound(let key, let context):
            let field = name(context.codingPath + [key])
            return Problem(.invalidField, "\(field) is required", field: field)
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            let field = name(context.codingPath)
            guard !field.isEmpty else { return Problem(.malformedBody, "the body must be a JSON object") }
            return Problem(.invalidField, "\(field) has the wrong type", field: field)
        case .dataCorrupted(let context):
            let field = name(context.codingPath)
            guard !field.isEmpty else { return Problem(.malformedBody, "the body is not valid JSON") }
            return Problem(.invalidField, "\(field): \(context.debugDescription)", field: field)
        @unknown default:
            return Problem(.malformedBody, "the body could not be decoded")
        }
    }
}

/// Any JSON object key, to list the keys a body actually sent.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension Decoder {
    /// Throws a problem for the first key of the object not in `allowed`.
    func rejectUnknownFields(allowed: Set<String>) throws {
        let container = try container(keyedBy: AnyKey.self)
        if let unknown = container.allKeys.map(\.stringValue).sorted().first(where: { !allowed.contains($0) }) {
            throw Problem(.invalidField, "unknown field '\(unknown.prefix(64))'", field: String(unknown.prefix(64)))
        }
    }
}

extension KeyedDecodingContainer {
    /// Like `decodeIfPresent`, but an explicit null is an error: only `expires_at` may be null.
    func decodeField<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard contains(key) else { return nil }
        if try decodeNil(forKey: key) {
            throw Problem(.invalidField, "\(key.stringValue) must not be null", field: key.stringValue)
        }
        return try decode(type, forKey: key)
    }

    /// An RFC 3339 timestamp (`2027-01-31T00:00:00Z`, fractional seconds allowed).
    func decodeTimestamp(forKey key: Key) throws -> Date {
        let text = try decode(String.self, forKey: key)
        guard let date = Timestamp.parse(text) else {
            throw Problem(.invalidField, "\(key.stringValue) must be an RFC 3339 timestamp such as 2027-01-31T00:00:00Z", field: key.stringValue)
        }
        return date
    }
}

enum Timestamp {
    static func parse(_ text: String) -> Date? {
        let plain = ISO8601DateFormatter()
        if let date = plain.date(from: text) { return date }
        let fractional = ISO8601DateFormatter()
        fractional.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return fractional.date(from: text)
    }
}

/// `POST /v1/keys`.
struct CreateKeyBody: Decodable {
    var user: String?
    var name: String?
    var scopes: [String]?
    var expiresAt: Date?
    var metadata: [String: String]?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case user, name, scopes, metadata
        case expiresAt = "expires_at"
    }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        user = try container.decodeField(String.self, forKey: .user)
        name = try container.decodeField(String.self, forKey: .name)
        scopes = try container.decodeField([String].self, forKey: .scopes)
        metadata = try container.decodeField([String: String].self, forKey: .metadata)
        if container.contains(.expiresAt), try !container.decodeNil(forKey: .expiresAt) {
            expiresAt = try container.decodeTimestamp(forKey: .expiresAt)
        }
    }
}

/// `PATCH /v1/keys/{id}`. `expires_at: null` removes the expiry; an absent field stays as it is.
struct UpdateKeyBody: Decodable {
    var changes = KeyStore.KeyChanges()
    var enabled: Bool?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, scopes, metadata, enabled
        case expiresAt = "expires_at"
    }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        changes.name = try container.decodeField(String.self, forKey: .name)
        changes.scopes = try container.decodeField([String].self, forKey: .scopes)
        changes.metadata = try container.decodeField([String: String].self, forKey: .metadata)
        if container.contains(.expiresAt) {
            changes.expiresAt = .some(try container.decodeNil(forKey: .expiresAt) ? nil : container.decodeTimestamp(forKey: .expiresAt))
        }
        enabled = try container.decodeField(Bool.self, forKey: .enabled)
    }
}

/// `POST /v1/keys/{id}/rotate`; the body is optional.
struct RotateKeyBody: Decodable {
    /// The old key keeps working this long (default 24 h, as the CLI).
    var graceSeconds: Int

    static let maximumGraceSeconds = 90 * 86_400

    enum CodingKeys: String, CodingKey, CaseIterable { case graceSeconds = "grace_seconds" }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownFields(allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        graceSeconds = try container.decodeField(Int.self, forKey: .graceSeconds) ?? 86_400
        guard (0...Self.maximumGraceSeconds).contains(graceSeconds) else {
            throw Problem(.invalidField, "grace_seconds must be 0-\(Self.maximumGraceSeconds)", field: "grace_seconds")
        }
    }
}
