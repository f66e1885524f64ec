//! SPIFFE IDs carried as URI SANs.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The first `spiffe://` URI SAN of a DER certificate.
pub fn uri_san(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
        _ => None,
    })
}

/// Seconds until the certificate expires (negative when it has).
pub fn seconds_to_expiry(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(cert.validity().not_after.timestamp() - i64::try_from(now).ok()?)
}
