//! The process's settings: everything `waypoint run` is told, built once (from flags and
//! environment by the binary's `cli::run`, or directly by a test harness) and handed to
//! [`app::start`](crate::app::start). Nothing below this reads the environment.
//!
//! Each room still takes its own small typed input ([`ServerSettings`], [`IdentitySource`],
//! [`JwksOptions`], [`KubeSettings`]); they are built only from here.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use gateway_api_bindings::ObjectKey;

use crate::authn::jwks::JwksOptions;
use crate::hbone::server::ServerSettings;
use crate::identity::IdentitySource;
use crate::proxy::http1::Http1Settings;
use crate::source::kube::KubeSettings;
use crate::source::kube::mesh_config::MeshConfig;
pub use crate::source::kube::mesh_config::MeshOverrides;
use crate::state::MeshSettings;

/// Where the mesh objects come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A YAML file or directory, polled. `gateway`: our Gateway; when `None`, the files must
    /// hold exactly one waypoint Gateway.
    File {
        path: PathBuf,
        gateway: Option<ObjectKey>,
    },
    /// The Kubernetes API server.
    Kubernetes(Box<KubeSettings>),
}

impl Source {
    /// A file source that finds its Gateway in the files.
    pub fn file(path: impl Into<PathBuf>) -> Source {
        Source::File {
            path: path.into(),
            gateway: None,
        }
    }

    /// Our Gateway, when it is known before the config is read.
    pub fn gateway(&self) -> Option<&ObjectKey> {
        match self {
            Source::File { gateway, .. } => gateway.as_ref(),
            Source::Kubernetes(k) => Some(&k.gateway),
        }
    }
}

/// Everything `waypoint run` is told.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: Source,
    pub mesh: MeshOverrides,
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
    pub pod_ips: Vec<IpAddr>,
    /// The HBONE server's limits, timeouts and drain grace.
    pub server: ServerSettings,
    /// How often files (config, certificates, the mesh root) are checked for changes.
    pub poll_interval: Duration,
    /// JWKS fetching for RequestAuthentication.
    pub jwks: JwksOptions,
    /// How long a client on a port with no declared protocol may send nothing before its
    /// tunnel is closed, where L7 configuration applies (Envoy's listener filter timeout).
    pub protocol_detection_timeout: Duration,
    /// HTTP/1 codec limits (header bytes and count, HTTP/1.0).
    pub http1: Http1Settings,
}

impl Settings {
    /// Defaults for everything but the config source and identity.
    pub fn new(source: Source, identity: IdentitySource) -> Settings {
        Settings {
            source,
            mesh: MeshOverrides::default(),
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
            protocol_detection_timeout: crate::proxy::sniff::DEFAULT_DETECTION_TIMEOUT,
            http1: Http1Settings::default(),
        }
    }

    /// The mesh settings in force with `mesh_config` (the file source has none: flags and
    /// Istio's defaults).
    pub fn mesh_settings(&self, mesh_config: Option<&MeshConfig>) -> MeshSettings {
        self.mesh.resolve(mesh_config, self.source.gateway())
    }
}
