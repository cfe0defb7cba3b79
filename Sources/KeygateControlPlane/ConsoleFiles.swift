import Hummingbird
import HTTPTypes
import NIOCore

/// The console's static files (`/console/`), compiled into the binary: no CDN, works offline. The
/// page runs only its own script and styles (no inline script), talks only to this origin, and
/// cannot be framed; it reads the key from its own session storage, so there is no cookie to forge
/// a request with.
enum ConsoleFiles {
    static let contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        + "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

    static func register(on router: Router<ControlPlaneContext>, table: RouteTable) {
        // `/console` and `/console/` alike (the router ignores a trailing slash); the page names its
        // files by absolute path, so both work.
        router.on("console/", .get, recordIn: table) { _, _ in file(PackageResources.index_html, "text/html; charset=utf-8") }
        router.on("console/console.js", .get, recordIn: table) { _, _ in file(PackageResources.console_js, "text/javascript; charset=utf-8") }
        router.on("console/console.css", .get, recordIn: table) { _, _ in file(PackageResources.console_css, "text/css; charset=utf-8") }
    }

    static func file(_ bytes: [UInt8], _ contentType: String) -> Response {
        var headers: HTTPFields = [.contentType: contentType, .cacheControl: "no-store"]
        headers[HTTPField.Name("Content-Security-Policy")!] = contentSecurityPolicy
        headers[HTTPField.Name("X-Frame-Options")!] = "DENY"
        headers[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        headers[HTTPField.Name("Referrer-Policy")!] = "no-referrer"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}
