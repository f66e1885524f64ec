//! Per tunnel: resolve the destination, open the tunnel, pick the inner protocol, hand over to
//! the Pingora app ([`super::http`]) or the TCP relay ([`super::tcp`]). Dispatch only: what the
//! tunnel carries is a [`TunnelCtx`] ([`super::tunnel`]), which neither side imports from here.

use std::sync::Arc;
use std::time::Duration;

use gateway_api_bindings::destinations::Protocol;
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
use tokio::io::AsyncWriteExt;

use super::destination::Destination;
use super::http::HttpApp;
use super::idle::{Activity, Tracked};
use super::sniff::{Sniffed, sniff};
use super::tunnel::TunnelCtx;
use super::upstream::Upstream;
use crate::hbone::server::{Timeouts, Tunnel, TunnelHandler};
use crate::hbone::stream::H2Stream;
use crate::metrics::Metrics;
use crate::state::StateHandle;

/// How long an undeclared port may stay silent before its bytes are treated as opaque TCP
/// (server-first protocols such as MySQL never speak first).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

/// The [`TunnelHandler`] of the waypoint.
pub(crate) struct Inbound {
    pub(crate) config: Arc<StateHandle>,
    pub(crate) http: Arc<HttpProxy<HttpApp>>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: ShutdownWatch,
    pub(crate) timeouts: Timeouts,
}

/// Longest HTTP/1 request head waited for under the request-headers timeout; a longer one is
/// Pingora's to refuse.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

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
    fn trust_domains(&self) -> Arc<[String]> {
        self.config.load().trust_domains.clone()
    }

    async fn handle(self: Arc<Self>, tunnel: Tunnel) {
        let snapshot = self.config.load();
        let Some(tunnel) = super::layered::admit(tunnel, &snapshot, &self.metrics) else {
            return;
        };
        if let Some(refusal) = self.leads_to_us(&tunnel, &snapshot) {
            self.metrics.tunnels_rejected.inc();
            self.metrics.self_destination_refused.inc();
            super::own::log_refused("CONNECT refused", &refusal);
            tunnel.reject(StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
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
        let first_byte = self.timeouts.first_byte;
        let detected = match dest.protocol() {
            Protocol::Tcp => Detected::Found(Inner::Tcp),
            // A declared HTTP port waits for the client's first byte, for so long.
            Protocol::Http2 => match detect(&mut stream, first_byte).await {
                Detected::Found(_) => Detected::Found(Inner::H2c),
                other => other,
            },
            // A port declared HTTP carries HTTP whatever its first bytes look like (`patch /`
            // is a valid request): Envoy's HTTP codec answers what it cannot parse, so only
            // h2c's preface changes the codec here.
            Protocol::Http => match detect(&mut stream, first_byte).await {
                Detected::Found(Inner::H2c) => Detected::Found(Inner::H2c),
                Detected::Found(_) => Detected::Found(Inner::Http1),
                other => other,
            },
            // Server-first protocols never speak: silence means opaque TCP.
            Protocol::Unknown => match detect(&mut stream, SNIFF_TIMEOUT).await {
                Detected::Silent => Detected::Found(Inner::Tcp),
                other => other,
            },
        };
        let inner = match detected {
            Detected::Found(inner) => inner,
            Detected::Ended => return,
            Detected::Silent => {
                self.metrics.timeouts.first_byte.inc();
                tracing::info!(destination = %dest, timeout = ?first_byte, "no byte on an HTTP port; closing the tunnel");
                return;
            }
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
                    self.timeouts.stream_idle,
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

/// What the first bytes of a tunnel said.
enum Detected {
    Found(Inner),
    /// The stream failed (a reset) before saying anything decisive.
    Ended,
    /// Nothing within the wait.
    Silent,
}

/// Reads until the first bytes tell HTTP/1, h2c or something else.
async fn detect(stream: &mut H2Stream, timeout: Duration) -> Detected {
    let look = async {
        let mut want = 1;
        loop {
            let Ok(buf) = stream.peek(want).await else {
                return Detected::Ended;
            };
            match sniff(buf) {
                Sniffed::Http1 => return Detected::Found(Inner::Http1),
                Sniffed::H2c => return Detected::Found(Inner::H2c),
                Sniffed::Opaque => return Detected::Found(Inner::Tcp),
                Sniffed::NeedMore if buf.len() < want => return Detected::Found(Inner::Tcp),
                Sniffed::NeedMore => want = buf.len() + 1,
            }
        }
    };
    tokio::time::timeout(timeout, look)
        .await
        .unwrap_or(Detected::Silent)
}

/// Waits until the buffered bytes hold a whole HTTP/1 request head (or more than
/// [`MAX_REQUEST_HEAD`], or the stream ends); false when `limit` passes first.
async fn request_head(stream: &mut H2Stream, limit: Duration) -> bool {
    let complete = async {
        let mut want = 1;
        loop {
            let Ok(buf) = stream.peek(want).await else {
                return;
            };
            if buf.len() < want
                || buf.len() > MAX_REQUEST_HEAD
                || buf.windows(4).any(|w| w == b"\r\n\r\n")
            {
                return;
            }
            want = buf.len() + 1;
        }
    };
    tokio::time::timeout(limit, complete).await.is_ok()
}

impl Inbound {
    /// Whether this tunnel would lead back into the waypoint: a CONNECT to one of our own
    /// listeners, or to a destination whose every endpoint is us or a reserved port.
    fn leads_to_us(
        &self,
        tunnel: &Tunnel,
        snapshot: &crate::state::Snapshot,
    ) -> Option<super::own::Refusal> {
        let own = &self.upstream.own;
        if own.is_ours(tunnel.target) {
            return Some(super::own::Refusal::Ours(tunnel.target));
        }
        let dest = Destination::resolve(snapshot, tunnel.target)?;
        let mut refusal = None;
        let usable =
            dest.any_endpoint(
                |ep| match self.upstream.check(ep.address, ep.identity.as_deref()) {
                    Ok(()) => true,
                    Err(r) => {
                        refusal = Some(r);
                        false
                    }
                },
            );
        if usable { None } else { refusal }
    }
    /// Serves the tunnel's HTTP until the client is done or the stream has been idle for the
    /// stream idle timeout.
    async fn serve_http(&self, mut stream: H2Stream, ctx: Arc<TunnelCtx>, inner: Inner) {
        if inner == Inner::Http1 && !request_head(&mut stream, self.timeouts.request_headers).await
        {
            self.metrics.timeouts.request_headers.inc();
            tracing::info!(timeout = ?self.timeouts.request_headers, "request headers incomplete; 408");
            // Envoy's answer to request_headers_timeout.
            let _ = stream
                .write_all(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            let _ = stream.shutdown().await;
            return;
        }
        let activity = Activity::new();
        let stream = Tracked::new(stream, activity.clone());
        tokio::select! {
            () = self.serve_http_inner(stream, ctx, inner) => {}
            () = activity.idle(self.timeouts.stream_idle) => {
                self.metrics.timeouts.stream_idle.inc();
                tracing::info!(timeout = ?self.timeouts.stream_idle, "idle HTTP tunnel closed");
            }
        }
    }

    async fn serve_http_inner(&self, stream: Tracked<H2Stream>, ctx: Arc<TunnelCtx>, inner: Inner) {
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
