import HTTPTypes
import Hummingbird
import KeygateCore
import NIOCore

/// Authenticates `/v1` requests with a Keygate key in `X-API-Key`, through the same verifier (and
/// cache, and invalidation) as the data plane. The key must carry `keygate:admin` or
/// `keygate:self`; each route then checks what the caller may do. Never 401 for "could not check":
/// when Redis cannot answer, 503.
struct CallerAuthentication: RouterMiddleware {
    typealias Context = ControlPlaneContext

    let verifier: Verifier
    let eventLoopGroup: any EventLoopGroup
    let metrics: ControlPlaneMetrics

    static let keyHeader = HTTPField.Name("X-API-Key")!

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let values = request.headers[values: Self.keyHeader]
        guard values.count <= 1 else {
            metrics.count(.badRequest)
            throw Problem(.badRequest, "send exactly one X-API-Key header")
        }
        guard let key = values.first, !key.isEmpty else {
            metrics.count(.missing)
            throw Problem(.unauthorized, "send a Keygate key with scope keygate:admin or keygate:self in X-API-Key")
        }
        let start = NIODeadline.now().uptimeNanoseconds
        let decision = await verifier.verify(key, on: eventLoopGroup.any())
        metrics.latency.observe(nanoseconds: NIODeadline.now().uptimeNanoseconds &- start)
        switch decision {
        case .invalid:
            metrics.count(.invalid)
            throw Problem(.unauthorized, "the API key is not valid")
        case .unavailable:
            metrics.count(.unavailable)
            throw Problem(.unavailable, "the API key could not be checked because Redis is unavailable")
        case .valid(let verdict):
            let caller = Caller(user: verdict.principal.user, keyID: verdict.keyID.description, scopes: verdict.principal.scopes)
            guard caller.isAdmin || caller.isSelfService else {
                metrics.count(.forbidden)
                throw Problem(.forbidden, "the API key needs scope keygate:admin or keygate:self")
            }
            metrics.count(.ok)
            var context = context
            context.caller = caller
            context.logger[metadataKey: "caller_key_id"] = "\(caller.keyID)"
            return try await next(request, context)
        }
    }
}
