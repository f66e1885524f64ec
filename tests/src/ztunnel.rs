//! ztunnel-like HBONE peers.
//!
//! * [`HboneClient`]: one mTLS HTTP/2 connection with a workload's certificate, opening CONNECT
//!   streams (what a source ztunnel does toward the waypoint).
//! * [`inbound`]: a destination pod's ztunnel: TLS 1.3, client certificate required, CONNECT
//!   only, the authority's IP must equal the IP it was dialed on (else `400`), ztunnel's own ports
//!   refused (`503`), an unreachable app answered `503`; then bytes to the app.
//! * [`outbound`]: a source workload's ztunnel: a plain TCP listener whose connections become
//!   CONNECT streams to the waypoint with `forwarded`, `baggage` and `traceparent`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use waypoint::hbone::stream::H2Stream;
use waypoint::tls::spiffe;
use waypoint::tls::verify::MeshServerVerifier;

use crate::pki::{Pki, WorkloadCert};
use waypoint::tls::dev_ca::DevCa;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    waypoint::tls::provider()
}

/// TLS 1.3 client config presenting `cert`, verifying chains against the mesh root.
pub fn client_config(pki: &Pki, cert: &WorkloadCert) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_config_with(pki.roots(), cert.chain.clone(), cert.key.clone_key())
}

/// Like [`client_config`], trusting every CA in `cas` (a mesh in the middle of a root rotation).
pub fn client_config_trusting(
    cas: &[&DevCa],
    cert: &WorkloadCert,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for c in CertificateDer::pem_slice_iter(ca.root_pem().as_bytes()) {
            roots.add(c?)?;
        }
    }
    client_config_with(roots, cert.chain.clone(), cert.key.clone_key())
}

/// Like [`client_config`], from PEM files (a root bundle, a chain and its key).
pub fn client_config_files(
    root: &std::path::Path,
    chain: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(root)? {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_file_iter(chain)?.collect::<Result<Vec<_>, _>>()?;
    client_config_with(roots, chain, PrivateKeyDer::from_pem_file(key)?)
}

fn client_config_with(
    roots: rustls::RootCertStore,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let verifier = MeshServerVerifier::new(Arc::new(roots))?;
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// One HBONE connection.
#[derive(Debug, Clone)]
pub struct HboneClient {
    send: h2::client::SendRequest<Bytes>,
    ping: Arc<tokio::sync::Mutex<Option<h2::PingPong>>>,
    /// The server's SPIFFE ID.
    pub server_id: Option<String>,
    /// The server's leaf certificate (rotation shows as a new one).
    pub server_cert: Option<rustls::pki_types::CertificateDer<'static>>,
}

/// A CONNECT's outcome.
#[derive(Debug)]
pub struct Opened {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    /// The tunnel, when the status is 200.
    pub stream: Option<H2Stream>,
}

impl HboneClient {
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<HboneClient> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let server_id = server_cert.as_ref().and_then(spiffe::uri_san);
        // ztunnel's client settings (hbone.md).
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .max_frame_size(1024 * 1024)
            .max_header_list_size(16 * 1024)
            .handshake::<_, Bytes>(tls)
            .await?;
        let mut conn = conn;
        let ping = Arc::new(tokio::sync::Mutex::new(conn.ping_pong()));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HboneClient {
            send,
            ping,
            server_id,
            server_cert,
        })
    }

    /// Sends a PING and waits for its PONG (what ztunnel does every 10 s).
    pub async fn ping(&self) -> anyhow::Result<std::time::Duration> {
        let mut guard = self.ping.lock().await;
        let pp = guard
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("ping handle already taken"))?;
        let start = std::time::Instant::now();
        pp.ping(h2::Ping::opaque()).await?;
        Ok(start.elapsed())
    }

    /// Sends `CONNECT authority` with `headers`.
    pub async fn open(&self, authority: &str, headers: &[(&str, &str)]) -> anyhow::Result<Opened> {
        let mut req = Request::builder().method(Method::CONNECT).uri(authority);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send_request(req.body(())?).await
    }

    /// Sends any request (tests use it for non-CONNECT methods).
    pub async fn send_request(&self, req: Request<()>) -> anyhow::Result<Opened> {
        let mut send = self.send.clone().ready().await?;
        let (resp, stream) = send.send_request(req, false)?;
        let resp = resp.await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let stream =
            (status == StatusCode::OK).then(|| H2Stream::from_parts(stream, resp.into_body()));
        Ok(Opened {
            status,
            headers,
            stream,
        })
    }
}

/// What an inbound shim saw.
#[derive(Debug, Default)]
pub struct InboundStats {
    pub connections: AtomicU64,
    pub streams: AtomicU64,
    pub bad_authority: AtomicU64,
    /// Last client SPIFFE ID seen (the waypoint's, when traffic went through it).
    pub last_peer: std::sync::Mutex<Option<String>>,
    pub last_traceparent: std::sync::Mutex<Option<String>>,
}

/// A destination pod's ztunnel on `pod_ip:port`, presenting `cert`.
#[derive(Debug)]
pub struct InboundShim {
    pub addr: SocketAddr,
    pub stats: Arc<InboundStats>,
    pub task: JoinHandle<()>,
}

