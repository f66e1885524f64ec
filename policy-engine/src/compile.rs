//! Translation of policy specs into matchable rules, following istiod's RBAC generation.
//!
//! Compilation is total, like istiod's: a value that cannot be turned into a matcher (a bad CIDR, a
//! non-numeric port, an HTTP-only field on a TCP connection, an attribute this waypoint does not
//! have) removes the whole rule from an ALLOW policy (narrower) and only that value or field from a
//! DENY/AUDIT/CUSTOM policy (wider). Reporting such values is [`crate::validate`]'s job.

use crate::matchers::{
    Cidr, NamespaceMatch, PathMatch, PrincipalMatch, RequestPrincipalMatch, ServiceAccountMatch,
    StrMatch, TrustDomainMatch, claim_matches,
};
use crate::path::{self, PathTemplate};
use crate::request::{HttpRequest, PeerIdentity, Request};
use crate::spec::{Action, ConditionSpec, OperationSpec, RuleSpec, SourceSpec};

/// Matchers for one attribute: any of `any` (if non-empty) and none of `none`.
#[derive(Debug, Clone)]
pub(crate) struct Set<M> {
    pub(crate) any: Box<[M]>,
    pub(crate) none: Box<[M]>,
}

impl<M> Set<M> {
    /// Envoy semantics for an absent attribute: a positive matcher fails, a negated one holds.
    fn eval<V: Copy>(&self, value: Option<V>, f: impl Fn(&M, V) -> bool) -> bool {
        match value {
            None => self.any.is_empty(),
            Some(v) => {
                (self.any.is_empty() || self.any.iter().any(|m| f(m, v)))
                    && !self.none.iter().any(|m| f(m, v))
            }
        }
    }
}

/// One ANDed test of a source, operation or `when` list.
#[derive(Debug, Clone)]
pub(crate) enum Clause {
    Principal(Set<PrincipalMatch>),
    Namespace(Set<NamespaceMatch>),
    ServiceAccount(Set<ServiceAccountMatch>),
    TrustDomain(Set<TrustDomainMatch>),
    SourceIp(Set<Cidr>),
    RemoteIp(Set<Cidr>),
    DestinationIp(Set<Cidr>),
    Port(Set<u16>),
    Sni(Set<StrMatch>),
    Host(Set<StrMatch>),
    Method(Set<StrMatch>),
    Path(Set<PathMatch>),
    Header(Box<str>, Set<StrMatch>),
    RequestPrincipal(Set<RequestPrincipalMatch>),
    Claim(Box<[Box<str>]>, Set<StrMatch>),
}

impl Clause {
    pub(crate) fn matches(&self, cx: &Context<'_>) -> bool {
        let req = cx.req;
        let peer = req.peer;
        let http = req.http.as_ref();
        match self {
            Clause::Principal(s) => s.eval(peer, |m, p| m.matches(p)),
            Clause::Namespace(s) => s.eval(peer, |m, p| m.matches(p)),
            Clause::ServiceAccount(s) => s.eval(peer, |m, p| m.matches(p)),
            Clause::TrustDomain(s) => s.eval(peer, |m, p| m.matches(p)),
            Clause::SourceIp(s) => s.eval(req.source_ip, |m, ip| m.contains(ip)),
            Clause::RemoteIp(s) => s.eval(req.remote_ip(), |m, ip| m.contains(ip)),
            Clause::DestinationIp(s) => s.eval(req.destination_ip, |m, ip| m.contains(ip)),
            Clause::Port(s) => s.eval(req.destination_port, |m, p| *m == p),
            Clause::Sni(s) => s.eval(req.sni, |m, v| m.matches(v)),
            Clause::Host(s) => s.eval(http.map(|h| h.host), |m, v| m.matches_ignore_case(v)),
            Clause::Method(s) => s.eval(http.map(|h| h.method), |m, v| m.matches(v)),
            Clause::Path(s) => s.eval(http.map(|h| h.path), |m, v| m.matches(v)),
            Clause::Header(name, s) => s.eval(http.and_then(|h| h.headers.get(name)), |m, v| {
                m.matches_bytes(v)
            }),
            Clause::RequestPrincipal(s) => s.eval(req.jwt, |m, j| m.matches(j)),
            Clause::Claim(path, s) => s.eval(req.jwt.and_then(|j| j.lookup(path)), |m, c| {
                claim_matches(m, c)
            }),
        }
    }

