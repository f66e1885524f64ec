//! The one snapshot assembler: a [`Store`] and the mesh settings in, a [`Snapshot`] out. Both
//! sources use it; they differ only in the [`Validation`] they pass and in how much they say
//! changed (the file source rebuilds everything on every load, the Kubernetes source says what
//! its updates touched, so an endpoint change reuses the compiled policies).

use std::sync::Arc;

use gateway_api_bindings::destinations::{Changed, DestinationBuilder};
use gateway_api_bindings::{ObjectKey, Store, WaypointIdentity, authorizer_for};
use policy_engine::Authorizer;

use super::layered::Layered;
use super::{ConfigError, MeshSettings, Snapshot, invalid_policies, next_version};
use crate::authn::Authn;
use crate::authn::jwks::JwksRegistry;

/// What a source does about AuthorizationPolicies and RequestAuthentications that Istio's
/// admission webhook would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Any invalid one refuses the whole config, as applying the files to a cluster would fail;
    /// the last good snapshot keeps serving (the file source).
    RefuseConfig,
    /// The source keeps invalid objects out of the store as they arrive, with their previous
    /// valid version in force, and reports them in status; what the store holds is assembled
    /// as it is (the Kubernetes source).
    KeptOut,
}

/// What changed since the previous snapshot, so the assembler rebuilds only that.
#[derive(Debug, Default)]
pub struct Changes {
    /// Rebuild everything: the mesh settings changed (the trust domain is in every
    /// destination's identity).
    pub settings: bool,
    /// AuthorizationPolicies, or what binds them (our Gateway, GatewayClasses).
    pub policies: bool,
    /// RequestAuthentications.
    pub authn: bool,
    /// Services, endpoints and workloads.
    pub destinations: Changed,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.settings || self.policies || self.authn || !self.destinations.is_empty()
    }
}

/// Builds snapshots, keeping what the previous one compiled for reuse.
#[derive(Debug)]
pub struct Assembler {
    validation: Validation,
    /// `None` until the first snapshot.
    destinations: Option<DestinationBuilder>,
    authorizer: Arc<Authorizer>,
    authn: Arc<Authn>,
    layered: Option<Arc<Layered>>,
}

/// The result of one assembly.
#[derive(Debug)]
pub struct Assembled {
    pub snapshot: Snapshot,
    /// Whether the policies were compiled anew (rather than reused).
    pub policies_recompiled: bool,
}

impl Assembler {
    pub fn new(validation: Validation) -> Assembler {
        Assembler {
            validation,
            destinations: None,
            authorizer: Arc::new(policy_engine::AuthorizerBuilder::new().build()),
            authn: Arc::new(Authn::none()),
            layered: None,
        }
    }

    /// Everything from `store` (a source's first snapshot, or a file load).
    pub fn assemble_all(
        &mut self,
        store: &Store,
        settings: &MeshSettings,
        jwks: &JwksRegistry,
    ) -> Result<Snapshot, ConfigError> {
        let all = Changes {
            settings: true,
            ..Changes::default()
        };
        Ok(self.assemble(store, settings, jwks, &all)?.snapshot)
    }

    /// A snapshot of `store`, recompiling what `changes` touched (everything, the first time).
    pub fn assemble(
        &mut self,
        store: &Store,
        settings: &MeshSettings,
        jwks: &JwksRegistry,
        changes: &Changes,
    ) -> Result<Assembled, ConfigError> {
        if self.validation == Validation::RefuseConfig {
            let invalid = invalid_policies(store, &settings.root_namespace);
            if !invalid.is_empty() {
                return Err(ConfigError::Objects(invalid));
            }
        }
        let gateway = our_gateway(store, settings)?;
        let waypoint = WaypointIdentity::from_store(store, gateway, &settings.root_namespace);
        let first = self.destinations.is_none();
        let destinations = match &mut self.destinations {
            Some(b) if !changes.settings => {
                b.update(store, &changes.destinations);
                b
            }
            slot => {
                let mut b =
                    DestinationBuilder::new(waypoint.gateway.clone(), &settings.trust_domain);
                b.rebuild(store);
                slot.insert(b)
            }
        };
        let destinations = Arc::new(destinations.destinations().clone());
        let policies_recompiled = first || changes.settings || changes.policies;
        if policies_recompiled {
            self.authorizer = Arc::new(authorizer_for(store, &waypoint));
        }
        if policies_recompiled || changes.authn {
            self.authn = Arc::new(Authn::compile(store, &waypoint, jwks));
        }
        // Layered L4 policy reads the policies and the waypoint's own Pod (its labels).
        self.layered = match &settings.layered {
            None => None,
            Some(l) => match &self.layered {
                Some(prev)
                    if !policies_recompiled
                        && !l
                            .pod(&waypoint.gateway)
                            .is_some_and(|p| changes.destinations.pods.contains(&p)) =>
                {
                    Some(prev.clone())
                }
                _ => Some(Arc::new(Layered::compile(store, &waypoint, l))),
            },
        };
        Ok(Assembled {
            snapshot: Snapshot {
                version: next_version(),
                waypoint,
                authorizer: self.authorizer.clone(),
                authn: self.authn.clone(),
                destinations,
                path_normalization: settings.path_normalization,
                trust_domains: settings.trust_domains(),
                layered: self.layered.clone(),
            },
            policies_recompiled,
        })
    }
}

/// The Gateway named in the settings, else the only waypoint Gateway in `store`.
fn our_gateway(store: &Store, settings: &MeshSettings) -> Result<ObjectKey, ConfigError> {
    if let Some(g) = &settings.gateway {
        return Ok(g.clone());
    }
    let mut wps = store
        .gateways
        .iter()
        .filter(|(_, g)| gateway_api_bindings::waypoint::is_waypoint(&g.object))
        .map(|(k, _)| k.clone());
    match (wps.next(), wps.next()) {
        (Some(g), None) => Ok(g),
        (None, _) => Err(ConfigError::NoGateway),
        (Some(a), Some(b)) => Err(ConfigError::AmbiguousGateway(format!("{a}, {b}, ..."))),
    }
}
