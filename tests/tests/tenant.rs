//! A hostile tenant against another namespace's waypoint (issue 31). The tenant (`tenant-b`)
//! writes objects in its own namespace only and calls over HBONE with its own mesh certificate
//! (`spiffe://cluster.local/ns/tenant-b/sa/attacker`); `ambient-demo` owns the waypoint, the
//! httpbin Service and a DENY that keeps tenants off `/admin`. The waypoint reads everything from
//! the in-process API server (the Kubernetes source), as in a cluster.
//!
//! Each test asserts what the tenant got, what the app received (the demo's apps report what
//! reached them; each httpbin pod's ztunnel shim counts the HBONE streams it accepted, i.e. what
//! the waypoint dialled with an identity), and what the waypoint reports: the refusal in
//! `/config_dump`'s findings, the counter, and our `WaypointEnforced` condition.
//!
//! The rules are istiod's (`gateway_api_bindings::waypoint`); the unit table there covers each
//! rule, these tests the whole path.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gateway_api_bindings::ObjectKey;
use gateway_api_bindings::destinations::{ServiceRef, Subject};
use serde_json::{Value, json};
use waypoint::source::kube::KubeSettings;
use waypoint_tests::backend;
use waypoint_tests::http1;
use waypoint_tests::kube_api::FakeApiServer;
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions, NAMESPACE, cluster_yaml};
use waypoint_tests::net::Block;
use waypoint_tests::pki::WorkloadCert;

const LIMIT: Duration = Duration::from_secs(90);
const FORWARDED: &str = "for=\"10.244.1.9:51000\"";
const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
/// The tenant's own Service VIP.
const STEAL_VIP: &str = "10.96.7.1:8000";

/// ambient-demo's own policy: no other namespace may reach httpbin's `/admin`.
const NO_ADMIN_FOR_TENANTS: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-for-tenants, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Service, group: '', name: httpbin}]
  action: DENY
  rules: [{from: [{source: {notNamespaces: [ambient-demo]}}], to: [{operation: {paths: ['/admin*']}}]}]
";

fn kube_opts(api: &FakeApiServer) -> KubeSettings {
    let mut k = KubeSettings::new(ObjectKey::new(NAMESPACE, "waypoint"));
    k.kubeconfig = Some(api.kubeconfig.clone());
    if let Some(lease) = &mut k.status {
        lease.identity = "replica-a".to_owned();
        lease.duration = Duration::from_secs(1);
        lease.renew_every = Duration::from_millis(100);
    }
    k
}

fn temp_dir() -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "waypoint-tenant-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

struct Cluster {
    api: FakeApiServer,
    mesh: Mesh,
    block: Block,
    tenant: WorkloadCert,
}

/// The demo cluster (`cluster`: its YAML, from [`cluster_yaml`]) with ambient-demo's DENY, in a
/// fresh API server, the waypoint synced with it, and the tenant's certificate.
async fn start(cluster: impl FnOnce(&Block) -> String) -> Cluster {
    let block = Block::allocate();
    let api = FakeApiServer::start(&temp_dir()).await.unwrap();
    api.apply_yaml(&cluster(&block)).unwrap();
    api.apply_yaml(NO_ADMIN_FOR_TENANTS).unwrap();
    let mesh = Mesh::start(MeshOptions {
        policies: String::new(),
        block: Some(block),
        kube: Some(kube_opts(&api)),
        ..MeshOptions::default()
    })
    .await
    .unwrap();
    mesh.wait_ready().await.unwrap();
    let tenant = mesh
        .pki
        .issue("spiffe://cluster.local/ns/tenant-b/sa/attacker", "attacker")
        .unwrap();
    Cluster {
        api,
        mesh,
        block,
        tenant,
    }
}

/// What a call got: the CONNECT status, then (when 200) the inner HTTP status and body.
#[derive(Debug)]
struct Answer {
    connect: u16,
    status: u16,
    body: String,
}

