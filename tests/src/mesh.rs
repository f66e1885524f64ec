//! A whole demo mesh on loopback: the waypoint (in-process, file config, file identity), two
//! httpbin pods, a tcp-echo pod and a pod outside the mesh, each ambient pod behind its own
//! inbound ztunnel shim, and client identities `sleep` (allowed by the example policies) and
//! `curl` (not).
//!
//! The cluster it describes is `examples/mesh.yaml` plus the pods and endpoints a cluster would
//! report, with loopback pod IPs. The Gateway takes both service and workload traffic
//! (`istio.io/waypoint-for: all`) so both addressing modes can be exercised.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use waypoint::app::Running;
use waypoint::identity::IdentitySource;
use waypoint::settings::{Settings, Source};
use waypoint::source::kube::KubeSettings;
use waypoint::tls::dev_ca::DevCa;

use crate::backend;
use crate::net::Block;
use crate::pki::{Pki, WorkloadCert};
use crate::ztunnel::{self, HboneClient, InboundShim};

pub const NAMESPACE: &str = "ambient-demo";
pub const HTTPBIN_VIP: &str = "10.96.0.10:8000";
pub const TCP_ECHO_VIP: &str = "10.96.0.20:9000";
pub const LEGACY_VIP: &str = "10.96.0.30:80";
/// A gRPC-style service (`appProtocol: grpc`): h2c inside the tunnel.
pub const GRPC_VIP: &str = "10.96.0.40:50051";
/// A service VIP nobody defined.
pub const UNKNOWN_VIP: &str = "10.96.9.9:80";
/// The example policies shipped in `examples/policies`.
pub fn example_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

/// How to start a mesh.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// AuthorizationPolicy YAML, written to `policies.yaml` beside the generated cluster config.
    pub policies: String,
    pub drain_grace: Duration,
    /// Run this waypoint binary as a child process instead of in-process (benchmarks read its
    /// CPU and memory from /proc).
    pub waypoint_bin: Option<PathBuf>,
    /// Loopback block to use instead of a fresh one.
    pub block: Option<Block>,
    /// Start the demo apps on the pod IPs (off when nginx serves them).
    pub apps: bool,
    /// Where config and certificates go (kept); a temporary directory otherwise.
    pub dir: Option<PathBuf>,
    /// Read the config from an API server instead of the files (which are still written, and
    /// are what the caller loads into the server: see [`cluster_yaml`]).
    pub kube: Option<KubeSettings>,
    /// Where the in-process waypoint gets its certificate; the harness's files otherwise. The
    /// shims trust the mesh root in `<dir>/pki/root-cert.pem` ([`Mesh::pki`]).
    pub identity: Option<IdentitySource>,
    /// The mesh CA; a new one otherwise.
    pub ca: Option<Arc<DevCa>>,
    /// Adjusts the in-process waypoint's options (timeouts, fixed admin ports) before it starts.
    pub tune: Option<fn(&mut Settings)>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        let mut policies = String::new();
        if let Ok(rd) = std::fs::read_dir(example_policies()) {
            let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files {
                if let Ok(t) = std::fs::read_to_string(&f) {
                    policies.push_str(&t);
                    policies.push_str("\n---\n");
                }
            }
        }
        MeshOptions {
            policies,
            drain_grace: Duration::from_secs(5),
            waypoint_bin: None,
            block: None,
            apps: true,
            dir: None,
            kube: None,
            identity: None,
            ca: None,
            tune: None,
        }
    }
}

/// A running demo mesh. Dropping it stops everything but the waypoint, which
/// [`Mesh::shutdown`] drains.
#[derive(Debug)]
pub struct Mesh {
    pub block: Block,
    pub dir: PathBuf,
    pub pki: Pki,
    pub waypoint: Option<Running>,
    /// The waypoint process, when it runs as one.
    pub child: Option<std::process::Child>,
    pub waypoint_addr: SocketAddr,
    pub waypoint_cert: WorkloadCert,
    /// Client identities: `sleep` (allowed by the examples) and `curl`.
    pub sleep: WorkloadCert,
    pub curl: WorkloadCert,
    pub httpbin_pods: Vec<IpAddr>,
    pub tcp_echo_pod: IpAddr,
    pub legacy_pod: IpAddr,
    pub inbound: Vec<InboundShim>,
    backends: Vec<tokio::task::JoinHandle<()>>,
    keep_dir: bool,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for b in &self.backends {
            b.abort();
        }
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The cluster as a file config: namespace, waypoint Gateway, services, pods.
pub fn cluster_yaml(block: &Block) -> String {
    let pod = |name: &str, app: &str, sa: &str, ip: IpAddr, extra_labels: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: {app}{extra_labels}}}}}\n\
             spec: {{serviceAccountName: {sa}, containers: [{{name: app}}]}}\nstatus: {{podIP: \"{ip}\"}}\n---\n"
        )
    };
    let mut y = format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: {NAMESPACE}, labels: {{istio.io/waypoint-for: all}}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
