//! What a source knows about how the cluster decides waypoint membership, beyond the objects
//! themselves: which Gateways count as waypoints (the API server reports `status.addresses`,
//! config files rarely do), and the mesh config's `serviceEntryVisibility`. The [`crate::Store`]
//! carries these ([`crate::Store::rules`]), so that every caller of
//! [`crate::waypoint::attachment`] decides with the same inputs.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::label_selector::{LabelSelector, Selector, SelectorError};

/// Which Gateways are waypoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WaypointRule {
    /// istiod's rule: a Gateway is a waypoint when its `status.addresses` is not empty,
    /// whatever its class or listeners. What the Kubernetes source uses: a Gateway istiod sends
    /// no traffic to serves nothing.
    StatusAddresses,
    /// Config files: a Gateway is a waypoint when it has `status.addresses`, or, since files
    /// rarely carry status, when its class is istiod's waypoint class or ours, or it has an
    /// `HBONE` listener.
    #[default]
    StatusOrDeclared,
}

/// The rules a [`crate::Store`] decides membership by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshRules {
    pub waypoints: WaypointRule,
    pub service_entry_visibility: ServiceEntryVisibility,
}

/// A ServiceEntry's visibility (`meshConfig.serviceEntryVisibility`, istio/istio#60870).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Visibility {
    /// Visible as its `exportTo` says (the default when nothing is configured).
    #[default]
    Public,
    /// Visible in its own namespace only: it may never bind to another namespace's waypoint.
    Namespace,
    /// Configured nowhere: istiod sends no data plane anything about it.
    None,
}

/// `meshConfig.serviceEntryVisibility` as written (mesh config YAML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryVisibilityConfig {
    #[serde(default)]
    pub default_visibility: Option<String>,
    #[serde(default)]
    pub policies: Vec<VisibilityPolicyConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VisibilityPolicyConfig {
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub matching_rules: Vec<VisibilityMatchRule>,
}

/// One matcher; only `namespaceSelector` exists today. A rule with no matcher Istio knows never
/// matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VisibilityMatchRule {
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
}

/// Why a `serviceEntryVisibility` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VisibilityError {
    #[error("unknown visibility {0:?} (PUBLIC, NAMESPACE or NONE)")]
    Unknown(String),
}

/// The compiled `serviceEntryVisibility`: the first policy whose rules all match the
/// ServiceEntry's namespace labels decides, else the default (`PUBLIC` when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceEntryVisibility {
    default: Visibility,
    /// Each rule's selector; `None` for a rule that never matches.
    policies: Vec<(Visibility, Vec<Option<Selector>>)>,
}

fn visibility(v: Option<&str>) -> Result<Visibility, VisibilityError> {
    match v.unwrap_or("") {
        "" | "UNSPECIFIED" | "PUBLIC" => Ok(Visibility::Public),
        "NAMESPACE" => Ok(Visibility::Namespace),
        "NONE" => Ok(Visibility::None),
        other => Err(VisibilityError::Unknown(other.to_owned())),
    }
}

impl ServiceEntryVisibility {
    /// Compiles the mesh config's field. An unknown visibility is an error (the mesh config does
    /// not decode); a selector Kubernetes would refuse makes its rule never match, as istiod
    /// compiles it on a fresh start, and is returned beside the result to be logged.
    pub fn compile(
        config: &ServiceEntryVisibilityConfig,
    ) -> Result<(ServiceEntryVisibility, Vec<SelectorError>), VisibilityError> {
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        for p in &config.policies {
            let rules = p
                .matching_rules
                .iter()
                .map(|r| {
                    let sel = r.namespace_selector.as_ref()?;
                    Selector::compile(Some(sel))
                        .map_err(|e| errors.push(e))
                        .ok()
                })
                .collect();
            policies.push((visibility(p.visibility.as_deref())?, rules));
        }
        Ok((
            ServiceEntryVisibility {
                default: visibility(config.default_visibility.as_deref())?,
                policies,
            },
            errors,
        ))
    }

    /// The visibility of a ServiceEntry in a namespace labelled `labels`.
    pub fn of_namespace(&self, labels: &BTreeMap<String, String>) -> Visibility {
        self.policies
            .iter()
            .find(|(_, rules)| {
                rules
                    .iter()
                    .all(|r| r.as_ref().is_some_and(|s| s.matches(labels)))
            })
            .map_or(self.default, |(v, _)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(yaml: &str) -> ServiceEntryVisibility {
        let c: ServiceEntryVisibilityConfig = serde_yaml::from_str(yaml).unwrap();
        ServiceEntryVisibility::compile(&c).unwrap().0
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The cases of istiod's `pilot/pkg/serviceregistry/ambient/services_test.go` for
    /// `serviceEntryVisibility`.
    #[test]
    fn first_matching_policy_then_the_default() {
        assert_eq!(
            ServiceEntryVisibility::default().of_namespace(&labels(&[])),
            Visibility::Public,
            "unset: everything is public"
        );
        let v = compiled(
            "{defaultVisibility: NAMESPACE, policies: [{visibility: PUBLIC, matchingRules: [{namespaceSelector: {matchLabels: {se-visibility: public}}}]}]}",
        );
        assert_eq!(
            v.of_namespace(&labels(&[("se-visibility", "public")])),
            Visibility::Public
        );
        assert_eq!(v.of_namespace(&labels(&[])), Visibility::Namespace);
        let v = compiled(
            "{policies: [{visibility: NAMESPACE, matchingRules: [{namespaceSelector: {matchLabels: {t: a}}}]}, {visibility: NONE, matchingRules: [{namespaceSelector: {matchLabels: {t: a}}}]}]}",
        );
        assert_eq!(
            v.of_namespace(&labels(&[("t", "a")])),
            Visibility::Namespace,
            "first match wins"
        );
        let v =
            compiled("{policies: [{visibility: NONE, matchingRules: [{namespaceSelector: {}}]}]}");
        assert_eq!(
            v.of_namespace(&labels(&[])),
            Visibility::None,
            "an empty selector matches every namespace"
        );
        let v = compiled("{policies: [{visibility: NONE, matchingRules: [{}]}]}");
        assert_eq!(
            v.of_namespace(&labels(&[])),
            Visibility::Public,
            "a rule without a matcher never matches"
        );
        let v = compiled("{policies: [{visibility: NONE}]}");
        assert_eq!(
            v.of_namespace(&labels(&[])),
            Visibility::None,
            "no rules: a catch-all"
        );
    }

    #[test]
    fn errors() {
        let c: ServiceEntryVisibilityConfig =
            serde_yaml::from_str("{defaultVisibility: PRIVATE}").unwrap();
        assert!(ServiceEntryVisibility::compile(&c).is_err());
        let c: ServiceEntryVisibilityConfig = serde_yaml::from_str(
            "{policies: [{visibility: NAMESPACE, matchingRules: [{namespaceSelector: {matchExpressions: [{key: a, operator: Bogus}]}}]}]}",
        )
        .unwrap();
        let (v, errs) = ServiceEntryVisibility::compile(&c).unwrap();
        assert_eq!(errs.len(), 1);
        assert_eq!(v.of_namespace(&labels(&[("a", "b")])), Visibility::Public);
    }
}
