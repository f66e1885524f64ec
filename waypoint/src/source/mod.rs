//! Where the mesh objects come from: [`file`] (YAML files on disk, no API server needed) and
//! [`kube`] (watchers on the API server). Each keeps the [`Store`] of the objects it read and
//! publishes snapshots built from it into the [`state`](crate::state).
//!
//! [`Store`]: gateway_api_bindings::Store

pub mod file;
pub mod kube;
