//! The write stage: the ONE place that either writes through the endpoint seams (a Marketo
//! [`ObjectFamily`], the CRM adapter) or, on a dry run, records the planned change. Counts are
//! derived from each record's outcome here, so a dry run's plan rows and its counts cannot
//! disagree (the summary recounts a dry run from its plan, see
//! [`CycleSummary::count_plan`]), and a record whose parent is not linked yet is a planned
//! "waits for its parent" on a dry run, never a failure.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::commit::{error_key, ledger_entry, link, sync_error};
use super::pair::Pairing;
use super::spec::ObjectSpec;
use super::to_record;
use crate::crm::WriteResult;
use crate::engine::ledger::{self, Failure, Subject};
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleSummary, EngineError};
use crate::mapping::Plan;
use crate::marketo::endpoint::families::ObjectFamily;
use crate::marketo::endpoint::{EndpointSettings, MarketoEndpoint};
use crate::marketo::{Record, RecordResult, RecordStatus};
use crate::model::Fields;
use crate::store::{Direction, LinkKey, StepCommit, SyncError};

/// Records per Marketo write call.
const MARKETO_BATCH: usize = 300;

/// One record planned for a CRM -> Marketo write.
#[derive(Debug, Clone)]
pub(crate) struct PlannedWrite {
    /// The CRM record id.
    pub crm_key: String,
    /// The Marketo key of the link (dedupe value(s) as text).
    pub marketo_key: String,
    /// The record to send.
    pub record: Record,
    /// The agreed values once written.
    pub base: Fields,
    /// The Marketo key the link had before, when the record's dedupe fields changed (the old
    /// Marketo record is deleted once the new one is written).
    pub replaces: Option<String>,
    /// The target record's values now, when it is linked under the same key (a dry run's
    /// "before"); `None` for a record the write creates.
    pub before: Option<Record>,
    /// The Marketo fields that identify the record (left out of an update's planned changes).
    pub key_names: Vec<String>,
}

/// Returns true for a refusal whose cause is a parent record not linked yet (`contact_not_linked`,
/// `lead_not_linked`): the record waits for its parent.
pub(crate) fn waits_for_parent(code: &str) -> bool {
    code.ends_with("_not_linked")
}

/// Returns the ledger failure of a record Marketo did not process: Marketo's code and message,
/// retryable as its [`RefusalKind`] says (a record referencing one not written yet is retried; an
/// invalid value waits for the record to change).
pub(crate) fn skip_reason(result: &RecordResult) -> Failure {
    Failure::of_marketo_result(result).unwrap_or_else(|| {
        Failure::new(
            "unexpected_status",
            format!("marketo answered status {:?}", result.status),
            true,
        )
    })
}

/// Writes planned records to Marketo in batches and records links or errors in `commit`.
///
/// # Errors
///
/// A whole-call Marketo failure, or cancellation.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_marketo(
    ctx: &Context,
    object: &str,
    family: &ObjectFamily,
    planned: Vec<PlannedWrite>,
    previous: &BTreeMap<String, SyncError>,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let direction = Direction::CrmToMarketo;
    // A record refused before and unchanged since waits for its retry (or an operator).
    let now = ctx.clock.now();
    let mut sendable = Vec::with_capacity(planned.len());
    for p in planned {
        if ledger::waits(
            previous.get(&p.crm_key),
            &Json::Object(p.record.clone()),
            now,
        ) {
            summary.counts_mut(object, direction).skipped += 1;
            continue;
        }
        sendable.push(p);
    }
    let endpoint = ctx.endpoint(EndpointSettings {
        bulk_import_threshold: ctx.settings.marketo.bulk_import_threshold,
        ..EndpointSettings::default()
    });
    let size = endpoint.object_batch(family, sendable.len()).max(1);
    for batch in sendable.chunks(size) {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let input: Vec<Record> = batch.iter().map(|p| p.record.clone()).collect();
        let results = endpoint.upsert_objects(family, &input, cancel).await?;
        let now = ctx.clock.now();
        for (p, r) in batch.iter().zip(results) {
            let counts = summary.counts_mut(object, direction);
            match r.status {
                RecordStatus::Created | RecordStatus::Updated => {
                    if r.status == RecordStatus::Created {
                        counts.created += 1;
                    } else {
                        counts.updated += 1;
                    }
                    commit.links_upsert.push(link(
                        object,
                        &p.marketo_key,
                        &p.crm_key,
                        p.base.clone(),
                        now,
                    ));
                    if previous.contains_key(&p.crm_key) {
                        commit
                            .errors_resolve
                            .push(error_key(object, direction, &p.crm_key));
                    }
                }
                _ => {
                    counts.failed += 1;
                    let failure = skip_reason(&r);
                    warn!(object, crm_key = %p.crm_key, code = %failure.code, "marketo refused a record");
                    commit.errors_upsert.push(ledger_entry(
                        ctx,
                        Subject {
                            object,
                            direction,
                            record_key: &p.crm_key,
                            other_key: Some(p.marketo_key.clone()),
                            payload: Json::Object(p.record.clone()),
                        },
                        failure,
                        previous.get(&p.crm_key),
                    ));
                }
            }
        }
        info!(object, records = batch.len(), "marketo batch applied");
    }
    Ok(())
}

