//! What a RequestAuthentication can make the waypoint fetch, through the running waypoint: a
//! tenant's `jwksUri` (or issuer, through OIDC discovery) never reaches a link-local, metadata
//! or operator-blocked address, however it is spelled or redirected; a JWKS server that hangs
//! costs a request a bounded wait, not the rule's `timeout` twice; an endless body is cut at the
//! cap; and a set of 10,000 keys, which Istio loads, loads and validates a token.
//!
//! The JWKS servers here are written from RFC 9112 (a request head, then a response with
//! `Content-Length`, or a redirect, or nothing at all), each counting the connections it
//! accepted: a blocked address is bound on loopback and blocked through the operator's ranges,
//! so "never connected" is an accept count of zero, not a guess.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use waypoint::settings::Settings;
use waypoint_tests::http1;
use waypoint_tests::jwt::{SigningKey, claims, jwks};
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions};

const LIMIT: Duration = Duration::from_secs(120);

/// How a test server answers.
#[derive(Clone)]
enum Reply {
    /// 200 with this JSON body.
    Json(Arc<String>),
    /// 302 to this location.
    Redirect(String),
    /// Reads the request and never answers (until the client goes away).
    Hang,
    /// 200 without a length, then bytes until the client goes away; sets the flag then.
    Endless(Arc<AtomicBool>),
}

/// A one-reply HTTP/1.1 server on a loopback address, counting the connections it accepts.
struct Server {
    addr: SocketAddr,
    accepts: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(ip: &str, reply: Reply) -> Server {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicU64::new(0));
        let counted = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp, reply.clone()));
            }
        });
        Server {
            addr,
            accepts,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::SeqCst)
    }
}

