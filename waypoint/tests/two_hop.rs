//! `waypoint authz eval` simulating the second enforcement point: every answer carries what the
//! destination's ztunnel decides, from the identity it really sees (the waypoint's when the
//! request came through it, the caller's when it did not). Scenarios from the seeds
//! (`waypoint/tests/advisor/`, `examples/`).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use serde_json::Value;
use support::{scenario, temp_file, waypoint};

/// Evaluates `requests` against `config` (a path), `-o json`.
fn eval(config: &Path, requests: &str, extra: &[&str]) -> Vec<Value> {
    let req = temp_file(requests);
    let mut args = vec![
        "authz",
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--request",
        req.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = waypoint(&args);
    let _ = std::fs::remove_dir_all(req.parent().unwrap());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const SLEEP_GET_HTTPBIN: &str = "\
waypoint: {namespace: ambient-demo, name: waypoint}
destination: {service: {namespace: ambient-demo, name: httpbin}, port: 8000}
source: {principal: cluster.local/ns/ambient-demo/sa/sleep, ip: 10.244.1.20}
http: {method: GET, host: httpbin.ambient-demo.svc.cluster.local, path: /get}
";

#[test]
fn via_the_waypoint_ztunnel_sees_the_waypoint() {
    // Seed: "the destination ztunnel will see traffic with the waypoint's identity, not the
    // source identity": the selector policy naming sleep refuses sleep's request through the
    // waypoint, and admits the same request sent directly.
    let config = temp_file(&scenario("identity-behind-waypoint.yaml"));
    let direct = format!("{SLEEP_GET_HTTPBIN}via: direct\n");
    let answers = eval(
        &config,
        &format!("{SLEEP_GET_HTTPBIN}---\n{SLEEP_GET_HTTPBIN}via: waypoint\n---\n{direct}"),
        &[],
    );
    assert_eq!(answers.len(), 3);
    for a in &answers {
        assert_eq!(a["decision"], "allow", "no waypoint policy: {a:#}");
    }
    for via_waypoint in [&answers[0], &answers[1]] {
        let z = &via_waypoint["ztunnel"];
        assert_eq!(z["decision"], "deny", "{z:#}");
        assert_eq!(z["policy"], Value::Null);
        let reason = z["reason"].as_str().unwrap();
        assert!(
            reason.contains("ztunnel sees the waypoint ambient-demo/waypoint (cluster.local/ns/ambient-demo/sa/waypoint)"),
            "{reason}"
        );
        assert!(
            reason.contains("port 8080"),
            "the pod's target port: {reason}"
        );
        assert!(
            reason.contains("(pod ambient-demo/httpbin-5c8f9d)"),
            "{reason}"
        );
    }
    let z = &answers[2]["ztunnel"];
    assert_eq!(z["decision"], "allow", "{z:#}");
    assert_eq!(z["policy"], "ambient-demo/allow-sleep-to-httpbin");
    assert_eq!(z["rule"], 0);
    assert!(
        z["reason"]
            .as_str()
            .unwrap()
            .contains("ztunnel sees the caller cluster.local/ns/ambient-demo/sa/sleep"),
        "{z:#}"
    );
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}

#[test]
fn the_top_level_decision_stays_the_waypoints() {
    // examples/: the waypoint allows sleep; httpbin's ztunnel admits only the waypoint, so the
    // same request sent directly is refused there, while the answer's decision is the waypoint's.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let answers = eval(
        &examples,
        &format!("{SLEEP_GET_HTTPBIN}---\n{SLEEP_GET_HTTPBIN}via: direct\n"),
        &[],
    );
    for a in &answers {
        assert_eq!(a["decision"], "allow");
        assert_eq!(a["policy"], "ambient-demo/allow-sleep-to-httpbin");
    }
    assert_eq!(answers[0]["ztunnel"]["decision"], "allow");
    assert_eq!(
        answers[0]["ztunnel"]["policy"],
        "ambient-demo/httpbin-only-from-waypoint"
    );
    assert_eq!(answers[1]["ztunnel"]["decision"], "deny");
    assert!(
        answers[1]["ztunnel"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("denied by ztunnel: 1 ALLOW policy applies and no rule matched"),
        "{:#}",
        answers[1]
    );
}

#[test]
fn l7_attributes_fail_safe_at_ztunnel() {
    // Seed: the GET example at ztunnel: sleep itself is refused.
    let config = temp_file(&scenario("l7-at-ztunnel.yaml"));
    let answers = eval(&config, &format!("{SLEEP_GET_HTTPBIN}via: direct\n"), &[]);
    let z = &answers[0]["ztunnel"];
    assert_eq!(z["decision"], "deny", "{z:#}");
    let reason = z["reason"].as_str().unwrap();
    assert!(
        reason.contains("ambient-demo/allow-sleep-to-httpbin rule 0 uses methods which ztunnel cannot evaluate, so it never matches (fail safe)"),
        "{reason}"
    );
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}

#[test]
fn the_destination_workload_is_found_by_name_address_or_service() {
    let config = temp_file(&scenario("identity-behind-waypoint.yaml"));
    let base = "\
waypoint: {namespace: ambient-demo, name: waypoint}
source: {principal: cluster.local/ns/ambient-demo/sa/sleep}
via: direct
";
    let answers = eval(
        &config,
        &format!(
            "{base}destination: {{workload: {{namespace: ambient-demo, name: httpbin-5c8f9d}}, port: 8080}}\n---\n\
             {base}destination: {{ip: 10.244.1.10, port: 8080}}\n---\n\
             {base}destination: {{ip: 10.9.9.9, port: 8080}}\n---\n\
             {base}destination: {{workload: {{namespace: ambient-demo, name: sleep-7656cf}}, port: 80}}\n"
        ),
        &[],
    );
    assert_eq!(
        answers[0]["ztunnel"]["policy"],
        "ambient-demo/allow-sleep-to-httpbin"
    );
    assert_eq!(
        answers[1]["ztunnel"]["policy"],
        "ambient-demo/allow-sleep-to-httpbin"
    );
    assert_eq!(
        answers[2]["ztunnel"]["decision"], "unknown",
        "{:#}",
        answers[2]
    );
    assert_eq!(answers[3]["ztunnel"]["decision"], "allow");
    assert_eq!(
        answers[3]["ztunnel"]["policy"],
        Value::Null,
        "no policy selects sleep"
    );
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}

#[test]
fn a_pod_outside_the_mesh_has_no_ztunnel() {
    let yaml = scenario("identity-behind-waypoint.yaml").replace(
        "labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}",
        "labels: {istio.io/use-waypoint: waypoint}",
    );
    let config = temp_file(&yaml);
    let answers = eval(&config, SLEEP_GET_HTTPBIN, &[]);
    let z = &answers[0]["ztunnel"];
    assert_eq!(z["decision"], "allow");
    assert!(
        z["reason"]
            .as_str()
            .unwrap()
            .contains("is not in the ambient mesh"),
        "{z:#}"
    );
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}

#[test]
fn text_and_yaml_output() {
    let config = temp_file(&scenario("identity-behind-waypoint.yaml"));
    let req = temp_file(SLEEP_GET_HTTPBIN);
    let args = |o: &'static str| {
        vec![
            "authz".to_owned(),
            "eval".into(),
            "--config".into(),
            config.to_str().unwrap().into(),
            "--request".into(),
            req.to_str().unwrap().into(),
            "-o".into(),
            o.into(),
        ]
    };
    let run = |o| {
        let a = args(o);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        waypoint(&a)
    };
    let text = String::from_utf8(run("text").stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "request 1: GET /get to ambient-demo/httpbin:8000 from cluster.local/ns/ambient-demo/sa/sleep via ambient-demo/waypoint"
    );
    assert!(lines[1].starts_with("  ENFORCER  DECISION"), "{text}");
    assert!(lines[2].starts_with("  waypoint  allow (200)"), "{text}");
    assert!(lines[3].starts_with("  ztunnel   deny "), "{text}");
    assert!(!text.contains('\x1b'));
    let yaml: Vec<serde_yaml::Value> = serde_yaml::from_slice(&run("yaml").stdout).unwrap();
    assert_eq!(yaml.len(), 1);
    assert_eq!(yaml[0]["ztunnel"]["decision"].as_str(), Some("deny"));
    for p in [config, req] {
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
