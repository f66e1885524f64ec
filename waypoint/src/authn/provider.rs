//! One compiled `jwtRule`: which tokens it accepts and what it does with a valid one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_api_bindings::ObjectKey;
use gateway_api_bindings::istio::{JwtRule, parse_duration};
use http::HeaderValue;
use http::header::HeaderName;
use policy_engine::request::DEFAULT_SPACE_DELIMITED_CLAIMS;
use policy_engine::{Claim, JwtClaims};

use super::jwks::{self, Alg, JwksRegistry, KeySet, Source};
use super::location::Location;
use super::{AuthnError, HeaderError, PayloadError};

/// Clock skew tolerated on `exp` and `nbf`, as Envoy's default `clock_skew_seconds`.
pub const LEEWAY_SECS: u64 = 60;

/// The most keys one token's signature is checked against. A token without `kid` (or keys
/// without one) makes jwt_verify_lib try every key of the set; with thousands of inline keys one
/// forged token would cost that many signature checks on every request. Real key sets hold a
/// handful of keys; past this many, a token fails as if the remaining keys did not match.
pub const MAX_KEYS_TRIED: usize = 8;

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
    /// The encoded payload's length: what the claims cost in memory, for the cache's budget.
    pub payload_len: usize,
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
                let parsed = jwks::parse(inline.as_bytes())?;
                jwks::report_unusable(&origin, &parsed.unusable, &registry.metrics());
                Arc::new(KeySet::inline(parsed.keys))
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

    /// The state of fetched keys; `None` for inline ones.
    pub fn fetched(&self) -> Option<jwks::Fetched> {
        self.keys.fetched()
    }

    /// The output headers this rule sets from a valid token: removed from every request
    /// before any token is read, so a client can never send them itself.
    pub fn output_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.payload_header
            .iter()
            .chain(self.claim_headers.iter().map(|(h, _)| h))
    }

    /// Validates `token` for this rule in Envoy's order (authenticator.cc `startVerify`): time
    /// constraints, then audiences, then the signature. A token whose `kid` matches no key (or
    /// any token before the first fetch) triggers one bounded refetch.
    pub async fn verify(
        self: &Arc<Self>,
        token: &Parsed<'_>,
        now: u64,
    ) -> Result<Verified, AuthnError> {
        if token
            .exp
            .is_some_and(|exp| now > exp.saturating_add(LEEWAY_SECS))
        {
            return Err(AuthnError::Expired);
        }
        if token
            .nbf
            .is_some_and(|nbf| now.saturating_add(LEEWAY_SECS) < nbf)
        {
            return Err(AuthnError::NotYetValid);
        }
        if !self.audiences.is_empty() && !token.audiences.iter().any(|a| self.audiences.contains(a))
        {
            return Err(AuthnError::Audience);
        }
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
        Ok(self.accept(token))
    }

    /// `Ok(false)` when no key is selected for the token (unknown `kid`, another `alg`, or no
    /// keys yet); an error when selected keys reject the signature.
    pub fn check_signature(&self, token: &Parsed<'_>) -> Result<bool, AuthnError> {
        let Some(keys) = self.keys.current() else {
            return Ok(false);
        };
        let (alg, kid) = (token.alg.name(), token.kid.as_deref());
        if !keys.iter().any(|k| k.selected(alg, kid)) {
            return Ok(false);
        }
        // Keys of another type fail without any work and do not count against the cap. Keys
        // with a kid (the token's, when it has one) go first, so kid-less keys cannot crowd
        // them out: any key that verifies accepts the token, whatever the order.
        let message = token.message.as_bytes();
        let usable = |named: bool| {
            keys.iter().filter(move |k| {
                k.kid.is_some() == named && k.selected(alg, kid) && k.can_verify(token.alg)
            })
        };
        for k in usable(true).chain(usable(false)).take(MAX_KEYS_TRIED) {
            if super::signature::verify(token.alg, &k.material, message, &token.signature) {
                return Ok(true);
            }
        }
        Err(AuthnError::BadSignature)
    }

    fn accept(self: &Arc<Self>, token: &Parsed<'_>) -> Verified {
        let payload = &token.payload;
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
        Verified {
            claims: JwtClaims::new(claims, &delimited),
            principal,
            provider: self.clone(),
            set_headers,
            exp: token.exp,
            payload_len: token.payload_b64.len(),
        }
    }
}

