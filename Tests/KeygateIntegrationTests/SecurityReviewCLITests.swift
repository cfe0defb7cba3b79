import Foundation
import KeygateTestSupport
import Testing

/// The security review's findings where the CLI is how a user meets them (issue 13, items 3, 9, 12).
@Suite(.serialized) struct SecurityReviewCLITests {
    let environment: [String: String]
    let binary: String

    init() throws {
        binary = try keygateBinary()
        environment = try cliTestEnvironment(label: "seccli")
    }

    func keygate(_ arguments: String...) async throws -> CommandResult {
        try await runCommand(binary, arguments, environment: environment)
    }

    // 3. A malformed --after says what is wrong, instead of passing Redis's error through.
    @Test func eventsAfterGarbageSaysWhatIsWrong() async throws {
        for after in ["garbage", "99999999999999999999-1", "1-"] {
            let result = try await keygate("events", "--after", after)
            #expect(result.exitCode == 1, "\(after): exit \(result.exitCode.map(String.init) ?? "-")")
            #expect(result.stderr.contains("after") && result.stderr.contains("event id") && !result.stderr.contains("ERR"),
                    "\(after): \(result.stderr)")
        }
        #expect(try await keygate("events", "--after", "0-0").exitCode == 0)
    }

    // 9. Names that act on a terminal: refused in user names, escaped wherever the CLI prints names.
    @Test func terminalControlsInNamesAreRefusedOrEscaped() async throws {
        for user in ["evil\u{9B}31m", "admin\u{202E}nimda", "zero\u{200B}width", "line\u{2028}break", "bell\u{7}"] {
            let result = try await keygate("keys", "create", "--user", user)
            #expect(result.exitCode == 1 && result.stderr.contains("user"), "user \(user.debugDescription): exit \(result.exitCode ?? -1)")
        }
        let c1 = try await keygate("keys", "create", "--user", "alice", "--name", "csi\u{9B}31m")
        #expect(c1.exitCode == 1 && c1.stderr.contains("name"), "a C1 control in a key name is refused")

        let created = try await keygate("keys", "create", "--user", "alice", "--name", "invoice\u{202E}fdp.exe", "--json")
        #expect(created.exitCode == 0, "a bidi override is allowed in a key's label: \(created.stderr)")
        let id = try #require((try JSONSerialization.jsonObject(with: Data(created.stdout.utf8)) as? [String: Any])?["id"] as? String)
        for output in [try await keygate("keys", "list", "--user", "alice"), try await keygate("keys", "show", id)] {
            #expect(!output.stdout.unicodeScalars.contains("\u{202E}"), "printed raw: \(output.stdout.debugDescription)")
            #expect(output.stdout.contains("invoice\\u{202E}fdp.exe"), "\(output.stdout)")
        }
        let json = try await keygate("keys", "list", "--user", "alice", "--json")
        #expect(json.stdout.unicodeScalars.contains("\u{202E}"), "--json carries the name exactly")
    }

    // 12. A malformed Redis URL is bad command-line usage: 64 from every command.
    @Test func aMalformedRedisURLExits64Everywhere() async throws {
        for url in ["redis://host1:6379,host2:6380", "redis://:99999", "http://localhost"] {
            for arguments in [["keys", "list", "--user", "alice"], ["events"], ["users", "revoke", "alice"], ["serve", "--data-port", "0", "--control-port", "0"]] {
                let result = try await runCommand(binary, arguments + ["--redis-url", url], environment: environment)
                #expect(result.exitCode == 64, "\(arguments[0]) with \(url): exit \(result.exitCode ?? -1): \(result.stderr)")
            }
        }
        let help = try await keygate("--help")
        #expect(help.stdout.contains("64 bad command-line usage"), "\(help.stdout)")
        let unknown = try await keygate("users", "revoke", "nobody-at-all")
        #expect(unknown.exitCode == 3, "revoking a user with no keys is 'not found': \(unknown.exitCode ?? -1) \(unknown.stderr)")
    }
}
