//! A hostile mesh peer: a client with a valid (or almost valid) mesh certificate speaking raw
//! HBONE to the waypoint on loopback. Each probe is what a compromised workload could send; each
//! test pins the answer: refused, reset, or timed out, and the waypoint still serving others.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use waypoint::settings::Settings;
use waypoint_tests::http1;
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions, TCP_ECHO_VIP};
use waypoint_tests::pki::WorkloadCert;
use waypoint_tests::ztunnel::HboneClient;

/// Every test is bounded: a hang is a failure, not a stuck CI job.
const LIMIT: Duration = Duration::from_secs(60);
/// The short timeouts the tests run with, so "held forever" is told from "timed out" quickly.
const SHORT: Duration = Duration::from_millis(600);

/// Short timeouts and the admin listeners on their fixed ports (each mesh has its own loopback
/// block, so 15000/15020/15021 are free on the waypoint's IP).
fn short_timeouts(run: &mut Settings) {
    let ip = run.hbone_addr.ip();
    run.readiness_addr = SocketAddr::new(ip, 15021);
    run.metrics_addr = SocketAddr::new(ip, 15020);
    run.admin_addr = SocketAddr::new(ip, 15000);
    let t = &mut run.server.timeouts;
    t.tls_handshake = SHORT;
    t.h2_preface = SHORT;
    t.connection_idle = SHORT * 2;
    t.first_byte = SHORT;
    t.stream_idle = SHORT * 2;
    t.request_headers = SHORT;
}

fn opts() -> MeshOptions {
    MeshOptions {
        tune: Some(short_timeouts),
        ..MeshOptions::default()
    }
}

/// Waits (bounded) for a condition with no other signal (a counter set after a response).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/2 peer: frames written by hand, so it can send what h2 clients refuse to.

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    },
    /// The waypoint closed the connection.
    Closed,
    /// Nothing within the wait.
    Silent,
}

struct RawPeer {
    rd: ReadHalf<TlsStream<TcpStream>>,
    wr: WriteHalf<TlsStream<TcpStream>>,
    buf: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | u8::try_from(v).unwrap());
        return;
    }
    out.push(first | u8::try_from(max).unwrap());
    v -= max;
    while v >= 128 {
        out.push(u8::try_from(v % 128).unwrap() | 0x80);
        v /= 128;
    }
    out.push(u8::try_from(v).unwrap());
}

/// HPACK "literal without indexing, new name", any bytes as the value.
fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

fn connect_block(authority: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, ":method", b"CONNECT");
    literal(&mut block, ":authority", authority.as_bytes());
    for (k, v) in extra {
        literal(&mut block, k, v);
    }
    block
}

impl RawPeer {
    /// TLS only: no HTTP/2 preface yet.
    async fn tls(mesh: &Mesh, who: &WorkloadCert) -> anyhow::Result<RawPeer> {
        let tcp = TcpStream::connect(mesh.waypoint_addr()).await?;
        let tls = tokio_rustls::TlsConnector::from(mesh.client_config(who))
            .connect(
                rustls::pki_types::ServerName::IpAddress(mesh.waypoint_addr().ip().into()),
                tcp,
            )
            .await?;
        let (rd, wr) = tokio::io::split(tls);
        Ok(RawPeer {
            rd,
            wr,
            buf: Vec::new(),
        })
    }

