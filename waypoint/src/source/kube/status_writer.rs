//! Writes our condition (`rust-waypoint.io/WaypointEnforced`) on the policies that concern this waypoint,
//! and (through [`gateway_status`]) its Gateway's status, with server-side apply under our own
//! field manager. Only the Lease holder writes.
//!
//! Istio declares policy `status` without a schema, so its `conditions` list is replaced as a
//! whole by an apply: we carry over conditions of other types (istiod's `ZtunnelAccepted` and
//! `WaypointAccepted`) from the object as last seen. Writes are skipped when the object already
//! shows the condition.
//!
//! Writes are paced by a token bucket ([`WRITES_PER_SECOND`], bursts of [`WRITE_BURST`]), and an
//! object whose write failed is tried again after [`RETRY`], doubling up to [`RETRY_MAX`], however
//! often the writer wakes. A 403 (the chart grants status writes only where this waypoint's
//! policies usually live) is logged once per kind and namespace with the RBAC rule it needs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_api_bindings::attachment::Targeting;
use gateway_api_bindings::istio::IstioCondition;
use gateway_api_bindings::status::{self, Condition};
use gateway_api_bindings::{Kind, Object, ObjectKey, Store};
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{self, Connection};
use super::gateway_status;
use super::retry::TokenBucket;
use super::status_write::Write;
use super::sync::StatusInput;
use crate::metrics::Metrics;
use crate::state::StateHandle;

/// How many status writes are in flight at once.
const CONCURRENCY: usize = 8;
/// After a failed write, the object is tried again this much later even if nothing changed;
/// each further failure doubles the wait, up to [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Writes a second once [`WRITE_BURST`] is used up. istiod paces its whole API client at 80 a
/// second with bursts of 160 (pilot-discovery's `--kubernetesApiQPS`/`--kubernetesApiBurst`);
/// a waypoint's status writes stay below that, so a waypoint starting among 10,000 policies asks
/// no more of the API server than istiod itself may (10,000 first writes take about 3 minutes).
const WRITES_PER_SECOND: f64 = 50.0;
const WRITE_BURST: u32 = 100;

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("gateway", &self.gateway)
            .field("field_manager", &self.field_manager)
            .finish_non_exhaustive()
    }
}

pub struct StatusWriter {
    pub(super) conn: Connection,
    pub gateway: ObjectKey,
    pub field_manager: String,
    pub handle: Arc<StateHandle>,
    pub metrics: Arc<Metrics>,
    /// The Gateway's (and GatewayClass's) status: [`gateway_status`].
    pub own: gateway_status::OwnGateway,
}

/// An object whose last write failed.
#[derive(Debug)]
struct Failed {
    attempts: u32,
    /// Not tried again before this.
    next: Instant,
    code: Option<u16>,
}

/// The writer's memory between passes.
#[derive(Debug)]
struct Passes {
    /// A fingerprint of what we last wrote, so a write whose echo has not come back yet is not
    /// repeated. Not the bodies themselves: at 10,000 policies they would cost tens of MB.
    written: HashMap<(Kind, ObjectKey), u64>,
    failed: HashMap<(Kind, ObjectKey), Failed>,
    /// `(kind, namespace)` whose 403 has been logged: once each, not once per object.
    forbidden: HashSet<(Kind, String)>,
    pace: TokenBucket,
}

impl Passes {
    fn new() -> Passes {
        Passes {
            written: HashMap::new(),
            failed: HashMap::new(),
            forbidden: HashSet::new(),
            pace: TokenBucket::new(WRITES_PER_SECOND, WRITE_BURST),
        }
    }
}

