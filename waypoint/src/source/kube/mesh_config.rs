//! Istio's mesh config (`istio-system/istio`, key `mesh`): the settings the waypoint takes from it.

use policy_engine::path::PathNormalization;
use serde::Deserialize;

use gateway_api_bindings::ObjectKey;
use gateway_api_bindings::mesh_rules::{
    ServiceEntryVisibility, ServiceEntryVisibilityConfig, VisibilityError,
};

use crate::state::MeshSettings;

/// Mesh-wide values given as flags: each wins over Istio's mesh ConfigMap, which wins over
/// Istio's defaults (see [`MeshConfig::settings`]). It lives beside the
/// mesh config, below the process `Settings`, because both sources resolve it.
#[derive(Debug, Clone, Default)]
pub struct MeshOverrides {
    pub root_namespace: Option<String>,
    pub trust_domain: Option<String>,
    /// Replaces the mesh config's `trustDomainAliases` when given (`--trust-domain-alias`
    /// absent leaves it `None`).
    pub trust_domain_aliases: Option<Vec<String>>,
    pub path_normalization: Option<PathNormalization>,
    /// Layered L4 policy at HBONE termination (a flag only; the mesh config has no such field).
    pub layered: Option<crate::state::layered::LayeredSettings>,
}

impl MeshOverrides {
    /// The mesh settings in force: these flags, then `mesh_config` (Istio's mesh ConfigMap; the
    /// file source has none), then Istio's defaults.
    pub fn resolve(
        &self,
        mesh_config: Option<&MeshConfig>,
        gateway: Option<&ObjectKey>,
    ) -> MeshSettings {
        mesh_config
            .cloned()
            .unwrap_or_default()
            .settings(self, gateway)
    }
}

/// What the ConfigMap said; unset fields keep Istio's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshConfig {
    pub root_namespace: Option<String>,
    pub trust_domain: Option<String>,
    pub trust_domain_aliases: Vec<String>,
    pub path_normalization: Option<PathNormalization>,
    /// `serviceEntryVisibility` (unset: every ServiceEntry public).
    pub service_entry_visibility: ServiceEntryVisibility,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    root_namespace: Option<String>,
    #[serde(default)]
    trust_domain: Option<String>,
    #[serde(default)]
    trust_domain_aliases: Option<Vec<String>>,
    #[serde(default)]
    path_normalization: Option<RawNormalization>,
    #[serde(default)]
    service_entry_visibility: Option<ServiceEntryVisibilityConfig>,
}

