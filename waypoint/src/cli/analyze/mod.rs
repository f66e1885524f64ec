//! `waypoint analyze`: the ambient security advisor.
//!
//! Policy in ambient is enforced at two places, and the mistakes are silent: a selector policy
//! with an HTTP attribute turns into a DENY at ztunnel, a ztunnel policy on source identities
//! sees the waypoint instead of the caller, a waypoint policy is bypassed by sending to a pod
//! directly, a default deny at L4 is bypassed through the waypoint, a RequestAuthentication with
//! a selector does nothing. [`checks`] finds each one, in files (`--config`) or in a live
//! cluster (`--kubernetes`, one read-only list: [`live`]), and suggests the YAML that fixes it.
//! Codes, severities and fixes are documented in `docs/advisor.md`.

mod checks;
pub(crate) mod live;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gateway_api_bindings::limits::shown_max;
use gateway_api_bindings::{LoadError, Store};
use serde::Serialize;

use super::output::{Colour, Format, Painter, indent};

/// The longest text line printed for a person (a finding's message names many objects).
const MAX_SHOWN: usize = 8192;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
            Severity::Info => "Info",
        }
    }
}

/// One problem, with the objects that fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Finding {
    /// A stable name (`ZtunnelL7Attribute`, ...) or the status reason of a validation error.
    pub(crate) code: String,
    pub(crate) severity: Severity,
    /// `<Kind>/<namespace>/<name>` (`<Kind>/<name>` for cluster-scoped kinds).
    pub(crate) object: String,
    pub(crate) message: String,
    /// The suggested object(s), as YAML to apply; `None` when no object fixes it.
    pub(crate) fix: Option<String>,
}

/// What the checks need besides the objects.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) root_namespace: String,
    pub(crate) trust_domain: String,
    /// Principals (no `spiffe://`) allowed past the "only from my waypoint" guard.
    pub(crate) trusted_sources: Vec<String>,
    /// Read from a live cluster: Gateways are waypoints only once they have `status.addresses`.
    pub(crate) live: bool,
    /// The name and class of a waypoint Gateway a fix deploys where none serves.
    pub(crate) waypoint_name: String,
    pub(crate) waypoint_class: String,
}

/// Where the objects come from.
#[derive(Debug)]
pub(crate) enum Input {
    Files(PathBuf),
    Kubernetes { kubeconfig: Option<PathBuf> },
}

/// Every finding for `store`, most severe first.
pub(crate) fn analyze(store: &Store, load_errors: &[LoadError], opts: &Options) -> Vec<Finding> {
    let mut out = checks::run(store, load_errors, opts);
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| (&a.object, &a.code, &a.message).cmp(&(&b.object, &b.code, &b.message)))
    });
    out.dedup();
    out
}

pub(crate) fn run(
    input: Input,
    opts: &Options,
    format: Format,
    fail_on: Severity,
) -> anyhow::Result<ExitCode> {
    let (store, errors) = match &input {
        Input::Files(path) => load(path)?,
        Input::Kubernetes { kubeconfig } => live::list(kubeconfig.as_deref())?,
    };
    let findings = analyze(&store, &errors, opts);
    print(&findings, format)?;
    let failed = findings.iter().any(|f| f.severity >= fail_on);
    Ok(if failed {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn load(path: &Path) -> anyhow::Result<(Store, Vec<LoadError>)> {
    use anyhow::Context as _;
    let mut store = Store::default();
    let errors = store
        .load_path(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    Ok((store, errors))
}

fn print(findings: &[Finding], format: Format) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            for f in findings {
                writeln!(out, "{}", serde_json::to_string(f)?)?;
            }
        }
        Format::Yaml => write!(out, "{}", serde_yaml::to_string(findings)?)?,
        Format::Text => {
            let p = Painter::for_stdout();
            if findings.is_empty() {
                writeln!(out, "{}", p.paint(Colour::Green, "No issues found."))?;
            }
            for f in findings {
                let colour = match f.severity {
                    Severity::Error => Colour::Red,
                    Severity::Warning => Colour::Yellow,
                    Severity::Info => Colour::Cyan,
                };
                // Values from the config are echoed: made printable so that none can drive the
                // terminal (JSON and YAML escape them anyway).
                writeln!(
                    out,
                    "{} [{}] ({}) {}",
                    p.paint(colour, f.severity.label()),
                    shown_max(&f.code, MAX_SHOWN),
                    shown_max(&f.object, MAX_SHOWN),
                    shown_max(&f.message, MAX_SHOWN)
                )?;
                if let Some(fix) = &f.fix {
                    let fix: Vec<_> = fix.lines().map(|l| shown_max(l, MAX_SHOWN)).collect();
                    writeln!(out, "  Fix:\n{}", indent(&fix.join("\n"), 4))?;
                }
            }
            let count = |s| findings.iter().filter(|f| f.severity == s).count();
            if !findings.is_empty() {
                eprintln!(
                    "{} error(s), {} warning(s), {} info",
                    count(Severity::Error),
                    count(Severity::Warning),
                    count(Severity::Info)
                );
            }
        }
    }
    Ok(())
}
