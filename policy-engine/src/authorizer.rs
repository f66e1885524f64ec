//! The compiled, immutable evaluator and its decision.
//!
//! Policies are kept apart by where they apply (everything through the waypoint, or one target such
//! as a Service), by action and by side (HTTP or TCP). Inside each set an index of exact principals,
//! namespaces, trust domains, hosts, methods, paths and ports, plus path prefixes bucketed by
//! length, yields the only rules that can match, so a request that matches nothing touches a few
//! hash buckets rather than every rule.

use std::collections::HashMap;
use std::fmt;

use crate::compile::{self, Context, Key, Rule, Side};
use crate::request::Request;
use crate::spec::{Action, PolicySpec};

/// What one compiled policy is, for reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMeta {
    pub namespace: String,
    pub name: String,
    pub action: Action,
    pub provider: Option<String>,
    pub dry_run: bool,
}

impl fmt::Display for PolicyMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a policy applies at this waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// All traffic through the waypoint (a Gateway or GatewayClass ref).
    Waypoint,
    /// Only traffic to these targets (opaque keys chosen by the caller, e.g. `Service/ns/name`).
    Targets(Vec<String>),
}

/// Builds an [`Authorizer`] from policies already known to bind to one waypoint.
#[derive(Debug, Default)]
pub struct AuthorizerBuilder {
    policies: Vec<(PolicySpec, Binding)>,
}

impl AuthorizerBuilder {
    pub fn new() -> AuthorizerBuilder {
        AuthorizerBuilder::default()
    }

    pub fn add(&mut self, policy: PolicySpec, binding: Binding) -> &mut Self {
        self.policies.push((policy, binding));
        self
    }

    pub fn build(self) -> Authorizer {
        Authorizer::compile(self.policies)
    }
}

type Bucket = HashMap<Box<str>, Vec<u32>>;

/// Candidate index of one rule set. One map per key kind so that lookups borrow the request's
/// strings instead of building owned keys.
#[derive(Debug, Default)]
struct Index {
    principal: Bucket,
    namespace: Bucket,
    trust_domain: Bucket,
    host: Bucket,
    method: Bucket,
    path: Bucket,
    path_prefix: Bucket,
    /// Distinct path-prefix lengths, ascending: a request probes one bucket per length.
    prefix_lengths: Vec<usize>,
    port: HashMap<u16, Vec<u32>>,
    unguarded: Vec<u32>,
}

impl Index {
    fn insert(&mut self, key: Key, id: u32) {
        let ids = match key {
            Key::Principal(k) => self.principal.entry(k).or_default(),
            Key::Namespace(k) => self.namespace.entry(k).or_default(),
            Key::TrustDomain(k) => self.trust_domain.entry(k).or_default(),
            Key::Host(k) => self.host.entry(k).or_default(),
            Key::Method(k) => self.method.entry(k).or_default(),
            Key::Path(k) => self.path.entry(k).or_default(),
            Key::PathPrefix(k) => {
                self.prefix_lengths.push(k.len());
                self.path_prefix.entry(k).or_default()
            }
            Key::Port(p) => self.port.entry(p).or_default(),
        };
        // A rule can reach one bucket through several keys (`paths: [/a, /a]`); list it once.
        if ids.last() != Some(&id) {
            ids.push(id);
        }
    }

    fn finish(&mut self) {
        self.prefix_lengths.sort_unstable();
        self.prefix_lengths.dedup();
        for b in [
            &mut self.principal,
            &mut self.namespace,
            &mut self.trust_domain,
            &mut self.host,
            &mut self.method,
            &mut self.path,
            &mut self.path_prefix,
        ] {
            b.shrink_to_fit();
            b.values_mut().for_each(Vec::shrink_to_fit);
        }
    }

