//! End-to-end with Kubernetes as the config source: the waypoint watches an in-process API
//! server (real list/watch protocol over HTTPS) and serves traffic between ztunnel-like peers.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gateway_api_bindings::ObjectKey;
use serde_json::Value;
use waypoint::identity::IdentitySource;
use waypoint::settings::{Settings, Source};
use waypoint::source::kube::KubeSettings;
use waypoint_tests::http1;
use waypoint_tests::kube_api::FakeApiServer;
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions, cluster_yaml};
use waypoint_tests::net::Block;
use waypoint_tests::pki::WorkloadCert;

/// Every test is bounded: a hang is a failure, not a stuck CI job.
const LIMIT: Duration = Duration::from_secs(90);
const FORWARDED: &str = "for=\"10.244.1.9:51000\"";

fn kube_opts(api: &FakeApiServer, identity: &str) -> KubeSettings {
    let mut k = KubeSettings::new(ObjectKey::new("ambient-demo", "waypoint"));
    k.kubeconfig = Some(api.kubeconfig.clone());
    // As the release owning the class runs: only classes naming our controller are touched.
    k.gateway_status.class_status = true;
    if let Some(lease) = &mut k.status {
        lease.identity = identity.to_owned();
        lease.duration = Duration::from_secs(1);
        lease.renew_every = Duration::from_millis(100);
    }
    k
}

struct Cluster {
    api: FakeApiServer,
    mesh: Mesh,
    block: Block,
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "waypoint-kube-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The demo cluster and `policies` in a fresh API server; the waypoint watching it. When
/// `ready`, waits for the first full sync.
async fn cluster(policies: &str, api_up: bool) -> Cluster {
    let block = Block::allocate();
    let api = FakeApiServer::start(&temp_dir("api")).await.unwrap();
    api.apply_yaml(&cluster_yaml(&block)).unwrap();
    api.apply_yaml(policies).unwrap();
    if !api_up {
        api.stop().await;
    }
    let mesh = Mesh::start(MeshOptions {
        policies: String::new(),
        block: Some(block),
        kube: Some(kube_opts(&api, "replica-a")),
        ..MeshOptions::default()
    })
    .await
    .unwrap();
    if api_up {
        mesh.wait_ready().await.unwrap();
    }
    Cluster { api, mesh, block }
}

/// The CONNECT status when it is not 200, else the inner HTTP status.
async fn call(mesh: &Mesh, who: &WorkloadCert, authority: &str, method: &str) -> u16 {
    let c = mesh.hbone(who).await.unwrap();
    let o = c
        .open(authority, &[("forwarded", FORWARDED)])
        .await
        .unwrap();
    let Some(mut s) = o.stream.filter(|_| o.status == 200) else {
        return o.status.as_u16();
    };
    match http1::request(&mut s, method, "/anything", &[], "").await {
        Ok(Some(r)) => r.status,
        _ => 0,
    }
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

fn condition(api: &FakeApiServer, name: &str) -> Option<Value> {
    let ap = api.get(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "ambient-demo",
        name,
    )?;
    ap["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ENFORCED)
        .cloned()
}

/// Our own condition type on policies (istiod keeps `WaypointAccepted`).
const ENFORCED: &str = "rust-waypoint.io/WaypointEnforced";

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: ambient-demo}}\nspec: {spec}\n"
    )
}

