//! One table of requests, each with the answer Istio's Envoy waypoint gives it, sent two ways:
//! as bytes on the wire through the live data path (HBONE tunnel, waypoint, ztunnel shim, app),
//! and, where its input can say the same thing, through `waypoint authz eval`. Both must give
//! the table's answer, so the proxy and the evaluator cannot drift apart.
//!
//! The classes: repeated header fields (joined with `,` in arrival order), header values with
//! bytes >= 0x80 (obs-text), `Host` validity, request-target forms (origin, absolute, `*`,
//! authority, none of them), fragments, raw bytes in the path, the pseudo-headers `:path`,
//! `:method`, `:authority` and `:scheme` in `when` conditions, and HTTP/1.1 and h2c clients
//! calling ports declared HTTP/1.1 (`name: http`) and HTTP/2 (`appProtocol: grpc`).
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::time::Duration;

use waypoint_tests::http1;
use waypoint_tests::mesh::{GRPC_VIP, HTTPBIN_VIP, Mesh, MeshOptions};
use waypoint_tests::ztunnel::HboneClient;

const LIMIT: Duration = Duration::from_secs(120);
/// A request the waypoint neither answers nor forwards within this long is reported as hung.
const PER_REQUEST: Duration = Duration::from_secs(5);

const FORWARDED: &str = "for=\"10.244.1.9:51000\"";

/// `sleep` may call anything but `/role*`, which needs `x-role: admin`; the DENY rules each
/// watch one class of the table.
const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules:
  - from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}}]
    to: [{operation: {notPaths: ["/role*"]}}]
  - from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}}]
    to: [{operation: {paths: ["/role*"]}}]
    when: [{key: "request.headers[x-role]", values: [admin]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-classes, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - when: [{key: "request.headers[x-deny]", values: ["*evil"]}]
  - when: [{key: "request.headers[x-block]", values: ["*"]}]
  - when: [{key: "request.headers[x-bytes]", values: ["café"]}]
  - to: [{operation: {hosts: [evil.example]}}]
  - to: [{operation: {paths: ["/admin*", "/caf%C3%A9"]}}]
  - when: [{key: "request.headers[:path]", values: ["/pseudo/path*"]}]
  - when: [{key: "request.headers[:method]", values: [PATCH]}]
  - when: [{key: "request.headers[:authority]", values: ["pseudo.example*"]}]
  - when: [{key: "request.headers[:scheme]", values: [https]}]
"#;

/// How a case is sent.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// These exact bytes, over a fresh tunnel, as an HTTP/1.1 client writes them.
    Http1(&'static [u8]),
    /// HTTP/2 with prior knowledge (h2c) over a fresh tunnel: method, scheme, authority, path
    /// and header fields in this order.
    H2c {
        method: &'static str,
        scheme: &'static str,
        authority: &'static str,
        path: &'static str,
        headers: &'static [(&'static str, &'static [u8])],
    },
}

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    /// The Service VIP the tunnel goes to: `HTTPBIN_VIP` (port `http`, an HTTP/1.1-only app) or
    /// `GRPC_VIP` (`appProtocol: grpc`, an h2c-only app).
    vip: &'static str,
    wire: Wire,
    /// Envoy's answer: 200 (allowed, the app answered), 403 (RBAC), 400/404 (refused before
    /// policy).
    want: u16,
    /// Ours, where it knowingly differs from Envoy's: always a refusal before policy, made by
    /// Pingora's HTTP/1 codec (see `waypoint::proxy::request`).
    ours: Option<u16>,
}

const fn h1(name: &'static str, wire: &'static [u8], want: u16) -> Case {
    Case {
        name,
        vip: HTTPBIN_VIP,
        wire: Wire::Http1(wire),
        want,
        ours: None,
    }
}

/// A case where Pingora's codec refuses, with `ours`, what Envoy decides as `want`.
const fn pingora_refuses(mut case: Case, ours: u16) -> Case {
    case.ours = Some(ours);
    case
}

const fn h2c(
    name: &'static str,
    vip: &'static str,
    method: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static [u8])],
    want: u16,
) -> Case {
    Case {
        name,
        vip,
        wire: Wire::H2c {
            method,
            scheme: "http",
            authority,
            path,
            headers,
        },
        want,
        ours: None,
    }
}