impl Drop for InboundShim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn inbound(
    addr: SocketAddr,
    pki: &Pki,
    cert: &WorkloadCert,
) -> anyhow::Result<InboundShim> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr).await?;
    let stats = Arc::new(InboundStats::default());
    let st = stats.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let stats = st.clone();
            tokio::spawn(async move {
                let _ = serve_inbound(tcp, addr, acceptor, stats).await;
            });
        }
    });
    Ok(InboundShim { addr, stats, task })
}

async fn serve_inbound(
    tcp: TcpStream,
    dialed: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    stats: Arc<InboundStats>,
) -> anyhow::Result<()> {
    let tls = acceptor.accept(tcp).await?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(spiffe::uri_san);
    stats.connections.fetch_add(1, Ordering::Relaxed);
    *stats.last_peer.lock().unwrap_or_else(|p| p.into_inner()) = peer;
    let mut conn = h2::server::Builder::new()
        .max_concurrent_streams(100)
        .initial_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .handshake::<_, Bytes>(tls)
        .await?;
    while let Some(next) = conn.accept().await {
        let (req, mut respond) = next?;
        stats.streams.fetch_add(1, Ordering::Relaxed);
        let stats = stats.clone();
        tokio::spawn(async move {
            let status = |code: StatusCode| {
                let mut r = Response::new(());
                *r.status_mut() = code;
                r
            };
            if req.method() != Method::CONNECT {
                let _ = respond.send_response(status(StatusCode::METHOD_NOT_ALLOWED), true);
                return;
            }
            if let Some(tp) = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
            {
                *stats
                    .last_traceparent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(tp.to_owned());
            }
            let target = req
                .uri()
                .authority()
                .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
            let Some(target) = target.filter(|t| t.ip() == dialed.ip()) else {
                // ztunnel: "ip mismatch"
                stats.bad_authority.fetch_add(1, Ordering::Relaxed);
                let _ = respond.send_response(status(StatusCode::BAD_REQUEST), true);
                return;
            };
            if [15008, 15006, 15001, 15080].contains(&target.port()) {
                let _ = respond.send_response(status(StatusCode::SERVICE_UNAVAILABLE), true);
                return;
            }
            let Ok(mut app) = TcpStream::connect(target).await else {
                let _ = respond.send_response(status(StatusCode::SERVICE_UNAVAILABLE), true);
                return;
            };
            // As ztunnel does: a response relayed in several writes must not wait for ACKs.
            let _ = app.set_nodelay(true);
            let Ok(send) = respond.send_response(Response::new(()), false) else {
                return;
            };
            let mut tunnel = H2Stream::from_parts(send, req.into_body());
            let _ = tokio::io::copy_bidirectional(&mut tunnel, &mut app).await;
        });
    }
    Ok(())
}

/// A source workload's ztunnel: connections to `listen` become CONNECTs to `waypoint` for
/// `target`, from `client` (the address put in `forwarded`).
#[derive(Debug)]
pub struct OutboundShim {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

impl Drop for OutboundShim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn outbound(
    listen: SocketAddr,
    waypoint: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    target: SocketAddr,
    client: SocketAddr,
    host: Option<String>,
) -> anyhow::Result<OutboundShim> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let client_conn: Arc<tokio::sync::Mutex<Option<HboneClient>>> = Arc::default();
    let traces = Arc::new(AtomicU64::new(1));
    let task = tokio::spawn(async move {
        while let Ok((mut app, _)) = listener.accept().await {
            let _ = app.set_nodelay(true);
            let config = config.clone();
            let pool = client_conn.clone();
            let n = traces.fetch_add(1, Ordering::Relaxed);
            let host = host.clone();
            tokio::spawn(async move {
                // One pooled connection, like ztunnel's per (client, waypoint) pool; a dead
                // connection is replaced on the next use.
                let hbone = {
                    let mut slot = pool.lock().await;
                    match slot.as_ref() {
                        Some(c) => c.clone(),
                        None => match HboneClient::connect(waypoint, config).await {
                            Ok(c) => {
                                *slot = Some(c.clone());
                                c
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "outbound shim: HBONE connect failed");
                                return;
                            }
                        },
                    }
                };
                let forwarded = match &host {
                    Some(h) => format!("for=\"{client}\";host={h}"),
                    None => format!("for=\"{client}\""),
                };
                let traceparent = format!("00-{:032x}-{:016x}-01", 0xabc0_0000_u64 + n, n);
                let opened = hbone
                    .open(
                        &target.to_string(),
                        &[
                            ("forwarded", &forwarded),
                            ("traceparent", &traceparent),
                            (
                                "baggage",
                                "k8s.namespace.name=ambient-demo,k8s.cluster.name=Kubernetes",
                            ),
                        ],
                    )
                    .await;
                match opened {
                    Ok(Opened {
                        stream: Some(mut s),
                        ..
                    }) => {
                        let _ = tokio::io::copy_bidirectional(&mut app, &mut s).await;
                    }
                    Ok(o) => tracing::warn!(status = %o.status, "outbound shim: CONNECT refused"),
                    Err(e) => {
                        pool.lock().await.take();
                        tracing::warn!(error = %e, "outbound shim: CONNECT failed");
                    }
                }
            });
        }
    });
    Ok(OutboundShim { addr, task })
}
