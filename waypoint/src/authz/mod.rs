//! `waypoint authz`: the offline evaluator and checker.

pub(crate) mod check;
pub(crate) mod eval;

use std::path::Path;

use anyhow::Context as _;
use gateway_api_bindings::Store;

/// Loads the config, reporting unreadable documents on stderr. Returns whether any failed.
pub(crate) fn load(config: &Path) -> anyhow::Result<(Store, bool)> {
    let mut store = Store::default();
    let errors = store
        .load_path(config)
        .with_context(|| format!("reading config {}", config.display()))?;
    for e in &errors {
        eprintln!("error: {e}");
    }
    Ok((store, !errors.is_empty()))
}
