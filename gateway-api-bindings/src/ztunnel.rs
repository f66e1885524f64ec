//! The second enforcement point: what the destination's ztunnel enforces.
//!
//! A connection that went through a waypoint is authorized twice: by the waypoint (policies with
//! `targetRefs`, L4 and L7) and then by the destination workload's ztunnel (policies with a
//! `selector`, namespace-wide and root-namespace ones, L4 only). This module answers the ztunnel
//! half exactly as istiod and ztunnel do:
//!
//! * [`convert`]: one AuthorizationPolicy into ztunnel's L4 form, as istiod's
//!   `convertAuthorizationPolicy` and `handleRule` build it
//!   (`pilot/pkg/serviceregistry/ambient/authorization.go`, read at istio/istio 1d486afd).
//!   Attributes ztunnel cannot see (methods, paths, hosts, requestPrincipals, remoteIpBlocks,
//!   trustDomains, and every `when` key outside `source.ip`, `source.namespace`,
//!   `source.principal`, `destination.ip`, `destination.port`) make istiod fail safe: an ALLOW
//!   rule holding one is dropped (the policy still applies, so it denies what it no longer
//!   allows); a DENY rule keeps its other fields, so it denies more than written, or nothing at
//!   all when a `from`, `to` or `when` entry is left empty (ztunnel skips an empty match,
//!   `src/rbac.rs` `Authorization::matches`).
//! * [`ZtunnelPolicy::applies_to`]: which workloads a converted policy reaches, as istiod
//!   attaches them (`buildWorkloadPolicies` in `workloads.go`) and ztunnel looks them up
//!   (`assert_rbac` in `src/state.rs`): a selector in the policy's namespace, or in any namespace
//!   from the root namespace; a policy without selector to its whole namespace, or to the whole
//!   mesh from the root namespace.
//! * [`ZtunnelAuthorizer`]: the converted policies compiled into the policy engine as a separate
//!   [`Authorizer`], evaluated on what ztunnel sees of a connection ([`Connection`]): the
//!   immediate peer's identity (the waypoint's, when the connection came through one), its
//!   address, and the pod's address and target port. ztunnel's order is the engine's: a matching
//!   DENY denies; no ALLOW policy allows; otherwise an ALLOW must match.
//!
//! Not modelled: PeerAuthentication (istiod converts port-level mTLS modes into extra DENY
//! policies), istiod's implicit "allow from my waypoint" policy (`PILOT_AUTO_ALLOW_WAYPOINT_POLICY`,
//! off by default), and dry-run policies, which istiod sends to ztunnel only with
//! `AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY` (off by default): [`convert`] reports them as
//! [`Skipped::DryRun`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use kube::ResourceExt;
use policy_engine::{
    Action, Authorizer, AuthorizerBuilder, Binding, ConditionSpec, OperationSpec, PeerIdentity,
    PolicySpec, Reason, Request, RuleSpec, SourceSpec,
};

use crate::istio::{self, AuthorizationPolicy};
use crate::key::ObjectKey;
use crate::store::Store;
use crate::well_known::DRY_RUN_ANNOTATION;

/// Which workloads a converted policy applies to (istiod's `security.Scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// No selector, in the root namespace: every workload of the mesh.
    Global,
    /// No selector: every workload of the policy's namespace.
    Namespace,
    /// A `selector`: the workloads whose labels hold all of its `matchLabels`.
    WorkloadSelector,
}

/// How the L4 form differs from the policy as written, with istiod's words for it (the
/// `ZtunnelAccepted` condition's message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Every attribute is L4: ztunnel enforces the policy as written.
    Exact,
    /// ALLOW: the rules using HTTP attributes are dropped, so the policy allows less (a caller
    /// the policy names is refused).
    AllowRulesOmitted,
    /// DENY: HTTP attributes are omitted and the rest enforced, so the policy denies more.
    DenyWithoutHttpRules,
    /// DENY: after omitting HTTP attributes no rule can match; the policy does nothing.
    DenyNoEffect,
}

/// Why istiod sends a policy to no ztunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    /// `targetRefs` (or `targetRef`): the policy is for waypoints.
    #[error("the policy has targetRefs: it binds to waypoints, not to ztunnel")]
    TargetRefs,
    /// AUDIT and CUSTOM have no ztunnel form; istiod reports `UnsupportedValue`.
    #[error("ztunnel does not support the {0} action")]
    UnsupportedAction(String),
    /// `istio.io/dry-run: "true"`: istiod sends no dry-run policy to ztunnel unless
    /// `AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY` is set (off by default).
    #[error(
        "dry-run policy: istiod sends it to ztunnel only with AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY"
    )]
    DryRun,
}

/// One AuthorizationPolicy as the destination's ztunnel receives it.
#[derive(Debug, Clone)]
pub struct ZtunnelPolicy {
    pub key: ObjectKey,
    pub scope: Scope,
    /// [`Action::Allow`] or [`Action::Deny`]: the only actions ztunnel has.
    pub action: Action,
    /// `spec.selector.matchLabels`; empty for [`Scope::Global`] and [`Scope::Namespace`].
    pub selector: BTreeMap<String, String>,
    /// The attributes ztunnel cannot evaluate, sorted, spelt as istiod lists them.
    pub http_attributes: Vec<String>,
    pub conversion: Conversion,
    /// Per rule of the policy as written: its L4 form, or `None` when it never matches at
    /// ztunnel (dropped from an ALLOW, or left with an empty `from`/`to`/`when` entry).
    rules: Vec<Option<RuleSpec>>,
    in_root_namespace: bool,
}