impl StatusWriter {
    pub async fn run(
        self,
        mut input: watch::Receiver<Arc<StatusInput>>,
        mut leader: watch::Receiver<bool>,
    ) {
        let mut passes = Passes::new();
        let mut pods = self.own.pods.clone();
        // When the earliest failed write may be tried again.
        let mut wake: Option<Instant> = None;
        loop {
            let changed = tokio::select! {
                r = input.changed() => r.is_ok(),
                r = leader.changed() => r.is_ok(),
                r = pods.changed() => r.is_ok(),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => true,
            };
            if !changed {
                return;
            }
            wake = None;
            if !*leader.borrow_and_update() {
                // A new term starts from what the objects show.
                passes = Passes::new();
                continue;
            }
            let current = input.borrow_and_update().clone();
            if !current.synced {
                continue;
            }
            let writes: Vec<Write> = {
                let store = self.handle.objects();
                let own = pods.borrow_and_update().clone();
                let mut writes = desired(&store, &current, &self.gateway);
                writes.extend(gateway_status::desired(
                    &store,
                    &self.gateway,
                    &own,
                    &self.own.options,
                ));
                writes
                    .into_iter()
                    .filter(|w| {
                        passes.written.get(&(w.kind, w.key.clone())) != Some(&fingerprint(&w.body))
                    })
                    .collect()
            };
            // An object that needs no write any more (deleted, or shown as wanted) starts afresh
            // should it fail again.
            let wanted: HashSet<(Kind, &ObjectKey)> =
                writes.iter().map(|w| (w.kind, &w.key)).collect();
            passes
                .failed
                .retain(|(kind, key), _| wanted.contains(&(*kind, key)));
            drop(wanted);
            // Objects whose last write failed wait out their retry time, however often
            // something else wakes the writer.
            let now = Instant::now();
            let (due, waiting): (Vec<Write>, Vec<Write>) = writes.into_iter().partition(|w| {
                passes
                    .failed
                    .get(&(w.kind, w.key.clone()))
                    .is_none_or(|f| f.next <= now)
            });
            wake = waiting
                .iter()
                .filter_map(|w| passes.failed.get(&(w.kind, w.key.clone())))
                .map(|f| f.next)
                .min();
            if due.is_empty() {
                continue;
            }
            tracing::debug!(
                writes = due.len(),
                waiting = waiting.len(),
                epoch = current.epoch,
                "writing status"
            );
            // Each write gets its turn from the token bucket up front; leadership is checked
            // again at each turn, so a replica that lost the Lease stops writing.
            let slots: Vec<(Write, Instant)> = due
                .into_iter()
                .map(|w| {
                    let at = now + passes.pace.reserve(now);
                    (w, at)
                })
                .collect();
            let me = &self;
            let results: Vec<(Write, Option<Result<(), kube::Error>>)> =
                futures::stream::iter(slots)
                    .map(|(w, at)| {
                        let still = leader.clone();
                        async move {
                            tokio::time::sleep_until(at).await;
                            if !*still.borrow() {
                                return (w, None);
                            }
                            let r = me.write(&w).await;
                            (w, Some(r))
                        }
                    })
                    .buffer_unordered(CONCURRENCY)
                    .collect()
                    .await;
            for (w, result) in results {
                let key = (w.kind, w.key.clone());
                match result {
                    None => {}
                    Some(Ok(())) => {
                        passes.failed.remove(&key);
                        passes.written.insert(key, fingerprint(&w.body));
                    }
                    Some(Err(e)) => {
                        let next = self.failed(&mut passes, &w, &e);
                        wake = Some(wake.map_or(next, |t| t.min(next)));
                    }
                }
            }
        }
    }

    async fn write(&self, w: &Write) -> Result<(), kube::Error> {
        let r = w.kind.api();
        let ar = client::api_resource(r);
        let api: Api<DynamicObject> = if w.key.namespace.is_empty() {
            Api::all_with(self.conn.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.conn.client.clone(), &w.key.namespace, &ar)
        };
        let params = PatchParams::apply(&self.field_manager).force();
        let mut body = w.body.clone();
        stamp_transition_times(&mut body);
        api.patch_status(&w.key.name, &params, &Patch::Apply(&body))
            .await
            .map(|_| {
                self.metrics.status_writes.inc();
            })
    }

