//! Scale benchmark for the Kubernetes source: a fake API server holding 5,000 Services with
//! 50,000 endpoints (and their pods) and 10,000 AuthorizationPolicies, and the waypoint binary
//! watching it. Prints the time to first ready, the waypoint's RSS, and how long one endpoint
//! change and one policy change take to reach the data path (the snapshot version in /metrics,
//! polled every millisecond).
//!
//! `benches/kube_scale.sh` builds and runs it.
#![allow(clippy::print_stdout)] // a benchmark report is its output

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde_json::{Value, json};
use waypoint_tests::kube_api::FakeApiServer;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    waypoint_bin: PathBuf,
    #[arg(long, default_value_t = 5000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: usize,
    #[arg(long, default_value_t = 10_000)]
    policies: usize,
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// Endpoint and policy changes to time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
}

fn ip(n: usize) -> String {
    format!("10.{}.{}.{}", 64 + n / 65536 % 64, n / 256 % 256, n % 256)
}

fn ns(i: usize, namespaces: usize) -> String {
    format!("app-{}", i % namespaces)
}

fn pod(name: &str, ns: &str, app: &str, ip: &str) -> Value {
    // Shaped like a real pod: most of it is what the waypoint throws away.
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {"app": app, "pod-template-hash": "5d8f7c9b4"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-01T00:00:00Z", "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-5d8f7c9b4"), "uid": "x", "controller": true}],
        },
        "spec": {
            "serviceAccountName": app,
            "nodeName": "node-1",
            "containers": [{
                "name": "app", "image": "registry.example/app:1.2.3",
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "volumeMounts": [{"name": "token", "mountPath": "/var/run/secrets/tokens"}],
            }],
            "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "istio-ca"}}]}}],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.0.1",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn slice(svc: &str, ns: &str, first: usize, n: usize, round: usize) -> Value {
    let eps: Vec<Value> = (0..n)
        .map(|k| {
            let i = first + k;
            // A change moves the first endpoint to a new address.
            let addr = if round > 0 && k == 0 {
                ip(2_000_000 + round)
            } else {
                ip(i)
            };
            json!({"addresses": [addr], "conditions": {"ready": true},
                   "targetRef": {"kind": "Pod", "name": format!("{svc}-{k}"), "namespace": ns}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-abcde"), "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": eps,
    })
}

fn policy(i: usize, svc: &str, ns: &str, variant: usize) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": format!("p-{i}"), "namespace": ns},
        "spec": {
            "targetRefs": [{"kind": "Service", "group": "", "name": svc}],
            "action": if i.is_multiple_of(2) { "ALLOW" } else { "DENY" },
            "rules": [{
                "from": [{"source": {"principals": [format!("cluster.local/ns/{ns}/sa/client-{}", i % 7)]}}],
                "to": [{"operation": {"methods": ["GET", "POST"], "paths": [format!("/api/v{variant}/{i}/*")], "ports": ["8080"]}}],
            }],
        },
    })
}

async fn metric(addr: SocketAddr, name: &str) -> Option<i64> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let r = waypoint_tests::http1::request(&mut s, "GET", "/metrics", &[], "")
        .await
        .ok()??;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    matches!(waypoint_tests::http1::request(&mut s, "GET", "/healthz/ready", &[], "").await, Ok(Some(r)) if r.status == 200)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Waits until the snapshot version passes `after`; returns how long that took.
async fn applied(metrics: SocketAddr, after: i64, started: Instant) -> anyhow::Result<Duration> {
    loop {
        if metric(metrics, "waypoint_config_version")
            .await
            .unwrap_or(0)
            > after
        {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "change not applied in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = v.len();
    println!(
        "{name}: n={n} median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(v[n / 2]),
        ms(v[(n * 9 / 10).min(n - 1)]),
        ms(v[n - 1])
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("kube-scale-{}", std::process::id()));
    let api = FakeApiServer::start(&dir).await?;
    let t = Instant::now();
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}))?;
    // A waypoint (status.addresses, as istiod writes it) shared with the app namespaces.
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "bench"},
        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE",
                 "allowedRoutes": {"namespaces": {"from": "All"}}}]},
        "status": {"addresses": [{"type": "Hostname", "value": "waypoint.bench.svc.cluster.local"}]},
    }))?;
    for n in 0..args.namespaces {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns(n, args.namespaces), "labels": {
            "istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "bench"}}}))?;
    }
    let per = args.endpoints_per_service;
    for i in 0..args.services {
        let (svc, n) = (format!("svc-{i}"), ns(i, args.namespaces));
        api.apply(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": n},
            "spec": {"clusterIP": ip(1_000_000 + i), "selector": {"app": svc}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }))?;
        api.apply(slice(&svc, &n, i * per, per, 0))?;
        for k in 0..per {
            api.apply(pod(&format!("{svc}-{k}"), &n, &svc, &ip(i * per + k)))?;
        }
    }
    for i in 0..args.policies {
        let s = i % args.services;
        api.apply(policy(i, &format!("svc-{s}"), &ns(s, args.namespaces), 1))?;
    }
    println!(
        "fake API server: {} services, {} endpoints/pods, {} policies loaded in {:.1} s",
        args.services,
        args.services * per,
        args.policies,
        t.elapsed().as_secs_f64()
    );

    let ports = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = ports.local_addr()?.port();
    drop(ports);
    let addr = |off: u16| SocketAddr::from(([127, 0, 0, 1], base.wrapping_add(off)));
    let (readiness, metrics) = (addr(1), addr(2));
    let started = Instant::now();
    let mut child = std::process::Command::new(&args.waypoint_bin)
        .args([
            "run",
            "--kubernetes",
            "--gateway",
            "bench/waypoint",
            "--dev-ca",
        ])
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(["--hbone-addr", &addr(0).to_string()])
        .args(["--readiness-addr", &readiness.to_string()])
        .args(["--metrics-addr", &metrics.to_string()])
        .args(["--admin-addr", &addr(3).to_string()])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .context("starting the waypoint")?;
    let result = async {
        while !ready(readiness).await {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "not ready in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first_ready = started.elapsed();
        println!("time to first ready: {:.2} s", first_ready.as_secs_f64());
        // Let status writes (10,000 policies) settle before measuring memory and changes.
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let w = metric(metrics, "waypoint_status_writes_total")
                .await
                .unwrap_or(0);
            if w == last && w > 0 {
                break;
            }
            last = w;
        }
        println!("status writes at settle: {last}");
        println!("waypoint RSS after sync: {:.1} MiB", rss_mib(child.id()));

        let mut endpoint = Vec::new();
        for c in 0..args.changes {
            let i = (c * 37) % args.services;
            let before = metric(metrics, "waypoint_config_version")
                .await
                .unwrap_or(0);
            let t = Instant::now();
            api.apply(slice(
                &format!("svc-{i}"),
                &ns(i, args.namespaces),
                i * per,
                per,
                c + 1,
            ))?;
            endpoint.push(applied(metrics, before, t).await?);
        }
        summary("one endpoint change applied", endpoint);
        let mut policies = Vec::new();
        for c in 0..args.changes.min(10) {
            let i = (c * 101) % args.policies;
            let s = i % args.services;
            let before = metric(metrics, "waypoint_config_version")
                .await
                .unwrap_or(0);
            let t = Instant::now();
            api.apply(policy(
                i,
                &format!("svc-{s}"),
                &ns(s, args.namespaces),
                c + 2,
            ))?;
            policies.push(applied(metrics, before, t).await?);
        }
        summary("one policy change applied", policies);
        println!("waypoint RSS at the end: {:.1} MiB", rss_mib(child.id()));
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
