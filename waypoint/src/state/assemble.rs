//! The one snapshot assembler: a [`Store`] and the mesh settings in, a [`Snapshot`] out. Both
//! sources use it; they differ only in the [`Validation`] they pass and in how much they say
//! changed (the file source rebuilds everything on every load, the Kubernetes source says what
//! its updates touched, so an endpoint change reuses the compiled policies).

use std::sync::Arc;

use gateway_api_bindings::destinations::{Changed, DestinationBuilder, Finding, Findings};
use gateway_api_bindings::{ObjectKey, Store, WaypointIdentity, authorizer_for};
use policy_engine::Authorizer;

use super::layered::Layered;
use super::{ConfigError, MeshSettings, Snapshot, invalid_policies, next_version};
use crate::authn::Authn;
use crate::authn::jwks::JwksRegistry;
use crate::metrics::Metrics;

/// What a source does about AuthorizationPolicies and RequestAuthentications that Istio's
/// admission webhook would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Any invalid one refuses the whole config, as applying the files to a cluster would fail;
    /// the last good snapshot keeps serving (the file source).
    RefuseConfig,
    /// What the store holds is compiled as istiod compiles it, invalid or not: a cluster can
    /// hold objects the webhook never saw, and istiod builds them (dropping what it cannot use,
    /// see `docs/authz.md`, "Invalid objects in a cluster"). The source reports them in status
    /// and keeps out only what it cannot read (the Kubernetes source).
    AsIstiod,
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
    findings: Arc<Findings>,
    layered: Option<Arc<Layered>>,
}

/// The result of one assembly.
#[derive(Debug)]
pub struct Assembled {
    pub snapshot: Snapshot,
    /// Whether the policies were compiled anew (rather than reused).
    pub policies_recompiled: bool,
    /// Findings that appeared (or changed) since the previous assembly: log and count them
    /// with [`report_findings`], so each is reported once.
    pub fresh: Vec<Finding>,
}

impl Assembler {
    pub fn new(validation: Validation) -> Assembler {
        Assembler {
            validation,
            destinations: None,
            authorizer: Arc::new(policy_engine::AuthorizerBuilder::new().build()),
            authn: Arc::new(Authn::none()),
            findings: Arc::default(),
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
        let fresh = destinations.take_fresh();
        if *destinations.findings() != *self.findings {
            self.findings = Arc::new(destinations.findings().clone());
        }
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
                findings: self.findings.clone(),
                layered: self.layered.clone(),
            },
            policies_recompiled,
            fresh,
        })
    }
}

