//! `waypoint migrate` on a sidecar-mode configuration (`waypoint/tests/advisor/sidecar-mode.yaml`,
//! from the seeds' migration guide): the bundle, the report, and the round trip: the cluster with
//! the bundle applied and the replaced originals deleted passes `authz check` and `analyze`
//! without an error-level finding.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use support::{analyze, apply, documents, identity, scenario, temp_file, waypoint};

const MIGRATED_FROM: &str = "rust-waypoint.io/migrated-from";

fn migrate(config: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["migrate", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = waypoint(&args);
    let stderr = String::from_utf8(o.stderr).unwrap();
    assert!(o.status.success(), "{stderr}");
    (String::from_utf8(o.stdout).unwrap(), stderr)
}

/// `base` without the objects named `Kind/ns/name` in `gone`.
fn delete(base: &str, gone: &[String]) -> String {
    documents(base)
        .into_iter()
        .filter(|d| {
            let (_, kind, ns, name) = identity(d);
            !gone.contains(&format!("{kind}/{ns}/{name}"))
        })
        .map(|d| serde_yaml::to_string(&d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn the_bundle_round_trips_through_check_and_analyze() {
    let original = scenario("sidecar-mode.yaml");
    let config = temp_file(&original);
    let (before_code, before) = analyze(&original, &[]);
    assert_eq!(before_code, 3);
    for code in ["ZtunnelL7Attribute", "RequestAuthenticationNotApplied"] {
        assert!(before.iter().any(|f| f["code"] == code), "{before:#?}");
    }

    let (bundle, report) = migrate(&config, &[]);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        original,
        "the originals are never changed"
    );
    let docs = documents(&bundle);
    let replaced: Vec<String> = docs
        .iter()
        .filter_map(|d| d["metadata"]["annotations"][MIGRATED_FROM].as_str())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        replaced,
        [
            "AuthorizationPolicy/ambient-demo/httpbin-get",
            "AuthorizationPolicy/ambient-demo/sleep-from-namespace",
            "RequestAuthentication/ambient-demo/httpbin-jwt"
        ]
    );
    assert!(
        report.contains(&format!(
            "delete after review (the bundle replaces them): {}",
            replaced.join(", ")
        )),
        "{report}"
    );
    let names: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            let (_, kind, ns, name) = identity(d);
            (kind, format!("{ns}/{name}"))
        })
        .collect();
    for want in [
        ("Gateway", "ambient-demo/waypoint"),
        ("Namespace", "/ambient-demo"),
        ("AuthorizationPolicy", "ambient-demo/httpbin-get-waypoint"),
        (
            "AuthorizationPolicy",
            "ambient-demo/sleep-from-namespace-waypoint",
        ),
        ("RequestAuthentication", "ambient-demo/httpbin-jwt-waypoint"),
        (
            "AuthorizationPolicy",
            "ambient-demo/httpbin-only-from-waypoint",
        ),
        (
            "AuthorizationPolicy",
            "ambient-demo/sleep-only-from-waypoint",
        ),
        ("AuthorizationPolicy", "istio-system/deny-all-waypoints"),
    ] {
        assert!(
            names.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} in {names:?}"
        );
    }
    assert!(
        report.contains("namespace ambient-demo needs a waypoint ("),
        "{report}"
    );
    assert!(
        report.contains("kept at ztunnel: AuthorizationPolicy/ambient-demo/canary-deny: no Service covers all the pods it selects (Service ambient-demo/httpbin is covered only in part: the selector covers 1 of its 2 pods)"),
        "{report}"
    );
    assert!(
        report.contains("pod ambient-demo/batch-28431 is behind no Service"),
        "{report}"
    );
    assert!(
        report.contains("kept at ztunnel: AuthorizationPolicy/legacy/db-from-legacy: L4 only"),
        "{report}"
    );
    assert!(
        !names.iter().any(|(_, n)| n.starts_with("legacy/")),
        "{names:?}"
    );

    // The round trip: bundle applied, replaced originals deleted.
    let after = apply(&delete(&original, &replaced), &bundle);
    let (code, findings) = analyze(&after, &[]);
    let errors: Vec<_> = findings
        .iter()
        .filter(|f| f["severity"] == "error")
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(code, 0);
    let checked = temp_file(&after);
    let o = waypoint(&["authz", "check", "--config", checked.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for p in [config, checked] {
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}

#[test]
fn out_writes_one_file_per_namespace() {
    let config = temp_file(&scenario("sidecar-mode.yaml"));
    let (bundle, _) = migrate(&config, &[]);
    let out = config.parent().unwrap().join("bundle");
    let (stdout, report) = migrate(&config, &["--out", out.to_str().unwrap()]);
    assert!(stdout.is_empty());
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["ambient-demo.yaml", "istio-system.yaml"]);
    assert!(report.contains("wrote "), "{report}");
    let from_files: Vec<_> = files
        .iter()
        .flat_map(|f| documents(&std::fs::read_to_string(out.join(f)).unwrap()))
        .collect();
    assert_eq!(from_files, documents(&bundle));
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}

#[test]
fn trusted_sources_and_waypoint_name_shape_the_bundle() {
    let config = temp_file(&scenario("sidecar-mode.yaml"));
    let ingress = "cluster.local/ns/istio-system/sa/istio-ingressgateway";
    let (bundle, _) = migrate(
        &config,
        &[
            "--trusted-source",
            ingress,
            "--waypoint",
            "edge",
            "--waypoint-class",
            "istio-waypoint",
        ],
    );
    let docs = documents(&bundle);
    let gw = docs.iter().find(|d| d["kind"] == "Gateway").unwrap();
    assert_eq!(gw["metadata"]["name"], "edge");
    assert_eq!(gw["spec"]["gatewayClassName"], "istio-waypoint");
    let guard = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "httpbin-only-from-waypoint")
        .unwrap();
    let principals: Vec<&str> = guard["spec"]["rules"][0]["from"][0]["source"]["principals"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        principals,
        ["cluster.local/ns/ambient-demo/sa/edge", ingress]
    );
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}

#[test]
fn nothing_to_migrate() {
    let config = temp_file(&scenario("waypoint-bypass.yaml"));
    let (stdout, report) = migrate(&config, &[]);
    assert!(stdout.is_empty());
    assert!(report.contains("nothing to migrate"), "{report}");
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}
