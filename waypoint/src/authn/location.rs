//! Where a token is read from: `fromHeaders`, `fromParams`, `fromCookies`, or Istio's defaults
//! (`Authorization: Bearer <token>`, then the `access_token` query parameter), and how it is
//! taken out of the request afterwards.
//!
//! Reading follows Envoy's extractor (source/extensions/filters/http/jwt_authn/extractor.cc):
//!
//! * header: every value of the header is looked at. With a prefix, the prefix may stand
//!   anywhere in the value (case-sensitive), and the token starts at the first base64url
//!   character or `.` after it and runs to the end of the value (if there is none, the whole
//!   value is the "token", which then fails to parse: 401). Without a prefix the whole value is
//!   the token. A value without the prefix (`Basic ...`, `bearer ...`) holds no token.
//! * query parameter: names and values are percent-decoded (no `+` → space), as Envoy's
//!   `parseAndDecodeQueryString`; the first parameter with the name holds the token.
//! * cookie: every `Cookie` header, `;`-separated, leading spaces trimmed, the first cookie with
//!   the name wins; a value wrapped in double quotes loses them (Envoy's `parseCookies`).
//!
//! Removal (`forwardOriginalToken: false`) as Envoy's `removeJwt`: the header is removed
//! with all its values; every parameter whose decoded name is the token's is removed from the
//! query (Envoy 1.31+). Envoy re-serializes the remaining parameters decoded; we keep them
//! byte for byte, so the app sees exactly what the client sent minus the token. Cookies are left
//! as they are, as Envoy does (it has no cookie removal): a rule reading cookies forwards them.

use std::borrow::Cow;
use std::fmt;

use gateway_api_bindings::istio::JwtRule;
use http::HeaderMap;
use http::header::{COOKIE, HeaderName};

/// One place a token can be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// The header's value after `prefix` (which must be in it when not empty).
    Header {
        name: HeaderName,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Header { name, prefix } if prefix.is_empty() => write!(f, "header {name}"),
            Location::Header { name, prefix } => write!(f, "header {name} ({prefix:?})"),
            Location::Param(p) => write!(f, "query parameter {p}"),
            Location::Cookie(c) => write!(f, "cookie {c}"),
        }
    }
}

/// The characters of a base64url JWT, plus the dots between its parts.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

impl Location {
    /// The locations of one rule. Envoy falls back to the defaults only when the rule names no
    /// header, parameter or cookie at all.
    pub fn of_rule(rule: &JwtRule) -> Result<Vec<Location>, String> {
        let mut out = Vec::new();
        for h in &rule.from_headers {
            let name = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("fromHeaders: {:?} is not a header name", h.name))?;
            out.push(Location::Header {
                name,
                prefix: h.prefix.clone(),
            });
        }
        out.extend(rule.from_params.iter().cloned().map(Location::Param));
        out.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
        if out.is_empty() {
            out.push(Location::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            });
            out.push(Location::Param("access_token".into()));
        }
        Ok(out)
    }

    /// Every token at this location of a request: one per header value holding one; at most one
    /// for a parameter or a cookie. `query` is the raw query string (after `?`).
    pub fn find<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Vec<Cow<'a, str>> {
        match self {
            Location::Header { name, prefix } => headers
                .get_all(name)
                .iter()
                .filter_map(|v| header_token(v.as_bytes(), prefix.as_bytes()))
                .collect(),
            Location::Param(p) => query
                .and_then(|q| params(q).find(|(k, _)| k == p).map(|(_, v)| v))
                .into_iter()
                .collect(),
            Location::Cookie(c) => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim_start().split_once('='))
                .find(|(k, _)| k == c)
                .map(|(_, v)| {
                    let unquoted = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v);
                    Cow::Borrowed(unquoted)
                })
                .into_iter()
                .collect(),
        }
    }

    /// The header to remove when a token found here is not forwarded.
    pub fn header(&self) -> Option<&HeaderName> {
        match self {
            Location::Header { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The parameter to remove from the query when a token found here is not forwarded.
    pub fn param(&self) -> Option<&str> {
        match self {
            Location::Param(p) => Some(p),
            _ => None,
        }
    }
}

/// The token in one header value, as Envoy's `extractJWT`.
fn header_token<'a>(value: &'a [u8], prefix: &[u8]) -> Option<Cow<'a, str>> {
    let text = std::str::from_utf8(value).ok()?;
    if prefix.is_empty() {
        return Some(Cow::Borrowed(text));
    }
    let at = value
        .windows(prefix.len())
        .position(|w| w == prefix)?
        .saturating_add(prefix.len());
    let token = match value[at..].iter().position(|b| is_token_char(*b)) {
        Some(start) => &text[at + start..],
        None => text,
    };
    Some(Cow::Borrowed(token))
}