/// The table. Each class comes with neighbours that must NOT trip it.
const CASES: &[Case] = &[
    // Repeated fields: Envoy matches the values joined with `,` in arrival order.
    h1(
        "x-deny single evil",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-deny: evil\r\n\r\n",
        403,
    ),
    h1(
        "x-deny single ok",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-deny: ok\r\n\r\n",
        200,
    ),
    h1(
        "x-deny ok then evil",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-deny: ok\r\nx-deny: evil\r\n\r\n",
        403,
    ),
    h1(
        "x-deny evil then ok",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-deny: evil\r\nx-deny: ok\r\n\r\n",
        200,
    ),
    h1(
        "x-deny ok, evil in one line",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-deny: ok, evil\r\n\r\n",
        403,
    ),
    h1(
        "x-deny split by another field",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-deny: ok\r\nx-other: 1\r\nX-Deny: evil\r\n\r\n",
        403,
    ),
    h1(
        "x-role admin",
        b"GET /role/x HTTP/1.1\r\nhost: httpbin\r\nx-role: admin\r\n\r\n",
        200,
    ),
    h1(
        "x-role admin then guest",
        b"GET /role/x HTTP/1.1\r\nhost: httpbin\r\nx-role: admin\r\nx-role: guest\r\n\r\n",
        403,
    ),
    h1(
        "x-role guest then admin",
        b"GET /role/x HTTP/1.1\r\nhost: httpbin\r\nx-role: guest\r\nx-role: admin\r\n\r\n",
        403,
    ),
    h1(
        "x-role absent",
        b"GET /role/x HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        403,
    ),
    // Field values are bytes: obs-text (>= 0x80) is legal and never makes a value absent.
    h1(
        "x-block 0xff",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-block: \xff\r\n\r\n",
        403,
    ),
    h1(
        "x-block obs-text inside",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-block: a\x80b\r\n\r\n",
        403,
    ),
    h1(
        "x-block obs-text last",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-block: ab\xfe\r\n\r\n",
        403,
    ),
    h1(
        "x-block utf-8",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-block: caf\xc3\xa9\r\n\r\n",
        403,
    ),
    h1(
        "x-block empty",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-block:\r\n\r\n",
        403,
    ),
    h1(
        "x-block absent",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-blocks: 1\r\n\r\n",
        200,
    ),
    h1(
        "x-bytes utf-8 cafe",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-bytes: caf\xc3\xa9\r\n\r\n",
        403,
    ),
    h1(
        "x-bytes latin-1 cafe",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-bytes: caf\xe9\r\n\r\n",
        200,
    ),
    h1(
        "x-bytes obs-text then utf-8 in a second field",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nx-bytes: \xff\r\nx-bytes: caf\xc3\xa9\r\n\r\n",
        200,
    ),
    // Host: Envoy refuses an authority with characters outside its set (obs-text included),
    // and compares hosts ignoring case.
    h1(
        "host evil.example",
        b"GET /get HTTP/1.1\r\nhost: evil.example\r\n\r\n",
        403,
    ),
    h1(
        "host EVIL.example",
        b"GET /get HTTP/1.1\r\nhost: EVIL.example\r\n\r\n",
        403,
    ),
    h1(
        "host evil.example + obs-text",
        b"GET /get HTTP/1.1\r\nhost: evil.example\xff\r\n\r\n",
        400,
    ),
    h1(
        "host obs-text only",
        b"GET /get HTTP/1.1\r\nhost: \xff\r\n\r\n",
        400,
    ),
    h1(
        "host twice",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\nhost: evil.example\r\n\r\n",
        400,
    ),
    h1("host missing", b"GET /get HTTP/1.1\r\nx-a: 1\r\n\r\n", 400),
    // Request-target forms (RFC 9112 3.2).
    h1(
        "origin-form",
        b"GET /get?a=1 HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        200,
    ),
    h1(
        "relative target",
        b"GET admin/x HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        400,
    ),
    h1(
        "relative target, plain",
        b"GET get HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        400,
    ),
    h1(
        "asterisk with GET",
        b"GET * HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        400,
    ),
    h1(
        "asterisk with OPTIONS",
        b"OPTIONS * HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        404,
    ),
    h1(
        "absolute-form evil, no host",
        b"GET http://evil.example/get HTTP/1.1\r\n\r\n",
        403,
    ),
    pingora_refuses(
        h1(
            "absolute-form evil, host httpbin",
            b"GET http://evil.example/get HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            403,
        ),
        400,
    ),
    pingora_refuses(
        h1(
            "absolute-form httpbin, host evil",
            b"GET http://httpbin/get HTTP/1.1\r\nhost: evil.example\r\n\r\n",
            200,
        ),
        400,
    ),
    h1(
        "absolute-form admin path",
        b"GET http://httpbin/x/../admin HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        403,
    ),
    h1(
        "absolute-form no path",
        b"GET http://httpbin HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        200,
    ),
    h1(
        "absolute-form bad scheme",
        b"GET ftp://httpbin/get HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        400,
    ),
    h1(
        "authority-form with GET",
        b"GET httpbin:8000 HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        400,
    ),
    // Envoy does not proxy a CONNECT its HTTP chain has no upgrade for; its status for it is
    // not pinned here: Pingora answers 405 before any filter, and the request goes nowhere.
    h1(
        "authority-form with CONNECT",
        b"CONNECT httpbin:8000 HTTP/1.1\r\nhost: httpbin:8000\r\n\r\n",
        405,
    ),
    // Fragments are stripped before normalization.
    h1(
        "fragment hides dot segments",
        b"GET /get#/../admin HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        200,
    ),
    h1(
        "fragment after admin",
        b"GET /admin#x HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        403,
    ),
    // Raw bytes >= 0x80 in the path are percent-encoded, then normalized.
    h1(
        "path utf-8 cafe",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        403,
    ),
    h1(
        "path escaped cafe",
        b"GET /caf%C3%A9 HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        403,
    ),
    pingora_refuses(
        h1(
            "path latin-1 cafe",
            b"GET /caf\xe9 HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            200,
        ),
        400,
    ),
    pingora_refuses(
        h1(
            "path admin + 0xff",
            b"GET /admin\xff HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            403,
        ),
        400,
    ),
    pingora_refuses(
        h1(
            "path 0xff segment then dot-dot",
            b"GET /x/\xff/../../admin HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            403,
        ),
        400,
    ),
    pingora_refuses(
        h1(
            "path 0x80 in query",
            b"GET /get?q=\x80 HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            200,
        ),
        400,
    ),
    // Pseudo-headers in `when`.
    h1(
        ":path prefix",
        b"GET /pseudo/path?x=1 HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        403,
    ),
    h1(
        ":path after normalization",
        b"GET /pseudo/x/../%70ath HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        403,
    ),
    h1(
        ":path other case",
        b"GET /Pseudo/path HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        200,
    ),
    h1(
        ":method PATCH",
        b"PATCH /get HTTP/1.1\r\nhost: httpbin\r\ncontent-length: 0\r\n\r\n",
        403,
    ),
    h1(
        ":method patch",
        b"patch /get HTTP/1.1\r\nhost: httpbin\r\ncontent-length: 0\r\n\r\n",
        200,
    ),
    h1(
        ":method patch, denied by the allow rules",
        b"patch /role/x HTTP/1.1\r\nhost: httpbin\r\ncontent-length: 0\r\n\r\n",
        403,
    ),
    h1(
        ":method GET",
        b"GET /get HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        200,
    ),
    h1(
        ":authority from host",
        b"GET /get HTTP/1.1\r\nhost: pseudo.example:8000\r\n\r\n",
        403,
    ),
    pingora_refuses(
        h1(
            ":authority from absolute-form",
            b"GET http://pseudo.example/get HTTP/1.1\r\nhost: httpbin\r\n\r\n",
            403,
        ),
        400,
    ),
    h1(
        ":scheme https from absolute-form",
        b"GET https://httpbin/get HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        403,
    ),
    h1(
        ":scheme http from absolute-form",
        b"GET http://httpbin/get HTTP/1.1\r\nhost: httpbin\r\n\r\n",
        200,
    ),
    // HTTP/1.1 client to the HTTP/2 port: the app speaks only h2c.
    Case {
        name: "http/1.1 client to grpc port",
        vip: GRPC_VIP,
        wire: Wire::Http1(
            b"POST /echo.Echo/Say HTTP/1.1\r\nhost: grpc\r\ncontent-length: 0\r\n\r\n",
        ),
        want: 200,
        ours: None,
    },
    // h2c clients: the upstream protocol follows the port, not the client.
    h2c(
        "h2c client to http port",
        HTTPBIN_VIP,
        "GET",
        "httpbin",
        "/get",
        &[],
        200,
    ),
    h2c(
        "h2c client to grpc port",
        GRPC_VIP,
        "POST",
        "grpc",
        "/echo.Echo/Say",
        &[],
        200,
    ),
    h2c(
        "h2c x-deny ok then evil",
        HTTPBIN_VIP,
        "GET",
        "httpbin",
        "/get",
        &[("x-deny", b"ok"), ("x-deny", b"evil")],
        403,
    ),
    h2c(
        "h2c x-deny evil then ok",
        HTTPBIN_VIP,
        "GET",
        "httpbin",
        "/get",
        &[("x-deny", b"evil"), ("x-deny", b"ok")],
        200,
    ),
    h2c(
        "h2c x-block obs-text",
        HTTPBIN_VIP,
        "GET",
        "httpbin",
        "/get",
        &[("x-block", b"\xff")],
        403,
    ),
    h2c(
        "h2c :authority evil",
        HTTPBIN_VIP,
        "GET",
        "evil.example",
        "/get",
        &[],
        403,
    ),
    h2c(
        "h2c :authority pseudo",
        GRPC_VIP,
        "POST",
        "pseudo.example",
        "/echo.Echo/Say",
        &[],
        403,
    ),
    h2c(
        "h2c :path pseudo",
        HTTPBIN_VIP,
        "GET",
        "httpbin",
        "/pseudo/path",
        &[],
        403,
    ),
    h2c(
        "h2c :method PATCH",
        GRPC_VIP,
        "PATCH",
        "grpc",
        "/echo.Echo/Say",
        &[],
        403,
    ),
    h2c(
        "h2c path utf-8 cafe",
        HTTPBIN_VIP,
        "GET",
        "httpbin",
        "/caf%C3%A9",
        &[],
        403,
    ),
    h2c(
        "h2c fragment-free admin",
        GRPC_VIP,
        "POST",
        "grpc",
        "/x/../admin",
        &[],
        403,
    ),
];

