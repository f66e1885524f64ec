//! The one Pingora HTTP app every inner HTTP connection runs through: policy per request in
//! `request_filter`, endpoint choice in `upstream_peer`, `x-forwarded-for` on the way out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gateway_api_bindings::destinations::Protocol;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::upstreams::peer::ALPN;
use pingora::{Error, ErrorSource, ErrorType, Result};
use policy_engine::authorizer::DENIED_BODY;

use super::destination::Destination;
use super::policy::{self, Connection, Inputs, Token};
use super::request::{Incoming, Refused, RequestView};
use super::tunnel::TunnelCtx;
use super::upstream::relay::Detour;
use super::upstream::route::{Route, Ticket};
use crate::authn::provider::Verified;
use crate::authn::{self, Authenticator};
use crate::metrics::Metrics;
use crate::state::StateHandle;

/// Endpoints tried per request when connecting fails (before any byte went upstream).
const MAX_ATTEMPTS: usize = 3;

#[derive(Debug)]
pub(crate) struct HttpApp {
    pub(crate) config: Arc<StateHandle>,
    /// Upstream connections go through the relay ([`super::upstream`]).
    pub(crate) relay: Detour,
    pub(crate) metrics: Arc<Metrics>,
}

/// Per-request state.
#[derive(Debug, Default)]
pub(crate) struct ReqCtx {
    tunnel: Option<Arc<TunnelCtx>>,
    dest: Option<Destination>,
    tried: Vec<SocketAddr>,
    /// The route of the connection being made, registered with the relay until the request
    /// ends.
    route: Option<Ticket>,
    /// The request was answered by the waypoint itself (403, 400, 503).
    local_reply: bool,
    denied: bool,
}

fn tunnel_of(session: &Session) -> Option<Arc<TunnelCtx>> {
    session
        .as_downstream()
        .digest()?
        .proxy_digest
        .as_ref()?
        .user_data
        .as_ref()?
        .downcast_ref::<Arc<TunnelCtx>>()
        .cloned()
}