/// A token split and decoded, before any provider looked at it: jwt_verify_lib's
/// `Jwt::parseFromString` (src/jwt.cc), with its checks and its messages.
#[derive(Debug)]
pub struct Parsed<'t> {
    pub alg: Alg,
    pub kid: Option<String>,
    /// `header.payload`, what the signature covers.
    pub message: String,
    pub signature: Vec<u8>,
    pub payload_b64: &'t str,
    pub payload: serde_json::Map<String, serde_json::Value>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub audiences: Vec<String>,
}

impl<'t> Parsed<'t> {
    pub fn new(token: &'t str) -> Result<Parsed<'t>, AuthnError> {
        // Exactly three non-empty parts (absl::StrSplit with SkipEmpty).
        let mut parts = token.split('.').filter(|p| !p.is_empty());
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthnError::Malformed);
        };
        let header = json_object(header_b64).map_err(|bad_json| {
            AuthnError::Header(if bad_json {
                HeaderError::Json
            } else {
                HeaderError::Base64
            })
        })?;
        let alg = match header.get("alg") {
            Some(serde_json::Value::String(a)) => {
                Alg::from_name(a).ok_or(AuthnError::Header(HeaderError::AlgNotSupported))?
            }
            _ => return Err(AuthnError::Header(HeaderError::Alg)),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(serde_json::Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(AuthnError::Header(HeaderError::Kid)),
        };
        let payload = json_object(payload_b64).map_err(|bad_json| {
            AuthnError::Payload(if bad_json {
                PayloadError::Json
            } else {
                PayloadError::Base64
            })
        })?;
        let signature = b64(signature_b64).ok_or(AuthnError::SignatureBase64)?;
        let mut parsed = Parsed {
            alg,
            kid,
            message: format!("{header_b64}.{payload_b64}"),
            signature,
            payload_b64,
            payload: serde_json::Map::new(),
            exp: None,
            nbf: None,
            audiences: Vec::new(),
        };
        let string = |name: &str, e: PayloadError| match payload.get(name) {
            None => Ok(()),
            Some(serde_json::Value::String(_)) => Ok(()),
            Some(_) => Err(AuthnError::Payload(e)),
        };
        string("iss", PayloadError::IssNotString)?;
        string("sub", PayloadError::SubNotString)?;
        string("jti", PayloadError::JtiNotString)?;
        time(
            &payload,
            "iat",
            PayloadError::IatNotInteger,
            PayloadError::IatOutOfRange,
        )?;
        parsed.nbf = time(
            &payload,
            "nbf",
            PayloadError::NbfNotInteger,
            PayloadError::NbfOutOfRange,
        )?;
        parsed.exp = time(
            &payload,
            "exp",
            PayloadError::ExpNotInteger,
            PayloadError::ExpOutOfRange,
        )?;
        parsed.audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or(AuthnError::Payload(PayloadError::AudNotString))?,
            Some(_) => return Err(AuthnError::Payload(PayloadError::AudNotString)),
        };
        parsed.payload = payload;
        Ok(parsed)
    }

    pub fn issuer(&self) -> Option<&str> {
        self.payload.get("iss").and_then(|v| v.as_str())
    }
}

