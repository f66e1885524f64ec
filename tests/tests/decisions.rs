//! Decision table: one policy (YAML, as an operator writes it) and one request per case, with the
//! decision Istio's Envoy waypoint makes and why (from Istio's documented behaviour and istiod's
//! RBAC generation). Each case binds its policy to the waypoint through a Gateway targetRef.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gateway_api_bindings::{ObjectKey, Store, WaypointIdentity, authorizer_for};
use policy_engine::request::DEFAULT_SPACE_DELIMITED_CLAIMS;
use policy_engine::{Claim, HttpRequest, JwtClaims, PeerIdentity, Request};

const SLEEP: &str = "cluster.local/ns/foo/sa/sleep";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Allowed; `Some(rule)` = by that rule of policy `p`, `None` = by default.
    Allow(Option<usize>),
    /// Denied; `Some(rule)` = by that rule of policy `p`, `None` = no ALLOW matched.
    Deny(Option<usize>),
}

#[derive(Clone)]
struct Req {
    principal: Option<&'static str>,
    ip: Option<&'static str>,
    remote_ip: Option<&'static str>,
    dest_ip: Option<&'static str>,
    port: u16,
    sni: Option<&'static str>,
    http: Option<(&'static str, &'static str, &'static str)>,
    headers: Vec<(&'static str, &'static str)>,
    claims: Option<Vec<(&'static str, Claim)>>,
}

fn http(method: &'static str, host: &'static str, path: &'static str) -> Req {
    Req {
        http: Some((method, host, path)),
        ..tcp()
    }
}

fn tcp() -> Req {
    Req {
        principal: Some(SLEEP),
        ip: Some("10.244.1.5"),
        remote_ip: None,
        dest_ip: Some("10.96.0.10"),
        port: 8000,
        sni: None,
        http: None,
        headers: vec![],
        claims: None,
    }
}

fn get() -> Req {
    http("GET", "httpbin.foo.svc.cluster.local", "/status/200")
}

impl Req {
    fn from(mut self, p: &'static str) -> Req {
        self.principal = Some(p);
        self
    }
    fn anonymous(mut self) -> Req {
        self.principal = None;
        self
    }
    fn ip(mut self, ip: &'static str) -> Req {
        self.ip = Some(ip);
        self
    }
    fn remote(mut self, ip: &'static str) -> Req {
        self.remote_ip = Some(ip);
        self
    }
    fn port(mut self, p: u16) -> Req {
        self.port = p;
        self
    }
    fn sni(mut self, s: &'static str) -> Req {
        self.sni = Some(s);
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Req {
        self.headers.push((k, v));
        self
    }
    fn jwt(mut self, claims: Vec<(&'static str, Claim)>) -> Req {
        self.claims = Some(claims);
        self
    }
}

fn s(v: &str) -> Claim {
    Claim::String(v.into())
}

fn alice() -> Vec<(&'static str, Claim)> {
    vec![
        ("iss", s("https://issuer.example.com")),
        ("sub", s("alice")),
        ("aud", Claim::List(vec![s("web"), s("api")])),
        ("azp", s("frontend")),
        ("scope", s("read write")),
        ("groups", Claim::List(vec![s("admins"), s("dev")])),
        (
            "org",
            Claim::Object(BTreeMap::from([("team".to_owned(), s("payments"))])),
        ),
        ("admin", Claim::Other),
    ]
}

/// Evaluates `req` against one policy `foo/p` with `spec` (YAML flow mapping, without targetRefs).
fn decide(spec: &str, req: &Req) -> Want {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  {spec}\n"
    );
    let mut store = Store::default();
    let errors = store.load_str(&yaml, None);
    assert!(errors.is_empty(), "{spec}: {errors:?}");
    let wp =
        WaypointIdentity::from_store(&store, ObjectKey::new("foo", "waypoint"), "istio-system");
    let auth = authorizer_for(&store, &wp);
    let peer = req.principal.map(PeerIdentity::new);
    let headers: BTreeMap<String, String> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let claims = req.claims.clone().map(|c| {
        JwtClaims::new(
            c.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            &DEFAULT_SPACE_DELIMITED_CLAIMS,
        )
    });
    let request = Request {
        peer: peer.as_ref(),
        source_ip: req.ip.map(|i| i.parse().expect("ip")),
        remote_ip: req.remote_ip.map(|i| i.parse().expect("ip")),
        destination_ip: req.dest_ip.map(|i| i.parse().expect("ip")),
        destination_port: Some(req.port),
        sni: req.sni,
        http: req.http.map(|(method, host, path)| HttpRequest {
            method,
            host,
            path,
            headers: &headers,
        }),
        jwt: claims.as_ref(),
    };
    let d = auth.evaluate(&request, None);
    assert_eq!(
        d.status,
        req.http.map(|_| if d.allowed { 200 } else { 403 }),
        "{spec}"
    );
    if let Some(m) = d.matched {
        assert_eq!(m.policy.to_string(), "foo/p");
    }
    match d.allowed {
        true => Want::Allow(d.matched.map(|m| m.rule)),
        false => Want::Deny(d.matched.map(|m| m.rule)),
    }
}

const NO: Want = Want::Deny(None);
const YES: Want = Want::Allow(Some(0));
const DENIED: Want = Want::Deny(Some(0));
const PASSES: Want = Want::Allow(None);

fn run(cases: &[(&str, &str, Req, Want)]) {
    let mut failures = Vec::new();
    for (why, spec, req, want) in cases {
        let got = decide(spec, req);
        if got != *want {
            failures.push(format!(
                "{why}\n    spec: {spec}\n    want {want:?}, got {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn actions_and_structure() {
    run(&[
        (
            "an ALLOW with no rules matches nothing: deny all",
            "action: ALLOW",
            get(),
            NO,
        ),
        (
            "an empty rule matches everything",
            "rules: [{}]",
            get(),
            YES,
        ),
        (
            "ALLOW is the default action",
            "rules: [{to: [{operation: {methods: [GET]}}]}]",
            get(),
            YES,
        ),
        (
            "ALLOW bound but nothing matched: deny",
            "rules: [{to: [{operation: {methods: [POST]}}]}]",
            get(),
            NO,
        ),
        (
            "a matching DENY denies",
            "action: DENY\n  rules: [{}]",
            get(),
            DENIED,
        ),
        (
            "a DENY that does not match: no ALLOW bound, allow",
            "action: DENY\n  rules: [{to: [{operation: {methods: [POST]}}]}]",
            get(),
            PASSES,
        ),
        (
            "AUDIT never changes the decision",
            "action: AUDIT\n  rules: [{}]",
            get(),
            PASSES,
        ),
        (
            "a matching CUSTOM denies until a provider can be consulted (fail-closed)",
            "action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]",
            get(),
            DENIED,
        ),
        (
            "rules are ORed; the first matching rule is reported",
            "rules: [{to: [{operation: {methods: [POST]}}]}, {to: [{operation: {paths: [/status/*]}}]}]",
            get(),
            Want::Allow(Some(1)),
        ),
        (
            "from, to and when are ANDed",
            "rules: [{from: [{source: {principals: [\"cluster.local/ns/foo/sa/sleep\"]}}], to: [{operation: {methods: [POST]}}]}]",
            get(),
            NO,
        ),
        (
            "sources are ORed",
            "rules: [{from: [{source: {namespaces: [bar]}}, {source: {namespaces: [foo]}}]}]",
            get(),
            YES,
        ),
        (
            "fields inside a source are ANDed",
            "rules: [{from: [{source: {namespaces: [foo], ipBlocks: [192.168.0.0/16]}}]}]",
            get(),
            NO,
        ),
        (
            "X and notX both must hold",
            "rules: [{to: [{operation: {paths: [/status/*], notPaths: [/status/200]}}]}]",
            get(),
            NO,
        ),
        (
            "all when conditions must hold",
            "rules: [{when: [{key: source.namespace, values: [foo]}, {key: destination.port, values: [\"9000\"]}]}]",
            get(),
            NO,
        ),
    ]);
}

#[test]
fn dry_run_is_shadow_only() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  action: DENY\n  rules: [{}]\n";
    let mut store = Store::default();
    assert!(store.load_str(yaml, None).is_empty());
    let wp =
        WaypointIdentity::from_store(&store, ObjectKey::new("foo", "waypoint"), "istio-system");
    let auth = authorizer_for(&store, &wp);
    let peer = PeerIdentity::new(SLEEP);
    let req = Request {
        peer: Some(&peer),
        source_ip: None,
        remote_ip: None,
        destination_ip: None,
        destination_port: Some(80),
        sni: None,
        http: None,
        jwt: None,
    };
    let d = auth.evaluate(&req, None);
    assert!(d.allowed, "a dry-run DENY must not deny");
    let shadow = d.dry_run.expect("shadow result");
    assert!(!shadow.allowed);
    assert!(
        d.to_string()
            .contains("dry-run: would be denied by DENY policy foo/p rule 0"),
        "{d}"
    );
}

#[test]
fn source_fields() {
    let p = |field: &str, values: &str| {
        format!("rules: [{{from: [{{source: {{{field}: [{values}]}}}}]}}]")
    };
    run(&[
        (
            "principals: exact, compared without spiffe://",
            &p("principals", "\"cluster.local/ns/foo/sa/sleep\""),
            get(),
            YES,
        ),
        (
            "principals: prefix",
            &p("principals", "\"cluster.local/ns/foo/*\""),
            get(),
            YES,
        ),
        (
            "principals: suffix",
            &p("principals", "\"*/sa/sleep\""),
            get(),
            YES,
        ),
        (
            "principals: * is any authenticated peer",
            &p("principals", "\"*\""),
            get(),
            YES,
        ),
        (
            "principals: * never matches a peer without identity",
            &p("principals", "\"*\""),
            get().anonymous(),
            NO,
        ),
        (
            "principals: a spiffe:// value never matches (Istio adds the scheme)",
            &p("principals", "\"spiffe://cluster.local/ns/foo/sa/sleep\""),
            get(),
            NO,
        ),
        (
            "principals: another peer",
            &p("principals", "\"cluster.local/ns/foo/sa/sleep\""),
            get().from("cluster.local/ns/bar/sa/sleep"),
            NO,
        ),
        (
            "notPrincipals excludes",
            &p("notPrincipals", "\"cluster.local/ns/foo/sa/sleep\""),
            get(),
            NO,
        ),
        (
            "notPrincipals holds for a peer without identity",
            &p("notPrincipals", "\"cluster.local/ns/foo/sa/sleep\""),
            get().anonymous(),
            YES,
        ),
        ("namespaces: exact", &p("namespaces", "foo"), get(), YES),
        (
            "namespaces: no partial match",
            &p("namespaces", "fo"),
            get(),
            NO,
        ),
        (
            "namespaces: prefix wildcard",
            &p("namespaces", "\"f*\""),
            get(),
            YES,
        ),
        ("notNamespaces", &p("notNamespaces", "foo"), get(), NO),
        (
            "serviceAccounts: ns/sa",
            &p("serviceAccounts", "foo/sleep"),
            get(),
            YES,
        ),
        (
            "serviceAccounts: bare name takes the policy's namespace",
            &p("serviceAccounts", "sleep"),
            get(),
            YES,
        ),
        (
            "serviceAccounts: other namespace",
            &p("serviceAccounts", "bar/sleep"),
            get(),
            NO,
        ),
        (
            "notServiceAccounts",
            &p("notServiceAccounts", "foo/sleep"),
            get(),
            NO,
        ),
        (
            "trustDomains: exact",
            &p("trustDomains", "cluster.local"),
            get(),
            YES,
        ),
        (
            "trustDomains: suffix",
            &p("trustDomains", "\"*.local\""),
            get(),
            YES,
        ),
        (
            "notTrustDomains",
            &p("notTrustDomains", "cluster.local"),
            get(),
            NO,
        ),
        (
            "ipBlocks: CIDR",
            &p("ipBlocks", "10.244.0.0/16"),
            get(),
            YES,
        ),
        (
            "ipBlocks: single IP",
            &p("ipBlocks", "10.244.1.5"),
            get(),
            YES,
        ),
        (
            "ipBlocks: outside",
            &p("ipBlocks", "10.0.0.0/16"),
            get(),
            NO,
        ),
        ("notIpBlocks", &p("notIpBlocks", "10.244.0.0/16"), get(), NO),
        (
            "ipBlocks: IPv6",
            &p("ipBlocks", "\"fd00::/8\""),
            get().ip("fd00::5"),
            YES,
        ),
        (
            "remoteIpBlocks: X-Forwarded-For derived address",
            &p("remoteIpBlocks", "203.0.113.0/24"),
            get().remote("203.0.113.7"),
            YES,
        ),
        (
            "remoteIpBlocks: without XFF it is the source address (Envoy, no trusted hops)",
            &p("remoteIpBlocks", "10.244.1.5"),
            get(),
            YES,
        ),
        (
            "notRemoteIpBlocks",
            &p("notRemoteIpBlocks", "203.0.113.0/24"),
            get().remote("203.0.113.7"),
            NO,
        ),
        (
            "requestPrincipals: iss/sub",
            &p("requestPrincipals", "\"https://issuer.example.com/alice\""),
            get().jwt(alice()),
            YES,
        ),
        (
            "requestPrincipals: * needs a token",
            &p("requestPrincipals", "\"*\""),
            get(),
            NO,
        ),
        (
            "requestPrincipals: issuer with any subject",
            &p("requestPrincipals", "\"https://issuer.example.com/*\""),
            get().jwt(alice()),
            YES,
        ),
        (
            "requestPrincipals: suffix form on the subject",
            &p("requestPrincipals", "\"*/alice\""),
            get().jwt(alice()),
            YES,
        ),
        (
            "notRequestPrincipals holds without a token",
            &p("notRequestPrincipals", "\"*\""),
            get(),
            YES,
        ),
    ]);
}

#[test]
fn operation_fields() {
    let o = |field: &str, values: &str| {
        format!("rules: [{{to: [{{operation: {{{field}: [{values}]}}}}]}}]")
    };
    run(&[
        (
            "hosts: exact, case-insensitive",
            &o("hosts", "HTTPBIN.foo.svc.cluster.local"),
            get(),
            YES,
        ),
        (
            "hosts: the port is part of the host",
            &o("hosts", "httpbin.foo.svc.cluster.local"),
            http("GET", "httpbin.foo.svc.cluster.local:8000", "/"),
            NO,
        ),
        (
            "hosts: suffix",
            &o("hosts", "\"*.svc.cluster.local\""),
            get(),
            YES,
        ),
        ("hosts: prefix", &o("hosts", "\"httpbin.*\""), get(), YES),
        ("notHosts", &o("notHosts", "\"httpbin*\""), get(), NO),
        ("ports", &o("ports", "\"8000\""), get(), YES),
        ("ports: other", &o("ports", "\"9000\""), get(), NO),
        ("notPorts", &o("notPorts", "\"8000\""), get(), NO),
        (
            "methods: exact and case-sensitive",
            &o("methods", "get"),
            get(),
            NO,
        ),
        ("methods: any", &o("methods", "\"*\""), get(), YES),
        ("notMethods", &o("notMethods", "GET"), get(), NO),
        (
            "paths: exact ignores the query",
            &o("paths", "/status/200"),
            http("GET", "h", "/status/200?x=1"),
            YES,
        ),
        ("paths: prefix", &o("paths", "/status/*"), get(), YES),
        ("paths: suffix", &o("paths", "\"*/200\""), get(), YES),
        (
            "paths: * is any non-empty path",
            &o("paths", "\"*\""),
            get(),
            YES,
        ),
        (
            "paths: {*} is one segment",
            &o("paths", "\"/status/{*}\""),
            get(),
            YES,
        ),
        ("paths: {*} is not two", &o("paths", "\"/{*}\""), get(), NO),
        (
            "paths: {**} is any number",
            &o("paths", "\"/{**}\""),
            get(),
            YES,
        ),
        (
            "paths: exact and case-sensitive",
            &o("paths", "/STATUS/200"),
            get(),
            NO,
        ),
        ("notPaths", &o("notPaths", "/status/*"), get(), NO),
        (
            "paths: matched after BASE normalization by the caller",
            &o("paths", "/admin"),
            http("GET", "h", "/admin"),
            YES,
        ),
    ]);
}

#[test]
fn when_conditions() {
    let w = |key: &str, values: &str| {
        format!("rules: [{{when: [{{key: \"{key}\", values: [{values}]}}]}}]")
    };
    let wn = |key: &str, values: &str| {
        format!("rules: [{{when: [{{key: \"{key}\", notValues: [{values}]}}]}}]")
    };
    run(&[
        (
            "request.headers: name is case-insensitive",
            &w("request.headers[X-User]", "admin"),
            get().header("x-user", "admin"),
            YES,
        ),
        (
            "request.headers: absent header never matches",
            &w("request.headers[x-user]", "\"*\""),
            get(),
            NO,
        ),
        (
            "request.headers: * is presence, even empty",
            &w("request.headers[x-user]", "\"*\""),
            get().header("x-user", ""),
            YES,
        ),
        (
            "request.headers: prefix",
            &w("request.headers[x-user]", "\"adm*\""),
            get().header("x-user", "admin"),
            YES,
        ),
        (
            "request.headers: notValues on an absent header holds",
            &wn("request.headers[x-user]", "admin"),
            get(),
            YES,
        ),
        ("source.ip", &w("source.ip", "10.244.0.0/16"), get(), YES),
        (
            "remote.ip",
            &w("remote.ip", "203.0.113.7"),
            get().remote("203.0.113.7"),
            YES,
        ),
        (
            "source.namespace",
            &w("source.namespace", "foo"),
            get(),
            YES,
        ),
        (
            "source.principal",
            &w("source.principal", "\"cluster.local/ns/foo/sa/sleep\""),
            get(),
            YES,
        ),
        (
            "source.serviceAccount",
            &w("source.serviceAccount", "foo/sleep"),
            get(),
            YES,
        ),
        (
            "source.trustDomain",
            &w("source.trustDomain", "cluster.local"),
            get(),
            YES,
        ),
        (
            "request.auth.principal",
            &w(
                "request.auth.principal",
                "\"https://issuer.example.com/alice\"",
            ),
            get().jwt(alice()),
            YES,
        ),
        (
            "request.auth.audiences: one of a list",
            &w("request.auth.audiences", "api"),
            get().jwt(alice()),
            YES,
        ),
        (
            "request.auth.presenter",
            &w("request.auth.presenter", "frontend"),
            get().jwt(alice()),
            YES,
        ),
        (
            "request.auth.claims: list membership",
            &w("request.auth.claims[groups]", "admins"),
            get().jwt(alice()),
            YES,
        ),
        (
            "request.auth.claims: nested",
            &w("request.auth.claims[org][team]", "payments"),
            get().jwt(alice()),
            YES,
        ),
        (
            "request.auth.claims: scope is split on spaces",
            &w("request.auth.claims[scope]", "write"),
            get().jwt(alice()),
            YES,
        ),
        (
            "request.auth.claims: non-string claims never equal a string",
            &w("request.auth.claims[admin]", "\"true\""),
            get().jwt(alice()),
            NO,
        ),
        (
            "request.auth.claims: no token",
            &w("request.auth.claims[groups]", "admins"),
            get(),
            NO,
        ),
        (
            "destination.ip",
            &w("destination.ip", "10.96.0.0/16"),
            get(),
            YES,
        ),
        (
            "destination.port",
            &w("destination.port", "\"8000\""),
            get(),
            YES,
        ),
        (
            "connection.sni",
            &w("connection.sni", "\"*.example.com\""),
            get().sni("api.example.com"),
            YES,
        ),
        (
            "connection.sni absent",
            &w("connection.sni", "\"*\""),
            get(),
            NO,
        ),
    ]);
}

#[test]
fn tcp_rules_for_http_only_fields() {
    run(&[
        // ALLOW: a rule with an HTTP-only field is dropped on TCP (narrower, fail-closed).
        (
            "ALLOW with methods never matches TCP",
            "rules: [{to: [{operation: {methods: [GET]}}]}]",
            tcp(),
            NO,
        ),
        (
            "ALLOW with only L4 fields matches TCP",
            "rules: [{from: [{source: {principals: [\"cluster.local/ns/foo/sa/sleep\"]}}]}]",
            tcp(),
            YES,
        ),
        (
            "ALLOW with requestPrincipals never matches TCP",
            "rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]",
            tcp(),
            NO,
        ),
        (
            "ALLOW with a header condition never matches TCP",
            "rules: [{when: [{key: \"request.headers[x]\", values: [a]}]}]",
            tcp(),
            NO,
        ),
        (
            "one dropped rule leaves the others",
            "rules: [{to: [{operation: {paths: [/a]}}]}, {to: [{operation: {ports: [\"8000\"]}}]}]",
            tcp(),
            Want::Allow(Some(1)),
        ),
        // DENY: only the HTTP-only field is dropped (wider, fail-closed).
        (
            "DENY on methods+ports denies all TCP to that port",
            "action: DENY\n  rules: [{to: [{operation: {methods: [POST], ports: [\"8000\"]}}]}]",
            tcp(),
            DENIED,
        ),
        (
            "DENY on methods+ports denies TCP to that port from anyone",
            "action: DENY\n  rules: [{to: [{operation: {methods: [POST], ports: [\"9000\"]}}]}]",
            tcp().port(9000).from("cluster.local/ns/bar/sa/x"),
            DENIED,
        ),
        (
            "... but not TCP to another port",
            "action: DENY\n  rules: [{to: [{operation: {methods: [POST], ports: [\"9000\"]}}]}]",
            tcp(),
            PASSES,
        ),
        (
            "DENY with only HTTP fields denies all TCP",
            "action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]",
            tcp(),
            DENIED,
        ),
        (
            "DENY on notMethods drops it too",
            "action: DENY\n  rules: [{from: [{source: {namespaces: [foo]}}], to: [{operation: {notMethods: [GET]}}]}]",
            tcp(),
            DENIED,
        ),
        (
            "AUDIT follows DENY and still never decides",
            "action: AUDIT\n  rules: [{to: [{operation: {methods: [POST]}}]}]",
            tcp(),
            PASSES,
        ),
    ]);
}

#[test]
fn invalid_values_fail_closed_like_istiod() {
    run(&[
        (
            "ALLOW: a bad CIDR drops the rule",
            "rules: [{from: [{source: {ipBlocks: [10.0.0.0/99, 10.244.0.0/16]}}]}]",
            get(),
            NO,
        ),
        (
            "DENY: a bad CIDR drops only that value",
            "action: DENY\n  rules: [{from: [{source: {ipBlocks: [10.0.0.0/99, 10.244.0.0/16]}}]}]",
            get(),
            DENIED,
        ),
        (
            "DENY: when all values are bad the field goes, widening",
            "action: DENY\n  rules: [{to: [{operation: {ports: [http], methods: [GET]}}]}]",
            get(),
            DENIED,
        ),
        (
            "unknown when keys: ALLOW rule never matches",
            "rules: [{when: [{key: request.colour, values: [red]}]}]",
            get(),
            NO,
        ),
        (
            "unknown when keys: DENY ignores the condition",
            "action: DENY\n  rules: [{when: [{key: request.colour, values: [red]}]}]",
            get(),
            DENIED,
        ),
        (
            "experimental keys cannot be evaluated here: ALLOW never matches",
            "rules: [{when: [{key: \"experimental.envoy.filters.a.b[c]\", values: [x]}]}]",
            get(),
            NO,
        ),
    ]);
}

#[test]
fn deny_beats_allow_and_scopes_combine() {
    let yaml = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  targetRefs: [{kind: Service, name: httpbin}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-deny, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: DENY
  rules: [{from: [{source: {namespaces: [evil]}}]}]
";
    let mut store = Store::default();
    assert!(store.load_str(yaml, None).is_empty());
    let wp =
        WaypointIdentity::from_store(&store, ObjectKey::new("foo", "waypoint"), "istio-system");
    let auth = authorizer_for(&store, &wp);
    let headers = BTreeMap::new();
    let eval = |principal: &str, path: &'static str, target: Option<&str>| {
        let peer = PeerIdentity::new(principal);
        let req = Request {
            peer: Some(&peer),
            source_ip: None,
            remote_ip: None,
            destination_ip: None,
            destination_port: Some(8000),
            sni: None,
            http: Some(HttpRequest {
                method: "GET",
                host: "h",
                path,
                headers: &headers,
            }),
            jwt: None,
        };
        let d = auth.evaluate(&req, target);
        (d.allowed, d.matched.map(|m| m.policy.to_string()))
    };
    let svc = Some("Service/foo/httpbin");
    assert_eq!(
        eval(SLEEP, "/admin", svc),
        (false, Some("foo/deny-admin".into())),
        "service DENY beats waypoint ALLOW"
    );
    assert_eq!(
        eval(SLEEP, "/admin", Some("Service/foo/other")),
        (true, Some("foo/allow-all".into())),
        "a Service policy applies to that service only"
    );
    assert_eq!(
        eval("cluster.local/ns/evil/sa/x", "/", svc),
        (false, Some("istio-system/root-deny".into())),
        "GatewayClass policy applies to every waypoint"
    );
    assert_eq!(eval(SLEEP, "/", None), (true, Some("foo/allow-all".into())));
}
