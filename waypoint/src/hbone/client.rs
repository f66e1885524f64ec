//! Tunnels to destination ztunnels: mTLS with our identity, the server's SPIFFE ID checked against
//! the destination workload, one HTTP/2 connection per (pod IP, identity) carrying many CONNECT
//! streams, more connections only when a connection is at its stream limit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::stream::{H2Stream, StreamGuard};
use crate::identity::{Identity, TlsConfigs};
use crate::metrics::Metrics;
use crate::tls::spiffe;

/// Why a tunnel could not be opened. All of these happen before any application byte is sent,
/// so the caller may try another endpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} presented {found}, expected {expected}")]
    WrongIdentity {
        addr: SocketAddr,
        expected: String,
        /// The SPIFFE ID it presented, or why its certificate names none.
        found: String,
    },
    #[error("HTTP/2 with {addr}: {source}")]
    H2 { addr: SocketAddr, source: h2::Error },
    #[error("CONNECT {target} via {addr} answered {status}")]
    Refused {
        addr: SocketAddr,
        target: SocketAddr,
        status: StatusCode,
    },
    #[error("refusing to tunnel to ztunnel's own port {0}")]
    ReservedPort(SocketAddr),
    #[error("cannot express {0} as a CONNECT authority")]
    BadTarget(SocketAddr),
    #[error("no workload certificate yet")]
    NoIdentity,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    ip: IpAddr,
    identity: Arc<str>,
}

#[derive(Debug)]
struct PooledConn {
    send: h2::client::SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    /// The identity version the connection was made with; a rotated identity makes new ones.
    tls: Arc<TlsConfigs>,
}