impl ZtunnelPolicy {
    /// Whether ztunnel applies this policy to a workload in `namespace` labelled `labels`.
    pub fn applies_to(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        match self.scope {
            Scope::Global => true,
            Scope::Namespace => namespace == self.key.namespace,
            Scope::WorkloadSelector => {
                (self.in_root_namespace || namespace == self.key.namespace)
                    && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            }
        }
    }

    /// The indices (in `spec.rules`) of the rules that can never match at ztunnel.
    pub fn dead_rules(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.is_none().then_some(i))
    }

    /// The message istiod puts in the policy's `ZtunnelAccepted` condition (reason
    /// `UnsupportedValue`) when the conversion is not exact.
    pub fn status_message(&self) -> Option<String> {
        let tail = match self.conversion {
            Conversion::Exact => return None,
            Conversion::DenyNoEffect => {
                "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at ztunnel \
                 and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy."
            }
            Conversion::DenyWithoutHttpRules => {
                "DENY policy with HTTP attributes is enforced without the HTTP rules. \
                 This will be more restrictive than requested."
            }
            Conversion::AllowRulesOmitted => {
                "Within an ALLOW policy, rules matching HTTP attributes are omitted. \
                 This will be more restrictive than requested."
            }
        };
        Some(format!(
            "ztunnel does not support HTTP attributes (found: {}). In ambient mode you must use a waypoint proxy \
             to enforce HTTP rules. {tail}",
            self.http_attributes.join(", ")
        ))
    }

    /// The engine's form: the live rules only, and the original index of each.
    fn engine_spec(&self) -> (PolicySpec, Vec<usize>) {
        let (index, rules): (Vec<usize>, Vec<RuleSpec>) = self
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.clone().map(|r| (i, r)))
            .unzip();
        let spec = PolicySpec {
            namespace: self.key.namespace.clone(),
            name: self.key.name.clone(),
            action: Some(self.action),
            provider: None,
            rules: Some(rules),
            dry_run: false,
        };
        (spec, index)
    }
}

/// Converts `ap` as istiod does for ztunnel; `root_namespace` is the mesh's root namespace.
pub fn convert(ap: &AuthorizationPolicy, root_namespace: &str) -> Result<ZtunnelPolicy, Skipped> {
    let spec = &ap.spec;
    // istiod checks the dry-run annotation first (`strconv.ParseBool`), then targetRefs.
    let dry_run = ap
        .annotations()
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| parse_bool(v) == Some(true));
    if dry_run {
        return Err(Skipped::DryRun);
    }
    if !spec.target_refs.is_empty() || spec.target_ref.is_some() {
        return Err(Skipped::TargetRefs);
    }
    let action = match spec.action.as_deref() {
        None | Some("" | "ALLOW") => Action::Allow,
        Some("DENY") => Action::Deny,
        Some(other) => return Err(Skipped::UnsupportedAction(other.to_owned())),
    };
    let namespace = ap.namespace().unwrap_or_else(|| "default".into());
    let in_root_namespace = namespace == root_namespace;
    let (scope, selector) = match &spec.selector {
        Some(s) => (Scope::WorkloadSelector, s.match_labels.clone()),
        None if in_root_namespace => (Scope::Global, BTreeMap::new()),
        None => (Scope::Namespace, BTreeMap::new()),
    };
    let mut http = BTreeSet::new();
    let mut rules = Vec::new();
    let mut effective = false;
    for rule in spec.rules.iter().flatten() {
        let converted = convert_rule(rule, action, &mut http);
        effective |= converted.is_some();
        rules.push(converted);
    }
    let conversion = match (http.is_empty(), action) {
        (true, _) => Conversion::Exact,
        (false, Action::Deny) if !effective => Conversion::DenyNoEffect,
        (false, Action::Deny) => Conversion::DenyWithoutHttpRules,
        (false, _) => Conversion::AllowRulesOmitted,
    };
    Ok(ZtunnelPolicy {
        key: ObjectKey::new(namespace, ap.name_any()),
        scope,
        action,
        selector,
        http_attributes: http.into_iter().collect(),
        conversion,
        rules,
        in_root_namespace,
    })
}

/// Every policy of `store` that istiod sends to ztunnel, converted.
pub fn policies(store: &Store, root_namespace: &str) -> Vec<ZtunnelPolicy> {
    store
        .authorization_policies
        .values()
        .filter_map(|ap| convert(&ap.object, root_namespace).ok())
        .collect()
}

