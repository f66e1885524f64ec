//! `waypoint analyze` on the seeds' scenarios (`waypoint/tests/advisor/*.yaml`, each file names the
//! seed it comes from). For every code: the finding is there before, its own `fix` is applied as
//! `kubectl apply` would (same kind, namespace and name replaces; anything else is added), and
//! the finding is gone after.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use support::{analyze, apply, find, scenario, temp_file, waypoint};

/// The finding is present in `file`'s scenario and gone once its own fix is applied. Returns
/// the finding, and the findings after.
fn fails_then_fixed(file: &str, code: &str, object: &str, extra: &[&str]) -> (Value, Vec<Value>) {
    let base = scenario(file);
    let (_, before) = analyze(&base, extra);
    let f = find(&before, code, object)
        .unwrap_or_else(|| panic!("{file}: no {code} on {object}: {before:#?}"))
        .clone();
    let fix = f["fix"]
        .as_str()
        .unwrap_or_else(|| panic!("{code} carries a fix: {f:#}"));
    let (_, after) = analyze(&apply(&base, fix), extra);
    assert!(
        find(&after, code, object).is_none(),
        "{file}: {code} on {object} is still there after its fix:\n{fix}\n{after:#?}"
    );
    (f, after)
}

#[test]
fn ztunnel_l7_attribute_moves_the_rules_to_a_waypoint() {
    let (f, after) = fails_then_fixed(
        "l7-at-ztunnel.yaml",
        "ZtunnelL7Attribute",
        "AuthorizationPolicy/ambient-demo/allow-sleep-to-httpbin",
        &[],
    );
    assert_eq!(f["severity"], "error");
    let msg = f["message"].as_str().unwrap();
    assert!(msg.contains("cannot evaluate methods"), "{msg}");
    assert!(
        msg.contains("the callers it names are refused too"),
        "{msg}"
    );
    let fix = f["fix"].as_str().unwrap();
    // The same rules with targetRefs, and the waypoint httpbin lacks.
    assert!(fix.contains("targetRefs:"), "{fix}");
    assert!(!fix.contains("selector:"), "{fix}");
    assert!(fix.contains("kind: Gateway"), "{fix}");
    assert!(fix.contains("istio.io/use-waypoint: waypoint"), "{fix}");
    assert!(
        !after.iter().any(|f| f["code"] == "PolicyTargetNotEnforced"),
        "the fix deploys what enforces it: {after:#?}"
    );
}

