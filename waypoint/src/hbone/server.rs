//! The HBONE listener: TLS 1.3 with a required client certificate, then HTTP/2 CONNECT streams.
//!
//! Each connection learns its peer's SPIFFE ID once, from the certificate, and hands every valid
//! CONNECT to the [`TunnelHandler`] as a [`Tunnel`]. The connection future is polled for as long as
//! any stream lives, so PINGs are answered while streams are busy. On shutdown each connection
//! sends GOAWAY and gets a bounded grace period to finish its streams.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use policy_engine::PeerIdentity;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::headers;
use super::stream::H2Stream;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::tls::spiffe;

/// What we tell clients in SETTINGS.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// ztunnel opens up to 100 streams per connection; a higher limit never makes it queue.
    pub max_concurrent_streams: u32,
    pub timeouts: Timeouts,
    /// How long connections may finish their streams after GOAWAY on shutdown.
    pub drain_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_concurrent_streams: 1000,
            timeouts: Timeouts::default(),
            drain_grace: Duration::from_secs(20),
        }
    }
}

/// How long a peer may keep a connection or stream without making progress. Each firing is
/// counted (`waypoint_timeouts_total{timeout=...}`); docs/running.md says where each default
/// comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP accepted to TLS handshake done (ztunnel and Envoy's listener: 10 s).
    pub tls_handshake: Duration,
    /// TLS done to the client's HTTP/2 preface and SETTINGS (same budget as the handshake).
    pub h2_preface: Duration,
    /// An HBONE connection with no open stream is closed with GOAWAY (ztunnel's pool closes
    /// its idle connections after 5 minutes; Envoy's HTTP idle_timeout is 1 hour).
    pub connection_idle: Duration,
    /// A CONNECT to an HTTP or sniffed port that sends no byte (Envoy's request_headers_timeout
    /// style budget).
    pub first_byte: Duration,
    /// A stream with no byte in either direction (Envoy's stream_idle_timeout: 5 minutes).
    pub stream_idle: Duration,
    /// First byte of a request to the end of its headers (HTTP/1 inside a tunnel).
    pub request_headers: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tls_handshake: Duration::from_secs(10),
            h2_preface: Duration::from_secs(10),
            connection_idle: Duration::from_secs(300),
            first_byte: Duration::from_secs(10),
            stream_idle: Duration::from_secs(300),
            request_headers: Duration::from_secs(10),
        }
    }
}

/// One client connection (one source ztunnel, one client workload identity).
#[derive(Debug)]
pub struct ConnInfo {
    pub id: u64,
    /// The source ztunnel's address (not the client's: see [`Tunnel::client_ip`]).
    pub peer_addr: SocketAddr,
    /// The client workload's SPIFFE ID from its certificate.
    pub peer: Option<PeerIdentity>,
}

/// A CONNECT request waiting for an answer.
#[derive(Debug)]
pub struct Tunnel {
    pub conn: Arc<ConnInfo>,
    /// `:authority`: a service VIP or pod IP, with the port.
    pub target: SocketAddr,
    /// `forwarded: for=`: the original client address.
    pub client_ip: Option<IpAddr>,
    pub traceparent: Option<String>,
    respond: h2::server::SendResponse<Bytes>,
    body: h2::RecvStream,
}

impl Tunnel {
    /// Opens the tunnel (`200`) and returns its byte stream.
    pub fn accept(mut self) -> Result<H2Stream, h2::Error> {
        let send = self.respond.send_response(Response::new(()), false)?;
        Ok(H2Stream::new(send, self.body, None))
    }

    /// Refuses the tunnel with `status`; ztunnel turns any non-200 into a reset for its client.
    pub fn reject(mut self, status: StatusCode) {
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        let _ = self.respond.send_response(resp, true);
        super::stream::drain_later(self.body);
    }
}

