//! The engine's input: an `AuthorizationPolicy` spec as plain data.
//!
//! This mirrors `security.istio.io` v1/v1beta1 field for field but carries no Kubernetes types, so the
//! engine stays pure. `Option` marks the places where Istio distinguishes "absent" from "empty"
//! (`rules`, `from`, `to`, `from[].source`, `to[].operation`): validation depends on it.

use std::fmt;

/// What a policy does when one of its rules matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    /// The spelling used by the Istio API (`ALLOW`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }

    /// Parses the Istio spelling; an empty string is Istio's default, `ALLOW`.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "" | "ALLOW" => Some(Action::Allow),
            "DENY" => Some(Action::Deny),
            "AUDIT" => Some(Action::Audit),
            "CUSTOM" => Some(Action::Custom),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One AuthorizationPolicy, already known to bind to the waypoint being compiled.
#[derive(Debug, Clone, Default)]
pub struct PolicySpec {
    pub namespace: String,
    pub name: String,
    pub action: Option<Action>,
    /// `provider.name`, meaningful only for CUSTOM.
    pub provider: Option<String>,
    /// `None` = the field is absent (ALLOW: matches nothing; DENY: invalid).
    pub rules: Option<Vec<RuleSpec>>,
    /// The `istio.io/dry-run: "true"` annotation: evaluate in shadow, never enforce.
    pub dry_run: bool,
}

impl PolicySpec {
    pub fn action(&self) -> Action {
        self.action.unwrap_or(Action::Allow)
    }
}

#[derive(Debug, Clone, Default)]
pub struct RuleSpec {
    /// `None` = absent (any source); `Some(vec![])` is invalid in Istio.
    pub from: Option<Vec<Option<SourceSpec>>>,
    pub to: Option<Vec<Option<OperationSpec>>>,
    pub when: Vec<ConditionSpec>,
}

#[derive(Debug, Clone, Default)]
pub struct SourceSpec {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub not_service_accounts: Vec<String>,
    pub trust_domains: Vec<String>,
    pub not_trust_domains: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct OperationSpec {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ConditionSpec {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}
