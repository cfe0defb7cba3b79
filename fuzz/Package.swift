// swift-tools-version:6.1
// libFuzzer targets (B3, B4), built by fuzz/run.sh with `-sanitize=fuzzer,address`. A separate
// package so the fuzzing flags never touch the main build.
import PackageDescription

let package = Package(
    name: "keygate-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "keygate", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .target(name: "FuzzDriver"),
        // The key parser and checksum (KeyFormat.isWellFormed), which every request runs first.
        .executableTarget(name: "fuzz-key", dependencies: ["FuzzDriver", .product(name: "KeygateCore", package: "keygate")]),
        // The guarded hiredis reader that parses every byte Redis sends.
        .executableTarget(name: "fuzz-resp", dependencies: [
            "FuzzDriver",
            .product(name: "KeygateRedis", package: "keygate"),
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
    ]
)
