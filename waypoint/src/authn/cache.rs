//! Verified tokens, so a client that sends the same token on every request pays for the
//! signature once, and recently refused tokens, so one that keeps sending a forged token does
//! not pay for it on every request either.
//!
//! The verified cache is keyed by the token itself (hashed by the map, compared in full on a
//! hit): two tokens never share an entry, so a crafted collision cannot borrow another token's
//! claims. Entries end at the token's `exp` (never later) and after [`MAX_AGE`] at most. It is
//! bounded in entries and in bytes, and tokens longer than [`MAX_CACHED_TOKEN`] are verified
//! on every request but never cached, as Envoy's jwt_cache.cc (100 entries per provider, none
//! over 4 KiB).
//!
//! The refused cache holds only a SHA-256 of the token and the reason, so its size does not
//! depend on the tokens'; a collision could only refuse a token, never accept one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::AuthnError;
use super::provider::Verified;

/// How long a token without `exp` (or with a far one) stays cached.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// Tokens longer than this are never cached (Envoy's `kMaxJwtSizeForCache`).
pub const MAX_CACHED_TOKEN: usize = 4 * 1024;
/// Verified tokens cached per target.
pub const MAX_ENTRIES: usize = 1024;
/// What those entries may hold in all, estimated as in [`entry_bytes`].
pub const MAX_BYTES: usize = 4 << 20;
/// How long a refused token is answered from memory.
pub const REFUSED_FOR: Duration = Duration::from_secs(5);
/// Refused tokens remembered per target.
pub const MAX_REFUSED: usize = 4096;