async fn call(mesh: &Mesh, who: &WorkloadCert, authority: &str, path: &str) -> Answer {
    let c = mesh.hbone(who).await.unwrap();
    let o = c
        .open(authority, &[("forwarded", FORWARDED)])
        .await
        .unwrap();
    let connect = o.status.as_u16();
    let Some(mut s) = o.stream.filter(|_| connect == 200) else {
        return Answer {
            connect,
            status: 0,
            body: String::new(),
        };
    };
    match http1::request(&mut s, "GET", path, &[], "").await {
        Ok(Some(r)) => Answer {
            connect,
            status: r.status,
            body: r.body,
        },
        _ => Answer {
            connect,
            status: 0,
            body: String::new(),
        },
    }
}

/// Polls (bounded) until `cond` holds: config from the API server applies asynchronously, and
/// the snapshot the data path reads is the signal.
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

/// HBONE streams the httpbin pods' ztunnels accepted: what the waypoint dialled with their
/// identity.
fn shim_streams(mesh: &Mesh) -> Vec<u64> {
    mesh.inbound
        .iter()
        .filter(|s| mesh.httpbin_pods.contains(&s.addr.ip()))
        .map(|s| s.stats.streams.load(Ordering::Relaxed))
        .collect()
}

fn refusal_of(mesh: &Mesh, subject: &Subject) -> Option<String> {
    let s = mesh.running().config.load();
    s.findings
        .refusals
        .get(subject)
        .map(|r| format!("{} {}", r.reason.as_str(), r))
}

fn service(ns: &str, name: &str) -> Subject {
    Subject::Service(ServiceRef::Service(ObjectKey::new(ns, name)))
}

/// ambient-demo opens its waypoint to every namespace (the listener's allowedRoutes).
fn open_waypoint(api: &FakeApiServer) {
    let mut gw = api
        .get(GATEWAY_API, "Gateway", NAMESPACE, "waypoint")
        .unwrap();
    gw["spec"]["listeners"][0]["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    api.apply(gw).unwrap();
}

fn tenant_namespace(labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: tenant-b, labels: {{istio.io/dataplane-mode: ambient{labels}}}}}\n"
    )
}

