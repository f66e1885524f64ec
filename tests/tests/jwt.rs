//! RequestAuthentication with real keys and tokens: validation against a JWKS server on loopback
//! (rotation, outage, slow answers, discovery), and end to end through the waypoint.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use gateway_api_bindings::{ObjectKey, Store, WaypointIdentity};
use http::HeaderMap;
use serde_json::json;
use waypoint::authn::jwks::{JwksOptions, JwksRegistry};
use waypoint::authn::{Authn, AuthnError};
use waypoint::metrics::Metrics;
use waypoint_tests::http1;
use waypoint_tests::jwt::{JwksServer, SigningKey, claims, forge, now};
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions};

const LIMIT: Duration = Duration::from_secs(60);

fn registry(metrics: &Arc<Metrics>) -> Arc<JwksRegistry> {
    registry_trusting(metrics, Vec::new())
}

fn registry_trusting(
    metrics: &Arc<Metrics>,
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Arc<JwksRegistry> {
    JwksRegistry::new(
        JwksOptions {
            refresh: Duration::from_secs(3600),
            retry: Duration::from_millis(100),
            min_refetch: Duration::from_secs(2),
            extra_roots,
            ..JwksOptions::default()
        },
        Some(tokio::runtime::Handle::current()),
        metrics.clone(),
    )
}

/// A RequestAuthentication bound to the waypoint with one rule (`rule` is its YAML flow map).
fn compile(rule: &str, registry: &JwksRegistry) -> Authn {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: ambient-demo}}\n\
         spec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  jwtRules: [{rule}]\n"
    );
    let mut store = Store::default();
    let errors = store.load_str(&yaml, None);
    assert!(errors.is_empty(), "{errors:?}");
    let wp = WaypointIdentity::from_store(
        &store,
        ObjectKey::new("ambient-demo", "waypoint"),
        "istio-system",
    );
    Authn::compile(&store, &wp, registry)
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

