//! The SPIFFE Workload API (a SPIRE agent, or the SPIFFE CSI driver's socket): one
//! `FetchX509SVID` stream over a Unix socket, on which the agent sends the whole set of SVIDs and
//! bundles again whenever any of them changes. The agent rotates; we install what it sends. When
//! the stream breaks it is re-opened with backoff, and the current certificate stays meanwhile.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::UnixStream;
use tonic::transport::Endpoint;

use super::proto::{
    FETCH_X509_SVID, WORKLOAD_API_HEADER, X509Svid, X509SvidRequest, X509SvidResponse,
};
use super::rotation::Backoff;
use super::{Identity, IdentityError, Material, error_chain};

/// The socket the SPIFFE CSI driver mounts in Istio's SPIRE integration.
pub const DEFAULT_SOCKET: &str = "/run/secrets/workload-spiffe-uds/socket";

/// Why the Workload API gave us nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error("connecting to {path}: {message}")]
    Connect { path: PathBuf, message: String },
    #[error("{path} answered {code:?}: {message}")]
    Status {
        path: PathBuf,
        code: tonic::Code,
        message: String,
    },
    #[error("{path} closed the stream")]
    Ended { path: PathBuf },
    #[error("the response holds no SVID")]
    NoSvid,
    #[error("SVID {spiffe_id}: {what} is not valid DER")]
    Der {
        spiffe_id: String,
        what: &'static str,
    },
    #[error("SVID {spiffe_id}: the certificate names {found:?}")]
    Mismatch {
        spiffe_id: String,
        found: Option<String>,
    },
}

/// `unix:///path` (the form of `SPIFFE_ENDPOINT_SOCKET`) or a plain path.
pub fn socket_path(addr: &str) -> PathBuf {
    PathBuf::from(
        addr.strip_prefix("unix://")
            .or_else(|| addr.strip_prefix("unix:"))
            .unwrap_or(addr),
    )
}

/// Follows the agent for as long as the process runs.
pub(super) async fn run(identity: Arc<Identity>, socket: PathBuf) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let err = follow(&identity, &socket, &mut backoff).await;
        let wait = backoff.next();
        identity.failed("SVID from the SPIFFE Workload API", &err, Some(wait));
        tokio::time::sleep(wait).await;
    }
}

/// One stream, until it breaks.
async fn follow(identity: &Identity, socket: &Path, backoff: &mut Backoff) -> IdentityError {
    let mut stream = match open(socket).await {
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return WorkloadApiError::Ended {
                    path: socket.to_owned(),
                }
                .into();
            }
            Err(s) => return status(socket, &s).into(),
        };
        match material(msg).and_then(|m| identity.install(m)) {
            Ok(_) => backoff.reset(),
            // A bad update does not break the stream: the agent may send a good one next.
            Err(e) => identity.failed("SVID update from the SPIFFE Workload API", &e, None),
        }
    }
}

async fn open(socket: &Path) -> Result<tonic::Streaming<X509SvidResponse>, WorkloadApiError> {
    // The URI is required by tonic and ignored by the connector.
    let channel = Endpoint::from_static("http://workload-api.invalid")
        .connect_with_connector(UnixConnector(socket.to_owned()))
        .await
        .map_err(|e| WorkloadApiError::Connect {
            path: socket.to_owned(),
            message: error_chain(&e),
        })?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| WorkloadApiError::Connect {
        path: socket.to_owned(),
        message: error_chain(&e),
    })?;
    let mut req = tonic::Request::new(X509SvidRequest {});
    req.metadata_mut().insert(
        WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let resp = grpc
        .server_streaming(
            req,
            PathAndQuery::from_static(FETCH_X509_SVID),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map_err(|s| status(socket, &s))?;
    Ok(resp.into_inner())
}

fn status(socket: &Path, s: &tonic::Status) -> WorkloadApiError {
    WorkloadApiError::Status {
        path: socket.to_owned(),
        code: s.code(),
        message: s.message().to_owned(),
    }
}

/// The default (first) SVID with its own bundle and every federated bundle.
fn material(msg: X509SvidResponse) -> Result<Material, IdentityError> {
    let X509SvidResponse {
        svids,
        federated_bundles,
        ..
    } = msg;
    let X509Svid {
        spiffe_id,
        x509_svid,
        x509_svid_key,
        bundle,
        ..
    } = svids.into_iter().next().ok_or(WorkloadApiError::NoSvid)?;
    let der = |bytes: &[u8], what| {
        split_der(bytes).ok_or_else(|| WorkloadApiError::Der {
            spiffe_id: spiffe_id.clone(),
            what,
        })
    };
    let chain = der(&x509_svid, "x509_svid")?;
    let mut roots = der(&bundle, "bundle")?;
    // Sorted so that the same response always gives the same bundle.
    let mut federated: Vec<_> = federated_bundles.into_iter().collect();
    federated.sort();
    for (_, b) in federated {
        roots.extend(der(&b, "federated bundle")?);
    }
    let found = chain.first().and_then(crate::tls::spiffe::uri_san);
    if found.as_deref() != Some(spiffe_id.as_str()) {
        return Err(WorkloadApiError::Mismatch { spiffe_id, found }.into());
    }
    Ok(Material {
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(x509_svid_key)),
        roots,
    })
}

/// Concatenated DER certificates, split; `None` if anything is not a certificate.
fn split_der(mut bytes: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(bytes).ok()?;
        let len = bytes.len() - rest.len();
        out.push(CertificateDer::from(bytes[..len].to_vec()));
        bytes = rest;
    }
    (!out.is_empty()).then_some(out)
}

#[derive(Debug, Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::dev_ca::DevCa;
    use rustls::pki_types::pem::PemObject as _;

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .flat_map(|c| c.unwrap().to_vec())
            .collect()
    }

    #[test]
    fn responses_become_material() {
        let ca = DevCa::new("spire").unwrap();
        let other = DevCa::new("federated").unwrap();
        let svid = ca
            .issue("spiffe://td/ns/a/sa/b", Duration::from_secs(600))
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes()).unwrap();
        let msg = |id: &str, chain: Vec<u8>| X509SvidResponse {
            svids: vec![X509Svid {
                spiffe_id: id.into(),
                x509_svid: chain,
                x509_svid_key: key.secret_der().to_vec(),
                bundle: der_of(ca.root_pem()),
                hint: String::new(),
            }],
            crl: vec![],
            federated_bundles: [("spiffe://other".to_owned(), der_of(other.root_pem()))].into(),
        };
        let m = material(msg("spiffe://td/ns/a/sa/b", der_of(&svid.chain_pem))).unwrap();
        assert_eq!(m.chain.len(), 1);
        assert_eq!(m.roots.len(), 2, "own and federated bundle");

        let e = material(msg("spiffe://td/ns/a/sa/c", der_of(&svid.chain_pem))).unwrap_err();
        assert!(
            e.to_string()
                .contains("names Some(\"spiffe://td/ns/a/sa/b\")"),
            "{e}"
        );
        let e = material(msg("spiffe://td/ns/a/sa/b", b"junk".to_vec())).unwrap_err();
        assert!(e.to_string().contains("x509_svid is not valid DER"), "{e}");
        let e = material(X509SvidResponse::default()).unwrap_err();
        assert!(e.to_string().contains("no SVID"), "{e}");
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(socket_path("unix:///run/a.sock"), Path::new("/run/a.sock"));
        assert_eq!(socket_path("/run/a.sock"), Path::new("/run/a.sock"));
    }
}
