//! The compiled mesh state: Kubernetes objects compiled into an immutable [`Snapshot`] that the
//! data path reads without locks; a new snapshot replaces the old one atomically.
//!
//! Two sources feed it: [`crate::source::file`] (YAML files on disk, no API server needed) and
//! [`crate::source::kube`] (watchers on the API server). Both keep a [`Store`] of the objects
//! they read and publish snapshots built from it by the one [`assemble::Assembler`]; the
//! policies and the destinations are compiled separately, so an endpoint change reuses the
//! compiled policies.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub mod assemble;
pub mod layered;

use arc_swap::ArcSwap;
use gateway_api_bindings::destinations::{Destinations, Findings};
use gateway_api_bindings::mesh_rules::ServiceEntryVisibility;
use gateway_api_bindings::{ObjectKey, Origin, Store, WaypointIdentity, limits, status};
use policy_engine::Authorizer;

use crate::authn::Authn;
use layered::{Layered, LayeredSettings};
use policy_engine::path::PathNormalization;

/// Mesh-wide settings that do not come from the objects themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    /// Our Gateway; when `None`, the config must hold exactly one waypoint Gateway.
    pub gateway: Option<ObjectKey>,
    pub root_namespace: String,
    pub trust_domain: String,
    /// Mesh config `trustDomainAliases`: other trust domains whose workloads are ours (after a
    /// trust domain migration). A peer's SPIFFE ID must be in `trust_domain` or one of these.
    pub trust_domain_aliases: Vec<String>,
    pub path_normalization: PathNormalization,
    /// Mesh config `serviceEntryVisibility`: which ServiceEntries may bind to another
    /// namespace's waypoint (see `gateway_api_bindings::waypoint`).
    pub service_entry_visibility: ServiceEntryVisibility,
    /// Layered L4 policy at HBONE termination; `None` (the default, as istiod's) leaves it off.
    pub layered: Option<LayeredSettings>,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            gateway: None,
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: Vec::new(),
            path_normalization: PathNormalization::Base,
            service_entry_visibility: ServiceEntryVisibility::default(),
            layered: None,
        }
    }
}

impl MeshSettings {
    /// The trust domain, then its aliases.
    pub fn trust_domains(&self) -> Arc<[String]> {
        std::iter::once(&self.trust_domain)
            .chain(&self.trust_domain_aliases)
            .cloned()
            .collect()
    }
}

/// Why a config was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{} object(s) could not be read:\n  {}", .0.len(), .0.join("\n  "))]
    Objects(Vec<String>),
    #[error(
        "no waypoint Gateway (class istio-waypoint or an HBONE listener) in the config; name one with --gateway"
    )]
    NoGateway,
    #[error("several waypoint Gateways in the config ({0}); choose one with --gateway")]
    AmbiguousGateway(String),
}

/// Istio's validation errors of every AuthorizationPolicy and RequestAuthentication in `store`,
/// one line each (bounded). Any of them makes a file config invalid, as the admission webhook
/// would have refused the object; `authz eval` refuses the config for the same reason.
pub fn invalid_policies(store: &Store, root: &str) -> Vec<String> {
    let mut invalid = Vec::new();
    let mut report = |kind: &str, key: &ObjectKey, origin: &Origin, st: status::PolicyStatus| {
        for e in &st.errors {
            invalid.push(format!(
                "{origin}: {kind} {key}: {}: {}",
                e.field,
                limits::shown_max(&e.message, 512)
            ));
        }
    };
    for (key, ap) in &store.authorization_policies {
        let st = status::authorization_policy(store, &ap.object, root);
        report("AuthorizationPolicy", key, &ap.origin, st);
    }
    for (key, ra) in &store.request_authentications {
        let st = status::request_authentication(store, &ra.object, root);
        report("RequestAuthentication", key, &ra.origin, st);
    }
    invalid
}

/// Everything the data path needs, compiled once. Parts are shared between snapshots when they
/// did not change.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub waypoint: WaypointIdentity,
    pub authorizer: Arc<Authorizer>,
    /// RequestAuthentication rules; JWKS fetched for them are shared across snapshots.
    pub authn: Arc<Authn>,
    pub destinations: Arc<Destinations>,
    pub path_normalization: PathNormalization,
    /// The trust domain and its aliases: the only ones a peer's SPIFFE ID may be in.
    pub trust_domains: Arc<[String]>,
    /// Objects that name this waypoint and are refused, and addresses claimed twice: what
    /// `/config_dump` shows an operator (each was logged once and counted when it appeared).
    pub findings: Arc<Findings>,
    /// The policies a ztunnel in front of the waypoint would enforce; `None` when layered L4
    /// policy is off.
    pub layered: Option<Arc<Layered>>,
}

static VERSIONS: AtomicU64 = AtomicU64::new(1);

/// A process-wide increasing snapshot version.
pub fn next_version() -> u64 {
    VERSIONS.fetch_add(1, Ordering::Relaxed)
}

