//! What the engine is asked about: one connection or one HTTP request on it.
//!
//! Everything here borrows from the caller. Per-connection facts (the peer identity) are parsed once
//! into [`PeerIdentity`] and reused for every request on that connection.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The peer's SPIFFE identity, parsed once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Always with the `spiffe://` scheme: Envoy matches principals against the full URI SAN.
    uri: Box<str>,
}

pub const SPIFFE_PREFIX: &str = "spiffe://";

impl PeerIdentity {
    /// Accepts an identity with or without the `spiffe://` scheme.
    pub fn new(id: &str) -> PeerIdentity {
        let uri = if id.starts_with(SPIFFE_PREFIX) {
            id.into()
        } else {
            format!("{SPIFFE_PREFIX}{id}").into_boxed_str()
        };
        PeerIdentity { uri }
    }

    /// The full URI, `spiffe://td/ns/foo/sa/bar`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The trust domain: the authority of the SPIFFE URI.
    pub fn trust_domain(&self) -> Option<&str> {
        let rest = self.uri.strip_prefix(SPIFFE_PREFIX)?;
        rest.split_once('/').map(|(td, _)| td)
    }

    /// Every `<x>` such that `/ns/<x>/` occurs in the URI, occurrences that overlap included
    /// (`/ns/ns/a/` holds `ns` and `a`). Istio matches namespaces with `.*/ns/<ns>/.*`, so for a
    /// SPIFFE ID that is not of Istio's `/ns/<ns>/sa/<sa>` form more than one candidate can exist,
    /// and each is tried as Envoy would.
    pub fn namespace_candidates(&self) -> impl Iterator<Item = &str> {
        let uri: &str = &self.uri;
        let mut from = 0;
        std::iter::from_fn(move || {
            loop {
                let at = from + uri.get(from..)?.find("/ns/")?;
                // The next search starts at this occurrence's closing `/`, which may open another.
                from = at + 3;
                let rest = &uri[at + 4..];
                if let Some(end) = rest.find('/') {
                    return Some(&rest[..end]);
                }
            }
        })
    }
}

/// Header lookup by lower-case name, as Envoy's header map answers it: a name sent more than once
/// must already be joined with `,` in arrival order, and values are bytes (obs-text, bytes >= 0x80,
/// is legal in a field value and compared as it is). Pseudo-headers (`:path`, `:method`,
/// `:authority`, `:scheme`) are looked up here too.
pub trait Headers {
    fn get(&self, lower_case_name: &str) -> Option<&[u8]>;
}

impl Headers for BTreeMap<String, String> {
    fn get(&self, lower_case_name: &str) -> Option<&[u8]> {
        BTreeMap::get(self, lower_case_name).map(String::as_bytes)
    }
}

impl Headers for std::collections::HashMap<String, String> {
    fn get(&self, lower_case_name: &str) -> Option<&[u8]> {
        std::collections::HashMap::get(self, lower_case_name).map(String::as_bytes)
    }
}

/// No headers at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl Headers for NoHeaders {
    fn get(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

/// The HTTP-level facts of a request.
#[derive(Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// `:authority` / `Host`, as received.
    pub host: &'a str,
    /// The path as normalized by [`crate::path::normalize`]; it may still carry a query, which the
    /// engine ignores when matching `paths`.
    pub path: &'a str,
    pub headers: &'a dyn Headers,
}

impl std::fmt::Debug for HttpRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("host", &self.host)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A JWT claim value, as Envoy's jwt_authn filter exposes it to RBAC.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    String(String),
    List(Vec<Claim>),
    Object(BTreeMap<String, Claim>),
    /// Numbers, booleans and null: present, but never equal to a string matcher.
    Other,
}

/// Claims that Istio splits on spaces by default (`spaceDelimitedClaims` adds more).
pub const DEFAULT_SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

/// A validated token's claims, prepared once per token.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtClaims {
    claims: BTreeMap<String, Claim>,
}

impl JwtClaims {
    /// Prepares claims as Envoy would after validation: top-level string claims named in
    /// `space_delimited` become lists of their space-separated words.
    pub fn new(mut claims: BTreeMap<String, Claim>, space_delimited: &[&str]) -> JwtClaims {
        for name in space_delimited {
            if let Some(Claim::String(s)) = claims.get(*name) {
                let words = s.split(' ').filter(|w| !w.is_empty());
                let list = words.map(|w| Claim::String(w.to_owned())).collect();
                claims.insert((*name).to_owned(), Claim::List(list));
            }
        }
        JwtClaims { claims }
    }

    /// Follows a path of nested object keys.
    pub fn lookup(&self, path: &[Box<str>]) -> Option<&Claim> {
        let (first, rest) = path.split_first()?;
        let mut cur = self.claims.get(&**first)?;
        for key in rest {
            match cur {
                Claim::Object(map) => cur = map.get(&**key)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        match self.claims.get(name) {
            Some(Claim::String(s)) => Some(s),
            _ => None,
        }
    }
}

/// Everything one decision is made from. HTTP-only facts live in `http`; `None` means an opaque
/// TCP connection, which selects the TCP form of every policy.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub peer: Option<&'a PeerIdentity>,
    /// The original client address (at a waypoint: ztunnel's `forwarded: for=`).
    pub source_ip: Option<IpAddr>,
    /// The client address derived from X-Forwarded-For; Envoy uses the source address when no
    /// trusted proxy added one.
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: Option<u16>,
    pub sni: Option<&'a str>,
    pub http: Option<HttpRequest<'a>>,
    pub jwt: Option<&'a JwtClaims>,
}

impl<'a> Request<'a> {
    pub(crate) fn remote_ip(&self) -> Option<IpAddr> {
        self.remote_ip.or(self.source_ip)
    }
}