/// The upstream HBONE pool.
#[derive(Debug)]
pub(crate) struct Connector {
    identity: Arc<Identity>,
    conns: Mutex<HashMap<PoolKey, Vec<Arc<PooledConn>>>>,
    /// One dial in flight per key: concurrent requests wait for it and share the connection
    /// instead of each opening their own.
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Port the destination ztunnel listens on (15008; tests may move it).
    pub(crate) port: u16,
    /// Streams per connection before another connection is opened; ztunnel's pool uses 100.
    pub(crate) max_streams: usize,
    pub(crate) connect_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Connector {
    pub(crate) fn new(identity: Arc<Identity>, port: u16, metrics: Arc<Metrics>) -> Connector {
        Connector {
            identity,
            conns: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            port,
            max_streams: 100,
            connect_timeout: Duration::from_secs(5),
            metrics,
        }
    }

    /// Opens `CONNECT target` on a connection to `target.ip():port` whose server is `expected`.
    pub(crate) async fn connect(
        &self,
        target: SocketAddr,
        expected: &str,
        traceparent: Option<&str>,
    ) -> Result<H2Stream, TunnelError> {
        if super::RESERVED_PORTS.contains(&target.port()) {
            return Err(TunnelError::ReservedPort(target));
        }
        let key = PoolKey {
            ip: target.ip(),
            identity: expected.into(),
        };
        let conn = match self.checkout(&key) {
            Some(c) => {
                self.metrics.upstream_hbone_streams_reused.inc();
                c
            }
            None => {
                let gate = self
                    .dialing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(key.clone())
                    .or_default()
                    .clone();
                let _turn = gate.lock().await;
                match self.checkout(&key) {
                    Some(c) => {
                        self.metrics.upstream_hbone_streams_reused.inc();
                        c
                    }
                    None => {
                        let c = self.dial(&key).await?;
                        c.active.fetch_add(1, Ordering::Relaxed);
                        self.lock().entry(key.clone()).or_default().push(c.clone());
                        c
                    }
                }
            }
        };
        let guard = StreamGuard(conn.active.clone());
        let addr = SocketAddr::new(key.ip, self.port);
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string());
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let req = req.body(()).map_err(|_| TunnelError::BadTarget(target))?;
        let h2err = |source| TunnelError::H2 { addr, source };
        let mut send = conn.send.clone().ready().await.map_err(h2err)?;
        let (resp, stream) = send.send_request(req, false).map_err(h2err)?;
        let resp = resp.await.map_err(h2err)?;
        self.metrics.upstream_hbone_streams.inc();
        if resp.status() != StatusCode::OK {
            return Err(TunnelError::Refused {
                addr,
                target,
                status: resp.status(),
            });
        }
        Ok(H2Stream::new(stream, resp.into_body(), Some(guard)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Arc<PooledConn>>>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts and
        // retains), so a poisoned lock is still usable.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self, key: &PoolKey) -> Option<Arc<PooledConn>> {
        let current = self.identity.current()?;
        let mut map = self.lock();
        let conns = map.get_mut(key)?;
        // Closed connections go; so do idle ones made with a rotated-out identity.
        conns.retain(|c| {
            !c.closed.load(Ordering::Relaxed)
                && (Arc::ptr_eq(&c.tls, &current) || c.active.load(Ordering::Relaxed) > 0)
        });
        let c = conns.iter().find(|c| {
            Arc::ptr_eq(&c.tls, &current) && c.active.load(Ordering::Relaxed) < self.max_streams
        })?;
        c.active.fetch_add(1, Ordering::Relaxed);
        Some(c.clone())
    }

    async fn dial(&self, key: &PoolKey) -> Result<Arc<PooledConn>, TunnelError> {
        let addr = SocketAddr::new(key.ip, self.port);
        let tls = self.identity.current().ok_or(TunnelError::NoIdentity)?;
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(TunnelError::Connect { addr, source }),
            Err(_) => return Err(TunnelError::Timeout(addr)),
        };
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
        let tls_stream = tokio::time::timeout(
            self.connect_timeout,
            connector.connect(ServerName::IpAddress(key.ip.into()), tcp),
        )
        .await
        .map_err(|_| TunnelError::Timeout(addr))?
        .map_err(|source| TunnelError::Tls { addr, source })?;
        // The same rule as for our clients: exactly one URI SAN, a SPIFFE ID, and it must be
        // the destination workload's.
        let found = tls_stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(spiffe::SvidError::NoCertificate)
            .and_then(spiffe::svid);
        if found.as_deref().ok() != Some(&*key.identity) {
            self.metrics.upstream_identity_mismatch.inc();
            return Err(TunnelError::WrongIdentity {
                addr,
                expected: key.identity.to_string(),
                found: found.unwrap_or_else(|e| e.to_string()),
            });
        }
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .max_header_list_size(super::MAX_HEADER_LIST)
            .max_send_buffer_size(super::MAX_FRAME as usize)
            .handshake::<_, Bytes>(tls_stream)
            .await
            .map_err(|source| TunnelError::H2 { addr, source })?;
        let closed = Arc::new(AtomicBool::new(false));
        let done = closed.clone();
        let metrics = self.metrics.clone();
        let gauge = metrics.track_owned(|m| &m.upstream_hbone_connections);
        tokio::spawn(async move {
            let _gauge = gauge;
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HBONE connection ended");
            }
            done.store(true, Ordering::Relaxed);
        });
        metrics.upstream_hbone_connects.inc();
        tracing::debug!(%addr, identity = %key.identity, "upstream HBONE connection established");
        Ok(Arc::new(PooledConn {
            send,
            active: Arc::new(AtomicUsize::new(0)),
            closed,
            tls,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentitySource;
    use crate::tls::dev_ca::DevCa;
    use tokio::net::TcpListener;

    const WAYPOINT: &str = "spiffe://cluster.local/ns/ns/sa/waypoint";
    const APP: &str = "spiffe://cluster.local/ns/ns/sa/app";

    fn identity(ca: &Arc<DevCa>, id: &str) -> Arc<Identity> {
        Arc::new(
            Identity::load(IdentitySource::DevCa {
                ca: ca.clone(),
                spiffe_id: id.into(),
            })
            .unwrap(),
        )
    }

    /// A destination ztunnel on loopback presenting `APP`: answers every CONNECT with 200 and
    /// keeps the stream until the client drops it. Returns its port and how many TCP
    /// connections it accepted.
    async fn ztunnel(ca: &Arc<DevCa>) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let tls = identity(ca, APP).current().unwrap().server.clone();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut h2) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = h2.accept().await {
                        tokio::spawn(async move {
                            let Ok(_send) = respond.send_response(http::Response::new(()), false)
                            else {
                                return;
                            };
                            let mut body = req.into_body();
                            while let Some(Ok(_)) = body.data().await {}
                        });
                    }
                });
            }
        });
        (port, accepted)
    }

    async fn pool() -> (Connector, Arc<AtomicUsize>, Arc<Identity>) {
        let ca = Arc::new(DevCa::new("pool test").unwrap());
        let (port, accepted) = ztunnel(&ca).await;
        let ours = identity(&ca, WAYPOINT);
        let connector = Connector::new(ours.clone(), port, Arc::default());
        (connector, accepted, ours)
    }

    fn target() -> SocketAddr {
        "127.0.0.1:8080".parse().unwrap()
    }

    #[tokio::test]
    async fn streams_share_a_connection_per_address_and_identity() {
        let (pool, accepted, _) = pool().await;
        let _a = pool.connect(target(), APP, None).await.unwrap();
        let _b = pool.connect(target(), APP, None).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.metrics.upstream_hbone_streams_reused.get(), 1);
        // Another expected identity is another key: no stream of APP's connection is used for
        // it, and the server (which is APP) is refused on a connection of its own.
        let err = pool.connect(target(), WAYPOINT, None).await.unwrap_err();
        assert!(matches!(err, TunnelError::WrongIdentity { .. }), "{err}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.metrics.upstream_hbone_streams_reused.get(), 1);
        assert_eq!(pool.metrics.upstream_identity_mismatch.get(), 1);
    }

    #[tokio::test]
    async fn a_full_connection_makes_another() {
        let (mut pool, accepted, _) = pool().await;
        pool.max_streams = 2;
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(pool.connect(target(), APP, None).await.unwrap());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "2 + 2 + 1 streams");
        // A stream that ends frees its slot.
        held.truncate(3);
        let _again = pool.connect(target(), APP, None).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_dial() {
        let (pool, accepted, _) = pool().await;
        let pool = Arc::new(pool);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.connect(target(), APP, None).await.map(|_| ()) })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.metrics.upstream_hbone_connects.get(), 1);
    }

    #[tokio::test]
    async fn a_rotated_identity_gets_new_connections() {
        let (pool, accepted, ours) = pool().await;
        let _old = pool.connect(target(), APP, None).await.unwrap();
        ours.reload();
        let _new = pool.connect(target(), APP, None).await.unwrap();
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the old connection is not used with the new certificate"
        );
        let _also_new = pool.connect(target(), APP, None).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn reserved_ports_are_refused_before_any_dial() {
        let (pool, accepted, _) = pool().await;
        let err = pool
            .connect("127.0.0.1:15001".parse().unwrap(), APP, None)
            .await
            .unwrap_err();
        assert!(matches!(err, TunnelError::ReservedPort(_)), "{err}");
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
    }
}
