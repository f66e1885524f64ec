//! The one place an incoming HTTP request becomes what policy is decided on, exactly as Envoy's
//! header map would hold it after its HTTP/1.1 or HTTP/2 codec and connection manager. The live
//! path ([`super::http`]) and `waypoint authz eval` both build it here, so they cannot disagree.
//!
//! What Envoy does, and so what this does:
//! * the request-target must be origin-form (`/p?q`), absolute-form (`http://a/p`), or, for
//!   the methods that allow them, `*` (OPTIONS) or authority-form (CONNECT); anything else is
//!   `400` (`http1.invalid_url`); `OPTIONS *` is not proxied (`404`), nor is a CONNECT
//!   (`405`, as Pingora's codec answers it first);
//! * the authority of an absolute-form target replaces `Host` (RFC 9112 3.2.2) and becomes
//!   `:authority`, what `hosts` match and what the upstream `Host` is (a `Host` that differs
//!   from it is `400`: Pingora's codec refuses it first); its scheme becomes
//!   `:scheme` (`http` or `https`, anything else is `400`); an origin-form request on this
//!   plaintext inner connection has `:scheme` `http`;
//! * `Host` must be present once (HTTP/1.1) and hold only authority characters (Envoy's
//!   `authorityIsValid`: no obs-text, no space, no `/`); otherwise `400`;
//! * a fragment is dropped; path bytes >= 0x80 are percent-encoded and the path is normalized
//!   (the query is left alone), and `:path` is that path with its query (on the live path a
//!   target that is not UTF-8 never gets here: Pingora's HTTP/1 parser answers it `400`);
//! * a header name sent more than once is matched on its values joined with `,` in arrival
//!   order (`getAllOfHeaderAsString`; `cookie` with `; `, as Envoy's header map appends it);
//!   values are bytes, so obs-text is matched, never treated as absent;
//! * `:path`, `:method`, `:authority` and `:scheme` are readable as `request.headers[...]`.

use std::borrow::Cow;

use http::HeaderMap;
use policy_engine::path::{self, PathNormalization};

/// Why a request is answered before policy, with the status Envoy gives it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "request-target {0:?} is none of origin-form, absolute-form, '*' (OPTIONS) and authority-form (CONNECT)"
    )]
    InvalidTarget(String),
    #[error("absolute-form scheme {0:?} is neither http nor https")]
    InvalidScheme(String),
    #[error("authority {0:?} holds a character Envoy refuses, or userinfo")]
    InvalidAuthority(String),
    #[error("no Host header")]
    MissingHost,
    #[error("more than one Host header, or :authority and Host disagree")]
    ConflictingHost,
    #[error("'*' targets are not proxied")]
    NotProxied,
    #[error("CONNECT is not proxied inside a tunnel")]
    Connect,
    #[error(transparent)]
    Path(#[from] path::InvalidPath),
}

impl Refused {
    /// The status Envoy answers with.
    pub fn status(&self) -> u16 {
        match self {
            Refused::NotProxied => 404,
            Refused::Connect => 405,
            _ => 400,
        }
    }
}

/// What arrived, borrowed from the codec's request.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub method: &'a str,
    /// The request-target (HTTP/1.1) or `:path` (HTTP/2) as received.
    pub target: &'a [u8],
    /// HTTP/2 `:authority`, when sent.
    pub h2_authority: Option<&'a str>,
    /// HTTP/2 `:scheme`, when sent; `None` for HTTP/1.
    pub h2_scheme: Option<&'a str>,
    pub http2: bool,
    pub headers: &'a HeaderMap,
}

/// The request as policy sees it. Implements [`policy_engine::Headers`].
#[derive(Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// `:authority`: validated, ASCII. What `hosts` match and what the upstream `Host` is.
    pub authority: Cow<'a, str>,
    /// `:scheme`: `http` or `https`.
    pub scheme: &'static str,
    /// The normalized path with its query, bytes >= 0x80 of the query percent-encoded: what
    /// `paths` match and what the upstream request-line carries.
    pub path: String,
    /// `:path`: the normalized path with the query as received.
    path_header: Vec<u8>,
    headers: &'a HeaderMap,
    /// Names sent more than once, with their joined values.
    joined: Vec<(&'a str, Vec<u8>)>,
}

