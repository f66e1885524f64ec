//! `waypoint run`: flags and environment to [`Settings`], built here and nowhere else; then the
//! data runtime, [`waypoint::app::start`], and signals to a graceful drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use gateway_api_bindings::ObjectKey;
use policy_engine::path::PathNormalization;
use waypoint::identity::workload_api::socket_path;
use waypoint::identity::{CaOptions, IdentitySource};
use waypoint::settings::{MeshOverrides, Settings, Source};
use waypoint::source::kube::KubeSettings;
use waypoint::tls::dev_ca::DevCa;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum IdentityKind {
    /// --cert-chain, --key and --trust-bundle, re-read when they change.
    Files,
    /// An in-memory CA; nothing else trusts it.
    DevCa,
    /// Istio's CA (istiod), with the service account token.
    IstioCa,
    /// A SPIFFE Workload API agent (SPIRE) on a Unix socket.
    Spiffe,
}

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// A YAML file (multi-document) or a directory of them: Gateway, Services, EndpointSlices,
    /// Pods, Namespaces, AuthorizationPolicies. Watched; valid changes apply without a restart.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    config: Option<PathBuf>,
    /// Read the config from the Kubernetes API server (see --kubeconfig for how it is found).
    #[arg(long)]
    kubernetes: bool,
    /// A kubeconfig file for --kubernetes [default: as kube's Config::infer: the files in
    /// $KUBECONFIG, else ~/.kube/config, else the in-cluster service account].
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// Our Gateway as `namespace/name`. With --kubernetes it defaults to $GATEWAY_NAME in
    /// $POD_NAMESPACE; with --config it is needed only when the files hold several waypoints.
    #[arg(long)]
    gateway: Option<String>,
    /// Istio's mesh ConfigMap (`namespace/name`, key `mesh`), read with --kubernetes.
    #[arg(long, default_value = "istio-system/istio")]
    mesh_config: String,
    /// Do not write policy and Gateway status (no Lease either).
    #[arg(long)]
    no_status: bool,
    /// Kubernetes' cluster domain: the Gateway's status address is `<svc>.<ns>.svc.<domain>`.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Also write `Accepted` on the GatewayClasses whose controllerName is
    /// `rust-waypoint.io/controller` (set by the release that owns the class).
    #[arg(long, requires = "kubernetes")]
    gateway_class_status: bool,
    /// Istio's root namespace [default: the mesh config's, else istio-system].
    #[arg(long)]
    root_namespace: Option<String>,
    /// [default: the mesh config's, else cluster.local]
    #[arg(long)]
    trust_domain: Option<String>,
    /// Another trust domain whose peers are ours (repeatable) [default: the mesh config's
    /// `trustDomainAliases`]. A peer's single SPIFFE ID must be in the trust domain or an alias.
    #[arg(long = "trust-domain-alias")]
    trust_domain_aliases: Vec<String>,
    /// Mesh `pathNormalization`: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES
    /// [default: the mesh config's, else BASE].
    #[arg(long)]
    path_normalization: Option<String>,
    /// Where the workload certificate comes from [default: files with --cert-chain, dev-ca with
    /// --dev-ca, else istio-ca].
    #[arg(long, value_enum)]
    identity: Option<IdentityKind>,
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
    /// Short for --identity dev-ca.
    #[arg(long)]
    dev_ca: bool,
    /// Istio CA (istiod) address, host:port; the host must be in istiod's serving certificate.
    #[arg(long, env = "CA_ADDR", default_value = "istiod.istio-system.svc:15012")]
    ca_address: String,
    /// Mesh root certificate(s), PEM: verifies istiod and becomes the trust bundle. Watched, so a
    /// root rotation (several roots at once) applies without a restart.
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    ca_root_cert: PathBuf,
    /// Projected service account token (audience istio-ca) sent to the CA; re-read every time.
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    ca_token: PathBuf,
    /// Sent to the CA as the ClusterID header.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// Our service account [default: $SERVICE_ACCOUNT, else the Gateway's name, which is what
    /// Istio names a waypoint's service account].
    #[arg(long, env = "SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// Certificate lifetime asked of the CA; renewal starts at half of it.
    #[arg(long, default_value_t = 24 * 3600)]
    cert_lifetime_seconds: u64,
    /// SPIFFE Workload API socket for --identity spiffe (`unix://` prefix optional).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", default_value = waypoint::identity::workload_api::DEFAULT_SOCKET)]
    workload_api_socket: String,
    #[arg(long, default_value = "[::]:15008")]
    hbone_addr: SocketAddr,
    #[arg(long, default_value = "[::]:15021")]
    readiness_addr: SocketAddr,
    #[arg(long, default_value = "[::]:15020")]
    metrics_addr: SocketAddr,
    /// `/config_dump`; keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// This pod's IP (repeatable; Istio sets INSTANCE_IP from status.podIP): a destination on it
    /// is this waypoint and is refused. Loopback and addresses of local interfaces count too.
    #[arg(long = "pod-ip", env = "INSTANCE_IP", value_delimiter = ',')]
    pod_ips: Vec<std::net::IpAddr>,
    /// Seconds a client has to finish the TLS handshake.
    #[arg(long, default_value_t = 10)]
    tls_handshake_timeout_seconds: u64,
    /// Seconds from TLS to the client's HTTP/2 preface.
    #[arg(long, default_value_t = 10)]
    h2_preface_timeout_seconds: u64,
    /// Seconds an HBONE connection may stay without a stream before GOAWAY.
    #[arg(long, default_value_t = 300)]
    connection_idle_timeout_seconds: u64,
    /// Seconds a tunnel to an HTTP port may stay without its first byte.
    #[arg(long, default_value_t = 10)]
    first_byte_timeout_seconds: u64,
    /// Seconds a tunnel may pass no byte in either direction.
    #[arg(long, default_value_t = 300)]
    stream_idle_timeout_seconds: u64,
    /// Seconds from a request's first byte to the end of its headers (HTTP/1); 408 after.
    #[arg(long, default_value_t = 10)]
    request_headers_timeout_seconds: u64,
    /// Seconds a client on a port with no declared protocol may send nothing before its tunnel
    /// is closed, where an HTTP rule or RequestAuthentication applies (Envoy's listener filter
    /// timeout); elsewhere silence of 1 s makes the tunnel opaque TCP (server-first protocols).
    #[arg(long, default_value_t = 15)]
    protocol_detection_timeout_seconds: u64,
    /// Largest HTTP/1 request head (request line and header fields) in KiB; larger gets 431
    /// (Envoy's max_request_headers_kb). 1..=1023.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=1023))]
    max_request_headers_kb: u64,
    /// Most header fields in one HTTP/1 request; more gets 431 (Envoy's max_headers_count).
    /// 1..=256.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=256))]
    max_request_headers_count: u64,
    /// Serve HTTP/1.0 requests instead of answering 426 (Envoy's accept_http_10; istiod's
    /// PILOT_HTTP10).
    #[arg(long, env = "PILOT_HTTP10", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    accept_http10: bool,
    /// Port of destination ztunnels' HBONE listeners.
    #[arg(long, default_value_t = 15008, hide = true)]
    upstream_hbone_port: u16,
    /// Seconds in-flight streams get to finish after SIGTERM.
    #[arg(long, default_value_t = 20)]
    drain_grace_seconds: u64,
    /// PEM CA certificates trusted for fetching JWKS over HTTPS, besides the system's roots.
    #[arg(long)]
    jwks_ca: Option<PathBuf>,
    /// A range JWKS fetches may not connect to, besides link-local and cloud metadata addresses
    /// (repeatable, or comma-separated as istiod's BLOCKED_CIDRS_IN_JWKS_URIS), e.g. 10.0.0.0/8.
    #[arg(
        long = "jwks-blocked-cidr",
        env = "BLOCKED_CIDRS_IN_JWKS_URIS",
        value_delimiter = ','
    )]
    jwks_blocked_cidrs: Vec<String>,
    /// Seconds any one JWKS fetch may take, whatever a jwtRule's `timeout` says.
    #[arg(long, default_value_t = 10)]
    jwks_max_fetch_seconds: u64,
    /// Seconds a request waits for a JWKS fetch in flight before it is answered without the
    /// keys (401), at most the fetch's own timeout.
    #[arg(long, default_value_t = 5)]
    jwks_max_wait_seconds: u64,
    /// Enforce, at HBONE termination, the selector, namespace-wide and root-namespace
    /// AuthorizationPolicies a ztunnel would enforce for the waypoint's own pod (L4 only), as
    /// istiod's ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES.
    #[arg(
        long,
        env = "ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    layered_authorization_policies: bool,
    /// Largest JWKS (or OIDC discovery document) read.
    #[arg(long, default_value_t = waypoint::authn::jwks::DEFAULT_MAX_BYTES)]
    jwks_max_bytes: usize,
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = settings(args, |k| std::env::var(k).ok().filter(|v| !v.is_empty()))?;
    // The data path's runtime: every core. The control plane gets its own (see waypoint::app).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let running = waypoint::app::start(settings).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down: GOAWAY sent, draining in-flight streams");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The process's settings from the flags and `env`, the environment variables clap does not
