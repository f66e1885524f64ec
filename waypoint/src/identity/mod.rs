//! The waypoint's workload identity: where its certificate comes from, how it is kept fresh, and
//! the TLS configs built from it.
//!
//! Every source yields the same thing, a [`Material`] (chain, key, trust roots). Each new version
//! is checked (the key matches, the leaf carries a SPIFFE ID and chains to the roots), built into
//! TLS configs and swapped in atomically: new HBONE connections, accepted and dialed, use it, while
//! connections already open keep the version they started with until they end. A version that
//! fails the checks is refused and the previous one stays.
//!
//! Sources ([`IdentitySource`]):
//! - files, polled for changes (a mounted Secret, cert-manager);
//! - an in-memory dev CA (`--dev-ca`), re-issued at half the lifetime;
//! - Istio's CA ([`istio_ca`]): a CSR for our own SPIFFE ID, renewed at half the lifetime with
//!   jitter, retried with backoff, the mesh root file watched for root rotation;
//! - a SPIFFE Workload API agent such as SPIRE ([`workload_api`]): the agent pushes new SVIDs and
//!   bundles down one stream, re-opened with backoff when it breaks.
//!
//! Until the first certificate arrives the waypoint is not ready and refuses HBONE, both ways.

pub mod istio_ca;
pub mod proto;
mod rotation;
pub mod workload_api;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::metrics::Metrics;
use crate::tls::dev_ca::DevCa;
use crate::tls::verify::MeshServerVerifier;

pub use istio_ca::CaOptions;

/// Why an identity could not be obtained or used. The previous identity, if any, stays in use.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: bad PEM: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("trust bundle: {0}")]
    Roots(String),
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    #[error("certificate does not chain to the trust bundle: {0}")]
    Untrusted(rustls::Error),
    #[error("certificate and key do not form a usable identity: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Issue(#[from] crate::tls::dev_ca::IssueError),
    #[error("Istio CA: {0}")]
    Ca(#[from] istio_ca::CaError),
    #[error("SPIFFE Workload API: {0}")]
    WorkloadApi(#[from] workload_api::WorkloadApiError),
}

/// Where the identity comes from.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// PEM files, re-read when they change (cert-manager or a mounted Secret rotates them).
    Files {
        cert_chain: PathBuf,
        key: PathBuf,
        trust_bundle: PathBuf,
    },
    /// An in-memory CA that issues `spiffe_id` for local use.
    DevCa { ca: Arc<DevCa>, spiffe_id: String },
    /// Istio's CA (istiod on port 15012).
    IstioCa(Box<CaOptions>),
    /// A SPIFFE Workload API agent on a Unix socket (SPIRE).
    WorkloadApi { socket: PathBuf },
}

/// One version of the identity, as every source delivers it.
#[derive(Debug)]
pub struct Material {
    /// Leaf first, then intermediates (no root).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Every root peers may chain to; several during a root rotation.
    pub roots: Vec<CertificateDer<'static>>,
}

impl Clone for Material {
    fn clone(&self) -> Self {
        Material {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
        }
    }
}

/// TLS configs for one version of the identity.
#[derive(Debug)]
pub struct TlsConfigs {
    /// HBONE listener: TLS 1.3, ALPN h2, client certificate required and chained to the bundle.
    pub server: Arc<ServerConfig>,
    /// HBONE to destination ztunnels: TLS 1.3, ALPN h2, our certificate, chain checked against the
    /// bundle (the peer's SPIFFE ID is checked by the caller).
    pub client: Arc<ClientConfig>,
    /// Our SPIFFE ID.
    pub spiffe_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// How many roots the bundle holds.
    pub roots: usize,
}

impl TlsConfigs {
    /// Time left until the leaf expires; zero once it has.
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// The leaf's whole validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// The current identity, swapped atomically; `None` until the first certificate.
#[derive(Debug)]
pub struct Identity {
    current: ArcSwapOption<TlsConfigs>,
    source: IdentitySource,
    metrics: Arc<Metrics>,
    /// File sources: modification times taken before the first read, so that a change made
    /// while it ran is still seen by [`Identity::run`].
    files_seen: std::sync::Mutex<Option<rotation::FileWatch>>,
}

impl Identity {
    /// Prepares the identity. File and dev-CA sources are loaded now and fail here when unusable
    /// (nothing would fix them without an operator). The CA and the Workload API are asked by
    /// [`Identity::run`], which keeps retrying; until then the identity is not ready.
    pub fn new(source: IdentitySource, metrics: Arc<Metrics>) -> Result<Identity, IdentityError> {
        let files_seen = match &source {
            IdentitySource::Files {
                cert_chain,
                key,
                trust_bundle,
            } => Some(rotation::FileWatch::new(vec![
                cert_chain.clone(),
                key.clone(),
                trust_bundle.clone(),
            ])),
            _ => None,
        };
        let identity = Identity {
            current: ArcSwapOption::empty(),
            source,
            metrics,
            files_seen: std::sync::Mutex::new(files_seen),
        };
        match &identity.source {
            IdentitySource::Files { .. } | IdentitySource::DevCa { .. } => {
                identity.install(read_local(&identity.source)?)?;
            }
            // A malformed address would never heal: refuse it now, not in a retry loop.
            IdentitySource::IstioCa(opts) => {
                istio_ca::server_name(&opts.address)?;
            }
            IdentitySource::WorkloadApi { .. } => {}
        }
        Ok(identity)
    }

