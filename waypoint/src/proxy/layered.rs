//! Layered L4 policy at HBONE termination ([`crate::state::layered`]): when it is on, the first
//! check a CONNECT meets, before its destination is even looked up, so a refused peer learns
//! nothing about what the waypoint serves.

use http::StatusCode;

use crate::hbone::server::Tunnel;
use crate::metrics::{Metrics, PolicyDecision};
use crate::state::Snapshot;

/// Hands the tunnel back when it may go on; otherwise refuses the CONNECT with `401`, as ztunnel
/// answers a CONNECT its policies deny (the client's ztunnel then closes its client's
/// connection), counts it and logs the deciding policy.
pub(crate) fn admit(tunnel: Tunnel, snapshot: &Snapshot, metrics: &Metrics) -> Option<Tunnel> {
    let Some(layered) = &snapshot.layered else {
        return Some(tunnel);
    };
    // The client's address as the waypoint knows it everywhere (`forwarded: for=`, which is the
    // client pod's, as the outer connection's source is under ambient's in-pod redirection).
    let source = tunnel.client_ip.unwrap_or(tunnel.conn.peer_addr.ip());
    let peer = tunnel.conn.peer.as_ref();
    let Some(verdict) = layered.evaluate(peer, source, tunnel.target) else {
        return Some(tunnel);
    };
    let (policy_namespace, policy_name, action) = verdict.policy.map_or_else(
        || (String::new(), String::new(), ""),
        |p| {
            (
                p.key.namespace.clone(),
                p.key.name.clone(),
                p.action.as_str(),
            )
        },
    );
    metrics.layered_decisions.inc(PolicyDecision {
        policy_namespace,
        policy_name,
        action,
        decision: if verdict.allowed { "allow" } else { "deny" },
        code: (!verdict.allowed).then_some(401),
    });
    if verdict.allowed {
        return Some(tunnel);
    }
    metrics.tunnels_rejected.inc();
    tracing::info!(
        peer = ?peer.map(|p| p.uri()),
        client = %source,
        target = %tunnel.target,
        policy = ?verdict.policy.map(|p| p.key.to_string()),
        rule = ?verdict.rule,
        reason = %verdict,
        "CONNECT refused by layered L4 policy"
    );
    tunnel.reject(StatusCode::UNAUTHORIZED);
    None
}