/// Go's `strconv.ParseBool`, which istiod applies to the dry-run annotation.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `when` keys ztunnel evaluates (istiod's `l4WhenAttributes`).
const L4_WHEN_KEYS: [&str; 5] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// One rule as `handleRule` converts it: `None` when it can never match at ztunnel. Adds the
/// HTTP attributes it holds to `seen`.
fn convert_rule(
    rule: &istio::Rule,
    action: Action,
    seen: &mut BTreeSet<String>,
) -> Option<RuleSpec> {
    let mut http = BTreeSet::new();
    // ztunnel needs every clause to hold a non-empty match (an empty one is skipped, a clause of
    // only empty ones never matches): `hasEffectiveRules` in istiod, `matches` in ztunnel.
    let mut live = true;
    let mut to = Vec::new();
    for t in rule.to.iter().flatten() {
        let op = t.operation.clone().unwrap_or_default();
        let fields = [
            ("hosts", &op.hosts),
            ("notHosts", &op.not_hosts),
            ("methods", &op.methods),
            ("notMethods", &op.not_methods),
            ("paths", &op.paths),
            ("notPaths", &op.not_paths),
        ];
        note_http(&mut http, &fields);
        let m = OperationSpec {
            ports: ports(&op.ports),
            not_ports: ports(&op.not_ports),
            ..OperationSpec::default()
        };
        if !(m.ports.is_empty() && m.not_ports.is_empty()) {
            to.push(Some(m));
        }
    }
    if rule.to.as_ref().is_some_and(|t| !t.is_empty()) && to.is_empty() {
        live = false;
    }
    let mut from = Vec::new();
    for f in rule.from.iter().flatten() {
        let s = f.source.clone().unwrap_or_default();
        let fields = [
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("trustDomains", &s.trust_domains),
            ("notTrustDomains", &s.not_trust_domains),
        ];
        note_http(&mut http, &fields);
        let m = SourceSpec {
            principals: s.principals.clone(),
            not_principals: s.not_principals.clone(),
            namespaces: s.namespaces.clone(),
            not_namespaces: s.not_namespaces.clone(),
            service_accounts: s.service_accounts.clone(),
            not_service_accounts: s.not_service_accounts.clone(),
            ip_blocks: ips(&s.ip_blocks),
            not_ip_blocks: ips(&s.not_ip_blocks),
            ..SourceSpec::default()
        };
        let empty = [
            &m.principals,
            &m.not_principals,
            &m.namespaces,
            &m.not_namespaces,
            &m.service_accounts,
            &m.not_service_accounts,
            &m.ip_blocks,
            &m.not_ip_blocks,
        ]
        .iter()
        .all(|v| v.is_empty());
        if !empty {
            from.push(Some(m));
        }
    }
    if rule.from.as_ref().is_some_and(|f| !f.is_empty()) && from.is_empty() {
        live = false;
    }
    let mut when = Vec::new();
    for c in &rule.when {
        if !L4_WHEN_KEYS.contains(&c.key.as_str()) {
            http.insert(c.key.clone());
            // Its match is empty: the clause never matches.
            live = false;
            continue;
        }
        let parse = |values: &[String]| match c.key.as_str() {
            "source.ip" | "destination.ip" => ips(values),
            "destination.port" => ports(values),
            _ => values.to_vec(),
        };
        let (values, not_values) = (parse(&c.values), parse(&c.not_values));
        if values.is_empty() && not_values.is_empty() {
            live = false;
            continue;
        }
        when.push(ConditionSpec {
            key: c.key.clone(),
            values,
            not_values,
        });
    }
    let l7 = !http.is_empty();
    seen.append(&mut http);
    // An ALLOW rule with an HTTP attribute is dropped whole; a DENY rule keeps the rest.
    if action == Action::Allow && l7 {
        return None;
    }
    if !live {
        return None;
    }
    Some(RuleSpec {
        from: (!from.is_empty()).then_some(from),
        to: (!to.is_empty()).then_some(to),
        when,
    })
}

/// Records the HTTP-only fields that are set.
fn note_http(http: &mut BTreeSet<String>, fields: &[(&str, &Vec<String>)]) {
    for (name, values) in fields {
        if !values.is_empty() {
            http.insert((*name).to_owned());
        }
    }
}

/// istiod's `stringToPort`: base-10 integers up to 65535; anything else is skipped.
fn ports(values: &[String]) -> Vec<String> {
    values
        .iter()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|v| v.parse::<u32>().ok())
        .filter_map(|p| u16::try_from(p).ok())
        .map(|p| p.to_string())
        .collect()
}

/// istiod's `stringToIP`: an address or a CIDR; anything else is skipped.
fn ips(values: &[String]) -> Vec<String> {
    values
        .iter()
        .filter_map(|v| match v.split_once('/') {
            Some((addr, bits)) => {
                let addr: IpAddr = addr.parse().ok()?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let bits: u8 = bits
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| bits.parse().ok())??;
                (bits <= max).then(|| format!("{addr}/{bits}"))
            }
            None => v.parse::<IpAddr>().ok().map(|a| a.to_string()),
        })
        .collect()
}

/// A workload ztunnel protects: a Pod, or a WorkloadEntry.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    pub key: &'a ObjectKey,
    pub labels: &'a BTreeMap<String, String>,
}

/// What the destination's ztunnel knows of a connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection<'a> {
    /// The immediate peer: the waypoint, when the connection came through one.
    pub peer: Option<&'a PeerIdentity>,
    /// The immediate peer's address.
    pub source_ip: Option<IpAddr>,
    /// The workload's own address.
    pub destination_ip: Option<IpAddr>,
    /// The workload's port (a Service's `targetPort`, not the Service port).
    pub destination_port: Option<u16>,
}

/// ztunnel's verdict on a connection.
#[derive(Debug, Clone)]
pub struct Verdict<'a> {
    pub allowed: bool,
    /// The deciding policy, when a rule decided.
    pub policy: Option<&'a ZtunnelPolicy>,
    /// The deciding rule's index in the policy's `spec.rules`.
    pub rule: Option<usize>,
    pub reason: Reason,
    /// ALLOW policies that applied with rules ztunnel cannot match (fail safe), when the
    /// connection was denied for want of a matching ALLOW rule.
    pub fail_safe: Vec<&'a ZtunnelPolicy>,
}

