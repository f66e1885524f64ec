//! Who serves whom, for the offline tools (`analyze`, `migrate`, `authz eval`): Services and the
//! pods they select, the waypoint each uses and the identity it runs as, and what a workload's
//! ztunnel sees.
//!
//! [`waypoint_of_service`], [`waypoint_of_workload`] and [`is_waypoint`] are the one adapter to
//! the bindings' membership rules (`gateway_api_bindings::waypoint::attachment`, the function
//! the data path and `authz eval` call too): every tool asks them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use gateway_api_bindings::destinations::in_ambient;
use gateway_api_bindings::pod::PodInfo;
use gateway_api_bindings::waypoint::{Reason, Target};
use gateway_api_bindings::well_known::GATEWAY_NAME;
use gateway_api_bindings::{ObjectKey, Store, waypoint};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The waypoint a Service's or ServiceEntry's traffic goes through, by the bindings' one
/// attachment function (the data path's rule): `None` when it names none, or when the waypoint
/// it names refuses it.
pub(crate) fn waypoint_of_service(store: &Store, target: Target<'_>) -> Option<ObjectKey> {
    waypoint::attachment(store, target).waypoint().cloned()
}

/// The waypoint a workload with `labels` in `namespace` names for traffic addressed to it (its
/// own labels, else its namespace's). A waypoint that takes only Service traffic still counts
/// here: the tools ask which waypoint a namespace chose, not whether it takes pod-addressed
/// traffic.
pub(crate) fn waypoint_of_workload(
    store: &Store,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<ObjectKey> {
    let pod = PodInfo {
        key: ObjectKey::new(namespace, ""),
        uid: String::new(),
        labels: labels.clone(),
        service_account: String::new(),
        ips: Vec::new(),
        named_ports: Vec::new(),
        ready: true,
        conditions_reported: false,
        terminating: false,
    };
    match waypoint::attachment(store, Target::Pod(&pod)).primary? {
        Ok(w) => Some(w),
        Err(r) if matches!(r.reason, Reason::UnsupportedTrafficType { .. }) => Some(r.waypoint),
        Err(_) => None,
    }
}

/// Whether the Gateway `key` exists and is a waypoint.
pub(crate) fn is_waypoint(store: &Store, key: &ObjectKey) -> bool {
    store
        .gateways
        .get(key)
        .is_some_and(|g| waypoint::is_waypoint(store, &g.object))
}

/// `<trust domain>/ns/<ns>/sa/<sa>`: a principal as policies write it.
pub(crate) fn principal(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The principals a waypoint runs as: the service accounts of its pods (labelled
/// `gateway.networking.k8s.io/gateway-name`), as istiod reads them for its implicit
/// allow-from-waypoint policy; without pods, the Gateway's name, the service account istiod's
/// deployment and our chart give it.
pub(crate) fn waypoint_principals(
    store: &Store,
    gateway: &ObjectKey,
    trust_domain: &str,
) -> Vec<String> {
    let mut sas: Vec<&str> = gateway_pods(store, gateway)
        .map(|p| p.service_account())
        .collect();
    sas.sort_unstable();
    sas.dedup();
    if sas.is_empty() {
        sas.push(&gateway.name);
    }
    sas.into_iter()
        .map(|sa| principal(trust_domain, &gateway.namespace, sa))
        .collect()
}

/// An address of one of the waypoint's pods: the source address its upstream connections carry.
pub(crate) fn waypoint_ip(store: &Store, gateway: &ObjectKey) -> Option<IpAddr> {
    gateway_pods(store, gateway).find_map(|p| p.ips.first().copied())
}

fn gateway_pods<'s>(store: &'s Store, gateway: &ObjectKey) -> impl Iterator<Item = &'s PodInfo> {
    pods_in(store, &gateway.namespace)
        .filter(move |p| p.labels.get(GATEWAY_NAME) == Some(&gateway.name))
}

/// The pods of one namespace.
pub(crate) fn pods_in<'s>(store: &'s Store, namespace: &str) -> impl Iterator<Item = &'s PodInfo> {
    let ns = namespace.to_owned();
    store
        .pods
        .range(ObjectKey::new(namespace, "")..)
        .take_while(move |(k, _)| k.namespace == ns)
        .map(|(_, p)| &p.object)
}

