//! Where traffic goes: the destinations a waypoint serves, built from Services, ServiceEntries,
//! EndpointSlices, Pods and WorkloadEntries as istiod builds them for ztunnel
//! (`pilot/pkg/serviceregistry/ambient/{services,workloads}.go`).
//!
//! The waypoint receives `VIP:port` (traffic for a Service) or `podIP:port` (traffic for a
//! workload, when the Gateway says `istio.io/waypoint-for: workload|all`). [`Destinations`]
//! answers both lookups with what the data path needs: the engine target key for `targetRefs`,
//! the inner protocol, and the endpoints with the identity their ztunnel presents.
//!
//! # Which objects
//!
//! Those [`crate::waypoint::attachment`] says this waypoint serves (as primary or canary).
//! Objects that name it and are refused are kept as [`Findings`] for the operator.
//!
//! # Endpoints, as istiod builds them
//!
//! * **A Service's pods come from its selector, in its own namespace** (pods that are Ready and
//!   not terminating; every pod with an IP under `publishNotReadyAddresses`). Its EndpointSlices
//!   (its namespace, labelled `kubernetes.io/service-name`) add:
//!   * an endpoint whose `targetRef` is a Pod: that pod, only when it is in the slice's namespace
//!     and its uid is the one named (istiod's `matchingServicesWithoutSelectors`); never a pod of
//!     another namespace, never a pod found by IP;
//!   * any other endpoint ("arbitrary addresses users put here", `endpointSlicesBuilder`): a
//!     workload with **no identity**. The waypoint dials it as a non-mesh endpoint (plain TCP),
//!     even when a mesh pod has that IP.
//! * **A ServiceEntry's** inline endpoints (identity from their own labels and service account, in
//!   the ServiceEntry's namespace), plus the pods and WorkloadEntries its `workloadSelector`
//!   picks in its own namespace.
//! * A gateway's own pods and Services are never destinations.
//!
//! # Addresses: one owner each
//!
//! Several objects may claim one `VIP:port`: a ServiceEntry may name any address, a Service's
//! cluster IP may be reused by one. Each address goes to the best claim by [`Rank`]:
//!
//! 1. a Kubernetes Service over a ServiceEntry (the API server allocates Service IPs uniquely;
//!    a ServiceEntry's addresses are free text);
//! 2. an object in the waypoint's own namespace over one in another namespace;
//! 3. the older `metadata.creationTimestamp` (unknown: after every known one);
//! 4. `namespace/name`, alphabetically.
//!
//! Every claim is kept, so when the owner goes away (or stops using this waypoint) the next one
//! takes the address at once. Conflicts are [`Findings`] too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::attachment::{service_entry_target, service_target};
use crate::istio::{ServiceEntry, WorkloadEntrySpec};
use crate::key::ObjectKey;
use crate::pod::PodInfo;
use crate::store::Store;
use crate::waypoint::{Reason, Refusal, Target, attachment, is_waypoint, traffic_types};
use crate::well_known::{DATAPLANE_MODE, GATEWAY_MANAGED, GATEWAY_NAME};

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
    /// The SPIFFE identity its ztunnel presents; `None` when it is not in the ambient mesh or
    /// nothing is known of it (an address written into an EndpointSlice): the waypoint then
    /// sends plain TCP.
    pub identity: Option<String>,
    /// The Pod or WorkloadEntry it is.
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

/// Whether these labels mark a gateway's own pod or Service. Istio never sends a waypoint's
/// traffic to a waypoint, and a waypoint that took itself as a destination would tunnel into
/// itself, so such objects are never destinations.
pub fn is_gateway(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.contains_key(GATEWAY_MANAGED) || l.contains_key(GATEWAY_NAME))
}

/// Whether `ip` belongs to a gateway's pod (of any namespace: this only ever removes an
/// endpoint, never lends one an identity).
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

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceRef::Service(k) => write!(f, "Service {k}"),
            ServiceRef::ServiceEntry(k) => write!(f, "ServiceEntry {k}"),
        }
    }
}

/// An object a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Service(ServiceRef),
    Pod(ObjectKey),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Service(s) => s.fmt(f),
            Subject::Pod(k) => write!(f, "Pod {k}"),
        }
    }
}

/// Several objects claiming one address; `owner` has it (see the module docs for the order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub address: SocketAddr,
    pub owner: ServiceRef,
    /// The other claims, best first.
    pub others: Vec<ServiceRef>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let others: Vec<String> = self.others.iter().map(ToString::to_string).collect();
        write!(
            f,
            "{} is claimed by {} and {}; {} has it",
            self.address,
            self.owner,
            others.join(", "),
            self.owner
        )
    }
}

/// Something an operator should know about what this waypoint serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Our Gateway is not a waypoint (see [`crate::waypoint::is_waypoint`]): istiod sends it
    /// no traffic, and it serves nothing.
    NotAWaypoint { gateway: ObjectKey, reason: Reason },
    /// An object names this waypoint, which refuses it.
    Refused { subject: Subject, refusal: Refusal },
    /// Several objects claim one address.
    AddressConflict(Conflict),
}

impl Finding {
    /// A short, bounded name for counting (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::NotAWaypoint { reason, .. } => reason.as_str(),
            Finding::Refused { refusal, .. } => refusal.reason.as_str(),
            Finding::AddressConflict(_) => "AddressConflict",
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::NotAWaypoint { gateway, reason } => {
                let why = Refusal {
                    waypoint: gateway.clone(),
                    reason: reason.clone(),
                };
                write!(f, "{why}: this waypoint serves nothing")
            }
            Finding::Refused { subject, refusal } => {
                write!(f, "{subject} is not served: {refusal}")
            }
            Finding::AddressConflict(c) => c.fmt(f),
        }
    }
}

/// Every finding in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Set while our Gateway is not a waypoint.
    pub not_a_waypoint: Option<Reason>,
    pub refusals: BTreeMap<Subject, Refusal>,
    pub conflicts: BTreeMap<SocketAddr, Conflict>,
}

impl Findings {
    pub fn is_empty(&self) -> bool {
        self.not_a_waypoint.is_none() && self.refusals.is_empty() && self.conflicts.is_empty()
    }

