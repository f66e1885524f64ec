//! One table of inputs decided twice: by the live waypoint (a client's tunnel through the demo
//! mesh, HTTP/1.1 or opaque TCP inside it) and by `waypoint authz eval` on the same config and
//! the same inputs written as a request document. The two must agree on every case, and both must
//! give the table's answer, so neither can drift from the other nor be wrong in the same way. The
//! live decision must also be counted under the policy and action eval reports as deciding
//! (`waypoint_policy_decisions_total`).
//!
//! The cases cover L4 (TCP) and L7 (HTTP), allow and deny, with and without a JWT (valid, wrong
//! subject, expired), and variants of header, path (normalized), method, principal, namespace and
//! client address.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::metrics::PolicyDecision;
use waypoint_tests::http1;
use waypoint_tests::jwt::{SigningKey, claims, jwks, now};
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions, NAMESPACE, TCP_ECHO_VIP};
use waypoint_tests::ztunnel::{self, HboneClient};

const LIMIT: Duration = Duration::from_secs(120);
const PER_CASE: Duration = Duration::from_secs(5);
const ISSUER: &str = "https://issuer.example";

/// L7 rules on httpbin (principal, namespace, header, path, method, request principal), L4 rules
/// on tcp-echo (principal), and a waypoint-wide DENY on a client address block.
fn policies(jwks: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: {NAMESPACE}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: httpbin}}]
  jwtRules: [{{issuer: "{ISSUER}", jwks: '{jwks}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: httpbin-allow, namespace: {NAMESPACE}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: httpbin}}]
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/{NAMESPACE}/sa/sleep]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/get", "/status/*"]}}}}]
  - from: [{{source: {{namespaces: [{NAMESPACE}]}}}}]
    to: [{{operation: {{methods: [POST]}}}}]
    when: [{{key: "request.headers[x-team]", values: [blue]}}]
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice"]}}}}]
    to: [{{operation: {{paths: ["/admin*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: httpbin-deny, namespace: {NAMESPACE}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: httpbin}}]
  action: DENY
  rules:
  - to: [{{operation: {{methods: [DELETE]}}}}]
  - when: [{{key: "request.headers[x-evil]", values: ["*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: tcp-echo-allow, namespace: {NAMESPACE}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: tcp-echo}}]
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/{NAMESPACE}/sa/sleep, cluster.local/ns/other/sa/client]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: blocked-clients, namespace: {NAMESPACE}}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules:
  - from: [{{source: {{ipBlocks: [10.244.2.0/24]}}}}]
"#
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Sleep,
    Curl,
    /// A client in another namespace.
    Other,
}

impl Who {
    fn principal(self) -> String {
        match self {
            Who::Sleep => format!("cluster.local/ns/{NAMESPACE}/sa/sleep"),
            Who::Curl => format!("cluster.local/ns/{NAMESPACE}/sa/curl"),
            Who::Other => "cluster.local/ns/other/sa/client".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    None,
    Alice,
    Bob,
    Expired,
}

#[derive(Debug, Clone, Copy)]
struct Http {
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    token: Token,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    who: Who,
    client_ip: &'static str,
    /// `None`: opaque TCP to tcp-echo; otherwise HTTP/1.1 to httpbin.
    http: Option<Http>,
    /// `200`/`403`/`401` for HTTP, `allow`/`deny` for TCP.
    want: &'static str,
}

const IP: &str = "10.244.1.9";
const BLOCKED_IP: &str = "10.244.2.7";

const fn get(path: &'static str) -> Option<Http> {
    req("GET", path, &[], Token::None)
}

const fn req(
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    token: Token,
) -> Option<Http> {
    Some(Http {
        method,
        path,
        headers,
        token,
    })
}

const fn case(name: &'static str, who: Who, http: Option<Http>, want: &'static str) -> Case {
    Case {
        name,
        who,
        client_ip: IP,
        http,
        want,
    }
}

const fn from_ip(mut c: Case, ip: &'static str) -> Case {
    c.client_ip = ip;
    c
}

const CASES: &[Case] = &[
    // L7: principal, path, method.
    case("sleep GET /get", Who::Sleep, get("/get"), "200"),
    case(
        "sleep GET /status/200",
        Who::Sleep,
        get("/status/200"),
        "200",
    ),
    case(
        "sleep GET /headers (no rule)",
        Who::Sleep,
        get("/headers"),
        "403",
    ),
    case("curl GET /get (principal)", Who::Curl, get("/get"), "403"),
    case(
        "sleep GET /status/../get (normalized)",
        Who::Sleep,
        get("/status/../get"),
        "200",
    ),
    case(
        "sleep GET /get/../headers (normalized)",
        Who::Sleep,
        get("/get/../headers"),
        "403",
    ),
    case(
        "sleep PUT /get (method)",
        Who::Sleep,
        req("PUT", "/get", &[], Token::None),
        "403",
    ),
    // L7: namespace and header.
    case(
        "curl POST x-team blue (namespace)",
        Who::Curl,
        req("POST", "/post", &[("x-team", "blue")], Token::None),
        "200",
    ),
    case(
        "curl POST x-team red (header)",
        Who::Curl,
        req("POST", "/post", &[("x-team", "red")], Token::None),
        "403",
    ),
    case(
        "other-ns POST x-team blue (namespace)",
        Who::Other,
        req("POST", "/post", &[("x-team", "blue")], Token::None),
        "403",
    ),
    // L7 DENY beats ALLOW.
    case(
        "sleep DELETE /get (deny method)",
        Who::Sleep,
        req("DELETE", "/get", &[], Token::None),
        "403",
    ),
    case(
        "sleep GET /get x-evil (deny header)",
        Who::Sleep,
        req("GET", "/get", &[("x-evil", "1")], Token::None),
        "403",
    ),
    // L7 with a JWT.
    case(
        "curl GET /admin alice",
        Who::Curl,
        req("GET", "/admin/x", &[], Token::Alice),
        "200",
    ),
    case(
        "curl GET /admin bob",
        Who::Curl,
        req("GET", "/admin/x", &[], Token::Bob),
        "403",
    ),
    case(
        "curl GET /admin no token",
        Who::Curl,
        get("/admin/x"),
        "403",
    ),
    case(
        "sleep GET /get expired token",
        Who::Sleep,
        req("GET", "/get", &[], Token::Expired),
        "401",
    ),
    case(
        "sleep GET /get alice",
        Who::Sleep,
        req("GET", "/get", &[], Token::Alice),
        "200",
    ),
    // Client address (waypoint-wide DENY), L7 and L4.
    from_ip(
        case(
            "sleep GET /get from a blocked block",
            Who::Sleep,
            get("/get"),
            "403",
        ),
        BLOCKED_IP,
    ),
    from_ip(
        case("sleep TCP from a blocked block", Who::Sleep, None, "deny"),
        BLOCKED_IP,
    ),
    // L4.
    case("sleep TCP", Who::Sleep, None, "allow"),
    case("curl TCP (principal)", Who::Curl, None, "deny"),
    case("other-ns TCP (principal)", Who::Other, None, "allow"),
];

struct Tokens {
    alice: String,
    bob: String,
    expired: String,
}

impl Tokens {
    fn get(&self, t: Token) -> Option<&str> {
        match t {
            Token::None => None,
            Token::Alice => Some(&self.alice),
            Token::Bob => Some(&self.bob),
            Token::Expired => Some(&self.expired),
        }
    }
}

fn forwarded(ip: &str) -> String {
    format!("for=\"{ip}:51000\"")
}

/// What the live waypoint answers: the HTTP status, or for TCP whether bytes are echoed.
async fn live(c: &HboneClient, case: &Case, tokens: &Tokens) -> String {
    let vip = if case.http.is_some() {
        HTTPBIN_VIP
    } else {
        TCP_ECHO_VIP
    };
    let o = c
        .open(vip, &[("forwarded", &forwarded(case.client_ip))])
        .await
        .unwrap();
    assert_eq!(o.status, 200, "{}: CONNECT {vip}", case.name);
    let mut s = o.stream.unwrap();
    let fut = async {
        match case.http {
            Some(h) => {
                let auth = tokens.get(h.token).map(|t| format!("Bearer {t}"));
                let mut headers: Vec<(&str, &str)> = h.headers.to_vec();
                if let Some(a) = &auth {
                    headers.push(("authorization", a));
                }
                match http1::request(&mut s, h.method, h.path, &headers, "").await {
                    Ok(Some(r)) => r.status.to_string(),
                    Ok(None) => "closed".into(),
                    Err(e) => format!("error: {e}"),
                }
            }
            None => {
                // Allowed: the echo answers; denied: the waypoint ends the tunnel without a byte.
                if s.write_all(b"ping").await.is_err() {
                    return "deny".into();
                }
                let mut buf = [0u8; 4];
                match s.read_exact(&mut buf).await {
                    Ok(_) if &buf == b"ping" => "allow".into(),
                    Ok(_) => format!("echoed {buf:?}"),
                    Err(_) => "deny".into(),
                }
            }
        }
    };
    tokio::time::timeout(PER_CASE, fut)
        .await
        .unwrap_or_else(|_| "hung".into())
}

/// The case as an `authz eval` request document: the same client, address, destination and
/// request.
fn eval_doc(case: &Case, tokens: &Tokens) -> serde_json::Value {
    let (svc, vip) = match case.http {
        Some(_) => ("httpbin", HTTPBIN_VIP),
        None => ("tcp-echo", TCP_ECHO_VIP),
    };
    let vip: std::net::SocketAddr = vip.parse().unwrap();
    let mut doc = json!({
        "waypoint": {"namespace": NAMESPACE, "name": "waypoint"},
        "destination": {
            "service": {"namespace": NAMESPACE, "name": svc},
            "ip": vip.ip().to_string(),
            "port": vip.port(),
        },
        "source": {"principal": case.who.principal(), "ip": case.client_ip},
    });
    if let Some(h) = case.http {
        let headers: serde_json::Map<String, serde_json::Value> = h
            .headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        doc["http"] = json!({
            "method": h.method,
            "host": "httpbin",
            "path": h.path,
            "headers": headers,
        });
        if let Some(t) = tokens.get(h.token) {
            doc["token"] = json!(t);
        }
    }
    doc
}

/// What eval said decided, as the live waypoint counts it in `waypoint_policy_decisions_total`;
/// `None` when eval answered before policy (a refused token).
fn deciding(line: &serde_json::Value) -> Option<PolicyDecision> {
    let status = line["status"].as_u64().and_then(|s| u16::try_from(s).ok());
    if status == Some(401) {
        return None;
    }
    let (ns, name) = line["policy"]
        .as_str()
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    Some(PolicyDecision {
        policy_namespace: ns.to_owned(),
        policy_name: name.to_owned(),
        action: match line["action"].as_str() {
            Some("ALLOW") => "ALLOW",
            Some("DENY") => "DENY",
            Some("AUDIT") => "AUDIT",
            Some("CUSTOM") => "CUSTOM",
            _ => "",
        },
        decision: if line["decision"] == "allow" {
            "allow"
        } else {
            "deny"
        },
        code: status,
    })
}

/// Runs `waypoint authz eval` on every document at once; one answer (and what decided it) per
/// document.
fn eval(mesh: &Mesh, docs: &[serde_json::Value]) -> Vec<(String, Option<PolicyDecision>)> {
    let file = mesh.dir.join("equivalence-requests.yaml");
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    std::fs::write(&file, text.join("\n---\n")).unwrap();
    let out = std::process::Command::new(waypoint_tests::waypoint_bin())
        .args(["authz", "eval", "--config"])
        .arg(mesh.config_dir())
        .arg("--request")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "authz eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .zip(docs)
        .map(|(line, doc)| {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            let answer = match (
                doc.get("http").is_some(),
                line["decision"].as_str(),
                line["status"].as_u64(),
            ) {
                (true, Some("allow"), _) => "200".into(),
                (true, Some("deny"), Some(s)) => s.to_string(),
                (false, Some(d @ ("allow" | "deny")), _) => d.into(),
                _ => format!("unexpected: {line}"),
            };
            (answer, deciding(&line))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_eval_and_the_live_proxy_decide_alike() {
    tokio::time::timeout(LIMIT, async {
        let key = SigningKey::ec("k1");
        let tokens = Tokens {
            alice: key.sign(&claims(ISSUER, "alice", json!({}))),
            bob: key.sign(&claims(ISSUER, "bob", json!({}))),
            expired: key.sign(&claims(ISSUER, "alice", json!({"exp": now() - 3600}))),
        };
        let mesh = Mesh::start(MeshOptions {
            policies: policies(&jwks(&[&key])),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let other = mesh
            .pki
            .issue("spiffe://cluster.local/ns/other/sa/client", "other")
            .unwrap();
        let other = HboneClient::connect(
            mesh.waypoint_addr(),
            ztunnel::client_config(&mesh.pki, &other).unwrap(),
        )
        .await
        .unwrap();
        let sleep = mesh.hbone(&mesh.sleep).await.unwrap();
        let curl = mesh.hbone(&mesh.curl).await.unwrap();

        let docs: Vec<_> = CASES.iter().map(|c| eval_doc(c, &tokens)).collect();
        let evals = eval(&mesh, &docs);
        assert_eq!(evals.len(), CASES.len(), "one eval line per case");

        let mut report = String::new();
        let mut wrong = 0;
        let counted = &mesh.running().metrics.policy_decisions;
        for (case, (eval, decided)) in CASES.iter().zip(&evals) {
            let client = match case.who {
                Who::Sleep => &sleep,
                Who::Curl => &curl,
                Who::Other => &other,
            };
            let before = decided.as_ref().map(|d| counted.get(d));
            let live = live(client, case, &tokens).await;
            // The live decision was made by the policy (and rule action) eval names.
            let same_policy = match (decided, before) {
                (Some(d), Some(before)) => counted.get(d) == before + 1,
                _ => true,
            };
            let ok = live == *eval && live == case.want && same_policy;
            if !ok {
                wrong += 1;
            }
            writeln!(
                report,
                "{} {:<44} want {:<5} live {:<8} eval {:<5} {}",
                if ok { "ok  " } else { "FAIL" },
                case.name,
                case.want,
                live,
                eval,
                match decided {
                    Some(d) if same_policy => format!("decided by {d:?}"),
                    Some(d) => format!("live not counted as {d:?}"),
                    None => "before policy".into(),
                },
            )
            .unwrap();
        }
        #[allow(clippy::print_stdout)]
        {
            println!("{report}");
        }
        assert_eq!(
            wrong, 0,
            "live and eval disagree, or differ from the table:\n{report}"
        );
    })
    .await
    .unwrap();
}
