//! Every figure the waypoint exports, in one [`prometheus_client`] registry, served in the
//! Prometheus text format (version 0.0.4) by the admin server's `/metrics`.
//!
//! Counters and gauges are atomics shared between the field the code updates and the registry
//! that encodes them, so counting never takes a lock; a labelled family takes a read lock to find
//! its member (a write lock only the first time a label set is seen).
//!
//! # Adding a metric
//! 1. Unlabelled: add a `pub` [`Counter`] or [`Gauge`] field to [`Metrics`] and register it in
//!    [`Metrics::default`] with [`counter`] or [`gauge`], at the place in the list where it should
//!    appear in the output.
//! 2. Labelled: declare its label set in the file of the room that counts it (`proxy.rs` for the
//!    request counter, `hbone.rs` for timeouts; e.g. a new `authz.rs` for policy decisions): a
//!    struct deriving `Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet`, one field per label in
//!    output order, each a `String`, an integer, or a small enum implementing `EncodeLabelValue`
//!    (see [`Decision`]). Keep cardinality bounded: names of objects, never paths or peer
//!    addresses. Re-export it here, add a `pub` `Family<YourLabels, Counter>` field and register it
//!    with [`family`]. Count with `metrics.field.get_or_create(&labels).inc()`.
//! 3. Names: register a counter WITHOUT its `_total` suffix (the encoder appends it; debug builds
//!    panic on a registered name ending in `_total`), and write help text without a final period
//!    (the registry appends one).
//! 4. Add the family to the exposition test in `tests.rs`, and to `docs/running.md` if operators
//!    should know it.

mod attachment;
mod authz;
mod hbone;
mod proxy;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Metric, Registry};

pub use attachment::AttachmentRefused;
pub use authz::{PolicyDecision, PolicyDecisions};
pub use hbone::{Timeout, TimeoutCounters, TimeoutLabels};
pub use prometheus_client::metrics::counter::Counter;
pub use proxy::{Decision, RequestLabels};

/// The `Content-Type` of [`Metrics::render`]'s output, as served since the first release.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A current count, held up by [`GaugeGuard`]s or set outright.
#[derive(Debug, Clone, Default)]
pub struct Gauge(prometheus_client::metrics::gauge::Gauge);

impl Gauge {
    /// Holds the gauge up by one for as long as the guard lives, from any task.
    pub fn track(&self) -> GaugeGuard {
        self.0.inc();
        GaugeGuard(self.0.clone())
    }
    pub fn get(&self) -> i64 {
        self.0.get()
    }
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }
}

/// Decrements its gauge on drop.
#[derive(Debug)]
pub struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every figure the waypoint exports, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    /// HTTP requests by decision and response code.
    requests: Family<RequestLabels, Counter>,
    /// Authorization decisions (HTTP and TCP) by deciding policy.
    pub policy_decisions: PolicyDecisions,
    /// Layered L4 decisions on CONNECTs (code 401: refused), by deciding policy.
    pub layered_decisions: PolicyDecisions,
    pub tcp_allowed: Counter,
    pub tcp_denied: Counter,
    pub hbone_connections: Gauge,
    pub hbone_handshake_failures: Counter,
    /// Peers whose certificate does not name exactly one SPIFFE ID of the mesh.
    pub hbone_peer_identity_rejected: Counter,
    /// Tunnels refused because their destination is this waypoint (or a reserved port).
    pub self_destination_refused: Counter,
    /// Timeouts that fired, by kind.
    pub timeouts: TimeoutCounters,
    pub tunnels: Counter,
    pub tunnels_rejected: Counter,
    pub upstream_hbone_connections: Gauge,
    pub upstream_hbone_connects: Counter,
    pub upstream_hbone_streams: Counter,
    pub upstream_hbone_streams_reused: Counter,
    pub upstream_identity_mismatch: Counter,
    pub upstream_connect_failures: Counter,
    /// Inner HTTP/1.1 connections to apps: how many requests rode an existing one.
    pub upstream_http_new: Counter,
    pub upstream_http_reused: Counter,
    pub config_reloads: Counter,
    pub config_reload_failures: Counter,
    /// The version of the snapshot the data path reads.
    pub config_version: Gauge,
    /// Kubernetes source: watch events received, watch errors (each followed by a backoff).
    pub kube_events: Counter,
    pub kube_watch_errors: Counter,
    /// New or changed Kubernetes objects found invalid: enforced as istiod builds them, or kept
    /// out when they cannot be read (see `source::kube::sync`).
    pub kube_invalid_objects: Counter,
    /// Objects that name this waypoint and are refused (and our Gateway not being a waypoint),
    /// by reason; each counted once, when it appears.
    attachment_refused: Family<AttachmentRefused, Counter>,
    /// Addresses claimed by more than one object (each conflict counted once, when it appears).
    pub address_conflicts: Counter,
    /// Status subresource writes, and those that failed.
    pub status_writes: Counter,
    pub status_write_failures: Counter,
    /// 1 while this replica holds the status Lease.
    pub status_leader: Gauge,
    /// Requests whose JWT was valid, and those answered 401.
    pub jwt_valid: Counter,
    pub jwt_rejected: Counter,
    /// Valid tokens served from the cache (no signature check).
    pub jwt_cache_hits: Counter,
    pub jwks_fetches: Counter,
    pub jwks_fetch_failures: Counter,
    pub jwt_refused_cache_hits: Counter,
    pub jwks_keys_unusable: Counter,
    /// Workload certificates installed (the first one included), and failed attempts to get one.
    pub identity_renewals: Counter,
    pub identity_renewal_failures: Counter,
    /// When the certificate in use expires, in Unix seconds; 0 before the first one.
    pub identity_expiry: Gauge,
    /// Written only here, at construction: encoding needs no lock.
    registry: Registry,
}