/// Serves accepted tunnels.
pub trait TunnelHandler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, tunnel: Tunnel) -> impl Future<Output = ()> + Send;
    /// The trust domains a peer's SPIFFE ID may be in (the mesh's and its aliases), as of now.
    fn trust_domains(&self) -> Arc<[String]>;
}

/// Accepts connections until `shutdown` turns true, then drains them.
pub async fn serve<H: TunnelHandler>(
    listener: TcpListener,
    identity: Arc<Identity>,
    handler: Arc<H>,
    settings: ServerSettings,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ids = AtomicU64::new(1);
    let mut conns = JoinSet::new();
    let conn_shutdown = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer_addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let span = tracing::info_span!("hbone_in", conn = id, peer = %peer_addr);
                conns.spawn(
                    serve_connection(tcp, peer_addr, id, identity.clone(), handler.clone(),
                        settings.clone(), metrics.clone(), conn_shutdown.clone())
                    .instrument(span),
                );
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = signaled(&mut shutdown) => break,
        }
    }
    drop(listener);
    tracing::info!(connections = conns.len(), grace = ?settings.drain_grace, "draining HBONE connections");
    let drained = tokio::time::timeout(settings.drain_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "grace period over; closing remaining connections"
        );
        conns.shutdown().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<H: TunnelHandler>(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    id: u64,
    identity: Arc<Identity>,
    handler: Arc<H>,
    settings: ServerSettings,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    // Counted from accept to close, whatever stage the peer stalls in.
    let _active = metrics.hbone_connections.track();
    let timeouts = settings.timeouts;
    let Some(tls) = identity.current() else {
        // Not ready: without a certificate there is nothing to offer the client.
        metrics.hbone_handshake_failures.inc();
        tracing::warn!("no workload certificate yet; refusing the connection");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    let mut tls = match tokio::time::timeout(timeouts.tls_handshake, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics.hbone_handshake_failures.inc();
            tracing::warn!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics.hbone_handshake_failures.inc();
            metrics.timeouts.tls_handshake.inc();
            tracing::warn!(timeout = ?timeouts.tls_handshake, "TLS handshake timed out");
            return;
        }
    };
    // ztunnel's rule, made strict: the chain was verified by rustls; the leaf must name exactly
    // one SPIFFE ID, in our trust domain or an alias. Anything else would let a peer pick the
    // identity policy sees (two URI SANs) or hide from principal rules (none).
    let trust_domains = handler.trust_domains();
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let peer = match spiffe::peer_id(leaf, &trust_domains) {
        Ok(id) => PeerIdentity::new(&id),
        Err(reason) => {
            metrics.hbone_handshake_failures.inc();
            metrics.hbone_peer_identity_rejected.inc();
            tracing::warn!(%reason, ?trust_domains, "client certificate refused");
            tls.get_mut().1.send_close_notify();
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            return;
        }
    };
    let conn_info = Arc::new(ConnInfo {
        id,
        peer_addr,
        peer: Some(peer),
    });
    let principal = conn_info.peer.as_ref().map(|p| p.uri().to_owned());
    tracing::debug!(principal = ?principal, "HBONE connection established");
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONNECTION_WINDOW)
        .max_frame_size(super::MAX_FRAME)
        .max_header_list_size(super::MAX_HEADER_LIST)
        .max_send_buffer_size(super::MAX_FRAME as usize)
        .handshake::<_, Bytes>(tls);
    // The handshake completes when the client's preface has arrived.
    let mut h2 = match tokio::time::timeout(timeouts.h2_preface, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            metrics.timeouts.h2_preface.inc();
            tracing::warn!(timeout = ?timeouts.h2_preface, "no HTTP/2 preface after TLS; closing");
            return;
        }
    };
    // Streams in flight, and when the last one ended: a connection without streams for
    // `connection_idle` gets GOAWAY.
    let streams = Arc::new(StreamCount::default());
    let mut idle_check =
        tokio::time::interval((timeouts.connection_idle / 4).max(Duration::from_millis(10)));
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            next = h2.accept() => match next {
                Some(Ok((req, respond))) => {
                    let span = tracing::info_span!("tunnel", stream = %respond.stream_id().as_u32(), authority = ?req.uri().authority().map(|a| a.as_str()));
                    let conn = conn_info.clone();
                    let handler = handler.clone();
                    let metrics = metrics.clone();
                    let in_flight = StreamCount::enter(&streams);
                    tokio::spawn(async move {
                        let _in_flight = in_flight;
                        if let Some(t) = tunnel(conn, req, respond, &metrics) {
                            handler.handle(t).await;
                        }
                    }.instrument(span));
                }
                Some(Err(e)) => {
                    if !e.is_go_away() && !e.is_io() {
                        tracing::warn!(error = %e, "HBONE connection error");
                    }
                    break;
                }
                None => break,
            },
            _ = signaled(&mut shutdown), if !draining => {
                draining = true;
                h2.graceful_shutdown();
            }
            _ = idle_check.tick(), if !draining => {
                if streams.idle_for() >= Some(timeouts.connection_idle) {
                    metrics.timeouts.connection_idle.inc();
                    tracing::debug!(timeout = ?timeouts.connection_idle, "idle HBONE connection; GOAWAY");
                    draining = true;
                    h2.graceful_shutdown();
                }
            }
        }
    }
    tracing::debug!("HBONE connection closed");
}

