#![cfg_attr(test, allow(clippy::unwrap_used))]
//! The waypoint: HBONE in, policy at L4 and L7, HBONE out.
//!
//! Read it the way traffic flows: [`hbone::server`] accepts a ztunnel's connection and its CONNECT
//! streams; [`proxy::inbound`] resolves the destination against the current [`state::Snapshot`]
//! and picks the inner protocol; HTTP runs through one Pingora app ([`proxy::http`]) that asks the
//! policy engine about every request (after [`authn`] validated its JWT, if a RequestAuthentication
//! applies), opaque TCP through [`proxy::tcp`]; both reach endpoints
//! through [`proxy::upstream`] and the pooled [`hbone::client`]. Config (read by [`source`], compiled into [`state`]) and the workload
//! certificate ([`identity`], from files, Istio's CA or a SPIRE agent; TLS details in [`tls`]) are
//! swapped in atomically from their own tasks; [`admin`] serves readiness, metrics
//! and the config dump on separate listeners. [`app`] wires it together.

pub(crate) mod admin;
pub mod app;
pub mod authn;
pub mod hbone;
pub mod identity;
pub mod metrics;
pub mod proxy;
pub mod settings;
pub mod source;
pub mod state;
pub mod tls;
