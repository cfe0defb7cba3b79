import ArgumentParser
import Foundation
import KeygateCore

struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Create, list, show, revoke, rotate and meter API keys.",
        subcommands: [Create.self, List.self, Show.self, Update.self, Revoke.self, Disable.self, Enable.self, Rotate.self, Usage.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Issue a key for a user; prints the key once.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "Owner of the key.") var user: String
        @Option(help: "A label for the key.") var name: String = ""
        @Option(name: .customLong("scope"), help: "A scope the key grants; repeat for several (e.g. --scope read --scope keygate:admin).")
        var scopes: [String] = []
        @Option(help: ArgumentHelp("Lifetime, e.g. 30d; none by default.", valueName: HumanDuration.formatHelp))
        var expiresIn: HumanDuration?
        @Option(name: .customLong("meta"), help: "Metadata as key=value; repeat for several.")
        var metadata: [String] = []
        @Option(name: .customLong("rate-limit"), help: ArgumentHelp(KeysCommand.rateLimitHelp, valueName: "[name=]limit/duration[:exact]"))
        var rateLimits: [String] = []
        @Option(help: ArgumentHelp(KeysCommand.creditsHelp, valueName: "n")) var credits: Int?
        @Option(help: ArgumentHelp(KeysCommand.refillHelp, valueName: "amount/day|amount/month[:day]")) var refill: String?

        func validate() throws {
            if refill != nil && credits == nil { throw ValidationError("--refill needs --credits (the balance to start from)") }
        }

        func run() async throws {
            try await reportingFailures {
                var pairs: [String: String] = [:]
                for entry in metadata {
                    let parts = entry.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2 else { throw CLIFailure(message: "--meta takes key=value, got '\(entry)'", exitCode: CLIFailure.usage) }
                    pairs[String(parts[0])] = String(parts[1])
                }
                let request = KeyStore.NewKey(user: user, name: name, scopes: scopes,
                                              expiresAt: expiresIn.map { Date().addingTimeInterval($0.seconds) },
                                              metadata: pairs, rateLimits: try KeysCommand.parseRateLimits(rateLimits),
                                              credits: try KeysCommand.parseCredits(credits, refill: refill))
                let issued = try await options.withStore { try await $0.create(request, actor: GlobalOptions.actor) }
                if options.json { try Output.json(issued) } else { Output.issued(issued) }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a user's keys (never the keys themselves).")
        @OptionGroup var options: GlobalOptions
        @Option(help: "Owner of the keys.") var user: String

        func run() async throws {
            try await reportingFailures {
                let records = try await options.withStore { try await $0.list(user: user) }
                if options.json { try Output.json(records) } else { Output.table(Output.keyHeaders, Output.keyRows(records)) }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one key by id.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Key id (key_...).") var id: String

        func run() async throws {
            try await reportingFailures {
                let record = try await options.withStore { try await $0.record(id: id) }
                if options.json { try Output.json(record) } else { Output.details(record) }
            }
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a key's name, scopes, rate limits or credits; every node applies it within the invalidation bound.",
            discussion: "Options given replace the key's value (--scope and --rate-limit replace the whole list, --credits sets the balance and refill anew); the rest stay as they are.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Key id (key_...).") var id: String
        @Option(help: "A new label.") var name: String?
        @Option(name: .customLong("scope"), help: "The scopes the key grants from now on; repeat for several.")
        var scopes: [String] = []
        @Flag(help: "Remove every scope.") var noScopes = false
        @Option(name: .customLong("rate-limit"), help: ArgumentHelp(KeysCommand.rateLimitHelp, valueName: "[name=]limit/duration[:exact]"))
        var rateLimits: [String] = []
        @Flag(help: "Remove every rate limit.") var noRateLimits = false
        @Option(help: ArgumentHelp(KeysCommand.creditsHelp, valueName: "n")) var credits: Int?
        @Option(help: ArgumentHelp(KeysCommand.refillHelp, valueName: "amount/day|amount/month[:day]")) var refill: String?
        @Flag(help: "Remove the credits (the key becomes unlimited).") var noCredits = false

        func validate() throws {
            if noScopes && !scopes.isEmpty { throw ValidationError("--no-scopes and --scope contradict each other") }
            if noRateLimits && !rateLimits.isEmpty { throw ValidationError("--no-rate-limits and --rate-limit contradict each other") }
            if noCredits && (credits != nil || refill != nil) { throw ValidationError("--no-credits and --credits contradict each other") }
            if refill != nil && credits == nil { throw ValidationError("--refill needs --credits (credits are set as a whole)") }
        }

        func run() async throws {
            try await reportingFailures {
                var changes = KeyStore.KeyChanges(name: name)
                if noScopes { changes.scopes = [] } else if !scopes.isEmpty { changes.scopes = scopes }
                if noRateLimits { changes.rateLimits = [] } else if !rateLimits.isEmpty {
                    changes.rateLimits = try KeysCommand.parseRateLimits(rateLimits)
                }
                if noCredits { changes.credits = .some(nil) } else if credits != nil {
                    changes.credits = .some(try KeysCommand.parseCredits(credits, refill: refill))
                }
                let record = try await options.withStore { try await $0.update(id: id, changes, actor: GlobalOptions.actor) }
                if options.json { try Output.json(record) } else { Output.details(record) }
            }
        }
    }

    static let rateLimitHelp = "A rate limit enforced on every node, e.g. 100/1m or hourly=5000/1h (units ms, s, m, h, d); :exact decides each request in Redis. Repeat for several: a request must pass all."

    static let creditsHelp = "Usage credits: every admitted request spends one (or its cost); none left answers 429 usage_exceeded. Exact across nodes."
    static let refillHelp = "Set the credits back to an amount every day or month (UTC), e.g. 1000/month, 1000/month:15 (on the 15th) or 100/day."

    static func parseCredits(_ credits: Int?, refill: String?) throws -> Credits? {
        guard let credits else { return nil }
        return try Credits(remaining: credits, refill: try refill.map { text throws(KeygateError) in try Credits.Refill(parsing: text) })
    }

    /// `--rate-limit` values; unnamed ones are named after their duration when there are several.
    static func parseRateLimits(_ texts: [String]) throws -> [RateLimit] {
        let limits = try texts.map { text throws(KeygateError) -> RateLimit in
            let unnamed = !text.contains("=")
            var limit = try RateLimit(parsing: text)
            if unnamed && texts.count > 1 {
                let duration = text.split(separator: "/").last.map { String($0.split(separator: ":")[0]) } ?? ""
                limit = try RateLimit(name: duration, limit: limit.limit, durationMilliseconds: limit.durationMilliseconds, exact: limit.exact)
            }
            return limit
        }
        try RateLimit.validate(limits)
        return limits
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a key on every node, for good. Revoking twice is fine.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Key id (key_...).") var id: String

        func run() async throws {
            try await changeStatus(options, verb: "revoked") { try await $0.revoke(id: id, actor: GlobalOptions.actor) }
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Disable a key until it is enabled again.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Key id (key_...).") var id: String

        func run() async throws {
            try await changeStatus(options, verb: "disabled") { try await $0.setEnabled(id: id, false, actor: GlobalOptions.actor) }
        }
    }

    struct Enable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enable a disabled key (a revoked key stays revoked).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Key id (key_...).") var id: String

        func run() async throws {
            try await changeStatus(options, verb: "enabled") { try await $0.setEnabled(id: id, true, actor: GlobalOptions.actor) }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a successor key; the old one keeps working for the grace period.",
            discussion: "The successor has the same user, name, scopes, metadata, rate limits and expiry, and draws on the same rate-limit windows. Both keys keep their usage history and are linked (rotated_to / rotated_from).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Key id (key_...).") var id: String
        @Option(help: ArgumentHelp("How long the old key stays valid.", valueName: HumanDuration.formatHelp))
        var grace: HumanDuration = HumanDuration(argument: "24h")!

        func run() async throws {
            try await reportingFailures {
                let issued = try await options.withStore { try await $0.rotate(id: id, grace: grace.duration, actor: GlobalOptions.actor) }
                if options.json { try Output.json(issued) } else {
                    print("rotated \(id) -> \(issued.record.id); \(id) stops working in \(grace.text)\n")
                    Output.issued(issued)
                }
            }
        }
    }

    struct Usage: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a key's usage: total, per day and per hour, with refused requests by reason.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Key id (key_...).") var id: String
        @Option(help: "Days of daily counts to show (1-90).") var days: Int = 7

        func run() async throws {
            try await reportingFailures {
                let usage = try await options.withStore { try await $0.usage(id: id, days: days) }
                if options.json { try Output.json(usage); return }
                print("id            \(usage.id)")
                print("total         \(usage.total)")
                print("last_used_at  \(Output.date(usage.lastUsedAt))\n")
                Output.usageTables(daily: usage.daily, hourly: usage.hourly)
            }
        }
    }
}

extension AsyncParsableCommand {
    /// Revoke, disable and enable: run the change, print the record (JSON) or one line.
    func changeStatus(_ options: GlobalOptions, verb: String, _ change: @escaping (KeyStore) async throws -> KeyRecord) async throws {
        try await reportingFailures {
            let record = try await options.withStore(change)
            if options.json { try Output.json(record) } else { print("\(verb) \(record.id) (version \(record.version))") }
        }
    }
}

struct UsersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "users", abstract: "Act on every key of a user.", subcommands: [List.self, Usage.self, Revoke.self, Limits.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List users who hold or held keys, by name.",
            discussion: "Names in byte order; --prefix narrows them, --after pages (pass the last name shown).")
        @OptionGroup var options: GlobalOptions
        @Option(help: "Only names starting with this (byte for byte).") var prefix: String = ""
        @Option(help: "Only names after this one (the last name of the previous page).") var after: String?
        @Option(help: "At most this many (1-1000).") var limit: Int = 100

        func run() async throws {
            try await reportingFailures {
                let page = try await options.withStore { try await $0.users(prefix: prefix, after: after, limit: limit) }
                if options.json { try Output.json(page); return }
                for user in page.users { print(DisplayText.escaped(user)) }
                if let next = page.nextAfter { print("(more: --after \(DisplayText.escaped(next)))") }
            }
        }
    }

    struct Usage: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a user's usage: every key's counts added up, per day and per hour.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The user.") var user: String
        @Option(help: "Days of daily counts to show (1-90).") var days: Int = 7

        func run() async throws {
            try await reportingFailures {
                let usage = try await options.withStore { try await $0.usage(user: user, days: days) }
                if options.json { try Output.json(usage); return }
                print("user          \(DisplayText.escaped(usage.user))")
                print("total         \(usage.total)")
                print("last_used_at  \(Output.date(usage.lastUsedAt))\n")
                Output.usageTables(daily: usage.daily, hourly: usage.hourly)
                print("")
                Output.table(["KEY", "TOTAL"], usage.keys.map { [$0.id, String($0.total)] })
            }
        }
    }

    struct Limits: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show or set a user's own rate limits and credits, shared by all of the user's keys.",
            discussion: """
                Without options, shows them. Options given replace that part of the setting (--rate-limit replaces the whole \
                list, --credits sets the balance anew); the rest stays. Every key of the user, present and future, draws on the \
                user's windows and balance on top of its own limits (a key's own limit of the same name replaces the user's for \
                that key); every node applies a change within the invalidation bound.
                """)
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The user.") var user: String
        @Option(name: .customLong("rate-limit"), help: ArgumentHelp(KeysCommand.rateLimitHelp, valueName: "[name=]limit/duration[:exact]"))
        var rateLimits: [String] = []
        @Flag(help: "Remove every rate limit of the user.") var noRateLimits = false
        @Option(help: ArgumentHelp(KeysCommand.creditsHelp, valueName: "n")) var credits: Int?
        @Option(help: ArgumentHelp(KeysCommand.refillHelp, valueName: "amount/day|amount/month[:day]")) var refill: String?
        @Flag(help: "Remove the user's credits.") var noCredits = false

        func validate() throws {
            if noRateLimits && !rateLimits.isEmpty { throw ValidationError("--no-rate-limits and --rate-limit contradict each other") }
            if noCredits && (credits != nil || refill != nil) { throw ValidationError("--no-credits and --credits contradict each other") }
            if refill != nil && credits == nil { throw ValidationError("--refill needs --credits (credits are set as a whole)") }
        }

        func run() async throws {
            try await reportingFailures {
                let limits: [RateLimit]? = noRateLimits ? [] : rateLimits.isEmpty ? nil : try KeysCommand.parseRateLimits(rateLimits)
                let newCredits: Credits?? = noCredits ? .some(nil) : credits == nil ? nil : .some(try KeysCommand.parseCredits(credits, refill: refill))
                let result = try await options.withStore { store throws(KeygateError) in
                    if limits == nil && newCredits == nil { return try await store.userLimits(user: user) }
                    return try await store.setUserLimits(user: user, rateLimits: limits, credits: newCredits, actor: GlobalOptions.actor)
                }
                if options.json { try Output.json(result); return }
                print("user          \(DisplayText.escaped(result.user))")
                print("rate_limits   \(result.rateLimits.isEmpty ? "-" : result.rateLimits.map(\.text).joined(separator: " "))")
                print("credits       \(Output.credits(result.credits))")
                if let updated = result.keysUpdated { print("keys_updated  \(updated)") }
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke every key of a user.",
            discussion: "Prints how many keys changed (0 when all were revoked before). A user with no keys at all is 'not found' (exit 3). The name is compared byte for byte.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The user.") var user: String

        func run() async throws {
            try await reportingFailures {
                let count = try await options.withStore { try await $0.revokeAll(user: user, actor: GlobalOptions.actor) }
                if options.json { try Output.json(["user": user, "revoked": String(count)]) } else { print("revoked \(count) key(s) of \(DisplayText.escaped(user))") }
            }
        }
    }
}