# What istiod (the controller of istio-waypoint) writes once a waypoint pod is Ready: only a
# Gateway with status.addresses is a waypoint.
status: {{addresses: [{{type: Hostname, value: waypoint.{NAMESPACE}.svc.cluster.local}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: httpbin, namespace: {NAMESPACE}}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: httpbin}}
  ports: [{{name: http, port: 8000, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: tcp-echo, namespace: {NAMESPACE}}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: tcp-echo}}
  ports: [{{name: tcp, port: 9000, targetPort: 9000}}]
---
apiVersion: v1
kind: Service
metadata: {{name: legacy, namespace: {NAMESPACE}}}
spec:
  clusterIP: 10.96.0.30
  selector: {{app: legacy}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: grpc, namespace: {NAMESPACE}}}
spec:
  clusterIP: 10.96.0.40
  selector: {{app: grpc}}
  ports: [{{name: api, port: 50051, targetPort: 50051, appProtocol: grpc}}]
---
"#
    );
    y.push_str(&pod("httpbin-1", "httpbin", "httpbin", block.ip(11), ""));
    y.push_str(&pod("httpbin-2", "httpbin", "httpbin", block.ip(12), ""));
    y.push_str(&pod("tcp-echo-1", "tcp-echo", "tcp-echo", block.ip(21), ""));
    y.push_str(&pod("grpc-1", "grpc", "grpc", block.ip(41), ""));
    y.push_str(&pod(
        "legacy-1",
        "legacy",
        "legacy",
        block.ip(31),
        ", istio.io/dataplane-mode: none",
    ));
    y
}

/// `waypoint run` as a child on `ip`: HBONE 15008, readiness 15021, metrics 15020, admin 15000.
fn spawn_waypoint(
    bin: &Path,
    config: &Path,
    cert: &WorkloadCert,
    pki: &Pki,
    ip: IpAddr,
) -> anyhow::Result<std::process::Child> {
    let addr = |port: u16| SocketAddr::new(ip, port).to_string();
    let child = std::process::Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--cert-chain")
        .arg(&cert.chain_path)
        .arg("--key")
        .arg(&cert.key_path)
        .arg("--trust-bundle")
        .arg(pki.root_path())
        .args(["--hbone-addr", &addr(15008)])
        .args(["--readiness-addr", &addr(15021)])
        .args(["--metrics-addr", &addr(15020)])
        .args(["--admin-addr", &addr(15000)])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()?;
    Ok(child)
}

/// Polls the readiness endpoint (bounded): the waypoint's own readiness signal.
async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await
            && let Ok(Some(r)) =
                crate::http1::request(&mut s, "GET", "/healthz/ready", &[], "").await
            && r.status == 200
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "waypoint not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{sa}")
}