/// One CRM row to create for a Marketo record: `(marketo key, agreed canonical values, row)`.
pub(crate) type NewRow = (String, Fields, Fields);

/// The object, direction and ledger context of [`create_linked_rows`].
pub(crate) struct RowTarget<'a> {
    /// The store object of the links and ledger entries.
    pub object: &'a str,
    /// The direction counted and recorded.
    pub direction: Direction,
    /// Open ledger entries by record key (resolved when the row is written).
    pub previous: &'a BTreeMap<String, SyncError>,
}

/// Creates (or, keyed by the Marketo-id column, finds and updates) CRM rows in batches of
/// `CRM_ROW_BATCH`, linking each written row to its Marketo key and recording each refused one
/// in the error ledger. Every written row is counted created.
pub(crate) async fn create_linked_rows(
    ctx: &Context,
    plan: &Plan,
    target: &RowTarget<'_>,
    rows: Vec<NewRow>,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let updated_before = summary.counts_mut(target.object, target.direction).updated;
    write_linked_rows(
        ctx,
        plan,
        target,
        &plan.crm_marketo_id,
        rows,
        CRM_ROW_BATCH,
        commit,
        summary,
        cancel,
    )
    .await?;
    let counts = summary.counts_mut(target.object, target.direction);
    counts.created += counts.updated - updated_before;
    counts.updated = updated_before;
    Ok(())
}

/// Upserts CRM rows keyed by `key_column` (each row holds it) in calls of up to `batch` rows:
/// by the plan's Marketo-id column, a re-run finds the rows it created instead of creating them
/// again; by the primary key, the linked records themselves are updated whatever their
/// Marketo-id column holds (a record gone meanwhile is refused, not inserted). Counts each row
/// from its typed outcome (created, updated, refused), links each written row to its Marketo
/// key at its agreed values, resolves its open ledger entry, and puts each refused row in the
/// error ledger with the CRM's code under the one retry policy. Returns the CRM id of each
/// row, by position (`None` for a refused one).
///
/// # Errors
///
/// A whole-call CRM failure, or cancellation.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_linked_rows(
    ctx: &Context,
    plan: &Plan,
    target: &RowTarget<'_>,
    key_column: &str,
    rows: Vec<NewRow>,
    batch: usize,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<Vec<Option<String>>, EngineError> {
    let now = ctx.clock.now();
    let (object, direction, previous) = (target.object, target.direction, target.previous);
    let mut out = Vec::with_capacity(rows.len());
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        // The rows go to the CRM as they are; their keys and agreed values wait for the outcome.
        let (agreed, calls): (Vec<(String, Fields)>, Vec<Fields>) = rows
            .by_ref()
            .take(batch.max(1))
            .map(|(key, base, row)| ((key, base), row))
            .unzip();
        let results = ctx.crm.upsert(&plan.crm_object, key_column, &calls).await?;
        let mut results = results.into_iter();
        for ((key, base), row) in agreed.into_iter().zip(&calls) {
            let counts = summary.counts_mut(object, direction);
            let id = match results.next() {
                Some(WriteResult::Created { id }) => {
                    counts.created += 1;
                    id
                }
                Some(WriteResult::Updated { id }) => {
                    counts.updated += 1;
                    id
                }
                Some(WriteResult::Deleted { .. }) | None => {
                    out.push(None);
                    continue;
                }
                Some(WriteResult::Refused(refusal)) => {
                    counts.failed += 1;
                    warn!(object, key = %key, code = %refusal.code(), "crm refused a record");
                    commit.errors_upsert.push(sync_error(
                        ctx,
                        object,
                        direction,
                        &key,
                        None,
                        Json::Object(to_record(row)),
                        refusal.code(),
                        &refusal.ledger_message(),
                        refusal.retryable,
                        previous.get(&key),
                    ));
                    out.push(None);
                    continue;
                }
            };
            if previous.contains_key(&key) {
                commit
                    .errors_resolve
                    .push(error_key(object, direction, &key));
            }
            commit.links_upsert.push(link(object, &key, &id, base, now));
            out.push(Some(id));
        }
    }
    Ok(out)
}

/// CRM rows per write batch of [`create_linked_rows`].
pub(crate) const CRM_ROW_BATCH: usize = 200;

