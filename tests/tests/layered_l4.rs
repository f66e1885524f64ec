//! Layered L4 policy at HBONE termination (istiod's `ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES`),
//! through the running waypoint: the selector, namespace-wide and root-namespace policies a
//! ztunnel would enforce for the waypoint's own pod are ignored by default, and enforced on every
//! CONNECT when the setting is on: a denied peer's CONNECT gets ztunnel's `401` (before its
//! destination is even looked up), an allowed one is served, and an HTTP attribute fails safe as
//! istiod's conversion for ztunnel makes it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use gateway_api_bindings::ObjectKey;
use waypoint::metrics::PolicyDecision;
use waypoint::settings::Settings;
use waypoint::source::kube::KubeSettings;
use waypoint::state::layered::LayeredSettings;
use waypoint_tests::http1;
use waypoint_tests::kube_api::FakeApiServer;
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions, UNKNOWN_VIP, cluster_yaml};
use waypoint_tests::net::Block;
use waypoint_tests::pki::WorkloadCert;

const LIMIT: Duration = Duration::from_secs(120);

/// The waypoint's own Pod, as the API server (here, the file config) reports it.
const WAYPOINT_POD: &str = "
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: ambient-demo
  labels: {gateway.networking.k8s.io/gateway-name: waypoint, tier: front}
spec: {serviceAccountName: waypoint, containers: [{name: waypoint}]}
---
";

/// Policies for ztunnel (selectors, namespace-wide, root namespace): none binds to the waypoint
/// at L7, so without layered enforcement they change nothing here.
const L4_POLICIES: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: front-deny-curl, namespace: ambient-demo}
spec:
  selector: {matchLabels: {tier: front}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/curl]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-deny-quarantine, namespace: ambient-demo}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [10.244.9.0/24]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-port-7000, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ['7000']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-pods-deny-all, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{}]
---
";

fn layered_on(s: &mut Settings) {
    s.mesh.layered = Some(LayeredSettings {
        pod_name: Some("waypoint-0".into()),
    });
}

/// CONNECT to `target` as `who` from client address `client`; on 200, one `GET /anything`.
/// Returns the CONNECT's status and, when it opened, the request's.
async fn call(mesh: &Mesh, who: &WorkloadCert, target: &str, client: &str) -> (u16, Option<u16>) {
    let c = mesh.hbone(who).await.unwrap();
    let fwd = format!("for=\"{client}:40000\"");
    let o = c.open(target, &[("forwarded", &fwd)]).await.unwrap();
    let Some(mut s) = o.stream else {
        return (o.status.as_u16(), None);
    };
    let r = http1::request(&mut s, "GET", "/anything", &[], "")
        .await
        .unwrap()
        .map(|r| r.status);
    (o.status.as_u16(), r)
}

