//! `waypoint authz`: the offline evaluator and checker.

pub(crate) mod check;
pub(crate) mod eval;

use std::path::Path;

use anyhow::Context as _;
use gateway_api_bindings::{LoadError, Store};

/// Loads the config with the waypoint's own loader (same limits, same refusals), reporting
/// unreadable documents on stderr. Returns them too.
pub(crate) fn load(config: &Path) -> anyhow::Result<(Store, Vec<LoadError>)> {
    let mut store = Store::default();
    let errors = store
        .load_path(config)
        .with_context(|| format!("reading config {}", config.display()))?;
    for e in &errors {
        eprintln!("error: {e}");
    }
    Ok((store, errors))
}
