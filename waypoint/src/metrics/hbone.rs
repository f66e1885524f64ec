//! Label sets of the HBONE server's counters.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Counter;

/// One timeout of [`crate::hbone::server::Timeouts`].
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Timeout {
    TlsHandshake,
    H2Preface,
    ConnectionIdle,
    FirstByte,
    StreamIdle,
    RequestHeaders,
}

impl Timeout {
    pub const ALL: [Timeout; 6] = [
        Timeout::TlsHandshake,
        Timeout::H2Preface,
        Timeout::ConnectionIdle,
        Timeout::FirstByte,
        Timeout::StreamIdle,
        Timeout::RequestHeaders,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Timeout::TlsHandshake => "tls_handshake",
            Timeout::H2Preface => "h2_preface",
            Timeout::ConnectionIdle => "connection_idle",
            Timeout::FirstByte => "first_byte",
            Timeout::StreamIdle => "stream_idle",
            Timeout::RequestHeaders => "request_headers",
        }
    }
}

impl EncodeLabelValue for Timeout {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// `waypoint_timeouts_total{timeout}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    pub timeout: Timeout,
}

/// One counter per [`Timeout`], members of the `waypoint_timeouts` family held directly so that
/// counting skips the family's lookup.
#[derive(Debug)]
pub struct TimeoutCounters {
    pub tls_handshake: Counter,
    pub h2_preface: Counter,
    pub connection_idle: Counter,
    pub first_byte: Counter,
    pub stream_idle: Counter,
    pub request_headers: Counter,
}

impl TimeoutCounters {
    /// Registers the family with every member created, so that each timeout is exported from the
    /// start (at 0) as before.
    pub(super) fn register(registry: &mut Registry) -> TimeoutCounters {
        let family = Family::<TimeoutLabels, Counter>::default();
        registry.register(
            "waypoint_timeouts",
            "Connections and streams closed by a timeout, by timeout",
            family.clone(),
        );
        let member = |timeout| family.get_or_create(&TimeoutLabels { timeout }).clone();
        TimeoutCounters {
            tls_handshake: member(Timeout::TlsHandshake),
            h2_preface: member(Timeout::H2Preface),
            connection_idle: member(Timeout::ConnectionIdle),
            first_byte: member(Timeout::FirstByte),
            stream_idle: member(Timeout::StreamIdle),
            request_headers: member(Timeout::RequestHeaders),
        }
    }
}
