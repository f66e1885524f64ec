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
//! Pods are read by a watch of their own (label `gateway.networking.k8s.io/gateway-name`, in the
//! Gateway's namespace): readiness is not among the few pod fields the store keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use gateway_api::apis::standard::gateways::Gateway;
use gateway_api_bindings::{Kind, ObjectKey, Store};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as KubeCondition;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::status_writer::Write;
use crate::metrics::Metrics;

/// Our GatewayClass's name, as the chart creates it.
pub const CLASS_NAME: &str = "rust-waypoint";
/// The `controllerName` of our GatewayClass.
pub const CONTROLLER_NAME: &str = "rust-waypoint.io/controller";
/// The label tying a pod (and the Service) to its Gateway.
pub const GATEWAY_NAME_LABEL: &str = gateway_api_bindings::well_known::GATEWAY_NAME;
/// istiod sends ztunnel this port for every waypoint address.
const HBONE_PORT: u16 = 15008;

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

/// The Gateway's pods as the watch last saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnPods {
    /// The first list is in: until then "no pod is Ready" is not known, only not yet seen.
    pub listed: bool,
    /// Names of the pods whose `Ready` condition is `True` (and that are not being deleted).
    pub ready: BTreeSet<String>,
}

/// Watches the Gateway's pods; the receiver holds their readiness.
pub fn watch_own_pods(
    client: Client,
    gateway: &ObjectKey,
    metrics: Arc<Metrics>,
) -> (JoinHandle<()>, watch::Receiver<OwnPods>) {
    let (tx, rx) = watch::channel(OwnPods::default());
    let api: Api<Pod> = Api::namespaced(client, &gateway.namespace);
    let config =
        watcher::Config::default().labels(&format!("{GATEWAY_NAME_LABEL}={}", gateway.name));
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        let mut pods: BTreeMap<String, bool> = BTreeMap::new();
        let mut listing: BTreeMap<String, bool> = BTreeMap::new();
        // Kept here, not read back from `tx`: a borrow held across `send_if_modified` deadlocks.
        let mut listed = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => listing.clear(),
                Ok(Event::InitApply(p)) => {
                    listing.insert(p.name_any(), is_ready(&p));
                }
                Ok(Event::InitDone) => {
                    pods = std::mem::take(&mut listing);
                    listed = true;
                    publish(&tx, &pods, listed);
                }
                Ok(Event::Apply(p)) => {
                    pods.insert(p.name_any(), is_ready(&p));
                    publish(&tx, &pods, listed);
                }
                Ok(Event::Delete(p)) => {
                    pods.remove(&p.name_any());
                    publish(&tx, &pods, listed);
                }
                Err(e) => {
                    metrics.kube_watch_errors.inc();
                    tracing::warn!(error = %e, "watch of the Gateway's pods failed; retrying with backoff");
                }
            }
        }
    });
    (task, rx)
}

fn publish(tx: &watch::Sender<OwnPods>, pods: &BTreeMap<String, bool>, listed: bool) {
    let next = OwnPods {
        listed,
        ready: pods
            .iter()
            .filter(|(_, r)| **r)
            .map(|(n, _)| n.clone())
            .collect(),
    };
    // Only a change wakes the status writer: most pod updates do not touch readiness.
    tx.send_if_modified(|cur| {
        let changed = *cur != next;
        *cur = next;
        changed
    });
}

/// Ready as the kubelet reports it, and not on its way out.
fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One condition we own on a Gateway or GatewayClass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// The status this waypoint wants on its Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredGatewayStatus {
    pub conditions: Vec<GatewayCondition>,
    /// `(type, value)`, in order; empty until the first assignment.
    pub addresses: Vec<(&'static str, String)>,
}

/// Whether a Gateway is ours to report on: its class names our controller, or it is our class
/// and no GatewayClass object says otherwise (the class may be owned by another release that is
/// not installed yet).
pub fn is_our_gateway(store: &Store, gw: &Gateway) -> bool {
    let class = &gw.spec.gateway_class_name;
    match store.gateway_classes.get(class) {
        Some(c) => c.object.spec.controller_name == CONTROLLER_NAME,
        None => class == CLASS_NAME,
    }
}

/// The Gateway's status from what is known: its Service (named like the Gateway, as istiod and
/// the chart name it), how many of its pods are Ready, and what the object already shows.
pub fn desired_gateway_status(
    gw: &Gateway,
    service: Option<&Service>,
    ready_pods: usize,
    cluster_domain: &str,
) -> DesiredGatewayStatus {
    let ns = gw.namespace().unwrap_or_default();
    let name = gw.name_any();
    let host = format!("{name}.{ns}.svc.{cluster_domain}");
    let generation = gw.metadata.generation;
    let cluster_ips: Vec<String> = service
        .and_then(|s| s.spec.as_ref())
        .map(|s| {
            let ips = s.cluster_ips.clone().unwrap_or_default();
            if ips.is_empty() {
                s.cluster_ip.clone().into_iter().collect()
            } else {
                ips
            }
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect();
    let observed: Vec<(&'static str, String)> = gw
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .map(|a| {
                    let t = match a.r#type.as_deref() {
                        Some("Hostname") => "Hostname",
                        Some("NamedAddress") => "NamedAddress",
                        _ => "IPAddress",
                    };
                    (t, a.value.clone())
                })
                .collect()
        })
        .unwrap_or_default();
    let waiting = match (service, cluster_ips.is_empty(), ready_pods) {
        (None, _, _) => Some(format!("Service {ns}/{name} not found")),
        (Some(_), true, _) => Some(format!("Service {ns}/{name} has no cluster IP")),
        (Some(_), false, 0) => Some(format!(
            "no pod with label {GATEWAY_NAME_LABEL}={name} is Ready"
        )),
        _ => None,
    };
    let addresses = match &waiting {
        None => std::iter::once(("Hostname", host.clone()))
            .chain(cluster_ips.into_iter().map(|ip| ("IPAddress", ip)))
            .collect(),
        // Assigned once: kept while the Service or the pods are gone, so ztunnel keeps a target.
        Some(_) => observed,
    };
    let programmed = if addresses.is_empty() {
        GatewayCondition {
            type_: "Programmed",
            status: false,
            reason: "AddressNotAssigned",
            message: format!(
                "Failed to assign to any requested addresses: {}",
                waiting.unwrap_or_default()
            ),
            observed_generation: generation,
        }
    } else {
        GatewayCondition {
            type_: "Programmed",
            status: true,
            reason: "Programmed",
            message: format!("Resource programmed, assigned to service(s) {host}:{HBONE_PORT}"),
            observed_generation: generation,
        }
    };
    DesiredGatewayStatus {
        conditions: vec![
            GatewayCondition {
                type_: "Accepted",
                status: true,
                reason: "Accepted",
                message: "Resource accepted".into(),
                observed_generation: generation,
            },
            programmed,
        ],
        addresses,
    }
}

