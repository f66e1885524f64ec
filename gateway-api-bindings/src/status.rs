//! The `WaypointAccepted` condition istiod sets on a policy
//! (`pilot/pkg/serviceregistry/ambient/policies.go`), and our own `WaypointEnforced` beside it.
//! The webhook findings that turn them Invalid come from [`crate::validation`]; the binding
//! rules from [`crate::attachment`] and [`crate::waypoint`].
//!
//! ## Two writers on one `conditions` list
//!
//! Istio declares a policy's `status` without a schema, so server-side apply replaces the
//! `conditions` list whole: each writer's apply drops what the others wrote. istiod writes
//! `ZtunnelAccepted` and `WaypointAccepted` (field managers `istio-ambient-ztunnel-policy` and
//! `istio-ambient-waypoint-policy`), each apply carrying its one condition, and writes again
//! only when its own condition differs from what the object shows. So that nothing flaps:
//!
//! * Our condition type is our own, [`WAYPOINT_ENFORCED`] ("enforced by this waypoint"),
//!   computed as istiod computes `WaypointAccepted`, except that a GatewayClass of our
//!   controller counts as a waypoint class (the `WaypointAccepted` we compute, and write when
//!   istiod does not, is the same computation). istiod never writes our type, so no type has two
//!   owners.
//! * [`merge_conditions`]: our apply carries every condition of another type as the object shows
//!   it, so our write never removes istiod's. When istiod's apply removes ours, we add it back
//!   once; istiod does not react, since its own condition is unchanged.
//! * [`writes_waypoint_accepted`]: we also write `WaypointAccepted`, for clusters where istiod
//!   does not (an old istiod, ambient status turned off, a file config), only while the object
//!   shows none, or shows ours. "Ours" is read from the list itself, because the watcher keeps no
//!   `managedFields` and our own apply would take the list's ownership from istiod anyway: a
//!   `WaypointAccepted` equal to our `WaypointEnforced` beside it (we write both in one apply,
//!   equal), or equal to what we would write (then writing it changes nothing). Any other
//!   `WaypointAccepted` is another writer's: we carry it over untouched and never write that
//!   type on this object while it differs from ours. If both writers agree, they write the same
//!   content; if they disagree, istiod's answer stays after at most one round.
//!
//! Known limit: once istiod has written a `WaypointAccepted` we disagree with, we leave that
//! type alone even if istiod is later removed; our `WaypointEnforced` still says what we do.

use policy_engine::{Action, FieldIssue};

use crate::attachment::Targeting;
use crate::istio::{
    AuthorizationPolicy, IstioCondition, PolicyTargetReference, RequestAuthentication,
};
use crate::key::{Kind, ObjectKey};
use crate::store::Store;
use crate::translate;
use crate::validation;
use crate::waypoint::{Target, attachment, is_waypoint};
use crate::well_known::{
    MESH_CONTROLLER, RUST_WAYPOINT_CLASS, RUST_WAYPOINT_CONTROLLER, WAYPOINT_ACCEPTED,
    WAYPOINT_CLASS, WAYPOINT_ENFORCED, canonical_group,
};

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

impl Condition {
    /// This condition as Istio's status holds it, under `type_` ([`WAYPOINT_ENFORCED`] or
    /// [`WAYPOINT_ACCEPTED`]), without a transition time (see [`merge_conditions`]).
    pub fn to_istio(&self, type_: &str) -> IstioCondition {
        IstioCondition {
            type_: type_.to_owned(),
            status: if self.status { "True" } else { "False" }.to_owned(),
            reason: Some(self.reason.as_str().to_owned()),
            message: Some(self.message.clone()),
            observed_generation: self.observed_generation,
            last_transition_time: None,
        }
    }
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
    let in_force = match translate::policy_spec(ap).map(|s| s.action()) {
        Err(_) => "never enforced: the CRD's enum keeps the API server from storing this action",
        Ok(Action::Allow) => {
            "in a cluster it is enforced as istiod builds it: a rule holding a value that cannot \
             be used is left out, and the policy still counts as an ALLOW policy"
        }
        Ok(_) => {
            "in a cluster it is enforced as istiod builds it: a value that cannot be used is \
             ignored, which widens its rule"
        }
    };
    conclude(store, &t, f.errors, f.warnings, root_namespace, in_force)
}