    /// Index keys that every request matching this clause must hit, when they exist.
    fn guard(&self) -> Option<Guard> {
        let keys: Option<Vec<Key>> = match self {
            Clause::Principal(s) => {
                collect(&s.any, |m| m.exact().map(|e| Key::Principal(e.into())))
            }
            Clause::Namespace(s) => collect(&s.any, |m| match m {
                NamespaceMatch::Exact(name) => Some(Key::Namespace(name.clone())),
                NamespaceMatch::Glob(_) => None,
            }),
            Clause::ServiceAccount(s) => {
                collect(&s.any, |m| Some(Key::Namespace(m.namespace.clone())))
            }
            Clause::TrustDomain(s) => collect(&s.any, |m| match m {
                TrustDomainMatch::Exact(td) => Some(Key::TrustDomain(td.clone())),
                _ => None,
            }),
            Clause::Port(s) => collect(&s.any, |p| Some(Key::Port(*p))),
            Clause::Host(s) => collect(&s.any, |m| m.exact().map(|e| Key::Host(e.into()))),
            Clause::Method(s) => collect(&s.any, |m| m.exact().map(|e| Key::Method(e.into()))),
            Clause::Path(s) => collect(&s.any, |m| match m {
                PathMatch::Str(StrMatch::Exact(e)) => Some(Key::Path(e.clone())),
                PathMatch::Str(StrMatch::Prefix(p)) if !p.is_empty() => {
                    Some(Key::PathPrefix(p.clone()))
                }
                PathMatch::Template(t) => Some(Key::PathPrefix(t.literal_prefix().into())),
                PathMatch::Str(_) => None,
            }),
            _ => None,
        };
        keys.filter(|k| !k.is_empty()).map(Guard::new)
    }
}

fn collect<M>(ms: &[M], f: impl Fn(&M) -> Option<Key>) -> Option<Vec<Key>> {
    ms.iter().map(f).collect()
}

/// A key of the candidate index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Principal(Box<str>),
    Path(Box<str>),
    Host(Box<str>),
    PathPrefix(Box<str>),
    Namespace(Box<str>),
    TrustDomain(Box<str>),
    Port(u16),
    Method(Box<str>),
}

impl Key {
    /// Rough selectivity: how many unrelated requests share the key (lower is better).
    fn cost(&self) -> u8 {
        match self {
            Key::Principal(_) | Key::Path(_) => 1,
            Key::Host(_) => 2,
            Key::PathPrefix(_) | Key::Namespace(_) => 3,
            Key::Port(_) => 5,
            Key::TrustDomain(_) => 6,
            Key::Method(_) => 7,
        }
    }
}

/// A set of keys at least one of which every matching request hits.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) keys: Vec<Key>,
    cost: (u8, usize),
}

impl Guard {
    fn new(keys: Vec<Key>) -> Guard {
        let worst = keys.iter().map(Key::cost).max().unwrap_or(u8::MAX);
        Guard {
            cost: (worst, keys.len()),
            keys,
        }
    }

    fn best(a: Option<Guard>, b: Option<Guard>) -> Option<Guard> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.cost < a.cost { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// For an OR of alternatives: a guard only if every alternative has one.
    fn union(all: impl Iterator<Item = Option<Guard>>) -> Option<Guard> {
        let mut keys = Vec::new();
        for g in all {
            keys.extend(g?.keys);
        }
        (!keys.is_empty()).then(|| Guard::new(keys))
    }
}

/// A compiled rule for one side (HTTP or TCP).
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) policy: u32,
    pub(crate) index: u32,
    /// Position in Envoy's evaluation order (policy map sorted by name); lower decides first.
    pub(crate) rank: u32,
    from: Box<[Box<[Clause]>]>,
    to: Box<[Box<[Clause]>]>,
    when: Box<[Clause]>,
}

