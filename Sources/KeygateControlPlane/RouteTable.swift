import HTTPTypes
import Hummingbird
import Synchronization

/// The methods each route accepts, recorded as routes are registered, so a known path with another
/// method gets 405 with `Allow` instead of the router's 404.
final class RouteTable: Sendable {
    private let routes = Mutex<[(segments: [Substring], methods: Set<HTTPRequest.Method>)]>([])

    func record(_ path: String, _ method: HTTPRequest.Method) {
        let segments = path.split(separator: "/")
        routes.withLock { routes in
            if let index = routes.firstIndex(where: { $0.segments == segments }) {
                routes[index].methods.insert(method)
            } else {
                routes.append((segments, [method]))
            }
        }
    }

    /// The methods allowed on `path` (HEAD wherever GET is), or nil for an unknown path.
    func allowedMethods(_ path: String) -> [String]? {
        let requested = path.split(separator: "/")
        let methods = routes.withLock { routes in
            routes.first { route in
                route.segments.count == requested.count
                    && zip(route.segments, requested).allSatisfy { $0.hasPrefix(":") || $0 == $1 }
            }?.methods
        }
        guard var methods else { return nil }
        if methods.contains(.get) { methods.insert(.head) }
        return methods.map(\.rawValue).sorted()
    }
}

extension RouterMethods {
    /// Registers a route and records its method in `table`.
    @discardableResult
    func on(_ path: String, _ method: HTTPRequest.Method, recordIn table: RouteTable, prefix: String = "",
            use handler: @Sendable @escaping (Request, Context) async throws -> Response) -> Self {
        table.record(prefix + "/" + path, method)
        return on(RouterPath(path), method: method, use: handler)
    }
}