/// What came back: a status, or what happened instead.
fn answer_h1(resp: anyhow::Result<Option<http1::Response>>) -> String {
    match resp {
        Ok(Some(r)) => r.status.to_string(),
        Ok(None) => "closed".into(),
        Err(e) => format!("error: {e}"),
    }
}

async fn send_live(c: &HboneClient, case: &Case) -> String {
    let o = c.open(case.vip, &[("forwarded", FORWARDED)]).await.unwrap();
    assert_eq!(o.status, 200, "{}: CONNECT {}", case.name, case.vip);
    let mut s = o.stream.unwrap();
    let fut = async {
        match case.wire {
            Wire::Http1(bytes) => answer_h1(http1::raw(&mut s, bytes).await),
            Wire::H2c {
                method,
                scheme,
                authority,
                path,
                headers,
            } => {
                let (send, conn) = match h2::client::handshake(s).await {
                    Ok(x) => x,
                    Err(e) => return format!("error: {e}"),
                };
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let mut req = http::Request::builder()
                    .method(method)
                    .uri(format!("{scheme}://{authority}{path}"));
                for (k, v) in headers {
                    req = req.header(*k, http::HeaderValue::from_bytes(v).unwrap());
                }
                let req = req.body(()).unwrap();
                let result = async {
                    let mut send = send.ready().await?;
                    let (resp, _) = send.send_request(req, true)?;
                    let resp = resp.await?;
                    let status = resp.status().as_u16();
                    let mut body = resp.into_body();
                    while let Some(chunk) = body.data().await {
                        chunk?;
                    }
                    Ok::<_, h2::Error>(status)
                }
                .await;
                match result {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("error: {e}"),
                }
            }
        }
    };
    tokio::time::timeout(PER_REQUEST, fut)
        .await
        .unwrap_or_else(|_| "hung".into())
}