const DENY_CURL: &str = "{targetRefs: [{kind: Service, group: '', name: httpbin}], action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/curl]}}]}]}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_apply_change_and_go_with_status() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster("", true).await;
        let (mesh, api) = (&c.mesh, &c.api);
        assert_eq!(call(mesh, &mesh.curl, HTTPBIN_VIP, "GET").await, 200, "no policy: allowed");

        api.apply_yaml(&policy("deny-curl", DENY_CURL)).unwrap();
        until("the DENY applies", || async { call(mesh, &mesh.curl, HTTPBIN_VIP, "GET").await == 403 }).await;
        assert_eq!(call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);
        until("WaypointEnforced on the policy", || async {
            condition(api, "deny-curl").is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == 1)
        })
        .await;
        let cond = condition(api, "deny-curl").unwrap();
        assert_eq!(cond["reason"], "Accepted");
        assert_eq!(cond["message"], "bound to ambient-demo/waypoint");
        assert!(cond["lastTransitionTime"].is_string());
        let patches = api.patches();
        assert!(patches.iter().all(|p| p.field_manager == "rust-waypoint" && p.force), "{patches:?}");
        // The Gateway's class is istiod's (`istio-waypoint`): its status is istiod's to write.
        assert!(patches.iter().all(|p| p.resource != "gateways"), "{patches:?}");

        // Changed: only POST is denied now.
        let post_only = "{targetRefs: [{kind: Service, group: '', name: httpbin}], action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/curl]}}], to: [{operation: {methods: [POST]}}]}]}";
        api.apply_yaml(&policy("deny-curl", post_only)).unwrap();
        until("the narrowed DENY applies", || async { call(mesh, &mesh.curl, HTTPBIN_VIP, "GET").await == 200 }).await;
        assert_eq!(call(mesh, &mesh.curl, HTTPBIN_VIP, "POST").await, 403);
        until("status follows the generation", || async {
            condition(api, "deny-curl").is_some_and(|c| c["observedGeneration"] == 2)
        })
        .await;

        // Invalid: enforced as istiod builds it, and the status names the field.
        api.apply_yaml(&policy(
            "broken",
            "{targetRefs: [{kind: Service, name: httpbin}], action: DENY, rules: [{from: [{source: {ipBlocks: [300.1.2.3]}}]}]}",
        ))
        .unwrap();
        until("Invalid on the broken policy", || async {
            condition(api, "broken").is_some_and(|c| c["reason"] == "Invalid" && c["status"] == "False")
        })
        .await;
        let msg = condition(api, "broken").unwrap()["message"].as_str().unwrap().to_owned();
        assert!(msg.contains("spec.rules[0].from[0].source.ipBlocks[0]"), "{msg}");
        // istiod drops the bad value, and the rule then denies every source
        // (tests/tests/unvalidated_policies.rs has the cases).
        until("the widened DENY applies", || async { call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await == 403 }).await;
        assert!(mesh.running().metrics.kube_invalid_objects.get() >= 1);
        assert!(api.delete("security.istio.io/v1", "AuthorizationPolicy", "ambient-demo", "broken"));
        until("the broken DENY is gone", || async { call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await == 200 }).await;

        api.apply_yaml(&policy("missing", "{targetRefs: [{kind: Service, name: nope}]}")).unwrap();
        until("TargetNotFound", || async {
            condition(api, "missing").is_some_and(|c| c["reason"] == "TargetNotFound")
        })
        .await;

        // Removed: traffic is allowed again.
        assert!(api.delete("security.istio.io/v1", "AuthorizationPolicy", "ambient-demo", "deny-curl"));
        until("the DENY is gone", || async { call(mesh, &mesh.curl, HTTPBIN_VIP, "POST").await == 200 }).await;

        // Our own status writes must not cause more writes: quiet once settled.
        let settled = api.patches().len();
        api.bookmark();
        assert_eq!(call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);
        assert_eq!(api.patches().len(), settled, "no status write without a change");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_follow_their_labels_across_namespaces() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster("", true).await;
        let (mesh, api) = (&c.mesh, &c.api);
        assert_eq!(call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);
        let mut svc = api.get("v1", "Service", "ambient-demo", "httpbin").unwrap();
        svc["metadata"]["labels"] = serde_json::json!({"istio.io/use-waypoint": "none"});
        api.apply(svc.clone()).unwrap();
        until("opted out: not ours any more", || async {
            call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await == 503
        })
        .await;
        svc["metadata"]["labels"] = serde_json::json!({});
        api.apply(svc).unwrap();
        until("back on the waypoint", || async {
            call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await == 200
        })
        .await;

        // A Service in another namespace choosing this waypoint through use-waypoint-namespace,
        // with endpoints from an EndpointSlice naming the httpbin pods (addresses only: no
        // identity). The waypoint's listener must admit that namespace (tests/tests/tenant.rs
        // checks the default, `Same`, refuses it).
        let mut gw = api
            .get(
                "gateway.networking.k8s.io/v1",
                "Gateway",
                "ambient-demo",
                "waypoint",
            )
            .unwrap();
        gw["spec"]["listeners"][0]["allowedRoutes"] =
            serde_json::json!({"namespaces": {"from": "All"}});
        api.apply(gw).unwrap();
        let ip = c.block.ip(11);
        api.apply_yaml(&format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: other}}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: other
  labels: {{istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ambient-demo}}
