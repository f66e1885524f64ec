//! Where traffic goes: the destinations a waypoint serves, derived from Services, EndpointSlices,
//! Pods and Namespaces the way istiod and ztunnel see them.
//!
//! The waypoint receives `VIP:port` (traffic for a Service) or `podIP:port` (traffic for a
//! workload, when the Gateway says `istio.io/waypoint-for: workload|all`). [`Destinations`] answers
//! both lookups with what the data path needs: the engine target key for `targetRefs`, the inner
//! protocol, and the endpoints with the identity their ztunnel presents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::attachment::{service_entry_target, service_target};
use crate::istio::{ServiceEntry, WorkloadEntrySpec};
use crate::key::ObjectKey;
use crate::pod::PodInfo;
use crate::store::Store;
use crate::waypoint::{waypoint_of, waypoint_of_labels};
use crate::well_known::{DATAPLANE_MODE, GATEWAY_MANAGED, GATEWAY_NAME, WAYPOINT_FOR};

/// The inner protocol of a port, as Istio decides it from `appProtocol` and the port name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or h2c after an upgrade/preface, which the proxy detects anyway).
    Http,
    /// HTTP/2 with prior knowledge (h2c, gRPC).
    Http2,
    /// Opaque bytes: TCP, TLS, databases.
    Tcp,
    /// Not declared: sniff the first bytes.
    Unknown,
}

impl Protocol {
    /// `appProtocol` wins; otherwise the port name up to its first `-` (`http-web` -> `http`).
    /// Case-insensitive, as `protocol.Parse` in Istio.
    pub fn of_port(app_protocol: Option<&str>, name: Option<&str>) -> Protocol {
        if let Some(p) = app_protocol
            .map(Self::parse)
            .filter(|p| *p != Protocol::Unknown)
        {
            return p;
        }
        let name = name.unwrap_or("");
        let prefix = name.split_once('-').map_or(name, |(p, _)| p);
        Self::parse(prefix)
    }

    fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "http" | "http_proxy" | "kubernetes.io/ws" | "kubernetes.io/wss" => Protocol::Http,
            "http2" | "grpc" | "grpc-web" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
            _ => Protocol::Unknown,
        }
    }
}

/// One backend of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The SPIFFE identity its ztunnel presents; `None` when the pod is not in the ambient mesh
    /// (then the waypoint sends plain TCP).
    pub identity: Option<String>,
    pub pod: Option<ObjectKey>,
}

/// Traffic addressed to `VIP:port` of a Service.
#[derive(Debug, Clone)]
pub struct ServiceDestination {
    pub service: ObjectKey,
    /// The engine's target key for `targetRefs` (see [`crate::service_target`]).
    pub target: String,
    /// `name.namespace.svc.<domain>`.
    pub hostname: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Ready endpoints only.
    pub endpoints: Vec<Endpoint>,
}

/// A pod the waypoint serves for workload-addressed traffic.
#[derive(Debug, Clone)]
pub struct Workload {
    pub pod: ObjectKey,
    pub ip: IpAddr,
    pub identity: Option<String>,
}

/// Lookup tables built once per config snapshot.
#[derive(Debug, Default, Clone)]
pub struct Destinations {
    pub services: HashMap<SocketAddr, Arc<ServiceDestination>>,
    pub workloads: HashMap<IpAddr, Arc<Workload>>,
}

/// What the Gateway's `istio.io/waypoint-for` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficFor {
    pub services: bool,
    pub workloads: bool,
}

impl TrafficFor {
    pub fn of_gateway(store: &Store, gateway: &ObjectKey) -> TrafficFor {
        let label = store.gateways.get(gateway).and_then(|g| {
            g.object
                .metadata
                .labels
                .as_ref()?
                .get(WAYPOINT_FOR)
                .cloned()
        });
        match label.as_deref() {
            Some("workload") => TrafficFor {
                services: false,
                workloads: true,
            },
            Some("all") => TrafficFor {
                services: true,
                workloads: true,
            },
            Some("none") => TrafficFor {
                services: false,
                workloads: false,
            },
            // "service" and unset are the default; an unknown value is what istiod treats as default.
            _ => TrafficFor {
                services: true,
                workloads: false,
            },
        }
    }
}