/// Registers a new counter under `name` (without `_total`) and returns it.
fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    registry.register(name, help, c.clone());
    c
}

/// Registers a new gauge under `name` and returns it.
fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.0.clone());
    g
}

/// Registers a new labelled family under `name` and returns it.
fn family<S, M>(registry: &mut Registry, name: &str, help: &str) -> Family<S, M>
where
    Family<S, M>: Metric + Clone + Default,
{
    let f = Family::default();
    registry.register(name, help, Family::clone(&f));
    f
}

impl Default for Metrics {
    /// Registers every metric. The order here is the order of the output: it is the order the
    /// hand-written exposition used, so scrapes diff cleanly across the change.
    fn default() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        Metrics {
            requests: family(
                r,
                "waypoint_requests",
                "HTTP requests by policy decision and response code",
            ),
            policy_decisions: PolicyDecisions(family(
                r,
                "waypoint_policy_decisions",
                "Authorization decisions by deciding policy, its action, the decision and the status it gives",
            )),
            layered_decisions: PolicyDecisions(family(
                r,
                "waypoint_layered_l4_decisions",
                "Layered L4 policy decisions on CONNECTs by deciding policy; code 401 when refused",
            )),
            timeouts: TimeoutCounters::register(r),
            tcp_allowed: counter(
                r,
                "waypoint_tcp_connections_allowed",
                "Opaque TCP tunnels allowed",
            ),
            tcp_denied: counter(
                r,
                "waypoint_tcp_connections_denied",
                "Opaque TCP tunnels denied and closed",
            ),
            hbone_handshake_failures: counter(
                r,
                "waypoint_hbone_handshake_failures",
                "Inbound TLS handshakes that failed",
            ),
            hbone_peer_identity_rejected: counter(
                r,
                "waypoint_hbone_peer_identity_rejected",
                "Inbound peers refused for their certificate's SPIFFE ID (none, several, foreign trust domain)",
            ),
            self_destination_refused: counter(
                r,
                "waypoint_self_destination_refused",
                "Tunnels and upstream connections refused because they would reach this waypoint or a reserved port",
            ),
            tunnels: counter(
                r,
                "waypoint_tunnels",
                "Inbound CONNECT streams accepted for processing",
            ),
            tunnels_rejected: counter(
                r,
                "waypoint_tunnels_rejected",
                "Inbound CONNECT streams refused",
            ),
            upstream_hbone_connects: counter(
                r,
                "waypoint_upstream_hbone_connects",
                "Upstream HBONE connections opened",
            ),
            upstream_hbone_streams: counter(
                r,
                "waypoint_upstream_hbone_streams",
                "Upstream CONNECT streams opened",
            ),
            upstream_hbone_streams_reused: counter(
                r,
                "waypoint_upstream_hbone_streams_reused",
                "Upstream CONNECT streams opened on an existing connection",
            ),
            upstream_identity_mismatch: counter(
                r,
                "waypoint_upstream_identity_mismatch",
                "Upstream peers whose SPIFFE ID was not the destination's",
            ),
            upstream_connect_failures: counter(
                r,
                "waypoint_upstream_connect_failures",
                "Upstream connection attempts that failed",
            ),
            upstream_http_new: counter(
                r,
                "waypoint_upstream_http_connections_new",
                "Requests that needed a new upstream HTTP connection",
            ),
            upstream_http_reused: counter(
                r,
                "waypoint_upstream_http_connections_reused",
                "Requests sent on a pooled upstream HTTP connection",
            ),
            config_reloads: counter(r, "waypoint_config_reloads", "Config snapshots applied"),
            config_reload_failures: counter(
                r,
                "waypoint_config_reload_failures",
                "Config changes rejected",
            ),
            kube_events: counter(
                r,
                "waypoint_kube_events",
                "Kubernetes watch events received",
            ),
            kube_watch_errors: counter(
                r,
                "waypoint_kube_watch_errors",
                "Kubernetes watch or list failures (each retried with backoff)",
            ),
            kube_invalid_objects: counter(
                r,
                "waypoint_kube_invalid_objects",
                "New or changed Kubernetes objects istiod's webhook would refuse, or that cannot be read",
            ),
            attachment_refused: family(
                r,
                "waypoint_attachment_refused",
                "Objects naming this waypoint that it does not serve (istiod's attachment rules), by reason",
            ),
            address_conflicts: counter(
                r,
                "waypoint_address_conflicts",
                "Addresses claimed by more than one Service or ServiceEntry of this waypoint",
            ),
            status_writes: counter(
                r,
                "waypoint_status_writes",
                "Status subresource writes (server-side apply)",
            ),
            status_write_failures: counter(
                r,
                "waypoint_status_write_failures",
                "Status subresource writes that failed",
            ),
            jwt_valid: counter(r, "waypoint_jwt_valid", "Requests that carried a valid JWT"),
            jwt_rejected: counter(
                r,
                "waypoint_jwt_rejected",
                "Requests refused for their JWT (401, or 403 for audiences)",
            ),
            jwt_cache_hits: counter(
                r,
                "waypoint_jwt_cache_hits",
                "Valid JWTs served from the verification cache",
            ),
            jwks_fetches: counter(r, "waypoint_jwks_fetches", "Successful JWKS fetches"),
            jwks_fetch_failures: counter(
                r,
                "waypoint_jwks_fetch_failures",
                "Failed JWKS fetches (the previous keys, if any, stay in use)",
            ),
            jwt_refused_cache_hits: counter(
                r,
                "waypoint_jwt_refused_cache_hits",
                "Refused JWTs answered from the short-lived refusal cache",
            ),
            jwks_keys_unusable: counter(
                r,
                "waypoint_jwks_keys_unusable",
                "JWKS keys left out at load because they cannot verify (logged with the reason)",
            ),
            identity_renewals: counter(
                r,
                "waypoint_identity_renewals",
                "Workload certificates installed, the first one included",
            ),
            identity_renewal_failures: counter(
                r,
                "waypoint_identity_renewal_failures",
                "Failed attempts to obtain a workload certificate or trust bundle",
            ),
            hbone_connections: gauge(
                r,
                "waypoint_hbone_connections",
                "Open inbound HBONE connections",
            ),
            upstream_hbone_connections: gauge(
                r,
                "waypoint_upstream_hbone_connections",
                "Open upstream HBONE connections",
            ),
            config_version: gauge(
                r,
                "waypoint_config_version",
                "Version of the config snapshot in use",
            ),
            status_leader: gauge(
                r,
                "waypoint_status_leader",
                "1 while this replica holds the status lease",
            ),
            identity_expiry: gauge(
                r,
                "waypoint_identity_expiry_timestamp_seconds",
                "When the workload certificate in use expires (Unix seconds); 0 before the first",
            ),
            registry,
        }
    }
}

