//! A SPIFFE Workload API server on a Unix socket, as a SPIRE agent serves it: `FetchX509SVID`
//! streams the current SVID set, and again whenever the test pushes a new one. Calls without the
//! `workload.spiffe.io: true` header are refused, as the spec requires.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tonic::Status;
use tonic::body::Body;
use waypoint::identity::proto::{
    FETCH_X509_SVID, WORKLOAD_API_HEADER, X509Svid, X509SvidRequest, X509SvidResponse,
};
use waypoint::tls::dev_ca::DevCa;

/// What streams see: the current response, and how many times streams were broken.
#[derive(Debug, Clone, Default)]
struct Current {
    response: Option<X509SvidResponse>,
    breaks: u64,
}

/// A running agent. Dropping it stops the server (the socket file stays).
#[derive(Debug)]
pub struct SpireAgent {
    pub socket: PathBuf,
    current: watch::Sender<Current>,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SpireAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SpireAgent {
    pub async fn start(socket: &Path) -> anyhow::Result<SpireAgent> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let current = watch::Sender::new(Current::default());
        let calls = Arc::new(AtomicU64::new(0));
        let svc = AgentService {
            current: current.clone(),
            calls: calls.clone(),
        };
        let incoming = futures::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        });
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(SpireAgent {
            socket: socket.to_owned(),
            current,
            calls,
            task,
        })
    }

    /// Sends `r` on every open stream, and to streams opened later.
    pub fn push(&self, r: X509SvidResponse) {
        self.current.send_modify(|c| c.response = Some(r));
    }

    /// Ends every open stream with UNAVAILABLE (an agent restart, as clients see it).
    pub fn break_streams(&self) {
        self.current.send_modify(|c| c.breaks += 1);
    }

    /// FetchX509SVID calls accepted so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// An SVID for `spiffe_id` from `ca`, with `bundle` (PEM roots) as its trust bundle.
pub fn svid(
    ca: &DevCa,
    spiffe_id: &str,
    lifetime: Duration,
    bundle: &[&str],
) -> anyhow::Result<X509SvidResponse> {
    let issued = ca.issue(spiffe_id, lifetime)?;
    let der = |pem: &str| -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            out.extend_from_slice(c?.as_ref());
        }
        Ok(out)
    };
    let mut roots = Vec::new();
    for b in bundle {
        roots.extend(der(b)?);
    }
    Ok(X509SvidResponse {
        svids: vec![X509Svid {
            spiffe_id: spiffe_id.to_owned(),
            x509_svid: der(&issued.chain_pem)?,
            x509_svid_key: PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?
                .secret_der()
                .to_vec(),
            bundle: roots,
            hint: String::new(),
        }],
        ..Default::default()
    })
}

#[derive(Debug, Clone)]
struct AgentService {
    current: watch::Sender<Current>,
    calls: Arc<AtomicU64>,
}

impl tonic::server::NamedService for AgentService {
    const NAME: &'static str = "SpiffeWorkloadAPI";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type SvidStream = Pin<Box<dyn Stream<Item = Result<X509SvidResponse, Status>> + Send>>;

impl tower_service::Service<http::Request<Body>> for AgentService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != FETCH_X509_SVID {
                return Ok(Status::unimplemented(req.uri().path().to_owned()).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.server_streaming(Fetch(this), req).await)
        })
    }
}

struct Fetch(AgentService);

impl tower_service::Service<tonic::Request<X509SvidRequest>> for Fetch {
    type Response = tonic::Response<SvidStream>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<X509SvidRequest>) -> Self::Future {
        let header = req
            .metadata()
            .get(WORKLOAD_API_HEADER)
            .and_then(|v| v.to_str().ok());
        if header != Some("true") {
            return std::future::ready(Err(Status::invalid_argument(
                "security header missing from request",
            )));
        }
        self.0.calls.fetch_add(1, Ordering::Relaxed);
        let mut rx = self.0.current.subscribe();
        let breaks = rx.borrow().breaks;
        // Start with whatever is current (marked unseen so it is sent at once).
        rx.mark_changed();
        let stream = futures::stream::unfold(Some(rx), move |rx| async move {
            let mut rx = rx?;
            loop {
                rx.changed().await.ok()?;
                let c = rx.borrow_and_update().clone();
                if c.breaks != breaks {
                    return Some((Err(Status::unavailable("agent restarting")), None));
                }
                if let Some(r) = c.response {
                    return Some((Ok(r), Some(rx)));
                }
            }
        });
        std::future::ready(Ok(tonic::Response::new(Box::pin(stream) as SvidStream)))
    }
}