impl fmt::Display for Verdict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = |p: &ZtunnelPolicy| format!("{} policy {}", p.action, p.key);
        match (self.reason, self.policy, self.rule) {
            (Reason::DenyPolicyMatched, Some(p), Some(r)) => {
                write!(f, "denied by ztunnel: {} rule {r}", by(p))?;
                if p.conversion == Conversion::DenyWithoutHttpRules {
                    write!(
                        f,
                        " (enforced without its HTTP attributes: {})",
                        p.http_attributes.join(", ")
                    )?;
                }
            }
            (Reason::AllowPolicyMatched, Some(p), Some(r)) => {
                write!(f, "allowed by ztunnel: {} rule {r}", by(p))?
            }
            (Reason::NoAllowPolicyMatched { allow_policies }, _, _) => {
                write!(
                    f,
                    "denied by ztunnel: {allow_policies} ALLOW polic{} appl{} and no rule matched",
                    if allow_policies == 1 { "y" } else { "ies" },
                    if allow_policies == 1 { "ies" } else { "y" }
                )?;
                for p in &self.fail_safe {
                    let dead: Vec<String> = p.dead_rules().map(|r| r.to_string()).collect();
                    write!(
                        f,
                        "; {} rule {} uses {} which ztunnel cannot evaluate, so it never matches (fail safe)",
                        p.key,
                        dead.join(", "),
                        p.http_attributes.join(", ")
                    )?;
                }
            }
            (Reason::NoAllowPolicy, _, _) => f.write_str(
                "allowed by ztunnel: no DENY policy matched and no ALLOW policy applies",
            )?,
            _ => f.write_str(if self.allowed {
                "allowed by ztunnel"
            } else {
                "denied by ztunnel"
            })?,
        }
        Ok(())
    }
}

/// The ztunnel-enforced policies of a set of workloads, compiled once into a policy engine
/// [`Authorizer`] of their own (separate from the waypoint's), each workload a target.
#[derive(Debug, Default)]
pub struct ZtunnelAuthorizer {
    authorizer: Authorizer,
    policies: Vec<ZtunnelPolicy>,
    /// Per entry of `policies`: the original index of each rule the engine holds.
    rule_index: Vec<Vec<usize>>,
    by_key: HashMap<ObjectKey, usize>,
    /// Workload -> the entries of `policies` that apply to it (global ones included).
    applicable: HashMap<ObjectKey, Vec<usize>>,
    global: Vec<usize>,
}

/// Workloads indexed so that a policy meets only those it may apply to: by namespace, and by
/// label pair for selectors (a mesh with thousands of pods and policies would otherwise test
/// every pair).
struct WorkloadIndex<'w> {
    all: Vec<Workload<'w>>,
    by_namespace: HashMap<&'w str, Vec<usize>>,
    by_label: HashMap<(&'w str, &'w str), Vec<usize>>,
}

impl<'w> WorkloadIndex<'w> {
    fn new(workloads: impl IntoIterator<Item = Workload<'w>>) -> WorkloadIndex<'w> {
        // The same workload twice would bind a policy to it twice.
        let mut seen = std::collections::HashSet::new();
        let all: Vec<Workload<'w>> = workloads
            .into_iter()
            .filter(|w| seen.insert(w.key))
            .collect();
        let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, w) in all.iter().enumerate() {
            by_namespace.entry(&w.key.namespace).or_default().push(i);
            for (k, v) in w.labels {
                by_label.entry((k, v)).or_default().push(i);
            }
        }
        WorkloadIndex {
            all,
            by_namespace,
            by_label,
        }
    }

    /// A superset of the workloads `p` applies to.
    fn candidates<'a>(
        &'a self,
        p: &'a ZtunnelPolicy,
    ) -> Box<dyn Iterator<Item = &'a Workload<'w>> + 'a> {
        let ids: &[usize] = match (p.scope, p.selector.iter().next()) {
            (Scope::Global, _) => return Box::new(self.all.iter()),
            (Scope::WorkloadSelector, Some((k, v))) => self
                .by_label
                .get(&(k.as_str(), v.as_str()))
                .map_or(&[], Vec::as_slice),
            (Scope::WorkloadSelector, None) if p.in_root_namespace => {
                return Box::new(self.all.iter());
            }
            _ => self
                .by_namespace
                .get(p.key.namespace.as_str())
                .map_or(&[], Vec::as_slice),
        };
        Box::new(ids.iter().map(|&i| &self.all[i]))
    }
}

/// The engine target key of a workload.
fn workload_target(key: &ObjectKey) -> String {
    format!("Workload/{key}")
}

