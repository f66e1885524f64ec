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

/// Every subject alternative name a PEM certificate request asks for, as x509-parser prints
/// them (`URI(spiffe://...)`); `None` when it is not a parsable request.
pub fn csr_sans(pem: &str) -> Option<Vec<String>> {
    use rustls::pki_types::CertificateSigningRequestDer;
    use rustls::pki_types::pem::PemObject as _;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer as _;
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, req) = X509CertificationRequest::from_der(der.as_ref()).ok()?;
    Some(
        req.requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                ParsedExtension::SubjectAlternativeName(san) => Some(san.general_names.iter()),
                _ => None,
            })
            .flatten()
            .map(|n| n.to_string())
            .collect(),
    )
}
