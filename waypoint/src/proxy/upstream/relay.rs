//! The in-process CONNECT relay that carries Pingora's upstream HTTP connections into HBONE.
//!
//! Why a Unix socket hop: Pingora 0.9.1 never reuses upstream connections made through
//! `PeerOptions::custom_l4` (virtual streams have no fd, and the pool's fd check rejects them:
//! cloudflare/pingora#883). Its built-in CONNECT-proxy support dials a Unix socket instead, which
//! has a real fd, so upstream HTTP/1.1 connections pool and are reused. Each pooled connection is
//! one CONNECT here and one HBONE stream (or TCP connection) to the endpoint.
//!
//! Pingora sends `CONNECT` with `Host: ip:port` and the one header we put on the peer: the number
//! of the [`Ticket`] under which the HTTP app registered the connection's typed [`Route`]
//! (endpoint, the identity its ztunnel must present, trace). A CONNECT whose number finds no
//! route, or whose route is for another address, is refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::prelude::HttpPeer;
use pingora::upstreams::peer::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::Instrument;

use super::Upstream;
use super::route::{Route, Routes, TICKET_HEADER, Ticket};

const MAX_HEAD: usize = 8 * 1024;

/// A relay socket in a private directory, removed on drop.
#[derive(Debug)]
pub(crate) struct RelaySocket {
    pub(crate) path: PathBuf,
    dir: PathBuf,
    routes: Arc<Routes>,
}

impl RelaySocket {
    /// The HTTP app's way into this relay.
    pub(crate) fn detour(&self) -> Detour {
        Detour {
            next_hop: self.path.clone().into_boxed_path(),
            routes: self.routes.clone(),
        }
    }
}

/// The relay's listening side.
#[derive(Debug)]
pub(crate) struct RelayListener {
    listener: UnixListener,
    routes: Arc<Routes>,
}

/// How the HTTP app sends an upstream connection through the relay.
#[derive(Debug, Clone)]
pub(crate) struct Detour {
    next_hop: Box<Path>,
    routes: Arc<Routes>,
}

impl Detour {
    /// A peer that reaches `route` through the relay, and the ticket that keeps the route
    /// registered: hold it until the request ends.
    pub(crate) fn peer(&self, route: Route) -> (HttpPeer, Ticket) {
        let mut peer = HttpPeer::new(route.address, false, String::new());
        peer.proxy = Some(Proxy {
            next_hop: self.next_hop.clone(),
            host: route.address.ip().to_string(),
            port: route.address.port(),
            headers: Default::default(),
        });
        // Part of Pingora's pool key (the ticket header is not): a connection made for one
        // identity is reused only for the same identity.
        peer.group_key = self.routes.group(route.identity.as_ref());
        let ticket = self.routes.register(route);
        peer.options.extra_proxy_headers.insert(
            TICKET_HEADER.to_owned(),
            ticket.number().to_string().into_bytes(),
        );
        (peer, ticket)
    }
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Binds the relay in a fresh 0700 directory under the system temp dir.
pub(crate) fn bind() -> std::io::Result<(RelayListener, RelaySocket)> {
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
    let routes = Arc::new(Routes::default());
    Ok((
        RelayListener {
            listener,
            routes: routes.clone(),
        },
        RelaySocket { path, dir, routes },
    ))
}

pub(crate) async fn serve(listener: RelayListener, upstream: Arc<Upstream>) {
    let RelayListener { listener, routes } = listener;
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let upstream = upstream.clone();
                let routes = routes.clone();
                tokio::spawn(
                    async move {
                        if let Err(e) = relay(s, &upstream, &routes).await {
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
    ticket: Option<u64>,
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
        ticket: value(TICKET_HEADER).and_then(|v| v.parse().ok()),
        consumed,
    }))
}

async fn relay(mut s: UnixStream, upstream: &Upstream, routes: &Routes) -> std::io::Result<()> {
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
    let route = head.ticket.and_then(|n| routes.take(n));
    let Some(route) = route.filter(|r| r.address == head.target) else {
        s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Err(std::io::Error::other(format!(
            "CONNECT {} without a registered route",
            head.target
        )));
    };
    let mut up = match upstream
        .open(
            route.address,
            route.identity.as_deref(),
            route.traceparent.as_deref(),
        )
        .await
    {
        Ok(up) => up,
        Err(e) => {
            tracing::warn!(target = %route.address, identity = ?route.identity, error = %e, "upstream connect failed");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hbone::client::Connector;
    use crate::identity::{Identity, IdentitySource};
    use crate::metrics::Metrics;
    use crate::tls::dev_ca::DevCa;

    fn upstream() -> Upstream {
        let ca = Arc::new(DevCa::new("relay test").unwrap());
        let identity = Identity::load(IdentitySource::DevCa {
            ca,
            spiffe_id: "spiffe://cluster.local/ns/ns/sa/waypoint".into(),
        })
        .unwrap();
        let metrics = Arc::new(Metrics::default());
        Upstream::new(
            Connector::new(Arc::new(identity), 15008, metrics.clone()),
            metrics,
        )
    }

    /// Sends `head` to the relay and returns the first line it answers.
    async fn answer(routes: &Routes, head: &str) -> String {
        let (mut client, server) = UnixStream::pair().unwrap();
        let upstream = upstream();
        let relay = relay(server, &upstream, routes);
        let talk = async {
            client.write_all(head.as_bytes()).await.unwrap();
            let mut buf = vec![0; 256];
            let n = client.read(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        };
        let (_, line) = tokio::join!(relay, talk);
        line
    }

    #[tokio::test]
    async fn only_a_registered_route_chooses_the_identity() {
        let routes = Arc::new(Routes::default());
        // The header that used to carry the identity, as a client might try to smuggle it.
        let forged = "CONNECT 10.0.0.1:8080 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\
                      x-waypoint-upstream-identity: spiffe://cluster.local/ns/x/sa/evil\r\n\r\n";
        assert_eq!(answer(&routes, forged).await, "HTTP/1.1 400 Bad Request");
        let guessed = format!(
            "CONNECT 10.0.0.1:8080 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n{TICKET_HEADER}: 0\r\n\r\n"
        );
        assert_eq!(answer(&routes, &guessed).await, "HTTP/1.1 400 Bad Request");
        // A route registered for another address is not usable for this one, and is spent.
        let ticket = routes.register(Route {
            address: "10.0.0.2:8080".parse().unwrap(),
            identity: Some("spiffe://cluster.local/ns/ns/sa/app".into()),
            traceparent: None,
        });
        let other = format!(
            "CONNECT 10.0.0.1:8080 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n{TICKET_HEADER}: {}\r\n\r\n",
            ticket.number()
        );
        assert_eq!(answer(&routes, &other).await, "HTTP/1.1 400 Bad Request");
        assert_eq!(routes.pending(), 0);
    }

    #[tokio::test]
    async fn a_registered_route_is_dialled_with_its_identity() {
        let routes = Arc::new(Routes::default());
        // A reserved port is refused before any dial, so the answer shows the route was found
        // and handed to the upstream (503) rather than refused at the head (400).
        let ticket = routes.register(Route {
            address: "10.0.0.1:15001".parse().unwrap(),
            identity: Some("spiffe://cluster.local/ns/ns/sa/app".into()),
            traceparent: None,
        });
        let head = format!(
            "CONNECT 10.0.0.1:15001 HTTP/1.1\r\nHost: 10.0.0.1:15001\r\n{TICKET_HEADER}: {}\r\n\r\n",
            ticket.number()
        );
        assert_eq!(
            answer(&routes, &head).await,
            "HTTP/1.1 503 Service Unavailable"
        );
    }
}