/// Envoy's `check_authority_h1_h2` character set: RFC 3986 reg-name, IP literal and port
/// characters, `%` and `@`. We refuse `@` too (see [`authority`]).
fn is_authority_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=@[]_~".contains(&c)
}

/// A `Host`/`:authority` value as Envoy would accept it. Userinfo (`@`) is refused as well:
/// Envoy lets it through to the upstream, Pingora refuses to send it, and it has no use here.
fn authority(raw: &[u8]) -> Result<&str, Refused> {
    if raw.iter().all(|&c| is_authority_char(c) && c != b'@') {
        // All ASCII, so valid UTF-8.
        std::str::from_utf8(raw).map_err(|_| Refused::InvalidAuthority(lossy(raw)))
    } else {
        Err(Refused::InvalidAuthority(lossy(raw)))
    }
}

fn lossy(b: &[u8]) -> String {
    const SHOWN: usize = 256;
    String::from_utf8_lossy(&b[..b.len().min(SHOWN)]).into_owned()
}

/// Percent-encodes bytes >= 0x80, as Envoy's path canonicalizer escapes them one by one.
fn encode_high(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) if s.is_ascii() => Cow::Borrowed(s),
        _ => {
            let mut out = String::with_capacity(b.len() + 16);
            for &c in b {
                if c >= 0x80 {
                    out.push_str(&format!("%{c:02X}"));
                } else {
                    out.push(char::from(c));
                }
            }
            Cow::Owned(out)
        }
    }
}

/// Whether the port of `host[:port]` (an IPv6 literal in `[]`) is absent or fits 16 bits.
fn port_fits(authority: &str) -> bool {
    let after_literal = authority.rfind(']').map_or(0, |i| i + 1);
    match authority[after_literal..].rfind(':') {
        None => true,
        Some(i) => {
            let port = &authority[after_literal + i + 1..];
            port.is_empty()
                || (port.bytes().all(|c| c.is_ascii_digit()) && port.parse::<u16>().is_ok())
        }
    }
}

/// An absolute-form target split into scheme, authority and path-and-query.
fn absolute_form(target: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let colon = target.iter().position(|&c| c == b':')?;
    let (scheme, rest) = (&target[..colon], &target[colon + 1..]);
    let valid_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    let rest = rest.strip_prefix(b"//").filter(|_| valid_scheme)?;
    let end = rest
        .iter()
        .position(|&c| matches!(c, b'/' | b'?'))
        .unwrap_or(rest.len());
    Some((scheme, &rest[..end], &rest[end..]))
}

