//! The file config source: a YAML file or a directory of them, polled for changes. A change that
//! does not load or compile is logged once (a file that stays broken is not re-read until it
//! changes again), counted in `waypoint_config_reload_failures_total`, and ignored: the last
//! good snapshot keeps serving. Reading is bounded (see `gateway_api_bindings::yaml`), so no
//! file can stall or exhaust the reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gateway_api_bindings::Store;
use gateway_api_bindings::store::config_files;

use crate::authn::jwks::JwksRegistry;
use crate::metrics::Metrics;
use crate::state::assemble::{Assembler, Validation, report_findings};
use crate::state::{ConfigError, MeshSettings, Snapshot, StateHandle};

/// Errors kept in one rejection (each file already caps its own).
const MAX_ERRORS_LOGGED: usize = 50;

/// Reads and compiles `path`.
pub fn load(
    path: &Path,
    settings: &MeshSettings,
    jwks: &JwksRegistry,
) -> Result<(Snapshot, Store), ConfigError> {
    let mut store = Store::default();
    store.rules.service_entry_visibility = settings.service_entry_visibility.clone();
    let errors = store.load_path(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !errors.is_empty() {
        let mut lines: Vec<String> = errors
            .iter()
            .take(MAX_ERRORS_LOGGED)
            .map(ToString::to_string)
            .collect();
        if errors.len() > MAX_ERRORS_LOGGED {
            lines.push(format!(
                "and {} more error(s)",
                errors.len() - MAX_ERRORS_LOGGED
            ));
        }
        return Err(ConfigError::Objects(lines));
    }
    // Each load starts afresh: a change to the files is small next to reading them all again.
    let snapshot = Assembler::new(Validation::RefuseConfig).assemble_all(&store, settings, jwks)?;
    Ok((snapshot, store))
}

/// Logs and counts every finding of a snapshot loaded from the files: each load starts afresh,
/// so each is new to it.
pub fn report_all_findings(snapshot: &Snapshot, metrics: &Metrics) {
    let gateway = &snapshot.waypoint.gateway;
    report_findings(gateway, &snapshot.findings.all(gateway), metrics);
}

/// What identifies a version of the files: names, sizes and modification times.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Take it before loading, and hand it to [`watch`], so a change made during the load is seen.
/// It covers the files the loader reads ([`config_files`]) and, for a directory, the directory
/// itself (a file added, removed or renamed changes its mtime).
pub fn fingerprint(path: &Path) -> Fingerprint {
    let stamp = |p: &Path| match std::fs::metadata(p) {
        Ok(meta) => (p.to_path_buf(), meta.len(), meta.modified().ok()),
        Err(_) => (p.to_path_buf(), 0, None),
    };
    let mut out = vec![stamp(path)];
    if let Ok(files) = config_files(path) {
        out.extend(files.iter().map(|f| stamp(f)));
    }
    out.sort();
    out
}

/// Polls `path` every `interval` and applies valid changes to `handle`.
pub async fn watch(
    path: PathBuf,
    mut seen: Fingerprint,
    settings: MeshSettings,
    handle: Arc<StateHandle>,
    metrics: Arc<Metrics>,
    jwks: Arc<JwksRegistry>,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let now = fingerprint(&path);
        if now == seen {
            continue;
        }
        seen = now;
        // Compiling a large config takes a while; keep it off the runtime's worker threads.
        let (p, s, j) = (path.clone(), settings.clone(), jwks.clone());
        let result = tokio::task::spawn_blocking(move || load(&p, &s, &j)).await;
        match result {
            Ok(Ok((snapshot, store))) => {
                tracing::info!(version = snapshot.version, path = %path.display(), "config change applied");
                report_all_findings(&snapshot, &metrics);
                *handle.objects() = store;
                handle.publish(snapshot);
                metrics.config_reloads.inc();
            }
            Ok(Err(e)) => {
                metrics.config_reload_failures.inc();
                tracing::error!(path = %path.display(), error = %e, "config change rejected; the previous config keeps serving");
            }
            Err(e) => {
                metrics.config_reload_failures.inc();
                tracing::error!(error = %e, "config compilation task failed");
            }
        }
    }
}
