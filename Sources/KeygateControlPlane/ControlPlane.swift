import Foundation
public import Hummingbird
import HummingbirdCore
public import KeygateCore
import KeygateMetrics
public import Logging
public import NIOCore
public import ServiceLifecycle
import Synchronization

public struct ControlPlaneSettings: Sendable, Equatable {
    public var host = "127.0.0.1"
    public var port = 8081
    /// Largest accepted request body.
    public var maxBodyBytes = 64 * 1024
    /// Active keys a user may hold when creating keys through self-service.
    public var selfServiceMaxActiveKeys = 10
    /// A connection that sends nothing for this long after its last response is closed.
    public var idleTimeout: Duration = .seconds(60)
    /// A request's head and body must arrive within this long of its first byte, or the
    /// connection is closed (slow and trickling clients). Zero turns it off.
    public var requestTimeout: Duration = .seconds(5)
    public init() {}
}

/// The control plane (port 8081): the admin API, `/metrics`, `/health/*` and `/openapi.yaml`, a
/// Hummingbird application sharing the node's store, verifier and event loops.
public final class ControlPlane: Service, Sendable {
    public let settings: ControlPlaneSettings
    public let metrics = ControlPlaneMetrics()
    private let store: KeyStore
    private let verifier: Verifier
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let isReady: @Sendable () -> Bool
    private let notReadyReason: @Sendable () -> String?
    private let metricsText: @Sendable () -> String
    private let nodeStatus: @Sendable () -> NodeStatus
    private let boundPort = Atomic<Int>(0)

    /// - Parameters:
    ///   - notReadyReason: why the node is not ready (Redis's last error, say), for `/health/ready`.
    ///   - metricsText: the node's metrics in Prometheus text format, built per scrape.
    ///   - nodeStatus: what `GET /v1/node` reports (the console's health panel).
    public init(settings: ControlPlaneSettings, store: KeyStore, verifier: Verifier, eventLoopGroup: any EventLoopGroup,
                logger: Logger, isReady: @escaping @Sendable () -> Bool,
                notReadyReason: @escaping @Sendable () -> String? = { nil },
                metricsText: @escaping @Sendable () -> String,
                nodeStatus: @escaping @Sendable () -> NodeStatus = { NodeStatus() }) {
        self.notReadyReason = notReadyReason
        self.nodeStatus = nodeStatus
        self.settings = settings
        self.store = store
        self.verifier = verifier
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.isReady = isReady
        self.metricsText = metricsText
    }

    /// The port actually bound (useful with port 0), or 0 before binding.
    public var port: Int { boundPort.load(ordering: .acquiring) }

    public func makeRouter() -> Router<ControlPlaneContext> {
        let router = Router(context: ControlPlaneContext.self, options: .autoGenerateHeadEndpoints)
        let table = RouteTable()
        router.add(middleware: ProblemMiddleware(routes: table))
        router.add(middleware: HostHeaderMiddleware())
        let json = "application/json"
        router.on("health/live", .get, recordIn: table) { _, _ in Self.text(#"{"status":"ok"}"#, contentType: json) }
        router.on("health/ready", .get, recordIn: table) { [isReady, notReadyReason] _, _ in
            if isReady() { return Self.text(#"{"status":"ready"}"#, contentType: json) }
            var body: [String: String] = ["status": "not_ready"]
            body["reason"] = notReadyReason()
            let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            return Self.text(String(decoding: data, as: UTF8.self), contentType: json, status: .serviceUnavailable)
        }
        router.on("metrics", .get, recordIn: table) { [metricsText] _, _ in
            Self.text(metricsText(), contentType: PrometheusText.contentType)
        }
        router.on("openapi.yaml", .get, recordIn: table) { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml"],
                     body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_yaml)))
        }
        ConsoleFiles.register(on: router, table: table)
        // A console link's secret is its own credential: exchanged here, without a key, for a
        // short-lived key of the link's user (single use; sent in the body, never in a URL).
        router.on("console/session", .post, recordIn: table) { [store, settings] request, _ in
            let body = try await JSONBody.decode(RedeemConsoleSessionBody.self, from: request, limit: settings.maxBodyBytes)
            return try JSONResponse.make(try await store.redeemConsoleSession(body.session), status: .created)
        }
        let v1 = router.group("v1").add(middleware: CallerAuthentication(verifier: verifier, eventLoopGroup: eventLoopGroup, metrics: metrics))
        KeyRoutes(store: store, settings: settings).register(on: v1, table: table)
        v1.on("node", .get, recordIn: table, prefix: "/v1") { [nodeStatus, isReady, notReadyReason] _, context in
            guard try context.requireCaller().isAdmin else { throw Problem(.forbidden, "this endpoint needs scope keygate:admin") }
            var status = nodeStatus()
            status.ready = isReady()
            status.reason = status.ready ? nil : notReadyReason()
            return try JSONResponse.make(status)
        }
        return router
    }

    public func run() async throws {
        let idleTimeout = TimeAmount(settings.idleTimeout), requestTimeout = TimeAmount(settings.requestTimeout)
        let application = Application(
            router: makeRouter(),
            server: HTTPServerBuilder { responder in
                ControlPlaneChannel(responder: responder, idleTimeout: idleTimeout, requestTimeout: requestTimeout)
            },
            configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: nil),
            onServerRunning: { channel in
                self.boundPort.store(channel.localAddress?.port ?? 0, ordering: .releasing)
                self.logger.info("control plane listening", metadata: ["address": "\(self.settings.host):\(self.port)"])
            },
            eventLoopGroupProvider: .shared(eventLoopGroup),
            logger: logger)
        try await application.run()
    }

    static func text(_ body: String, contentType: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: contentType, .cacheControl: "no-store"],
                 body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}

/// `GET /v1/node`: the health of the node that answers (the console's health panel).
public struct NodeStatus: Sendable, Encodable {
    public var version = ""
    public var nodeID = ""
    public var ready = false
    /// Why the node is not ready; nil when it is.
    public var reason: String?
    public var redisConnected = false
    /// The invalidation channel is confirmed: cached verdicts may be served.
    public var invalidationTrusted = false
    public var cachedKeys = 0

    public init(version: String = "", nodeID: String = "", redisConnected: Bool = false, invalidationTrusted: Bool = false, cachedKeys: Int = 0) {
        self.version = version; self.nodeID = nodeID; self.redisConnected = redisConnected
        self.invalidationTrusted = invalidationTrusted; self.cachedKeys = cachedKeys
    }

    enum CodingKeys: String, CodingKey {
        case version, ready, reason
        case nodeID = "node_id", redisConnected = "redis_connected", invalidationTrusted = "invalidation_trusted", cachedKeys = "cached_keys"
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(version, forKey: .version)
        try container.encode(nodeID, forKey: .nodeID)
        try container.encode(ready, forKey: .ready)
        try container.encode(reason, forKey: .reason)
        try container.encode(redisConnected, forKey: .redisConnected)
        try container.encode(invalidationTrusted, forKey: .invalidationTrusted)
        try container.encode(cachedKeys, forKey: .cachedKeys)
    }
}
