//! The `waypoint authz` commands as an operator runs them, on `examples/`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn waypoint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run waypoint")
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn eval_on_examples_prints_one_decision_per_request_in_order() {
    let o = waypoint(&[
        "authz",
        "eval",
        "--config",
        "examples",
        "--request",
        "examples/requests.yaml",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<(
        String,
        serde_json::Value,
        serde_json::Value,
        serde_json::Value,
    )> = lines(&o)
        .iter()
        .map(|l| {
            (
                l["decision"].as_str().unwrap_or("").to_owned(),
                l["status"].clone(),
                l["policy"].clone(),
                l["action"].clone(),
            )
        })
        .collect();
    use serde_json::{Value::Null, json};
    assert_eq!(
        got,
        vec![
            (
                "allow".into(),
                json!(200),
                json!("ambient-demo/allow-sleep-to-httpbin"),
                json!("ALLOW")
            ),
            (
                "deny".into(),
                json!(403),
                json!("ambient-demo/deny-writes"),
                json!("DENY")
            ),
            ("deny".into(), json!(403), Null, Null),
            ("deny".into(), Null, Null, Null),
        ]
    );
    let first = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    assert!(
        first.starts_with(r#"{"decision":"allow","status":200,"policy":"#),
        "field order: {first}"
    );
    let reason = lines(&o)[2]["reason"].as_str().unwrap_or("").to_owned();
    assert!(
        reason.contains("ALLOW policies apply and no rule matched"),
        "{reason}"
    );
}

#[test]
fn check_on_examples_passes_and_reports_status() {
    let o = waypoint(&["authz", "check", "--config", "examples"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(
            "AuthorizationPolicy istio-system/default-deny: WaypointAccepted=True reason=Accepted"
        ),
        "{out}"
    );
    assert!(
        out.contains("AuthorizationPolicy ambient-demo/httpbin-only-from-waypoint: Ignored"),
        "{out}"
    );
}

#[test]
fn check_fails_naming_file_object_and_field() {
    let dir = std::env::temp_dir().join(format!("waypoint-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: foo}
spec:
  selector: {matchLabels: {app: a}}
  targetRefs: [{kind: Service, name: missing}]
  rules:
  - from: [{source: {ipBlocks: [10.0.0.0/33]}}]
    to: [{operation: {ports: [\"99999\"], paths: [\"/a/{**}/{*}\"]}}]
    when: [{key: request.colour, values: [red]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: foo}
spec:
  rules: [{from: [{source: {principal: [x]}}]}]
",
    )
    .expect("write");
    let o = waypoint(&["authz", "check", "--config", dir.to_str().unwrap_or("")]);
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(o.status.code(), Some(1), "{out}");
    for want in [
        "AuthorizationPolicy foo/bad: WaypointAccepted=False reason=Invalid",
        "spec.selector: only one of targetRefs or workloadSelector can be set",
        "spec.rules[0].from[0].source.ipBlocks[0]: bad CIDR range (10.0.0.0/33)",
        "spec.rules[0].to[0].operation.ports[0]: bad port (99999)",
        "spec.rules[0].to[0].operation.paths[0]: invalid or unsupported path template",
        "spec.rules[0].when[0].key: unknown attribute: request.colour",
        "AuthorizationPolicy foo/typo field spec.rules[0].from[0].source.principal: unknown field `principal`",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(
        out.contains("bad.yaml (document 1)"),
        "names the file: {out}"
    );
}

#[test]
fn malformed_request_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("waypoint-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let req = dir.join("req.yaml");
    std::fs::write(
        &req,
        "waypoint: {namespace: foo, name: w}\nsource: {principle: x}\n",
    )
    .expect("write");
    let o = waypoint(&[
        "authz",
        "eval",
        "--config",
        "examples",
        "--request",
        req.to_str().unwrap_or(""),
    ]);
    std::fs::remove_dir_all(&dir).ok();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("request 1") && err.contains("principle"),
        "{err}"
    );
}

/// `token:` goes through the config's RequestAuthentication: a valid token's principal reaches
/// policy, a bad one is a 401 with Envoy's reason.
#[test]
fn eval_validates_tokens_with_the_configs_request_authentication() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = kp.public_key_raw();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..])}]});
    let key = jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |iss: &str, sub: &str, exp: u64| {
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({"iss": iss, "sub": sub, "exp": exp}),
            &key,
        )
        .unwrap()
    };

    let dir = std::env::temp_dir().join(format!("waypoint-eval-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo().join("examples/mesh.yaml"), dir.join("mesh.yaml")).unwrap();
    std::fs::write(
        dir.join("jwt.yaml"),
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: ambient-demo}}
spec:
  targetRefs: [{{kind: Service, group: '', name: httpbin}}]
  jwtRules: [{{issuer: https://idp.example, jwks: '{jwks}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: alice-only, namespace: ambient-demo}}
spec:
  targetRefs: [{{kind: Service, group: '', name: httpbin}}]
  rules: [{{from: [{{source: {{requestPrincipals: [https://idp.example/alice]}}}}]}}]
"
        ),
    )
    .unwrap();
    let request = |token: &str| {
        format!(
            "waypoint: {{namespace: ambient-demo, name: waypoint}}
destination: {{service: {{namespace: ambient-demo, name: httpbin}}, ip: 10.96.0.10, port: 8000}}
http: {{method: GET, host: httpbin, path: /get}}
token: {token}
---
"
        )
    };
    let requests = [
        request(&sign("https://idp.example", "alice", now + 600)),
        request(&sign("https://idp.example", "bob", now + 600)),
        request(&sign("https://idp.example", "alice", now - 3600)),
        request(&sign("https://other.example", "alice", now + 600)),
    ]
    .concat();
    std::fs::write(dir.join("requests.yaml.txt"), requests).unwrap();
    let o = waypoint(&[
        "authz",
        "eval",
        "--config",
        dir.to_str().unwrap(),
        "--request",
        dir.join("requests.yaml.txt").to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = lines(&o);
    let got: Vec<_> = l
        .iter()
        .map(|l| (l["status"].clone(), l["reason"].clone()))
        .collect();
    assert_eq!(l.len(), 4, "{got:?}");
    assert_eq!(l[0]["status"], 200, "{got:?}");
    assert_eq!(l[0]["policy"], "ambient-demo/alice-only");
    assert_eq!(l[1]["status"], 403, "{got:?}");
    assert_eq!(l[2]["status"], 401);
    assert_eq!(l[2]["reason"], "unauthenticated: Jwt is expired");
    assert_eq!(
        l[3]["reason"],
        "unauthenticated: Jwt issuer is not configured"
    );
}
