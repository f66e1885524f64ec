//! Counters and gauges, lock-free on the data path, rendered in Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A current count, held up by [`GaugeGuard`]s.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

/// Decrements its gauge on drop.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Like [`GaugeGuard`], for tasks that outlive a borrow.
#[derive(Debug)]
pub struct OwnedGaugeGuard(std::sync::Arc<Metrics>, fn(&Metrics) -> &Gauge);

impl Drop for OwnedGaugeGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Holds `gauge` up for as long as the guard lives, from any task.
    pub fn track_owned(
        self: &std::sync::Arc<Self>,
        gauge: fn(&Metrics) -> &Gauge,
    ) -> OwnedGaugeGuard {
        gauge(self).0.fetch_add(1, Ordering::Relaxed);
        OwnedGaugeGuard(self.clone(), gauge)
    }
}

impl Gauge {
    pub fn track(&self) -> GaugeGuard<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(self)
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

const CODES: usize = 600;

/// One label set of `waypoint_policy_decisions_total`. Bounded: the policies of the config, four
/// actions, two decisions, two codes; never a path or a principal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyDecision {
    /// The deciding policy; both empty when no policy decided (the default).
    pub policy_namespace: String,
    pub policy_name: String,
    /// `ALLOW`, `DENY`, `AUDIT` or `CUSTOM` as the engine reports it; empty for the default.
    pub action: &'static str,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The status the decision gives an HTTP request (`200` forwarded, `403` denied); `None` for
    /// a TCP connection.
    pub code: Option<u16>,
}

/// Decisions counted per [`PolicyDecision`]. A label set is added once (write lock), then
/// counted under the read lock.
#[derive(Debug, Default)]
pub struct PolicyDecisions(
    std::sync::RwLock<std::collections::BTreeMap<PolicyDecision, AtomicU64>>,
);

