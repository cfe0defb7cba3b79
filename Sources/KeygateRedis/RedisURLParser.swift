import Foundation

/// Parses Redis URLs by hand so each mistake gets a message that names it.
enum RedisURLParser {
    static func parse(_ url: String) throws(RedisError) -> RedisConfiguration {
        var config = RedisConfiguration()
        guard let schemeEnd = url.range(of: "://") else {
            throw invalid(url, "missing scheme: expected redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster://, rediss-cluster:// or unix://")
        }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        var rest = String(url[schemeEnd.upperBound...])
        // A Sentinel URL names its master in the fragment: redis-sentinel://h1,h2/0#mymaster.
        var fragment: String?
        if let hash = rest.lastIndex(of: "#") {
            fragment = try percentDecode(String(rest[rest.index(after: hash)...]), url: url)
            rest = String(rest[..<hash])
        }
        let query = try splitQuery(&rest, url: url)
        var known: Set<String> = ["db"]

        switch scheme {
        case "redis", "rediss":
            if scheme == "rediss" { config.tls = RedisConfiguration.TLS(caFile: query["ca_file"]); known.insert("ca_file") }
            guard fragment == nil else {
                throw invalid(url, "a '#master-name' belongs to a Sentinel URL: redis-sentinel://host1:26379,host2:26379#\(fragment ?? "")")
            }
            let authority = try parseAuthority(rest, into: &config, url: url)
            if authority.contains(",") {
                throw invalid(url, "a list of hosts: \(scheme):// takes one server; for Sentinels use \(scheme)-sentinel://host1:26379,host2:26379#master-name, for a Cluster \(scheme)-cluster://host1:6379,host2:6379")
            }
            let (host, port) = try parseHostPort(Substring(authority), defaultPort: 6379, url: url)
            config.endpoint = .tcp(host: host, port: port)
            if let tls = config.tls, tls.serverName == nil { config.tls?.serverName = host }
        case "redis-sentinel", "rediss-sentinel":
            if scheme == "rediss-sentinel" { config.tls = RedisConfiguration.TLS(caFile: query["ca_file"]); known.insert("ca_file") }
            known.formUnion(["sentinel_user", "sentinel_password"])
            let authority = try parseAuthority(rest, into: &config, url: url)
            guard let masterName = fragment, !masterName.isEmpty else {
                throw invalid(url, "missing master name: end a Sentinel URL with '#master-name', e.g. redis-sentinel://host1:26379,host2:26379#mymaster")
            }
            var sentinels: [RedisConfiguration.Sentinel.Address] = []
            for part in authority.split(separator: ",", omittingEmptySubsequences: false) {
                guard !part.isEmpty else { throw invalid(url, "empty entry in the list of Sentinels") }
                let (host, port) = try parseHostPort(part, defaultPort: 26379, url: url)
                sentinels.append(.init(host: host, port: port))
            }
            config.sentinel = RedisConfiguration.Sentinel(addresses: sentinels, masterName: masterName,
                                                          username: query["sentinel_user"], password: query["sentinel_password"])
            // The master's address comes from the Sentinels; this placeholder is never dialled.
            config.endpoint = .tcp(host: sentinels[0].host, port: sentinels[0].port)
        case "redis-cluster", "rediss-cluster":
            if scheme == "rediss-cluster" { config.tls = RedisConfiguration.TLS(caFile: query["ca_file"]); known.insert("ca_file") }
            guard fragment == nil else { throw invalid(url, "unexpected '#' in a cluster URL") }
            let authority = try parseAuthority(rest, into: &config, url: url)
            var seeds: [RedisConfiguration.Sentinel.Address] = []
            for part in authority.split(separator: ",", omittingEmptySubsequences: false) {
                guard !part.isEmpty else { throw invalid(url, "empty entry in the list of cluster nodes") }
                let (host, port) = try parseHostPort(part, defaultPort: 6379, url: url)
                seeds.append(.init(host: host, port: port))
            }
            config.cluster = RedisConfiguration.Cluster(seeds: seeds)
            config.endpoint = .tcp(host: seeds[0].host, port: seeds[0].port)
            if let tls = config.tls, tls.serverName == nil { config.tls?.serverName = seeds[0].host }
        case "unix":
            guard fragment == nil else { throw invalid(url, "unexpected '#' in a unix:// URL") }
            guard rest.hasPrefix("/"), rest.count > 1 else {
                throw invalid(url, "unix:// needs an absolute socket path, e.g. unix:///run/redis.sock")
            }
            config.endpoint = .unix(path: try percentDecode(rest, url: url))
            config.username = query["user"]
            config.password = query["password"]
            known.formUnion(["user", "password"])
        default:
            throw invalid(url, "unsupported scheme '\(scheme)': expected redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster://, rediss-cluster:// or unix://")
        }
        if let db = query["db"] { config.database = try parseDatabase(db, url: url) }
        if config.cluster != nil && config.database != 0 {
            throw invalid(url, "a Redis Cluster has only database 0")
        }
        if let unknown = query.keys.sorted().first(where: { !known.contains($0) }) {
            throw invalid(url, "unknown query parameter '\(unknown)'")
        }
        return config
    }