/// The tenant's Service `name` (VIP [`STEAL_VIP`]), choosing ambient-demo's waypoint itself
/// when `labelled`, with an EndpointSlice holding `endpoints`.
fn steal(name: &str, labelled: bool, endpoints: &str) -> String {
    let labels = if labelled {
        "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ambient-demo"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: tenant-b, labels: {{{labels}}}}}\n\
         spec: {{clusterIP: 10.96.7.1, ports: [{{name: http, port: 8000, targetPort: 8080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: tenant-b, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{endpoints}]\n"
    )
}

/// An endpoint naming ambient-demo's `httpbin-1` by targetRef, with its real uid.
fn foreign_pod_endpoint(api: &FakeApiServer, block: &Block) -> String {
    let pod = api.get("v1", "Pod", NAMESPACE, "httpbin-1").unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    format!(
        "{{addresses: [\"{}\"], targetRef: {{kind: Pod, name: httpbin-1, namespace: ambient-demo, uid: {uid}}}}}",
        block.ip(11)
    )
}

fn enforced(api: &FakeApiServer, ns: &str, name: &str) -> Option<Value> {
    let ap = api.get("security.istio.io/v1", "AuthorizationPolicy", ns, name)?;
    ap["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "rust-waypoint.io/WaypointEnforced")
        .cloned()
}

/// istiod refuses a Service (or a namespace) of another namespace unless the waypoint's
/// listener admits it; the default is `Same`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_attach_to_another_namespaces_waypoint() {
    tokio::time::timeout(LIMIT, async {
        let c = start(cluster_yaml).await;
        let (mesh, api) = (&c.mesh, &c.api);
        // As A's policy wants it, through A's own Service.
        let a = call(mesh, &c.tenant, HTTPBIN_VIP, "/admin").await;
        assert_eq!((a.connect, a.status), (200, 403), "{a:?}");
        assert_eq!(call(mesh, &c.tenant, HTTPBIN_VIP, "/get").await.status, 200);

        // The tenant's Service names A's waypoint, with A's pods as its endpoints (by targetRef
        // and by address), and a policy of its own on it.
        let endpoints = format!("{}, {{addresses: [\"{}\"]}}", foreign_pod_endpoint(api, &c.block), c.block.ip(12));
        api.apply_yaml(&tenant_namespace("")).unwrap();
        api.apply_yaml(&steal("steal", true, &endpoints)).unwrap();
        api.apply_yaml(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: mine, namespace: tenant-b}\n\
             spec: {targetRefs: [{kind: Service, group: '', name: steal}], action: ALLOW, rules: [{}]}\n",
        )
        .unwrap();
        let subject = service("tenant-b", "steal");
        until("the tenant's Service is refused", || async { refusal_of(mesh, &subject).is_some() }).await;
        let why = refusal_of(mesh, &subject).unwrap();
        assert!(why.starts_with("AttachmentDenied not permitted to attach to waypoint \"ambient-demo/waypoint\""), "{why}");
        assert!(why.contains("from: Same"), "{why}");

        let before = shim_streams(mesh);
        let a = call(mesh, &c.tenant, STEAL_VIP, "/admin").await;
        assert_eq!(a.connect, 503, "not a destination of this waypoint: {a:?}");
        assert_eq!(shim_streams(mesh), before, "no pod of ambient-demo was dialled");
        assert!(mesh.running().metrics.attachment_refusals("AttachmentDenied") >= 1);
        let d = mesh.running().config.load();
        assert!(!d.destinations.services.contains_key(&STEAL_VIP.parse::<SocketAddr>().unwrap()));

        // Where an operator looks: our condition on the tenant's policy says why.
        until("WaypointEnforced on the tenant's policy", || async {
            enforced(api, "tenant-b", "mine").is_some()
        })
        .await;
        let cond = enforced(api, "tenant-b", "mine").unwrap();
        assert_eq!((cond["status"].as_str(), cond["reason"].as_str()), (Some("False"), Some("AncestorNotBound")), "{cond}");
        let msg = cond["message"].as_str().unwrap();
        assert!(
            msg.starts_with("Service tenant-b/steal is not bound to a waypoint: not permitted to attach to waypoint \"ambient-demo/waypoint\""),
            "{msg}"
        );

        // The same through the namespace's label.
        api.apply_yaml(&tenant_namespace(", istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ambient-demo")).unwrap();
        api.apply_yaml(&steal("steal-by-namespace", false, &endpoints).replace("10.96.7.1", "10.96.7.2")).unwrap();
        let subject = service("tenant-b", "steal-by-namespace");
        until("refused through the namespace's label too", || async {
            refusal_of(mesh, &subject).is_some_and(|r| r.starts_with("AttachmentDenied"))
        })
        .await;
        let a = call(mesh, &c.tenant, "10.96.7.2:8000", "/admin").await;
        assert_eq!(a.connect, 503, "{a:?}");
        assert_eq!(shim_streams(mesh), before);

        // A's own traffic is untouched, A's DENY still holds.
        assert_eq!(call(mesh, &mesh.sleep, HTTPBIN_VIP, "/get").await.status, 200);
        assert_eq!(call(mesh, &c.tenant, HTTPBIN_VIP, "/admin").await.status, 403);
    })
    .await
    .unwrap();
}

/// Even on a waypoint open to every namespace, a tenant's EndpointSlice never lends it another
/// namespace's pods or their identity: a Pod targetRef into another namespace is skipped, an
/// address written into the slice is a workload with no identity, dialled as a non-mesh
/// endpoint (plain TCP), never through the pod's ztunnel with the waypoint's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_endpoints_never_carry_another_namespaces_identity() {
    tokio::time::timeout(LIMIT, async {
        let c = start(cluster_yaml).await;
        let (mesh, api) = (&c.mesh, &c.api);
        open_waypoint(api);
        let ip12 = c.block.ip(12);
        let endpoints = format!(
            "{}, {{addresses: [\"{ip12}\"]}}",
            foreign_pod_endpoint(api, &c.block)
        );
        api.apply_yaml(&tenant_namespace("")).unwrap();
        api.apply_yaml(&steal("steal", true, &endpoints)).unwrap();
        let vip: SocketAddr = STEAL_VIP.parse().unwrap();
        until("the tenant's Service is served", || async {
            mesh.running()
                .config
                .load()
                .destinations
                .services
                .contains_key(&vip)
        })
        .await;
        let d = mesh.running().config.load();
        let eps: Vec<_> = d.destinations.services[&vip]
            .endpoints
            .iter()
            .map(|e| (e.address, e.identity.clone(), e.pod.clone()))
            .collect();
        assert_eq!(
            eps,
            vec![(SocketAddr::new(ip12, 8080), None, None)],
            "the foreign pod is skipped; the written address has no identity and is no pod"
        );

        // Through its own Service the tenant reaches only the address it wrote, as any client
        // outside the mesh could, and the waypoint lends it no identity: no ztunnel of
        // ambient-demo saw an HBONE stream. (In a cluster that pod's ztunnel then sees plain
        // text, which ambient-demo's own L4 policy decides; the harness's app listens on the
        // pod IP directly.)
        let before = shim_streams(mesh);
        let a = call(mesh, &c.tenant, STEAL_VIP, "/admin").await;
        assert_eq!((a.connect, a.status), (200, 200), "{a:?}");
        assert!(a.body.starts_with("httpbin-2 GET /admin"), "{}", a.body);
        assert_eq!(
            shim_streams(mesh),
            before,
            "nothing dialled with an identity"
        );
        // A's own Service: still A's pods, through their ztunnels, and A's DENY.
        assert_eq!(
            call(mesh, &c.tenant, HTTPBIN_VIP, "/admin").await.status,
            403
        );
        let a = call(mesh, &mesh.sleep, HTTPBIN_VIP, "/get").await;
        assert_eq!(a.status, 200);
        assert!(
            shim_streams(mesh).iter().sum::<u64>() > before.iter().sum::<u64>(),
            "A's traffic goes through A's ztunnels"
        );

        // Only the targetRef: no endpoint at all.
        let version = mesh.running().config.load().version;
        api.apply_yaml(&steal("steal", true, &foreign_pod_endpoint(api, &c.block)))
            .unwrap();
        until("the slice change applies", || async {
            let s = mesh.running().config.load();
            s.version > version
                && s.destinations
                    .services
                    .get(&vip)
                    .is_some_and(|d| d.endpoints.is_empty())
        })
        .await;
        let before = shim_streams(mesh);
        let a = call(mesh, &c.tenant, STEAL_VIP, "/admin").await;
        assert_eq!(
            (a.connect, a.status),
            (200, 503),
            "no healthy upstream: {a:?}"
        );
        assert_eq!(shim_streams(mesh), before);
    })
    .await
    .unwrap();
}