/// read for a flag: `GATEWAY_NAME` and `POD_NAMESPACE` (our Gateway with --kubernetes) and
/// `POD_NAME` (the Lease holder's name, and the Pod whose labels layered L4 policy matches).
/// Empty values count as unset.
fn settings(args: RunArgs, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
    let path_normalization = match &args.path_normalization {
        Some(p) => Some(
            PathNormalization::parse(p)
                .with_context(|| format!("unknown --path-normalization {p:?}"))?,
        ),
        None => None,
    };
    let key = |flag: &str, v: &str| match v.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(ObjectKey::new(ns, name)),
        _ => bail!("{flag} must be namespace/name, got {v:?}"),
    };
    let mut gateway = match &args.gateway {
        Some(g) => Some(key("--gateway", g)?),
        None => None,
    };
    if args.kubernetes && gateway.is_none() {
        let (Some(name), Some(ns)) = (env("GATEWAY_NAME"), env("POD_NAMESPACE")) else {
            bail!(
                "--kubernetes needs --gateway namespace/name (or GATEWAY_NAME and POD_NAMESPACE)"
            );
        };
        gateway = Some(ObjectKey::new(ns, name));
    }
    let mesh = MeshOverrides {
        root_namespace: args.root_namespace.clone(),
        trust_domain: args.trust_domain.clone(),
        trust_domain_aliases: (!args.trust_domain_aliases.is_empty())
            .then(|| args.trust_domain_aliases.clone()),
        path_normalization,
        layered: args.layered_authorization_policies.then(|| {
            waypoint::state::layered::LayeredSettings {
                pod_name: env("POD_NAME"),
            }
        }),
    };
    let source = match (&args.config, gateway) {
        (Some(path), gateway) => Source::File {
            path: path.clone(),
            gateway,
        },
        (None, Some(gateway)) => {
            let mut k = KubeSettings::new(gateway);
            k.kubeconfig = args.kubeconfig.clone();
            k.mesh_config = key("--mesh-config", &args.mesh_config)?;
            if args.no_status {
                k.status = None;
            }
            if let (Some(lease), Some(pod)) = (&mut k.status, env("POD_NAME")) {
                lease.identity = pod;
            }
            k.gateway_status.cluster_domain = args.cluster_domain.clone();
            k.gateway_status.class_status = args.gateway_class_status;
            Source::Kubernetes(Box::new(k))
        }
        (None, None) => bail!("give --config PATH or --kubernetes"),
    };
    let kind = match (args.identity, &args.cert_chain, args.dev_ca) {
        (Some(k), _, false) => k,
        (None, Some(_), false) => IdentityKind::Files,
        (None | Some(IdentityKind::DevCa), None, true) => IdentityKind::DevCa,
        (_, Some(_), true) => bail!("give either --cert-chain or --dev-ca"),
        (Some(k), _, true) => bail!(
            "--dev-ca contradicts --identity {}",
            clap::ValueEnum::to_possible_value(&k)
                .map_or_else(String::new, |v| v.get_name().to_owned())
        ),
        (None, None, false) => IdentityKind::IstioCa,
    };
    // Without a mesh ConfigMap: flags, then Istio's defaults.
    let mesh_settings = mesh.resolve(None, source.gateway());
    let trust_domain = &mesh_settings.trust_domain;
    // The waypoint's service account is named after its Gateway, in the Gateway's namespace.
    let our_gateway = || -> anyhow::Result<ObjectKey> {
        Ok(match &source {
            Source::File { path, .. } => {
                // Only the Gateway's name is needed here: nothing is fetched.
                let jwks = waypoint::authn::jwks::JwksRegistry::new(
                    Default::default(),
                    None,
                    Default::default(),
                );
                let (snapshot, _) = waypoint::source::file::load(path, &mesh_settings, &jwks)
                    .with_context(|| format!("loading {}", path.display()))?;
                snapshot.waypoint.gateway
            }
            Source::Kubernetes(k) => k.gateway.clone(),
        })
    };
    let identity = match kind {
        IdentityKind::Files => match (args.cert_chain, args.key, args.trust_bundle) {
            (Some(cert_chain), Some(key), Some(trust_bundle)) => IdentitySource::Files {
                cert_chain,
                key,
                trust_bundle,
            },
            _ => bail!("--identity files needs --cert-chain, --key and --trust-bundle"),
        },
        IdentityKind::DevCa => {
            let gw = our_gateway()?;
            IdentitySource::DevCa {
                ca: Arc::new(DevCa::new("waypoint dev CA")?),
                spiffe_id: gateway_api_bindings::destinations::spiffe_id(
                    trust_domain,
                    &gw.namespace,
                    &gw.name,
                ),
            }
        }
        IdentityKind::IstioCa => {
            let gw = our_gateway()?;
            let sa = args.service_account.clone().unwrap_or(gw.name);
            let mut ca = CaOptions::new(gateway_api_bindings::destinations::spiffe_id(
                trust_domain,
                &gw.namespace,
                &sa,
            ));
            ca.address = args.ca_address.clone();
            ca.root_cert = args.ca_root_cert.clone();
            ca.token = args.ca_token.clone();
            ca.cluster_id = args.cluster_id.clone();
            ca.lifetime = Duration::from_secs(args.cert_lifetime_seconds.max(1));
            tracing::info!(ca = %ca.address, spiffe_id = %ca.spiffe_id, "workload certificate from the Istio CA");
            IdentitySource::IstioCa(Box::new(ca))
        }
        IdentityKind::Spiffe => {
            let socket = socket_path(&args.workload_api_socket);
            tracing::info!(socket = %socket.display(), "workload certificate from the SPIFFE Workload API");
            IdentitySource::WorkloadApi { socket }
        }
    };
    let mut settings = Settings::new(source, identity);
    settings.mesh = mesh;
    settings.hbone_addr = args.hbone_addr;
    settings.readiness_addr = args.readiness_addr;
    settings.metrics_addr = args.metrics_addr;
    settings.admin_addr = args.admin_addr;
    settings.upstream_hbone_port = args.upstream_hbone_port;
    settings.pod_ips = args.pod_ips.clone();
    let secs = |s: u64| Duration::from_secs(s.max(1));
    settings.server.timeouts = waypoint::hbone::server::Timeouts {
        tls_handshake: secs(args.tls_handshake_timeout_seconds),
        h2_preface: secs(args.h2_preface_timeout_seconds),
        connection_idle: secs(args.connection_idle_timeout_seconds),
        first_byte: secs(args.first_byte_timeout_seconds),
        stream_idle: secs(args.stream_idle_timeout_seconds),
        request_headers: secs(args.request_headers_timeout_seconds),
    };
    settings.server.drain_grace = Duration::from_secs(args.drain_grace_seconds);
    settings.protocol_detection_timeout = secs(args.protocol_detection_timeout_seconds);
    settings.http1 = waypoint::proxy::http1::Http1Settings {
        // Both are range-checked by clap, so they fit.
        max_request_headers_bytes: usize::try_from(args.max_request_headers_kb * 1024)
            .unwrap_or(waypoint::proxy::http1::MAX_HEAD_BYTES),
        max_request_headers_count: usize::try_from(args.max_request_headers_count)
            .unwrap_or(waypoint::proxy::http1::MAX_FIELDS),
        accept_http10: args.accept_http10,
    };
    if let Some(path) = &args.jwks_ca {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let pem =
            std::fs::read(path).with_context(|| format!("reading --jwks-ca {}", path.display()))?;
        settings.jwks.extra_roots = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .with_context(|| format!("--jwks-ca {}: not PEM certificates", path.display()))?;
    }
    settings.jwks.blocked = blocked_cidrs(&args.jwks_blocked_cidrs)?;
    settings.jwks.max_fetch_time = secs(args.jwks_max_fetch_seconds);
    // 0 is allowed: never hold a request for a fetch (what istiod's inlined keys amount to).
    settings.jwks.max_wait = Duration::from_secs(args.jwks_max_wait_seconds);
    settings.jwks.max_bytes = args.jwks_max_bytes.max(1);
    Ok(settings)
}

