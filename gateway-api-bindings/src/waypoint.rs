//! Waypoint membership, decided as istiod decides it: which Gateway is a waypoint, and whether an
//! object's traffic goes through one (`pilot/pkg/serviceregistry/ambient/waypoints.go` and
//! `services.go`, istio master 86c9f01f).
//!
//! # One function decides
//!
//! ```text
//! attachment(store: &Store, target: Target<'_>) -> Attachment
//! ```
//!
//! [`attachment`] says which waypoint a Service, ServiceEntry or Pod uses (its primary and, for
//! services, its canary), or why a waypoint it names refuses it ([`Refusal`], with a typed
//! [`Reason`]). The data path's destinations ([`crate::destinations`]), `waypoint authz eval`,
//! our `WaypointEnforced` policy condition ([`crate::status`]) and the advisor all call it, so
//! they cannot disagree. [`Attachment::serves`] answers the data path's question ("does this
//! waypoint take this object's traffic?"), [`Attachment::refusal_for`] the operator's ("why
//! not?").
//!
//! # The rules, in the order istiod applies them
//!
//! 1. **A Gateway is a waypoint** when its `status.addresses` is not empty
//!    (`gatewayToWaypointTransform`); class, controller and listeners are not looked at. That is
//!    the Kubernetes source's rule ([`WaypointRule::StatusAddresses`]). Config files rarely
//!    carry status, so the file source also takes a Gateway of istiod's waypoint class or ours,
//!    or one with an `HBONE` listener ([`WaypointRule::StatusOrDeclared`]).
//! 2. **Which waypoint an object names** (`GetUseWaypoint`, `fetchWaypointForTarget`): its own
//!    `istio.io/use-waypoint` label, else its namespace's; `istio.io/use-waypoint-namespace`
//!    (read from the same labels) names the Gateway's namespace, else the object's own. `none`
//!    opts out; an object's `none` wins over its namespace's label. A label naming a Gateway
//!    that is not a waypoint binds nothing and does not fall back to the namespace's label.
//! 3. **The waypoint must admit the object's namespace** (`AllowsAttachmentFromNamespace`): the
//!    `allowedRoutes.namespaces` of the listener an `ambient.istio.io/waypoint-inbound-binding`
//!    annotation names, else of the listener `{protocol: HBONE, port: 15008}`, else `Same`.
//!    `from` defaults to `Same`; `All` admits every namespace; `Selector` those whose labels
//!    match (a selector Kubernetes would refuse admits none).
//! 4. **The traffic type must match** (`fetchWaypointForService`, `fetchWaypointForWorkload`):
//!    `istio.io/waypoint-for` on the Gateway, else on its GatewayClass, else `service`. Services
//!    and ServiceEntries need `service` or `all`; pods `workload` or `all` (a pod that only
//!    inherits its namespace's label from a service waypoint simply has none).
//! 5. **A waypoint's and an east-west gateway's own objects** (`gateway.istio.io/managed`) never
//!    use one; a pod that is an instance of a waypoint (`gateway.networking.k8s.io/gateway-name`)
//!    neither.
//! 6. **ServiceEntry visibility** (`meshConfig.serviceEntryVisibility`, istio/istio#60870): a
//!    ServiceEntry whose namespace resolves to `NAMESPACE` visibility never binds to another
//!    namespace's waypoint; one that resolves to `NONE` is configured nowhere.
//! 7. **Canary** (`ResolveUseWaypointCanary`, `buildWeightedWaypoints`, istio/istio#60801,
//!    #61036): services only. `istio.io/use-waypoint-canary` (and `-namespace`) from the object,
//!    else from its namespace when the object names no waypoint itself; the weight from the
//!    annotation `istio.io/use-waypoint-canary-weight` (0 to 100, missing 0). The canary is
//!    considered only when the primary binds; it must differ from the primary and pass rules 1,
//!    3 and 4. A canary waypoint serves the services that name it as canary.
//!
//! # Where this waypoint is stricter than istiod
//!
//! * **`exportTo`** (a Service's `networking.istio.io/exportTo` annotation, a ServiceEntry's
//!   `spec.exportTo`): an object not exported to the waypoint's namespace is refused
//!   ([`Reason::NotExported`]). istiod's ambient index does not look at `exportTo`; exporting is
//!   what makes a service usable by another namespace's gateways, and a waypoint is one.
//! * Rule 6 applies to the canary too (istiod checks it for the primary only).

use std::collections::BTreeMap;
use std::fmt;

use gateway_api::apis::standard::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::istio::ServiceEntry;
use crate::key::{Kind, ObjectKey};
use crate::label_selector::{LabelSelector, Selector, SelectorError};
use crate::mesh_rules::{Visibility, WaypointRule};
use crate::pod::PodInfo;
use crate::store::Store;
use crate::well_known::{
    EXPORT_TO_ANNOTATION, GATEWAY_MANAGED, GATEWAY_NAME, HBONE_PORT, HBONE_PROTOCOL,
    MANAGED_BY_EAST_WEST_CONTROLLER, MANAGED_BY_MESH_CONTROLLER, RUST_WAYPOINT_CLASS, USE_WAYPOINT,
    USE_WAYPOINT_CANARY, USE_WAYPOINT_CANARY_NAMESPACE, USE_WAYPOINT_CANARY_WEIGHT,
    USE_WAYPOINT_NAMESPACE, WAYPOINT_CLASS, WAYPOINT_FOR, WAYPOINT_INBOUND_BINDING,
    WAYPOINT_PROXY_PROTOCOL,
};

/// The waypoint a decision is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointIdentity {
    pub gateway: ObjectKey,
    pub class: String,
    pub root_namespace: String,
}

impl WaypointIdentity {
    /// Takes the class from the Gateway object when the store has it.
    pub fn from_store(store: &Store, gateway: ObjectKey, root_namespace: &str) -> WaypointIdentity {
        let class = store
            .gateways
            .get(&gateway)
            .map(|g| g.object.spec.gateway_class_name.clone())
            .unwrap_or_else(|| WAYPOINT_CLASS.to_owned());
        WaypointIdentity {
            gateway,
            class,
            root_namespace: root_namespace.to_owned(),
        }
    }
}

/// Whether `g` is a waypoint under the store's [`WaypointRule`] (rule 1).
pub fn is_waypoint(store: &Store, g: &Gateway) -> bool {
    let has_addresses = g
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .is_some_and(|a| !a.is_empty());
    match store.rules.waypoints {
        WaypointRule::StatusAddresses => has_addresses,
        WaypointRule::StatusOrDeclared => {
            has_addresses
                || is_waypoint_class(&g.spec.gateway_class_name)
                || g.spec
                    .listeners
                    .iter()
                    .any(|l| l.protocol == HBONE_PROTOCOL)
        }
    }
}

/// istiod's waypoint class or ours.
pub fn is_waypoint_class(class: &str) -> bool {
    class == WAYPOINT_CLASS || class == RUST_WAYPOINT_CLASS
}