impl PolicyDecisions {
    pub fn inc(&self, labels: PolicyDecision) {
        {
            let map = self.0.read().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get(&labels) {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        map.entry(labels)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The count for `labels`.
    pub fn get(&self, labels: &PolicyDecision) -> u64 {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(labels).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP waypoint_policy_decisions_total Authorization decisions by deciding policy, its action, the decision and the status it gives.\n# TYPE waypoint_policy_decisions_total counter"
        );
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        for (l, n) in map.iter() {
            let _ = writeln!(
                out,
                "waypoint_policy_decisions_total{{policy_namespace=\"{}\",policy_name=\"{}\",action=\"{}\",decision=\"{}\",code=\"{}\"}} {}",
                escape(&l.policy_namespace),
                escape(&l.policy_name),
                l.action,
                l.decision,
                l.code.map(|c| c.to_string()).unwrap_or_default(),
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

/// One counter per timeout of [`crate::hbone::server::Timeouts`].
#[derive(Debug, Default)]
pub struct TimeoutCounters {
    pub tls_handshake: Counter,
    pub h2_preface: Counter,
    pub connection_idle: Counter,
    pub first_byte: Counter,
    pub stream_idle: Counter,
    pub request_headers: Counter,
}

impl TimeoutCounters {
    fn each(&self) -> [(&'static str, &Counter); 6] {
        [
            ("tls_handshake", &self.tls_handshake),
            ("h2_preface", &self.h2_preface),
            ("connection_idle", &self.connection_idle),
            ("first_byte", &self.first_byte),
            ("stream_idle", &self.stream_idle),
            ("request_headers", &self.request_headers),
        ]
    }
}

/// Every figure the waypoint exports.
#[derive(Debug)]
pub struct Metrics {
    /// HTTP requests by decision (0 allowed, 1 denied) and response code.
    requests: Box<[[AtomicU64; CODES]; 2]>,
    /// Authorization decisions (HTTP and TCP) by deciding policy.
    pub policy_decisions: PolicyDecisions,
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
    /// Kubernetes objects rejected as invalid (kept out of the snapshot).
    pub kube_invalid_objects: Counter,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Box::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| AtomicU64::new(0))
            })),
            policy_decisions: PolicyDecisions::default(),
            tcp_allowed: Counter::default(),
            tcp_denied: Counter::default(),
            hbone_connections: Gauge::default(),
            hbone_handshake_failures: Counter::default(),
            hbone_peer_identity_rejected: Counter::default(),
            self_destination_refused: Counter::default(),
            timeouts: TimeoutCounters::default(),
            tunnels: Counter::default(),
            tunnels_rejected: Counter::default(),
            upstream_hbone_connections: Gauge::default(),
            upstream_hbone_connects: Counter::default(),
            upstream_hbone_streams: Counter::default(),
            upstream_hbone_streams_reused: Counter::default(),
            upstream_identity_mismatch: Counter::default(),
            upstream_connect_failures: Counter::default(),
            upstream_http_new: Counter::default(),
            upstream_http_reused: Counter::default(),
            config_reloads: Counter::default(),
            config_reload_failures: Counter::default(),
            config_version: Gauge::default(),
            kube_events: Counter::default(),
            kube_watch_errors: Counter::default(),
            kube_invalid_objects: Counter::default(),
            status_writes: Counter::default(),
            status_write_failures: Counter::default(),
            status_leader: Gauge::default(),
            jwt_valid: Counter::default(),
            jwt_rejected: Counter::default(),
            jwt_cache_hits: Counter::default(),
            jwks_fetches: Counter::default(),
            jwks_fetch_failures: Counter::default(),
            jwt_refused_cache_hits: Counter::default(),
            jwks_keys_unusable: Counter::default(),
            identity_renewals: Counter::default(),
            identity_renewal_failures: Counter::default(),
            identity_expiry: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn request(&self, allowed: bool, code: u16) {
        let code = usize::from(code).min(CODES - 1);
        self.requests[usize::from(!allowed)][code].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests counted for `allowed` and `code`.
    pub fn requests(&self, allowed: bool, code: u16) -> u64 {
        self.requests[usize::from(!allowed)][usize::from(code).min(CODES - 1)]
            .load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP waypoint_requests_total HTTP requests by policy decision and response code."
        );
        let _ = writeln!(out, "# TYPE waypoint_requests_total counter");
        for (i, decision) in ["allow", "deny"].iter().enumerate() {
            for (code, n) in self.requests[i].iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "waypoint_requests_total{{decision=\"{decision}\",code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        self.policy_decisions.render(&mut out);
        let _ = writeln!(
            out,
            "# HELP waypoint_timeouts_total Connections and streams closed by a timeout, by timeout.\n# TYPE waypoint_timeouts_total counter"
        );
        for (name, c) in self.timeouts.each() {
            let _ = writeln!(
                out,
                "waypoint_timeouts_total{{timeout=\"{name}\"}} {}",
                c.get()
            );
        }
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "waypoint_tcp_connections_allowed_total",
            "Opaque TCP tunnels allowed.",
            self.tcp_allowed.get(),
        );
        counter(
            "waypoint_tcp_connections_denied_total",
            "Opaque TCP tunnels denied and closed.",
            self.tcp_denied.get(),
        );
        counter(
            "waypoint_hbone_handshake_failures_total",
            "Inbound TLS handshakes that failed.",
            self.hbone_handshake_failures.get(),
        );
        counter(
            "waypoint_hbone_peer_identity_rejected_total",
            "Inbound peers refused for their certificate's SPIFFE ID (none, several, foreign trust domain).",
            self.hbone_peer_identity_rejected.get(),
        );
        counter(
            "waypoint_self_destination_refused_total",
            "Tunnels and upstream connections refused because they would reach this waypoint or a reserved port.",
            self.self_destination_refused.get(),
        );
        counter(
            "waypoint_tunnels_total",
            "Inbound CONNECT streams accepted for processing.",
            self.tunnels.get(),
        );
        counter(
            "waypoint_tunnels_rejected_total",
            "Inbound CONNECT streams refused.",
            self.tunnels_rejected.get(),
        );
        counter(
            "waypoint_upstream_hbone_connects_total",
            "Upstream HBONE connections opened.",
            self.upstream_hbone_connects.get(),
        );
        counter(
            "waypoint_upstream_hbone_streams_total",
            "Upstream CONNECT streams opened.",
            self.upstream_hbone_streams.get(),
        );
        counter(
            "waypoint_upstream_hbone_streams_reused_total",
            "Upstream CONNECT streams opened on an existing connection.",
            self.upstream_hbone_streams_reused.get(),
        );
        counter(
            "waypoint_upstream_identity_mismatch_total",
            "Upstream peers whose SPIFFE ID was not the destination's.",
            self.upstream_identity_mismatch.get(),
        );
        counter(
            "waypoint_upstream_connect_failures_total",
            "Upstream connection attempts that failed.",
            self.upstream_connect_failures.get(),
        );
        counter(
            "waypoint_upstream_http_connections_new_total",
            "Requests that needed a new upstream HTTP connection.",
            self.upstream_http_new.get(),
        );
        counter(
            "waypoint_upstream_http_connections_reused_total",
            "Requests sent on a pooled upstream HTTP connection.",
            self.upstream_http_reused.get(),
        );
        counter(
            "waypoint_config_reloads_total",
            "Config snapshots applied.",
            self.config_reloads.get(),
        );
        counter(
            "waypoint_config_reload_failures_total",
            "Config changes rejected.",
            self.config_reload_failures.get(),
        );
        counter(
            "waypoint_kube_events_total",
            "Kubernetes watch events received.",
            self.kube_events.get(),
        );
        counter(
            "waypoint_kube_watch_errors_total",
            "Kubernetes watch or list failures (each retried with backoff).",
            self.kube_watch_errors.get(),
        );
        counter(
            "waypoint_kube_invalid_objects_total",
            "Kubernetes objects rejected as invalid.",
            self.kube_invalid_objects.get(),
        );
        counter(
            "waypoint_status_writes_total",
            "Status subresource writes (server-side apply).",
            self.status_writes.get(),
        );
        counter(
            "waypoint_status_write_failures_total",
            "Status subresource writes that failed.",
            self.status_write_failures.get(),
        );
        counter(
            "waypoint_jwt_valid_total",
            "Requests that carried a valid JWT.",
            self.jwt_valid.get(),
        );
        counter(
            "waypoint_jwt_rejected_total",
            "Requests refused for their JWT (401, or 403 for audiences).",
            self.jwt_rejected.get(),
        );
        counter(
            "waypoint_jwt_cache_hits_total",
            "Valid JWTs served from the verification cache.",
            self.jwt_cache_hits.get(),
        );
        counter(
            "waypoint_jwks_fetches_total",
            "Successful JWKS fetches.",
            self.jwks_fetches.get(),
        );
        counter(
            "waypoint_jwks_fetch_failures_total",
            "Failed JWKS fetches (the previous keys, if any, stay in use).",
            self.jwks_fetch_failures.get(),
        );
        counter(
            "waypoint_jwt_refused_cache_hits_total",
            "Refused JWTs answered from the short-lived refusal cache.",
            self.jwt_refused_cache_hits.get(),
        );
        counter(
            "waypoint_jwks_keys_unusable_total",
            "JWKS keys left out at load because they cannot verify (logged with the reason).",
            self.jwks_keys_unusable.get(),
        );
        counter(
            "waypoint_identity_renewals_total",
            "Workload certificates installed, the first one included.",
            self.identity_renewals.get(),
        );
        counter(
            "waypoint_identity_renewal_failures_total",
            "Failed attempts to obtain a workload certificate or trust bundle.",
            self.identity_renewal_failures.get(),
        );
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "waypoint_hbone_connections",
            "Open inbound HBONE connections.",
            self.hbone_connections.get(),
        );
        gauge(
            "waypoint_upstream_hbone_connections",
            "Open upstream HBONE connections.",
            self.upstream_hbone_connections.get(),
        );
        gauge(
            "waypoint_config_version",
            "Version of the config snapshot in use.",
            self.config_version.get(),
        );
        gauge(
            "waypoint_status_leader",
            "1 while this replica holds the status lease.",
            self.status_leader.get(),
        );
        gauge(
            "waypoint_identity_expiry_timestamp_seconds",
            "When the workload certificate in use expires (Unix seconds); 0 before the first.",
            self.identity_expiry.get(),
        );
        out
    }
}
