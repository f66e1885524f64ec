//! How a request reaches its destination: HBONE to the endpoint's ztunnel when it is in the
//! mesh, plain TCP when it is not ([`Upstream`], over the pooled [`crate::hbone::client`]).
//!
//! Opaque TCP ([`super::tcp`]) calls [`Upstream`] directly. HTTP takes a detour: Pingora's
//! `upstream_peer` hook ([`super::http`]) registers a typed [`route::Route`] (endpoint, the
//! identity its ztunnel must present, trace) and points Pingora at an in-process CONNECT proxy on
//! a Unix socket ([`relay`]), which takes the route back by its ticket and opens the HBONE
//! stream. The hop exists only because Pingora 0.9.1 never reuses upstream connections made
//! through `PeerOptions::custom_l4` (its virtual streams have no fd and the pool's fd check
//! rejects them: cloudflare/pingora#883); a Unix socket has a real fd, so connections pool.
//!
//! When to delete it: once a Pingora release carries the fix for #883 (open PR #971, "Make
//! pooled virtual L4 streams reusable") and the workspace moves to it, `upstream_peer` sets
//! `custom_l4` to a connector that calls [`Upstream::open`] with the route itself; `relay.rs`,
//! `route.rs`'s tickets and the socket go, and the route's identity keeps its type end to end.
//! Delete it when pooled reuse through `custom_l4` measures at least as well (the reuse target is
//! 99.9%); the performance work decides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_api_bindings::destinations::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::own::{OwnAddresses, Refusal};
use crate::hbone::client::{Connector, TunnelError};
use crate::metrics::Metrics;

pub(crate) mod relay;
pub(crate) mod route;

/// A byte stream to an endpoint.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    #[error("connecting to {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) hbone: Connector,
    pub(crate) connect_timeout: Duration,
    /// Addresses no upstream connection may reach (our own, reserved ports).
    pub(crate) own: OwnAddresses,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub(crate) fn new(hbone: Connector, metrics: Arc<Metrics>) -> Upstream {
        Upstream {
            hbone,
            connect_timeout: Duration::from_secs(5),
            own: OwnAddresses::default(),
            metrics,
        }
    }

    /// Where a connection to `address` would actually go: its ztunnel when `identity` is known.
    pub(crate) fn check(&self, address: SocketAddr, identity: Option<&str>) -> Result<(), Refusal> {
        let dial = match identity {
            Some(_) => SocketAddr::new(address.ip(), self.hbone.port),
            None => address,
        };
        self.own.check(address, dial)
    }

    /// Opens a stream to `address`: through its ztunnel when `identity` is known, else directly.
    pub(crate) async fn open(
        &self,
        address: SocketAddr,
        identity: Option<&str>,
        traceparent: Option<&str>,
    ) -> Result<Box<dyn Io>, UpstreamError> {
        // On every path (HBONE, plain TCP, HTTP through the relay): never into ourselves.
        if let Err(refusal) = self.check(address, identity) {
            self.metrics.self_destination_refused.inc();
            self.metrics.upstream_connect_failures.inc();
            super::own::log_refused("upstream connection refused", &refusal);
            return Err(refusal.into());
        }
        let r = match identity {
            Some(id) => self
                .hbone
                .connect(address, id, traceparent)
                .await
                .map(|s| Box::new(s) as Box<dyn Io>)
                .map_err(UpstreamError::from),
            None => match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
                .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Box::new(s) as Box<dyn Io>)
                }
                Ok(Err(source)) => Err(UpstreamError::Tcp {
                    addr: address,
                    source,
                }),
                Err(_) => Err(UpstreamError::Timeout(address)),
            },
        };
        if r.is_err() {
            self.metrics.upstream_connect_failures.inc();
        }
        r
    }

    pub(crate) async fn open_endpoint(
        &self,
        ep: &Endpoint,
        traceparent: Option<&str>,
    ) -> Result<Box<dyn Io>, UpstreamError> {
        self.open(ep.address, ep.identity.as_deref(), traceparent)
            .await
    }
}
