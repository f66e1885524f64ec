//! JWS signature checks with ring, the crypto the rest of the waypoint (rustls, Pingora) already
//! uses.

use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};

use super::jwks::{Alg, Material};

/// Whether `signature` (decoded) is `key`'s signature of `message` under `alg`. A key of
/// another type, or any malformed input, is simply `false`.
pub fn verify(alg: Alg, key: &Material, message: &[u8], signature: &[u8]) -> bool {
    let rsa = |params: &'static sig::RsaParameters| match key {
        Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }
            .verify(params, message, signature)
            .is_ok(),
        _ => false,
    };
    let ec = |p384: bool, params: &'static dyn sig::VerificationAlgorithm| match key {
        Material::Ec { p384: k, point } if *k == p384 => UnparsedPublicKey::new(params, point)
            .verify(message, signature)
            .is_ok(),
        _ => false,
    };
    let hmac = |alg: ring::hmac::Algorithm| match key {
        Material::Oct(secret) => {
            ring::hmac::verify(&ring::hmac::Key::new(alg, secret), message, signature).is_ok()
        }
        _ => false,
    };
    match alg {
        Alg::RS256 => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        Alg::RS384 => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        Alg::RS512 => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        Alg::PS256 => rsa(&sig::RSA_PSS_2048_8192_SHA256),
        Alg::PS384 => rsa(&sig::RSA_PSS_2048_8192_SHA384),
        Alg::PS512 => rsa(&sig::RSA_PSS_2048_8192_SHA512),
        // JWS ECDSA signatures are the fixed-width r || s form.
        Alg::ES256 => ec(false, &sig::ECDSA_P256_SHA256_FIXED),
        Alg::ES384 => ec(true, &sig::ECDSA_P384_SHA384_FIXED),
        Alg::EdDSA => match key {
            Material::Ed25519(public) => UnparsedPublicKey::new(&sig::ED25519, public)
                .verify(message, signature)
                .is_ok(),
            _ => false,
        },
        Alg::HS256 => hmac(ring::hmac::HMAC_SHA256),
        Alg::HS384 => hmac(ring::hmac::HMAC_SHA384),
        Alg::HS512 => hmac(ring::hmac::HMAC_SHA512),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_and_ed25519_and_mismatches() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let key = Material::Oct(secret.to_vec());
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            b"h.p",
        );
        assert!(verify(Alg::HS256, &key, b"h.p", tag.as_ref()));
        assert!(!verify(Alg::HS256, &key, b"h.q", tag.as_ref()));
        assert!(!verify(Alg::HS384, &key, b"h.p", tag.as_ref()));

        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let sig = pair.sign(b"h.p");
        let public = Material::Ed25519(pair.public_key().as_ref().to_vec());
        assert!(verify(Alg::EdDSA, &public, b"h.p", sig.as_ref()));
        assert!(!verify(Alg::EdDSA, &public, b"h.x", sig.as_ref()));
        // An Ed25519 key never checks an ECDSA signature, nor an HMAC key an RSA one.
        assert!(!verify(Alg::ES256, &public, b"h.p", sig.as_ref()));
        assert!(!verify(Alg::RS256, &key, b"h.p", tag.as_ref()));
    }
}
