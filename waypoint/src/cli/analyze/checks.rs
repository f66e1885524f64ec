//! The checks behind each finding code. Each says which seed scenario it comes from in
//! `docs/advisor.md`; the rules are istiod's and ztunnel's (see `gateway_api_bindings::ztunnel`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use gateway_api_bindings::istio::{
    AuthorizationPolicy, PeerAuthentication, PolicyTargetReference, RequestAuthentication, Rule,
};
use gateway_api_bindings::status::{self, Reason};
use gateway_api_bindings::waypoint::Target;
use gateway_api_bindings::well_known::{DRY_RUN_ANNOTATION, USE_WAYPOINT};
use gateway_api_bindings::ztunnel::{
    self, Connection, Conversion, Scope, Workload, ZtunnelAuthorizer, ZtunnelPolicy,
};
use gateway_api_bindings::{
    LoadError, ObjectKey, Store, WaypointIdentity, authorizer_for, binding, service_target,
};
use kube::ResourceExt;
use policy_engine::{Action, Binding, PeerIdentity, Request};
use serde_json::{Value, json};

use super::{Finding, Options, Severity};
use crate::cli::placement::{
    self, as_applied, coverage, gateway_class_ref, gateway_ref, namespace_using, service_ref,
    to_yaml, waypoint_default_deny, waypoint_form, waypoint_gateway,
};
use crate::cli::topology::{
    ServicePods, enrolled, is_waypoint, principal, service_ports, service_selector, target_port,
    waypoint_of_service, waypoint_of_workload, waypoint_principals,
};

/// The caller the probes use: an in-mesh identity no policy is written for, from a
/// documentation address (RFC 5737).
const PROBE_NAMESPACE: &str = "waypoint-analyze-probe";
const PROBE_IP: &str = "192.0.2.10";

struct Cx<'a> {
    store: &'a Store,
    service_pods: ServicePods<'a>,
    opts: &'a Options,
    /// Every policy istiod sends to ztunnel, converted.
    ztunnel: Vec<ZtunnelPolicy>,
    /// Policies the webhook would refuse: no proxy enforces them.
    invalid: BTreeSet<ObjectKey>,
    /// Per ztunnel policy: the waypoints in front of workloads it applies to, each with the
    /// Services concerned.
    fronted: BTreeMap<ObjectKey, BTreeMap<ObjectKey, Vec<ObjectKey>>>,
    probe: PeerIdentity,
    /// Each AuthorizationPolicy's move to the waypoint, made once (two checks suggest it).
    moves: BTreeMap<ObjectKey, Result<(Vec<Value>, String), String>>,
    /// Each waypoint's principals.
    principals: BTreeMap<ObjectKey, Vec<String>>,
    out: Vec<Finding>,
}

pub(super) fn run(store: &Store, load_errors: &[LoadError], opts: &Options) -> Vec<Finding> {
    let service_pods = ServicePods::new(store);
    let mut cx = Cx {
        store,
        opts,
        ztunnel: ztunnel::policies(store, &opts.root_namespace),
        invalid: store
            .authorization_policies
            .iter()
            .filter(|(_, ap)| {
                !status::authorization_policy(store, &ap.object, &opts.root_namespace)
                    .errors
                    .is_empty()
            })
            .map(|(k, _)| k.clone())
            .collect(),
        fronted: BTreeMap::new(),
        service_pods,
        probe: PeerIdentity::new(&principal(
            &opts.trust_domain,
            PROBE_NAMESPACE,
            "any-caller",
        )),
        moves: BTreeMap::new(),
        principals: BTreeMap::new(),
        out: Vec::new(),
    };
    // The webhook would have refused them: they exist for no proxy (their errors are reported).
    let invalid = cx.invalid.clone();
    cx.ztunnel.retain(|p| !invalid.contains(&p.key));
    cx.fronted = fronted(store, &cx.service_pods, &cx.ztunnel);
    for e in load_errors {
        cx.push(
            "Invalid",
            Severity::Error,
            object_of_load_error(e),
            format!("the object cannot be read: {e}"),
            None,
        );
    }
    for (key, ap) in &store.authorization_policies {
        cx.validate_authorization_policy(key, &ap.object);
        cx.dry_run(key, &ap.object);
    }
    for (key, ra) in &store.request_authentications {
        cx.validate_request_authentication(key, &ra.object);
        cx.request_authentication_not_applied(key, &ra.object);
    }
    let policies = std::mem::take(&mut cx.ztunnel);
    for p in &policies {
        let ap = &store.authorization_policies[&p.key].object;
        cx.ztunnel_l7_attribute(p, ap);
        cx.source_identity_behind_waypoint(p, ap);
        cx.default_deny_bypass(p, ap);
    }
    cx.ztunnel = policies;
    cx.waypoint_bypass_and_plaintext();
    for (key, pa) in &store.peer_authentications {
        cx.peer_authentication_disable(key, &pa.object);
    }
    cx.out
}

fn object(kind: &str, key: &ObjectKey) -> String {
    format!("{kind}/{}/{}", key.namespace, key.name)
}

/// `Kind ns/name` (a load error's naming) as `Kind/ns/name`.
fn object_of_load_error(e: &LoadError) -> String {
    match e.object.split_once(' ') {
        Some((kind, key)) => format!("{kind}/{key}"),
        None => e.object.clone(),
    }
}

