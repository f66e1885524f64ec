//! Per tunnel: resolve the destination, open the tunnel, pick the inner protocol, hand over.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gateway_api_bindings::mesh::Protocol;
use http::StatusCode;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::http::ResponseHeader;
use pingora::protocols::GetProxyDigest;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::VirtualSocketStream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use super::destination::Destination;
use super::http::HttpApp;
use super::sniff::{Sniffed, sniff};
use super::upstream::Upstream;
use crate::config::ConfigHandle;
use crate::hbone::server::{ConnInfo, Tunnel, TunnelHandler};
use crate::hbone::stream::H2Stream;
use crate::metrics::Metrics;

/// How long an undeclared port may stay silent before its bytes are treated as opaque TCP
/// (server-first protocols such as MySQL never speak first).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

/// What one tunnel carries to the HTTP filters and the TCP relay.
#[derive(Debug)]
pub struct TunnelCtx {
    pub conn: Arc<ConnInfo>,
    /// The CONNECT authority: service VIP or pod IP, and port.
    pub target: SocketAddr,
    pub client_ip: Option<IpAddr>,
    pub traceparent: Option<String>,
}

/// The [`TunnelHandler`] of the waypoint.
pub struct Inbound {
    pub config: Arc<ConfigHandle>,
    pub http: Arc<HttpProxy<HttpApp>>,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<Metrics>,
    pub shutdown: ShutdownWatch,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Http1,
    H2c,
    Tcp,
}

impl TunnelHandler for Inbound {
    async fn handle(self: Arc<Self>, tunnel: Tunnel) {
        let snapshot = self.config.load();
        let Some(dest) = Destination::resolve(&snapshot, tunnel.target) else {
            self.metrics.tunnels_rejected.inc();
            tracing::warn!(
                target = %tunnel.target,
                peer = ?tunnel.conn.peer.as_ref().map(|p| p.uri()),
                config_version = snapshot.version,
                "CONNECT to a destination this waypoint does not serve"
            );
            tunnel.reject(StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let ctx = Arc::new(TunnelCtx {
            conn: tunnel.conn.clone(),
            target: tunnel.target,
            client_ip: tunnel.client_ip,
            traceparent: tunnel.traceparent.clone(),
        });
        let mut stream = match tunnel.accept() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "client went away before the tunnel opened");
                return;
            }
        };
        let inner = match dest.protocol() {
            Protocol::Tcp => Inner::Tcp,
            Protocol::Http2 => Inner::H2c,
            Protocol::Http => detect(&mut stream, None).await.unwrap_or(Inner::Http1),
            Protocol::Unknown => detect(&mut stream, Some(SNIFF_TIMEOUT))
                .await
                .unwrap_or(Inner::Tcp),
        };
        tracing::debug!(destination = %dest, ?inner, "tunnel open");
        match inner {
            Inner::Tcp => {
                super::tcp::serve(
                    stream,
                    &ctx,
                    &dest,
                    &snapshot,
                    &self.upstream,
                    &self.metrics,
                )
                .await;
            }
            Inner::Http1 | Inner::H2c => {
                drop(snapshot);
                self.serve_http(stream, ctx, inner).await;
            }
        }
    }
}

/// Reads until the first bytes tell HTTP/1, h2c or something else; `None` on timeout or EOF.
async fn detect(stream: &mut H2Stream, timeout: Option<Duration>) -> Option<Inner> {
    let look = async {
        let mut want = 1;
        loop {
            let buf = stream.peek(want).await.ok()?;
            match sniff(buf) {
                Sniffed::Http1 => return Some(Inner::Http1),
                Sniffed::H2c => return Some(Inner::H2c),
                Sniffed::Opaque => return Some(Inner::Tcp),
                Sniffed::NeedMore if buf.len() < want => return Some(Inner::Tcp),
                Sniffed::NeedMore => want = buf.len() + 1,
            }
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, look).await.ok().flatten(),
        None => look.await,
    }
}

impl Inbound {
    async fn serve_http(&self, stream: H2Stream, ctx: Arc<TunnelCtx>, inner: Inner) {
        let mut stream = Stream::from(VirtualSocketStream::new(Box::new(stream)));
        let Ok(header) = ResponseHeader::build(200, None) else {
            return;
        };
        stream.set_proxy_digest(ProxyDigest::new(Box::new(header), Some(Box::new(ctx))));
        if inner == Inner::H2c {
            let _ = ServerApp::process_new(&self.http, Box::new(stream), &self.shutdown).await;
            return;
        }
        // HTTP/1 straight into the keep-alive loop: Pingora's own h2c check would wait for 24
        // bytes, stalling clients whose whole request is shorter.
        let mut session = ServerSession::new_http1(Box::new(stream));
        session.set_keepalive(Some(60));
        let mut result = self.http.process_new_http(session, &self.shutdown).await;
        while let Some((stream, persistent)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(p) = persistent {
                p.apply_to_session(&mut session);
            }
            if *self.shutdown.borrow() {
                session.set_keepalive(None);
            }
            result = self.http.process_new_http(session, &self.shutdown).await;
        }
    }
}