#[test]
fn ztunnel_l7_attribute_in_a_deny_says_what_ztunnel_does() {
    // The seed's example as a DENY. Its `to` entry holds only the method, so ztunnel gets an
    // empty match there and the rule never matches: the DENY does nothing. Given the port too,
    // the entry keeps it and the DENY refuses every connection to the port.
    let base = scenario("l7-at-ztunnel.yaml").replace("action: ALLOW", "action: DENY");
    let obj = "AuthorizationPolicy/ambient-demo/allow-sleep-to-httpbin";
    let message = |yaml: &str| {
        let (_, f) = analyze(yaml, &[]);
        find(&f, "ZtunnelL7Attribute", obj).unwrap()["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let msg = message(&base);
    assert!(msg.contains("the DENY does nothing at ztunnel"), "{msg}");
    let with_port = base.replace(
        "        methods: [GET]",
        "        methods: [GET]\n        ports: [\"8080\"]",
    );
    assert_ne!(with_port, base);
    let msg = message(&with_port);
    assert!(msg.contains("denies more than written"), "{msg}");
}

#[test]
fn a_namespace_wide_default_deny_gets_one_at_its_waypoint() {
    let base = scenario("default-deny-bypass.yaml").replace(
        "metadata: {name: default-deny, namespace: istio-system}",
        "metadata: {name: default-deny, namespace: ambient-demo}",
    );
    let obj = "AuthorizationPolicy/ambient-demo/default-deny";
    let (_, before) = analyze(&base, &[]);
    let f = find(&before, "DefaultDenyBypass", obj).expect("namespace-wide default deny");
    let fix = f["fix"].as_str().unwrap();
    assert!(
        fix.contains("name: default-deny-waypoint") && fix.contains("kind: Gateway"),
        "{fix}"
    );
    let (_, after) = analyze(&apply(&base, fix), &[]);
    assert!(
        find(&after, "DefaultDenyBypass", obj).is_none(),
        "{after:#?}"
    );
}

#[test]
fn source_identity_behind_waypoint_moves_the_rules_to_the_waypoint() {
    let (f, _) = fails_then_fixed(
        "identity-behind-waypoint.yaml",
        "SourceIdentityBehindWaypoint",
        "AuthorizationPolicy/ambient-demo/allow-sleep-to-httpbin",
        &[],
    );
    assert_eq!(f["severity"], "warning");
    let msg = f["message"].as_str().unwrap();
    assert!(
        msg.contains("cluster.local/ns/ambient-demo/sa/waypoint")
            && msg.contains("principals cluster.local/ns/ambient-demo/sa/sleep"),
        "{msg}"
    );
}

#[test]
fn waypoint_bypass_gets_the_only_from_my_waypoint_guard() {
    let (f, after) = fails_then_fixed(
        "waypoint-bypass.yaml",
        "WaypointBypass",
        "Service/ambient-demo/httpbin",
        &[],
    );
    assert_eq!(f["severity"], "error");
    let fix = f["fix"].as_str().unwrap();
    assert!(
        fix.contains("- cluster.local/ns/ambient-demo/sa/waypoint"),
        "{fix}"
    );
    assert!(
        !after
            .iter()
            .any(|f| f["code"] == "SourceIdentityBehindWaypoint"),
        "the guard names only the waypoint: {after:#?}"
    );
}

#[test]
fn trusted_sources_join_the_guard() {
    let ingress = "cluster.local/ns/istio-system/sa/istio-ingressgateway";
    let (f, after) = fails_then_fixed(
        "waypoint-bypass.yaml",
        "WaypointBypass",
        "Service/ambient-demo/httpbin",
        &["--trusted-source", ingress],
    );
    assert!(
        f["fix"].as_str().unwrap().contains(&format!("- {ingress}")),
        "{f:#}"
    );
    assert!(
        !after
            .iter()
            .any(|f| f["code"] == "SourceIdentityBehindWaypoint"),
        "a trusted source is not a foreign identity: {after:#?}"
    );
}

#[test]
fn default_deny_bypass_gets_a_default_deny_at_the_waypoints() {
    let (f, _) = fails_then_fixed(
        "default-deny-bypass.yaml",
        "DefaultDenyBypass",
        "AuthorizationPolicy/istio-system/default-deny",
        &[],
    );
    let fix = f["fix"].as_str().unwrap();
    assert!(
        fix.contains("kind: GatewayClass") && fix.contains("name: istio-waypoint"),
        "{fix}"
    );
    assert!(fix.contains("namespace: istio-system"), "{fix}");
}

#[test]
fn request_authentication_with_a_selector_moves_to_targetrefs() {
    let (f, _) = fails_then_fixed(
        "request-authentication-selector.yaml",
        "RequestAuthenticationNotApplied",
        "RequestAuthentication/ambient-demo/httpbin-jwt",
        &[],
    );
    let fix = f["fix"].as_str().unwrap();
    assert!(
        fix.contains("jwtRules:") && fix.contains("targetRefs:"),
        "{fix}"
    );
}

#[test]
fn policy_target_not_enforced_labels_the_service() {
    let (f, after) = fails_then_fixed(
        "target-not-enforced.yaml",
        "PolicyTargetNotEnforced",
        "AuthorizationPolicy/ambient-demo/allow-sleep-get",
        &[],
    );
    let fix = f["fix"].as_str().unwrap();
    assert!(fix.contains("istio.io/use-waypoint: waypoint"), "{fix}");
    assert!(
        fix.contains("kind: Service") && fix.contains("kind: Gateway"),
        "{fix}"
    );
    assert!(
        !after.iter().any(|f| f["code"] == "AncestorNotBound"),
        "{after:#?}"
    );
}

#[test]
fn policy_target_not_enforced_for_a_missing_gateway() {
    let base = scenario("target-not-enforced.yaml").replace(
        "{kind: Service, group: \"\", name: httpbin}",
        "{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}",
    );
    let (_, before) = analyze(&base, &[]);
    let obj = "AuthorizationPolicy/ambient-demo/allow-sleep-get";
    let f = find(&before, "PolicyTargetNotEnforced", obj).expect("missing Gateway");
    assert!(
        f["message"].as_str().unwrap().contains("was not found"),
        "{f:#}"
    );
    let (_, after) = analyze(&apply(&base, f["fix"].as_str().unwrap()), &[]);
    assert!(
        find(&after, "PolicyTargetNotEnforced", obj).is_none(),
        "{after:#?}"
    );
}

#[test]
fn peer_authentication_disable_is_reported_ignored() {
    let (f, _) = fails_then_fixed(
        "peer-authentication-disable.yaml",
        "PeerAuthenticationDisableIgnored",
        "PeerAuthentication/ambient-demo/legacy-plaintext",
        &[],
    );
    assert_eq!(f["severity"], "warning");
    assert!(f["fix"].as_str().unwrap().contains("mode: PERMISSIVE"));
}

#[test]
fn permissive_plaintext_gets_strict_mtls() {
    let (f, _) = fails_then_fixed(
        "permissive-plaintext.yaml",
        "PermissivePlaintext",
        "Service/ambient-demo/httpbin",
        &[],
    );
    assert_eq!(f["severity"], "info");
    assert!(f["fix"].as_str().unwrap().contains("mode: STRICT"));
}

#[test]
fn dry_run_only_is_reported() {
    let (f, after) = fails_then_fixed(
        "dry-run.yaml",
        "DryRunOnly",
        "AuthorizationPolicy/ambient-demo/allow-sleep-to-httpbin-waypoint",
        &[],
    );
    assert_eq!(f["severity"], "info");
    assert!(!f["fix"].as_str().unwrap().contains("dry-run"));
    // While in dry-run it enforced nothing, so nothing was there to bypass; enforced now, the
    // guard the scenario carries keeps the pods behind the waypoint.
    assert!(
        !after.iter().any(|f| f["code"] == "WaypointBypass"),
        "{after:#?}"
    );
}

#[test]
fn validation_errors_carry_the_status_reasons_of_authz_check() {
    let base = scenario("invalid.yaml");
    let (code, before) = analyze(&base, &[]);
    assert_eq!(code, 3);
    let p = |n: &str| format!("AuthorizationPolicy/ambient-demo/{n}");
    let bad_when = find(&before, "Invalid", &p("bad-when")).expect("unknown when key");
    assert!(
        bad_when["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.rules[0].when[0].key:"),
        "{bad_when:#}"
    );
    assert!(find(&before, "Invalid", &p("class-outside-root")).is_some());
    assert!(find(&before, "TargetNotFound", &p("missing-service")).is_some());
    assert!(
        !before.iter().any(|f| f["code"] == "WaypointBypass"),
        "an invalid policy is enforced by nobody, so there is nothing to bypass: {before:#?}"
    );
    // The corrections an operator makes (these findings have no single object that fixes them).
    let fixed = apply(
        &base,
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-when, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Service, group: '', name: httpbin}]
  action: DENY
  rules: [{when: [{key: 'request.headers[x-debug]', values: ['1']}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: class-outside-root, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: missing-service, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Service, group: '', name: httpbin}]
  rules: [{}]
",
    );
    let (_, after) = analyze(&fixed, &[]);
    for (code, name) in [
        ("Invalid", "bad-when"),
        ("Invalid", "class-outside-root"),
        ("TargetNotFound", "missing-service"),
    ] {
        assert!(find(&after, code, &p(name)).is_none(), "{after:#?}");
    }
}

#[test]
fn an_unreadable_document_is_an_invalid_finding() {
    let (code, findings) = analyze(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: a}\n\
         spec: {rules: [{from: [{source: {principal: [x]}}]}]}\n",
        &[],
    );
    assert_eq!(code, 3);
    let f = find(&findings, "Invalid", "AuthorizationPolicy/a/p").expect("refused object");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("spec.rules[0].from[0].source.principal"),
        "{f:#}"
    );
}

