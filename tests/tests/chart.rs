//! The Helm chart's rendered objects against the published definitions they must satisfy.
//!
//! `make chart` checks the chart with helm and validates the Kubernetes kinds it renders, but
//! neither tool knows the Gateway API CRDs nor the Pod Security Standards. Here, over every golden
//! file (`charts/waypoint/ci/golden/*.yaml`, the chart rendered with each of its test values
//! files):
//!
//! * every Gateway and GatewayClass is validated against the `openAPIV3Schema` of the CRD the
//!   `gateway-api` crate builds (`::crd()`), made strict as the API server's field validation is
//!   (an unknown field is an error); the documents must also read as the typed objects the
//!   waypoint watches, and carry the class and listener istiod and ztunnel look for;
//! * every pod the chart would run is checked against the `restricted` Pod Security Standard
//!   (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>), so the waypoint is
//!   admitted in a namespace labelled `pod-security.kubernetes.io/enforce: restricted`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use gateway_api::apis::standard::gatewayclasses::GatewayClass;
use gateway_api::apis::standard::gateways::Gateway;
use jsonschema::Validator;
use kube::{CustomResourceExt, Resource};
use serde::Deserialize;
use serde_json::{Value, json};

const CLASS: &str = "rust-waypoint";
const CONTROLLER: &str = "rust-waypoint.io/controller";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/waypoint/ci/golden")
}

/// Every YAML document of every golden file, with the file it came from.
fn golden_documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("charts/waypoint/ci/golden (make chart-golden writes it)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {:?}", golden_dir());
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = Value::deserialize(doc).unwrap();
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

/// The served version's `openAPIV3Schema` of `K`'s CRD, strict: `apiVersion`, `kind` and
/// `metadata` are declared (Kubernetes adds them to every CRD), and an object schema that lists
/// its properties allows no others, as the API server's strict field validation refuses unknown
/// fields (`kubectl apply` asks for it).
fn strict_schema<K: CustomResourceExt + Resource<DynamicType = ()>>() -> Validator {
    let crd = serde_json::to_value(K::crd()).unwrap();
    let version = K::version(&());
    let served = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == *version)
        .unwrap_or_else(|| panic!("{} CRD serves no {version}", K::kind(&())));
    let mut schema = served["schema"]["openAPIV3Schema"].clone();
    let properties = schema["properties"].as_object_mut().unwrap();
    properties.insert(
        "apiVersion".into(),
        json!({"const": K::api_version(&()).as_ref()}),
    );
    properties.insert("kind".into(), json!({"const": K::kind(&()).as_ref()}));
    properties.insert("metadata".into(), json!({"type": "object"}));
    close_objects(&mut schema);
    jsonschema::validator_for(&schema).unwrap()
}

