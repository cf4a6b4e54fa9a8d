//! `marketo-sync sync --once`: one cycle from a config directory, its summary as JSON.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{Context, CycleOptions, CycleSummary, Engine, EngineError, Runner};
use crate::config::{SettingsSource, load};

/// Loads the configuration in `dir` (with the `env` layer), runs one cycle and returns its
/// summary; with `dry_run` nothing is written to either side or the store, and the summary
/// lists the planned writes.
///
/// # Errors
///
/// Returns [`EngineError::Config`] for an invalid configuration (every problem listed), and
/// any error of the cycle.
pub async fn run_once(
    dir: &Path,
    env: Option<&str>,
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<CycleSummary, EngineError> {
    run_once_with(&SettingsSource::new(dir, env), dry_run, cancel).await
}

/// As [`run_once`], with an explicit settings source (environment variables given in code).
///
/// # Errors
///
/// As [`run_once`].
pub async fn run_once_with(
    source: &SettingsSource,
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<CycleSummary, EngineError> {
    let loaded = load(source).map_err(|e| EngineError::Config(e.to_string()))?;
    let ctx = Context::from_settings(&loaded).await?;
    let engine = Engine::new(ctx);
    let mut summary = engine
        .run_one_cycle(&CycleOptions { dry_run }, cancel)
        .await?;
    summary
        .warnings
        .extend(loaded.warnings.iter().map(ToString::to_string));
    Ok(summary)
}
