import Foundation
import HTTPTypes
public import Hummingbird
import NIOCore
public import KeygateCore

/// An RFC 9457 `application/problem+json` error. `type` is a stable URI per kind of error that
/// clients can switch on; `title` is its fixed human name, `detail` says what went wrong this time.
public struct Problem: Error, HTTPResponseError, Sendable {
    public struct Kind: Sendable, Equatable {
        public let slug: String
        public let status: HTTPResponse.Status
        public let title: String

        public static let unauthorized = Kind(slug: "unauthorized", status: .unauthorized, title: "Missing or invalid API key")
        public static let forbidden = Kind(slug: "forbidden", status: .forbidden, title: "The API key lacks the required scope")
        public static let notFound = Kind(slug: "not-found", status: .notFound, title: "Not found")
        public static let methodNotAllowed = Kind(slug: "method-not-allowed", status: .methodNotAllowed, title: "Method not allowed")
        public static let conflict = Kind(slug: "conflict", status: .conflict, title: "The change conflicts with the key's state")
        public static let duplicate = Kind(slug: "duplicate", status: .conflict, title: "The key already exists")
        public static let selfModification = Kind(slug: "self-modification", status: .conflict, title: "A key cannot change itself through the API")
        public static let limitReached = Kind(slug: "key-limit-reached", status: .conflict, title: "The user holds the most active keys allowed")
        public static let invalidField = Kind(slug: "invalid-field", status: .unprocessableContent, title: "A field is invalid")
        public static let malformedBody = Kind(slug: "malformed-body", status: .badRequest, title: "The request body is not valid JSON")
        public static let badRequest = Kind(slug: "bad-request", status: .badRequest, title: "Bad request")
        public static let bodyTooLarge = Kind(slug: "body-too-large", status: .contentTooLarge, title: "The request body is too large")
        public static let unsupportedMediaType = Kind(slug: "unsupported-media-type", status: .unsupportedMediaType, title: "The request body must be application/json")
        public static let unavailable = Kind(slug: "unavailable", status: .serviceUnavailable, title: "Redis is unavailable; retry later")
        public static let notReplicated = Kind(slug: "not-replicated", status: .serviceUnavailable,
                                               title: "The change is not yet durable; retrying is safe")
        public static let internalError = Kind(slug: "internal", status: .internalServerError, title: "Internal error")

        public var type: String { "https://keygate.dev/problems/\(slug)" }
    }

    public let kind: Kind
    public let detail: String
    /// For `invalidField`: the request field at fault (JSON name).
    public let field: String?
    /// For `methodNotAllowed`: the `Allow` header.
    let allow: String?

    public init(_ kind: Kind, _ detail: String, field: String? = nil) {
        self.init(kind, detail, field: field, allow: nil)
    }

    init(_ kind: Kind, _ detail: String, field: String? = nil, allow: String?) {
        self.kind = kind
        self.detail = detail
        self.field = field
        self.allow = allow
    }

    public var status: HTTPResponse.Status { kind.status }

    public var headers: HTTPFields {
        var headers: HTTPFields = [.contentType: "application/problem+json", .cacheControl: "no-store"]
        switch kind {
        case .unauthorized: headers[.wwwAuthenticate] = "ApiKey realm=\"keygate\""
        case .unavailable, .notReplicated: headers[.retryAfter] = "1"
        default: break
        }
        if let allow { headers[.allow] = allow }
        return headers
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var body: [String: String] = ["type": kind.type, "title": kind.title, "status": "", "detail": detail]
        body["field"] = field
        body["instance"] = request.uri.path
        // `status` is a number; JSONSerialization of a mixed dictionary keeps the encoder simple.
        var object: [String: Any] = body
        object["status"] = Int(kind.status.code)
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// The one mapping from store errors to HTTP problems.
    public init(_ error: KeygateError) {
        switch error.code {
        case .notFound: self.init(.notFound, error.message)
        case .duplicate: self.init(.duplicate, error.message)
        case .conflict: self.init(.conflict, error.message)
        case .limitReached: self.init(.limitReached, error.message)
        case .invalidArgument, .invalidConfiguration: self.init(.invalidField, error.message, field: error.field)
        case .unavailable: self.init(.unavailable, "Redis cannot serve this now: \(error.message)")
        case .notReplicated: self.init(.notReplicated, error.message)
        default: self.init(.internalError, "the request could not be completed")
        }
    }
}

/// Turns every error a route throws, and the router's own 404/405, into a problem document. Errors
/// that are not problems are logged (without request data) and answered with a generic 500.
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let problem as Problem {
            throw problem
        } catch let error as KeygateError {
            if error.code == .internalError {
                context.logger.error("control plane request failed", metadata: ["error": "\(DisplayText.escaped("\(error)"))"])
            }
            throw Problem(error)
        } catch let error as HTTPError {
            switch error.status {
            case .notFound:
                if let allowed = routes.allowedMethods(request.uri.path) {
                    throw Problem(.methodNotAllowed, "\(request.method) is not allowed here", allow: allowed.joined(separator: ", "))
                }
                throw Problem(.notFound, "no such endpoint")
            case .methodNotAllowed: throw Problem(.methodNotAllowed, "this endpoint does not accept \(request.method)")
            case .contentTooLarge: throw Problem(.bodyTooLarge, "the body exceeds the limit")
            default: throw Problem(.badRequest, error.body ?? "bad request")
            }
        } catch is NIOTooManyBytesError {
            throw Problem(.bodyTooLarge, "the body exceeds the limit")
        } catch {
            context.logger.error("control plane request failed", metadata: ["error": "\(type(of: error))"])
            throw Problem(.internalError, "the request could not be completed")
        }
    }
}
