// swift-tools-version:6.1
import PackageDescription

// Benchmarks live in their own package so the main build and tests never compile them.
let package = Package(
    name: "keygate-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "keygate", path: "../"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    ],
    targets: [
        .target(name: "CEpoll"),
        .executableTarget(
            name: "redis-client-bench",
            dependencies: [
                .product(name: "KeygateRedis", package: "keygate"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "keygate-bench-keys",
            dependencies: [
                .product(name: "KeygateCore", package: "keygate"),
                .product(name: "KeygateRedis", package: "keygate"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "usage-flush-bench",
            dependencies: [
                .product(name: "KeygateCore", package: "keygate"),
                .product(name: "KeygateRedis", package: "keygate"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "keygate-loadgen",
            dependencies: [
                "CEpoll",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "keygate-revocation-bench",
            dependencies: [
                .product(name: "KeygateCore", package: "keygate"),
                .product(name: "KeygateRedis", package: "keygate"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
