//! The cycle steps for every object other than leads: salespersons, companies, opportunities,
//! opportunity roles, CRM deletions, custom objects, activities and custom activities.
//!
//! Each object is a small spec on the one [`crate::engine::pipeline`] (gather, pair, write,
//! commit: ONE `StepCommit` per step), with hooks for what is truly its own; [`registry`] lists
//! every step in the order the cycle runs them. A record the remote refuses goes to the error
//! ledger and is retried on a later cycle; it does not hold back the watermark. On a dry run
//! nothing is written: the planned writes go to [`CycleSummary::plan`].
//!
//! CRM changes are read from the adapter's change feed with two cursors per object: queue
//! [`UPSERTS_QUEUE`] for the create/update steps and queue [`DELETES_QUEUE`] for
//! [`deletions::run`], so that deletes can be applied in the whitepaper's order after every
//! create/update step.

pub mod activities;
pub mod companies;
pub mod custom_activities;
pub mod custom_objects;
pub mod deletions;
pub mod feed_riders;
pub mod opportunities;
pub mod program_members;
pub mod programs;
pub mod registry;
pub mod roles;
pub mod salespersons;
pub mod static_lists;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{CycleOptions, CycleSummary, EngineError};
use crate::engine::Context;
use crate::mapping::Plans;
use crate::marketo::RefusalKind;

pub(crate) use crate::engine::pipeline::commit::{error_key, ledger_entry, record_invalid_value};
pub use crate::engine::pipeline::gather::{DELETES_QUEUE, UPSERTS_QUEUE};
pub(crate) use crate::engine::pipeline::gather::{due_errors, gather_crm, read_activity_queue};
pub(crate) use crate::engine::pipeline::pair::{links_by_crm, raw_key};
pub(crate) use crate::engine::pipeline::spec::{KeyHook, KeysFn, ObjectSpec};
pub(crate) use crate::engine::pipeline::write::{
    CRM_ROW_BATCH, RowTarget, create_linked_rows, skip_reason,
};
pub(crate) use crate::engine::pipeline::{Scope, from_record, key_text, run_push, to_record};
pub(crate) use crate::marketo::endpoint::families::ObjectFamily;

pub use registry::{CUSTOM_OBJECTS, OnFailure, RecordFn, STEPS, Step, StepInput, step, step_of};

/// The object name whose links map Marketo lead ids to CRM contact ids (the leads mapping).
pub const LEAD_LINK_OBJECT: &str = super::leads::LINK_OBJECT;

/// Runs every registered step but leads, in the registry's order (leads need the cycle's
/// tunables and run in the cycle).
///
/// # Errors
///
/// Returns the first step's error; the steps before it have committed their work.
pub async fn run_all(
    ctx: &Context,
    plans: &Plans,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    for registered in STEPS {
        if registered.name == LEAD_LINK_OBJECT {
            continue;
        }
        run_step(registered.name, ctx, plans, summary, options, cancel).await?;
    }
    Ok(())
}

/// Runs the registered step named `name` with the default tunables. An unknown name does
/// nothing.
///
/// # Errors
///
/// The step's error, or [`EngineError::Cancelled`] when `cancel` fired before it started.
pub async fn run_step(
    name: &str,
    ctx: &Context,
    plans: &Plans,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    let Some(registered) = step(name) else {
        return Ok(());
    };
    let tunables = crate::engine::Tunables::default();
    let input = StepInput {
        ctx,
        tunables: &tunables,
        plans,
        options,
        cancel,
    };
    (registered.run)(input, summary).await
}

/// Returns `result`, except that Marketo's "CRM Enabled" refusal
/// ([`RefusalKind::NativeSyncOwned`]: native CRM sync owns this
/// object, so API writes are refused) becomes a warning: the step is skipped without committing,
/// so it resumes from the same watermarks once native sync is turned off.
///
/// # Errors
///
/// Every other error of `result`.
pub fn skip_when_native_sync(
    result: Result<(), EngineError>,
    object: &str,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    match result {
        Err(EngineError::Marketo(e)) if e.refusal_kind() == Some(RefusalKind::NativeSyncOwned) => {
            warn!(
                object,
                "native crm sync owns this object in marketo; step skipped"
            );
            summary.warnings.push(format!(
                "{object}: Marketo refuses API writes because native CRM sync is enabled (1018); \
                 the object is not synced"
            ));
            Ok(())
        }
        other => other,
    }
}
