import FuzzDriver
import KeygateCore

/// libFuzzer entry point: arbitrary bytes as an API key. The parser must never crash or read out
/// of bounds (ASan), and must agree with itself on the String path.
let format = try! KeyFormat(prefix: "kg")

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzKey(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let wellFormed = format.isWellFormed(bytes)
    if wellFormed {
        // Only keys of the exact length, prefix and checksum pass.
        precondition(size == format.keyLength, "accepted a key of the wrong length")
        precondition(bytes.starts(with: Array("kg_".utf8)), "accepted a key with the wrong prefix")
    }
    if let text = String(validating: bytes, as: UTF8.self) {
        precondition(format.isWellFormed(text) == wellFormed, "the String and byte paths disagree")
    }
    return 0
}

@_cdecl("fuzz_key_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv, fuzzKey)
}