    /// TLS, the preface and our SETTINGS (`settings` as (id, value) pairs).
    async fn h2(mesh: &Mesh, who: &WorkloadCert, settings: &[(u16, u32)]) -> RawPeer {
        let mut p = RawPeer::tls(mesh, who).await.unwrap();
        let mut payload = Vec::new();
        for (id, v) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&v.to_be_bytes());
        }
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &payload));
        p.send(&out).await;
        p
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The waypoint may have closed already; what it answered is what the test reads.
        let _ = self.wr.write_all(bytes).await;
        let _ = self.wr.flush().await;
    }

    /// The next frame, or `Closed`/`Silent`.
    async fn next(&mut self, within: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Event::Frame {
                        kind: f[3],
                        flags: f[4],
                        stream: u32::from_be_bytes(f[5..9].try_into().unwrap()) & 0x7fff_ffff,
                        payload: f[9..].to_vec(),
                    };
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.rd.read(&mut chunk)).await {
                Err(_) => return Event::Silent,
                Ok(Ok(0) | Err(_)) => return Event::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The connection's end (GOAWAY or close) or silence, skipping every other frame.
    async fn end(&mut self, within: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Event::Frame { kind, .. } if kind != GOAWAY => {}
                e => return e,
            }
        }
    }

    /// The first answer that concerns `stream` (HEADERS or RST_STREAM), or the connection's end
    /// (GOAWAY, close), skipping SETTINGS, PING, WINDOW_UPDATE.
    async fn answer(&mut self, stream: u32, within: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Event::Frame {
                    kind, stream: s, ..
                } if !(kind == GOAWAY
                    || (s == stream && (kind == HEADERS || kind == RST_STREAM))) => {}
                e => return e,
            }
        }
    }
}

/// A short description of an answer for assertion messages and the probe record.
fn describe(e: &Event) -> String {
    match e {
        Event::Frame {
            kind: HEADERS,
            payload,
            ..
        } => format!("HEADERS :status {:?}", status_of(payload)),
        Event::Frame {
            kind: RST_STREAM,
            payload,
            ..
        } => format!(
            "RST_STREAM {:?}",
            payload
                .get(..4)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        ),
        Event::Frame {
            kind: GOAWAY,
            payload,
            ..
        } => format!(
            "GOAWAY {:?}",
            payload
                .get(4..8)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        ),
        Event::Frame { kind, .. } => format!("frame type {kind}"),
        Event::Closed => "closed".into(),
        Event::Silent => "silent".into(),
    }
}

/// `:status` of a response header block as h2 encodes it: indexed (static table 8-14) or a
/// literal with the indexed name 8.
fn status_of(block: &[u8]) -> Option<u16> {
    match block.first()? {
        b @ 0x88..=0x8e => Some([200, 204, 206, 304, 400, 404, 500][usize::from(b - 0x88)]),
        0x08 | 0x48 | 0x18 => {
            let len = usize::from(*block.get(1)? & 0x7f);
            std::str::from_utf8(block.get(2..2 + len)?)
                .ok()?
                .parse()
                .ok()
        }
        _ => None,
    }
}

fn is_status(e: &Event, status: u16) -> bool {
    matches!(e, Event::Frame { kind: HEADERS, payload, .. } if status_of(payload) == Some(status))
}

fn is_rst(e: &Event, code: u32) -> bool {
    matches!(e, Event::Frame { kind: RST_STREAM, payload, .. } if payload[..] == code.to_be_bytes())
}

fn is_goaway(e: &Event) -> bool {
    matches!(e, Event::Frame { kind: GOAWAY, .. })
}

/// A well-formed tunnel still works: the probe hurt no one else.
async fn still_serves(mesh: &Mesh) {
    let c = mesh.hbone(&mesh.sleep).await.unwrap();
    let o = c.open(HTTPBIN_VIP, &[]).await.unwrap();
    assert_eq!(o.status, 200);
    let mut s = o.stream.unwrap();
    let r = http1::request(&mut s, "GET", "/get", &[], "")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------------------------
// 1. The waypoint is never its own destination.

/// A ServiceEntry whose endpoint is the waypoint's own IP, in the mesh: reached over HBONE on
/// 15008, i.e. our own listener. Nothing in the config says that IP is the waypoint's.
fn loop_config(mesh: &Mesh) -> String {
    let wp = mesh.waypoint_addr().ip();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: loop, namespace: ambient-demo}}
spec:
  hosts: [loop.example]
  addresses: [10.96.7.7]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: "{wp}", labels: {{istio.io/dataplane-mode: ambient}}, serviceAccount: waypoint}}]
"#
    )
}