fn close_objects(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if object.contains_key("properties")
        && !object.contains_key("additionalProperties")
        && !object.contains_key("x-kubernetes-preserve-unknown-fields")
    {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    for value in object.values_mut() {
        match value {
            Value::Object(_) => close_objects(value),
            Value::Array(items) => items.iter_mut().for_each(close_objects),
            _ => {}
        }
    }
}

/// The schema's complaints about `doc`, one line each (`at /spec/...: message`).
fn violations(validator: &Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect()
}

fn is_kind(doc: &Value, kind: &str) -> bool {
    doc["apiVersion"] == "gateway.networking.k8s.io/v1" && doc["kind"] == kind
}

#[test]
fn every_gateway_of_the_chart_matches_the_gateway_crd() {
    let validator = strict_schema::<Gateway>();
    let docs = golden_documents();
    let files: std::collections::BTreeSet<&str> = docs.iter().map(|(f, _)| f.as_str()).collect();
    let mut gateways = 0;
    for (file, doc) in docs.iter().filter(|(_, d)| is_kind(d, "Gateway")) {
        let name = &doc["metadata"]["name"];
        let errors = violations(&validator, doc);
        assert!(
            errors.is_empty(),
            "{file}: Gateway {name}:\n{}",
            errors.join("\n")
        );
        let gateway: Gateway = serde_json::from_value(doc.clone())
            .unwrap_or_else(|e| panic!("{file}: Gateway {name} as the waypoint reads it: {e}"));
        assert_eq!(gateway.spec.gateway_class_name, CLASS, "{file}");
        let mesh = &gateway.spec.listeners[0];
        assert_eq!(
            (mesh.name.as_str(), mesh.port, mesh.protocol.as_str()),
            ("mesh", 15008, "HBONE"),
            "{file}: istiod finds a waypoint's listener by port and protocol"
        );
        assert!(
            doc["metadata"]["labels"]["istio.io/waypoint-for"].is_string(),
            "{file}: Gateway {name} without istio.io/waypoint-for"
        );
        gateways += 1;
    }
    assert_eq!(gateways, files.len(), "one Gateway per golden file");
}

#[test]
fn the_chart_s_gateway_class_matches_the_gateway_class_crd() {
    let validator = strict_schema::<GatewayClass>();
    let mut classes = 0;
    for (file, doc) in golden_documents()
        .iter()
        .filter(|(_, d)| is_kind(d, "GatewayClass"))
    {
        let errors = violations(&validator, doc);
        assert!(
            errors.is_empty(),
            "{file}: GatewayClass:\n{}",
            errors.join("\n")
        );
        let class: GatewayClass = serde_json::from_value(doc.clone())
            .unwrap_or_else(|e| panic!("{file}: GatewayClass as the waypoint reads it: {e}"));
        assert_eq!(class.metadata.name.as_deref(), Some(CLASS), "{file}");
        assert_eq!(class.spec.controller_name, CONTROLLER, "{file}");
        classes += 1;
    }
    // The gatewayClass.create=true case renders it; without one, this test would check nothing.
    assert!(classes >= 1, "no golden file renders the GatewayClass");
}

/// The default values' Gateway, broken in one way per case: the schema must refuse each, saying
/// where and why.
#[test]
fn a_broken_gateway_is_refused_with_the_field_named() {
    let validator = strict_schema::<Gateway>();
    let (_, good) = golden_documents()
        .into_iter()
        .find(|(f, d)| f == "default.yaml" && is_kind(d, "Gateway"))
        .expect("default.yaml renders a Gateway");
    assert!(violations(&validator, &good).is_empty());

    type Case = (&'static str, fn(&mut Value), &'static str);
    // (what, how to break it, the error expected)
    let cases: [Case; 5] = [
        (
            "port as a string",
            |d| d["spec"]["listeners"][0]["port"] = json!("15008"),
            r#"at /spec/listeners/0/port: "15008" is not of type "integer""#,
        ),
        (
            "a misspelt field",
            |d| {
                let spec = d["spec"].as_object_mut().unwrap();
                let listeners = spec.remove("listeners").unwrap();
                spec.insert("listener".into(), listeners);
            },
            "at /spec: Additional properties are not allowed ('listener' was unexpected)",
        ),
        (
            "no gatewayClassName",
            |d| {
                d["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("gatewayClassName");
            },
            r#"at /spec: "gatewayClassName" is a required property"#,
        ),
        (
            "allowedRoutes as a list",
            |d| d["spec"]["listeners"][0]["allowedRoutes"] = json!([{"from": "All"}]),
            r#"at /spec/listeners/0/allowedRoutes: [{"from":"All"}] is not of type "object""#,
        ),
        (
            "another API group",
            |d| d["apiVersion"] = json!("networking.istio.io/v1"),
            r#"at /apiVersion: "gateway.networking.k8s.io/v1" was expected"#,
        ),
    ];
    for (what, break_it, named) in cases {
        let mut doc = good.clone();
        break_it(&mut doc);
        let errors = violations(&validator, &doc);
        assert!(
            errors.iter().any(|e| e == named),
            "{what}: expected {named:?}, got {errors:?}"
        );
    }
}

#[test]
fn a_gateway_class_without_controller_is_refused() {
    let validator = strict_schema::<GatewayClass>();
    let doc = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": CLASS},
        "spec": {"controller": CONTROLLER},
    });
    let errors = violations(&validator, &doc);
    assert_eq!(
        errors,
        [
            "at /spec: Additional properties are not allowed ('controller' was unexpected)",
            r#"at /spec: "controllerName" is a required property"#,
        ]
    );
}

