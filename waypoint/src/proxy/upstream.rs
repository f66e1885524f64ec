//! Reaching an endpoint: HBONE to its ztunnel when it is in the mesh, plain TCP when it is not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_api_bindings::mesh::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::hbone::client::{Connector, TunnelError};
use crate::metrics::Metrics;

/// A byte stream to an endpoint.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    #[error("connecting to {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
}

#[derive(Debug)]
pub struct Upstream {
    pub hbone: Connector,
    pub connect_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(hbone: Connector, metrics: Arc<Metrics>) -> Upstream {
        Upstream {
            hbone,
            connect_timeout: Duration::from_secs(5),
            metrics,
        }
    }

    /// Opens a stream to `address`: through its ztunnel when `identity` is known, else directly.
    pub async fn open(
        &self,
        address: SocketAddr,
        identity: Option<&str>,
        traceparent: Option<&str>,
    ) -> Result<Box<dyn Io>, UpstreamError> {
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

    pub async fn open_endpoint(
        &self,
        ep: &Endpoint,
        traceparent: Option<&str>,
    ) -> Result<Box<dyn Io>, UpstreamError> {
        self.open(ep.address, ep.identity.as_deref(), traceparent)
            .await
    }
}
