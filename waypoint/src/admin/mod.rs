//! Admin endpoints, on their own listeners away from the data path: `/healthz/ready`,
//! `/config_dump` (admin port) and `/metrics` (Prometheus port). HTTP/1.1 on hyper, GET only, one
//! request per connection, each connection bounded in header size and time.
//!
//! [`serve`] is a plain future: it runs on whichever tokio runtime polls it, and so do the
//! connections it accepts.

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::identity::Identity;
use crate::metrics::{self, Metrics};
use crate::state::StateHandle;

/// A connection gets this long to send its request and take the answer, as before hyper.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Request line and headers together; larger heads are answered 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// More headers than this are answered 431.
const MAX_HEADERS: usize = 32;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    pub config: Arc<StateHandle>,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<Identity>,
    /// True once the listeners are up; readiness also needs a config and a certificate.
    pub ready: Arc<AtomicBool>,
}

/// Which endpoints a listener serves: readiness and metrics are reachable from the network (kubelet,
/// Prometheus); the config dump stays on a local-only admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Readiness,
    Metrics,
    Admin,
}

/// Serves `role`'s endpoints on `listener` until the future is dropped.
pub(crate) async fn serve(listener: TcpListener, state: AdminState, role: Role) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: give the process a moment to close some.
                tracing::debug!(?role, "admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, state, role).await {
                tracing::debug!(?role, %peer, "admin connection: {e}");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("no complete exchange within {CONNECTION_TIMEOUT:?}")]
    Timeout,
}

/// Answers one request on `io`. Malformed requests are answered 400 and oversized heads 431 by
/// hyper itself, then the connection is closed.
async fn serve_connection<I>(io: I, state: AdminState, role: Role) -> Result<(), ConnectionError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let response = answer(&req, &state, role);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        // One request per connection: clients read until close, as they always could.
        .keep_alive(false)
        .auto_date_header(false)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(CONNECTION_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::time::timeout(CONNECTION_TIMEOUT, connection)
        .await
        .map_err(|_| ConnectionError::Timeout)??;
    Ok(())
}

/// The endpoints. The method is checked before the path: anything but GET is 405 everywhere.
fn answer<B>(req: &Request<B>, state: &AdminState, role: Role) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
    }
    match req.uri().path() {
        "/healthz/ready" if role != Role::Metrics => match not_ready(state) {
            None => respond(StatusCode::OK, "text/plain", "ready\n"),
            Some(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" | "/stats/prometheus" if role != Role::Readiness => respond(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            state.metrics.render(),
        ),
        "/config_dump" if role == Role::Admin => {
            respond(StatusCode::OK, "application/json", config_dump(state))
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Why the waypoint cannot take traffic yet, if it cannot.
fn not_ready(state: &AdminState) -> Option<&'static str> {
    if !state.ready.load(Ordering::Relaxed) {
        Some("starting")
    } else if !state.config.is_synced() {
        Some("config not synced")
    } else if !state.identity.is_ready() {
        Some("no valid workload certificate")
    } else {
        None
    }
}

/// The compiled config and the identity in use, as pretty JSON.
fn config_dump(state: &AdminState) -> String {
    let mut dump = state.config.dump();
    dump["identity"] = match state.identity.current() {
        Some(c) => serde_json::json!({
            "spiffe_id": c.spiffe_id,
            "expires_in_s": c.remaining().as_secs(),
            "lifetime_s": c.lifetime().as_secs(),
            "roots": c.roots,
        }),
        None => serde_json::Value::Null,
    };
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
