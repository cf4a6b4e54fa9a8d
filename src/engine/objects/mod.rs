//! The cycle steps for every object other than leads: salespersons, companies, opportunities,
//! opportunity roles, CRM deletions, custom objects and activities.
//!
//! Each step gathers its changes, maps them with the object's [`Plan`], plans the writes, applies
//! them and commits what was written in ONE [`StepCommit`] (watermarks, links, errors,
//! conflicts). A record the remote refuses goes to the error ledger and is retried on a later
//! cycle; it does not hold back the watermark. On a dry run nothing is written: the planned writes
//! go to [`CycleSummary::plan`] as JSON.
//!
//! CRM changes are read from the adapter's change feed with two cursors per object: queue
//! [`UPSERTS_QUEUE`] for the create/update steps and queue [`DELETES_QUEUE`] for
//! [`deletions::run`], so that deletes can be applied in the whitepaper's order after every
//! create/update step.

pub mod activities;
pub mod companies;
pub mod custom_objects;
pub mod deletions;
pub mod opportunities;
pub mod roles;
pub mod salespersons;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ledger::{self, Failure, RetryPolicy, Subject};
use super::summary::{PlannedAction, PlannedChange};
use super::{CycleOptions, CycleSummary, EngineError};
use crate::crm::{Change, ChangeKind, Cursor, WriteResult};
use crate::engine::Context;
use crate::mapping::{Plan, Plans};
use crate::marketo::activities::{Activity, ActivityFilter};
use crate::marketo::{DedupeBy, Record, RecordResult, RecordStatus, RefusalKind, SyncAction};
use crate::model::{Fields, Side, Value, fields_hash};
use crate::store::{
    Direction, ErrorFilter, ErrorKey, ErrorStatus, Link, LinkKey, StepCommit, SyncError, Watermark,
};

/// The steps of this module in the order the cycle runs them (leads run between `companies` and
/// `opportunities`, in the leads module).
pub const ORDER: &[&str] = &[
    "salespersons",
    "companies",
    "opportunities",
    "roles",
    "deletions",
    "custom_objects",
    "activities",
];

/// The watermark queue of the create/update steps on a CRM object's change feed.
pub const UPSERTS_QUEUE: &str = "upserts";
/// The watermark queue of the deletions step on a CRM object's change feed.
pub const DELETES_QUEUE: &str = "deletes";
/// The object name whose links map Marketo lead ids to CRM contact ids (the leads mapping).
pub const LEAD_LINK_OBJECT: &str = super::leads::LINK_OBJECT;
/// Changes read per call of the CRM change feed.
const CRM_PAGE: usize = 500;
/// Records per Marketo write call.
const MARKETO_BATCH: usize = 300;

/// The steps of [`ORDER`] that run before the leads step (the rest run after it).
pub const BEFORE_LEADS: &[&str] = &["salespersons", "companies"];

/// Runs every step of [`ORDER`], in that order.
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
    for step in ORDER {
        run_step(step, ctx, plans, summary, options, cancel).await?;
    }
    Ok(())
}

/// Runs one step of [`ORDER`] by name (the orchestrator runs [`BEFORE_LEADS`], then leads, then
/// the others). An unknown name does nothing.
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
    match name {
        "salespersons" => salespersons::run(ctx, plans, summary, options, cancel).await,
        "companies" => companies::run(ctx, plans, summary, options, cancel).await,
        "opportunities" => opportunities::run(ctx, plans, summary, options, cancel).await,
        "roles" => roles::run(ctx, plans, summary, options, cancel).await,
        "deletions" => deletions::run(ctx, plans, summary, options, cancel).await,
        "custom_objects" => custom_objects::run(ctx, plans, summary, options, cancel).await,
        "activities" => activities::run(ctx, plans, summary, options, cancel).await,
        _ => Ok(()),
    }
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

/// The Marketo family a step writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Family {
    SalesPersons,
    Companies,
    Opportunities,
    Roles,
    Custom(String),
}

