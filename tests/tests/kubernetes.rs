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
        // The server stores the write before b reads the answer and counts it.
        until("b counts its write", || async {
            b.metrics.status_writes.get() > 0
        })
        .await;
        b.shutdown().await;
    })
    .await
    .unwrap();
}

/// The `waypoint` binary running `--kubernetes` against `api`, its stderr kept for the log checks.
struct Proc {
    child: std::process::Child,
    ip: std::net::IpAddr,
    logs: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(api: &FakeApiServer, block: &Block) -> Proc {
        let ip = block.ip(1);
        let addr = |port: u16| SocketAddr::new(ip, port).to_string();
        let mut child = std::process::Command::new(waypoint_tests::waypoint_bin())
            .args([
                "run",
                "--kubernetes",
                "--gateway",
                "ambient-demo/waypoint",
                "--dev-ca",
            ])
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .args([
                "--hbone-addr",
                &addr(15008),
                "--readiness-addr",
                &addr(15021),
            ])
            .args(["--metrics-addr", &addr(15020), "--admin-addr", &addr(15000)])
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("{line}");
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, ip, logs }
    }

    fn addr(&self, port: u16) -> String {
        SocketAddr::new(self.ip, port).to_string()
    }

    async fn ready(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(self.addr(15021)).await else {
            return false;
        };
        matches!(http1::request(&mut s, "GET", "/healthz/ready", &[], "").await, Ok(Some(r)) if r.status == 200)
    }

    /// The log lines holding every one of `needles`.
    fn logged(&self, needles: &[&str]) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
            .collect()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM; the process must exit cleanly.
    async fn terminate(mut self) {
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let pid = self.child.id();
        // Reaped here; the drop that follows finds nothing left to kill.
        let status = tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{pid}: {status:?}");
    }
}

/// A failed test does not leave the process running.
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The collections the waypoint lists, as the definitions name them (Kubernetes' discovery, Gateway
/// API's and Istio's CRDs), written here and not taken from the waypoint's table.
const LISTED: [&str; 11] = [
    "/apis/gateway.networking.k8s.io/v1/gateways",
    "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
    "/api/v1/services",
    "/api/v1/namespaces",
    "/apis/networking.istio.io/v1/serviceentries",
    "/apis/networking.istio.io/v1/workloadentries",
    "/apis/security.istio.io/v1/authorizationpolicies",
    "/apis/security.istio.io/v1/requestauthentications",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/api/v1/pods",
    "/api/v1/namespaces/istio-system/configmaps",
];

/// Prints the requests the server saw (for the record of a run) and returns the distinct paths.
fn request_table(api: &FakeApiServer) -> std::collections::BTreeSet<String> {
    let counts = api.request_counts();
    for ((verb, path, code), n) in &counts {
        eprintln!("request: {verb:6} {code} {n:4} {path}");
    }
    counts.keys().map(|(_, p, _)| p.clone()).collect()
}

/// `waypoint run --kubernetes` as a process: flags, kubeconfig, readiness after the sync, every
/// kind listed from the resource the API server really serves (no 404), status written, clean
/// exit on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_syncs_and_writes_status() {
    tokio::time::timeout(LIMIT, async {
        let block = Block::allocate();
        let api = FakeApiServer::start(&temp_dir("bin")).await.unwrap();
        api.apply_yaml(&cluster_yaml(&block)).unwrap();
        api.apply_yaml(&policy("deny-curl", DENY_CURL)).unwrap();
        let w = Proc::spawn(&api, &block);
        until("the binary is ready", || w.ready()).await;
        until("it wrote the policy's status", || async {
            condition(&api, "deny-curl").is_some_and(|c| c["reason"] == "Accepted")
        })
        .await;
        let mut s = tokio::net::TcpStream::connect(w.addr(15000)).await.unwrap();
        let dump = http1::request(&mut s, "GET", "/config_dump", &[], "").await.unwrap().unwrap();
        let dump: Value = serde_json::from_str(&dump.body).unwrap();
        assert_eq!(dump["synced"], true);
        assert!(dump["destinations"]["services"].as_array().is_some_and(|s| !s.is_empty()));

        let paths = request_table(&api);
        for path in LISTED {
            assert!(api.count(Some("list"), path, Some(200)) >= 1, "{path} not listed");
            assert!(api.count(Some("watch"), path, Some(200)) >= 1, "{path} not watched");
        }
        let status = "/apis/security.istio.io/v1/namespaces/ambient-demo/authorizationpolicies/deny-curl/status";
        assert!(api.count(Some("patch"), status, Some(200)) >= 1);
        // Nothing asked for is missing: the only 404 is the Lease's first read, before it exists.
        let lease = "/apis/coordination.k8s.io/v1/namespaces/ambient-demo/leases/waypoint-waypoint-status";
        for ((verb, path, code), n) in api.request_counts() {
            assert!(code < 400 || (code == 404 && path == lease && verb == "get"), "{verb} {path}: {code} x{n}");
        }
        // One path per kind (listed, then watched), the discovery of the three CRD group
        // versions, the Lease (created, then read), the status patch: 17, and no second pod
        // watch of our own pods.
        assert_eq!(paths.len(), LISTED.len() + 3 + 2 + 1, "{paths:#?}");
        assert!(!paths.contains("/api/v1/namespaces/ambient-demo/pods"), "{paths:#?}");
        assert!(w.logged(&["WARN"]).is_empty(), "{:#?}", w.logged(&["WARN"]));
        w.terminate().await;
    })
    .await
    .unwrap();
}

