//! What one tunnel carries to the HTTP filters and the TCP relay: who sent it, for whom, where
//! to, and the trace it belongs to. Built once per CONNECT by [`super::inbound`], read by
//! [`super::http`], [`super::tcp`] and [`super::policy`]; it imports none of them, so the data
//! path's imports run one way.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::hbone::server::ConnInfo;

/// One accepted tunnel's identity.
#[derive(Debug)]
pub(crate) struct TunnelCtx {
    /// The HBONE connection it came on: the client workload's SPIFFE ID.
    pub(crate) conn: Arc<ConnInfo>,
    /// The CONNECT authority: service VIP or pod IP, and port.
    pub(crate) target: SocketAddr,
    /// `forwarded: for=`: the original client address.
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) traceparent: Option<String>,
}