/// The case as an `authz eval` request document, when eval's input can carry it: a UTF-8
/// target and header values (eval reads YAML strings). A name sent more than once becomes a
/// list, in arrival order.
fn eval_doc(case: &Case) -> Option<serde_json::Value> {
    let mut http = serde_json::Map::new();
    let mut headers = serde_json::Map::new();
    let mut add = |name: &str, value: &[u8]| -> Option<()> {
        let value = serde_json::Value::from(String::from_utf8(value.to_vec()).ok()?);
        match headers.get_mut(&name.to_ascii_lowercase()) {
            None => {
                headers.insert(name.to_ascii_lowercase(), value);
            }
            Some(serde_json::Value::Array(list)) => list.push(value),
            Some(prev) => *prev = serde_json::Value::Array(vec![prev.clone(), value]),
        }
        Some(())
    };
    match case.wire {
        Wire::Http1(bytes) => {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut hs);
            req.parse(bytes).ok()?;
            for h in req.headers.iter() {
                add(h.name, h.value)?;
            }
            let target = std::str::from_utf8(bytes.split(|b| *b == b' ').nth(1)?).ok()?;
            http.insert("method".into(), req.method?.into());
            http.insert("path".into(), target.into());
        }
        Wire::H2c {
            method,
            authority,
            path,
            headers: fields,
            ..
        } => {
            for (k, v) in fields {
                add(k, v)?;
            }
            http.insert("method".into(), method.into());
            http.insert("host".into(), authority.into());
            http.insert("path".into(), path.into());
        }
    }
    http.insert("headers".into(), headers.into());
    let (svc, port) = if case.vip == GRPC_VIP {
        ("grpc", 50051)
    } else {
        ("httpbin", 8000)
    };
    Some(serde_json::json!({
        "waypoint": {"namespace": "ambient-demo", "name": "waypoint"},
        "destination": {"service": {"namespace": "ambient-demo", "name": svc}, "port": port},
        "source": {"principal": "cluster.local/ns/ambient-demo/sa/sleep", "ip": "10.244.1.9"},
        "http": http,
    }))
}

