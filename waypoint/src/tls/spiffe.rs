//! SPIFFE IDs carried as URI SANs, read as ztunnel and the X.509-SVID spec read them.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// Why a certificate does not name a peer of this mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("no certificate")]
    NoCertificate,
    #[error("the certificate cannot be parsed")]
    Unparsable,
    #[error("no URI SAN")]
    NoUri,
    /// An X.509-SVID carries exactly one URI SAN; a second one would let the peer choose which
    /// identity a reader sees.
    #[error("{0} URI SANs; an X.509-SVID has exactly one")]
    SeveralUris(usize),
    #[error("URI SAN {0:?} is not a SPIFFE ID")]
    NotSpiffe(String),
    #[error("SPIFFE ID {0:?} is not in the trust domain or one of its aliases")]
    ForeignTrustDomain(String),
}

/// The one URI SAN of a DER certificate, which must be a well-formed SPIFFE ID
/// (`spiffe://<trust domain>/<path>`).
pub fn svid(cert: &CertificateDer<'_>) -> Result<String, SvidError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| SvidError::Unparsable)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| SvidError::Unparsable)?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUri),
        [one] => *one,
        several => return Err(SvidError::SeveralUris(several.len())),
    };
    if trust_domain(uri).is_none() {
        return Err(SvidError::NotSpiffe(uri.to_owned()));
    }
    Ok(uri.to_owned())
}

/// The trust domain of a SPIFFE ID, when it has one and a non-empty path.
pub fn trust_domain(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    let td_ok = !td.is_empty()
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    (td_ok && !path.is_empty()).then_some(td)
}

/// The peer's SPIFFE ID from its leaf certificate: exactly one URI SAN, a SPIFFE ID in one of
/// `trust_domains` (the mesh's and its aliases).
pub fn peer_id(
    leaf: Option<&CertificateDer<'_>>,
    trust_domains: &[String],
) -> Result<String, SvidError> {
    let id = svid(leaf.ok_or(SvidError::NoCertificate)?)?;
    match trust_domain(&id) {
        Some(td) if trust_domains.iter().any(|t| t == td) => Ok(id),
        _ => Err(SvidError::ForeignTrustDomain(id)),
    }
}

/// The first `spiffe://` URI SAN of a DER certificate: the name of a certificate we were handed
/// to present (our own), not of a peer. Peers are identified with [`peer_id`] or [`svid`].
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::dev_ca::DevCa;
    use rustls::pki_types::pem::PemObject as _;
    use std::time::Duration;

    #[test]
    fn trust_domains_of_spiffe_ids() {
        assert_eq!(
            trust_domain("spiffe://cluster.local/ns/a/sa/b"),
            Some("cluster.local")
        );
        assert_eq!(trust_domain("spiffe://cluster.local/"), None, "no path");
        assert_eq!(trust_domain("spiffe:///ns/a"), None, "no trust domain");
        assert_eq!(
            trust_domain("spiffe://Cluster.Local/ns/a"),
            None,
            "not lowercase"
        );
        assert_eq!(trust_domain("https://cluster.local/ns/a"), None);
    }

    #[test]
    fn a_peer_names_exactly_one_spiffe_id_of_the_mesh() {
        let ca = DevCa::new("test").unwrap();
        let tds = ["cluster.local".to_owned(), "old.td".to_owned()];
        let check = |uris: &[&str]| {
            let issued = ca.issue_uris(uris, Duration::from_secs(60)).unwrap();
            let der = CertificateDer::from_pem_slice(issued.chain_pem.as_bytes()).unwrap();
            peer_id(Some(&der), &tds)
        };
        let sleep = "spiffe://cluster.local/ns/a/sa/sleep";
        assert_eq!(check(&[sleep]), Ok(sleep.to_owned()));
        assert!(check(&["spiffe://old.td/ns/a/sa/sleep"]).is_ok(), "alias");
        assert_eq!(check(&[]), Err(SvidError::NoUri));
        assert_eq!(
            check(&["spiffe://cluster.local/ns/a/sa/attacker", sleep]),
            Err(SvidError::SeveralUris(2))
        );
        assert!(matches!(
            check(&["spiffe://evil.td/ns/a/sa/sleep"]),
            Err(SvidError::ForeignTrustDomain(_))
        ));
        assert!(matches!(
            check(&["https://cluster.local/x"]),
            Err(SvidError::NotSpiffe(_))
        ));
        assert_eq!(peer_id(None, &tds), Err(SvidError::NoCertificate));
    }
}
