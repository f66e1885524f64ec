//! An in-memory certificate authority for local runs (`--dev-ca`) and tests: it issues SPIFFE
//! workload certificates shaped like Istio's (URI SAN only, serverAuth + clientAuth, ECDSA P-256).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};

/// Errors from issuing a certificate.
#[derive(Debug, thiserror::Error)]
#[error("issuing a certificate: {0}")]
pub struct IssueError(#[from] rcgen::Error);

/// A PEM certificate chain (leaf first, without the root) and its private key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub chain_pem: String,
    pub key_pem: String,
}

/// A self-signed root that signs workload certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new root named `name`, valid for ten years.
    pub fn new(name: &str) -> Result<DevCa, IssueError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, name);
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The root certificate (the trust bundle peers need).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A TLS server certificate for `hosts` (DNS names or IP addresses), for local servers the
    /// waypoint talks to (a test API server, say).
    pub fn issue_server(
        &self,
        hosts: &[&str],
        lifetime: Duration,
    ) -> Result<IssuedCert, IssueError> {
        let key = KeyPair::generate()?;
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let mut params = CertificateParams::new(hosts)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after =
            now + time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(1));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A workload certificate for `spiffe_id`, valid from a minute ago for `lifetime`.
    pub fn issue(&self, spiffe_id: &str, lifetime: Duration) -> Result<IssuedCert, IssueError> {
        let key = KeyPair::generate()?;
        Ok(IssuedCert {
            chain_pem: self.sign(spiffe_id, lifetime, &key)?,
            key_pem: key.serialize_pem(),
        })
    }

    /// A workload-shaped certificate with any number of URI SANs (none, several, foreign trust
    /// domains): what a compromised or misconfigured CA could hand a peer, for tests of the
    /// identity rules.
    pub fn issue_uris(&self, uris: &[&str], lifetime: Duration) -> Result<IssuedCert, IssueError> {
        let key = KeyPair::generate()?;
        let mut params = workload_params(lifetime)?;
        params.subject_alt_names = uris
            .iter()
            .map(|u| Ok(SanType::URI((*u).try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        Ok(IssuedCert {
            chain_pem: params.signed_by(&key, &self.issuer)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A PEM workload certificate for `spiffe_id` over someone else's public key, as a CA
    /// answering a CSR does: the name comes from the CA's own knowledge, not the request.
    pub fn sign(
        &self,
        spiffe_id: &str,
        lifetime: Duration,
        public_key: &impl PublicKeyData,
    ) -> Result<String, IssueError> {
        let mut params = workload_params(lifetime)?;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        Ok(params.signed_by(public_key, &self.issuer)?.pem())
    }
}

/// Istio's workload certificate shape without its name: no subject, serverAuth + clientAuth.
fn workload_params(lifetime: Duration) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(1));
    Ok(params)
}