impl Rule {
    pub(crate) fn matches(&self, cx: &Context<'_>) -> bool {
        self.when.iter().all(|c| c.matches(cx))
            && (self.from.is_empty() || self.from.iter().any(|s| s.iter().all(|c| c.matches(cx))))
            && (self.to.is_empty() || self.to.iter().any(|o| o.iter().all(|c| c.matches(cx))))
    }

    pub(crate) fn guard(&self) -> Option<Guard> {
        let entry = |clauses: &[Clause]| clauses.iter().map(Clause::guard).fold(None, Guard::best);
        let from = if self.from.is_empty() {
            None
        } else {
            Guard::union(self.from.iter().map(|s| entry(s)))
        };
        let to = if self.to.is_empty() {
            None
        } else {
            Guard::union(self.to.iter().map(|o| entry(o)))
        };
        Guard::best(Guard::best(from, to), entry(&self.when))
    }
}

/// Per-request facts derived once for candidate lookup.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub(crate) req: &'a Request<'a>,
    /// The path without its query.
    pub(crate) path: Option<&'a str>,
    /// The host lower-cased into a stack buffer when it has upper-case letters (index keys are
    /// lower-case); a longer one, rare enough, is lower-cased on the heap.
    host_buf: [u8; HOST_BUF],
    host_len: Option<usize>,
    host_owned: Option<String>,
}

const HOST_BUF: usize = 256;

impl<'a> Context<'a> {
    pub(crate) fn new(req: &'a Request<'a>) -> Context<'a> {
        let path = req.http.as_ref().map(|h| path::strip_query(h.path));
        let mut cx = Context {
            req,
            path,
            host_buf: [0; HOST_BUF],
            host_len: None,
            host_owned: None,
        };
        if let Some(host) = req.http.as_ref().map(|h: &HttpRequest<'a>| h.host) {
            let h = host.as_bytes();
            if h.iter().any(u8::is_ascii_uppercase) {
                if h.len() <= HOST_BUF {
                    cx.host_buf[..h.len()].copy_from_slice(h);
                    cx.host_buf[..h.len()].make_ascii_lowercase();
                    cx.host_len = Some(h.len());
                } else {
                    cx.host_owned = Some(host.to_ascii_lowercase());
                }
            }
        }
        cx
    }

    pub(crate) fn host_lower(&self) -> Option<&str> {
        match (self.host_len, &self.host_owned) {
            (Some(n), _) => std::str::from_utf8(&self.host_buf[..n]).ok(),
            (None, Some(owned)) => Some(owned),
            (None, None) => self.req.http.as_ref().map(|h| h.host),
        }
    }

    pub(crate) fn peer(&self) -> Option<&'a PeerIdentity> {
        self.req.peer
    }
}

/// Which filter chain a rule is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Http,
    Tcp,
}

/// Why a value could not become a matcher.
enum Unusable {
    /// HTTP-only attribute on the TCP side.
    HttpOnly,
    /// Invalid value, unknown or unsupported attribute.
    Invalid,
}

/// A compiled rule's `from` entries, `to` entries and `when` clauses.
pub(crate) type RuleParts = (Box<[Box<[Clause]>]>, Box<[Box<[Clause]>]>, Box<[Clause]>);

/// Compiles rule `index` of a policy for one side; `None` when the rule is dropped.
pub(crate) fn compile_rule(
    spec: &RuleSpec,
    action: Action,
    side: Side,
    policy_namespace: &str,
) -> Option<RuleParts> {
    let mut b = RuleBuilder {
        action,
        side,
        policy_namespace,
        dropped: false,
        reads_http: false,
    };
    let from: Vec<Box<[Clause]>> = spec
        .from
        .iter()
        .flatten()
        .map(|s| b.source(s.as_ref()).into_boxed_slice())
        .collect();
    let to: Vec<Box<[Clause]>> = spec
        .to
        .iter()
        .flatten()
        .map(|o| b.operation(o.as_ref()).into_boxed_slice())
        .collect();
    let mut when = Vec::new();
    for c in &spec.when {
        b.condition(c, &mut when);
    }
    if b.dropped {
        return None;
    }
    Some((from.into(), to.into(), when.into()))
}

