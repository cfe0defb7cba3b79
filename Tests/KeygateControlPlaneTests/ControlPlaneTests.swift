import Foundation
import HTTPTypes
import Hummingbird
@testable import KeygateControlPlane
import KeygateMetrics
import Testing

@Suite struct RequestBodyTests {
    func problem(_ json: String, as type: (some Decodable).Type) -> Problem? {
        do {
            _ = try JSONBody.decode(type, data: Data(json.utf8))
            return nil
        } catch {
            return error as? Problem
        }
    }

    @Test func acceptsAKnownBody() throws {
        let body = try JSONBody.decode(CreateKeyBody.self, data: Data(#"{"user":"alice","scopes":["a:b"],"expires_at":"2030-01-01T00:00:00.5Z"}"#.utf8))
        #expect(body.user == "alice")
        #expect(body.scopes == ["a:b"])
        #expect(body.expiresAt == Date(timeIntervalSince1970: 1_893_456_000.5))
    }

    @Test func rejectsUnknownFieldsNamingThem() {
        let problem = problem(#"{"user":"alice","role":"admin"}"#, as: CreateKeyBody.self)
        #expect(problem?.kind == .invalidField)
        #expect(problem?.field == "role")
    }

    @Test func rejectsNullExceptForExpiry() {
        #expect(problem(#"{"user":"alice","metadata":null}"#, as: CreateKeyBody.self)?.field == "metadata")
        #expect(problem(#"{"enabled":null}"#, as: UpdateKeyBody.self)?.field == "enabled")
        #expect(problem(#"{"expires_at":null}"#, as: UpdateKeyBody.self) == nil)
    }

    @Test func patchDistinguishesAbsentFromNullExpiry() throws {
        let removes = try JSONBody.decode(UpdateKeyBody.self, data: Data(#"{"expires_at":null}"#.utf8))
        #expect(removes.changes.expiresAt == .some(nil))
        let keeps = try JSONBody.decode(UpdateKeyBody.self, data: Data(#"{"name":"x"}"#.utf8))
        #expect(keeps.changes.expiresAt == nil)
    }

    @Test func wrongTypesAndBadTimestampsNameTheField() {
        #expect(problem(#"{"user":5}"#, as: CreateKeyBody.self)?.field == "user")
        #expect(problem(#"{"user":"a","expires_at":"tomorrow"}"#, as: CreateKeyBody.self)?.field == "expires_at")
        #expect(problem(#"{"grace_seconds":-1}"#, as: RotateKeyBody.self)?.field == "grace_seconds")
    }

    @Test func malformedJSONIsABadRequest() {
        #expect(problem(#"{"user":"#, as: CreateKeyBody.self)?.kind == .malformedBody)
        #expect(problem(#"[1,2]"#, as: CreateKeyBody.self)?.kind == .malformedBody)
    }
}

@Suite struct RouteTableTests {
    @Test func knownPathsListTheirMethods() {
        let table = RouteTable()
        table.record("/v1/keys", .get)
        table.record("/v1/keys", .post)
        table.record("/v1/keys/:id/revoke", .post)
        #expect(table.allowedMethods("/v1/keys") == ["GET", "HEAD", "POST"])
        #expect(table.allowedMethods("/v1/keys/key_abc/revoke") == ["POST"])
        #expect(table.allowedMethods("/v1/nothing") == nil)
        #expect(table.allowedMethods("/v1/keys/key_abc/revoke/more") == nil)
    }
}

@Suite struct PrometheusTextTests {
    @Test func writesFamiliesWithEscapedLabels() {
        var text = PrometheusText()
        text.counter("x_total", help: "Things\nwith a newline.", samples: [([("reason", #"a"b\c"#)], 3)])
        text.gauge("y", help: "A gauge.", 0.5)
        #expect(text.text == """
        # HELP x_total Things\\nwith a newline.
        # TYPE x_total counter
        x_total{reason="a\\"b\\\\c"} 3
        # HELP y A gauge.
        # TYPE y gauge
        y 0.5

        """)
    }

    @Test func histogramBucketsAreCumulative() {
        let histogram = LatencyHistogram(bounds: [0.001, 0.01])
        histogram.observe(nanoseconds: 500_000)      // 0.5 ms
        histogram.observe(nanoseconds: 1_000_000)    // exactly 1 ms: le="0.001"
        histogram.observe(nanoseconds: 5_000_000)    // 5 ms
        histogram.observe(nanoseconds: 50_000_000)   // 50 ms: +Inf only
        var text = PrometheusText()
        text.histogram("h_seconds", help: "H.", samples: [([], histogram.snapshot())])
        #expect(text.text.contains("h_seconds_bucket{le=\"0.001\"} 2\n"))
        #expect(text.text.contains("h_seconds_bucket{le=\"0.01\"} 3\n"))
        #expect(text.text.contains("h_seconds_bucket{le=\"+Inf\"} 4\n"))
        #expect(text.text.contains("h_seconds_count 4\n"))
        #expect(text.text.contains("h_seconds_sum 0.0565\n"))
    }
}

@Suite struct ProblemTests {
    @Test func unauthorizedCarriesTheChallengeAndProblemType() throws {
        let problem = Problem(.unauthorized, "no key")
        #expect(problem.headers[.wwwAuthenticate] == "ApiKey realm=\"keygate\"")
        #expect(problem.headers[.contentType] == "application/problem+json")
        #expect(Problem(.unavailable, "down").headers[.retryAfter] == "1")
        #expect(problem.kind.type == "https://keygate.dev/problems/unauthorized")
    }
}
