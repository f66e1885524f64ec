//! One compiled `jwtRule`: which tokens it accepts and what it does with a valid one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_api_bindings::ObjectKey;
use gateway_api_bindings::istio::{JwtRule, parse_duration};
use http::HeaderValue;
use http::header::HeaderName;
use jsonwebtoken::Algorithm;
use policy_engine::request::DEFAULT_SPACE_DELIMITED_CLAIMS;
use policy_engine::{Claim, JwtClaims};

use super::AuthnError;
use super::jwks::{self, JwksRegistry, KeySet, Source};
use super::location::Location;

/// Clock skew tolerated on `exp` and `nbf`, as Envoy's default `clock_skew_seconds`.
pub const LEEWAY_SECS: u64 = 60;

/// Istio's default JWKS fetch timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Provider {
    /// `ns/name` of the RequestAuthentication and the rule's index, for logs.
    pub origin: String,
    pub issuer: String,
    audiences: Vec<String>,
    pub locations: Vec<Location>,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, Vec<String>)>,
    space_delimited: Vec<String>,
    keys: Arc<KeySet>,
}

/// What a valid token yields.
#[derive(Debug)]
pub struct Verified {
    pub claims: JwtClaims,
    /// `<iss>/<sub>`.
    pub principal: String,
    pub provider: Arc<Provider>,
    /// Headers to set on the request (payload and claims output).
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Unix seconds after which the token is expired (no leeway): cache entries end there.
    pub exp: Option<u64>,
}

impl Provider {
    pub fn new(
        ra: &ObjectKey,
        index: usize,
        rule: &JwtRule,
        registry: &JwksRegistry,
    ) -> Result<Provider, String> {
        let origin = format!("{ra} jwtRules[{index}]");
        let timeout = match &rule.timeout {
            Some(t) => {
                parse_duration(t).ok_or_else(|| format!("timeout {t:?} is not a duration"))?
            }
            None => DEFAULT_TIMEOUT,
        };
        let keys = match (&rule.jwks, &rule.jwks_uri) {
            (Some(inline), _) => {
                let (keys, skipped) = jwks::parse(inline.as_bytes())?;
                if !skipped.is_empty() {
                    tracing::warn!(rule = %origin, skipped = ?skipped, "inline JWKS keys skipped");
                }
                Arc::new(KeySet::inline(keys))
            }
            (None, Some(uri)) => registry.remote(Source::Uri(uri.clone()), timeout),
            (None, None) => registry.remote(Source::Discovery(rule.issuer.clone()), timeout),
        };
        let header = |h: &str| {
            HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("{h:?} is not a header name"))
        };
        let payload_header = rule
            .output_payload_to_header
            .as_deref()
            .map(header)
            .transpose()?;
        let claim_headers = rule
            .output_claim_to_headers
            .iter()
            .map(|c| {
                Ok((
                    header(&c.header)?,
                    c.claim.split('.').map(str::to_owned).collect(),
                ))
            })
            .collect::<Result<_, String>>()?;
        let mut space_delimited: Vec<String> = DEFAULT_SPACE_DELIMITED_CLAIMS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        space_delimited.extend(rule.space_delimited_claims.iter().cloned());
        Ok(Provider {
            origin,
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            locations: Location::of_rule(rule)?,
            forward: rule.forward_original_token,
            payload_header,
            claim_headers,
            space_delimited,
            keys,
        })
    }

    /// Whether the token may be stripped from `location` after validation.
    pub fn strips(&self) -> bool {
        !self.forward
    }

    pub fn key_source(&self) -> String {
        self.keys
            .source()
            .map_or_else(|| "inline".to_owned(), ToString::to_string)
    }

    /// Checks the signature against this rule's keys, then time and audience. A token whose
    /// `kid` the keys lack (or any token before the first fetch) triggers one bounded refetch.
    pub async fn verify(
        self: &Arc<Self>,
        token: &Parsed<'_>,
        now: u64,
    ) -> Result<Verified, AuthnError> {
        let seen = self.keys.version();
        let verified = self.check_signature(token)?
            || (self.keys.refetch(seen).await && self.check_signature(token)?);
        if !verified {
            return Err(if self.keys.current().is_none() {
                AuthnError::JwksUnavailable
            } else {
                AuthnError::KeyNotFound
            });
        }
        self.check_claims(token, now)
    }

    /// `Ok(false)` when no key fits the token (unknown `kid`, or no keys yet); an error when a
    /// fitting key rejects the signature.
    pub fn check_signature(&self, token: &Parsed<'_>) -> Result<bool, AuthnError> {
        let Some(keys) = self.keys.current() else {
            return Ok(false);
        };
        let mut fitting = keys
            .iter()
            .filter(|k| k.fits(token.alg, token.kid.as_deref()))
            .peekable();
        if fitting.peek().is_none() {
            return Ok(false);
        }
        for k in fitting {
            if super::signature::verify(
                token.alg,
                &k.key,
                token.message.as_bytes(),
                token.signature,
            ) {
                return Ok(true);
            }
        }
        Err(AuthnError::BadSignature)
    }

    fn check_claims(
        self: &Arc<Self>,
        token: &Parsed<'_>,
        now: u64,
    ) -> Result<Verified, AuthnError> {
        let payload = &token.payload;
        let exp = numeric(payload, "exp")?;
        if exp.is_some_and(|exp| now > exp.saturating_add(LEEWAY_SECS)) {
            return Err(AuthnError::Expired);
        }
        if numeric(payload, "nbf")?.is_some_and(|nbf| now.saturating_add(LEEWAY_SECS) < nbf) {
            return Err(AuthnError::NotYetValid);
        }
        if !self.audiences.is_empty() {
            let ok = match payload.get("aud") {
                Some(serde_json::Value::String(a)) => self.audiences.contains(a),
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .filter_map(|a| a.as_str())
                    .any(|a| self.audiences.iter().any(|x| x == a)),
                _ => false,
            };
            if !ok {
                return Err(AuthnError::Audience);
            }
        }
        let sub = payload.get("sub").and_then(|s| s.as_str()).unwrap_or("");
        let principal = format!("{}/{sub}", self.issuer);
        let mut set_headers = Vec::new();
        if let Some(h) = &self.payload_header
            && let Ok(v) = HeaderValue::from_str(token.payload_b64)
        {
            set_headers.push((h.clone(), v));
        }
        for (h, path) in &self.claim_headers {
            if let Some(v) = claim_header_value(payload, path) {
                set_headers.push((h.clone(), v));
            }
        }
        let claims: BTreeMap<String, Claim> =
            payload.iter().map(|(k, v)| (k.clone(), claim(v))).collect();
        let delimited: Vec<&str> = self.space_delimited.iter().map(String::as_str).collect();
        Ok(Verified {
            claims: JwtClaims::new(claims, &delimited),
            principal,
            provider: self.clone(),
            set_headers,
            exp,
        })
    }
}