/// Whether a rule reads anything only an HTTP request has (methods, paths, hosts, request
/// principals, `request.*` keys), or a key this waypoint cannot evaluate: a destination with such a
/// rule is decided differently as HTTP and as TCP.
pub(crate) fn rule_reads_http(spec: &RuleSpec, action: Action, policy_namespace: &str) -> bool {
    let mut b = RuleBuilder {
        action,
        side: Side::Http,
        policy_namespace,
        dropped: false,
        reads_http: false,
    };
    spec.from.iter().flatten().for_each(|s| {
        b.source(s.as_ref());
    });
    spec.to.iter().flatten().for_each(|o| {
        b.operation(o.as_ref());
    });
    let mut when = Vec::new();
    spec.when.iter().for_each(|c| b.condition(c, &mut when));
    b.reads_http
}

pub(crate) fn new_rule(parts: RuleParts, policy: u32, index: u32, rank: u32) -> Rule {
    let (from, to, when) = parts;
    Rule {
        policy,
        index,
        rank,
        from,
        to,
        when,
    }
}

struct RuleBuilder<'p> {
    action: Action,
    side: Side,
    policy_namespace: &'p str,
    /// Set when an ALLOW rule hit an unusable value: istiod skips the whole rule.
    dropped: bool,
    /// Set when a value of an HTTP-only attribute, or an unusable key, was seen.
    reads_http: bool,
}