    /// Records a failed write and logs it: a 403 once per kind and namespace (with the RBAC rule
    /// it needs), any other failure when it first happens to an object. Returns when the object
    /// may be tried again.
    fn failed(&self, passes: &mut Passes, w: &Write, e: &kube::Error) -> Instant {
        self.metrics.status_write_failures.inc();
        let code = client::status_code(e);
        let entry = passes
            .failed
            .entry((w.kind, w.key.clone()))
            .or_insert(Failed {
                attempts: 0,
                next: Instant::now(),
                code: None,
            });
        entry.attempts += 1;
        let delay = RETRY
            .saturating_mul(1u32 << (entry.attempts - 1).min(10))
            .min(RETRY_MAX);
        entry.next = Instant::now() + delay;
        let first = entry.attempts == 1 || entry.code != code;
        entry.code = code;
        let r = w.kind.api();
        let url = self.conn.url(&format!(
            "{}/status",
            r.object_path(&w.key.namespace, &w.key.name)
        ));
        let message = match e {
            kube::Error::Api(s) => s.message.clone(),
            other => other.to_string(),
        };
        if code == Some(403) {
            let ns = (!w.key.namespace.is_empty()).then_some(w.key.namespace.as_str());
            if passes.forbidden.insert((w.kind, w.key.namespace.clone())) {
                let rule = client::missing_rule(r, Some("status"), &["patch"], ns);
                tracing::warn!(
                    kind = %w.kind, object = %w.key, %url, code = 403, error = %message,
                    "status not written, forbidden by RBAC: missing rule {rule}; every {} there keeps its status unwritten, each retried after {delay:?} and then at most every {RETRY_MAX:?} (logged once)",
                    w.kind
                );
            } else {
                tracing::debug!(kind = %w.kind, object = %w.key, %url, code = 403, retry_in = ?delay, "status write forbidden");
            }
        } else if first {
            tracing::warn!(kind = %w.kind, object = %w.key, %url, code = ?code, error = %message, retry_in = ?delay, "status write failed; will retry");
        } else {
            tracing::debug!(kind = %w.kind, object = %w.key, %url, code = ?code, error = %message, retry_in = ?delay, "status write failed again");
        }
        entry.next
    }
}

fn fingerprint(body: &serde_json::Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.to_string().hash(&mut h);
    h.finish()
}

/// Conditions without a transition time get "now": the comparison with what is on the object
/// ignores the time, so this happens only when the condition really changed.
fn stamp_transition_times(body: &mut serde_json::Value) {
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now())
        .to_string();
    if let Some(conds) = body["status"]["conditions"].as_array_mut() {
        for c in conds {
            if c.get("lastTransitionTime")
                .is_none_or(serde_json::Value::is_null)
            {
                c["lastTransitionTime"] = now.clone().into();
            }
        }
    }
}