    /// Each finding, `gateway` being ours.
    pub fn all(&self, gateway: &ObjectKey) -> Vec<Finding> {
        let mut out: Vec<Finding> = self
            .not_a_waypoint
            .iter()
            .map(|reason| Finding::NotAWaypoint {
                gateway: gateway.clone(),
                reason: reason.clone(),
            })
            .collect();
        out.extend(self.refusals.iter().map(|(s, r)| Finding::Refused {
            subject: s.clone(),
            refusal: r.clone(),
        }));
        out.extend(
            self.conflicts
                .values()
                .cloned()
                .map(Finding::AddressConflict),
        );
        out
    }
}

/// What changed since the last build, for [`DestinationBuilder::update`].
#[derive(Debug, Default, Clone)]
pub struct Changed {
    /// Services and ServiceEntries whose own object, or whose EndpointSlices, changed.
    pub services: BTreeSet<ServiceRef>,
    /// Pods and WorkloadEntries (by key; the namespace is what matters for selectors).
    pub pods: BTreeSet<ObjectKey>,
    pub workload_entries: BTreeSet<ObjectKey>,
    /// Gateways, GatewayClasses, Namespaces or mesh settings changed: rebuild everything.
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

/// How good a claim on an address is; lower wins (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    /// A ServiceEntry after a Service.
    service_entry: bool,
    /// Another namespace than the waypoint's after its own.
    foreign: bool,
    /// Unknown after known, then older first.
    created: (bool, Option<Time>),
    key: ObjectKey,
}

impl Rank {
    fn of(owner: &ServiceRef, meta: &ObjectMeta, waypoint_ns: &str) -> Rank {
        let (service_entry, key) = match owner {
            ServiceRef::Service(k) => (false, k),
            ServiceRef::ServiceEntry(k) => (true, k),
        };
        Rank {
            service_entry,
            foreign: key.namespace != waypoint_ns,
            created: (
                meta.creation_timestamp.is_none(),
                meta.creation_timestamp.clone(),
            ),
            key: key.clone(),
        }
    }
}

#[derive(Debug)]
struct Claim {
    rank: Rank,
    owner: ServiceRef,
    dest: Arc<ServiceDestination>,
}

/// Keeps [`Destinations`] up to date incrementally: an endpoint change recomputes the Services it
/// touches, not the whole mesh. The reverse indexes live here, outside the published tables, so a
/// snapshot clones only the lookups the data path reads.
#[derive(Debug)]
pub struct DestinationBuilder {
    gateway: ObjectKey,
    trust_domain: String,
    current: Destinations,
    /// Every claim on an address, best first; `current.services` holds the first's.
    claims: HashMap<SocketAddr, Vec<Claim>>,
    addrs_of: HashMap<ServiceRef, Vec<SocketAddr>>,
    /// Pod or WorkloadEntry key -> the services whose endpoints name it (a pod an
    /// EndpointSlice's `targetRef` names is listed before it exists, so its arrival refreshes
    /// the service).
    services_of: HashMap<ObjectKey, Vec<ServiceRef>>,
    /// Address of an EndpointSlice endpoint without a Pod `targetRef` -> the services listing
    /// it: a gateway pod that appears at that IP removes the endpoint. Entries may outlive the
    /// endpoint; that costs a needless refresh, never a missed one.
    services_at: HashMap<IpAddr, Vec<ServiceRef>>,
    workload_ips: HashMap<ObjectKey, Vec<IpAddr>>,
    findings: Findings,
    /// Findings that appeared (or changed) since [`DestinationBuilder::take_fresh`].
    fresh: Vec<Finding>,
}

impl DestinationBuilder {
    pub fn new(gateway: ObjectKey, trust_domain: &str) -> DestinationBuilder {
        DestinationBuilder {
            gateway,
            trust_domain: trust_domain.to_owned(),
            current: Destinations::default(),
            claims: HashMap::new(),
            addrs_of: HashMap::new(),
            services_of: HashMap::new(),
            services_at: HashMap::new(),
            workload_ips: HashMap::new(),
            findings: Findings::default(),
            fresh: Vec::new(),
        }
    }

    pub fn destinations(&self) -> &Destinations {
        &self.current
    }

    /// Every finding in force.
    pub fn findings(&self) -> &Findings {
        &self.findings
    }