struct EventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "events", abstract: "Read the audit log of key changes.")
    @OptionGroup var options: GlobalOptions
    @Option(help: "Only events after this event id (for paging): two unsigned 64-bit numbers, e.g. 1733011200000-0.") var after: String?
    @Option(help: "At most this many events.") var limit: Int = 100

    func run() async throws {
        try await reportingFailures {
            let events = try await options.withStore { try await $0.events(after: after, count: limit) }
            if options.json { try Output.json(events); return }
            Output.table(["EVENT", "TIME", "TYPE", "KEY", "USER", "ACTOR", "VERSION"], events.map {
                [$0.id, Output.date($0.time), $0.type + ($0.successorID.map { " -> \($0)" } ?? ""), $0.keyID, $0.user, $0.actor, String($0.version)]
            })
        }
    }
}

struct RepairCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repair",
        abstract: "Finish key changes a writer left half-done.",
        discussion: """
        A change runs in steps (register, apply to the record, log the event). A writer that crashed \
        or lost Redis between them leaves the change registered; every node finishes such changes \
        by itself within about a minute. This runs one pass now: an applied change gets its audit \
        event (and its invalidation, published again); one that never reached the record is dropped. \
        Changes registered less than --older-than ago are left to their writer. The first pass on a \
        deployment made before the users index also adds the users of older keys to it.
        """)
    @OptionGroup var options: GlobalOptions
    @Option(help: "Only changes registered at least this long ago (\(HumanDuration.formatHelp)).")
    var olderThan: HumanDuration = HumanDuration(argument: "30s")!

    func run() async throws {
        try await reportingFailures {
            let report = try await options.withStore { try await $0.repair(olderThan: olderThan.duration) }
            if options.json { try Output.json(report); return }
            print("completed \(report.completed), dropped \(report.dropped), left in flight \(report.inFlight)"
                  + (report.usersIndexed > 0 ? "; \(report.usersIndexed) user(s) of older keys added to the users index" : ""))
        }
    }
}