impl<'a> RequestView<'a> {
    /// Builds the view, or says why (and with which status) Envoy answers before policy.
    pub fn build(
        req: Incoming<'a>,
        normalization: PathNormalization,
    ) -> Result<RequestView<'a>, Refused> {
        let target = match req.target.iter().position(|&c| c == b'#') {
            Some(i) => &req.target[..i],
            None => req.target,
        };
        let mut hosts = req.headers.get_all(http::header::HOST).iter();
        let host = hosts.next().map(http::HeaderValue::as_bytes);
        if hosts.next().is_some() {
            return Err(Refused::ConflictingHost);
        }
        let (scheme, authority, path_and_query): (&'static str, Cow<'a, str>, &[u8]) = if req.http2
        {
            // `:path` must be origin-form (Envoy's connection manager answers 404
            // otherwise, `OPTIONS *` included).
            if !target.starts_with(b"/") {
                return Err(Refused::NotProxied);
            }
            let scheme = match req.h2_scheme.map(str::to_ascii_lowercase).as_deref() {
                None | Some("http") => "http",
                Some("https") => "https",
                Some(other) => return Err(Refused::InvalidScheme(other.to_owned())),
            };
            let authority = match (req.h2_authority, host) {
                (Some(a), None) => authority(a.as_bytes())?,
                (Some(a), Some(h)) if a.as_bytes() == h => authority(h)?,
                (Some(_), Some(_)) => return Err(Refused::ConflictingHost),
                (None, Some(h)) => authority(h)?,
                (None, None) => return Err(Refused::MissingHost),
            };
            (scheme, Cow::Borrowed(authority), target)
        } else if target.starts_with(b"/") {
            let authority = authority(host.ok_or(Refused::MissingHost)?)?;
            ("http", Cow::Borrowed(authority), target)
        } else if target == b"*" && req.method == "OPTIONS" {
            return Err(Refused::NotProxied);
        } else if req.method == "CONNECT" {
            if target.is_empty() || target.contains(&b'/') {
                return Err(Refused::InvalidTarget(lossy(target)));
            }
            return Err(Refused::Connect);
        } else if let Some((scheme, auth, pq)) = absolute_form(target) {
            let scheme = match scheme.to_ascii_lowercase().as_slice() {
                b"http" => "http",
                b"https" => "https",
                _ => return Err(Refused::InvalidScheme(lossy(scheme))),
            };
            // Envoy's URL parser needs a host and a port that fits 16 bits.
            let auth = authority(auth)?;
            if auth.is_empty() || !port_fits(auth) || http::uri::Authority::try_from(auth).is_err()
            {
                return Err(Refused::InvalidAuthority(auth.to_owned()));
            }
            // Pingora's HTTP/1 codec refuses a `Host` that differs from the target's
            // authority before any filter runs (Envoy lets the target's authority win).
            if host.is_some_and(|h| h != auth.as_bytes()) {
                return Err(Refused::ConflictingHost);
            }
            (scheme, Cow::Owned(auth.to_owned()), pq)
        } else {
            return Err(Refused::InvalidTarget(lossy(target)));
        };

        // Normalize the path; the query stays as it came (for `:path`) and is percent-encoded
        // only for the upstream request-line.
        let (raw_path, raw_query) = match path_and_query.iter().position(|&c| c == b'?') {
            Some(i) => path_and_query.split_at(i),
            None => (path_and_query, &b""[..]),
        };
        let encoded = encode_high(raw_path);
        let normalized = path::normalize(&encoded, normalization)?;
        let mut path_header = Vec::with_capacity(normalized.len() + raw_query.len());
        path_header.extend_from_slice(normalized.as_bytes());
        path_header.extend_from_slice(raw_query);
        let mut path = normalized.into_owned();
        path.push_str(&encode_high(raw_query));

        let mut joined = Vec::new();
        for name in req.headers.keys() {
            let mut values = req.headers.get_all(name).iter();
            if let (Some(first), Some(_)) = (values.next(), values.next()) {
                let sep: &[u8] = if *name == http::header::COOKIE {
                    b"; "
                } else {
                    b","
                };
                let mut all = first.as_bytes().to_vec();
                for v in req.headers.get_all(name).iter().skip(1) {
                    all.extend_from_slice(sep);
                    all.extend_from_slice(v.as_bytes());
                }
                joined.push((name.as_str(), all));
            }
        }
        Ok(RequestView {
            method: req.method,
            authority,
            scheme,
            path,
            path_header,
            headers: req.headers,
            joined,
        })
    }

    /// The engine's request view.
    pub fn http(&self) -> policy_engine::HttpRequest<'_> {
        policy_engine::HttpRequest {
            method: self.method,
            host: &self.authority,
            path: &self.path,
            headers: self,
        }
    }
}

