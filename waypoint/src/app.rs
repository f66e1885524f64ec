//! The app: wires identity, config, the HBONE listener, the HTTP app, the upstream pool and
//! the admin listeners together, and drains them on shutdown.
//!
//! Two runtimes. The data path (the HBONE server, the Pingora app, tunnels, the upstream relay
//! and pool) runs on the caller's runtime: the binary's multi-threaded workers. The control
//! plane (config sources, the status writer and its Lease, certificate rotation, JWKS refresh,
//! and the readiness, metrics and admin listeners) runs on [`ControlPlane`], one thread with its
//! own current-thread runtime, so a slow API server, a large status pass or a stuck fetch never
//! takes a worker from traffic. Control-plane work is spawned through its handle, never through
//! `Handle::current()`, because `start` itself runs on the data runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState, Role};
use crate::authn::jwks::JwksRegistry;
use crate::hbone::client::Connector;
use crate::hbone::server;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::proxy::http::HttpApp;
use crate::proxy::inbound::Inbound;
use crate::proxy::own::OwnAddresses;
use crate::proxy::upstream::Upstream;
use crate::proxy::upstream::relay;
use crate::settings::{Settings, Source};
use crate::state::{self, Snapshot, StateHandle};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("binding the upstream relay socket: {0}")]
    Relay(std::io::Error),
    #[error("loading the config: {0}")]
    Config(#[from] state::ConfigError),
    #[error("connecting to Kubernetes: {0}")]
    Kube(#[from] crate::source::kube::KubeError),
    #[error("loading the identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("starting the control-plane runtime: {0}")]
    ControlPlane(std::io::Error),
    #[error("a control-plane start-up task failed: {0}")]
    ControlTask(#[from] tokio::task::JoinError),
}

/// The control plane's runtime: a current-thread runtime driven by its own OS thread. Dropping
/// this stops it, which cancels every task on it.
#[derive(Debug)]
pub struct ControlPlane {
    handle: Handle,
    /// Dropped (or sent) to stop the runtime.
    _stop: oneshot::Sender<()>,
}

/// How long stopping the control plane waits for its blocking tasks (a config compilation).
const CONTROL_STOP_GRACE: Duration = Duration::from_secs(1);

impl ControlPlane {
    pub fn start() -> std::io::Result<ControlPlane> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("control-plane")
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("control-plane".into())
            .spawn(move || {
                // Tasks spawned through the handle run while this thread waits here.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(CONTROL_STOP_GRACE);
            })?;
        Ok(ControlPlane {
            handle,
            _stop: stop,
        })
    }

    /// Where control-plane tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `f` to completion on the control plane: a task that creates kube clients or
    /// listeners there binds them to this runtime, and every task it spawns lands here too.
    async fn run<F>(&self, f: F) -> Result<F::Output, StartError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Ok(self.handle.spawn(f).await?)
    }
}

/// A running waypoint.
#[derive(Debug)]
pub struct Running {
    pub hbone_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub config: Arc<StateHandle>,
    pub identity: Arc<Identity>,
    shutdown: watch::Sender<bool>,
    hbone: JoinHandle<()>,
    /// Data-path tasks besides the HBONE server (the upstream relay).
    background: Vec<JoinHandle<()>>,
    /// Last: stopping it ends every control-plane task.
    control: ControlPlane,
    _relay: relay::RelaySocket,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Loads identity and config, binds every listener, and starts serving. Call it on the runtime
/// that is to carry traffic; the control plane gets its own.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    crate::tls::provider();
    let control = ControlPlane::start().map_err(StartError::ControlPlane)?;
    let metrics = Arc::new(Metrics::default());
    let identity = Arc::new(Identity::new(settings.identity.clone(), metrics.clone())?);
    // Refresh tasks are started from wherever a set is first used (the data path included):
    // the handle sends them to the control plane.
    let jwks = JwksRegistry::new(
        settings.jwks.clone(),
        Some(control.handle().clone()),
        metrics.clone(),
    );
    let mesh = settings.mesh_settings(None);
    let config = match &settings.source {
        Source::File { path, .. } => {
            let seen = crate::source::file::fingerprint(path);
            let (snapshot, store) = crate::source::file::load(path, &mesh, &jwks)?;
            crate::source::file::report_all_findings(&snapshot, &metrics);
            tracing::info!(
                version = snapshot.version,
                waypoint = %snapshot.waypoint.gateway,
                services = snapshot.destinations.services.len(),
                workloads = snapshot.destinations.workloads.len(),
                policies = snapshot.authorizer.policies().len(),
                "config loaded"
            );
            metrics
                .config_version
                .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
            let config = StateHandle::new(snapshot, store);
            control.handle().spawn(crate::source::file::watch(
                path.clone(),
                seen,
                mesh,
                config.clone(),
                metrics.clone(),
                jwks.clone(),
                settings.poll_interval,
            ));
            config
        }
        Source::Kubernetes(k) => {
            let config = StateHandle::unsynced(Snapshot::empty(&mesh));
            // The client's own tasks, the watchers, the Lease and the status writer all start
            // from here, so all of them run on the control plane.
            control
                .run(crate::source::kube::start(
                    (**k).clone(),
                    settings.mesh.clone(),
                    config.clone(),
                    metrics.clone(),
                    jwks.clone(),
                ))
                .await??;
            tracing::info!(gateway = %k.gateway, "watching the Kubernetes API; ready after the first full sync");
            config
        }
    };

