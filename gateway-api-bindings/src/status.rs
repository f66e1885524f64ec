//! The `WaypointAccepted` condition istiod sets on a policy
//! (`pilot/pkg/serviceregistry/ambient/policies.go`). The webhook findings that turn it Invalid
//! come from [`crate::validation`]; the binding rules from [`crate::attachment`] and
//! [`crate::waypoint`].

use policy_engine::FieldIssue;

use crate::attachment::Targeting;
use crate::istio::{AuthorizationPolicy, PolicyTargetReference, RequestAuthentication};
use crate::key::ObjectKey;
use crate::store::Store;
use crate::validation;
use crate::waypoint::{is_waypoint, waypoint_of};
use crate::well_known::{MESH_CONTROLLER, WAYPOINT_CLASS, canonical_group};

/// Reasons, spelled as istiod spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Accepted,
    Invalid,
    PartiallyInvalid,
    TargetNotFound,
    AncestorNotBound,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::Invalid => "Invalid",
            Reason::PartiallyInvalid => "PartiallyInvalid",
            Reason::TargetNotFound => "TargetNotFound",
            Reason::AncestorNotBound => "AncestorNotBound",
        }
    }
}

/// One `WaypointAccepted` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub status: bool,
    pub reason: Reason,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// What `waypoint authz check` reports for one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    /// `None`: the policy has no targetRefs, so no waypoint considers it.
    pub condition: Option<Condition>,
    pub errors: Vec<FieldIssue>,
    pub warnings: Vec<FieldIssue>,
}

impl PolicyStatus {
    pub fn is_invalid(&self) -> bool {
        !self.errors.is_empty()
            || self
                .condition
                .as_ref()
                .is_some_and(|c| c.reason != Reason::Accepted)
    }
}

struct RefResult {
    bound: bool,
    reason: Reason,
    message: String,
    ancestor: String,
}

/// Validates `ap` and computes the condition istiod would set from what `store` holds.
pub fn authorization_policy(
    store: &Store,
    ap: &AuthorizationPolicy,
    root_namespace: &str,
) -> PolicyStatus {
    let f = validation::authorization_policy(ap);
    let t = Targeting::of_authorization_policy(ap);
    conclude(store, &t, f.errors, f.warnings, root_namespace)
}

/// The same for a RequestAuthentication: targetRefs bind it exactly like an AuthorizationPolicy.
pub fn request_authentication(
    store: &Store,
    ra: &RequestAuthentication,
    root_namespace: &str,
) -> PolicyStatus {
    let f = validation::request_authentication(ra);
    let t = Targeting::of_request_authentication(ra);
    conclude(store, &t, f.errors, f.warnings, root_namespace)
}

fn conclude(
    store: &Store,
    t: &Targeting<'_>,
    errors: Vec<FieldIssue>,
    warnings: Vec<FieldIssue>,
    root_namespace: &str,
) -> PolicyStatus {
    let refs = t.refs();
    if refs.is_empty() {
        return PolicyStatus {
            condition: None,
            errors,
            warnings,
        };
    }
    let generation = t.generation;
    let results: Vec<RefResult> = refs
        .iter()
        .map(|r| ref_result(store, &t.namespace, r, root_namespace))
        .collect();
    let mut condition = flatten(&results, generation);
    if !errors.is_empty() {
        // istiod's webhook would have refused the object; say why instead of a binding result.
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        condition = Condition {
            status: false,
            reason: Reason::Invalid,
            message: format!("invalid policy: {}", list.join("; ")),
            observed_generation: generation,
        };
    }
    PolicyStatus {
        condition: Some(condition),
        errors,
        warnings,
    }
}