/// Whether these labels mark a gateway's own pod or Service. Istio never sends a waypoint's
/// traffic to a waypoint, and a waypoint that took itself as a destination would tunnel into
/// itself, so such objects are never destinations.
pub fn is_gateway(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.contains_key(GATEWAY_MANAGED) || l.contains_key(GATEWAY_NAME))
}

/// Whether `ip` belongs to a gateway's pod.
fn is_gateway_ip(store: &Store, ip: &IpAddr) -> bool {
    store
        .pods_by_ip
        .get(ip)
        .and_then(|k| store.pods.get(k))
        .is_some_and(|p| is_gateway(Some(&p.object.labels)))
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// Whether ztunnel captures this pod: enrolled by its own or its namespace's
/// `istio.io/dataplane-mode: ambient`, not opted out with `none`.
pub fn in_ambient(store: &Store, pod: &PodInfo) -> bool {
    match pod.labels.get(DATAPLANE_MODE).map(String::as_str) {
        Some("none") => false,
        Some("ambient") => true,
        _ => store
            .namespaces
            .get(&pod.key.namespace)
            .and_then(|n| n.object.metadata.labels.as_ref()?.get(DATAPLANE_MODE))
            .is_some_and(|m| m == "ambient"),
    }
}

fn pod_identity(store: &Store, pod: &PodInfo, trust_domain: &str) -> Option<String> {
    in_ambient(store, pod)
        .then(|| spiffe_id(trust_domain, &pod.key.namespace, pod.service_account()))
}

impl Destinations {
    /// Everything `gateway` serves in `store`.
    pub fn build(store: &Store, gateway: &ObjectKey, trust_domain: &str) -> Destinations {
        let mut b = DestinationBuilder::new(gateway.clone(), trust_domain);
        b.rebuild(store);
        b.destinations().clone()
    }
}

/// A Service or a ServiceEntry: what owns a set of destination addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceRef {
    Service(ObjectKey),
    ServiceEntry(ObjectKey),
}

/// What changed since the last build, for [`DestinationBuilder::update`].
#[derive(Debug, Default, Clone)]
pub struct Changed {
    /// Services and ServiceEntries whose own object, or whose EndpointSlices, changed.
    pub services: BTreeSet<ServiceRef>,
    /// Pods and WorkloadEntries (by key; the namespace is what matters for selectors).
    pub pods: BTreeSet<ObjectKey>,
    pub workload_entries: BTreeSet<ObjectKey>,
    /// Gateways, Namespaces or mesh settings changed: rebuild everything.
    pub everything: bool,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        !self.everything
            && self.services.is_empty()
            && self.pods.is_empty()
            && self.workload_entries.is_empty()
    }
}

/// Keeps [`Destinations`] up to date incrementally: an endpoint change recomputes the Services it
/// touches, not the whole mesh. The reverse indexes live here, outside the published tables, so a
/// snapshot clones only the lookups the data path reads.
#[derive(Debug)]
pub struct DestinationBuilder {
    gateway: ObjectKey,
    trust_domain: String,
    current: Destinations,
    addrs_of: HashMap<ServiceRef, Vec<SocketAddr>>,
    /// Pod or WorkloadEntry key -> the services whose endpoints name it.
    services_of: HashMap<ObjectKey, Vec<ServiceRef>>,
    /// Endpoint IP -> the services listing it: a pod that appears after its EndpointSlice
    /// (no targetRef) is found by its IP. Entries may outlive the endpoint; that costs a
    /// needless refresh, never a missed one.
    services_at: HashMap<IpAddr, Vec<ServiceRef>>,
    workload_ips: HashMap<ObjectKey, Vec<IpAddr>>,
}