/// Whether one of the Gateway's own pods (labelled `gateway.networking.k8s.io/gateway-name:
/// <name>` in its namespace, as istiod and our chart label them) is Ready.
pub fn has_ready_pod(store: &Store, gateway: &ObjectKey) -> bool {
    store
        .pods
        .range(ObjectKey::new(&gateway.namespace, "")..)
        .take_while(|(k, _)| k.namespace == gateway.namespace)
        .any(|(_, p)| p.object.ready && p.object.labels.get(GATEWAY_NAME) == Some(&gateway.name))
}

/// An object whose traffic may go through a waypoint.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A Kubernetes Service: traffic to its cluster IPs.
    Service(&'a Service),
    /// An Istio ServiceEntry: traffic to its addresses.
    ServiceEntry(&'a ServiceEntry),
    /// A pod: traffic to its IPs (workload-addressed).
    Pod(&'a PodInfo),
}

/// The traffic a waypoint takes (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficType {
    Service,
    Workload,
}

impl TrafficType {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficType::Service => "service",
            TrafficType::Workload => "workload",
        }
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl<'a> Target<'a> {
    /// The object's kind and key, for messages and indexes.
    pub fn kind(&self) -> Kind {
        match self {
            Target::Service(_) => Kind::Service,
            Target::ServiceEntry(_) => Kind::ServiceEntry,
            Target::Pod(_) => Kind::Pod,
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            Target::Service(s) => meta_key(&s.metadata),
            Target::ServiceEntry(s) => meta_key(&s.metadata),
            Target::Pod(p) => p.key.clone(),
        }
    }

    fn namespace(&self) -> &'a str {
        match *self {
            Target::Service(s) => s.metadata.namespace.as_deref().unwrap_or("default"),
            Target::ServiceEntry(s) => s.metadata.namespace.as_deref().unwrap_or("default"),
            Target::Pod(p) => &p.key.namespace,
        }
    }

    fn labels(&self) -> &'a BTreeMap<String, String> {
        match *self {
            Target::Service(s) => s.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
            Target::ServiceEntry(s) => s.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
            Target::Pod(p) => &p.labels,
        }
    }

    fn annotations(&self) -> &'a BTreeMap<String, String> {
        match *self {
            Target::Service(s) => s.metadata.annotations.as_ref().unwrap_or(&NO_LABELS),
            Target::ServiceEntry(s) => s.metadata.annotations.as_ref().unwrap_or(&NO_LABELS),
            Target::Pod(_) => &NO_LABELS,
        }
    }

    fn traffic(&self) -> TrafficType {
        match self {
            Target::Service(_) | Target::ServiceEntry(_) => TrafficType::Service,
            Target::Pod(_) => TrafficType::Workload,
        }
    }

    /// The namespaces it is exported to; empty is the mesh default (`*`).
    fn export_to(&self) -> Vec<String> {
        match self {
            Target::Service(_) => self
                .annotations()
                .get(EXPORT_TO_ANNOTATION)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            Target::ServiceEntry(s) => s.spec.export_to.clone(),
            Target::Pod(_) => Vec::new(),
        }
    }
}

fn meta_key(m: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        m.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        m.name.clone().unwrap_or_default(),
    )
}

/// A canary waypoint and its share of the traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    pub waypoint: ObjectKey,
    /// Percent, 0 to 100.
    pub weight: u8,
}

/// Where `allowedRoutes.namespaces.from` admits from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedFrom {
    Same,
    All,
    /// The selector as compiled (a selector Kubernetes refuses admits nobody).
    Selector(Result<Selector, SelectorError>),
}

impl fmt::Display for AllowedFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedFrom::Same => f.write_str("from: Same"),
            AllowedFrom::All => f.write_str("from: All"),
            AllowedFrom::Selector(Ok(s)) => write!(f, "from: Selector ({s})"),
            AllowedFrom::Selector(Err(e)) => write!(f, "from: Selector, unusable: {e}"),
        }
    }
}

/// Why a waypoint an object names does not take its traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No Gateway of that name (istiod: `WaypointIsNotReady`).
    GatewayNotFound,
    /// The Gateway is not a waypoint: no `status.addresses` (or, in files, no waypoint class
    /// or HBONE listener either) (istiod: `WaypointIsNotReady`).
    NotAWaypoint,
    /// The listener's `allowedRoutes` does not admit the object's namespace (istiod:
    /// `AttachmentDenied`).
    AttachmentDenied { allowed: AllowedFrom },
    /// The waypoint does not take this traffic type (istiod: `UnsupportedTrafficType`).
    UnsupportedTrafficType {
        wanted: TrafficType,
        /// The waypoint's `istio.io/waypoint-for`.
        waypoint_for: String,
    },
    /// A ServiceEntry with `NAMESPACE` visibility names another namespace's waypoint (istiod:
    /// `CrossNamespaceWaypointForbidden`).
    CrossNamespaceForbidden,
    /// A ServiceEntry with `NONE` visibility: istiod configures it nowhere.
    NotVisible,
    /// The object's `exportTo` does not include the waypoint's namespace (ours; see the module
    /// docs).
    NotExported { export_to: Vec<String> },
    /// The canary weight is not an integer from 0 to 100 (istiod: `CanaryInvalidWeight`).
    CanaryInvalidWeight { value: String },
    /// The canary is the primary (istiod: `CanarySameAsPrimary`).
    CanarySameAsPrimary,
    /// A canary is named, but the primary binds nothing, so istiod sends no weighted list.
    CanaryWithoutPrimary,
}

impl Reason {
    /// A short reason, as istiod spells its own (a metric label).
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::GatewayNotFound | Reason::NotAWaypoint => "WaypointIsNotReady",
            Reason::AttachmentDenied { .. } => "AttachmentDenied",
            Reason::UnsupportedTrafficType { .. } => "UnsupportedTrafficType",
            Reason::CrossNamespaceForbidden => "CrossNamespaceWaypointForbidden",
            Reason::NotVisible => "ServiceEntryNotVisible",
            Reason::NotExported { .. } => "NotExported",
            Reason::CanaryInvalidWeight { .. } => "CanaryInvalidWeight",
            Reason::CanarySameAsPrimary => "CanarySameAsPrimary",
            Reason::CanaryWithoutPrimary => "CanaryWithoutPrimary",
        }
    }
}

