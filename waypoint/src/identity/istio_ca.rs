//! Istio's CA: `IstioCertificateService/CreateCertificate` on istiod's port 15012.
//!
//! The request carries a CSR for our SPIFFE ID with a fresh ECDSA P-256 key that never leaves
//! memory, the projected service-account token (audience `istio-ca`) as a bearer token, and the
//! cluster ID header Istio's agents send. istiod is verified with the mesh root from a file (the
//! `istio-ca-root-cert` ConfigMap, mounted), re-read for every connection so that a root rotation
//! reaches the CA client too. The token file is re-read for every request: kubelet rotates it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use super::proto::{CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse};
use super::rotation::{Backoff, FileWatch, renew_in};
use super::{Identity, IdentityError, Material, error_chain};

/// How to reach the CA and whom to ask for.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// `host:port`; the host is also the name istiod's serving certificate must carry.
    pub address: String,
    /// PEM file of the mesh root(s), used to verify istiod and as our trust bundle.
    pub root_cert: PathBuf,
    /// The projected service-account token file.
    pub token: PathBuf,
    /// Sent as the `ClusterID` header (istiod's multicluster token review needs it).
    pub cluster_id: String,
    /// The identity we ask for: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub spiffe_id: String,
    /// Requested lifetime; istiod caps it at its own maximum.
    pub lifetime: Duration,
    /// Bound on one request, connection included.
    pub timeout: Duration,
    /// First wait after a failure; doubles up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl CaOptions {
    /// Istio's defaults, for `spiffe_id`.
    pub fn new(spiffe_id: String) -> CaOptions {
        CaOptions {
            address: "istiod.istio-system.svc:15012".into(),
            root_cert: "/var/run/secrets/istio/root-cert.pem".into(),
            token: "/var/run/secrets/tokens/istio-token".into(),
            cluster_id: "Kubernetes".into(),
            spiffe_id,
            lifetime: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Why one request to the CA failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("bad CA address {0:?}: expected host:port")]
    Address(String),
    #[error("reading the service account token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the service account token in {0} is not a valid header value")]
    TokenValue(PathBuf),
    #[error("the CA at {address} rejected our token ({token}): {message}")]
    Unauthenticated {
        address: String,
        token: PathBuf,
        message: String,
    },
    #[error("the CA at {address} answered {code:?}: {message}")]
    Status {
        address: String,
        code: tonic::Code,
        message: String,
    },
    #[error("the CA at {address} answered with no certificate")]
    EmptyChain { address: String },
    #[error("the CA's certificate chain is not PEM: {0}")]
    Pem(rustls::pki_types::pem::Error),
    #[error("building the CSR: {0}")]
    Csr(#[from] rcgen::Error),
}

/// Fetches and renews the certificate for as long as the process runs.
pub(super) async fn run(identity: Arc<Identity>, opts: CaOptions, poll: Duration) {
    let client = match CaClient::new(opts.clone()) {
        Ok(c) => c,
        Err(e) => {
            // Identity::new checked the address, so this cannot happen; stay not ready if it does.
            identity.failed("Istio CA", &IdentityError::Ca(e), None);
            return;
        }
    };
    let mut backoff = Backoff::new(opts.first_backoff, opts.max_backoff);
    let mut roots = FileWatch::new(vec![opts.root_cert.clone()]);
    // The last certificate installed, to rebuild with new roots without asking the CA.
    let mut last: Option<Issued> = None;
    loop {
        let attempt = async {
            let issued = client.fetch().await?;
            identity
                .install(issued.material.clone())
                .map(|c| (c, issued))
        };
        let renew_at = match attempt.await {
            Ok((c, issued)) => {
                backoff.reset();
                last = Some(issued);
                tokio::time::Instant::now() + renew_in(&c)
            }
            Err(e) => {
                let wait = backoff.next();
                identity.failed("certificate from the Istio CA", &e, Some(wait));
                tokio::time::Instant::now() + wait
            }
        };
        // Until it is time to renew, follow the mesh root file: during a root rotation istiod's
        // ConfigMap gains the new root before anything is signed with it.
        loop {
            let now = tokio::time::Instant::now();
            if now >= renew_at {
                break;
            }
            tokio::time::sleep((renew_at - now).min(poll)).await;
            if !roots.changed() {
                continue;
            }
            let Some(issued) = &last else { continue };
            let rebuilt = super::read_pem_certs(&opts.root_cert).and_then(|file| {
                let mut m = issued.material.clone();
                m.roots = merge_roots(file, issued.chain_root.clone());
                identity.install(m)
            });
            match rebuilt {
                Ok(c) => {
                    tracing::info!(roots = c.roots, "mesh roots changed; trust bundle updated")
                }
                Err(e) => identity.failed("mesh root update", &e, None),
            }
        }
    }
}

/// The file's roots, plus the root that ended the CA's chain if the file lacks it.
fn merge_roots(
    mut roots: Vec<CertificateDer<'static>>,
    chain_root: Option<CertificateDer<'static>>,
) -> Vec<CertificateDer<'static>> {
    if let Some(r) = chain_root
        && !roots.contains(&r)
    {
        roots.push(r);
    }
    roots
}

/// What the CA answered, ready to install.
#[derive(Debug)]
pub struct Issued {
    /// Roots are the mesh root file's plus `chain_root`.
    pub material: Material,
    /// The root that ended the CA's chain, if it sent one.
    pub chain_root: Option<CertificateDer<'static>>,
}

/// A gRPC client for one CA address.
#[derive(Debug)]
pub struct CaClient {
    opts: CaOptions,
    channel: Channel,
}

