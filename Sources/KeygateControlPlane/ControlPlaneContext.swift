public import Hummingbird
import KeygateCore

/// Who called: the key that authenticated the request. Set by `CallerAuthentication`.
public struct Caller: Sendable {
    public static let adminScope = "keygate:admin"
    public static let selfServiceScope = "keygate:self"

    public var user: String
    public var keyID: String
    public var scopes: [String]

    public var isAdmin: Bool { scopes.contains(Self.adminScope) }
    public var isSelfService: Bool { scopes.contains(Self.selfServiceScope) }
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