/// Config that points destinations back at the waypoint: a ServiceEntry reaching its readiness
/// port over plain TCP, one reaching a reserved port, the waypoint's own pod (Istio's managed
/// label) and its own Service.
fn self_pointing_config(mesh: &Mesh) -> String {
    let wp = mesh.waypoint_addr().ip();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: self-tcp, namespace: ambient-demo}}
spec:
  hosts: [self-tcp.example]
  addresses: [10.96.7.8]
  ports: [{{number: 9999, name: tcp, protocol: TCP, targetPort: 15021}}]
  resolution: STATIC
  endpoints: [{{address: "{wp}"}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reserved-tcp, namespace: ambient-demo}}
spec:
  hosts: [reserved.example]
  addresses: [10.96.7.9]
  ports: [{{number: 9999, name: tcp, protocol: TCP, targetPort: 15001}}]
  resolution: STATIC
  endpoints: [{{address: "{legacy}"}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-5d8f7c
  namespace: ambient-demo
  labels: {{gateway.istio.io/managed: istio.io-mesh-controller, gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}}
spec: {{serviceAccountName: waypoint, containers: [{{name: istio-proxy}}]}}
status: {{podIP: "{wp}"}}
---
apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: ambient-demo
  labels: {{gateway.istio.io/managed: istio.io-mesh-controller, gateway.networking.k8s.io/gateway-name: waypoint}}
spec:
  clusterIP: 10.96.8.8
  selector: {{gateway.networking.k8s.io/gateway-name: waypoint}}
  ports: [{{name: mesh, port: 15008}}, {{name: status-port, port: 15021}}]
"#,
        legacy = mesh.legacy_pod,
    )
}

