//! An in-process Istio CA: `istio.v1.auth.IstioCertificateService/CreateCertificate` over gRPC and
//! TLS, as istiod serves it on port 15012.
//!
//! Like istiod it authenticates the caller by its bearer token and names the certificate after
//! the identity the token stands for, not after what the CSR asks; it caps the lifetime; it
//! answers `[leaf, root]`. Tests can take it down (new connections dropped, calls on open ones
//! answered UNAVAILABLE), change the lifetime, and switch the signing root.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tonic::Status;
use tonic::body::Body;
use waypoint::identity::proto::{
    CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse,
};
use waypoint::tls::dev_ca::DevCa;

/// What one CreateCertificate call carried.
#[derive(Debug, Clone)]
pub struct Seen {
    pub cluster_id: Option<String>,
    pub validity_duration: i64,
    /// The CSR's subject alternative names, as x509-parser prints them.
    pub csr_sans: Vec<String>,
}

#[derive(Debug)]
struct State {
    signer: Arc<DevCa>,
    /// Bearer token -> the SPIFFE ID it authenticates.
    tokens: HashMap<String, String>,
    max_lifetime: Duration,
    down: bool,
    issued: u64,
    rejected: u64,
    seen: Vec<Seen>,
}

/// A running CA. Dropping it stops the server.
#[derive(Debug)]
pub struct MeshCa {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MeshCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MeshCa {
    /// Serves on 127.0.0.1 with a certificate for `127.0.0.1` from `serving`, signing workload
    /// certificates with `signer`.
    pub async fn start(signer: Arc<DevCa>, serving: &DevCa) -> anyhow::Result<MeshCa> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cert = serving.issue_server(&["127.0.0.1"], Duration::from_secs(3600))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(waypoint::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
                    .collect::<Result<_, _>>()?,
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?,
            )?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let state = Arc::new(Mutex::new(State {
            signer,
            tokens: HashMap::new(),
            max_lifetime: Duration::from_secs(24 * 3600),
            down: false,
            issued: 0,
            rejected: 0,
            seen: Vec::new(),
        }));
        let gate = state.clone();
        // Handshakes run inline: a test CA sees a handful of connections.
        let incoming = futures::stream::unfold(
            (listener, acceptor, gate),
            |(listener, acceptor, gate)| async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    if lock(&gate).down {
                        continue;
                    }
                    let accept = acceptor.accept(tcp);
                    if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), accept).await
                    {
                        return Some((Ok::<_, std::io::Error>(tls), (listener, acceptor, gate)));
                    }
                }
            },
        );
        let svc = CaService(state.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(MeshCa { addr, state, task })
    }

    /// Makes `token` authenticate `spiffe_id`.
    pub fn allow_token(&self, token: &str, spiffe_id: &str) {
        lock(&self.state)
            .tokens
            .insert(token.to_owned(), spiffe_id.to_owned());
    }

    /// The longest lifetime the CA grants (istiod's `--max-workload-cert-ttl`).
    pub fn set_max_lifetime(&self, d: Duration) {
        lock(&self.state).max_lifetime = d;
    }

    /// Down: new connections are dropped and calls on open ones fail UNAVAILABLE.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// Signs from now on with `ca` (a root rotation).
    pub fn set_signer(&self, ca: Arc<DevCa>) {
        lock(&self.state).signer = ca;
    }

    /// Certificates issued so far.
    pub fn issued(&self) -> u64 {
        lock(&self.state).issued
    }

    /// Calls refused for their token.
    pub fn rejected(&self) -> u64 {
        lock(&self.state).rejected
    }

    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state).seen.clone()
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn create(
    state: &Mutex<State>,
    req: tonic::Request<IstioCertificateRequest>,
) -> Result<IstioCertificateResponse, Status> {
    let mut st = lock(state);
    if st.down {
        return Err(Status::unavailable("CA is down"));
    }
    let header = |k: &str| {
        req.metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let token = header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    let Some(spiffe_id) = token.and_then(|t| st.tokens.get(&t).cloned()) else {
        st.rejected += 1;
        return Err(Status::unauthenticated(
            "request authenticate failure: the token is not valid for this cluster",
        ));
    };
    let body = req.get_ref();
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&body.csr)
        .map_err(|e| Status::invalid_argument(format!("bad CSR: {e}")))?;
    let csr_sans = waypoint::tls::spiffe::csr_sans(&body.csr).unwrap_or_default();
    st.seen.push(Seen {
        cluster_id: header("clusterid"),
        validity_duration: body.validity_duration,
        csr_sans,
    });
    let asked = Duration::from_secs(u64::try_from(body.validity_duration).unwrap_or(0));
    let lifetime = if asked.is_zero() {
        st.max_lifetime
    } else {
        asked.min(st.max_lifetime)
    };
    let leaf = st
        .signer
        .sign(&spiffe_id, lifetime, &csr.public_key)
        .map_err(|e| Status::internal(e.to_string()))?;
    st.issued += 1;
    Ok(IstioCertificateResponse {
        cert_chain: vec![leaf, st.signer.root_pem().to_owned()],
    })
}

/// The service, routed by path as generated tonic servers do.
#[derive(Debug, Clone)]
struct CaService(Arc<Mutex<State>>);

impl tonic::server::NamedService for CaService {
    const NAME: &'static str = "istio.v1.auth.IstioCertificateService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<Body>> for CaService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            if req.uri().path() != CREATE_CERTIFICATE {
                return Ok(Status::unimplemented(req.uri().path().to_owned()).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Create(state), req).await)
        })
    }
}

struct Create(Arc<Mutex<State>>);

impl tower_service::Service<tonic::Request<IstioCertificateRequest>> for Create {
    type Response = tonic::Response<IstioCertificateResponse>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        std::future::ready(create(&self.0, req).map(tonic::Response::new))
    }
}
