//! The gRPC messages of Istio's CA service and the SPIFFE Workload API, written as prost derives.
//!
//! Both APIs use a handful of flat messages, so hand-written types keep protoc and a build script
//! out of the build. The tags are the wire contract: they must match Istio's `security/v1alpha1`
//! `ca.proto` and SPIFFE's `workload.proto`. Fields we neither send nor read are left out; prost
//! skips unknown fields on decode.

use std::collections::HashMap;

/// `istio.v1.auth.IstioCertificateService/CreateCertificate`.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// The Workload API's service has no protobuf package, so its path is short.
pub const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
/// Required on every Workload API call (agents use it to reject SSRF'd requests).
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

/// `IstioCertificateRequest`. Field 4 (`metadata`, a `google.protobuf.Struct`) is only used by
/// node agents that request certificates on behalf of others; we ask for our own.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM PKCS#10 request; the CA takes the public key from it and the identity from the caller.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; the CA may shorten it.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
}

/// `IstioCertificateResponse`: PEM certificates, leaf first, the root last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// `X509SVIDRequest`: no parameters; the agent attests the caller by its process.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidRequest {}

/// `X509SVIDResponse`: sent again, whole, every time an SVID or bundle changes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidResponse {
    /// The first is the default identity.
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<X509Svid>,
    /// DER CRLs (not used: Istio does not check revocation either).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub crl: Vec<Vec<u8>>,
    /// Trust domain (`spiffe://td`) to concatenated DER CA certificates of federated domains.
    #[prost(map = "string, bytes", tag = "3")]
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

/// One `X509SVID`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509Svid {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// Concatenated DER certificates, leaf first.
    #[prost(bytes = "vec", tag = "2")]
    pub x509_svid: Vec<u8>,
    /// PKCS#8 DER private key of the leaf.
    #[prost(bytes = "vec", tag = "3")]
    pub x509_svid_key: Vec<u8>,
    /// Concatenated DER CA certificates of the SVID's own trust domain.
    #[prost(bytes = "vec", tag = "4")]
    pub bundle: Vec<u8>,
    #[prost(string, tag = "5")]
    pub hint: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The bytes are worked out by hand from the field numbers in Istio's and SPIFFE's protos, so
    /// a tag edited by mistake fails here rather than against a real istiod or SPIRE agent.
    #[test]
    fn wire_bytes_follow_the_published_field_numbers() {
        let req = IstioCertificateRequest {
            csr: "a".into(),
            validity_duration: 5,
        };
        // field 1 (LEN) "a", field 3 (VARINT) 5.
        assert_eq!(req.encode_to_vec(), [0x0a, 1, b'a', 0x18, 5]);
        let resp = IstioCertificateResponse::decode(&[0x0a, 1, b'x', 0x0a, 1, b'y'][..]).unwrap();
        assert_eq!(resp.cert_chain, ["x", "y"]);

        let svid = [
            0x0a, 1, b's', // spiffe_id = 1
            0x12, 1, 1, // x509_svid = 2
            0x1a, 1, 2, // x509_svid_key = 3
            0x22, 1, 3, // bundle = 4
            0x2a, 1, b'h', // hint = 5
        ];
        let mut msg = vec![0x0a, svid.len() as u8];
        msg.extend_from_slice(&svid);
        // federated_bundles = 3: a map entry {key = 1: "t", value = 2: [4]}.
        msg.extend_from_slice(&[0x1a, 6, 0x0a, 1, b't', 0x12, 1, 4]);
        let r = X509SvidResponse::decode(&msg[..]).unwrap();
        let s = &r.svids[0];
        assert_eq!(
            (
                &*s.spiffe_id,
                &*s.x509_svid,
                &*s.x509_svid_key,
                &*s.bundle,
                &*s.hint
            ),
            ("s", &[1u8][..], &[2u8][..], &[3u8][..], "h")
        );
        assert_eq!(r.federated_bundles["t"], [4]);
        assert!(X509SvidRequest {}.encode_to_vec().is_empty());
    }
}