    /// Like [`Identity::new`] with metrics nobody reads: for tests and tools.
    pub fn load(source: IdentitySource) -> Result<Identity, IdentityError> {
        Identity::new(source, Arc::default())
    }

    /// The configs new connections should use; `None` before the first certificate.
    pub fn current(&self) -> Option<Arc<TlsConfigs>> {
        self.current.load_full()
    }

    /// Ready to serve: a certificate is installed and has not expired.
    pub fn is_ready(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|c| c.not_after > SystemTime::now())
    }

    /// Checks `m`, builds its configs and makes them current.
    pub fn install(&self, m: Material) -> Result<Arc<TlsConfigs>, IdentityError> {
        let configs = Arc::new(build(m)?);
        let lifetime = configs.lifetime();
        tracing::info!(
            spiffe_id = %configs.spiffe_id,
            expires_in_s = configs.remaining().as_secs(),
            lifetime_s = lifetime.as_secs(),
            roots = configs.roots,
            "workload certificate installed"
        );
        self.metrics.identity_renewals.inc();
        self.metrics
            .identity_expiry
            .set(unix_seconds(configs.not_after));
        self.current.store(Some(configs.clone()));
        Ok(configs)
    }

    /// Records a failed attempt, louder as expiry nears: a certificate that expires takes every
    /// new connection down with it. `retry_in` is `None` when the next attempt waits for a
    /// change (a file, the agent's next update) rather than a timer.
    fn failed(&self, what: &str, e: &IdentityError, retry_in: Option<Duration>) {
        self.metrics.identity_renewal_failures.inc();
        let retry_in_ms = retry_in.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        match self.current() {
            None => {
                tracing::error!(error = %e, ?retry_in_ms, "{what}: no workload certificate yet; not ready")
            }
            Some(c) if c.remaining().is_zero() => tracing::error!(
                error = %e, ?retry_in_ms, spiffe_id = %c.spiffe_id,
                "{what}: the workload certificate has EXPIRED; peers refuse new connections"
            ),
            Some(c) if c.remaining() < c.lifetime() / 4 => tracing::error!(
                error = %e, ?retry_in_ms, expires_in_s = c.remaining().as_secs(),
                "{what}: the workload certificate expires soon and cannot be renewed"
            ),
            Some(c) => tracing::warn!(
                error = %e, ?retry_in_ms, expires_in_s = c.remaining().as_secs(),
                "{what} failed; the current certificate stays in use"
            ),
        }
    }

    /// Keeps the identity fresh for as long as the process runs. `poll` is how often files (the
    /// certificate files, or the mesh root) are checked for changes.
    pub async fn run(self: Arc<Self>, poll: Duration) {
        match self.source.clone() {
            IdentitySource::Files {
                cert_chain,
                key,
                trust_bundle,
            } => {
                let taken = self
                    .files_seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                let mut seen = taken.unwrap_or_else(|| {
                    rotation::FileWatch::new(vec![cert_chain, key, trust_bundle])
                });
                loop {
                    tokio::time::sleep(poll).await;
                    if seen.changed() {
                        self.reload();
                    }
                }
            }
            IdentitySource::DevCa { .. } => loop {
                let left = self.current().map(|c| c.remaining()).unwrap_or_default();
                tokio::time::sleep((left / 2).max(Duration::from_secs(1))).await;
                self.reload();
            },
            IdentitySource::IstioCa(opts) => istio_ca::run(self, *opts, poll).await,
            IdentitySource::WorkloadApi { socket } => workload_api::run(self, socket).await,
        }
    }

    /// Re-reads a file or dev-CA source now, keeping the current identity on any error. The
    /// remote sources renew on their own schedule and ignore this.
    pub fn reload(&self) {
        if matches!(
            self.source,
            IdentitySource::IstioCa(_) | IdentitySource::WorkloadApi { .. }
        ) {
            return;
        }
        if let Err(e) = read_local(&self.source).and_then(|m| self.install(m)) {
            self.failed("identity reload", &e, None);
        }
    }
}

/// An error with its causes: tonic's transport errors say only "transport error" at the top.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn read_file(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file; an empty one is an error.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    certs(&read_file(path)?, path)
}

fn certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| IdentityError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => IdentityError::Empty {
            path: path.to_owned(),
            what: "private key",
        },
        source => IdentityError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

