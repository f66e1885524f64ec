//! Label set of the policy decision counter, counted by `proxy::policy`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// `waypoint_policy_decisions_total{policy_namespace, policy_name, action, decision, code}`.
/// Bounded: the policies of the config, four actions, two decisions, two codes; never a path or
/// a principal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyDecision {
    /// The deciding policy; both empty when no policy decided (the default).
    pub policy_namespace: String,
    pub policy_name: String,
    /// `ALLOW`, `DENY`, `AUDIT` or `CUSTOM` as the engine reports it; empty for the default.
    pub action: &'static str,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The status the decision gives an HTTP request (`200` forwarded, `403` denied); empty for
    /// a TCP connection.
    pub code: Option<u16>,
}

/// Decisions counted per [`PolicyDecision`].
#[derive(Debug, Clone, Default)]
pub struct PolicyDecisions(pub(super) Family<PolicyDecision, Counter>);

impl PolicyDecisions {
    pub fn inc(&self, labels: PolicyDecision) {
        self.0.get_or_create(&labels).inc();
    }

    /// The count for `labels`.
    pub fn get(&self, labels: &PolicyDecision) -> u64 {
        self.0.get(labels).map_or(0, |c| c.get())
    }
}
