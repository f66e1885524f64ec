//! Validation of a policy's rules as Istio's admission webhook does it
//! (`pkg/config/validation.ValidateAuthorizationPolicy`), each finding naming the field.
//!
//! Target references and selectors are the bindings' concern; everything inside `spec.action`,
//! `spec.provider` and `spec.rules` is checked here. Beyond Istio, values that Envoy would reject
//! (an unparsable regex, a template without a leading `/`) are errors, and values that can never do
//! what they seem to (a `spiffe://` principal, a `*` inside a path) are warnings.

use std::fmt;

use crate::compile::{ConditionKey, parse_condition_key};
use crate::matchers::Cidr;
use crate::path::{self, PathTemplate};
use crate::spec::{Action, PolicySpec, RuleSpec, SourceSpec};

/// One finding, with the path of the field it is about (`spec.rules[0].from[1].source.ipBlocks[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Findings for one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<FieldIssue>,
    pub warnings: Vec<FieldIssue>,
}

impl Findings {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldIssue {
            field: field.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(FieldIssue {
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Validates action, provider and rules.
pub fn validate(p: &PolicySpec) -> Findings {
    let mut f = Findings::default();
    let action = p.action();
    if action == Action::Custom {
        match &p.rules {
            None => f.error(
                "spec.rules",
                "CUSTOM action without `rules` is meaningless as it will never be triggered, add an \
                 empty rule `{}` if you want it be triggered for every request",
            ),
            Some(_) if p.provider.as_deref().unwrap_or("").is_empty() => {
                f.error("spec.provider.name", "`provider.name` must not be empty")
            }
            Some(_) => f.warn(
                "spec.action",
                format!(
                    "CUSTOM needs the external authorizer {:?}, which this waypoint cannot consult yet: \
                     requests matching this policy are denied (fail-closed)",
                    p.provider.as_deref().unwrap_or("")
                ),
            ),
        }
        for (i, rule) in p.rules.iter().flatten().enumerate() {
            custom_restrictions(&mut f, i, rule);
        }
    }
    if p.provider.is_some() && action != Action::Custom {
        f.error(
            "spec.provider",
            format!("`provider` must not be with non CUSTOM action, found {action}"),
        );
    }
    if action == Action::Deny && p.rules.is_none() {
        f.error(
            "spec.rules",
            "DENY action without `rules` is meaningless as it will never be triggered, add an empty \
             rule `{}` if you want it be triggered for every request",
        );
    }
    for (i, rule) in p.rules.iter().flatten().enumerate() {
        validate_rule(&mut f, action, i, rule);
    }
    f
}

fn custom_restrictions(f: &mut Findings, i: usize, rule: &RuleSpec) {
    for (j, src) in rule.from.iter().flatten().enumerate() {
        let Some(s) = src else { continue };
        for (name, set) in [
            ("namespaces", !s.namespaces.is_empty()),
            ("notNamespaces", !s.not_namespaces.is_empty()),
            ("serviceAccounts", !s.service_accounts.is_empty()),
            ("notServiceAccounts", !s.not_service_accounts.is_empty()),
            ("trustDomains", !s.trust_domains.is_empty()),
            ("notTrustDomains", !s.not_trust_domains.is_empty()),
            ("principals", !s.principals.is_empty()),
            ("notPrincipals", !s.not_principals.is_empty()),
            ("requestPrincipals", !s.request_principals.is_empty()),
            ("notRequestPrincipals", !s.not_request_principals.is_empty()),
        ] {
            if set {
                f.error(
                    format!("spec.rules[{i}].from[{j}].source.{name}"),
                    format!(
                        "From.{} is currently not supported with CUSTOM action",
                        upper_first(name)
                    ),
                );
            }
        }
    }
    for (j, c) in rule.when.iter().enumerate() {
        let k = c.key.as_str();
        if matches!(
            k,
            "source.namespace"
                | "source.serviceAccount"
                | "source.trustDomain"
                | "source.principal"
        ) || k.starts_with("request.auth.")
        {
            f.error(
                format!("spec.rules[{i}].when[{j}].key"),
                format!("{k} is currently not supported with CUSTOM action"),
            );
        }
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|h| h.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn validate_rule(f: &mut Findings, action: Action, i: usize, rule: &RuleSpec) {
    let at = format!("spec.rules[{i}]");
    if matches!(&rule.from, Some(v) if v.is_empty()) {
        f.error(
            format!("{at}.from"),
            format!("`from` must not be empty, found at rule {i}"),
        );
    }
    let (mut from_exists, mut tcp_in_from) = (false, false);
    for (j, src) in rule.from.iter().flatten().enumerate() {
        let field = format!("{at}.from[{j}].source");
        let Some(s) = src else {
            f.error(
                field,
                format!("`from.source` must not be nil, found at rule {i}"),
            );
            continue;
        };
        from_exists = true;
        tcp_in_from |= validate_source(f, &field, i, s);
    }
    if matches!(&rule.to, Some(v) if v.is_empty()) {
        f.error(
            format!("{at}.to"),
            format!("`to` must not be empty, found at rule {i}"),
        );
    }
    let (mut to_exists, mut tcp_in_to) = (false, false);
    for (j, op) in rule.to.iter().flatten().enumerate() {
        let field = format!("{at}.to[{j}].operation");
        let Some(o) = op else {
            f.error(
                field,
                format!("`to.operation` must not be nil, found at rule {i}"),
            );
            continue;
        };
        to_exists = true;
        let all = [
            &o.hosts,
            &o.not_hosts,
            &o.ports,
            &o.not_ports,
            &o.methods,
            &o.not_methods,
            &o.paths,
            &o.not_paths,
        ];
        if all.iter().all(|v| v.is_empty()) {
            f.error(
                &field,
                format!("`to.operation` must not be empty, found at rule {i}"),
            );
        }
        for (name, vals) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
            ports(f, &format!("{field}.{name}"), vals);
        }
        for (name, vals) in [
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
        ] {
            non_empty(f, &format!("{field}.{name}"), vals);
        }
        for (name, vals) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
            paths(f, &format!("{field}.{name}"), vals);
        }
        tcp_in_to |= !o.ports.is_empty() || !o.not_ports.is_empty();
    }
    for (j, c) in rule.when.iter().enumerate() {
        let field = format!("{at}.when[{j}]");
        if c.key.is_empty() {
            f.error(format!("{field}.key"), "`key` must not be empty");
            continue;
        }
        if c.values.is_empty() && c.not_values.is_empty() {
            f.error(
                &field,
                format!(
                    "at least one of `values` or `notValues` must be set for key {}",
                    c.key
                ),
            );
            continue;
        }
        let Some(key) = condition_key(f, &format!("{field}.key"), &c.key) else {
            continue;
        };
        for (name, vals) in [("values", &c.values), ("notValues", &c.not_values)] {
            attribute(f, &format!("{field}.{name}"), &key, vals);
        }
        if c.key.starts_with("experimental.envoy.filters.") && parse_condition_key(&c.key).is_some()
        {
            f.warn(
                format!("{field}.key"),
                "Envoy filter metadata does not exist at this waypoint: in an ALLOW rule the rule never \
                 matches, in a DENY or AUDIT rule the condition is ignored (fail-closed)",
            );
        }
    }
    if action == Action::Deny
        && ((from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to))
    {
        f.warn(
            at,
            "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to \
             the use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify the port",
        );
    }
}

/// Returns whether the source uses an L4 field (for the HTTP-only DENY warning).
fn validate_source(f: &mut Findings, field: &str, i: usize, s: &SourceSpec) -> bool {
    let identity = [
        &s.principals,
        &s.not_principals,
        &s.namespaces,
        &s.not_namespaces,
    ];
    let sa = [&s.service_accounts, &s.not_service_accounts];
    if identity.iter().any(|v| !v.is_empty()) && sa.iter().any(|v| !v.is_empty()) {
        f.error(
            field,
            format!("cannot set serviceAccounts with namespaces or principals, found at rule {i}"),
        );
    }
    let all = [
        &s.principals,
        &s.not_principals,
        &s.request_principals,
        &s.not_request_principals,
        &s.namespaces,
        &s.not_namespaces,
        &s.service_accounts,
        &s.not_service_accounts,
        &s.trust_domains,
        &s.not_trust_domains,
        &s.ip_blocks,
        &s.not_ip_blocks,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
    ];
    if all.iter().all(|v| v.is_empty()) {
        f.error(
            field,
            format!("`from.source` must not be empty, found at rule {i}"),
        );
    }
    for (name, vals) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        ips(f, &format!("{field}.{name}"), vals);
    }
    for (name, vals) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
    ] {
        principals(f, &format!("{field}.{name}"), vals);
    }
    for (name, vals) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
    ] {
        non_empty(f, &format!("{field}.{name}"), vals);
    }
    for (name, vals) in [
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
    ] {
        namespaces(f, &format!("{field}.{name}"), vals);
    }
    for (name, vals) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        service_accounts(f, &format!("{field}.{name}"), vals);
    }
    for (name, vals) in [
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ] {
        trust_domains(f, &format!("{field}.{name}"), vals);
    }
    [
        &s.principals,
        &s.not_principals,
        &s.ip_blocks,
        &s.not_ip_blocks,
        &s.namespaces,
        &s.not_namespaces,
    ]
    .iter()
    .chain(&[
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        &s.service_accounts,
        &s.not_service_accounts,
    ])
    .any(|v| !v.is_empty())
}