// The `restricted` Pod Security Standard, written from the published profile
// (https://kubernetes.io/docs/concepts/security/pod-security-standards/, "Baseline" and
// "Restricted"; the Pod Security admission controller, kubernetes/pod-security-admission
// `policy/check_*.go`, implements the same table). Restricted includes every Baseline control.
// Where the standard changed between Kubernetes versions, the check takes the narrowest rule of
// any version the chart supports (1.28 and newer), so a pod that passes is admitted by all of
// them:
// * the SELinux types and safe sysctls allowed since 1.0 (later versions added more);
// * the Volume Types of the published list without `image` (allowed by recent versions only);
// * the controls added later (Host Probes / Lifecycle Hooks in 1.34, /proc Mount Type moved into
//   Restricted in 1.35) apply throughout;
// * no relaxation for user-namespaced pods (`hostUsers: false`) or Windows pods (`spec.os.name`),
//   which the chart never renders.

/// One rule of the standard a pod breaks: the control as the standard names it, and where.
#[derive(Debug)]
struct Violation {
    control: &'static str,
    detail: String,
}

/// One line per violation, for assertion messages.
fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("  {}: {}", v.control, v.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A pod spec's containers with where each is (`containers[0] "istio-proxy"`): the controls
/// apply to init and ephemeral containers too.
fn pod_containers(spec: &Value) -> Vec<(String, &Value)> {
    let mut all = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            all.push((format!("{list}[{i}] {}", c["name"]), c));
        }
    }
    all
}

/// A field that must be undefined or false.
fn truthy(v: &Value) -> bool {
    !(v.is_null() || *v == Value::Bool(false))
}