/// A token split and decoded, before any provider looked at it.
#[derive(Debug)]
pub struct Parsed<'t> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// `header.payload`, what the signature covers.
    pub message: &'t str,
    pub signature: &'t str,
    pub payload_b64: &'t str,
    pub payload: serde_json::Map<String, serde_json::Value>,
}

impl<'t> Parsed<'t> {
    pub fn new(token: &'t str) -> Result<Parsed<'t>, AuthnError> {
        use base64::Engine as _;
        let (message, signature) = token.rsplit_once('.').ok_or(AuthnError::Malformed)?;
        let (_, payload_b64) = message.split_once('.').ok_or(AuthnError::Malformed)?;
        if payload_b64.contains('.') {
            return Err(AuthnError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthnError::Malformed)?;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload_b64.trim_end_matches('='))
            .map_err(|_| AuthnError::Malformed)?;
        let payload = serde_json::from_slice(&payload).map_err(|_| AuthnError::Malformed)?;
        Ok(Parsed {
            alg: header.alg,
            kid: header.kid,
            message,
            signature,
            payload_b64,
            payload,
        })
    }

    pub fn issuer(&self) -> Option<&str> {
        self.payload.get("iss").and_then(|v| v.as_str())
    }
}

/// A time claim: absent, or a non-negative number of seconds.
fn numeric(
    payload: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<u64>, AuthnError> {
    match payload.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(AuthnError::Malformed),
    }
}

/// Envoy's `claim_to_headers`: strings, numbers and booleans; nested by `.`.
fn claim_header_value(
    payload: &serde_json::Map<String, serde_json::Value>,
    path: &[String],
) -> Option<HeaderValue> {
    let (first, rest) = path.split_first()?;
    let mut v = payload.get(first)?;
    for k in rest {
        v = v.get(k)?;
    }
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

/// A JSON claim as the engine matches it.
pub fn claim(v: &serde_json::Value) -> Claim {
    match v {
        serde_json::Value::String(s) => Claim::String(s.clone()),
        serde_json::Value::Array(items) => Claim::List(items.iter().map(claim).collect()),
        serde_json::Value::Object(m) => {
            Claim::Object(m.iter().map(|(k, v)| (k.clone(), claim(v))).collect())
        }
        _ => Claim::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_tokens() {
        for t in ["", "a", "a.b", "a.b.c.d", "!!.e30.sig"] {
            assert!(matches!(Parsed::new(t), Err(AuthnError::Malformed)), "{t}");
        }
    }
}