fn is_dry_run(ap: &AuthorizationPolicy) -> bool {
    ap.annotations()
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Istio's string match: `*` any non-empty value, `*x` suffix, `x*` prefix, else exact.
fn istio_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(s) = pattern.strip_prefix('*') {
        value.ends_with(s)
    } else if let Some(p) = pattern.strip_suffix('*') {
        value.starts_with(p)
    } else {
        pattern == value
    }
}

fn list(items: &[String]) -> String {
    items.join(", ")
}

/// Where a policy without `targetRefs` reaches, which decides the `targetRefs` that replace it.
enum Reach<'a> {
    Selector(&'a BTreeMap<String, String>),
    Namespace,
    Mesh,
}

impl Cx<'_> {
    fn push(
        &mut self,
        code: &str,
        severity: Severity,
        object: String,
        message: String,
        fix: Option<Vec<Value>>,
    ) {
        self.out.push(Finding {
            code: code.to_owned(),
            severity,
            object,
            message,
            fix: fix.filter(|f| !f.is_empty()).map(|f| to_yaml(&f)),
        });
    }

    fn root(&self) -> &str {
        &self.opts.root_namespace
    }

    /// [`Cx::to_waypoint`] for an AuthorizationPolicy, remembered.
    fn move_policy(
        &mut self,
        p: &ZtunnelPolicy,
        ap: &AuthorizationPolicy,
    ) -> Result<(Vec<Value>, String), String> {
        if let Some(m) = self.moves.get(&p.key) {
            return m.clone();
        }
        let reach = self.reach(
            &p.key.namespace,
            ap.spec.selector.as_ref().map(|s| &s.match_labels),
        );
        let m = self.to_waypoint(&as_applied(ap), &p.key, reach);
        self.moves.insert(p.key.clone(), m.clone());
        m
    }

    /// The waypoint's principals, remembered.
    fn principals_of(&mut self, w: &ObjectKey) -> Vec<String> {
        if let Some(p) = self.principals.get(w) {
            return p.clone();
        }
        let p = waypoint_principals(self.store, w, &self.opts.trust_domain);
        self.principals.insert(w.clone(), p.clone());
        p
    }

    fn reach<'s>(&self, ns: &str, selector: Option<&'s BTreeMap<String, String>>) -> Reach<'s> {
        match selector {
            Some(s) => Reach::Selector(s),
            None if ns == self.root() => Reach::Mesh,
            None => Reach::Namespace,
        }
    }

    /// A waypoint Gateway of namespace `ns`: the one its label names, else any there.
    fn namespace_waypoint(&self, ns: &str) -> Option<ObjectKey> {
        let labels = self
            .store
            .namespaces
            .get(ns)
            .and_then(|n| n.object.metadata.labels.clone())
            .unwrap_or_default();
        waypoint_of_workload(self.store, ns, &labels)
            .filter(|w| w.namespace == ns)
            .or_else(|| {
                self.store
                    .gateways
                    .keys()
                    .filter(|k| k.namespace == ns)
                    .find(|k| is_waypoint(self.store, k))
                    .cloned()
            })
    }

    /// `policy` (as applied, same name) bound to the waypoint(s) serving what it reached at
    /// ztunnel, plus what deploys a waypoint where none serves. `Err` says why no object does.
    fn to_waypoint(
        &self,
        policy: &Value,
        key: &ObjectKey,
        reach: Reach<'_>,
    ) -> Result<(Vec<Value>, String), String> {
        let (name, class) = (&self.opts.waypoint_name, &self.opts.waypoint_class);
        match reach {
            Reach::Selector(_) if key.namespace == self.root() => Err(format!(
                "a selector in the root namespace reaches pods of every namespace and targetRefs never cross \
                 namespaces: write one policy per namespace (`waypoint migrate` does) and delete {key}"
            )),
            Reach::Selector(sel) => {
                let cov = coverage(self.store, &self.service_pods, Some(&key.namespace), sel);
                if cov.services.is_empty() {
                    return Err(format!(
                        "no Service covers the pods it selects{}, so no targetRefs reaches them",
                        uncovered(&cov)
                    ));
                }
                let refs = cov.services.iter().map(|s| service_ref(&s.name)).collect();
                let mut objs = vec![waypoint_form(policy, &key.name, &key.namespace, refs, None)];
                objs.extend(placement::serve_with_waypoint(
                    self.store,
                    &key.namespace,
                    &cov.services,
                    name,
                    class,
                ));
                let names: Vec<String> = cov.services.iter().map(ToString::to_string).collect();
                Ok((
                    objs,
                    format!(
                        " Fix: the same rules bound with targetRefs to Service {}{}.",
                        list(&names),
                        uncovered(&cov)
                    ),
                ))
            }
            Reach::Namespace => {
                let mut objs = Vec::new();
                let gw = match self.namespace_waypoint(&key.namespace) {
                    Some(w) => w.name,
                    None => {
                        objs.push(waypoint_gateway(&key.namespace, name, class));
                        objs.push(namespace_using(self.store, &key.namespace, name));
                        name.clone()
                    }
                };
                objs.insert(
                    0,
                    waypoint_form(
                        policy,
                        &key.name,
                        &key.namespace,
                        vec![gateway_ref(&gw)],
                        None,
                    ),
                );
                Ok((
                    objs,
                    format!(
                        " Fix: the same rules bound to waypoint {}/{gw} (all traffic through it).",
                        key.namespace
                    ),
                ))
            }
            Reach::Mesh => {
                let mut classes: BTreeSet<String> = self
                    .store
                    .gateways
                    .iter()
                    .filter(|(k, _)| is_waypoint(self.store, k))
                    .map(|(_, g)| g.object.spec.gateway_class_name.clone())
                    .collect();
                if classes.is_empty() {
                    classes.insert(class.clone());
                }
                let refs = classes.iter().map(|c| gateway_class_ref(c)).collect();
                let classes: Vec<String> = classes.into_iter().collect();
                Ok((
                    vec![waypoint_form(policy, &key.name, &key.namespace, refs, None)],
                    format!(
                        " Fix: the same rules bound to every waypoint of class {}.",
                        list(&classes)
                    ),
                ))
            }
        }
    }

    // --- Validation: the codes `authz check` reports as status reasons. ---

    fn validate_authorization_policy(&mut self, key: &ObjectKey, ap: &AuthorizationPolicy) {
        let st = status::authorization_policy(self.store, ap, self.root());
        let obj = object("AuthorizationPolicy", key);
        if self.report_errors(&obj, &st) {
            return;
        }
        for r in gateway_api_bindings::attachment::target_refs(ap) {
            let mut single = ap.clone();
            single.spec.target_refs = vec![r.clone()];
            single.spec.target_ref = None;
            let st = status::authorization_policy(self.store, &single, self.root());
            self.check_ref(&obj, key, r, st.condition);
        }
    }

    fn validate_request_authentication(&mut self, key: &ObjectKey, ra: &RequestAuthentication) {
        let st = status::request_authentication(self.store, ra, self.root());
        let obj = object("RequestAuthentication", key);
        if self.report_errors(&obj, &st) {
            return;
        }
        let t = gateway_api_bindings::attachment::Targeting::of_request_authentication(ra);
        for r in t.refs() {
            let mut single = ra.clone();
            single.spec.target_refs = vec![r.clone()];
            single.spec.target_ref = None;
            let st = status::request_authentication(self.store, &single, self.root());
            self.check_ref(&obj, key, r, st.condition);
        }
    }

    /// The webhook's errors, as `authz check` prints them; whether there were any.
    fn report_errors(&mut self, obj: &str, st: &status::PolicyStatus) -> bool {
        for e in &st.errors {
            self.push(
                Reason::Invalid.as_str(),
                Severity::Error,
                obj.to_owned(),
                format!("{}: {}", e.field, e.message),
                None,
            );
        }
        !st.errors.is_empty()
    }

    /// One `targetRefs` entry: `PolicyTargetNotEnforced` when it binds to no waypoint that
    /// exists, the status reason otherwise.
    fn check_ref(
        &mut self,
        obj: &str,
        policy: &ObjectKey,
        r: &PolicyTargetReference,
        condition: Option<status::Condition>,
    ) {
        let Some(c) = condition else { return };
        let key = ObjectKey::new(&policy.namespace, r.name.clone());
        let (name, class) = (&self.opts.waypoint_name, &self.opts.waypoint_class);
        match (c.reason, r.kind.as_str()) {
            (Reason::Accepted, _) => {
                let waypoint =
                    match r.kind.as_str() {
                        "Gateway" => Some(key.clone()),
                        "Service" => self.store.services.get(&key).and_then(|s| {
                            waypoint_of_service(self.store, Target::Service(&s.object))
                        }),
                        "ServiceEntry" => self.store.service_entries.get(&key).and_then(|s| {
                            waypoint_of_service(self.store, Target::ServiceEntry(&s.object))
                        }),
                        _ => None,
                    };
                if let Some(w) = waypoint.filter(|w| self.opts.live && !self.has_addresses(w)) {
                    self.push(
                        "PolicyTargetNotEnforced",
                        Severity::Error,
                        obj.to_owned(),
                        format!(
                            "targetRefs {} {}: its waypoint Gateway {w} has no status.addresses, so istiod does not treat \
                             it as a waypoint and no traffic reaches it: check that its controller runs and a pod of it is Ready",
                            r.kind, r.name
                        ),
                        None,
                    );
                }
            }
            (Reason::AncestorNotBound, kind) => {
                let mut fix = Vec::new();
                let gw = match self.namespace_waypoint(&key.namespace) {
                    Some(w) => w.name,
                    None => {
                        fix.push(waypoint_gateway(&key.namespace, name, class));
                        name.clone()
                    }
                };
                let target = match kind {
                    "Service" => self.store.services.get(&key).map(|s| as_applied(&s.object)),
                    "ServiceEntry" => self
                        .store
                        .service_entries
                        .get(&key)
                        .map(|s| as_applied(&s.object)),
                    _ => None,
                };
                if let Some(mut v) = target {
                    v["metadata"]["labels"][USE_WAYPOINT] = json!(gw);
                    fix.insert(0, v);
                }
                self.push(
                    "PolicyTargetNotEnforced",
                    Severity::Error,
                    obj.to_owned(),
                    format!(
                        "targetRefs {kind} {}: no waypoint serves it (no istio.io/use-waypoint on it or its namespace), \
                         so no proxy enforces this policy. Fix: label it istio.io/use-waypoint: {gw}.",
                        r.name
                    ),
                    Some(fix),
                );
            }
            (Reason::TargetNotFound, "Gateway") => {
                let exists = self.store.gateways.contains_key(&key);
                let fix =
                    (!exists).then(|| vec![waypoint_gateway(&key.namespace, &key.name, class)]);
                let msg = if exists {
                    format!(
                        "targetRefs Gateway {}: {}; a policy bound to a Gateway that is not a waypoint is enforced nowhere",
                        r.name, c.message
                    )
                } else {
                    format!(
                        "targetRefs Gateway {}: {}, so this policy is enforced nowhere. Fix: deploy the waypoint it names.",
                        r.name, c.message
                    )
                };
                self.push(
                    "PolicyTargetNotEnforced",
                    Severity::Error,
                    obj.to_owned(),
                    msg,
                    fix,
                );
            }
            (reason, kind) => self.push(
                reason.as_str(),
                Severity::Error,
                obj.to_owned(),
                format!(
                    "targetRefs {kind} {}: {}",
                    r.name,
                    if c.message.is_empty() {
                        reason.as_str()
                    } else {
                        &c.message
                    }
                ),
                None,
            ),
        }
    }

    fn has_addresses(&self, gateway: &ObjectKey) -> bool {
        self.store.gateways.get(gateway).is_some_and(|g| {
            g.object
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .is_some_and(|a| !a.is_empty())
        })
    }

    // --- DryRunOnly ---

    fn dry_run(&mut self, key: &ObjectKey, ap: &AuthorizationPolicy) {
        if !is_dry_run(ap) {
            return;
        }
        let mut fixed = as_applied(ap);
        if let Some(Value::Object(a)) = fixed["metadata"].get_mut("annotations") {
            a.remove(DRY_RUN_ANNOTATION);
            if a.is_empty() {
                fixed["metadata"]
                    .as_object_mut()
                    .map(|m| m.remove("annotations"));
            }
        }
        let where_ = if gateway_api_bindings::attachment::target_refs(ap).is_empty() {
            "at ztunnel istiod does not even send it (unless AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY is set)"
        } else {
            "the waypoint evaluates it in shadow and logs what it would decide"
        };
        self.push(
            "DryRunOnly",
            Severity::Info,
            object("AuthorizationPolicy", key),
            format!(
                "istio.io/dry-run: \"true\": the policy enforces nothing ({where_}). Fix, once its dry-run \
                 decisions look right: the same policy without the annotation."
            ),
            Some(vec![fixed]),
        );
    }

    // --- ZtunnelL7Attribute ---

    fn ztunnel_l7_attribute(&mut self, p: &ZtunnelPolicy, ap: &AuthorizationPolicy) {
        if p.conversion == Conversion::Exact {
            return;
        }
        let effect = match p.conversion {
            Conversion::AllowRulesOmitted => {
                let dead: Vec<String> = p.dead_rules().map(|r| r.to_string()).collect();
                format!(
                    "it fails safe: rule {} never matches, and as an ALLOW policy still applies, the callers it \
                     names are refused too",
                    list(&dead)
                )
            }
            Conversion::DenyWithoutHttpRules => {
                "it fails safe: the DENY is enforced without them, so it denies more than written"
                    .into()
            }
            Conversion::DenyNoEffect => {
                "without them no rule can match: the DENY does nothing at ztunnel".into()
            }
            Conversion::Exact => return,
        };
        let (fix, tail) = match self.move_policy(p, ap) {
            Ok((objs, tail)) => (Some(objs), tail),
            Err(why) => (None, format!(" No fix: {why}.")),
        };
        self.push(
            "ZtunnelL7Attribute",
            Severity::Error,
            object("AuthorizationPolicy", &p.key),
            format!(
                "enforced by ztunnel ({}), which cannot evaluate {}: {effect}.{tail}",
                scope_text(p),
                list(&p.http_attributes)
            ),
            fix,
        );
    }

    // --- SourceIdentityBehindWaypoint ---

    /// The waypoints in front of workloads `p` applies to, with the Services concerned.
    fn waypoints_in_front(&self, p: &ZtunnelPolicy) -> BTreeMap<ObjectKey, Vec<ObjectKey>> {
        self.fronted.get(&p.key).cloned().unwrap_or_default()
    }

    fn source_identity_behind_waypoint(&mut self, p: &ZtunnelPolicy, ap: &AuthorizationPolicy) {
        let fronts = self.waypoints_in_front(p);
        if fronts.is_empty() {
            return;
        }
        let waypoints: Vec<(ObjectKey, Vec<String>)> = fronts
            .keys()
            .map(|w| (w.clone(), self.principals_of(w)))
            .collect();
        let foreign =
            foreign_identities(ap, &p.key.namespace, &waypoints, &self.opts.trusted_sources);
        if foreign.is_empty() {
            return;
        }
        let services: Vec<String> = fronts.values().flatten().map(ToString::to_string).collect();
        let seen: Vec<String> = waypoints
            .iter()
            .flat_map(|(_, ps)| ps.iter().cloned())
            .collect();
        let consequence = match p.action {
            Action::Deny => "those callers are not denied when they come through the waypoint",
            _ => "those callers are refused when they come through the waypoint",
        };
        let (fix, tail) = match self.move_policy(p, ap) {
            Ok((objs, tail)) => (Some(objs), tail),
            Err(why) => (None, format!(" No fix: {why}.")),
        };
        self.push(
            "SourceIdentityBehindWaypoint",
            Severity::Warning,
            object("AuthorizationPolicy", &p.key),
            format!(
                "enforced by ztunnel ({}) for Service {} whose traffic comes through a waypoint: ztunnel sees \
                 the waypoint's identity ({}), not the caller's, so {} never match waypoint traffic and {consequence}.{tail}",
                scope_text(p),
                list(&services),
                list(&seen),
                list(&foreign)
            ),
            fix,
        );
    }

    // --- DefaultDenyBypass ---

    fn default_deny_bypass(&mut self, p: &ZtunnelPolicy, ap: &AuthorizationPolicy) {
        if !is_l4_default_deny(p, ap) {
            return;
        }
        let waypoints: BTreeSet<ObjectKey> = match p.scope {
            Scope::Global => self
                .store
                .gateways
                .keys()
                .filter(|k| is_waypoint(self.store, k))
                .cloned()
                .collect(),
            Scope::Namespace => {
                let ns = &p.key.namespace;
                let mut w: BTreeSet<ObjectKey> = self
                    .store
                    .services
                    .iter()
                    .filter(|(k, _)| &k.namespace == ns)
                    .filter_map(|(_, s)| {
                        waypoint_of_service(self.store, Target::Service(&s.object))
                    })
                    .collect();
                w.extend(self.namespace_waypoint(ns));
                w
            }
            Scope::WorkloadSelector => return,
        };
        let open: Vec<ObjectKey> = waypoints
            .into_iter()
            .filter(|w| self.waypoint_admits_probe(w))
            .collect();
        if open.is_empty() {
            return;
        }
        let fix = match p.scope {
            Scope::Global => {
                let classes: BTreeSet<String> = open
                    .iter()
                    .filter_map(|w| self.store.gateways.get(w))
                    .map(|g| g.object.spec.gateway_class_name.clone())
                    .collect();
                let refs = classes.iter().map(|c| gateway_class_ref(c)).collect();
                vec![waypoint_default_deny(
                    self.root(),
                    &format!("{}-waypoints", p.key.name),
                    refs,
                )]
            }
            _ => open
                .iter()
                .map(|w| {
                    waypoint_default_deny(
                        &w.namespace,
                        &format!("{}-{}", p.key.name, w.name),
                        vec![gateway_ref(&w.name)],
                    )
                })
                .collect(),
        };
        let names: Vec<String> = open.iter().map(ToString::to_string).collect();
        self.push(
            "DefaultDenyBypass",
            Severity::Error,
            object("AuthorizationPolicy", &p.key),
            format!(
                "a default deny at L4 ({}), but waypoint {} has none: a caller the L4 default denies reaches the \
                 workloads through the waypoint, which ztunnel sees as the caller. Fix: deny by default at the \
                 waypoints too (an ALLOW without rules bound to them).",
                scope_text(p),
                list(&names)
            ),
            Some(fix),
        );
    }

    /// Whether the waypoint lets the probe's TCP connection through on its own policies (those
    /// bound to it as a whole: a Service's policy does not cover other traffic).
    fn waypoint_admits_probe(&self, w: &ObjectKey) -> bool {
        let wid = WaypointIdentity::from_store(self.store, w.clone(), self.root());
        let auth = authorizer_for(self.store, &wid);
        let req = Request {
            peer: Some(&self.probe),
            source_ip: PROBE_IP.parse().ok(),
            remote_ip: None,
            destination_ip: None,
            destination_port: None,
            sni: None,
            http: None,
            jwt: None,
        };
        auth.evaluate(&req, None).allowed
    }

    // --- RequestAuthenticationNotApplied ---

    fn request_authentication_not_applied(&mut self, key: &ObjectKey, ra: &RequestAuthentication) {
        let t = gateway_api_bindings::attachment::Targeting::of_request_authentication(ra);
        if !t.refs().is_empty() {
            return;
        }
        let selector = ra.spec.selector.as_ref().map(|s| &s.match_labels);
        let reach = self.reach(&key.namespace, selector);
        let how = match &reach {
            Reach::Selector(_) => "a selector",
            Reach::Namespace | Reach::Mesh => "neither selector nor targetRefs",
        };
        let (fix, tail) = match self.to_waypoint(&as_applied(ra), key, reach) {
            Ok((objs, tail)) => (Some(objs), tail),
            Err(why) => (None, format!(" No fix: {why}.")),
        };
        self.push(
            "RequestAuthenticationNotApplied",
            Severity::Error,
            object("RequestAuthentication", key),
            format!(
                "{how} binds nothing in ambient: ztunnel does not read JWTs and waypoints take only targetRefs, so \
                 tokens are not validated and requestPrincipals policies see no principal.{tail}"
            ),
            fix,
        );
    }

    // --- WaypointBypass, PermissivePlaintext ---

    /// Services served by a waypoint that enforces a policy for them.
    fn guarded_services(&self) -> Vec<(ObjectKey, ObjectKey, Vec<String>)> {
        // Per waypoint (there are few): the enforced policies bound to all its traffic, and
        // those bound to each target.
        type Bound = (Vec<String>, BTreeMap<String, Vec<String>>);
        let mut by_waypoint: BTreeMap<ObjectKey, Bound> = BTreeMap::new();
        let mut out = Vec::new();
        for (skey, svc) in &self.store.services {
            let Some(w) = waypoint_of_service(self.store, Target::Service(&svc.object)) else {
                continue;
            };
            let (whole, targets) = by_waypoint.entry(w.clone()).or_insert_with(|| {
                let wid = WaypointIdentity::from_store(self.store, w.clone(), self.root());
                let mut bound: Bound = Default::default();
                for (k, ap) in &self.store.authorization_policies {
                    if is_dry_run(&ap.object) || self.invalid.contains(k) {
                        continue;
                    }
                    match binding(&ap.object, &k.namespace, &wid) {
                        Some(Binding::Waypoint) => bound.0.push(k.to_string()),
                        Some(Binding::Targets(t)) => {
                            for t in t {
                                bound.1.entry(t).or_default().push(k.to_string());
                            }
                        }
                        None => {}
                    }
                }
                bound
            });
            let mut policies = whole.clone();
            policies.extend(
                targets
                    .get(&service_target(skey))
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            if !policies.is_empty() {
                policies.sort();
                out.push((skey.clone(), w, policies));
            }
        }
        out
    }

    fn waypoint_bypass_and_plaintext(&mut self) {
        let guarded = self.guarded_services();
        // One ztunnel authorizer for every pod concerned (or a stand-in with the Service's
        // selector when the config lists none), compiled once.
        let mut workloads: BTreeMap<ObjectKey, BTreeMap<String, String>> = BTreeMap::new();
        for (skey, _, _) in &guarded {
            let pods = self.service_pods.of(skey);
            if pods.is_empty() {
                if let Some(sel) = service_selector(&self.store.services[skey].object) {
                    workloads.insert(stand_in(skey), sel.clone());
                }
            } else {
                workloads.extend(pods.iter().map(|p| (p.key.clone(), p.labels.clone())));
            }
        }
        let z = ZtunnelAuthorizer::build(
            self.ztunnel.clone(),
            workloads
                .iter()
                .map(|(key, labels)| Workload { key, labels }),
        );
        for (skey, w, policies) in guarded {
            let svc = &self.store.services[&skey].object;
            let Some(sel) = service_selector(svc).cloned() else {
                continue;
            };
            self.waypoint_bypass(&z, &skey, &w, &policies, &sel);
            self.permissive_plaintext(&skey, &w, &sel);
        }
    }

    fn waypoint_bypass(
        &mut self,
        z: &ZtunnelAuthorizer,
        skey: &ObjectKey,
        w: &ObjectKey,
        policies: &[String],
        sel: &BTreeMap<String, String>,
    ) {
        let svc = &self.store.services[skey].object;
        let pods = self.service_pods.of(skey);
        let keys: Vec<ObjectKey> = if pods.is_empty() {
            vec![stand_in(skey)]
        } else {
            pods.iter().map(|p| p.key.clone()).collect()
        };
        let mut ports = service_ports(svc);
        if ports.is_empty() {
            ports.push(0);
        }
        let mut open = None;
        let mut unenrolled = None;
        'probe: for key in &keys {
            let pod = pods.iter().find(|p| &p.key == key).copied();
            if !enrolled(self.store, pod) {
                unenrolled = Some(key.clone());
                break;
            }
            for &port in &ports {
                let conn = Connection {
                    peer: Some(&self.probe),
                    source_ip: PROBE_IP.parse::<IpAddr>().ok(),
                    destination_ip: pod.and_then(|p| p.ips.first().copied()),
                    destination_port: (port != 0).then(|| target_port(svc, port, pod)),
                };
                let v = z.evaluate(key, &conn);
                if v.allowed {
                    open = Some((key.clone(), conn.destination_port, v.to_string()));
                    break 'probe;
                }
            }
        }
        let mut principals = self.principals_of(w);
        principals.extend(self.opts.trusted_sources.iter().cloned());
        if let Some(pod) = unenrolled {
            self.push(
                "WaypointBypass",
                Severity::Error,
                object("Service", skey),
                format!(
                    "waypoint {w} enforces {} for it, but pod {pod} is not in the ambient mesh: no ztunnel stands in \
                     front of it, so anything sent to the pod directly skips the waypoint. Enrol it \
                     (istio.io/dataplane-mode: ambient).",
                    list(policies)
                ),
                None,
            );
            return;
        }
        let Some((pod, port, verdict)) = open else {
            return;
        };
        let port = port.map_or_else(String::new, |p| format!(" port {p}"));
        let guard = placement::only_from_waypoint(
            &skey.namespace,
            &format!("{}-only-from-waypoint", skey.name),
            Some(sel),
            &principals,
        );
        self.push(
            "WaypointBypass",
            Severity::Error,
            object("Service", skey),
            format!(
                "waypoint {w} enforces {} for it, but the ztunnel of its pods accepts in-mesh traffic from anyone \
                 ({} to {pod}{port}: {verdict}): a client that sends to a pod directly skips the waypoint. Fix: an L4 \
                 policy admitting only the waypoint{}.",
                list(policies),
                self.probe.uri(),
                if self.opts.trusted_sources.is_empty() {
                    " (add trusted sources with --trusted-source)".to_owned()
                } else {
                    format!(" and {}", list(&self.opts.trusted_sources))
                }
            ),
            Some(vec![guard]),
        );
    }

    fn permissive_plaintext(
        &mut self,
        skey: &ObjectKey,
        w: &ObjectKey,
        sel: &BTreeMap<String, String>,
    ) {
        let pods = self.service_pods.of(skey);
        let label_sets: Vec<&BTreeMap<String, String>> = if pods.is_empty() {
            vec![sel]
        } else {
            pods.iter().map(|p| &p.labels).collect()
        };
        let Some((why, existing)) = label_sets
            .iter()
            .find_map(|l| self.permissive(&skey.namespace, l))
        else {
            return;
        };
        let fix = match existing {
            Some(key) => {
                let mut v = as_applied(&self.store.peer_authentications[&key].object);
                v["spec"]["mtls"] = json!({"mode": "STRICT"});
                if let Some(s) = v["spec"].as_object_mut() {
                    s.remove("portLevelMtls");
                }
                v
            }
            None => json!({
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": format!("{}-strict", skey.name), "namespace": skey.namespace},
                "spec": {"selector": {"matchLabels": sel}, "mtls": {"mode": "STRICT"}},
            }),
        };
        self.push(
            "PermissivePlaintext",
            Severity::Info,
            object("Service", skey),
            format!(
                "waypoint {w} enforces policy for it, but its pods accept plaintext ({why}): a client outside the \
                 mesh reaches them directly, past the waypoint. Fix: STRICT mTLS for its pods."
            ),
            Some(vec![fix]),
        );
    }

    /// Why a workload with `labels` in `ns` accepts plaintext, and the workload-level
    /// PeerAuthentication that decides it (if any), as istiod resolves the effective mode
    /// (`convertedSelectorPeerAuthentications`: mesh, then namespace, then workload; DISABLE
    /// counts as PERMISSIVE in ambient; port-level exceptions keep plaintext on those ports).
    fn permissive(
        &self,
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<(String, Option<ObjectKey>)> {
        let mode = |pa: &PeerAuthentication| {
            pa.spec
                .mtls
                .as_ref()
                .map(|m| m.mode.as_str())
                .filter(|m| !m.is_empty() && *m != "UNSET")
                .map(str::to_owned)
        };
        let root = self.root();
        let pas = &self.store.peer_authentications;
        let no_selector = |pa: &PeerAuthentication| {
            pa.spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
        };
        // Istio picks the oldest when several apply; files carry no creation time, so the first by name.
        let mesh = pas
            .iter()
            .find(|(k, p)| k.namespace == root && no_selector(&p.object));
        let nsp = pas
            .iter()
            .find(|(k, p)| k.namespace == ns && ns != root && no_selector(&p.object));
        let wl = pas.iter().find(|(k, p)| {
            k.namespace == ns
                && ns != root
                && !no_selector(&p.object)
                && p.object
                    .spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| crate::cli::topology::selects(&s.match_labels, labels))
        });
        let mut effective = (
            "PERMISSIVE".to_owned(),
            "no PeerAuthentication: ambient's default is PERMISSIVE".to_owned(),
        );
        for (k, p) in [mesh, nsp, wl].into_iter().flatten() {
            if let Some(m) = mode(&p.object) {
                effective = (m.clone(), format!("PeerAuthentication {k} sets {m}"));
            }
        }
        if let Some((k, p)) = wl
            && effective.0 == "STRICT"
            && let Some((port, m)) = p
                .object
                .spec
                .port_level_mtls
                .iter()
                .find(|(_, m)| m.mode == "PERMISSIVE" || m.mode == "DISABLE")
        {
            return Some((
                format!("PeerAuthentication {k} sets {} on port {port}", m.mode),
                Some(k.clone()),
            ));
        }
        (effective.0 != "STRICT").then(|| (effective.1, wl.map(|(k, _)| k.clone())))
    }

    // --- PeerAuthenticationDisableIgnored ---

    fn peer_authentication_disable(&mut self, key: &ObjectKey, pa: &PeerAuthentication) {
        let top = pa.spec.mtls.as_ref().is_some_and(|m| m.mode == "DISABLE");
        let ports: Vec<String> = pa
            .spec
            .port_level_mtls
            .iter()
            .filter(|(_, m)| m.mode == "DISABLE")
            .map(|(p, _)| p.clone())
            .collect();
        if !top && ports.is_empty() {
            return;
        }
        let mut fixed = as_applied(pa);
        if top {
            fixed["spec"]["mtls"]["mode"] = json!("PERMISSIVE");
        }
        for p in &ports {
            fixed["spec"]["portLevelMtls"][p]["mode"] = json!("PERMISSIVE");
        }
        let what = if top {
            "mtls.mode DISABLE".to_owned()
        } else {
            format!("DISABLE on port {}", list(&ports))
        };
        self.push(
            "PeerAuthenticationDisableIgnored",
            Severity::Warning,
            object("PeerAuthentication", key),
            format!(
                "{what} is ignored in ambient: traffic between ztunnels is always mTLS, and istiod treats DISABLE \
                 as PERMISSIVE (plaintext from outside the mesh is accepted, mTLS is not turned off). Fix: say \
                 what is enforced: PERMISSIVE."
            ),
            Some(vec![fixed]),
        );
    }
}

