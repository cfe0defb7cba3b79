// swift-tools-version:6.1
import PackageDescription

// Dependencies, hoisted so every target names them the same way. Versions are the ones mirrored on the
// build machines (see README, "Building").
let nio = Target.Dependency.product(name: "NIOCore", package: "swift-nio")
let nioPosix = Target.Dependency.product(name: "NIOPosix", package: "swift-nio")
let nioHTTP1 = Target.Dependency.product(name: "NIOHTTP1", package: "swift-nio")
let nioEmbedded = Target.Dependency.product(name: "NIOEmbedded", package: "swift-nio")
let nioConcurrency = Target.Dependency.product(name: "NIOConcurrencyHelpers", package: "swift-nio")
let nioSSL = Target.Dependency.product(name: "NIOSSL", package: "swift-nio-ssl")
let logging = Target.Dependency.product(name: "Logging", package: "swift-log")
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")
let serviceLifecycle = Target.Dependency.product(name: "ServiceLifecycle", package: "swift-service-lifecycle")
let hummingbird = Target.Dependency.product(name: "Hummingbird", package: "hummingbird")
let httpTypes = Target.Dependency.product(name: "HTTPTypes", package: "swift-http-types")
let hummingbirdTesting = Target.Dependency.product(name: "HummingbirdTesting", package: "hummingbird")
let hummingbirdCore = Target.Dependency.product(name: "HummingbirdCore", package: "hummingbird")
let nioHTTPTypes = Target.Dependency.product(name: "NIOHTTPTypes", package: "swift-nio-extras")

let package = Package(
    name: "keygate",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "KeygateRedis", targets: ["KeygateRedis"]),
        .library(name: "KeygateCore", targets: ["KeygateCore"]),
        .library(name: "KeygateDataPlane", targets: ["KeygateDataPlane"]),
        .executable(name: "keygate", targets: ["keygate"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
    ],
    targets: [
        // C libraries from Debian: libhiredis-dev (RESP2 reader) and libssl-dev (libcrypto).
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),

        // Lock-free latency histograms and the Prometheus text writer, shared by every layer.
        .target(name: "KeygateMetrics"),
        .target(name: "KeygateRedis", dependencies: ["CHiredis", "CCrypto", "KeygateMetrics", nio, nioPosix, nioSSL, logging]),
        .target(name: "KeygateCore", dependencies: ["KeygateRedis", "KeygateMetrics", "CCrypto", nio, nioPosix, logging, serviceLifecycle]),
        .target(name: "KeygateDataPlane", dependencies: ["KeygateCore", "KeygateMetrics", nio, nioPosix, nioHTTP1, logging, serviceLifecycle]),
        // The admin API, /metrics, /openapi.yaml and the console (port 8081). The OpenAPI document and
        // the console's files are compiled in.
        .target(name: "KeygateControlPlane", dependencies: ["KeygateCore", "KeygateMetrics", hummingbird, hummingbirdCore, httpTypes, nioHTTPTypes, nio, logging, serviceLifecycle],
                resources: [.embedInCode("openapi.yaml"), .embedInCode("Console/index.html"), .embedInCode("Console/console.js"),
                            .embedInCode("Console/console.css")]),
        .target(name: "KeygateNode", dependencies: ["KeygateCore", "KeygateMetrics", "KeygateRedis", "KeygateDataPlane", "KeygateControlPlane", nio, nioPosix, logging, serviceLifecycle]),
        .executableTarget(name: "keygate", dependencies: ["KeygateCore", "KeygateRedis", "KeygateNode", "KeygateDataPlane", argumentParser, nioPosix, logging, serviceLifecycle]),
        .target(name: "KeygateTestSupport", dependencies: ["KeygateRedis", "KeygateNode", nio, nioPosix, nioHTTP1, logging, serviceLifecycle]),

        .testTarget(name: "KeygateRedisTests", dependencies: ["KeygateRedis", nio, nioEmbedded, nioPosix, nioConcurrency]),
        .testTarget(name: "KeygateCoreTests", dependencies: ["KeygateCore", "CCrypto", nio, nioEmbedded, nioPosix, nioConcurrency]),
        .testTarget(name: "KeygateDataPlaneTests", dependencies: ["KeygateDataPlane"]),
        .testTarget(name: "KeygateControlPlaneTests", dependencies: ["KeygateControlPlane", "KeygateCore", hummingbird, hummingbirdTesting]),
        // Needs a real redis-server: REDIS_URL, exported by scripts/test.sh.
        .testTarget(name: "KeygateIntegrationTests",
                    dependencies: ["KeygateRedis", "KeygateCore", "KeygateNode", "KeygateDataPlane", "KeygateControlPlane", "KeygateTestSupport",
                                   hummingbird, hummingbirdTesting, nio, nioPosix, serviceLifecycle, logging]),
    ]
)

// One settings list for every target we compile (system library targets refuse settings).
var sharedSwiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("ExistentialAny"),
]
// scripts/test.sh sets KEYGATE_WARNINGS_AS_ERRORS=1 for its build: the project's own targets must
// compile without a warning (dependencies are not affected: these settings are only ours).
if Context.environment["KEYGATE_WARNINGS_AS_ERRORS"] == "1" {
    sharedSwiftSettings.append(.unsafeFlags(["-warnings-as-errors"]))
}
for target in package.targets where target.type != .system {
    target.swiftSettings = (target.swiftSettings ?? []) + sharedSwiftSettings
}