/// Runs `waypoint authz eval` on one request document against the mesh's config.
fn run_eval(mesh: &Mesh, i: usize, doc: &serde_json::Value) -> String {
    let file = mesh.dir.join(format!("eval-request-{i}.yaml"));
    std::fs::write(&file, serde_json::to_string(doc).unwrap()).unwrap();
    let out = std::process::Command::new(waypoint_tests::waypoint_bin())
        .args(["authz", "eval", "--config"])
        .arg(mesh.config_dir())
        .arg("--request")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().next().map(serde_json::from_str) {
        Some(Ok(line)) if out.status.success() => eval_answer(&line),
        _ => format!(
            "eval failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
    }
}

/// eval's line as the status a client would see.
fn eval_answer(line: &serde_json::Value) -> String {
    match (line["decision"].as_str(), line["status"].as_u64()) {
        (Some("allow"), _) => "200".into(),
        (Some("deny"), Some(s)) => s.to_string(),
        _ => format!("unexpected: {line}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_path_and_eval_answer_the_table_as_envoy() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(MeshOptions {
            policies: POLICIES.to_owned(),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let c = mesh.hbone(&mesh.sleep).await.unwrap();

        let mut report = String::new();
        let mut wrong = 0;
        for (i, case) in CASES.iter().enumerate() {
            let eval = eval_doc(case).map(|d| run_eval(&mesh, i, &d));
            let live = send_live(&c, case).await;
            let want = case.ours.unwrap_or(case.want).to_string();
            let ok = live == want && eval.as_ref().is_none_or(|e| *e == want);
            if !ok {
                wrong += 1;
            }
            writeln!(
                report,
                "{} {:<48} envoy {}  want {want}  live {live:<8} eval {}",
                if ok { "ok  " } else { "FAIL" },
                case.name,
                case.want,
                eval.as_deref().unwrap_or("-"),
            )
            .unwrap();
        }
        // The answers, one line per case, are this test's record (`--nocapture` shows them).
        #[allow(clippy::print_stdout)]
        {
            println!("{report}");
        }
        assert_eq!(wrong, 0, "cases answered unlike Envoy:\n{report}");
    })
    .await
    .unwrap();
}