/// For every ztunnel policy, the waypoints in front of the workloads it applies to (pods of
/// Services that use a waypoint, or the Service's selector when the config lists no pod), with
/// the Services concerned: one compiled pass instead of every policy against every Service.
fn fronted(
    store: &Store,
    service_pods: &ServicePods<'_>,
    policies: &[ZtunnelPolicy],
) -> BTreeMap<ObjectKey, BTreeMap<ObjectKey, Vec<ObjectKey>>> {
    // (workload key, labels) per Service behind a waypoint; keys are made unique per Service.
    let mut workloads: Vec<(ObjectKey, &BTreeMap<String, String>, usize)> = Vec::new();
    let mut services: Vec<(ObjectKey, ObjectKey)> = Vec::new();
    for (skey, sel, pods) in service_pods.services(None) {
        let Some(w) = store
            .services
            .get(skey)
            .and_then(|s| waypoint_of_service(store, Target::Service(&s.object)))
        else {
            continue;
        };
        let n = services.len();
        let label_sets: Vec<&BTreeMap<String, String>> = if pods.is_empty() {
            vec![sel]
        } else {
            pods.iter().map(|p| &p.labels).collect()
        };
        for (i, labels) in label_sets.into_iter().enumerate() {
            let key = ObjectKey::new(&skey.namespace, format!("{}#{i}", skey.name));
            workloads.push((key, labels, n));
        }
        services.push((skey.clone(), w));
    }
    let z = ZtunnelAuthorizer::build(
        policies.to_vec(),
        workloads
            .iter()
            .map(|(key, labels, _)| Workload { key, labels }),
    );
    let mut out: BTreeMap<ObjectKey, BTreeMap<ObjectKey, Vec<ObjectKey>>> = BTreeMap::new();
    for (key, _, n) in &workloads {
        let (svc, w) = &services[*n];
        for p in z.applicable(key) {
            let list = out
                .entry(p.key.clone())
                .or_default()
                .entry(w.clone())
                .or_default();
            if list.last() != Some(svc) {
                list.push(svc.clone());
            }
        }
    }
    out
}