/// Every rule of the restricted profile that the pod template (`metadata` and `spec`) breaks.
fn restricted_violations(template: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut fail = |control: &'static str, detail: String| out.push(Violation { control, detail });
    let spec = &template["spec"];
    let pod_sc = &spec["securityContext"];
    let containers = pod_containers(spec);

    // Baseline: HostProcess.
    if truthy(&pod_sc["windowsOptions"]["hostProcess"]) {
        fail(
            "HostProcess",
            "spec.securityContext.windowsOptions.hostProcess".into(),
        );
    }
    for (at, c) in &containers {
        if truthy(&c["securityContext"]["windowsOptions"]["hostProcess"]) {
            fail("HostProcess", format!("{at}: windowsOptions.hostProcess"));
        }
    }
    // Baseline: Host Namespaces.
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if truthy(&spec[field]) {
            fail("Host Namespaces", format!("spec.{field}: {}", spec[field]));
        }
    }
    // Baseline: Privileged Containers.
    for (at, c) in &containers {
        if truthy(&c["securityContext"]["privileged"]) {
            fail("Privileged Containers", format!("{at}: privileged"));
        }
    }
    // Baseline: Host Ports (undefined or 0).
    for (at, c) in &containers {
        for port in c["ports"].as_array().into_iter().flatten() {
            let host_port = &port["hostPort"];
            if !(host_port.is_null() || *host_port == json!(0)) {
                fail("Host Ports", format!("{at}: hostPort {host_port}"));
            }
        }
    }
    // Baseline: Host Probes / Lifecycle Hooks (the `host` of an httpGet or tcpSocket handler is
    // undefined or empty).
    for (at, c) in &containers {
        let handlers = [
            ("livenessProbe", &c["livenessProbe"]),
            ("readinessProbe", &c["readinessProbe"]),
            ("startupProbe", &c["startupProbe"]),
            ("lifecycle.postStart", &c["lifecycle"]["postStart"]),
            ("lifecycle.preStop", &c["lifecycle"]["preStop"]),
        ];
        for (which, handler) in handlers {
            for kind in ["httpGet", "tcpSocket"] {
                let host = &handler[kind]["host"];
                if !(host.is_null() || *host == json!("")) {
                    fail(
                        "Host Probes / Lifecycle Hooks",
                        format!("{at}: {which}.{kind}.host {host}"),
                    );
                }
            }
        }
    }
    // Baseline: AppArmor (type RuntimeDefault or Localhost; the beta annotations runtime/default,
    // localhost/<profile> or empty).
    let apparmor_types = ["RuntimeDefault", "Localhost"];
    let mut apparmor_setters = vec![("spec.securityContext".to_owned(), pod_sc)];
    apparmor_setters.extend(
        containers
            .iter()
            .map(|(at, c)| (at.clone(), &c["securityContext"])),
    );
    for (at, sc) in &apparmor_setters {
        let profile = &sc["appArmorProfile"];
        if !profile.is_null() && !apparmor_types.iter().any(|t| profile["type"] == *t) {
            fail(
                "AppArmor",
                format!("{at}: appArmorProfile.type {}", profile["type"]),
            );
        }
    }
    for (key, value) in template["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/") {
            let v = value.as_str().unwrap_or("(not a string)");
            if !(v.is_empty() || v == "runtime/default" || v.starts_with("localhost/")) {
                fail("AppArmor", format!("annotation {key}: {v}"));
            }
        }
    }
    // Baseline: SELinux (type empty, container_t, container_init_t or container_kvm_t; no user or
    // role).
    let selinux_types = ["", "container_t", "container_init_t", "container_kvm_t"];
    for (at, sc) in &apparmor_setters {
        let options = &sc["seLinuxOptions"];
        if options.is_null() {
            continue;
        }
        let type_ = options["type"].as_str().unwrap_or("");
        if !selinux_types.contains(&type_) {
            fail("SELinux", format!("{at}: seLinuxOptions.type {type_}"));
        }
        for field in ["user", "role"] {
            if !options[field].as_str().unwrap_or("").is_empty() {
                fail("SELinux", format!("{at}: seLinuxOptions.{field}"));
            }
        }
    }
    // Baseline and Restricted: /proc Mount Type (undefined or Default).
    for (at, c) in &containers {
        let proc_mount = &c["securityContext"]["procMount"];
        if !(proc_mount.is_null() || *proc_mount == json!("Default")) {
            fail("/proc Mount Type", format!("{at}: procMount {proc_mount}"));
        }
    }
    // Baseline: Sysctls (the safe set).
    let safe_sysctls = [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    ];
    for sysctl in pod_sc["sysctls"].as_array().into_iter().flatten() {
        let name = sysctl["name"].as_str().unwrap_or("");
        if !safe_sysctls.contains(&name) {
            fail("Sysctls", format!("spec.securityContext.sysctls: {name}"));
        }
    }
    // Restricted: Volume Types (this includes Baseline's HostPath Volumes).
    let allowed_volumes = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        for (source, _) in volume.as_object().into_iter().flatten() {
            if source != "name" && !allowed_volumes.contains(&source.as_str()) {
                fail(
                    "Volume Types",
                    format!("volume {}: {source}", volume["name"]),
                );
            }
        }
    }
    // Restricted: Privilege Escalation (allowPrivilegeEscalation must be false, explicitly).
    for (at, c) in &containers {
        if c["securityContext"]["allowPrivilegeEscalation"] != json!(false) {
            fail(
                "Privilege Escalation",
                format!("{at}: allowPrivilegeEscalation is not false"),
            );
        }
    }
    // Restricted: Running as Non-root (true at pod level, or on every container; never false).
    let pod_non_root = &pod_sc["runAsNonRoot"];
    if *pod_non_root == json!(false) {
        fail(
            "Running as Non-root",
            "spec.securityContext.runAsNonRoot false".into(),
        );
    }
    for (at, c) in &containers {
        let non_root = &c["securityContext"]["runAsNonRoot"];
        if *non_root == json!(false) || (non_root.is_null() && *pod_non_root != json!(true)) {
            fail(
                "Running as Non-root",
                format!("{at}: runAsNonRoot is not true"),
            );
        }
    }
    // Restricted: Running as Non-root user (runAsUser never 0).
    if pod_sc["runAsUser"] == json!(0) {
        fail(
            "Running as Non-root user",
            "spec.securityContext.runAsUser 0".into(),
        );
    }
    for (at, c) in &containers {
        if c["securityContext"]["runAsUser"] == json!(0) {
            fail("Running as Non-root user", format!("{at}: runAsUser 0"));
        }
    }
    // Restricted: Seccomp (RuntimeDefault or Localhost at pod level, or on every container; never
    // another type).
    let seccomp_ok = |profile: &Value| {
        ["RuntimeDefault", "Localhost"]
            .iter()
            .any(|t| profile["type"] == *t)
    };
    let pod_seccomp = &pod_sc["seccompProfile"];
    if !pod_seccomp.is_null() && !seccomp_ok(pod_seccomp) {
        fail(
            "Seccomp",
            format!(
                "spec.securityContext.seccompProfile.type {}",
                pod_seccomp["type"]
            ),
        );
    }
    for (at, c) in &containers {
        let profile = &c["securityContext"]["seccompProfile"];
        if profile.is_null() {
            if !seccomp_ok(pod_seccomp) {
                fail(
                    "Seccomp",
                    format!("{at}: no seccompProfile, none for the pod"),
                );
            }
        } else if !seccomp_ok(profile) {
            fail(
                "Seccomp",
                format!("{at}: seccompProfile.type {}", profile["type"]),
            );
        }
    }
    // Restricted: Capabilities (drop ALL; add nothing but NET_BIND_SERVICE). This includes
    // Baseline's Capabilities control.
    for (at, c) in &containers {
        let capabilities = &c["securityContext"]["capabilities"];
        let drops_all = capabilities["drop"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("ALL")));
        if !drops_all {
            fail("Capabilities", format!("{at}: does not drop ALL"));
        }
        for added in capabilities["add"].as_array().into_iter().flatten() {
            if *added != json!("NET_BIND_SERVICE") {
                fail("Capabilities", format!("{at}: adds {added}"));
            }
        }
    }
    out
}

