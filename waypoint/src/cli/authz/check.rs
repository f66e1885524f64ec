//! `waypoint authz check`: Istio's validation and `WaypointAccepted` status for every
//! AuthorizationPolicy and RequestAuthentication, and a warning for every object of a kind the
//! waypoint does not enforce (an HTTPRoute or a VirtualService is read by nothing here).

use std::path::Path;
use std::process::ExitCode;

use gateway_api_bindings::{Ignored, ObjectKey, Origin, limits, status, well_known};
use serde::Serialize;

use crate::cli::output::{Colour, Format, Painter};

/// One checked object, as every output format shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    kind: String,
    /// `namespace/name`.
    object: String,
    origin: String,
    /// The `WaypointAccepted` condition istiod would set; `None` for a policy without
    /// targetRefs (ztunnel's, ignored by waypoints) and for objects the waypoint does not read.
    waypoint_accepted: Option<Accepted>,
    /// Why the waypoint does not enforce this object, when it does not.
    not_enforced: Option<String>,
    /// The `apiVersion` of an object of a kind the waypoint does not enforce.
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    errors: Vec<Issue>,
    warnings: Vec<Issue>,
}

#[derive(Debug, Serialize)]
struct Accepted {
    status: &'static str,
    reason: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct Issue {
    field: String,
    message: String,
}

impl Entry {
    fn invalid(&self) -> bool {
        !self.errors.is_empty()
            || self
                .waypoint_accepted
                .as_ref()
                .is_some_and(|a| a.reason != status::Reason::Accepted.as_str())
    }
}

pub(crate) fn run(config: &Path, root_ns: &str, format: Format) -> anyhow::Result<ExitCode> {
    let (store, errors) = super::load(config)?;
    let mut entries: Vec<Entry> = store.ignored.iter().map(not_enforced).collect();
    for (key, pa) in &store.peer_authentications {
        entries.push(Entry {
            kind: "PeerAuthentication".into(),
            object: key.to_string(),
            origin: pa.origin.to_string(),
            waypoint_accepted: None,
            not_enforced: Some(
                "mTLS mode is ztunnel's to enforce (`waypoint analyze` checks how ambient reads it)".into(),
            ),
            api_version: Some("security.istio.io/v1".into()),
            errors: Vec::new(),
            warnings: Vec::new(),
        });
    }
    for (key, ap) in &store.authorization_policies {
        let st = status::authorization_policy(&store, &ap.object, root_ns);
        entries.push(entry("AuthorizationPolicy", key, &ap.origin, st));
    }
    for (key, ra) in &store.request_authentications {
        let st = status::request_authentication(&store, &ra.object, root_ns);
        entries.push(entry("RequestAuthentication", key, &ra.origin, st));
    }
    let invalid = !errors.is_empty() || entries.iter().any(Entry::invalid);
    print(&entries, format)?;
    Ok(if invalid {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn entry(kind: &str, key: &ObjectKey, origin: &Origin, st: status::PolicyStatus) -> Entry {
    let issues = |v: Vec<policy_engine::FieldIssue>| {
        v.into_iter()
            .map(|i| Issue {
                field: i.field,
                message: limits::shown_max(&i.message, 512).into_owned(),
            })
            .collect()
    };
    Entry {
        kind: kind.into(),
        object: key.to_string(),
        origin: origin.to_string(),
        not_enforced: st.condition.is_none().then(|| {
            "no targetRefs: a selector or namespace-wide policy is enforced by ztunnel, not by waypoints".into()
        }),
        api_version: None,
        waypoint_accepted: st.condition.map(|c| Accepted {
            status: if c.status { "True" } else { "False" },
            reason: c.reason.as_str(),
            message: c.message,
        }),
        errors: issues(st.errors),
        warnings: issues(st.warnings),
    }
}

/// An object of a kind the waypoint does not read, saying what does enforce it where known.
fn not_enforced(o: &Ignored) -> Entry {
    let why = match o.kind.as_str() {
        "HTTPRoute" | "GRPCRoute" | "TCPRoute" | "TLSRoute" | "VirtualService"
        | "DestinationRule" => {
            "routing and traffic policy are not implemented by this waypoint: requests go to the Service they address"
        }
        "Sidecar" | "EnvoyFilter" | "WasmPlugin" | "Telemetry" | "ProxyConfig" => {
            "Envoy configuration; this waypoint is not Envoy"
        }
        _ => "the waypoint does not read this kind",
    };
    Entry {
        kind: if o.kind.is_empty() {
            "<no kind>".into()
        } else {
            o.kind.clone()
        },
        object: o.key.clone(),
        origin: o.origin.to_string(),
        waypoint_accepted: None,
        not_enforced: Some(why.into()),
        api_version: Some(if o.api_version.is_empty() {
            "<no apiVersion>".into()
        } else {
            o.api_version.clone()
        }),
        errors: Vec::new(),
        warnings: Vec::new(),
    }
}

fn print(entries: &[Entry], format: Format) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            for e in entries {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            }
        }
        Format::Yaml => write!(out, "{}", serde_yaml::to_string(entries)?)?,
        Format::Text => {
            let p = Painter::for_stdout();
            let (error, warning) = (
                p.paint(Colour::Red, "error"),
                p.paint(Colour::Yellow, "warning"),
            );
            for e in entries {
                let (origin, kind, key) = (&e.origin, &e.kind, &e.object);
                match (&e.waypoint_accepted, &e.not_enforced) {
                    (Some(a), _) => {
                        let msg = if a.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", a.message)
                        };
                        writeln!(
                            out,
                            "{origin}: {kind} {key}: {}={} reason={}{msg}",
                            well_known::WAYPOINT_ACCEPTED,
                            a.status,
                            a.reason
                        )?;
                    }
                    (None, Some(why))
                        if kind == "AuthorizationPolicy" || kind == "RequestAuthentication" =>
                    {
                        writeln!(out, "{origin}: {kind} {key}: Ignored ({why})")?
                    }
                    (None, Some(why)) => writeln!(
                        out,
                        "  {warning}: {origin}: {kind} {key}: not enforced ({}): {why}",
                        e.api_version.as_deref().unwrap_or("")
                    )?,
                    (None, None) => {}
                }
                for i in &e.errors {
                    writeln!(
                        out,
                        "  {error}: {origin}: {kind} {key}: {}: {}",
                        i.field, i.message
                    )?;
                }
                for i in &e.warnings {
                    writeln!(
                        out,
                        "  {warning}: {origin}: {kind} {key}: {}: {}",
                        i.field, i.message
                    )?;
                }
            }
        }
    }
    Ok(())
}