    /// The findings that appeared or changed since the last call: what to log (once) and count.
    pub fn take_fresh(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.fresh)
    }

    /// Recomputes everything from `store`.
    pub fn rebuild(&mut self, store: &Store) {
        let before = std::mem::take(&mut self.findings);
        self.current = Destinations::default();
        self.claims.clear();
        self.addrs_of.clear();
        self.services_of.clear();
        self.services_at.clear();
        self.workload_ips.clear();
        let mark = self.fresh.len();
        let ours = store.gateways.get(&self.gateway);
        self.findings.not_a_waypoint = match ours {
            None => Some(Reason::GatewayNotFound),
            Some(g) if !is_waypoint(store, &g.object) => Some(Reason::NotAWaypoint),
            Some(_) => None,
        };
        if let Some(reason) = &self.findings.not_a_waypoint
            && before.not_a_waypoint.as_ref() != Some(reason)
        {
            self.fresh.push(Finding::NotAWaypoint {
                gateway: self.gateway.clone(),
                reason: reason.clone(),
            });
        }
        let mut touched = HashSet::new();
        let pods = PodIndex::of(store);
        for key in store.services.keys() {
            self.claim_service(
                store,
                &pods,
                &ServiceRef::Service(key.clone()),
                &mut touched,
            );
        }
        for key in store.service_entries.keys() {
            self.claim_service(
                store,
                &pods,
                &ServiceRef::ServiceEntry(key.clone()),
                &mut touched,
            );
        }
        self.settle(touched);
        if traffic_types(store, &self.gateway).1 {
            for key in store.pods.keys() {
                self.refresh_workload(store, key);
            }
        }
        // Log once: what was already in force before the rebuild is not fresh.
        let fresh = self.fresh.split_off(mark);
        self.fresh.extend(fresh.into_iter().filter(|f| match f {
            Finding::NotAWaypoint { .. } => true,
            Finding::Refused { subject, refusal } => before.refusals.get(subject) != Some(refusal),
            Finding::AddressConflict(c) => before.conflicts.get(&c.address) != Some(c),
        }));
    }

    /// Applies `changed`; returns whether anything was recomputed.
    pub fn update(&mut self, store: &Store, changed: &Changed) -> bool {
        if changed.everything {
            self.rebuild(store);
            return true;
        }
        let mut services = changed.services.clone();
        for key in changed.pods.iter().chain(&changed.workload_entries) {
            if let Some(s) = self.services_of.get(key) {
                services.extend(s.iter().cloned());
            }
            let pod = store.pods.get(key).map(|p| &p.object);
            for ip in pod.iter().flat_map(|p| &p.ips) {
                if let Some(s) = self.services_at.get(ip) {
                    services.extend(s.iter().cloned());
                }
            }
            // Selectors it may match now, in its own namespace only.
            let we = store.workload_entries.get(key).map(|w| &w.object);
            let ns = ObjectKey::new(&key.namespace, "");
            if let Some(p) = pod {
                for (sk, svc) in store.services.range(ns.clone()..) {
                    if sk.namespace != key.namespace {
                        break;
                    }
                    if selector_of(&svc.object).is_some_and(|sel| selects(sel, &p.labels)) {
                        services.insert(ServiceRef::Service(sk.clone()));
                    }
                }
            }
            for (sk, se) in store.service_entries.range(ns..) {
                if sk.namespace != key.namespace {
                    break;
                }
                let Some(sel) = &se.object.spec.workload_selector else {
                    continue;
                };
                let picks = pod.is_some_and(|p| selects(&sel.labels, &p.labels))
                    || we.is_some_and(|w| {
                        selects(
                            &sel.labels,
                            w.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                        ) || selects(&sel.labels, &w.spec.labels)
                    });
                if picks {
                    services.insert(ServiceRef::ServiceEntry(sk.clone()));
                }
            }
        }
        let mut touched = HashSet::new();
        for s in &services {
            self.claim_service(store, &PodIndex::None, s, &mut touched);
        }
        self.settle(touched);
        if traffic_types(store, &self.gateway).1 {
            for key in &changed.pods {
                self.refresh_workload(store, key);
            }
        }
        !services.is_empty() || !changed.pods.is_empty()
    }

    /// Withdraws `s`'s claims and makes them anew from `store`; the addresses touched are
    /// settled by [`DestinationBuilder::settle`] once every change is in, so a claim withdrawn
    /// and made again is no change.
    fn claim_service(
        &mut self,
        store: &Store,
        pods: &PodIndex<'_>,
        s: &ServiceRef,
        touched: &mut HashSet<SocketAddr>,
    ) {
        for addr in self.addrs_of.remove(s).unwrap_or_default() {
            if let Some(v) = self.claims.get_mut(&addr) {
                v.retain(|c| c.owner != *s);
            }
            touched.insert(addr);
        }
        let (att, meta, dests) = match s {
            ServiceRef::Service(key) => match store.services.get(key) {
                Some(svc) => {
                    let att = attachment(store, Target::Service(&svc.object));
                    let serve = att.serves(&self.gateway)
                        && !is_gateway(svc.object.metadata.labels.as_ref());
                    let dests = if serve {
                        service_destinations(store, pods, key, &svc.object, &self.trust_domain)
                    } else {
                        Vec::new()
                    };
                    (Some(att), Some(&svc.object.metadata), dests)
                }
                None => (None, None, Vec::new()),
            },
            ServiceRef::ServiceEntry(key) => match store.service_entries.get(key) {
                Some(se) => {
                    let att = attachment(store, Target::ServiceEntry(&se.object));
                    let dests = if att.serves(&self.gateway) {
                        service_entry_destinations(store, key, &se.object, &self.trust_domain)
                    } else {
                        Vec::new()
                    };
                    (Some(att), Some(&se.object.metadata), dests)
                }
                None => (None, None, Vec::new()),
            },
        };
        let refusal = att.as_ref().and_then(|a| self.reportable(a));
        self.note_refusal(Subject::Service(s.clone()), refusal);
        let Some(meta) = meta else { return };
        let rank = Rank::of(s, meta, &self.gateway.namespace);
        let mut addrs = Vec::new();
        for (addr, dest) in dests {
            if addrs.contains(&addr) {
                continue; // a port listed twice
            }
            for ep in &dest.endpoints {
                // Vecs, not sets: one or two services per pod is the norm, and at 50,000
                // endpoints a set's node would cost ten times the entry.
                match &ep.pod {
                    Some(p) => add_once(self.services_of.entry(p.clone()).or_default(), s),
                    None => add_once(self.services_at.entry(ep.address.ip()).or_default(), s),
                }
            }
            addrs.push(addr);
            touched.insert(addr);
            let claims = self.claims.entry(addr).or_default();
            let at = claims.partition_point(|c| c.rank < rank);
            claims.insert(
                at,
                Claim {
                    rank: rank.clone(),
                    owner: s.clone(),
                    dest,
                },
            );
        }
        if let ServiceRef::Service(key) = s
            && att.as_ref().is_some_and(|a| a.serves(&self.gateway))
        {
            // Pods its EndpointSlices name by targetRef, present or not yet.
            for p in slice_pod_refs(store, key) {
                add_once(self.services_of.entry(p).or_default(), s);
            }
        }
        if !addrs.is_empty() {
            self.addrs_of.insert(s.clone(), addrs);
        }
    }

    /// Gives each touched address to its best claim, and records conflicts.
    fn settle(&mut self, touched: HashSet<SocketAddr>) {
        for addr in touched {
            let conflict = match self.claims.get(&addr) {
                Some(v) if !v.is_empty() => {
                    self.current.services.insert(addr, v[0].dest.clone());
                    (v.len() > 1).then(|| Conflict {
                        address: addr,
                        owner: v[0].owner.clone(),
                        others: v[1..].iter().map(|c| c.owner.clone()).collect(),
                    })
                }
                _ => {
                    self.claims.remove(&addr);
                    self.current.services.remove(&addr);
                    None
                }
            };
            match conflict {
                Some(c) => {
                    if self.findings.conflicts.get(&addr) != Some(&c) {
                        self.fresh.push(Finding::AddressConflict(c.clone()));
                        self.findings.conflicts.insert(addr, c);
                    }
                }
                None => {
                    self.findings.conflicts.remove(&addr);
                }
            }
        }
    }

    /// The refusal by this waypoint worth reporting: not the one every object gets while our
    /// Gateway is no waypoint (that is reported once, as [`Finding::NotAWaypoint`]).
    fn reportable(&self, att: &crate::waypoint::Attachment) -> Option<Refusal> {
        att.refusal_for(&self.gateway)
            .filter(|r| {
                !(self.findings.not_a_waypoint.is_some()
                    && matches!(r.reason, Reason::NotAWaypoint | Reason::GatewayNotFound))
            })
            .cloned()
    }

    fn note_refusal(&mut self, subject: Subject, refusal: Option<Refusal>) {
        match refusal {
            Some(r) => {
                if self.findings.refusals.get(&subject) != Some(&r) {
                    self.fresh.push(Finding::Refused {
                        subject: subject.clone(),
                        refusal: r.clone(),
                    });
                    self.findings.refusals.insert(subject, r);
                }
            }
            None => {
                self.findings.refusals.remove(&subject);
            }
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
        let subject = Subject::Pod(key.clone());
        let Some(p) = store.pods.get(key) else {
            self.note_refusal(subject, None);
            return;
        };
        if is_gateway(Some(&p.object.labels)) {
            self.note_refusal(subject, None);
            return;
        }
        let att = attachment(store, Target::Pod(&p.object));
        let refusal = self.reportable(&att);
        self.note_refusal(subject, refusal);
        if !att.serves(&self.gateway) {
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

/// Whether `labels` carry every pair of `selector`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A Service's selector, when it has a non-empty one (an empty selector selects nothing).
fn selector_of(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// The Service's EndpointSlices: in its namespace, labelled with its name; FQDN slices are not
/// supported (as in istiod).
fn slices_of<'s>(store: &'s Store, key: &ObjectKey) -> Vec<&'s EndpointSlice> {
    store
        .slices_by_service
        .get(key)
        .into_iter()
        .flatten()
        .filter_map(|k| store.endpoint_slices.get(k))
        .map(|s| &s.object)
        .filter(|s| s.address_type != "FQDN")
        .collect()
}

/// What a slice endpoint's `targetRef` names.
enum PodRef<'a> {
    /// No Pod: an address someone wrote.
    None,
    /// A Pod of another namespace: never followed.
    Foreign,
    /// A Pod of the slice's own namespace, with the uid named.
    Local(ObjectKey, &'a str),
}

fn pod_ref<'a>(ep: &'a k8s_openapi::api::discovery::v1::Endpoint, ns: &str) -> PodRef<'a> {
    let Some(r) = ep
        .target_ref
        .as_ref()
        .filter(|r| r.kind.as_deref() == Some("Pod"))
    else {
        return PodRef::None;
    };
    // Kubernetes' controllers always set the namespace; a hand-written one that leaves it out
    // can only mean its own.
    if r.namespace.as_deref().is_some_and(|rns| rns != ns) {
        return PodRef::Foreign;
    }
    let name = r.name.clone().unwrap_or_default();
    PodRef::Local(ObjectKey::new(ns, name), r.uid.as_deref().unwrap_or(""))
}