spec:
  clusterIP: 10.96.1.10
  ports: [{{name: http, port: 8000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: other, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: ["{ip}"]}}]
"#
        ))
        .unwrap();
        until("the other namespace's service is served", || async {
            call(mesh, &mesh.sleep, "10.96.1.10:8000", "GET").await == 200
        })
        .await;
    })
    .await
    .unwrap();
}

fn slice(block: &Block, hosts: &[u8]) -> String {
    let eps: Vec<String> = hosts
        .iter()
        .map(|h| {
            format!(
                "{{addresses: [\"{}\"], targetRef: {{kind: Pod, name: httpbin-{}}}}}",
                block.ip(*h),
                h - 10
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: httpbin-abc, namespace: ambient-demo, labels: {{kubernetes.io/service-name: httpbin}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_while_requests_flow() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster("", true).await;
        let (mesh, api) = (&c.mesh, &c.api);
        api.apply_yaml(&slice(&c.block, &[11, 12])).unwrap();
        let mesh_addr = mesh.waypoint_addr();
        let cfg = mesh.client_config(&mesh.sleep);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = waypoint_tests::ztunnel::HboneClient::connect(mesh_addr, cfg)
                    .await
                    .unwrap();
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let o = c
                        .open(HTTPBIN_VIP, &[("forwarded", FORWARDED)])
                        .await
                        .unwrap();
                    let code = match o.stream.filter(|_| o.status == 200) {
                        Some(mut s) => match http1::request(&mut s, "GET", "/get", &[], "").await {
                            Ok(Some(r)) => r.status,
                            _ => 0,
                        },
                        None => o.status.as_u16(),
                    };
                    if code == 200 {
                        ok += 1
                    } else {
                        failed.push(code)
                    }
                }
                (ok, failed)
            })
        };
        let version = || mesh.running().config.load().version;
        // A Service's endpoints are the Ready pods its selector picks (as istiod builds them):
        // httpbin-2 goes unready and back.
        let mut pod = api.get("v1", "Pod", "ambient-demo", "httpbin-2").unwrap();
        for i in 0..20 {
            let before = version();
            let ready = if i % 2 == 0 { "False" } else { "True" };
            pod["status"]["conditions"] = serde_json::json!([{"type": "Ready", "status": ready}]);
            api.apply(pod.clone()).unwrap();
            let want = if ready == "True" { 2 } else { 1 };
            until("the endpoint change applies", || async {
                let d = mesh.running().config.load();
                d.version > before
                    && d.destinations.services[&HTTPBIN_VIP.parse::<SocketAddr>().unwrap()]
                        .endpoints
                        .len()
                        == want
            })
            .await;
        }
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = load.await.unwrap();
        assert!(failed.is_empty(), "{} ok, failed: {failed:?}", ok);
        assert!(ok >= 20, "requests kept flowing: {ok}");
        let d = mesh.running().config.load();
        let eps = &d.destinations.services[&HTTPBIN_VIP.parse::<SocketAddr>().unwrap()].endpoints;
        assert_eq!(eps.len(), 2, "the last change (both pods) is in force");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_compacted_watches_resume() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster("", true).await;
        let (mesh, api) = (&c.mesh, &c.api);
        let errors = || mesh.running().metrics.kube_watch_errors.get();
        let before = errors();
        // Every open watch gets ERROR 410 and history is gone: watchers must relist.
        api.expire_watches();
        api.apply_yaml(&policy("deny-curl", DENY_CURL)).unwrap();
        until("a change after the 410 applies", || async {
            call(mesh, &mesh.curl, HTTPBIN_VIP, "GET").await == 403
        })
        .await;
        assert!(errors() > before, "the 410 was seen as a watch error");
        // Compacted history with bookmarks: a later change still arrives.
        api.compact();
        api.bookmark();
        assert!(api.delete(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "ambient-demo",
            "deny-curl"
        ));
        until("a delete after compaction applies", || async {
            call(mesh, &mesh.curl, HTTPBIN_VIP, "GET").await == 200
        })
        .await;
        assert!(mesh.is_ready().await);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_at_start_and_mid_run() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster("", false).await;
        let (mesh, api) = (&c.mesh, &c.api);
        assert!(!mesh.is_ready().await, "not ready before the first sync");
        assert_eq!(
            call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await,
            503,
            "nothing is known yet"
        );
        until("watch errors while the server is down", || async {
            mesh.running().metrics.kube_watch_errors.get() > 0
        })
        .await;
        assert!(!mesh.is_ready().await);

        api.restart().await.unwrap();
        mesh.wait_ready().await.unwrap();
        assert_eq!(call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);

        // Down mid-run: the last snapshot keeps serving and readiness holds.
        api.stop().await;
        let errors = mesh.running().metrics.kube_watch_errors.get();
        until("the outage is noticed", || async {
            mesh.running().metrics.kube_watch_errors.get() > errors
        })
        .await;
        for _ in 0..3 {
            assert_eq!(call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);
        }
        assert!(mesh.is_ready().await);
        // A change made while the watchers could not see it arrives after the outage.
        api.apply_yaml(&policy("deny-curl", DENY_CURL)).unwrap();
        api.restart().await.unwrap();
        until("the change made during the outage applies", || async {
            call(mesh, &mesh.curl, HTTPBIN_VIP, "GET").await == 403
        })
        .await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_writes_status_and_another_takes_over() {
    tokio::time::timeout(LIMIT, async {
        let mut c = cluster("", true).await;
        let (mesh, api) = (&c.mesh, &c.api);
        // A second replica of the same waypoint.
        let mut run = Settings::new(
            Source::Kubernetes(Box::new(kube_opts(api, "replica-b"))),
            IdentitySource::Files {
                cert_chain: mesh.waypoint_cert.chain_path.clone(),
                key: mesh.waypoint_cert.key_path.clone(),
                trust_bundle: mesh.pki.root_path(),
            },
        );
        let ip = c.block.ip(2);
        run.hbone_addr = SocketAddr::new(ip, 0);
        run.readiness_addr = SocketAddr::new(ip, 0);
        run.metrics_addr = SocketAddr::new(ip, 0);
        run.admin_addr = SocketAddr::new(ip, 0);
        let b = waypoint::app::start(run).await.unwrap();
        let a_leads = || mesh.running().metrics.status_leader.get();
        let b_leads = || b.metrics.status_leader.get();
        until("replica-a leads (it started first)", || async {
            a_leads() == 1
        })
        .await;
        until("replica-b follows", || async { b.config.is_synced() }).await;
        api.apply_yaml(&policy("deny-curl", DENY_CURL)).unwrap();
        until("status written", || async {
            condition(api, "deny-curl").is_some()
        })
        .await;
        assert_eq!(b_leads(), 0, "exactly one leader");
        assert_eq!(
            b.metrics.status_writes.get(),
            0,
            "the follower writes nothing"
        );
        let lease = api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                "ambient-demo",
                "waypoint-waypoint-status",
            )
            .unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "replica-a");

        // The leader goes away without releasing the Lease: the follower takes over once it
        // has seen the Lease unrenewed for its duration, and writes what changed since.
        c.mesh.shutdown().await;
        until("replica-b takes over", || async {
            b.metrics.status_leader.get() == 1
        })
        .await;
        api.apply_yaml(&policy(
            "missing",
            "{targetRefs: [{kind: Service, name: nope}]}",
        ))
        .unwrap();
        until("the new leader writes status", || async {
            condition(&c.api, "missing").is_some_and(|c| c["reason"] == "TargetNotFound")
        })
        .await;
        assert!(b.metrics.status_writes.get() > 0);
        b.shutdown().await;
    })
    .await
    .unwrap();
}