    /// Calls `visit` with every rule that could match: unguarded rules and the buckets the
    /// request's own values land in. Allocates nothing.
    fn candidates(&self, cx: &Context<'_>, mut visit: impl FnMut(u32)) {
        self.unguarded.iter().for_each(|&id| visit(id));
        let mut each = |ids: Option<&Vec<u32>>| ids.into_iter().flatten().for_each(|&id| visit(id));
        let req = cx.req;
        if let (false, Some(port)) = (self.port.is_empty(), req.destination_port) {
            each(self.port.get(&port));
        }
        if let Some(peer) = cx.peer() {
            if !self.principal.is_empty() {
                each(self.principal.get(peer.uri()));
            }
            if !self.namespace.is_empty() {
                peer.namespace_candidates()
                    .for_each(|ns| each(self.namespace.get(ns)));
            }
            if !self.trust_domain.is_empty() {
                each(peer.trust_domain().and_then(|td| self.trust_domain.get(td)));
            }
        }
        if let Some(http) = req.http.as_ref() {
            if !self.method.is_empty() {
                each(self.method.get(http.method));
            }
            if !self.host.is_empty() {
                each(cx.host_lower().and_then(|h| self.host.get(h)));
            }
        }
        if let Some(path) = cx.path {
            if !self.path.is_empty() {
                each(self.path.get(path));
            }
            for &len in &self.prefix_lengths {
                if len > path.len() {
                    break;
                }
                if let Some(prefix) = path.get(..len) {
                    each(self.path_prefix.get(prefix));
                }
            }
        }
    }
}

/// The rules of one (scope, action, side) and their index. Most of the eight sets of a scope are
/// empty, and a waypoint can hold thousands of scopes (one per targeted Service), so an empty set
/// costs two words rather than a dozen inline hash maps.
#[derive(Debug, Default)]
struct RuleSet {
    rules: Box<[Rule]>,
    index: Option<Box<Index>>,
}

impl RuleSet {
    fn build(mut rules: Vec<Rule>) -> RuleSet {
        if rules.is_empty() {
            return RuleSet::default();
        }
        rules.sort_by_key(|r| r.rank);
        let mut index = Index::default();
        for (id, rule) in rules.iter().enumerate() {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            match rule.guard() {
                None => index.unguarded.push(id),
                Some(g) => g.keys.into_iter().for_each(|k| index.insert(k, id)),
            }
        }
        index.finish();
        RuleSet {
            rules: rules.into_boxed_slice(),
            index: Some(Box::new(index)),
        }
    }

    /// Lowers `best` to the lowest-ranked rule of this set that matches.
    fn best_match<'r>(&'r self, cx: &Context<'_>, best: &mut Option<&'r Rule>) {
        let Some(index) = &self.index else {
            return;
        };
        index.candidates(cx, |id| {
            let rule = &self.rules[id as usize];
            if best.is_none_or(|b| rule.rank < b.rank) && rule.matches(cx) {
                *best = Some(rule);
            }
        });
    }

    /// Rules that no index key guards.
    fn unguarded(&self) -> usize {
        self.index.as_ref().map_or(0, |i| i.unguarded.len())
    }
}

#[derive(Debug, Default)]
struct Sides {
    http: RuleSet,
    tcp: RuleSet,
}

impl Sides {
    fn get(&self, side: Side) -> &RuleSet {
        match side {
            Side::Http => &self.http,
            Side::Tcp => &self.tcp,
        }
    }
}

#[derive(Debug, Default)]
struct Actions {
    custom: Sides,
    deny: Sides,
    allow: Sides,
    audit: Sides,
    /// ALLOW policies bound here, rules or not: their presence alone turns the default to deny.
    allow_policies: u32,
    policies: u32,
}

impl Actions {
    fn sides(&self, action: Action) -> &Sides {
        match action {
            Action::Custom => &self.custom,
            Action::Deny => &self.deny,
            Action::Allow => &self.allow,
            Action::Audit => &self.audit,
        }
    }
}

#[derive(Debug, Default)]
struct Scope {
    enforce: Actions,
    dry_run: Actions,
    /// A policy bound here has a rule that reads the HTTP request.
    reads_http: bool,
}