/// Pods the Service's EndpointSlices name by `targetRef`, in its own namespace.
fn slice_pod_refs(store: &Store, key: &ObjectKey) -> Vec<ObjectKey> {
    let mut out = Vec::new();
    for s in slices_of(store, key) {
        for ep in &s.endpoints {
            if let PodRef::Local(k, _) = pod_ref(ep, &key.namespace)
                && !out.contains(&k)
            {
                out.push(k);
            }
        }
    }
    out
}

fn service_destinations(
    store: &Store,
    pods: &PodIndex<'_>,
    key: &ObjectKey,
    svc: &Service,
    trust_domain: &str,
) -> Vec<(SocketAddr, Arc<ServiceDestination>)> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        // Not implemented by ambient (istiod builds no service for it).
        return Vec::new();
    }
    let vips: Vec<IpAddr> = match spec.cluster_ips.as_ref().filter(|v| !v.is_empty()) {
        Some(ips) => ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        None => spec
            .cluster_ip
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect(),
    };
    if vips.is_empty() {
        return Vec::new();
    }
    let all = spec.publish_not_ready_addresses == Some(true);
    let slices = slices_of(store, key);
    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Ok(service_port) = u16::try_from(port.port) else {
            continue;
        };
        let mut endpoints =
            selected_pods(store, pods, key, selector_of(svc), port, all, trust_domain);
        slice_endpoints(store, key, &slices, port, all, trust_domain, &mut endpoints);
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

/// The port a pod serves `port` of a Service on: its `targetPort` (a number, or a name looked
/// up in the pod's container ports), else the port itself.
fn target_port(pod: &PodInfo, port: &ServicePort) -> Option<u16> {
    match &port.target_port {
        Some(IntOrString::Int(p)) => u16::try_from(*p).ok(),
        Some(IntOrString::String(name)) => pod.named_port(name),
        None => u16::try_from(port.port).ok(),
    }
}

fn pod_endpoints(
    store: &Store,
    pod: &PodInfo,
    port: u16,
    trust_domain: &str,
    out: &mut Vec<Endpoint>,
) {
    let identity = pod_identity(store, pod, trust_domain);
    for ip in &pod.ips {
        let address = SocketAddr::new(*ip, port);
        if !out.iter().any(|e| e.address == address) {
            out.push(Endpoint {
                address,
                identity: identity.clone(),
                pod: Some(pod.key.clone()),
            });
        }
    }
}

/// Pods by `(namespace, label key, label value)`, built once for a rebuild: every Service's
/// selector then looks at the pods carrying its first pair instead of its whole namespace
/// (5,000 Services over 50,000 pods would otherwise compare millions of labels).
enum PodIndex<'s> {
    /// Scan the namespace (one Service at a time, incremental updates).
    None,
    Built(HashMap<(&'s str, &'s str, &'s str), Vec<&'s PodInfo>>),
}

