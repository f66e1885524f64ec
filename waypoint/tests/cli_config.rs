//! Hostile config files through `waypoint authz check` and `eval` as an operator runs them: each
//! costs one located error and a non-zero exit, bounded in time and memory; a refused object is
//! never silently dropped from a decision.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const DENY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: ambient-demo
spec:
  targetRefs:
  - {kind: Service, group: \"\", name: httpbin}
  action: DENY
  rules:
  - to:
    - operation:
        paths: [\"/admin*\"]
";

const REQUEST: &str = "waypoint: {namespace: ambient-demo, name: waypoint}
destination: {service: {namespace: ambient-demo, name: httpbin}, ip: 10.96.0.10, port: 8000}
source: {principal: cluster.local/ns/ambient-demo/sa/sleep, ip: 10.244.1.5}
http: {method: GET, host: httpbin.ambient-demo.svc.cluster.local, path: /admin/x}
";

/// A config directory holding the examples' mesh plus the given files, removed on drop.
struct Config(PathBuf);

impl Config {
    fn new(tag: &str, files: &[(&str, &str)]) -> Config {
        let dir = std::env::temp_dir().join(format!("waypoint-cfg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cfg")).unwrap();
        std::fs::copy(
            repo().join("examples/mesh.yaml"),
            dir.join("cfg/0-mesh.yaml"),
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.join("cfg").join(name), text).unwrap();
        }
        std::fs::write(dir.join("req.yaml"), REQUEST).unwrap();
        Config(dir)
    }

    /// Runs `waypoint authz <cmd>` on it under a 2 GiB address-space limit, killed after 20 s.
    fn run(&self, cmd: &str) -> (Output, String, String) {
        let cfg = self.0.join("cfg");
        let req = self.0.join("req.yaml");
        let mut args = vec!["authz", cmd, "--config", cfg.to_str().unwrap()];
        if cmd == "eval" {
            args.extend(["--request", req.to_str().unwrap()]);
        }
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 2097152 && exec \"$@\"")
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_waypoint"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("authz {cmd} still running after 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        (o, out, err)
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// eval on a refused config: error lines on stdout (parseable JSON), no decision, exit 1.
fn eval_refuses(cfg: &Config, want: &[&str]) {
    let (o, out, err) = cfg.run("eval");
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(!lines.is_empty(), "the refusal is in the output: {out}");
    for l in &lines {
        assert_eq!(l["decision"], "error", "{l}");
        assert!(
            l["reason"]
                .as_str()
                .unwrap()
                .starts_with("config refused: "),
            "{l}"
        );
    }
    for w in want {
        assert!(out.contains(w), "missing {w:?} in {out}");
    }
}

fn check_refuses(cfg: &Config, want: &[&str]) -> String {
    let (o, out, err) = cfg.run("check");
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    for w in want {
        assert!(err.contains(w), "missing {w:?} in {err}");
    }
    assert!(err.lines().count() <= 30, "bounded: {err}");
    out
}

#[test]
fn a_duplicate_policy_is_refused_never_last_wins() {
    // b.yaml reuses the DENY's name for an ALLOW of the same paths: last-wins printed "allow".
    let allow = DENY.replace("DENY", "ALLOW");
    let cfg = Config::new("dup", &[("a.yaml", DENY), ("b.yaml", &allow)]);
    let want = [
        "b.yaml (document 1): AuthorizationPolicy ambient-demo/deny-admin: also defined at",
        "a.yaml (document 1)",
    ];
    eval_refuses(&cfg, &want);
    check_refuses(&cfg, &want);
}

#[test]
fn a_refused_policy_fails_eval_even_when_the_rest_would_allow() {
    // An invalid DENY (a path template Istio rejects) is refused by the waypoint's compile step.
    let bad = DENY.replace("/admin*", "/a/{**}/{*}");
    let cfg = Config::new("invalid", &[("a.yaml", &bad)]);
    eval_refuses(
        &cfg,
        &[
            "AuthorizationPolicy ambient-demo/deny-admin",
            "path template",
        ],
    );
}

#[test]
fn a_typo_is_one_located_error() {
    let typo = DENY.replace("  action: DENY", "   action: DENY");
    let cfg = Config::new("typo", &[("p.yaml", &typo)]);
    // Line 9 is the misindented one.
    let want = [
        "p.yaml (document 1): document: not valid YAML",
        "line 9 column 4",
    ];
    eval_refuses(&cfg, &want);
    check_refuses(&cfg, &want);
}

#[test]
fn alias_bombs_and_deep_nesting_are_refused_quickly() {
    let bomb = |anchored: usize, aliases: usize| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb, namespace: ambient-demo}}\ndata:\n  a: &a [{}]\n  b: [{}]\n",
            vec!["x"; anchored].join(","),
            vec!["*a"; aliases].join(",")
        )
    };
    let deep = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    for (tag, text, want) in [
        (
            "bomb28k",
            bomb(2000, 8000),
            "anchors (&name) are not accepted",
        ),
        (
            "bomb188k",
            bomb(8000, 58000),
            "anchors (&name) are not accepted",
        ),
        ("deep", deep, "not valid YAML"),
    ] {
        let cfg = Config::new(tag, &[("x.yaml", &text)]);
        eval_refuses(&cfg, &[want]);
        check_refuses(&cfg, &[want]);
    }
}

