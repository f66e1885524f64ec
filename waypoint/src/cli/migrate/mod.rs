//! `waypoint migrate`: sidecar-mode policies rewritten for waypoints.
//!
//! In sidecar mode a policy selects workloads; in ambient the same object is enforced by ztunnel
//! (L4 only, fail-safe on HTTP attributes, seeing the waypoint's identity once one is in the
//! path), and only `targetRefs` reach a waypoint. The plan:
//!
//! * a namespace needs a waypoint when a policy there cannot be enforced at L4: HTTP attributes,
//!   AUDIT/CUSTOM actions, a RequestAuthentication (a root-namespace selector counts for the
//!   namespaces of the Services it covers);
//! * in those namespaces every selector and namespace-wide policy moves: a new
//!   `<original>-waypoint` with the same rules and `targetRefs` to the Services whose pods the
//!   selector covers (to the namespace's waypoint for a namespace-wide one), annotated with its
//!   origin; pods covered only in part, or behind no Service, are reported;
//! * mesh-wide policies (root namespace, no selector) with HTTP attributes, and mesh-wide
//!   RequestAuthentications, move to every waypoint class; an L4 default deny stays at ztunnel
//!   and gets a companion default deny at the waypoints;
//! * each namespace gets its waypoint Gateway (unless it has one) and the namespace label, and
//!   each of its Services an "only from my waypoint" ztunnel policy;
//! * policies that work at L4 in namespaces without a waypoint stay where they are.
//!
//! Originals are never changed; the report (stderr) lists those the bundle replaces, to delete
//! once the bundle is reviewed and applied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use gateway_api_bindings::istio::{AuthorizationPolicy, RequestAuthentication};
use gateway_api_bindings::ztunnel::{self, Conversion};
use gateway_api_bindings::{ObjectKey, Store, attachment};
use serde_json::Value;

use super::analyze::Options;
use super::placement::{
    MIGRATED_FROM, as_applied, coverage, gateway_class_ref, gateway_ref, namespace_using,
    only_from_waypoint, service_ref, to_yaml, waypoint_default_deny, waypoint_form,
    waypoint_gateway,
};
use super::topology::{
    ServicePods, is_waypoint, service_selector, waypoint_of_workload, waypoint_principals,
};

/// The annotation on a companion object: made because of the named object, which stays.
pub(crate) const DERIVED_FROM: &str = "rust-waypoint.io/derived-from";

/// The bundle and what to tell the operator about it.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Namespace -> objects, in the order to apply them.
    pub(crate) objects: BTreeMap<String, Vec<Value>>,
    pub(crate) report: Vec<String>,
    /// Originals the bundle replaces (`Kind/ns/name`).
    pub(crate) replaced: Vec<String>,
}

impl Plan {
    fn add(&mut self, namespace: &str, object: Value) {
        self.objects
            .entry(namespace.to_owned())
            .or_default()
            .push(object);
    }
}

/// A policy without targetRefs: what moves.
struct Candidate<'a> {
    kind: &'static str,
    key: &'a ObjectKey,
    applied: Value,
    selector: Option<&'a BTreeMap<String, String>>,
    /// It cannot be enforced at L4 (why).
    l7: Option<String>,
    /// An ALLOW without rules or a DENY with an empty rule, without selector.
    default_deny: bool,
}

fn candidates<'s>(store: &'s Store, root: &str) -> Vec<Candidate<'s>> {
    let mut out = Vec::new();
    for (key, ap) in &store.authorization_policies {
        let ap: &AuthorizationPolicy = &ap.object;
        if !attachment::target_refs(ap).is_empty() {
            continue;
        }
        let l7 = match ztunnel::convert(ap, root) {
            Ok(p) if p.conversion != Conversion::Exact => Some(format!(
                "uses {}, which ztunnel cannot evaluate",
                p.http_attributes.join(", ")
            )),
            Err(ztunnel::Skipped::UnsupportedAction(a)) => {
                Some(format!("action {a} has no ztunnel form"))
            }
            _ => None,
        };
        let action = ap.spec.action.as_deref().unwrap_or("ALLOW");
        let rules = ap.spec.rules.as_deref();
        let default_deny = ap.spec.selector.is_none()
            && match action {
                "" | "ALLOW" => rules.is_none_or(<[_]>::is_empty),
                "DENY" => rules.is_some_and(|r| r.iter().any(|r| *r == Default::default())),
                _ => false,
            };
        out.push(Candidate {
            kind: "AuthorizationPolicy",
            key,
            applied: as_applied(ap),
            selector: ap.spec.selector.as_ref().map(|s| &s.match_labels),
            l7,
            default_deny,
        });
    }
    for (key, ra) in &store.request_authentications {
        let ra: &RequestAuthentication = &ra.object;
        let t = attachment::Targeting::of_request_authentication(ra);
        if !t.refs().is_empty() {
            continue;
        }
        out.push(Candidate {
            kind: "RequestAuthentication",
            key,
            applied: as_applied(ra),
            selector: ra.spec.selector.as_ref().map(|s| &s.match_labels),
            l7: Some("JWT validation needs a waypoint".into()),
            default_deny: false,
        });
    }
    out
}

