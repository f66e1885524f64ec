//! What the advisor's tests share: the scenarios, running the binary, and applying YAML as
//! `kubectl apply` does.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

pub(crate) fn scenario(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/advisor")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh file under the temp dir holding `yaml`.
pub(crate) fn temp_file(yaml: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "waypoint-analyze-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

pub(crate) fn waypoint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(args)
        .output()
        .expect("run waypoint")
}

/// Runs `analyze -o json` on `yaml`: the exit status and the findings.
pub(crate) fn analyze(yaml: &str, extra: &[&str]) -> (i32, Vec<Value>) {
    let path = temp_file(yaml);
    let mut args = vec!["analyze", "--config", path.to_str().unwrap(), "-o", "json"];
    args.extend_from_slice(extra);
    let o = waypoint(&args);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let findings = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    (o.status.code().unwrap_or(-1), findings)
}

/// `(group, kind, namespace, name)` of a document.
pub(crate) fn identity(doc: &serde_yaml::Value) -> (String, String, String, String) {
    let s = |v: &serde_yaml::Value| v.as_str().unwrap_or("").to_owned();
    let api = s(&doc["apiVersion"]);
    let group = api.rsplit_once('/').map_or("", |(g, _)| g).to_owned();
    let kind = s(&doc["kind"]);
    let ns = match kind.as_str() {
        "Namespace" | "GatewayClass" => String::new(),
        _ => Some(s(&doc["metadata"]["namespace"]))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
    };
    (group, kind, ns, s(&doc["metadata"]["name"]))
}

pub(crate) fn documents(yaml: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

/// `fix` applied to `base` as `kubectl apply` does.
pub(crate) fn apply(base: &str, fix: &str) -> String {
    let mut docs = documents(base);
    for f in documents(fix) {
        match docs.iter().position(|d| identity(d) == identity(&f)) {
            Some(i) => docs[i] = f,
            None => docs.push(f),
        }
    }
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

pub(crate) fn find<'a>(findings: &'a [Value], code: &str, object: &str) -> Option<&'a Value> {
    findings
        .iter()
        .find(|f| f["code"] == code && f["object"] == object)
}