#[test]
fn oversized_and_forged_names_are_refused_with_one_line_each() {
    let big = DENY.replace("deny-admin", &"a".repeat(10_000_000));
    let cfg = Config::new("big", &[("p.yaml", &big)]);
    eval_refuses(&cfg, &["over the 1572864-byte (1.5 MiB) limit"]);
    let forged = DENY.replace(
        "deny-admin",
        "\"x\\nambient-demo/forged: WaypointAccepted=True reason=Accepted\"",
    );
    let cfg = Config::new("forged", &[("p.yaml", &forged)]);
    let out = check_refuses(&cfg, &["field metadata.name"]);
    assert!(
        !out.lines().any(|l| l.starts_with("ambient-demo/forged")),
        "a name cannot start an output line: {out}"
    );
    let (_, _, err) = cfg.run("check");
    assert!(
        !err.lines().any(|l| l.starts_with("ambient-demo/forged")),
        "{err}"
    );
    let nul = DENY.replace("deny-admin", "\"x\\0y\"");
    eval_refuses(&Config::new("nul", &[("p.yaml", &nul)]), &["x\\\\u{0}y"]);
}

#[test]
fn more_rules_than_the_crd_allows_are_refused() {
    let mut many = DENY.split("  rules:\n").next().unwrap().to_owned();
    many.push_str("  rules:\n");
    for i in 0..10_000 {
        many.push_str(&format!(
            "  - to: [{{operation: {{paths: [\"/r{i}\"]}}}}]\n"
        ));
    }
    let cfg = Config::new("rules", &[("p.yaml", &many)]);
    let want = ["field spec.rules: has 10000 items; the CRD allows at most 512"];
    eval_refuses(&cfg, &want);
    check_refuses(&cfg, &want);
}

#[test]
fn check_warns_about_kinds_it_does_not_enforce() {
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: ambient-demo}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: ambient-demo}
spec: {}
";
    let cfg = Config::new("kinds", &[("r.yaml", route), ("p.yaml", DENY)]);
    let (o, out, err) = cfg.run("check");
    assert!(o.status.success(), "warnings only: {out}{err}");
    for want in [
        "r.yaml (document 1): HTTPRoute ambient-demo/r: not enforced (gateway.networking.k8s.io/v1)",
        "r.yaml (document 2): VirtualService ambient-demo/vs: not enforced (networking.istio.io/v1)",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    // The same config decides normally.
    let (o, out, err) = cfg.run("eval");
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.starts_with(r#"{"decision":"deny","status":403,"policy":"ambient-demo/deny-admin""#),
        "{out}"
    );
}
