//! The waypoint's own identity (certificate chain, key, trust bundle) and the TLS configs built
//! from it. A change of any of them builds new configs that new connections pick up; existing
//! connections keep the configs they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::dev_ca::DevCa;
use super::verify::MeshServerVerifier;

/// Why an identity could not be loaded. The previous identity, if any, stays in use.
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
    #[error("certificate and key do not form a usable identity: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Issue(#[from] super::dev_ca::IssueError),
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
    /// Seconds to expiry of our leaf when loaded.
    pub expires_in: Option<i64>,
}

/// The current identity, swapped atomically.
#[derive(Debug)]
pub struct Identity {
    current: ArcSwap<TlsConfigs>,
    source: IdentitySource,
    /// File modification times taken before the first load, so a change during it is seen.
    loaded_mtimes: Vec<Option<SystemTime>>,
}

struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
}

impl Identity {
    /// Loads the identity once; fails when the source is unusable.
    pub fn load(source: IdentitySource) -> Result<Identity, IdentityError> {
        let loaded_mtimes = match &source {
            IdentitySource::Files {
                cert_chain,
                key,
                trust_bundle,
            } => mtimes(&[cert_chain.clone(), key.clone(), trust_bundle.clone()]),
            IdentitySource::DevCa { .. } => Vec::new(),
        };
        let configs = build(read(&source)?)?;
        Ok(Identity {
            current: ArcSwap::from_pointee(configs),
            source,
            loaded_mtimes,
        })
    }

    pub fn current(&self) -> Arc<TlsConfigs> {
        self.current.load_full()
    }

    /// Re-reads file sources when a file's modification time changes; keeps the old identity on
    /// any error. Dev CA identities are re-issued at half their lifetime.
    pub async fn watch(self: Arc<Self>, poll: Duration) {
        match &self.source {
            IdentitySource::Files {
                cert_chain,
                key,
                trust_bundle,
            } => {
                let files = [cert_chain.clone(), key.clone(), trust_bundle.clone()];
                let mut seen = self.loaded_mtimes.clone();
                loop {
                    tokio::time::sleep(poll).await;
                    let now = mtimes(&files);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    self.reload();
                }
            }
            IdentitySource::DevCa { .. } => loop {
                let left = self.current().expires_in.unwrap_or(0).max(2);
                tokio::time::sleep(Duration::from_secs(u64::try_from(left / 2).unwrap_or(1))).await;
                self.reload();
            },
        }
    }

    /// Rebuilds from the source now.
    pub fn reload(&self) {
        match read(&self.source).and_then(build) {
            Ok(c) => {
                tracing::info!(spiffe_id = %c.spiffe_id, expires_in_s = ?c.expires_in, "identity loaded");
                self.current.store(Arc::new(c));
            }
            Err(e) => {
                tracing::error!(error = %e, "identity reload failed; keeping the current certificate")
            }
        }
    }
}

fn mtimes(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

fn read_file(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
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

fn read(source: &IdentitySource) -> Result<Material, IdentityError> {
    match source {
        IdentitySource::Files {
            cert_chain,
            key,
            trust_bundle,
        } => {
            let chain = certs(&read_file(cert_chain)?, cert_chain)?;
            let key_pem = read_file(key)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
                rustls::pki_types::pem::Error::NoItemsFound => IdentityError::Empty {
                    path: key.clone(),
                    what: "private key",
                },
                source => IdentityError::Pem {
                    path: key.clone(),
                    source,
                },
            })?;
            let roots = certs(&read_file(trust_bundle)?, trust_bundle)?;
            Ok(Material { chain, key, roots })
        }
        IdentitySource::DevCa { ca, spiffe_id } => {
            let issued = ca.issue(spiffe_id, Duration::from_secs(24 * 3600))?;
            let p = Path::new("<dev-ca>");
            Ok(Material {
                chain: certs(issued.chain_pem.as_bytes(), p)?,
                key: PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(
                    |source| IdentityError::Pem {
                        path: p.to_owned(),
                        source,
                    },
                )?,
                roots: certs(ca.root_pem().as_bytes(), p)?,
            })
        }
    }
}

fn build(m: Material) -> Result<TlsConfigs, IdentityError> {
    let provider = super::provider();
    let spiffe_id = super::spiffe::uri_san(&m.chain[0]).ok_or(IdentityError::NoSpiffeId)?;
    let expires_in = super::spiffe::seconds_to_expiry(&m.chain[0]);
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(m.roots);
    if roots.is_empty() {
        return Err(IdentityError::Roots(format!(
            "no usable root certificate ({bad} rejected)"
        )));
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| IdentityError::Roots(e.to_string()))?;
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
        expires_in,
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
        assert_eq!(ok.current().spiffe_id, "spiffe://td/ns/a/sa/b");
        assert!(ok.current().expires_in.unwrap() > 3000);

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