/// The pod templates of the workload kinds in `doc` (a Pod itself, a CronJob's job template, any
/// other workload's `spec.template`).
fn pod_templates(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(doc),
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]),
        _ => doc["spec"]["template"]["spec"]["containers"]
            .is_array()
            .then(|| &doc["spec"]["template"]),
    }
}

#[test]
fn every_pod_of_the_chart_is_admitted_by_the_restricted_pod_security_standard() {
    let docs = golden_documents();
    let files: std::collections::BTreeSet<&str> = docs.iter().map(|(f, _)| f.as_str()).collect();
    let mut checked = std::collections::BTreeSet::new();
    for (file, doc) in &docs {
        let Some(template) = pod_templates(doc) else {
            continue;
        };
        let violations = restricted_violations(template);
        assert!(
            violations.is_empty(),
            "{file}: {} {}: the restricted profile refuses its pod:\n{}",
            doc["kind"],
            doc["metadata"]["name"],
            describe(&violations)
        );
        checked.insert(file.as_str());
    }
    assert_eq!(checked, files, "every golden file renders a pod to check");
}

/// The chart's default pod, broken one rule at a time: the check must refuse each with the
/// control the standard names, and nothing else. The first case is the chart as it was before it
/// set a seccomp profile.
#[test]
fn a_pod_that_breaks_a_restricted_rule_is_refused_with_the_control_named() {
    let (_, deployment) = golden_documents()
        .into_iter()
        .find(|(f, d)| f == "default.yaml" && d["kind"] == "Deployment")
        .expect("default.yaml renders a Deployment");
    let good = deployment["spec"]["template"].clone();
    let violations = restricted_violations(&good);
    assert!(violations.is_empty(), "{}", describe(&violations));

    type Case = (&'static str, fn(&mut Value));
    let cases: [Case; 23] = [
        ("Seccomp", |t| {
            t["spec"]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("seccompProfile");
        }),
        ("Seccomp", |t| {
            t["spec"]["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"});
        }),
        ("Seccomp", |t| {
            t["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                json!({"type": "Unconfined"});
        }),
        ("HostProcess", |t| {
            t["spec"]["securityContext"]["windowsOptions"] = json!({"hostProcess": true});
        }),
        ("Host Namespaces", |t| {
            t["spec"]["hostNetwork"] = json!(true)
        }),
        ("Host Namespaces", |t| t["spec"]["hostPID"] = json!(true)),
        ("Privileged Containers", |t| {
            t["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true);
        }),
        ("Capabilities", |t| {
            t["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                json!(["NET_ADMIN"]);
        }),
        ("Capabilities", |t| {
            t["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"] =
                json!(["NET_RAW"]);
        }),
        ("Volume Types", |t| {
            t["spec"]["volumes"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "host", "hostPath": {"path": "/var/run"}}));
        }),
        ("Host Ports", |t| {
            t["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(15008);
        }),
        ("Host Probes / Lifecycle Hooks", |t| {
            t["spec"]["containers"][0]["readinessProbe"]["httpGet"]["host"] = json!("10.0.0.1");
        }),
        ("AppArmor", |t| {
            t["spec"]["containers"][0]["securityContext"]["appArmorProfile"] =
                json!({"type": "Unconfined"});
        }),
        ("AppArmor", |t| {
            t["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/istio-proxy"] =
                json!("unconfined");
        }),
        ("SELinux", |t| {
            t["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "spc_t"});
        }),
        ("SELinux", |t| {
            t["spec"]["containers"][0]["securityContext"]["seLinuxOptions"] =
                json!({"user": "system_u"});
        }),
        ("/proc Mount Type", |t| {
            t["spec"]["containers"][0]["securityContext"]["procMount"] = json!("Unmasked");
        }),
        ("Sysctls", |t| {
            t["spec"]["securityContext"]["sysctls"] =
                json!([{"name": "net.core.somaxconn", "value": "4096"}]);
        }),
        ("Privilege Escalation", |t| {
            t["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("allowPrivilegeEscalation");
        }),
        ("Running as Non-root", |t| {
            t["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("runAsNonRoot");
        }),
        ("Running as Non-root", |t| {
            t["spec"]["securityContext"]["runAsNonRoot"] = json!(false);
        }),
        ("Running as Non-root user", |t| {
            t["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0);
        }),
        // A debug container added with `kubectl debug` is checked like the others.
        ("Capabilities", |t| {
            t["spec"]["ephemeralContainers"] = json!([{
                "name": "debugger",
                "image": "busybox",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "runAsNonRoot": true,
                    "capabilities": {"add": ["SYS_PTRACE"], "drop": ["ALL"]},
                },
            }]);
        }),
    ];
    for (control, break_it) in cases {
        let mut template = good.clone();
        break_it(&mut template);
        let violations = restricted_violations(&template);
        let controls: std::collections::BTreeSet<&str> =
            violations.iter().map(|v| v.control).collect();
        assert_eq!(
            controls,
            [control].into(),
            "expected exactly {control:?}, got:\n{}",
            describe(&violations)
        );
    }
}