/// A waypoint an object names, and why it does not take the object's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub waypoint: ObjectKey,
    pub reason: Reason,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.waypoint;
        match &self.reason {
            Reason::GatewayNotFound => write!(f, "waypoint \"{w}\" is not ready: no such Gateway"),
            Reason::NotAWaypoint => write!(
                f,
                "waypoint \"{w}\" is not ready: the Gateway has no status.addresses"
            ),
            Reason::AttachmentDenied { allowed } => write!(
                f,
                "not permitted to attach to waypoint \"{w}\": its listener's allowedRoutes.namespaces ({allowed}) does not admit this namespace"
            ),
            Reason::UnsupportedTrafficType {
                wanted,
                waypoint_for,
            } => write!(
                f,
                "attempting to bind to traffic type \"{}\" which the waypoint \"{w}\" does not support (istio.io/waypoint-for: {waypoint_for})",
                wanted.as_str()
            ),
            Reason::CrossNamespaceForbidden => write!(
                f,
                "cannot bind to waypoint \"{w}\" in another namespace: cross-namespace waypoint binding is not permitted for a ServiceEntry with NAMESPACE visibility"
            ),
            Reason::NotVisible => write!(
                f,
                "the ServiceEntry has NONE visibility (meshConfig.serviceEntryVisibility): no waypoint serves it, \"{w}\" included"
            ),
            Reason::NotExported { export_to } => write!(
                f,
                "not exported to the namespace of waypoint \"{w}\" (exportTo: [{}])",
                export_to.join(", ")
            ),
            Reason::CanaryInvalidWeight { value } => write!(
                f,
                "canary waypoint \"{w}\" has an invalid weight {value:?}; must be an integer in [0,100]"
            ),
            Reason::CanarySameAsPrimary => {
                write!(
                    f,
                    "canary waypoint \"{w}\" must differ from the primary waypoint"
                )
            }
            Reason::CanaryWithoutPrimary => write!(
                f,
                "canary waypoint \"{w}\" is ignored: the primary waypoint binds nothing"
            ),
        }
    }
}

/// Which waypoints an object uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachment {
    /// `None`: the object names no waypoint (no label, `none`, or rule 5).
    pub primary: Option<Result<ObjectKey, Refusal>>,
    /// `None`: no canary named (services only).
    pub canary: Option<Result<Canary, Refusal>>,
}

impl Attachment {
    /// The waypoint the object's traffic goes through (the canary takes a share besides).
    pub fn waypoint(&self) -> Option<&ObjectKey> {
        self.primary.as_ref()?.as_ref().ok()
    }

    /// Whether `gateway` takes this object's traffic: as its primary, or as its canary.
    pub fn serves(&self, gateway: &ObjectKey) -> bool {
        self.waypoint() == Some(gateway)
            || matches!(&self.canary, Some(Ok(c)) if c.waypoint == *gateway)
    }

    /// Every waypoint it names that refuses it.
    pub fn refusals(&self) -> impl Iterator<Item = &Refusal> {
        let p = self.primary.as_ref().and_then(|r| r.as_ref().err());
        let c = self.canary.as_ref().and_then(|r| r.as_ref().err());
        p.into_iter().chain(c)
    }

    /// Why `gateway`, which the object names, refuses it.
    pub fn refusal_for(&self, gateway: &ObjectKey) -> Option<&Refusal> {
        self.refusals().find(|r| r.waypoint == *gateway)
    }

    /// Whether the object names `gateway` at all (served or refused).
    pub fn names(&self, gateway: &ObjectKey) -> bool {
        self.serves(gateway) || self.refusal_for(gateway).is_some()
    }
}

/// The binding a policy `targetRef` to a Service or ServiceEntry (of kind `kind`, `key`) gets
/// from its attachment, as istiod's `WaypointAccepted` words it: `(true, "bound to <w>")`, or
/// `(false, "<kind> <key> is not bound to a waypoint")`, followed by why when a waypoint it names
/// refuses it (istiod keeps that reason on the Service's own `WaypointBound` condition; a
/// policy's reader needs it here).
pub fn binding_condition(att: &Attachment, kind: &str, key: &ObjectKey) -> (bool, String) {
    if let Some(w) = att.waypoint() {
        return (true, format!("bound to {w}"));
    }
    let mut message = format!("{kind} {key} is not bound to a waypoint");
    if let Some(r) = att.refusals().next() {
        message.push_str(": ");
        message.push_str(&r.to_string());
    }
    (false, message)
}

/// THE decision: which waypoints `target`'s traffic uses, by the rules in the module docs.
pub fn attachment(store: &Store, target: Target<'_>) -> Attachment {
    let labels = target.labels();
    let managed = labels.get(GATEWAY_MANAGED).map(String::as_str);
    if target.traffic() == TrafficType::Service
        && matches!(
            managed,
            Some(MANAGED_BY_MESH_CONTROLLER | MANAGED_BY_EAST_WEST_CONTROLLER)
        )
    {
        return Attachment::default();
    }
    if let Target::Pod(p) = target
        && let Some(name) = p.labels.get(GATEWAY_NAME)
        && store
            .gateways
            .get(&ObjectKey::new(&p.key.namespace, name.clone()))
            .is_some_and(|g| is_waypoint(store, &g.object))
    {
        // An instance of a waypoint: its traffic never goes through one.
        return Attachment::default();
    }
    let ns = target.namespace();
    let ns_labels = namespace_labels(store, ns);
    let own = use_waypoint(labels, ns);
    let named = match &own {
        Some(Named::None) => None,
        Some(Named::Waypoint(w)) => Some(w.clone()),
        // The namespace's label, if the namespace is known.
        None if store.namespaces.contains_key(ns) => match use_waypoint(ns_labels, ns) {
            Some(Named::Waypoint(w)) => Some(w),
            _ => None,
        },
        None => None,
    };
    let primary = match named {
        None => None,
        Some(named) => match check(store, target, &named) {
            Ok(()) => Some(Ok(named)),
            // A pod inheriting a service waypoint from its namespace simply has none.
            Err(Reason::UnsupportedTrafficType { .. })
                if target.traffic() == TrafficType::Workload && own.is_none() =>
            {
                None
            }
            Err(reason) => Some(Err(Refusal {
                waypoint: named,
                reason,
            })),
        },
    };
    let canary = match target.traffic() {
        TrafficType::Service => {
            let own_primary = matches!(own, Some(Named::Waypoint(_)));
            canary(store, target, own_primary, ns_labels, primary.as_ref())
        }
        TrafficType::Workload => None,
    };
    Attachment { primary, canary }
}

/// What an `istio.io/use-waypoint` label says.
enum Named {
    None,
    Waypoint(ObjectKey),
}

/// `GetUseWaypoint`: `None` when `labels` has no `istio.io/use-waypoint`.
fn use_waypoint(labels: &BTreeMap<String, String>, default_ns: &str) -> Option<Named> {
    let name = labels.get(USE_WAYPOINT)?;
    if name == "none" {
        return Some(Named::None);
    }
    let ns = labels
        .get(USE_WAYPOINT_NAMESPACE)
        .map_or(default_ns, String::as_str);
    Some(Named::Waypoint(ObjectKey::new(ns, name.clone())))
}