fn non_empty(f: &mut Findings, field: &str, vals: &[String]) -> bool {
    for (k, v) in vals.iter().enumerate() {
        if v.is_empty() {
            f.error(format!("{field}[{k}]"), "empty value not allowed");
            return false;
        }
    }
    true
}

fn ips(f: &mut Findings, field: &str, vals: &[String]) {
    for (k, v) in vals.iter().enumerate() {
        if Cidr::parse(v).is_none() {
            let what = if v.contains('/') {
                "bad CIDR range"
            } else {
                "bad IP address"
            };
            f.error(format!("{field}[{k}]"), format!("{what} ({v})"));
        }
    }
}

fn ports(f: &mut Findings, field: &str, vals: &[String]) {
    for (k, v) in vals.iter().enumerate() {
        let ok = !v.is_empty()
            && v.bytes().all(|b| b.is_ascii_digit())
            && v.parse::<u32>().is_ok_and(|p| p <= 65535);
        if !ok {
            f.error(
                format!("{field}[{k}]"),
                format!("bad port ({v}): must be an integer in 0-65535"),
            );
        }
    }
}

fn principals(f: &mut Findings, field: &str, vals: &[String]) {
    if !non_empty(f, field, vals) {
        return;
    }
    for (k, v) in vals.iter().enumerate() {
        if v.starts_with("spiffe://") {
            f.warn(
                format!("{field}[{k}]"),
                format!(
                    "{v:?} never matches: Istio adds the spiffe:// prefix itself; write it without"
                ),
            );
        }
    }
}