/// Settles every pairing that writes nothing now (counts, ledger entries, resolved entries and,
/// on a dry run, the plan rows) and returns the records to write. On a dry run every write
/// becomes a plan row and none is returned.
pub(crate) fn settle(
    ctx: &Context,
    target: &RowTarget<'_>,
    pairings: Vec<Pairing>,
    dry_run: bool,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
) -> Vec<PlannedWrite> {
    let (object, direction, previous) = (target.object, target.direction, target.previous);
    let now = ctx.clock.now();
    let mut writes = Vec::new();
    for pairing in pairings {
        match pairing {
            Pairing::WaitsForParent { key, failure } if dry_run => {
                // Its parent's write is planned by this dry run, not made: it would be written
                // by the cycle after the parent's. Not a failure.
                summary.planned(
                    PlannedChange::new(object, direction, PlannedAction::WaitsForParent)
                        .source(key)
                        .note(failure.message),
                );
            }
            Pairing::Refused { key, failure } | Pairing::WaitsForParent { key, failure } => {
                summary.counts_mut(object, direction).failed += 1;
                let subject = Subject {
                    object,
                    direction,
                    record_key: &key,
                    other_key: None,
                    payload: json!({}),
                };
                let entry = ledger_entry(ctx, subject, failure, previous.get(&key));
                commit.errors_upsert.push(entry);
            }
            Pairing::Unchanged { key } => {
                summary.counts_mut(object, direction).skipped += 1;
                if previous.contains_key(&key) {
                    commit
                        .errors_resolve
                        .push(error_key(object, direction, &key));
                }
            }
            Pairing::Write(w) => {
                // Refused before and unchanged since: it waits for its retry (or an operator).
                let payload = Json::Object(w.record.clone());
                if ledger::waits(previous.get(&w.crm_key), &payload, now) {
                    summary.counts_mut(object, direction).skipped += 1;
                } else if dry_run {
                    summary.planned(planned_change(object, direction, &w));
                } else {
                    writes.push(w);
                }
            }
        }
    }
    writes
}

/// Returns the plan row of a write a dry run does not make.
pub(crate) fn planned_change(
    object: &str,
    direction: Direction,
    w: &PlannedWrite,
) -> PlannedChange {
    let action = if w.before.is_none() {
        PlannedAction::Create
    } else {
        PlannedAction::Update
    };
    let key_names: Vec<&str> = w.key_names.iter().map(String::as_str).collect();
    let mut change = PlannedChange::new(object, direction, action)
        .source(w.crm_key.clone())
        .fields(&w.record, w.before.as_ref(), &key_names);
    if w.before.is_some() {
        change = change.target(w.marketo_key.clone());
    }
    if let Some(old) = &w.replaces {
        change = change.note(format!(
            "replaces Marketo record {old} (its dedupe fields changed); the old one is deleted"
        ));
    }
    change
}

/// Deletes the old Marketo record of every written record whose dedupe fields changed (a
/// role's role or lead, a car's vin: a new Marketo record), once the new one is written, and
/// drops its old link. `rekeyed` maps a CRM key to the Marketo key its link had.
///
/// # Errors
///
/// A whole-call Marketo failure.
pub(crate) async fn delete_replaced(
    ctx: &Context,
    plan: &Plan,
    spec: &ObjectSpec<'_>,
    rekeyed: &BTreeMap<String, String>,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let object = plan.object.as_str();
    let replaced: Vec<String> = commit
        .links_upsert
        .iter()
        .filter_map(|l| rekeyed.get(&l.crm_key).cloned())
        .collect();
    let old: Vec<Record> = replaced
        .iter()
        .filter_map(|old| spec.keys.delete_key(plan, old))
        .collect();
    commit
        .links_delete
        .extend(replaced.into_iter().map(|marketo_key| LinkKey {
            object: object.to_owned(),
            marketo_key,
        }));
    for batch in old.chunks(MARKETO_BATCH) {
        let results = spec.family.delete(&ctx.marketo, batch).await?;
        let gone = results
            .iter()
            .filter(|r| r.status == RecordStatus::Deleted)
            .count();
        summary.counts_mut(object, Direction::CrmToMarketo).deleted += gone as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::model::WireError;

    /// A record Marketo skipped with this (numeric) reason code.
    fn skipped(code: u16) -> RecordResult {
        RecordResult {
            seq: Some(0),
            status: RecordStatus::Skipped,
            id: None,
            marketo_guid: None,
            reasons: vec![WireError {
                code: code.to_string(),
                message: "m".into(),
            }],
        }
    }

    #[test]
    fn missing_parents_are_retried_and_bad_values_are_not() {
        assert!(skip_reason(&skipped(1013)).retryable);
        assert!(skip_reason(&skipped(1004)).retryable);
        assert!(!skip_reason(&skipped(1006)).retryable);
        assert!(!skip_reason(&skipped(1001)).retryable);
        assert_eq!(skip_reason(&skipped(1006)).code, 1006.to_string());
    }
}
