//! Names fixed by Kubernetes, Gateway API and Istio: API groups, labels, annotations, classes,
//! controller names and condition types. One place, so a reader can see every name the waypoint
//! matches on, and no module has to import another just for a string.

/// Gateway API's group (Gateway, GatewayClass, HTTPRoute).
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// Istio's networking group (ServiceEntry, WorkloadEntry).
pub const ISTIO_NETWORKING_GROUP: &str = "networking.istio.io";
/// Istio's security group (AuthorizationPolicy, RequestAuthentication).
pub const ISTIO_SECURITY_GROUP: &str = "security.istio.io";
/// Kubernetes' discovery group (EndpointSlice).
pub const DISCOVERY_GROUP: &str = "discovery.k8s.io";

/// Kubernetes treats `""` and `core` as the same group.
pub fn canonical_group(g: &str) -> &str {
    if g.is_empty() { "core" } else { g }
}

/// The class istiod gives waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The controller a GatewayClass must name to be a waypoint class.
pub const MESH_CONTROLLER: &str = "istio.io/mesh-controller";

/// Our own GatewayClass. istiod does not know its controller, so for a Gateway of this class it
/// deploys nothing and writes no status: this waypoint is the class's controller and writes its
/// Gateway's status itself. A Gateway of this class is a waypoint as one of class
/// [`WAYPOINT_CLASS`] is, and a root-namespace policy naming this class binds to every waypoint
/// of the class.
pub const RUST_WAYPOINT_CLASS: &str = "rust-waypoint";
/// The `controllerName` of [`RUST_WAYPOINT_CLASS`], domain-style as Gateway API asks.
pub const RUST_WAYPOINT_CONTROLLER: &str = "rust-waypoint.io/controller";

/// Label (on a Service, ServiceEntry, Pod or Namespace) naming the waypoint its traffic uses;
/// `none` opts out.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Label naming the namespace of the [`USE_WAYPOINT`] Gateway when it is not the object's own.
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// Label (on a Service, ServiceEntry or Namespace) naming a second, canary waypoint that takes a
/// share of a service's traffic (istio/istio#60801); `none` or empty names none.
pub const USE_WAYPOINT_CANARY: &str = "istio.io/use-waypoint-canary";
/// Label naming the namespace of the [`USE_WAYPOINT_CANARY`] Gateway.
pub const USE_WAYPOINT_CANARY_NAMESPACE: &str = "istio.io/use-waypoint-canary-namespace";
/// Annotation: the canary's share of the traffic, an integer percentage (missing: 0).
pub const USE_WAYPOINT_CANARY_WEIGHT: &str = "istio.io/use-waypoint-canary-weight";
/// Gateway (or GatewayClass) label choosing which traffic a waypoint takes: `service` (the
/// default), `workload`, `all` or `none`.
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// Gateway (or GatewayClass) annotation `<protocol>[/<port>]`: the listener whose
/// `allowedRoutes` decide attachment, instead of the HBONE listener.
pub const WAYPOINT_INBOUND_BINDING: &str = "ambient.istio.io/waypoint-inbound-binding";
/// The listener protocol a `PROXY` inbound binding looks for.
pub const WAYPOINT_PROXY_PROTOCOL: &str = "istio.io/PROXY";
/// The listener istiod reads a waypoint's `allowedRoutes` from: protocol `HBONE`, port 15008.
pub const HBONE_PROTOCOL: &str = "HBONE";
pub const HBONE_PORT: i32 = 15008;
/// Service annotation (and ServiceEntry `spec.exportTo`): the namespaces a service is visible to
/// (`*` all, `.` its own, `~` none, or names).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";
/// Namespace or pod label enrolling workloads in ambient.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Istio's label on the Deployment, pods and Service it makes for a Gateway (waypoints included).
pub const GATEWAY_MANAGED: &str = "gateway.istio.io/managed";
/// [`GATEWAY_MANAGED`] values of a waypoint's and an east-west gateway's own objects: istiod
/// never gives those a waypoint.
pub const MANAGED_BY_MESH_CONTROLLER: &str = "istio.io-mesh-controller";
pub const MANAGED_BY_EAST_WEST_CONTROLLER: &str = "istio.io-eastwest-controller";
/// Gateway API's label naming the Gateway a pod or Service belongs to.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

/// The annotation that turns a policy into a shadow policy.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The condition istiod sets on a policy for its binding to a waypoint
/// (`pilot/pkg/serviceregistry/ambient/policies.go`).
pub const WAYPOINT_ACCEPTED: &str = "WaypointAccepted";
/// Our own condition on a policy: "enforced by this waypoint". Written beside istiod's
/// [`WAYPOINT_ACCEPTED`], never instead of it, so two writers never own the same condition type
/// (Istio's `conditions` list is replaced whole by each apply; see [`crate::status`]).
pub const WAYPOINT_ENFORCED: &str = "rust-waypoint.io/WaypointEnforced";