impl policy_engine::Headers for RequestView<'_> {
    fn get(&self, lower_case_name: &str) -> Option<&[u8]> {
        match lower_case_name {
            ":path" => Some(self.path_header.as_slice()),
            ":method" => Some(self.method.as_bytes()),
            // Envoy keeps `Host` only as `:authority`, so there `request.headers[host]` finds
            // nothing and a DENY written that way denies nothing; here it reads the authority.
            ":authority" | "host" => Some(self.authority.as_bytes()),
            ":scheme" => Some(self.scheme.as_bytes()),
            _ => {
                if let Some((_, v)) = self.joined.iter().find(|(n, _)| *n == lower_case_name) {
                    return Some(v.as_slice());
                }
                self.headers.get(lower_case_name).map(|v| v.as_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_engine::Headers as _;

    fn h1<'a>(method: &'a str, target: &'a [u8], headers: &'a HeaderMap) -> Incoming<'a> {
        Incoming {
            method,
            target,
            h2_authority: None,
            h2_scheme: None,
            http2: false,
            headers,
        }
    }

    fn map(fields: &[(&str, &[u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in fields {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        m
    }

    fn view<'a>(
        method: &'a str,
        target: &'a [u8],
        m: &'a HeaderMap,
    ) -> Result<RequestView<'a>, Refused> {
        RequestView::build(h1(method, target, m), PathNormalization::Base)
    }

    #[test]
    fn repeated_fields_join_in_arrival_order_as_bytes() {
        let m = map(&[
            ("host", b"a"),
            ("x-d", b"ok"),
            ("x-o", b"1"),
            ("x-d", b"\xffevil"),
            ("cookie", b"a=1"),
            ("cookie", b"b=2"),
        ]);
        let v = view("GET", b"/", &m).unwrap();
        assert_eq!(v.get("x-d"), Some(&b"ok,\xffevil"[..]));
        assert_eq!(v.get("x-o"), Some(&b"1"[..]));
        assert_eq!(v.get("cookie"), Some(&b"a=1; b=2"[..]));
        assert_eq!(v.get("x-none"), None);
    }

    #[test]
    fn target_forms() {
        let m = map(&[("host", b"h")]);
        let status = |method, target: &[u8]| {
            view(method, target, &m)
                .map(|_| 200)
                .unwrap_or_else(|e| e.status())
        };
        assert_eq!(status("GET", b"/a"), 200);
        assert_eq!(status("GET", b"admin/x"), 400);
        assert_eq!(status("GET", b"*"), 400);
        assert_eq!(status("OPTIONS", b"*"), 404);
        assert_eq!(status("CONNECT", b"h:80"), 405);
        assert_eq!(status("GET", b"h:80"), 400);
        assert_eq!(status("GET", b"ftp://h/"), 400);
        assert_eq!(status("GET", b"http://h:99999/"), 400);
        assert_eq!(status("GET", b"http:///x"), 400);
        assert_eq!(status("GET", b"http://u@h/"), 400);
        assert_eq!(status("GET", b"http://other/"), 400);
        let no_host = map(&[]);
        let v = view("GET", b"HTTPS://Evil.example?q=1#x", &no_host).unwrap();
        assert_eq!(
            (&*v.authority, v.scheme, v.path.as_str()),
            ("Evil.example", "https", "/?q=1")
        );
    }

    #[test]
    fn host_validity() {
        for (fields, ok) in [
            (map(&[("host", b"a.b:80")]), true),
            (map(&[("host", b"")]), true),
            (map(&[("host", b"a\xff")]), false),
            (map(&[("host", b"a b")]), false),
            (map(&[("host", b"a/b")]), false),
            (map(&[("host", b"a"), ("host", b"a")]), false),
            (map(&[("x", b"1")]), false),
        ] {
            assert_eq!(view("GET", b"/", &fields).is_ok(), ok, "{fields:?}");
        }
    }

    #[test]
    fn path_bytes_fragment_and_pseudo_headers() {
        let m = map(&[("host", b"h")]);
        let v = view("GET", b"/x/\xff/../caf\xc3\xa9?q=\xe9#/../admin", &m).unwrap();
        assert_eq!(v.path, "/x/caf%C3%A9?q=%E9");
        assert_eq!(v.get(":path"), Some(&b"/x/caf%C3%A9?q=\xe9"[..]));
        assert_eq!(v.get(":method"), Some(&b"GET"[..]));
        assert_eq!(v.get(":authority"), Some(&b"h"[..]));
        assert_eq!(v.get(":scheme"), Some(&b"http"[..]));
        assert_eq!(view("GET", b"/get#/../admin", &m).unwrap().path, "/get");
    }
}