/// A tenant's ServiceEntry with the address of A's Service: refused on A's waypoint by default;
/// on an open waypoint a conflict that A's Service wins, in either order; when A's Service goes
/// the next claim takes the address at once, and when the ServiceEntry goes A's address stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_service_entry_never_takes_a_services_address() {
    tokio::time::timeout(LIMIT, async {
        let c = start(cluster_yaml).await;
        let (mesh, api) = (&c.mesh, &c.api);
        let tenant_app = c.block.ip(66);
        let _server = backend::http(SocketAddr::new(tenant_app, 8000), "tenant").await.unwrap();
        api.apply_yaml(&tenant_namespace("")).unwrap();
        // Older than A's Service, exported everywhere, naming A's waypoint.
        api.apply_yaml(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: thief, namespace: tenant-b, creationTimestamp: '2020-01-01T00:00:00Z', labels: {{istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ambient-demo}}}}\n\
             spec: {{hosts: [httpbin.ambient-demo.svc.cluster.local], addresses: [10.96.0.10], exportTo: ['*'], resolution: STATIC,\n\
                     ports: [{{number: 8000, name: http, protocol: HTTP}}], endpoints: [{{address: \"{tenant_app}\"}}]}}\n"
        ))
        .unwrap();
        let thief = ServiceRef::ServiceEntry(ObjectKey::new("tenant-b", "thief"));
        let httpbin = ServiceRef::Service(ObjectKey::new(NAMESPACE, "httpbin"));
        let vip: SocketAddr = HTTPBIN_VIP.parse().unwrap();
        let owner = || mesh.running().config.load().destinations.services.get(&vip).map(|d| d.owner());
        let reaches = |who: &'static str| async move {
            let a = call(mesh, &mesh.sleep, HTTPBIN_VIP, "/get").await;
            assert_eq!((a.connect, a.status), (200, 200), "{a:?}");
            assert!(a.body.starts_with(who), "wanted {who}, got {}", a.body);
        };

        // A's waypoint admits its own namespace only.
        until("the ServiceEntry is refused", || async {
            refusal_of(mesh, &Subject::Service(thief.clone())).is_some_and(|r| r.starts_with("AttachmentDenied"))
        })
        .await;
        for _ in 0..3 {
            reaches("httpbin-").await;
        }
        assert_eq!(owner(), Some(httpbin.clone()));

        // Open: the ServiceEntry (second) is accepted but A's Service keeps its address.
        open_waypoint(api);
        until("the conflict is seen", || async {
            mesh.running().config.load().findings.conflicts.contains_key(&vip)
        })
        .await;
        let conflict = mesh.running().config.load().findings.conflicts[&vip].clone();
        assert_eq!((conflict.owner.clone(), conflict.others.clone()), (httpbin.clone(), vec![thief.clone()]));
        assert!(mesh.running().metrics.address_conflicts.get() >= 1);
        for _ in 0..3 {
            reaches("httpbin-").await;
        }

        // A deletes its Service: the next claim takes the address at once.
        let svc = api.get("v1", "Service", NAMESPACE, "httpbin").unwrap();
        assert!(api.delete("v1", "Service", NAMESPACE, "httpbin"));
        until("the ServiceEntry owns the address", || async { owner() == Some(thief.clone()) }).await;
        reaches("tenant GET /get").await;

        // Restored (second now): the Service takes it back.
        let mut restored = svc.clone();
        restored["metadata"] = json!({"name": "httpbin", "namespace": NAMESPACE});
        api.apply(restored).unwrap();
        until("the Service owns its address again", || async { owner() == Some(httpbin.clone()) }).await;
        reaches("httpbin-").await;

        // The ServiceEntry goes: the address stays A's (no lost address).
        let version = mesh.running().config.load().version;
        assert!(api.delete("networking.istio.io/v1", "ServiceEntry", "tenant-b", "thief"));
        until("the conflict is gone", || async {
            let s = mesh.running().config.load();
            s.version > version && !s.findings.conflicts.contains_key(&vip)
        })
        .await;
        assert_eq!(owner(), Some(httpbin.clone()));
        reaches("httpbin-").await;
    })
    .await
    .unwrap();
}

