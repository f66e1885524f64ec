//! The fake API server (tests/src/kube_api.rs) checked with a real client: `kubectl` (v1.32 on
//! the CI image; `.ci/deps.sh` says so where it is missing) must find every kind the waypoint
//! reads through discovery, list each, watch one, and server-side apply a policy and a status,
//! exactly as against a cluster. The same discovery must agree with the waypoint's own resource
//! table (`gateway_api_bindings::api`): the fake is written from the published definitions and
//! the waypoint from crates and Istio's CRDs, so agreement is evidence, not an echo.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gateway_api_bindings::Kind;
use serde_json::Value;
use waypoint_tests::kube_api::FakeApiServer;
use waypoint_tests::mesh::cluster_yaml;
use waypoint_tests::net::Block;

const LIMIT: Duration = Duration::from_secs(120);

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "waypoint-kubectl-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `kubectl` against the fake, with its own cache directory (discovery is cached per server).
fn kubectl_command(kubeconfig: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("kubectl");
    c.env("KUBECONFIG", kubeconfig)
        .env("HOME", cache)
        .arg("--cache-dir")
        .arg(cache.join("kube-cache"))
        .arg("--request-timeout=20s")
        .args(args);
    c
}

async fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str]) -> Output {
    let mut c = kubectl_command(kubeconfig, cache, args);
    let what = format!("kubectl {}", args.join(" "));
    tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: {e} (is kubectl installed? .ci/deps.sh checks it)"))
}

