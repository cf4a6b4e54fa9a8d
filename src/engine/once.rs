//! `marketo-sync sync --once`: one cycle from a config directory, its summary as JSON; and
//! `sync --record OBJECT:ID`: one CRM record to Marketo now.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{Context, CrmRecordOutcome, CycleOptions, CycleSummary, Engine, EngineError, Runner};
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

/// Splits a `--record` argument `OBJECT:ID` (the id may hold further colons).
///
/// # Errors
///
/// Returns [`EngineError::Config`] naming the argument when either part is missing.
pub fn parse_record_arg(arg: &str) -> Result<(String, String), EngineError> {
    match arg.split_once(':') {
        Some((object, id)) if !object.trim().is_empty() && !id.trim().is_empty() => {
            Ok((object.trim().to_owned(), id.trim().to_owned()))
        }
        _ => Err(EngineError::Config(format!(
            "--record `{arg}`: expected OBJECT:ID, e.g. leads:42 or contacts:42"
        ))),
    }
}

/// `marketo-sync sync --record OBJECT:ID`: loads the configuration and syncs one CRM record to
/// Marketo now, through the same limiter, quota and store as a cycle.
///
/// # Errors
///
/// Returns [`EngineError::Config`] for an invalid configuration, and any error of the sync.
pub async fn run_record_with(
    source: &SettingsSource,
    object: &str,
    id: &str,
    cancel: &CancellationToken,
) -> Result<CrmRecordOutcome, EngineError> {
    let loaded = load(source).map_err(|e| EngineError::Config(e.to_string()))?;
    let ctx = Context::from_settings(&loaded).await?;
    let engine = Engine::new(ctx);
    engine.sync_crm_record_now(object, id, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_arguments_split_at_the_first_colon() {
        assert_eq!(
            parse_record_arg("contacts:abc:1").unwrap(),
            ("contacts".to_owned(), "abc:1".to_owned())
        );
        for bad in ["contacts", ":1", "contacts:", ""] {
            let e = parse_record_arg(bad).unwrap_err().to_string();
            assert!(e.contains("OBJECT:ID"), "{e}");
        }
    }
}
