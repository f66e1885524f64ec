//! The Helm chart's Gateway API documents against the Gateway API CRD schemas.
//!
//! `make chart` checks the chart with helm and validates the Kubernetes kinds it renders, but
//! neither tool knows the Gateway API CRDs. Here every Gateway and GatewayClass of every golden
//! file (`charts/waypoint/ci/golden/*.yaml`, the chart rendered with each of its test values
//! files) is validated against the `openAPIV3Schema` of the CRD the `gateway-api` crate builds
//! (`::crd()`), made strict as the API server's field validation is: an unknown field is an error.
//! The documents must also read as the typed objects the waypoint watches, and carry the class and
//! listener istiod and ztunnel look for.
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
