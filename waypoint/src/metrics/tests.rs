//! The exposition, family by family: names, types, help, labels and values as scrapers, the e2e
//! tests and the docs know them.

use std::sync::Arc;

use super::{Metrics, PolicyDecision, Timeout};

/// The whole exposition of a fresh registry after one allowed 200 and one denied 403: exactly
/// what the hand-written renderer served before the registry replaced it.
const GOLDEN: &str = include_str!("exposition.txt");

fn counted() -> Metrics {
    let m = Metrics::default();
    m.request(true, 200);
    m.request(false, 403);
    m
}

/// Lines of one family (its HELP, TYPE and samples), keyed by the family's name.
fn families(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default().to_owned();
            out.push((name, Vec::new()));
        }
        if let Some((_, lines)) = out.last_mut() {
            lines.push(line.to_owned());
        }
    }
    out
}

#[test]
fn exposition_matches_the_hand_written_one() {
    let got = families(&counted().render());
    let want = families(GOLDEN);
    let names = |f: &[(String, Vec<String>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "families or their order changed");
    for ((name, got), (_, want)) in got.iter().zip(&want) {
        // Samples of a labelled family come out in hash order; their set is what matters.
        let (mut got, mut want) = (got.clone(), want.clone());
        got[2..].sort();
        want[2..].sort();
        assert_eq!(got, want, "family {name}");
    }
}

#[test]
fn every_counter_ends_in_total_and_every_gauge_does_not() {
    let text = Metrics::default().render();
    let mut types = 0;
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        types += 1;
        match line.split_once(' ') {
            Some((name, "counter")) => assert!(name.ends_with("_total"), "{line}"),
            Some((name, "gauge")) => assert!(!name.ends_with("_total"), "{line}"),
            _ => panic!("unexpected type line {line}"),
        }
    }
    // 39 families, less the request and attachment-refusal counters, which have no sample yet.
    assert_eq!(types, 37);
    assert!(
        !text.contains("# EOF"),
        "OpenMetrics trailer in a text/plain 0.0.4 body"
    );
}

#[test]
fn requests_are_counted_by_decision_and_code() {
    let m = Metrics::default();
    assert!(
        !m.render().contains("waypoint_requests_total"),
        "a family without samples is left out"
    );
    m.request(true, 200);
    m.request(true, 200);
    m.request(false, 403);
    // Codes no server sends are folded into 599 rather than growing the label set.
    m.request(false, 1000);
    assert_eq!(m.requests(true, 200), 2);
    assert_eq!(m.requests(false, 403), 1);
    assert_eq!(m.requests(false, 599), 1);
    assert_eq!(m.requests(true, 403), 0);
    let text = m.render();
    for line in [
        "# TYPE waypoint_requests_total counter",
        "waypoint_requests_total{decision=\"allow\",code=\"200\"} 2",
        "waypoint_requests_total{decision=\"deny\",code=\"403\"} 1",
        "waypoint_requests_total{decision=\"deny\",code=\"599\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}

#[test]
fn policy_decisions_are_counted_by_deciding_policy() {
    let m = Metrics::default();
    let deny = PolicyDecision {
        policy_namespace: "demo".into(),
        policy_name: "deny-\"post\"".into(),
        action: "DENY",
        decision: "deny",
        code: Some(403),
    };
    let tcp_default = PolicyDecision {
        policy_namespace: String::new(),
        policy_name: String::new(),
        action: "",
        decision: "allow",
        code: None,
    };
    m.policy_decisions.inc(deny.clone());
    m.policy_decisions.inc(deny.clone());
    m.policy_decisions.inc(tcp_default.clone());
    assert_eq!(m.policy_decisions.get(&deny), 2);
    assert_eq!(m.policy_decisions.get(&tcp_default), 1);
    let text = m.render();
    for line in [
        "# TYPE waypoint_policy_decisions_total counter",
        // A quote in a policy name is escaped, not allowed to end the label value.
        "waypoint_policy_decisions_total{policy_namespace=\"demo\",policy_name=\"deny-\\\"post\\\"\",action=\"DENY\",decision=\"deny\",code=\"403\"} 2",
        "waypoint_policy_decisions_total{policy_namespace=\"\",policy_name=\"\",action=\"\",decision=\"allow\",code=\"\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}

#[test]
fn every_timeout_is_exported_from_the_start_and_counts_alone() {
    let m = Metrics::default();
    m.timeouts.stream_idle.inc();
    m.timeouts.stream_idle.inc();
    m.timeouts.tls_handshake.inc();
    let text = m.render();
    for t in Timeout::ALL {
        let want = match t {
            Timeout::StreamIdle => 2,
            Timeout::TlsHandshake => 1,
            _ => 0,
        };
        let line = format!(
            "waypoint_timeouts_total{{timeout=\"{}\"}} {want}",
            t.as_str()
        );
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}

#[test]
fn counters_and_gauges_show_their_values() {
    let m = Arc::new(Metrics::default());
    m.tcp_denied.inc();
    m.jwks_keys_unusable.inc_by(3);
    m.config_version.set(42);
    m.identity_expiry.set(1_900_000_000);
    let held = m.hbone_connections.track();
    let owned = m.track_owned(|m| &m.upstream_hbone_connections);
    let also = m.track_owned(|m| &m.upstream_hbone_connections);
    let text = m.render();
    for line in [
        "waypoint_tcp_connections_denied_total 1",
        "waypoint_jwks_keys_unusable_total 3",
        "waypoint_config_version 42",
        "waypoint_identity_expiry_timestamp_seconds 1900000000",
        "waypoint_hbone_connections 1",
        "waypoint_upstream_hbone_connections 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    drop((held, owned, also));
    assert_eq!(m.hbone_connections.get(), 0);
    assert_eq!(m.upstream_hbone_connections.get(), 0);
    assert!(
        m.render()
            .lines()
            .any(|l| l == "waypoint_hbone_connections 0")
    );
}

#[test]
fn refused_attachments_are_counted_by_reason() {
    let m = Metrics::default();
    assert!(!m.render().contains("waypoint_attachment_refused_total"));
    m.attachment_refused("AttachmentDenied");
    m.attachment_refused("AttachmentDenied");
    m.attachment_refused("WaypointIsNotReady");
    m.address_conflicts.inc();
    let text = m.render();
    assert!(
        text.contains("waypoint_attachment_refused_total{reason=\"AttachmentDenied\"} 2"),
        "{text}"
    );
    assert!(text.contains("waypoint_attachment_refused_total{reason=\"WaypointIsNotReady\"} 1"));
    assert!(text.contains("waypoint_address_conflicts_total 1"));
    assert_eq!(m.attachment_refusals("AttachmentDenied"), 2);
}