fn namespace_labels<'s>(store: &'s Store, ns: &str) -> &'s BTreeMap<String, String> {
    store
        .namespaces
        .get(ns)
        .and_then(|n| n.object.metadata.labels.as_ref())
        .unwrap_or(&NO_LABELS)
}

fn namespace_annotations<'s>(store: &'s Store, ns: &str) -> &'s BTreeMap<String, String> {
    store
        .namespaces
        .get(ns)
        .and_then(|n| n.object.metadata.annotations.as_ref())
        .unwrap_or(&NO_LABELS)
}

/// Rules 1, 3, 4 and 6 (and `exportTo`) for `target` naming `waypoint`.
fn check(store: &Store, target: Target<'_>, waypoint: &ObjectKey) -> Result<(), Reason> {
    let Some(gw) = store.gateways.get(waypoint).map(|g| &g.object) else {
        return Err(Reason::GatewayNotFound);
    };
    if !is_waypoint(store, gw) {
        return Err(Reason::NotAWaypoint);
    }
    let ns = target.namespace();
    let allowed = allowed_from(store, gw);
    let admitted = match &allowed {
        AllowedFrom::Same => waypoint.namespace == ns,
        AllowedFrom::All => true,
        AllowedFrom::Selector(Ok(s)) => s.matches(namespace_labels(store, ns)),
        AllowedFrom::Selector(Err(_)) => false,
    };
    if !admitted {
        return Err(Reason::AttachmentDenied { allowed });
    }
    let waypoint_for = waypoint_for(store, gw);
    let wanted = target.traffic();
    let supported = match wanted {
        TrafficType::Service => waypoint_for == "service" || waypoint_for == "all",
        TrafficType::Workload => waypoint_for == "workload" || waypoint_for == "all",
    };
    if !supported {
        return Err(Reason::UnsupportedTrafficType {
            wanted,
            waypoint_for,
        });
    }
    if let Target::ServiceEntry(_) = target {
        match store
            .rules
            .service_entry_visibility
            .of_namespace(namespace_labels(store, ns))
        {
            Visibility::None => return Err(Reason::NotVisible),
            Visibility::Namespace if waypoint.namespace != ns => {
                return Err(Reason::CrossNamespaceForbidden);
            }
            _ => {}
        }
    }
    let export_to = target.export_to();
    if !exported_to(&export_to, ns, &waypoint.namespace) {
        return Err(Reason::NotExported { export_to });
    }
    Ok(())
}

/// Istio's `exportTo` visibility: `*` everyone, `.` the object's own namespace, a name that
/// namespace, `~` nobody; empty is the mesh default, `*`.
fn exported_to(export_to: &[String], own: &str, to: &str) -> bool {
    if export_to.is_empty() {
        return true;
    }
    if export_to.iter().any(|e| e == "~") {
        return false;
    }
    export_to
        .iter()
        .any(|e| e == "*" || (e == "." && own == to) || e == to)
}

/// `istio.io/waypoint-for`: the Gateway's label, else its class's, else `service`.
fn waypoint_for(store: &Store, gw: &Gateway) -> String {
    let of = |m: &ObjectMeta| m.labels.as_ref()?.get(WAYPOINT_FOR).cloned();
    of(&gw.metadata)
        .or_else(|| {
            store
                .gateway_classes
                .get(&gw.spec.gateway_class_name)
                .and_then(|c| of(&c.object.metadata))
        })
        .unwrap_or_else(|| "service".to_owned())
}

/// The traffic types a Gateway's `istio.io/waypoint-for` admits: (services, workloads).
pub fn traffic_types(store: &Store, gateway: &ObjectKey) -> (bool, bool) {
    let Some(gw) = store.gateways.get(gateway) else {
        return (true, false);
    };
    match waypoint_for(store, &gw.object).as_str() {
        "service" => (true, false),
        "workload" => (false, true),
        "all" => (true, true),
        _ => (false, false),
    }
}

/// `makeAllowedRoutes`: the listener the inbound binding names, else the HBONE listener on
/// 15008, else `Same`.
pub fn allowed_from(store: &Store, gw: &Gateway) -> AllowedFrom {
    let class = store.gateway_classes.get(&gw.spec.gateway_class_name);
    let binding = gw
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WAYPOINT_INBOUND_BINDING))
        .or_else(|| {
            class?
                .object
                .metadata
                .annotations
                .as_ref()?
                .get(WAYPOINT_INBOUND_BINDING)
        });
    let listener = binding.and_then(|b| bound_listener(gw, b)).or_else(|| {
        gw.spec
            .listeners
            .iter()
            .find(|l| l.protocol == HBONE_PROTOCOL && l.port == HBONE_PORT)
    });
    let Some(ns) = listener.and_then(|l| l.allowed_routes.as_ref()?.namespaces.as_ref()) else {
        return AllowedFrom::Same;
    };
    match ns.from {
        None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => AllowedFrom::Same,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => AllowedFrom::All,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
            let sel = ns.selector.as_ref().map(LabelSelector::from);
            AllowedFrom::Selector(Selector::compile(sel.as_ref()))
        }
    }
}

/// `findBoundListener` for an `ambient.istio.io/waypoint-inbound-binding` of `<protocol>` or
/// `<protocol>/<port>` (`NONE` or `PROXY`): the listener on that port, else for `PROXY` the
/// listener of protocol `istio.io/PROXY`.
fn bound_listener<'g>(gw: &'g Gateway, binding: &str) -> Option<&'g GatewayListeners> {
    let parts: Vec<&str> = binding.split('/').collect();
    let (protocol, port) = match parts.as_slice() {
        [p] => (*p, 0),
        // istiod logs an unparsable port and goes on with port 0.
        [p, port] => (*p, port.parse::<u32>().unwrap_or(0)),
        _ => return None,
    };
    if protocol != "NONE" && protocol != "PROXY" {
        return None;
    }
    gw.spec.listeners.iter().find(|l| {
        if port != 0 {
            u32::try_from(l.port).ok() == Some(port)
        } else {
            protocol == "PROXY" && l.protocol == WAYPOINT_PROXY_PROTOCOL
        }
    })
}