/// Base64url with or without padding, as absl's `WebSafeBase64Unescape`.
fn b64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// A base64url JSON object; `Err(true)` when it is base64 but not a JSON object.
fn json_object(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, bool> {
    let bytes = b64(s).ok_or(false)?;
    serde_json::from_slice(&bytes).map_err(|_| true)
}

/// A time claim as jwt_verify_lib's `GetUInt64`: absent, or a JSON number in [0, 2^64),
/// truncated to whole seconds.
fn time(
    payload: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    not_number: PayloadError,
    out_of_range: PayloadError,
) -> Result<Option<u64>, AuthnError> {
    let Some(v) = payload.get(name) else {
        return Ok(None);
    };
    if let Some(n) = v.as_u64() {
        return Ok(Some(n));
    }
    let f = v.as_f64().ok_or(AuthnError::Payload(not_number))?;
    // 2^64 as f64 is exact; the cast below truncates a fraction.
    if !(0.0..18_446_744_073_709_551_616.0).contains(&f) {
        return Err(AuthnError::Payload(out_of_range));
    }
    Ok(Some(f as u64))
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
    use base64::Engine as _;

    fn token(header: &str, payload: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", e(header), e(payload), e("sig"))
    }

    #[test]
    fn malformed_tokens() {
        for t in ["", "a", "a.b", "a.b.c.d", "..."] {
            assert_eq!(Parsed::new(t).err(), Some(AuthnError::Malformed), "{t}");
        }
        assert_eq!(
            Parsed::new("!!.e30.c2ln").err(),
            Some(AuthnError::Header(HeaderError::Base64))
        );
    }

    #[test]
    fn claim_types_as_jwt_verify_lib() {
        let h = r#"{"alg":"RS256","kid":"k"}"#;
        let t = token(h, r#"{"iss":"i","sub":"s","exp":1.5e9,"aud":["a","b"]}"#);
        let ok = Parsed::new(&t).unwrap();
        assert_eq!(ok.exp, Some(1_500_000_000));
        assert_eq!(ok.audiences, ["a", "b"]);
        let cases = [
            (
                h,
                r#"{"sub":123}"#,
                AuthnError::Payload(PayloadError::SubNotString),
            ),
            (
                h,
                r#"{"iss":7}"#,
                AuthnError::Payload(PayloadError::IssNotString),
            ),
            (
                h,
                r#"{"aud":5}"#,
                AuthnError::Payload(PayloadError::AudNotString),
            ),
            (
                h,
                r#"{"aud":["a",5]}"#,
                AuthnError::Payload(PayloadError::AudNotString),
            ),
            (
                h,
                r#"{"exp":1e300}"#,
                AuthnError::Payload(PayloadError::ExpOutOfRange),
            ),
            (
                h,
                r#"{"exp":-1}"#,
                AuthnError::Payload(PayloadError::ExpOutOfRange),
            ),
            (
                h,
                r#"{"exp":"1"}"#,
                AuthnError::Payload(PayloadError::ExpNotInteger),
            ),
            (
                h,
                r#"{"nbf":null}"#,
                AuthnError::Payload(PayloadError::NbfNotInteger),
            ),
            (
                h,
                r#"{"iat":true}"#,
                AuthnError::Payload(PayloadError::IatNotInteger),
            ),
            (
                h,
                r#"{"jti":1}"#,
                AuthnError::Payload(PayloadError::JtiNotString),
            ),
            (h, r#"[1]"#, AuthnError::Payload(PayloadError::Json)),
            (
                r#"{"alg":"none"}"#,
                "{}",
                AuthnError::Header(HeaderError::AlgNotSupported),
            ),
            (
                r#"{"alg":"ES512"}"#,
                "{}",
                AuthnError::Header(HeaderError::AlgNotSupported),
            ),
            (r#"{"alg":1}"#, "{}", AuthnError::Header(HeaderError::Alg)),
            (
                r#"{"alg":"RS256","kid":1}"#,
                "{}",
                AuthnError::Header(HeaderError::Kid),
            ),
        ];
        for (h, p, want) in cases {
            assert_eq!(Parsed::new(&token(h, p)).err(), Some(want), "{h} {p}");
        }
    }
}
