//! The app: wires identity, config, the HBONE listener, the HTTP app, the upstream pool and
//! the admin listeners onto one tokio runtime, and drains them on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState, Role};
use crate::authn::jwks::{JwksOptions, JwksRegistry};
use crate::hbone::client::Connector;
use crate::hbone::server::{self, ServerSettings};
use crate::identity::{Identity, IdentitySource};
use crate::metrics::Metrics;
use crate::proxy::http::HttpApp;
use crate::proxy::inbound::Inbound;
use crate::proxy::own::OwnAddresses;
use crate::proxy::upstream::Upstream;
use crate::proxy::upstream::relay;
use crate::source::kube::KubeOptions;
use crate::state::{self, MeshSettings, Snapshot, StateHandle};

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A YAML file or directory, polled.
    File(PathBuf),
    /// The Kubernetes API server.
    Kubernetes(Box<KubeOptions>),
}

/// Everything `waypoint run` is told.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: ConfigSource,
    pub settings: MeshSettings,
    pub identity: IdentitySource,
    pub hbone_addr: SocketAddr,
    /// `/healthz/ready`.
    pub readiness_addr: SocketAddr,
    /// `/metrics`.
    pub metrics_addr: SocketAddr,
    /// `/config_dump` and everything else; keep it on loopback.
    pub admin_addr: SocketAddr,
    /// Where destination ztunnels listen (15008).
    pub upstream_hbone_port: u16,
    /// This pod's IPs: with listeners on `[::]`, what tells a destination that is us.
    pub pod_ips: Vec<std::net::IpAddr>,
    pub server: ServerSettings,
    pub poll_interval: Duration,
    /// JWKS fetching for RequestAuthentication.
    pub jwks: JwksOptions,
}

impl RunOptions {
    /// Defaults for everything but the config source and identity.
    pub fn new(config: ConfigSource, identity: IdentitySource) -> RunOptions {
        RunOptions {
            config,
            settings: MeshSettings::default(),
            identity,
            hbone_addr: SocketAddr::from(([0u16; 8], crate::hbone::HBONE_PORT)),
            readiness_addr: SocketAddr::from(([0u16; 8], 15021)),
            metrics_addr: SocketAddr::from(([0u16; 8], 15020)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 15000)),
            upstream_hbone_port: crate::hbone::HBONE_PORT,
            pod_ips: Vec::new(),
            server: ServerSettings::default(),
            poll_interval: Duration::from_secs(1),
            jwks: JwksOptions::default(),
        }
    }
}

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
    background: Vec<JoinHandle<()>>,
    _relay: relay::RelaySocket,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Loads identity and config, binds every listener, and starts serving.
pub async fn start(opts: RunOptions) -> Result<Running, StartError> {
    crate::tls::provider();
    let metrics = Arc::new(Metrics::default());
    let identity = Arc::new(Identity::new(opts.identity.clone(), metrics.clone())?);
    let mut background = Vec::new();
    let jwks = JwksRegistry::new(
        opts.jwks.clone(),
        Some(tokio::runtime::Handle::current()),
        metrics.clone(),
    );
    let config = match &opts.config {
        ConfigSource::File(path) => {
            let seen = crate::source::file::fingerprint(path);
            let (snapshot, store) = crate::source::file::load(path, &opts.settings, &jwks)?;
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
            background.push(tokio::spawn(crate::source::file::watch(
                path.clone(),
                seen,
                opts.settings.clone(),
                config.clone(),
                metrics.clone(),
                jwks.clone(),
                opts.poll_interval,
            )));
            config
        }
        ConfigSource::Kubernetes(k) => {
            let config = StateHandle::unsynced(Snapshot::empty(&opts.settings));
            background.extend(
                crate::source::kube::start(
                    (**k).clone(),
                    opts.settings.clone(),
                    config.clone(),
                    metrics.clone(),
                    jwks.clone(),
                )
                .await?,
            );
            tracing::info!(gateway = %k.gateway, "watching the Kubernetes API; ready after the first full sync");
            config
        }
    };

    let hbone_listener = bind("HBONE", opts.hbone_addr).await?;
    let readiness_listener = bind("readiness", opts.readiness_addr).await?;
    let admin_listener = bind("admin", opts.admin_addr).await?;
    let metrics_listener = bind("metrics", opts.metrics_addr).await?;
    let local = |l: &TcpListener, a| l.local_addr().unwrap_or(a);
    let hbone_addr = local(&hbone_listener, opts.hbone_addr);
    let admin_addr = local(&admin_listener, opts.admin_addr);
    let readiness_addr = local(&readiness_listener, opts.readiness_addr);
    let metrics_addr = local(&metrics_listener, opts.metrics_addr);

    let (relay_listener, relay_socket) = relay::bind().map_err(StartError::Relay)?;
    let mut upstream = Upstream::new(
        Connector::new(identity.clone(), opts.upstream_hbone_port, metrics.clone()),
        metrics.clone(),
    );
    upstream.own = OwnAddresses {
        listeners: vec![hbone_addr, readiness_addr, metrics_addr, admin_addr],
        pod_ips: opts.pod_ips.clone(),
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
    let inbound = Arc::new(Inbound {
        config: config.clone(),
        http: Arc::new(proxy),
        upstream: upstream.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown_rx.clone(),
        timeouts: opts.server.timeouts,
    });

    let ready = Arc::new(AtomicBool::new(false));
    let admin_state = AdminState {
        config: config.clone(),
        metrics: metrics.clone(),
        identity: identity.clone(),
        ready: ready.clone(),
    };
    background.extend([
        tokio::spawn(relay::serve(relay_listener, upstream)),
        tokio::spawn(admin::serve(
            readiness_listener,
            admin_state.clone(),
            Role::Readiness,
        )),
        tokio::spawn(admin::serve(
            admin_listener,
            admin_state.clone(),
            Role::Admin,
        )),
        tokio::spawn(admin::serve(metrics_listener, admin_state, Role::Metrics)),
        tokio::spawn(identity.clone().run(opts.poll_interval)),
    ]);
    let hbone = tokio::spawn(server::serve(
        hbone_listener,
        identity.clone(),
        inbound,
        opts.server.clone(),
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
        _relay: relay_socket,
    })
}

impl Running {
    /// GOAWAY to every client, then waits (up to the grace period) for in-flight streams.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.hbone.await;
        for t in &self.background {
            t.abort();
        }
        tracing::info!("waypoint stopped");
    }
}
