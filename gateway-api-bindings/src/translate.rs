//! AuthorizationPolicy (Kubernetes object) -> the engine's [`PolicySpec`], built as istiod
//! builds it whether or not the object is valid.
//!
//! A cluster can hold policies Istio's validating webhook would refuse (the webhook was down
//! with `failurePolicy: Ignore`, or the object is older than it). istiod compiles them anyway
//! (`pilot/pkg/security/authz/builder`, `.../model`), and so must this waypoint, or it would be
//! more permissive than the Envoy waypoint it replaces. What each kind of bad value, rule or
//! policy becomes is tabled in `docs/authz.md` ("Invalid objects in a cluster"); most of it is
//! the engine's compilation ([`policy_engine`]'s `compile` module). Here: the policy-level
//! parts, an action outside Istio's enum (refused, see [`UnknownAction`]) and the dry-run
//! annotation, read with Go's `strconv.ParseBool` as istiod's `isDryRun` reads it.

use kube::ResourceExt;
use policy_engine::{Action, ConditionSpec, OperationSpec, PolicySpec, RuleSpec, SourceSpec};

use crate::istio::{AuthorizationPolicy, Operation, Source};
use crate::well_known::DRY_RUN_ANNOTATION;

/// Why a policy cannot be translated at all: its action is none of Istio's. The CRD's enum keeps
/// the API server from storing such an object, and istiod's protobuf decoder cannot read it, so
/// no Istio proxy ever enforces it; the Kubernetes source keeps it out like any unreadable object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.action: unknown action {0:?} (expected ALLOW, DENY, AUDIT or CUSTOM)")]
pub(crate) struct UnknownAction(pub(crate) String);

pub(crate) fn policy_spec(ap: &AuthorizationPolicy) -> Result<PolicySpec, UnknownAction> {
    let spec = &ap.spec;
    let action = match spec.action.as_deref() {
        None => None,
        Some(a) => Some(Action::parse(a).ok_or_else(|| UnknownAction(a.to_owned()))?),
    };
    // istiod's `isDryRun`: a value `ParseBool` refuses is logged and the policy is enforced.
    let dry_run = ap
        .annotations()
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| parse_go_bool(v) == Some(true));
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

/// Go's `strconv.ParseBool`: these spellings only.
pub(crate) fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
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

/// One test per row of the AuthorizationPolicy table in `docs/authz.md` ("Invalid objects in a
/// cluster"): the webhook's finding names the field, and the policy, compiled as istiod builds
/// it, decides as an Envoy waypoint given istiod's config would.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use policy_engine::{Action, Authorizer, HttpRequest, PeerIdentity, Reason, Request};

    use crate::attachment::authorizer_for;
    use crate::key::ObjectKey;
    use crate::store::Store;
    use crate::validation;
    use crate::waypoint::WaypointIdentity;

    const GATEWAY: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