/// The plan for `store`.
pub(crate) fn plan(store: &Store, opts: &Options) -> Plan {
    let root = opts.root_namespace.as_str();
    let mut plan = Plan::default();
    let cands = candidates(store, root);
    let pods = ServicePods::new(store);

    // Which namespaces need a waypoint, and why.
    let mut needs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &cands {
        let Some(why) = &c.l7 else { continue };
        let what = format!("{} {} {why}", c.kind, c.key);
        match (c.key.namespace == root, c.selector) {
            (false, _) => needs.entry(c.key.namespace.clone()).or_default().push(what),
            (true, Some(sel)) => {
                for s in coverage(store, &pods, None, sel).services {
                    needs
                        .entry(s.namespace.clone())
                        .or_default()
                        .push(what.clone());
                }
            }
            (true, None) => {}
        }
    }

    // The waypoint of each such namespace: its own, or a new one.
    let mut waypoints: BTreeMap<String, ObjectKey> = BTreeMap::new();
    for (ns, why) in &needs {
        let existing = namespace_waypoint(store, ns);
        let w = match existing {
            Some(w) => {
                plan.report.push(format!(
                    "namespace {ns} needs a waypoint ({}); it has {w}",
                    why.join("; ")
                ));
                w
            }
            None => {
                let w = ObjectKey::new(ns, opts.waypoint_name.clone());
                plan.report.push(format!(
                    "namespace {ns} needs a waypoint ({}): deploy Gateway {w} (class {})",
                    why.join("; "),
                    opts.waypoint_class
                ));
                plan.add(ns, waypoint_gateway(ns, &w.name, &opts.waypoint_class));
                w
            }
        };
        let labelled = store
            .namespaces
            .get(ns)
            .and_then(|n| n.object.metadata.labels.as_ref())
            .and_then(|l| l.get(gateway_api_bindings::well_known::USE_WAYPOINT))
            .is_some_and(|v| *v == w.name);
        if !labelled {
            plan.add(ns, namespace_using(store, ns, &w.name));
        }
        waypoints.insert(ns.clone(), w);
    }

    let classes: BTreeSet<String> = store
        .gateways
        .iter()
        .filter(|(k, _)| is_waypoint(store, k))
        .map(|(_, g)| g.object.spec.gateway_class_name.clone())
        .chain(
            (waypoints.values().any(|w| !store.gateways.contains_key(w)))
                .then(|| opts.waypoint_class.clone()),
        )
        .collect();

    for c in &cands {
        migrate_one(store, &pods, opts, c, &waypoints, &classes, &mut plan);
    }

    // The guard: each Service of a waypoint namespace admits only its waypoint at ztunnel.
    for (ns, w) in &waypoints {
        let mut principals = waypoint_principals(store, w, &opts.trust_domain);
        principals.extend(opts.trusted_sources.iter().cloned());
        for (skey, svc) in store.services.iter().filter(|(k, _)| &k.namespace == ns) {
            let Some(sel) = service_selector(&svc.object) else {
                continue;
            };
            if gateway_api_bindings::destinations::is_gateway(svc.object.metadata.labels.as_ref()) {
                continue;
            }
            let name = format!("{}-only-from-waypoint", skey.name);
            plan.add(ns, only_from_waypoint(ns, &name, Some(sel), &principals));
            plan.report.push(format!(
                "guard: AuthorizationPolicy {ns}/{name}: the ztunnel of Service {skey}'s pods admits only {}",
                principals.join(", ")
            ));
        }
    }
    plan
}