/// Every status write the store calls for.
fn desired(store: &Store, input: &StatusInput, gateway: &ObjectKey) -> Vec<Write> {
    let root = &input.settings.root_namespace;
    let mut out = Vec::new();
    for (key, ap) in &store.authorization_policies {
        if input
            .invalid
            .contains_key(&(Kind::AuthorizationPolicy, key.clone()))
        {
            continue;
        }
        let t = Targeting::of_authorization_policy(&ap.object);
        if !status::concerns(store, &t, gateway, root) {
            continue;
        }
        let Some(c) = status::authorization_policy(store, &ap.object, root).condition else {
            continue;
        };
        let observed = ap.object.status.as_ref().map(|s| s.conditions.as_slice());
        out.extend(policy_write(
            Kind::AuthorizationPolicy,
            key,
            &c,
            observed.unwrap_or(&[]),
        ));
    }
    for (key, ra) in &store.request_authentications {
        if input
            .invalid
            .contains_key(&(Kind::RequestAuthentication, key.clone()))
        {
            continue;
        }
        let t = Targeting::of_request_authentication(&ra.object);
        if !status::concerns(store, &t, gateway, root) {
            continue;
        }
        let Some(mut c) = status::request_authentication(store, &ra.object, root).condition else {
            continue;
        };
        // Inline keys this waypoint cannot verify with are named where the policy's author
        // looks (fetched keys are only known at run time: logged and counted there).
        let unusable: Vec<String> = ra
            .object
            .spec
            .jwt_rules
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                crate::authn::jwks::inline_problems(r.jwks.as_deref())
                    .into_iter()
                    .map(move |p| format!("jwtRules[{i}].jwks {p}"))
            })
            .collect();
        if !unusable.is_empty() {
            c.message = format!("{}; keys left out: {}", c.message, unusable.join("; "));
        }
        let observed = ra.object.status.as_ref().map(|s| s.conditions.as_slice());
        out.extend(policy_write(
            Kind::RequestAuthentication,
            key,
            &c,
            observed.unwrap_or(&[]),
        ));
    }
    for ((kind, key), inv) in &input.invalid {
        // A readable object says where it points; an unreadable one is reported by the
        // waypoint of its namespace.
        let concerns = match inv.object.as_deref() {
            Some(Object::AuthorizationPolicy(ap)) => status::concerns(
                store,
                &Targeting::of_authorization_policy(ap),
                gateway,
                root,
            ),
            Some(Object::RequestAuthentication(ra)) => status::concerns(
                store,
                &Targeting::of_request_authentication(ra),
                gateway,
                root,
            ),
            _ => key.namespace == gateway.namespace,
        };
        if !concerns
            || !matches!(
                kind,
                Kind::AuthorizationPolicy | Kind::RequestAuthentication
            )
        {
            continue;
        }
        let kept = if store.contains(*kind, key) {
            " (the previous valid version stays in force)"
        } else {
            " (not enforced)"
        };
        let c = Condition {
            status: false,
            reason: status::Reason::Invalid,
            message: format!(
                "invalid policy: {}{}: {}{kept}",
                inv.error.object, inv.error.field, inv.error.message
            ),
            observed_generation: inv.generation,
        };
        let observed = match (*kind, store_status(store, *kind, key)) {
            (_, Some(o)) => o,
            _ => Vec::new(),
        };
        out.extend(policy_write(*kind, key, &c, &observed));
    }
    out
}

fn store_status(store: &Store, kind: Kind, key: &ObjectKey) -> Option<Vec<IstioCondition>> {
    let status = match kind {
        Kind::AuthorizationPolicy => store.authorization_policies.get(key)?.object.status.clone(),
        Kind::RequestAuthentication => store
            .request_authentications
            .get(key)?
            .object
            .status
            .clone(),
        _ => None,
    };
    status.map(|s| s.conditions)
}

/// The apply body for `c` on a policy, or `None` when the object already shows it.
///
/// Our condition type is our own, [`WAYPOINT_ENFORCED`](gateway_api_bindings::well_known::WAYPOINT_ENFORCED): istiod writes
/// `WaypointAccepted` itself, and Istio's `status.conditions` has no schema, so each server-side
/// apply replaces the whole list. Two writers of one type would each put back their own version
/// forever. With a type of our own, istiod's apply only drops our condition from the list; we
/// put it back once beside istiod's unchanged condition, and istiod, finding its condition as it
/// wants it, writes nothing more. `WaypointAccepted` we write only where
/// [`status::writes_waypoint_accepted`] says no one else does.
fn policy_write(
    kind: Kind,
    key: &ObjectKey,
    c: &Condition,
    observed: &[IstioCondition],
) -> Option<Write> {
    let conditions = status::policy_conditions(observed, c);
    (conditions.as_slice() != observed).then(|| body(kind, key, conditions))
}

