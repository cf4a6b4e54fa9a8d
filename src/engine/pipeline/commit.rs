//! The commit stage: everything a step learned goes into ONE [`StepCommit`] (links, ledger
//! entries through the one [`RetryPolicy`], watermarks, conflicts), committed in one store
//! transaction at the end of the step, or not at all on a dry run.

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::gather::Gathered;
use crate::engine::ledger::{self, Failure, RetryPolicy, Subject};
use crate::engine::{Context, CycleSummary, EngineError};
use crate::model::{Fields, fields_hash};
use crate::store::{Direction, ErrorKey, Link, StepCommit, SyncError};

/// Returns a ledger entry for a record that could not be written (the CRM's or the engine's
/// code, message and retry class), through [`ledger::entry`] and the one [`RetryPolicy`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn sync_error(
    ctx: &Context,
    object: &str,
    direction: Direction,
    record_key: &str,
    other_key: Option<String>,
    payload: Json,
    code: &str,
    message: &str,
    retryable: bool,
    previous: Option<&SyncError>,
) -> SyncError {
    ledger_entry(
        ctx,
        Subject {
            object,
            direction,
            record_key,
            other_key,
            payload,
        },
        Failure::new(code, message, retryable),
        previous,
    )
}

/// Returns the ledger entry of `subject` failing with `failure` now, by the one
/// [`RetryPolicy`].
pub(crate) fn ledger_entry(
    ctx: &Context,
    subject: Subject<'_>,
    failure: Failure,
    previous: Option<&SyncError>,
) -> SyncError {
    ledger::entry(
        &RetryPolicy::default(),
        ctx.clock.now(),
        subject,
        failure,
        previous,
    )
}

/// Counts a record whose values the mapping cannot read as failed and puts it in the error
/// ledger (`invalid_value`, not retried: the record must change first).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_invalid_value(
    ctx: &Context,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
    object: &str,
    direction: Direction,
    key: &str,
    error: &dyn std::fmt::Display,
    previous: Option<&SyncError>,
) {
    summary.counts_mut(object, direction).failed += 1;
    commit.errors_upsert.push(ledger_entry(
        ctx,
        Subject {
            object,
            direction,
            record_key: key,
            other_key: None,
            payload: json!({}),
        },
        Failure::invalid_value(error),
        previous,
    ));
}

/// Returns a link for a pair that agrees on `base` now.
pub(crate) fn link(
    object: &str,
    marketo_key: &str,
    crm_key: &str,
    base: Fields,
    at: DateTime<Utc>,
) -> Link {
    Link {
        object: object.to_owned(),
        marketo_key: marketo_key.to_owned(),
        crm_key: crm_key.to_owned(),
        base_hash: fields_hash(&base),
        base,
        agreed_at: at,
        tombstone: None,
    }
}

/// Returns the error-ledger key of a record.
pub(crate) fn error_key(object: &str, direction: Direction, key: &str) -> ErrorKey {
    ErrorKey {
        object: object.to_owned(),
        direction,
        record_key: key.to_owned(),
    }
}

/// Returns the step's commit, holding the watermark of what `gathered` read.
pub(crate) fn start(gathered: &mut Gathered) -> StepCommit {
    StepCommit {
        watermarks: gathered.watermark.take().into_iter().collect(),
        ..StepCommit::default()
    }
}

/// Commits the step's work in one store transaction (nothing when there is nothing to commit).
///
/// # Errors
///
/// A store failure: nothing of the step is committed, and the next cycle re-reads it.
pub(crate) async fn finish(ctx: &Context, commit: StepCommit) -> Result<(), EngineError> {
    if !commit.is_empty() {
        ctx.store.commit(commit).await?;
    }
    Ok(())
}