impl DestinationBuilder {
    pub fn new(gateway: ObjectKey, trust_domain: &str) -> DestinationBuilder {
        DestinationBuilder {
            gateway,
            trust_domain: trust_domain.to_owned(),
            current: Destinations::default(),
            addrs_of: HashMap::new(),
            services_of: HashMap::new(),
            services_at: HashMap::new(),
            workload_ips: HashMap::new(),
        }
    }

    pub fn destinations(&self) -> &Destinations {
        &self.current
    }

    /// Recomputes everything from `store`.
    pub fn rebuild(&mut self, store: &Store) {
        self.current = Destinations::default();
        self.addrs_of.clear();
        self.services_of.clear();
        self.services_at.clear();
        self.workload_ips.clear();
        let traffic = TrafficFor::of_gateway(store, &self.gateway);
        if traffic.services {
            for key in store.services.keys() {
                self.refresh_service(store, &ServiceRef::Service(key.clone()));
            }
            for key in store.service_entries.keys() {
                self.refresh_service(store, &ServiceRef::ServiceEntry(key.clone()));
            }
        }
        if traffic.workloads {
            for key in store.pods.keys() {
                self.refresh_workload(store, key);
            }
        }
    }

    /// Applies `changed`; returns whether anything was recomputed.
    pub fn update(&mut self, store: &Store, changed: &Changed) -> bool {
        if changed.everything {
            self.rebuild(store);
            return true;
        }
        let traffic = TrafficFor::of_gateway(store, &self.gateway);
        let mut services = changed.services.clone();
        for key in changed.pods.iter().chain(&changed.workload_entries) {
            if let Some(s) = self.services_of.get(key) {
                services.extend(s.iter().cloned());
            }
            for ip in store.pods.get(key).iter().flat_map(|p| &p.object.ips) {
                if let Some(s) = self.services_at.get(ip) {
                    services.extend(s.iter().cloned());
                }
            }
            // A new pod may match selectors it did not match before: Services without
            // EndpointSlices and ServiceEntries select within the pod's namespace.
            let ns = ObjectKey::new(&key.namespace, "");
            for (sk, _) in store.services.range(ns.clone()..) {
                if sk.namespace != key.namespace {
                    break;
                }
                if !store.slices_by_service.contains_key(sk) {
                    services.insert(ServiceRef::Service(sk.clone()));
                }
            }
            for (sk, se) in store.service_entries.range(ns..) {
                if sk.namespace != key.namespace {
                    break;
                }
                if se.object.spec.workload_selector.is_some() {
                    services.insert(ServiceRef::ServiceEntry(sk.clone()));
                }
            }
        }
        if traffic.services {
            for s in &services {
                self.refresh_service(store, s);
            }
        }
        if traffic.workloads {
            for key in &changed.pods {
                self.refresh_workload(store, key);
            }
        }
        !services.is_empty() || !changed.pods.is_empty()
    }

    fn forget_service(&mut self, s: &ServiceRef) {
        for addr in self.addrs_of.remove(s).unwrap_or_default() {
            if let Some(d) = self.current.services.get(&addr)
                && d.owner() == *s
            {
                self.current.services.remove(&addr);
            }
        }
    }