/// `--jwks-blocked-cidr` values: CIDRs, or single addresses. istiod skips a range it cannot
/// parse with a warning; here it stops the start, since a block list missing a range fails open.
fn blocked_cidrs(values: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<ipnet::IpNet>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| format!("--jwks-blocked-cidr {v:?} is not a CIDR range"))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn settings_from(flags: &[&str]) -> anyhow::Result<Settings> {
        settings_with_env(flags, &[])
    }

    fn settings_with_env(flags: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let mut argv = vec![
            "waypoint",
            "run",
            "--config",
            "/nonexistent",
            "--cert-chain",
            "c.pem",
            "--key",
            "k.pem",
            "--trust-bundle",
            "r.pem",
        ];
        argv.extend_from_slice(flags);
        let Command::Run(args) = Cli::try_parse_from(argv)?.command else {
            unreachable!("parsed `run`")
        };
        settings(*args, |k| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn layered_l4_is_off_unless_asked_and_knows_our_pod() {
        assert_eq!(
            settings_from(&[]).unwrap().mesh.layered,
            None,
            "istiod's default"
        );
        let s = settings_with_env(
            &["--layered-authorization-policies"],
            &[("POD_NAME", "waypoint-7d9f")],
        )
        .unwrap();
        assert_eq!(
            s.mesh.layered,
            Some(waypoint::state::layered::LayeredSettings {
                pod_name: Some("waypoint-7d9f".into())
            })
        );
    }

    #[test]
    fn jwks_fetch_bounds_default_and_parse() {
        let s = settings_from(&[]).unwrap();
        assert_eq!(s.jwks.max_fetch_time, Duration::from_secs(10));
        assert_eq!(s.jwks.max_wait, Duration::from_secs(5));
        assert_eq!(s.jwks.max_bytes, 16 << 20);
        assert!(
            s.jwks.blocked.is_empty(),
            "istiod blocks no extra range by default"
        );

        let s = settings_from(&[
            "--jwks-blocked-cidr",
            "10.0.0.0/8, fd00::/8",
            "--jwks-blocked-cidr",
            "192.0.2.1",
            "--jwks-max-fetch-seconds",
            "3",
            "--jwks-max-wait-seconds",
            "1",
            "--jwks-max-bytes",
            "65536",
        ])
        .unwrap();
        let blocked: Vec<String> = s.jwks.blocked.iter().map(ToString::to_string).collect();
        assert_eq!(blocked, ["10.0.0.0/8", "fd00::/8", "192.0.2.1/32"]);
        assert_eq!(s.jwks.max_fetch_time, Duration::from_secs(3));
        assert_eq!(s.jwks.max_wait, Duration::from_secs(1));
        assert_eq!(s.jwks.max_bytes, 65536);

        let e = settings_from(&["--jwks-blocked-cidr", "10.0.0.0/33"]).unwrap_err();
        assert!(
            format!("{e:#}").contains("--jwks-blocked-cidr \"10.0.0.0/33\" is not a CIDR range"),
            "{e:#}"
        );
    }
}
