//! `waypoint run`: flags to [`waypoint::run::RunOptions`], signals to a graceful drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use gateway_api_bindings::ObjectKey;
use policy_engine::path::PathNormalization;
use waypoint::config::MeshSettings;
use waypoint::run::RunOptions;
use waypoint::tls::IdentitySource;
use waypoint::tls::dev_ca::DevCa;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// A YAML file (multi-document) or a directory of them: Gateway, Services, EndpointSlices,
    /// Pods, Namespaces, AuthorizationPolicies. Watched; valid changes apply without a restart.
    #[arg(long)]
    config: PathBuf,
    /// Our Gateway as `namespace/name`; needed only when the config holds several waypoints.
    #[arg(long)]
    gateway: Option<String>,
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Mesh `pathNormalization`: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES.
    #[arg(long, default_value = "BASE")]
    path_normalization: String,
    /// PEM certificate chain (leaf first) with the waypoint's SPIFFE ID; reloaded on change.
    #[arg(long, requires_all = ["key", "trust_bundle"], conflicts_with = "dev_ca")]
    cert_chain: Option<PathBuf>,
    /// PEM private key for --cert-chain.
    #[arg(long)]
    key: Option<PathBuf>,
    /// PEM mesh root certificate(s) peers must chain to.
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    /// Issue our own certificate from an in-memory CA (local use only: no ztunnel trusts it).
    #[arg(long)]
    dev_ca: bool,
    #[arg(long, default_value = "[::]:15008")]
    hbone_addr: SocketAddr,
    #[arg(long, default_value = "[::]:15021")]
    readiness_addr: SocketAddr,
    #[arg(long, default_value = "[::]:15020")]
    metrics_addr: SocketAddr,
    /// `/config_dump`; keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Port of destination ztunnels' HBONE listeners.
    #[arg(long, default_value_t = 15008, hide = true)]
    upstream_hbone_port: u16,
    /// Seconds in-flight streams get to finish after SIGTERM.
    #[arg(long, default_value_t = 20)]
    drain_grace_seconds: u64,
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: RunArgs) -> anyhow::Result<ExitCode> {
    let path_normalization = PathNormalization::parse(&args.path_normalization)
        .with_context(|| format!("unknown --path-normalization {:?}", args.path_normalization))?;
    let gateway = match &args.gateway {
        Some(g) => {
            let Some((ns, name)) = g.split_once('/') else {
                bail!("--gateway must be namespace/name, got {g:?}");
            };
            Some(ObjectKey::new(ns, name))
        }
        None => None,
    };
    let settings = MeshSettings {
        gateway,
        root_namespace: args.root_namespace,
        trust_domain: args.trust_domain,
        path_normalization,
    };
    let identity = match (args.cert_chain, args.key, args.trust_bundle, args.dev_ca) {
        (Some(cert_chain), Some(key), Some(trust_bundle), false) => IdentitySource::Files {
            cert_chain,
            key,
            trust_bundle,
        },
        (None, None, None, true) => {
            // The waypoint's service account is named after its Gateway.
            let snapshot = waypoint::config::file::load(&args.config, &settings)
                .with_context(|| format!("loading {}", args.config.display()))?;
            let gw = &snapshot.waypoint.gateway;
            let spiffe_id = gateway_api_bindings::mesh::spiffe_id(
                &settings.trust_domain,
                &gw.namespace,
                &gw.name,
            );
            IdentitySource::DevCa {
                ca: Arc::new(DevCa::new("waypoint dev CA")?),
                spiffe_id,
            }
        }
        _ => bail!("give --cert-chain, --key and --trust-bundle, or --dev-ca"),
    };
    let mut opts = RunOptions::new(args.config, identity);
    opts.settings = settings;
    opts.hbone_addr = args.hbone_addr;
    opts.readiness_addr = args.readiness_addr;
    opts.metrics_addr = args.metrics_addr;
    opts.admin_addr = args.admin_addr;
    opts.upstream_hbone_port = args.upstream_hbone_port;
    opts.server.drain_grace = Duration::from_secs(args.drain_grace_seconds);
    let running = waypoint::run::start(opts).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down: GOAWAY sent, draining in-flight streams");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
