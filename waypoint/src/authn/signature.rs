//! JWS signature checks with ring, the crypto the rest of the waypoint (rustls, Pingora) already
//! uses. jsonwebtoken parses headers and keys; its pluggable backends verify RSA several times
//! slower than ring on the same machine, so the check itself is done here.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};

/// Whether `signature` (base64url, as in the token) is `key`'s signature of `message` under
/// `alg`. Any malformed input is simply `false`.
pub fn verify(alg: Algorithm, key: &DecodingKey, message: &[u8], signature: &str) -> bool {
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature.trim_end_matches('=')) else {
        return false;
    };
    let rsa = |params: &'static sig::RsaParameters| match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => RsaPublicKeyComponents { n, e }
            .verify(params, message, &signature)
            .is_ok(),
        DecodingKeyKind::SecretOrDer(der) => UnparsedPublicKey::new(params, der)
            .verify(message, &signature)
            .is_ok(),
    };
    let raw = |params: &'static dyn sig::VerificationAlgorithm| match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => UnparsedPublicKey::new(params, bytes)
            .verify(message, &signature)
            .is_ok(),
        DecodingKeyKind::RsaModulusExponent { .. } => false,
    };
    let hmac = |alg: ring::hmac::Algorithm| match key.kind() {
        DecodingKeyKind::SecretOrDer(secret) => {
            ring::hmac::verify(&ring::hmac::Key::new(alg, secret), message, &signature).is_ok()
        }
        DecodingKeyKind::RsaModulusExponent { .. } => false,
    };
    match alg {
        Algorithm::RS256 => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => rsa(&sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => rsa(&sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => rsa(&sig::RSA_PSS_2048_8192_SHA512),
        // JWS ECDSA signatures are the fixed-width r || s form.
        Algorithm::ES256 => raw(&sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => raw(&sig::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => raw(&sig::ED25519),
        Algorithm::HS256 => hmac(ring::hmac::HMAC_SHA256),
        Algorithm::HS384 => hmac(ring::hmac::HMAC_SHA384),
        Algorithm::HS512 => hmac(ring::hmac::HMAC_SHA512),
        // Algorithms a later jsonwebtoken may add: refused until supported here.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_and_ed25519_and_mismatches() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let key = DecodingKey::from_secret(secret);
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            b"h.p",
        );
        let tag = URL_SAFE_NO_PAD.encode(tag.as_ref());
        assert!(verify(Algorithm::HS256, &key, b"h.p", &tag));
        assert!(!verify(Algorithm::HS256, &key, b"h.q", &tag));
        assert!(!verify(Algorithm::HS384, &key, b"h.p", &tag));
        assert!(!verify(Algorithm::HS256, &key, b"h.p", "!!not base64!!"));

        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let sig = URL_SAFE_NO_PAD.encode(pair.sign(b"h.p").as_ref());
        let public =
            DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(pair.public_key())).unwrap();
        assert!(verify(Algorithm::EdDSA, &public, b"h.p", &sig));
        assert!(!verify(Algorithm::EdDSA, &public, b"h.x", &sig));
        // An Ed25519 key never checks an ECDSA signature.
        assert!(!verify(Algorithm::ES256, &public, b"h.p", &sig));
    }
}
