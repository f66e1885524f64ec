//! End to end from the chart: the objects `charts/waypoint` renders for its default values
//! (`ci/golden/default.yaml`, the file the chart checks compare against) go into the fake API
//! server; the Deployment's pod template becomes a Pod; the `waypoint` binary runs with the
//! arguments and environment that Deployment gives its container (downward-API values filled in
//! as the kubelet would). The Gateway must end up with the status that makes istiod treat it as
//! a waypoint, only once a pod is Ready, and keep it through restarts, SIGTERM and a second
//! replica.
//!
//! The waypoint speaks as the chart's ServiceAccount, and the fake API server enforces the
//! chart's rendered RBAC (its ClusterRoles, Roles and bindings): a request the chart does not
//! allow gets the API server's 403. The code and the chart are checked against each other: the
//! run must need nothing the chart does not grant.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use waypoint::tls::dev_ca::DevCa;
use waypoint_tests::http1;
use waypoint_tests::kube_api::FakeApiServer;
use waypoint_tests::kube_api::rbac::User;
use waypoint_tests::mesh_ca::MeshCa;
use waypoint_tests::net::Block;

const LIMIT: Duration = Duration::from_secs(120);
const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
/// What the API server allocates for the rendered Service (the chart leaves it to the server).
const CLUSTER_IP: &str = "10.96.100.7";
const TOKEN: &str = "projected-istio-ca-token";

/// The rendered objects for the default values, read from the repository at test time.
fn rendered() -> Vec<Value> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/waypoint/ci/golden/default.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("the chart renders no {kind}"))
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "waypoint-deploy-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The Deployment's pod template as the Pod the ReplicaSet would create, scheduled on
/// `node-1` with `ip`, Ready or not.
fn pod(deployment: &Value, name: &str, ip: &str, ready: bool) -> Value {
    let t = &deployment["spec"]["template"];
    let mut metadata = t["metadata"].clone();
    metadata["name"] = name.into();
    metadata["namespace"] = deployment["metadata"]["namespace"].clone();
    let mut spec = t["spec"].clone();
    spec["nodeName"] = "node-1".into();
    let status = if ready { "True" } else { "False" };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "ContainersReady", "status": status},
                {"type": "Ready", "status": status},
            ],
        },
    })
}

/// The container's environment with downward-API fields resolved as the kubelet does.
fn container_env(pod: &Value) -> Vec<(String, String)> {
    let container = &pod["spec"]["containers"][0];
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            if let Some(v) = e["value"].as_str() {
                return (name, v.to_owned());
            }
            let field = e["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .unwrap_or_else(|| panic!("env {name}: only values and fieldRefs are expected"));
            let value = match field {
                "metadata.name" => &pod["metadata"]["name"],
                "metadata.namespace" => &pod["metadata"]["namespace"],
                "status.podIP" => &pod["status"]["podIP"],
                "spec.serviceAccountName" => &pod["spec"]["serviceAccountName"],
                "spec.nodeName" => &pod["spec"]["nodeName"],
                other => panic!("env {name}: fieldRef {other} not filled in by this test"),
            };
            (name, value.as_str().unwrap().to_owned())
        })
        .collect()
}

/// The rendered Deployment as a process: its args and env. What only a cluster provides is
/// replaced: the kubeconfig (in-cluster credentials), listen addresses on this test's loopback
/// address, the projected token and root cert mounts (files), and `CA_ADDR`'s name (resolving to
/// the in-process CA).
struct Replica {
    child: Child,
    ip: std::net::IpAddr,
}

struct Setup {
    api: FakeApiServer,
    deployment: Value,
    ca: MeshCa,
    dir: PathBuf,
    /// The chart's ServiceAccount's credentials, as the in-cluster config would give them.
    kubeconfig: PathBuf,
}