/// `waypoint run --kubernetes` as a process: flags, kubeconfig, readiness after the sync,
/// status written, clean exit on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_syncs_and_writes_status() {
    tokio::time::timeout(LIMIT, async {
        let bin = waypoint_tests::waypoint_bin();
        let block = Block::allocate();
        let api = FakeApiServer::start(&temp_dir("bin")).await.unwrap();
        api.apply_yaml(&cluster_yaml(&block)).unwrap();
        api.apply_yaml(&policy("deny-curl", DENY_CURL)).unwrap();
        let ip = block.ip(1);
        let addr = |port: u16| SocketAddr::new(ip, port).to_string();
        let mut child = std::process::Command::new(&bin)
            .args(["run", "--kubernetes", "--gateway", "ambient-demo/waypoint", "--dev-ca"])
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .args(["--hbone-addr", &addr(15008), "--readiness-addr", &addr(15021)])
            .args(["--metrics-addr", &addr(15020), "--admin-addr", &addr(15000)])
            .spawn()
            .unwrap();
        let ready = || async {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr(15021)).await else { return false };
            matches!(http1::request(&mut s, "GET", "/healthz/ready", &[], "").await, Ok(Some(r)) if r.status == 200)
        };
        until("the binary is ready", ready).await;
        until("it wrote the policy's status", || async {
            condition(&api, "deny-curl").is_some_and(|c| c["reason"] == "Accepted")
        })
        .await;
        let mut s = tokio::net::TcpStream::connect(addr(15000)).await.unwrap();
        let dump = http1::request(&mut s, "GET", "/config_dump", &[], "").await.unwrap().unwrap();
        let dump: Value = serde_json::from_str(&dump.body).unwrap();
        assert_eq!(dump["synced"], true);
        assert!(dump["destinations"]["services"].as_array().is_some_and(|s| !s.is_empty()));
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status:?}");
    })
    .await
    .unwrap();
}

