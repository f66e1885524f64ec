//! What the waypoint keeps of a Pod. A cluster has far more pods than anything else the
//! waypoint reads, and a typed `Pod` costs kilobytes even when mostly empty, so pods are reduced
//! to these few fields on arrival (from a file or a watch).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use crate::key::ObjectKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub key: ObjectKey,
    /// `metadata.uid`: an EndpointSlice's `targetRef` names a pod by namespace, name and uid.
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName`, empty when unset (Kubernetes then uses `default`).
    pub service_account: String,
    /// `status.podIPs` (or `status.podIP`); empty for a pod that has finished, whose IP may
    /// already belong to another pod.
    pub ips: Vec<IpAddr>,
    /// Named container ports, for Services whose `targetPort` is a name.
    pub named_ports: Vec<(String, u16)>,
    /// The `Ready` condition is `True`: a waypoint publishes its Gateway's address only once one
    /// of its own pods is ready to take traffic.
    pub ready: bool,
    /// `status.conditions` lists anything at all. A pod the API server reports always has some
    /// once scheduled; a pod written in a config file usually has none.
    pub conditions_reported: bool,
    /// `metadata.deletionTimestamp` is set: shutting down.
    pub terminating: bool,
}

impl PodInfo {
    /// The service account Kubernetes runs the pod as.
    pub fn service_account(&self) -> &str {
        if self.service_account.is_empty() {
            "default"
        } else {
            &self.service_account
        }
    }

    /// Whether traffic may be sent to it, as istiod marks a pod workload healthy: Ready and not
    /// terminating. A pod whose status reports no condition at all (a config file) counts as
    /// Ready, since nothing says otherwise.
    pub fn serves(&self) -> bool {
        !self.terminating && (self.ready || !self.conditions_reported)
    }

    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
    }
}

impl From<Pod> for PodInfo {
    fn from(pod: Pod) -> PodInfo {
        let meta = pod.metadata;
        let key = ObjectKey::new(
            meta.namespace.unwrap_or_else(|| "default".into()),
            meta.name.unwrap_or_default(),
        );
        let (service_account, named_ports) = pod.spec.map_or_else(Default::default, |s| {
            let ports = s
                .containers
                .into_iter()
                .flat_map(|c| c.ports.unwrap_or_default())
                .filter_map(|p| Some((p.name?, u16::try_from(p.container_port).ok()?)))
                .collect();
            (s.service_account_name.unwrap_or_default(), ports)
        });
        let ready = pod.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        let conditions_reported = pod
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.as_ref().is_some_and(|c| !c.is_empty()));
        let ips = pod
            .status
            .filter(|s| !matches!(s.phase.as_deref(), Some("Succeeded" | "Failed")))
            .map(|s| {
                let mut ips: Vec<IpAddr> = s
                    .pod_ips
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.ip.parse().ok())
                    .collect();
                if ips.is_empty()
                    && let Some(ip) = s.pod_ip.and_then(|ip| ip.parse().ok())
                {
                    ips.push(ip);
                }
                ips
            })
            .unwrap_or_default();
        PodInfo {
            key,
            uid: meta.uid.unwrap_or_default(),
            terminating: meta.deletion_timestamp.is_some(),
            conditions_reported,
            labels: meta.labels.unwrap_or_default(),
            service_account,
            ips,
            named_ports,
            ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> PodInfo {
        PodInfo::from(serde_yaml::from_str::<Pod>(yaml).unwrap())
    }

    #[test]
    fn keeps_what_the_waypoint_reads() {
        let p = pod(r#"
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web
  containers:
  - {name: a, image: x, ports: [{name: http, containerPort: 8080}, {containerPort: 9090}]}
status:
  phase: Running
  podIP: 10.0.0.1
  podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
  conditions: [{type: Initialized, status: "True"}, {type: Ready, status: "True"}]
"#);
        assert_eq!(p.key, ObjectKey::new("shop", "web-1"));
        assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(p.service_account(), "web");
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.named_port("http"), Some(8080));
        assert_eq!(p.named_port("metrics"), None);
        assert!(p.ready);
        assert!(p.serves());
    }

    #[test]
    fn defaults_and_finished_pods() {
        let p = pod("metadata: {name: job}\nstatus: {phase: Succeeded, podIP: 10.0.0.2}\n");
        assert_eq!(p.key, ObjectKey::new("default", "job"));
        assert_eq!(p.service_account(), "default");
        assert!(
            p.ips.is_empty(),
            "a finished pod's IP may belong to another pod"
        );
        assert!(!p.ready, "no Ready condition");
        assert!(p.serves(), "nothing reported: a config file's pod");
        let p = pod("metadata: {name: old, namespace: a}\nstatus: {podIP: 10.0.0.3}\n");
        assert_eq!(p.ips, vec!["10.0.0.3".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn only_ready_pods_that_are_not_shutting_down_serve() {
        let p = pod(
            "metadata: {name: a, uid: u-1}\nstatus: {podIP: 10.0.0.4, conditions: [{type: PodScheduled, status: 'True'}, {type: Ready, status: 'False'}]}\n",
        );
        assert_eq!(p.uid, "u-1");
        assert!(!p.serves(), "reported not Ready");
        let p = pod(
            "metadata: {name: a, deletionTimestamp: '2026-01-01T00:00:00Z'}\nstatus: {podIP: 10.0.0.4, conditions: [{type: Ready, status: 'True'}]}\n",
        );
        assert!(!p.serves(), "terminating");
    }
}
