//! Label sets of the HTTP proxy's counters.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// Codes above this are counted as this one: a misbehaving app cannot grow the label set.
const MAX_CODE: u16 = 599;

/// The policy decision on a request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

impl EncodeLabelValue for Decision {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// `waypoint_requests_total{decision, code}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub decision: Decision,
    /// The response status code.
    pub code: u16,
}

impl RequestLabels {
    pub fn new(allowed: bool, code: u16) -> RequestLabels {
        RequestLabels {
            decision: if allowed {
                Decision::Allow
            } else {
                Decision::Deny
            },
            code: code.min(MAX_CODE),
        }
    }
}
