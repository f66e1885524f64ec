//! Policies Istio's validating webhook would refuse, stored in a cluster all the same (the
//! webhook was down with `failurePolicy: Ignore`, or the object predates it; the CRD schema
//! takes any string in `ipBlocks`). istiod compiles them anyway, dropping what it cannot use,
//! and the waypoint must enforce exactly that, never less: each case through the running
//! waypoint on the in-process API server, with real HBONE traffic, asserting the status the
//! client got, the policy's `WaypointEnforced` condition and the invalid-object counter.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gateway_api_bindings::ObjectKey;
use serde_json::Value;
use waypoint::source::kube::KubeSettings;
use waypoint_tests::http1;
use waypoint_tests::kube_api::FakeApiServer;
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions, NAMESPACE, cluster_yaml};
use waypoint_tests::net::Block;
use waypoint_tests::pki::WorkloadCert;

/// Every test is bounded: a hang is a failure, not a stuck CI job.
const LIMIT: Duration = Duration::from_secs(90);
/// The client ztunnel reports for every request: outside 192.0.2.0/24, inside 10.244.0.0/16.
const FORWARDED: &str = "for=\"10.244.1.9:51000\"";
/// Our own condition type on policies.
const ENFORCED: &str = "rust-waypoint.io/WaypointEnforced";

struct Cluster {
    api: FakeApiServer,
    mesh: Mesh,
}

fn temp_dir() -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "waypoint-unvalidated-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The demo cluster in a fresh API server, and a waypoint watching it, synced.
async fn cluster() -> Cluster {
    let block = Block::allocate();
    let api = FakeApiServer::start(&temp_dir()).await.unwrap();
    api.apply_yaml(&cluster_yaml(&block)).unwrap();
    let mut kube = KubeSettings::new(ObjectKey::new(NAMESPACE, "waypoint"));
    kube.kubeconfig = Some(api.kubeconfig.clone());
    if let Some(lease) = &mut kube.status {
        lease.duration = Duration::from_secs(1);
        lease.renew_every = Duration::from_millis(100);
    }
    let mesh = Mesh::start(MeshOptions {
        block: Some(block),
        kube: Some(kube),
        ..MeshOptions::default()
    })
    .await
    .unwrap();
    mesh.wait_ready().await.unwrap();
    Cluster { api, mesh }
}

/// `GET <path>` to httpbin through the waypoint as `who`: the inner HTTP status (the CONNECT
/// status when that is not 200).
async fn get(mesh: &Mesh, who: &WorkloadCert, path: &str) -> u16 {
    let c = mesh.hbone(who).await.unwrap();
    let o = c
        .open(HTTPBIN_VIP, &[("forwarded", FORWARDED)])
        .await
        .unwrap();
    let Some(mut s) = o.stream.filter(|_| o.status == 200) else {
        return o.status.as_u16();
    };
    match http1::request(&mut s, "GET", path, &[], "").await {
        Ok(Some(r)) => r.status,
        _ => 0,
    }
}

/// The status of `/anything` and `/admin` for both clients, in that order.
async fn statuses(mesh: &Mesh) -> [u16; 4] {
    [
        get(mesh, &mesh.sleep, "/anything").await,
        get(mesh, &mesh.sleep, "/admin").await,
        get(mesh, &mesh.curl, "/anything").await,
        get(mesh, &mesh.curl, "/admin").await,
    ]
}

/// Polls (bounded) until `cond` holds: config from the API server applies asynchronously.
async fn until<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec: {{targetRefs: [{{kind: Service, group: '', name: httpbin}}], {spec}}}\n"
    )
}

/// Our condition on the policy `name`.
fn condition(api: &FakeApiServer, name: &str) -> Option<Value> {
    let ap = api.get(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        NAMESPACE,
        name,
    )?;
    ap["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ENFORCED)
        .cloned()
}

/// Waits for our condition on `name` at `generation` to say Invalid, naming `field`, and
/// returns its message.
async fn invalid_condition(
    api: &FakeApiServer,
    name: &str,
    generation: i64,
    field: &str,
) -> String {
    until("the Invalid condition", || async {
        condition(api, name).is_some_and(|c| {
            c["reason"] == "Invalid"
                && c["status"] == "False"
                && c["observedGeneration"] == generation
        })
    })
    .await;
    let msg = condition(api, name).unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains(field), "{msg}");
    assert!(msg.contains("enforced as istiod builds it"), "{msg}");
    msg
}

fn invalid_objects(mesh: &Mesh) -> u64 {
    mesh.running().metrics.kube_invalid_objects.get()
}