impl Setup {
    fn spawn(&self, pod: &Value) -> Replica {
        let ip: std::net::IpAddr = pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
        let container = &pod["spec"]["containers"][0];
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let addr = |port: u16| SocketAddr::new(ip, port).to_string();
        let mut cmd = Command::new(waypoint_tests::waypoint_bin());
        cmd.args(&args)
            .args([
                "--hbone-addr",
                &addr(15008),
                "--readiness-addr",
                &addr(15021),
            ])
            .args(["--metrics-addr", &addr(15020), "--admin-addr", &addr(15000)])
            .arg("--ca-root-cert")
            .arg(self.dir.join("root-cert.pem"))
            .arg("--ca-token")
            .arg(self.dir.join("istio-token"))
            .env_clear()
            .env("KUBECONFIG", &self.kubeconfig);
        for (k, v) in container_env(pod) {
            let v = match k.as_str() {
                "CA_ADDR" => {
                    assert_eq!(v, "istiod.istio-system.svc:15012");
                    self.ca.addr.to_string()
                }
                "RUST_LOG" => std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                _ => v,
            };
            cmd.env(k, v);
        }
        Replica {
            child: cmd.spawn().unwrap(),
            ip,
        }
    }
}

impl Replica {
    async fn get(&self, port: u16, path: &str) -> Option<http1::Response> {
        let mut s = tokio::net::TcpStream::connect(SocketAddr::new(self.ip, port))
            .await
            .ok()?;
        http1::request(&mut s, "GET", path, &[], "").await.ok()?
    }

    async fn ready(&self) -> bool {
        self.get(15021, "/healthz/ready")
            .await
            .is_some_and(|r| r.status == 200)
    }

    /// A metric's value from the Prometheus endpoint.
    async fn metric(&self, name: &str) -> Option<f64> {
        let r = self.get(15020, "/metrics").await?;
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// SIGTERM, as the kubelet stops a container; the process must exit cleanly.
    async fn terminate(mut self) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn until<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn gateway(api: &FakeApiServer) -> Value {
    api.get(GATEWAY_API, "Gateway", "demo", "waypoint").unwrap()
}

fn gateway_condition(api: &FakeApiServer, type_: &str) -> Option<Value> {
    gateway(api)["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn gateway_patches(api: &FakeApiServer) -> usize {
    api.patches()
        .iter()
        .filter(|p| p.resource == "gateways")
        .count()
}

async fn setup() -> Setup {
    let objects = rendered();
    let dir = temp_dir("chart");
    let api = FakeApiServer::start(&dir.join("api")).await.unwrap();
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}))
        .unwrap();
    for o in &objects {
        let mut o = o.clone();
        if o["kind"] == "Service" {
            // Allocated by the API server on create.
            o["spec"]["clusterIP"] = CLUSTER_IP.into();
            o["spec"]["clusterIPs"] = json!([CLUSTER_IP]);
        }
        api.apply(o).unwrap();
    }
    let deployment = find(&objects, "Deployment").clone();
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let ns = deployment["metadata"]["namespace"].as_str().unwrap();
    let kubeconfig = api.service_account_kubeconfig(ns, sa).unwrap();
    // The mesh root istiod publishes (istio-ca-root-cert) and the projected token.
    let root = Arc::new(DevCa::new("mesh root").unwrap());
    let ca = MeshCa::start(root.clone(), &root).await.unwrap();
    ca.allow_token(TOKEN, "spiffe://cluster.local/ns/demo/sa/waypoint");
    std::fs::write(dir.join("root-cert.pem"), root.root_pem()).unwrap();
    std::fs::write(dir.join("istio-token"), TOKEN).unwrap();
    Setup {
        api,
        deployment,
        ca,
        dir,
        kubeconfig,
    }
}

/// Policies whose status this waypoint writes: one in its namespace on its Gateway, and a
/// default DENY in the root namespace on its GatewayClass (binding to every waypoint of it).
const POLICIES: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: demo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nothing, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: rust-waypoint}]
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/nowhere/sa/nobody]}}]}]
";

/// Our condition on a policy.
fn enforced(api: &FakeApiServer, namespace: &str, name: &str) -> Option<Value> {
    api.get(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        namespace,
        name,
    )?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "rust-waypoint.io/WaypointEnforced")
        .cloned()
}

