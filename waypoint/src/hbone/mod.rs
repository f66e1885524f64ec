//! HBONE: HTTP/2 CONNECT over mutual TLS, as ztunnel speaks it (the wire contract is `docs/hbone.md`).
//!
//! * [`server`]: the listener ztunnels send client traffic to.
//! * [`client`]: tunnels we open to destination ztunnels, pooled per (pod IP, identity).
//! * [`stream`]: one CONNECT stream as a byte stream.
//! * [`headers`]: `forwarded`, `baggage` and `traceparent` parsing.

pub(crate) mod client;
pub mod headers;
pub mod server;
pub mod stream;

/// The port ztunnel terminates HBONE on.
pub const HBONE_PORT: u16 = 15008;

/// ztunnel's own ports: a tunnel to one of them is a self-call ztunnel refuses.
pub const RESERVED_PORTS: [u16; 4] = [15008, 15006, 15001, 15080];

/// HTTP/2 settings shared by both directions, matched to ztunnel's: 4 MiB stream and 16 MiB
/// connection windows so one stream can fill a fast link, 1 MiB frames.
pub(crate) const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub(crate) const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub(crate) const MAX_FRAME: u32 = 1024 * 1024;
pub(crate) const MAX_HEADER_LIST: u32 = 16 * 1024;