/// Rule 7: the canary, when the object (or, if it names no waypoint itself, its namespace)
/// names one.
fn canary(
    store: &Store,
    target: Target<'_>,
    own_primary: bool,
    ns_labels: &BTreeMap<String, String>,
    primary: Option<&Result<ObjectKey, Refusal>>,
) -> Option<Result<Canary, Refusal>> {
    let ns = target.namespace();
    let labels = target.labels();
    let from_ns = !own_primary && store.namespaces.contains_key(ns);
    let declaring = if labels.contains_key(USE_WAYPOINT_CANARY) {
        labels
    } else if from_ns && ns_labels.contains_key(USE_WAYPOINT_CANARY) {
        ns_labels
    } else {
        return None;
    };
    let name = declaring.get(USE_WAYPOINT_CANARY)?;
    if name.is_empty() || name == "none" {
        return None;
    }
    let cns = declaring
        .get(USE_WAYPOINT_CANARY_NAMESPACE)
        .map_or(ns, String::as_str);
    let waypoint = ObjectKey::new(cns, name.clone());
    let refuse = |reason| {
        Some(Err(Refusal {
            waypoint: waypoint.clone(),
            reason,
        }))
    };
    let Some(Ok(primary)) = primary else {
        return refuse(Reason::CanaryWithoutPrimary);
    };
    if *primary == waypoint {
        return refuse(Reason::CanarySameAsPrimary);
    }
    let weight = target
        .annotations()
        .get(USE_WAYPOINT_CANARY_WEIGHT)
        .or_else(|| {
            from_ns
                .then(|| namespace_annotations(store, ns).get(USE_WAYPOINT_CANARY_WEIGHT))
                .flatten()
        });
    let weight = match weight {
        None => 0,
        Some(v) => match v.parse::<i64>().ok().and_then(|n| u8::try_from(n).ok()) {
            Some(n) if n <= 100 => n,
            _ => return refuse(Reason::CanaryInvalidWeight { value: v.clone() }),
        },
    };
    match check(store, target, &waypoint) {
        Ok(()) => Some(Ok(Canary { waypoint, weight })),
        Err(reason) => refuse(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh_rules::{ServiceEntryVisibility, ServiceEntryVisibilityConfig};

    /// Namespaces and waypoints the cases share. Every Gateway but `no-status` has the
    /// `status.addresses` that make istiod treat it as a waypoint.
    const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ambient-demo, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: tenant-b, labels: {team: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: tenant-c, labels: {team: c, shared: "true"}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: agw, labels: {istio.io/waypoint-for: all}}
spec: {controllerName: example.com/agw}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: ambient-demo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
status: {addresses: [{type: Hostname, value: waypoint.ambient-demo.svc.cluster.local}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: open, namespace: ambient-demo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}]}
status: {addresses: [{type: IPAddress, value: 10.96.0.2}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: picky, namespace: ambient-demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {shared: "true"}}}}}]
status: {addresses: [{type: IPAddress, value: 10.96.0.3}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bad-selector, namespace: ambient-demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: Selector, selector: {matchExpressions: [{key: shared, operator: Equals, values: ["true"]}]}}}}]
status: {addresses: [{type: IPAddress, value: 10.96.0.4}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: all-listeners-open-but-hbone, namespace: ambient-demo}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: other, port: 15009, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}
  - {name: mesh, port: 15008, protocol: HBONE}