/// `name=value` pairs of a query, both percent-decoded. A pair without `=` has an empty value.
fn params(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// `query` without the parameters whose decoded name is one of `names`, the others byte for
/// byte; `None` when nothing was removed.
pub fn strip_params(query: &str, names: &[&str]) -> Option<String> {
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(k, _)| k);
            let drop = !p.is_empty() && names.iter().any(|n| percent_decode(name) == *n);
            removed |= drop;
            !drop
        })
        .collect();
    removed.then(|| kept.join("&"))
}

/// `%XX` decoding as Envoy's `PercentEncoding::decode`: a `%` not followed by two hex digits
/// stays; bytes that do not form UTF-8 are replaced (such a name matches no configured one and
/// such a token fails to parse).
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_api_bindings::istio::JwtHeader;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn one<'a>(l: &Location, h: &'a HeaderMap, q: Option<&'a str>) -> Option<String> {
        let found = l.find(h, q);
        assert!(found.len() <= 1, "{found:?}");
        found.first().map(|t| t.to_string())
    }

    #[test]
    fn defaults_are_bearer_then_access_token() {
        let locs = Location::of_rule(&JwtRule::default()).unwrap();
        let h = headers(&[("authorization", "Bearer abc")]);
        assert_eq!(one(&locs[0], &h, None).as_deref(), Some("abc"));
        assert_eq!(
            one(&locs[1], &h, Some("x=1&access_token=def")).as_deref(),
            Some("def")
        );
        // Basic credentials are not a token, nor is a lower-case scheme.
        for v in ["Basic Zm9vOmJhcg==", "bearer abc"] {
            assert_eq!(one(&locs[0], &headers(&[("authorization", v)]), None), None);
        }
    }

    #[test]
    fn header_prefix_as_envoys_extractor() {
        let l = &Location::of_rule(&JwtRule::default()).unwrap()[0];
        let h = headers(&[
            ("authorization", "Basic Zm9v, Bearer a.b.c"),
            ("authorization", "Bearer    d.e.f"),
            ("authorization", "Bearer !!"),
            ("authorization", "Basic x"),
        ]);
        let got: Vec<String> = l.find(&h, None).iter().map(|t| t.to_string()).collect();
        assert_eq!(got, ["a.b.c", "d.e.f", "Bearer !!"]);
    }

    #[test]
    fn params_are_percent_decoded_and_the_first_wins() {
        let l = Location::Param("access_token".into());
        let h = HeaderMap::new();
        assert_eq!(
            one(&l, &h, Some("access%5Ftoken=a%2Eb.c&access_token=z")).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(one(&l, &h, Some("access_token")).as_deref(), Some(""));
        assert_eq!(one(&l, &h, Some("access_tokenx=1")), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(
            strip_params(
                "a=1&access_token=t&access%5ftoken=u&&b=%41",
                &["access_token"]
            )
            .as_deref(),
            Some("a=1&&b=%41")
        );
        assert_eq!(
            strip_params("access_token=t", &["access_token"]).as_deref(),
            Some("")
        );
        assert_eq!(strip_params("a=1", &["access_token"]), None);
    }

    #[test]
    fn cookies_unquoted_first_wins_across_headers() {
        let l = Location::Cookie("session".into());
        let h = headers(&[("cookie", "a=b;session=\"t1\""), ("cookie", "session=t2")]);
        assert_eq!(one(&l, &h, None).as_deref(), Some("t1"));
        let h = headers(&[("cookie", "xsession=1; session=\"")]);
        assert_eq!(one(&l, &h, None).as_deref(), Some("\""));
    }

    #[test]
    fn explicit_locations_replace_the_defaults() {
        let rule = JwtRule {
            from_headers: vec![JwtHeader {
                name: "X-Jwt".into(),
                prefix: String::new(),
            }],
            from_cookies: vec!["session".into()],
            ..JwtRule::default()
        };
        let locs = Location::of_rule(&rule).unwrap();
        assert_eq!(locs.len(), 2);
        let h = headers(&[("x-jwt", "t1"), ("cookie", "a=b; session=t2")]);
        assert_eq!(one(&locs[0], &h, None).as_deref(), Some("t1"));
        assert_eq!(one(&locs[1], &h, None).as_deref(), Some("t2"));
    }
}