/// kube lists in pages of 500: a policy that sorts onto the third page must still be seen, so the
/// initial list has to follow `continue` tokens to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_followed_across_pages() {
    tokio::time::timeout(LIMIT, async {
        let filler = "{targetRefs: [{kind: Service, group: '', name: httpbin}], action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/nowhere/sa/nobody]}}]}]}";
        let mut policies: Vec<String> = (0..1_100).map(|i| policy(&format!("filler-{i:04}"), filler)).collect();
        policies.push(policy("zz-deny-curl", DENY_CURL));
        let c = cluster(&policies.join("---\n"), true).await;
        let mesh = &c.mesh;
        assert_eq!(call(mesh, &mesh.curl, HTTPBIN_VIP, "GET").await, 403, "the last page's DENY applies");
        assert_eq!(call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);
        let lists = c.api.list_pages("security.istio.io/v1", "AuthorizationPolicy");
        assert!(lists >= 3, "expected a paged list, saw {lists} page(s)");
    })
    .await
    .unwrap();
}

/// A RequestAuthentication from the API server applies like a policy: tokens are checked, their
/// principal reaches policy, and removing it stops the checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_authentication_applies_and_goes() {
    use waypoint_tests::jwt::{SigningKey, claims, jwks};
    tokio::time::timeout(LIMIT, async {
        let key = SigningKey::ec("k");
        let c = cluster("", true).await;
        let (mesh, api) = (&c.mesh, &c.api);
        let keys = jwks(&[&key]).replace('\'', "''");
        api.apply_yaml(&format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: ambient-demo}}\n\
             spec: {{targetRefs: [{{kind: Service, group: '', name: httpbin}}], jwtRules: [{{issuer: https://idp.example, jwks: '{keys}'}}]}}\n"
        ))
        .unwrap();
        api.apply_yaml(&policy(
            "alice-only",
            "{targetRefs: [{kind: Service, group: '', name: httpbin}], rules: [{from: [{source: {requestPrincipals: [https://idp.example/alice]}}]}]}",
        ))
        .unwrap();
        let alice = key.sign(&claims("https://idp.example", "alice", serde_json::json!({})));
        let bad = SigningKey::ec("k").sign(&claims("https://idp.example", "alice", serde_json::json!({})));
        let with_token = |token: String| async move {
            let conn = mesh.hbone(&mesh.sleep).await.unwrap();
            let o = conn.open(HTTPBIN_VIP, &[("forwarded", FORWARDED)]).await.unwrap();
            let mut s = o.stream.unwrap();
            let auth = format!("Bearer {token}");
            http1::request(&mut s, "GET", "/get", &[("authorization", &auth)], "")
                .await
                .unwrap()
                .map_or(0, |r| r.status)
        };
        until("the token's principal is allowed", || async { with_token(alice.clone()).await == 200 }).await;
        assert_eq!(with_token(bad.clone()).await, 401, "a token signed by another key");
        assert_eq!(call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 403, "no token: no principal");
        until("WaypointEnforced on the RequestAuthentication", || async {
            api.get("security.istio.io/v1", "RequestAuthentication", "ambient-demo", "jwt")
                .and_then(|o| o["status"]["conditions"].as_array().cloned())
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == ENFORCED && c["status"] == "True"))
        })
        .await;
        assert!(api.delete("security.istio.io/v1", "RequestAuthentication", "ambient-demo", "jwt"));
        // Without rules the token is not read at all: no principal, so the ALLOW fails (403),
        // and a token nobody can check is not a 401 any more.
        until("the rules are gone", || async { with_token(bad.clone()).await == 403 }).await;
    })
    .await
    .unwrap();
}

