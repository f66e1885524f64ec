//! End-to-end: the waypoint's certificate from an in-process Istio CA (real gRPC over real TLS)
//! and from a SPIFFE Workload API server on a Unix socket, rotated while traffic flows through the
//! local mesh.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde_json::Value;
use waypoint::identity::istio_ca::CaClient;
use waypoint::identity::{CaOptions, IdentitySource};
use waypoint::tls::dev_ca::DevCa;
use waypoint_tests::http1;
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions};
use waypoint_tests::mesh_ca::MeshCa;
use waypoint_tests::net::Block;
use waypoint_tests::pki::{Pki, WorkloadCert};
use waypoint_tests::spire_agent::{SpireAgent, svid};
use waypoint_tests::ztunnel::HboneClient;

/// Every test is bounded: a hang is a failure, not a stuck CI job.
const LIMIT: Duration = Duration::from_secs(90);
const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/ambient-demo/sa/waypoint";
const SLEEP_ID: &str = "spiffe://cluster.local/ns/ambient-demo/sa/sleep";
const TOKEN: &str = "projected-token-of-the-waypoint-sa";
const FORWARDED: &str = "for=\"10.244.1.9:51000\";host=httpbin.ambient-demo.svc.cluster.local";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("waypoint-identity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Replaces a file the way a ConfigMap or projected volume does: never half-written.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls (bounded) until `cond` holds: renewals happen on the waypoint's own schedule.
async fn until<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client config presenting `who` and trusting `roots`.
fn client(roots: &[&DevCa], who: &WorkloadCert) -> Arc<rustls::ClientConfig> {
    waypoint_tests::ztunnel::client_config_trusting(roots, who).unwrap()
}

/// GET through a new HBONE connection: the status (0 when the connection or tunnel failed)
/// and the waypoint's leaf certificate.
async fn get_new(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (u16, Option<CertificateDer<'static>>) {
    let Ok(c) = HboneClient::connect(addr, config).await else {
        return (0, None);
    };
    let cert = c.server_cert.clone();
    let Ok(o) = c.open(HTTPBIN_VIP, &[("forwarded", FORWARDED)]).await else {
        return (0, cert);
    };
    let Some(mut s) = o.stream.filter(|_| o.status == 200) else {
        return (o.status.as_u16(), cert);
    };
    match http1::request(&mut s, "GET", "/", &[], "").await {
        Ok(Some(r)) => (r.status, cert),
        _ => (0, cert),
    }
}

async fn get(mesh: &Mesh) -> (u16, Option<CertificateDer<'static>>) {
    get_new(mesh.waypoint_addr(), mesh.client_config(&mesh.sleep)).await
}

/// A mesh whose waypoint asks `ca` for its certificate.
struct CaMesh {
    mesh: Mesh,
    ca: MeshCa,
    root: Arc<DevCa>,
    dir: PathBuf,
    root_file: PathBuf,
    token_file: PathBuf,
    opts: CaOptions,
}

impl Drop for CaMesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ca_mesh(name: &str, lifetime: Duration, token: &str, ca_down: bool) -> CaMesh {
    let dir = temp_dir(name);
    let root = Arc::new(DevCa::new("mesh root 1").unwrap());
    let ca = MeshCa::start(root.clone(), &root).await.unwrap();
    ca.allow_token(TOKEN, WAYPOINT_ID);
    ca.set_max_lifetime(lifetime);
    ca.set_down(ca_down);
    let root_file = dir.join("root-cert.pem");
    let token_file = dir.join("istio-token");
    std::fs::write(&root_file, root.root_pem()).unwrap();
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut opts = CaOptions::new(WAYPOINT_ID.into());
    opts.address = ca.addr.to_string();
    opts.root_cert = root_file.clone();
    opts.token = token_file.clone();
    opts.lifetime = lifetime;
    opts.timeout = Duration::from_secs(2);
    opts.first_backoff = Duration::from_millis(100);
    opts.max_backoff = Duration::from_millis(400);
    let mesh = Mesh::start(MeshOptions {
        identity: Some(IdentitySource::IstioCa(Box::new(opts.clone()))),
        ca: Some(root.clone()),
        dir: Some(dir.join("mesh")),
        ..MeshOptions::default()
    })
    .await
    .unwrap();
    CaMesh {
        mesh,
        ca,
        root,
        dir,
        root_file,
        token_file,
        opts,
    }
}

async fn readiness(mesh: &Mesh) -> http1::Response {
    let mut s = tokio::net::TcpStream::connect(mesh.running().readiness_addr)
        .await
        .unwrap();
    http1::request(&mut s, "GET", "/healthz/ready", &[], "")
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_ca_issues_and_rotates_under_traffic_and_rides_out_outages() {
    tokio::time::timeout(LIMIT, async {
        // Six-second certificates: renewed about every three seconds.
        let c = ca_mesh("rotate", Duration::from_secs(6), TOKEN, true).await;
        let (mesh, ca) = (&c.mesh, &c.ca);
        let metrics = mesh.running().metrics.clone();

        // The CA is down at start: not ready, HBONE refused, the failures counted.
        until("failed attempts", || async {
            metrics.identity_renewal_failures.get() >= 2
        })
        .await;
        let r = readiness(mesh).await;
        assert_eq!(r.status, 503);
        assert!(
            r.body.contains("no valid workload certificate"),
            "{}",
            r.body
        );
        assert_eq!(get(mesh).await.0, 0, "no certificate, no HBONE");

        ca.set_down(false);
        mesh.wait_ready().await.unwrap();
        let seen = ca.seen();
        let first = &seen[0];
        assert_eq!(first.cluster_id.as_deref(), Some("Kubernetes"));
        assert_eq!(first.validity_duration, 6);
        assert_eq!(first.csr_sans, [format!("URI({WAYPOINT_ID})")]);

        // Traffic across three renewals: a connection opened before them keeps working, and every
        // new connection succeeds, with whatever certificate is current.
        let long = mesh.hbone(&mesh.sleep).await.unwrap();
        let o = long
            .open(HTTPBIN_VIP, &[("forwarded", FORWARDED)])
            .await
            .unwrap();
        let mut long_tunnel = o.stream.unwrap();
        let start = ca.issued();
        let mut certs = HashSet::new();
        let mut requests = 0;
        while ca.issued() < start + 3 {
            let (status, cert) = get(mesh).await;
            assert_eq!(status, 200, "request {requests} on a new connection");
            certs.insert(cert.unwrap());
            let r = http1::request(&mut long_tunnel, "GET", "/", &[], "")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.status, 200, "request {requests} on the old connection");
            requests += 2;
        }
        assert!(
            certs.len() >= 3,
            "saw {} certificates in {requests} requests",
            certs.len()
        );
        assert!(
            metrics.upstream_hbone_connects.get() >= 2,
            "upstream connections are re-dialed with the new certificate"
        );
        let expiry = metrics.identity_expiry.get();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            (1..=7).contains(&(expiry - now as i64)),
            "expiry gauge {expiry}, now {now}"
        );

        // Down during rotation: the current certificate serves until it expires; then the
        // waypoint says it is not ready, and recovers when the CA is back.
        ca.set_down(true);
        let failures = metrics.identity_renewal_failures.get();
        until("a failed renewal", || async {
            metrics.identity_renewal_failures.get() > failures
        })
        .await;
        assert_eq!(
            get(mesh).await.0,
            200,
            "the unexpired certificate still serves"
        );
        until("not ready once the certificate expired", || async {
            !mesh.is_ready().await
        })
        .await;
        ca.set_down(false);
        mesh.wait_ready().await.unwrap();
        assert_eq!(get(mesh).await.0, 200);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_a_clear_error_and_a_new_token_is_picked_up() {
    tokio::time::timeout(LIMIT, async {
        let c = ca_mesh("token", Duration::from_secs(600), "stale-token", false).await;
        let (mesh, ca) = (&c.mesh, &c.ca);
        until("the CA refused the token", || async { ca.rejected() >= 1 }).await;
        assert!(!mesh.is_ready().await);
        let client = CaClient::new(c.opts.clone()).unwrap();
        let e = client.fetch().await.unwrap_err().to_string();
        assert!(e.contains("rejected our token"), "{e}");
        assert!(e.contains(&c.token_file.display().to_string()), "{e}");
        assert!(e.contains("request authenticate failure"), "{e}");

        // kubelet rotates the projected token: the next attempt reads the new one.
        write_atomic(&c.token_file, TOKEN);
        mesh.wait_ready().await.unwrap();
        assert_eq!(get(mesh).await.0, 200);
        assert_eq!(
            mesh.running().identity.current().unwrap().spiffe_id,
            WAYPOINT_ID
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_root_rotation_with_two_roots_at_once() {
    tokio::time::timeout(LIMIT, async {
        let c = ca_mesh("roots", Duration::from_secs(4), TOKEN, false).await;
        let (mesh, ca) = (&c.mesh, &c.ca);
        mesh.wait_ready().await.unwrap();
        let identity = mesh.running().identity.clone();
        let r1 = c.root.clone();
        let r2 = Arc::new(DevCa::new("mesh root 2").unwrap());
        let sleep_r2 = Pki::with_ca(&c.dir.join("pki-2"), r2.clone())
            .unwrap()
            .issue(SLEEP_ID, "sleep")
            .unwrap();
        let both: &[&DevCa] = &[&r1, &r2];
        let addr = mesh.waypoint_addr();

        // Before the new root is distributed, a client with a certificate from it is refused.
        assert_eq!(get_new(addr, client(both, &sleep_r2)).await.0, 0);

        // istiod's root ConfigMap holds both roots during the rotation: both kinds of client
        // are accepted, without a new certificate for the waypoint.
        let issued = ca.issued();
        write_atomic(&c.root_file, &format!("{}{}", r1.root_pem(), r2.root_pem()));
        until("two roots trusted", || async {
            identity.current().unwrap().roots == 2
        })
        .await;
        assert_eq!(get_new(addr, client(both, &sleep_r2)).await.0, 200);
        assert_eq!(get_new(addr, client(both, &mesh.sleep)).await.0, 200);
        assert!(
            ca.issued() <= issued + 1,
            "a root change alone does not need the CA"
        );

        // The CA starts signing with the new root: at the next renewal the waypoint's
        // certificate chains to it.
        ca.set_signer(r2.clone());
        until("a certificate from the new root", || async {
            HboneClient::connect(addr, client(&[&r2], &sleep_r2))
                .await
                .is_ok()
        })
        .await;

        // The old root is withdrawn: its clients are refused, the new root's still accepted.
        write_atomic(&c.root_file, r2.root_pem());
        until("one root trusted", || async {
            identity.current().unwrap().roots == 1
        })
        .await;
        assert_eq!(get_new(addr, client(both, &mesh.sleep)).await.0, 0);
        let c2 = HboneClient::connect(addr, client(&[&r2], &sleep_r2))
            .await
            .unwrap();
        assert!(c2.ping().await.is_ok(), "the new root's client is served");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_workload_api_streams_svids_and_bundles() {
    tokio::time::timeout(LIMIT, async {
        let dir = temp_dir("spire");
        let socket = dir.join("agent.sock");
        let r1 = Arc::new(DevCa::new("spire root").unwrap());
        let mesh = Mesh::start(MeshOptions {
            identity: Some(IdentitySource::WorkloadApi {
                socket: socket.clone(),
            }),
            ca: Some(r1.clone()),
            dir: Some(dir.join("mesh")),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let metrics = mesh.running().metrics.clone();
        let identity = mesh.running().identity.clone();

        // No agent yet: not ready, failures counted.
        until("failed attempts", || async {
            metrics.identity_renewal_failures.get() >= 1
        })
        .await;
        assert!(!mesh.is_ready().await);

        let agent = SpireAgent::start(&socket).await.unwrap();
        let hour = Duration::from_secs(3600);
        agent.push(svid(&r1, WAYPOINT_ID, hour, &[r1.root_pem()]).unwrap());
        mesh.wait_ready().await.unwrap();
        let (status, first) = get(&mesh).await;
        assert_eq!(status, 200);
        let long = mesh.hbone(&mesh.sleep).await.unwrap();
        let mut long_tunnel = long
            .open(HTTPBIN_VIP, &[("forwarded", FORWARDED)])
            .await
            .unwrap()
            .stream
            .unwrap();

        // The agent rotates the SVID: new connections get it, the old one keeps working.
        agent.push(svid(&r1, WAYPOINT_ID, hour, &[r1.root_pem()]).unwrap());
        until("the rotated SVID", || async { get(&mesh).await.1 != first }).await;
        let r = http1::request(&mut long_tunnel, "GET", "/", &[], "")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);

        // A bad update is refused and the current SVID stays.
        let failures = metrics.identity_renewal_failures.get();
        let mut bad = svid(&r1, WAYPOINT_ID, hour, &[r1.root_pem()]).unwrap();
        bad.svids[0].spiffe_id = SLEEP_ID.into();
        let before = identity.current().unwrap();
        agent.push(bad);
        until("the bad SVID refused", || async {
            metrics.identity_renewal_failures.get() > failures
        })
        .await;
        assert!(Arc::ptr_eq(&before, &identity.current().unwrap()));

        // A bundle update with a second root: its clients are accepted.
        let r2 = Arc::new(DevCa::new("spire root 2").unwrap());
        let sleep_r2 = Pki::with_ca(&dir.join("pki-2"), r2.clone())
            .unwrap()
            .issue(SLEEP_ID, "sleep")
            .unwrap();
        agent.push(svid(&r1, WAYPOINT_ID, hour, &[r1.root_pem(), r2.root_pem()]).unwrap());
        until("two roots trusted", || async {
            identity.current().unwrap().roots == 2
        })
        .await;
        assert_eq!(
            get_new(mesh.waypoint_addr(), client(&[&r1, &r2], &sleep_r2))
                .await
                .0,
            200
        );

        // The agent restarts: the stream is re-opened and updates flow again.
        agent.break_streams();
        until("the stream re-opened", || async { agent.calls() >= 2 }).await;
        agent.push(svid(&r1, WAYPOINT_ID, hour, &[r1.root_pem()]).unwrap());
        until("an update after the restart", || async {
            identity.current().unwrap().roots == 1
        })
        .await;
        assert_eq!(get(&mesh).await.0, 200);
        drop(mesh);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .unwrap();
}

/// `waypoint run --identity istio-ca` and `--identity spiffe` as processes: ready once the
/// certificate arrives, renewing (metrics say so), serving HBONE with it, exit 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_gets_its_identity_from_the_ca_and_from_spire() {
    tokio::time::timeout(LIMIT, async {
        let bin = waypoint_tests::waypoint_bin();
        // An in-process mesh supplies the config files, the CA and the test client.
        let c = ca_mesh("binary", Duration::from_secs(2), TOKEN, false).await;
        let mesh = &c.mesh;
        let socket = c.dir.join("agent.sock");
        let agent = SpireAgent::start(&socket).await.unwrap();
        let fresh_svid = || {
            svid(
                &c.root,
                WAYPOINT_ID,
                Duration::from_secs(3600),
                &[c.root.root_pem()],
            )
            .unwrap()
        };
        agent.push(fresh_svid());

        for source in ["istio-ca", "spiffe"] {
            let ip = Block::allocate().ip(1);
            let addr = |port: u16| SocketAddr::new(ip, port).to_string();
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg("run")
                .arg("--config")
                .arg(mesh.config_dir())
                .args(["--identity", source])
                .args([
                    "--hbone-addr",
                    &addr(15008),
                    "--readiness-addr",
                    &addr(15021),
                ])
                .args(["--metrics-addr", &addr(15020), "--admin-addr", &addr(15000)]);
            if source == "istio-ca" {
                cmd.args([
                    "--ca-address",
                    &c.ca.addr.to_string(),
                    "--cert-lifetime-seconds",
                    "2",
                ])
                .arg("--ca-root-cert")
                .arg(&c.root_file)
                .arg("--ca-token")
                .arg(&c.token_file);
            } else {
                cmd.arg("--workload-api-socket")
                    .arg(format!("unix://{}", socket.display()));
            }
            let mut child = cmd.spawn().unwrap();
            let fetch = |path: &'static str, port: u16| {
                let a = addr(port);
                async move {
                    let mut s = tokio::net::TcpStream::connect(a).await.ok()?;
                    http1::request(&mut s, "GET", path, &[], "").await.ok()?
                }
            };
            until("the binary is ready", || async {
                fetch("/healthz/ready", 15021)
                    .await
                    .is_some_and(|r| r.status == 200)
            })
            .await;
            let renewals = || async {
                let m = fetch("/metrics", 15020).await.unwrap().body;
                m.lines()
                    .find_map(|l| l.strip_prefix("waypoint_identity_renewals_total "))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if source == "istio-ca" {
                until("two renewals", || async { renewals().await >= 3 }).await;
            } else {
                let n = renewals().await;
                agent.push(fresh_svid());
                until("the pushed SVID", || async { renewals().await > n }).await;
            }
            let dump: Value =
                serde_json::from_str(&fetch("/config_dump", 15000).await.unwrap().body).unwrap();
            assert_eq!(dump["identity"]["spiffe_id"], WAYPOINT_ID, "{source}");
            let hbone = HboneClient::connect(
                addr(15008).parse().unwrap(),
                mesh.client_config(&mesh.sleep),
            )
            .await
            .unwrap();
            assert_eq!(hbone.server_id.as_deref(), Some(WAYPOINT_ID));
            drop(hbone);
            let kill = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(kill.success());
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .unwrap()
                .unwrap();
            assert!(status.success(), "{source}: {status:?}");
        }
    })
    .await
    .unwrap();
}