impl CaClient {
    /// Connects lazily: nothing is dialed until the first request.
    pub fn new(opts: CaOptions) -> Result<CaClient, CaError> {
        let server_name = server_name(&opts.address)?;
        // TLS is done by the connector, so tonic sees a plain h2 connection.
        let endpoint = Endpoint::from_shared(format!("http://{}", opts.address))
            .map_err(|_| CaError::Address(opts.address.clone()))?
            .connect_timeout(opts.timeout)
            .timeout(opts.timeout);
        let connector = TlsConnector {
            address: opts.address.clone(),
            server_name,
            root_cert: opts.root_cert.clone(),
        };
        let channel = endpoint.connect_with_connector_lazy(connector);
        Ok(CaClient { opts, channel })
    }

    /// One CreateCertificate round trip, with a new key.
    pub async fn fetch(&self) -> Result<Issued, IdentityError> {
        let address = &self.opts.address;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Csr)?;
        let csr = csr(&self.opts.spiffe_id, &key).map_err(CaError::Csr)?;
        let token = std::fs::read_to_string(&self.opts.token).map_err(|source| CaError::Token {
            path: self.opts.token.clone(),
            source,
        })?;
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.opts.lifetime.as_secs()).unwrap_or(i64::MAX),
        });
        let bearer = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| CaError::TokenValue(self.opts.token.clone()))?;
        req.metadata_mut().insert("authorization", bearer);
        if let Ok(v) = MetadataValue::try_from(self.opts.cluster_id.as_str()) {
            req.metadata_mut().insert("clusterid", v);
        }
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let status = |s: tonic::Status| match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                CaError::Unauthenticated {
                    address: address.clone(),
                    token: self.opts.token.clone(),
                    message: s.message().to_owned(),
                }
            }
            code => CaError::Status {
                address: address.clone(),
                code,
                message: transport_message(&s),
            },
        };
        grpc.ready().await.map_err(|e| {
            status(tonic::Status::unavailable(format!(
                "connecting: {}",
                error_chain(&e)
            )))
        })?;
        let resp: tonic::Response<IstioCertificateResponse> = grpc
            .unary(
                req,
                PathAndQuery::from_static(CREATE_CERTIFICATE),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .map_err(status)?;
        let mut certs = Vec::new();
        for pem in &resp.get_ref().cert_chain {
            use rustls::pki_types::pem::PemObject as _;
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                certs.push(c.map_err(CaError::Pem)?);
            }
        }
        if certs.is_empty() {
            return Err(CaError::EmptyChain {
                address: address.clone(),
            }
            .into());
        }
        // The chain ends with the root; peers have it, so it is not sent in handshakes.
        let chain_root = (certs.len() > 1 && is_self_signed(&certs[certs.len() - 1]))
            .then(|| certs.pop())
            .flatten();
        let roots = merge_roots(
            super::read_pem_certs(&self.opts.root_cert)?,
            chain_root.clone(),
        );
        let issued = crate::tls::spiffe::uri_san(&certs[0]);
        if issued.as_deref() != Some(self.opts.spiffe_id.as_str()) {
            // istiod names the certificate after the token's identity, not the CSR; a different
            // name means the flags and the service account disagree, which peers will notice.
            tracing::warn!(requested = %self.opts.spiffe_id, issued = ?issued, "the CA issued a different identity than requested");
        }
        Ok(Issued {
            material: Material {
                chain: certs,
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                roots,
            },
            chain_root,
        })
    }
}

/// The name istiod's certificate must carry: the host part of `address`.
pub fn server_name(address: &str) -> Result<ServerName<'static>, CaError> {
    let bad = || CaError::Address(address.to_owned());
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    ServerName::try_from(host.to_owned()).map_err(|_| bad())
}

/// A PEM CSR for `spiffe_id` as its only subject alternative name.
fn csr(spiffe_id: &str, key: &KeyPair) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
    params.serialize_request(key)?.pem()
}

fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, c)| c.subject() == c.issuer())
        .unwrap_or(false)
}

/// tonic's transport errors say only "transport error"; the cause is further down.
fn transport_message(s: &tonic::Status) -> String {
    use std::error::Error as _;
    match s.source() {
        Some(src) => format!("{}: {}", s.message(), error_chain(src)),
        None => s.message().to_owned(),
    }
}

/// Dials the CA and runs TLS with the mesh root from the file as it is now.
#[derive(Debug, Clone)]
struct TlsConnector {
    address: String,
    server_name: ServerName<'static>,
    root_cert: PathBuf,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(super::read_pem_certs(&this.root_cert)?);
            let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let tcp = TcpStream::connect(&this.address).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(this.server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_names_only_the_spiffe_id() {
        use x509_parser::prelude::FromDer as _;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = csr("spiffe://td/ns/a/sa/b", &key).unwrap();
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap();
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .unwrap();
        let sans = crate::tls::spiffe::csr_sans(&pem).unwrap();
        assert_eq!(sans, ["URI(spiffe://td/ns/a/sa/b)"]);
        assert_eq!(
            req.certification_request_info
                .subject_pki
                .algorithm
                .algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        for a in ["istiod", ":15012", "[::1", "istiod:http", "bad host:15012"] {
            let e = CaClient::new(CaOptions {
                address: a.into(),
                ..CaOptions::new("spiffe://td/ns/a/sa/b".into())
            });
            assert!(matches!(e, Err(CaError::Address(_))), "{a}: {e:?}");
        }
        for a in [
            "istiod.istio-system.svc:15012",
            "127.0.0.1:15012",
            "[::1]:15012",
        ] {
            assert!(server_name(a).is_ok(), "{a}");
        }
    }
}