impl Metrics {
    /// Holds `gauge` up for as long as the guard lives, from any task.
    pub fn track_owned(self: &Arc<Self>, gauge: fn(&Metrics) -> &Gauge) -> GaugeGuard {
        gauge(self).track()
    }

    /// Counts one HTTP request with its decision and response code.
    pub fn request(&self, allowed: bool, code: u16) {
        self.requests
            .get_or_create(&RequestLabels::new(allowed, code))
            .inc();
    }

    /// Requests counted for `allowed` and `code`.
    pub fn requests(&self, allowed: bool, code: u16) -> u64 {
        self.requests
            .get(&RequestLabels::new(allowed, code))
            .map_or(0, |c| c.get())
    }

    /// Counts one refused attachment (`reason` as `Reason::as_str` spells it).
    pub fn attachment_refused(&self, reason: &'static str) {
        self.attachment_refused
            .get_or_create(&AttachmentRefused { reason })
            .inc();
    }

    /// Refused attachments counted for `reason`.
    pub fn attachment_refusals(&self, reason: &'static str) -> u64 {
        self.attachment_refused
            .get(&AttachmentRefused { reason })
            .map_or(0, |c| c.get())
    }

    /// Every metric in the Prometheus text exposition format, version 0.0.4 ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail; the encoder's error type is fmt::Error for writers
        // that can.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}
