//! `waypoint authz check`: Istio's validation and `WaypointAccepted` status for every
//! AuthorizationPolicy and RequestAuthentication.

use std::path::Path;
use std::process::ExitCode;

use gateway_api_bindings::{ObjectKey, Origin, status};

pub(crate) fn run(config: &Path, root_ns: &str) -> anyhow::Result<ExitCode> {
    let (store, load_failed) = super::load(config)?;
    let mut invalid = load_failed;
    let mut out = std::io::stdout().lock();
    for (key, ap) in &store.authorization_policies {
        let st = status::authorization_policy(&store, &ap.object, root_ns);
        invalid |= report(&mut out, "AuthorizationPolicy", key, &ap.origin, &st)?;
    }
    for (key, ra) in &store.request_authentications {
        let st = status::request_authentication(&store, &ra.object, root_ns);
        invalid |= report(&mut out, "RequestAuthentication", key, &ra.origin, &st)?;
    }
    Ok(if invalid {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints one policy's condition, errors and warnings; returns whether it is invalid.
fn report(
    out: &mut impl std::io::Write,
    kind: &str,
    key: &ObjectKey,
    origin: &Origin,
    st: &status::PolicyStatus,
) -> std::io::Result<bool> {
    match &st.condition {
        None => writeln!(
            out,
            "{origin}: {kind} {key}: Ignored (no targetRefs: a selector or namespace-wide policy is enforced by ztunnel, not by waypoints)"
        )?,
        Some(c) => {
            let msg = if c.message.is_empty() {
                String::new()
            } else {
                format!(": {}", c.message)
            };
            writeln!(
                out,
                "{origin}: {kind} {key}: {}={} reason={}{msg}",
                status::CONDITION_TYPE,
                if c.status { "True" } else { "False" },
                c.reason.as_str()
            )?;
        }
    }
    for e in &st.errors {
        writeln!(
            out,
            "  error: {origin}: {kind} {key}: {}: {}",
            e.field, e.message
        )?;
    }
    for w in &st.warnings {
        writeln!(
            out,
            "  warning: {origin}: {kind} {key}: {}: {}",
            w.field, w.message
        )?;
    }
    Ok(st.is_invalid())
}