/// Runs kubectl and returns its stdout, failing the test with its stderr when it fails.
async fn ok(kubeconfig: &Path, cache: &Path, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, cache, args).await;
    assert!(
        out.status.success(),
        "kubectl {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const EXTRA: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-curl, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Service, group: '', name: httpbin}]
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/curl]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Service, group: '', name: httpbin}]
  jwtRules: [{issuer: https://idp.example}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: ambient-demo}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: ambient-demo}
spec: {address: 10.0.0.7, labels: {app: vm}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: httpbin-abc, namespace: ambient-demo, labels: {kubernetes.io/service-name: httpbin}}
addressType: IPv4
endpoints: []
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: rust-waypoint}
spec: {controllerName: rust-waypoint.io/controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data: {mesh: "rootNamespace: istio-system"}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: waypoint-waypoint-status, namespace: ambient-demo}
spec: {holderIdentity: waypoint-1, leaseDurationSeconds: 15}
"#;

/// `kubectl api-resources`' columns for a resource: `(NAME, APIVERSION, NAMESPACED, KIND)`.
fn api_resources(text: &str) -> Vec<(String, String, bool, String)> {
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let col = |name: &str| header.find(name).unwrap();
    let (sn, av, ns, k) = (
        col("SHORTNAMES"),
        col("APIVERSION"),
        col("NAMESPACED"),
        col("KIND"),
    );
    lines
        .map(|l| {
            let field = |from: usize, to: usize| {
                l.get(from..to.min(l.len())).unwrap_or("").trim().to_owned()
            };
            (
                field(0, sn),
                field(av, ns),
                field(ns, k) == "true",
                field(k, l.len()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_the_fake_as_a_cluster() {
    tokio::time::timeout(LIMIT, async {
        let dir = temp_dir("fake");
        let api = FakeApiServer::start(&dir.join("api")).await.unwrap();
        let block = Block::allocate();
        api.apply_yaml(&cluster_yaml(&block)).unwrap();
        api.apply_yaml(EXTRA).unwrap();
        let (kc, cache) = (api.kubeconfig.clone(), dir.clone());

        // Discovery, as kubectl reads it, lists every resource the waypoint requests under the
        // name, version, scope and kind the waypoint's table gives.
        let listed = api_resources(&ok(&kc, &cache, &["api-resources"]).await);
        for r in gateway_api_bindings::api::all() {
            let found = listed
                .iter()
                .find(|(name, av, _, _)| *name == r.plural && *av == r.api_version())
                .unwrap_or_else(|| panic!("kubectl api-resources has no {} in {}: {listed:#?}", r.plural, r.api_version()));
            assert_eq!(found.2, r.scope == gateway_api_bindings::api::Scope::Namespaced, "{found:?}");
            assert_eq!(found.3, r.kind, "{found:?}");
        }
        // Istio's Gateway is a different resource from Gateway API's, with the same plural.
        assert!(listed.iter().any(|(n, av, _, k)| n == "gateways" && av == "networking.istio.io/v1" && k == "Gateway"));

        // Every kind lists across namespaces, under its qualified name (the way an operator
        // debugging the waypoint's RBAC would ask).
        for kind in Kind::ALL {
            let r = kind.api();
            let out = ok(&kc, &cache, &["get", &r.qualified(), "-A", "-o", "json"]).await;
            let list: Value = serde_json::from_str(&out).unwrap();
            let items = list["items"].as_array().unwrap();
            assert!(!items.is_empty(), "kubectl get {} -A: no items", r.qualified());
            assert!(items.iter().all(|i| i["kind"] == r.kind.as_str()), "{out}");
        }
        let cm = ok(&kc, &cache, &["get", "configmap", "istio", "-n", "istio-system", "-o", "json"]).await;
        assert_eq!(serde_json::from_str::<Value>(&cm).unwrap()["data"]["mesh"], "rootNamespace: istio-system");
        // A plural made from a kind is not a resource: kubectl finds nothing to ask for.
        let wrong = kubectl(&kc, &cache, &["get", "authorizationpolicys", "-A"]).await;
        assert!(!wrong.status.success());
        assert!(String::from_utf8_lossy(&wrong.stderr).contains("doesn't have a resource type"), "{wrong:?}");

        // One watch event: kubectl watches from its list's resourceVersion and prints the ADDED
        // of a policy created meanwhile.
        let ap = Kind::AuthorizationPolicy.api();
        let watch_path = ap.collection_path(None);
        let watches_before = api.count(Some("watch"), &watch_path, Some(200));
        let mut child = kubectl_command(
            &kc,
            &cache,
            &["get", &ap.qualified(), "-A", "--watch-only", "--output-watch-events", "-o", "json"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            // The first complete JSON document kubectl prints.
            let mut text = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                text.push_str(&line);
                text.push('\n');
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    let _ = tx.send(v);
                    return;
                }
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while api.count(Some("watch"), &watch_path, Some(200)) == watches_before {
            assert!(tokio::time::Instant::now() < deadline, "kubectl never watched");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        api.apply_yaml(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: watched, namespace: ambient-demo}\nspec: {action: DENY, rules: [{}]}\n",
        )
        .unwrap();
        let event = tokio::time::timeout(Duration::from_secs(30), rx).await.unwrap().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(event["type"], "ADDED", "{event}");
        assert_eq!(event["object"]["metadata"]["name"], "watched", "{event}");
        assert_eq!(event["object"]["apiVersion"], "security.istio.io/v1");

        // Server-side apply of a policy, then of a status beside it.
        let policy = dir.join("policy.yaml");
        std::fs::write(
            &policy,
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: applied, namespace: ambient-demo}\n\
             spec:\n  targetRefs: [{kind: Service, group: '', name: httpbin}]\n  action: ALLOW\n  rules: [{to: [{operation: {methods: [GET]}}]}]\n",
        )
        .unwrap();
        let out = ok(&kc, &cache, &["apply", "--server-side", "-f", policy.to_str().unwrap()]).await;
        assert!(out.contains("serverside-applied"), "{out}");
        let stored = api.get("security.istio.io/v1", "AuthorizationPolicy", "ambient-demo", "applied").unwrap();
        assert_eq!(stored["spec"]["action"], "ALLOW");
        assert_eq!(stored["metadata"]["generation"], 1);

        let status = dir.join("status.yaml");
        std::fs::write(
            &status,
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: applied, namespace: ambient-demo}\n\
             status:\n  conditions:\n  - {type: WaypointAccepted, status: \"True\", reason: Accepted, message: bound, observedGeneration: 1}\n",
        )
        .unwrap();
        let out = ok(
            &kc,
            &cache,
            &["apply", "--server-side", "--subresource=status", "--field-manager=istio-ambient-waypoint-policy", "-f", status.to_str().unwrap()],
        )
        .await;
        assert!(out.contains("serverside-applied"), "{out}");
        let stored = api.get("security.istio.io/v1", "AuthorizationPolicy", "ambient-demo", "applied").unwrap();
        assert_eq!(stored["status"]["conditions"][0]["type"], "WaypointAccepted", "{stored}");
        assert_eq!(stored["spec"]["action"], "ALLOW", "the status apply left the spec alone");
        let managers = api.managers("security.istio.io/v1", "AuthorizationPolicy", "ambient-demo", "applied");
        assert!(managers.contains_key("istio-ambient-waypoint-policy"), "{managers:?}");
        // The same through kubectl's eyes.
        let got = ok(&kc, &cache, &["get", "authorizationpolicy", "applied", "-n", "ambient-demo", "-o", "jsonpath={.status.conditions[0].reason}"]).await;
        assert_eq!(got, "Accepted");
    })
    .await
    .unwrap();
}