impl Snapshot {
    /// Serves nothing: every destination is unknown. Used until a source has synced.
    pub fn empty(settings: &MeshSettings) -> Snapshot {
        let gateway = settings
            .gateway
            .clone()
            .unwrap_or_else(|| ObjectKey::new("", ""));
        Snapshot {
            version: next_version(),
            waypoint: WaypointIdentity {
                gateway,
                class: gateway_api_bindings::well_known::WAYPOINT_CLASS.to_owned(),
                root_namespace: settings.root_namespace.clone(),
            },
            authorizer: Arc::new(policy_engine::AuthorizerBuilder::new().build()),
            authn: Arc::new(Authn::none()),
            destinations: Arc::default(),
            path_normalization: settings.path_normalization,
            trust_domains: settings.trust_domains(),
            findings: Arc::default(),
            layered: None,
        }
    }

    /// `/config_dump`: the loaded objects (`store`, what the snapshot was built from) and the
    /// compiled policies.
    pub fn dump(&self, store: &Store) -> serde_json::Value {
        let keys = |m: Vec<String>| serde_json::Value::from(m);
        let services: Vec<_> = {
            let mut v: Vec<_> = self
                .destinations
                .services
                .iter()
                .map(|(addr, d)| {
                    serde_json::json!({
                        "address": addr.to_string(),
                        "service": d.service.to_string(),
                        "protocol": format!("{:?}", d.protocol),
                        "endpoints": d.endpoints.iter().map(|e| serde_json::json!({
                            "address": e.address.to_string(),
                            "identity": e.identity,
                            "pod": e.pod.as_ref().map(ToString::to_string),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            v.sort_by_key(|d| d["address"].as_str().map(str::to_owned));
            v
        };
        let mut workloads: Vec<_> = self
            .destinations
            .workloads
            .values()
            .map(|w| serde_json::json!({"ip": w.ip.to_string(), "pod": w.pod.to_string(), "identity": w.identity}))
            .collect();
        workloads.sort_by_key(|d| d["ip"].as_str().map(str::to_owned));
        serde_json::json!({
            "version": self.version,
            "waypoint": self.waypoint.gateway.to_string(),
            "pathNormalization": format!("{:?}", self.path_normalization),
            "objects": {
                "gateways": keys(store.gateways.keys().map(ToString::to_string).collect()),
                "namespaces": keys(store.namespaces.keys().cloned().collect()),
                "services": keys(store.services.keys().map(ToString::to_string).collect()),
                "endpointSlices": keys(store.endpoint_slices.keys().map(ToString::to_string).collect()),
                "pods": keys(store.pods.keys().map(ToString::to_string).collect()),
                "serviceEntries": keys(store.service_entries.keys().map(ToString::to_string).collect()),
                "workloadEntries": keys(store.workload_entries.keys().map(ToString::to_string).collect()),
                "authorizationPolicies": keys(store.authorization_policies.keys().map(ToString::to_string).collect()),
                "requestAuthentications": keys(store.request_authentications.keys().map(ToString::to_string).collect()),
            },
            "destinations": {"services": services, "workloads": workloads},
            "attachment": self
                .findings
                .all(&self.waypoint.gateway)
                .iter()
                .map(|f| serde_json::json!({"finding": f.kind(), "message": f.to_string()}))
                .collect::<Vec<_>>(),
            "requestAuthentication": self.authn.dump(),
            "layeredL4": self.layered.as_ref().map(|l| l.dump()),
            "policies": self.authorizer.policies().iter().map(|p| serde_json::json!({
                "policy": p.to_string(),
                "action": p.action.as_str(),
                "provider": p.provider,
                "dryRun": p.dry_run,
            })).collect::<Vec<_>>(),
            "compiledRules": self.authorizer.compiled_rules(),
        })
    }
}

/// The current snapshot, shared by the data path and config sources, plus the objects behind
/// it (for `/config_dump` and status, never read on the data path).
#[derive(Debug)]
pub struct StateHandle {
    current: ArcSwap<Snapshot>,
    store: Arc<Mutex<Store>>,
    synced: AtomicBool,
}

impl StateHandle {
    /// A handle serving `initial`, already synced (the file source loads before it starts).
    pub fn new(initial: Snapshot, store: Store) -> Arc<StateHandle> {
        Arc::new(StateHandle {
            current: ArcSwap::from_pointee(initial),
            store: Arc::new(Mutex::new(store)),
            synced: AtomicBool::new(true),
        })
    }

    /// A handle that is not ready until a source calls [`StateHandle::mark_synced`].
    pub fn unsynced(initial: Snapshot) -> Arc<StateHandle> {
        Arc::new(StateHandle {
            current: ArcSwap::from_pointee(initial),
            store: Arc::default(),
            synced: AtomicBool::new(false),
        })
    }

    /// The data path's read: the snapshot in force now, lock-free. Hold it for one request or
    /// stream; the next load sees whatever was published since.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A source's write: replaces the snapshot atomically.
    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// The objects the current snapshot was built from.
    pub fn objects(&self) -> MutexGuard<'_, Store> {
        // A panic while a source held the lock leaves a store that is still a valid index.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shared with a source that mutates it in place.
    pub fn objects_handle(&self) -> Arc<Mutex<Store>> {
        self.store.clone()
    }

    /// Whether the source has delivered a complete view at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let snapshot = self.load();
        let mut d = snapshot.dump(&self.objects());
        d["synced"] = self.is_synced().into();
        d
    }
}