/// Immutable, shareable evaluator for one waypoint's policies.
#[derive(Debug, Default)]
pub struct Authorizer {
    policies: Vec<PolicyMeta>,
    waypoint: Scope,
    /// Boxed: a scope is a few hundred bytes and the map's spare capacity should not be.
    targets: HashMap<Box<str>, Box<Scope>>,
}

/// A rule that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched<'a> {
    pub policy: &'a PolicyMeta,
    pub rule: usize,
}

/// Why the decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A CUSTOM policy matched; external authorization is not available, so the request is denied.
    CustomProviderUnavailable,
    DenyPolicyMatched,
    AllowPolicyMatched,
    /// ALLOW policies apply and none matched.
    NoAllowPolicyMatched {
        allow_policies: u32,
    },
    /// No ALLOW policy applies and nothing denied.
    NoAllowPolicy,
}

/// What the dry-run (`istio.io/dry-run`) policies would have decided on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shadow<'a> {
    pub allowed: bool,
    pub matched: Option<Matched<'a>>,
}

/// The outcome for one connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    /// `403` for a denied HTTP request, `200` for an allowed one (forwarded upstream), `None` on TCP.
    pub status: Option<u16>,
    /// The deciding rule; `None` when the default decided.
    pub matched: Option<Matched<'a>>,
    pub reason: Reason,
    /// An AUDIT policy that matched: the request is marked for audit logging.
    pub audit: Option<Matched<'a>>,
    pub dry_run: Option<Shadow<'a>>,
}

/// The body Envoy's RBAC filter sends with its 403.
pub const DENIED_BODY: &str = "RBAC: access denied";

impl Decision<'_> {
    /// The action of the deciding policy.
    pub fn action(&self) -> Option<Action> {
        self.matched.map(|m| m.policy.action)
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = |f: &mut fmt::Formatter<'_>, m: &Matched<'_>| {
            write!(f, "{} policy {} rule {}", m.policy.action, m.policy, m.rule)
        };
        match (self.reason, &self.matched) {
            (Reason::CustomProviderUnavailable, Some(m)) => {
                f.write_str("denied: ")?;
                by(f, m)?;
                write!(
                    f,
                    " matched, and its provider {:?} cannot be consulted (external authorization is not \
                     supported yet), so the request is denied (fail-closed)",
                    m.policy.provider.as_deref().unwrap_or("")
                )?;
            }
            (Reason::DenyPolicyMatched, Some(m)) => {
                f.write_str("denied by ")?;
                by(f, m)?;
            }
            (Reason::AllowPolicyMatched, Some(m)) => {
                f.write_str("allowed by ")?;
                by(f, m)?;
            }
            (Reason::NoAllowPolicyMatched { allow_policies }, _) => write!(
                f,
                "denied: {allow_policies} ALLOW polic{} appl{} and no rule matched (default deny)",
                if allow_policies == 1 { "y" } else { "ies" },
                if allow_policies == 1 { "ies" } else { "y" }
            )?,
            (Reason::NoAllowPolicy, _) => f.write_str(
                "allowed: no DENY policy matched and no ALLOW policy applies (default allow)",
            )?,
            (_, None) => f.write_str("undetermined")?,
        }
        if let Some(a) = &self.audit {
            f.write_str("; audited by ")?;
            by(f, a)?;
        }
        if let Some(s) = &self.dry_run {
            match (s.allowed, &s.matched) {
                (false, Some(m)) => {
                    f.write_str("; dry-run: would be denied by ")?;
                    by(f, m)?;
                }
                (false, None) => {
                    f.write_str("; dry-run: would be denied (no dry-run ALLOW rule matched)")?
                }
                (true, Some(m)) => {
                    f.write_str("; dry-run: allowed by ")?;
                    by(f, m)?;
                }
                (true, None) => f.write_str("; dry-run: nothing matched")?,
            }
        }
        Ok(())
    }
}

