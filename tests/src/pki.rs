//! A mesh CA and workload certificates written to a directory, as a Secret mount would hold them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use waypoint::tls::dev_ca::DevCa;

/// A CA plus the directory its files go to.
#[derive(Debug)]
pub struct Pki {
    pub ca: Arc<DevCa>,
    pub dir: PathBuf,
}

/// One workload's certificate, in memory and on disk.
#[derive(Debug, Clone)]
pub struct WorkloadCert {
    pub spiffe_id: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub chain_path: PathBuf,
    pub key_path: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Pki> {
        Pki::with_ca(dir, Arc::new(DevCa::new(name)?))
    }

    /// Files for an existing CA (one a test CA server also signs with).
    pub fn with_ca(dir: &Path, ca: Arc<DevCa>) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("root-cert.pem"), ca.root_pem())?;
        Ok(Pki {
            ca,
            dir: dir.to_owned(),
        })
    }

    pub fn root_path(&self) -> PathBuf {
        self.dir.join("root-cert.pem")
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca.root_pem().as_bytes()).flatten() {
            let _ = roots.add(c);
        }
        roots
    }

    /// Issues a day-long certificate for `spiffe_id`, saved as `<file_stem>.pem` / `-key.pem`.
    pub fn issue(&self, spiffe_id: &str, file_stem: &str) -> anyhow::Result<WorkloadCert> {
        let issued = self.ca.issue(spiffe_id, Duration::from_secs(24 * 3600))?;
        self.save(spiffe_id, file_stem, &issued)
    }

    /// A certificate with exactly these URI SANs (none, several, another trust domain), for
    /// probes of the identity rules; `spiffe_id` is the first of them or empty.
    pub fn issue_uris(&self, uris: &[&str], file_stem: &str) -> anyhow::Result<WorkloadCert> {
        let issued = self.ca.issue_uris(uris, Duration::from_secs(24 * 3600))?;
        self.save(uris.first().copied().unwrap_or(""), file_stem, &issued)
    }

    fn save(
        &self,
        spiffe_id: &str,
        file_stem: &str,
        issued: &waypoint::tls::dev_ca::IssuedCert,
    ) -> anyhow::Result<WorkloadCert> {
        let chain_path = self.dir.join(format!("{file_stem}.pem"));
        let key_path = self.dir.join(format!("{file_stem}-key.pem"));
        std::fs::write(&chain_path, &issued.chain_pem)?;
        std::fs::write(&key_path, &issued.key_pem)?;
        Ok(WorkloadCert {
            spiffe_id: spiffe_id.to_owned(),
            chain: CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
                .collect::<Result<_, _>>()?,
            key: Arc::new(PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?),
            chain_path,
            key_path,
        })
    }
}
