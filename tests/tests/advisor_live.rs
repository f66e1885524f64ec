//! `waypoint analyze --kubernetes` against the in-process API server (real list protocol over
//! HTTPS, reached through a kubeconfig): one paged, read-only list of every kind the advisor
//! reads, with the live-only rule that a Gateway without `status.addresses` is no waypoint.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use waypoint_tests::kube_api::FakeApiServer;

/// Every run is bounded: a hang is a failure.
const LIMIT: Duration = Duration::from_secs(60);

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "waypoint-advisor-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn scenario(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../waypoint/tests/advisor")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs the binary off the runtime (the API server lives on it): exit status and findings.
async fn analyze(args: Vec<String>) -> (i32, Vec<Value>) {
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(waypoint_tests::waypoint_bin())
            .args(&args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    });
    let o = tokio::time::timeout(LIMIT, run).await.unwrap().unwrap();
    let stdout = String::from_utf8(o.stdout).unwrap();
    let findings = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (o.status.code().unwrap_or(-1), findings)
}

fn live_args(api: &FakeApiServer) -> Vec<String> {
    [
        "analyze",
        "--kubernetes",
        "--kubeconfig",
        api.kubeconfig.to_str().unwrap(),
        "-o",
        "json",
    ]
    .map(String::from)
    .to_vec()
}

fn codes(findings: &[Value]) -> Vec<(String, String)> {
    findings
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_owned(),
                f["object"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

const PEER_AUTHENTICATION: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy-plaintext, namespace: ambient-demo}
spec:
  mtls: {mode: DISABLE}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_the_cluster_once_and_reads_gateway_status() {
    let dir = temp_dir("api");
    let api = FakeApiServer::start(&dir).await.unwrap();
    // A RequestAuthentication bound to httpbin, whose waypoint has no address yet.
    let yaml = scenario("request-authentication-selector.yaml").replace(
        "  selector:\n    matchLabels: {app: httpbin}\n  jwtRules:",
        "  targetRefs:\n  - {kind: Service, group: \"\", name: httpbin}\n  jwtRules:",
    );
    assert!(yaml.contains("targetRefs"));
    api.apply_yaml(&yaml).unwrap();
    api.apply_yaml(PEER_AUTHENTICATION).unwrap();
    // More pods than one list page holds.
    for i in 0..510 {
        api.apply(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("job-{i}"), "namespace": "bulk", "labels": {"app": "job"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
    }
    let pages = api.list_pages("v1", "Pod");
    let patches = api.patches().len();

    let (code, findings) = analyze(live_args(&api)).await;
    assert_eq!(code, 3, "{findings:#?}");
    let got = codes(&findings);
    let policy = "RequestAuthentication/ambient-demo/httpbin-jwt";
    for want in [
        ("PolicyTargetNotEnforced", policy),
        (
            "PeerAuthenticationDisableIgnored",
            "PeerAuthentication/ambient-demo/legacy-plaintext",
        ),
    ] {
        assert!(
            got.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} in {got:?}"
        );
    }
    let ptne = findings
        .iter()
        .find(|f| f["code"] == "PolicyTargetNotEnforced")
        .unwrap();
    assert!(
        ptne["message"]
            .as_str()
            .unwrap()
            .contains("has no status.addresses"),
        "{ptne:#}"
    );
    assert_eq!(
        api.list_pages("v1", "Pod") - pages,
        2,
        "510 pods in pages of 500"
    );
    assert_eq!(api.patches().len(), patches, "analyze writes nothing");

    // The same objects from files: no controller status to ask for, so no such finding.
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, format!("{yaml}---\n{PEER_AUTHENTICATION}")).unwrap();
    let (_, from_files) = analyze(
        ["analyze", "--config", file.to_str().unwrap(), "-o", "json"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(
        !codes(&from_files)
            .iter()
            .any(|(c, _)| c == "PolicyTargetNotEnforced"),
        "{from_files:#?}"
    );

    // The waypoint's controller publishes its address: the policy is enforced.
    api.apply_status(
        "rust-waypoint",
        true,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "ambient-demo"},
            "status": {"addresses": [{"type": "Hostname", "value": "waypoint.ambient-demo.svc.cluster.local"}]},
        }),
    )
    .unwrap();
    let (_, after) = analyze(live_args(&api)).await;
    let got = codes(&after);
    assert!(
        !got.iter().any(|(c, _)| c == "PolicyTargetNotEnforced"),
        "{after:#?}"
    );
    assert!(
        got.iter()
            .any(|(c, _)| c == "PeerAuthenticationDisableIgnored"),
        "{got:?}"
    );
    api.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_a_clear_error() {
    let dir = temp_dir("down");
    let api = FakeApiServer::start(&dir).await.unwrap();
    api.stop().await;
    let args = live_args(&api);
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(waypoint_tests::waypoint_bin())
            .args(&args)
            .output()
            .unwrap()
    });
    let o = tokio::time::timeout(LIMIT, run).await.unwrap().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error: listing "), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