/// `Accepted` for a GatewayClass naming our controller.
pub fn desired_class_condition(generation: Option<i64>) -> GatewayCondition {
    GatewayCondition {
        type_: "Accepted",
        status: true,
        reason: "Accepted",
        message: format!("Handled by {CONTROLLER_NAME}"),
        observed_generation: generation,
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
        let want = desired_gateway_status(gw, service, pods.ready.len(), &opts.cluster_domain);
        let status = gw.status.as_ref();
        let observed = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
        let observed_addresses: Vec<(&str, &str)> = status
            .and_then(|s| s.addresses.as_ref())
            .map(|a| {
                a.iter()
                    .map(|a| (a.r#type.as_deref().unwrap_or("IPAddress"), a.value.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let wanted_addresses: Vec<(&str, &str)> = want
            .addresses
            .iter()
            .map(|(t, v)| (*t, v.as_str()))
            .collect();
        if !shows(observed, &want.conditions) || observed_addresses != wanted_addresses {
            let mut body = json!({"conditions": conditions_json(observed, &want.conditions)});
            if !want.addresses.is_empty() {
                body["addresses"] = want
                    .addresses
                    .iter()
                    .map(|(t, v)| json!({"type": t, "value": v}))
                    .collect();
            }
            out.push(write(Kind::Gateway, gateway.clone(), body));
        }
    }
    if opts.class_status {
        for (name, class) in &store.gateway_classes {
            if class.object.spec.controller_name != CONTROLLER_NAME {
                continue;
            }
            let want = [desired_class_condition(class.object.metadata.generation)];
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
    let (group, k) = kind.group_kind();
    let mut metadata = json!({"name": key.name});
    if !key.namespace.is_empty() {
        metadata["namespace"] = key.namespace.clone().into();
    }
    Write {
        kind,
        key,
        body: json!({
            "apiVersion": format!("{group}/v1"),
            "kind": k,
            "metadata": metadata,
            "status": status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(status: &str) -> Gateway {
        serde_yaml::from_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: waypoint, namespace: demo, generation: 2}}\n\
             spec: {{gatewayClassName: rust-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n\
             {status}"
        ))
        .unwrap()
    }

    fn service(ips: &str) -> Service {
        serde_yaml::from_str(&format!(
            "metadata: {{name: waypoint, namespace: demo}}\nspec: {{clusterIP: {ips}}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn addresses_only_with_a_service_and_a_ready_pod() {
        let gw = gateway("");
        let svc = service("10.96.0.9");
        let none = desired_gateway_status(&gw, None, 1, "cluster.local");
        assert!(none.addresses.is_empty());
        let p = &none.conditions[1];
        assert_eq!(
            (p.type_, p.status, p.reason),
            ("Programmed", false, "AddressNotAssigned")
        );
        assert!(
            p.message.contains("Service demo/waypoint not found"),
            "{}",
            p.message
        );
        let unready = desired_gateway_status(&gw, Some(&svc), 0, "cluster.local");
        assert!(unready.addresses.is_empty());
        assert!(unready.conditions[1].message.contains("is Ready"));
        let ready = desired_gateway_status(&gw, Some(&svc), 1, "example.org");
        assert_eq!(
            ready.addresses,
            vec![
                ("Hostname", "waypoint.demo.svc.example.org".to_owned()),
                ("IPAddress", "10.96.0.9".to_owned())
            ]
        );
        let p = &ready.conditions[1];
        assert_eq!((p.status, p.reason), (true, "Programmed"));
        assert_eq!(
            p.message,
            "Resource programmed, assigned to service(s) waypoint.demo.svc.example.org:15008"
        );
        assert!(
            ready
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
        assert_eq!(ready.conditions[0].message, "Resource accepted");
    }

    #[test]
    fn assigned_addresses_stay_when_pods_or_service_go() {
        let gw = gateway(
            "status: {addresses: [{type: Hostname, value: waypoint.demo.svc.cluster.local}, {type: IPAddress, value: 10.96.0.9}]}\n",
        );
        for (svc, ready) in [(None, 1), (Some(service("10.96.0.9")), 0)] {
            let s = desired_gateway_status(&gw, svc.as_ref(), ready, "cluster.local");
            assert_eq!(s.addresses.len(), 2);
            assert_eq!(s.conditions[1].reason, "Programmed", "still programmed");
        }
        let headless =
            desired_gateway_status(&gateway(""), Some(&service("None")), 1, "cluster.local");
        assert!(headless.addresses.is_empty());
    }
}