fn namespaces(f: &mut Findings, field: &str, vals: &[String]) {
    if !non_empty(f, field, vals) {
        return;
    }
    for (k, v) in vals.iter().enumerate() {
        let at = format!("{field}[{k}]");
        if v.contains('/') {
            f.warn(
                at,
                format!("{v:?} never matches: a namespace name cannot contain '/'"),
            );
        } else if v.len() > 2 && v[1..v.len() - 1].contains('*') {
            f.warn(
                at,
                format!(
                    "{v:?}: a '*' inside the value matches within the namespace here, as in Istio's \
                     Envoy config, but ztunnel matches it literally"
                ),
            );
        }
    }
}

fn service_accounts(f: &mut Findings, field: &str, vals: &[String]) {
    if vals.len() > 16 {
        f.error(field, "may not have more than 16 values");
    }
    for (k, v) in vals.iter().enumerate() {
        let at = format!("{field}[{k}]");
        let bad_format = "expected format 'serviceAccount' or 'namespace/serviceAccount'";
        if v.is_empty() {
            f.error(at, "empty value not allowed");
        } else if v.contains('*') {
            f.error(at, "wildcard not allowed");
        } else if v.matches('/').count() > 1 {
            f.error(at, format!("{bad_format}, found {v:?}"));
        } else if v.len() > 320 {
            f.error(
                at,
                format!("value cannot exceed 320 characters, found {v:?}"),
            );
        } else if let Some((ns, sa)) = v.split_once('/') {
            if ns.is_empty() {
                f.error(at, format!("{bad_format}, found empty namespace {v:?}"));
            } else if sa.is_empty() {
                f.error(
                    at,
                    format!("{bad_format}, found empty serviceAccount {v:?}"),
                );
            }
        }
    }
}