/// gRPC's status for an HTTP status, as Envoy maps its local replies to gRPC requests (gRPC's
/// HTTP-to-gRPC status mapping).
fn grpc_status(http: u16) -> u8 {
    match http {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// Envoy's `hasGrpcContentType`: `application/grpc`, alone or followed by `+` or `;`.
fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// Answers locally without closing the client's connection (`respond_error` would). A gRPC
/// request gets what Envoy sends it: `200` and a trailers-only response whose `grpc-status`
/// carries the refusal and `grpc-message` the body.
async fn reply(
    session: &mut Session,
    status: u16,
    body: &'static str,
    extra: Option<(&'static str, String)>,
) -> Result<()> {
    if is_grpc(session.req_header()) {
        let mut resp = ResponseHeader::build(200, Some(5))?;
        resp.insert_header("content-type", "application/grpc")?;
        resp.insert_header("grpc-status", grpc_status(status).to_string())?;
        // Plain ASCII text here, so nothing to percent-encode (gRPC's grpc-message rule).
        resp.insert_header("grpc-message", body)?;
        if let Some((name, value)) = extra {
            resp.insert_header(name, value)?;
        }
        // Trailers-only on h2: one HEADERS frame ending the stream. Pingora's session-level
        // write never ends an h2 stream with its headers, so the h2 session writes it.
        if let ServerSession::H2(h2) = session.as_downstream_mut() {
            return h2.write_response_header(Box::new(resp), true);
        }
        resp.insert_header("content-length", "0")?;
        session.write_response_header(Box::new(resp), false).await?;
        return session.write_response_body(None, true).await;
    }
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "text/plain")?;
    if let Some((name, value)) = extra {
        resp.insert_header(name, value)?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}

/// Reads what has already arrived of an HTTP/1 request body, never waiting for more: true when
/// that was all of it.
fn consume_arrived_body(session: &mut Session) -> bool {
    let drain = session.as_downstream_mut().drain_request_body();
    let mut drain = std::pin::pin!(drain);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    matches!(drain.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(())))
}

impl HttpApp {
    /// Answers the request here, with `extra` as one more response header.
    async fn local(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        status: u16,
        body: &'static str,
        denied: bool,
        extra: Option<(&'static str, String)>,
    ) -> Result<bool> {
        ctx.local_reply = true;
        ctx.denied = denied;
        // Answered at the headers, as Envoy's filters answer: a body still on its way is not
        // waited for. What has arrived is read; if that is not all of it, the HTTP/1
        // connection closes after the answer (its next request could not be told from the
        // body), and an h2 stream is reset with NO_ERROR once answered (h2 does so when the
        // stream is dropped with its request half open).
        if !session.as_downstream().is_http2() && !consume_arrived_body(session) {
            session.set_keepalive(None);
        }
        reply(session, status, body, extra).await?;
        Ok(true)
    }

    /// Answers a request Envoy's codec or connection manager would refuse before any filter
    /// (400; 404 or 405 for what is not proxied), and closes the connection as Envoy does
    /// after a protocol error.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        tunnel: &TunnelCtx,
        e: Refused,
    ) -> Result<bool> {
        tracing::info!(
            peer = ?tunnel.conn.peer.as_ref().map(|p| p.uri()),
            client = ?tunnel.client_ip,
            target = %tunnel.target,
            method = %session.req_header().method,
            reason = %e,
            "request refused before policy"
        );
        session.set_keepalive(None);
        let (status, body) = refusal_reply(&e);
        self.local(session, ctx, status, body, true, None).await
    }

    /// RequestAuthentication, before policy.
    async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        authn: Option<Arc<Authenticator>>,
        tunnel: &TunnelCtx,
        dest: &Destination,
    ) -> Result<Authenticated> {
        let Some(authn) = authn else {
            return Ok(Authenticated::Anonymous);
        };
        // Output headers go before any token is read: only a valid token sets them.
        authn.sanitize(session.req_header_mut());
        let req = session.req_header();
        match authn.authenticate(&req.headers, req.uri.query()).await {
            Ok(None) => Ok(Authenticated::Anonymous),
            Ok(Some(accepted)) => {
                accepted.apply_to_request(session.req_header_mut());
                self.metrics.jwt_valid.inc();
                Ok(Authenticated::Token(accepted.verified))
            }
            Err(e) => {
                self.metrics.jwt_rejected.inc();
                let req = session.req_header();
                let host = host_of(req).to_owned();
                let path = req.uri.path().to_owned();
                tracing::info!(
                    peer = ?tunnel.conn.peer.as_ref().map(|p| p.uri()),
                    client = ?tunnel.client_ip,
                    destination = %dest,
                    method = %req.method,
                    path = %path,
                    reason = %e,
                    "request unauthenticated"
                );
                let challenge = authn::challenge(&host, &path);
                self.local(
                    session,
                    ctx,
                    e.status(),
                    e.body(),
                    true,
                    Some(("www-authenticate", challenge)),
                )
                .await?;
                Ok(Authenticated::Answered)
            }
        }
    }
}

/// What RequestAuthentication made of a request.
enum Authenticated {
    /// No token, or no rule applies: no request principal.
    Anonymous,
    Token(Arc<Verified>),
    /// Refused: the 401 has been sent.
    Answered,
}

/// The answer to a request refused before policy: Envoy's status, with a short body.
fn refusal_reply(e: &Refused) -> (u16, &'static str) {
    match e.status() {
        404 => (404, "Not Found"),
        405 => (405, "Method Not Allowed"),
        _ => (400, "Bad Request"),
    }
}

/// The status a request that could not be proxied is answered with; `0` when the client is gone
/// and nothing can be answered.
fn error_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        _ => match e.esource() {
            // Every upstream failure, connect or mid-response, is "service unavailable", as
            // Envoy reports it.
            ErrorSource::Upstream => 503,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                // Connect failures surface as internal when the relay refused the CONNECT.
                if matches!(
                    e.etype(),
                    ErrorType::ConnectProxyFailure
                        | ErrorType::ConnectError
                        | ErrorType::ConnectRefused
                        | ErrorType::ConnectTimedout
                ) {
                    503
                } else {
                    500
                }
            }
        },
    }
}

/// W3C Trace Context towards the app: re-emitted from what parses, never copied. Without a valid
/// `traceparent` the `tracestate` goes too (Trace Context: it must not be used alone).
fn rebuild_trace_context(req: &mut RequestHeader) -> Result<()> {
    let one = |name: &str| {
        let mut values = req.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().map(str::to_owned),
            // Several traceparent headers are invalid; several tracestate lines are one list.
            (Some(_), Some(_)) if name == "traceparent" => None,
            (Some(_), Some(_)) => Some(
                req.headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (None, _) => None,
        }
    };
    let parent = one("traceparent").and_then(|v| crate::hbone::headers::traceparent(&v));
    let state = parent
        .as_ref()
        .and_then(|_| one("tracestate"))
        .and_then(|v| crate::hbone::headers::tracestate(&v));
    req.remove_header("traceparent");
    req.remove_header("tracestate");
    if let Some(p) = parent {
        req.insert_header("traceparent", p)?;
    }
    if let Some(s) = state {
        req.insert_header("tracestate", s)?;
    }
    Ok(())
}