/// Streams in flight on one connection, and since when there have been none.
#[derive(Debug)]
struct StreamCount {
    active: std::sync::atomic::AtomicUsize,
    /// Milliseconds since `epoch` when the count last dropped to zero.
    idle_since: AtomicU64,
    epoch: tokio::time::Instant,
}

impl Default for StreamCount {
    fn default() -> Self {
        StreamCount {
            active: std::sync::atomic::AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        }
    }
}

/// One stream's share of a [`StreamCount`].
struct InFlight(Arc<StreamCount>);

impl StreamCount {
    fn enter(this: &Arc<StreamCount>) -> InFlight {
        this.active.fetch_add(1, Ordering::Relaxed);
        InFlight(this.clone())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long the connection has had no stream; `None` while one is open.
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.now_ms(), Ordering::Relaxed);
        }
    }
}

/// Resolves once shutdown is signalled (or its sender is gone). The guard `wait_for` returns is
/// not `Send`, so it must not live in the caller's future.
async fn signaled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Validates a request as RFC 9113 CONNECT with an IP authority; answers it otherwise.
fn tunnel(
    conn: Arc<ConnInfo>,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    metrics: &Metrics,
) -> Option<Tunnel> {
    let refuse = |respond: &mut h2::server::SendResponse<Bytes>, status: StatusCode, why: &str| {
        metrics.tunnels_rejected.inc();
        tracing::warn!(%status, why, "CONNECT refused");
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        let _ = respond.send_response(resp, true);
    };
    // Keep the request body alive after refusing, so the refusal is not overtaken by a reset.
    let (parts, body) = req.into_parts();
    let req = http::Request::from_parts(parts, ());
    // h2 has already reset CONNECTs carrying :scheme or :path (RFC 9113 §8.5).
    if req.method() != Method::CONNECT {
        refuse(
            &mut respond,
            StatusCode::METHOD_NOT_ALLOWED,
            "only CONNECT is served",
        );
        return None;
    }
    let target = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
    let Some(target) = target else {
        refuse(
            &mut respond,
            StatusCode::BAD_REQUEST,
            ":authority must be ip:port",
        );
        return None;
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let forwarded = header("forwarded");
    let client_ip = forwarded.and_then(headers::forwarded_for);
    let traceparent = header("traceparent").and_then(headers::traceparent);
    metrics.tunnels.inc();
    Some(Tunnel {
        conn,
        target,
        client_ip,
        traceparent,
        respond,
        body,
    })
}