    fn refresh_service(&mut self, store: &Store, s: &ServiceRef) {
        self.forget_service(s);
        let dests = match s {
            ServiceRef::Service(key) => match store.services.get(key) {
                Some(svc)
                    if waypoint_of(store, &svc.object.metadata).as_ref() == Some(&self.gateway)
                        && !is_gateway(svc.object.metadata.labels.as_ref()) =>
                {
                    service_destinations(store, key, &svc.object, &self.trust_domain)
                }
                _ => Vec::new(),
            },
            ServiceRef::ServiceEntry(key) => match store.service_entries.get(key) {
                Some(se)
                    if waypoint_of(store, &se.object.metadata).as_ref() == Some(&self.gateway) =>
                {
                    service_entry_destinations(store, key, &se.object, &self.trust_domain)
                }
                _ => Vec::new(),
            },
        };
        let mut addrs = Vec::new();
        for (addr, dest) in dests {
            for ep in &dest.endpoints {
                // Vecs, not sets: one or two services per pod is the norm, and at 50,000
                // endpoints a set's node would cost ten times the entry.
                if let Some(p) = &ep.pod {
                    add_once(self.services_of.entry(p.clone()).or_default(), s);
                }
                add_once(self.services_at.entry(ep.address.ip()).or_default(), s);
            }
            addrs.push(addr);
            self.current.services.insert(addr, dest);
        }
        if !addrs.is_empty() {
            self.addrs_of.insert(s.clone(), addrs);
        }
    }

    fn refresh_workload(&mut self, store: &Store, key: &ObjectKey) {
        for ip in self.workload_ips.remove(key).unwrap_or_default() {
            if self
                .current
                .workloads
                .get(&ip)
                .is_some_and(|w| w.pod == *key)
            {
                self.current.workloads.remove(&ip);
            }
        }
        let Some(p) = store.pods.get(key) else { return };
        if is_gateway(Some(&p.object.labels)) {
            return;
        }
        if waypoint_of_labels(store, &key.namespace, Some(&p.object.labels)).as_ref()
            != Some(&self.gateway)
        {
            return;
        }
        let identity = pod_identity(store, &p.object, &self.trust_domain);
        let ips = p.object.ips.clone();
        for ip in &ips {
            self.current.workloads.insert(
                *ip,
                Arc::new(Workload {
                    pod: key.clone(),
                    ip: *ip,
                    identity: identity.clone(),
                }),
            );
        }
        self.workload_ips.insert(key.clone(), ips);
    }
}

fn add_once(v: &mut Vec<ServiceRef>, s: &ServiceRef) {
    if !v.contains(s) {
        v.push(s.clone());
    }
}

impl ServiceDestination {
    /// The object this destination belongs to.
    pub fn owner(&self) -> ServiceRef {
        if self.target.starts_with("ServiceEntry/") {
            ServiceRef::ServiceEntry(self.service.clone())
        } else {
            ServiceRef::Service(self.service.clone())
        }
    }
}

fn service_destinations(
    store: &Store,
    key: &ObjectKey,
    svc: &Service,
    trust_domain: &str,
) -> Vec<(SocketAddr, Arc<ServiceDestination>)> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let vips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let slices: Vec<&EndpointSlice> = store
        .slices_by_service
        .get(key)
        .into_iter()
        .flatten()
        .filter_map(|k| store.endpoint_slices.get(k))
        .map(|s| &s.object)
        .collect();
    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Ok(service_port) = u16::try_from(port.port) else {
            continue;
        };
        let endpoints = if slices.is_empty() {
            selected_pods(store, key, spec.selector.as_ref(), port, trust_domain)
        } else {
            slice_endpoints(store, key, &slices, port, trust_domain)
        };
        let dest = Arc::new(ServiceDestination {
            service: key.clone(),
            target: service_target(key),
            hostname: format!("{}.{}.svc.cluster.local", key.name, key.namespace),
            port: service_port,
            protocol: Protocol::of_port(port.app_protocol.as_deref(), port.name.as_deref()),
            endpoints,
        });
        for vip in &vips {
            out.push((SocketAddr::new(*vip, service_port), dest.clone()));
        }
    }
    out
}