async fn serve(mut tcp: TcpStream, reply: Reply) {
    // The request head, bounded; its content does not matter.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match reply {
        Reply::Json(body) => {
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(resp.as_bytes()).await;
        }
        Reply::Redirect(to) => {
            let resp = format!(
                "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = tcp.write_all(resp.as_bytes()).await;
        }
        Reply::Hang => {
            // Held open, silent, until the fetcher gives up and closes.
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        Reply::Endless(closed) => {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
            let chunk = vec![b' '; 64 * 1024];
            if tcp.write_all(head.as_bytes()).await.is_ok() {
                while tcp.write_all(&chunk).await.is_ok() {}
            }
            closed.store(true, Ordering::SeqCst);
        }
    }
}

/// An OIDC discovery document naming `jwks_uri`.
fn discovery(issuer: &str, jwks_uri: &str) -> Reply {
    Reply::Json(Arc::new(
        json!({"issuer": issuer, "jwks_uri": jwks_uri}).to_string(),
    ))
}

/// A RequestAuthentication on httpbin with one rule per `(issuer, jwksUri)`.
fn request_authentication(rules: &[(String, Option<String>)]) -> String {
    let mut y = String::from(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n\
         metadata: {name: tenant-jwt, namespace: ambient-demo}\n\
         spec:\n  targetRefs: [{kind: Service, group: \"\", name: httpbin}]\n  jwtRules:\n",
    );
    for (iss, uri) in rules {
        y.push_str(&format!("  - issuer: \"{iss}\"\n"));
        if let Some(uri) = uri {
            y.push_str(&format!("    jwksUri: \"{uri}\"\n"));
        }
        // The rule's own timeout is long: what bounds the answer must be the waypoint's.
        y.push_str("    timeout: 20s\n");
    }
    y
}

/// `GET /anything` with `token` through a fresh tunnel to httpbin, as `sleep`.
async fn get(mesh: &Mesh, token: &str) -> http1::Response {
    let c = mesh.hbone(&mesh.sleep).await.unwrap();
    let o = c
        .open(HTTPBIN_VIP, &[("forwarded", &Mesh::forwarded(40000))])
        .await
        .unwrap();
    assert_eq!(o.status, 200);
    let mut s = o.stream.unwrap();
    let auth = format!("Bearer {token}");
    http1::request(&mut s, "GET", "/anything", &[("authorization", &auth)], "")
        .await
        .unwrap()
        .expect("an answer")
}

/// The addresses the operator blocked for [`never_reaches_a_blocked_address`]: loopback
/// 127.0.0.1 (what `localhost` resolves to) and a range of its own. Servers that must stay
/// reachable listen on 127.4.0.1.
fn block_loopback(s: &mut Settings) {
    s.jwks.blocked = vec![
        "127.0.0.1/32".parse().unwrap(),
        "::1/128".parse().unwrap(),
        "127.3.0.0/16".parse().unwrap(),
    ];
}

/// The rule for `issuer`, as `/config_dump` shows it.
fn dumped_rule(mesh: &Mesh, issuer: &str) -> Value {
    let dump = mesh.running().config.dump();
    dump.get("requestAuthentication")
        .and_then(Value::as_array)
        .and_then(|rules| rules.iter().find(|r| r["issuer"] == issuer).cloned())
        .unwrap_or_else(|| panic!("no rule for {issuer} in {dump:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stdout)] // each case's answer and fetch error (`--nocapture`)
async fn never_reaches_a_blocked_address() {
    tokio::time::timeout(LIMIT, async {
        let key = SigningKey::ec("k");
        let keys = Reply::Json(Arc::new(jwks(&[&key])));
        // Traps: they would serve the right keys, so a fetch that got through would turn the
        // 401 into a 200.
        let trap_local = Server::start("127.0.0.1", keys.clone()).await;
        let trap_range = Server::start("127.3.0.1", keys.clone()).await;
        let p = trap_local.addr.port();
        let range_jwks = trap_range.url("/jwks");
        let good = Server::start("127.4.0.1", keys.clone()).await;
        let disco_meta = Server::start(
            "127.4.0.1",
            discovery(
                "http://127.4.0.1",
                "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            ),
        )
        .await;
        let disco_meta_iss = format!("http://{}", disco_meta.addr);
        let disco_trap = Server::start("127.4.0.1", discovery("unused", &range_jwks)).await;
        let disco_trap_iss = format!("http://{}", disco_trap.addr);
        let redirect = Server::start("127.4.0.1", Reply::Redirect(range_jwks.clone())).await;

        // (what, issuer, jwksUri, what the fetch error must say)
        let cases: Vec<(&str, String, Option<String>, String)> = vec![
            (
                "cloud metadata, direct",
                "https://aws.example".into(),
                Some("http://169.254.169.254/latest/meta-data/iam/security-credentials/".into()),
                "resolved IP 169.254.169.254 is link-local".into(),
            ),
            (
                "Alibaba metadata",
                "https://alibaba.example".into(),
                Some("http://100.100.100.200/latest/meta-data/".into()),
                "resolved IP 100.100.100.200 is a known cloud metadata address".into(),
            ),
            (
                "AWS IPv6 metadata",
                "https://aws6.example".into(),
                Some("http://[fd00:ec2::254]/latest/meta-data/".into()),
                "resolved IP fd00:ec2::254 is a known cloud metadata address".into(),
            ),
            (
                "metadata as an IPv4-mapped IPv6 address",
                "https://mapped.example".into(),
                Some("http://[::ffff:169.254.169.254]/latest/".into()),
                "is link-local".into(),
            ),
            (
                "metadata through a discovery document",
                disco_meta_iss.clone(),
                None,
                "resolved IP 169.254.169.254 is link-local".into(),
            ),
            (
                "blocked range through a discovery document",
                disco_trap_iss.clone(),
                None,
                "is in blocked CIDR range 127.3.0.0/16".into(),
            ),
            (
                "a name resolving to a blocked address",
                "https://by-name.example".into(),
                Some(format!("http://localhost:{p}/jwks")),
                "connection blocked: resolved IP".into(),
            ),
            (
                "blocked address, literal",
                "https://literal.example".into(),
                Some(format!("http://127.0.0.1:{p}/jwks")),
                "is in blocked CIDR range 127.0.0.1/32".into(),
            ),
            (
                "blocked address, IPv4-mapped",
                "https://mapped-local.example".into(),
                Some(format!("http://[::ffff:127.0.0.1]:{p}/jwks")),
                "is in blocked CIDR range 127.0.0.1/32".into(),
            ),
            (
                "the unspecified address, which reaches the local host",
                "https://unspecified.example".into(),
                Some(format!("http://0.0.0.0:{p}/jwks")),
                "resolved IP 0.0.0.0 is in blocked CIDR range".into(),
            ),
            (
                "blocked range, direct",
                "https://range.example".into(),
                Some(range_jwks.clone()),
                "is in blocked CIDR range 127.3.0.0/16".into(),
            ),
            (
                "a redirect to a blocked range",
                "https://redirect.example".into(),
                Some(redirect.url("/jwks")),
                "HTTP 302 Found".into(),
            ),
        ];
        let allowed = (
            "https://allowed.example".to_owned(),
            Some(good.url("/jwks")),
        );
        let mut rules: Vec<(String, Option<String>)> = cases
            .iter()
            .map(|(_, i, u, _)| (i.clone(), u.clone()))
            .collect();
        rules.push(allowed.clone());
        let mut mesh = Mesh::start(MeshOptions {
            policies: request_authentication(&rules),
            tune: Some(block_loopback),
            ..MeshOptions::default()
        })
        .await
        .unwrap();

        // The control: an allowed issuer's token is accepted, so the 401s below are the block.
        let ok = get(&mesh, &key.sign(&claims(&allowed.0, "alice", json!({})))).await;
        assert_eq!(ok.status, 200, "allowed issuer: {}", ok.body);

        for (what, iss, _, why) in &cases {
            let r = get(&mesh, &key.sign(&claims(iss, "alice", json!({})))).await;
            let rule = dumped_rule(&mesh, iss);
            println!(
                "{what}: {} {:?}; {}",
                r.status, r.body, rule["lastFetchError"]
            );
            assert_eq!(r.status, 401, "{what}: {}", r.body);
            assert_eq!(r.body, "Jwks remote fetch is failed", "{what}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"http://httpbin/anything\", error=\"invalid_token\""),
                "{what}"
            );
            let err = rule["lastFetchError"].as_str().unwrap_or_default();
            assert!(
                err.contains(why),
                "{what}: fetch error {err:?} lacks {why:?}"
            );
            assert_eq!(rule["fetchedKeys"], Value::Null, "{what}: no keys held");
        }
        // Each refused fetch counted as a failure (the set's first fetch ran at config load).
        assert!(mesh.running().metrics.jwks_fetch_failures.get() >= cases.len() as u64);
        // Nothing ever connected to a blocked address; the discovery documents and the
        // redirect were read (so the block happened at their second hop).
        assert_eq!(trap_local.accepts(), 0, "127.0.0.1 was dialled");
        assert_eq!(trap_range.accepts(), 0, "127.3.0.1 was dialled");
        assert!(disco_meta.accepts() >= 1 && disco_trap.accepts() >= 1 && redirect.accepts() >= 1);
        mesh.shutdown().await;
    })
    .await
    .unwrap();
}

/// No wait and no fetch: the waypoint answers at once rather than hold requests for a server
/// that never answers. Here: 1 s wait, 8 s fetch ceiling, a rule that says 20 s.
fn short_wait(s: &mut Settings) {
    s.jwks.max_wait = Duration::from_secs(1);
    s.jwks.max_fetch_time = Duration::from_secs(8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_jwks_server_costs_a_bounded_wait() {
    tokio::time::timeout(LIMIT, async {
        let key = SigningKey::ec("k");
        let hang = Server::start("127.4.0.2", Reply::Hang).await;
        let iss = "https://hanging.example";
        let mut mesh = Mesh::start(MeshOptions {
            policies: request_authentication(&[(iss.into(), Some(hang.url("/jwks")))]),
            tune: Some(short_wait),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let token = key.sign(&claims(iss, "alice", json!({})));
        let started = tokio::time::Instant::now();
        // Concurrent requests and then one more: each is answered after the 1 s wait, none
        // after the rule's 20 s, none after a second fetch queued behind the first.
        let answers = futures::future::join_all((0..3).map(|_| get(&mesh, &token))).await;
        let again = get(&mesh, &token).await;
        let elapsed = started.elapsed();
        for r in answers.iter().chain([&again]) {
            assert_eq!(r.status, 401, "{}", r.body);
            assert_eq!(r.body, "Jwks remote fetch is failed");
        }
        // Generous against a loaded machine, far below the 8 s ceiling and the rule's 20 s
        // (two 1 s waits in sequence, plus tunnels).
        assert!(
            elapsed < Duration::from_secs(6),
            "answered after {elapsed:?}"
        );
        // One fetch in flight, joined by every request: one connection to the server.
        assert_eq!(hang.accepts(), 1, "requests started fetches of their own");
        // The fetch itself ends at the ceiling, not at the rule's 20 s, and is reported.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let err = loop {
            let rule = dumped_rule(&mesh, iss);
            if let Some(e) = rule["lastFetchError"].as_str() {
                break e.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no fetch outcome: {rule}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(err, "timed out after 8s");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the fetch ran to the rule's timeout"
        );
        mesh.shutdown().await;
    })
    .await
    .unwrap();
}

/// A 1 MiB cap, so that the endless body is cut early.
fn small_cap(s: &mut Settings) {
    s.jwks.max_bytes = 1 << 20;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_cut_at_the_cap() {
    tokio::time::timeout(LIMIT, async {
        let key = SigningKey::ec("k");
        let closed = Arc::new(AtomicBool::new(false));
        let endless = Server::start("127.4.0.3", Reply::Endless(closed.clone())).await;
        let iss = "https://endless.example";
        let mut mesh = Mesh::start(MeshOptions {
            policies: request_authentication(&[(iss.into(), Some(endless.url("/jwks")))]),
            tune: Some(small_cap),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let r = get(&mesh, &key.sign(&claims(iss, "alice", json!({})))).await;
        assert_eq!(r.status, 401, "{}", r.body);
        let rule = dumped_rule(&mesh, iss);
        assert_eq!(
            rule["lastFetchError"],
            format!(
                "{}: body larger than 1048576 bytes (--jwks-max-bytes)",
                endless.url("/jwks")
            ),
        );
        // The waypoint hung up: the server's writes failed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !closed.load(Ordering::SeqCst) {
            assert!(tokio::time::Instant::now() < deadline, "still reading");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        mesh.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_load_with_the_default_cap() {
    tokio::time::timeout(LIMIT, async {
        let key = SigningKey::rsa("key-7777");
        // The signing key's public half published under 10,000 kids (one RSA modulus each,
        // as a real set of RSA-2048 keys would weigh), the token naming one of them.
        let mut set = Vec::with_capacity(10_000);
        for i in 0..10_000 {
            let mut jwk = key.jwk.clone();
            jwk["kid"] = json!(format!("key-{i}"));
            set.push(jwk);
        }
        let body = json!({"keys": set}).to_string();
        assert!(
            body.len() > 4_000_000,
            "a {} byte set: nearly four times the old 1 MiB cap",
            body.len()
        );
        let server = Server::start("127.4.0.4", Reply::Json(Arc::new(body))).await;
        let iss = "https://large.example";
        let mut mesh = Mesh::start(MeshOptions {
            policies: request_authentication(&[(iss.into(), Some(server.url("/jwks")))]),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let token = key.sign(&claims(iss, "alice", json!({})));
        // The first request may come before the fetch ends (the wait is bounded): retry briefly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let r = loop {
            let r = get(&mesh, &token).await;
            if r.status == 200 || tokio::time::Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(r.status, 200, "{}", r.body);
        let rule = dumped_rule(&mesh, iss);
        assert_eq!(rule["fetchedKeys"], 10_000);
        assert_eq!(rule["lastFetchError"], Value::Null);
        mesh.shutdown().await;
    })
    .await
    .unwrap();
}