#[test]
fn json_lines_have_exactly_the_documented_fields() {
    let path = temp_file(&scenario("waypoint-bypass.yaml"));
    let o = waypoint(&["analyze", "--config", path.to_str().unwrap(), "-o", "json"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        assert!(line.starts_with("{\"code\":\""), "field order: {line}");
        let v: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = v.keys().map(String::as_str).collect();
        let mut want = ["code", "fix", "message", "object", "severity"];
        want.sort_unstable();
        assert_eq!(keys, want, "{line}");
        assert!(["error", "warning", "info"].contains(&v["severity"].as_str().unwrap()));
        assert!(v["fix"].is_string() || v["fix"].is_null());
    }
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn exit_status_follows_the_fail_on_threshold() {
    // A warning only: success by default, 3 with --fail-on warning.
    let yaml = scenario("identity-behind-waypoint.yaml");
    let (code, findings) = analyze(&yaml, &[]);
    assert!(
        findings.iter().all(|f| f["severity"] != "error"),
        "{findings:#?}"
    );
    assert_eq!(code, 0);
    assert_eq!(analyze(&yaml, &["--fail-on", "warning"]).0, 3);
    // Infos only.
    let yaml = scenario("dry-run.yaml");
    assert_eq!(analyze(&yaml, &["--fail-on", "warning"]).0, 0);
    assert_eq!(analyze(&yaml, &["--fail-on", "info"]).0, 3);
    assert_eq!(analyze(&scenario("waypoint-bypass.yaml"), &[]).0, 3);
}

#[test]
fn text_and_yaml_output() {
    let path = temp_file(&scenario("waypoint-bypass.yaml"));
    let p = path.to_str().unwrap();
    let o = waypoint(&["analyze", "--config", p]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.starts_with("Error [WaypointBypass] (Service/ambient-demo/httpbin) "),
        "{text}"
    );
    assert!(
        text.contains("\n  Fix:\n    apiVersion: security.istio.io/v1\n"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colour into a pipe");
    assert_eq!(o.status.code(), Some(3));
    let o = waypoint(&["analyze", "--config", p, "-o", "yaml"]);
    let list: Vec<serde_yaml::Value> = serde_yaml::from_slice(&o.stdout).unwrap();
    let (_, json) = analyze(&scenario("waypoint-bypass.yaml"), &[]);
    assert_eq!(list.len(), json.len());
    assert_eq!(list[0]["code"].as_str(), Some("WaypointBypass"));
    let clean = temp_file("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n");
    let o = waypoint(&["analyze", "--config", clean.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "No issues found.\n");
    assert!(o.status.success());
    for f in [path, clean] {
        let _ = std::fs::remove_dir_all(f.parent().unwrap());
    }
}

#[test]
fn values_from_the_config_cannot_drive_the_terminal() {
    // An attacker-chosen principal (an escape sequence, a line break) is echoed in the message.
    let yaml = scenario("identity-behind-waypoint.yaml").replace(
        "principals: [cluster.local/ns/ambient-demo/sa/sleep]",
        "principals: [\"\\e]2;pwned\\a\\nError [Fake] \\u2028x\"]",
    );
    let path = temp_file(&yaml);
    let o = waypoint(&["analyze", "--config", path.to_str().unwrap()]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("SourceIdentityBehindWaypoint"), "{text}");
    assert!(
        !text.contains('\x1b') && !text.contains('\x07') && !text.contains('\u{2028}'),
        "{text:?}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("Error [Fake]")),
        "{text}"
    );
    let (_, json) = analyze(&yaml, &[]);
    let msg = json[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("\x1b]2;pwned"),
        "JSON keeps the value, escaped: {msg:?}"
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn input_is_required_and_exclusive() {
    let o = waypoint(&["analyze"]);
    assert_eq!(o.status.code(), Some(2));
    let o = waypoint(&["analyze", "--config", "x", "--kubernetes"]);
    assert_eq!(o.status.code(), Some(2));
}

/// The shipped examples are what the README and the demo point newcomers at: they must pass the
/// advisor with no error-level finding (each L7-protected Service has its "only from my
/// waypoint" guard).
#[test]
fn the_shipped_examples_have_no_error_level_finding() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let o = waypoint(&["analyze", "--config", dir, "-o", "json"]);
    let findings: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let errors: Vec<&Value> = findings
        .iter()
        .filter(|f| f["severity"] == "error")
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(o.status.code(), Some(0));
}
