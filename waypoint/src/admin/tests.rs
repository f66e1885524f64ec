//! The admin server over real loopback sockets, bytes in and bytes out: every endpoint per role,
//! and requests a hostile or broken client sends.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{AdminState, Role, serve};
use crate::identity::{Identity, IdentitySource};
use crate::state::{MeshSettings, Snapshot, StateHandle};
use crate::tls::dev_ca::DevCa;

/// A state that passes every readiness check.
fn ready_state() -> AdminState {
    let config = StateHandle::unsynced(Snapshot::empty(&MeshSettings::default()));
    config.mark_synced();
    let source = IdentitySource::DevCa {
        ca: Arc::new(DevCa::new("admin test CA").unwrap()),
        spiffe_id: "spiffe://cluster.local/ns/ambient-demo/sa/waypoint".into(),
    };
    AdminState {
        config,
        metrics: Arc::default(),
        identity: Arc::new(Identity::load(source).unwrap()),
        ready: Arc::new(AtomicBool::new(true)),
    }
}

async fn start(state: AdminState, role: Role) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, state, role));
    addr
}

/// One answer: the status line, headers (lower-case names) and body.
#[derive(Debug)]
struct Answer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `bytes` and reads until the server closes the connection.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything (an oversized head).
    let _ = s.write_all(bytes).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("the server closes the connection after answering")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Answer {
        status_line,
        headers,
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn readiness_says_ready_with_the_old_head_and_body() {
    let addr = start(ready_state(), Role::Readiness).await;
    let a = get(addr, "/healthz/ready").await;
    assert_eq!(a.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        a.headers,
        [
            ("content-type".to_owned(), "text/plain".to_owned()),
            ("connection".to_owned(), "close".to_owned()),
            ("content-length".to_owned(), "6".to_owned()),
        ]
    );
    assert_eq!(a.body, "ready\n");
    // The query is not part of the path.
    assert_eq!(get(addr, "/healthz/ready?verbose=1").await.status(), 200);
}

#[tokio::test]
async fn readiness_names_what_is_missing() {
    let state = ready_state();
    state.ready.store(false, Ordering::Relaxed);
    let addr = start(state.clone(), Role::Readiness).await;
    let a = get(addr, "/healthz/ready").await;
    assert_eq!(a.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(a.body, "not ready: starting\n");

    state.ready.store(true, Ordering::Relaxed);
    let unsynced = AdminState {
        config: StateHandle::unsynced(Snapshot::empty(&MeshSettings::default())),
        ..state.clone()
    };
    let addr = start(unsynced, Role::Readiness).await;
    assert_eq!(
        get(addr, "/healthz/ready").await.body,
        "not ready: config not synced\n"
    );

    // The Workload API is only asked by `Identity::run`: until then there is no certificate.
    let source = IdentitySource::WorkloadApi {
        socket: "/nonexistent/agent.sock".into(),
    };
    let uncertified = AdminState {
        identity: Arc::new(Identity::load(source).unwrap()),
        ..state
    };
    let addr = start(uncertified, Role::Readiness).await;
    let a = get(addr, "/healthz/ready").await;
    assert_eq!(a.status(), 503);
    assert_eq!(a.body, "not ready: no valid workload certificate\n");
}

#[tokio::test]
async fn metrics_are_served_as_prometheus_text() {
    let state = ready_state();
    state.metrics.request(true, 200);
    let addr = start(state, Role::Metrics).await;
    for path in ["/metrics", "/stats/prometheus"] {
        let a = get(addr, path).await;
        assert_eq!(a.status(), 200, "{path}");
        assert_eq!(a.header("content-type"), Some("text/plain; version=0.0.4"));
        assert_eq!(
            a.header("content-length"),
            Some(a.body.len().to_string().as_str())
        );
        assert!(
            a.body
                .contains("waypoint_requests_total{decision=\"allow\",code=\"200\"} 1")
        );
        assert!(a.body.contains("waypoint_hbone_connections 0"));
    }
}

#[tokio::test]
async fn config_dump_is_json_with_the_identity() {
    let addr = start(ready_state(), Role::Admin).await;
    let a = get(addr, "/config_dump").await;
    assert_eq!(a.status(), 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let dump: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        dump["identity"]["spiffe_id"],
        "spiffe://cluster.local/ns/ambient-demo/sa/waypoint"
    );
    // The admin port serves readiness and metrics too.
    assert_eq!(get(addr, "/healthz/ready").await.status(), 200);
    assert_eq!(get(addr, "/metrics").await.status(), 200);
}

#[tokio::test]
async fn each_role_serves_only_its_endpoints() {
    let readiness = start(ready_state(), Role::Readiness).await;
    let metrics = start(ready_state(), Role::Metrics).await;
    for (addr, path) in [
        (readiness, "/metrics"),
        (readiness, "/stats/prometheus"),
        (readiness, "/config_dump"),
        (metrics, "/healthz/ready"),
        (metrics, "/config_dump"),
        (metrics, "/"),
    ] {
        let a = get(addr, path).await;
        assert_eq!(a.status_line, "HTTP/1.1 404 Not Found", "{path}");
        assert_eq!(a.header("content-type"), Some("text/plain"));
        assert_eq!(a.body, "not found\n");
    }
}

#[tokio::test]
async fn anything_but_get_is_405() {
    let addr = start(ready_state(), Role::Admin).await;
    for method in ["POST", "HEAD", "DELETE"] {
        let a = exchange(
            addr,
            format!("{method} /metrics HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(a.status_line, "HTTP/1.1 405 Method Not Allowed", "{method}");
        if method != "HEAD" {
            assert_eq!(a.body, "method not allowed\n");
        }
    }
    // Even on a path that does not exist.
    let a = exchange(addr, b"PUT /nowhere HTTP/1.1\r\nhost: admin\r\n\r\n").await;
    assert_eq!(a.status(), 405);
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let addr = start(ready_state(), Role::Readiness).await;
    for bytes in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /healthz/ready HTTP/9.9\r\n\r\n",
        b"GET /healthz/ready HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /healthz/ready HTTP/1.1\r\nhost: a\r\ncontent-length: nope\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let a = exchange(addr, bytes).await;
        assert_eq!(a.status_line, "HTTP/1.1 400 Bad Request", "{bytes:?}");
    }
    assert_eq!(get(addr, "/healthz/ready").await.status(), 200);
}

#[tokio::test]
async fn oversized_heads_get_431_and_the_server_keeps_serving() {
    let addr = start(ready_state(), Role::Readiness).await;
    let long = format!(
        "GET /healthz/ready HTTP/1.1\r\nhost: admin\r\nx-big: {}\r\n\r\n",
        "a".repeat(super::MAX_HEAD_BYTES)
    );
    let a = exchange(addr, long.as_bytes()).await;
    assert_eq!(
        a.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    let mut many = String::from("GET /healthz/ready HTTP/1.1\r\nhost: admin\r\n");
    for i in 0..super::MAX_HEADERS {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(exchange(addr, many.as_bytes()).await.status(), 431);

    assert_eq!(get(addr, "/healthz/ready").await.status(), 200);
}

#[tokio::test]
async fn a_request_split_across_writes_is_answered() {
    let addr = start(ready_state(), Role::Readiness).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz/re").await.unwrap();
    s.flush().await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(b"ady HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\nready\n"), "{raw}");
}
