//! How an object is named: its kind and its `namespace/name`.

use std::fmt;

use crate::well_known::{
    DISCOVERY_GROUP, GATEWAY_GROUP, ISTIO_NETWORKING_GROUP, ISTIO_SECURITY_GROUP,
};

/// `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The kinds the waypoint reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Gateway,
    GatewayClass,
    Service,
    Namespace,
    ServiceEntry,
    WorkloadEntry,
    AuthorizationPolicy,
    RequestAuthentication,
    EndpointSlice,
    Pod,
    /// Read from files and by `waypoint analyze`; the waypoint's Kubernetes source does not watch
    /// it (not in [`Kind::ALL`]), as nothing the waypoint enforces depends on it.
    PeerAuthentication,
}

impl Kind {
    /// Every kind the waypoint's own config is made of: what its Kubernetes source watches.
    pub const ALL: [Kind; 10] = [
        Kind::Gateway,
        Kind::GatewayClass,
        Kind::Service,
        Kind::Namespace,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::EndpointSlice,
        Kind::Pod,
    ];

    /// Every kind a config may hold: [`Kind::ALL`] and the kinds only the advisor reads.
    pub const READ: [Kind; 11] = [
        Kind::Gateway,
        Kind::GatewayClass,
        Kind::Service,
        Kind::Namespace,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::PeerAuthentication,
    ];

    /// `(group, kind)` as in `apiVersion`/`kind`.
    pub fn group_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Gateway => (GATEWAY_GROUP, "Gateway"),
            Kind::GatewayClass => (GATEWAY_GROUP, "GatewayClass"),
            Kind::Service => ("", "Service"),
            Kind::Namespace => ("", "Namespace"),
            Kind::ServiceEntry => (ISTIO_NETWORKING_GROUP, "ServiceEntry"),
            Kind::WorkloadEntry => (ISTIO_NETWORKING_GROUP, "WorkloadEntry"),
            Kind::AuthorizationPolicy => (ISTIO_SECURITY_GROUP, "AuthorizationPolicy"),
            Kind::RequestAuthentication => (ISTIO_SECURITY_GROUP, "RequestAuthentication"),
            Kind::EndpointSlice => (DISCOVERY_GROUP, "EndpointSlice"),
            Kind::Pod => ("", "Pod"),
            Kind::PeerAuthentication => (ISTIO_SECURITY_GROUP, "PeerAuthentication"),
        }
    }

    /// The kind an object of `apiVersion` group `group` and `kind` is, if the waypoint reads it.
    pub(crate) fn of(group: &str, kind: &str) -> Option<Kind> {
        Kind::READ
            .into_iter()
            .find(|k| k.group_kind() == (group, kind))
    }

    /// Cluster-scoped kinds are keyed by name alone (namespace `""`).
    pub fn cluster_scoped(self) -> bool {
        matches!(self, Kind::GatewayClass | Kind::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.group_kind().1)
    }
}
