//! Compile and worst-case evaluation (nothing matches) at 10 / 1,000 / 10,000 rules, and the
//! memory 10,000 compiled rules hold (RSS delta, printed once).
//!
//! The rules look like a large mesh's: each names a caller, a path (exact, prefix or template), a
//! method set and sometimes a port or namespace; the request comes from a caller no rule names.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use policy_engine::{
    Action, AuthorizerBuilder, Binding, HttpRequest, NoHeaders, OperationSpec, PeerIdentity,
    PolicySpec, Request, RuleSpec, SourceSpec,
};

fn policies(rules: usize) -> Vec<PolicySpec> {
    // 10 rules per policy, like a team's policy file.
    (0..rules.div_ceil(10))
        .map(|p| PolicySpec {
            namespace: format!("ns-{}", p % 50),
            name: format!("policy-{p}"),
            action: Some(if p % 4 == 3 {
                Action::Deny
            } else {
                Action::Allow
            }),
            rules: Some(
                (0..10.min(rules - p * 10))
                    .map(|r| {
                        let i = p * 10 + r;
                        let path = match i % 3 {
                            0 => format!("/api/v{}/items-{i}", i % 7),
                            1 => format!("/api/v{}/orders-{i}/*", i % 7),
                            _ => format!("/api/v{}/users-{i}/{{*}}/profile", i % 7),
                        };
                        let source = if i % 5 == 0 {
                            SourceSpec {
                                namespaces: vec![format!("team-{i}")],
                                ..Default::default()
                            }
                        } else {
                            SourceSpec {
                                principals: vec![format!("cluster.local/ns/team-{i}/sa/svc-{i}")],
                                ..Default::default()
                            }
                        };
                        RuleSpec {
                            from: Some(vec![Some(source)]),
                            to: Some(vec![Some(OperationSpec {
                                paths: vec![path],
                                methods: vec!["GET".into(), "POST".into()],
                                ports: if i % 2 == 0 {
                                    vec!["8080".into()]
                                } else {
                                    vec![]
                                },
                                ..Default::default()
                            })]),
                            when: vec![],
                        }
                    })
                    .collect(),
            ),
            ..Default::default()
        })
        .collect()
}

fn build(policies: &[PolicySpec]) -> policy_engine::Authorizer {
    let mut b = AuthorizerBuilder::new();
    for p in policies {
        b.add(p.clone(), Binding::Waypoint);
    }
    b.build()
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn bench(c: &mut Criterion) {
    // Measured first, before the benchmarks leave freed memory for the allocator to reuse.
    let specs = policies(10_000);
    let before = rss_kib();
    let auth = build(&specs);
    let after = rss_kib();
    if let (Some(a), Some(b)) = (before, after) {
        eprintln!(
            "memory: 10,000 rules ({} compiled, both sides) hold {:.1} MiB (RSS delta)",
            auth.compiled_rules(),
            (b.saturating_sub(a)) as f64 / 1024.0
        );
    }
    black_box(auth);
    let peer = PeerIdentity::new("cluster.local/ns/outsider/sa/nobody");
    let mut g = c.benchmark_group("evaluate_worst_case");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for n in [10usize, 1_000, 10_000] {
        let specs = policies(n);
        let auth = build(&specs);
        assert_eq!(
            auth.unindexed_rules(),
            0,
            "every bench rule should be indexed"
        );
        let req = Request {
            peer: Some(&peer),
            source_ip: "10.244.9.9".parse().ok(),
            remote_ip: None,
            destination_ip: "10.96.0.10".parse().ok(),
            destination_port: Some(8080),
            sni: None,
            http: Some(HttpRequest {
                method: "GET",
                host: "orders.shop.svc.cluster.local",
                path: "/api/v3/orders-999999/42?verbose=1",
                headers: &NoHeaders,
            }),
            jwt: None,
        };
        let d = auth.evaluate(&req, None);
        assert!(
            !d.allowed && d.matched.is_none(),
            "worst case must match nothing: {d}"
        );
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(auth.evaluate(black_box(&req), None).allowed))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("compile");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    for n in [10usize, 1_000, 10_000] {
        let specs = policies(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &specs, |b, s| {
            b.iter(|| black_box(build(s)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
