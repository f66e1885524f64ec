//! Value matchers, each built from one policy value exactly as Istio's generators build the Envoy
//! matcher for it, so that a value means here what it means to an Envoy waypoint.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use crate::path::{self, PathTemplate};
use crate::request::{Claim, JwtClaims, PeerIdentity, SPIFFE_PREFIX};

/// Envoy's `StringMatcher` as Istio produces it for plain policy strings.
#[derive(Debug, Clone)]
pub(crate) enum StrMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// `*` in a string matcher is the regex `.+`: present and non-empty.
    NonEmpty,
    /// `*` in a header matcher is `present_match`: present, even if empty.
    Present,
    /// Istio emits a regex (unescaped user text) for some forms; reproduced as such.
    Regex(Regex),
}

impl StrMatch {
    /// `StringMatcherWithPrefix(v, "")`: exact, `abc*` prefix, `*abc` suffix, `*` non-empty.
    pub(crate) fn string(v: &str) -> StrMatch {
        if v == "*" {
            StrMatch::NonEmpty
        } else if let Some(s) = v.strip_prefix('*') {
            StrMatch::Suffix(s.into())
        } else if let Some(p) = v.strip_suffix('*') {
            StrMatch::Prefix(p.into())
        } else {
            StrMatch::Exact(v.into())
        }
    }

    /// `HeaderMatcher(k, v)`: like [`StrMatch::string`] but `*` is a presence match.
    pub(crate) fn header(v: &str) -> StrMatch {
        if v == "*" {
            StrMatch::Present
        } else {
            StrMatch::string(v)
        }
    }

    /// `HostMatcher`: like a header matcher, compared ignoring ASCII case (stored lower-case).
    pub(crate) fn host(v: &str) -> StrMatch {
        StrMatch::header(&v.to_ascii_lowercase())
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        match self {
            StrMatch::Exact(e) => s == &**e,
            StrMatch::Prefix(p) => s.starts_with(&**p),
            StrMatch::Suffix(x) => s.ends_with(&**x),
            StrMatch::NonEmpty => !s.is_empty(),
            StrMatch::Present => true,
            StrMatch::Regex(r) => r.is_match(s),
        }
    }

    /// Host comparison: `self` holds lower-case text.
    pub(crate) fn matches_ignore_case(&self, s: &str) -> bool {
        let s = s.as_bytes();
        match self {
            StrMatch::Exact(e) => s.eq_ignore_ascii_case(e.as_bytes()),
            StrMatch::Prefix(p) => {
                s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrMatch::Suffix(x) => {
                s.len() >= x.len() && s[s.len() - x.len()..].eq_ignore_ascii_case(x.as_bytes())
            }
            StrMatch::NonEmpty => !s.is_empty(),
            StrMatch::Present => true,
            StrMatch::Regex(_) => false,
        }
    }

    pub(crate) fn exact(&self) -> Option<&str> {
        match self {
            StrMatch::Exact(e) => Some(e),
            _ => None,
        }
    }
}

/// Compiles a regex the way Envoy's `safe_regex` uses it: a full match.
pub(crate) fn full_match_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// `principals` / `source.principal`: `StringMatcherWithPrefix(v, "spiffe://")`.
#[derive(Debug, Clone)]
pub(crate) struct PrincipalMatch(pub(crate) StrMatch);

impl PrincipalMatch {
    pub(crate) fn new(v: &str) -> Result<PrincipalMatch, regex::Error> {
        Ok(PrincipalMatch(if v == "*" {
            StrMatch::NonEmpty
        } else if let Some(s) = v.strip_prefix('*') {
            // Istio emits the regex `spiffe://.*<suffix>` without escaping the suffix.
            if s.bytes().any(is_regex_meta) {
                StrMatch::Regex(full_match_regex(&format!("spiffe://.*{s}"))?)
            } else {
                StrMatch::Suffix(s.into())
            }
        } else if let Some(p) = v.strip_suffix('*') {
            StrMatch::Prefix(format!("{SPIFFE_PREFIX}{p}").into())
        } else {
            StrMatch::Exact(format!("{SPIFFE_PREFIX}{v}").into())
        }))
    }

