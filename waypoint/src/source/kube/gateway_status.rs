//! The waypoint as the controller of its own Gateway (and, where allowed, of its GatewayClass).
//!
//! istiod treats a Gateway as a waypoint once `status.addresses` is set, and for a class it does
//! not know it writes no status at all: for a Gateway of our class, that status is ours to write.
//! The Lease holder applies on `gateways/status`, under the one field manager:
//!
//! * `Accepted` and `Programmed`, with `observedGeneration`, worded as istiod words its own;
//! * `status.addresses`: the Service's hostname `<svc>.<ns>.svc.<cluster domain>` (the address
//!   istiod prefers and sends to ztunnel), then each ClusterIP, once that Service exists and at
//!   least one of the Gateway's pods is Ready. Never removed afterwards: an empty list makes
//!   ztunnel send the waypoint's traffic nowhere (istio/istio#53637), so addresses seen on the
//!   object are carried in every later apply (an apply that omits a field we own deletes it).
//!
//! Which of the Gateway's pods are Ready comes from the store's one pod watch, read on the way
//! in ([`super::own_pods`]): readiness is not among the few pod fields the store keeps.

use gateway_api::apis::standard::gateways::Gateway;
use gateway_api_bindings::gateway_status::{self as bindings, GatewayCondition};
use gateway_api_bindings::well_known::{RUST_WAYPOINT_CLASS, RUST_WAYPOINT_CONTROLLER};
use gateway_api_bindings::{Kind, ObjectKey, Store};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as KubeCondition;
use serde_json::json;
use tokio::sync::watch;

use super::own_pods::OwnPods;
use super::status_write::Write;

/// What the Gateway status needs besides the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatusOptions {
    /// Kubernetes' cluster domain: the Service's hostname is `<svc>.<ns>.svc.<this>`.
    pub cluster_domain: String,
    /// Write `Accepted` on every GatewayClass naming our controller. One release per cluster
    /// owns the class (the chart's `gatewayClass.create`); the others leave it alone.
    pub class_status: bool,
}

impl Default for GatewayStatusOptions {
    fn default() -> Self {
        GatewayStatusOptions {
            cluster_domain: "cluster.local".into(),
            class_status: false,
        }
    }
}

/// The Gateway status writer's own inputs, beside the store.
#[derive(Debug, Clone)]
pub struct OwnGateway {
    pub options: GatewayStatusOptions,
    pub pods: watch::Receiver<OwnPods>,
}

/// Whether a Gateway is ours to report on: its class names our controller, or it is our class
/// and no GatewayClass object says otherwise (the class may be owned by another release that is
/// not installed yet).
pub fn is_our_gateway(store: &Store, gw: &Gateway) -> bool {
    let class = &gw.spec.gateway_class_name;
    match store.gateway_classes.get(class) {
        Some(c) => c.object.spec.controller_name == RUST_WAYPOINT_CONTROLLER,
        None => class == RUST_WAYPOINT_CLASS,
    }
}

/// The Gateway and GatewayClass writes the store calls for; nothing until the pod watch has
/// listed once (else a restart would report "no pod Ready" for a moment).
pub(super) fn desired(
    store: &Store,
    gateway: &ObjectKey,
    pods: &OwnPods,
    opts: &GatewayStatusOptions,
) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(gw) = store.gateways.get(gateway)
        && pods.listed
        && is_our_gateway(store, &gw.object)
    {
        let gw = &gw.object;
        let service = store.services.get(gateway).map(|s| &s.object);
        let want =
            bindings::gateway_status(gw, service, !pods.ready.is_empty(), &opts.cluster_domain);
        let status = gw.status.as_ref();
        let observed = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
        let published = status.and_then(|s| s.addresses.as_deref()).unwrap_or(&[]);
        let addresses = bindings::addresses_to_publish(published, &want.addresses);
        if !shows(observed, &want.conditions) || published != addresses.as_slice() {
            let mut body = json!({"conditions": conditions_json(observed, &want.conditions)});
            if !addresses.is_empty() {
                body["addresses"] = serde_json::to_value(&addresses).unwrap_or_default();
            }
            out.push(write(Kind::Gateway, gateway.clone(), body));
        }
    }
    if opts.class_status {
        for (name, class) in &store.gateway_classes {
            let Some(want) = bindings::gateway_class_status(&class.object) else {
                continue;
            };
            let want = [want];
            let observed = class
                .object
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or(&[]);
            if !shows(observed, &want) {
                let body = json!({"conditions": conditions_json(observed, &want)});
                out.push(write(
                    Kind::GatewayClass,
                    ObjectKey::new("", name.clone()),
                    body,
                ));
            }
        }
    }
    out
}

/// Whether the object already shows every condition as wanted (the transition time aside).
fn shows(observed: &[KubeCondition], want: &[GatewayCondition]) -> bool {
    want.iter().all(|w| {
        observed.iter().any(|o| {
            o.type_ == w.type_
                && o.status == status_str(w.status)
                && o.reason == w.reason
                && o.message == w.message
                && o.observed_generation == w.observed_generation
        })
    })
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// The conditions to apply: a condition whose status did not change keeps its transition time;
/// the others get "now" when written.
fn conditions_json(observed: &[KubeCondition], want: &[GatewayCondition]) -> serde_json::Value {
    want.iter()
        .map(|w| {
            let time = observed
                .iter()
                .find(|o| o.type_ == w.type_ && o.status == status_str(w.status))
                .map(|o| o.last_transition_time.0.to_string());
            json!({
                "type": w.type_,
                "status": status_str(w.status),
                "reason": w.reason,
                "message": w.message,
                "observedGeneration": w.observed_generation,
                "lastTransitionTime": time,
            })
        })
        .collect()
}

fn write(kind: Kind, key: ObjectKey, status: serde_json::Value) -> Write {
    let r = kind.api();
    let mut metadata = json!({"name": key.name});
    if !key.namespace.is_empty() {
        metadata["namespace"] = key.namespace.clone().into();
    }
    Write {
        kind,
        key,
        body: json!({
            "apiVersion": r.api_version(),
            "kind": r.kind,
            "metadata": metadata,
            "status": status,
        }),
    }
}