/// (target scope, dry run, action, TCP side) of a compiled rule.
type PendingKey = (Option<Box<str>>, bool, Action, bool);
/// (ALLOW policies, all policies) in one scope.
type Counts = (u32, u32);

/// Envoy keeps RBAC policies in a map ordered by this name; the first match there is reported.
fn envoy_policy_name(p: &PolicySpec, rule: usize) -> String {
    format!("ns[{}]-policy[{}]-rule[{}]", p.namespace, p.name, rule)
}

impl Authorizer {
    fn compile(policies: Vec<(PolicySpec, Binding)>) -> Authorizer {
        let mut names: Vec<(String, u32, u32)> = Vec::new();
        for (pi, (p, _)) in policies.iter().enumerate() {
            for ri in 0..p.rules.as_ref().map_or(0, Vec::len) {
                names.push((envoy_policy_name(p, ri), pi as u32, ri as u32));
            }
        }
        names.sort_unstable();
        let mut rank = HashMap::with_capacity(names.len());
        for (r, (_, pi, ri)) in names.into_iter().enumerate() {
            rank.insert((pi, ri), r as u32);
        }

        let mut metas = Vec::with_capacity(policies.len());
        // (scope, dry_run, action, side) -> rules
        let mut pending: HashMap<PendingKey, Vec<Rule>> = HashMap::new();
        let mut counts: HashMap<(Option<Box<str>>, bool), Counts> = HashMap::new();
        let mut reads_http: std::collections::HashSet<Option<Box<str>>> = Default::default();
        for (pi, (p, binding)) in policies.iter().enumerate() {
            let action = p.action();
            metas.push(PolicyMeta {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                action,
                provider: p.provider.clone(),
                dry_run: p.dry_run,
            });
            let scopes: Vec<Option<Box<str>>> = match binding {
                Binding::Waypoint => vec![None],
                Binding::Targets(t) => t.iter().map(|t| Some(t.as_str().into())).collect(),
            };
            for scope in &scopes {
                let c = counts.entry((scope.clone(), p.dry_run)).or_default();
                c.1 += 1;
                if action == Action::Allow {
                    c.0 += 1;
                }
            }
            for (ri, rule) in p.rules.iter().flatten().enumerate() {
                if compile::rule_reads_http(rule, action, &p.namespace) {
                    for scope in &scopes {
                        reads_http.insert(scope.clone());
                    }
                }
                let r = rank[&(pi as u32, ri as u32)];
                for (side, tcp) in [(Side::Http, false), (Side::Tcp, true)] {
                    let Some(parts) = compile::compile_rule(rule, action, side, &p.namespace)
                    else {
                        continue;
                    };
                    let compiled = compile::new_rule(parts, pi as u32, ri as u32, r);
                    for scope in &scopes {
                        pending
                            .entry((scope.clone(), p.dry_run, action, tcp))
                            .or_default()
                            .push(compiled.clone());
                    }
                }
            }
        }

        let mut auth = Authorizer {
            policies: metas,
            ..Authorizer::default()
        };
        for ((scope, dry_run), (allow, total)) in counts {
            let s = auth.scope_mut(scope);
            let a = if dry_run {
                &mut s.dry_run
            } else {
                &mut s.enforce
            };
            a.allow_policies = allow;
            a.policies = total;
        }
        for scope in reads_http {
            auth.scope_mut(scope).reads_http = true;
        }
        for ((scope, dry_run, action, tcp), rules) in pending {
            let s = auth.scope_mut(scope);
            let a = if dry_run {
                &mut s.dry_run
            } else {
                &mut s.enforce
            };
            let sides = match action {
                Action::Custom => &mut a.custom,
                Action::Deny => &mut a.deny,
                Action::Allow => &mut a.allow,
                Action::Audit => &mut a.audit,
            };
            let set = RuleSet::build(rules);
            if tcp {
                sides.tcp = set
            } else {
                sides.http = set
            }
        }
        auth.targets.shrink_to_fit();
        auth
    }

