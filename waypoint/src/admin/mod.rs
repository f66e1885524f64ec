//! Admin endpoints, on their own listeners away from the data path: `/healthz/ready`,
//! `/config_dump` (admin port) and `/metrics` (Prometheus port). Plain HTTP/1.1, GET only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::state::StateHandle;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub config: Arc<StateHandle>,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<Identity>,
    /// True once the listeners are up; readiness also needs a config and a certificate.
    pub ready: Arc<AtomicBool>,
}

/// Which endpoints a listener serves: readiness and metrics are reachable from the network (kubelet,
/// Prometheus); the config dump stays on a local-only admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Readiness,
    Metrics,
    Admin,
}

pub async fn serve(listener: TcpListener, state: AdminState, role: Role) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(10), answer(s, &state, role))
                    .await;
        });
    }
}

async fn answer(mut s: TcpStream, state: &AdminState, role: Role) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let path = loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") {
                    return respond(&mut s, 405, "text/plain", "method not allowed\n").await;
                }
                break req
                    .path
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_owned();
            }
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => continue,
            _ => return respond(&mut s, 400, "text/plain", "bad request\n").await,
        }
    };
    match path.as_str() {
        "/healthz/ready" if role != Role::Metrics => {
            let why = if !state.ready.load(Ordering::Relaxed) {
                Some("starting")
            } else if !state.config.is_synced() {
                Some("config not synced")
            } else if !state.identity.is_ready() {
                Some("no valid workload certificate")
            } else {
                None
            };
            match why {
                None => respond(&mut s, 200, "text/plain", "ready\n").await,
                Some(why) => {
                    respond(&mut s, 503, "text/plain", &format!("not ready: {why}\n")).await
                }
            }
        }
        "/metrics" | "/stats/prometheus" if role != Role::Readiness => {
            respond(
                &mut s,
                200,
                "text/plain; version=0.0.4",
                &state.metrics.render(),
            )
            .await
        }
        "/config_dump" if role == Role::Admin => {
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
            let body = serde_json::to_string_pretty(&dump).unwrap_or_default();
            respond(&mut s, 200, "application/json", &body).await
        }
        _ => respond(&mut s, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(s: &mut TcpStream, code: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}
