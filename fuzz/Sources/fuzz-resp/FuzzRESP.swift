import FuzzDriver
@testable import KeygateRedis
import NIOCore

/// libFuzzer entry point: arbitrary bytes from "Redis", fed in up to three chunks (split where the
/// input says) to the guarded reader. It must never crash, hang or allocate without bound (run.sh
/// sets -malloc_limit_mb=64); bad input must end in a clean protocol error.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRESP(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    guard size >= 2 else { return 0 }
    let first = Int(bytes[0]) % size, second = Int(bytes[1]) % size
    let cuts = [2, max(2, min(first, second)), max(2, max(first, second)), size]
    let reader = RESPReplyReader(maxArrayElements: 1_024, maxReplyBytes: 1 << 20)
    do {
        for index in 0..<3 where cuts[index] < cuts[index + 1] {
            try reader.feed(ByteBuffer(bytes: bytes[cuts[index]..<cuts[index + 1]]))
            var replies = 0
            while try reader.next() != nil {
                replies += 1
                precondition(replies <= size, "more replies than bytes")
            }
        }
    } catch {
        precondition(error.code == .protocolError, "unexpected error \(error)")
    }
    return 0
}

@_cdecl("fuzz_resp_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv, fuzzRESP)
}
