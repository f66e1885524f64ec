//! AuthorizationPolicy (Kubernetes object) -> the engine's [`PolicySpec`].

use kube::ResourceExt;
use policy_engine::{Action, ConditionSpec, OperationSpec, PolicySpec, RuleSpec, SourceSpec};

use crate::istio::{AuthorizationPolicy, Operation, Source};
use crate::well_known::DRY_RUN_ANNOTATION;

/// Why a policy cannot be translated at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.action: unknown action {0:?} (expected ALLOW, DENY, AUDIT or CUSTOM)")]
pub(crate) struct UnknownAction(pub(crate) String);

pub(crate) fn policy_spec(ap: &AuthorizationPolicy) -> Result<PolicySpec, UnknownAction> {
    let spec = &ap.spec;
    let action = match spec.action.as_deref() {
        None => None,
        Some(a) => Some(Action::parse(a).ok_or_else(|| UnknownAction(a.to_owned()))?),
    };
    let dry_run = ap
        .annotations()
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(PolicySpec {
        namespace: ap.namespace().unwrap_or_else(|| "default".into()),
        name: ap.name_any(),
        action,
        provider: spec.provider.as_ref().map(|p| p.name.clone()),
        rules: spec.rules.as_ref().map(|rules| {
            rules
                .iter()
                .map(|r| RuleSpec {
                    from: r
                        .from
                        .as_ref()
                        .map(|f| f.iter().map(|f| f.source.as_ref().map(source)).collect()),
                    to: r.to.as_ref().map(|t| {
                        t.iter()
                            .map(|t| t.operation.as_ref().map(operation))
                            .collect()
                    }),
                    when: r
                        .when
                        .iter()
                        .map(|c| ConditionSpec {
                            key: c.key.clone(),
                            values: c.values.clone(),
                            not_values: c.not_values.clone(),
                        })
                        .collect(),
                })
                .collect()
        }),
        dry_run,
    })
}

fn source(s: &Source) -> SourceSpec {
    SourceSpec {
        principals: s.principals.clone(),
        not_principals: s.not_principals.clone(),
        request_principals: s.request_principals.clone(),
        not_request_principals: s.not_request_principals.clone(),
        namespaces: s.namespaces.clone(),
        not_namespaces: s.not_namespaces.clone(),
        service_accounts: s.service_accounts.clone(),
        not_service_accounts: s.not_service_accounts.clone(),
        trust_domains: s.trust_domains.clone(),
        not_trust_domains: s.not_trust_domains.clone(),
        ip_blocks: s.ip_blocks.clone(),
        not_ip_blocks: s.not_ip_blocks.clone(),
        remote_ip_blocks: s.remote_ip_blocks.clone(),
        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
    }
}

fn operation(o: &Operation) -> OperationSpec {
    OperationSpec {
        hosts: o.hosts.clone(),
        not_hosts: o.not_hosts.clone(),
        ports: o.ports.clone(),
        not_ports: o.not_ports.clone(),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
    }
}