/// The same for a RequestAuthentication: targetRefs bind it exactly like an AuthorizationPolicy.
pub fn request_authentication(
    store: &Store,
    ra: &RequestAuthentication,
    root_namespace: &str,
) -> PolicyStatus {
    let f = validation::request_authentication(ra);
    let t = Targeting::of_request_authentication(ra);
    let in_force = "in a cluster it is enforced as istiod builds it, except that a jwtRule this \
                    waypoint cannot use is left out, so tokens of its issuer get 401";
    conclude(store, &t, f.errors, f.warnings, root_namespace, in_force)
}

fn conclude(
    store: &Store,
    t: &Targeting<'_>,
    errors: Vec<FieldIssue>,
    warnings: Vec<FieldIssue>,
    root_namespace: &str,
    in_force: &str,
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
        // istiod's webhook would have refused the object: say why instead of a binding
        // result, and what a cluster that holds it anyway enforces.
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        condition = Condition {
            status: false,
            reason: Reason::Invalid,
            message: format!("invalid policy: {}; {in_force}", list.join("; ")),
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
            // Named, served or refused: a refusal is this waypoint's to report.
            "Service" => store
                .services
                .get(&key)
                .is_some_and(|s| attachment(store, Target::Service(&s.object)).names(gateway)),
            "ServiceEntry" => store
                .service_entries
                .get(&key)
                .is_some_and(|s| attachment(store, Target::ServiceEntry(&s.object)).names(gateway)),
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
            Some(g) if is_waypoint(store, &g.object) => {
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
            Some(s) => service_waypoint(store, Target::Service(&s.object), "Service", &key),
            None => (
                false,
                Reason::TargetNotFound,
                format!("Service {key} was not found"),
            ),
        },
        "ServiceEntry" => match store.service_entries.get(&key) {
            Some(s) => {
                service_waypoint(store, Target::ServiceEntry(&s.object), "ServiceEntry", &key)
            }
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
        // Istio installs its class itself, and our chart ours; a file config rarely carries them.
        None if name == WAYPOINT_CLASS => MESH_CONTROLLER.to_owned(),
        None if name == RUST_WAYPOINT_CLASS => RUST_WAYPOINT_CONTROLLER.to_owned(),
        None => {
            return (
                false,
                Reason::TargetNotFound,
                format!("GatewayClass {name} was not found"),
            );
        }
    };
    // istiod accepts its own controller only; this waypoint enforces policies naming its own
    // class too, so its conditions accept both.
    if controller != MESH_CONTROLLER && controller != RUST_WAYPOINT_CONTROLLER {
        let msg = format!(
            "GatewayClass must use controller name `{MESH_CONTROLLER}` or `{RUST_WAYPOINT_CONTROLLER}` for waypoints"
        );
        return (false, Reason::Invalid, msg);
    }
    (true, Reason::Accepted, format!("bound to {name}"))
}

fn service_waypoint(
    store: &Store,
    target: Target<'_>,
    kind: &str,
    key: &ObjectKey,
) -> (bool, Reason, String) {
    let (bound, message) =
        crate::waypoint::binding_condition(&attachment(store, target), kind, key);
    let reason = if bound {
        Reason::Accepted
    } else {
        Reason::AncestorNotBound
    };
    (bound, reason, message)
}

/// Our [`WAYPOINT_ENFORCED`] condition on one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyCondition {
    /// [`Kind::AuthorizationPolicy`] or [`Kind::RequestAuthentication`].
    pub kind: Kind,
    pub key: ObjectKey,
    pub condition: Condition,
}

/// Our condition for every AuthorizationPolicy and RequestAuthentication that concerns the
/// waypoint `gateway` (see [`concerns`]), computed as `WaypointAccepted` is. Policies without
/// targetRefs get none: no waypoint considers them.
pub fn enforced_conditions(
    store: &Store,
    gateway: &ObjectKey,
    root_namespace: &str,
) -> Vec<PolicyCondition> {
    let mut out = Vec::new();
    for (key, ap) in &store.authorization_policies {
        let t = Targeting::of_authorization_policy(&ap.object);
        if !concerns(store, &t, gateway, root_namespace) {
            continue;
        }
        if let Some(condition) = authorization_policy(store, &ap.object, root_namespace).condition {
            out.push(PolicyCondition {
                kind: Kind::AuthorizationPolicy,
                key: key.clone(),
                condition,
            });
        }
    }
    for (key, ra) in &store.request_authentications {
        let t = Targeting::of_request_authentication(&ra.object);
        if !concerns(store, &t, gateway, root_namespace) {
            continue;
        }
        if let Some(condition) = request_authentication(store, &ra.object, root_namespace).condition
        {
            out.push(PolicyCondition {
                kind: Kind::RequestAuthentication,
                key: key.clone(),
                condition,
            });
        }
    }
    out
}

