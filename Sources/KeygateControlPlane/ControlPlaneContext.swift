public import Hummingbird
import KeygateCore

/// Who called: the key that authenticated the request. Set by `CallerAuthentication`.
public struct Caller: Sendable {
    public static let adminScope = "keygate:admin"
    public static let selfServiceScope = "keygate:self"

    public var user: String
    public var keyID: String
    public var scopes: [String]

    public var isAdmin: Bool { scopes.containsSameBytes(as: Self.adminScope) }
    public var isSelfService: Bool { scopes.containsSameBytes(as: Self.selfServiceScope) }
    /// True for the caller's own user, byte for byte: Swift's `==` would also match a canonically
    /// equivalent name (`\u{212A}en` for `Ken`), which Redis stores as another user.
    func owns(user other: String) -> Bool { user.hasSameBytes(as: other) }
    /// The audit trail's actor for changes made through the API.
    public var actor: String { "api:\(keyID)" }
}

/// The request context of the control plane: Hummingbird's core storage plus the caller.
public struct ControlPlaneContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var caller: Caller?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.caller = nil
    }

    /// The authenticated caller; routes behind `CallerAuthentication` always have one.
    func requireCaller() throws -> Caller {
        guard let caller else { throw Problem(.unauthorized, "send a Keygate key in X-API-Key") }
        return caller
    }
}
