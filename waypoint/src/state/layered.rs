//! Layered L4 policy at HBONE termination, as istiod's
//! `ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES` (off by default; istio/istio#54718, #54833).
//!
//! No ztunnel captures a waypoint pod (`istio.io/dataplane-mode: none`), so the policies a
//! ztunnel would enforce for it — `selector` policies that select the waypoint's own pod (in its
//! namespace or the root namespace), namespace-wide ones in its namespace and root-namespace
//! ones — are enforced nowhere. With this on, the waypoint enforces them itself on every CONNECT,
//! before anything else, as if a ztunnel stood in front of it: converted to ztunnel's L4 form by
//! [`gateway_api_bindings::ztunnel`] (L4 attributes only; an ALLOW rule with an HTTP attribute
//! never matches, a DENY rule is enforced without it, as istiod converts them for ztunnel), and
//! decided on what ztunnel sees of a connection: the client's identity, its address, and the
//! address the CONNECT asks for.
//!
//! The waypoint's own labels come from its Pod in the store: `$POD_NAME` in the Gateway's
//! namespace (where the waypoint runs). The Kubernetes source watches Pods; a file config may
//! hold the Pod too. Until that Pod is known (no `$POD_NAME`, a file config without it, or
//! before the first sync), the labels are the one every waypoint pod carries, from istiod's
//! deployment controller or our chart: `gateway.networking.k8s.io/gateway-name: <gateway>`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use gateway_api_bindings::ztunnel::{self, Connection, Verdict, Workload, ZtunnelAuthorizer};
use gateway_api_bindings::{ObjectKey, Store, WaypointIdentity};
use policy_engine::PeerIdentity;

/// The label istiod's deployment controller and our chart put on every waypoint pod.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Turns layered L4 policy on (`--layered-authorization-policies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayeredSettings {
    /// This replica's Pod (`$POD_NAME`, in the Gateway's namespace), whose labels `selector`
    /// policies are matched against.
    pub pod_name: Option<String>,
}

impl LayeredSettings {
    /// This replica's Pod, when its name is known.
    pub fn pod(&self, gateway: &ObjectKey) -> Option<ObjectKey> {
        self.pod_name
            .as_ref()
            .map(|n| ObjectKey::new(&gateway.namespace, n))
    }
}

/// Where the labels policies were matched against came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSource {
    /// The Pod object in the store.
    Pod,
    /// The Pod is unknown: the label every waypoint pod carries.
    GatewayDefault,
}

/// The policies a ztunnel in front of this waypoint would enforce, compiled.
#[derive(Debug)]
pub struct Layered {
    workload: ObjectKey,
    labels: BTreeMap<String, String>,
    label_source: LabelSource,
    authorizer: ZtunnelAuthorizer,
    /// No policy applies: every CONNECT passes without an evaluation.
    empty: bool,
}

impl Layered {
    pub fn compile(
        store: &Store,
        waypoint: &WaypointIdentity,
        settings: &LayeredSettings,
    ) -> Layered {
        let gateway = &waypoint.gateway;
        let root = &waypoint.root_namespace;
        let pod = settings.pod(gateway);
        let (workload, labels, label_source) =
            match pod.as_ref().and_then(|k| store.pods.get(k).map(|p| (k, p))) {
                Some((k, p)) => (k.clone(), p.object.labels.clone(), LabelSource::Pod),
                None => (
                    pod.clone().unwrap_or_else(|| gateway.clone()),
                    BTreeMap::from([(GATEWAY_NAME_LABEL.to_owned(), gateway.name.clone())]),
                    LabelSource::GatewayDefault,
                ),
            };
        // Only the waypoint's namespace and the root namespace can hold a policy for it.
        let policies: Vec<_> = store
            .authorization_policies
            .iter()
            .filter(|(k, _)| k.namespace == workload.namespace || &k.namespace == root)
            .filter_map(|(_, ap)| ztunnel::convert(&ap.object, root).ok())
            .filter(|p| p.applies_to(&workload.namespace, &labels))
            .collect();
        let empty = policies.is_empty();
        let authorizer = ZtunnelAuthorizer::build(
            policies,
            [Workload {
                key: &workload,
                labels: &labels,
            }],
        );
        Layered {
            workload,
            labels,
            label_source,
            authorizer,
            empty,
        }
    }