fn wildcards(f: &mut Findings, field: &str, vals: &[String]) -> bool {
    if !non_empty(f, field, vals) {
        return false;
    }
    let mut ok = true;
    for (k, v) in vals.iter().enumerate() {
        let stars = v.matches('*').count();
        if stars > 1 {
            f.error(
                format!("{field}[{k}]"),
                format!("at most one wildcard is allowed, found {v:?}"),
            );
            ok = false;
        } else if stars == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*') {
            f.error(
                format!("{field}[{k}]"),
                format!("wildcard is only allowed at the start or end, found {v:?}"),
            );
            ok = false;
        }
    }
    ok
}

fn trust_domains(f: &mut Findings, field: &str, vals: &[String]) {
    if !wildcards(f, field, vals) {
        return;
    }
    for (k, v) in vals.iter().enumerate() {
        if v.contains('/') {
            f.error(
                format!("{field}[{k}]"),
                format!("trust domain must not contain '/', found {v:?}"),
            );
        }
    }
}

fn paths(f: &mut Findings, field: &str, vals: &[String]) {
    if !non_empty(f, field, vals) {
        return;
    }
    for (k, v) in vals.iter().enumerate() {
        let at = format!("{field}[{k}]");
        if path::is_template(v) {
            if let Err(e) = PathTemplate::parse(v) {
                f.error(
                    at,
                    format!("invalid or unsupported path template {v:?}: {e}"),
                );
            }
        } else if v.len() > 2 && v[1..v.len() - 1].contains('*') {
            f.warn(at, format!("{v:?}: '*' is a wildcard only at the start or end; here it is matched literally"));
        }
    }
}

/// Checks a `when` key once, whatever its values.
fn condition_key(f: &mut Findings, field: &str, key: &str) -> Option<ConditionKey> {
    let deprecated = match key {
        "destination.namespace" => Some("is replaced by the metadata.namespace"),
        "destination.name" | "destination.user" => {
            Some("is deprecated: only supported in v1alpha1")
        }
        _ if key.starts_with("destination.labels") => Some("is replaced by the workload selector"),
        _ => None,
    };
    if let Some(why) = deprecated {
        f.error(field, format!("attribute {key} {why}"));
        return None;
    }
    let parsed = parse_condition_key(key);
    if parsed.is_none() {
        let map_key = [
            "request.headers",
            "request.auth.claims",
            "experimental.envoy.filters.",
        ];
        let msg = if map_key.iter().any(|p| key.starts_with(p)) {
            format!("bad key ({key}): should have format a[b]")
        } else {
            format!("unknown attribute: {key}")
        };
        f.error(field, msg);
    }
    parsed
}

