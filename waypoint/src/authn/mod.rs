//! RequestAuthentication: JWT validation in front of the authorizer, deciding as Envoy's
//! `jwt_authn` filter does with the configuration istiod generates for it.
//!
//! RequestAuthentications bind to the waypoint by `targetRefs` exactly as AuthorizationPolicies
//! do. Traffic to a target is checked against the rules bound to the whole waypoint plus those
//! bound to that target, merged as istiod merges them into one `jwt_authn` filter whose
//! requirement is "any rule, or `allow_missing`" (pilot/pkg/security/authn, `convertToEnvoyJwtConfig`):
//!
//! 1. every header a rule names in `outputPayloadToHeader` / `outputClaimToHeaders` is removed
//!    from the request before any token is read (Envoy's `sanitizeHeaders`, called by every
//!    verifier in verifier.cc before it extracts): only a validated token sets them;
//! 2. tokens are read from every location any rule names ([`location`], as extractor.cc);
//! 3. no token: the request goes on without a request principal;
//! 4. one token (the same string, wherever and however often it was found): its `iss` picks the
//!    rules, in one hash lookup before any signature is checked; a token whose issuer no rule
//!    reading one of its locations names gets 401 "Jwt issuer is not configured" (`allow_missing`
//!    lets only a *missing* token through, envoyproxy/envoy#15199 after istio/istio#24371);
//! 5. several different tokens: 401 "Found multiple Jwt tokens". Envoy verifies each and
//!    fails the request if any fails (authenticator.cc `doneWithStatus`), so an invalid token
//!    next to a valid one gets 401 there too; when all are valid Envoy accepts and the
//!    principal is whichever it verified last, which Istio documents as undefined. We refuse
//!    that case rather than pick one, and verify nothing for it;
//! 6. checks in Envoy's order: parse (jwt_verify_lib's claim types), `exp`/`nbf` with 60 s
//!    leeway, audiences (403, as Envoy's filter.cc answers `JwtAudienceNotAllowed`), then the
//!    signature; failures answer with Envoy's message and
//!    `www-authenticate: Bearer realm="<url>", error="invalid_token"`;
//! 7. a valid token: its claims feed `requestPrincipals` and `request.auth.*`; unless the
//!    rule forwards it, it is removed from where it was found ([`location`]); output headers are
//!    set.
//!
//! Work per request is bounded: valid tokens are cached per target (bounded in entries and in
//! bytes, tokens over 4 KiB never), refused ones are answered from memory for a few seconds,
//! and one token is checked against at most [`provider::MAX_KEYS_TRIED`] keys.

pub mod cache;
pub mod fetch_guard;
pub mod jwks;
pub mod location;
pub mod provider;
pub mod signature;

use std::borrow::Cow;
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

/// A malformed JWS header, with jwt_verify_lib's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    Base64,
    Json,
    Alg,
    AlgNotSupported,
    Kid,
}

/// A malformed JWT payload, with jwt_verify_lib's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    Base64,
    Json,
    IssNotString,
    SubNotString,
    IatNotInteger,
    IatOutOfRange,
    NbfNotInteger,
    NbfOutOfRange,
    ExpNotInteger,
    ExpOutOfRange,
    JtiNotString,
    AudNotString,
}

/// Why a token was refused. The texts are jwt_verify_lib's (status.cc), which clients and
/// operators of Envoy already know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthnError {
    Malformed,
    Header(HeaderError),
    Payload(PayloadError),
    SignatureBase64,
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
    /// The response body.
    pub fn body(self) -> &'static str {
        match self {
            AuthnError::Malformed => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            AuthnError::Header(h) => match h {
                HeaderError::Base64 => "Jwt header is an invalid Base64url encoded",
                HeaderError::Json => "Jwt header is an invalid JSON",
                HeaderError::Alg => "Jwt header [alg] field is required and must be a string",
                HeaderError::AlgNotSupported => "Jwt header [alg] is not supported",
                HeaderError::Kid => "Jwt header [kid] field is not a string",
            },
            AuthnError::Payload(p) => match p {
                PayloadError::Base64 => "Jwt payload is an invalid Base64url encoded",
                PayloadError::Json => "Jwt payload is an invalid JSON",
                PayloadError::IssNotString => "Jwt payload [iss] field is not a string",
                PayloadError::SubNotString => "Jwt payload [sub] field is not a string",
                PayloadError::IatNotInteger => "Jwt payload [iat] field is not an integer",
                PayloadError::IatOutOfRange => {
                    "Jwt payload [iat] field is not a positive 64 bit integer"
                }
                PayloadError::NbfNotInteger => "Jwt payload [nbf] field is not an integer",
                PayloadError::NbfOutOfRange => {
                    "Jwt payload [nbf] field is not a positive 64 bit integer"
                }
                PayloadError::ExpNotInteger => "Jwt payload [exp] field is not an integer",
                PayloadError::ExpOutOfRange => {
                    "Jwt payload [exp] field is not a positive 64 bit integer"
                }
                PayloadError::JtiNotString => "Jwt payload [jti] field is not a string",
                PayloadError::AudNotString => {
                    "Jwt payload [aud] field is not a string or string list"
                }
            },
            AuthnError::SignatureBase64 => "Jwt signature is an invalid Base64url encoded",
            AuthnError::UnknownIssuer => "Jwt issuer is not configured",
            AuthnError::Expired => "Jwt is expired",
            AuthnError::NotYetValid => "Jwt not yet valid",
            AuthnError::Audience => "Audiences in Jwt are not allowed",
            AuthnError::BadSignature => "Jwt verification fails",
            AuthnError::KeyNotFound => "Jwks doesn't have key to match kid or alg from Jwt",
            AuthnError::JwksUnavailable => "Jwks remote fetch is failed",
            AuthnError::MultipleTokens => "Found multiple Jwt tokens",
        }
    }

    /// The HTTP status: 403 for audiences, 401 otherwise (Envoy's filter.cc `onComplete`).
    pub fn status(self) -> u16 {
        match self {
            AuthnError::Audience => 403,
            _ => 401,
        }
    }

    /// Whether the same token may be refused from memory: not when the keys could not be
    /// fetched, which the next fetch may change.
    fn lasting(self) -> bool {
        !matches!(self, AuthnError::JwksUnavailable)
    }
}