impl RuleBuilder<'_> {
    /// Builds a `Set` from values with `f`; unusable values follow the action's rule.
    fn set<M>(
        &mut self,
        values: &[String],
        not_values: &[String],
        http_only: bool,
        f: impl Fn(&str) -> Option<M>,
    ) -> Option<Set<M>> {
        if values.is_empty() && not_values.is_empty() {
            return None;
        }
        self.reads_http |= http_only;
        let mut build = |vals: &[String]| -> Vec<M> {
            let mut out = Vec::with_capacity(vals.len());
            for v in vals {
                let m = if http_only && self.side == Side::Tcp {
                    Err(Unusable::HttpOnly)
                } else {
                    f(v).ok_or(Unusable::Invalid)
                };
                match m {
                    Ok(m) => out.push(m),
                    Err(Unusable::HttpOnly | Unusable::Invalid) => {
                        if self.action == Action::Allow {
                            self.dropped = true;
                        }
                    }
                }
            }
            out
        };
        let any = build(values);
        let none = build(not_values);
        if any.is_empty() && none.is_empty() {
            return None;
        }
        Some(Set {
            any: any.into(),
            none: none.into(),
        })
    }

    /// An attribute this waypoint cannot evaluate at all (fail-closed, see the crate docs).
    fn unavailable(&mut self) {
        self.reads_http = true;
        if self.action == Action::Allow {
            self.dropped = true;
        }
    }

    fn source(&mut self, s: Option<&SourceSpec>) -> Vec<Clause> {
        let Some(s) = s else { return Vec::new() };
        let ns = self.policy_namespace;
        let mut out = Vec::new();
        let mut push = |c: Option<Clause>| out.extend(c);
        push(
            self.set(&s.principals, &s.not_principals, false, |v| {
                Some(PrincipalMatch::new(v))
            })
            .map(Clause::Principal),
        );
        push(
            self.set(
                &s.request_principals,
                &s.not_request_principals,
                true,
                |v| Some(RequestPrincipalMatch::new(v)),
            )
            .map(Clause::RequestPrincipal),
        );
        push(
            self.set(&s.service_accounts, &s.not_service_accounts, false, |v| {
                ServiceAccountMatch::new(v, ns).ok()
            })
            .map(Clause::ServiceAccount),
        );
        push(
            self.set(&s.trust_domains, &s.not_trust_domains, false, |v| {
                Some(TrustDomainMatch::new(v))
            })
            .map(Clause::TrustDomain),
        );
        push(
            self.set(&s.namespaces, &s.not_namespaces, false, |v| {
                Some(NamespaceMatch::new(v))
            })
            .map(Clause::Namespace),
        );
        push(
            self.set(
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
                false,
                Cidr::parse,
            )
            .map(Clause::RemoteIp),
        );
        push(
            self.set(&s.ip_blocks, &s.not_ip_blocks, false, Cidr::parse)
                .map(Clause::SourceIp),
        );
        out
    }

    fn operation(&mut self, o: Option<&OperationSpec>) -> Vec<Clause> {
        let Some(o) = o else { return Vec::new() };
        let mut out = Vec::new();
        out.extend(
            self.set(&o.hosts, &o.not_hosts, true, |v| Some(StrMatch::host(v)))
                .map(Clause::Host),
        );
        out.extend(
            self.set(&o.methods, &o.not_methods, true, |v| {
                Some(StrMatch::header(v))
            })
            .map(Clause::Method),
        );
        out.extend(
            self.set(&o.paths, &o.not_paths, true, path_match)
                .map(Clause::Path),
        );
        out.extend(
            self.set(&o.ports, &o.not_ports, false, parse_port)
                .map(Clause::Port),
        );
        out
    }

    fn condition(&mut self, c: &ConditionSpec, out: &mut Vec<Clause>) {
        let (v, nv) = (&c.values[..], &c.not_values[..]);
        let ns = self.policy_namespace;
        let clause = match parse_condition_key(&c.key) {
            Some(ConditionKey::SourceIp) => {
                self.set(v, nv, false, Cidr::parse).map(Clause::SourceIp)
            }
            Some(ConditionKey::RemoteIp) => {
                self.set(v, nv, false, Cidr::parse).map(Clause::RemoteIp)
            }
            Some(ConditionKey::DestinationIp) => self
                .set(v, nv, false, Cidr::parse)
                .map(Clause::DestinationIp),
            Some(ConditionKey::DestinationPort) => {
                self.set(v, nv, false, parse_port).map(Clause::Port)
            }
            Some(ConditionKey::Sni) => self
                .set(v, nv, false, |x| Some(StrMatch::string(x)))
                .map(Clause::Sni),
            Some(ConditionKey::SourceNamespace) => self
                .set(v, nv, false, |x| Some(NamespaceMatch::new(x)))
                .map(Clause::Namespace),
            Some(ConditionKey::SourcePrincipal) => self
                .set(v, nv, false, |x| Some(PrincipalMatch::new(x)))
                .map(Clause::Principal),
            Some(ConditionKey::SourceServiceAccount) => self
                .set(v, nv, false, |x| ServiceAccountMatch::new(x, ns).ok())
                .map(Clause::ServiceAccount),
            Some(ConditionKey::SourceTrustDomain) => self
                .set(v, nv, false, |x| Some(TrustDomainMatch::new(x)))
                .map(Clause::TrustDomain),
            Some(ConditionKey::Header(name)) => self
                .set(v, nv, true, |x| Some(StrMatch::header(x)))
                .map(|s| Clause::Header(name.to_ascii_lowercase().into(), s)),
            Some(ConditionKey::RequestPrincipal) => self
                .set(v, nv, true, |x| Some(RequestPrincipalMatch::new(x)))
                .map(Clause::RequestPrincipal),
            Some(ConditionKey::Claim(path)) => self
                .set(v, nv, true, |x| Some(StrMatch::string(x)))
                .map(|s| Clause::Claim(path.into_iter().map(Into::into).collect(), s)),
            Some(ConditionKey::Experimental) | None => {
                self.unavailable();
                None
            }
        };
        out.extend(clause);
    }
}

fn parse_port(v: &str) -> Option<u16> {
    // Istio: strconv.ParseUint(v, 10, 32) and <= 65535; no sign, no spaces.
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u32>().ok().and_then(|p| u16::try_from(p).ok())
}