/// The workload standing in for a Service's pods when the config lists none.
fn stand_in(service: &ObjectKey) -> ObjectKey {
    ObjectKey::new(&service.namespace, format!("{}-pods", service.name))
}

/// Where a converted policy applies, for messages.
fn scope_text(p: &ZtunnelPolicy) -> String {
    match p.scope {
        Scope::Global => "mesh-wide: no selector in the root namespace".to_owned(),
        Scope::Namespace => format!(
            "namespace-wide in {}: no selector, no targetRefs",
            p.key.namespace
        ),
        Scope::WorkloadSelector => {
            let pairs: Vec<String> = p.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("selector {{{}}}", pairs.join(","))
        }
    }
}

fn uncovered(cov: &placement::Coverage) -> String {
    let mut parts = Vec::new();
    for (s, why) in &cov.partial {
        parts.push(format!("Service {s} only in part ({why})"));
    }
    if !cov.orphans.is_empty() {
        let pods: Vec<String> = cov.orphans.iter().map(ToString::to_string).collect();
        parts.push(format!("pod {} behind no Service", list(&pods)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("; not covered: {}", parts.join("; "))
    }
}

/// An L4 default deny: an ALLOW without rules, or a DENY with an empty rule, without selector.
fn is_l4_default_deny(p: &ZtunnelPolicy, ap: &AuthorizationPolicy) -> bool {
    if p.scope == Scope::WorkloadSelector {
        return false;
    }
    match p.action {
        Action::Allow => ap.spec.rules.as_ref().is_none_or(Vec::is_empty),
        Action::Deny => ap
            .spec
            .rules
            .iter()
            .flatten()
            .any(|r| *r == Rule::default()),
        _ => false,
    }
}

/// The source identities `ap` names (as `field: value`) that none of the waypoints' identities
/// and no trusted source satisfies.
fn foreign_identities(
    ap: &AuthorizationPolicy,
    policy_ns: &str,
    waypoints: &[(ObjectKey, Vec<String>)],
    trusted: &[String],
) -> Vec<String> {
    let principals: Vec<&String> = waypoints.iter().flat_map(|(_, p)| p).collect();
    let ok_principal = |v: &str| {
        principals.iter().any(|p| istio_match(v, p)) || trusted.iter().any(|t| istio_match(v, t))
    };
    let ns_of = |p: &str| {
        p.split("/ns/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .map(str::to_owned)
    };
    let ok_namespace = |v: &str| {
        principals
            .iter()
            .chain(trusted.iter().collect::<Vec<_>>().iter())
            .filter_map(|p| ns_of(p))
            .any(|n| istio_match(v, &n))
    };
    let ok_sa = |v: &str| {
        let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
        principals
            .iter()
            .chain(trusted.iter().collect::<Vec<_>>().iter())
            .any(|p| p.ends_with(&format!("/ns/{ns}/sa/{sa}")))
    };
    let mut out = BTreeSet::new();
    let mut check = |field: &str, values: &[String], ok: &dyn Fn(&str) -> bool| {
        for v in values {
            if !ok(v) {
                out.insert(format!("{field} {v}"));
            }
        }
    };
    for rule in ap.spec.rules.iter().flatten() {
        for f in rule.from.iter().flatten() {
            let Some(s) = &f.source else { continue };
            check("principals", &s.principals, &ok_principal);
            check("notPrincipals", &s.not_principals, &ok_principal);
            check("namespaces", &s.namespaces, &ok_namespace);
            check("notNamespaces", &s.not_namespaces, &ok_namespace);
            check("serviceAccounts", &s.service_accounts, &ok_sa);
            check("notServiceAccounts", &s.not_service_accounts, &ok_sa);
        }
        for c in &rule.when {
            let ok: &dyn Fn(&str) -> bool = match c.key.as_str() {
                "source.principal" => &ok_principal,
                "source.namespace" => &ok_namespace,
                _ => continue,
            };
            check(&c.key, &c.values, ok);
            check(&c.key, &c.not_values, ok);
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_string_matching() {
        assert!(istio_match("*", "x"));
        assert!(!istio_match("*", ""));
        assert!(istio_match(
            "*/sa/waypoint",
            "cluster.local/ns/a/sa/waypoint"
        ));
        assert!(istio_match(
            "cluster.local/ns/a/*",
            "cluster.local/ns/a/sa/b"
        ));
        assert!(!istio_match(
            "cluster.local/ns/a/sa/b",
            "cluster.local/ns/a/sa/c"
        ));
    }
}