impl Family {
    async fn sync(
        &self,
        ctx: &Context,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, EngineError> {
        let (a, d) = (SyncAction::CreateOrUpdate, DedupeBy::DedupeFields);
        let m = &ctx.marketo;
        Ok(match self {
            Family::SalesPersons => m.sync_salespersons(a, d, input).await?,
            Family::Companies => m.sync_companies(a, d, input).await?,
            Family::Opportunities => m.sync_opportunities(a, d, input).await?,
            Family::Roles => m.sync_opportunity_roles(a, d, input).await?,
            Family::Custom(name) => m.sync_custom_objects(name, a, d, input).await?,
        })
    }

    async fn delete(
        &self,
        ctx: &Context,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, EngineError> {
        let d = DedupeBy::DedupeFields;
        let m = &ctx.marketo;
        Ok(match self {
            Family::SalesPersons => m.delete_salespersons(d, input).await?,
            Family::Companies => m.delete_companies(d, input).await?,
            Family::Opportunities => m.delete_opportunities(d, input).await?,
            Family::Roles => m.delete_opportunity_roles(d, input).await?,
            Family::Custom(name) => m.delete_custom_objects(name, d, input).await?,
        })
    }
}

/// Returns the value as JSON for a Marketo record.
pub(crate) fn to_record(fields: &Fields) -> Record {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect()
}

/// Returns the Marketo record's values as [`Fields`].
pub(crate) fn from_record(record: &Record) -> Fields {
    record
        .iter()
        .map(|(k, v)| (k.clone(), Value::from_json(v)))
        .collect()
}

/// Returns a value as key text (`12` for an integer, the text itself, empty for null).
pub(crate) fn key_text(value: Option<&Value>) -> Option<String> {
    match value {
        None | Some(Value::Null) => None,
        Some(v) => {
            let t = v.to_text();
            (!t.is_empty()).then_some(t)
        }
    }
}

/// The CRM changes read for one step, and the watermark that commits them.
pub(crate) struct Gathered {
    /// The last change per record id, oldest first.
    pub changes: Vec<Change>,
    /// The watermark to commit once the step's writes are applied (none when nothing was read).
    pub watermark: Option<Watermark>,
}

/// Returns the changes of a CRM object after the stored cursor of `queue`.
///
/// # Errors
///
/// A CRM or store failure.
pub(crate) async fn gather_crm(
    ctx: &Context,
    object: &str,
    crm_object: &str,
    queue: &str,
    cancel: &CancellationToken,
) -> Result<Gathered, EngineError> {
    let stored = ctx.store.watermark(Side::Crm, object, queue).await?;
    let mut cursor: Option<Cursor> = stored.as_ref().and_then(|w| w.cursor.clone()).map(Cursor);
    let mut latest: BTreeMap<String, Change> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut high = stored.as_ref().map(|w| w.at);
    let mut read_any = false;
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx
            .crm
            .changes(crm_object, cursor.as_ref(), CRM_PAGE)
            .await?;
        for change in page.changes {
            read_any = true;
            high = Some(high.map_or(change.modified_at, |h| h.max(change.modified_at)));
            if !latest.contains_key(&change.id) {
                order.push(change.id.clone());
            }
            latest.insert(change.id.clone(), change);
        }
        let moved = cursor.as_ref() != Some(&page.next);
        cursor = Some(page.next);
        if !page.more || !moved {
            break;
        }
    }
    let changes = order
        .into_iter()
        .filter_map(|id| latest.remove(&id))
        .collect();
    let watermark = match (read_any, cursor, high) {
        (true, Some(c), Some(at)) => Some(Watermark {
            system: Side::Crm,
            object: object.to_owned(),
            queue: queue.to_owned(),
            at,
            tie: None,
            cursor: Some(c.0),
        }),
        _ => None,
    };
    Ok(Gathered { changes, watermark })
}

/// Returns the open errors of `object` in `direction` that are due for a retry now.
///
/// # Errors
///
/// A store failure.
pub(crate) async fn due_errors(
    ctx: &Context,
    object: &str,
    direction: Direction,
) -> Result<Vec<SyncError>, EngineError> {
    let now = ctx.clock.now();
    let errors = ctx
        .store
        .list_errors(&ErrorFilter {
            status: Some(ErrorStatus::Open),
            object: Some(object.to_owned()),
            limit: 1000,
        })
        .await?;
    Ok(errors
        .into_iter()
        .filter(|e| e.direction == direction)
        .filter(|e| e.next_retry_at.is_some_and(|t| t <= now))
        .collect())
}

/// Adds the CRM records of due retryable errors to `gathered` (when not already there).
///
/// # Errors
///
/// A CRM or store failure.
pub(crate) async fn add_retries(
    ctx: &Context,
    object: &str,
    crm_object: &str,
    gathered: &mut Gathered,
    previous: &mut BTreeMap<String, SyncError>,
) -> Result<(), EngineError> {
    let now = ctx.clock.now();
    let mut due: BTreeSet<String> = BTreeSet::new();
    let open = ctx
        .store
        .list_errors(&ErrorFilter {
            status: Some(ErrorStatus::Open),
            object: Some(object.to_owned()),
            limit: 1000,
        })
        .await?;
    for e in open {
        // Refused deletes are retried by the deletions step.
        if e.direction != Direction::CrmToMarketo
            || e.record_key.starts_with(deletions::DELETE_PREFIX)
        {
            continue;
        }
        if e.next_retry_at.is_some_and(|t| t <= now) {
            due.insert(e.record_key.clone());
        }
        previous.insert(e.record_key.clone(), e);
    }
    let have: BTreeSet<String> = gathered.changes.iter().map(|c| c.id.clone()).collect();
    let ids: Vec<String> = due.into_iter().filter(|k| !have.contains(k)).collect();
    if ids.is_empty() {
        return Ok(());
    }
    for record in ctx.crm.get(crm_object, &ids).await? {
        gathered.changes.push(Change {
            id: record.id,
            modified_at: record.modified_at,
            kind: ChangeKind::Upserted {
                fields: record.fields,
            },
        });
    }
    Ok(())
}

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

/// Reads one activity queue (activities of `type_id`) from its stored paging token (or from the
/// object's low watermark the first time) to the end, keyed by `marketoGUID` so that a re-read
/// page adds nothing twice. Returns the activities and the queue's next watermark, which the
/// caller commits with what it wrote.
pub(crate) async fn read_activity_queue(
    ctx: &Context,
    object: &str,
    queue: &str,
    type_id: i64,
    cancel: &CancellationToken,
) -> Result<(BTreeMap<String, Activity>, Watermark), EngineError> {
    let stored = ctx.store.watermark(Side::Marketo, object, queue).await?;
    let since = ctx.settings.bootstrap.low_watermark(object);
    let mut token = match stored
        .as_ref()
        .and_then(|w| w.cursor.as_ref())
        .and_then(|c| c.as_str())
    {
        Some(t) => t.to_owned(),
        None => ctx.marketo.paging_token(since).await?,
    };
    let mut high: DateTime<Utc> = stored.as_ref().map_or(since, |w| w.at);
    let mut activities: BTreeMap<String, Activity> = BTreeMap::new();
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx
            .marketo
            .get_activities(&token, &[type_id], &ActivityFilter::default())
            .await?;
        let n = page.records.len();
        for a in page.records {
            high = high.max(a.activity_date);
            if let Some(k) = a.key() {
                activities.insert(k, a);
            }
        }
        if let Some(t) = page.next_page_token {
            token = t;
        }
        if !page.more_result || n == 0 {
            break;
        }
    }
    let watermark = Watermark {
        system: Side::Marketo,
        object: object.to_owned(),
        queue: queue.to_owned(),
        at: high,
        tie: None,
        cursor: Some(json!(token)),
    };
    Ok((activities, watermark))
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
/// in the error ledger.
pub(crate) async fn create_linked_rows(
    ctx: &Context,
    plan: &Plan,
    target: &RowTarget<'_>,
    rows: &[NewRow],
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let now = ctx.clock.now();
    let (object, direction, previous) = (target.object, target.direction, target.previous);
    for chunk in rows.chunks(CRM_ROW_BATCH) {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let batch: Vec<Fields> = chunk.iter().map(|(_, _, row)| row.clone()).collect();
        let results = ctx
            .crm
            .upsert(&plan.crm_object, &plan.crm_marketo_id, &batch)
            .await?;
        for ((key, base, row), result) in chunk.iter().zip(results) {
            let counts = summary.counts_mut(object, direction);
            match result {
                WriteResult::Created { id } | WriteResult::Updated { id } => {
                    counts.created += 1;
                    commit
                        .links_upsert
                        .push(link(object, key, &id, base.clone(), now));
                    if previous.contains_key(key) {
                        commit
                            .errors_resolve
                            .push(error_key(object, direction, key));
                    }
                }
                WriteResult::Deleted { .. } => {}
                WriteResult::Refused(refusal) => {
                    counts.failed += 1;
                    commit.errors_upsert.push(sync_error(
                        ctx,
                        object,
                        direction,
                        key,
                        None,
                        Json::Object(to_record(row)),
                        refusal.code(),
                        &refusal.ledger_message(),
                        refusal.retryable,
                        previous.get(key),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// CRM rows per write batch of [`create_linked_rows`].
pub(crate) const CRM_ROW_BATCH: usize = 200;

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
}

/// What a CRM -> Marketo object needs besides its plan.
pub(crate) struct PushSpec<'a> {
    /// The family written to.
    pub family: Family,
    /// Returns the Marketo key, the key fields to add to the record (Marketo names) and the
    /// extra canonical values to keep in the link base; or a record-level refusal
    /// (code, message, retryable).
    pub keys: &'a KeysFn,
    /// The raw CRM column holding a contact id whose linked Marketo lead the keys need.
    pub contact_column: Option<&'a str>,
}

/// Builds the Marketo key of one CRM change: (change, raw CRM fields, canonical fields, lead ids
/// by CRM contact id) -> (link key, Marketo key fields) or (code, message, retryable).
pub(crate) type KeysFn = dyn Fn(
        &Change,
        &Fields,
        &Fields,
        &BTreeMap<String, i64>,
    ) -> Result<(String, Fields), (String, String, bool)>
    + Sync;

/// Runs a one-way CRM -> Marketo step: gather changes (and due retries), map, plan only changed
/// records, write in batches of 300, commit. Records whose dedupe fields changed replace their
/// old Marketo record (written, then the old one deleted).
///
/// # Errors
///
/// A whole-call failure of the CRM, Marketo or the store, or cancellation.
pub(crate) async fn push_step(
    ctx: &Context,
    plan: &Plan,
    spec: PushSpec<'_>,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let object = plan.object.as_str();
    let direction = Direction::CrmToMarketo;
    let mut gathered = gather_crm(ctx, object, &plan.crm_object, UPSERTS_QUEUE, cancel).await?;
    let mut previous: BTreeMap<String, SyncError> = BTreeMap::new();
    add_retries(ctx, object, &plan.crm_object, &mut gathered, &mut previous).await?;
    let mut commit = StepCommit {
        watermarks: gathered.watermark.take().into_iter().collect(),
        ..StepCommit::default()
    };
    let upserts: Vec<&Change> = gathered
        .changes
        .iter()
        .filter(|c| matches!(c.kind, ChangeKind::Upserted { .. }))
        .collect();
    summary.counts_mut(object, direction).read += upserts.len() as u64;
    let ids: Vec<String> = upserts.iter().map(|c| c.id.clone()).collect();
    let links: BTreeMap<String, Link> = links_by_crm(ctx, object, &ids).await?;
    let leads = match spec.contact_column {
        Some(column) => {
            let contacts: Vec<String> = upserts.iter().filter_map(|c| raw_key(c, column)).collect();
            lead_ids_by_contact(ctx, &contacts).await?
        }
        None => BTreeMap::new(),
    };
    let mut planned = Vec::new();
    for change in upserts {
        let ChangeKind::Upserted { fields } = &change.kind else {
            continue;
        };
        let canonical = match plan.to_canonical(Side::Crm, fields) {
            Ok(c) => c,
            Err(e) => {
                record_invalid_value(
                    ctx,
                    &mut commit,
                    summary,
                    object,
                    direction,
                    &change.id,
                    &e,
                    previous.get(&change.id),
                );
                continue;
            }
        };
        let (marketo_key, key_fields) = match (spec.keys)(change, fields, &canonical, &leads) {
            Ok(k) => k,
            Err((code, message, _)) if options.dry_run && waits_for_parent(&code) => {
                // Its parent's write is planned by this dry run, not made: it would be written
                // by the cycle after the parent's. Not a failure.
                summary.planned(
                    PlannedChange::new(object, direction, PlannedAction::WaitsForParent)
                        .source(change.id.clone())
                        .note(message),
                );
                continue;
            }
            Err((code, message, retryable)) => {
                summary.counts_mut(object, direction).failed += 1;
                commit.errors_upsert.push(sync_error(
                    ctx,
                    object,
                    direction,
                    &change.id,
                    None,
                    json!({}),
                    &code,
                    &message,
                    retryable,
                    previous.get(&change.id),
                ));
                continue;
            }
        };
        let mut base = canonical.clone();
        for (k, v) in &key_fields {
            base.insert(format!("key:{k}"), v.clone());
        }
        let existing = links.get(&change.id).filter(|l| l.tombstone.is_none());
        if let Some(l) = existing
            && l.base == base
            && l.marketo_key == marketo_key
        {
            summary.counts_mut(object, direction).skipped += 1;
            if previous.contains_key(&change.id) {
                commit
                    .errors_resolve
                    .push(error_key(object, direction, &change.id));
            }
            continue;
        }
        // Only changed fields are written to a linked record; a new one gets every field.
        let to_send: Fields = match existing {
            Some(l) if l.marketo_key == marketo_key => canonical
                .iter()
                .filter(|(k, v)| l.base.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            _ => canonical.clone(),
        };
        let mut record = to_record(&plan.render(Side::Marketo, &to_send));
        for (k, v) in &key_fields {
            record.insert(k.clone(), v.to_json());
        }
        // Refused before and unchanged since: it waits for its retry (or an operator).
        if ledger::waits(
            previous.get(&change.id),
            &Json::Object(record.clone()),
            ctx.clock.now(),
        ) {
            summary.counts_mut(object, direction).skipped += 1;
            continue;
        }
        let replaces = existing
            .filter(|l| l.marketo_key != marketo_key)
            .map(|l| l.marketo_key.clone());
        if options.dry_run {
            // The linked record's values on the Marketo side are the link's agreed base.
            let before = existing
                .filter(|l| l.marketo_key == marketo_key)
                .map(|l| to_record(&plan.render(Side::Marketo, &l.base)));
            let new = existing.is_none() || replaces.is_some();
            let action = if new {
                PlannedAction::Create
            } else {
                PlannedAction::Update
            };
            let key_names: Vec<&str> = key_fields.keys().map(String::as_str).collect();
            let mut change_plan = PlannedChange::new(object, direction, action)
                .source(change.id.clone())
                .fields(&record, before.as_ref(), &key_names);
            if !new {
                change_plan = change_plan.target(marketo_key.clone());
            }
            if let Some(old) = &replaces {
                change_plan = change_plan.note(format!(
                    "replaces Marketo record {old} (its dedupe fields changed); the old one is deleted"
                ));
            }
            summary.planned(change_plan);
            continue;
        }
        planned.push(PlannedWrite {
            crm_key: change.id.clone(),
            marketo_key,
            record,
            base,
            replaces,
        });
    }
    if options.dry_run {
        return Ok(());
    }
    let rekeyed: BTreeMap<String, String> = planned
        .iter()
        .filter_map(|p| p.replaces.clone().map(|old| (p.crm_key.clone(), old)))
        .collect();
    apply_marketo(
        ctx,
        object,
        &spec.family,
        planned,
        &previous,
        &mut commit,
        summary,
        cancel,
    )
    .await?;
    // A record whose dedupe fields changed (a role's role or lead, a car's vin) is a new Marketo
    // record: delete the old one once the new one is written.
    let replaced: Vec<String> = commit
        .links_upsert
        .iter()
        .filter_map(|l| rekeyed.get(&l.crm_key).cloned())
        .collect();
    let old: Vec<Record> = replaced
        .iter()
        .filter_map(|old| delete_key(plan, &spec.family, old))
        .collect();
    commit
        .links_delete
        .extend(replaced.into_iter().map(|marketo_key| LinkKey {
            object: object.to_owned(),
            marketo_key,
        }));
    for batch in old.chunks(MARKETO_BATCH) {
        let results = spec.family.delete(ctx, batch).await?;
        let gone = results
            .iter()
            .filter(|r| r.status == RecordStatus::Deleted)
            .count();
        summary.counts_mut(object, direction).deleted += gone as u64;
    }
    if !commit.is_empty() {
        ctx.store.commit(commit).await?;
    }
    Ok(())
}

/// Returns the Marketo dedupe record that deletes the record with this link key.
pub(crate) fn delete_key(plan: &Plan, family: &Family, marketo_key: &str) -> Option<Record> {
    let mut r = Record::new();
    match family {
        Family::Roles => {
            let (opp, lead, role) = roles::parse_role_key(marketo_key)?;
            r.insert("externalOpportunityId".into(), json!(opp));
            r.insert("leadId".into(), json!(lead));
            r.insert("role".into(), json!(role));
        }
        _ => {
            r.insert(plan.marketo_crm_key.clone(), json!(marketo_key));
        }
    }
    Some(r)
}

/// Returns the error-ledger key of a record.
pub(crate) fn error_key(object: &str, direction: Direction, key: &str) -> ErrorKey {
    ErrorKey {
        object: object.to_owned(),
        direction,
        record_key: key.to_owned(),
    }
}

/// Returns the links of `object` by CRM key.
///
/// # Errors
///
/// A store failure.
pub(crate) async fn links_by_crm(
    ctx: &Context,
    object: &str,
    keys: &[String],
) -> Result<BTreeMap<String, Link>, EngineError> {
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx.store.links_by_crm_keys(object, chunk).await? {
            out.insert(l.crm_key.clone(), l);
        }
    }
    Ok(out)
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
    family: &Family,
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
    for batch in sendable.chunks(MARKETO_BATCH) {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let input: Vec<Record> = batch.iter().map(|p| p.record.clone()).collect();
        let results = family.sync(ctx, &input).await?;
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

/// Returns the Marketo lead id linked to a CRM contact id, from the leads' links.
///
/// # Errors
///
/// A store failure.
pub(crate) async fn lead_ids_by_contact(
    ctx: &Context,
    contact_ids: &[String],
) -> Result<BTreeMap<String, i64>, EngineError> {
    let links = links_by_crm(ctx, LEAD_LINK_OBJECT, contact_ids).await?;
    Ok(links
        .into_iter()
        .filter(|(_, l)| l.tombstone.is_none())
        .filter_map(|(k, l)| l.marketo_key.parse::<i64>().ok().map(|id| (k, id)))
        .collect())
}

/// Returns the raw CRM field of a change as key text.
pub(crate) fn raw_key(change: &Change, column: &str) -> Option<String> {
    match &change.kind {
        ChangeKind::Upserted { fields } => key_text(fields.get(column)),
        ChangeKind::Deleted(_) => None,
    }
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

    #[test]
    fn key_text_treats_null_and_empty_as_absent() {
        assert_eq!(key_text(Some(&Value::Int(12))), Some("12".into()));
        assert_eq!(key_text(Some(&Value::Null)), None);
        assert_eq!(key_text(Some(&Value::Text(String::new()))), None);
        assert_eq!(key_text(None), None);
    }
}