async fn add_config(mesh: &Mesh, name: &str, yaml: &str) {
    let before = mesh.running().config.load().version;
    let tmp = mesh.dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, mesh.config_dir().join(name)).unwrap();
    mesh.wait_for_config(|v| v > before).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_loops_into_the_waypoint_is_refused_once() {
    tokio::time::timeout(LIMIT, async {
        // No policy: everything is allowed, so only the loop rules can stop the loop.
        let mesh = Mesh::start(MeshOptions {
            policies: String::new(),
            ..opts()
        })
        .await
        .unwrap();
        add_config(&mesh, "loop.yaml", &loop_config(&mesh)).await;
        let m = &mesh.running().metrics;
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let fds = open_fds();
        let connects = m.upstream_hbone_connects.get();
        // The waypoint's own sockets: a loop would add an inbound and an upstream HBONE connection
        // per turn. (The process's descriptor count is printed too, but other tests in this
        // binary open and close descriptors in parallel, so it cannot be asserted.)
        let (inbound, upstream) = (
            m.hbone_connections.get(),
            m.upstream_hbone_connections.get(),
        );
        let o = c
            .open("10.96.7.7:80", &[("forwarded", &Mesh::forwarded(40000))])
            .await
            .unwrap();
        eprintln!("probe loop: CONNECT answered {}", o.status);
        if let Some(mut s) = o.stream {
            let r = tokio::time::timeout(
                Duration::from_secs(3),
                http1::request(&mut s, "GET", "/", &[], ""),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            eprintln!(
                "probe loop: inner GET {:?}; fds {fds} -> {}, upstream dials {}, tunnels {}",
                r.map(|r| r.map(|r| r.map(|r| r.status))),
                open_fds(),
                m.upstream_hbone_connects.get() - connects,
                m.tunnels.get()
            );
        }
        assert_eq!(o.status, 503, "the looping CONNECT is refused");
        // Give a loop, were there one, time to show.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (fds_after, tunnels, dials) = (
            open_fds(),
            m.tunnels.get(),
            m.upstream_hbone_connects.get() - connects,
        );
        eprintln!(
            "probe loop: fds {fds} -> {fds_after}, tunnels {tunnels}, upstream dials {dials}"
        );
        assert_eq!(dials, 0, "no tunnel to ourselves");
        assert_eq!(tunnels, 1, "one stream, not a chain of them");
        assert_eq!(
            (
                m.hbone_connections.get(),
                m.upstream_hbone_connections.get()
            ),
            (inbound, upstream),
            "the waypoint's connections stay flat"
        );
        assert_eq!(m.self_destination_refused.get(), 1);
        still_serves(&mesh).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waypoints_own_pod_service_and_ports_are_not_destinations() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts()).await.unwrap();
        add_config(&mesh, "self.yaml", &self_pointing_config(&mesh)).await;
        let snapshot = mesh.running().config.load();
        let wp = mesh.waypoint_addr().ip();
        // Istio's managed label, the Gateway's Service: not destinations at all.
        assert!(
            !snapshot.destinations.workloads.contains_key(&wp),
            "own pod"
        );
        assert!(
            !snapshot
                .destinations
                .services
                .contains_key(&"10.96.8.8:15021".parse().unwrap()),
            "own Service"
        );
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        // Every address of ours and every reserved port, however it is reached.
        for target in [
            format!("{wp}:15021"),
            format!("{wp}:15008"),
            "10.96.8.8:15021".to_owned(),
            "10.96.8.8:15008".to_owned(),
            "10.96.7.8:9999".to_owned(),
            "10.96.7.9:9999".to_owned(),
        ] {
            let o = c.open(&target, &[]).await.unwrap();
            eprintln!("probe self {target}: CONNECT answered {}", o.status);
            if let Some(mut s) = o.stream {
                // An opaque TCP destination whose only endpoint was left out has no endpoint:
                // the tunnel may open, but it must end without a byte from us.
                let r = http1::request(&mut s, "GET", "/healthz/ready", &[], "").await;
                eprintln!(
                    "probe self {target}: inner GET answered {:?}",
                    r.as_ref().map(|r| r.as_ref().map(|r| r.status))
                );
                assert!(matches!(r, Ok(None) | Err(_)), "{target} reached something");
                assert_eq!(
                    target, "10.96.7.8:9999",
                    "only the emptied TCP destination may open"
                );
                continue;
            }
            assert_eq!(o.status, 503, "{target}");
        }
        still_serves(&mesh).await;
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. Peer identity as ztunnel reads it.

/// Connects as `cert` and tries one request; `Ok(status)` when a tunnel got that far.
async fn try_as(mesh: &Mesh, cert: &WorkloadCert) -> anyhow::Result<u16> {
    let c = HboneClient::connect(mesh.waypoint_addr(), mesh.client_config(cert)).await?;
    let o = c.open(HTTPBIN_VIP, &[]).await?;
    let Some(mut s) = o.stream else {
        return Ok(o.status.as_u16());
    };
    let r = http1::request(&mut s, "GET", "/get", &[], "").await?;
    Ok(r.map_or(0, |r| r.status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_must_present_exactly_one_spiffe_id_of_the_mesh() {
    tokio::time::timeout(LIMIT, async {
        let mut o = opts();
        o.tune = Some(|run| {
            short_timeouts(run);
            run.mesh.trust_domain_aliases = Some(vec!["old.example".into()]);
        });
        let mesh = Mesh::start(o).await.unwrap();
        let m = &mesh.running().metrics;
        let ns = "ns/ambient-demo/sa";
        let cases: [(&str, Vec<String>); 5] = [
            (
                "two SPIFFE IDs",
                vec![
                    format!("spiffe://cluster.local/{ns}/attacker"),
                    format!("spiffe://cluster.local/{ns}/sleep"),
                ],
            ),
            ("no URI SAN", vec![]),
            (
                "another trust domain",
                vec![format!("spiffe://evil.example/{ns}/sleep")],
            ),
            (
                "a non-SPIFFE URI",
                vec![format!("https://cluster.local/{ns}/sleep")],
            ),
            (
                "a SPIFFE ID and another URI",
                vec![
                    format!("spiffe://cluster.local/{ns}/sleep"),
                    "https://example.com/".into(),
                ],
            ),
        ];
        for (i, (what, uris)) in cases.iter().enumerate() {
            let uris: Vec<&str> = uris.iter().map(String::as_str).collect();
            let cert = mesh.pki.issue_uris(&uris, &format!("probe-{i}")).unwrap();
            let outcome = try_as(&mesh, &cert).await;
            eprintln!("probe identity, {what}: {outcome:?}");
            assert!(outcome.is_err(), "{what}: {outcome:?}");
            eventually(&format!("{what} is counted"), || {
                m.hbone_peer_identity_rejected.get() == i as u64 + 1
            })
            .await;
        }
        // A trust domain alias is the mesh's own.
        let alias = mesh
            .pki
            .issue_uris(&[&format!("spiffe://old.example/{ns}/sleep")], "alias")
            .unwrap();
        let outcome = try_as(&mesh, &alias).await;
        eprintln!("probe identity, trust domain alias: {outcome:?}");
        // Through TLS to the policy, which decides (the example policies name cluster.local).
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(m.hbone_peer_identity_rejected.get(), 5);
        still_serves(&mesh).await;
    })
    .await
    .unwrap();
}

/// The rule holds for the ztunnels we dial: a destination whose certificate carries the expected
/// SPIFFE ID and another one is not that destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_must_present_exactly_its_own_spiffe_id() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(MeshOptions {
            policies: String::new(),
            ..opts()
        })
        .await
        .unwrap();
        let pod = mesh.block.ip(50);
        let twin = mesh
            .pki
            .issue_uris(
                &[
                    "spiffe://cluster.local/ns/ambient-demo/sa/twin",
                    "spiffe://cluster.local/ns/ambient-demo/sa/other",
                ],
                "twin",
            )
            .unwrap();
        let _app = waypoint_tests::backend::http(SocketAddr::new(pod, 80), "twin")
            .await
            .unwrap();
        let _shim = waypoint_tests::ztunnel::inbound(SocketAddr::new(pod, 15008), &mesh.pki, &twin)
            .await
            .unwrap();
        add_config(
            &mesh,
            "twin.yaml",
            &format!(
                r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: twin, namespace: ambient-demo}}
spec:
  hosts: [twin.example]
  addresses: [10.96.7.20]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: "{pod}", labels: {{istio.io/dataplane-mode: ambient}}, serviceAccount: twin}}]