";
    const TO_WAYPOINT: &str =
        "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]";

    /// Our waypoint and the policy `foo/p` with `spec`'s entries (a YAML flow mapping's body)
    /// and `annotations` (one too).
    fn store(annotations: &str, spec: &str) -> Store {
        let mut store = Store::default();
        let doc = format!(
            "{GATEWAY}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: p, namespace: foo, annotations: {{{annotations}}}}}\nspec: {{{spec}}}\n"
        );
        let errs = store.load_str(&doc, None);
        assert!(errs.is_empty(), "{errs:?}");
        store
    }

    /// The webhook's error fields and the authorizer istiod's build gives, for a policy bound
    /// to the whole waypoint (`spec` without targetRefs) or as written (`spec` with them).
    fn build_annotated(annotations: &str, spec: &str) -> (Vec<String>, Authorizer) {
        let spec = if spec.contains("targetRef") || spec.contains("selector") {
            spec.to_owned()
        } else if spec.is_empty() {
            TO_WAYPOINT.to_owned()
        } else {
            format!("{TO_WAYPOINT}, {spec}")
        };
        let store = store(annotations, &spec);
        let ap = &store.authorization_policies[&ObjectKey::new("foo", "p")].object;
        let fields = validation::authorization_policy(ap)
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect();
        let wp =
            WaypointIdentity::from_store(&store, ObjectKey::new("foo", "waypoint"), "istio-system");
        (fields, authorizer_for(&store, &wp))
    }

    fn build(spec: &str) -> (Vec<String>, Authorizer) {
        build_annotated("", spec)
    }

    /// `GET <path>` from `foo/curl` at 10.244.1.9 to port 8000, or a TCP connection (`None`).
    fn allowed(auth: &Authorizer, path: Option<&str>) -> bool {
        let peer = PeerIdentity::new("cluster.local/ns/foo/sa/curl");
        let headers = BTreeMap::new();
        let req = Request {
            peer: Some(&peer),
            source_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 9))),
            remote_ip: None,
            destination_ip: None,
            destination_port: Some(8000),
            sni: None,
            http: path.map(|path| HttpRequest {
                method: "GET",
                host: "httpbin",
                path,
                headers: &headers,
            }),
            jwt: None,
        };
        auth.evaluate(&req, None).allowed
    }

    const HTTP: Option<&str> = Some("/anything");
    const ADMIN: Option<&str> = Some("/admin");
    const TCP: Option<&str> = None;

    // Policy level.

    #[test]
    fn an_unknown_action_is_never_built() {
        let (errors, auth) = build("action: REJECT, rules: [{}]");
        assert_eq!(errors, ["spec.action"]);
        assert!(auth.policies().is_empty());
        assert!(allowed(&auth, HTTP) && allowed(&auth, TCP));
    }

    #[test]
    fn custom_without_a_provider_denies_what_its_rules_match() {
        let (errors, auth) =
            build("action: CUSTOM, rules: [{to: [{operation: {paths: [/admin]}}]}]");
        assert_eq!(errors, ["spec.provider.name"]);
        assert!(!allowed(&auth, ADMIN));
        assert!(allowed(&auth, HTTP));
        // istiod's TCP deny filter is built from the same rules with DENY's rule: the HTTP-only
        // field goes, and the rule matches every connection.
        assert!(!allowed(&auth, TCP));
    }

    #[test]
    fn custom_or_deny_without_rules_matches_nothing() {
        for action in ["CUSTOM", "DENY"] {
            let (errors, auth) = build(&format!("action: {action}"));
            assert_eq!(errors, ["spec.rules"], "{action}");
            assert_eq!(auth.policies().len(), 1, "{action}");
            assert!(allowed(&auth, HTTP) && allowed(&auth, TCP), "{action}");
        }
    }

    #[test]
    fn a_provider_on_a_deny_is_ignored() {
        let (errors, auth) = build(
            "action: DENY, provider: {name: ext-authz}, rules: [{to: [{operation: {paths: [/admin]}}]}]",
        );
        assert_eq!(errors, ["spec.provider"]);
        assert!(allowed(&auth, HTTP));
        let peer = PeerIdentity::new("cluster.local/ns/foo/sa/curl");
        let headers = BTreeMap::new();
        let req = Request {
            peer: Some(&peer),
            source_ip: None,
            remote_ip: None,
            destination_ip: None,
            destination_port: Some(8000),
            sni: None,
            http: Some(HttpRequest {
                method: "GET",
                host: "httpbin",
                path: "/admin",
                headers: &headers,
            }),
            jwt: None,
        };
        let d = auth.evaluate(&req, None);
        assert_eq!(
            (d.allowed, d.reason, d.action()),
            (false, Reason::DenyPolicyMatched, Some(Action::Deny))
        );
    }

    #[test]
    fn dry_run_is_read_with_go_parse_bool() {
        let field = "metadata.annotations[istio.io/dry-run]";
        for (value, dry_run, valid) in [
            ("true", true, true),
            ("True", true, true),
            ("TRUE", true, true),
            ("t", true, true),
            ("1", true, true),
            ("false", false, true),
            ("0", false, true),
            // Refused by the webhook; istiod logs it and enforces the policy.
            ("yes", false, false),
            ("TrUe", false, false),
            ("", false, false),
        ] {
            let (errors, auth) = build_annotated(
                &format!("istio.io/dry-run: \"{value}\""),
                "action: DENY, rules: [{}]",
            );
            assert_eq!(errors.is_empty(), valid, "{value:?}: {errors:?}");
            if !valid {
                assert_eq!(errors, [field], "{value:?}");
            }
            assert_eq!(auth.policies()[0].dry_run, dry_run, "{value:?}");
            assert_eq!(allowed(&auth, HTTP), dry_run, "{value:?}");
        }
    }

    #[test]
    fn dry_run_on_audit_or_custom_is_refused_and_stays_a_shadow() {
        let (errors, auth) =
            build_annotated("istio.io/dry-run: \"true\"", "action: AUDIT, rules: [{}]");
        assert_eq!(errors, ["metadata.annotations[istio.io/dry-run]"]);
        assert!(auth.policies()[0].dry_run);
        let (errors, auth) = build_annotated(
            "istio.io/dry-run: \"true\"",
            "action: CUSTOM, provider: {name: ext-authz}, rules: [{}]",
        );
        assert_eq!(errors, ["metadata.annotations[istio.io/dry-run]"]);
        // istiod gives dry-run CUSTOM rules to no deny filter when the provider cannot be used.
        assert!(allowed(&auth, HTTP) && allowed(&auth, TCP));
    }

    #[test]
    fn target_refs_the_webhook_refuses_bind_as_istiod_attaches_them() {
        let (errors, auth) = build(&format!(
            "selector: {{matchLabels: {{app: a}}}}, {TO_WAYPOINT}, action: DENY, rules: [{{}}]"
        ));
        assert_eq!(errors, ["spec.selector"]);
        assert!(!allowed(&auth, HTTP), "a waypoint ignores the selector");
        let (errors, auth) = build(
            "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}, {kind: HTTPRoute, group: gateway.networking.k8s.io, name: r}], action: DENY, rules: [{}]",
        );
        assert_eq!(errors, ["spec.targetRefs[1].kind"]);
        assert!(!allowed(&auth, HTTP), "the good ref still binds");
        let (errors, auth) = build(
            "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint, namespace: bar}], action: DENY, rules: [{}]",
        );
        assert_eq!(errors, ["spec.targetRefs[0].namespace"]);
        assert!(
            auth.policies().is_empty(),
            "another namespace binds nothing"
        );
    }

    // Rule level.

    #[test]
    fn an_unknown_when_key_skips_an_allow_rule_and_is_dropped_from_a_deny_rule() {
        for key in ["destination.namespace", "request.colour", "\"\""] {
            let rule = format!("rules: [{{when: [{{key: {key}, values: [foo]}}]}}]");
            let (errors, auth) = build(&rule);
            assert_eq!(errors, ["spec.rules[0].when[0].key"], "{key}");
            assert!(
                !allowed(&auth, HTTP),
                "ALLOW {key}: its only rule is skipped"
            );
            // istiod skips the DENY rule too (denying nothing); this waypoint drops only the
            // condition, so the rule denies more (a documented fail-closed difference).
            let (_, auth) = build(&format!("action: DENY, {rule}"));
            assert!(!allowed(&auth, HTTP) && !allowed(&auth, TCP), "DENY {key}");
        }
    }

    #[test]
    fn empty_sources_and_operations_match_anything() {
        let (errors, auth) = build("rules: [{from: [{source: {}}], to: [{operation: {}}]}]");
        assert_eq!(
            errors,
            [
                "spec.rules[0].from[0].source",
                "spec.rules[0].to[0].operation"
            ]
        );
        assert!(allowed(&auth, HTTP) && allowed(&auth, TCP));
        let (errors, auth) = build("rules: [{from: [], to: [{}]}]");
        assert_eq!(
            errors,
            ["spec.rules[0].from", "spec.rules[0].to[0].operation"]
        );
        assert!(allowed(&auth, HTTP) && allowed(&auth, TCP));
    }

    #[test]
    fn a_condition_without_values_is_dropped() {
        let (errors, auth) = build(
            "rules: [{to: [{operation: {paths: [/admin]}}], when: [{key: \"request.headers[x-admin]\"}]}]",
        );
        assert_eq!(errors, ["spec.rules[0].when[0]"]);
        assert!(allowed(&auth, ADMIN), "the condition demands nothing");
        assert!(!allowed(&auth, HTTP));
    }

    #[test]
    fn service_accounts_beside_principals_are_both_required() {
        let rule = |principal: &str| {
            format!(
                "action: DENY, rules: [{{from: [{{source: {{serviceAccounts: [curl], principals: [{principal}]}}}}]}}]"
            )
        };
        let (errors, auth) = build(&rule("cluster.local/ns/foo/sa/curl"));
        assert_eq!(errors, ["spec.rules[0].from[0].source"]);
        assert!(!allowed(&auth, HTTP));
        let (_, auth) = build(&rule("cluster.local/ns/foo/sa/other"));
        assert!(allowed(&auth, HTTP));
    }

    // Value level.

    #[test]
    fn a_deny_with_a_bad_cidr_in_one_rule_denies_every_request() {
        // Issue 30's first case: rule 0 loses its only source value and matches everyone.
        let (errors, auth) = build(
            "action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}, {to: [{operation: {paths: [\"/admin*\"]}}]}]",
        );
        assert_eq!(errors, ["spec.rules[0].from[0].source.ipBlocks[0]"]);
        assert!(!allowed(&auth, HTTP) && !allowed(&auth, ADMIN) && !allowed(&auth, TCP));
        // Only the bad value goes: a good one beside it still narrows the rule.
        let (_, auth) = build(
            "action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/33, 192.0.2.0/24]}}]}]",
        );
        assert!(allowed(&auth, HTTP));
        // notIpBlocks left empty excludes nothing.
        let (errors, auth) =
            build("action: DENY, rules: [{from: [{source: {notIpBlocks: [10.244.0.0/99]}}]}]");
        assert_eq!(errors, ["spec.rules[0].from[0].source.notIpBlocks[0]"]);
        assert!(!allowed(&auth, HTTP));
    }

    #[test]
    fn an_allow_whose_only_rule_is_unusable_still_counts_and_denies_everything() {
        // Issue 30's second case.
        let (errors, auth) = build("rules: [{from: [{source: {ipBlocks: [not-a-cidr]}}]}]");
        assert_eq!(errors, ["spec.rules[0].from[0].source.ipBlocks[0]"]);
        assert_eq!(auth.policies().len(), 1);
        assert!(!allowed(&auth, HTTP) && !allowed(&auth, TCP));
        // Its other rules are built.
        let (_, auth) = build(
            "rules: [{from: [{source: {ipBlocks: [not-a-cidr]}}]}, {to: [{operation: {paths: [/anything]}}]}]",
        );
        assert!(allowed(&auth, HTTP) && !allowed(&auth, ADMIN));
    }

    #[test]
    fn bad_ports_and_malformed_keys_follow_the_same_rule() {
        for (rule, field) in [
            (
                "rules: [{to: [{operation: {ports: [\"80a\"]}}]}]",
                "spec.rules[0].to[0].operation.ports[0]",
            ),
            (
                "rules: [{when: [{key: destination.port, values: [\"99999\"]}]}]",
                "spec.rules[0].when[0].values[0]",
            ),
            (
                "rules: [{when: [{key: \"request.headers[x-a\", values: [a]}]}]",
                "spec.rules[0].when[0].key",
            ),
        ] {
            let (errors, auth) = build(rule);
            assert_eq!(errors, [field]);
            assert!(!allowed(&auth, HTTP), "ALLOW: {rule}");
            let (_, auth) = build(&format!("action: DENY, {rule}"));
            assert!(!allowed(&auth, HTTP), "DENY: {rule}");
        }
    }

    #[test]
    fn values_istiod_builds_anyway_never_match() {
        let (errors, auth) = build("rules: [{to: [{operation: {methods: [\"\"]}}]}]");
        assert_eq!(errors, ["spec.rules[0].to[0].operation.methods[0]"]);
        assert!(!allowed(&auth, HTTP));
        for (source, field) in [
            ("serviceAccounts: [\"*\"]", "serviceAccounts[0]"),
            ("serviceAccounts: [foo/curl/x]", "serviceAccounts[0]"),
            ("principals: [\"\"]", "principals[0]"),
            ("trustDomains: [\"clu*ster*\"]", "trustDomains[0]"),
        ] {
            let (errors, auth) = build(&format!(
                "action: DENY, rules: [{{from: [{{source: {{{source}}}}}]}}]"
            ));
            assert_eq!(errors, [format!("spec.rules[0].from[0].source.{field}")]);
            assert!(allowed(&auth, HTTP), "{source} matched");
        }
    }

    #[test]
    fn a_path_template_envoy_refuses_cannot_be_used() {
        let (errors, auth) = build("rules: [{to: [{operation: {paths: [\"/a/{**}/{*}\"]}}]}]");
        assert_eq!(errors, ["spec.rules[0].to[0].operation.paths[0]"]);
        assert!(!allowed(&auth, Some("/a/x/b")));
        let (_, auth) =
            build("action: DENY, rules: [{to: [{operation: {paths: [\"/a/{**}/{*}\", /admin]}}]}]");
        assert!(!allowed(&auth, ADMIN));
        assert!(allowed(&auth, Some("/a/x/b")) && allowed(&auth, HTTP));
    }
}