impl<'s> PodIndex<'s> {
    fn of(store: &'s Store) -> PodIndex<'s> {
        let mut m: HashMap<(&str, &str, &str), Vec<&PodInfo>> = HashMap::new();
        for p in store.pods.values() {
            let p = &p.object;
            for (k, v) in &p.labels {
                m.entry((&p.key.namespace, k, v)).or_default().push(p);
            }
        }
        PodIndex::Built(m)
    }

    /// Pods of `ns` that may match `selector` (a superset; the caller checks every pair).
    fn candidates<'a>(
        &'a self,
        store: &'a Store,
        ns: &'a str,
        selector: &'a BTreeMap<String, String>,
    ) -> Box<dyn Iterator<Item = &'a PodInfo> + 'a> {
        match (self, selector.iter().next()) {
            (PodIndex::Built(m), Some((k, v))) => Box::new(
                m.get(&(ns, k.as_str(), v.as_str()))
                    .into_iter()
                    .flatten()
                    .copied(),
            ),
            _ => Box::new(
                store
                    .pods
                    .range(ObjectKey::new(ns, "")..)
                    .take_while(move |(k, _)| k.namespace == ns)
                    .map(|(_, p)| &p.object),
            ),
        }
    }
}

/// The pods a Service's selector picks: in its namespace, serving (or all under
/// `publishNotReadyAddresses`), never a gateway's own.
fn selected_pods(
    store: &Store,
    pods: &PodIndex<'_>,
    key: &ObjectKey,
    selector: Option<&BTreeMap<String, String>>,
    port: &ServicePort,
    all: bool,
    trust_domain: &str,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let Some(selector) = selector else {
        return out;
    };
    for p in pods.candidates(store, &key.namespace, selector) {
        if !selects(selector, &p.labels) || is_gateway(Some(&p.labels)) || !(all || p.serves()) {
            continue;
        }
        if let Some(tp) = target_port(p, port) {
            pod_endpoints(store, p, tp, trust_domain, &mut out);
        }
    }
    out
}