/// Whether the waypoint `gateway` should report on a policy: one of its refs names `gateway`,
/// a Service or ServiceEntry that uses it, or the waypoint's class (from the root namespace); or
/// the policy lives in the waypoint's namespace (so a ref to a missing target is reported by
/// the namespace's waypoint).
pub fn concerns(
    store: &Store,
    t: &Targeting<'_>,
    gateway: &ObjectKey,
    root_namespace: &str,
) -> bool {
    let refs = t.refs();
    if refs.is_empty() {
        return false;
    }
    if t.namespace == gateway.namespace {
        return true;
    }
    refs.iter().any(|r| {
        let key = ObjectKey::new(&t.namespace, r.name.clone());
        match r.kind.as_str() {
            "Gateway" => key == *gateway,
            "GatewayClass" => {
                t.namespace == root_namespace
                    && store
                        .gateways
                        .get(gateway)
                        .is_some_and(|g| g.object.spec.gateway_class_name == r.name)
            }
            "Service" => store
                .services
                .get(&key)
                .is_some_and(|s| waypoint_of(store, &s.object.metadata).as_ref() == Some(gateway)),
            "ServiceEntry" => store
                .service_entries
                .get(&key)
                .is_some_and(|s| waypoint_of(store, &s.object.metadata).as_ref() == Some(gateway)),
            _ => false,
        }
    })
}

fn flatten(results: &[RefResult], generation: Option<i64>) -> Condition {
    if let [only] = results {
        return Condition {
            status: only.bound,
            reason: only.reason,
            message: only.message.clone(),
            observed_generation: generation,
        };
    }
    let bound = results.iter().any(|r| r.bound);
    let unbound: Vec<&str> = results
        .iter()
        .filter(|r| !r.bound)
        .map(|r| r.ancestor.as_str())
        .collect();
    let reason = match (bound, unbound.is_empty()) {
        (true, true) => Reason::Accepted,
        (true, false) => Reason::PartiallyInvalid,
        (false, _) => Reason::Invalid,
    };
    let message = if unbound.is_empty() {
        String::new()
    } else {
        format!("Invalid targetRefs: {}", unbound.join(", "))
    };
    Condition {
        status: bound,
        reason,
        message,
        observed_generation: generation,
    }
}

fn ref_result(store: &Store, policy_ns: &str, r: &PolicyTargetReference, root: &str) -> RefResult {
    let ns = r
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| policy_ns.to_owned());
    let key = ObjectKey::new(ns.clone(), r.name.clone());
    let ancestor = format!("{}.{}:{key}", r.kind, canonical_group(&r.group));
    let (bound, reason, message) = match r.kind.as_str() {
        "GatewayClass" => gateway_class(store, &ns, &r.name, root),
        "Gateway" => match store.gateways.get(&key) {
            Some(g) if is_waypoint(&g.object) => {
                (true, Reason::Accepted, format!("bound to {key}"))
            }
            Some(_) => (
                false,
                Reason::TargetNotFound,
                format!("Gateway {key} is not a waypoint"),
            ),
            None => (
                false,
                Reason::TargetNotFound,
                format!("Gateway {key} was not found"),
            ),
        },
        "Service" => match store.services.get(&key) {
            Some(s) => service_waypoint(store, &s.object.metadata, "Service", &key),
            None => (
                false,
                Reason::TargetNotFound,
                format!("Service {key} was not found"),
            ),
        },
        "ServiceEntry" => match store.service_entries.get(&key) {
            Some(s) => service_waypoint(store, &s.object.metadata, "ServiceEntry", &key),
            None => (
                false,
                Reason::TargetNotFound,
                format!("ServiceEntry {key} was not found"),
            ),
        },
        other => (
            false,
            Reason::Invalid,
            format!("unsupported targetRef kind {other:?}"),
        ),
    };
    RefResult {
        bound,
        reason,
        message,
        ancestor,
    }
}

