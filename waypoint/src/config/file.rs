//! The file config source: a YAML file or a directory of them, polled for changes. A change that
//! does not load or compile is logged and ignored; the last good snapshot keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gateway_api_bindings::Store;

use super::{ConfigError, ConfigHandle, MeshSettings, Snapshot};
use crate::authn::jwks::JwksRegistry;
use crate::metrics::Metrics;

/// Reads and compiles `path`.
pub fn load(
    path: &Path,
    settings: &MeshSettings,
    jwks: &JwksRegistry,
) -> Result<(Snapshot, Store), ConfigError> {
    let mut store = Store::default();
    let errors = store.load_path(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !errors.is_empty() {
        return Err(ConfigError::Objects(
            errors.iter().map(ToString::to_string).collect(),
        ));
    }
    let snapshot = Snapshot::compile(&store, settings, jwks)?;
    Ok((snapshot, store))
}

/// What identifies a version of the files: names, sizes and modification times.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Take it before loading, and hand it to [`watch`], so a change made during the load is seen.
pub fn fingerprint(path: &Path) -> Fingerprint {
    let mut files = vec![path.to_path_buf()];
    let mut out = Vec::new();
    while let Some(p) = files.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            out.push((p, 0, None));
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                files.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else {
            out.push((p, meta.len(), meta.modified().ok()));
        }
    }
    out.sort();
    out
}

/// Polls `path` every `interval` and applies valid changes to `handle`.
pub async fn watch(
    path: PathBuf,
    mut seen: Fingerprint,
    settings: MeshSettings,
    handle: Arc<ConfigHandle>,
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
                *handle.objects() = store;
                handle.store(snapshot);
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
