//! THE authorization decision, for an HTTP request ([`super::http`]), an opaque TCP connection
//! ([`super::tcp`]) and `waypoint authz eval` alike: one place builds the engine's request from
//! what the tunnel, the destination and (for HTTP) the request view and the validated token say,
//! asks the policy engine, and logs and counts the outcome with the policy and rule that decided.
//! The evaluator calling the same function is what keeps it from drifting from the proxy.

use std::fmt;
use std::net::IpAddr;

use policy_engine::{Authorizer, Decision, JwtClaims, PeerIdentity, Request};

use super::request::RequestView;
use super::tunnel::TunnelCtx;
use crate::metrics::{Metrics, PolicyDecision};

/// The connection-level facts policy reads: peer identity and addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection<'a> {
    /// The client workload's SPIFFE ID.
    pub peer: Option<&'a PeerIdentity>,
    /// The original client address (`source.ip`, `ipBlocks`).
    pub source_ip: Option<IpAddr>,
    /// `remote.ip`, `remoteIpBlocks`; the engine falls back to `source_ip` when absent.
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: Option<u16>,
    pub sni: Option<&'a str>,
}

impl<'a> Connection<'a> {
    /// What a tunnel says. The waypoint trusts no proxy hop in front of the client's ztunnel,
    /// so `remote.ip` is the forwarded client address, as Envoy's with no trusted hops; the
    /// inner stream is plaintext, so there is no SNI.
    pub(crate) fn of(tunnel: &'a TunnelCtx) -> Connection<'a> {
        Connection {
            peer: tunnel.conn.peer.as_ref(),
            source_ip: tunnel.client_ip,
            remote_ip: tunnel.client_ip,
            destination_ip: Some(tunnel.target.ip()),
            destination_port: Some(tunnel.target.port()),
            sni: None,
        }
    }
}

/// The validated token's facts policy reads.
#[derive(Debug, Clone, Copy)]
pub struct Token<'a> {
    pub claims: &'a JwtClaims,
    /// `<iss>/<sub>`, for the log; `None` when the claims were given without one.
    pub principal: Option<&'a str>,
}

/// Everything one decision reads.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub connection: Connection<'a>,
    /// The destination's key for `targetRefs` to a Service or ServiceEntry; `None` for a
    /// workload address.
    pub target: Option<&'a str>,
    /// The destination as operators read it in the log.
    pub destination: &'a dyn fmt::Display,
    /// The HTTP request; `None` for an opaque TCP connection.
    pub http: Option<&'a RequestView<'a>>,
    pub token: Option<Token<'a>>,
}

impl fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inputs")
            .field("connection", &self.connection)
            .field("target", &self.target)
            .field("destination", &format_args!("{}", self.destination))
            .field("http", &self.http)
            .field("token", &self.token)
            .finish()
    }
}

/// Decides `inputs` against `authorizer`; logs a denial (and, at debug, an allowance) with the
/// deciding policy and rule, and counts the outcome in `metrics` (the offline evaluator counts
/// nothing: `None`).
pub fn decide<'p>(
    authorizer: &'p Authorizer,
    inputs: &Inputs<'_>,
    metrics: Option<&Metrics>,
) -> Decision<'p> {
    let c = &inputs.connection;
    let request = Request {
        peer: c.peer,
        source_ip: c.source_ip,
        remote_ip: c.remote_ip,
        destination_ip: c.destination_ip,
        destination_port: c.destination_port,
        sni: c.sni,
        http: inputs.http.map(RequestView::http),
        jwt: inputs.token.map(|t| t.claims),
    };
    let decision = authorizer.evaluate(&request, inputs.target);
    log(inputs, &decision);
    if let Some(m) = metrics {
        count(m, inputs, &decision);
    }
    decision
}

fn log(inputs: &Inputs<'_>, d: &Decision<'_>) {
    let c = &inputs.connection;
    let peer = c.peer.map(PeerIdentity::uri);
    // Displayed, not formatted here: an allowance logged at a disabled level costs nothing.
    let policy = d.matched.map(|m| tracing::field::display(m.policy));
    let rule = d.matched.map(|m| m.rule);
    let action = d.action().map(|a| a.as_str());
    match (inputs.http, d.allowed) {
        (Some(view), false) => tracing::info!(
            peer,
            request_principal = inputs.token.and_then(|t| t.principal),
            client = ?c.source_ip,
            destination = %inputs.destination,
            method = view.method,
            authority = %view.authority,
            path = %view.path,
            policy,
            rule,
            action,
            reason = %d,
            "request denied"
        ),
        (None, false) => tracing::info!(
            peer,
            client = ?c.source_ip,
            destination = %inputs.destination,
            policy,
            rule,
            action,
            reason = %d,
            "TCP connection denied"
        ),
        (_, true) => tracing::debug!(
            peer,
            client = ?c.source_ip,
            destination = %inputs.destination,
            http = inputs.http.is_some(),
            policy,
            rule,
            action,
            reason = %d,
            "allowed"
        ),
    }
}

fn count(m: &Metrics, inputs: &Inputs<'_>, d: &Decision<'_>) {
    m.policy_decisions.inc(PolicyDecision {
        policy_namespace: d
            .matched
            .map(|p| p.policy.namespace.clone())
            .unwrap_or_default(),
        policy_name: d.matched.map(|p| p.policy.name.clone()).unwrap_or_default(),
        action: d.action().map_or("", |a| a.as_str()),
        decision: if d.allowed { "allow" } else { "deny" },
        code: d.status,
    });
    // An HTTP request is also counted with its response code when it is answered
    // (`waypoint_requests_total`, in the app's logging hook); a TCP connection is done here.
    if inputs.http.is_none() {
        if d.allowed {
            m.tcp_allowed.inc();
        } else {
            m.tcp_denied.inc();
        }
    }
}