/// What istiod needs to make the Gateway a waypoint, and nothing written before a pod is Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_objects_get_the_waypoint_status() {
    tokio::time::timeout(LIMIT, async {
        let s = setup().await;
        let api = &s.api;
        let objects = rendered();
        let gw = find(&objects, "Gateway");
        assert_eq!(gw["spec"]["gatewayClassName"], "rust-waypoint");
        assert_eq!(gw["metadata"]["name"], "waypoint");
        let block = Block::allocate();
        let ip_a = block.ip(1).to_string();
        let pod_a = pod(&s.deployment, "waypoint-6c9f7d5b8-x2k4q", &ip_a, false);
        api.apply(pod_a.clone()).unwrap();

        // Not Ready yet: the waypoint syncs and reports, but assigns no address.
        let a = s.spawn(&pod_a);
        until("the waypoint is ready (synced, certificate in)", || {
            a.ready()
        })
        .await;
        until("Accepted written", || async {
            gateway_condition(api, "Accepted").is_some_and(|c| c["status"] == "True")
        })
        .await;
        let programmed = gateway_condition(api, "Programmed").unwrap();
        assert_eq!(programmed["status"], "False");
        assert_eq!(programmed["reason"], "AddressNotAssigned");
        assert!(
            programmed["message"]
                .as_str()
                .unwrap()
                .contains("no instances found"),
            "{programmed}"
        );
        assert!(
            gateway(api)["status"]["addresses"].is_null(),
            "{}",
            gateway(api)
        );

        // The kubelet marks the pod Ready: the addresses istiod and ztunnel use.
        api.apply(pod(&s.deployment, "waypoint-6c9f7d5b8-x2k4q", &ip_a, true))
            .unwrap();
        until("addresses written", || async {
            !gateway(api)["status"]["addresses"].is_null()
        })
        .await;
        let g = gateway(api);
        assert_eq!(
            g["status"]["addresses"],
            json!([
                {"type": "Hostname", "value": "waypoint.demo.svc.cluster.local"},
                {"type": "IPAddress", "value": CLUSTER_IP},
            ])
        );
        for (t, reason) in [("Accepted", "Accepted"), ("Programmed", "Programmed")] {
            let c = gateway_condition(api, t).unwrap();
            assert_eq!(
                (c["status"].as_str(), c["reason"].as_str()),
                (Some("True"), Some(reason)),
                "{c}"
            );
            assert_eq!(c["observedGeneration"], g["metadata"]["generation"]);
            assert!(c["lastTransitionTime"].is_string());
        }
        assert_eq!(
            gateway_condition(api, "Programmed").unwrap()["message"],
            "Resource programmed, assigned to service(s) waypoint.demo.svc.cluster.local:15008"
        );
        let managers = api.managers(GATEWAY_API, "Gateway", "demo", "waypoint");
        assert_eq!(
            managers.keys().collect::<Vec<_>>(),
            ["rust-waypoint"],
            "{managers:?}"
        );
        let expected = g["status"]["addresses"].clone();

        // Policy status, where the chart lets the waypoint write it.
        api.apply_yaml(POLICIES).unwrap();
        for (ns, name) in [("demo", "deny-admin"), ("istio-system", "deny-nothing")] {
            until("WaypointEnforced written", || async {
                enforced(api, ns, name).is_some_and(|c| c["reason"] == "Accepted")
            })
            .await;
        }

        // SIGTERM does not clear them.
        a.terminate().await;
        assert_eq!(
            gateway(api)["status"]["addresses"],
            expected,
            "kept on shutdown"
        );

        // A new pod (the rollout's replacement) starts not Ready while the old one is gone, and
        // the Gateway's spec changed meanwhile: the restarted waypoint must write the new
        // generation and keep the addresses (an apply omitting them would delete them).
        api.delete("v1", "Pod", "demo", "waypoint-6c9f7d5b8-x2k4q");
        let ip_b = block.ip(2).to_string();
        let pod_b = pod(&s.deployment, "waypoint-6c9f7d5b8-7hq2m", &ip_b, false);
        api.apply(pod_b.clone()).unwrap();
        let mut changed = gateway(api);
        changed["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"] = "All".into();
        changed.as_object_mut().unwrap().remove("status");
        api.apply(changed).unwrap();
        let generation = gateway(api)["metadata"]["generation"].clone();
        assert_eq!(generation, 2);
        let b = s.spawn(&pod_b);
        until(
            "the restarted waypoint reports the new generation",
            || async {
                gateway_condition(api, "Programmed")
                    .is_some_and(|c| c["observedGeneration"] == generation)
            },
        )
        .await;
        let g = gateway(api);
        assert_eq!(
            g["status"]["addresses"], expected,
            "kept across the restart"
        );
        // No pod is Ready right now: Programmed says so, the addresses stay.
        let programmed = gateway_condition(api, "Programmed").unwrap();
        assert_eq!(programmed["reason"], "AddressNotAssigned", "{programmed}");
        until("the restarted waypoint is ready", || b.ready()).await;

        // A second replica, Ready too: one leader, no fight over the status.
        api.apply(pod(&s.deployment, "waypoint-6c9f7d5b8-7hq2m", &ip_b, true))
            .unwrap();
        until("Programmed again once the new pod is Ready", || async {
            gateway_condition(api, "Programmed").is_some_and(|c| c["status"] == "True")
        })
        .await;
        assert_eq!(gateway(api)["status"]["addresses"], expected);
        let ip_c = block.ip(3).to_string();
        let pod_c = pod(&s.deployment, "waypoint-6c9f7d5b8-pl9vn", &ip_c, true);
        api.apply(pod_c.clone()).unwrap();
        let c = s.spawn(&pod_c);
        until("the second replica is ready", || c.ready()).await;
        let leaders = || async {
            let (lb, lc) = (
                b.metric("waypoint_status_leader").await,
                c.metric("waypoint_status_leader").await,
            );
            (lb.unwrap_or(-1.0), lc.unwrap_or(-1.0))
        };
        until("exactly one leader", || async {
            matches!(leaders().await, (1.0, 0.0) | (0.0, 1.0))
        })
        .await;
        let lease = api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                "demo",
                "waypoint-waypoint-status",
            )
            .unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "waypoint-6c9f7d5b8-7hq2m");

        // One more spec change: exactly one write for it, then quiet.
        let before = gateway_patches(api);
        let mut changed = gateway(api);
        changed["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"] = "Same".into();
        changed.as_object_mut().unwrap().remove("status");
        api.apply(changed).unwrap();
        until("generation 3 reported", || async {
            gateway_condition(api, "Programmed").is_some_and(|c| c["observedGeneration"] == 3)
        })
        .await;
        // Several Lease renewals (every 2 s) and pod/status echoes later, nobody wrote again.
        let follower_writes = c.metric("waypoint_status_writes_total").await.unwrap();
        let settle = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < settle {
            api.bookmark();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(gateway_patches(api), before + 1, "{:#?}", api.patches());
        assert_eq!(follower_writes, 0.0, "the follower writes nothing");
        assert_eq!(gateway(api)["status"]["addresses"], expected);
        for r in [b, c] {
            r.terminate().await;
        }
        assert_eq!(
            gateway(api)["status"]["addresses"],
            expected,
            "kept after both stop"
        );

        // Everything the waypoint asked for the chart's RBAC allowed, and everything it asked
        // for exists (the Lease is read before it is created).
        let sa = User::service_account("demo", "waypoint");
        assert!(api.allows(&sa, "watch", "", "configmaps", "istio-system", "istio"));
        assert!(
            !api.allows(&sa, "watch", "", "configmaps", "istio-system", ""),
            "RBAC is enforced"
        );
        let lease = "/apis/coordination.k8s.io/v1/namespaces/demo/leases/waypoint-waypoint-status";
        let counts = api.request_counts();
        for ((verb, path, code), n) in &counts {
            eprintln!("request: {verb:6} {code} {n:4} {path}");
        }
        for ((verb, path, code), n) in &counts {
            assert!(
                *code < 400 || (*code == 404 && path == lease && verb == "get"),
                "{verb} {path}: {code} x{n}"
            );
        }
    })
    .await
    .unwrap();
}
