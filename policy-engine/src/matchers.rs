//! Value matchers, each built from one policy value as Istio's generators build the Envoy matcher
//! for it, so that a value means here what it means to an Envoy waypoint.
//!
//! Every value is a literal. `*` is a wildcard only where Istio documents it: alone (presence),
//! first (suffix match) or last (prefix match). No value is ever compiled into a regular expression
//! from user text: Istio did that for `principals` suffixes and `namespaces` until 1.30, so `.` in a
//! value matched any character (security fixes istio/istio#59992 and #59700). The one regex left,
//! for `serviceAccounts`, quotes the user's text, as Istio does.
//!
//! These are also the rules ztunnel applies to the same `StringMatch` values (Istio's
//! `stringToMatch` for ambient): anything that simulates ztunnel's L4 decision must use these
//! matchers, not a copy.

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
}

impl StrMatch {
    /// `StringMatcherWithPrefix(v, "")`: exact, `abc*` prefix, `*abc` suffix, `*` non-empty. A `*`
    /// anywhere else is a literal character; `*abc*` is the suffix `abc*` (Istio checks the leading
    /// `*` first).
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
        }
    }

    /// A header value: Envoy compares the bytes, which need not be UTF-8 (obs-text).
    pub(crate) fn matches_bytes(&self, s: &[u8]) -> bool {
        match self {
            StrMatch::Exact(e) => s == e.as_bytes(),
            StrMatch::Prefix(p) => s.starts_with(p.as_bytes()),
            StrMatch::Suffix(x) => s.ends_with(x.as_bytes()),
            StrMatch::NonEmpty => !s.is_empty(),
            StrMatch::Present => true,
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
        }
    }

    pub(crate) fn exact(&self) -> Option<&str> {
        match self {
            StrMatch::Exact(e) => Some(e),
            _ => None,
        }
    }
}

/// `principals` / `source.principal`: `StringMatcherWithPrefix(v, "spiffe://")`, compared with the
/// peer's full URI SAN.
#[derive(Debug, Clone)]
pub(crate) enum PrincipalMatch {
    /// `spiffe://<v>`, or `spiffe://<prefix>` for `<prefix>*`, or any non-empty URI for `*`.
    Uri(StrMatch),
    /// `*<suffix>`: Istio's regex `spiffe://.*<QuoteMeta(suffix)>`, i.e. the suffix must end the
    /// part of the URI after the scheme; the scheme itself cannot supply it.
    Suffix(Box<str>),
}

impl PrincipalMatch {
    pub(crate) fn new(v: &str) -> PrincipalMatch {
        if v == "*" {
            PrincipalMatch::Uri(StrMatch::NonEmpty)
        } else if let Some(s) = v.strip_prefix('*') {
            PrincipalMatch::Suffix(s.into())
        } else if let Some(p) = v.strip_suffix('*') {
            PrincipalMatch::Uri(StrMatch::Prefix(format!("{SPIFFE_PREFIX}{p}").into()))
        } else {
            PrincipalMatch::Uri(StrMatch::Exact(format!("{SPIFFE_PREFIX}{v}").into()))
        }
    }

    pub(crate) fn matches(&self, peer: &PeerIdentity) -> bool {
        match self {
            PrincipalMatch::Uri(m) => m.matches(peer.uri()),
            PrincipalMatch::Suffix(s) => peer
                .uri()
                .strip_prefix(SPIFFE_PREFIX)
                .is_some_and(|rest| rest.ends_with(&**s)),
        }
    }

    /// The full URI this matcher requires, for the candidate index.
    pub(crate) fn exact(&self) -> Option<&str> {
        match self {
            PrincipalMatch::Uri(m) => m.exact(),
            PrincipalMatch::Suffix(_) => None,
        }
    }
}

/// `namespaces` / `source.namespace`: the value against the namespace segment of the peer's SPIFFE
/// ID, `<ns>` in `/ns/<ns>/`.
///
/// The value is a literal in which every `*` stands for any run of characters inside that one
/// segment: `foo` exact, `foo*` prefix, `*foo` suffix, `*` any namespace, and (undocumented, but
/// Istio's Envoy config treats it so) `a*b`. Istio 1.30 builds the regex `.*/ns/<v>/.*` with the
/// literal parts quoted and `*` as `.*`, which lets a wildcard run on across `/` into the following
/// segments: `*sa` matches every `.../ns/<any>/sa/<sa>` identity. Here a wildcard never leaves the
/// segment it was written for (see the crate's list of differences). For values without `*` or `/`
/// the two agree on every identity.
#[derive(Debug, Clone)]
pub(crate) enum NamespaceMatch {
    /// A value without `*`: the segment equals it (indexed).
    Exact(Box<str>),
    /// The literal parts between the `*`s, at least two.
    Glob(Box<[Box<str>]>),
}