impl std::fmt::Display for AuthnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.body())
    }
}

impl std::error::Error for AuthnError {}

/// The header edits authentication makes, on whatever holds the request's headers.
pub trait HeaderEdit {
    fn remove_header(&mut self, name: &HeaderName);
    fn append_header(&mut self, name: &HeaderName, value: &HeaderValue);
}

impl HeaderEdit for HeaderMap {
    fn remove_header(&mut self, name: &HeaderName) {
        self.remove(name);
    }
    fn append_header(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.append(name.clone(), value.clone());
    }
}

impl HeaderEdit for pingora::http::RequestHeader {
    fn remove_header(&mut self, name: &HeaderName) {
        pingora::http::RequestHeader::remove_header(self, name);
    }
    fn append_header(&mut self, name: &HeaderName, value: &HeaderValue) {
        // Both are already valid: appending cannot fail.
        let _ = pingora::http::RequestHeader::append_header(self, name.clone(), value.clone());
    }
}

/// A request with a valid token, and what to change in it before it goes on.
#[derive(Debug)]
pub struct Accepted {
    pub verified: Arc<Verified>,
    /// Headers that held the token, removed unless it is forwarded.
    remove: Vec<HeaderName>,
    /// The query without the token's parameters, when they were removed.
    pub query: Option<String>,
}

impl Accepted {
    /// Removes the token's headers and sets the output headers. The query change, if any, is
    /// in [`Accepted::query`] (see [`Accepted::apply_to_request`]).
    pub fn apply(&self, headers: &mut impl HeaderEdit) {
        for name in &self.remove {
            headers.remove_header(name);
        }
        for (name, value) in &self.verified.set_headers {
            headers.append_header(name, value);
        }
    }

    /// [`Accepted::apply`] plus the new query, on a request about to be proxied.
    pub fn apply_to_request(&self, req: &mut pingora::http::RequestHeader) {
        self.apply(req);
        if let Some(query) = &self.query {
            let path = req.uri.path();
            let pq = if query.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{query}")
            };
            let mut parts = req.uri.clone().into_parts();
            // The query came from a valid URI minus some of its parameters: it stays valid.
            if let Ok(pq) = pq.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    req.set_uri(uri);
                }
            }
        }
    }
}