#[derive(Debug)]
struct Entry {
    verified: Arc<Verified>,
    /// The set of locations the token was found in.
    places: u64,
    /// Unix seconds; the entry is dead at or after this.
    until_unix: u64,
    until: Instant,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Map {
    entries: HashMap<Box<str>, Entry>,
    bytes: usize,
}

#[derive(Debug)]
pub struct TokenCache {
    max_entries: usize,
    max_bytes: usize,
    map: RwLock<Map>,
    refused: Mutex<HashMap<[u8; 32], (AuthnError, Instant)>>,
}

/// What an entry costs: the token (the key), the payload it decoded to (claims and output
/// headers are of that order), and a fixed overhead for the maps and `Arc`s.
fn entry_bytes(token: &str, v: &Verified) -> usize {
    let headers: usize = v
        .set_headers
        .iter()
        .map(|(n, h)| n.as_str().len() + h.len())
        .sum();
    token.len() + 2 * v.payload_len + headers + 256
}

fn digest(token: &str, places: u64) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&places.to_le_bytes());
    ctx.update(token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            max_entries,
            max_bytes,
            map: RwLock::default(),
            refused: Mutex::default(),
        }
    }

    /// The cached result for `token` found at `places`, if still valid at `now_unix`.
    pub fn get(&self, token: &str, places: u64, now_unix: u64) -> Option<Arc<Verified>> {
        if token.len() > MAX_CACHED_TOKEN {
            return None;
        }
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let e = map.entries.get(token)?;
        (e.places == places && now_unix < e.until_unix && Instant::now() < e.until)
            .then(|| e.verified.clone())
    }

    pub fn insert(&self, token: &str, places: u64, verified: Arc<Verified>, now_unix: u64) {
        if self.max_entries == 0 || token.len() > MAX_CACHED_TOKEN {
            return;
        }
        let until_unix = verified
            .exp
            .unwrap_or(u64::MAX)
            .min(now_unix.saturating_add(MAX_AGE.as_secs()));
        if until_unix <= now_unix {
            return;
        }
        let bytes = entry_bytes(token, &verified);
        if bytes > self.max_bytes {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let map = &mut *map;
        if let Some(old) = map.entries.remove(token) {
            map.bytes -= old.bytes;
        }
        if map.entries.len() >= self.max_entries || map.bytes + bytes > self.max_bytes {
            map.entries
                .retain(|_, e| now_unix < e.until_unix && now < e.until);
            map.bytes = map.entries.values().map(|e| e.bytes).sum();
        }
        // Still full of live entries: drop some to make room for a quarter more. Which ones
        // does not matter much; the map's order is as good as random.
        if map.entries.len() >= self.max_entries || map.bytes + bytes > self.max_bytes {
            let (want_len, want_bytes) = (
                self.max_entries - self.max_entries / 4 - 1,
                (self.max_bytes - self.max_bytes / 4).saturating_sub(bytes),
            );
            let mut drop_keys = Vec::new();
            let (mut len, mut total) = (map.entries.len(), map.bytes);
            for (k, e) in &map.entries {
                if len <= want_len && total <= want_bytes {
                    break;
                }
                drop_keys.push(k.clone());
                len -= 1;
                total -= e.bytes;
            }
            for k in drop_keys {
                if let Some(e) = map.entries.remove(&k) {
                    map.bytes -= e.bytes;
                }
            }
        }
        map.bytes += bytes;
        map.entries.insert(
            token.into(),
            Entry {
                verified,
                places,
                until_unix,
                until: now + MAX_AGE,
                bytes,
            },
        );
    }

    /// Why `token` found at `places` was refused less than [`REFUSED_FOR`] ago.
    pub fn refused(&self, token: &str, places: u64) -> Option<AuthnError> {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.is_empty() {
            return None;
        }
        let (e, at) = refused.get(&digest(token, places))?;
        (at.elapsed() < REFUSED_FOR).then_some(*e)
    }

    pub fn refuse(&self, token: &str, places: u64, e: AuthnError) {
        let key = digest(token, places);
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= MAX_REFUSED {
            refused.retain(|_, (_, at)| at.elapsed() < REFUSED_FOR);
            if refused.len() >= MAX_REFUSED {
                // Flooded with fresh forgeries: start over rather than grow.
                refused.clear();
            }
        }
        refused.insert(key, (e, Instant::now()));
    }

    pub fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    /// The estimated bytes held by verified entries.
    pub fn bytes(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).bytes
    }

    pub fn refused_len(&self) -> usize {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::jwks::{JwksOptions, JwksRegistry};
    use crate::authn::provider::Provider;
    use gateway_api_bindings::ObjectKey;
    use gateway_api_bindings::istio::JwtRule;

    fn verified(exp: Option<u64>) -> Arc<Verified> {
        let reg = JwksRegistry::new(JwksOptions::default(), None, Default::default());
        let rule = JwtRule {
            issuer: "i".into(),
            jwks: Some(r#"{"keys": []}"#.into()),
            ..JwtRule::default()
        };
        let p = Provider::new(&ObjectKey::new("ns", "ra"), 0, &rule, &reg).unwrap();
        Arc::new(Verified {
            claims: policy_engine::JwtClaims::new(Default::default(), &[]),
            principal: "i/s".into(),
            provider: Arc::new(p),
            set_headers: Vec::new(),
            exp,
            payload_len: 100,
        })
    }

    #[test]
    fn entries_end_at_exp_and_the_map_stays_bounded() {
        let c = TokenCache::new(8, MAX_BYTES);
        let now = 1_000_000;
        c.insert("t", 1, verified(Some(now + 10)), now);
        assert!(c.get("t", 1, now + 9).is_some());
        assert!(c.get("t", 1, now + 10).is_none(), "never past exp");
        assert!(
            c.get("t", 2, now).is_none(),
            "found elsewhere: another location's rules"
        );
        c.insert("expired", 1, verified(Some(now)), now);
        assert!(c.get("expired", 1, now).is_none());
        for i in 0..100 {
            c.insert(&format!("k{i}"), 1, verified(None), now);
        }
        assert!(c.len() <= 8, "{}", c.len());
        assert!(c.get("k99", 1, now).is_some(), "the newest entry is kept");
    }

    #[test]
    fn bounded_in_bytes_and_large_tokens_are_not_cached() {
        let c = TokenCache::new(1 << 20, 64 * 1024);
        let now = 1_000_000;
        let big = "x".repeat(MAX_CACHED_TOKEN + 1);
        c.insert(&big, 1, verified(None), now);
        assert!(c.is_empty());
        for i in 0..1000 {
            let t = format!("{i:04}{}", "y".repeat(4000));
            c.insert(&t, 1, verified(None), now);
            assert!(c.bytes() <= 64 * 1024, "{}", c.bytes());
        }
        assert!(c.len() >= 8, "still caches: {}", c.len());
    }

    #[test]
    fn refused_tokens_are_remembered_briefly_and_bounded() {
        let c = TokenCache::new(8, MAX_BYTES);
        c.refuse("forged", 1, AuthnError::BadSignature);
        assert_eq!(c.refused("forged", 1), Some(AuthnError::BadSignature));
        assert_eq!(c.refused("forged", 2), None);
        for i in 0..(MAX_REFUSED * 2) {
            c.refuse(&format!("f{i}"), 1, AuthnError::BadSignature);
        }
        assert!(c.refused_len() <= MAX_REFUSED);
    }
}