impl NamespaceMatch {
    pub(crate) fn new(v: &str) -> NamespaceMatch {
        if v.contains('*') {
            NamespaceMatch::Glob(v.split('*').map(Into::into).collect())
        } else {
            NamespaceMatch::Exact(v.into())
        }
    }

    pub(crate) fn matches(&self, peer: &PeerIdentity) -> bool {
        peer.namespace_candidates()
            .any(|ns| self.matches_segment(ns))
    }

    fn matches_segment(&self, ns: &str) -> bool {
        match self {
            NamespaceMatch::Exact(e) => ns == &**e,
            NamespaceMatch::Glob(parts) => glob_matches(parts, ns),
        }
    }
}

/// `parts` joined by `*` wildcards (each any run of characters) matches all of `s`.
fn glob_matches(parts: &[Box<str>], s: &str) -> bool {
    let [first, middle @ .., last] = parts else {
        return parts.first().is_some_and(|p| **p == *s);
    };
    let Some(mut rest) = s.strip_prefix(&**first) else {
        return false;
    };
    // The leftmost occurrence of each middle part leaves the most room for the rest.
    for part in middle {
        match rest.find(&**part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(&**last)
}

/// `serviceAccounts` / `source.serviceAccount`: Istio's `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`
/// with `<ns>` and `<sa>` quoted (istio/istio#59700), so both are literals.
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
            "^(?:spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?)$",
            regex::escape(ns),
            regex::escape(sa)
        );
        Ok(ServiceAccountMatch {
            namespace: ns.into(),
            regex: Regex::new(&pattern)?,
        })
    }

    pub(crate) fn matches(&self, peer: &PeerIdentity) -> bool {
        self.regex.is_match(peer.uri())
    }
}

/// `trustDomains` / `source.trustDomain`, as Istio 1.30 builds them: `*` any `spiffe://` URI; a
/// value without `*` the prefix `spiffe://<v>/`; otherwise the FIRST `*` is a wildcard inside the
/// trust domain (`[^/]*`) and the rest is literal, a later `*` included.
#[derive(Debug, Clone)]
pub(crate) enum TrustDomainMatch {
    Any,
    Exact(Box<str>),
    Wildcard { before: Box<str>, after: Box<str> },
}

impl TrustDomainMatch {
    pub(crate) fn new(v: &str) -> TrustDomainMatch {
        if v == "*" {
            TrustDomainMatch::Any
        } else if let Some((before, after)) = v.split_once('*') {
            TrustDomainMatch::Wildcard {
                before: before.into(),
                after: after.into(),
            }
        } else {
            TrustDomainMatch::Exact(v.into())
        }
    }