    let hbone_listener = bind("HBONE", settings.hbone_addr).await?;
    let (readiness_addr, admin_addr, metrics_addr) = (
        settings.readiness_addr,
        settings.admin_addr,
        settings.metrics_addr,
    );
    let (readiness_listener, admin_listener, metrics_listener) = control
        .run(async move {
            Ok::<_, StartError>((
                bind("readiness", readiness_addr).await?,
                bind("admin", admin_addr).await?,
                bind("metrics", metrics_addr).await?,
            ))
        })
        .await??;
    let local = |l: &TcpListener, a| l.local_addr().unwrap_or(a);
    let hbone_addr = local(&hbone_listener, settings.hbone_addr);
    let admin_addr = local(&admin_listener, admin_addr);
    let readiness_addr = local(&readiness_listener, readiness_addr);
    let metrics_addr = local(&metrics_listener, metrics_addr);

    let (relay_listener, relay_socket) = relay::bind().map_err(StartError::Relay)?;
    let mut upstream = Upstream::new(
        Connector::new(
            identity.clone(),
            settings.upstream_hbone_port,
            metrics.clone(),
        ),
        metrics.clone(),
    );
    upstream.own = OwnAddresses {
        listeners: vec![hbone_addr, readiness_addr, metrics_addr, admin_addr],
        pod_ips: settings.pod_ips.clone(),
    };
    let upstream = Arc::new(upstream);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let app = HttpApp {
        config: config.clone(),
        relay: relay_socket.detour(),
        metrics: metrics.clone(),
    };
    let mut proxy = pingora::proxy::http_proxy(&Arc::new(ServerConf::default()), app);
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    proxy.server_options = Some(options);
    // Inner h2c: the same header budget as HTTP/1 (Envoy's max_request_headers_kb covers both);
    // a larger header block is answered 431 by h2 on its stream.
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(
        u32::try_from(settings.http1.max_request_headers_bytes).unwrap_or(u32::MAX),
    );
    proxy.h2_options = Some(h2);
    let inbound = Arc::new(Inbound {
        config: config.clone(),
        http: Arc::new(proxy),
        upstream: upstream.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown_rx.clone(),
        timeouts: settings.server.timeouts,
        detection_timeout: settings.protocol_detection_timeout,
        http1: settings.http1,
    });

    let ready = Arc::new(AtomicBool::new(false));
    let admin_state = AdminState {
        config: config.clone(),
        metrics: metrics.clone(),
        identity: identity.clone(),
        ready: ready.clone(),
    };
    let c = control.handle();
    c.spawn(admin::serve(
        readiness_listener,
        admin_state.clone(),
        Role::Readiness,
    ));
    c.spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        Role::Admin,
    ));
    c.spawn(admin::serve(metrics_listener, admin_state, Role::Metrics));
    c.spawn(identity.clone().run(settings.poll_interval));
    let background = vec![tokio::spawn(relay::serve(relay_listener, upstream))];
    let hbone = tokio::spawn(server::serve(
        hbone_listener,
        identity.clone(),
        inbound,
        settings.server.clone(),
        metrics.clone(),
        shutdown_rx,
    ));
    ready.store(true, Ordering::Relaxed);
    tracing::info!(%hbone_addr, %readiness_addr, %metrics_addr, %admin_addr, "waypoint ready");
    Ok(Running {
        hbone_addr,
        readiness_addr,
        admin_addr,
        metrics_addr,
        metrics,
        config,
        identity,
        shutdown: shutdown_tx,
        hbone,
        background,
        control,
        _relay: relay_socket,
    })
}

impl Running {
    /// GOAWAY to every client, then waits (up to the grace period) for in-flight streams; then
    /// stops the relay and the control plane.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.hbone.await;
        for t in &self.background {
            t.abort();
        }
        drop(self.control);
        tracing::info!("waypoint stopped");
    }
}