#[derive(Deserialize)]
struct RawNormalization {
    #[serde(default)]
    normalization: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error("the mesh config is not valid YAML: {0}")]
    Yaml(#[from] gateway_api_bindings::yaml::YamlError),
    #[error("the mesh config does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("unknown pathNormalization.normalization {0:?}")]
    Normalization(String),
    #[error("serviceEntryVisibility: {0}")]
    Visibility(#[from] VisibilityError),
}

impl MeshConfig {
    /// Parses the `mesh` key. Fields the waypoint does not use are ignored. Read with the
    /// config loader's bounds (size, depth, no aliases), as a ConfigMap is written by whoever
    /// may edit `istio-system`.
    pub fn parse(text: &str) -> Result<MeshConfig, MeshConfigError> {
        let raw: Option<Raw> = serde_json::from_value(gateway_api_bindings::yaml::single(text)?)?;
        let Some(raw) = raw else {
            return Ok(MeshConfig::default());
        };
        let path_normalization = match raw.path_normalization.and_then(|p| p.normalization) {
            Some(n) => Some(PathNormalization::parse(&n).ok_or(MeshConfigError::Normalization(n))?),
            None => None,
        };
        let service_entry_visibility = match &raw.service_entry_visibility {
            Some(c) => {
                let (v, unusable) = ServiceEntryVisibility::compile(c)?;
                for e in unusable {
                    // As istiod compiles it on a fresh start: the rule never matches.
                    tracing::warn!(error = %e, "serviceEntryVisibility: a namespaceSelector Kubernetes would refuse never matches");
                }
                v
            }
            None => ServiceEntryVisibility::default(),
        };
        Ok(MeshConfig {
            service_entry_visibility,
            root_namespace: raw.root_namespace.filter(|s| !s.is_empty()),
            trust_domain: raw.trust_domain.filter(|s| !s.is_empty()),
            trust_domain_aliases: raw
                .trust_domain_aliases
                .unwrap_or_default()
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect(),
            path_normalization,
        })
    }

    /// Flags, then this config, then Istio's defaults; for `gateway`, ours when it is known
    /// before the config is read.
    pub fn settings(&self, overrides: &MeshOverrides, gateway: Option<&ObjectKey>) -> MeshSettings {
        let defaults = MeshSettings::default();
        MeshSettings {
            gateway: gateway.cloned(),
            root_namespace: overrides
                .root_namespace
                .clone()
                .or_else(|| self.root_namespace.clone())
                .unwrap_or(defaults.root_namespace),
            trust_domain: overrides
                .trust_domain
                .clone()
                .or_else(|| self.trust_domain.clone())
                .unwrap_or(defaults.trust_domain),
            trust_domain_aliases: overrides
                .trust_domain_aliases
                .clone()
                .unwrap_or_else(|| self.trust_domain_aliases.clone()),
            path_normalization: overrides
                .path_normalization
                .or(self.path_normalization)
                .unwrap_or(defaults.path_normalization),
            service_entry_visibility: self.service_entry_visibility.clone(),
            layered: overrides.layered.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_config_map_and_defaults_fill_in() {
        let mc = MeshConfig::parse(
            "trustDomain: example.org\nrootNamespace: mesh-root\npathNormalization:\n  normalization: MERGE_SLASHES\naccessLogFile: /dev/stdout\n",
        )
        .unwrap();
        let s = mc.settings(&MeshOverrides::default(), None);
        assert_eq!(s.trust_domain, "example.org");
        assert!(s.trust_domain_aliases.is_empty());
        let aliased =
            MeshConfig::parse("trustDomain: new.td\ntrustDomainAliases: [old.td, \"\"]\n")
                .unwrap()
                .settings(&MeshOverrides::default(), None);
        assert_eq!(aliased.trust_domain_aliases, ["old.td"]);
        assert_eq!(s.root_namespace, "mesh-root");
        assert_eq!(s.path_normalization, PathNormalization::MergeSlashes);
        let flags = MeshOverrides {
            trust_domain: Some("flag.td".into()),
            ..MeshOverrides::default()
        };
        assert_eq!(mc.settings(&flags, None).trust_domain, "flag.td");
        let empty = MeshConfig::parse("")
            .unwrap()
            .settings(&MeshOverrides::default(), None);
        assert_eq!(empty.root_namespace, "istio-system");
        assert_eq!(empty.path_normalization, PathNormalization::Base);
        assert!(MeshConfig::parse("pathNormalization: {normalization: SOMETIMES}").is_err());
    }

    #[test]
    fn service_entry_visibility_is_read() {
        use gateway_api_bindings::mesh_rules::Visibility;
        let s = MeshConfig::parse(
            "serviceEntryVisibility:\n  defaultVisibility: NAMESPACE\n  policies:\n  - visibility: PUBLIC\n    matchingRules:\n    - namespaceSelector: {matchLabels: {se-visibility: public}}\n",
        )
        .unwrap()
        .settings(&MeshOverrides::default(), None);
        let v = &s.service_entry_visibility;
        let public = [("se-visibility".to_owned(), "public".to_owned())].into();
        assert_eq!(v.of_namespace(&public), Visibility::Public);
        assert_eq!(v.of_namespace(&Default::default()), Visibility::Namespace);
        assert!(MeshConfig::parse("serviceEntryVisibility: {defaultVisibility: SECRET}").is_err());
        assert_eq!(
            MeshConfig::parse("")
                .unwrap()
                .service_entry_visibility
                .of_namespace(&Default::default()),
            Visibility::Public
        );
    }
}