fn gateway_class(store: &Store, ns: &str, name: &str, root: &str) -> (bool, Reason, String) {
    if ns != root {
        let msg = format!(
            "AuthorizationPolicy must be in the root namespace `{root}` when referencing a GatewayClass"
        );
        return (false, Reason::Invalid, msg);
    }
    let controller = match store.gateway_classes.get(name) {
        Some(c) => c.object.spec.controller_name.clone(),
        // Istio installs this class itself; a file config rarely carries it.
        None if name == WAYPOINT_CLASS => MESH_CONTROLLER.to_owned(),
        None => {
            return (
                false,
                Reason::TargetNotFound,
                format!("GatewayClass {name} was not found"),
            );
        }
    };
    if controller != MESH_CONTROLLER {
        let msg =
            format!("GatewayClass must use controller name `{MESH_CONTROLLER}` for waypoints");
        return (false, Reason::Invalid, msg);
    }
    (true, Reason::Accepted, format!("bound to {name}"))
}

fn service_waypoint(
    store: &Store,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: &str,
    key: &ObjectKey,
) -> (bool, Reason, String) {
    match waypoint_of(store, meta) {
        Some(w) => (true, Reason::Accepted, format!("bound to {w}")),
        None => (
            false,
            Reason::AncestorNotBound,
            format!("{kind} {key} is not bound to a waypoint"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo, labels: {istio.io/use-waypoint: waypoint}}
spec: {ports: [{port: 8000}]}
---
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: foo}
spec: {ports: [{port: 80}]}
";

    fn status_of(spec: &str, ns: &str) -> PolicyStatus {
        let mut store = Store::default();
        let doc = format!(
            "{BASE}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {ns}, generation: 3}}\nspec: {spec}\n"
        );
        let errs = store.load_str(&doc, None);
        assert!(errs.is_empty(), "{errs:?}");
        let ap = &store.authorization_policies[&ObjectKey::new(ns, "p")].object;
        authorization_policy(&store, ap, "istio-system")
    }

    #[test]
    fn reasons_follow_istiod() {
        let c = |spec: &str, ns: &str| status_of(spec, ns).condition.expect("condition");
        let gw = c(
            "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]}",
            "foo",
        );
        assert_eq!(
            (gw.status, gw.reason, gw.message.as_str()),
            (true, Reason::Accepted, "bound to foo/waypoint")
        );
        assert_eq!(gw.observed_generation, Some(3));
        let missing = c("{targetRefs: [{kind: Service, name: nope}]}", "foo");
        assert_eq!(
            (missing.status, missing.reason),
            (false, Reason::TargetNotFound)
        );
        let unbound = c("{targetRefs: [{kind: Service, name: lonely}]}", "foo");
        assert_eq!(unbound.reason, Reason::AncestorNotBound);
        let partial = c(
            "{targetRefs: [{kind: Service, name: httpbin}, {kind: Service, name: nope}]}",
            "foo",
        );
        assert_eq!(
            (partial.status, partial.reason),
            (true, Reason::PartiallyInvalid)
        );
        assert_eq!(partial.message, "Invalid targetRefs: Service.core:foo/nope");
        let none = c(
            "{targetRefs: [{kind: Service, name: a}, {kind: Service, name: b}]}",
            "foo",
        );
        assert_eq!((none.status, none.reason), (false, Reason::Invalid));
        let class = c(
            "{targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]}",
            "foo",
        );
        assert_eq!(class.reason, Reason::Invalid);
        assert!(class.message.contains("root namespace"));
        assert!(
            status_of("{selector: {matchLabels: {app: x}}}", "foo")
                .condition
                .is_none()
        );
    }

    #[test]
    fn validation_errors_make_it_invalid() {
        let s = status_of(
            "{selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: httpbin}], rules: [{from: [{source: {ipBlocks: [300.0.0.1]}}]}]}",
            "foo",
        );
        let fields: Vec<&str> = s.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.selector", "spec.rules[0].from[0].source.ipBlocks[0]"]
        );
        assert_eq!(s.condition.map(|c| c.reason), Some(Reason::Invalid));
        assert!(
            status_of("{targetRefs: [{kind: Service, name: httpbin}]}", "foo")
                .errors
                .is_empty()
        );
    }
}
