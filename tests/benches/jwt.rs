//! JWT verification cost: a cache miss (full validation) against the raw signature check it
//! contains, a cache hit, and the miss again with 100 issuers configured.
//!
//! `cargo bench -p waypoint-tests --bench jwt`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_api_bindings::{ObjectKey, Store, WaypointIdentity};
use http::HeaderMap;
use serde_json::json;
use waypoint::authn::jwks::{JwksOptions, JwksRegistry};
use waypoint::authn::{Authn, unix_now};
use waypoint_tests::jwt::{SigningKey, claims, jwks};

/// `issuers` RequestAuthentications on the waypoint, each with its own issuer and inline keys;
/// `key` signs for the last one.
fn authn(key: &SigningKey, issuers: usize) -> Authn {
    let mut yaml = String::new();
    let keys = jwks(&[key]).replace('\'', "''");
    for i in 0..issuers {
        yaml.push_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: ra-{i}, namespace: bench}}\n\
             spec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  \
             jwtRules: [{{issuer: 'https://issuer-{i}.example', audiences: [api], jwks: '{keys}'}}]\n---\n"
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
            let a = authn(&key, issuers);
            let iss = format!("https://issuer-{}.example", issuers - 1);
            let token = key.sign(&claims(
                &iss,
                "alice",
                json!({"aud": "api", "scope": "read write"}),
            ));
            let mut headers = HeaderMap::new();
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            let auth = a.for_target(None).unwrap();
            let found = auth.find(&headers, None).unwrap().unwrap();
            let now = unix_now();
            assert!(rt.block_on(auth.verify_uncached(&found, now)).is_ok());
            c.bench_function(&format!("jwt/{alg}/miss/{issuers}_issuers"), |b| {
                b.iter(|| {
                    rt.block_on(auth.verify_uncached(black_box(&found), now))
                        .unwrap()
                })
            });
            if issuers == 1 {
                c.bench_function(&format!("jwt/{alg}/hit"), |b| {
                    b.iter(|| rt.block_on(auth.verify(black_box(&found))).unwrap())
                });
                // The signature check alone: the floor for a miss.
                let (message, signature) = token.rsplit_once('.').unwrap();
                let keys = waypoint::authn::jwks::parse(jwks(&[&key]).as_bytes())
                    .unwrap()
                    .0;
                c.bench_function(&format!("jwt/{alg}/raw_signature"), |b| {
                    b.iter(|| {
                        assert!(waypoint::authn::signature::verify(
                            key.alg,
                            &keys[0].key,
                            message.as_bytes(),
                            black_box(signature),
                        ))
                    })
                });
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