fn namespace_waypoint(store: &Store, ns: &str) -> Option<ObjectKey> {
    let labels = store
        .namespaces
        .get(ns)
        .and_then(|n| n.object.metadata.labels.clone())
        .unwrap_or_default();
    waypoint_of_workload(store, ns, &labels)
        .filter(|w| w.namespace == ns)
        .or_else(|| {
            store
                .gateways
                .keys()
                .filter(|k| k.namespace == ns)
                .find(|k| is_waypoint(store, k))
                .cloned()
        })
}

fn migrate_one(
    store: &Store,
    pods: &ServicePods<'_>,
    opts: &Options,
    c: &Candidate<'_>,
    waypoints: &BTreeMap<String, ObjectKey>,
    classes: &BTreeSet<String>,
    plan: &mut Plan,
) {
    let root = opts.root_namespace.as_str();
    let origin = format!("{}/{}/{}", c.kind, c.key.namespace, c.key.name);
    let new_name = format!("{}-waypoint", c.key.name);
    let with = |plan: &mut Plan, ns: &str, refs: Vec<Value>, what: String, replaces: bool| {
        let mut v = waypoint_form(&c.applied, &new_name, ns, refs, None);
        let annotation = if replaces {
            MIGRATED_FROM
        } else {
            DERIVED_FROM
        };
        v["metadata"]["annotations"][annotation] = Value::String(origin.clone());
        plan.add(ns, v);
        plan.report.push(format!(
            "rewritten: {origin} -> {} {ns}/{new_name} ({what})",
            c.kind
        ));
    };
    match (c.key.namespace == root, c.selector) {
        (false, Some(sel)) => {
            if !waypoints.contains_key(&c.key.namespace) {
                plan.report.push(format!(
                    "kept at ztunnel: {origin}: L4 only, and no waypoint is needed in {}",
                    c.key.namespace
                ));
                return;
            }
            let cov = coverage(store, pods, Some(&c.key.namespace), sel);
            if cov.services.is_empty() {
                let gaps = gaps(&cov).join("; ");
                plan.report.push(match &c.l7 {
                    Some(why) => format!(
                        "cannot migrate: {origin}: it {why}, and no Service covers all the pods it selects ({gaps}): \
                         rewrite it by hand"
                    ),
                    None => format!(
                        "kept at ztunnel: {origin}: no Service covers all the pods it selects ({gaps}); it is L4, so \
                         ztunnel keeps enforcing it (a caller coming through the waypoint shows the waypoint's identity)"
                    ),
                });
                return;
            }
            report_gaps(plan, &origin, &cov);
            let names: Vec<String> = cov.services.iter().map(|s| s.name.clone()).collect();
            let refs = names.iter().map(|n| service_ref(n)).collect();
            with(
                plan,
                &c.key.namespace,
                refs,
                format!("targetRefs Service {}", names.join(", ")),
                true,
            );
            plan.replaced.push(origin);
        }
        (false, None) => {
            let Some(w) = waypoints.get(&c.key.namespace) else {
                plan.report.push(format!(
                    "kept at ztunnel: {origin}: L4 only, and no waypoint is needed in {}",
                    c.key.namespace
                ));
                return;
            };
            with(
                plan,
                &c.key.namespace,
                vec![gateway_ref(&w.name)],
                format!("targetRefs Gateway {}: every request through it", w.name),
                true,
            );
            plan.replaced.push(origin);
        }
        (true, Some(sel)) => {
            let cov = coverage(store, pods, None, sel);
            report_gaps(plan, &origin, &cov);
            let mut by_ns: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            let mut elsewhere = Vec::new();
            for s in &cov.services {
                if waypoints.contains_key(&s.namespace) {
                    by_ns.entry(&s.namespace).or_default().push(&s.name);
                } else {
                    elsewhere.push(s.to_string());
                }
            }
            let whole = elsewhere.is_empty() && c.l7.is_some();
            for (ns, names) in &by_ns {
                let refs = names.iter().map(|n| service_ref(n)).collect();
                with(
                    plan,
                    ns,
                    refs,
                    format!("targetRefs Service {}", names.join(", ")),
                    whole,
                );
            }
            if whole && !by_ns.is_empty() {
                plan.replaced.push(origin);
            } else if !elsewhere.is_empty() {
                plan.report.push(format!(
                    "kept at ztunnel: {origin}: it also covers {}, where no waypoint is needed",
                    elsewhere.join(", ")
                ));
            }
        }
        (true, None) => {
            let refs: Vec<Value> = classes.iter().map(|k| gateway_class_ref(k)).collect();
            let list: Vec<&str> = classes.iter().map(String::as_str).collect();
            if c.l7.is_some() {
                if refs.is_empty() {
                    plan.report.push(format!(
                        "cannot migrate: {origin}: mesh-wide, and no waypoint exists or is planned to enforce it"
                    ));
                    return;
                }
                with(
                    plan,
                    root,
                    refs,
                    format!("targetRefs GatewayClass {}", list.join(", ")),
                    true,
                );
                plan.replaced.push(origin.clone());
                plan.report.push(format!(
                    "note: {origin} was mesh-wide; at waypoints it reaches only Services that use one"
                ));
            } else if c.default_deny && !refs.is_empty() {
                let mut v = waypoint_default_deny(root, &format!("{}-waypoints", c.key.name), refs);
                v["metadata"]["annotations"][DERIVED_FROM] = Value::String(origin.clone());
                plan.add(root, v);
                plan.report.push(format!(
                    "kept at ztunnel: {origin} (L4 default deny); companion {root}/{}-waypoints denies by default at \
                     every waypoint of class {}",
                    c.key.name,
                    list.join(", ")
                ));
            }
        }
    }
}

