//! End-to-end: real sockets on loopback, real TLS with certificates made here, the waypoint
//! in-process between ztunnel-like peers that follow hbone.md.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::hbone::stream::H2Stream;
use waypoint_tests::http1;
use waypoint_tests::mesh::{
    GRPC_VIP, HTTPBIN_VIP, LEGACY_VIP, Mesh, MeshOptions, TCP_ECHO_VIP, UNKNOWN_VIP,
};
use waypoint_tests::pki::Pki;
use waypoint_tests::ztunnel::HboneClient;

/// Every test is bounded: a hang is a failure, not a stuck CI job.
const LIMIT: Duration = Duration::from_secs(60);

const FORWARDED: &str = "for=\"10.244.1.9:51000\";host=httpbin.ambient-demo.svc.cluster.local";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn tunnel(c: &HboneClient, authority: &str) -> H2Stream {
    let o = c
        .open(
            authority,
            &[("forwarded", FORWARDED), ("traceparent", TRACEPARENT)],
        )
        .await
        .unwrap();
    assert_eq!(o.status, 200, "CONNECT {authority}");
    o.stream.unwrap()
}

async fn get(s: &mut H2Stream, method: &str, path: &str) -> http1::Response {
    http1::request(s, method, path, &[], "")
        .await
        .unwrap()
        .expect("a response")
}

/// Allows `sleep` at the waypoint as a whole (service and workload traffic alike).
const ALLOW_SLEEP_AT_GATEWAY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}}]}]
"#;

