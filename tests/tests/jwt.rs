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
use waypoint_tests::jwt::{JwksServer, SigningKey, claims, now};
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
    let Some(found) = a.find(headers, query)? else {
        return Ok(None);
    };
    Ok(Some(a.verify(&found).await?.principal.clone()))
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
            let found = a.find(&headers, None).unwrap().unwrap();
            let v = a.verify(&found).await.unwrap_or_else(|e| panic!("{:?}: {e}", key.alg));
            assert_eq!(v.principal, format!("{iss}/alice"));
            // scope is space-delimited by default: a list for `request.auth.claims[scope]`.
            assert_eq!(
                v.claims.lookup(&["scope".into()]),
                Some(&policy_engine::Claim::List(vec![
                    policy_engine::Claim::String("read".into()),
                    policy_engine::Claim::String("write".into())
                ]))
            );
            a.apply(&found, &v, &mut headers);
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
        // The default locations are the bearer header and access_token; both at once is refused.
        let q = format!("access_token={ok}");
        assert!(
            check(&authn, &HeaderMap::new(), Some(&q))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            check(&authn, &bearer(&ok), Some(&q)).await,
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