    fn scope_mut(&mut self, scope: Option<Box<str>>) -> &mut Scope {
        match scope {
            None => &mut self.waypoint,
            Some(t) => self.targets.entry(t).or_default(),
        }
    }

    /// The compiled policies, in the order they were added.
    pub fn policies(&self) -> &[PolicyMeta] {
        &self.policies
    }

    /// Whether a policy that applies to traffic for `target` (enforced or dry-run) reads the HTTP
    /// request: then that traffic is decided differently as HTTP and as opaque TCP.
    pub fn reads_http(&self, target: Option<&str>) -> bool {
        self.waypoint.reads_http
            || target
                .and_then(|t| self.targets.get(t))
                .is_some_and(|s| s.reads_http)
    }

    /// Decides `req`, which is addressed to `target` (the key used in [`Binding::Targets`]).
    pub fn evaluate(&self, req: &Request<'_>, target: Option<&str>) -> Decision<'_> {
        let cx = Context::new(req);
        let side = if req.http.is_some() {
            Side::Http
        } else {
            Side::Tcp
        };
        let scopes = [
            Some(&self.waypoint),
            target.and_then(|t| self.targets.get(t)).map(|s| &**s),
        ];
        let scopes = scopes.iter().flatten();

        let enforce = decide(
            scopes.clone().map(|s| &s.enforce),
            &cx,
            side,
            &self.policies,
        );
        let dry_run = scopes
            .clone()
            .any(|s| s.dry_run.policies > 0)
            .then(|| {
                decide(
                    scopes.clone().map(|s| &s.dry_run),
                    &cx,
                    side,
                    &self.policies,
                )
            })
            .map(|d| Shadow {
                allowed: d.allowed,
                matched: d.matched,
            });
        let status = match (req.http.is_some(), enforce.allowed) {
            (false, _) => None,
            (true, true) => Some(200),
            (true, false) => Some(403),
        };
        Decision {
            status,
            dry_run,
            ..enforce
        }
    }
}

fn best<'a>(
    sets: impl Iterator<Item = &'a Actions>,
    action: Action,
    cx: &Context<'_>,
    side: Side,
) -> Option<&'a Rule> {
    let mut best = None;
    for a in sets {
        a.sides(action).get(side).best_match(cx, &mut best);
    }
    best
}

fn decide<'a>(
    sets: impl Iterator<Item = &'a Actions> + Clone,
    cx: &Context<'_>,
    side: Side,
    policies: &'a [PolicyMeta],
) -> Decision<'a> {
    let matched = |r: &Rule| Matched {
        policy: &policies[r.policy as usize],
        rule: r.index as usize,
    };
    let audit = best(sets.clone(), Action::Audit, cx, side).map(matched);
    let verdict = |allowed, m: Option<&Rule>, reason| Decision {
        allowed,
        status: None,
        matched: m.map(matched),
        reason,
        audit,
        dry_run: None,
    };
    if let Some(r) = best(sets.clone(), Action::Custom, cx, side) {
        return verdict(false, Some(r), Reason::CustomProviderUnavailable);
    }
    if let Some(r) = best(sets.clone(), Action::Deny, cx, side) {
        return verdict(false, Some(r), Reason::DenyPolicyMatched);
    }
    let allow_policies: u32 = sets.clone().map(|a| a.allow_policies).sum();
    if allow_policies == 0 {
        return verdict(true, None, Reason::NoAllowPolicy);
    }
    match best(sets, Action::Allow, cx, side) {
        Some(r) => verdict(true, Some(r), Reason::AllowPolicyMatched),
        None => verdict(false, None, Reason::NoAllowPolicyMatched { allow_policies }),
    }
}

