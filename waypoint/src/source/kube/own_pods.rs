//! Which of the Gateway's own pods are Ready, for its `status.addresses`
//! ([`super::gateway_status`]).
//!
//! Read from the one pod watch the store already has ([`super::watch`]): each pod passes through
//! [`OwnPodsTracker`] before it is cut down to the few fields the store keeps, so readiness needs
//! no second watch. A pod is the Gateway's when it is in the Gateway's namespace and labelled
//! `gateway.networking.k8s.io/gateway-name: <gateway>`.

use std::collections::BTreeMap;

use gateway_api_bindings::ObjectKey;
use gateway_api_bindings::well_known::GATEWAY_NAME;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::sync::watch;

/// The Gateway's pods as the pod watch last saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnPods {
    /// The first list is in: until then "no pod is Ready" is not known, only not yet seen.
    pub listed: bool,
    /// Names of the pods whose `Ready` condition is `True` (and that are not being deleted).
    pub ready: std::collections::BTreeSet<String>,
}

/// Follows the pod watch's events and publishes [`OwnPods`] when readiness changes.
#[derive(Debug)]
pub struct OwnPodsTracker {
    gateway: ObjectKey,
    tx: watch::Sender<OwnPods>,
    /// Readiness of each of the Gateway's pods, by name.
    pods: BTreeMap<String, bool>,
    /// A (re)list in progress.
    listing: BTreeMap<String, bool>,
    /// Kept here, not read back from `tx`: a borrow held across `send_if_modified` deadlocks.
    listed: bool,
}

impl OwnPodsTracker {
    pub fn new(gateway: ObjectKey) -> (OwnPodsTracker, watch::Receiver<OwnPods>) {
        let (tx, rx) = watch::channel(OwnPods::default());
        let t = OwnPodsTracker {
            gateway,
            tx,
            pods: BTreeMap::new(),
            listing: BTreeMap::new(),
            listed: false,
        };
        (t, rx)
    }

    fn ours(&self, p: &Pod) -> bool {
        p.namespace().as_deref() == Some(self.gateway.namespace.as_str())
            && p.labels().get(GATEWAY_NAME) == Some(&self.gateway.name)
    }

    /// A relist starts.
    pub fn init(&mut self) {
        self.listing.clear();
    }

    /// A pod of the relist.
    pub fn init_apply(&mut self, p: &Pod) {
        if self.ours(p) {
            self.listing.insert(p.name_any(), is_ready(p));
        }
    }

    /// The relist is complete: it replaces what was known.
    pub fn init_done(&mut self) {
        self.pods = std::mem::take(&mut self.listing);
        self.listed = true;
        self.publish();
    }

    pub fn apply(&mut self, p: &Pod) {
        // A pod relabelled away from the Gateway stops counting.
        if self.ours(p) {
            self.pods.insert(p.name_any(), is_ready(p));
        } else if p.namespace().as_deref() == Some(self.gateway.namespace.as_str()) {
            self.pods.remove(&p.name_any());
        }
        self.publish();
    }

    pub fn delete(&mut self, p: &Pod) {
        if p.namespace().as_deref() == Some(self.gateway.namespace.as_str()) {
            self.pods.remove(&p.name_any());
            self.publish();
        }
    }

    fn publish(&self) {
        let next = OwnPods {
            listed: self.listed,
            ready: self
                .pods
                .iter()
                .filter(|(_, r)| **r)
                .map(|(n, _)| n.clone())
                .collect(),
        };
        // Only a change wakes the status writer: most pod updates do not touch readiness.
        self.tx.send_if_modified(|cur| {
            let changed = *cur != next;
            *cur = next;
            changed
        });
    }
}

/// Ready as the kubelet reports it, and not on its way out.
fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, gateway: Option<&str>, ready: bool) -> Pod {
        let labels = gateway
            .map(|g| format!("labels: {{{GATEWAY_NAME}: {g}}}, "))
            .unwrap_or_default();
        let status = if ready { "True" } else { "False" };
        serde_yaml::from_str(&format!(
            "metadata: {{{labels}name: {name}, namespace: {ns}}}\nstatus: {{conditions: [{{type: Ready, status: \"{status}\"}}]}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn only_the_gateways_ready_pods_count_and_only_changes_wake() {
        let (mut t, mut rx) = OwnPodsTracker::new(ObjectKey::new("demo", "waypoint"));
        t.init();
        t.init_apply(&pod("demo", "waypoint-1", Some("waypoint"), false));
        t.init_apply(&pod("demo", "other-gw-1", Some("other"), true));
        t.init_apply(&pod("elsewhere", "waypoint-2", Some("waypoint"), true));
        t.init_apply(&pod("demo", "app-1", None, true));
        assert!(!rx.borrow().listed);
        t.init_done();
        assert!(rx.has_changed().unwrap());
        let seen = rx.borrow_and_update().clone();
        assert!(seen.listed && seen.ready.is_empty(), "{seen:?}");
        // An unrelated pod changes nothing the writer reads: no wake-up.
        t.apply(&pod("demo", "app-1", None, false));
        assert!(!rx.has_changed().unwrap());
        t.apply(&pod("demo", "waypoint-1", Some("waypoint"), true));
        assert_eq!(
            rx.borrow_and_update().ready.iter().collect::<Vec<_>>(),
            ["waypoint-1"]
        );
        // Relabelled away from the Gateway, then deleted.
        t.apply(&pod("demo", "waypoint-1", None, true));
        assert!(rx.borrow_and_update().ready.is_empty());
        t.apply(&pod("demo", "waypoint-1", Some("waypoint"), true));
        t.delete(&pod("demo", "waypoint-1", Some("waypoint"), true));
        assert!(rx.borrow_and_update().ready.is_empty());
    }
}
