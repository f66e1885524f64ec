//! Where a token is read from: `fromHeaders`, `fromParams`, `fromCookies`, or Istio's defaults
//! (`Authorization: Bearer <token>`, then the `access_token` query parameter).

use std::fmt;

use gateway_api_bindings::istio::JwtRule;
use http::HeaderMap;
use http::header::{COOKIE, HeaderName};

/// One place a token can be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// The header's value minus `prefix` (which must be there when not empty).
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

    /// The token at this location of a request, if any.
    pub fn find<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
        let token = match self {
            Location::Header { name, prefix } => headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| v.strip_prefix(prefix.as_str()))?,
            Location::Param(p) => query?
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find_map(|(k, v)| (k == p).then_some(v))?,
            Location::Cookie(c) => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find_map(|(k, v)| (k == c).then_some(v))?,
        };
        let token = token.trim();
        (!token.is_empty()).then_some(token)
    }
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

    #[test]
    fn defaults_are_bearer_then_access_token() {
        let locs = Location::of_rule(&JwtRule::default()).unwrap();
        let h = headers(&[("authorization", "Bearer abc")]);
        assert_eq!(locs[0].find(&h, None), Some("abc"));
        assert_eq!(locs[1].find(&h, Some("x=1&access_token=def")), Some("def"));
        // Basic credentials are not a token.
        let h = headers(&[("authorization", "Basic Zm9vOmJhcg==")]);
        assert_eq!(locs[0].find(&h, None), None);
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
        assert_eq!(locs[0].find(&h, None), Some("t1"));
        assert_eq!(locs[1].find(&h, None), Some("t2"));
    }
}