/// What a Service's EndpointSlices add for `port`: the pods their `targetRef`s name (same
/// namespace, same uid), and identity-less workloads for every other endpoint.
fn slice_endpoints(
    store: &Store,
    key: &ObjectKey,
    slices: &[&EndpointSlice],
    port: &ServicePort,
    all: bool,
    trust_domain: &str,
    out: &mut Vec<Endpoint>,
) {
    let port_name = port.name.as_deref().unwrap_or("");
    for slice in slices {
        // The slice's port of this Service port's name: Kubernetes always sets name and port;
        // protocol defaults to TCP (istiod takes TCP ports only).
        let slice_port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().is_none_or(|pr| pr == "TCP")
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let mut seen = HashSet::new();
        for ep in &slice.endpoints {
            match pod_ref(ep, &key.namespace) {
                PodRef::Foreign => continue,
                PodRef::Local(pk, uid) => {
                    if let Some(p) = store.pods.get(&pk).map(|p| &p.object)
                        && p.uid == uid
                        && !is_gateway(Some(&p.labels))
                        && (all || p.serves())
                        && let Some(tp) = target_port(p, port)
                    {
                        pod_endpoints(store, p, tp, trust_domain, out);
                    }
                }
                PodRef::None => {
                    let Some(tp) = slice_port else { continue };
                    if !all && ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    let Ok(ips) = ep
                        .addresses
                        .iter()
                        .map(|a| a.parse::<IpAddr>())
                        .collect::<Result<Vec<_>, _>>()
                    else {
                        continue; // any address unreadable: skipped, as istiod does
                    };
                    let Some(first) = ips.first() else { continue };
                    if !seen.insert(*first) {
                        continue;
                    }
                    for ip in ips {
                        let address = SocketAddr::new(ip, tp);
                        if is_gateway_ip(store, &ip) || out.iter().any(|e| e.address == address) {
                            continue;
                        }
                        out.push(Endpoint {
                            address,
                            identity: None,
                            pod: None,
                        });
                    }
                }
            }
        }
    }
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
            let ns = ObjectKey::new(&key.namespace, "");
            for (wk, we) in store.workload_entries.range(ns.clone()..) {
                if wk.namespace != key.namespace {
                    break;
                }
                let labels = we.object.metadata.labels.clone().unwrap_or_default();
                if selects(&sel.labels, &labels) || selects(&sel.labels, &we.object.spec.labels) {
                    entry(&we.object.spec, &key.namespace, Some(wk.clone()));
                }
            }
            for (pk, p) in store.pods.range(ns..) {
                if pk.namespace != key.namespace {
                    break;
                }
                let p = &p.object;
                if !selects(&sel.labels, &p.labels) || is_gateway(Some(&p.labels)) || !p.serves() {
                    continue;
                }
                // ServiceEntry semantics: the pod's container port named like the entry's port,
                // else the target port (istiod's `constructServices`).
                let tp = p.named_port(&port.name).unwrap_or(default_port);
                for ip in &p.ips {
                    endpoints.push(Endpoint {
                        address: SocketAddr::new(*ip, tp),
                        identity: pod_identity(store, p, trust_domain),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh_rules::WaypointRule;
    use crate::well_known::WAYPOINT_FOR;

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
  targetRef: {kind: Pod, name: web-1, namespace: demo, uid: u-web-1}
- addresses: [10.1.0.6]
  conditions: {ready: false}
- addresses: [10.1.0.7]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo, uid: u-web-1, labels: {app: web}}
spec: {serviceAccountName: web-sa, containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
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

    fn load(s: &mut Store, yaml: &str) {
        let errs = s.load_str(yaml, None);
        assert!(errs.is_empty(), "{errs:?}");
    }

    fn eps(d: &Destinations, vip: &str) -> Vec<(String, Option<String>)> {
        d.services[&vip.parse().unwrap()]
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.identity.clone()))
            .collect()
    }

    fn id(ns: &str, sa: &str) -> Option<String> {
        Some(spiffe_id("td", ns, sa))
    }

    #[test]
    fn services_resolve_to_endpoints_with_identities() {
        let s = store();
        let d = Destinations::build(&s, &ObjectKey::new("demo", "waypoint"), "td");
        let web = &d.services[&"10.0.0.1:80".parse().unwrap()];
        assert_eq!(web.protocol, Protocol::Http);
        assert_eq!(web.target, "Service/demo/web");
        assert_eq!(
            eps(&d, "10.0.0.1:80"),
            vec![
                ("10.1.0.5:8080".to_owned(), id("demo", "web-sa")),
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
        assert_eq!(
            eps(&d, "10.0.0.2:80"),
            vec![
                // The pod its targetRef names (same namespace, same uid), on its named port.
                ("10.1.0.5:9090".to_owned(), id("demo", "web-sa")),
                // An address written into the slice: nothing known, no identity. The
                // not-ready one is skipped.
                ("10.1.0.7:9090".to_owned(), None),
            ]
        );
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
        load(
            &mut s,
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
        );
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
        let addrs = |vip: &str| -> Vec<String> { eps(&d, vip).into_iter().map(|e| e.0).collect() };
        // Selected by `app: web`, listed in an EndpointSlice, named by a ServiceEntry: never.
        assert_eq!(addrs("10.0.0.1:80"), ["10.1.0.5:8080", "10.1.0.9:8080"]);
        assert_eq!(addrs("10.0.0.2:80"), ["10.1.0.5:9090"]);
        assert_eq!(addrs("240.0.0.9:80"), ["10.1.0.5:80"]);
    }

    /// A tenant's EndpointSlice can put addresses into its own Service, never another
    /// namespace's pods or their identity (istiod's `endpointSlicesBuilder` skips Pod
    /// targetRefs; the pod-by-IP lookup is gone).
    #[test]
    fn a_tenants_endpoints_never_adopt_another_namespaces_pods() {
        let mut s = store();
        load(
            &mut s,
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: tenant-b, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: steal, namespace: tenant-b, labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: demo}}
spec: {clusterIP: 10.0.9.1, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: steal-1, namespace: tenant-b, labels: {kubernetes.io/service-name: steal}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.1.0.5]
  targetRef: {kind: Pod, name: web-1, namespace: demo, uid: u-web-1}
- addresses: [10.1.0.5]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-extra, namespace: tenant-b, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.9.9.9]}]
"#,
        );
        // The Gateway admits every namespace: what is left is the endpoints.
        let gw = ObjectKey::new("demo", "waypoint");
        let g = &mut s.gateways.get_mut(&gw).unwrap().object;
        g.spec.listeners[0].allowed_routes =
            serde_json::from_str(r#"{"namespaces": {"from": "All"}}"#).unwrap();
        let d = Destinations::build(&s, &gw, "td");
        assert_eq!(
            eps(&d, "10.0.9.1:80"),
            vec![("10.1.0.5:8080".to_owned(), None)],
            "the foreign targetRef is skipped; the bare address has no identity"
        );
        assert_eq!(
            eps(&d, "10.0.0.1:80").len(),
            2,
            "a slice in tenant-b labelled `web` is tenant-b's, not demo's"
        );
        // A same-namespace targetRef with the wrong uid names no pod either.
        load(
            &mut s,
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: sliced-1, namespace: demo, labels: {kubernetes.io/service-name: sliced}}\naddressType: IPv4\nports: [{name: web, port: 9090}]\nendpoints: [{addresses: [10.1.0.5], targetRef: {kind: Pod, name: web-1, namespace: demo, uid: forged}}]\n",
        );
        let d = Destinations::build(&s, &gw, "td");
        assert!(eps(&d, "10.0.0.2:80").is_empty());
    }

    #[test]
    fn pods_serve_only_when_ready_unless_published_not_ready() {
        let mut s = store();
        load(
            &mut s,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-3, namespace: demo, labels: {app: web}}\nstatus: {podIP: 10.1.0.10, conditions: [{type: Ready, status: 'False'}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: web-4, namespace: demo, labels: {app: web}, deletionTimestamp: '2026-01-01T00:00:00Z'}\nstatus: {podIP: 10.1.0.11, conditions: [{type: Ready, status: 'True'}]}\n",
        );
        let gw = ObjectKey::new("demo", "waypoint");
        let d = Destinations::build(&s, &gw, "td");
        assert_eq!(
            eps(&d, "10.0.0.1:80").len(),
            2,
            "not Ready, terminating: skipped"
        );
        let web = s.services.get_mut(&ObjectKey::new("demo", "web")).unwrap();
        web.object
            .spec
            .as_mut()
            .unwrap()
            .publish_not_ready_addresses = Some(true);
        let d = Destinations::build(&s, &gw, "td");
        assert_eq!(eps(&d, "10.0.0.1:80").len(), 4);
    }

    #[test]
    fn workload_entries_count_only_in_their_own_namespace() {
        let mut s = store();
        load(
            &mut s,
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: demo}
spec:
  hosts: [vms.example]
  addresses: [240.0.0.2]
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: demo}
spec: {address: 192.0.2.1, labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-evil, namespace: tenant-b}
spec: {address: 192.0.2.66, labels: {app: vm, istio.io/dataplane-mode: ambient}, serviceAccount: web-sa}
"#,
        );
        let d = Destinations::build(&s, &ObjectKey::new("demo", "waypoint"), "td");
        assert_eq!(
            eps(&d, "240.0.0.2:80"),
            vec![("192.0.2.1:80".to_owned(), None)]
        );
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

    fn assert_same_as_rebuild(b: &DestinationBuilder, s: &Store, gw: &ObjectKey, after: &str) {
        let mut full = DestinationBuilder::new(gw.clone(), "td");
        full.rebuild(s);
        assert_eq!(
            canon(b.destinations()),
            canon(full.destinations()),
            "after {after}"
        );
        assert_eq!(b.findings(), full.findings(), "findings after {after}");
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
        let svc = |k: &str| ServiceRef::Service(ObjectKey::new("demo", k));
        let pods = |k: &str| Changed {
            pods: [ObjectKey::new("demo", k)].into(),
            ..Changed::default()
        };
        let services = |r: ServiceRef| Changed {
            services: [r].into(),
            ..Changed::default()
        };
        let steps: Vec<(&str, Changed)> = vec![
            // An endpoint moves and a new one appears in the slice; a targetRef names a pod
            // that does not exist yet.
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: sliced-1, namespace: demo, labels: {kubernetes.io/service-name: sliced}}\naddressType: IPv4\nports: [{name: web, port: 9090}]\nendpoints: [{addresses: [10.1.0.5], targetRef: {kind: Pod, name: web-1, namespace: demo, uid: u-web-1}}, {addresses: [10.1.0.8]}, {addresses: [10.1.0.12], targetRef: {kind: Pod, name: late, namespace: demo, uid: u-late}}]\n",
                services(svc("sliced")),
            ),
            // The pod the slice named arrives.
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: demo, uid: u-late}\nspec: {serviceAccountName: late, containers: [{name: c, ports: [{name: http, containerPort: 7070}]}]}\nstatus: {podIP: 10.1.0.12}\n",
                pods("late"),
            ),
            // A new pod matching the selector-based service.
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: web-3, namespace: demo, labels: {app: web}}\nspec: {serviceAccountName: other}\nstatus: {podIP: 10.1.0.13}\n",
                pods("web-3"),
            ),
            // A pod changes its service account: its endpoints' identity follows.
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: demo, uid: u-web-1, labels: {app: web}}\nspec: {serviceAccountName: renamed, containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}\nstatus: {podIP: 10.1.0.5}\n",
                pods("web-1"),
            ),
            // A pod stops being Ready.
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: web-3, namespace: demo, labels: {app: web}}\nspec: {serviceAccountName: other}\nstatus: {podIP: 10.1.0.13, conditions: [{type: Ready, status: 'False'}]}\n",
                pods("web-3"),
            ),
            // A pod leaves the selector.
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: web-2, namespace: demo, labels: {app: other}}\nspec: {containers: [{name: c}]}\nstatus: {podIPs: [{ip: 10.1.0.9}]}\n",
                pods("web-2"),
            ),
            // A gateway pod appears at an address written into a slice.
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: gw-1, namespace: other, labels: {gateway.networking.k8s.io/gateway-name: x}}\nstatus: {podIP: 10.1.0.8}\n",
                Changed {
                    pods: [ObjectKey::new("other", "gw-1")].into(),
                    ..Changed::default()
                },
            ),
            // A service leaves the waypoint.
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo, labels: {istio.io/use-waypoint: none}}\nspec: {clusterIP: 10.0.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}\n",
                services(svc("web")),
            ),
            // A ServiceEntry with an inline endpoint joins.
            (
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: demo}\nspec: {hosts: [ext.example], addresses: [240.0.0.1], ports: [{number: 443, protocol: TLS, name: tls}], endpoints: [{address: 192.0.2.1}]}\n",
                services(ServiceRef::ServiceEntry(ObjectKey::new("demo", "ext"))),
            ),
            // A tenant's Service names the waypoint: refused (allowedRoutes Same).
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: t, namespace: tenant-b, labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: demo}}\nspec: {clusterIP: 10.0.9.9, ports: [{name: http, port: 80}]}\n",
                services(ServiceRef::Service(ObjectKey::new("tenant-b", "t"))),
            ),
            // A WorkloadEntry joins the ServiceEntry through its selector.
            (
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: demo}\nspec: {hosts: [ext.example], addresses: [240.0.0.1], ports: [{number: 443, protocol: TLS, name: tls}], workloadSelector: {labels: {app: vm}}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm-1, namespace: demo}\nspec: {address: 192.0.2.7, labels: {app: vm}}\n",
                Changed {
                    services: [ServiceRef::ServiceEntry(ObjectKey::new("demo", "ext"))].into(),
                    workload_entries: [ObjectKey::new("demo", "vm-1")].into(),
                    ..Changed::default()
                },
            ),
        ];
        for (yaml, changed) in steps {
            load(&mut s, yaml);
            b.update(&s, &changed);
            assert_same_as_rebuild(&b, &s, &gw, yaml);
        }
        let se = &b.destinations().services[&"240.0.0.1:443".parse().unwrap()];
        assert_eq!(
            (se.protocol, se.target.as_str()),
            (Protocol::Tcp, "ServiceEntry/demo/ext")
        );
        assert_eq!(se.endpoints[0].identity, None, "not enrolled: plain TCP");
        assert_eq!(
            eps(b.destinations(), "10.0.0.2:80"),
            vec![
                ("10.1.0.5:9090".to_owned(), id("demo", "renamed")),
                ("10.1.0.12:7070".to_owned(), id("demo", "late")),
            ],
            "the late pod joined; the gateway pod's address left"
        );
        // Removal.
        assert!(s.remove(crate::Kind::Pod, &ObjectKey::new("demo", "late")));
        b.update(&s, &pods("late"));
        assert_same_as_rebuild(&b, &s, &gw, "removing a pod");
        assert!(s.remove(crate::Kind::Service, &ObjectKey::new("tenant-b", "t")));
        b.update(
            &s,
            &services(ServiceRef::Service(ObjectKey::new("tenant-b", "t"))),
        );
        assert_same_as_rebuild(&b, &s, &gw, "removing the refused Service");
    }

    /// A foreign ServiceEntry claiming a Service's address, in both orders, with each owner
    /// deleted and restored.
    fn conflict_store() -> Store {
        let mut s = store();
        let gw = ObjectKey::new("demo", "waypoint");
        let g = &mut s.gateways.get_mut(&gw).unwrap().object;
        g.spec.listeners[0].allowed_routes =
            serde_json::from_str(r#"{"namespaces": {"from": "All"}}"#).unwrap();
        s
    }

    const THIEF: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: thief, namespace: tenant-b, creationTimestamp: '2020-01-01T00:00:00Z', labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: demo}}\nspec: {hosts: [web.demo.svc.cluster.local], addresses: [10.0.0.1], ports: [{number: 80, name: http, protocol: HTTP}], endpoints: [{address: 10.66.0.1}]}\n";
    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo, creationTimestamp: '2026-01-01T00:00:00Z'}\nspec:\n  clusterIP: 10.0.0.1\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}, {name: db, port: 5432, appProtocol: tcp}]\n";

    #[test]
    fn an_address_has_one_owner_whatever_the_order() {
        let gw = ObjectKey::new("demo", "waypoint");
        let web = ServiceRef::Service(ObjectKey::new("demo", "web"));
        let thief = ServiceRef::ServiceEntry(ObjectKey::new("tenant-b", "thief"));
        let vip: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let owner = |b: &DestinationBuilder| b.destinations().services.get(&vip).map(|d| d.owner());
        for thief_first in [true, false] {
            let mut s = conflict_store();
            let mut b = DestinationBuilder::new(gw.clone(), "td");
            if thief_first {
                assert!(s.remove(crate::Kind::Service, &ObjectKey::new("demo", "web")));
                load(&mut s, THIEF);
                b.rebuild(&s);
                assert_eq!(owner(&b), Some(thief.clone()), "alone, it may have it");
                load(&mut s, WEB);
                b.update(
                    &s,
                    &Changed {
                        services: [web.clone()].into(),
                        ..Changed::default()
                    },
                );
            } else {
                load(&mut s, WEB);
                b.rebuild(&s);
                load(&mut s, THIEF);
                b.update(
                    &s,
                    &Changed {
                        services: [thief.clone()].into(),
                        ..Changed::default()
                    },
                );
            }
            // Older, but a ServiceEntry and foreign: the Service owns its address.
            assert_eq!(owner(&b), Some(web.clone()), "thief first: {thief_first}");
            assert_same_as_rebuild(&b, &s, &gw, "both present");
            let fresh = b.take_fresh();
            let conflicts: Vec<_> = fresh
                .iter()
                .filter_map(|f| match f {
                    Finding::AddressConflict(c) => Some(c.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(
                conflicts,
                vec![Conflict {
                    address: vip,
                    owner: web.clone(),
                    others: vec![thief.clone()]
                }],
                "reported once, naming both"
            );
            // Touching either again reports nothing new: logged once.
            b.update(
                &s,
                &Changed {
                    services: [web.clone(), thief.clone()].into(),
                    ..Changed::default()
                },
            );
            assert!(b.take_fresh().is_empty());
            b.rebuild(&s);
            assert!(
                b.take_fresh().is_empty(),
                "a rebuild does not repeat what is known"
            );

            // The owner goes away: the next claim takes the address at once.
            assert!(s.remove(crate::Kind::Service, &ObjectKey::new("demo", "web")));
            b.update(
                &s,
                &Changed {
                    services: [web.clone()].into(),
                    ..Changed::default()
                },
            );
            assert_eq!(owner(&b), Some(thief.clone()));
            assert!(b.findings().conflicts.is_empty());
            assert_same_as_rebuild(&b, &s, &gw, "owner deleted");
            // And back.
            load(&mut s, WEB);
            b.update(
                &s,
                &Changed {
                    services: [web.clone()].into(),
                    ..Changed::default()
                },
            );
            assert_eq!(owner(&b), Some(web.clone()));
            assert_same_as_rebuild(&b, &s, &gw, "owner restored");
            // The ServiceEntry goes: the Service keeps its address (no lost address).
            assert!(s.remove(
                crate::Kind::ServiceEntry,
                &ObjectKey::new("tenant-b", "thief")
            ));
            b.update(
                &s,
                &Changed {
                    services: [thief.clone()].into(),
                    ..Changed::default()
                },
            );
            assert_eq!(owner(&b), Some(web.clone()));
            assert_eq!(
                eps(b.destinations(), "10.0.0.1:80"),
                vec![
                    ("10.1.0.5:8080".to_owned(), id("demo", "web-sa")),
                    ("10.1.0.9:8080".to_owned(), None),
                ]
            );
            assert_same_as_rebuild(&b, &s, &gw, "thief deleted");
        }
    }

    #[test]
    fn ranks_order_claims_as_documented() {
        let meta = |ts: Option<&str>| ObjectMeta {
            creation_timestamp: ts.map(|t| Time(t.parse().unwrap())),
            ..ObjectMeta::default()
        };
        let svc = |ns: &str, n: &str| ServiceRef::Service(ObjectKey::new(ns, n));
        let se = |ns: &str, n: &str| ServiceRef::ServiceEntry(ObjectKey::new(ns, n));
        let old = Some("2020-01-01T00:00:00Z");
        let new = Some("2026-01-01T00:00:00Z");
        let mut ranks = [
            (Rank::of(&se("demo", "a"), &meta(old), "demo"), "se own ns"),
            (Rank::of(&svc("x", "a"), &meta(new), "demo"), "svc foreign"),
            (
                Rank::of(&svc("demo", "z"), &meta(None), "demo"),
                "svc own, age unknown",
            ),
            (
                Rank::of(&svc("demo", "b"), &meta(new), "demo"),
                "svc own, new",
            ),
            (
                Rank::of(&svc("demo", "c"), &meta(old), "demo"),
                "svc own, old",
            ),
            (Rank::of(&se("x", "a"), &meta(old), "demo"), "se foreign"),
            (
                Rank::of(&svc("demo", "a"), &meta(new), "demo"),
                "svc own, new, first name",
            ),
        ];
        ranks.sort_by(|a, b| a.0.cmp(&b.0));
        let order: Vec<&str> = ranks.iter().map(|r| r.1).collect();
        assert_eq!(
            order,
            [
                "svc own, old",
                "svc own, new, first name",
                "svc own, new",
                "svc own, age unknown",
                "svc foreign",
                "se own ns",
                "se foreign"
            ]
        );
    }

    #[test]
    fn refusals_of_this_waypoint_are_findings_reported_once() {
        let gw = ObjectKey::new("demo", "waypoint");
        let mut s = store();
        let mut b = DestinationBuilder::new(gw.clone(), "td");
        b.rebuild(&s);
        assert!(b.take_fresh().is_empty());
        load(
            &mut s,
            "apiVersion: v1\nkind: Service\nmetadata: {name: t, namespace: tenant-b, labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: demo}}\nspec: {clusterIP: 10.0.9.9, ports: [{name: http, port: 80}]}\n",
        );
        let t = ServiceRef::Service(ObjectKey::new("tenant-b", "t"));
        let changed = Changed {
            services: [t.clone()].into(),
            ..Changed::default()
        };
        b.update(&s, &changed);
        let fresh = b.take_fresh();
        assert_eq!(fresh.len(), 1, "{fresh:?}");
        assert_eq!(fresh[0].kind(), "AttachmentDenied");
        assert!(
            fresh[0]
                .to_string()
                .starts_with("Service tenant-b/t is not served: not permitted to attach"),
            "{}",
            fresh[0]
        );
        assert!(
            !b.destinations()
                .services
                .contains_key(&"10.0.9.9:80".parse().unwrap())
        );
        b.update(&s, &changed);
        assert!(b.take_fresh().is_empty(), "once");
        // Our Gateway loses its addresses under the Kubernetes rule: one finding, not one per
        // object, and nothing is served.
        s.rules.waypoints = WaypointRule::StatusAddresses;
        b.rebuild(&s);
        let fresh = b.take_fresh();
        assert_eq!(fresh.len(), 1, "{fresh:?}");
        assert!(matches!(
            &fresh[0],
            Finding::NotAWaypoint {
                reason: Reason::NotAWaypoint,
                ..
            }
        ));
        assert!(b.destinations().services.is_empty());
        assert!(
            b.findings().refusals.is_empty(),
            "one reason for everything, reported once: {:?}",
            b.findings()
        );
    }
}
