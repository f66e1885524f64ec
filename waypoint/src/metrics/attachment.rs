//! Label set of the attachment refusal counter, counted by `state::assemble::report_findings`.

use prometheus_client::encoding::EncodeLabelSet;

/// `waypoint_attachment_refused_total{reason}`. Bounded: `reason` is one of the few istiod
/// spells (`AttachmentDenied`, `UnsupportedTrafficType`, `WaypointIsNotReady`, ...), see
/// `gateway_api_bindings::waypoint::Reason::as_str`; never an object's name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttachmentRefused {
    pub reason: &'static str,
}
