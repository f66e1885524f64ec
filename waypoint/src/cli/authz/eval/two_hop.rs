//! The second hop of `authz eval`: the destination's ztunnel deciding the same request with
//! its own (L4, ztunnel-enforced) policies, as [`gateway_api_bindings::ztunnel`] converts and
//! evaluates them, from what it sees: the waypoint's identity and address when the request went
//! through the waypoint, the caller's when it did not; the pod's address and target port.

use gateway_api_bindings::ObjectKey;
use gateway_api_bindings::Store;
use gateway_api_bindings::pod::PodInfo;
use gateway_api_bindings::ztunnel::{Connection, Workload, ZtunnelAuthorizer, ZtunnelPolicy};
use policy_engine::PeerIdentity;
use serde::Serialize;

use super::{EvalRequest, Via};
use crate::cli::topology::{
    enrolled, service_pods, service_selector, target_port, waypoint_ip, waypoint_principals,
};

/// What ztunnel decides; `decision` is `allow`, `deny` or `unknown` (no destination workload
/// could be told from the request).
#[derive(Debug, Serialize)]
pub(super) struct ZtunnelAnswer {
    pub(super) decision: &'static str,
    pub(super) policy: Option<String>,
    pub(super) rule: Option<usize>,
    pub(super) reason: String,
}

/// A destination workload: a pod of the config, or, for a Service whose pods the config does
/// not list, a stand-in carrying the Service's selector (every pod it selects has those labels).
struct Target<'s> {
    key: ObjectKey,
    labels: std::collections::BTreeMap<String, String>,
    pod: Option<&'s PodInfo>,
}

fn targets<'s>(store: &'s Store, req: &EvalRequest) -> Result<Vec<Target<'s>>, String> {
    let pod = |p: &'s PodInfo| Target {
        key: p.key.clone(),
        labels: p.labels.clone(),
        pod: Some(p),
    };
    let d = &req.destination;
    if let Some(w) = &d.workload {
        let key = ObjectKey::new(&w.namespace, &w.name);
        return Ok(vec![match store.pods.get(&key) {
            Some(p) => pod(&p.object),
            None => Target {
                key,
                labels: Default::default(),
                pod: None,
            },
        }]);
    }
    if let Some(p) =
        d.ip.and_then(|ip| store.pods_by_ip.get(&ip))
            .and_then(|k| store.pods.get(k))
    {
        return Ok(vec![pod(&p.object)]);
    }
    let Some(s) = &d.service else {
        return Err("no destination workload: give destination.service, destination.workload or a pod's destination.ip".into());
    };
    let key = ObjectKey::new(&s.namespace, &s.name);
    let Some(svc) = store.services.get(&key) else {
        return Err(format!(
            "{key} is not a Service of the config (ServiceEntry endpoints are not simulated)"
        ));
    };
    let pods = service_pods(store, &key);
    if !pods.is_empty() {
        return Ok(pods.into_iter().map(pod).collect());
    }
    let Some(sel) = service_selector(&svc.object) else {
        return Err(format!(
            "Service {key} has no selector: its endpoints are unknown"
        ));
    };
    Ok(vec![Target {
        key: ObjectKey::new(&key.namespace, format!("{}-pods", key.name)),
        labels: sel.clone(),
        pod: None,
    }])
}

/// The trust domain of a principal (`cluster.local/ns/..`), else `cluster.local`.
fn trust_domain(principal: Option<&str>) -> &str {
    principal
        .map(|p| p.strip_prefix("spiffe://").unwrap_or(p))
        .and_then(|p| p.split_once('/'))
        .map_or("cluster.local", |(td, _)| td)
}

pub(super) fn answer(
    store: &Store,
    policies: &[ZtunnelPolicy],
    req: &EvalRequest,
) -> ZtunnelAnswer {
    let unknown = |reason: String| ZtunnelAnswer {
        decision: "unknown",
        policy: None,
        rule: None,
        reason,
    };
    let targets = match targets(store, req) {
        Ok(t) => t,
        Err(why) => return unknown(why),
    };
    let waypoint = ObjectKey::new(&req.waypoint.namespace, &req.waypoint.name);
    let (peer, source_ip, seen) = match req.via {
        Via::Waypoint => {
            let td = trust_domain(req.source.principal.as_deref());
            let id = waypoint_principals(store, &waypoint, td)
                .into_iter()
                .next()
                .unwrap_or_default();
            let seen = format!("the waypoint {waypoint} ({id})");
            (
                Some(PeerIdentity::new(&id)),
                waypoint_ip(store, &waypoint),
                seen,
            )
        }
        Via::Direct => {
            let peer = req.source.principal.as_deref().map(PeerIdentity::new);
            let seen = match &req.source.principal {
                Some(p) => format!("the caller {p}"),
                None => "an unauthenticated caller".to_owned(),
            };
            (peer, req.source.ip, seen)
        }
    };
    let svc = req
        .destination
        .service
        .as_ref()
        .and_then(|s| store.services.get(&ObjectKey::new(&s.namespace, &s.name)));
    let z = ZtunnelAuthorizer::build(
        policies.to_vec(),
        targets.iter().map(|t| Workload {
            key: &t.key,
            labels: &t.labels,
        }),
    );
    let mut first = None;
    for t in &targets {
        if !enrolled(store, t.pod) {
            let a = ZtunnelAnswer {
                decision: "allow",
                policy: None,
                rule: None,
                reason: format!(
                    "pod {} is not in the ambient mesh: no ztunnel enforces policy for it",
                    t.key
                ),
            };
            first.get_or_insert(a);
            continue;
        }
        let port = req.destination.port.map(|p| match svc {
            Some(s) => target_port(&s.object, p, t.pod),
            None => p,
        });
        let conn = Connection {
            peer: peer.as_ref(),
            source_ip,
            destination_ip: t.pod.and_then(|p| p.ips.first().copied()).or(req
                .destination
                .ip
                .filter(|_| req.destination.service.is_none())),
            destination_port: port,
        };
        let v = z.evaluate(&t.key, &conn);
        let of = if targets.len() > 1 {
            format!(" (pod {} of {})", t.key, targets.len())
        } else if t.pod.is_some() {
            format!(" (pod {})", t.key)
        } else {
            let l: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(" (the Service's pods, labels {})", l.join(","))
        };
        let a = ZtunnelAnswer {
            decision: if v.allowed { "allow" } else { "deny" },
            policy: v.policy.map(|p| p.key.to_string()),
            rule: v.rule,
            reason: format!(
                "{v}; ztunnel sees {seen}{}{of}",
                port.map_or_else(String::new, |p| format!(", port {p}"))
            ),
        };
        if !v.allowed {
            return a;
        }
        first.get_or_insert(a);
    }
    first.unwrap_or_else(|| unknown("no destination workload".into()))
}