fn slice_endpoints(
    store: &Store,
    key: &ObjectKey,
    slices: &[&EndpointSlice],
    port: &ServicePort,
    trust_domain: &str,
) -> Vec<Endpoint> {
    let mut eps = Vec::new();
    for slice in slices {
        let Some(target_port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                let pod_key = store.pods_by_ip.get(&ip).cloned().or_else(|| {
                    let r = ep
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))?;
                    Some(ObjectKey::new(
                        r.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
                        r.name.clone()?,
                    ))
                });
                let pod = pod_key.as_ref().and_then(|k| store.pods.get(k));
                if pod.is_some_and(|p| is_gateway(Some(&p.object.labels)))
                    || is_gateway_ip(store, &ip)
                {
                    continue;
                }
                eps.push(Endpoint {
                    address: SocketAddr::new(ip, target_port),
                    identity: pod.and_then(|p| pod_identity(store, &p.object, trust_domain)),
                    // Kept even before the pod is known, so its arrival refreshes this service.
                    pod: pod_key,
                });
            }
        }
    }
    eps
}

/// ServiceEntry destinations: its addresses (and those Istio allocated) on each port, with
/// inline endpoints plus the Pods and WorkloadEntries its `workloadSelector` picks.
fn service_entry_destinations(
    store: &Store,
    key: &ObjectKey,
    se: &ServiceEntry,
    trust_domain: &str,
) -> Vec<(SocketAddr, Arc<ServiceDestination>)> {
    let spec = &se.spec;
    let allocated = se
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().map(|a| &a.value));
    let vips: Vec<IpAddr> = spec
        .addresses
        .iter()
        .chain(allocated)
        .filter_map(|a| a.parse().ok())
        .collect();
    let hostname = spec.hosts.first().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for port in &spec.ports {
        let Ok(number) = u16::try_from(port.number) else {
            continue;
        };
        let default_port = port
            .target_port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(number);
        let port_of = |ports: &BTreeMap<String, u32>| {
            ports
                .get(&port.name)
                .and_then(|p| u16::try_from(*p).ok())
                .unwrap_or(default_port)
        };
        let mut endpoints = Vec::new();
        let mut entry = |we: &WorkloadEntrySpec, ns: &str, owner: Option<ObjectKey>| {
            let Ok(ip) = we.address.parse::<IpAddr>() else {
                // DNS-resolved endpoints are not supported: the waypoint dials IPs only.
                return;
            };
            if is_gateway_ip(store, &ip) {
                return;
            }
            endpoints.push(Endpoint {
                address: SocketAddr::new(ip, port_of(&we.ports)),
                identity: workload_entry_identity(we, ns, trust_domain),
                pod: owner,
            });
        };
        for ep in &spec.endpoints {
            entry(ep, &key.namespace, None);
        }
        if let Some(sel) = &spec.workload_selector {
            let matches = |labels: &BTreeMap<String, String>| {
                sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            };
            let ns = ObjectKey::new(&key.namespace, "");
            for (wk, we) in store.workload_entries.range(ns.clone()..) {
                if wk.namespace != key.namespace {
                    break;
                }
                let labels = we.object.metadata.labels.clone().unwrap_or_default();
                if matches(&labels) || matches(&we.object.spec.labels) {
                    entry(&we.object.spec, &key.namespace, Some(wk.clone()));
                }
            }
            for (pk, p) in store.pods.range(ns..) {
                if pk.namespace != key.namespace {
                    break;
                }
                if !matches(&p.object.labels) || is_gateway(Some(&p.object.labels)) {
                    continue;
                }
                for ip in &p.object.ips {
                    endpoints.push(Endpoint {
                        address: SocketAddr::new(*ip, default_port),
                        identity: pod_identity(store, &p.object, trust_domain),
                        pod: Some(pk.clone()),
                    });
                }
            }
        }
        let dest = Arc::new(ServiceDestination {
            service: key.clone(),
            target: service_entry_target(key),
            hostname: hostname.clone(),
            port: number,
            protocol: Protocol::of_port(Some(&port.protocol), Some(&port.name)),
            endpoints,
        });
        for vip in &vips {
            out.push((SocketAddr::new(*vip, number), dest.clone()));
        }
    }
    out
}