/// One reconcile of istiod's `WaypointAccepted` writer as istiod runs it
/// (`statusqueue.translateToPatch`): compare its own condition with the object, and when it is
/// missing or different apply, with force, a list holding only its own type. The list has no
/// schema, so that apply replaces it whole, dropping everyone else's conditions. Returns whether
/// it wrote.
fn istiod_reconcile(api: &FakeApiServer, name: &str) -> bool {
    let Some(ap) = api.get(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "ambient-demo",
        name,
    ) else {
        return false;
    };
    let generation = ap["metadata"]["generation"].clone();
    let message = "bound to ambient-demo/waypoint (istiod)";
    let current = ap["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let as_wanted = current.iter().any(|c| {
        c["type"] == "WaypointAccepted"
            && c["status"] == "True"
            && c["reason"] == "Accepted"
            && c["message"] == message
            && c["observedGeneration"] == generation
    });
    if as_wanted {
        return false;
    }
    let body = serde_json::json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "ambient-demo"},
        "status": {"conditions": [{
            "type": "WaypointAccepted", "status": "True", "reason": "Accepted",
            "message": message, "observedGeneration": generation,
            "lastTransitionTime": "2026-12-01T00:00:00Z",
        }]},
    });
    api.apply_status("istio-ambient-waypoint-policy", true, body)
        .unwrap();
    true
}