    pub(crate) fn matches(&self, peer: &PeerIdentity) -> bool {
        let Some(rest) = peer.uri().strip_prefix(SPIFFE_PREFIX) else {
            return false;
        };
        match self {
            TrustDomainMatch::Any => true,
            // `prefix: spiffe://<td>/`: a `/` inside the value reaches into the path, as there.
            TrustDomainMatch::Exact(td) => {
                rest.strip_prefix(&**td).is_some_and(|r| r.starts_with('/'))
            }
            // `spiffe://<before>[^/]*<after>/.*`: `before` and `after` must sit in the trust
            // domain, the authority up to the first `/`. (Validation refuses a `/` in the value.)
            TrustDomainMatch::Wildcard { before, after } => {
                !before.contains('/')
                    && !after.contains('/')
                    && peer.trust_domain().is_some_and(|td| {
                        td.len() >= before.len() + after.len()
                            && td.starts_with(&**before)
                            && td.ends_with(&**after)
                    })
            }
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
        assert!(PrincipalMatch::new("cluster.local/ns/foo/sa/sleep").matches(&p));
        assert!(PrincipalMatch::new("cluster.local/ns/foo/*").matches(&p));
        assert!(PrincipalMatch::new("*/sa/sleep").matches(&p));
        assert!(PrincipalMatch::new("*").matches(&p));
        // Istio prepends spiffe:// itself, so a value that already has it never matches.
        assert!(!PrincipalMatch::new("spiffe://cluster.local/ns/foo/sa/sleep").matches(&p));
        // The suffix cannot borrow from the scheme.
        assert!(!PrincipalMatch::new("*//cluster.local/ns/foo/sa/sleep").matches(&p));
    }

    #[test]
    fn principal_values_are_literals() {
        // Before Istio 1.30 (istio/istio#59992) `.` here was a regex wildcard.
        let p = peer("cluster.local/ns/foo/sa/svcXa");
        assert!(!PrincipalMatch::new("*/sa/svc.a").matches(&p));
        assert!(PrincipalMatch::new("*/sa/svc.a").matches(&peer("cluster.local/ns/foo/sa/svc.a")));
        assert!(!PrincipalMatch::new("*sa.sleep").matches(&peer("cluster.local/ns/foo/sa/sleep")));
        assert!(!PrincipalMatch::new("*(.*)").matches(&peer("td/ns/a/sa/b")));
        assert!(PrincipalMatch::new("*(.*)").matches(&peer("td/ns/a/sa/b(.*)")));
        // A `*` in the middle is a literal character, as in Istio.
        assert!(!PrincipalMatch::new("td/ns/*/sa/b").matches(&peer("td/ns/a/sa/b")));
        assert!(PrincipalMatch::new("td/ns/*/sa/b").matches(&peer("td/ns/*/sa/b")));
    }

    #[test]
    fn namespaces_match_the_namespace_segment() {
        let p = peer("spiffe://cluster.local/ns/foo-bar/sa/x");
        assert!(NamespaceMatch::new("foo-bar").matches(&p));
        assert!(!NamespaceMatch::new("foo").matches(&p));
        assert!(NamespaceMatch::new("foo*").matches(&p));
        assert!(NamespaceMatch::new("*bar").matches(&p));
        assert!(NamespaceMatch::new("f*r").matches(&p));
        assert!(NamespaceMatch::new("*").matches(&p));
        assert!(!NamespaceMatch::new("*").matches(&peer("spiffe://td/sa/x")));
        // Literal metacharacters: before Istio 1.30 `team.a` matched `teamXa`.
        assert!(!NamespaceMatch::new("team.a").matches(&peer("td/ns/teamXa/sa/x")));
        assert!(NamespaceMatch::new("team.a").matches(&peer("td/ns/team.a/sa/x")));
        assert!(!NamespaceMatch::new("team.a").matches(&peer("td/ns/team.a.b/sa/x")));
        assert!(!NamespaceMatch::new("a|b").matches(&peer("td/ns/a/sa/x")));
        // A wildcard stays inside the segment: Istio's `.*/ns/.*sa/.*` matches every identity.
        assert!(!NamespaceMatch::new("*sa").matches(&peer("td/ns/foo/sa/x")));
        assert!(!NamespaceMatch::new("foo/sa").matches(&peer("td/ns/foo/sa/x")));
        assert!(!NamespaceMatch::new("f*x").matches(&peer("td/ns/foo/sa/x")));
        // Overlapping `/ns/` occurrences are all candidates, as in Istio's regex.
        assert!(NamespaceMatch::new("foo").matches(&peer("td/ns/ns/foo/")));
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
        assert!(
            !ServiceAccountMatch::new("fo./sleep", "x")
                .unwrap()
                .matches(&p)
        );
        assert!(
            !ServiceAccountMatch::new("foo/sle.p", "x")
                .unwrap()
                .matches(&p)
        );
        assert!(TrustDomainMatch::new("cluster.local").matches(&p));
        assert!(!TrustDomainMatch::new("cluster").matches(&p));
        assert!(TrustDomainMatch::new("cluster*").matches(&p));
        assert!(TrustDomainMatch::new("*.local").matches(&p));
        assert!(!TrustDomainMatch::new("*.l.cal").matches(&p));
        assert!(TrustDomainMatch::new("*").matches(&p));
        // Only the first `*` is a wildcard.
        assert!(!TrustDomainMatch::new("c*l*").matches(&p));
        assert!(TrustDomainMatch::new("c*l*").matches(&peer("cluster.l*/ns/a/sa/b")));
        // The wildcard does not reach into the path.
        assert!(!TrustDomainMatch::new("cluster*foo").matches(&p));
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
        assert!(!RequestPrincipalMatch::new("https://issuer.example.com/realm/al.ce").matches(&t));
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
