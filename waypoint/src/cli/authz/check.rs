//! `waypoint authz check`: Istio's validation and `WaypointAccepted` status for every
//! AuthorizationPolicy and RequestAuthentication, and a warning for every object of a kind the
//! waypoint does not enforce (an HTTPRoute or a VirtualService is read by nothing here).

use std::path::Path;
use std::process::ExitCode;

use gateway_api_bindings::{Ignored, ObjectKey, Origin, limits, status, well_known};

pub(crate) fn run(config: &Path, root_ns: &str) -> anyhow::Result<ExitCode> {
    let (store, errors) = super::load(config)?;
    let mut invalid = !errors.is_empty();
    let mut out = std::io::stdout().lock();
    for ignored in &store.ignored {
        not_enforced(&mut out, ignored)?;
    }
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

/// Warns that an object is not enforced, saying what does enforce its kind where that is known.
fn not_enforced(out: &mut impl std::io::Write, o: &Ignored) -> std::io::Result<()> {
    let why = match o.kind.as_str() {
        "HTTPRoute" | "GRPCRoute" | "TCPRoute" | "TLSRoute" | "VirtualService"
        | "DestinationRule" => {
            "routing and traffic policy are not implemented by this waypoint: requests go to the Service they address"
        }
        "PeerAuthentication" => "mTLS mode is ztunnel's to enforce",
        "Sidecar" | "EnvoyFilter" | "WasmPlugin" | "Telemetry" | "ProxyConfig" => {
            "Envoy configuration; this waypoint is not Envoy"
        }
        _ => "the waypoint does not read this kind",
    };
    writeln!(
        out,
        "  warning: {}: {} {}: not enforced ({}): {why}",
        o.origin,
        if o.kind.is_empty() {
            "<no kind>"
        } else {
            &o.kind
        },
        o.key,
        if o.api_version.is_empty() {
            "<no apiVersion>"
        } else {
            &o.api_version
        },
    )
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
                well_known::WAYPOINT_ACCEPTED,
                if c.status { "True" } else { "False" },
                c.reason.as_str()
            )?;
        }
    }
    for e in &st.errors {
        writeln!(
            out,
            "  error: {origin}: {kind} {key}: {}: {}",
            e.field,
            limits::shown_max(&e.message, 512)
        )?;
    }
    for w in &st.warnings {
        writeln!(
            out,
            "  warning: {origin}: {kind} {key}: {}: {}",
            w.field,
            limits::shown_max(&w.message, 512)
        )?;
    }
    Ok(st.is_invalid())
}
