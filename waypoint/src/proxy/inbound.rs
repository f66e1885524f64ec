//! Per tunnel: resolve the destination, open the tunnel, pick the inner protocol, hand over to
//! the Pingora app ([`super::http`]) or the TCP relay ([`super::tcp`]). Dispatch only: what the
//! tunnel carries is a [`TunnelCtx`] ([`super::tunnel`]), which neither side imports from here.

use std::sync::Arc;
use std::time::Duration;

use gateway_api_bindings::destinations::Protocol;
use http::StatusCode;
use pingora::apps::ServerApp;
use pingora::http::ResponseHeader;
use pingora::protocols::GetProxyDigest;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::VirtualSocketStream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use super::destination::Destination;
use super::http::HttpApp;
use super::http1::{self, Http1Settings};
use super::idle::{Activity, Tracked};
use super::sniff::{H2_PREFACE, Sniffed, sniff};
use super::tunnel::TunnelCtx;
use super::upstream::Upstream;
use crate::hbone::server::{Timeouts, Tunnel, TunnelHandler};
use crate::hbone::stream::H2Stream;
use crate::metrics::Metrics;
use crate::state::{Snapshot, StateHandle};

/// How long a client on a port with no declared protocol may stay silent before its tunnel is
/// relayed as opaque TCP, where no L7 configuration applies to the destination (server-first
/// protocols such as MySQL never speak first). Where one does, silence is never TCP: the tunnel
/// is closed after [`Inbound::detection_timeout`] as Envoy's waypoint closes it.
const SERVER_FIRST_WAIT: Duration = Duration::from_secs(1);

/// The [`TunnelHandler`] of the waypoint.
pub(crate) struct Inbound {
    pub(crate) config: Arc<StateHandle>,
    pub(crate) http: Arc<HttpProxy<HttpApp>>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: ShutdownWatch,
    pub(crate) timeouts: Timeouts,
    /// Silence allowed on a port with no declared protocol whose destination has L7
    /// configuration (Envoy's listener filter timeout).
    pub(crate) detection_timeout: Duration,
    pub(crate) http1: Http1Settings,
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

/// Whether traffic to `dest` is decided differently as HTTP than as TCP: an authorization rule
/// reads the HTTP request, or a RequestAuthentication applies (its output headers are only
/// removed from HTTP).
fn has_l7_config(snapshot: &Snapshot, dest: &Destination) -> bool {
    let target = dest.policy_target();
    snapshot.authorizer.reads_http(target) || snapshot.authn.for_target(target).is_some()
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
        let rest = self.timeouts.request_headers;
        let detected = match dest.protocol() {
            Protocol::Tcp => Detected::Found(Inner::Tcp),
            // A declared HTTP port waits for the client's first byte, for so long.
            Protocol::Http2 => match first_byte_within(&mut stream, first_byte).await {
                None => Detected::Found(Inner::H2c),
                Some(failed) => failed,
            },
            // A port declared HTTP carries HTTP whatever its first bytes look like (`patch /`
            // is a valid request): Envoy's HTTP codec answers what it cannot parse, so only
            // h2c's preface changes the codec here.
            Protocol::Http => match first_byte_within(&mut stream, first_byte).await {
                None => Detected::Found(preface_or_http1(&mut stream, rest).await),
                Some(failed) => failed,
            },
            // Envoy's http_inspector: whatever starts like HTTP is HTTP however slowly it
            // comes, and a silent client is closed at the listener filter timeout. Only where
            // HTTP and TCP are decided alike may silence mean a server-first protocol.
            Protocol::Unknown if has_l7_config(&snapshot, &dest) => {
                detect(&mut stream, self.detection_timeout, rest).await
            }
            Protocol::Unknown => match detect(&mut stream, SERVER_FIRST_WAIT, rest).await {
                Detected::Silent => Detected::Found(Inner::Tcp),
                other => other,
            },
        };
        let inner = match detected {
            Detected::Found(inner) => inner,
            Detected::Ended => return,
            Detected::Silent => {
                self.metrics.timeouts.first_byte.inc();
                tracing::info!(destination = %dest, "no byte from the client in time; closing the tunnel");
                return;
            }
            Detected::Incomplete => {
                self.metrics.timeouts.request_headers.inc();
                tracing::info!(destination = %dest, timeout = ?rest, "the first bytes did not tell the protocol in time; closing the tunnel");
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
    /// No byte within the wait.
    Silent,
    /// Bytes came, but not enough to tell within the wait (a request line trickling in that
    /// never reaches its method's end).
    Incomplete,
}

/// Longest run of method characters the sniffer waits through; Envoy's inspector closes a
/// connection whose first 64 KiB do not tell.
const MAX_SNIFF: usize = 64 * 1024;

/// Waits `wait` for the tunnel's first byte; `None` once it is there.
async fn first_byte_within(stream: &mut H2Stream, wait: Duration) -> Option<Detected> {
    match tokio::time::timeout(wait, stream.peek(1)).await {
        Err(_) => Some(Detected::Silent),
        Ok(Err(_)) => Some(Detected::Ended),
        Ok(Ok(_)) => None,
    }
}

/// On a port declared HTTP: h2c if the bytes are its preface, else HTTP/1 (whose codec answers
/// whatever it cannot parse, or times the head out).
async fn preface_or_http1(stream: &mut H2Stream, wait: Duration) -> Inner {
    let look = async {
        let mut want = 1;
        loop {
            let Ok(buf) = stream.peek(want).await else {
                return Inner::Http1;
            };
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] || buf.len() < want {
                return Inner::Http1;
            }
            if n == H2_PREFACE.len() {
                return Inner::H2c;
            }
            want = buf.len() + 1;
        }
    };
    tokio::time::timeout(wait, look)
        .await
        .unwrap_or(Inner::Http1)
}

/// Reads until the first bytes tell HTTP/1, h2c or something else: `first` for the first byte,
/// then `rest` from it for the decision.
async fn detect(stream: &mut H2Stream, first: Duration, rest: Duration) -> Detected {
    if let Some(failed) = first_byte_within(stream, first).await {
        return failed;
    }
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
                // The client half-closed before the bytes could tell: they hold no request
                // line, and are relayed (and decided) as TCP.
                Sniffed::NeedMore if buf.len() < want => return Detected::Found(Inner::Tcp),
                // As Envoy's inspector: no decision within its buffer, the connection goes.
                Sniffed::NeedMore if buf.len() >= MAX_SNIFF => return Detected::Incomplete,
                Sniffed::NeedMore => want = buf.len() + 1,
            }
        }
    };
    tokio::time::timeout(rest, look)
        .await
        .unwrap_or(Detected::Incomplete)
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
    async fn serve_http(&self, stream: H2Stream, ctx: Arc<TunnelCtx>, inner: Inner) {
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
        if inner == Inner::Http1 {
            // Not Pingora's own keep-alive loop: each request head is judged and timed first
            // (and Pingora's h2c check would wait for 24 bytes, stalling short requests).
            http1::conn::serve(
                &self.http,
                stream,
                ctx,
                &self.http1,
                self.timeouts.request_headers,
                &self.metrics,
                &self.shutdown,
            )
            .await;
            return;
        }
        let mut stream = Stream::from(VirtualSocketStream::new(Box::new(stream)));
        let Ok(header) = ResponseHeader::build(200, None) else {
            return;
        };
        stream.set_proxy_digest(ProxyDigest::new(Box::new(header), Some(Box::new(ctx))));
        let _ = ServerApp::process_new(&self.http, Box::new(stream), &self.shutdown).await;
    }
}
