//! Waypoint membership: which Gateway is a waypoint, and which waypoint an object's traffic uses
//! (`istio.io/use-waypoint` on the object, else on its namespace), as istiod decides it
//! (`pilot/pkg/serviceregistry/ambient/waypoints.go`).

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::key::ObjectKey;
use crate::store::Store;
use crate::well_known::{
    GATEWAY_NAME, RUST_WAYPOINT_CLASS, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_CLASS,
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

/// A Gateway is a waypoint when it uses istiod's waypoint class or ours, or listens for HBONE.
pub fn is_waypoint(g: &Gateway) -> bool {
    is_waypoint_class(&g.spec.gateway_class_name)
        || g.spec.listeners.iter().any(|l| l.protocol == "HBONE")
}

/// istiod's waypoint class or ours.
pub fn is_waypoint_class(class: &str) -> bool {
    class == WAYPOINT_CLASS || class == RUST_WAYPOINT_CLASS
}

/// The waypoint an object uses: its own `istio.io/use-waypoint` label, else its namespace's.
pub fn waypoint_of(store: &Store, meta: &ObjectMeta) -> Option<ObjectKey> {
    let ns = meta.namespace.as_deref().unwrap_or("default");
    waypoint_of_labels(store, ns, meta.labels.as_ref())
}

/// [`waypoint_of`] for an object in namespace `ns` with `labels`.
pub fn waypoint_of_labels(
    store: &Store,
    ns: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<ObjectKey> {
    let from = |labels: &BTreeMap<String, String>| {
        let name = labels.get(USE_WAYPOINT)?;
        let wns = labels
            .get(USE_WAYPOINT_NAMESPACE)
            .cloned()
            .unwrap_or_else(|| ns.to_owned());
        Some((name.clone(), wns))
    };
    let empty = BTreeMap::new();
    let (name, wns) = from(labels.unwrap_or(&empty)).or_else(|| {
        let nsobj = store.namespaces.get(ns)?;
        from(nsobj.object.metadata.labels.as_ref().unwrap_or(&empty))
    })?;
    if name == "none" || name == "#none" {
        return None;
    }
    let key = ObjectKey::new(wns, name);
    store
        .gateways
        .get(&key)
        .filter(|g| is_waypoint(&g.object))
        .map(|_| key)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_waypoint_classes_make_a_waypoint() {
        let mut s = Store::default();
        let errs = s.load_str(
            "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: ours}}
---
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
",
            None,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let is = |name: &str| is_waypoint(&s.gateways[&ObjectKey::new("shop", name)].object);
        assert!(is("ours"));
        assert!(is("istios"));
        assert!(!is("ingress"));
        assert_eq!(
            waypoint_of_labels(&s, "shop", None),
            Some(ObjectKey::new("shop", "ours")),
            "a namespace may use a waypoint of our class"
        );
        let id = WaypointIdentity::from_store(&s, ObjectKey::new("shop", "ours"), "istio-system");
        assert_eq!(id.class, RUST_WAYPOINT_CLASS);
    }
}