impl ZtunnelAuthorizer {
    /// Compiles `policies` for `workloads`. A workload not given here is evaluated with the
    /// [`Scope::Global`] policies alone.
    pub fn build<'w>(
        policies: Vec<ZtunnelPolicy>,
        workloads: impl IntoIterator<Item = Workload<'w>>,
    ) -> ZtunnelAuthorizer {
        let workloads = WorkloadIndex::new(workloads);
        let mut builder = AuthorizerBuilder::new();
        let mut out = ZtunnelAuthorizer::default();
        for (i, p) in policies.iter().enumerate() {
            let (spec, index) = p.engine_spec();
            out.rule_index.push(index);
            out.by_key.insert(p.key.clone(), i);
            let binding = if p.scope == Scope::Global {
                out.global.push(i);
                Binding::Waypoint
            } else {
                let targets: Vec<String> = workloads
                    .candidates(p)
                    .filter(|w| p.applies_to(&w.key.namespace, w.labels))
                    .map(|w| {
                        out.applicable.entry(w.key.clone()).or_default().push(i);
                        workload_target(w.key)
                    })
                    .collect();
                Binding::Targets(targets)
            };
            builder.add(spec, binding);
        }
        out.authorizer = builder.build();
        out.policies = policies;
        out
    }

    /// The ztunnel-enforced policies of `store` for one workload.
    pub fn for_workload(
        store: &Store,
        root_namespace: &str,
        workload: Workload<'_>,
    ) -> ZtunnelAuthorizer {
        ZtunnelAuthorizer::build(policies(store, root_namespace), [workload])
    }

    /// The policies that apply to `workload`, global ones included.
    pub fn applicable(&self, workload: &ObjectKey) -> impl Iterator<Item = &ZtunnelPolicy> {
        self.global
            .iter()
            .chain(self.applicable.get(workload).into_iter().flatten())
            .map(|&i| &self.policies[i])
    }

    /// Decides a connection to `workload` as its ztunnel would.
    pub fn evaluate(&self, workload: &ObjectKey, conn: &Connection<'_>) -> Verdict<'_> {
        let req = Request {
            peer: conn.peer,
            source_ip: conn.source_ip,
            remote_ip: None,
            destination_ip: conn.destination_ip,
            destination_port: conn.destination_port,
            sni: None,
            http: None,
            jwt: None,
        };
        let target = workload_target(workload);
        let d = self.authorizer.evaluate(&req, Some(&target));
        let matched = d.matched.and_then(|m| {
            let i = *self
                .by_key
                .get(&ObjectKey::new(&m.policy.namespace, &m.policy.name))?;
            let rule = *self.rule_index[i].get(m.rule)?;
            Some((&self.policies[i], rule))
        });
        let fail_safe = if matches!(d.reason, Reason::NoAllowPolicyMatched { .. }) {
            self.applicable(workload)
                .filter(|p| p.action == Action::Allow && p.dead_rules().next().is_some())
                .filter(|p| !p.http_attributes.is_empty())
                .collect()
        } else {
            Vec::new()
        };
        Verdict {
            allowed: d.allowed,
            policy: matched.map(|(p, _)| p),
            rule: matched.map(|(_, r)| r),
            reason: d.reason,
            fail_safe,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "istio-system";

    fn ap(yaml: &str) -> AuthorizationPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The httpbin pod of the seeds' ambient-demo namespace.
    fn httpbin() -> (ObjectKey, BTreeMap<String, String>) {
        (
            ObjectKey::new("ambient-demo", "httpbin-1"),
            labels(&[("app", "httpbin")]),
        )
    }

    fn sleep() -> PeerIdentity {
        PeerIdentity::new("cluster.local/ns/ambient-demo/sa/sleep")
    }

    fn conn(peer: Option<&PeerIdentity>, port: u16) -> Connection<'_> {
        Connection {
            peer,
            source_ip: Some("10.244.1.5".parse().unwrap()),
            destination_ip: Some("10.244.2.7".parse().unwrap()),
            destination_port: Some(port),
        }
    }

    /// Decides `c` against `policies` for the httpbin pod.
    fn decide(policies: &[&str], c: &Connection<'_>) -> (bool, Option<(String, usize)>, String) {
        let (key, l) = httpbin();
        let converted = policies
            .iter()
            .map(|y| convert(&ap(y), ROOT).unwrap())
            .collect();
        let z = ZtunnelAuthorizer::build(
            converted,
            [Workload {
                key: &key,
                labels: &l,
            }],
        );
        let v = z.evaluate(&key, c);
        let by = v.policy.map(|p| (p.key.name.clone(), v.rule.unwrap()));
        (v.allowed, by, v.to_string())
    }

    const SELECTOR_GET: &str = "
metadata: {name: allow-sleep-to-httpbin, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}}]
    to: [{operation: {methods: [GET]}}]