/// Reads a file or dev-CA source.
fn read_local(source: &IdentitySource) -> Result<Material, IdentityError> {
    match source {
        IdentitySource::Files {
            cert_chain,
            key: key_path,
            trust_bundle,
        } => Ok(Material {
            chain: read_pem_certs(cert_chain)?,
            key: key(&read_file(key_path)?, key_path)?,
            roots: read_pem_certs(trust_bundle)?,
        }),
        IdentitySource::DevCa { ca, spiffe_id } => {
            let issued = ca.issue(spiffe_id, Duration::from_secs(24 * 3600))?;
            let p = Path::new("<dev-ca>");
            Ok(Material {
                chain: certs(issued.chain_pem.as_bytes(), p)?,
                key: key(issued.key_pem.as_bytes(), p)?,
                roots: certs(ca.root_pem().as_bytes(), p)?,
            })
        }
        IdentitySource::IstioCa(_) | IdentitySource::WorkloadApi { .. } => {
            unreachable!("remote sources are driven by Identity::run")
        }
    }
}

fn validity(cert: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Some((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

fn build(m: Material) -> Result<TlsConfigs, IdentityError> {
    let provider = crate::tls::provider();
    let leaf = m.chain.first().ok_or(IdentityError::NoSpiffeId)?;
    let spiffe_id = crate::tls::spiffe::uri_san(leaf).ok_or(IdentityError::NoSpiffeId)?;
    let (not_before, not_after) = validity(leaf).ok_or(IdentityError::NoSpiffeId)?;
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(m.roots);
    if roots.is_empty() {
        return Err(IdentityError::Roots(format!(
            "no usable root certificate ({bad} rejected)"
        )));
    }
    let root_count = roots.len();
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| IdentityError::Roots(e.to_string()))?;
    // Peers check our chain against the same bundle; a certificate they would refuse (a CA that
    // signs with a root we were not given) is refused here, before it replaces a working one.
    // Expiry is not judged here: an expired certificate is still better than none.
    client_verifier
        .verify_client_cert(
            leaf,
            &m.chain[1..],
            UnixTime::since_unix_epoch(
                not_before
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    + Duration::from_secs(1),
            ),
        )
        .map_err(IdentityError::Untrusted)?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    // ztunnel does not resume sessions; tickets would only cost memory.
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;

    let server_verifier =
        MeshServerVerifier::new(roots).map_err(|e| IdentityError::Roots(e.to_string()))?;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(server_verifier))
        .with_client_auth_cert(m.chain, m.key)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    client.enable_sni = false;
    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
        spiffe_id,
        not_before,
        not_after,
        roots: root_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, chain: &str, key: &str, roots: &str) -> IdentitySource {
        std::fs::create_dir_all(dir).unwrap();
        let p = |n: &str, t: &str| {
            let p = dir.join(n);
            std::fs::write(&p, t).unwrap();
            p
        };
        IdentitySource::Files {
            cert_chain: p("chain.pem", chain),
            key: p("key.pem", key),
            trust_bundle: p("roots.pem", roots),
        }
    }

    #[test]
    fn bad_material_is_named() {
        let dir = std::env::temp_dir().join(format!("waypoint-identity-{}", std::process::id()));
        let ca = DevCa::new("t").unwrap();
        let good = ca
            .issue("spiffe://td/ns/a/sa/b", Duration::from_secs(3600))
            .unwrap();
        let ok =
            Identity::load(files(&dir, &good.chain_pem, &good.key_pem, ca.root_pem())).unwrap();
        let c = ok.current().unwrap();
        assert_eq!(c.spiffe_id, "spiffe://td/ns/a/sa/b");
        assert!(c.remaining() > Duration::from_secs(3000));
        assert_eq!(c.roots, 1);

        let e = Identity::load(files(&dir, &good.chain_pem, "", ca.root_pem())).unwrap_err();
        assert!(
            matches!(
                e,
                IdentityError::Empty {
                    what: "private key",
                    ..
                }
            ),
            "{e}"
        );
        let e = Identity::load(files(&dir, "garbage", &good.key_pem, ca.root_pem())).unwrap_err();
        assert!(e.to_string().contains("chain.pem"), "{e}");
        let other = ca
            .issue("spiffe://td/ns/a/sa/c", Duration::from_secs(3600))
            .unwrap();
        let e = Identity::load(files(&dir, &good.chain_pem, &other.key_pem, ca.root_pem()))
            .unwrap_err();
        assert!(
            matches!(e, IdentityError::Tls(_)),
            "a key that does not match: {e}"
        );
        let stranger = DevCa::new("other").unwrap();
        let e = Identity::load(files(
            &dir,
            &good.chain_pem,
            &good.key_pem,
            stranger.root_pem(),
        ))
        .unwrap_err();
        assert!(
            matches!(e, IdentityError::Untrusted(_)),
            "a chain the bundle does not sign: {e}"
        );
        let e = Identity::load(IdentitySource::Files {
            cert_chain: dir.join("missing.pem"),
            key: dir.join("key.pem"),
            trust_bundle: dir.join("roots.pem"),
        })
        .unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
