//! RequestAuthentication: JWT validation in front of the authorizer.
//!
//! RequestAuthentications bind to the waypoint by `targetRefs` exactly as AuthorizationPolicies
//! do. Traffic to a target is checked against the rules bound to the whole waypoint plus those
//! bound to that target, merged as istiod merges them into one Envoy `jwt_authn` filter with an
//! `allow_missing` requirement:
//!
//! * no token in any configured location: the request goes on without a request principal;
//! * tokens in more than one location: 401;
//! * a token whose `iss` no rule reading that location names: 401 "Jwt issuer is not
//!   configured". Envoy's `allow_missing` lets only a *missing* token through; a token from an
//!   unknown issuer is a failure (Envoy fixed this in 2021, envoyproxy/envoy#15199, after
//!   istio/istio#24371);
//! * a token failing signature, `exp`/`nbf` (60 s leeway), or audience checks: 401 with Envoy's
//!   message and `www-authenticate: Bearer realm="<url>", error="invalid_token"`;
//! * a valid token: its claims feed `requestPrincipals` and `request.auth.*` in the engine, the
//!   token is stripped unless `forwardOriginalToken`, and `outputPayloadToHeader` /
//!   `outputClaimToHeaders` are set before policy runs (Envoy's filter order).
//!
//! The rule is found by the token's `iss` in one hash lookup, before any signature is checked,
//! so the cost does not grow with the number of issuers. Valid tokens are cached per target.

pub mod cache;
pub mod jwks;
pub mod location;
pub mod provider;
pub mod signature;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gateway_api_bindings::attachment::request_authentication_binding;
use gateway_api_bindings::{Store, WaypointIdentity};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use policy_engine::Binding;

use crate::metrics::Metrics;
use cache::TokenCache;
use jwks::JwksRegistry;
use location::Location;
use provider::{Parsed, Provider, Verified};

/// Verified tokens cached per target.
const CACHE_ENTRIES: usize = 4096;

/// Why a token was refused. The texts are Envoy's, which clients and operators already know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthnError {
    Malformed,
    UnknownIssuer,
    Expired,
    NotYetValid,
    Audience,
    BadSignature,
    KeyNotFound,
    JwksUnavailable,
    MultipleTokens,
}

impl AuthnError {
    /// The 401 body.
    pub fn body(self) -> &'static str {
        match self {
            AuthnError::Malformed => "Jwt is not in the form of Header.Payload.Signature",
            AuthnError::UnknownIssuer => "Jwt issuer is not configured",
            AuthnError::Expired => "Jwt is expired",
            AuthnError::NotYetValid => "Jwt not yet valid",
            AuthnError::Audience => "Audiences in Jwt are not allowed",
            AuthnError::BadSignature => "Jwt verification fails",
            AuthnError::KeyNotFound => "Jwks doesn't have key to match kid or alg from Jwt",
            AuthnError::JwksUnavailable => "Jwks remote fetch is failed",
            AuthnError::MultipleTokens => "Jwt found in more than one location",
        }
    }
}

impl std::fmt::Display for AuthnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.body())
    }
}

impl std::error::Error for AuthnError {}

/// A token as found in a request.
#[derive(Debug, Clone)]
pub struct Found {
    pub token: String,
    /// Index into the authenticator's locations.
    pub location: usize,
}

/// The rules that apply to one target (the waypoint's plus the target's own).
#[derive(Debug)]
pub struct Authenticator {
    by_issuer: HashMap<String, Vec<Arc<Provider>>>,
    /// Every location any rule reads, each once.
    locations: Vec<Location>,
    cache: TokenCache,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    fn new(providers: &[Arc<Provider>], metrics: Arc<Metrics>) -> Authenticator {
        let mut by_issuer: HashMap<String, Vec<Arc<Provider>>> = HashMap::new();
        let mut locations: Vec<Location> = Vec::new();
        for p in providers {
            by_issuer
                .entry(p.issuer.clone())
                .or_default()
                .push(p.clone());
            for l in &p.locations {
                if !locations.contains(l) {
                    locations.push(l.clone());
                }
            }
        }
        Authenticator {
            by_issuer,
            locations,
            cache: TokenCache::new(CACHE_ENTRIES),
            metrics,
        }
    }