impl Authorizer {
    /// Sums `f` over every rule set (all scopes, enforced and dry-run, all actions, both sides).
    fn sum_sets(&self, f: impl Fn(&RuleSet) -> usize) -> usize {
        let actions = |a: &Actions| {
            [Action::Custom, Action::Deny, Action::Allow, Action::Audit]
                .iter()
                .map(|&x| f(&a.sides(x).http) + f(&a.sides(x).tcp))
                .sum::<usize>()
        };
        std::iter::once(&self.waypoint)
            .chain(self.targets.values().map(|s| &**s))
            .map(|s| actions(&s.enforce) + actions(&s.dry_run))
            .sum()
    }

    /// Rules that no index key guards: each is tried on every request.
    pub fn unindexed_rules(&self) -> usize {
        self.sum_sets(RuleSet::unguarded)
    }

    /// Total compiled rules (both sides, all scopes).
    pub fn compiled_rules(&self) -> usize {
        self.sum_sets(|s| s.rules.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ConditionSpec, OperationSpec, RuleSpec, SourceSpec};

    fn policy(name: &str, action: Action, rule: RuleSpec) -> PolicySpec {
        PolicySpec {
            namespace: "ns".into(),
            name: name.into(),
            action: Some(action),
            rules: Some(vec![rule]),
            ..PolicySpec::default()
        }
    }

    fn to(op: OperationSpec) -> RuleSpec {
        RuleSpec {
            to: Some(vec![Some(op)]),
            ..RuleSpec::default()
        }
    }

    fn when(key: &str) -> RuleSpec {
        RuleSpec {
            when: vec![ConditionSpec {
                key: key.into(),
                values: vec!["x".into()],
                not_values: vec![],
            }],
            ..RuleSpec::default()
        }
    }

    #[test]
    fn reads_http_per_scope() {
        let l4 = policy(
            "l4",
            Action::Allow,
            RuleSpec {
                from: Some(vec![Some(SourceSpec {
                    principals: vec!["cluster.local/ns/a/sa/b".into()],
                    ..SourceSpec::default()
                })]),
                to: Some(vec![Some(OperationSpec {
                    ports: vec!["80".into()],
                    ..OperationSpec::default()
                })]),
                when: vec![ConditionSpec {
                    key: "source.ip".into(),
                    values: vec!["10.0.0.0/8".into()],
                    not_values: vec![],
                }],
            },
        );
        let paths = policy(
            "paths",
            Action::Deny,
            to(OperationSpec {
                paths: vec!["/admin".into()],
                ..OperationSpec::default()
            }),
        );
        let svc = |t: &str| Binding::Targets(vec![t.into()]);
        let mut b = AuthorizerBuilder::new();
        b.add(l4.clone(), Binding::Waypoint)
            .add(paths, svc("Service/ns/web"))
            .add(
                policy("hdr", Action::Audit, when("request.headers[x]")),
                svc("Service/ns/a"),
            )
            .add(
                policy(
                    "exp",
                    Action::Allow,
                    when("experimental.envoy.filters.x[y]"),
                ),
                svc("Service/ns/b"),
            )
            .add(
                policy(
                    "rp",
                    Action::Allow,
                    RuleSpec {
                        from: Some(vec![Some(SourceSpec {
                            not_request_principals: vec!["*".into()],
                            ..SourceSpec::default()
                        })]),
                        ..RuleSpec::default()
                    },
                ),
                svc("Service/ns/c"),
            );
        let a = b.build();
        assert!(!a.reads_http(None), "L4 fields only, waypoint-wide");
        assert!(!a.reads_http(Some("Service/ns/db")));
        for t in [
            "Service/ns/web",
            "Service/ns/a",
            "Service/ns/b",
            "Service/ns/c",
        ] {
            assert!(a.reads_http(Some(t)), "{t}");
        }
        // A waypoint-wide HTTP rule reaches every destination.
        let mut b = AuthorizerBuilder::new();
        b.add(
            policy(
                "m",
                Action::Allow,
                to(OperationSpec {
                    methods: vec!["GET".into()],
                    ..OperationSpec::default()
                }),
            ),
            Binding::Waypoint,
        );
        assert!(b.build().reads_http(Some("Service/ns/db")));
    }
}