    pub(crate) fn matches(&self, peer: &PeerIdentity) -> bool {
        // A suffix regex also demands the scheme, which `PeerIdentity` always carries.
        self.0.matches(peer.uri())
    }
}

fn is_regex_meta(c: u8) -> bool {
    b"\\.+*?()|[]{}^$".contains(&c)
}

/// `namespaces` / `source.namespace`: Istio's regex `.*/ns/<v with * as .*>/.*` on the URI.
#[derive(Debug, Clone)]
pub(crate) enum NamespaceMatch {
    /// A plain name: the URI contains `/ns/<name>/`.
    Exact {
        name: Box<str>,
        needle: Box<str>,
    },
    Regex(Regex),
}

impl NamespaceMatch {
    pub(crate) fn new(v: &str) -> Result<NamespaceMatch, regex::Error> {
        if v.bytes().any(|c| is_regex_meta(c) || c == b'/') {
            let pattern = format!(".*/ns/{}/.*", v.replace('*', ".*"));
            Ok(NamespaceMatch::Regex(full_match_regex(&pattern)?))
        } else {
            Ok(NamespaceMatch::Exact {
                name: v.into(),
                needle: format!("/ns/{v}/").into(),
            })
        }
    }

    pub(crate) fn matches(&self, peer: &PeerIdentity) -> bool {
        match self {
            NamespaceMatch::Exact { needle, .. } => peer.uri().contains(&**needle),
            NamespaceMatch::Regex(r) => r.is_match(peer.uri()),
        }
    }
}

/// `serviceAccounts` / `source.serviceAccount`: `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`.
#[derive(Debug, Clone)]
pub(crate) struct ServiceAccountMatch {
    pub(crate) namespace: Box<str>,
    regex: Regex,
}

impl ServiceAccountMatch {
    /// `<sa>` or `<ns>/<sa>`; a bare name takes the policy's namespace.
    pub(crate) fn new(
        v: &str,
        policy_namespace: &str,
    ) -> Result<ServiceAccountMatch, regex::Error> {
        let (ns, sa) = v.split_once('/').unwrap_or((policy_namespace, v));
        let pattern = format!(
            "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
            regex::escape(ns),
            regex::escape(sa)
        );
        Ok(ServiceAccountMatch {
            namespace: ns.into(),
            regex: full_match_regex(&pattern)?,
        })
    }

    pub(crate) fn matches(&self, peer: &PeerIdentity) -> bool {
        self.regex.is_match(peer.uri())
    }
}

/// `trustDomains` / `source.trustDomain`.
#[derive(Debug, Clone)]
pub(crate) enum TrustDomainMatch {
    Any,
    Exact(Box<str>),
    Regex(Regex),
}

impl TrustDomainMatch {
    pub(crate) fn new(v: &str) -> Result<TrustDomainMatch, regex::Error> {
        Ok(if v == "*" {
            TrustDomainMatch::Any
        } else if !v.contains('*') {
            TrustDomainMatch::Exact(v.into())
        } else {
            let (a, b) = v.split_once('*').unwrap_or((v, ""));
            let pattern = format!("spiffe://{}[^/]*{}/.*", regex::escape(a), regex::escape(b));
            TrustDomainMatch::Regex(full_match_regex(&pattern)?)
        })
    }

