public import Foundation

/// A throwaway CA and a server certificate for 127.0.0.1 / localhost, made with the `openssl` CLI.
public enum TestCertificates {
    /// Writes `ca.crt`, `server.crt` and `server.key` into `directory`.
    public static func make(in directory: URL) async throws -> RedisServerProcess.TLSFiles {
        let path = { (name: String) in directory.appendingPathComponent(name).path }
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\n".write(toFile: path("ext.cnf"), atomically: true, encoding: .utf8)
        let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try await openssl(["req", "-x509"] + curve + ["-keyout", path("ca.key"), "-out", path("ca.crt"),
                     "-days", "1", "-subj", "/CN=keygate-test-ca"])
        try await openssl(["req"] + curve + ["-keyout", path("server.key"), "-out", path("server.csr"),
                     "-subj", "/CN=localhost"])
        try await openssl(["x509", "-req", "-in", path("server.csr"), "-CA", path("ca.crt"), "-CAkey", path("ca.key"),
                     "-CAcreateserial", "-out", path("server.crt"), "-days", "1", "-extfile", path("ext.cnf")])
        return RedisServerProcess.TLSFiles(certificate: path("server.crt"), privateKey: path("server.key"),
                                           caCertificate: path("ca.crt"))
    }

    private static func openssl(_ arguments: [String]) async throws {
        let process = try ChildProcess(executable: try which("openssl"), arguments: arguments)
        await process.waitForExit()
        guard process.exitCode == 0 else {
            throw TestSupportError("openssl \(arguments.prefix(2).joined(separator: " ")) failed")
        }
    }
}
