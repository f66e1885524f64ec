//! `waypoint authz check -o text|json|yaml`.
#![allow(clippy::unwrap_used)]

mod support;

use support::{scenario, temp_file, waypoint};

#[test]
fn check_prints_one_object_per_checked_object() {
    let path = temp_file(&format!(
        "{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: ambient-demo}}\n",
        scenario("invalid.yaml")
    ));
    let p = path.to_str().unwrap();
    let o = waypoint(&["authz", "check", "--config", p, "-o", "json"]);
    assert_eq!(o.status.code(), Some(1), "invalid policies fail the check");
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |object: &str| lines.iter().find(|l| l["object"] == object).unwrap();
    let route = of("ambient-demo/r");
    assert_eq!(route["kind"], "HTTPRoute");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert!(route["notEnforced"].as_str().unwrap().contains("routing"));
    let bad = of("ambient-demo/bad-when");
    assert_eq!(bad["waypointAccepted"]["reason"], "Invalid");
    assert_eq!(bad["errors"][0]["field"], "spec.rules[0].when[0].key");
    assert_eq!(
        of("ambient-demo/missing-service")["waypointAccepted"]["reason"],
        "TargetNotFound"
    );
    let yaml = waypoint(&["authz", "check", "--config", p, "-o", "yaml"]);
    let list: Vec<serde_yaml::Value> = serde_yaml::from_slice(&yaml.stdout).unwrap();
    assert_eq!(list.len(), lines.len());
    let text = String::from_utf8(waypoint(&["authz", "check", "--config", p]).stdout).unwrap();
    assert!(
        text.contains(
            "HTTPRoute ambient-demo/r: not enforced (gateway.networking.k8s.io/v1): routing"
        ),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn peer_authentication_is_listed_as_not_enforced_by_the_waypoint() {
    let path = temp_file(&scenario("peer-authentication-disable.yaml"));
    let o = waypoint(&["authz", "check", "--config", path.to_str().unwrap()]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("PeerAuthentication ambient-demo/legacy-plaintext: not enforced (security.istio.io/v1): mTLS mode is ztunnel's to enforce"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
