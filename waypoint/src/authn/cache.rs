//! Verified tokens, so a client that sends the same token on every request pays for the
//! signature once.
//!
//! Keyed by the token itself (hashed by the map, compared in full on a hit): two tokens can never
//! share an entry, so a crafted collision cannot borrow another token's claims. Entries end at the
//! token's `exp` (never later) and after [`MAX_AGE`] at most; the map is bounded.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::provider::Verified;

/// How long a token without `exp` (or with a far one) stays cached.
pub const MAX_AGE: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Entry {
    verified: Arc<Verified>,
    location: usize,
    /// Unix seconds; the entry is dead at or after this.
    until_unix: u64,
    until: Instant,
}

#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    map: RwLock<HashMap<Box<str>, Entry>>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity,
            map: RwLock::default(),
        }
    }

    /// The cached result for `token` found at `location`, if still valid at `now_unix`.
    pub fn get(&self, token: &str, location: usize, now_unix: u64) -> Option<Arc<Verified>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let e = map.get(token)?;
        (e.location == location && now_unix < e.until_unix && Instant::now() < e.until)
            .then(|| e.verified.clone())
    }

    pub fn insert(&self, token: &str, location: usize, verified: Arc<Verified>, now_unix: u64) {
        if self.capacity == 0 {
            return;
        }
        let until_unix = verified
            .exp
            .unwrap_or(u64::MAX)
            .min(now_unix.saturating_add(MAX_AGE.as_secs()));
        if until_unix <= now_unix {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity && !map.contains_key(token) {
            map.retain(|_, e| now_unix < e.until_unix && now < e.until);
            // Still full of live entries: make room for a quarter of them. Which ones does not
            // matter much; the map's order is as good as random.
            if map.len() >= self.capacity {
                let drop_keys: Vec<Box<str>> =
                    map.keys().take(self.capacity / 4 + 1).cloned().collect();
                for k in drop_keys {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            token.into(),
            Entry {
                verified,
                location,
                until_unix,
                until: now + MAX_AGE,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
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
        })
    }

    #[test]
    fn entries_end_at_exp_and_the_map_stays_bounded() {
        let c = TokenCache::new(8);
        let now = 1_000_000;
        c.insert("t", 0, verified(Some(now + 10)), now);
        assert!(c.get("t", 0, now + 9).is_some());
        assert!(c.get("t", 0, now + 10).is_none(), "never past exp");
        assert!(
            c.get("t", 1, now).is_none(),
            "found elsewhere: another location's rules"
        );
        c.insert("expired", 0, verified(Some(now)), now);
        assert!(c.get("expired", 0, now).is_none());
        for i in 0..100 {
            c.insert(&format!("k{i}"), 0, verified(None), now);
        }
        assert!(c.len() <= 8, "{}", c.len());
        assert!(c.get("k99", 0, now).is_some(), "the newest entry is kept");
    }
}