impl Mesh {
    pub async fn start(opts: MeshOptions) -> anyhow::Result<Mesh> {
        let block = opts.block.unwrap_or_else(Block::allocate);
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = opts.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "waypoint-mesh-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ))
        });
        let _ = std::fs::remove_dir_all(&dir);
        let pki = match &opts.ca {
            Some(ca) => Pki::with_ca(&dir.join("pki"), ca.clone())?,
            None => Pki::new(&dir.join("pki"), "demo mesh CA")?,
        };
        let config = dir.join("config");
        std::fs::create_dir_all(&config)?;
        std::fs::write(config.join("cluster.yaml"), cluster_yaml(&block))?;
        std::fs::write(config.join("policies.yaml"), &opts.policies)?;

        let waypoint_cert = pki.issue(&spiffe("waypoint"), "waypoint")?;
        let sleep = pki.issue(&spiffe("sleep"), "sleep")?;
        let curl = pki.issue(&spiffe("curl"), "curl")?;

        let mut backends = Vec::new();
        let mut inbound = Vec::new();
        let httpbin_pods = vec![block.ip(11), block.ip(12)];
        let httpbin_cert = pki.issue(&spiffe("httpbin"), "httpbin")?;
        for (ip, name) in httpbin_pods.iter().zip(["httpbin-1", "httpbin-2"]) {
            if opts.apps {
                backends.push(backend::http(SocketAddr::new(*ip, 8080), name).await?);
            }
            inbound.push(ztunnel::inbound(SocketAddr::new(*ip, 15008), &pki, &httpbin_cert).await?);
        }
        let tcp_echo_pod = block.ip(21);
        backends.push(backend::echo(SocketAddr::new(tcp_echo_pod, 9000)).await?);
        let echo_cert = pki.issue(&spiffe("tcp-echo"), "tcp-echo")?;
        inbound
            .push(ztunnel::inbound(SocketAddr::new(tcp_echo_pod, 15008), &pki, &echo_cert).await?);
        let grpc_pod = block.ip(41);
        if opts.apps {
            backends.push(backend::h2c(SocketAddr::new(grpc_pod, 50051), "grpc-1").await?);
        }
        let grpc_cert = pki.issue(&spiffe("grpc"), "grpc")?;
        inbound.push(ztunnel::inbound(SocketAddr::new(grpc_pod, 15008), &pki, &grpc_cert).await?);
        // Outside the mesh: no ztunnel, the waypoint must send plain TCP.
        let legacy_pod = block.ip(31);
        backends.push(backend::http(SocketAddr::new(legacy_pod, 8080), "legacy").await?);

        let identity = IdentitySource::Files {
            cert_chain: waypoint_cert.chain_path.clone(),
            key: waypoint_cert.key_path.clone(),
            trust_bundle: pki.root_path(),
        };
        let wp_ip = block.ip(1);
        if let Some(bin) = &opts.waypoint_bin {
            let child = spawn_waypoint(bin, &config, &waypoint_cert, &pki, wp_ip)?;
            let waypoint_addr = SocketAddr::new(wp_ip, 15008);
            wait_ready(SocketAddr::new(wp_ip, 15021)).await?;
            return Ok(Mesh {
                block,
                dir,
                pki,
                waypoint: None,
                child: Some(child),
                waypoint_addr,
                waypoint_cert,
                sleep,
                curl,
                httpbin_pods,
                tcp_echo_pod,
                legacy_pod,
                inbound,
                backends,
                keep_dir: opts.dir.is_some(),
            });
        }
        let source = match opts.kube.clone() {
            Some(k) => Source::Kubernetes(Box::new(k)),
            None => Source::file(config),
        };
        let mut run = Settings::new(source, opts.identity.clone().unwrap_or(identity));
        run.hbone_addr = SocketAddr::new(wp_ip, 15008);
        run.readiness_addr = SocketAddr::new(wp_ip, 0);
        run.metrics_addr = SocketAddr::new(wp_ip, 0);
        run.admin_addr = SocketAddr::new(wp_ip, 0);
        run.server.drain_grace = opts.drain_grace;
        run.poll_interval = Duration::from_millis(100);
        if let Some(tune) = opts.tune {
            tune(&mut run);
        }
        let waypoint = waypoint::app::start(run).await?;
        Ok(Mesh {
            block,
            dir,
            pki,
            child: None,
            waypoint_addr: waypoint.hbone_addr,
            waypoint: Some(waypoint),
            waypoint_cert,
            sleep,
            curl,
            httpbin_pods,
            tcp_echo_pod,
            legacy_pod,
            inbound,
            backends,
            keep_dir: opts.dir.is_some(),
        })
    }

    /// Waits (bounded) until the waypoint reports ready: with the Kubernetes source, after its
    /// first full sync.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_ready(self.running().readiness_addr).await
    }

    /// Whether `/healthz/ready` says 200 right now.
    pub async fn is_ready(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(self.running().readiness_addr).await else {
            return false;
        };
        matches!(
            crate::http1::request(&mut s, "GET", "/healthz/ready", &[], "").await,
            Ok(Some(r)) if r.status == 200
        )
    }

    pub fn running(&self) -> &Running {
        self.waypoint
            .as_ref()
            .expect("waypoint is running until shutdown")
    }

    pub fn waypoint_addr(&self) -> SocketAddr {
        self.waypoint_addr
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    pub fn client_config(&self, who: &WorkloadCert) -> Arc<rustls::ClientConfig> {
        ztunnel::client_config(&self.pki, who).expect("client config from harness certificates")
    }

    /// An HBONE connection to the waypoint as `who`.
    pub async fn hbone(&self, who: &WorkloadCert) -> anyhow::Result<HboneClient> {
        HboneClient::connect(self.waypoint_addr(), self.client_config(who)).await
    }

    /// The `forwarded` header a source ztunnel sends for a client at `127.0.0.1:<port>`.
    pub fn forwarded(client_port: u16) -> String {
        format!("for=\"127.0.0.1:{client_port}\";host=httpbin.{NAMESPACE}.svc.cluster.local")
    }

    /// Replaces the policies file and waits until the waypoint applied a newer config.
    pub async fn set_policies(&self, yaml: &str) -> anyhow::Result<()> {
        let before = self.running().config.load().version;
        let path = self.config_dir().join("policies.yaml");
        // Write-and-rename, as a ConfigMap mount updates: never a half-written file.
        let tmp = self.dir.join("policies.yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &path)?;
        self.wait_for_config(|v| v > before).await
    }

    /// Waits (bounded) until the config version satisfies `ok`, polling the snapshot the data
    /// path reads (the reload itself is asynchronous and has no other signal).
    pub async fn wait_for_config(&self, ok: impl Fn(u64) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !ok(self.running().config.load().version) {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("config did not change within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops the waypoint gracefully.
    pub async fn shutdown(&mut self) {
        if let Some(w) = self.waypoint.take() {
            w.shutdown().await;
        }
    }
}