"#
            ),
        )
        .await;
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let mut s = c.open("10.96.7.20:80", &[]).await.unwrap().stream.unwrap();
        let r = http1::request(&mut s, "GET", "/", &[], "").await.unwrap().unwrap();
        let m = &mesh.running().metrics;
        eprintln!(
            "probe destination with two SPIFFE IDs: {} (identity mismatches {})",
            r.status,
            m.upstream_identity_mismatch.get()
        );
        assert_eq!(r.status, 503);
        assert!(m.upstream_identity_mismatch.get() >= 1);
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. Nothing is held forever.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_time_out_and_are_counted_while_open() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts()).await.unwrap();
        let m = &mesh.running().metrics;
        let wait = SHORT * 4;

        // TCP, no TLS.
        let mut tcp = TcpStream::connect(mesh.waypoint_addr()).await.unwrap();
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(wait, tcp.read(&mut b)).await;
        eprintln!("probe silent TCP: {r:?}");
        assert!(matches!(r, Ok(Ok(0) | Err(_))), "closed: {r:?}");
        eventually("TLS timeout counted", || {
            m.timeouts.tls_handshake.get() == 1
        })
        .await;

        // TLS, then no HTTP/2 preface: counted as a connection while it lasts.
        let mut p = RawPeer::tls(&mesh, &mesh.sleep).await.unwrap();
        eventually("the connection is counted before its preface", || {
            m.hbone_connections.get() == 1
        })
        .await;
        let e = p.end(wait).await;
        eprintln!("probe no preface: {}", describe(&e));
        assert!(e == Event::Closed || is_goaway(&e), "{}", describe(&e));
        eventually("preface timeout counted", || {
            m.timeouts.h2_preface.get() == 1
        })
        .await;
        eventually("and no longer counted", || m.hbone_connections.get() == 0).await;

        // Preface, then no stream: an idle connection goes with GOAWAY.
        let mut p = RawPeer::h2(&mesh, &mesh.sleep, &[]).await;
        let e = p.end(wait * 2).await;
        eprintln!("probe idle connection: {}", describe(&e));
        assert!(is_goaway(&e) || e == Event::Closed, "{}", describe(&e));
        eventually("idle timeout counted", || {
            m.timeouts.connection_idle.get() == 1
        })
        .await;
        still_serves(&mesh).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_time_out() {
    tokio::time::timeout(LIMIT, async {
        // No policy, so the opaque TCP stream is allowed.
        let mesh = Mesh::start(MeshOptions {
            policies: String::new(),
            ..opts()
        })
        .await
        .unwrap();
        let m = &mesh.running().metrics;
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let wait = SHORT * 4;

        // A declared-HTTP port that never gets a byte.
        let mut s = c.open(HTTPBIN_VIP, &[]).await.unwrap().stream.unwrap();
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(wait, s.read(&mut b)).await;
        eprintln!("probe first byte: {r:?}");
        assert!(matches!(r, Ok(Ok(0) | Err(_))), "{r:?}");
        eventually("first-byte timeout counted", || {
            m.timeouts.first_byte.get() == 1
        })
        .await;

        // Half a request head, then nothing.
        let mut s = c.open(HTTPBIN_VIP, &[]).await.unwrap().stream.unwrap();
        s.write_all(b"GET /get HTTP/1.1\r\nhost: httpbin\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let r = tokio::time::timeout(wait, s.read_to_end(&mut got)).await;
        eprintln!(
            "probe request headers: {r:?} {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(r.is_ok(), "the stream ends");
        eventually("request-headers timeout counted", || {
            m.timeouts.request_headers.get() == 1
        })
        .await;

        // An opaque TCP stream that goes quiet after its first exchange.
        let mut s = c.open(TCP_ECHO_VIP, &[]).await.unwrap().stream.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.unwrap();
        let r = tokio::time::timeout(wait, s.read(&mut b)).await;
        eprintln!("probe stream idle: {r:?}");
        assert!(matches!(r, Ok(Ok(0) | Err(_))), "{r:?}");
        eventually("stream idle timeout counted", || {
            m.timeouts.stream_idle.get() == 1
        })
        .await;
        still_serves(&mesh).await;
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. Malformed requests and trace context.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connects_are_answered_per_stream_where_h2_allows() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts()).await.unwrap();
        let wait = Duration::from_secs(5);

        // A header block over SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB) but under h2's abuse
        // limit (4x): h2 answers that stream 431 (RFC 6585), the connection stays.
        let mut p = RawPeer::h2(&mesh, &mesh.sleep, &[]).await;
        let big = vec![b'a'; 20 * 1024];
        let block = connect_block(HTTPBIN_VIP, &[("x-big", &big)]);
        p.send(&frame(HEADERS, END_HEADERS, 1, &block)).await;
        let e = p.answer(1, wait).await;
        eprintln!("probe 20 KiB header block: {}", describe(&e));
        // h2 Huffman-codes the 431, so this reads it as "a complete non-200 response".
        assert!(
            matches!(&e, Event::Frame { kind: HEADERS, flags, payload, .. } if flags & END_STREAM != 0 && status_of(payload) != Some(200)),
            "431: {}",
            describe(&e)
        );
        let block = connect_block(HTTPBIN_VIP, &[]);
        p.send(&frame(HEADERS, END_HEADERS, 3, &block)).await;
        let e = p.answer(3, wait).await;
        eprintln!("probe next stream on that connection: {}", describe(&e));
        assert!(is_status(&e, 200), "{}", describe(&e));

        // A header block past the abuse limit: h2 ends the connection (ENHANCE_YOUR_CALM).
        let mut p = RawPeer::h2(&mesh, &mesh.sleep, &[]).await;
        let huge = vec![b'a'; 100 * 1024];
        let block = connect_block(HTTPBIN_VIP, &[("x-big", &huge)]);
        p.send(&frame(HEADERS, END_HEADERS, 1, &block)).await;
        let e = p.answer(1, wait).await;
        eprintln!("probe 100 KiB header block: {}", describe(&e));
        assert!(is_goaway(&e), "{}", describe(&e));

        // One DEL byte in a header value: h2 0.4 fails the HPACK decode mid-block, which
        // desynchronises the connection's decoder state, so it answers with GOAWAY
        // PROTOCOL_ERROR; the waypoint cannot turn that into a stream error (see docs).
        let mut p = RawPeer::h2(&mesh, &mesh.sleep, &[]).await;
        let block = connect_block(HTTPBIN_VIP, &[("forwarded", b"for=\"10.0.0.1\x7f\"")]);
        p.send(&frame(HEADERS, END_HEADERS, 1, &block)).await;
        let e = p.answer(1, wait).await;
        eprintln!("probe DEL in a header value: {}", describe(&e));
        assert!(is_goaway(&e), "{}", describe(&e));
        still_serves(&mesh).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_rebuilt_never_copied() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts()).await.unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let long = format!("{good}{}", "-x".repeat(4000));
        // (sent traceparent, sent tracestate, what the app may see)
        let cases: Vec<(String, &str, Option<&str>, Option<&str>)> = vec![
            (
                good.to_owned(),
                "congo=t61rcWkgMzE",
                Some(good),
                Some("congo=t61rcWkgMzE"),
            ),
            (
                "00-xyz-00f067aa0ba902b7-01".into(),
                "congo=t61rcWkgMzE",
                None,
                None,
            ),
            (long, "", None, None),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future".into(),
                "",
                Some(good),
                None,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".into(),
                "",
                None,
                None,
            ),
            (good.to_owned(), "Bad Key=1,ok=2", Some(good), Some("ok=2")),
        ];
        for (tp, ts, want_tp, want_ts) in cases {
            let mut s = c.open(HTTPBIN_VIP, &[]).await.unwrap().stream.unwrap();
            let mut headers = vec![("traceparent", tp.as_str())];
            if !ts.is_empty() {
                headers.push(("tracestate", ts));
            }
            let r = http1::request(&mut s, "GET", "/get", &headers, "")
                .await
                .unwrap()
                .unwrap();
            let seen = |k: &str| {
                r.body
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}: ")).map(str::to_owned))
            };
            let short = &tp[..tp.len().min(60)];
            eprintln!(
                "probe traceparent {short:?} / {ts:?}: app saw {:?} / {:?}",
                seen("traceparent"),
                seen("tracestate")
            );
            assert_eq!(r.status, 200);
            // A request without a valid trace context may get a fresh one; never the bad one.
            match want_tp {
                Some(w) => assert_eq!(seen("traceparent").as_deref(), Some(w), "{short}"),
                None => assert_ne!(seen("traceparent").as_deref(), Some(tp.as_str()), "{short}"),
            }
            assert_eq!(seen("tracestate").as_deref(), want_ts, "{short}");
        }
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. Probes that already held, pinned so they keep holding.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_that_already_hold() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(opts()).await.unwrap();
        let wait = Duration::from_secs(5);
        let c = mesh.hbone(&mesh.sleep).await.unwrap();

        // Bad authorities: 400, never a tunnel.
        for authority in [
            "httpbin.ambient-demo:8000",
            "10.96.0.10",
            "[::1]",
            "10.96.0.10:0x50",
            "10.96.0.10:99999",
        ] {
            let status = match c.open(authority, &[]).await {
                Ok(o) => o.status.as_u16(),
                Err(e) => {
                    eprintln!("probe authority {authority:?}: client refused to send it ({e})");
                    continue;
                }
            };
            eprintln!("probe authority {authority:?}: {status}");
            assert_eq!(status, 400, "{authority}");
        }

        // A second HEADERS on an open tunnel stream.
        let mut p = RawPeer::h2(&mesh, &mesh.sleep, &[]).await;
        let block = connect_block(HTTPBIN_VIP, &[]);
        p.send(&frame(HEADERS, END_HEADERS, 1, &block)).await;
        let e = p.answer(1, wait).await;
        assert!(
            matches!(e, Event::Frame { kind: HEADERS, .. }),
            "{}",
            describe(&e)
        );
        p.send(&frame(
            HEADERS,
            END_HEADERS,
            1,
            &connect_block(HTTPBIN_VIP, &[]),
        ))
        .await;
        let e = p.answer(1, wait).await;
        eprintln!("probe second CONNECT on a stream: {}", describe(&e));
        assert!(is_rst(&e, 1) || is_goaway(&e), "{}", describe(&e));

        // Rapid reset: HEADERS then RST_STREAM, many times.
        let mut p = RawPeer::h2(&mesh, &mesh.sleep, &[]).await;
        let mut out = Vec::new();
        for i in 0..2000u32 {
            let id = 2 * i + 1;
            out.extend(frame(
                HEADERS,
                END_HEADERS,
                id,
                &connect_block(HTTPBIN_VIP, &[]),
            ));
            out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        p.send(&out).await;
        let e = p.end(wait).await;
        eprintln!("probe rapid reset: {}", describe(&e));
        assert!(is_goaway(&e) || e == Event::Closed, "{}", describe(&e));

        // CONTINUATION flood: one header block that never ends.
        let mut p = RawPeer::h2(&mesh, &mesh.sleep, &[]).await;
        let mut out = frame(HEADERS, 0, 1, &connect_block(HTTPBIN_VIP, &[]));
        let mut filler = Vec::new();
        literal(&mut filler, "x-a", &[b'a'; 100]);
        for _ in 0..10_000 {
            out.extend(frame(CONTINUATION, 0, 1, &filler));
        }
        p.send(&out).await;
        let e = p.answer(1, wait).await;
        eprintln!("probe CONTINUATION flood: {}", describe(&e));
        assert!(is_goaway(&e) || e == Event::Closed, "{}", describe(&e));

        // The stream limit: the 1001st concurrent stream is refused.
        let mut p = RawPeer::h2(&mesh, &mesh.sleep, &[]).await;
        let mut out = Vec::new();
        for i in 0..1001u32 {
            out.extend(frame(
                HEADERS,
                END_HEADERS,
                2 * i + 1,
                &connect_block(HTTPBIN_VIP, &[]),
            ));
        }
        p.send(&out).await;
        let e = p.answer(2001, wait).await;
        eprintln!("probe stream 1001: {}", describe(&e));
        assert!(is_rst(&e, 7) || is_rst(&e, 1), "{}", describe(&e));

        // A reader that never opens its window: the waypoint stays responsive to others
        // and to PINGs on that very connection.
        let mut p = RawPeer::h2(&mesh, &mesh.sleep, &[(4, 0)]).await;
        p.send(&frame(
            HEADERS,
            END_HEADERS,
            1,
            &connect_block(TCP_ECHO_VIP, &[]),
        ))
        .await;
        let e = p.answer(1, wait).await;
        assert!(
            matches!(e, Event::Frame { kind: HEADERS, .. }),
            "{}",
            describe(&e)
        );
        p.send(&frame(0, 0, 1, &vec![b'z'; 16 * 1024])).await;
        p.send(&frame(PING, 0, 0, b"pingpong")).await;
        let pong = loop {
            match p.next(wait).await {
                Event::Frame {
                    kind: PING, flags, ..
                } if flags & 1 == 1 => break true,
                Event::Frame { .. } => {}
                _ => break false,
            }
        };
        eprintln!("probe zero-window reader: PONG {pong}");
        assert!(pong);
        still_serves(&mesh).await;
    })
    .await
    .unwrap();
}