/// istiod writes `WaypointAccepted` on the same policies we write our condition on, each apply
/// replacing the whole list: both conditions end up present and the writes stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_beside_us_neither_loops_nor_loses_a_condition() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster("", true).await;
        let api = &c.api;
        let types = || {
            let ap = api.get("security.istio.io/v1", "AuthorizationPolicy", "ambient-demo", "deny-curl");
            let mut t: Vec<String> = ap
                .and_then(|a| a["status"]["conditions"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|c| c["type"].as_str().unwrap_or("").to_owned())
                .collect();
            t.sort();
            t
        };
        let mut both = vec![ENFORCED.to_owned(), "WaypointAccepted".to_owned()];
        both.sort();
        let converged = |generation: i64| {
            istiod_reconcile(api, "deny-curl");
            types() == both && condition(api, "deny-curl").is_some_and(|c| c["observedGeneration"] == generation)
        };
        let quiet = || async {
            // Long enough for several rounds of watch echoes; each round istiod reconciles too.
            let before = api.patches().len();
            for _ in 0..40 {
                assert!(!istiod_reconcile(api, "deny-curl"), "istiod had to write again: {:#?}", api.patches());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(api.patches().len(), before, "writes after convergence: {:#?}", &api.patches()[before..]);
        };

        api.apply_yaml(&policy("deny-curl", DENY_CURL)).unwrap();
        let start = api.patches().len();
        until("both conditions present", || async { converged(1) }).await;
        quiet().await;
        let writes = api.patches().len() - start;
        assert!(writes <= 4, "{writes} writes to converge: {:#?}", &api.patches()[start..]);
        let ours = condition(api, "deny-curl").unwrap();
        assert_eq!((ours["status"].as_str(), ours["reason"].as_str()), (Some("True"), Some("Accepted")));

        // A spec change: both writers move to generation 2, again without a loop.
        let start = api.patches().len();
        let post_only = "{targetRefs: [{kind: Service, group: '', name: httpbin}], action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/curl]}}], to: [{operation: {methods: [POST]}}]}]}";
        api.apply_yaml(&policy("deny-curl", post_only)).unwrap();
        until("both at generation 2", || async {
            converged(2)
                && api
                    .get("security.istio.io/v1", "AuthorizationPolicy", "ambient-demo", "deny-curl")
                    .and_then(|a| a["status"]["conditions"].as_array().cloned())
                    .is_some_and(|cs| cs.iter().all(|c| c["observedGeneration"] == 2))
        })
        .await;
        quiet().await;
        let writes = api.patches().len() - start;
        assert!(writes <= 4, "{writes} writes to converge: {:#?}", &api.patches()[start..]);
        let managers: Vec<String> = api.patches()[start..].iter().map(|p| p.field_manager.clone()).collect();
        assert!(managers.iter().all(|m| m == "rust-waypoint" || m == "istio-ambient-waypoint-policy"), "{managers:?}");
    })
    .await
    .unwrap();
}

/// "Default DENY at all waypoints": a policy in the root namespace targeting our GatewayClass
/// binds to every waypoint of that class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_namespace_policy_on_our_class_binds() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster("", true).await;
        let (mesh, api) = (&c.mesh, &c.api);
        api.apply_yaml(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: rust-waypoint}\n\
             spec: {controllerName: rust-waypoint.io/controller}\n",
        )
        .unwrap();
        let mut gw = api.get("gateway.networking.k8s.io/v1", "Gateway", "ambient-demo", "waypoint").unwrap();
        gw["spec"]["gatewayClassName"] = "rust-waypoint".into();
        gw.as_object_mut().unwrap().remove("status");
        api.apply(gw).unwrap();
        let deny_all = |class: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-{class}, namespace: istio-system}}\n\
                 spec: {{targetRefs: [{{kind: GatewayClass, group: gateway.networking.k8s.io, name: {class}}}], action: DENY, rules: [{{}}]}}\n"
            )
        };
        // Istio's class is not ours any more: its root policy does not bind here.
        api.apply_yaml(&deny_all("istio-waypoint")).unwrap();
        until("the Gateway's class change applies", || async {
            mesh.running().config.load().waypoint.class == "rust-waypoint"
        })
        .await;
        assert_eq!(call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);
        api.apply_yaml(&deny_all("rust-waypoint")).unwrap();
        until("the root DENY on our class applies", || async {
            call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await == 403
        })
        .await;
        assert_eq!(call(mesh, &mesh.curl, HTTPBIN_VIP, "GET").await, 403);
        // --gateway-class-status: Accepted on our class (and only there).
        until("Accepted on our GatewayClass", || async {
            api.get("gateway.networking.k8s.io/v1", "GatewayClass", "", "rust-waypoint")
                .and_then(|g| g["status"]["conditions"].as_array().cloned())
                .is_some_and(|cs| cs.iter().any(|c| {
                    c["type"] == "Accepted" && c["status"] == "True" && c["reason"] == "Accepted" && c["observedGeneration"] == 1
                }))
        })
        .await;
        assert!(api.patches().iter().filter(|p| p.resource == "gatewayclasses").all(|p| p.name == "rust-waypoint"));
        assert!(api.delete("security.istio.io/v1", "AuthorizationPolicy", "istio-system", "deny-rust-waypoint"));
        until("allowed again", || async { call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await == 200 }).await;
    })
    .await
    .unwrap();
}
