//! `waypoint authz check`: Istio's validation and `WaypointAccepted` status for every policy.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use gateway_api_bindings::status;

pub(crate) fn run(config: &Path, root_ns: &str) -> anyhow::Result<ExitCode> {
    let (store, load_failed) = super::load(config)?;
    let mut invalid = load_failed;
    let mut out = std::io::stdout().lock();
    for (key, ap) in &store.authorization_policies {
        let st = status::authorization_policy(&store, &ap.object, root_ns);
        let origin = &ap.origin;
        match &st.condition {
            None => writeln!(
                out,
                "{origin}: AuthorizationPolicy {key}: Ignored (no targetRefs: a selector or namespace-wide policy is enforced by ztunnel, not by waypoints)"
            )?,
            Some(c) => {
                let msg = if c.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.message)
                };
                writeln!(
                    out,
                    "{origin}: AuthorizationPolicy {key}: {}={} reason={}{msg}",
                    status::CONDITION_TYPE,
                    if c.status { "True" } else { "False" },
                    c.reason.as_str()
                )?;
            }
        }
        for e in &st.errors {
            writeln!(
                out,
                "  error: {origin}: AuthorizationPolicy {key}: {}: {}",
                e.field, e.message
            )?;
        }
        for w in &st.warnings {
            writeln!(
                out,
                "  warning: {origin}: AuthorizationPolicy {key}: {}: {}",
                w.field, w.message
            )?;
        }
        invalid |= st.is_invalid();
    }
    Ok(if invalid {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
