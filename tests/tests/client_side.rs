//! The client side decided as Envoy's waypoint decides it, through the live data path (HBONE
//! tunnel, waypoint, ztunnel shim, app) with raw bytes: protocol detection on ports with no
//! declared protocol, denial at the headers (HTTP/1, h2c, gRPC), and HTTP/1.1 as Envoy's codec
//! serves it (pipelining, header limits, framing, version, the request-headers timeout).
//!
//! Each case pins the status, what the app received (its echo of the request, or that no
//! request reached it at all) and whether the connection is still usable afterwards.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::hbone::stream::H2Stream;
use waypoint::settings::Settings;
use waypoint_tests::jwt::{SigningKey, claims, jwks};
use waypoint_tests::mesh::{GRPC_VIP, HTTPBIN_VIP, Mesh, MeshOptions};

/// Every test is bounded: a hang is a failure, not a stuck CI job.
const LIMIT: Duration = Duration::from_secs(120);
/// An answer that does not come within this long is reported as `hung`.
const PER_ANSWER: Duration = Duration::from_secs(5);
const FORWARDED: &str = "for=\"10.244.1.9:51000\"";
const ISSUER: &str = "https://issuer.example";

/// A RequestAuthentication on the whole waypoint (its output header `x-jwt-role` is what a
/// client forges), and a DENY on `/admin*` and on one gRPC service.
fn policies(signing: &SigningKey) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: ambient-demo}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-jwt-role, claim: role}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: ambient-demo}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*", "/grpc.Denied/*"]}}}}]
"#,
        jwks = jwks(&[signing])
    )
}

async fn mesh(signing: &SigningKey, tune: fn(&mut Settings)) -> Mesh {
    Mesh::start(MeshOptions {
        policies: policies(signing),
        tune: Some(tune),
        ..MeshOptions::default()
    })
    .await
    .unwrap()
}

/// Requests that reached an app through the waypoint so far.
fn forwarded(mesh: &Mesh) -> u64 {
    let m = &mesh.running().metrics;
    m.upstream_http_new.get() + m.upstream_http_reused.get()
}

/// A fresh tunnel to `authority` from `sleep`.
async fn tunnel(mesh: &Mesh, authority: &str) -> H2Stream {
    let c = mesh.hbone(&mesh.sleep).await.unwrap();
    let o = c
        .open(authority, &[("forwarded", FORWARDED)])
        .await
        .unwrap();
    assert_eq!(o.status, 200, "CONNECT {authority}");
    o.stream.unwrap()
}

// ---------------------------------------------------------------------------------------------
// An HTTP/1 client that writes raw bytes and reads answers off one buffer, so pipelined
// answers are not lost between reads.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// The waypoint ended the stream.
    Closed,
    /// Nothing within [`PER_ANSWER`].
    Hung,
}

impl Answer {
    fn status(&self) -> String {
        match self {
            Answer::Response { status, .. } => status.to_string(),
            Answer::Closed => "closed".into(),
            Answer::Hung => "hung".into(),
        }
    }

    fn body(&self) -> &str {
        match self {
            Answer::Response { body, .. } => body,
            _ => "",
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        match self {
            Answer::Response { headers, .. } => headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

struct Client {
    s: H2Stream,
    buf: Vec<u8>,
}

impl Client {
    fn new(s: H2Stream) -> Client {
        Client { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // A write may fail once the waypoint has answered and closed; the answer says so.
        let _ = self.s.write_all(bytes).await;
    }

    async fn answer(&mut self) -> Answer {
        tokio::time::timeout(PER_ANSWER, self.read_answer())
            .await
            .unwrap_or(Answer::Hung)
    }

    async fn read_answer(&mut self) -> Answer {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let status = resp.code.unwrap_or(0);
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let len = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                while self.buf.len() < n + len {
                    if !self.fill().await {
                        return Answer::Closed;
                    }
                }
                let body = String::from_utf8_lossy(&self.buf[n..n + len]).into_owned();
                self.buf.drain(..n + len);
                return Answer::Response {
                    status,
                    headers,
                    body,
                };
            }
            if !self.fill().await {
                return Answer::Closed;
            }
        }
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Whether a plain request still gets the app's answer on this connection.
    async fn usable(&mut self) -> bool {
        self.send(b"GET /get HTTP/1.1\r\nhost: httpbin\r\n\r\n")
            .await;
        self.answer().await.status() == "200"
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Protocol detection on a port with no declared protocol (a pod addressed directly).

/// Generous request-headers timeout (a first line may pause 1.5 s), short detection timeout.
fn detection_timeouts(run: &mut Settings) {
    run.server.timeouts.request_headers = Duration::from_secs(4);
    run.protocol_detection_timeout = Duration::from_secs(3);
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Send(&'static [u8]),
    Pause(Duration),
}

struct DetectCase {
    name: &'static str,
    steps: &'static [Step],
    status: &'static str,
    /// The app's echo of the request starts with this (method and path).
    app_saw: Option<&'static str>,
}

const DETECT: &[DetectCase] = &[
    DetectCase {
        name: "slow first line (first byte, then 1.5 s)",
        steps: &[
            Step::Send(b"G"),
            Step::Pause(Duration::from_millis(1500)),
            Step::Send(b"ET /headers HTTP/1.1\r\nhost: httpbin\r\nx-jwt-role: admin\r\n\r\n"),
        ],
        status: "200",
        app_saw: Some("GET /headers"),
    },
    DetectCase {
        name: "slow first line to a denied path",
        steps: &[
            Step::Send(b"GET /adm"),
            Step::Pause(Duration::from_millis(1500)),
            Step::Send(b"in HTTP/1.1\r\nhost: httpbin\r\n\r\n"),
        ],
        status: "403",
        app_saw: None,
    },
    DetectCase {
        name: "silence 1 s, then a request",
        steps: &[
            Step::Pause(Duration::from_secs(1)),
            Step::Send(b"GET /admin HTTP/1.1\r\nhost: httpbin\r\n\r\n"),
        ],
        status: "403",
        app_saw: None,
    },
    DetectCase {
        name: "silence 1 s, then an allowed request with a forged output header",
        steps: &[
            Step::Pause(Duration::from_secs(1)),
            Step::Send(b"GET /ok HTTP/1.1\r\nhost: httpbin\r\nx-jwt-role: admin\r\n\r\n"),
        ],
        status: "200",
        app_saw: Some("GET /ok"),
    },
    DetectCase {
        name: "PURGE with a forged x-jwt-role",
        steps: &[Step::Send(
            b"PURGE /cache HTTP/1.1\r\nhost: httpbin\r\nx-jwt-role: admin\r\n\r\n",
        )],
        status: "200",
        app_saw: Some("PURGE /cache"),
    },
    DetectCase {
        name: "PROPFIND with a forged x-jwt-role",
        steps: &[Step::Send(
            b"PROPFIND /dav HTTP/1.1\r\nhost: httpbin\r\nx-jwt-role: admin\r\n\r\n",
        )],
        status: "200",
        app_saw: Some("PROPFIND /dav"),
    },
    DetectCase {
        name: "PURGE /admin",
        steps: &[Step::Send(
            b"PURGE /admin HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        )],
        status: "403",
        app_saw: None,
    },
    DetectCase {
        name: "PROPFIND /admin",
        steps: &[Step::Send(
            b"PROPFIND /admin HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        )],
        status: "403",
        app_saw: None,
    },
    DetectCase {
        name: "a method nobody registered",
        steps: &[Step::Send(
            b"X-CUSTOM_1 /x HTTP/1.1\r\nhost: httpbin\r\nx-jwt-role: admin\r\n\r\n",
        )],
        status: "200",
        app_saw: Some("X-CUSTOM_1 /x"),
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_ports_detect_http_as_envoys_inspector() {
    tokio::time::timeout(LIMIT, async {
        let signing = SigningKey::ec("k1");
        let mesh = mesh(&signing, detection_timeouts).await;
        let pod = SocketAddr::new(mesh.httpbin_pods[0], 8080).to_string();
        let mut failures = Vec::new();
        for case in DETECT {
            let before = forwarded(&mesh);
            let mut c = Client::new(tunnel(&mesh, &pod).await);
            for step in case.steps {
                match step {
                    Step::Send(b) => c.send(b).await,
                    Step::Pause(d) => tokio::time::sleep(*d).await,
                }
            }
            let a = c.answer().await;
            let reached = forwarded(&mesh) - before;
            let body = a.body().to_owned();
            let usable = c.usable().await;
            eprintln!(
                "probe {}: {} reached-app={reached} usable={usable} {body:?}",
                case.name,
                a.status()
            );
            let mut wrong = Vec::new();
            if a.status() != case.status {
                wrong.push(format!("status {} (want {})", a.status(), case.status));
            }
            match case.app_saw {
                Some(line) => {
                    if reached != 1 || !body.starts_with(&format!("httpbin-1 {line}\n")) {
                        wrong.push(format!("app saw {body:?} ({reached} requests)"));
                    }
                    // The waypoint removed the forged output header and added the client.
                    if body.contains("x-jwt-role") {
                        wrong.push("the forged x-jwt-role reached the app".into());
                    }
                    if !body.contains("x-forwarded-for: 10.244.1.9") {
                        wrong.push("no x-forwarded-for".into());
                    }
                }
                None if reached != 0 => wrong.push(format!("{reached} requests reached the app")),
                None => {}
            }
            if a.status() == "403" && body != "RBAC: access denied" {
                wrong.push(format!("403 body {body:?}"));
            }
            if !usable {
                wrong.push("the connection is not usable afterwards".into());
            }
            if !wrong.is_empty() {
                failures.push(format!("{}: {}", case.name, wrong.join("; ")));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_where_l7_applies_and_tcp_elsewhere() {
    tokio::time::timeout(LIMIT, async {
        let signing = SigningKey::ec("k1");
        // L7 configuration applies (a RequestAuthentication on the waypoint, and no DENY, which
        // on TCP would drop its `paths` and deny everything): silence is never TCP. The tunnel
        // goes to the echo pod, which would echo if the bytes were relayed.
        let authn_only = policies(&signing);
        let authn_only = authn_only.split("---").next().unwrap().to_owned();
        let mesh = Mesh::start(MeshOptions {
            policies: authn_only,
            tune: Some(detection_timeouts),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let echo = SocketAddr::new(mesh.tcp_echo_pod, 9000).to_string();
        let m = &mesh.running().metrics;
        let silent_before = m.timeouts.first_byte.get();
        let mut s = tunnel(&mesh, &echo).await;
        let mut b = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await;
        eprintln!("probe silent client, L7 config: {r:?}");
        assert!(
            matches!(r, Ok(Ok(0) | Err(_))),
            "closed, not relayed: {r:?}"
        );
        assert_eq!(m.timeouts.first_byte.get(), silent_before + 1);
        // Bytes that cannot be HTTP are still TCP there.
        let mut s = tunnel(&mesh, &echo).await;
        s.write_all(b"\x16\x03\x01 not http").await.unwrap();
        let mut got = [0u8; 12];
        let r = tokio::time::timeout(PER_ANSWER, s.read_exact(&mut got)).await;
        eprintln!("probe opaque bytes, L7 config: {r:?}");
        assert_eq!(&got, b"\x16\x03\x01 not http", "{r:?}");

        // No L7 configuration: the server-first fallback stays (silence, then TCP).
        let plain = Mesh::start(MeshOptions {
            policies: String::new(),
            tune: Some(detection_timeouts),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let echo = SocketAddr::new(plain.tcp_echo_pod, 9000).to_string();
        let mut s = tunnel(&plain, &echo).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut got = [0u8; 18];
        let r = tokio::time::timeout(PER_ANSWER, s.read_exact(&mut got)).await;
        eprintln!("probe silent client, no L7 config: {r:?}");
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n", "relayed as TCP: {r:?}");
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. Denial at the headers.

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_are_answered_at_the_headers() {
    tokio::time::timeout(LIMIT, async {
        let signing = SigningKey::ec("k1");
        let mesh = mesh(&signing, |_| {}).await;
        let mut failures = Vec::new();
        let mut check = |name: &str, got: String, want: &str| {
            eprintln!("probe {name}: {got}");
            if got != want {
                failures.push(format!("{name}: got {got}, want {want}"));
            }
        };

        // A 32 MiB POST: the 403 comes after the head and 64 KiB of body, and the connection
        // ends (the rest of the body cannot be told from a next request).
        let before = forwarded(&mesh);
        let mut c = Client::new(tunnel(&mesh, HTTPBIN_VIP).await);
        c.send(
            format!(
                "POST /admin HTTP/1.1\r\nhost: httpbin\r\ncontent-length: {}\r\n\r\n",
                32 * MIB
            )
            .as_bytes(),
        )
        .await;
        c.send(&vec![b'x'; 64 * 1024]).await;
        let a = c.answer().await;
        let next = c.answer().await;
        check(
            "32 MiB denied POST",
            format!(
                "{} {:?} then {} app={}",
                a.status(),
                a.body(),
                next.status(),
                forwarded(&mesh) - before
            ),
            "403 \"RBAC: access denied\" then closed app=0",
        );

        // Expect: 100-continue: the 403, never a 100.
        let mut c = Client::new(tunnel(&mesh, HTTPBIN_VIP).await);
        c.send(b"POST /admin HTTP/1.1\r\nhost: httpbin\r\ncontent-length: 10\r\nexpect: 100-continue\r\n\r\n")
            .await;
        let a = c.answer().await;
        let next = c.answer().await;
        check(
            "denied Expect: 100-continue",
            format!("{} then {}", a.status(), next.status()),
            "403 then closed",
        );

        // A denied POST whose small body came with it: answered, and the connection stays.
        let mut c = Client::new(tunnel(&mesh, HTTPBIN_VIP).await);
        c.send(b"POST /admin HTTP/1.1\r\nhost: httpbin\r\ncontent-length: 5\r\n\r\nhello")
            .await;
        let a = c.answer().await;
        check(
            "denied POST, body already sent",
            format!("{} usable={}", a.status(), c.usable().await),
            "403 usable=true",
        );

        // h2c: a denied POST whose body is still coming is answered at once, then its stream
        // is reset with NO_ERROR (or CANCEL) as Envoy does.
        let got = h2c_denied_streaming_post(&mesh).await;
        eprintln!("probe denied h2c POST with body still coming: {got}");
        if !["NO_ERROR", "CANCEL"]
            .iter()
            .any(|r| got == format!("403 RBAC: access denied reset {r}"))
        {
            failures.push(format!("denied h2c POST with body still coming: got {got}"));
        }
        assert!(failures.is_empty(), "{failures:#?}");
    })
    .await
    .unwrap();
}

/// Sends a POST to `/admin` with 64 KiB of a body that never ends; reports the answer and how
/// the stream ended.
async fn h2c_denied_streaming_post(mesh: &Mesh) -> String {
    let s = tunnel(mesh, GRPC_VIP).await;
    let (send, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post("http://grpc/admin")
        .header("content-type", "application/octet-stream")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from(vec![b'x'; 64 * 1024]), false)
        .unwrap();
    let outcome = async {
        let resp = resp.await?;
        let status = resp.status().as_u16();
        let mut rb = resp.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = rb.data().await {
            text.extend_from_slice(&chunk?);
        }
        let reset = std::future::poll_fn(|cx| body.poll_reset(cx)).await?;
        Ok::<_, h2::Error>(format!(
            "{status} {} reset {reset:?}",
            String::from_utf8_lossy(&text)
        ))
    };
    match tokio::time::timeout(PER_ANSWER, outcome).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "hung".into(),
    }
}

/// One gRPC-style call over h2c to the grpc service: status, grpc-status, grpc-message,
/// whether the response ended with its headers (trailers-only), and the body.
async fn grpc_call(mesh: &Mesh, path: &str, token: Option<&str>) -> String {
    let s = tunnel(mesh, GRPC_VIP).await;
    let (send, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let call = async {
        let mut send = send.ready().await?;
        let mut req = http::Request::post(format!("http://grpc{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let (resp, mut body) = send.send_request(req.body(()).unwrap(), false)?;
        // One empty gRPC message.
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)?;
        let resp = resp.await?;
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .unwrap_or_else(|| "-".into())
        };
        let summary = format!(
            "{} grpc-status={} grpc-message={:?} trailers-only={}",
            resp.status().as_u16(),
            header("grpc-status"),
            header("grpc-message"),
            resp.body().is_end_stream()
        );
        let mut rb = resp.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = rb.data().await {
            text.extend_from_slice(&chunk?);
        }
        Ok::<_, h2::Error>(format!("{summary} {:?}", String::from_utf8_lossy(&text)))
    };
    match tokio::time::timeout(PER_ANSWER, call).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "hung".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_denied_as_envoy_denies_them() {
    tokio::time::timeout(LIMIT, async {
        let signing = SigningKey::ec("k1");
        // Same kid as the published key, another key: the signature does not verify.
        let unpublished = SigningKey::ec("k1");
        let mesh = mesh(&signing, |_| {}).await;
        let bad_token = unpublished.sign(&claims(ISSUER, "mallory", json!({})));
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            (
                "denied call",
                "/grpc.Denied/Call",
                None,
                "200 grpc-status=7 grpc-message=\"RBAC: access denied\" trailers-only=true \"\"",
            ),
            (
                "allowed call",
                "/grpc.Allowed/Call",
                None,
                "200 grpc-status=- grpc-message=\"-\" trailers-only=false \"grpc-1 h2c POST /grpc.Allowed/Call\\n\"",
            ),
            (
                "call with a token no key verifies",
                "/grpc.Allowed/Call",
                Some(&bad_token),
                "200 grpc-status=16 grpc-message=\"Jwt verification fails\" trailers-only=true \"\"",
            ),
        ];
        let mut failures = Vec::new();
        for (name, path, token, want) in cases {
            let got = grpc_call(&mesh, path, *token).await;
            eprintln!("probe {name}: {got}");
            if got != *want {
                failures.push(format!("{name}: got {got}\n want {want}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. HTTP/1.1 as Envoy's codec.

fn short_headers_timeout(run: &mut Settings) {
    run.server.timeouts.request_headers = Duration::from_secs(1);
}

fn fields(n: usize) -> Vec<u8> {
    let mut r = String::from("GET /get HTTP/1.1\r\nhost: httpbin\r\n");
    for i in 1..n {
        r.push_str(&format!("x-f{i}: v\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn big_header(kib: usize) -> Vec<u8> {
    format!(
        "GET /get HTTP/1.1\r\nhost: httpbin\r\nx-big: {}\r\n\r\n",
        "a".repeat(kib * 1024)
    )
    .into_bytes()
}

struct CodecCase {
    name: &'static str,
    bytes: Vec<u8>,
    /// The answers, in order (`closed` for the end of the stream).
    want: &'static [&'static str],
    /// Requests the app gets.
    reached: u64,
    usable: bool,
}

fn codec_cases() -> Vec<CodecCase> {
    let case = |name, bytes: &[u8], want, reached, usable| CodecCase {
        name,
        bytes: bytes.to_vec(),
        want,
        reached,
        usable,
    };
    vec![
        case(
            "three pipelined requests, the last denied",
            b"GET /get?n=1 HTTP/1.1\r\nhost: httpbin\r\n\r\nGET /get?n=2 HTTP/1.1\r\nhost: httpbin\r\n\r\nGET /admin HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            &["200 /get?n=1", "200 /get?n=2", "403"],
            2,
            true,
        ),
        case(
            "pipelined POST bodies, chunked and sized",
            b"POST /a HTTP/1.1\r\nhost: httpbin\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST /b HTTP/1.1\r\nhost: httpbin\r\ncontent-length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            &["200 /a", "200 /b", "200 /c"],
            3,
            true,
        ),
        CodecCase {
            name: "a 4 MiB POST with a GET pipelined behind its body",
            bytes: {
                let mut b = format!(
                    "POST /big HTTP/1.1\r\nhost: httpbin\r\ncontent-length: {}\r\n\r\n",
                    4 * MIB
                )
                .into_bytes();
                b.resize(b.len() + 4 * MIB, b'x');
                b.extend_from_slice(b"GET /after HTTP/1.1\r\nhost: httpbin\r\n\r\n");
                b
            },
            want: &["200 /big", "200 /after"],
            reached: 2,
            usable: true,
        },
        CodecCase {
            name: "a 100 KiB header",
            bytes: big_header(100),
            want: &["431", "closed"],
            reached: 0,
            usable: false,
        },
        CodecCase {
            name: "a 59 KiB header (within 60 KiB)",
            bytes: big_header(59),
            want: &["200 /get"],
            reached: 1,
            usable: true,
        },
        CodecCase {
            name: "150 header fields",
            bytes: fields(150),
            want: &["431", "closed"],
            reached: 0,
            usable: false,
        },
        CodecCase {
            name: "101 header fields",
            bytes: fields(101),
            want: &["431", "closed"],
            reached: 0,
            usable: false,
        },
        case(
            "Content-Length with Transfer-Encoding",
            b"POST /get HTTP/1.1\r\nhost: httpbin\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            &["400", "closed"],
            0,
            false,
        ),
        case(
            "a transfer-coding other than chunked",
            b"POST /get HTTP/1.1\r\nhost: httpbin\r\ntransfer-encoding: gzip\r\n\r\n",
            &["501", "closed"],
            0,
            false,
        ),
        case(
            "two different Content-Lengths",
            b"POST /get HTTP/1.1\r\nhost: httpbin\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            &["400", "closed"],
            0,
            false,
        ),
        case(
            "HTTP/1.0",
            b"GET /get HTTP/1.0\r\nhost: httpbin\r\n\r\n",
            &["426", "closed"],
            0,
            false,
        ),
        case(
            "ten empty lines before the request line",
            b"\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET /get HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            &["400", "closed"],
            0,
            false,
        ),
        case(
            "one empty line before the request line",
            b"\r\nGET /get HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            &["200 /get"],
            1,
            true,
        ),
        case(
            "a space in the request-target",
            b"GET /a b HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            &["400", "closed"],
            0,
            false,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_is_served_as_envoys_codec_serves_it() {
    tokio::time::timeout(LIMIT, async {
        let signing = SigningKey::ec("k1");
        let mesh = mesh(&signing, |_| {}).await;
        let mut failures = Vec::new();
        for case in codec_cases() {
            let before = forwarded(&mesh);
            let mut c = Client::new(tunnel(&mesh, HTTPBIN_VIP).await);
            c.send(&case.bytes).await;
            let mut got = Vec::new();
            for _ in case.want {
                let a = c.answer().await;
                // The app echoes `name method path`: show the path it got.
                let path = a.body().lines().next().and_then(|l| l.split(' ').nth(2));
                got.push(match (a.status().as_str(), path) {
                    ("200", Some(p)) => format!("200 {p}"),
                    (s, _) => s.to_owned(),
                });
            }
            let reached = forwarded(&mesh) - before;
            let usable = case.usable && c.usable().await;
            eprintln!(
                "probe {}: {got:?} reached-app={reached} usable={usable}",
                case.name
            );
            if got != case.want || reached != case.reached || usable != case.usable {
                failures.push(format!(
                    "{}: got {got:?} app={reached} usable={usable}, want {:?} app={} usable={}",
                    case.name, case.want, case.reached, case.usable
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_the_request_headers_timeout() {
    tokio::time::timeout(LIMIT, async {
        let signing = SigningKey::ec("k1");
        let mesh = mesh(&signing, short_headers_timeout).await;
        let m = &mesh.running().metrics;
        let mut c = Client::new(tunnel(&mesh, HTTPBIN_VIP).await);
        c.send(b"GET /get HTTP/1.1\r\nhost: httpbin\r\n\r\n").await;
        let first = c.answer().await.status();
        let timeouts = m.timeouts.request_headers.get();
        // The second request's head never ends.
        c.send(b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-slow: ")
            .await;
        let second = c.answer().await;
        let after = c.answer().await.status();
        eprintln!(
            "probe second request head never ends: {first} then {} then {after}",
            second.status()
        );
        assert_eq!(
            (first.as_str(), second.status().as_str(), after.as_str()),
            ("200", "408", "closed")
        );
        assert_eq!(m.timeouts.request_headers.get(), timeouts + 1);
        assert_eq!(second.header("connection"), Some("close"));
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. Trailers.

/// gRPC's status travels in response trailers: they reach the h2c client from the h2 app. (The
/// client's request trailers do not reach the app: Pingora 0.9.1 neither reads nor forwards
/// request trailers; docs/authz.md lists it. The probe line shows what the app got.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_reach_the_h2c_client() {
    tokio::time::timeout(LIMIT, async {
        let signing = SigningKey::ec("k1");
        let mesh = mesh(&signing, |_| {}).await;
        let s = tunnel(&mesh, GRPC_VIP).await;
        let (send, conn) = h2::client::handshake(s).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let call = async {
            let mut send = send.ready().await?;
            let req = http::Request::post("http://grpc/trailers/echo")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (resp, mut body) = send.send_request(req, false)?;
            body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false)?;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-client-trailer", http::HeaderValue::from_static("1"));
            body.send_trailers(trailers)?;
            let resp = resp.await?;
            let status = resp.status().as_u16();
            let mut rb = resp.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = rb.data().await {
                text.extend_from_slice(&chunk?);
            }
            let trailers = rb.trailers().await?.unwrap_or_default();
            Ok::<_, h2::Error>((status, String::from_utf8_lossy(&text).into_owned(), trailers))
        };
        let (status, body, trailers) = tokio::time::timeout(PER_ANSWER, call)
            .await
            .expect("answered")
            .unwrap();
        eprintln!(
            "probe gRPC call with request and response trailers: {status} {body:?} response trailers {trailers:?}"
        );
        assert_eq!((status, body.as_str()), (200, "grpc-1 /trailers/echo\n"));
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
    })
    .await
    .unwrap();
}
