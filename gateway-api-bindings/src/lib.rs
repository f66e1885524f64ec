#![cfg_attr(test, allow(clippy::unwrap_used))]
//! Kubernetes, Gateway API and Istio types, the object index, waypoint membership, `targetRefs`
//! attachment, the destinations a waypoint serves, Istio's `WaypointAccepted` status, and
//! translation of AuthorizationPolicy into the engine's model.
//!
//! Modules, each importing only modules listed before it (imports run one way):
//!
//! * [`well_known`]: every API group, label, annotation, class, controller name and condition
//!   type matched on. Imports nothing from the crate.
//! * [`istio`]: the Istio CRDs the waypoint reads (written here; no crate fits kube 4.2).
//! * `key`: how an object is named ([`Kind`], [`ObjectKey`]).
//! * [`limits`]: the name and size limits Kubernetes and the CRDs declare, and bounded display.
//! * [`yaml`]: bounded YAML reading (size, depth, no anchors/aliases, located errors).
//! * [`pod`]: the few fields of a Pod the waypoint keeps.
//! * [`store`]: the object index, with `apply`/`remove`, loaded from YAML files or fed by
//!   watchers.
//! * `translate`: AuthorizationPolicy -> [`policy_engine::PolicySpec`].
//! * [`ztunnel`]: the second enforcement point: which policies the destination's ztunnel
//!   enforces for a workload, converted to its L4 form as istiod converts them, and evaluated.
//! * [`waypoint`]: membership: which Gateway is a waypoint, which waypoint an object uses.
//! * [`attachment`]: `targetRefs` binding: which policies bind to a waypoint, and to which of
//!   its destinations.
//! * [`destinations`]: the destinations a waypoint serves (Services, ServiceEntries,
//!   EndpointSlices, Pods) and the identities of their endpoints.
//! * `validation`: the checks istiod's webhook makes, as findings naming each field.
//! * [`status`]: the `WaypointAccepted` condition istiod would write on a policy, our own
//!   `WaypointEnforced` beside it, and how the two writers share the `conditions` list.
//! * [`gateway_status`]: the status this waypoint writes as the controller of its own Gateway
//!   and GatewayClass (`Accepted`, `Programmed`, `addresses`).

pub mod attachment;
pub mod destinations;
pub mod gateway_status;
pub mod istio;
mod key;
pub mod limits;
pub mod pod;
pub mod status;
pub mod store;
mod translate;
mod validation;
pub mod waypoint;
pub mod well_known;
pub mod yaml;
pub mod ztunnel;

pub use attachment::{authorizer_for, binding, service_entry_target, service_target};
pub use key::{Kind, ObjectKey};
pub use store::{Ignored, LoadError, Object, Origin, Sourced, Store};
pub use waypoint::WaypointIdentity;