/// Whether `labels` hold every pair of `selector`.
pub(crate) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A Service's pod selector; `None` for a Service without one (its endpoints are managed by
/// hand, so no pod is known to back it).
pub(crate) fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// The pods the store holds for a Service.
pub(crate) fn service_pods<'s>(store: &'s Store, key: &ObjectKey) -> Vec<&'s PodInfo> {
    let Some(sel) = store
        .services
        .get(key)
        .and_then(|s| service_selector(&s.object))
    else {
        return Vec::new();
    };
    pods_in(store, &key.namespace)
        .filter(|p| selects(sel, &p.labels))
        .collect()
}

/// The pods of every Service with a selector, found once (a large config has thousands of
/// each, and every check asks).
#[derive(Debug, Default)]
pub(crate) struct ServicePods<'s> {
    /// Service -> its selector and the pods it selects.
    by_service: BTreeMap<ObjectKey, (&'s BTreeMap<String, String>, Vec<&'s PodInfo>)>,
    /// Pods some Service selects.
    served: std::collections::BTreeSet<&'s ObjectKey>,
}

impl<'s> ServicePods<'s> {
    pub(crate) fn new(store: &'s Store) -> ServicePods<'s> {
        let mut by_service = BTreeMap::new();
        let mut served = std::collections::BTreeSet::new();
        let mut namespace = None;
        let mut pods: Vec<&PodInfo> = Vec::new();
        for (key, svc) in &store.services {
            let Some(sel) = service_selector(&svc.object) else {
                continue;
            };
            if namespace != Some(&key.namespace) {
                pods = pods_in(store, &key.namespace).collect();
                namespace = Some(&key.namespace);
            }
            let selected: Vec<&PodInfo> = pods
                .iter()
                .copied()
                .filter(|p| selects(sel, &p.labels))
                .collect();
            served.extend(selected.iter().map(|p| &p.key));
            by_service.insert(key.clone(), (sel, selected));
        }
        ServicePods { by_service, served }
    }

    /// Whether some Service selects the pod.
    pub(crate) fn is_served(&self, pod: &ObjectKey) -> bool {
        self.served.contains(pod)
    }

    /// The pods the config holds for a Service (none for one without a selector).
    pub(crate) fn of(&self, service: &ObjectKey) -> &[&'s PodInfo] {
        self.by_service
            .get(service)
            .map_or(&[], |(_, pods)| pods.as_slice())
    }

    /// The Services with a selector of `namespace` (of every namespace when `None`), each with
    /// its selector and pods.
    pub(crate) fn services<'a>(
        &'a self,
        namespace: Option<&'a str>,
    ) -> impl Iterator<
        Item = (
            &'a ObjectKey,
            &'s BTreeMap<String, String>,
            &'a [&'s PodInfo],
        ),
    > + 'a {
        let range = match namespace {
            Some(ns) => self.by_service.range(ObjectKey::new(ns, "")..),
            None => self.by_service.range(..),
        };
        range
            .take_while(move |(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(k, (sel, pods))| (k, *sel, pods.as_slice()))
    }
}

/// The pod port a Service port reaches on `pod`: its `targetPort` (a number, or a container
/// port's name), else the port itself. A port the Service does not declare is returned as is.
pub(crate) fn target_port(svc: &Service, port: u16, pod: Option<&PodInfo>) -> u16 {
    let Some(p) = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.port == i32::from(port)))
    else {
        return port;
    };
    match &p.target_port {
        Some(IntOrString::Int(n)) => u16::try_from(*n).unwrap_or(port),
        Some(IntOrString::String(name)) => pod.and_then(|p| p.named_port(name)).unwrap_or(port),
        None => port,
    }
}

/// The ports a Service declares.
pub(crate) fn service_ports(svc: &Service) -> Vec<u16> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect()
}

/// Whether ztunnel captures the pod (unknown pods are assumed enrolled: a file config often
/// lists no pods at all).
pub(crate) fn enrolled(store: &Store, pod: Option<&PodInfo>) -> bool {
    pod.is_none_or(|p| in_ambient(store, p))
}