/// The `conditions` list to apply on a policy that shows `existing`: every condition of
/// another type kept as it is and where it is, then ours ([`WAYPOINT_ENFORCED`], and
/// [`WAYPOINT_ACCEPTED`] when [`writes_waypoint_accepted`] allows). Apply it only when it
/// differs from `existing`; applying it twice gives the same list.
pub fn policy_conditions(existing: &[IstioCondition], ours: &Condition) -> Vec<IstioCondition> {
    let mut mine = vec![ours.to_istio(WAYPOINT_ENFORCED)];
    if writes_waypoint_accepted(existing, ours) {
        mine.push(ours.to_istio(WAYPOINT_ACCEPTED));
    }
    merge_conditions(existing, &mine)
}

/// `existing` with each of `ours` in place of the condition of its type (appended when there
/// is none); conditions of other types are kept as they are. A condition whose status did not
/// change keeps its `lastTransitionTime`; a changed or new one has none, for the writer to stamp.
/// Idempotent: merging the result again with the same `ours` returns it unchanged, so a writer
/// comparing the merge with what the object shows does not loop.
pub fn merge_conditions(
    existing: &[IstioCondition],
    ours: &[IstioCondition],
) -> Vec<IstioCondition> {
    let with_time = |c: &IstioCondition| {
        let mut c = c.clone();
        c.last_transition_time = existing
            .iter()
            .find(|e| e.type_ == c.type_ && e.status == c.status)
            .and_then(|e| e.last_transition_time.clone());
        c
    };
    let mut out: Vec<IstioCondition> = existing
        .iter()
        .map(|e| match ours.iter().find(|o| o.type_ == e.type_) {
            Some(o) => with_time(o),
            None => e.clone(),
        })
        .collect();
    for o in ours {
        if !existing.iter().any(|e| e.type_ == o.type_) {
            out.push(with_time(o));
        }
    }
    out
}

