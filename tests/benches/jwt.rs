//! JWT verification cost: a cache miss (full validation) against the raw signature check it
//! contains, a cache hit, the miss again with 100 issuers configured, and the worst an attacker
//! can send: distinct forged tokens without `kid` against 10,000 kid-less keys, and distinct
//! large valid tokens (never cached). Memory under the last two is reported by the
//! `work_and_memory_per_token_are_bounded` test in `tests/jwt.rs`.
//!
//! `cargo bench -p waypoint-tests --bench jwt`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_api_bindings::{ObjectKey, Store, WaypointIdentity};
use serde_json::json;
use waypoint::authn::jwks::{Alg, JwksOptions, JwksRegistry};
use waypoint::authn::{Authn, unix_now};
use waypoint_tests::jwt::{SigningKey, claims, forge, jwks};

/// `issuers` RequestAuthentications on the waypoint, each with its own issuer and `keys`
/// inline; tokens of the last one are checked.
fn authn(keys: &str, issuers: usize) -> Authn {
    let mut yaml = String::new();
    let keys = keys.replace('\'', "''");
    for i in 0..issuers {
        yaml.push_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: ra-{i}, namespace: bench}}\n\
             spec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  \
             jwtRules: [{{issuer: 'https://issuer-{i}.example', jwks: '{keys}'}}]\n---\n"
        ));
    }
    let mut store = Store::default();
    let errors = store.load_str(&yaml, None);
    assert!(errors.is_empty(), "{errors:?}");
    let reg = JwksRegistry::new(JwksOptions::default(), None, Default::default());
    let wp =
        WaypointIdentity::from_store(&store, ObjectKey::new("bench", "waypoint"), "istio-system");
    Authn::compile(&store, &wp, &reg)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for key in [SigningKey::rsa("k"), SigningKey::ec("k")] {
        let alg = format!("{:?}", key.alg);
        for issuers in [1, 100] {
            let a = authn(&jwks(&[&key]), issuers);
            let iss = format!("https://issuer-{}.example", issuers - 1);
            let token = key.sign(&claims(
                &iss,
                "alice",
                json!({"aud": "api", "scope": "read write"}),
            ));
            let auth = a.for_target(None).unwrap();
            let now = unix_now();
            assert!(rt.block_on(auth.verify_uncached(&token, &[0], now)).is_ok());
            c.bench_function(&format!("jwt/{alg}/miss/{issuers}_issuers"), |b| {
                b.iter(|| {
                    rt.block_on(auth.verify_uncached(black_box(&token), &[0], now))
                        .unwrap()
                })
            });
            if issuers == 1 {
                c.bench_function(&format!("jwt/{alg}/hit"), |b| {
                    b.iter(|| rt.block_on(auth.verify(black_box(&token), &[0])).unwrap())
                });
                // The signature check alone: the floor for a miss.
                let (message, signature) = token.rsplit_once('.').unwrap();
                let signature = base64::Engine::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    signature,
                )
                .unwrap();
                let keys = waypoint::authn::jwks::parse(jwks(&[&key]).as_bytes())
                    .unwrap()
                    .keys;
                let alg = Alg::from_name(&format!("{:?}", key.alg)).unwrap();
                c.bench_function(&format!("jwt/{alg}/raw_signature"), |b| {
                    b.iter(|| {
                        assert!(waypoint::authn::signature::verify(
                            alg,
                            &keys[0].material,
                            message.as_bytes(),
                            black_box(&signature),
                        ))
                    })
                });
            }
        }
    }

    // 10,000 RSA keys without kid, and forged tokens without kid, each one new: without the
    // cap on keys tried and the refusal cache, every request cost 10,000 RSA checks.
    let key = SigningKey::rsa("k");
    let mut many = Vec::new();
    for _ in 0..10_000 {
        let mut j = key.jwk.clone();
        if let Some(m) = j.as_object_mut() {
            m.remove("kid");
        }
        many.push(j);
    }
    let a = authn(&json!({ "keys": many }).to_string(), 1);
    let auth = a.for_target(None).unwrap();
    let good = key.sign(&claims("https://issuer-0.example", "alice", json!({})));
    let mut n = 0u64;
    c.bench_function("jwt/forged_kidless_distinct/10000_keys", |b| {
        b.iter(|| {
            n += 1;
            let f = forge(
                &good,
                &claims("https://issuer-0.example", &format!("m{n}"), json!({})),
            );
            let f = strip_kid(&f);
            assert!(rt.block_on(auth.verify(black_box(&f), &[0])).is_err());
        })
    });
    // Distinct 80 KB valid tokens: verified every time, never cached.
    let a = authn(&jwks(&[&key]), 1);
    let auth = a.for_target(None).unwrap();
    let big: Vec<String> = (0..64)
        .map(|i| {
            key.sign(&claims(
                "https://issuer-0.example",
                &format!("u{i}"),
                json!({"pad": "p".repeat(80_000)}),
            ))
        })
        .collect();
    let mut i = 0;
    c.bench_function("jwt/large_distinct_80KB", |b| {
        b.iter(|| {
            i = (i + 1) % big.len();
            assert!(rt.block_on(auth.verify(black_box(&big[i]), &[0])).is_ok());
        })
    });
    assert_eq!(auth.cached_tokens(), 0);
}

/// The token with its header replaced by one without `kid` (the signature no longer matches).
fn strip_kid(token: &str) -> String {
    let rest = token.split_once('.').map_or("", |(_, r)| r);
    let header = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        r#"{"alg":"RS256","typ":"JWT"}"#,
    );
    format!("{header}.{rest}")
}

criterion_group!(benches, bench);
criterion_main!(benches);