";

    #[test]
    fn target_refs_are_for_waypoints() {
        // convertAuthorizationPolicy: `len(polTargetRef) > 0` -> not intended for ztunnel.
        let p = ap("
metadata: {name: p, namespace: ns}
spec: {targetRefs: [{kind: Service, group: '', name: svc}]}
");
        assert_eq!(convert(&p, ROOT).unwrap_err(), Skipped::TargetRefs);
        let p = ap("
metadata: {name: p, namespace: ns}
spec: {targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: wp}}
");
        assert_eq!(convert(&p, ROOT).unwrap_err(), Skipped::TargetRefs);
    }

    #[test]
    fn audit_and_custom_have_no_ztunnel_form() {
        // convertAuthorizationPolicy: actions other than ALLOW/DENY -> "ztunnel does not support".
        for action in ["AUDIT", "CUSTOM"] {
            let p = ap(&format!(
                "metadata: {{name: p, namespace: ns}}\nspec: {{action: {action}, rules: [{{}}]}}\n"
            ));
            assert_eq!(
                convert(&p, ROOT).unwrap_err(),
                Skipped::UnsupportedAction(action.into())
            );
        }
    }

    #[test]
    fn dry_run_policies_are_not_sent() {
        // convertAuthorizationPolicy: dry-run without features.EnableWdsDryRunAuthzPol (default
        // false) -> nil policy; the annotation is read with strconv.ParseBool.
        for v in ["true", "True", "1", "t"] {
            let p = ap(&format!(
                "metadata: {{name: p, namespace: ns, annotations: {{istio.io/dry-run: '{v}'}}}}\nspec: {{}}\n"
            ));
            assert_eq!(convert(&p, ROOT).unwrap_err(), Skipped::DryRun, "{v}");
        }
        let p = ap(
            "metadata: {name: p, namespace: ns, annotations: {istio.io/dry-run: 'yes'}}\nspec: {}\n",
        );
        assert!(
            convert(&p, ROOT).is_ok(),
            "ParseBool refuses `yes`: enforced"
        );
    }

    #[test]
    fn scope_follows_selector_and_root_namespace() {
        // convertAuthorizationPolicy: selector -> WORKLOAD_SELECTOR; none -> NAMESPACE, or GLOBAL
        // in the root namespace. buildWorkloadPolicies: a selector policy applies in its own
        // namespace, or in every namespace from the root namespace.
        let (_, l) = httpbin();
        let ns_wide = convert(
            &ap("metadata: {name: a, namespace: ambient-demo}\nspec: {}\n"),
            ROOT,
        )
        .unwrap();
        assert_eq!(ns_wide.scope, Scope::Namespace);
        assert!(ns_wide.applies_to("ambient-demo", &l));
        assert!(!ns_wide.applies_to("other", &l));

        let global = convert(
            &ap("metadata: {name: a, namespace: istio-system}\nspec: {}\n"),
            ROOT,
        )
        .unwrap();
        assert_eq!(global.scope, Scope::Global);
        assert!(global.applies_to("other", &BTreeMap::new()));

        let sel = "spec: {selector: {matchLabels: {app: httpbin}}}\n";
        let here = convert(
            &ap(&format!(
                "metadata: {{name: a, namespace: ambient-demo}}\n{sel}"
            )),
            ROOT,
        )
        .unwrap();
        assert_eq!(here.scope, Scope::WorkloadSelector);
        assert!(here.applies_to("ambient-demo", &l));
        assert!(
            !here.applies_to("other", &l),
            "selector stays in its namespace"
        );
        assert!(!here.applies_to("ambient-demo", &labels(&[("app", "sleep")])));
        let root = convert(
            &ap(&format!(
                "metadata: {{name: a, namespace: istio-system}}\n{sel}"
            )),
            ROOT,
        )
        .unwrap();
        assert_eq!(root.scope, Scope::WorkloadSelector);
        assert!(
            root.applies_to("other", &l),
            "root-namespace selector crosses namespaces"
        );
    }

    #[test]
    fn allow_with_an_http_attribute_denies_the_caller_it_names() {
        // handleRule: `action == ALLOW && l7RuleFound` -> rules = nil, so the group is omitted
        // and the ALLOW policy matches nothing: the seeds' GET example, where even sleep is
        // refused ("command terminated with exit code 56").
        let p = convert(&ap(SELECTOR_GET), ROOT).unwrap();
        assert_eq!(p.conversion, Conversion::AllowRulesOmitted);
        assert_eq!(p.http_attributes, ["methods"]);
        assert_eq!(p.dead_rules().collect::<Vec<_>>(), [0]);
        let s = sleep();
        let (allowed, by, reason) = decide(&[SELECTOR_GET], &conn(Some(&s), 8080));
        assert!(!allowed, "{reason}");
        assert_eq!(by, None);
        assert!(
            reason.contains("rule 0 uses methods which ztunnel cannot evaluate"),
            "{reason}"
        );
        assert_eq!(
            p.status_message().unwrap(),
            "ztunnel does not support HTTP attributes (found: methods). In ambient mode you must use a waypoint \
             proxy to enforce HTTP rules. Within an ALLOW policy, rules matching HTTP attributes are omitted. \
             This will be more restrictive than requested."
        );
    }

    #[test]
    fn allow_keeps_its_l4_rules() {
        // handleRule runs per rule: only the rule holding the HTTP attribute is dropped.
        let y = "
metadata: {name: mixed, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - to: [{operation: {paths: [/admin]}}]
  - from: [{source: {namespaces: [ambient-demo]}}]
";
        let s = sleep();
        let (allowed, by, _) = decide(&[y], &conn(Some(&s), 8080));
        assert!(allowed);
        assert_eq!(by, Some(("mixed".into(), 1)), "the original rule index");
        let other = PeerIdentity::new("cluster.local/ns/other/sa/x");
        assert!(!decide(&[y], &conn(Some(&other), 8080)).0);
    }

    #[test]
    fn every_rule_holding_an_http_attribute_is_dropped() {
        // handleRule decides per rule: a second rule using the same attribute is dropped too.
        let y = "
metadata: {name: two, namespace: ambient-demo}
spec:
  rules:
  - to: [{operation: {methods: [GET]}}]
  - from: [{source: {namespaces: [ambient-demo]}}]
    to: [{operation: {methods: [GET]}}]
";
        let p = convert(&ap(y), ROOT).unwrap();
        assert_eq!(p.dead_rules().collect::<Vec<_>>(), [0, 1]);
        let s = sleep();
        assert!(!decide(&[y], &conn(Some(&s), 8080)).0);
    }

    #[test]
    fn deny_with_methods_and_ports_denies_the_whole_port() {
        // handleRule: for DENY the HTTP fields are omitted and DestinationPorts kept, so the
        // rule denies every connection to the port: more restrictive than written.
        let y = "
metadata: {name: deny-writes, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {methods: [POST], ports: ['8080']}}]
";
        let p = convert(&ap(y), ROOT).unwrap();
        assert_eq!(p.conversion, Conversion::DenyWithoutHttpRules);
        let s = sleep();
        let (allowed, by, reason) = decide(&[y], &conn(Some(&s), 8080));
        assert!(!allowed);
        assert_eq!(by, Some(("deny-writes".into(), 0)));
        assert!(
            reason.contains("without its HTTP attributes: methods"),
            "{reason}"
        );
        assert!(decide(&[y], &conn(Some(&s), 9090)).0, "other ports pass");
    }

    #[test]
    fn deny_with_only_http_fields_has_no_effect() {
        // handleRule emits an empty Match for the operation; ztunnel skips empty matches
        // (rbac.rs `mg.is_empty()`), so the clause and the rule never match, and istiod says so
        // (httpDenyNoEffectBoilerplate, from hasEffectiveRules).
        let y = "
metadata: {name: deny-post, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {methods: [POST]}}]
";
        let p = convert(&ap(y), ROOT).unwrap();
        assert_eq!(p.conversion, Conversion::DenyNoEffect);
        assert!(p.status_message().unwrap().contains("will have no effect"));
        let s = sleep();
        assert!(decide(&[y], &conn(Some(&s), 8080)).0);
    }

    #[test]
    fn deny_with_an_http_when_key_never_matches() {
        // handleRule: a `when` key outside l4WhenAttributes yields an empty Match in a clause of
        // its own, ANDed with the rest: the rule never matches. source.serviceAccount is not in
        // ztunnel's list.
        for key in ["request.headers[x-user]", "source.serviceAccount"] {
            let y = format!(
                "
metadata: {{name: d, namespace: ambient-demo}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{namespaces: [ambient-demo]}}}}]
    when: [{{key: '{key}', values: [sleep]}}]