/// Whether we write [`WAYPOINT_ACCEPTED`] too on a policy showing `existing`, computing `ours`:
/// only when the policy shows none, or one equal to our [`WAYPOINT_ENFORCED`] beside it or to
/// `ours` (see the module docs for why this signal and not `managedFields`).
pub fn writes_waypoint_accepted(existing: &[IstioCondition], ours: &Condition) -> bool {
    let of = |t: &str| existing.iter().find(|c| c.type_ == t);
    let Some(accepted) = of(WAYPOINT_ACCEPTED) else {
        return true;
    };
    let same = |a: &IstioCondition, b: &IstioCondition| {
        (&a.status, &a.reason, &a.message, a.observed_generation)
            == (&b.status, &b.reason, &b.message, b.observed_generation)
    };
    of(WAYPOINT_ENFORCED).is_some_and(|enforced| same(accepted, enforced))
        || same(accepted, &ours.to_istio(WAYPOINT_ACCEPTED))
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

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> IstioCondition {
        IstioCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            observed_generation: Some(3),
            last_transition_time: Some("2026-01-01T00:00:00Z".into()),
        }
    }

    fn ours(bound: bool) -> Condition {
        Condition {
            status: bound,
            reason: if bound {
                Reason::Accepted
            } else {
                Reason::TargetNotFound
            },
            message: if bound {
                "bound to istio-system/rust-waypoint".into()
            } else {
                "gone".into()
            },
            observed_generation: Some(3),
        }
    }

    #[test]
    fn merge_keeps_istiods_conditions() {
        let ztunnel = cond("ZtunnelAccepted", "False", "Invalid", "not for ztunnel");
        let istiod = cond(
            WAYPOINT_ACCEPTED,
            "False",
            "Invalid",
            "GatewayClass must use controller name `istio.io/mesh-controller` for waypoints",
        );
        let existing = vec![ztunnel.clone(), istiod.clone()];
        let merged = policy_conditions(&existing, &ours(true));
        assert_eq!(merged[..2], existing[..], "istiod's conditions untouched");
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[2].type_, WAYPOINT_ENFORCED);
        assert_eq!(merged[2].status, "True");
        assert_eq!(
            merged[2].last_transition_time, None,
            "new: the writer stamps it"
        );
        assert_eq!(
            policy_conditions(&merged, &ours(true)),
            merged,
            "merging twice changes nothing"
        );
    }

    #[test]
    fn alone_we_write_and_update_waypoint_accepted() {
        let first = policy_conditions(&[], &ours(true));
        let types: Vec<&str> = first.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [WAYPOINT_ENFORCED, WAYPOINT_ACCEPTED]);
        assert_eq!(policy_conditions(&first, &ours(true)), first);
        // The inputs change: both of ours follow.
        let second = policy_conditions(&first, &ours(false));
        assert!(second.iter().all(|c| c.status == "False"), "{second:?}");
        assert_eq!(policy_conditions(&second, &ours(false)), second);
        // Same status: the transition time stays.
        let mut stamped = first.clone();
        for c in &mut stamped {
            c.last_transition_time = Some("t0".into());
        }
        let mut moved = ours(true);
        moved.message = "bound to istio-system/rust-waypoint (again)".into();
        let third = policy_conditions(&stamped, &moved);
        assert!(
            third
                .iter()
                .all(|c| c.last_transition_time.as_deref() == Some("t0"))
        );
    }

    /// istiod beside us: it applies `[WaypointAccepted]` alone (the list is replaced whole)
    /// whenever the object's WaypointAccepted differs from its own; we apply our merge whenever
    /// it differs from the object. Whoever starts, both settle within a few writes, and then
    /// each condition is there once: istiod's WaypointAccepted and our WaypointEnforced.
    #[test]
    fn a_second_writer_of_waypoint_accepted_settles() {
        let istiods = cond(WAYPOINT_ACCEPTED, "False", "Invalid", "istiod says no");
        let same = |a: &IstioCondition, b: &IstioCondition| {
            (&a.status, &a.reason, &a.message, a.observed_generation)
                == (&b.status, &b.reason, &b.message, b.observed_generation)
        };
        for we_first in [true, false] {
            let mut object = vec![cond("ZtunnelAccepted", "True", "Accepted", "ztunnel")];
            let mut writes = 0;
            let mut quiet = false;
            for _ in 0..10 {
                let mut wrote = false;
                for us in [we_first, !we_first] {
                    if us {
                        let want = policy_conditions(&object, &ours(true));
                        if want != object {
                            object = want;
                            wrote = true;
                            writes += 1;
                        }
                    } else {
                        let shown = object.iter().find(|c| c.type_ == WAYPOINT_ACCEPTED);
                        if !shown.is_some_and(|c| same(c, &istiods)) {
                            object = vec![istiods.clone()];
                            wrote = true;
                            writes += 1;
                        }
                    }
                }
                if !wrote {
                    quiet = true;
                    break;
                }
            }
            assert!(quiet, "a write loop (we first: {we_first}): {object:?}");
            assert!(writes <= 4, "{writes} writes (we first: {we_first})");
            let of = |t: &str| object.iter().filter(|c| c.type_ == t).collect::<Vec<_>>();
            assert_eq!(of(WAYPOINT_ACCEPTED), [&istiods], "istiod's, untouched");
            assert_eq!(
                of(WAYPOINT_ENFORCED).len(),
                1,
                "ours, back after istiod's apply"
            );
            assert_eq!(of(WAYPOINT_ENFORCED)[0].status, "True");
        }
    }

    #[test]
    fn our_class_from_the_root_namespace_is_enforced() {
        let mut store = Store::default();
        let errs = store.load_str(
            "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec: {gatewayClassName: rust-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec: {action: DENY, targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: rust-waypoint}], rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: bar}
spec: {action: DENY, targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: rust-waypoint}], rules: [{}]}
",
            None,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let gw = ObjectKey::new("foo", "waypoint");
        let found = enforced_conditions(&store, &gw, "istio-system");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, ObjectKey::new("istio-system", "deny-all"));
        assert_eq!(
            (found[0].condition.status, found[0].condition.reason),
            (true, Reason::Accepted)
        );
        let outside = &store.authorization_policies[&ObjectKey::new("bar", "elsewhere")].object;
        let c = authorization_policy(&store, outside, "istio-system")
            .condition
            .expect("condition");
        assert_eq!(c.reason, Reason::Invalid);
        assert!(c.message.contains("root namespace"), "{}", c.message);
    }
}