status: {addresses: [{type: IPAddress, value: 10.96.0.5}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: no-status, namespace: ambient-demo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: workload-only, namespace: ambient-demo, labels: {istio.io/waypoint-for: workload}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
status: {addresses: [{type: IPAddress, value: 10.96.0.6}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: all-traffic, namespace: ambient-demo, labels: {istio.io/waypoint-for: all}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
status: {addresses: [{type: IPAddress, value: 10.96.0.7}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: classy, namespace: ambient-demo}
spec: {gatewayClassName: agw, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
status: {addresses: [{type: IPAddress, value: 10.96.0.8}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: classy-service, namespace: ambient-demo, labels: {istio.io/waypoint-for: service}}
spec: {gatewayClassName: agw, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
status: {addresses: [{type: IPAddress, value: 10.96.0.9}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: sandwich, namespace: ambient-demo, annotations: {ambient.istio.io/waypoint-inbound-binding: PROXY/15088}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
  - {name: proxy, port: 15088, protocol: istio.io/PROXY, allowedRoutes: {namespaces: {from: All}}}
status: {addresses: [{type: IPAddress, value: 10.96.0.10}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: canary, namespace: ambient-demo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}]}
status: {addresses: [{type: IPAddress, value: 10.96.0.11}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: own, namespace: tenant-b}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
status: {addresses: [{type: IPAddress, value: 10.96.0.12}]}
"#;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Want {
        None,
        Bound(&'static str),
        Refused(&'static str, &'static str),
    }

    struct Case {
        name: &'static str,
        /// The istiod rule it mirrors (`pilot/pkg/serviceregistry/ambient/...`), or why ours
        /// differs.
        mirrors: &'static str,
        rule: WaypointRule,
        visibility: &'static str,
        /// Objects added to [`BASE`]; the target is the last document.
        yaml: &'static str,
        primary: Want,
        canary: Want,
    }

    const KUBE: WaypointRule = WaypointRule::StatusAddresses;

    fn case(name: &'static str, mirrors: &'static str, yaml: &'static str, primary: Want) -> Case {
        Case {
            name,
            mirrors,
            rule: KUBE,
            visibility: "",
            yaml,
            primary,
            canary: Want::None,
        }
    }

    fn cases() -> Vec<Case> {
        use Want::{Bound, None as Nothing, Refused};
        let svc = |ns: &str, labels: &str| -> String {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{clusterIP: 10.96.5.5, ports: [{{port: 80}}]}}\n"
            )
        };
        // Leaked for 'static: a test's few strings.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let s = |ns: &str, labels: &str| leak(svc(ns, labels));
        let ns = |name: &str, labels: &str| {
            leak(format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n---\n"
            ))
        };
        let with = |a: &str, b: &str| leak(format!("{a}{b}"));
        let se = |ns: &str, labels: &str, extra: &str| {
            leak(format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{hosts: [s.example], addresses: [240.0.0.1], ports: [{{number: 80, name: http}}]{extra}}}\n"
            ))
        };
        let pod = |ns: &str, labels: &str| {
            leak(format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: s, namespace: {ns}, labels: {{{labels}}}}}\nstatus: {{podIP: 10.1.0.1}}\n"
            ))
        };
        let canary = |ns: &str, labels: &str, weight: &str| {
            leak(format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: {ns}, labels: {{{labels}}}, annotations: {{{weight}}}}}\nspec: {{clusterIP: 10.96.5.5, ports: [{{port: 80}}]}}\n"
            ))
        };
        let mut v = vec![
            case(
                "the object's own label, same namespace",
                "waypoints.go GetUseWaypoint; AllowsAttachmentFromNamespace (Same)",
                s("ambient-demo", "istio.io/use-waypoint: waypoint"),
                Bound("ambient-demo/waypoint"),
            ),
            case(
                "the namespace's label",
                "waypoints.go fetchWaypointForTarget: namespace-defined waypoint",
                with(
                    ns(
                        "tenant-c",
                        "shared: 'true', istio.io/use-waypoint: picky, istio.io/use-waypoint-namespace: ambient-demo",
                    ),
                    s("tenant-c", ""),
                ),
                Bound("ambient-demo/picky"),
            ),
            case(
                "no label anywhere",
                "waypoints.go fetchWaypointForTarget: neither o nor its namespace has use-waypoint",
                s("ambient-demo", ""),
                Nothing,
            ),
            case(
                "the object's none beats its namespace's waypoint",
                "waypoints.go GetUseWaypoint: isNone is a local override",
                with(
                    ns("ambient-demo", "istio.io/use-waypoint: waypoint"),
                    s("ambient-demo", "istio.io/use-waypoint: none"),
                ),
                Nothing,
            ),
            case(
                "the namespace's none",
                "waypoints.go GetUseWaypoint on the namespace",
                with(
                    ns("ambient-demo", "istio.io/use-waypoint: none"),
                    s("ambient-demo", ""),
                ),
                Nothing,
            ),
            case(
                "a tenant's Service naming another namespace's waypoint (allowedRoutes default Same)",
                "waypoints.go makeWaypointSelector: From defaults to Same; ReportWaypointAttachmentDenied",
                s(
                    "tenant-b",
                    "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ambient-demo",
                ),
                Refused("ambient-demo/waypoint", "AttachmentDenied"),
            ),
            case(
                "a tenant namespace's label naming another namespace's waypoint",
                "waypoints.go AllowsAttachmentFromNamespace(namespace)",
                with(
                    ns(
                        "tenant-b",
                        "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ambient-demo",
                    ),
                    s("tenant-b", ""),
                ),
                Refused("ambient-demo/waypoint", "AttachmentDenied"),
            ),
            case(
                "allowedRoutes from: All",
                "waypoints.go AllowsAttachmentFromNamespace: NamespacesFromAll",
                s(
                    "tenant-b",
                    "istio.io/use-waypoint: open, istio.io/use-waypoint-namespace: ambient-demo",
                ),
                Bound("ambient-demo/open"),
            ),
            case(
                "allowedRoutes Selector matching the namespace's labels",
                "waypoints.go AllowsAttachmentFromNamespaceOrLookup: NamespacesFromSelector",
                s(
                    "tenant-c",
                    "istio.io/use-waypoint: picky, istio.io/use-waypoint-namespace: ambient-demo",
                ),
                Bound("ambient-demo/picky"),
            ),
            case(
                "allowedRoutes Selector not matching",
                "waypoints.go AllowsAttachmentFromNamespaceOrLookup: NamespacesFromSelector",
                s(
                    "tenant-b",
                    "istio.io/use-waypoint: picky, istio.io/use-waypoint-namespace: ambient-demo, shared: 'true'",
                ),
                Refused("ambient-demo/picky", "AttachmentDenied"),
            ),
            case(
                "a Selector Kubernetes refuses admits nobody",
                "ours: istiod ignores the conversion error (a nil selector); fail closed",
                s(
                    "tenant-c",
                    "istio.io/use-waypoint: bad-selector, istio.io/use-waypoint-namespace: ambient-demo",
                ),
                Refused("ambient-demo/bad-selector", "AttachmentDenied"),
            ),
            case(
                "only the HBONE listener on 15008 counts",
                "waypoints.go makeAllowedRoutes: the default HBONE listener",
                s(
                    "tenant-b",
                    "istio.io/use-waypoint: all-listeners-open-but-hbone, istio.io/use-waypoint-namespace: ambient-demo",
                ),
                Refused(
                    "ambient-demo/all-listeners-open-but-hbone",
                    "AttachmentDenied",
                ),
            ),
            case(
                "the inbound binding's listener counts instead",
                "waypoints.go makeAllowedRoutes: findBoundListener (PROXY/15088)",
                s(
                    "tenant-b",
                    "istio.io/use-waypoint: sandwich, istio.io/use-waypoint-namespace: ambient-demo",
                ),
                Bound("ambient-demo/sandwich"),
            ),
            case(
                "no such Gateway",
                "waypoints.go fetchWaypointForTarget: ReportWaypointIsNotReady",
                s("ambient-demo", "istio.io/use-waypoint: nope"),
                Refused("ambient-demo/nope", "WaypointIsNotReady"),
            ),
            case(
                "a Gateway without status.addresses is not a waypoint",
                "waypoints.go gatewayToWaypointTransform: len(Status.Addresses) == 0",
                s("ambient-demo", "istio.io/use-waypoint: no-status"),
                Refused("ambient-demo/no-status", "WaypointIsNotReady"),
            ),
            Case {
                rule: WaypointRule::StatusOrDeclared,
                ..case(
                    "files: a waypoint-class Gateway without status is one",
                    "ours: config files rarely carry status",
                    s("ambient-demo", "istio.io/use-waypoint: no-status"),
                    Bound("ambient-demo/no-status"),
                )
            },
            case(
                "an object label naming a missing Gateway does not fall back to the namespace's",
                "waypoints.go fetchWaypointForTarget: returns the object's error",
                with(
                    ns("ambient-demo", "istio.io/use-waypoint: waypoint"),
                    s("ambient-demo", "istio.io/use-waypoint: gone"),
                ),
                Refused("ambient-demo/gone", "WaypointIsNotReady"),
            ),
            case(
                "a workload-only waypoint refuses a Service",
                "waypoints.go fetchWaypointForService: ReportWaypointUnsupportedTrafficType",
                s("ambient-demo", "istio.io/use-waypoint: workload-only"),
                Refused("ambient-demo/workload-only", "UnsupportedTrafficType"),
            ),
            case(
                "waypoint-for from the GatewayClass",
                "waypoints.go gatewayToWaypointTransform: the class's label",
                pod("ambient-demo", "istio.io/use-waypoint: classy"),
                Bound("ambient-demo/classy"),
            ),
            case(
                "the Gateway's waypoint-for overrides its class's",
                "waypoints.go gatewayToWaypointTransform: the Gateway's label wins",
                pod("ambient-demo", "istio.io/use-waypoint: classy-service"),
                Refused("ambient-demo/classy-service", "UnsupportedTrafficType"),
            ),
            case(
                "a pod inheriting a service waypoint has none",
                "waypoints.go fetchWaypointForWorkload: inherited from the namespace is not an error",
                with(
                    ns("ambient-demo", "istio.io/use-waypoint: waypoint"),
                    pod("ambient-demo", ""),
                ),
                Nothing,
            ),
            case(
                "a pod naming a service waypoint itself is refused",
                "waypoints.go fetchWaypointForWorkload: ReportWaypointUnsupportedTrafficType",
                pod("ambient-demo", "istio.io/use-waypoint: waypoint"),
                Refused("ambient-demo/waypoint", "UnsupportedTrafficType"),
            ),
            case(
                "a pod on an all-traffic waypoint",
                "waypoints.go fetchWaypointForWorkload: AllTraffic",
                with(
                    ns("ambient-demo", "istio.io/use-waypoint: all-traffic"),
                    pod("ambient-demo", ""),
                ),
                Bound("ambient-demo/all-traffic"),
            ),
            case(
                "a pod of a tenant naming another namespace's waypoint",
                "waypoints.go fetchWaypointForTarget: allowedRoutes for workloads too",
                pod(
                    "tenant-b",
                    "istio.io/use-waypoint: all-traffic, istio.io/use-waypoint-namespace: ambient-demo",
                ),
                Refused("ambient-demo/all-traffic", "AttachmentDenied"),
            ),
            case(
                "a waypoint's own pod never uses one",
                "workloads.go computeWaypoint: fetchWaypointForInstance",
                with(
                    ns("ambient-demo", "istio.io/use-waypoint: all-traffic"),
                    pod(
                        "ambient-demo",
                        "gateway.networking.k8s.io/gateway-name: all-traffic",
                    ),
                ),
                Nothing,
            ),
            case(
                "a waypoint's own Service never uses one",
                "waypoints.go fetchWaypointForService: ManagedGatewayMeshControllerLabel",
                with(
                    ns("ambient-demo", "istio.io/use-waypoint: waypoint"),
                    s(
                        "ambient-demo",
                        "gateway.istio.io/managed: istio.io-mesh-controller",
                    ),
                ),
                Nothing,
            ),
            case(
                "an east-west gateway's Service never uses one",
                "waypoints.go fetchWaypointForService: ManagedGatewayEastWestControllerLabel",
                with(
                    ns("ambient-demo", "istio.io/use-waypoint: waypoint"),
                    s(
                        "ambient-demo",
                        "gateway.istio.io/managed: istio.io-eastwest-controller",
                    ),
                ),
                Nothing,
            ),
            case(
                "a tenant's ServiceEntry naming another namespace's waypoint",
                "services.go serviceEntryServiceBuilder -> fetchWaypointForService (allowedRoutes)",
                se(
                    "tenant-b",
                    "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ambient-demo",
                    ", exportTo: ['*']",
                ),
                Refused("ambient-demo/waypoint", "AttachmentDenied"),
            ),
            Case {
                visibility: "{defaultVisibility: NAMESPACE}",
                ..case(
                    "a NAMESPACE-visibility ServiceEntry never binds across namespaces",
                    "waypoints.go fetchWaypointForService: ReportWaypointCrossNamespaceForbidden",
                    se(
                        "tenant-b",
                        "istio.io/use-waypoint: open, istio.io/use-waypoint-namespace: ambient-demo",
                        "",
                    ),
                    Refused("ambient-demo/open", "CrossNamespaceWaypointForbidden"),
                )
            },
            Case {
                visibility: "{defaultVisibility: NAMESPACE}",
                ..case(
                    "a NAMESPACE-visibility ServiceEntry binds in its own namespace",
                    "waypoints.go fetchWaypointForService: w.Namespace == o.Namespace",
                    se("ambient-demo", "istio.io/use-waypoint: waypoint", ""),
                    Bound("ambient-demo/waypoint"),
                )
            },
            Case {
                visibility: "{policies: [{visibility: NONE, matchingRules: [{namespaceSelector: {matchLabels: {team: b}}}]}]}",
                ..case(
                    "a NONE-visibility ServiceEntry is served nowhere",
                    "services.go serviceEntriesInfo: ServiceVisibilityNone is not configured",
                    se("tenant-b", "istio.io/use-waypoint: own", ""),
                    Refused("tenant-b/own", "ServiceEntryNotVisible"),
                )
            },
            case(
                "a ServiceEntry not exported to the waypoint's namespace",
                "ours: exportTo ['.'] keeps it to its namespace (istiod's ambient index ignores exportTo)",
                se(
                    "tenant-b",
                    "istio.io/use-waypoint: open, istio.io/use-waypoint-namespace: ambient-demo",
                    ", exportTo: ['.']",
                ),
                Refused("ambient-demo/open", "NotExported"),
            ),
            case(
                "a ServiceEntry exported to the waypoint's namespace by name",
                "ours: exportTo names the namespace",
                se(
                    "tenant-b",
                    "istio.io/use-waypoint: open, istio.io/use-waypoint-namespace: ambient-demo",
                    ", exportTo: [ambient-demo]",
                ),
                Bound("ambient-demo/open"),
            ),
            case(
                "a Service exported nowhere",
                "ours: networking.istio.io/exportTo '~'",
                leak(
                    svc("ambient-demo", "istio.io/use-waypoint: waypoint").replace(
                        "metadata: {",
                        "metadata: {annotations: {networking.istio.io/exportTo: '~'}, ",
                    ),
                ),
                Refused("ambient-demo/waypoint", "NotExported"),
            ),
            case(
                "a Service exported to its own namespace, its waypoint there",
                "ours: networking.istio.io/exportTo '.'",
                leak(
                    svc("ambient-demo", "istio.io/use-waypoint: waypoint").replace(
                        "metadata: {",
                        "metadata: {annotations: {networking.istio.io/exportTo: '., other'}, ",
                    ),
                ),
                Bound("ambient-demo/waypoint"),
            ),
        ];
        let canary_cases = [
            (
                "a canary is served by the canary",
                "waypoints.go buildWeightedWaypoints (istio/istio#60801, #61036)",
                canary(
                    "ambient-demo",
                    "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-canary: canary",
                    "istio.io/use-waypoint-canary-weight: '10'",
                ),
                Bound("ambient-demo/waypoint"),
                Bound("ambient-demo/canary"),
            ),
            (
                "the namespace's canary applies when the object names no waypoint itself",
                "waypoints.go ResolveUseWaypointCanary: nsMeta only without an own primary",
                with(
                    ns(
                        "ambient-demo",
                        "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-canary: canary",
                    ),
                    canary("ambient-demo", "", ""),
                ),
                Bound("ambient-demo/waypoint"),
                Bound("ambient-demo/canary"),
            ),
            (
                "the namespace's canary is ignored when the object names its own waypoint",
                "waypoints.go ResolveUseWaypointCanary: objPrimary set",
                with(
                    ns("ambient-demo", "istio.io/use-waypoint-canary: canary"),
                    canary("ambient-demo", "istio.io/use-waypoint: waypoint", ""),
                ),
                Bound("ambient-demo/waypoint"),
                Nothing,
            ),
            (
                "a canary equal to the primary",
                "waypoints.go ReportWaypointCanarySameAsPrimary",
                canary(
                    "ambient-demo",
                    "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-canary: waypoint",
                    "",
                ),
                Bound("ambient-demo/waypoint"),
                Refused("ambient-demo/waypoint", "CanarySameAsPrimary"),
            ),
            (
                "a canary weight that is no percentage",
                "waypoints.go getCanaryWeight: n < 0 || n > 100",
                canary(
                    "ambient-demo",
                    "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-canary: canary",
                    "istio.io/use-waypoint-canary-weight: '101'",
                ),
                Bound("ambient-demo/waypoint"),
                Refused("ambient-demo/canary", "CanaryInvalidWeight"),
            ),
            (
                "a canary without a primary",
                "waypoints.go buildWeightedWaypoints: primary == nil",
                canary("ambient-demo", "istio.io/use-waypoint-canary: canary", ""),
                Nothing,
                Refused("ambient-demo/canary", "CanaryWithoutPrimary"),
            ),
            (
                "a canary whose allowedRoutes refuse the namespace",
                "waypoints.go resolveCanaryWaypoint: AllowsAttachmentFromNamespaceOrLookup",
                canary(
                    "tenant-b",
                    "istio.io/use-waypoint: open, istio.io/use-waypoint-namespace: ambient-demo, istio.io/use-waypoint-canary: waypoint, istio.io/use-waypoint-canary-namespace: ambient-demo",
                    "",
                ),
                Bound("ambient-demo/open"),
                Refused("ambient-demo/waypoint", "AttachmentDenied"),
            ),
            (
                "a canary of none",
                "waypoints.go getUseWaypointCanary: none names none",
                canary(
                    "ambient-demo",
                    "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-canary: none",
                    "",
                ),
                Bound("ambient-demo/waypoint"),
                Nothing,
            ),
        ];
        for (name, mirrors, yaml, primary, canary) in canary_cases {
            v.push(Case {
                canary,
                ..case(name, mirrors, yaml, primary)
            });
        }
        v
    }

    fn want_of(r: Option<Result<ObjectKey, Refusal>>) -> String {
        match r {
            None => "none".into(),
            Some(Ok(w)) => format!("bound {w}"),
            Some(Err(r)) => format!("refused {} {}", r.waypoint, r.reason.as_str()),
        }
    }

    fn want(w: Want) -> String {
        match w {
            Want::None => "none".into(),
            Want::Bound(k) => format!("bound {k}"),
            Want::Refused(k, r) => format!("refused {k} {r}"),
        }
    }

    #[test]
    fn attachment_follows_istiod() {
        let mut failures = Vec::new();
        for c in cases() {
            let mut store = Store::default();
            store.rules.waypoints = c.rule;
            if !c.visibility.is_empty() {
                let cfg: ServiceEntryVisibilityConfig = serde_yaml::from_str(c.visibility).unwrap();
                store.rules.service_entry_visibility =
                    ServiceEntryVisibility::compile(&cfg).unwrap().0;
            }
            let errs = store.load_str(BASE, None);
            assert!(errs.is_empty(), "{errs:?}");
            let errs = store.load_str(c.yaml, None);
            assert!(errs.is_empty(), "{}: {errs:?}", c.name);
            let key = |ns: &str| ObjectKey::new(ns, "s");
            let target_ns = c
                .yaml
                .rsplit("---")
                .next()
                .and_then(|d| d.split("namespace: ").nth(1))
                .and_then(|t| t.split([',', '}']).next())
                .unwrap()
                .to_owned();
            let att = if let Some(s) = store.services.get(&key(&target_ns)) {
                attachment(&store, Target::Service(&s.object))
            } else if let Some(s) = store.service_entries.get(&key(&target_ns)) {
                attachment(&store, Target::ServiceEntry(&s.object))
            } else {
                let p = &store.pods[&key(&target_ns)];
                attachment(&store, Target::Pod(&p.object))
            };
            let got = (
                want_of(att.primary.clone()),
                want_of(att.canary.clone().map(|c| c.map(|c| c.waypoint))),
            );
            if got != (want(c.primary), want(c.canary)) {
                failures.push(format!(
                    "{} [{}]: got {got:?}, want {:?}",
                    c.name,
                    c.mirrors,
                    (want(c.primary), want(c.canary))
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn what_the_data_path_and_status_read_from_an_attachment() {
        let mut store = Store::default();
        assert!(store.load_str(BASE, None).is_empty());
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: tenant-b, labels: {istio.io/use-waypoint: open, istio.io/use-waypoint-namespace: ambient-demo, istio.io/use-waypoint-canary: canary, istio.io/use-waypoint-canary-namespace: ambient-demo}, annotations: {istio.io/use-waypoint-canary-weight: '25'}}\nspec: {ports: [{port: 80}]}\n";
        assert!(store.load_str(yaml, None).is_empty());
        let svc = &store.services[&ObjectKey::new("tenant-b", "s")].object;
        let att = attachment(&store, Target::Service(svc));
        let (open, canary) = (
            ObjectKey::new("ambient-demo", "open"),
            ObjectKey::new("ambient-demo", "canary"),
        );
        assert!(att.serves(&open) && att.serves(&canary), "{att:?}");
        assert_eq!(
            att.canary,
            Some(Ok(Canary {
                waypoint: canary.clone(),
                weight: 25
            }))
        );
        assert!(!att.serves(&ObjectKey::new("ambient-demo", "waypoint")));
        assert_eq!(
            binding_condition(&att, "Service", &ObjectKey::new("tenant-b", "s")),
            (true, "bound to ambient-demo/open".to_owned())
        );

        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: tenant-b, labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ambient-demo}}\nspec: {ports: [{port: 80}]}\n";
        assert!(store.load_str(yaml, None).is_empty());
        let svc = &store.services[&ObjectKey::new("tenant-b", "s")].object;
        let att = attachment(&store, Target::Service(svc));
        let ours = ObjectKey::new("ambient-demo", "waypoint");
        assert!(!att.serves(&ours));
        assert!(att.names(&ours));
        let r = att.refusal_for(&ours).expect("refused");
        assert_eq!(
            r.to_string(),
            "not permitted to attach to waypoint \"ambient-demo/waypoint\": its listener's allowedRoutes.namespaces (from: Same) does not admit this namespace"
        );
        let (bound, message) = binding_condition(&att, "Service", &ObjectKey::new("tenant-b", "s"));
        assert!(!bound);
        assert!(
            message.starts_with("Service tenant-b/s is not bound to a waypoint: not permitted"),
            "{message}"
        );
    }

    #[test]
    fn waypoint_membership_by_rule() {
        let mut s = Store::default();
        let errs = s.load_str(
            "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ours, namespace: shop}
spec: {gatewayClassName: rust-waypoint, listeners: [{name: mesh, port: 15008, protocol: TCP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: istios, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: TCP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: any-class, namespace: shop}
spec: {gatewayClassName: somebody-elses, listeners: [{name: http, port: 80, protocol: HTTP}]}
status: {addresses: [{value: 10.0.0.1}]}
",
            None,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let is = |s: &Store, name: &str| {
            is_waypoint(s, &s.gateways[&ObjectKey::new("shop", name)].object)
        };
        assert!(is(&s, "ours") && is(&s, "istios") && is(&s, "any-class"));
        assert!(!is(&s, "ingress"));
        s.rules.waypoints = WaypointRule::StatusAddresses;
        assert!(!is(&s, "ours") && !is(&s, "istios") && !is(&s, "ingress"));
        assert!(is(&s, "any-class"), "istiod: any class with addresses");
        let id = WaypointIdentity::from_store(&s, ObjectKey::new("shop", "ours"), "istio-system");
        assert_eq!(id.class, RUST_WAYPOINT_CLASS);
    }
}
