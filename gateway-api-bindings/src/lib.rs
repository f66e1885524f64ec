#![cfg_attr(test, allow(clippy::unwrap_used))]
//! Kubernetes, Gateway API and Istio types, the object index, `targetRefs` attachment, Istio's
//! `WaypointAccepted` status, and translation of AuthorizationPolicy into the engine's model.
//!
//! * [`istio`]: the Istio CRDs the waypoint reads (written here; no crate fits kube 4.2).
//! * `key`: how an object is named ([`Kind`], [`ObjectKey`]).
//! * [`store`]: a pure index with `apply`, loaded from YAML files or fed by watchers.
//! * [`yaml`]: bounded YAML reading (size, depth, no anchors/aliases, located errors).
//! * [`limits`]: the name and size limits Kubernetes and the CRDs declare, and bounded display.
//! * [`attachment`]: which policies bind to a waypoint, and to which of its destinations.
//! * [`destinations`]: the destinations a waypoint serves (Services, EndpointSlices, Pods) and their identities.
//! * [`pod`]: the few fields of a Pod the waypoint keeps.
//! * [`status`]: the status istiod would write, plus validation findings naming each field.
//! * [`well_known`]: every API group, label, annotation, class and controller name matched on.
//! * [`translate`]: AuthorizationPolicy -> [`policy_engine::PolicySpec`].

pub mod attachment;
pub mod destinations;
pub mod istio;
mod key;
pub mod limits;
pub mod pod;
pub mod status;
pub mod store;
pub mod translate;
mod validation;
pub mod waypoint;
pub mod well_known;
pub mod yaml;

pub use attachment::{authorizer_for, binding, service_entry_target, service_target};
pub use key::{Kind, ObjectKey};
pub use store::{Ignored, LoadError, Object, Origin, Sourced, Store};
pub use waypoint::WaypointIdentity;