/// A WorkloadEntry (or inline ServiceEntry endpoint) is reached over HBONE only when its own
/// labels enroll it in ambient: ServiceEntries mostly describe hosts outside the mesh, so the
/// namespace's enrollment is not inherited.
fn workload_entry_identity(we: &WorkloadEntrySpec, ns: &str, trust_domain: &str) -> Option<String> {
    (we.labels.get(DATAPLANE_MODE).map(String::as_str) == Some("ambient")).then(|| {
        let sa = if we.service_account.is_empty() {
            "default"
        } else {
            &we.service_account
        };
        spiffe_id(trust_domain, ns, sa)
    })
}

/// Endpoints as the EndpointSlice controller would derive them, for configs that list pods but no
/// EndpointSlices: running pods in the Service's namespace matching its selector.
fn selected_pods(
    store: &Store,
    key: &ObjectKey,
    selector: Option<&BTreeMap<String, String>>,
    port: &ServicePort,
    trust_domain: &str,
) -> Vec<Endpoint> {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let target_port = match &port.target_port {
        Some(IntOrString::Int(p)) => u16::try_from(*p).ok(),
        // A named port resolves through the pod's container ports.
        Some(IntOrString::String(_)) => None,
        None => u16::try_from(port.port).ok(),
    };
    let mut out = Vec::new();
    for (pk, p) in store.pods.range(ObjectKey::new(&key.namespace, "")..) {
        if pk.namespace != key.namespace {
            break;
        }
        if !selector
            .iter()
            .all(|(k, v)| p.object.labels.get(k) == Some(v))
            || is_gateway(Some(&p.object.labels))
        {
            continue;
        }
        let port = target_port.or_else(|| match &port.target_port {
            Some(IntOrString::String(name)) => p.object.named_port(name),
            _ => None,
        });
        let Some(port) = port else { continue };
        for ip in &p.object.ips {
            out.push(Endpoint {
                address: SocketAddr::new(*ip, port),
                identity: pod_identity(store, &p.object, trust_domain),
                pod: Some(pk.clone()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.0.0.1
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: db, port: 5432, appProtocol: tcp}]
---
apiVersion: v1
kind: Service
metadata: {name: sliced, namespace: demo}
spec:
  clusterIP: 10.0.0.2
  ports: [{name: web, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sliced-1, namespace: demo, labels: {kubernetes.io/service-name: sliced}}
addressType: IPv4
ports: [{name: web, port: 9090}]
endpoints:
- addresses: [10.1.0.5]
  targetRef: {kind: Pod, name: web-1}
- addresses: [10.1.0.6]
  conditions: {ready: false}
- addresses: [10.1.0.7]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo, labels: {app: web}}
spec: {serviceAccountName: web-sa, containers: [{name: c}]}
status: {podIP: 10.1.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: demo, labels: {app: web, istio.io/dataplane-mode: none}}
spec: {containers: [{name: c}]}
status: {podIPs: [{ip: 10.1.0.9}]}
"#;

    fn store() -> Store {
        let mut s = Store::default();
        let errs = s.load_str(MESH, None);
        assert!(errs.is_empty(), "{errs:?}");
        s
    }

    #[test]
    fn services_resolve_to_endpoints_with_identities() {
        let s = store();
        let d = Destinations::build(&s, &ObjectKey::new("demo", "waypoint"), "td");
        let web = &d.services[&"10.0.0.1:80".parse().unwrap()];
        assert_eq!(web.protocol, Protocol::Http);
        assert_eq!(web.target, "Service/demo/web");
        let eps: Vec<_> = web
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.identity.clone()))
            .collect();
        assert_eq!(
            eps,
            vec![
                (
                    "10.1.0.5:8080".to_owned(),
                    Some("spiffe://td/ns/demo/sa/web-sa".to_owned())
                ),
                // Opted out of ambient: plain TCP.
                ("10.1.0.9:8080".to_owned(), None),
            ]
        );
        assert_eq!(
            d.services[&"10.0.0.1:5432".parse().unwrap()].protocol,
            Protocol::Tcp
        );
        let sliced = &d.services[&"10.0.0.2:80".parse().unwrap()];
        assert_eq!(sliced.protocol, Protocol::Unknown);
        let eps: Vec<_> = sliced
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(eps, ["10.1.0.5:9090", "10.1.0.7:9090"], "not-ready skipped");
        assert!(d.workloads.is_empty(), "waypoint-for defaults to service");
    }

    #[test]
    fn other_waypoints_and_workload_mode() {
        let mut s = store();
        assert!(
            Destinations::build(&s, &ObjectKey::new("demo", "other"), "td")
                .services
                .is_empty()
        );
        let gw = s
            .gateways
            .get_mut(&ObjectKey::new("demo", "waypoint"))
            .unwrap();
        gw.object.metadata.labels = Some([(WAYPOINT_FOR.to_owned(), "workload".to_owned())].into());
        let d = Destinations::build(&s, &ObjectKey::new("demo", "waypoint"), "td");
        assert!(d.services.is_empty());
        assert_eq!(
            d.workloads[&"10.1.0.5".parse().unwrap()]
                .identity
                .as_deref(),
            Some("spiffe://td/ns/demo/sa/web-sa")
        );
    }

    #[test]
    fn a_waypoints_own_pod_and_service_are_never_destinations() {
        let mut s = store();
        let errs = s.load_str(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-5d8f7c
  namespace: demo
  labels: {app: web, gateway.istio.io/managed: istio.io-mesh-controller, gateway.networking.k8s.io/gateway-name: waypoint}
spec: {serviceAccountName: waypoint, containers: [{name: istio-proxy}]}
status: {podIP: 10.1.0.7}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: demo, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec:
  clusterIP: 10.0.0.8
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: loop, namespace: demo}
spec:
  hosts: [loop.example]
  addresses: [240.0.0.9]
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.1.0.7, labels: {istio.io/dataplane-mode: ambient}}, {address: 10.1.0.5}]
"#,
            None,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let gw = ObjectKey::new("demo", "waypoint");
        s.gateways.get_mut(&gw).unwrap().object.metadata.labels =
            Some([(WAYPOINT_FOR.to_owned(), "all".to_owned())].into());
        let d = Destinations::build(&s, &gw, "td");
        let ip: IpAddr = "10.1.0.7".parse().unwrap();
        assert!(!d.workloads.contains_key(&ip), "own pod as a workload");
        assert!(
            !d.services.contains_key(&"10.0.0.8:15008".parse().unwrap()),
            "own Service"
        );
        let addrs = |vip: &str| -> Vec<String> {
            d.services[&vip.parse().unwrap()]
                .endpoints
                .iter()
                .map(|e| e.address.to_string())
                .collect()
        };
        // Selected by `app: web`, listed in an EndpointSlice, named by a ServiceEntry: never.
        assert_eq!(addrs("10.0.0.1:80"), ["10.1.0.5:8080", "10.1.0.9:8080"]);
        assert_eq!(addrs("10.0.0.2:80"), ["10.1.0.5:9090"]);
        assert_eq!(addrs("240.0.0.9:80"), ["10.1.0.5:80"]);
    }

    fn canon(d: &Destinations) -> Vec<String> {
        let mut v: Vec<String> = d
            .services
            .iter()
            .map(|(a, s)| format!("{a} {} {:?} {:?}", s.target, s.protocol, s.endpoints))
            .chain(
                d.workloads
                    .iter()
                    .map(|(ip, w)| format!("{ip} {} {:?}", w.pod, w.identity)),
            )
            .collect();
        v.sort();
        v
    }

    /// The incremental path must land where a full rebuild does, after every kind of change.
    #[test]
    fn incremental_updates_match_a_rebuild() {
        let gw = ObjectKey::new("demo", "waypoint");
        let mut s = store();
        s.gateways.get_mut(&gw).unwrap().object.metadata.labels =
            Some([(WAYPOINT_FOR.to_owned(), "all".to_owned())].into());
        let mut b = DestinationBuilder::new(gw.clone(), "td");
        b.rebuild(&s);
        let steps: [(&str, Changed); 5] = [
            // An endpoint moves and a new one appears in the slice.
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: sliced-1, namespace: demo, labels: {kubernetes.io/service-name: sliced}}\naddressType: IPv4\nports: [{name: web, port: 9090}]\nendpoints: [{addresses: [10.1.0.5]}, {addresses: [10.1.0.8]}]\n",
                Changed {
                    services: [ServiceRef::Service(ObjectKey::new("demo", "sliced"))].into(),
                    ..Changed::default()
                },
            ),
            // A new pod matching the selector-based service.
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: web-3, namespace: demo, labels: {app: web}}\nspec: {serviceAccountName: other}\nstatus: {podIP: 10.1.0.8}\n",
                Changed {
                    pods: [ObjectKey::new("demo", "web-3")].into(),
                    ..Changed::default()
                },
            ),
            // A pod changes its service account: the sliced endpoint's identity follows.
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: demo, labels: {app: web}}\nspec: {serviceAccountName: renamed}\nstatus: {podIP: 10.1.0.5}\n",
                Changed {
                    pods: [ObjectKey::new("demo", "web-1")].into(),
                    ..Changed::default()
                },
            ),
            // A service leaves the waypoint.
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo, labels: {istio.io/use-waypoint: none}}\nspec: {clusterIP: 10.0.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}\n",
                Changed {
                    services: [ServiceRef::Service(ObjectKey::new("demo", "web"))].into(),
                    ..Changed::default()
                },
            ),
            // A ServiceEntry with an inline endpoint joins.
            (
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: demo}\nspec: {hosts: [ext.example], addresses: [240.0.0.1], ports: [{number: 443, protocol: TLS, name: tls}], endpoints: [{address: 192.0.2.1}]}\n",
                Changed {
                    services: [ServiceRef::ServiceEntry(ObjectKey::new("demo", "ext"))].into(),
                    ..Changed::default()
                },
            ),
        ];
        for (yaml, changed) in steps {
            assert!(s.load_str(yaml, None).is_empty());
            b.update(&s, &changed);
            assert_eq!(
                canon(b.destinations()),
                canon(&Destinations::build(&s, &gw, "td")),
                "after {yaml}"
            );
        }
        let se = &b.destinations().services[&"240.0.0.1:443".parse().unwrap()];
        assert_eq!(
            (se.protocol, se.target.as_str()),
            (Protocol::Tcp, "ServiceEntry/demo/ext")
        );
        assert_eq!(se.endpoints[0].identity, None, "not enrolled: plain TCP");
        // Removal.
        assert!(s.remove(crate::Kind::Pod, &ObjectKey::new("demo", "web-3")));
        b.update(
            &s,
            &Changed {
                pods: [ObjectKey::new("demo", "web-3")].into(),
                ..Changed::default()
            },
        );
        assert_eq!(
            canon(b.destinations()),
            canon(&Destinations::build(&s, &gw, "td"))
        );
    }

    #[test]
    fn protocol_selection_follows_istio() {
        assert_eq!(Protocol::of_port(Some("HTTP"), Some("tcp")), Protocol::Http);
        assert_eq!(Protocol::of_port(None, Some("grpc-api")), Protocol::Http2);
        assert_eq!(Protocol::of_port(None, Some("https")), Protocol::Tcp);
        assert_eq!(
            Protocol::of_port(Some("weird"), Some("web")),
            Protocol::Unknown
        );
        assert_eq!(Protocol::of_port(None, None), Protocol::Unknown);
    }
}