/// The request as the downstream codec holds it, for [`RequestView::build`].
fn incoming<'a>(session: &'a Session) -> Incoming<'a> {
    let req = session.req_header();
    let http2 = session.as_downstream().is_http2();
    Incoming {
        method: req.method.as_str(),
        // Pingora keeps the request-target's bytes (less any fragment) as received.
        target: req.raw_path(),
        h2_authority: req.uri.authority().map(|a| a.as_str()).filter(|_| http2),
        h2_scheme: req.uri.scheme_str().filter(|_| http2),
        http2,
        headers: &req.headers,
    }
}

fn host_of(req: &RequestHeader) -> &str {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get("host").and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

#[async_trait]
impl ProxyHttp for HttpApp {
    type CTX = ReqCtx;

    fn new_ctx(&self) -> ReqCtx {
        ReqCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut ReqCtx) -> Result<bool> {
        let Some(tunnel) = tunnel_of(session) else {
            return Error::e_explain(ErrorType::InternalError, "request without tunnel context");
        };
        let snapshot = self.config.load();
        // What Envoy's codec and connection manager refuse never reaches authentication.
        let refused = RequestView::build(incoming(session), snapshot.path_normalization).err();
        if let Some(e) = refused {
            return self.refuse(session, ctx, &tunnel, e).await;
        }
        let Some(dest) = Destination::resolve(&snapshot, tunnel.target) else {
            // The destination left the config while the tunnel was open.
            tracing::warn!(target = %tunnel.target, "destination no longer served");
            return self
                .local(session, ctx, 503, "no healthy upstream", false, None)
                .await;
        };
        let authn = snapshot.authn.for_target(dest.policy_target()).cloned();
        let verified = match self
            .authenticate(session, ctx, authn, &tunnel, &dest)
            .await?
        {
            Authenticated::Anonymous => None,
            Authenticated::Token(v) => Some(v),
            Authenticated::Answered => return Ok(true),
        };
        // The view is built again, not reused: authentication has since removed its output
        // headers and the token and set claim headers, and policy must see the request as
        // Envoy's RBAC filter does, after jwt_authn. Decide in a block with no await: the
        // request view borrows data that is not `Sync`.
        let verdict = {
            let view = RequestView::build(incoming(session), snapshot.path_normalization);
            match view {
                Err(e) => Err(e),
                Ok(view) => {
                    let inputs = Inputs {
                        connection: Connection::of(&tunnel),
                        target: dest.policy_target(),
                        destination: &dest,
                        http: Some(&view),
                        token: verified.as_ref().map(|v| Token {
                            claims: &v.claims,
                            principal: Some(&v.principal),
                        }),
                    };
                    let allowed =
                        policy::decide(&snapshot.authorizer, &inputs, Some(&self.metrics)).allowed;
                    Ok((allowed, view.path, view.authority.into_owned()))
                }
            }
        };
        let (path, authority) = match verdict {
            Err(e) => return self.refuse(session, ctx, &tunnel, e).await,
            Ok((false, ..)) => {
                return self.local(session, ctx, 403, DENIED_BODY, true, None).await;
            }
            Ok((true, path, authority)) => (path, authority),
        };
        // The app gets the request policy was checked on: origin-form, the normalized path
        // (as with Envoy's normalization) and `Host` from `:authority` (from an absolute-form
        // target, RFC 9112 3.2.2), for an HTTP/1.1 and an h2 upstream alike.
        let Ok(uri) = path.parse::<http::Uri>() else {
            let e = Refused::InvalidTarget(path);
            return self.refuse(session, ctx, &tunnel, e).await;
        };
        let req = session.req_header_mut();
        req.set_uri(uri);
        if req.headers.get(http::header::HOST).map(|h| h.as_bytes()) != Some(authority.as_bytes()) {
            req.insert_header(http::header::HOST, authority)?;
        }
        ctx.dest = Some(dest);
        ctx.tunnel = Some(tunnel);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(dest) = &ctx.dest else {
            return Error::e_explain(ErrorType::InternalError, "no destination resolved");
        };
        let Some(ep) = dest.pick(&ctx.tried) else {
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("no ready endpoint for {dest}"),
            );
        };
        ctx.tried.push(ep.address);
        // A pooled connection keeps the trace of the request that opened it, as ztunnel logs
        // one trace id per tunnel.
        let traceparent = session
            .req_header()
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::hbone::headers::traceparent)
            .or_else(|| ctx.tunnel.as_ref()?.traceparent.clone());
        let (mut peer, ticket) = self.relay.peer(Route {
            address: ep.address,
            identity: ep
                .identity
                .as_deref()
                .filter(|i| !i.is_empty())
                .map(Arc::from),
            traceparent,
        });
        // A retry's route replaces the failed attempt's.
        ctx.route = Some(ticket);
        peer.options.connection_timeout = Some(Duration::from_secs(10));
        peer.options.idle_timeout = Some(Duration::from_secs(90));
        // The port's declared protocol decides, as Istio configures Envoy's upstream cluster:
        // HTTP/1.1 for `http`, h2 for `http2`/`grpc`/`h2c`; only an undeclared (sniffed) port
        // follows the client (Istio's `useClientProtocol` for auto-detected ports).
        peer.options.alpn = match dest.protocol() {
            Protocol::Http => ALPN::H1,
            Protocol::Http2 => ALPN::H2,
            Protocol::Tcp | Protocol::Unknown if session.as_downstream().is_http2() => ALPN::H2,
            Protocol::Tcp | Protocol::Unknown => ALPN::H1,
        };
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut ReqCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let more = ctx
            .dest
            .as_ref()
            .is_some_and(|d| ctx.tried.len() < MAX_ATTEMPTS.min(d.endpoint_count()));
        tracing::warn!(endpoint = %peer._address, error = %e, retry = more, "upstream connect failed");
        // Nothing was sent upstream yet, so another endpoint may take the request.
        e.set_retry(more);
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        rebuild_trace_context(upstream)?;
        if let Some(ip) = ctx.tunnel.as_ref().and_then(|t| t.client_ip) {
            let xff = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip.to_string(),
            };
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut ReqCtx,
    ) -> Result<()> {
        if reused {
            self.metrics.upstream_http_reused.inc();
        } else {
            self.metrics.upstream_http_new.inc();
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut ReqCtx,
    ) -> FailToProxy {
        let code = error_status(e);
        if code > 0 {
            if is_grpc(session.req_header()) && session.response_written().is_none() {
                session.set_keepalive(None);
                let _ = reply(session, code, "upstream unavailable", None).await;
            } else {
                let _ = session.respond_error(code).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut ReqCtx) {
        let code = session
            .as_downstream()
            .response_written()
            .map_or(0, |r| r.status.as_u16());
        self.metrics.request(!ctx.denied, code);
        if let Some(e) = e
            && !ctx.local_reply
        {
            tracing::debug!(error = %e, code, "request failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_failures_map_to_envoys_statuses() {
        let cases = [
            (Error::new(ErrorType::HTTPStatus(503)), 503),
            (Error::new(ErrorType::HTTPStatus(404)), 404),
            (Error::new_up(ErrorType::ReadError), 503),
            (Error::new_up(ErrorType::ConnectTimedout), 503),
            (Error::new_up(ErrorType::H2Error), 503),
            (Error::new_down(ErrorType::ReadError), 0),
            (Error::new_down(ErrorType::WriteError), 0),
            (Error::new_down(ErrorType::ConnectionClosed), 0),
            (Error::new_down(ErrorType::InvalidHTTPHeader), 400),
            (Error::new_in(ErrorType::ConnectProxyFailure), 503),
            (Error::new_in(ErrorType::ConnectError), 503),
            (Error::new_in(ErrorType::ConnectRefused), 503),
            (Error::new(ErrorType::ConnectTimedout), 503),
            (Error::new_in(ErrorType::InternalError), 500),
            (Error::new(ErrorType::InternalError), 500),
        ];
        for (e, want) in cases {
            assert_eq!(error_status(&e), want, "{e}");
        }
    }

    #[test]
    fn refusals_before_policy_map_to_envoys_statuses() {
        assert_eq!(refusal_reply(&Refused::NotProxied), (404, "Not Found"));
        assert_eq!(
            refusal_reply(&Refused::Connect),
            (405, "Method Not Allowed")
        );
        assert_eq!(refusal_reply(&Refused::MissingHost), (400, "Bad Request"));
        assert_eq!(
            refusal_reply(&Refused::InvalidTarget("x".into())),
            (400, "Bad Request")
        );
    }

    #[test]
    fn trace_context_is_rebuilt_not_copied() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .unwrap();
        req.append_header("tracestate", "a=1").unwrap();
        req.append_header("tracestate", "b=2").unwrap();
        rebuild_trace_context(&mut req).unwrap();
        assert_eq!(req.headers["tracestate"], "a=1,b=2");
        let mut bad = RequestHeader::build("GET", b"/", None).unwrap();
        bad.append_header("traceparent", "garbage").unwrap();
        bad.append_header("tracestate", "a=1").unwrap();
        rebuild_trace_context(&mut bad).unwrap();
        assert!(bad.headers.get("traceparent").is_none());
        assert!(
            bad.headers.get("tracestate").is_none(),
            "tracestate never travels alone"
        );
    }
}