    pub(crate) fn matches(&self, peer: &PeerIdentity) -> bool {
        match self {
            TrustDomainMatch::Any => true,
            // `prefix: spiffe://<td>/`
            TrustDomainMatch::Exact(td) => peer
                .uri()
                .strip_prefix(SPIFFE_PREFIX)
                .and_then(|r| r.strip_prefix(&**td))
                .is_some_and(|r| r.starts_with('/')),
            TrustDomainMatch::Regex(r) => r.is_match(peer.uri()),
        }
    }
}

/// `ipBlocks`, `remoteIpBlocks`, `source.ip`, `remote.ip`, `destination.ip`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cidr(IpNet);

impl Cidr {
    pub(crate) fn parse(v: &str) -> Option<Cidr> {
        if v.contains('/') {
            v.parse::<IpNet>().ok().map(|n| Cidr(n.trunc()))
        } else {
            v.parse::<IpAddr>().ok().map(|a| Cidr(IpNet::from(a)))
        }
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

/// `requestPrincipals` / `request.auth.principal`: separate matchers on the token's `iss` and `sub`.
#[derive(Debug, Clone)]
pub(crate) struct RequestPrincipalMatch {
    iss: StrMatch,
    sub: StrMatch,
}

impl RequestPrincipalMatch {
    /// Istio splits at the LAST `/` because issuers are URLs.
    pub(crate) fn new(v: &str) -> RequestPrincipalMatch {
        let split = v.rfind('/').map(|i| (&v[..i], &v[i + 1..]));
        let (iss, sub) = match (v, split) {
            ("*", _) => (StrMatch::NonEmpty, StrMatch::NonEmpty),
            (_, Some((iss, sub))) if v.starts_with('*') => {
                let iss = if iss == "*" {
                    StrMatch::NonEmpty
                } else {
                    StrMatch::Suffix(iss[1..].into())
                };
                (iss, StrMatch::Exact(sub.into()))
            }
            (_, None) if v.starts_with('*') => {
                (StrMatch::NonEmpty, StrMatch::Suffix(v[1..].into()))
            }
            (_, Some((iss, sub))) if v.ends_with('*') => {
                let sub = if sub == "*" {
                    StrMatch::NonEmpty
                } else {
                    StrMatch::Prefix(sub[..sub.len() - 1].into())
                };
                (StrMatch::Exact(iss.into()), sub)
            }
            (_, None) if v.ends_with('*') => (
                StrMatch::Prefix(v[..v.len() - 1].into()),
                StrMatch::NonEmpty,
            ),
            (_, Some((iss, sub))) => (StrMatch::Exact(iss.into()), StrMatch::Exact(sub.into())),
            (_, None) => (StrMatch::Exact(v.into()), StrMatch::Exact("".into())),
        };
        RequestPrincipalMatch { iss, sub }
    }

    pub(crate) fn matches(&self, jwt: &JwtClaims) -> bool {
        // Envoy's metadata matcher sees no value when the claim is missing or not a string.
        let claim = |name| jwt.string(name);
        claim("iss").is_some_and(|i| self.iss.matches(i))
            && claim("sub").is_some_and(|s| self.sub.matches(s))
    }
}

/// `request.auth.claims[a][b]`, `request.auth.audiences` (`aud`), `request.auth.presenter` (`azp`):
/// the claim is a matching string, or a list holding one (Envoy's extended JWT metadata matcher).
pub(crate) fn claim_matches(m: &StrMatch, claim: &Claim) -> bool {
    match claim {
        Claim::String(s) => m.matches(s),
        Claim::List(items) => items
            .iter()
            .any(|c| matches!(c, Claim::String(s) if m.matches(s))),
        _ => false,
    }
}

/// `paths`: a plain string matcher on the path without query, or a `{*}`/`{**}` template.
#[derive(Debug, Clone)]
pub(crate) enum PathMatch {
    Str(StrMatch),
    Template(PathTemplate),
}

impl PathMatch {
    pub(crate) fn matches(&self, path_with_query: &str) -> bool {
        let p = path::strip_query(path_with_query);
        match self {
            PathMatch::Str(m) => m.matches(p),
            PathMatch::Template(t) => t.matches(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> PeerIdentity {
        PeerIdentity::new(s)
    }

    #[test]
    fn principals_match_the_full_uri() {
        let p = peer("cluster.local/ns/foo/sa/sleep");
        assert!(
            PrincipalMatch::new("cluster.local/ns/foo/sa/sleep")
                .unwrap()
                .matches(&p)
        );
        assert!(
            PrincipalMatch::new("cluster.local/ns/foo/*")
                .unwrap()
                .matches(&p)
        );
        assert!(PrincipalMatch::new("*/sa/sleep").unwrap().matches(&p));
        assert!(PrincipalMatch::new("*").unwrap().matches(&p));
        // Istio prepends spiffe:// itself, so a value that already has it never matches.
        assert!(
            !PrincipalMatch::new("spiffe://cluster.local/ns/foo/sa/sleep")
                .unwrap()
                .matches(&p)
        );
        // The suffix regex is not escaped: '.' is any character, as in Envoy.
        assert!(PrincipalMatch::new("*sa.sleep").unwrap().matches(&p));
    }

    #[test]
    fn namespaces_use_istios_regex() {
        let p = peer("spiffe://cluster.local/ns/foo-bar/sa/x");
        assert!(NamespaceMatch::new("foo-bar").unwrap().matches(&p));
        assert!(!NamespaceMatch::new("foo").unwrap().matches(&p));
        assert!(NamespaceMatch::new("foo*").unwrap().matches(&p));
        assert!(NamespaceMatch::new("*bar").unwrap().matches(&p));
        assert!(NamespaceMatch::new("f*r").unwrap().matches(&p));
        assert!(NamespaceMatch::new("*").unwrap().matches(&p));
        assert!(
            !NamespaceMatch::new("*")
                .unwrap()
                .matches(&peer("spiffe://td/sa/x"))
        );
    }

    #[test]
    fn service_accounts_and_trust_domains() {
        let p = peer("cluster.local/ns/foo/sa/sleep");
        assert!(
            ServiceAccountMatch::new("foo/sleep", "bar")
                .unwrap()
                .matches(&p)
        );
        assert!(
            ServiceAccountMatch::new("sleep", "foo")
                .unwrap()
                .matches(&p)
        );
        assert!(
            !ServiceAccountMatch::new("sleep", "bar")
                .unwrap()
                .matches(&p)
        );
        assert!(
            !ServiceAccountMatch::new("foo/slee", "x")
                .unwrap()
                .matches(&p)
        );
        assert!(TrustDomainMatch::new("cluster.local").unwrap().matches(&p));
        assert!(!TrustDomainMatch::new("cluster").unwrap().matches(&p));
        assert!(TrustDomainMatch::new("cluster*").unwrap().matches(&p));
        assert!(TrustDomainMatch::new("*.local").unwrap().matches(&p));
        assert!(TrustDomainMatch::new("*").unwrap().matches(&p));
    }

    #[test]
    fn request_principals_split_at_last_slash() {
        let claims = |iss: &str, sub: &str| {
            let mut m = std::collections::BTreeMap::new();
            m.insert("iss".to_owned(), Claim::String(iss.into()));
            m.insert("sub".to_owned(), Claim::String(sub.into()));
            JwtClaims::new(m, &[])
        };
        let t = claims("https://issuer.example.com/realm", "alice");
        assert!(RequestPrincipalMatch::new("https://issuer.example.com/realm/alice").matches(&t));
        assert!(RequestPrincipalMatch::new("https://issuer.example.com/realm/*").matches(&t));
        assert!(RequestPrincipalMatch::new("*/alice").matches(&t));
        assert!(RequestPrincipalMatch::new("*").matches(&t));
        assert!(!RequestPrincipalMatch::new("https://issuer.example.com/*").matches(&t));
        assert!(!RequestPrincipalMatch::new("https://issuer.example.com/alice").matches(&t));
        assert!(RequestPrincipalMatch::new("*alice").matches(&t));
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.2.3/16").unwrap();
        assert!(c.contains("10.1.200.1".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("bogus").is_none());
    }
}