/// Finds and verifies the token in `headers`/`query`; `Ok(None)` when there is none.
async fn check(
    authn: &Authn,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<String>, AuthnError> {
    let a = authn.for_target(None).expect("rules bound to the waypoint");
    Ok(a.authenticate(headers, query)
        .await?
        .map(|accepted| accepted.verified.principal.clone()))
}

#[tokio::test]
async fn rsa_and_ec_tokens_validate_and_shape_the_request() {
    tokio::time::timeout(LIMIT, async {
        let (rsa, ec) = (SigningKey::rsa("r1"), SigningKey::ec("e1"));
        let server = JwksServer::start(&[&rsa, &ec]).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let reg = registry(&metrics);
        let iss = "https://issuer.example";
        let authn = compile(
            &format!(
                "{{issuer: '{iss}', jwksUri: '{}', audiences: [api], outputPayloadToHeader: x-jwt-payload, \
                 outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}, {{header: x-jwt-team, claim: org.team}}]}}",
                server.uri()
            ),
            &reg,
        );
        for key in [&rsa, &ec] {
            let token = key.sign(&claims(iss, "alice", json!({"aud": ["api", "other"], "scope": "read write", "org": {"team": "blue"}})));
            let a = authn.for_target(None).unwrap();
            let mut headers = bearer(&token);
            let accepted = a
                .authenticate(&headers, None)
                .await
                .unwrap_or_else(|e| panic!("{:?}: {e}", key.alg))
                .unwrap();
            let v = &accepted.verified;
            assert_eq!(v.principal, format!("{iss}/alice"));
            // scope is space-delimited by default: a list for `request.auth.claims[scope]`.
            assert_eq!(
                v.claims.lookup(&["scope".into()]),
                Some(&policy_engine::Claim::List(vec![
                    policy_engine::Claim::String("read".into()),
                    policy_engine::Claim::String("write".into())
                ]))
            );
            a.sanitize(&mut headers);
            accepted.apply(&mut headers);
            assert!(headers.get("authorization").is_none(), "stripped unless forwardOriginalToken");
            assert_eq!(headers["x-jwt-sub"], "alice");
            assert_eq!(headers["x-jwt-team"], "blue");
            assert_eq!(headers["x-jwt-payload"], token.split('.').nth(1).unwrap());
        }
        assert_eq!(server.hits(), 1, "one fetch serves both keys");
        // The same token again: served from the cache.
        let token = ec.sign(&claims(iss, "bob", json!({"aud": "api"})));
        assert_eq!(check(&authn, &bearer(&token), None).await.unwrap().unwrap(), format!("{iss}/bob"));
        let hits = metrics.jwt_cache_hits.get();
        check(&authn, &bearer(&token), None).await.unwrap();
        assert_eq!(metrics.jwt_cache_hits.get(), hits + 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_tokens_are_refused_with_envoys_reasons() {
    tokio::time::timeout(LIMIT, async {
        let key = SigningKey::ec("e1");
        let other = SigningKey::ec("e1");
        let server = JwksServer::start(&[&key]).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let reg = registry(&metrics);
        let iss = "https://issuer.example";
        let authn = compile(
            &format!(
                "{{issuer: '{iss}', jwksUri: '{}', audiences: [api]}}",
                server.uri()
            ),
            &reg,
        );
        let t = |extra| key.sign(&claims(iss, "alice", extra));
        let cases: Vec<(&str, String, AuthnError)> = vec![
            (
                "expired beyond the leeway",
                t(json!({"aud": "api", "exp": now() - 120})),
                AuthnError::Expired,
            ),
            (
                "not yet valid",
                t(json!({"aud": "api", "nbf": now() + 300})),
                AuthnError::NotYetValid,
            ),
            (
                "wrong audience",
                t(json!({"aud": "web"})),
                AuthnError::Audience,
            ),
            ("no audience", t(json!({})), AuthnError::Audience),
            (
                "unknown issuer",
                key.sign(&claims("https://elsewhere", "alice", json!({"aud": "api"}))),
                AuthnError::UnknownIssuer,
            ),
            (
                "signed by another key with the same kid",
                other.sign(&claims(iss, "alice", json!({"aud": "api"}))),
                AuthnError::BadSignature,
            ),
            ("not a JWT", "abc.def".into(), AuthnError::Malformed),
        ];
        for (what, token, want) in cases {
            assert_eq!(
                check(&authn, &bearer(&token), None).await,
                Err(want),
                "{what}"
            );
        }
        let ok = t(json!({"aud": "api", "exp": now() - 30}));
        assert!(
            check(&authn, &bearer(&ok), None).await.is_ok(),
            "expired within the 60 s leeway"
        );
        // No token at all: not an error, no principal.
        assert_eq!(
            check(&authn, &HeaderMap::new(), Some("x=1")).await,
            Ok(None)
        );
        // The default locations are the bearer header and access_token. The same token in
        // both is one token (Envoy verifies it twice and accepts); two different ones are
        // refused.
        let q = format!("access_token={ok}");
        assert!(
            check(&authn, &HeaderMap::new(), Some(&q))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            check(&authn, &bearer(&ok), Some(&q))
                .await
                .unwrap()
                .is_some()
        );
        let other = t(json!({"aud": "api", "sub": "bob"}));
        assert_eq!(
            check(&authn, &bearer(&other), Some(&q)).await,
            Err(AuthnError::MultipleTokens)
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn rotation_unknown_kid_outage_and_slow_jwks() {
    tokio::time::timeout(LIMIT, async {
        let (a, b, c) = (
            SigningKey::ec("a"),
            SigningKey::rsa("b"),
            SigningKey::ec("c"),
        );
        let server = JwksServer::start(&[&a]).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let reg = registry(&metrics);
        let iss = "https://issuer.example";
        let authn = compile(
            &format!("{{issuer: '{iss}', jwksUri: '{}'}}", server.uri()),
            &reg,
        );
        let tok = |k: &SigningKey, sub: &str| k.sign(&claims(iss, sub, json!({})));
        assert!(check(&authn, &bearer(&tok(&a, "1")), None).await.is_ok());
        assert_eq!(server.hits(), 1);

        // Rotation: a token with a kid the cached set lacks triggers one refetch.
        server.set_keys(&[&a, &b]);
        assert!(check(&authn, &bearer(&tok(&b, "2")), None).await.is_ok());
        assert_eq!(server.hits(), 2);
        // Another unknown kid right after: rate-limited, no fetch.
        assert_eq!(
            check(&authn, &bearer(&tok(&c, "3")), None).await,
            Err(AuthnError::KeyNotFound)
        );
        assert_eq!(server.hits(), 2);

        // Outage after a good fetch: the keys already held keep working.
        server.set_down(true);
        assert!(check(&authn, &bearer(&tok(&a, "4")), None).await.is_ok());

        // A set never fetched (the server is down): every token is refused, then accepted once a
        // retry succeeds.
        let authn2 = compile(
            &format!("{{issuer: '{iss}', jwksUri: '{}?second'}}", server.uri()),
            &reg,
        );
        assert_eq!(
            check(&authn2, &bearer(&tok(&a, "5")), None).await,
            Err(AuthnError::JwksUnavailable)
        );
        server.set_down(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match check(&authn2, &bearer(&tok(&a, "6")), None).await {
                Ok(_) => break,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "still {e} after the retry"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Slower than the rule's timeout: fail closed.
        server.set_delay(Duration::from_secs(3));
        let authn3 = compile(
            &format!(
                "{{issuer: '{iss}', jwksUri: '{}?third', timeout: 200ms}}",
                server.uri()
            ),
            &reg,
        );
        let started = tokio::time::Instant::now();
        assert_eq!(
            check(&authn3, &bearer(&tok(&a, "7")), None).await,
            Err(AuthnError::JwksUnavailable)
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "bounded by the timeout"
        );
        assert!(metrics.jwks_fetch_failures.get() >= 2);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn oidc_discovery_finds_the_keys() {
    tokio::time::timeout(LIMIT, async {
        let key = SigningKey::rsa("d");
        let server = JwksServer::start(&[&key]).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let reg = registry(&metrics);
        let iss = server.issuer();
        let authn = compile(&format!("{{issuer: '{iss}'}}"), &reg);
        let token = key.sign(&claims(&iss, "alice", json!({})));
        assert_eq!(
            check(&authn, &bearer(&token), None).await.unwrap().unwrap(),
            format!("{iss}/alice")
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn jwks_over_https_needs_a_trusted_server() {
    tokio::time::timeout(LIMIT, async {
        let key = SigningKey::ec("h");
        let (server, root) = JwksServer::start_tls(&[&key]).await.unwrap();
        let iss = server.issuer();
        let token = key.sign(&claims(&iss, "alice", json!({})));
        let rule = format!("{{issuer: '{iss}', jwksUri: '{}'}}", server.uri());
        let metrics = Arc::new(Metrics::default());
        let trusted = compile(&rule, &registry_trusting(&metrics, vec![root]));
        assert!(check(&trusted, &bearer(&token), None).await.is_ok());
        // The same server with only the system's roots: the fetch fails, tokens are refused.
        let untrusted = compile(&rule, &registry(&metrics));
        assert_eq!(
            check(&untrusted, &bearer(&token), None).await,
            Err(AuthnError::JwksUnavailable)
        );
        assert!(metrics.jwks_fetch_failures.get() >= 1);
    })
    .await
    .unwrap();
}

/// Through the waypoint: tokens checked before policy, principals fed to policy, 401s with a
/// challenge, claims reaching the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_the_waypoint() {
    tokio::time::timeout(LIMIT, async {
        let key = SigningKey::rsa("k1");
        let server = JwksServer::start(&[&key]).await.unwrap();
        let iss = "https://issuer.example";
        let policies = format!(
            r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: ambient-demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: httpbin}}]
  jwtRules:
  - issuer: {iss}
    jwksUri: {uri}
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-alice-writes, namespace: ambient-demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: httpbin}}]
  rules:
  - to: [{{operation: {{methods: [GET]}}}}]
  - from: [{{source: {{requestPrincipals: ["{iss}/alice"]}}}}]
    to: [{{operation: {{methods: [POST]}}}}]
"#,
            uri = server.uri()
        );
        let mesh = Mesh::start(MeshOptions {
            policies,
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let o = c
            .open(HTTPBIN_VIP, &[("forwarded", "for=\"10.244.1.9:51000\"")])
            .await
            .unwrap();
        assert_eq!(o.status, 200);
        let mut s = o.stream.unwrap();
        let mut call = async |method: &str, token: Option<&str>| {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            http1::request(&mut s, method, "/anything", &headers, "")
                .await
                .unwrap()
                .unwrap()
        };
        let alice = key.sign(&claims(iss, "alice", json!({})));
        let bob = key.sign(&claims(iss, "bob", json!({})));
        let expired = key.sign(&claims(iss, "alice", json!({"exp": now() - 3600})));

        assert_eq!(
            call("GET", None).await.status,
            200,
            "no token: no principal, GET allowed"
        );
        assert_eq!(
            call("POST", None).await.status,
            403,
            "no token: POST needs alice"
        );
        assert_eq!(call("POST", Some(&bob)).await.status, 403);
        let r = call("POST", Some(&alice)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("x-jwt-sub: alice"), "{}", r.body);
        assert!(
            !r.body.contains("authorization:"),
            "the token is not forwarded: {}",
            r.body
        );
        let r = call("GET", Some(&expired)).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.body, "Jwt is expired");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"http://httpbin/anything\", error=\"invalid_token\"")
        );
        // The connection survives a 401.
        assert_eq!(call("GET", Some(&alice)).await.status, 200);
        let m = &mesh.running().metrics;
        assert!(m.jwt_rejected.get() >= 1 && m.jwt_valid.get() >= 2);
    })
    .await
    .unwrap();
}

/// One request through the waypoint and what it must come to: the status and, when the app
/// answered, lines the app must and must not have received (its echo: request line, every
/// `authorization` and `cookie`, every `x-jwt-*` header).
struct Probe {
    what: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    status: u16,
    app_sees: Vec<String>,
    app_never_sees: Vec<String>,
}

fn probe(what: &'static str, path: impl Into<String>, headers: &[(&'static str, &str)]) -> Probe {
    Probe {
        what,
        path: path.into(),
        headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        status: 200,
        app_sees: Vec::new(),
        app_never_sees: Vec::new(),
    }
}

impl Probe {
    fn status(mut self, s: u16) -> Probe {
        self.status = s;
        self
    }
    fn sees(mut self, line: impl Into<String>) -> Probe {
        self.app_sees.push(line.into());
        self
    }
    fn never(mut self, text: impl Into<String>) -> Probe {
        self.app_never_sees.push(text.into());
        self
    }
}

/// Every attack of the RequestAuthentication review, through the live mesh, asserting what the
/// APP receives. Each answer is printed (`--nocapture`) so a run on older code shows what got
/// through there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stdout)] // the record of what each probe got through (`--nocapture`)
async fn what_the_app_receives() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let k1 = SigningKey::rsa("k1");
        // Published without a kid: jwt_verify_lib tries it for any token.
        let nokid = SigningKey::ec("x").with_jwk(|j| {
            j.remove("kid");
        });
        // An encryption key: never verifies a signature.
        let enc = SigningKey::rsa("enc").with_jwk(|j| {
            j.remove("alg");
            j.insert("use".into(), json!("enc"));
        });
        // An RSA key published for RSA-OAEP: jwt_verify_lib refuses it at load.
        let oaep = SigningKey::rsa("oaep").with_jwk(|j| {
            j.remove("use");
            j.insert("alg".into(), json!("RSA-OAEP"));
        });
        let server = JwksServer::start(&[&k1, &nokid, &enc, &oaep])
            .await
            .unwrap();
        let iss = "https://issuer.example";
        let iss2 = "https://forwarding.example";
        let policies = format!(
            r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: ambient-demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: httpbin}}]
  jwtRules:
  - issuer: {iss}
    jwksUri: {uri}
    fromHeaders: [{{name: Authorization, prefix: "Bearer "}}]
    fromParams: [access_token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-role, claim: role}}, {{header: x-jwt-sub, claim: sub}}]
  - issuer: {iss2}
    jwksUri: {uri}
    fromHeaders: [{{name: x-jwt-forwarded}}]
    forwardOriginalToken: true
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: app, namespace: ambient-demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: httpbin}}]
  rules:
  - to: [{{operation: {{paths: ["/anything*"]}}}}]
  - to: [{{operation: {{paths: ["/admin"]}}}}]
    when: [{{key: "request.headers[x-jwt-role]", values: [admin]}}]
  - to: [{{operation: {{paths: ["/claims"]}}}}]
    when: [{{key: "request.auth.claims[role]", values: [admin]}}]
  - from: [{{source: {{requestPrincipals: ["{iss}/team/alice"]}}}}]
    to: [{{operation: {{paths: ["/principal"]}}}}]
"#,
            uri = server.uri()
        );
        let mesh = Mesh::start(MeshOptions {
            policies,
            ..MeshOptions::default()
        })
        .await
        .unwrap();

        let c = |extra: serde_json::Value| claims(iss, "alice", extra);
        let alice = k1.sign(&c(json!({"role": "user"})));
        let root = k1.sign(&claims(iss, "root", json!({"role": "admin"})));
        let norole = k1.sign(&claims(iss, "carol", json!({})));
        let slash = k1.sign(&claims(iss, "team/alice", json!({})));
        let forged = forge(&alice, &claims(iss, "mallory", json!({"role": "admin"})));
        let fwd = k1.sign(&claims(iss2, "dave", json!({})));
        let mut sub_number = claims(iss, "x", json!({}));
        sub_number["sub"] = json!(123);
        let sub_number = k1.sign(&sub_number);
        let aud_number = k1.sign(&c(json!({"aud": 5})));
        let exp_huge = k1.sign(&c(json!({"exp": 1e300})));
        let iss_number = {
            let mut v = c(json!({}));
            v["iss"] = json!(7);
            k1.sign(&v)
        };
        let by_nokid = nokid.sign(&c(json!({})));
        let by_enc = enc.sign(&c(json!({})));
        let by_oaep = oaep.sign(&c(json!({})));
        let bearer = |t: &str| format!("Bearer {t}");
        let pct = |t: &str| t.replace('.', "%2E");

        let probes = vec![
            // 1. Client-sent output headers.
            probe(
                "no token, forged x-jwt-role",
                "/admin",
                &[("x-jwt-role", "admin")],
            )
            .status(403),
            probe(
                "no token, forged output headers",
                "/anything",
                &[
                    ("x-jwt-role", "admin"),
                    ("x-jwt-payload", "e30"),
                    ("x-jwt-sub", "root"),
                ],
            )
            .never("x-jwt-"),
            probe(
                "valid token without the claim, forged x-jwt-role",
                "/admin",
                &[("authorization", &bearer(&norole)), ("x-jwt-role", "admin")],
            )
            .status(403),
            probe(
                "valid token role=user, forged x-jwt-role",
                "/anything",
                &[("authorization", &bearer(&alice)), ("x-jwt-role", "admin")],
            )
            .sees("x-jwt-role: user")
            .never("x-jwt-role: admin"),
            probe(
                "invalid token, forged x-jwt-role",
                "/admin",
                &[("authorization", &bearer(&forged)), ("x-jwt-role", "admin")],
            )
            .status(401),
            // 2. forwardOriginalToken: false removes the token where it was found.
            probe(
                "token in the query",
                format!("/anything?a=1&access_token={alice}&b=2"),
                &[],
            )
            .sees(" GET /anything?a=1&b=2\n")
            .sees("x-jwt-sub: alice")
            .never(alice.clone()),
            probe(
                "valid then forged access_token",
                format!("/anything?access_token={alice}&access_token={forged}"),
                &[],
            )
            .sees(" GET /anything\n")
            .never(forged.clone())
            .never(alice.clone()),
            probe(
                "forged then valid access_token",
                format!("/anything?access_token={forged}&access_token={alice}"),
                &[],
            )
            .status(401),
            probe(
                "token in a header",
                "/anything",
                &[("authorization", &bearer(&alice))],
            )
            .sees("x-jwt-sub: alice")
            .never("authorization:"),
            probe(
                "forwardOriginalToken: true keeps it",
                "/anything",
                &[("x-jwt-forwarded", &fwd)],
            )
            .sees(format!("x-jwt-forwarded: {fwd}")),
            // 3. Extraction as Envoy's extractor.
            probe(
                "percent-encoded parameter name, forged",
                format!("/anything?access%5Ftoken={forged}"),
                &[],
            )
            .status(401),
            probe(
                "percent-encoded parameter name, valid",
                format!("/anything?access%5Ftoken={alice}&x=1"),
                &[],
            )
            .sees(" GET /anything?x=1\n")
            .sees("x-jwt-sub: alice"),
            probe(
                "percent-encoded token value",
                format!("/anything?access_token={}", pct(&alice)),
                &[],
            )
            .sees(" GET /anything\n")
            .sees("x-jwt-sub: alice"),
            probe(
                "quoted cookie value",
                "/anything",
                &[("cookie", &format!("a=b; session=\"{alice}\""))],
            )
            .sees("x-jwt-sub: alice")
            .sees(format!("cookie: a=b; session=\"{alice}\"")),
            probe(
                "forged cookie",
                "/anything",
                &[("cookie", &format!("session={forged}"))],
            )
            .status(401),
            probe(
                "Bearer after another scheme in the same value",
                "/anything",
                &[("authorization", &format!("Basic Zm9v, Bearer {forged}"))],
            )
            .status(401),
            probe(
                "lower-case bearer is no token (case-sensitive prefix)",
                "/anything",
                &[("authorization", &format!("bearer {forged}"))],
            )
            .sees(format!("authorization: bearer {forged}"))
            .never("x-jwt-sub"),
            probe(
                "spaces after the prefix",
                "/anything",
                &[("authorization", &format!("Bearer   {alice}"))],
            )
            .sees("x-jwt-sub: alice")
            .never("authorization:"),
            probe(
                "two Authorization headers, valid then forged",
                "/anything",
                &[
                    ("authorization", &bearer(&alice)),
                    ("authorization", &bearer(&forged)),
                ],
            )
            .status(401),
            probe(
                "two Authorization headers, forged then valid",
                "/anything",
                &[
                    ("authorization", &bearer(&forged)),
                    ("authorization", &bearer(&alice)),
                ],
            )
            .status(401),
            probe(
                "Basic and Bearer headers",
                "/anything",
                &[
                    ("authorization", "Basic Zm9v"),
                    ("authorization", &bearer(&alice)),
                ],
            )
            .sees("x-jwt-sub: alice")
            .never("authorization:"),
            probe(
                "same token in header and query",
                format!("/anything?access_token={alice}"),
                &[("authorization", &bearer(&alice))],
            )
            .sees(" GET /anything\n")
            .sees("x-jwt-sub: alice")
            .never("authorization:"),
            probe(
                "different valid tokens in header and query",
                format!("/anything?access_token={norole}"),
                &[("authorization", &bearer(&alice))],
            )
            .status(401),
            probe(
                "valid header, forged query",
                format!("/anything?access_token={forged}"),
                &[("authorization", &bearer(&alice))],
            )
            .status(401),
            // 4. Claim types and key selection as jwt_verify_lib.
            probe(
                "sub is a number",
                "/anything",
                &[("authorization", &bearer(&sub_number))],
            )
            .status(401),
            probe(
                "aud is a number",
                "/anything",
                &[("authorization", &bearer(&aud_number))],
            )
            .status(401),
            probe(
                "exp is 1e300",
                "/anything",
                &[("authorization", &bearer(&exp_huge))],
            )
            .status(401),
            probe(
                "iss is a number",
                "/anything",
                &[("authorization", &bearer(&iss_number))],
            )
            .status(401),
            probe(
                "JWK without kid, token with kid",
                "/anything",
                &[("authorization", &bearer(&by_nokid))],
            )
            .sees("x-jwt-sub: alice"),
            probe(
                "JWK with use: enc",
                "/anything",
                &[("authorization", &bearer(&by_enc))],
            )
            .status(401),
            probe(
                "JWK with alg: RSA-OAEP",
                "/anything",
                &[("authorization", &bearer(&by_oaep))],
            )
            .status(401),
            // 6. What already behaved.
            probe(
                "claim matching, admin",
                "/claims",
                &[("authorization", &bearer(&root))],
            )
            .sees("x-jwt-role: admin"),
            probe(
                "claim matching, user",
                "/claims",
                &[("authorization", &bearer(&alice))],
            )
            .status(403),
            // Istio splits a requestPrincipal at its LAST `/`: "<iss>/team/alice" names issuer
            // "<iss>/team", which a token of "<iss>" with sub "team/alice" is not.
            probe(
                "sub with a slash cannot pose as another issuer's",
                "/principal",
                &[("authorization", &bearer(&slash))],
            )
            .status(403),
        ];

        let hbone = mesh.hbone(&mesh.sleep).await.unwrap();
        let short = |s: &str| {
            // Tokens are long: print each as the end of its payload.
            let mut out = s.to_owned();
            for t in [&alice, &root, &norole, &slash, &forged, &fwd, &by_nokid] {
                let payload = t.split('.').nth(1).unwrap_or("");
                out = out.replace(t.as_str(), &format!("<{}…>", &payload[payload.len() - 6..]));
            }
            out
        };
        let mut failures = Vec::new();
        for p in &probes {
            let o = hbone
                .open(HTTPBIN_VIP, &[("forwarded", "for=\"10.244.1.9:51000\"")])
                .await
                .unwrap();
            assert_eq!(o.status, 200);
            let mut s = o.stream.unwrap();
            let headers: Vec<(&str, &str)> =
                p.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = http1::request(&mut s, "GET", &p.path, &headers, "")
                .await
                .unwrap()
                .unwrap();
            println!(
                "PROBE {:<55} -> {} | app: {}",
                p.what,
                r.status,
                short(&r.body).replace('\n', " | ")
            );
            let mut wrong = Vec::new();
            if r.status != p.status {
                wrong.push(format!("status {} (want {})", r.status, p.status));
            }
            if r.status == 200 {
                for l in &p.app_sees {
                    if !r.body.contains(l.as_str()) {
                        wrong.push(format!("app lacks {:?}", short(l)));
                    }
                }
                for l in &p.app_never_sees {
                    if r.body.contains(l.as_str()) {
                        wrong.push(format!("app got {:?}", short(l)));
                    }
                }
            }
            if !wrong.is_empty() {
                failures.push(format!("{}: {}", p.what, wrong.join(", ")));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await
    .unwrap();
}

/// Memory and work stay bounded under many distinct large or forged tokens: large valid tokens
/// are verified but never cached, the cache stays within its byte budget, a forged token sent
/// again is refused from memory, and a kid-less token meets at most a few of 10,000 keys.
#[tokio::test]
#[allow(clippy::print_stdout)] // the figures docs/performance.md quotes (`--nocapture`)
async fn work_and_memory_per_token_are_bounded() {
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header};
    use waypoint::authn::cache;
    tokio::time::timeout(LIMIT, async {
        let secret = b"0123456789abcdef0123456789abcdef";
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        // 10,000 keys, none with a kid: every one is a candidate for a kid-less token.
        let mut keys: Vec<String> = (0..10_000)
            .map(|i| {
                format!(
                    r#"{{"kty":"oct","k":"{}"}}"#,
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(format!("other-secret-{i:05}-padding-bytes"))
                )
            })
            .collect();
        keys.push(format!(
            r#"{{"kty":"oct","kid":"h","alg":"HS256","k":"{k}"}}"#
        ));
        let jwks = format!(r#"{{"keys":[{}]}}"#, keys.join(",")).replace('\'', "''");
        let metrics = Arc::new(Metrics::default());
        let reg = registry(&metrics);
        let iss = "https://issuer.example";
        let authn = compile(&format!("{{issuer: '{iss}', jwks: '{jwks}'}}"), &reg);
        let a = authn.for_target(None).unwrap();
        let sign = |kid: Option<&str>, claims: &serde_json::Value| {
            let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
            h.kid = kid.map(Into::into);
            jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).unwrap()
        };

        // Resident memory, printed for the record (other tests share the process: no bound).
        let rss = || {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
                })
                .unwrap_or_default()
        };
        println!("RSS before: {} kB", rss());
        // Large valid tokens: verified, never cached.
        for i in 0..1000 {
            let t = sign(
                Some("h"),
                &claims(iss, &format!("u{i}"), json!({"pad": "p".repeat(80_000)})),
            );
            assert!(check(&authn, &bearer(&t), None).await.unwrap().is_some());
        }
        assert_eq!(a.cached_tokens(), 0, "tokens over 4 KiB are not cached");
        println!("RSS after 1,000 distinct 80 KB tokens: {} kB", rss());

        // Many distinct small valid tokens: the cache stays within its entries and bytes.
        for i in 0..3000 {
            let t = sign(
                Some("h"),
                &claims(iss, &format!("u{i}"), json!({"pad": "p".repeat(2500)})),
            );
            assert!(check(&authn, &bearer(&t), None).await.unwrap().is_some());
            assert!(a.cached_bytes() <= cache::MAX_BYTES, "{}", a.cached_bytes());
            assert!(a.cached_tokens() <= cache::MAX_ENTRIES);
        }
        println!(
            "after 3,000 distinct 3.4 KB tokens: {} cached, ~{} bytes, RSS {} kB",
            a.cached_tokens(),
            a.cached_bytes(),
            rss()
        );

        // Forged kid-less tokens against 10,000 kid-less keys: each is checked against at
        // most MAX_KEYS_TRIED of them; sent again, it is refused from memory.
        let good = sign(None, &claims(iss, "alice", json!({})));
        assert!(
            check(&authn, &bearer(&good), None).await.is_ok(),
            "keys with a kid are tried first: the right key is not crowded out"
        );
        let forged: Vec<String> = (0..2000)
            .map(|i| forge(&good, &claims(iss, &format!("mallory{i}"), json!({}))))
            .collect();
        let started = std::time::Instant::now();
        for f in &forged {
            assert_eq!(
                check(&authn, &bearer(f), None).await,
                Err(AuthnError::BadSignature)
            );
        }
        println!(
            "2,000 distinct forged kid-less tokens, 10,000 keys: {:?}",
            started.elapsed()
        );
        assert!(a.refused_tokens() <= cache::MAX_REFUSED);
        let hits = metrics.jwt_refused_cache_hits.get();
        assert_eq!(
            check(&authn, &bearer(&forged[1999]), None).await,
            Err(AuthnError::BadSignature)
        );
        assert_eq!(
            metrics.jwt_refused_cache_hits.get(),
            hits + 1,
            "answered from memory"
        );
    })
    .await
    .unwrap();
}

/// Keys that cannot verify are reported when the rule is loaded: a warning each and the metric.
#[tokio::test]
async fn unusable_keys_are_reported_at_load() {
    use base64::Engine as _;
    let metrics = Arc::new(Metrics::default());
    let reg = registry(&metrics);
    let b = |n: usize| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![0xC5u8; n]);
    let jwks = format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"small","n":"{}","e":"AQAB"}},{{"kty":"EC","crv":"P-521","kid":"p521","x":"{}","y":"{}"}},{{"kty":"oct","use":"enc","k":"{}"}}]}}"#,
        b(128),
        b(66),
        b(66),
        b(32)
    );
    let _authn = compile(
        &format!("{{issuer: 'https://i.example', jwks: '{jwks}'}}"),
        &reg,
    );
    assert_eq!(metrics.jwks_keys_unusable.get(), 3);
    let problems = waypoint::authn::jwks::inline_problems(Some(&jwks));
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("RSA-1024"), "{problems:?}");
}