/// What a selector covers that no `targetRefs` can reach exactly.
fn gaps(cov: &super::placement::Coverage) -> Vec<String> {
    let mut out: Vec<String> = cov
        .partial
        .iter()
        .map(|(s, why)| format!("Service {s} is covered only in part: {why}"))
        .collect();
    out.extend(
        cov.orphans
            .iter()
            .map(|p| format!("pod {p} is behind no Service, so no targetRefs reaches it")),
    );
    out
}

fn report_gaps(plan: &mut Plan, origin: &str, cov: &super::placement::Coverage) {
    for g in gaps(cov) {
        plan.report
            .push(format!("cannot migrate exactly: {origin}: {g}"));
    }
}

pub(crate) fn run(config: &Path, out: Option<&Path>, opts: &Options) -> anyhow::Result<ExitCode> {
    let (store, errors) = super::authz::load(config)?;
    if !errors.is_empty() {
        eprintln!("waypoint migrate: the config has unreadable objects (above); fix them first");
        return Ok(ExitCode::FAILURE);
    }
    let plan = plan(&store, opts);
    for line in &plan.report {
        eprintln!("{line}");
    }
    if !plan.replaced.is_empty() {
        eprintln!(
            "delete after review (the bundle replaces them): {}",
            plan.replaced.join(", ")
        );
    }
    if plan.objects.is_empty() {
        eprintln!("nothing to migrate");
        return Ok(ExitCode::SUCCESS);
    }
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (ns, objects) in &plan.objects {
                let path = dir.join(format!("{ns}.yaml"));
                std::fs::write(&path, to_yaml(objects))
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
        None => {
            use std::io::Write as _;
            let all: Vec<Value> = plan.objects.into_values().flatten().collect();
            write!(std::io::stdout().lock(), "{}", to_yaml(&all))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
            trusted_sources: Vec::new(),
            live: false,
            waypoint_name: "waypoint".into(),
            waypoint_class: "rust-waypoint".into(),
        }
    }

    #[test]
    fn a_waypoint_service_keeps_the_waypoint_it_has() {
        let mut store = Store::default();
        let errs = store.load_str(
            "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
",
            None,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let plan = plan(&store, &opts());
        let kinds: Vec<(&str, &str)> = plan.objects["shop"]
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("AuthorizationPolicy", "get-waypoint"),
                ("AuthorizationPolicy", "web-only-from-waypoint")
            ],
            "no new Gateway, no relabelled namespace"
        );
        let guard = &plan.objects["shop"][1];
        assert_eq!(
            guard["spec"]["rules"][0]["from"][0]["source"]["principals"][0],
            "cluster.local/ns/shop/sa/wp"
        );
        assert_eq!(plan.replaced, ["AuthorizationPolicy/shop/get"]);
    }
}