/// The rules that apply to one target (the waypoint's plus the target's own).
#[derive(Debug)]
pub struct Authenticator {
    by_issuer: HashMap<String, Vec<Arc<Provider>>>,
    /// Every location any rule reads, each once.
    locations: Vec<Location>,
    /// Every output header any rule sets, each once.
    output_headers: Vec<HeaderName>,
    cache: TokenCache,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    fn new(providers: &[Arc<Provider>], metrics: Arc<Metrics>) -> Authenticator {
        let mut by_issuer: HashMap<String, Vec<Arc<Provider>>> = HashMap::new();
        let mut locations: Vec<Location> = Vec::new();
        let mut output_headers: Vec<HeaderName> = Vec::new();
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
            for h in p.output_headers() {
                if !output_headers.contains(h) {
                    output_headers.push(h.clone());
                }
            }
        }
        Authenticator {
            by_issuer,
            locations,
            output_headers,
            cache: TokenCache::new(cache::MAX_ENTRIES, cache::MAX_BYTES),
            metrics,
        }
    }

    /// Removes every output header: run on every request, before [`Authenticator::authenticate`].
    pub fn sanitize(&self, headers: &mut impl HeaderEdit) {
        for h in &self.output_headers {
            headers.remove_header(h);
        }
    }

    pub fn output_headers(&self) -> &[HeaderName] {
        &self.output_headers
    }

    /// The tokens in a request: each distinct token once, with the indices of the locations it
    /// was found in.
    pub fn find<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Vec<(Cow<'a, str>, Vec<usize>)> {
        let mut found: Vec<(Cow<'a, str>, Vec<usize>)> = Vec::new();
        for (i, loc) in self.locations.iter().enumerate() {
            for token in loc.find(headers, query) {
                match found.iter_mut().find(|(t, _)| *t == token) {
                    Some((_, at)) if at.contains(&i) => {}
                    Some((_, at)) => at.push(i),
                    None => found.push((token, vec![i])),
                }
            }
        }
        found
    }

    /// Authenticates a request (headers already [sanitized](Authenticator::sanitize)):
    /// `Ok(None)` when it carries no token.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Accepted>, AuthnError> {
        let mut found = self.find(headers, query);
        if found.len() > 1 {
            return Err(AuthnError::MultipleTokens);
        }
        let Some((token, at)) = found.pop() else {
            return Ok(None);
        };
        let verified = self.verify(&token, &at).await?;
        let mut remove = Vec::new();
        let mut params = Vec::new();
        if verified.provider.strips() {
            for &i in &at {
                let loc = &self.locations[i];
                remove.extend(loc.header().cloned());
                params.extend(loc.param());
            }
        }
        let query = query.and_then(|q| location::strip_params(q, &params));
        Ok(Some(Accepted {
            verified,
            remove,
            query,
        }))
    }

    /// Validates `token`, found at locations `at`, against the rules naming its issuer and
    /// reading one of those locations; from the caches when it was seen recently.
    pub async fn verify(&self, token: &str, at: &[usize]) -> Result<Arc<Verified>, AuthnError> {
        let now = unix_now();
        // Which locations: a token found elsewhere may meet other rules. More than 64
        // locations (never in practice) are not cached.
        let places = at
            .iter()
            .try_fold(0u64, |m, &i| (i < 64).then(|| m | (1 << i)));
        if let Some(places) = places {
            if let Some(v) = self.cache.get(token, places, now) {
                self.metrics.jwt_cache_hits.inc();
                return Ok(v);
            }
            if let Some(e) = self.cache.refused(token, places) {
                self.metrics.jwt_refused_cache_hits.inc();
                return Err(e);
            }
        }
        match self.verify_uncached(token, at, now).await {
            Ok(v) => {
                let v = Arc::new(v);
                if let Some(places) = places {
                    self.cache.insert(token, places, v.clone(), now);
                }
                Ok(v)
            }
            Err(e) => {
                if let Some(places) = places
                    && e.lasting()
                {
                    self.cache.refuse(token, places, e);
                }
                Err(e)
            }
        }
    }

    /// [`Authenticator::verify`] without the caches (what a miss costs).
    pub async fn verify_uncached(
        &self,
        token: &str,
        at: &[usize],
        now: u64,
    ) -> Result<Verified, AuthnError> {
        let parsed = Parsed::new(token)?;
        let candidates = parsed
            .issuer()
            .and_then(|iss| self.by_issuer.get(iss))
            .into_iter()
            .flatten()
            .filter(|p| at.iter().any(|&i| p.locations.contains(&self.locations[i])));
        let mut last = AuthnError::UnknownIssuer;
        for p in candidates {
            match p.verify(&parsed, now).await {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Refused tokens remembered.
    pub fn refused_tokens(&self) -> usize {
        self.cache.refused_len()
    }

    /// The estimated bytes the verified-token cache holds.
    pub fn cached_bytes(&self) -> usize {
        self.cache.bytes()
    }
}

/// Every RequestAuthentication bound to this waypoint, compiled.
#[derive(Debug, Default)]
pub struct Authn {
    waypoint: Option<Arc<Authenticator>>,
    targets: HashMap<String, Arc<Authenticator>>,
    /// For `/config_dump`: per rule, its origin, issuer, key source and binding, and the rule
    /// itself for the state of its fetched keys.
    summary: Vec<(serde_json::Value, Arc<Provider>)>,
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
                summary.push((
                    serde_json::json!({
                        "rule": p.origin,
                        "issuer": p.issuer,
                        "keys": p.key_source(),
                        "locations": p.locations.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "binding": bound,
                    }),
                    p.clone(),
                ));
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
        self.summary
            .iter()
            .map(|(rule, p)| {
                let mut rule = rule.clone();
                if let Some(fetched) = p.fetched() {
                    // What the waypoint holds now, and why the last fetch failed: what an
                    // operator needs when every token of an issuer gets 401.
                    rule["fetchedKeys"] = fetched.keys.into();
                    rule["lastFetchError"] = fetched.last_error.into();
                }
                rule
            })
            .collect()
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