/// A kind RBAC forbids: the waypoint names the URL, the status and the rule it needs, says that
/// nothing is served yet, waits longer between each try (0.8 s doubling, so at most 4 lists in
/// the first 8 s where a reset-on-success backoff made 5 to 10), stays up and not ready, and
/// becomes ready once the rule is granted. A CRD that is not installed is only logged, once: the
/// kind counts as empty and is never listed. A failure after the first sync says the last
/// snapshot keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_and_missing_kinds_are_told_and_backed_off() {
    tokio::time::timeout(Duration::from_secs(150), async {
        let block = Block::allocate();
        let api = FakeApiServer::start(&temp_dir("forbidden")).await.unwrap();
        api.apply_yaml(&cluster_yaml(&block)).unwrap();
        api.uninstall_crd("networking.istio.io", "serviceentries");
        api.forbid("networking.istio.io", "workloadentries", None);
        let mut w = Proc::spawn(&api, &block);
        let we = "/apis/networking.istio.io/v1/workloadentries";
        until("the first refused list", || async { api.count(Some("list"), we, Some(403)) >= 1 }).await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let refused = api.count(Some("list"), we, Some(403));
        assert!((2..=4).contains(&refused), "{refused} refused lists in the first 8 s");
        assert!(!w.ready().await, "not ready while a kind cannot be listed");
        assert!(w.running(), "no crash");
        let rule = "{apiGroups: [\"networking.istio.io\"], resources: [workloadentries], verbs: [list, watch]}";
        let told = w.logged(&["WARN", "forbidden by RBAC", rule, "kind=WorkloadEntry", "code=403", "url=https://", we, "nothing is served yet"]);
        // One line per refusal, each naming the rule.
        assert!(!told.is_empty() && told.len() as u64 <= api.count(Some("list"), we, Some(403)), "{told:#?}");
        // The CRD that is not there: logged once, never listed, its kind empty.
        let missing = w.logged(&["serviceentries.networking.istio.io is not served (its CRD is not installed)", "kind=ServiceEntry"]);
        assert_eq!(missing.len(), 1, "{missing:#?}");
        assert_eq!(api.count(None, "/apis/networking.istio.io/v1/serviceentries", None), 0);

        // Granted: the next try lists, and the waypoint becomes ready without ServiceEntries.
        api.clear_faults();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !w.ready().await {
            assert!(tokio::time::Instant::now() < deadline, "not ready after the rule was granted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // After the first sync a failure says the last snapshot keeps serving.
        api.fail("", "pods", None, 500);
        api.end_watches();
        until("the watch failure is logged", || async {
            !w.logged(&["WARN", "kind=Pod", "code=500", "/api/v1/pods", "the last snapshot keeps serving"]).is_empty()
        })
        .await;
        assert!(w.ready().await, "readiness holds through a failing watch");
        api.clear_faults();
        request_table(&api);
        assert_eq!(w.logged(&["is not served (its CRD is not installed)"]).len(), 1, "logged once");
        w.terminate().await;
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

/// Watches ending mid-stream resume from their resourceVersion (no relist); a `410 Gone` makes
/// every watcher relist. Through both, with changes made meanwhile, the waypoint ends up with
/// exactly the server's policies, each once, and stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_and_expired_watches_lose_and_repeat_nothing() {
    tokio::time::timeout(LIMIT, async {
        let c = cluster("", true).await;
        let (mesh, api) = (&c.mesh, &c.api);
        let filler = "{targetRefs: [{kind: Service, group: '', name: httpbin}], action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/nowhere/sa/nobody]}}]}]}";
        let names = |from: usize, to: usize| (from..to).map(|i| format!("p-{i:03}")).collect::<Vec<_>>();
        let apply = |ns: &[String]| {
            for n in ns {
                api.apply_yaml(&policy(n, filler)).unwrap();
            }
        };
        let delete = |ns: &[String]| {
            for n in ns {
                assert!(api.delete("security.istio.io/v1", "AuthorizationPolicy", "ambient-demo", n));
            }
        };
        let in_force = || -> std::collections::BTreeSet<String> {
            mesh.running().config.load().authorizer.policies().iter().map(|p| p.name.clone()).collect()
        };
        let count = || mesh.running().config.load().authorizer.policies().len();
        apply(&names(0, 20));
        until("20 policies", || async { count() == 20 }).await;
        let ap = "/apis/security.istio.io/v1/authorizationpolicies";
        let lists = api.count(Some("list"), ap, Some(200));
        let watches = api.count(Some("watch"), ap, Some(200));

        // Ended cleanly: the watchers watch again from where they were.
        api.end_watches();
        apply(&names(20, 25));
        delete(&names(0, 3));
        until("22 policies", || async { count() == 22 }).await;
        assert!(api.count(Some("watch"), ap, Some(200)) > watches, "watched again");
        assert_eq!(api.count(Some("list"), ap, Some(200)), lists, "an ended watch does not relist");

        // 410 into every watch: relists, with changes landing while they happen.
        api.expire_watches();
        apply(&names(25, 30));
        delete(&names(3, 7));
        let want: std::collections::BTreeSet<String> = names(7, 30).into_iter().collect();
        until("a 410 relists", || async { api.count(Some("list"), ap, Some(200)) > lists }).await;
        until("the server's 23 policies", || async { in_force() == want }).await;
        assert_eq!(count(), want.len(), "no policy twice");
        let stored: Vec<String> = mesh.running().config.objects().authorization_policies.keys().map(|k| k.name.clone()).collect();
        assert_eq!(stored.len(), want.len(), "{stored:?}");
        assert!(mesh.is_ready().await);
        assert_eq!(call(mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);
    })
    .await
    .unwrap();
}

/// A CRD that is not installed counts as empty and the waypoint becomes ready without it; once
/// installed it is listed and watched; uninstalled mid-run (the API server deletes its
/// objects), its objects go and readiness holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_installed_late_and_removed_mid_run() {
    tokio::time::timeout(LIMIT, async {
        let block = Block::allocate();
        let api = FakeApiServer::start(&temp_dir("crds")).await.unwrap();
        api.apply_yaml(&cluster_yaml(&block)).unwrap();
        api.uninstall_crd("networking.istio.io", "serviceentries");
        let mut opts = kube_opts(&api, "replica-a");
        opts.crd_recheck = Duration::from_millis(200);
        let mesh = Mesh::start(MeshOptions {
            policies: String::new(),
            block: Some(block),
            kube: Some(opts),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        mesh.wait_ready().await.unwrap();
        let se_path = "/apis/networking.istio.io/v1/serviceentries";
        assert_eq!(api.count(None, se_path, None), 0, "what is not served is not asked for");
        assert_eq!(call(&mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);

        api.install_crd("networking.istio.io", "serviceentries");
        let ip = block.ip(11);
        api.apply_yaml(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: httpbin-vip, namespace: ambient-demo}}\n\
             spec:\n  hosts: [httpbin.example]\n  addresses: [10.96.7.30]\n  ports: [{{number: 8000, name: http, protocol: HTTP, targetPort: 8080}}]\n\
             \x20 resolution: STATIC\n  endpoints: [{{address: \"{ip}\", labels: {{istio.io/dataplane-mode: ambient}}, serviceAccount: httpbin}}]\n"
        ))
        .unwrap();
        until("the installed CRD's ServiceEntry is served", || async {
            call(&mesh, &mesh.sleep, "10.96.7.30:8000", "GET").await == 200
        })
        .await;
        assert!(api.count(Some("list"), se_path, Some(200)) >= 1);

        api.uninstall_crd("networking.istio.io", "serviceentries");
        until("the removed CRD's ServiceEntry is gone", || async {
            call(&mesh, &mesh.sleep, "10.96.7.30:8000", "GET").await != 200
        })
        .await;
        assert!(mesh.is_ready().await);
        assert_eq!(call(&mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);
    })
    .await
    .unwrap();
}

/// A slow API server at start-up (every answer 500 ms late) is waited for, not retried: each
/// kind is listed once, nothing fails, and the waypoint becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_server_is_waited_for() {
    tokio::time::timeout(LIMIT, async {
        let block = Block::allocate();
        let api = FakeApiServer::start(&temp_dir("slow")).await.unwrap();
        api.apply_yaml(&cluster_yaml(&block)).unwrap();
        api.set_latency(Duration::from_millis(500));
        let mesh = Mesh::start(MeshOptions {
            policies: String::new(),
            block: Some(block),
            kube: Some(kube_opts(&api, "replica-a")),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        mesh.wait_ready().await.unwrap();
        assert_eq!(call(&mesh, &mesh.sleep, HTTPBIN_VIP, "GET").await, 200);
        for path in LISTED {
            assert_eq!(
                api.count(Some("list"), path, None),
                1,
                "{path}: listed once, and answered"
            );
        }
        assert_eq!(mesh.running().metrics.kube_watch_errors.get(), 0);
        api.set_latency(Duration::ZERO);
    })
    .await
    .unwrap();
}

/// A 403 on policies' status (RBAC grants status writes only in some namespaces): logged once
/// for the namespace with the rule it needs, each object retried after 5 s and then 10 s (so at
/// most 2 tries in 12 s, where every Lease renewal used to bring one), nothing else held up,
/// and written once granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_status_is_told_once_and_retried_slowly() {
    tokio::time::timeout(LIMIT, async {
        let block = Block::allocate();
        let api = FakeApiServer::start(&temp_dir("status403")).await.unwrap();
        api.apply_yaml(&cluster_yaml(&block)).unwrap();
        api.forbid("security.istio.io", "authorizationpolicies/status", Some("ambient-demo"));
        api.apply_yaml(&policy("deny-curl", DENY_CURL)).unwrap();
        api.apply_yaml(&policy("missing", "{targetRefs: [{kind: Service, name: nope}]}")).unwrap();
        let mut w = Proc::spawn(&api, &block);
        let path = "/apis/security.istio.io/v1/namespaces/ambient-demo/authorizationpolicies/deny-curl/status";
        until("the first refused write", || async { api.count(Some("patch"), path, Some(403)) >= 1 }).await;
        tokio::time::sleep(Duration::from_secs(12)).await;
        let tries = api.count(Some("patch"), path, Some(403));
        assert!((1..=2).contains(&tries), "{tries} tries in 12 s");
        assert!(w.ready().await && w.running());
        let rule = "{apiGroups: [\"security.istio.io\"], resources: [authorizationpolicies/status], verbs: [patch]} in a Role in namespace ambient-demo";
        let told = w.logged(&["WARN", "status not written, forbidden by RBAC", rule, "code=403"]);
        assert_eq!(told.len(), 1, "once for both policies: {told:#?}");

        api.clear_faults();
        until("written once granted", || async {
            condition(&api, "deny-curl").is_some_and(|c| c["reason"] == "Accepted")
                && condition(&api, "missing").is_some_and(|c| c["reason"] == "TargetNotFound")
        })
        .await;
        request_table(&api);
        w.terminate().await;
    })
    .await
    .unwrap();
}