/// A new DENY whose rule 0 has `ipBlocks: [10.0.0.0/33]` and whose rule 1 denies `/admin*`:
/// istiod drops the bad value, rule 0 then matches every source, and every request is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_with_a_bad_cidr_denies_every_request() {
    tokio::time::timeout(LIMIT, async {
        let Cluster { api, mesh } = cluster().await;
        assert_eq!(statuses(&mesh).await, [200; 4], "no policy: allowed");
        let before = invalid_objects(&mesh);

        api.apply_yaml(&policy(
            "deny-admin",
            "action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}, {to: [{operation: {paths: [\"/admin*\"]}}]}]",
        ))
        .unwrap();
        until("the widened DENY applies", || async { statuses(&mesh).await == [403; 4] }).await;
        invalid_condition(&api, "deny-admin", 1, "spec.rules[0].from[0].source.ipBlocks[0]").await;
        assert_eq!(invalid_objects(&mesh), before + 1);

        // Deleting it is the only way it goes.
        assert!(api.delete("security.istio.io/v1", "AuthorizationPolicy", NAMESPACE, "deny-admin"));
        until("the DENY is gone", || async { statuses(&mesh).await == [200; 4] }).await;
    })
    .await
    .unwrap();
}

/// A new ALLOW whose only rule has `ipBlocks: [not-a-cidr]`: istiod builds no rule, but the
/// policy still counts as an ALLOW policy, so nothing is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_whose_only_rule_is_unusable_denies_everything() {
    tokio::time::timeout(LIMIT, async {
        let Cluster { api, mesh } = cluster().await;
        assert_eq!(statuses(&mesh).await, [200; 4], "no policy: allowed");
        let before = invalid_objects(&mesh);

        api.apply_yaml(&policy(
            "allow-typo",
            "rules: [{from: [{source: {ipBlocks: [not-a-cidr]}}]}]",
        ))
        .unwrap();
        until("the ALLOW with no rule denies", || async {
            statuses(&mesh).await == [403; 4]
        })
        .await;
        let msg = invalid_condition(
            &api,
            "allow-typo",
            1,
            "spec.rules[0].from[0].source.ipBlocks[0]",
        )
        .await;
        assert!(msg.contains("still counts as an ALLOW policy"), "{msg}");
        assert_eq!(invalid_objects(&mesh), before + 1);

        // Fixed: the rule is built and allows again.
        api.apply_yaml(&policy(
            "allow-typo",
            "rules: [{from: [{source: {ipBlocks: [10.244.0.0/16]}}]}]",
        ))
        .unwrap();
        until("the fixed ALLOW allows", || async {
            statuses(&mesh).await == [200; 4]
        })
        .await;
        until("Accepted at generation 2", || async {
            condition(&api, "allow-typo")
                .is_some_and(|c| c["reason"] == "Accepted" && c["observedGeneration"] == 2)
        })
        .await;
        assert_eq!(
            invalid_objects(&mesh),
            before + 1,
            "a valid version is not counted"
        );
    })
    .await
    .unwrap();
}

/// A valid DENY updated to an invalid version: the new version is in force, widened as istiod
/// widens it; the old one is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_updated_to_an_invalid_version_is_enforced_as_the_new_version() {
    tokio::time::timeout(LIMIT, async {
        let Cluster { api, mesh } = cluster().await;
        let rules = |cidr: &str| {
            format!(
                "action: DENY, rules: [{{from: [{{source: {{ipBlocks: [\"{cidr}\"]}}}}]}}, {{to: [{{operation: {{paths: [\"/admin*\"]}}}}]}}]"
            )
        };
        // Version 1: rule 0 names a network the client is not in; rule 1 denies /admin.
        api.apply_yaml(&policy("deny", &rules("192.0.2.0/24"))).unwrap();
        until("version 1 applies", || async { statuses(&mesh).await == [200, 403, 200, 403] }).await;
        until("version 1 Accepted", || async {
            condition(&api, "deny").is_some_and(|c| c["reason"] == "Accepted" && c["observedGeneration"] == 1)
        })
        .await;
        let before = invalid_objects(&mesh);

        // Version 2: a typo in the prefix length. istiod drops the value and rule 0 denies all.
        api.apply_yaml(&policy("deny", &rules("192.0.2.0/33"))).unwrap();
        until("version 2, widened, applies", || async { statuses(&mesh).await == [403; 4] }).await;
        invalid_condition(&api, "deny", 2, "spec.rules[0].from[0].source.ipBlocks[0]").await;
        assert_eq!(invalid_objects(&mesh), before + 1);
        assert_eq!(statuses(&mesh).await, [403; 4], "version 1 does not come back");
    })
    .await
    .unwrap();
}
