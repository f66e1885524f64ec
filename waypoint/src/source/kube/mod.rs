//! The Kubernetes config source: watchers on the API server feed the same [`Store`] the file
//! source loads, and a sync thread publishes snapshots from it.
//!
//! * `client`: the connection, and what a failed request tells an operator (URL, status, the
//!   RBAC rule a 403 asks for).
//! * `retry`: the backoff of failing lists and watches, and the pacing of status writes.
//! * [`own_pods`]: the Gateway's pods' readiness, read from the store's pod watch.
//! * [`watch`]: one kube-runtime watcher per kind, names from the bindings' resource table
//!   (`gateway_api_bindings::api`); CRDs looked up in discovery first, so a missing one counts
//!   as empty; backoff on errors, relist after a 410.
//! * [`sync`]: debounced, incremental snapshot builds; readiness after the first full sync.
//! * [`status_writer`] and [`lease`]: policy conditions written by the Lease holder;
//!   [`gateway_status`]: its Gateway's `Accepted`, `Programmed` and addresses, and `Accepted` on
//!   our GatewayClass.
//! * [`mesh_config`]: root namespace, trust domain and path normalization from Istio's mesh
//!   ConfigMap, unless flags say otherwise.
//!
//! An API server that is down at start-up or later costs nothing but freshness: once the first
//! snapshot is out it keeps serving, and watchers retry with backoff. Before that nothing is
//! served: readiness stays false until every kind has been listed once.
//!
//! [`Store`]: gateway_api_bindings::Store

mod client;
pub mod gateway_status;
pub mod lease;
pub mod mesh_config;
pub mod own_pods;
mod retry;
mod status_write;
pub mod status_writer;
pub mod sync;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gateway_api_bindings::ObjectKey;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

use self::client::Connection;
use self::gateway_status::GatewayStatusOptions;
use self::lease::LeaseOptions;
use self::mesh_config::MeshOverrides;
use self::own_pods::OwnPodsTracker;
use crate::authn::jwks::JwksRegistry;
use crate::metrics::Metrics;
use crate::state::StateHandle;

/// Our own field manager for status writes.
pub const FIELD_MANAGER: &str = "rust-waypoint";

/// The Kubernetes source's own inputs.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Our Gateway.
    pub gateway: ObjectKey,
    /// A kubeconfig file; otherwise `kube::Config::infer`: the files in `KUBECONFIG`, else
    /// `~/.kube/config`, else the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Istio's mesh ConfigMap.
    pub mesh_config: ObjectKey,
    /// A burst of changes ends after this much quiet...
    pub debounce: Duration,
    /// ...or after this long at most.
    pub max_delay: Duration,
    /// `None`: never write status (a read-only replica, or RBAC without status rights).
    pub status: Option<LeaseOptions>,
    /// The cluster domain and whether to write GatewayClass status.
    pub gateway_status: GatewayStatusOptions,
    /// How often to look again for a CRD that is not installed (its kind counts as empty
    /// meanwhile).
    pub crd_recheck: Duration,
}

impl KubeSettings {
    /// Defaults for `gateway`. The Lease holder is named `waypoint-<pid>` until the caller
    /// names it (the binary uses the pod's name).
    pub fn new(gateway: ObjectKey) -> KubeSettings {
        KubeSettings {
            kubeconfig: None,
            mesh_config: ObjectKey::new("istio-system", "istio"),
            debounce: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
            status: Some(LeaseOptions {
                namespace: gateway.namespace.clone(),
                name: format!("{}-waypoint-status", gateway.name),
                identity: format!("waypoint-{}", std::process::id()),
                duration: Duration::from_secs(15),
                renew_every: Duration::from_secs(2),
            }),
            gateway_status: GatewayStatusOptions::default(),
            crd_recheck: Duration::from_secs(60),
            gateway,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes client config (in-cluster or kubeconfig): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("starting the config sync thread: {0}")]
    Thread(std::io::Error),
}

/// Starts the watchers, the sync thread and (when enabled) the status writer. Returns at once:
/// readiness follows the first full sync.
pub async fn start(
    opts: KubeSettings,
    mesh: MeshOverrides,
    handle: Arc<StateHandle>,
    metrics: Arc<Metrics>,
    jwks: Arc<JwksRegistry>,
) -> Result<Vec<JoinHandle<()>>, KubeError> {
    let conn = Connection::new(opts.kubeconfig.as_ref()).await?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (status_tx, status_rx) = tokio_watch::channel(Arc::default());
    let sync = sync::StateUpdater {
        gateway: opts.gateway.clone(),
        mesh,
        handle: handle.clone(),
        metrics: metrics.clone(),
        jwks,
        status: status_tx,
        quiet: opts.debounce,
        max_delay: opts.max_delay,
    };
    std::thread::Builder::new()
        .name("config-sync".into())
        .spawn(move || sync.run(rx))
        .map_err(KubeError::Thread)?;
    // The Gateway's pods' readiness rides on the store's pod watch (only the status writer
    // reads it).
    let (own_pods, pods) = match opts.status {
        Some(_) => {
            let (t, rx) = OwnPodsTracker::new(opts.gateway.clone());
            (Some(t), Some(rx))
        }
        None => (None, None),
    };
    let ctx = watch::WatchContext {
        conn: conn.clone(),
        tx,
        metrics: metrics.clone(),
        state: handle.clone(),
        crd_recheck: opts.crd_recheck,
    };
    let mut tasks = watch::spawn_all(&ctx, &opts.mesh_config, own_pods);
    drop(ctx);
    if let (Some(lease), Some(pods)) = (opts.status.clone(), pods) {
        let (leader_tx, leader_rx) = tokio_watch::channel(false);
        tasks.push(tokio::spawn(lease::elect(
            conn.clone(),
            lease,
            leader_tx,
            metrics.clone(),
        )));
        let writer = status_writer::StatusWriter {
            conn,
            gateway: opts.gateway.clone(),
            field_manager: FIELD_MANAGER.to_owned(),
            handle,
            metrics,
            own: gateway_status::OwnGateway {
                options: opts.gateway_status.clone(),
                pods,
            },
        };
        tasks.push(tokio::spawn(writer.run(status_rx, leader_rx)));
    }
    Ok(tasks)
}