"
            );
            let p = convert(&ap(&y), ROOT).unwrap();
            assert_eq!(p.http_attributes, [key]);
            assert_eq!(p.conversion, Conversion::DenyNoEffect);
            let s = sleep();
            assert!(decide(&[&y], &conn(Some(&s), 8080)).0, "{key}");
        }
    }

    #[test]
    fn http_sources_are_unsupported() {
        // httpSources: remoteIpBlocks, requestPrincipals and trustDomains (and their not- forms).
        let y = "
metadata: {name: a, namespace: ambient-demo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ['*'], remoteIpBlocks: [10.0.0.0/8], notTrustDomains: [evil]}}]
  - to: [{operation: {hosts: [a], notPaths: [/b]}}]
";
        let p = convert(&ap(y), ROOT).unwrap();
        assert_eq!(
            p.http_attributes,
            [
                "hosts",
                "notPaths",
                "notTrustDomains",
                "remoteIpBlocks",
                "requestPrincipals"
            ]
        );
        assert_eq!(p.dead_rules().count(), 2);
    }

    #[test]
    fn l4_attributes_are_enforced_as_written() {
        // handleRule: ipBlocks, namespaces, serviceAccounts (a bare name takes the policy's
        // namespace: stringToServiceAccountMatch), principals, ports and the five L4 when keys.
        let y = "
metadata: {name: l4, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {serviceAccounts: [sleep], ipBlocks: [10.244.1.0/24]}}]
    to: [{operation: {ports: ['8080']}}]
    when:
    - {key: destination.port, values: ['8080']}
    - {key: source.ip, notValues: [10.244.1.99]}
    - {key: destination.ip, values: [10.244.2.0/24]}
    - {key: source.namespace, values: [ambient-*]}
    - {key: source.principal, values: ['*/sa/sleep']}