/// Waits (bounded) for a condition that follows a response: Pingora counts a request in its
/// `logging` hook, after the response went out.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn opts(policies: &str) -> MeshOptions {
    MeshOptions {
        policies: policies.to_owned(),
        ..MeshOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_and_what_reaches_the_app() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(MeshOptions::default()).await.unwrap();
        let sleep = mesh.hbone(&mesh.sleep).await.unwrap();
        assert_eq!(
            sleep.server_id.as_deref(),
            Some("spiffe://cluster.local/ns/ambient-demo/sa/waypoint"),
            "the waypoint presents its own SPIFFE ID"
        );
        let mut s = tunnel(&sleep, HTTPBIN_VIP).await;
        let r = http1::request(&mut s, "GET", "/get", &[("traceparent", TRACEPARENT)], "")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.starts_with("httpbin-"), "{}", r.body);
        assert!(r.body.contains("GET /get"), "{}", r.body);
        assert!(
            r.body.contains("x-forwarded-for: 10.244.1.9\n"),
            "client IP from `forwarded`: {}",
            r.body
        );
        assert!(
            r.body.contains(&format!("traceparent: {TRACEPARENT}")),
            "{}",
            r.body
        );

        // L7 deny: 403 with Envoy's body, and the inner connection stays usable.
        let r = http1::request(&mut s, "POST", "/post", &[], "payload")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.body, "RBAC: access denied");
        let r = get(&mut s, "GET", "/again").await;
        assert_eq!(r.status, 200, "keep-alive survives a denial");

        // Another identity is not allowed at all.
        let curl = mesh.hbone(&mesh.curl).await.unwrap();
        let mut s = tunnel(&curl, HTTPBIN_VIP).await;
        assert_eq!(get(&mut s, "GET", "/get").await.status, 403);

        // The destination ztunnel saw the waypoint's identity (not the client's), the pod IP as
        // authority (else it answers 400) and the trace context.
        let shim = &mesh.inbound[0];
        let shim2 = &mesh.inbound[1];
        let peer = shim.stats.last_peer.lock().unwrap().clone().or(shim2
            .stats
            .last_peer
            .lock()
            .unwrap()
            .clone());
        assert_eq!(
            peer.as_deref(),
            Some("spiffe://cluster.local/ns/ambient-demo/sa/waypoint")
        );
        let tp = shim.stats.last_traceparent.lock().unwrap().clone().or(shim2
            .stats
            .last_traceparent
            .lock()
            .unwrap()
            .clone());
        assert_eq!(
            tp.as_deref(),
            Some(TRACEPARENT),
            "the upstream CONNECT carries the trace"
        );
        assert_eq!(
            shim.stats.bad_authority.load(Ordering::Relaxed)
                + shim2.stats.bad_authority.load(Ordering::Relaxed),
            0
        );

        let m = &mesh.running().metrics;
        eventually("2 allowed and 2 denied requests counted", || {
            m.requests(true, 200) == 2 && m.requests(false, 403) == 2
        })
        .await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_is_decided_at_l4_and_relayed_with_half_close() {
    tokio::time::timeout(LIMIT, async {
        // The examples default-deny the waypoint, and nothing allows tcp-echo.
        let mesh = Mesh::start(MeshOptions::default()).await.unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let mut s = tunnel(&c, TCP_ECHO_VIP).await;
        let _ = s.write_all(b"hello").await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        assert!(
            buf.is_empty(),
            "a denied TCP connection is closed without a byte"
        );
        assert_eq!(mesh.running().metrics.tcp_denied.get(), 1);

        mesh.set_policies(ALLOW_SLEEP_AT_GATEWAY).await.unwrap();
        let mut s = tunnel(&c, TCP_ECHO_VIP).await;
        s.write_all(b"hello through the mesh").await.unwrap();
        s.shutdown().await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hello through the mesh", "echo after our half-close");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_and_workload_addressing_and_plain_tcp_endpoints() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts(ALLOW_SLEEP_AT_GATEWAY)).await.unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        // Service VIP: balanced over both pods.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let mut s = tunnel(&c, HTTPBIN_VIP).await;
            let r = get(&mut s, "GET", "/").await;
            assert_eq!(r.status, 200);
            seen.insert(r.body.split(' ').next().unwrap().to_owned());
        }
        assert_eq!(
            seen.len(),
            2,
            "round-robin reaches both endpoints: {seen:?}"
        );
        // Pod IP: that pod only, on the port asked for.
        let pod2 = format!("{}:8080", mesh.httpbin_pods[1]);
        for _ in 0..3 {
            let mut s = tunnel(&c, &pod2).await;
            let r = get(&mut s, "GET", "/").await;
            assert!(r.body.starts_with("httpbin-2 "), "{}", r.body);
        }
        // A pod outside the mesh is reached over plain TCP.
        let mut s = tunnel(&c, LEGACY_VIP).await;
        let r = get(&mut s, "GET", "/").await;
        assert_eq!(r.status, 200);
        assert!(r.body.starts_with("legacy "), "{}", r.body);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_map_to_documented_statuses() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts(ALLOW_SLEEP_AT_GATEWAY)).await.unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();

        // Unknown destination: the CONNECT itself is refused.
        let o = c
            .open(UNKNOWN_VIP, &[("forwarded", FORWARDED)])
            .await
            .unwrap();
        assert_eq!(o.status, 503);
        // A hostname authority is not HBONE.
        let o = c.open("httpbin.example:80", &[]).await.unwrap();
        assert_eq!(o.status, 400);

        // Upstream refused: nothing listens on the pod's port 9999, behind its ztunnel (the
        // shim answers 503) and without one (TCP refused). Both are 503 to the client.
        for pod in [mesh.httpbin_pods[0], mesh.legacy_pod] {
            let mut s = tunnel(&c, &format!("{pod}:9999")).await;
            let r = http1::request(&mut s, "GET", "/", &[], "").await.unwrap();
            assert_eq!(r.map(|r| r.status), Some(503), "pod {pod}");
        }
        assert!(mesh.running().metrics.upstream_connect_failures.get() >= 2);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_upstream_identity_is_refused() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts(ALLOW_SLEEP_AT_GATEWAY)).await.unwrap();
        // The cluster now says httpbin runs as `impostor`; its ztunnel still presents `httpbin`.
        let cluster = mesh.config_dir().join("cluster.yaml");
        let text = std::fs::read_to_string(&cluster).unwrap();
        let before = mesh.running().config.load().version;
        std::fs::write(
            &cluster,
            text.replace(
                "serviceAccountName: httpbin",
                "serviceAccountName: impostor",
            ),
        )
        .unwrap();
        mesh.wait_for_config(|v| v > before).await.unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let mut s = tunnel(&c, HTTPBIN_VIP).await;
        let r = http1::request(&mut s, "GET", "/", &[], "").await.unwrap();
        assert_eq!(r.map(|r| r.status), Some(503));
        assert!(mesh.running().metrics.upstream_identity_mismatch.get() >= 1);
        let streams: u64 = mesh
            .inbound
            .iter()
            .map(|i| i.stats.streams.load(Ordering::Relaxed))
            .sum();
        assert_eq!(
            streams, 0,
            "no CONNECT is sent to a peer with the wrong identity"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_client_certificate_is_rejected() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(MeshOptions::default()).await.unwrap();
        let rogue = Pki::new(&mesh.dir.join("rogue"), "rogue CA").unwrap();
        let cert = rogue
            .issue("spiffe://cluster.local/ns/ambient-demo/sa/sleep", "sleep")
            .unwrap();
        // Trust the waypoint's root, present a certificate from another CA.
        let config = waypoint_tests::ztunnel::client_config(&mesh.pki, &cert).unwrap();
        // TLS 1.3 reports the client certificate's rejection on the first read.
        let outcome = async {
            let c = HboneClient::connect(mesh.waypoint_addr(), config).await?;
            c.open(HTTPBIN_VIP, &[]).await
        }
        .await;
        assert!(outcome.is_err(), "{outcome:?}");
        let m = &mesh.running().metrics;
        eventually("the failed handshake is counted", || {
            m.hbone_handshake_failures.get() == 1
        })
        .await;
        // The listener is unharmed.
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let mut s = tunnel(&c, HTTPBIN_VIP).await;
        assert_eq!(get(&mut s, "GET", "/get").await.status, 200);
    })
    .await
    .unwrap();
}