/// The whole list (other writers' conditions as last seen, and ours): the apply replaces it.
fn body(kind: Kind, key: &ObjectKey, conditions: Vec<IstioCondition>) -> Write {
    let r = kind.api();
    Write {
        kind,
        key: key.clone(),
        body: json!({
            "apiVersion": r.api_version(),
            "kind": r.kind,
            "metadata": {"name": key.name, "namespace": key.namespace},
            "status": {"conditions": conditions},
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gateway_api_bindings::well_known::{WAYPOINT_ACCEPTED, WAYPOINT_ENFORCED};

    use super::*;
    use crate::state::MeshSettings;

    const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec: {gatewayClassName: rust-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ours, namespace: demo, generation: 3}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: [POST]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: other}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{}]
";

    fn gateway() -> ObjectKey {
        ObjectKey::new("demo", "waypoint")
    }

    fn input() -> StatusInput {
        StatusInput {
            synced: true,
            settings: MeshSettings::default(),
            invalid: BTreeMap::new(),
            epoch: 1,
        }
    }

    fn store(extra: &str) -> Store {
        let mut s = Store::default();
        let errs = s.load_str(&format!("{CLUSTER}{extra}"), None);
        assert!(errs.is_empty(), "{errs:?}");
        s
    }

    fn conditions(w: &Write) -> Vec<IstioCondition> {
        serde_json::from_value(w.body["status"]["conditions"].clone()).unwrap()
    }

    fn policy_writes(writes: &[Write]) -> Vec<&Write> {
        writes
            .iter()
            .filter(|w| w.kind == Kind::AuthorizationPolicy)
            .collect()
    }

    #[test]
    fn a_policy_on_our_gateway_gets_our_condition_and_no_other() {
        let writes = desired(&store(""), &input(), &gateway());
        let policies = policy_writes(&writes);
        // Only the policy in the Gateway's namespace concerns it; `other/elsewhere` names a
        // Gateway `waypoint` of its own namespace.
        assert_eq!(policies.len(), 1, "{writes:?}");
        assert_eq!(policies[0].key, ObjectKey::new("demo", "ours"));
        let cs = conditions(policies[0]);
        let ours = cs.iter().find(|c| c.type_ == WAYPOINT_ENFORCED).unwrap();
        assert_eq!(ours.status, "True");
        assert_eq!(ours.observed_generation, Some(3));
    }

    #[test]
    fn a_policy_already_showing_our_condition_is_not_written_again() {
        let first = desired(&store(""), &input(), &gateway());
        let written = conditions(policy_writes(&first)[0]);
        // The echo of our apply: the object now shows exactly what we wrote.
        let mut echoed = store("");
        let ap = echoed
            .authorization_policies
            .get_mut(&ObjectKey::new("demo", "ours"))
            .unwrap();
        ap.object.status = Some(serde_json::from_value(json!({ "conditions": written })).unwrap());
        let again = desired(&echoed, &input(), &gateway());
        assert!(policy_writes(&again).is_empty(), "{again:?}");
    }

    #[test]
    fn istiods_conditions_are_carried_over_and_its_type_left_to_it() {
        let mut s = store("");
        let ap = s
            .authorization_policies
            .get_mut(&ObjectKey::new("demo", "ours"))
            .unwrap();
        ap.object.status = Some(
            serde_json::from_value(json!({"conditions": [
                {"type": "ZtunnelAccepted", "status": "False", "reason": "UnsupportedValue",
                 "message": "L7 rules are not enforced by ztunnel"},
                {"type": WAYPOINT_ACCEPTED, "status": "True", "reason": "Accepted",
                 "message": "bound to demo/waypoint"},
            ]}))
            .unwrap(),
        );
        let writes = desired(&s, &input(), &gateway());
        let cs = conditions(policy_writes(&writes)[0]);
        let types: Vec<&str> = cs.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            ["ZtunnelAccepted", WAYPOINT_ACCEPTED, WAYPOINT_ENFORCED],
            "{cs:?}"
        );
        // istiod's own condition goes back exactly as istiod wrote it.
        let istiods = cs.iter().find(|c| c.type_ == WAYPOINT_ACCEPTED).unwrap();
        assert_eq!(istiods.message.as_deref(), Some("bound to demo/waypoint"));
    }
}
