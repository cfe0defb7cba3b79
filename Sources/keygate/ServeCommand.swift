import ArgumentParser
import Foundation
import KeygateCore
import KeygateDataPlane
import KeygateNode
import KeygateRedis
import Logging

/// `keygate serve`: run a node. Every setting is a flag with a `KEYGATE_*` environment fallback;
/// flags win over the environment, and everything has a default.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run a verification node (data plane on --data-port, admin API and /metrics on --control-port).",
        discussion: """
        Environment fallbacks: KEYGATE_HOST, KEYGATE_DATA_PORT, KEYGATE_CONTROL_PORT, KEYGATE_CONTROL_HOST, \
        KEYGATE_SELF_SERVICE_MAX_KEYS, KEYGATE_REDIS_URL, KEYGATE_NAMESPACE, \
        KEYGATE_KEY_PREFIX, KEYGATE_KEY_HEADERS (comma separated), KEYGATE_ACCEPT_BEARER, \
        KEYGATE_VERIFY_DETAILED_CODES, KEYGATE_CACHE_CAPACITY, KEYGATE_NEGATIVE_CACHE_CAPACITY, \
        KEYGATE_POSITIVE_MAX_AGE, KEYGATE_NEGATIVE_TTL, KEYGATE_STALE_IF_ERROR, KEYGATE_MAX_CONCURRENT_LOOKUPS, \
        KEYGATE_PING_INTERVAL, KEYGATE_PING_TIMEOUT, KEYGATE_USAGE_FLUSH_INTERVAL, KEYGATE_USAGE_SPILL_PATH, \
        KEYGATE_FAILURE_LIMIT, KEYGATE_FAILURE_WINDOW, KEYGATE_TRUSTED_PROXIES, \
        KEYGATE_UPSTREAMS (comma separated), KEYGATE_GATEWAY_ROUTES (';' separated), KEYGATE_UPSTREAM_CONNECT_TIMEOUT, KEYGATE_UPSTREAM_TIMEOUT, KEYGATE_GATEWAY_MAX_BODY, \
        KEYGATE_MAX_CONNECTIONS, KEYGATE_IDLE_TIMEOUT, KEYGATE_REQUEST_TIMEOUT, KEYGATE_METRICS_REFUSAL_REASONS, \
        KEYGATE_REDIS_TIMEOUT, KEYGATE_THREADS, KEYGATE_LOG_LEVEL; \
        KEYGATE_PEPPER or KEYGATE_PEPPER_FILE. SIGTERM or SIGINT: stop accepting, finish in-flight requests, \
        flush usage counters, exit 0.
        """
    )

    @Option(help: "Address to listen on (KEYGATE_HOST, default 127.0.0.1).") var host: String?
    @Option(help: "Data plane port (KEYGATE_DATA_PORT, default 8080).") var dataPort: Int?
    @Option(help: "Control plane port: admin API, /metrics, /openapi.yaml (KEYGATE_CONTROL_PORT, default 8081).") var controlPort: Int?
    @Option(help: "Control plane address (KEYGATE_CONTROL_HOST, default: the same as --host).") var controlHost: String?
    @Option(help: "Active keys a user may hold when creating keys with a keygate:self key (KEYGATE_SELF_SERVICE_MAX_KEYS, default 10).")
    var selfServiceMaxKeys: Int?
    @Option(help: "Redis URL: redis://, rediss://, redis-sentinel://host1:26379,host2:26379#master, unix:// (KEYGATE_REDIS_URL, default redis://127.0.0.1:6379).") var redisURL: String?
    @Option(help: "Redis key and channel prefix (KEYGATE_NAMESPACE, default keygate).") var namespace: String?
    @Option(help: "Prefix of issued keys (KEYGATE_KEY_PREFIX, default kg).") var keyPrefix: String?
    @Option(name: .customLong("key-header"), help: "Header carrying the key; repeat for several (KEYGATE_KEY_HEADERS, default X-API-Key).")
    var keyHeaders: [String] = []
    @Flag(help: "Also accept Authorization: Bearer <key> (KEYGATE_ACCEPT_BEARER).") var acceptBearer = false
    @Flag(help: "POST /v1/verify reports detailed failure codes (KEYGATE_VERIFY_DETAILED_CODES). An oracle: trusted callers only.")
    var verifyDetailedCodes = false
    @Option(help: "Failed verifications per client address and window before 429 (KEYGATE_FAILURE_LIMIT, default 0 = off).")
    var failureLimit: Int?
    @Option(help: "Window of --failure-limit (KEYGATE_FAILURE_WINDOW, default 10s).") var failureWindow: HumanDuration?
    @Option(name: .customLong("trusted-proxy"), help: "Address or CIDR of a proxy whose X-Forwarded-For names the client; repeat for several (KEYGATE_TRUSTED_PROXIES, comma separated).")
    var trustedProxies: [String] = []
    @Option(name: .customLong("upstream"), help: ArgumentHelp("Gateway mode: check the key of every request outside Keygate's own paths and forward it to this server, round robin over several; repeat for several (KEYGATE_UPSTREAMS, comma separated; default none: forward auth only).", valueName: "http://host:port"))
    var upstreams: [String] = []
    @Option(name: .customLong("gateway-route"), help: ArgumentHelp("Gateway mode: scopes a key needs for a path prefix, optionally per method, and what a request spends of the key's limits and credits (default 1); the longest prefix wins; repeat for several (KEYGATE_GATEWAY_ROUTES, separated by ';').", valueName: "[METHOD ]/prefix=[scope,...][ cost=N]"))
    var gatewayRoutes: [String] = []
    @Option(help: "Gateway mode: connecting to an upstream server; past it the server is skipped for 5 s (KEYGATE_UPSTREAM_CONNECT_TIMEOUT, default 2s).")
    var upstreamConnectTimeout: HumanDuration?
    @Option(help: "Gateway mode: from the request sent to the response's head, else 504 (KEYGATE_UPSTREAM_TIMEOUT, default 30s).")
    var upstreamTimeout: HumanDuration?
    @Option(help: "Gateway mode: request body bytes forwarded at most, else 413 (KEYGATE_GATEWAY_MAX_BODY, default 1048576).")
    var gatewayMaxBody: Int?
    @Option(help: "Cached valid keys (KEYGATE_CACHE_CAPACITY, default 1000000).") var cacheCapacity: Int?
    @Option(help: "Cached unknown/revoked keys (KEYGATE_NEGATIVE_CACHE_CAPACITY, default 100000).") var negativeCacheCapacity: Int?
    @Option(help: "Hard maximum age of a cached valid key (KEYGATE_POSITIVE_MAX_AGE, default 60s).") var positiveMaxAge: HumanDuration?
    @Option(help: "Lifetime of a cached refusal (KEYGATE_NEGATIVE_TTL, default 5s).") var negativeTTL: HumanDuration?
    @Option(help: "Serve cached valid keys this long while Redis is unreachable (KEYGATE_STALE_IF_ERROR, default 0s = off).")
    var staleIfError: HumanDuration?
    @Option(help: "Redis lookups in flight at once before 503 (KEYGATE_MAX_CONCURRENT_LOOKUPS, default 1024).") var maxConcurrentLookups: Int?
    @Option(help: "Invalidation channel ping interval P (KEYGATE_PING_INTERVAL, default 1s).") var pingInterval: HumanDuration?
    @Option(help: "Invalidation channel pong deadline Pt (KEYGATE_PING_TIMEOUT, default 1s).") var pingTimeout: HumanDuration?
    @Option(help: "Usage counter flush interval (KEYGATE_USAGE_FLUSH_INTERVAL, default 1s).") var usageFlushInterval: HumanDuration?
    @Option(help: "File for usage counts Redis could not take (KEYGATE_USAGE_SPILL_PATH, default ./keygate-usage-spill-<port>.jsonl).")
    var usageSpillPath: String?
    @Option(help: "Open data-plane connections at most (KEYGATE_MAX_CONNECTIONS, default 10000).") var maxConnections: Int?
    @Option(help: "Close a connection idle for this long, on both planes; the data plane within 1.5x (KEYGATE_IDLE_TIMEOUT, default 60s).") var idleTimeout: HumanDuration?
    @Option(help: "A request's head and body must arrive within this long of its first byte, on both planes; else the connection is closed (KEYGATE_REQUEST_TIMEOUT, default 5s; 0s = off).")
    var requestTimeout: HumanDuration?
    @Flag(help: "/metrics shows why keys were refused (unknown, revoked, disabled, expired) instead of one 'invalid' result: only where the control port is operator-only (KEYGATE_METRICS_REFUSAL_REASONS).")
    var metricsRefusalReasons = false
    @Option(help: "Deadline of every Redis command (KEYGATE_REDIS_TIMEOUT, default 500ms).") var redisTimeout: HumanDuration?
    @Option(help: "Replicas that must confirm every change and usage batch (WAIT) before it counts as done (KEYGATE_REDIS_WAIT_REPLICAS, default 1 with Sentinel, 0 otherwise).")
    var redisWaitReplicas: Int?
    @Option(help: "How long WAIT may block for them; below --redis-timeout (KEYGATE_REDIS_WAIT_TIMEOUT, default 200ms).")
    var redisWaitTimeout: HumanDuration?
    @Option(help: "Event loop threads (KEYGATE_THREADS, default: the number of cores).") var threads: Int?
    @Option(help: "trace, debug, info, notice, warning, error, critical (KEYGATE_LOG_LEVEL, default info).") var logLevel: String?

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        func value<T>(_ flag: T?, _ name: String, _ parse: (String) -> T?) throws -> T? {
            if let flag { return flag }
            guard let text = env[name], !text.isEmpty else { return nil }
            guard let parsed = parse(text) else { throw ValidationError("\(name)='\(text)' is not valid") }
            return parsed
        }
        let duration = { (text: String) in HumanDuration(argument: text) }
        let bool = { (text: String) -> Bool? in ["1", "true", "yes", "on"].contains(text.lowercased()) ? true : ["0", "false", "no", "off"].contains(text.lowercased()) ? false : nil }

        var config = NodeConfiguration()
        do {
            config.redis = try RedisConfiguration(url: try value(redisURL, "KEYGATE_REDIS_URL", { $0 }) ?? "redis://127.0.0.1:6379")
            if let timeout = try value(redisTimeout, "KEYGATE_REDIS_TIMEOUT", duration) { config.redis.commandTimeout = timeout.duration }
            config.redis.waitReplicas = try value(redisWaitReplicas, "KEYGATE_REDIS_WAIT_REPLICAS", { Int($0) })
            if let timeout = try value(redisWaitTimeout, "KEYGATE_REDIS_WAIT_TIMEOUT", duration) { config.redis.waitTimeout = timeout.duration }
            try config.redis.validateWait()
            config.namespace = try value(namespace, "KEYGATE_NAMESPACE", { $0 }) ?? "keygate"
            config.keyPrefix = try value(keyPrefix, "KEYGATE_KEY_PREFIX", { $0 }) ?? "kg"
            _ = try KeyStoreLayout(namespace: config.namespace)
            _ = try KeyFormat(prefix: config.keyPrefix)
            config.pepper = try KeyHasher.pepperFromEnvironment()
        } catch let error as RedisError {
            throw ValidationError(error.message)
        } catch let error as KeygateError {
            throw ValidationError(error.message)
        }
        config.dataPlane.host = try value(host, "KEYGATE_HOST", { $0 }) ?? "127.0.0.1"
        config.dataPlane.port = try value(dataPort, "KEYGATE_DATA_PORT", { Int($0) }) ?? 8080
        config.controlPlane.host = try value(controlHost, "KEYGATE_CONTROL_HOST", { $0 }) ?? config.dataPlane.host
        config.controlPlane.port = try value(controlPort, "KEYGATE_CONTROL_PORT", { Int($0) }) ?? 8081
        if let v = try value(selfServiceMaxKeys, "KEYGATE_SELF_SERVICE_MAX_KEYS", { Int($0) }) { config.controlPlane.selfServiceMaxActiveKeys = v }
        let headers = keyHeaders.isEmpty ? (env["KEYGATE_KEY_HEADERS"].map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } } ?? []) : keyHeaders
        if !headers.isEmpty { config.dataPlane.keyHeaders = headers }
        config.dataPlane.acceptBearer = try acceptBearer || (value(nil, "KEYGATE_ACCEPT_BEARER", bool) ?? false)
        config.dataPlane.detailedVerifyCodes = try verifyDetailedCodes || (value(nil, "KEYGATE_VERIFY_DETAILED_CODES", bool) ?? false)
        if let v = try value(maxConnections, "KEYGATE_MAX_CONNECTIONS", { Int($0) }) { config.dataPlane.maxConnections = v }
        if let v = try value(idleTimeout, "KEYGATE_IDLE_TIMEOUT", duration) {
            config.dataPlane.idleTimeout = v.duration
            config.controlPlane.idleTimeout = v.duration
        }
        if let v = try value(requestTimeout, "KEYGATE_REQUEST_TIMEOUT", duration) {
            config.dataPlane.requestTimeout = v.duration
            config.controlPlane.requestTimeout = v.duration
        }
        config.metricsRefusalReasons = try metricsRefusalReasons || (value(nil, "KEYGATE_METRICS_REFUSAL_REASONS", bool) ?? false)
        if let v = try value(failureLimit, "KEYGATE_FAILURE_LIMIT", { Int($0) }) { config.dataPlane.failureLimit = v }
        if let v = try value(failureWindow, "KEYGATE_FAILURE_WINDOW", duration) { config.dataPlane.failureWindow = v.duration }
        let proxies = trustedProxies.isEmpty ? (env["KEYGATE_TRUSTED_PROXIES"].map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } } ?? []) : trustedProxies
        config.dataPlane.trustedProxies = try proxies.map { text in
            guard let cidr = CIDR(text) else { throw ValidationError("--trusted-proxy '\(text)' is not an address or CIDR (10.0.0.0/8, ::1)") }
            return cidr
        }
        let upstreamTexts = upstreams.isEmpty ? (env["KEYGATE_UPSTREAMS"].map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } } ?? []) : upstreams
        do {
            config.dataPlane.gateway.upstreams = try upstreamTexts.map { text throws(KeygateError) in try GatewaySettings.Upstream(parsing: text) }
        } catch {
            throw ValidationError("--upstream: \(error.message)")
        }
        let routeTexts = gatewayRoutes.isEmpty ? (env["KEYGATE_GATEWAY_ROUTES"].map { $0.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) } } ?? []) : gatewayRoutes
        do {
            config.dataPlane.gateway.routes = try routeTexts.map { text throws(KeygateError) in try GatewayRoute(parsing: text) }
        } catch {
            throw ValidationError("--gateway-route: \(error.message)")
        }
        if !config.dataPlane.gateway.routes.isEmpty && config.dataPlane.gateway.upstreams.isEmpty {
            throw ValidationError("--gateway-route needs --upstream: routes apply to proxied requests")
        }
        if let v = try value(upstreamConnectTimeout, "KEYGATE_UPSTREAM_CONNECT_TIMEOUT", duration) { config.dataPlane.gateway.connectTimeout = v.duration }
        if let v = try value(upstreamTimeout, "KEYGATE_UPSTREAM_TIMEOUT", duration) { config.dataPlane.gateway.responseTimeout = v.duration }
        if let v = try value(gatewayMaxBody, "KEYGATE_GATEWAY_MAX_BODY", { Int($0) }) {
            guard v >= 0 else { throw ValidationError("--gateway-max-body must be 0 or more") }
            config.dataPlane.gateway.maxBodyBytes = v
        }
        if let v = try value(cacheCapacity, "KEYGATE_CACHE_CAPACITY", { Int($0) }) { config.verifier.cache.capacity = v }
        if let v = try value(negativeCacheCapacity, "KEYGATE_NEGATIVE_CACHE_CAPACITY", { Int($0) }) { config.verifier.cache.negativeCapacity = v }
        if let v = try value(positiveMaxAge, "KEYGATE_POSITIVE_MAX_AGE", duration) { config.verifier.cache.positiveMaxAge = v.duration }
        if let v = try value(negativeTTL, "KEYGATE_NEGATIVE_TTL", duration) { config.verifier.cache.negativeTTL = v.duration }
        if let v = try value(staleIfError, "KEYGATE_STALE_IF_ERROR", duration) { config.verifier.staleIfError = v.duration }
        if let v = try value(maxConcurrentLookups, "KEYGATE_MAX_CONCURRENT_LOOKUPS", { Int($0) }) { config.verifier.maxConcurrentLookups = v }
        if let v = try value(pingInterval, "KEYGATE_PING_INTERVAL", duration) { config.invalidation.pingInterval = v.duration }
        if let v = try value(pingTimeout, "KEYGATE_PING_TIMEOUT", duration) { config.invalidation.pingTimeout = v.duration }
        if let v = try value(usageFlushInterval, "KEYGATE_USAGE_FLUSH_INTERVAL", duration) { config.usage.interval = v.duration }
        config.usage.spillPath = try value(usageSpillPath, "KEYGATE_USAGE_SPILL_PATH", { $0 }) ?? "keygate-usage-spill-\(config.dataPlane.port).jsonl"
        if let v = try value(threads, "KEYGATE_THREADS", { Int($0) }) { config.eventLoopThreads = v }
        guard config.dataPlane.failureLimit >= 0, config.dataPlane.failureWindow > .zero, config.verifier.cache.capacity > 0, config.verifier.cache.negativeCapacity > 0, config.verifier.maxConcurrentLookups > 0,
              config.dataPlane.maxConnections > 0, config.controlPlane.selfServiceMaxActiveKeys > 0,
              (0...65_535).contains(config.dataPlane.port), (0...65_535).contains(config.controlPlane.port) else {
            throw ValidationError("capacities, limits and ports must be positive")
        }

        let levelText = try value(logLevel, "KEYGATE_LOG_LEVEL", { $0 }) ?? "info"
        guard let level = Logger.Level(rawValue: levelText.lowercased()) else { throw ValidationError("unknown log level '\(levelText)'") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "keygate")
        logger[metadataKey: "node"] = "\(config.nodeID)"
        logger.info("starting", metadata: ["redis": "\(config.redis.redactedTarget)", "namespace": "\(config.namespace)",
                                           "data_port": "\(config.dataPlane.port)", "control_port": "\(config.controlPlane.port)"])
        let node = try KeygateNode(configuration: config, logger: logger)
        try await node.run()
        logger.info("stopped")
    }
}