fn refused(mesh: &Mesh, ns: &str, name: &str, action: &'static str) -> u64 {
    mesh.running()
        .metrics
        .layered_decisions
        .get(&PolicyDecision {
            policy_namespace: ns.into(),
            policy_name: name.into(),
            action,
            decision: "deny",
            code: Some(401),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_selector_policies_change_nothing() {
    tokio::time::timeout(LIMIT, async {
        let mut mesh = Mesh::start(MeshOptions {
            policies: format!("{WAYPOINT_POD}{L4_POLICIES}"),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        assert_eq!(
            call(&mesh, &mesh.curl, HTTPBIN_VIP, "10.244.1.9").await,
            (200, Some(200)),
            "a DENY selecting the waypoint pod is ztunnel's, and no ztunnel captures the waypoint"
        );
        assert_eq!(
            call(&mesh, &mesh.sleep, HTTPBIN_VIP, "10.244.9.7").await,
            (200, Some(200))
        );
        assert_eq!(
            mesh.running().config.dump()["layeredL4"],
            serde_json::Value::Null
        );
        mesh.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_policies_of_the_waypoint_pod_decide_each_connect() {
    tokio::time::timeout(LIMIT, async {
        let mut mesh = Mesh::start(MeshOptions {
            policies: format!("{WAYPOINT_POD}{L4_POLICIES}"),
            tune: Some(layered_on),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        // (who, target, client address, CONNECT status, request status)
        let cases = [
            (
                "sleep: no policy denies it",
                &mesh.sleep,
                HTTPBIN_VIP,
                "10.244.1.9",
                (200, Some(200)),
            ),
            (
                "curl: the selector policy of the waypoint pod denies it",
                &mesh.curl,
                HTTPBIN_VIP,
                "10.244.1.9",
                (401, None),
            ),
            (
                "curl to an address nobody serves: refused before the lookup",
                &mesh.curl,
                UNKNOWN_VIP,
                "10.244.1.9",
                (401, None),
            ),
            (
                "sleep to an address nobody serves: looked up, 503",
                &mesh.sleep,
                UNKNOWN_VIP,
                "10.244.1.9",
                (503, None),
            ),
            (
                "sleep from a quarantined address: namespace-wide DENY",
                &mesh.sleep,
                HTTPBIN_VIP,
                "10.244.9.7",
                (401, None),
            ),
            (
                "sleep to port 7000: the root namespace's DENY",
                &mesh.sleep,
                "10.96.0.10:7000",
                "10.244.1.9",
                (401, None),
            ),
        ];
        for (what, who, target, client, want) in cases {
            assert_eq!(call(&mesh, who, target, client).await, want, "{what}");
        }
        assert_eq!(refused(&mesh, "ambient-demo", "front-deny-curl", "DENY"), 2);
        assert_eq!(
            refused(&mesh, "ambient-demo", "ns-deny-quarantine", "DENY"),
            1
        );
        assert_eq!(
            refused(&mesh, "istio-system", "mesh-deny-port-7000", "DENY"),
            1
        );
        let dump = mesh.running().config.dump();
        let l = &dump["layeredL4"];
        assert_eq!(l["workload"], "ambient-demo/waypoint-0");
        assert_eq!(l["labelsFrom"], "pod");
        let names: Vec<&str> = l["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["policy"].as_str().unwrap())
            .collect();
        assert!(
            !names.contains(&"ambient-demo/httpbin-pods-deny-all"),
            "another workload's selector: {names:?}"
        );
        assert_eq!(names.len(), 3, "{names:?}");
        mesh.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_attributes_fail_safe_as_at_ztunnel() {
    tokio::time::timeout(LIMIT, async {
        // ALLOW: sleep's rule names a method, which ztunnel cannot see: istiod drops the rule,
        // the policy still applies, so sleep is refused; curl's rule is pure L4 and matches.
        let allow = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: front-allow, namespace: ambient-demo}
spec:
  selector: {matchLabels: {tier: front}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}}]
    to: [{operation: {methods: [GET]}}]
  - from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/curl]}}]
---
";
        let mut mesh = Mesh::start(MeshOptions {
            policies: format!("{WAYPOINT_POD}{allow}"),
            tune: Some(layered_on),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        assert_eq!(
            call(&mesh, &mesh.sleep, HTTPBIN_VIP, "10.244.1.9").await,
            (401, None),
            "an ALLOW rule with an HTTP attribute never matches at L4"
        );
        assert_eq!(
            call(&mesh, &mesh.curl, HTTPBIN_VIP, "10.244.1.9").await,
            (200, Some(200))
        );
        // No ALLOW rule matched: counted without a deciding policy.
        assert_eq!(refused(&mesh, "", "", ""), 1);
        let l = &mesh.running().config.dump()["layeredL4"]["policies"][0];
        assert_eq!(l["conversion"], "AllowRulesOmitted");
        assert_eq!(l["neverMatchingRules"], serde_json::json!([0]));

        // DENY: the path is omitted and the rest enforced, so curl is refused on port 8000
        // whatever it asks. A DENY whose `to` holds only a path keeps an empty match, which
        // ztunnel skips: that one denies nothing (istiod reports it as having no effect).
        let deny = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: front-deny-admin, namespace: ambient-demo}
spec:
  selector: {matchLabels: {tier: front}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/curl]}}]
    to: [{operation: {ports: ['8000'], paths: [/admin]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: front-deny-paths-only, namespace: ambient-demo}
spec:
  selector: {matchLabels: {tier: front}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}}]
    to: [{operation: {paths: [/admin]}}]
---
";
        mesh.set_policies(&format!("{WAYPOINT_POD}{deny}"))
            .await
            .unwrap();
        assert_eq!(
            call(&mesh, &mesh.curl, HTTPBIN_VIP, "10.244.1.9").await,
            (401, None),
            "a DENY rule is enforced without its HTTP attribute: denies more"
        );
        assert_eq!(
            call(&mesh, &mesh.sleep, HTTPBIN_VIP, "10.244.1.9").await,
            (200, Some(200)),
            "a DENY left with an empty match denies nothing"
        );
        assert_eq!(
            refused(&mesh, "ambient-demo", "front-deny-admin", "DENY"),
            1
        );
        let conversions: Vec<String> = mesh.running().config.dump()["layeredL4"]["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{} {}",
                    p["policy"].as_str().unwrap(),
                    p["conversion"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            conversions,
            [
                "ambient-demo/front-deny-admin DenyWithoutHttpRules",
                "ambient-demo/front-deny-paths-only DenyNoEffect"
            ]
        );
        mesh.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_the_waypoint_pods_labels_come_from_the_api_server() {
    tokio::time::timeout(LIMIT, async {
        let block = Block::allocate();
        let dir = std::env::temp_dir().join(format!("waypoint-layered-api-{}", std::process::id()));
        let api = FakeApiServer::start(&dir).await.unwrap();
        api.apply_yaml(&cluster_yaml(&block)).unwrap();
        // The waypoint's pod, not (yet) labelled `tier: front`.
        api.apply_yaml(&WAYPOINT_POD.replace(", tier: front", ""))
            .unwrap();
        api.apply_yaml(L4_POLICIES).unwrap();
        let mut kube = KubeSettings::new(ObjectKey::new("ambient-demo", "waypoint"));
        kube.kubeconfig = Some(api.kubeconfig.clone());
        kube.status = None;
        let mut mesh = Mesh::start(MeshOptions {
            policies: String::new(),
            block: Some(block),
            kube: Some(kube),
            tune: Some(layered_on),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        mesh.wait_ready().await.unwrap();
        assert_eq!(
            call(&mesh, &mesh.curl, HTTPBIN_VIP, "10.244.1.9").await,
            (200, Some(200)),
            "the selector does not select the pod as it is labelled"
        );
        assert_eq!(
            mesh.running().config.dump()["layeredL4"]["labelsFrom"],
            "pod"
        );
        // Labelled `tier: front` in the API server: the selector policy now applies.
        api.apply_yaml(WAYPOINT_POD).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match call(&mesh, &mesh.curl, HTTPBIN_VIP, "10.244.1.9").await {
                (401, None) => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "still {other:?} after the relabel"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            call(&mesh, &mesh.sleep, HTTPBIN_VIP, "10.244.1.9").await,
            (200, Some(200))
        );
        mesh.shutdown().await;
        api.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .unwrap();
}
