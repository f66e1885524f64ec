//! The in-process CONNECT relay that carries Pingora's upstream HTTP connections into HBONE.
//!
//! Why a Unix socket hop: Pingora 0.9.1 never reuses upstream connections made through
//! `PeerOptions::custom_l4` (virtual streams have no fd, and the pool's fd check rejects them:
//! cloudflare/pingora#883). Its built-in CONNECT-proxy support dials a Unix socket instead, which
//! has a real fd, so upstream HTTP/1.1 connections pool and are reused. Each pooled connection is
//! one CONNECT here and one HBONE stream (or TCP connection) to the endpoint.
//!
//! Pingora sends `CONNECT` with `Host: ip:port` and the headers we put on the peer:
//! [`IDENTITY_HEADER`] (the endpoint's SPIFFE ID, empty for plain TCP) and `traceparent`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::Instrument;

use super::Upstream;

/// Carries the expected server identity from the HTTP app to the relay.
pub const IDENTITY_HEADER: &str = "x-waypoint-upstream-identity";
const MAX_HEAD: usize = 8 * 1024;

/// A relay socket in a private directory, removed on drop.
#[derive(Debug)]
pub struct RelaySocket {
    pub path: PathBuf,
    dir: PathBuf,
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Binds the relay in a fresh 0700 directory under the system temp dir.
pub fn bind() -> std::io::Result<(UnixListener, RelaySocket)> {
    use std::os::unix::fs::DirBuilderExt;
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "waypoint-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let path = dir.join("upstream.sock");
    let listener = UnixListener::bind(&path)?;
    Ok((listener, RelaySocket { path, dir }))
}

pub async fn serve(listener: UnixListener, upstream: Arc<Upstream>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let upstream = upstream.clone();
                tokio::spawn(
                    async move {
                        if let Err(e) = relay(s, &upstream).await {
                            tracing::debug!(error = %e, "relay ended");
                        }
                    }
                    .instrument(tracing::debug_span!("relay")),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

struct Head {
    target: SocketAddr,
    identity: Option<String>,
    traceparent: Option<String>,
    consumed: usize,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad CONNECT: {e}")),
    };
    if req.method != Some("CONNECT") {
        return Err(format!("expected CONNECT, got {:?}", req.method));
    }
    let value = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let target = value("host")
        .and_then(|h| h.parse::<SocketAddr>().ok())
        .ok_or("CONNECT without an ip:port Host")?;
    Ok(Some(Head {
        target,
        identity: value(IDENTITY_HEADER)
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        traceparent: value("traceparent").and_then(crate::hbone::headers::traceparent),
        consumed,
    }))
}

async fn relay(mut s: UnixStream, upstream: &Upstream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let head = loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(&buf) {
            Ok(Some(h)) => break h,
            Ok(None) if buf.len() < MAX_HEAD => continue,
            Ok(None) => return Err(std::io::Error::other("CONNECT head too large")),
            Err(e) => {
                s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await?;
                return Err(std::io::Error::other(e));
            }
        }
    };
    let mut up = match upstream
        .open(
            head.target,
            head.identity.as_deref(),
            head.traceparent.as_deref(),
        )
        .await
    {
        Ok(up) => up,
        Err(e) => {
            tracing::warn!(target = %head.target, identity = ?head.identity, error = %e, "upstream connect failed");
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await?;
    // Pingora waits for the 200 before writing, so nothing follows the head; pass it on anyway.
    if buf.len() > head.consumed {
        up.write_all(&buf[head.consumed..]).await?;
    }
    tokio::io::copy_bidirectional(&mut s, &mut up).await?;
    Ok(())
}

/// The path Pingora should dial, as its `Proxy::next_hop` wants it.
pub fn next_hop(path: &Path) -> Box<Path> {
    path.to_path_buf().into_boxed_path()
}