/// HPACK "literal without indexing, new name" for one header.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    out.push(u8::try_from(name.len()).unwrap());
    out.extend_from_slice(name.as_bytes());
    out.push(u8::try_from(value.len()).unwrap());
    out.extend_from_slice(value.as_bytes());
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_path_is_a_malformed_request() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts(ALLOW_SLEEP_AT_GATEWAY)).await.unwrap();
        // h2 clients refuse to send this, so the frames are written by hand.
        let tcp = tokio::net::TcpStream::connect(mesh.waypoint_addr())
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(mesh.client_config(&mesh.sleep))
            .connect(
                rustls::pki_types::ServerName::IpAddress(mesh.waypoint_addr().ip().into()),
                tcp,
            )
            .await
            .unwrap();
        let (mut rd, mut wr) = tokio::io::split(tls);
        let mut block = Vec::new();
        literal(&mut block, ":method", "CONNECT");
        literal(&mut block, ":authority", HTTPBIN_VIP);
        literal(&mut block, ":path", "/");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(4, 0, 0, &[])); // SETTINGS
        out.extend(frame(1, 0x4, 1, &block)); // HEADERS, END_HEADERS
        wr.write_all(&out).await.unwrap();
        // Read frames until stream 1 is answered.
        let mut buf = Vec::new();
        let answer = loop {
            let mut chunk = [0u8; 4096];
            let n = rd.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before stream 1 was answered");
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            let mut found = None;
            while buf.len() >= at + 9 {
                let len = usize::from(buf[at]) << 16
                    | usize::from(buf[at + 1]) << 8
                    | usize::from(buf[at + 2]);
                if buf.len() < at + 9 + len {
                    break;
                }
                let kind = buf[at + 3];
                let stream =
                    u32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
                if stream == 1 && (kind == 3 || kind == 1) {
                    found = Some((kind, buf[at + 9..at + 9 + len].to_vec()));
                }
                at += 9 + len;
            }
            if let Some(f) = found {
                break f;
            }
        };
        // RST_STREAM with PROTOCOL_ERROR (RFC 9113 §8.1.1), never a tunnel.
        assert_eq!(
            answer.0, 3,
            "expected RST_STREAM, got frame type {}",
            answer.0
        );
        assert_eq!(answer.1, 1u32.to_be_bytes(), "PROTOCOL_ERROR");
        // And the waypoint still serves well-formed CONNECTs.
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let mut s = tunnel(&c, HTTPBIN_VIP).await;
        assert_eq!(get(&mut s, "GET", "/").await.status, 200);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_on_one_connection() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts(ALLOW_SLEEP_AT_GATEWAY)).await.unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let mut tunnels = Vec::new();
        // Open all 1,000 before any request, so they are concurrently open.
        let opens: Vec<_> = (0..1000)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { tunnel(&c, HTTPBIN_VIP).await })
            })
            .collect();
        for o in opens {
            tunnels.push(o.await.unwrap());
        }
        let tasks: Vec<_> = tunnels
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                tokio::spawn(async move {
                    let r = http1::request(&mut s, "GET", &format!("/{i}"), &[], "")
                        .await
                        .unwrap()
                        .unwrap();
                    (r.status, r.body.contains(&format!("GET /{i}\n")))
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), (200, true));
        }
        let m = &mesh.running().metrics;
        eventually("1000 requests counted", || m.requests(true, 200) == 1000).await;
        // Upstream: many CONNECT streams share few connections (<= 100 streams each).
        let conns: u64 = mesh
            .inbound
            .iter()
            .map(|i| i.stats.connections.load(Ordering::Relaxed))
            .sum();
        assert!(
            conns <= 30,
            "{conns} upstream HBONE connections for 1000 streams"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_under_load_fails_no_request() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Arc::new(Mesh::start(opts(ALLOW_SLEEP_AT_GATEWAY)).await.unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (mesh, stop, ok) = (mesh.clone(), stop.clone(), ok.clone());
            workers.push(tokio::spawn(async move {
                let c = mesh.hbone(&mesh.sleep).await.unwrap();
                let mut s = tunnel(&c, HTTPBIN_VIP).await;
                while !stop.load(Ordering::Relaxed) {
                    let r = get(&mut s, "GET", "/get").await;
                    assert_eq!(r.status, 200, "a request failed during a reload");
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Alternate between two configs that both allow sleep, and one invalid config that must
        // be rejected while the last good one keeps serving.
        let extra = format!("{ALLOW_SLEEP_AT_GATEWAY}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-delete, namespace: ambient-demo}}\nspec:\n  action: DENY\n  targetRefs: [{{kind: Service, group: \"\", name: httpbin}}]\n  rules: [{{to: [{{operation: {{methods: [DELETE]}}}}]}}]\n");
        for i in 0..6 {
            let y = if i % 2 == 0 { extra.as_str() } else { ALLOW_SLEEP_AT_GATEWAY };
            mesh.set_policies(y).await.unwrap();
        }
        let version = mesh.running().config.load().version;
        let path = mesh.config_dir().join("policies.yaml");
        std::fs::write(&path, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: ambient-demo}\nspec:\n  action: ALLOW\n  rules: [{from: [{source: {principals: [\"\"]}}]}]\n  targetRefs: [{kind: Service, group: \"\", name: httpbin}]\n  bogusField: 1\n").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while mesh.running().metrics.config_reload_failures.get() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "invalid config not noticed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(mesh.running().config.load().version, version, "the last good config keeps serving");
        let before = ok.load(Ordering::Relaxed);
        while ok.load(Ordering::Relaxed) < before + 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
        assert!(ok.load(Ordering::Relaxed) > 20);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    tokio::time::timeout(LIMIT, async {
        let mut mesh = Mesh::start(opts(ALLOW_SLEEP_AT_GATEWAY)).await.unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let mut s = tunnel(&c, HTTPBIN_VIP).await;
        let in_flight = tokio::spawn(async move { get(&mut s, "GET", "/delay/800").await });
        // Let the request reach the app before shutting down.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while mesh
            .inbound
            .iter()
            .map(|i| i.stats.streams.load(Ordering::Relaxed))
            .sum::<u64>()
            == 0
        {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // PINGs are answered while a stream is busy (ztunnel drops a connection after 20 s).
        let rtt = tokio::time::timeout(Duration::from_secs(2), c.ping())
            .await
            .unwrap()
            .unwrap();
        assert!(rtt < Duration::from_secs(2));
        let addr = mesh.waypoint_addr();
        mesh.shutdown().await;
        let r = in_flight.await.unwrap();
        assert_eq!(
            r.status, 200,
            "the in-flight request finished during the drain"
        );
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "no new connections after shutdown"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(MeshOptions::default()).await.unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let mut s = tunnel(&c, HTTPBIN_VIP).await;
        assert_eq!(get(&mut s, "GET", "/").await.status, 200);
        let m = &mesh.running().metrics;
        eventually("the request is counted", || m.requests(true, 200) == 1).await;
        let fetch = |addr, path: &'static str| async move {
            let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
            http1::request(&mut t, "GET", path, &[], "")
                .await
                .unwrap()
                .unwrap()
        };
        let w = mesh.running();
        let r = fetch(w.readiness_addr, "/healthz/ready").await;
        assert_eq!(r.status, 200);
        assert_eq!(
            fetch(w.readiness_addr, "/config_dump").await.status,
            404,
            "no dump on the readiness port"
        );
        let r = fetch(w.metrics_addr, "/metrics").await;
        assert!(
            r.body
                .contains("waypoint_requests_total{decision=\"allow\",code=\"200\"} 1"),
            "{}",
            r.body
        );
        assert!(
            r.body.contains("waypoint_hbone_connections 1"),
            "{}",
            r.body
        );
        let r = fetch(w.admin_addr, "/config_dump").await;
        let dump: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(dump["waypoint"], "ambient-demo/waypoint");
        assert_eq!(
            dump["destinations"]["services"].as_array().unwrap().len(),
            4
        );
        assert_eq!(dump["policies"].as_array().unwrap().len(), 4);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_files_are_reloaded_and_bad_ones_ignored() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts(ALLOW_SLEEP_AT_GATEWAY)).await.unwrap();
        let old = mesh.hbone(&mesh.sleep).await.unwrap();
        let mut old_tunnel = tunnel(&old, HTTPBIN_VIP).await;
        // Rotate: same CA, new key and certificate (a new SPIFFE ID makes the change visible).
        let rotated = "spiffe://cluster.local/ns/ambient-demo/sa/waypoint-rotated";
        let fresh = mesh.pki.issue(rotated, "fresh").unwrap();
        std::fs::copy(&fresh.key_path, &mesh.waypoint_cert.key_path).unwrap();
        std::fs::copy(&fresh.chain_path, &mesh.waypoint_cert.chain_path).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = mesh.hbone(&mesh.sleep).await.unwrap();
            if c.server_id.as_deref() == Some(rotated) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "new identity not picked up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The connection made before the rotation keeps working.
        assert_eq!(get(&mut old_tunnel, "GET", "/").await.status, 200);
        // A broken key is rejected; the current identity stays.
        std::fs::write(&mesh.waypoint_cert.key_path, "not a key").unwrap();
        let identity = &mesh.running().identity;
        let before = identity.current().unwrap();
        identity.reload();
        assert!(
            Arc::ptr_eq(&before, &identity.current().unwrap()),
            "a failed reload keeps the identity"
        );
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        assert_eq!(c.server_id.as_deref(), Some(rotated));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_inside_the_tunnel_is_decided_per_request() {
    tokio::time::timeout(LIMIT, async {
        // sleep may call anything but /admin.*; everything else is denied.
        let policies = format!("{ALLOW_SLEEP_AT_GATEWAY}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: ambient-demo}}\nspec:\n  action: DENY\n  targetRefs: [{{kind: Service, group: \"\", name: grpc}}]\n  rules: [{{to: [{{operation: {{paths: [\"/admin.*\"]}}}}]}}]\n");
        let mesh = Mesh::start(opts(&policies)).await.unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let s = tunnel(&c, GRPC_VIP).await;
        // HTTP/2 with prior knowledge over the tunnel, as a gRPC client sends it.
        let (send, conn) = h2::client::handshake(s).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let call = |path: &'static str| {
            let send = send.clone();
            async move {
                let mut send = send.ready().await.unwrap();
                let req = http::Request::builder()
                    .method("POST")
                    .uri(format!("http://grpc{path}"))
                    .body(())
                    .unwrap();
                let (resp, _) = send.send_request(req, true).unwrap();
                let resp = resp.await.unwrap();
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                let mut text = Vec::new();
                while let Some(chunk) = body.data().await {
                    text.extend_from_slice(&chunk.unwrap());
                }
                (status, String::from_utf8_lossy(&text).into_owned())
            }
        };
        let (status, body) = call("/echo.Echo/Say").await;
        assert_eq!(status, 200);
        assert_eq!(body, "grpc-1 h2c POST /echo.Echo/Say\n");
        let (status, body) = call("/admin.Admin/Shutdown").await;
        assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
        // The connection carries on after a denial.
        assert_eq!(call("/echo.Echo/Again").await.0, 200);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_skipped() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts(ALLOW_SLEEP_AT_GATEWAY)).await.unwrap();
        // A third httpbin pod whose node is gone: nothing listens on its IP.
        let cluster = mesh.config_dir().join("cluster.yaml");
        let dead = mesh.block.ip(13);
        let mut text = std::fs::read_to_string(&cluster).unwrap();
        text.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: httpbin-3, namespace: ambient-demo, labels: {{app: httpbin}}}}\nspec: {{serviceAccountName: httpbin, containers: [{{name: app}}]}}\nstatus: {{podIP: \"{dead}\"}}\n"
        ));
        let before = mesh.running().config.load().version;
        std::fs::write(&cluster, text).unwrap();
        mesh.wait_for_config(|v| v > before).await.unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        // Fresh tunnels, so each request picks an endpoint anew; round-robin reaches the dead
        // one within a few requests (the counter is shared with other tests, hence the bound).
        let m = &mesh.running().metrics;
        let mut n = 0;
        while m.upstream_connect_failures.get() == 0 {
            assert!(n < 30, "the dead endpoint was never tried");
            n += 1;
            let mut s = tunnel(&c, HTTPBIN_VIP).await;
            let r = get(&mut s, "GET", "/").await;
            assert_eq!(r.status, 200, "the dead endpoint is skipped: {}", r.body);
        }
        for _ in 0..3 {
            let mut s = tunnel(&c, HTTPBIN_VIP).await;
            assert_eq!(get(&mut s, "GET", "/").await.status, 200);
        }
    })
    .await
    .unwrap();
}