/// Logs each finding and counts it: `waypoint_attachment_refused_total{reason}` for an object
/// (or our Gateway) refused, `waypoint_address_conflicts_total` for an address claimed twice.
/// Callers pass each finding once: [`Assembled::fresh`], or every finding of a file load.
pub fn report_findings(gateway: &ObjectKey, findings: &[Finding], metrics: &Metrics) {
    for f in findings {
        match f {
            Finding::NotAWaypoint { .. } => {
                tracing::warn!(waypoint = %gateway, finding = f.kind(), "{f}");
                metrics.attachment_refused(f.kind());
            }
            Finding::Refused { subject, refusal } => {
                tracing::warn!(waypoint = %gateway, object = %subject, named = %refusal.waypoint, finding = f.kind(), "{f}");
                metrics.attachment_refused(f.kind());
            }
            Finding::AddressConflict(c) => {
                tracing::warn!(waypoint = %gateway, address = %c.address, owner = %c.owner, finding = f.kind(), "{f}");
                metrics.address_conflicts.inc();
            }
        }
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
        .filter(|(_, g)| gateway_api_bindings::waypoint::is_waypoint(store, &g.object))
        .map(|(k, _)| k.clone());
    match (wps.next(), wps.next()) {
        (Some(g), None) => Ok(g),
        (None, _) => Err(ConfigError::NoGateway),
        (Some(a), Some(b)) => Err(ConfigError::AmbiguousGateway(format!("{a}, {b}, ..."))),
    }
}

/// The RequestAuthentication rows of `docs/authz.md` ("Invalid objects in a cluster"): which
/// jwtRules the webhook refuses, and which of them a cluster's waypoint still builds.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    const GATEWAY: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
";

    fn request_authentication(name: &str, rule: &str) -> String {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\n\
             metadata: {{name: {name}, namespace: foo}}\nspec:\n  targetRefs: [{{kind: Gateway, \
             group: gateway.networking.k8s.io, name: waypoint}}]\n  jwtRules: [{rule}]\n"
        )
    }

    #[test]
    fn request_authentications_the_webhook_refuses_are_built_as_far_as_they_can_be() {
        let keys = r#"jwks: '{"keys": []}'"#;
        // (name, jwtRule, the field the webhook names, built here)
        let rows = [
            ("no-issuer", keys.to_owned(), Some("issuer"), true),
            (
                "uri-only",
                "jwksUri: https://keys.example/jwks".into(),
                None,
                true,
            ),
            (
                "bad-uri",
                "issuer: a, jwksUri: ftp://keys.example".into(),
                Some("jwksUri"),
                true,
            ),
            (
                "empty-audience",
                format!("issuer: b, {keys}, audiences: [\"\"]"),
                Some("audiences"),
                true,
            ),
            (
                "empty-param",
                format!("issuer: c, {keys}, fromParams: [\"\"]"),
                Some("fromParams[0]"),
                true,
            ),
            (
                "bad-jwks",
                "issuer: d, jwks: not-json".into(),
                Some("jwks"),
                false,
            ),
            (
                "empty-header",
                format!("issuer: e, {keys}, fromHeaders: [{{name: \"\"}}]"),
                Some("fromHeaders[0].name"),
                false,
            ),
            (
                "bad-payload-header",
                format!("issuer: f, {keys}, outputPayloadToHeader: \"x y\""),
                Some("outputPayloadToHeader"),
                false,
            ),
            (
                "bad-claim-header",
                format!(
                    "issuer: g, {keys}, outputClaimToHeaders: [{{header: \"x y\", claim: sub}}]"
                ),
                Some("outputClaimToHeaders[0]"),
                false,
            ),
            (
                "bad-timeout",
                format!("issuer: h, {keys}, timeout: soon"),
                Some("timeout"),
                false,
            ),
        ];
        let mut yaml = GATEWAY.to_owned();
        for (name, rule, _, _) in &rows {
            yaml.push_str(&request_authentication(name, &format!("{{{rule}}}")));
        }
        let mut store = Store::default();
        let errs = store.load_str(&yaml, None);
        assert!(errs.is_empty(), "{errs:?}");
        let settings = MeshSettings {
            gateway: Some(ObjectKey::new("foo", "waypoint")),
            ..MeshSettings::default()
        };
        let registry = JwksRegistry::new(Default::default(), None, Arc::new(Metrics::default()));

        let refused = match Assembler::new(Validation::RefuseConfig)
            .assemble_all(&store, &settings, &registry)
        {
            Err(ConfigError::Objects(lines)) => lines,
            other => panic!("a file config with these is refused: {other:?}"),
        };
        let snapshot = Assembler::new(Validation::AsIstiod)
            .assemble_all(&store, &settings, &registry)
            .unwrap();
        let dump = snapshot.authn.dump();
        let built: Vec<&str> = dump
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["rule"].as_str())
            .collect();
        for (name, _, field, is_built) in rows {
            let rule = format!("foo/{name} jwtRules[0]");
            assert_eq!(
                built.contains(&rule.as_str()),
                is_built,
                "{name}: {built:?}"
            );
            let named = refused
                .iter()
                .filter(|l| l.contains(&format!("RequestAuthentication foo/{name}:")))
                .collect::<Vec<_>>();
            match field {
                Some(f) => assert!(
                    named.len() == 1 && named[0].contains(&format!("spec.jwtRules[0].{f}:")),
                    "{name}: {named:?}"
                ),
                None => assert!(named.is_empty(), "{name}: {named:?}"),
            }
        }
    }
}