";
        let p = convert(&ap(y), ROOT).unwrap();
        assert_eq!(p.conversion, Conversion::Exact);
        assert_eq!(p.status_message(), None);
        let s = sleep();
        assert!(decide(&[y], &conn(Some(&s), 8080)).0);
        assert!(!decide(&[y], &conn(Some(&s), 9090)).0, "port");
        let mut c = conn(Some(&s), 8080);
        c.source_ip = Some("10.244.1.99".parse().unwrap());
        assert!(!decide(&[y], &c).0, "notValues source.ip");
        c.source_ip = Some("10.9.9.9".parse().unwrap());
        assert!(!decide(&[y], &c).0, "ipBlocks");
        let other_sa = PeerIdentity::new("cluster.local/ns/ambient-demo/sa/curl");
        assert!(
            !decide(&[y], &conn(Some(&other_sa), 8080)).0,
            "serviceAccounts"
        );
        assert!(!decide(&[y], &conn(None, 8080)).0, "no identity");
    }

    #[test]
    fn unparsable_ports_and_addresses_are_skipped() {
        // stringToPort / stringToIP skip values they cannot parse; a match left empty is skipped
        // by ztunnel, so an ALLOW rule naming only a port name never matches.
        let y = "
metadata: {name: named, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - to: [{operation: {ports: [http, '+80', '70000']}}]
  - from: [{source: {ipBlocks: [not-an-ip, 10.244.1.5]}}]
";
        let p = convert(&ap(y), ROOT).unwrap();
        assert_eq!(p.dead_rules().collect::<Vec<_>>(), [0]);
        let s = sleep();
        let (allowed, by, _) = decide(&[y], &conn(Some(&s), 80));
        assert!(allowed);
        assert_eq!(by, Some(("named".into(), 1)));
    }

    #[test]
    fn empty_rule_matches_everything_and_no_rules_match_nothing() {
        // An empty rule converts to a group with no clauses, which ztunnel matches always; an
        // ALLOW without rules has no groups and matches nothing, yet still applies (default
        // deny); a DENY without rules never denies. Order as in ztunnel's assert_rbac.
        let allow_all =
            "metadata: {name: all, namespace: ambient-demo}\nspec: {action: ALLOW, rules: [{}]}\n";
        let deny_all =
            "metadata: {name: none, namespace: ambient-demo}\nspec: {action: DENY, rules: [{}]}\n";
        let allow_nothing = "metadata: {name: nothing, namespace: ambient-demo}\nspec: {}\n";
        let s = sleep();
        let c = conn(Some(&s), 8080);
        assert!(decide(&[allow_all], &c).0);
        assert!(!decide(&[allow_all, deny_all], &c).0, "DENY first");
        let (allowed, _, reason) = decide(&[allow_nothing], &c);
        assert!(!allowed, "{reason}");
        assert!(reason.contains("1 ALLOW policy applies"), "{reason}");
        assert!(decide(&[], &c).0, "no policy: allow");
    }

    #[test]
    fn through_a_waypoint_ztunnel_sees_the_waypoint() {
        // The seeds: "the destination ztunnel will see traffic with the waypoint's identity".
        let y = "
metadata: {name: only-sleep, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}}]
";
        let s = sleep();
        assert!(decide(&[y], &conn(Some(&s), 8080)).0, "direct");
        let waypoint = PeerIdentity::new("cluster.local/ns/ambient-demo/sa/waypoint");
        assert!(
            !decide(&[y], &conn(Some(&waypoint), 8080)).0,
            "via waypoint"
        );
    }

    #[test]
    fn build_binds_each_policy_to_exactly_the_workloads_it_applies_to() {
        // The candidate index (namespace, first selector pair) must find every workload that
        // applies_to accepts, and the same workload given twice is bound once.
        let policies = [
            "metadata: {name: sel, namespace: a}\nspec: {selector: {matchLabels: {app: web, tier: x}}}\n",
            "metadata: {name: root-sel, namespace: istio-system}\nspec: {selector: {matchLabels: {app: web}}}\n",
            "metadata: {name: ns, namespace: b}\nspec: {}\n",
            "metadata: {name: mesh, namespace: istio-system}\nspec: {}\n",
            "metadata: {name: empty-sel, namespace: a}\nspec: {selector: {}}\n",
        ];
        let converted: Vec<ZtunnelPolicy> = policies
            .iter()
            .map(|y| convert(&ap(y), ROOT).unwrap())
            .collect();
        let w = [
            (
                ObjectKey::new("a", "web-x"),
                labels(&[("app", "web"), ("tier", "x")]),
            ),
            (
                ObjectKey::new("a", "web-y"),
                labels(&[("app", "web"), ("tier", "y")]),
            ),
            (
                ObjectKey::new("b", "web-x"),
                labels(&[("app", "web"), ("tier", "x")]),
            ),
            (ObjectKey::new("b", "db"), labels(&[("app", "db")])),
        ];
        let mut given: Vec<Workload<'_>> = w
            .iter()
            .map(|(key, labels)| Workload { key, labels })
            .collect();
        given.push(given[0]);
        let z = ZtunnelAuthorizer::build(converted.clone(), given);
        for (key, l) in &w {
            let mut got: Vec<&str> = z.applicable(key).map(|p| p.key.name.as_str()).collect();
            got.sort_unstable();
            let mut want: Vec<&str> = converted
                .iter()
                .filter(|p| p.applies_to(&key.namespace, l))
                .map(|p| p.key.name.as_str())
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "{key}");
        }
        let names = |k: &ObjectKey| {
            let mut v: Vec<String> = z.applicable(k).map(|p| p.key.name.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&w[0].0), ["empty-sel", "mesh", "root-sel", "sel"]);
        assert_eq!(names(&w[3].0), ["mesh", "ns"]);
        // Four ALLOW policies apply to a/web-x, each counted once although the workload was
        // given twice.
        let v = z.evaluate(&w[0].0, &Connection::default());
        assert_eq!(v.reason, Reason::NoAllowPolicyMatched { allow_policies: 4 });
    }

    #[test]
    fn policies_of_a_store_skip_waypoint_ones() {
        let mut store = Store::default();
        let errs = store.load_str(
            "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: z, namespace: ambient-demo}
spec: {selector: {matchLabels: {app: httpbin}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: w, namespace: ambient-demo}
spec: {targetRefs: [{kind: Service, group: '', name: httpbin}]}
",
            None,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let (key, l) = httpbin();
        let z = ZtunnelAuthorizer::for_workload(
            &store,
            ROOT,
            Workload {
                key: &key,
                labels: &l,
            },
        );
        let names: Vec<&str> = z.applicable(&key).map(|p| p.key.name.as_str()).collect();
        assert_eq!(names, ["z"]);
    }
}