/// istiod makes a Gateway a waypoint only once its status.addresses is set; until then it
/// sends it nothing, and this waypoint serves nothing either (and says so once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_status_addresses_serves_nothing() {
    tokio::time::timeout(LIMIT, async {
        let c = start(|b| {
            cluster_yaml(b)
                .lines()
                .filter(|l| !l.starts_with("status: {addresses:"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .await;
        let (mesh, api) = (&c.mesh, &c.api);
        assert!(api.get(GATEWAY_API, "Gateway", NAMESPACE, "waypoint").unwrap()["status"]["addresses"].is_null());
        let a = call(mesh, &mesh.sleep, HTTPBIN_VIP, "/get").await;
        assert_eq!(a.connect, 503, "{a:?}");
        let s = mesh.running().config.load();
        assert!(s.findings.not_a_waypoint.is_some());
        assert!(s.findings.refusals.is_empty(), "one finding, not one per Service");
        assert_eq!(mesh.running().metrics.attachment_refusals("WaypointIsNotReady"), 1);

        // istiod writes the addresses once a waypoint pod is Ready.
        api.apply_status(
            "istio.io/gateway-controller",
            true,
            json!({"apiVersion": GATEWAY_API, "kind": "Gateway",
                   "metadata": {"name": "waypoint", "namespace": NAMESPACE},
                   "status": {"addresses": [{"type": "Hostname", "value": "waypoint.ambient-demo.svc.cluster.local"}]}}),
        )
        .unwrap();
        until("served once the Gateway is a waypoint", || async {
            call(mesh, &mesh.sleep, HTTPBIN_VIP, "/get").await.status == 200
        })
        .await;
        assert!(mesh.running().config.load().findings.not_a_waypoint.is_none());
    })
    .await
    .unwrap();
}

/// The file source and `waypoint authz eval` judge a tenant's objects by the same rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_authz_eval_answer_as_the_cluster_would() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(MeshOptions {
            policies: NO_ADMIN_FOR_TENANTS.to_owned(),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let tenant = mesh
            .pki
            .issue("spiffe://cluster.local/ns/tenant-b/sa/attacker", "attacker")
            .unwrap();
        let tenant_objects = format!(
            "{}---\n{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: thief, namespace: tenant-b, labels: {{istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ambient-demo}}}}\n\
             spec: {{hosts: [httpbin.ambient-demo.svc.cluster.local], addresses: [10.96.0.10], ports: [{{number: 8000, name: http, protocol: HTTP}}], endpoints: [{{address: \"{}\"}}]}}\n",
            tenant_namespace(""),
            steal("steal", true, &format!("{{addresses: [\"{}\"]}}", mesh.block.ip(12))),
            mesh.block.ip(66),
        );
        let before = mesh.running().config.load().version;
        std::fs::write(mesh.config_dir().join("tenant.yaml"), &tenant_objects).unwrap();
        mesh.wait_for_config(|v| v > before).await.unwrap();
        let s = mesh.running().config.load();
        assert!(s.findings.refusals.contains_key(&service("tenant-b", "steal")));
        assert!(s.findings.refusals.contains_key(&Subject::Service(ServiceRef::ServiceEntry(ObjectKey::new("tenant-b", "thief")))));
        assert_eq!(call(&mesh, &tenant, STEAL_VIP, "/admin").await.connect, 503);
        let a = call(&mesh, &mesh.sleep, HTTPBIN_VIP, "/get").await;
        assert!(a.body.starts_with("httpbin-"), "{a:?}");

        let docs = [
            // The tenant's Service, by name: not served.
            json!({"waypoint": {"namespace": NAMESPACE, "name": "waypoint"},
                   "destination": {"service": {"namespace": "tenant-b", "name": "steal"}, "port": 8000},
                   "source": {"principal": "cluster.local/ns/tenant-b/sa/attacker"},
                   "http": {"method": "GET", "host": "steal", "path": "/admin"}}),
            // A's address, as the data path routes it: A's Service, A's DENY.
            json!({"waypoint": {"namespace": NAMESPACE, "name": "waypoint"},
                   "destination": {"ip": "10.96.0.10", "port": 8000},
                   "source": {"principal": "cluster.local/ns/tenant-b/sa/attacker"},
                   "http": {"method": "GET", "host": "httpbin", "path": "/admin"}}),
            json!({"waypoint": {"namespace": NAMESPACE, "name": "waypoint"},
                   "destination": {"ip": "10.96.0.10", "port": 8000},
                   "source": {"principal": "cluster.local/ns/ambient-demo/sa/sleep"},
                   "http": {"method": "GET", "host": "httpbin", "path": "/admin"}}),
        ];
        let file = mesh.dir.join("tenant-requests.yaml");
        let text: Vec<String> = docs.iter().map(|d| serde_json::to_string(d).unwrap()).collect();
        std::fs::write(&file, text.join("\n---\n")).unwrap();
        let out = std::process::Command::new(waypoint_tests::waypoint_bin())
            .args(["authz", "eval", "--config"])
            .arg(mesh.config_dir())
            .arg("--request")
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!((lines[0]["decision"].as_str(), lines[0]["status"].as_u64()), (Some("deny"), Some(503)), "{}", lines[0]);
        let reason = lines[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("not served: Service tenant-b/steal is not served by waypoint ambient-demo/waypoint: not permitted to attach"),
            "{reason}"
        );
        assert_eq!((lines[1]["decision"].as_str(), lines[1]["status"].as_u64()), (Some("deny"), Some(403)), "{}", lines[1]);
        assert_eq!(lines[1]["policy"], "ambient-demo/no-admin-for-tenants", "{}", lines[1]);
        assert_eq!(lines[2]["decision"], "allow", "{}", lines[2]);
    })
    .await
    .unwrap();
}
