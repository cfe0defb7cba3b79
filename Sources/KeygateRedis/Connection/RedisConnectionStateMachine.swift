import NIOCore

/// The decisions of one Redis connection, free of I/O.
///
/// Replies arrive in the order commands were written (RESP2 has no ids), so pending commands form a
/// FIFO queue. The channel handler feeds events in and carries out the returned actions. `Promise` is
/// generic so the machine can be tested without an event loop.
struct RedisConnectionStateMachine<Promise> {
    enum Purpose {
        /// AUTH / SELECT / CLIENT SETNAME / ROLE, sent before the connection is handed out.
        case handshake(HandshakeStep)
        case command
    }

    enum HandshakeStep {
        /// An error reply means wrong credentials.
        case auth
        /// The reply must say `master` (see `roleProblem`).
        case role
        /// `INFO server`: the reply's `run_id` identifies the server (see `RedisTopology`).
        case serverInfo
        case other
    }

    struct Pending {
        var promise: Promise?
        var deadline: NIODeadline
        var purpose: Purpose
    }

    private enum State {
        /// Handshake replies still expected; the connection is not yet usable.
        case handshaking(remaining: Int)
        case active
        /// Subscriber mode: after the queued replies drain, every reply is a push (message, pong...).
        case push
        case closed(RedisError)
    }

    private var state: State
    /// The server's `run_id`, once the `INFO server` handshake reply arrived.
    private(set) var serverRunID: String?
    private var queue = CircularBuffer<Pending>(initialCapacity: 16)
    /// The earliest scheduled deadline check. One timer serves the whole queue; a command whose
    /// deadline is earlier than the armed one (a short command timeout behind a long handshake)
    /// arms another.
    private var armedDeadline: NIODeadline?

    init(handshakeCommands: Int) {
        state = handshakeCommands > 0 ? .handshaking(remaining: handshakeCommands) : .active
    }

    var pendingCount: Int { queue.count }
    var isClosed: Bool { if case .closed = state { return true } else { return false } }

    // MARK: sending

    enum EnqueueAction {
        /// Write the command; arm the deadline timer for `armTimer` if given.
        case write(armTimer: NIODeadline?)
        /// The connection is closed: fail this promise at once.
        case fail(RedisError)
    }

    mutating func enqueue(_ promise: Promise?, deadline: NIODeadline, purpose: Purpose = .command) -> EnqueueAction {
        if case .closed(let error) = state { return .fail(error) }
        queue.append(Pending(promise: promise, deadline: deadline, purpose: purpose))
        if let armed = armedDeadline, armed <= deadline { return .write(armTimer: nil) }
        armedDeadline = deadline
        return .write(armTimer: deadline)
    }

    // MARK: receiving

    enum ReplyAction {
        case succeed(Promise?, RESPValue)
        /// The last handshake reply came back OK: the connection may be handed out.
        case handshakeCompleted
        /// A reply nobody waits for in subscriber mode: a message, pong or (un)subscribe notice.
        case push(RESPValue)
        /// Nothing to do (an intermediate handshake reply).
        case none
        /// Fail every listed promise with the error and close the channel.
        case failAllAndClose(RedisError, [Promise])
    }

    mutating func replyReceived(_ value: RESPValue) -> ReplyAction {
        switch state {
        case .closed:
            return .none
        case .push where queue.isEmpty:
            return .push(value)
        case .active where queue.isEmpty:
            return failAll(.protocolError("reply received with no command pending"))
        default:
            break
        }
        let head = queue.removeFirst()
        switch head.purpose {
        case .command:
            return .succeed(head.promise, value)
        case .handshake(let step):
            if step == .role, let problem = Self.roleProblem(value) { return failAll(problem) }
            if step == .serverInfo { serverRunID = value.string.flatMap { Self.runID(inInfo: $0) } }
            let optional = step == .role || step == .serverInfo
            if case .error(let message) = value, !(optional && message.hasPrefix("NOPERM")) {
                let code: RedisError.Code = step == .auth ? .authenticationFailed : .serverError
                return failAll(RedisError(code, "handshake failed: \(message)"))
            }
            guard case .handshaking(let remaining) = state else { return .none }
            if remaining > 1 {
                state = .handshaking(remaining: remaining - 1)
                return .none
            }
            state = .active
            return .handshakeCompleted
        }
    }

    /// Why the `ROLE` reply rules this server out, or nil when it is a master. Keygate reads
    /// revocation state and writes counts only on a master: a replica may lag behind a revoke (or be
    /// an old master that came back empty), and refuses writes. An ACL user without `+role` gets
    /// NOPERM, which is let through (the check is then off; the README says to grant it).
    static func roleProblem(_ reply: RESPValue) -> RedisError? {
        guard case .array(let fields) = reply, let role = fields.first?.string else { return nil }
        switch role {
        case "master":
            return nil
        case "slave", "replica":
            let master = fields.count > 2 ? "\(fields[1].string ?? "?"):\(fields[2].int.map(String.init) ?? "?")" : "?"
            let state = fields.count > 3 ? fields[3].string ?? "?" : "?"
            return RedisError(.notWritableMaster, "the server is a replica of \(master) (replication \(state)), not a writable master")
        default:
            return RedisError(.notWritableMaster, "the server's role is '\(role)', not a writable master")
        }
    }

    /// The `run_id:` line of an `INFO server` reply.
    static func runID(inInfo text: String) -> String? {
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix("run_id:") {
            let id = String(line.dropFirst("run_id:".count).filter { !$0.isWhitespace })
            return id.isEmpty ? nil : id
        }
        return nil
    }

    /// Replies from now on that no command waits for are pushes (after SUBSCRIBE).
    mutating func enterPushMode() {
        if case .active = state { state = .push }
    }

    // MARK: failures

    enum TimerAction {
        case none
        case rearm(NIODeadline)
        case failAllAndClose(RedisError, [Promise])
    }

    /// A deadline timer fired at `now`.
    mutating func deadlineCheck(now: NIODeadline) -> TimerAction {
        if let armed = armedDeadline, armed <= now { armedDeadline = nil }
        if case .closed = state { return .none }
        guard let head = queue.first else { return .none }
        if head.deadline <= now {
            let what: String
            switch head.purpose {
            case .handshake: what = "connection handshake"
            case .command: what = "reply"
            }
            guard case .failAllAndClose(let error, let promises) = failAll(RedisError(.timeout, "no \(what) within the deadline")) else {
                return .none
            }
            return .failAllAndClose(error, promises)
        }
        if let armed = armedDeadline, armed <= head.deadline { return .none }
        armedDeadline = head.deadline
        return .rearm(head.deadline)
    }

    /// A reader error, write error or local decision to drop the connection.
    mutating func failAll(_ error: RedisError) -> ReplyAction {
        if case .closed = state { return .none }
        state = .closed(error)
        var promises: [Promise] = []
        promises.reserveCapacity(queue.count)
        while let pending = queue.popFirst() {
            if let promise = pending.promise { promises.append(promise) }
        }
        return .failAllAndClose(error, promises)
    }

    /// The channel went inactive: whatever is still pending will never be answered.
    mutating func channelClosed() -> [Promise] {
        guard case .failAllAndClose(_, let promises) = failAll(.closed()) else { return [] }
        return promises
    }
}