fn attribute(f: &mut Findings, field: &str, key: &ConditionKey, vals: &[String]) {
    if !non_empty(f, field, vals) {
        return;
    }
    match key {
        ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
            ips(f, field, vals)
        }
        ConditionKey::DestinationPort => ports(f, field, vals),
        ConditionKey::SourceServiceAccount => service_accounts(f, field, vals),
        ConditionKey::SourceTrustDomain => trust_domains(f, field, vals),
        ConditionKey::SourceNamespace => namespaces(f, field, vals),
        ConditionKey::SourcePrincipal => principals(f, field, vals),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ConditionSpec, OperationSpec};

    fn policy(action: Action, rules: Option<Vec<RuleSpec>>) -> PolicySpec {
        PolicySpec {
            namespace: "foo".into(),
            name: "p".into(),
            action: Some(action),
            rules,
            ..Default::default()
        }
    }

    fn fields(f: &Findings) -> Vec<&str> {
        f.errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn namespace_values_that_cannot_mean_what_they_say_warn() {
        let rule = RuleSpec {
            from: Some(vec![Some(SourceSpec {
                namespaces: vec![
                    "team.a".into(),
                    "foo/sa".into(),
                    "a*b".into(),
                    "dev-*".into(),
                ],
                ..Default::default()
            })]),
            ..Default::default()
        };
        let f = validate(&policy(Action::Deny, Some(vec![rule])));
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        let warned: Vec<&str> = f.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            warned,
            [
                "spec.rules[0].from[0].source.namespaces[1]",
                "spec.rules[0].from[0].source.namespaces[2]",
            ]
        );
    }

    #[test]
    fn names_the_offending_field() {
        let rule = RuleSpec {
            from: Some(vec![Some(SourceSpec {
                ip_blocks: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
                ..Default::default()
            })]),
            to: Some(vec![Some(OperationSpec {
                ports: vec!["http".into()],
                paths: vec!["/a/{**}/{*}".into()],
                ..Default::default()
            })]),
            when: vec![
                ConditionSpec {
                    key: "request.colour".into(),
                    values: vec!["x".into()],
                    ..Default::default()
                },
                ConditionSpec {
                    key: "source.ip".into(),
                    ..Default::default()
                },
            ],
        };
        let f = validate(&policy(Action::Allow, Some(vec![rule])));
        assert_eq!(
            fields(&f),
            [
                "spec.rules[0].from[0].source.ipBlocks[1]",
                "spec.rules[0].to[0].operation.ports[0]",
                "spec.rules[0].to[0].operation.paths[0]",
                "spec.rules[0].when[0].key",
                "spec.rules[0].when[1]",
            ]
        );
        assert!(
            f.errors[3]
                .message
                .contains("unknown attribute: request.colour")
        );
    }

    #[test]
    fn istio_structural_rules() {
        assert_eq!(
            fields(&validate(&policy(Action::Deny, None))),
            ["spec.rules"]
        );
        assert!(
            validate(&policy(Action::Allow, None)).is_valid(),
            "ALLOW with no rules is deny-all, valid"
        );
        let empty_from = RuleSpec {
            from: Some(vec![]),
            ..Default::default()
        };
        assert_eq!(
            fields(&validate(&policy(Action::Allow, Some(vec![empty_from])))),
            ["spec.rules[0].from"]
        );
        let nil_source = RuleSpec {
            from: Some(vec![None]),
            ..Default::default()
        };
        assert_eq!(
            fields(&validate(&policy(Action::Allow, Some(vec![nil_source])))),
            ["spec.rules[0].from[0].source"]
        );
        let mut custom = policy(Action::Custom, Some(vec![RuleSpec::default()]));
        assert_eq!(fields(&validate(&custom)), ["spec.provider.name"]);
        custom.provider = Some("ext".into());
        let f = validate(&custom);
        assert!(f.is_valid() && !f.warnings.is_empty());
        let mut allow_with_provider = policy(Action::Allow, Some(vec![]));
        allow_with_provider.provider = Some("ext".into());
        assert_eq!(fields(&validate(&allow_with_provider)), ["spec.provider"]);
    }

    #[test]
    fn http_only_deny_warns() {
        let rule = RuleSpec {
            to: Some(vec![Some(OperationSpec {
                methods: vec!["POST".into()],
                ..Default::default()
            })]),
            ..Default::default()
        };
        let f = validate(&policy(Action::Deny, Some(vec![rule])));
        assert!(f.is_valid());
        assert!(
            f.warnings[0]
                .message
                .contains("deny all traffic to TCP ports")
        );
    }
}
