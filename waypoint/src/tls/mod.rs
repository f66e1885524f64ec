//! TLS for HBONE: the identity we present, the peers we accept, and SPIFFE IDs in certificates.
//!
//! HBONE needs things Pingora's TLS layer cannot give (a TLS 1.3-only listener, matching the
//! server's SPIFFE URI SAN instead of a DNS name), so both directions use rustls directly, with the
//! ring provider Pingora also uses.

pub mod dev_ca;
pub mod spiffe;
pub mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider in the process. Installing it as the default lets crates that build
/// their own rustls configs (Pingora) agree with ours.
pub fn provider() -> Arc<CryptoProvider> {
    if let Some(p) = CryptoProvider::get_default() {
        return p.clone();
    }
    // Losing the race to another thread is fine: either way a ring provider is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}
