@testable import KeygateDataPlane
import KeygateCore
import Testing

struct GatewayRouteTests {
    let routes = try! ["/orders/=orders:read", "POST /orders/=orders:write", "/orders/admin/=orders:admin,audit"]
        .map { try GatewayRoute(parsing: $0) }

    @Test func theLongestPrefixAndThenTheMethodDecide() {
        #expect(GatewayRoute.requirements(routes, method: "GET", path: "/orders/1").scopes == ["orders:read"])
        #expect(GatewayRoute.requirements(routes, method: "POST", path: "/orders/1").scopes == ["orders:write"])
        #expect(GatewayRoute.requirements(routes, method: "POST", path: "/orders/admin/x").scopes == ["orders:admin", "audit"])
        #expect(GatewayRoute.requirements(routes, method: "GET", path: "/ordersx").scopes.isEmpty)
        #expect(GatewayRoute.requirements(routes, method: "GET", path: "/").scopes.isEmpty)
    }

    @Test(arguments: ["/%6Frders/1", "/x/../orders/1", "//orders/1", "/./orders/1", "/orders/%2E%2E/orders/1", "/a/b/../../orders/1"])
    func encodedAndDottedPathsNeedWhatTheirPlainFormNeeds(path: String) {
        #expect(GatewayRoute.requirements(routes, method: "GET", path: path).scopes == ["orders:read"], "\(path)")
    }

    @Test func normalizing() {
        #expect(GatewayRoute.normalize("/a//b/./c/../d/") == "/a/b/d/")
        #expect(GatewayRoute.normalize("/%41%2f%zz") == "/A/%zz")
        #expect(GatewayRoute.normalize("/../..") == "/")
    }

    @Test func routesCarryACost() throws {
        let priced = try ["/search/= cost=5", "POST /reports/=reports:write cost=10", "/reports/=reports:read"].map { try GatewayRoute(parsing: $0) }
        #expect(GatewayRoute.requirements(priced, method: "GET", path: "/search/q").cost == 5)
        #expect(GatewayRoute.requirements(priced, method: "GET", path: "/search/q").scopes.isEmpty)
        let report = GatewayRoute.requirements(priced, method: "POST", path: "/reports/1")
        #expect(report.cost == 10 && report.scopes == ["reports:write"])
        #expect(GatewayRoute.requirements(priced, method: "GET", path: "/reports/1").cost == 1)
        #expect(GatewayRoute.requirements(priced, method: "GET", path: "/other").cost == 1)
        #expect(GatewayRoute.requirements(priced, method: "GET", path: "/x/../search/q").cost == 5)
        #expect(try GatewayRoute(parsing: "/a/=x cost=0").cost == 0)
        #expect(try GatewayRoute(parsing: "POST /reports/=reports:write cost=10").description == "POST /reports/=reports:write cost=10")
    }

    @Test(arguments: ["orders=x", "/orders/", "/orders/=", "get /o=x", "GET POST /o=x", "/o=a b", "/o=x cost=-1", "/o=x cost=1000001",
                      "/o= cost=1", "/o=x cost=y"])
    func badRoutesAreRefused(text: String) {
        #expect(throws: KeygateError.self) { try GatewayRoute(parsing: text) }
    }
}