    /// Reads `[user:password@]authority[/db]`: credentials and the database go into `config`; the
    /// authority (one host, or a comma-separated list) is returned.
    private static func parseAuthority(_ text: String, into config: inout RedisConfiguration, url: String) throws(RedisError) -> String {
        var authority = Substring(text)
        var path: Substring = ""
        if let slash = authority.firstIndex(of: "/") {
            path = authority[authority.index(after: slash)...]
            authority = authority[..<slash]
        }
        if let at = authority.lastIndex(of: "@") {
            let credentials = authority[..<at]
            authority = authority[authority.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                let user = try percentDecode(String(credentials[..<colon]), url: url)
                config.username = user.isEmpty ? nil : user
                config.password = try percentDecode(String(credentials[credentials.index(after: colon)...]), url: url)
            } else if !credentials.isEmpty {
                // redis://password@host is a common mistake; a bare name is the password in redis-cli.
                config.password = try percentDecode(String(credentials), url: url)
            }
        }
        if !path.isEmpty { config.database = try parseDatabase(String(path), url: url) }
        guard !authority.isEmpty else { throw invalid(url, "missing host") }
        return String(authority)
    }

    /// `host`, `host:port`, `[v6]` or `[v6]:port`; `localhost` becomes 127.0.0.1.
    private static func parseHostPort(_ authority: Substring, defaultPort: Int, url: String) throws(RedisError) -> (String, Int) {
        var host: String
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw invalid(url, "unterminated IPv6 address '['") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid(url, "unexpected text after IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            portText = authority[authority.index(after: colon)...]
        } else {
            host = String(authority)
        }
        guard !host.isEmpty else { throw invalid(url, "missing host") }
        if host.contains(where: { $0 == " " || $0 == "/" || $0 == "?" || $0 == "#" }) { throw invalid(url, "invalid host '\(host)'") }
        var port = defaultPort
        if let portText {
            guard let value = Int(portText), (1...65_535).contains(value) else {
                throw invalid(url, "port must be a number from 1 to 65535, got '\(portText)'")
            }
            port = value
        }
        if host == "localhost" { host = "127.0.0.1" } // avoid an IPv6 attempt where Redis binds IPv4 only
        return (host, port)
    }

    private static func splitQuery(_ rest: inout String, url: String) throws(RedisError) -> [String: String] {
        guard let mark = rest.firstIndex(of: "?") else { return [:] }
        let query = rest[rest.index(after: mark)...]
        rest = String(rest[..<mark])
        var result: [String: String] = [:]
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw invalid(url, "query parameter '\(parts[0])' has no value") }
            result[String(parts[0])] = try percentDecode(String(parts[1]), url: url)
        }
        return result
    }

    private static func parseDatabase(_ text: String, url: String) throws(RedisError) -> Int {
        guard let db = Int(text), db >= 0, db < 100_000 else {
            throw invalid(url, "database must be a non-negative number, got '\(text)'")
        }
        return db
    }

    private static func percentDecode(_ text: String, url: String) throws(RedisError) -> String {
        guard text.contains("%") else { return text }
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next(), let low = iterator.next(),
                      let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16) else {
                    throw invalid(url, "bad percent-encoding")
                }
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The error names the problem and shows the URL with any password masked.
    private static func invalid(_ url: String, _ problem: String) -> RedisError {
        RedisError(.invalidURL, "invalid Redis URL '\(redact(url))': \(problem)")
    }

    static func redact(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"),
              let at = url[schemeEnd.upperBound...].lastIndex(of: "@") else {
            return url.replacingPasswordQuery()
        }
        let credentials = url[schemeEnd.upperBound..<at]
        let masked = credentials.contains(":") ? "\(credentials.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)[0]):***" : "***"
        return String(url[..<schemeEnd.upperBound]) + masked + String(url[at...]).replacingPasswordQuery()
    }
}

extension String {
    fileprivate func replacingPasswordQuery() -> String {
        guard let range = range(of: "password=") else { return self }
        let end = self[range.upperBound...].firstIndex(where: { $0 == "&" || $0 == "#" }) ?? endIndex
        return String(self[..<range.upperBound]) + "***" + String(self[end...])
    }
}