    /// Decides a CONNECT from `peer` (client address `source`) for `target`; `None` when no
    /// policy applies.
    pub fn evaluate(
        &self,
        peer: Option<&PeerIdentity>,
        source: IpAddr,
        target: SocketAddr,
    ) -> Option<Verdict<'_>> {
        if self.empty {
            return None;
        }
        let conn = Connection {
            peer,
            source_ip: Some(source),
            destination_ip: Some(target.ip()),
            destination_port: Some(target.port()),
        };
        Some(self.authorizer.evaluate(&self.workload, &conn))
    }

    /// For `/config_dump`: which workload, which labels, which policies and how converted.
    pub fn dump(&self) -> serde_json::Value {
        let policies: Vec<_> = self
            .authorizer
            .applicable(&self.workload)
            .map(|p| {
                serde_json::json!({
                    "policy": p.key.to_string(),
                    "action": p.action.as_str(),
                    "conversion": format!("{:?}", p.conversion),
                    "httpAttributes": p.http_attributes,
                    "neverMatchingRules": p.dead_rules().collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "workload": self.workload.to_string(),
            "labels": self.labels,
            "labelsFrom": match self.label_source {
                LabelSource::Pod => "pod",
                LabelSource::GatewayDefault => "gateway default (pod not found)",
            },
            "policies": policies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: ambient-demo, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-7d9f, namespace: ambient-demo, labels: {gateway.networking.k8s.io/gateway-name: waypoint, tier: edge}}
spec: {serviceAccountName: waypoint, containers: [{name: waypoint}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge-only-sleep, namespace: ambient-demo}
spec:
  selector: {matchLabels: {tier: edge}}
  rules: [{from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-app, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-evil, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [evil]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: other}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: for-the-waypoint-l7, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{}]
";

    fn compile(pod: Option<&str>) -> Layered {
        let mut store = Store::default();
        let errors = store.load_str(CONFIG, None);
        assert!(errors.is_empty(), "{errors:?}");
        let wp = WaypointIdentity::from_store(
            &store,
            ObjectKey::new("ambient-demo", "waypoint"),
            "istio-system",
        );
        Layered::compile(
            &store,
            &wp,
            &LayeredSettings {
                pod_name: pod.map(str::to_owned),
            },
        )
    }

    fn applicable(l: &Layered) -> Vec<String> {
        l.dump()["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["policy"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_policies_a_ztunnel_would_enforce_for_the_waypoint_pod() {
        let l = compile(Some("waypoint-7d9f"));
        assert_eq!(l.label_source, LabelSource::Pod);
        // The selector matching the pod, and the root namespace's: not another app's selector,
        // another namespace's, nor the targetRefs policy (the waypoint's own, at L7).
        assert_eq!(
            applicable(&l),
            [
                "istio-system/mesh-deny-evil",
                "ambient-demo/edge-only-sleep"
            ]
        );
        let target: SocketAddr = "10.96.0.10:8000".parse().unwrap();
        let src: IpAddr = "10.244.1.9".parse().unwrap();
        let sleep = PeerIdentity::new("cluster.local/ns/ambient-demo/sa/sleep");
        let curl = PeerIdentity::new("cluster.local/ns/ambient-demo/sa/curl");
        let evil = PeerIdentity::new("cluster.local/ns/evil/sa/sleep");
        assert!(l.evaluate(Some(&sleep), src, target).unwrap().allowed);
        let v = l.evaluate(Some(&curl), src, target).unwrap();
        assert!(!v.allowed, "{v}");
        let v = l.evaluate(Some(&evil), src, target).unwrap();
        assert_eq!(
            v.policy.map(|p| p.key.name.as_str()),
            Some("mesh-deny-evil")
        );
    }

    #[test]
    fn without_its_pod_the_waypoint_has_the_gateway_label_only() {
        // The pod unknown (a file config without it): `tier: edge` is not known, so the
        // selector does not apply; the namespace-wide and root ones still do.
        let l = compile(Some("not-there"));
        assert_eq!(l.label_source, LabelSource::GatewayDefault);
        assert_eq!(applicable(&l), ["istio-system/mesh-deny-evil"]);
        let l = compile(None);
        assert_eq!(
            l.labels.get(GATEWAY_NAME_LABEL).map(String::as_str),
            Some("waypoint")
        );
    }
}