fn path_match(v: &str) -> Option<PathMatch> {
    if path::is_template(v) {
        PathTemplate::parse(v).ok().map(PathMatch::Template)
    } else {
        Some(PathMatch::Str(StrMatch::string(v)))
    }
}

/// A recognised `when` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConditionKey {
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    SourceServiceAccount,
    SourceTrustDomain,
    RequestPrincipal,
    Header(String),
    /// `request.auth.claims[a][b]`; `request.auth.audiences` is `[aud]`, `presenter` is `[azp]`.
    Claim(Vec<String>),
    DestinationIp,
    DestinationPort,
    Sni,
    /// `experimental.envoy.filters.*[...]`: Envoy filter metadata, which this waypoint has not.
    Experimental,
}

/// Parses a `when` key; `None` for anything Istio does not know.
pub(crate) fn parse_condition_key(key: &str) -> Option<ConditionKey> {
    Some(match key {
        "source.ip" => ConditionKey::SourceIp,
        "remote.ip" => ConditionKey::RemoteIp,
        "source.namespace" => ConditionKey::SourceNamespace,
        "source.principal" => ConditionKey::SourcePrincipal,
        "source.serviceAccount" => ConditionKey::SourceServiceAccount,
        "source.trustDomain" => ConditionKey::SourceTrustDomain,
        "request.auth.principal" => ConditionKey::RequestPrincipal,
        "request.auth.audiences" => ConditionKey::Claim(vec!["aud".into()]),
        "request.auth.presenter" => ConditionKey::Claim(vec!["azp".into()]),
        "destination.ip" => ConditionKey::DestinationIp,
        "destination.port" => ConditionKey::DestinationPort,
        "connection.sni" => ConditionKey::Sni,
        _ => {
            if let Some(rest) = key.strip_prefix("request.headers") {
                ConditionKey::Header(single_bracket(rest)?.to_owned())
            } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
                ConditionKey::Claim(nested_brackets(rest)?)
            } else if key.starts_with("experimental.envoy.filters.") {
                single_bracket_suffix(key)?;
                ConditionKey::Experimental
            } else {
                return None;
            }
        }
    })
}

/// `[name]` -> `name` (Istio's `extractNameInBrackets`).
fn single_bracket(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    (!inner.is_empty() && !inner.contains(['[', ']'])).then_some(inner)
}

/// `a.b[c]`: Istio's `validateMapKey` for experimental keys.
fn single_bracket_suffix(key: &str) -> Option<()> {
    let open = key.find('[')?;
    (key.ends_with(']') && open > 0 && open < key.len() - 2).then_some(())
}

/// `[a][b]` -> `[a, b]` (Istio's `extractNameInNestedBrackets`).
fn nested_brackets(s: &str) -> Option<Vec<String>> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let parts: Vec<String> = inner.split("][").map(str::to_owned).collect();
    parts
        .iter()
        .all(|p| !p.is_empty() && !p.contains(['[', ']']))
        .then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_keys() {
        assert_eq!(
            parse_condition_key("request.headers[X-User]"),
            Some(ConditionKey::Header("X-User".into()))
        );
        assert_eq!(parse_condition_key("request.headers[]"), None);
        assert_eq!(parse_condition_key("request.headers"), None);
        assert_eq!(
            parse_condition_key("request.auth.claims[a][b]"),
            Some(ConditionKey::Claim(vec!["a".into(), "b".into()]))
        );
        assert_eq!(parse_condition_key("request.auth.claims[a]["), None);
        assert_eq!(
            parse_condition_key("experimental.envoy.filters.x.y[z]"),
            Some(ConditionKey::Experimental)
        );
        assert_eq!(parse_condition_key("source.user"), None);
        assert_eq!(parse_condition_key("destination.namespace"), None);
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080"), Some(8080));
        assert_eq!(parse_port("0"), Some(0));
        assert_eq!(parse_port("65536"), None);
        assert_eq!(parse_port("-1"), None);
        assert_eq!(parse_port("+1"), None);
        assert_eq!(parse_port("http"), None);
    }
}