    /// The token in the request, if exactly one location holds one.
    pub fn find(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Found>, AuthnError> {
        let mut found = None;
        for (i, loc) in self.locations.iter().enumerate() {
            if let Some(token) = loc.find(headers, query) {
                if found.is_some() {
                    return Err(AuthnError::MultipleTokens);
                }
                found = Some(Found {
                    token: token.to_owned(),
                    location: i,
                });
            }
        }
        Ok(found)
    }

    pub fn location(&self, found: &Found) -> &Location {
        &self.locations[found.location]
    }

    /// Validates `found` against the rules naming its issuer and reading its location.
    pub async fn verify(&self, found: &Found) -> Result<Arc<Verified>, AuthnError> {
        let now = unix_now();
        if let Some(v) = self.cache.get(&found.token, found.location, now) {
            self.metrics.jwt_cache_hits.inc();
            return Ok(v);
        }
        let v = self.verify_uncached(found, now).await?;
        self.cache
            .insert(&found.token, found.location, v.clone(), now);
        Ok(v)
    }

    /// [`Authenticator::verify`] without the cache (what a cache miss costs).
    pub async fn verify_uncached(
        &self,
        found: &Found,
        now: u64,
    ) -> Result<Arc<Verified>, AuthnError> {
        let parsed = Parsed::new(&found.token)?;
        let loc = &self.locations[found.location];
        let candidates = parsed
            .issuer()
            .and_then(|iss| self.by_issuer.get(iss))
            .into_iter()
            .flatten()
            .filter(|p| p.locations.contains(loc));
        let mut last = AuthnError::UnknownIssuer;
        for p in candidates {
            match p.verify(&parsed, now).await {
                Ok(v) => return Ok(Arc::new(v)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A valid token's effects on the request headers, in order: the header to remove (the
    /// token's own, unless forwarded), then the headers to set.
    pub fn mutations<'v>(
        &self,
        found: &Found,
        verified: &'v Verified,
    ) -> (Option<&HeaderName>, &'v [(HeaderName, HeaderValue)]) {
        let strip = match self.location(found) {
            Location::Header { name, .. } if verified.provider.strips() => Some(name),
            _ => None,
        };
        (strip, &verified.set_headers)
    }

    /// [`Authenticator::mutations`] applied to a plain header map.
    pub fn apply(&self, found: &Found, verified: &Verified, headers: &mut HeaderMap) {
        let (strip, set) = self.mutations(found, verified);
        if let Some(name) = strip {
            headers.remove(name);
        }
        for (name, value) in set {
            headers.insert(name.clone(), value.clone());
        }
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }
}

/// Every RequestAuthentication bound to this waypoint, compiled.
#[derive(Debug, Default)]
pub struct Authn {
    waypoint: Option<Arc<Authenticator>>,
    targets: HashMap<String, Arc<Authenticator>>,
    /// For `/config_dump`: per rule, its origin, issuer, key source and binding.
    summary: Vec<serde_json::Value>,
}

impl Authn {
    /// No RequestAuthentication: every request goes on without a request principal.
    pub fn none() -> Authn {
        Authn::default()
    }

    pub fn compile(store: &Store, waypoint: &WaypointIdentity, registry: &JwksRegistry) -> Authn {
        let mut everywhere: Vec<Arc<Provider>> = Vec::new();
        let mut per_target: BTreeMap<String, Vec<Arc<Provider>>> = BTreeMap::new();
        let mut summary = Vec::new();
        for (key, ra) in &store.request_authentications {
            let Some(binding) =
                request_authentication_binding(&ra.object, &key.namespace, waypoint)
            else {
                continue;
            };
            for (i, rule) in ra.object.spec.jwt_rules.iter().enumerate() {
                let p = match Provider::new(key, i, rule, registry) {
                    Ok(p) => Arc::new(p),
                    Err(e) => {
                        // Left out, so its issuer's tokens get 401: failing closed.
                        tracing::warn!(request_authentication = %key, rule = i, origin = %ra.origin, "jwtRule left out: {e}");
                        continue;
                    }
                };
                let bound = match &binding {
                    Binding::Waypoint => {
                        everywhere.push(p.clone());
                        serde_json::json!("waypoint")
                    }
                    Binding::Targets(ts) => {
                        for t in ts {
                            per_target.entry(t.clone()).or_default().push(p.clone());
                        }
                        serde_json::json!(ts)
                    }
                };
                summary.push(serde_json::json!({
                    "rule": p.origin,
                    "issuer": p.issuer,
                    "keys": p.key_source(),
                    "locations": p.locations.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "binding": bound,
                }));
            }
        }
        let metrics = registry.metrics();
        let targets = per_target
            .into_iter()
            .map(|(t, mut ps)| {
                ps.extend(everywhere.iter().cloned());
                (t, Arc::new(Authenticator::new(&ps, metrics.clone())))
            })
            .collect();
        let waypoint = (!everywhere.is_empty())
            .then(|| Arc::new(Authenticator::new(&everywhere, metrics.clone())));
        Authn {
            waypoint,
            targets,
            summary,
        }
    }

    /// The authenticator for traffic to `target` (an engine target key), if any rule applies.
    pub fn for_target(&self, target: Option<&str>) -> Option<&Arc<Authenticator>> {
        target
            .and_then(|t| self.targets.get(t))
            .or(self.waypoint.as_ref())
    }

    pub fn dump(&self) -> serde_json::Value {
        serde_json::Value::from(self.summary.clone())
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `www-authenticate` for a 401, as Envoy sends it.
pub fn challenge(host: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or("/");
    format!("Bearer realm=\"http://{host}{path}\", error=\"invalid_token\"")
}
