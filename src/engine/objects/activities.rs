//! Configured Marketo activity types -> a CRM table, one way.
//!
//! Each configured type (`[[activities]]` in the activities mapping, `Plans::activities`) has its
//! own queue `activity:<type id>`: a Get Lead Activities paging token kept as the watermark's
//! cursor, the watermark's time the date of the last activity read. Activities are de-duplicated
//! by `marketoGUID` twice: a copied activity has a link (object `activity:<type id>`, Marketo
//! key = GUID) and is not written again, and the CRM write is an upsert keyed by the GUID column
//! (`keys.crm_marketo_id`), so a re-read after a crash or an overlapping token inserts no
//! duplicate row. The CRM row is linked to the CRM record of the lead through the synthetic
//! source field [`CRM_CONTACT_FIELD`] (the CRM key of the lead's link).
//!
//! At volume a queue is read by Bulk Activity Extract instead of the feed (one export job
//! instead of one call per 300 activities): see [`bulk`] for when and how. Both paths hand the
//! same [`Activity`] values to one copy ([`copy`]): the feed's pages, or the export file's rows
//! in batches.

mod bulk;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{due_errors, from_record, read_activity_queue};
use crate::engine::pipeline::gather::QueueRead;
use crate::engine::pipeline::pair::contacts_by_lead;
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{Plan, Plans};
use crate::marketo::activities::Activity;
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, StepCommit, SyncError};

pub use bulk::{BULK_QUEUE_SUFFIX, bulk_queue};

/// The watermark object of every activity queue.
pub const OBJECT: &str = "activities";
pub use crate::mapping::activities::{CRM_CONTACT_FIELD, STANDARD_FIELDS, activity_schema};

/// Returns the queue name of an activity type.
pub fn queue(type_id: u32) -> String {
    format!("activity:{type_id}")
}

/// Returns the raw source fields of one activity (see [`STANDARD_FIELDS`]).
pub fn raw_fields(a: &Activity, crm_contact: Option<&str>) -> Fields {
    let mut raw = Fields::new();
    let opt_int = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
    raw.insert(
        "marketoGUID".into(),
        a.key().map_or(Value::Null, Value::Text),
    );
    raw.insert("activityDate".into(), Value::DateTime(a.activity_date));
    raw.insert("leadId".into(), Value::Int(a.lead_id));
    raw.insert("campaignId".into(), opt_int(a.campaign_id));
    raw.insert(
        "primaryAttributeValueId".into(),
        opt_int(a.primary_attribute_value_id),
    );
    raw.insert(
        "primaryAttributeValue".into(),
        a.primary_attribute_value
            .clone()
            .map_or(Value::Null, Value::Text),
    );
    raw.insert(
        CRM_CONTACT_FIELD.into(),
        crm_contact.map_or(Value::Null, |c| Value::Text(c.to_owned())),
    );
    for attr in &a.attributes {
        raw.entry(attr.name.clone())
            .or_insert_with(|| Value::from_json(&attr.value));
    }
    raw
}

/// Copies the new activities of every configured type to the CRM. Does nothing when no activity
/// type is configured.
///
/// # Errors
///
/// A whole-call failure of Marketo, the CRM or the store, or cancellation.
pub async fn run(
    ctx: &Context,
    plans: &Plans,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    for (type_id, plan) in &plans.activities {
        run_type(ctx, *type_id, plan, summary, options, cancel).await?;
    }
    Ok(())
}

/// One activity row to copy: `(marketoGUID, agreed values, CRM row)`.
type Row = (String, Fields, Fields);

/// Returns the engine's time in whole seconds (Marketo's filters and dates take whole seconds).
fn now_secs(ctx: &Context) -> DateTime<Utc> {
    let now = ctx.clock.now();
    now.with_nanosecond(0).unwrap_or(now)
}

/// Copies the new activities of one type to its CRM table: by the feed, by Bulk Activity
/// Extract, or not this cycle (the queue waits for its next scheduled export); see [`bulk`].
///
/// # Errors
///
/// A whole-call failure of Marketo, the CRM or the store, or cancellation.
async fn run_type(
    ctx: &Context,
    type_id: u32,
    plan: &Plan,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let q = queue(type_id);
    let policy = bulk::Policy::of(&ctx.settings);
    let state = bulk::State::load(ctx, type_id).await?;
    let stored = ctx.store.watermark(Side::Marketo, OBJECT, &q).await?;
    let now = now_secs(ctx);
    let from = stored
        .as_ref()
        .map_or_else(|| ctx.settings.bootstrap.low_watermark(OBJECT), |w| w.at);
    match policy.decide(&state, from, now) {
        bulk::Decision::Wait { due, expected } => {
            info!(activity_type = type_id, %due, expected, "activity queue waits for its scheduled bulk export");
            return Ok(());
        }
        bulk::Decision::Bulk { expected } => {
            let run = bulk::Run {
                ctx,
                type_id,
                plan,
                policy: &policy,
                state: &state,
                options,
                cancel,
            };
            return export_or_feed(&run, from, expected, summary).await;
        }
        bulk::Decision::Feed => {}
    }
    let stop = feed(ctx, type_id, plan, Some(&policy), summary, options, cancel).await?;
    let Some(expected) = stop else {
        return Ok(());
    };
    // The feed stopped early: more activities wait than the threshold.
    let state = bulk::State::load(ctx, type_id).await?;
    let from = ctx
        .store
        .watermark(Side::Marketo, OBJECT, &q)
        .await?
        .map_or(from, |w| w.at);
    let now = now_secs(ctx);
    if !policy.is_due(&state, now) {
        info!(
            activity_type = type_id,
            expected, "activity backlog waits for its scheduled bulk export"
        );
        return Ok(());
    }
    let run = bulk::Run {
        ctx,
        type_id,
        plan,
        policy: &policy,
        state: &state,
        options,
        cancel,
    };
    export_or_feed(&run, from, expected, summary).await
}

/// Runs the queue's Bulk Activity Extract from `from`; where it cannot run (see
/// [`bulk::Outcome::Fallback`]) the feed reads the queue this cycle, to the end (no switch back
/// to bulk), with the reason as a warning.
///
/// # Errors
///
/// A whole-call failure of Marketo, the CRM or the store, or cancellation.
async fn export_or_feed(
    run: &bulk::Run<'_>,
    from: DateTime<Utc>,
    expected: u64,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    if let bulk::Outcome::Fallback(reason) = run.export(from, expected, summary).await? {
        let q = queue(run.type_id);
        summary.warnings.push(format!("{q}: {reason}"));
        feed(
            run.ctx,
            run.type_id,
            run.plan,
            None,
            summary,
            run.options,
            run.cancel,
        )
        .await?;
    }
    Ok(())
}

/// Reads the queue's feed (see [`read_activity_queue`]) to the end, or, with a bulk `policy`,
/// until the activities expected since the watermark reach the threshold (see
/// [`bulk::Policy::switch_estimate`]); `stopped` is then that number.
///
/// # Errors
///
/// A Marketo or store failure, or cancellation.
async fn read_feed(
    ctx: &Context,
    q: &str,
    type_id: i64,
    policy: Option<&bulk::Policy>,
    cancel: &CancellationToken,
) -> Result<QueueRead, EngineError> {
    let now = now_secs(ctx);
    let mut stop = |read: u64, first: DateTime<Utc>, high: DateTime<Utc>| {
        policy.and_then(|p| p.switch_estimate(read, first, high, now))
    };
    read_activity_queue(ctx, OBJECT, q, type_id, &mut stop, cancel).await
}

/// Copies the queue's new activities read from the feed and commits them with the queue's
/// watermark (and its rate, for the bulk decision). Returns the activities expected since the
/// watermark when the read stopped early for the bulk path (`policy` given).
///
/// # Errors
///
/// A whole-call failure of Marketo, the CRM or the store, or cancellation.
async fn feed(
    ctx: &Context,
    type_id: u32,
    plan: &Plan,
    policy: Option<&bulk::Policy>,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<Option<u64>, EngineError> {
    let q = queue(type_id);
    let since = ctx
        .store
        .watermark(Side::Marketo, OBJECT, &q)
        .await?
        .map_or_else(|| ctx.settings.bootstrap.low_watermark(OBJECT), |w| w.at);
    let read = read_feed(ctx, &q, i64::from(type_id), policy, cancel).await?;
    let now = now_secs(ctx);
    let count = read.activities.len() as u64;
    let state = bulk::State::load(ctx, type_id).await?.after_feed(
        count,
        since,
        (read.first, read.watermark.at),
        read.stopped.is_some(),
        now,
    );
    let mut commit = StepCommit {
        watermarks: vec![read.watermark, state.watermark(type_id, now)],
        ..StepCommit::default()
    };
    let previous = due(ctx, plan).await?;
    copy(
        ctx,
        plan,
        read.activities,
        &Copy {
            previous: &previous,
            retries: true,
            options,
            cancel,
        },
        &mut commit,
        summary,
    )
    .await?;
    if options.dry_run {
        if let Some(expected) = read.stopped {
            summary.warnings.push(format!(
                "{q}: about {expected} activities would be read by Bulk Activity Extract (a dry run exports nothing)"
            ));
        }
        return Ok(None);
    }
    info!(
        activity_type = type_id,
        read = count,
        "activities copied from the feed"
    );
    ctx.store.commit(commit).await?;
    Ok(read.stopped)
}

/// The open ledger entries of the queue's link object due for a retry, by GUID.
///
/// # Errors
///
/// A store failure.
async fn due(ctx: &Context, plan: &Plan) -> Result<BTreeMap<String, SyncError>, EngineError> {
    Ok(
        due_errors(ctx, plan.object.as_str(), Direction::MarketoToCrm)
            .await?
            .into_iter()
            .map(|e| (e.record_key.clone(), e))
            .collect(),
    )
}

/// How [`copy`] runs.
struct Copy<'a> {
    /// The due ledger entries by GUID (see [`due`]).
    previous: &'a BTreeMap<String, SyncError>,
    /// Whether the rows of due entries not read again are retried with these activities (once
    /// per cycle).
    retries: bool,
    options: &'a CycleOptions,
    cancel: &'a CancellationToken,
}

/// Copies activities read from the feed or an export to the CRM: skips those linked already,
/// maps the others (an activity the mapping cannot read goes to the ledger), writes them keyed
/// by the GUID column and puts their links and ledger entries into `commit`. On a dry run the
/// writes become plan rows.
///
/// # Errors
///
/// A whole-call failure of the CRM or the store, or cancellation.
async fn copy(
    ctx: &Context,
    plan: &Plan,
    activities: BTreeMap<String, Activity>,
    how: &Copy<'_>,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let link_object = plan.object.as_str();
    let direction = Direction::MarketoToCrm;
    summary.counts_mut(link_object, direction).read += activities.len() as u64;
    let seen = copied(ctx, link_object, &activities).await?;
    let fresh: Vec<&Activity> = activities
        .iter()
        .filter(|(k, _)| !seen.contains(*k))
        .map(|(_, a)| a)
        .collect();
    summary.counts_mut(link_object, direction).skipped += (activities.len() - fresh.len()) as u64;
    let mut rows = rows_of(ctx, plan, &fresh, commit, summary).await?;
    if how.retries {
        add_retries(how.previous, &seen, &mut rows);
    }
    if how.options.dry_run {
        for (guid, _, row) in &rows {
            summary.planned(
                PlannedChange::new(link_object, direction, PlannedAction::Create)
                    .source(guid.clone())
                    .fields(&super::to_record(row), None, &[]),
            );
        }
        return Ok(());
    }
    let target = super::RowTarget {
        object: link_object,
        direction,
        previous: how.previous,
    };
    super::create_linked_rows(ctx, plan, &target, rows, commit, summary, how.cancel).await
}

/// Returns the GUIDs of the activities copied already (linked).
///
/// # Errors
///
/// A store failure.
async fn copied(
    ctx: &Context,
    link_object: &str,
    activities: &BTreeMap<String, Activity>,
) -> Result<BTreeSet<String>, EngineError> {
    let keys: Vec<String> = activities.keys().cloned().collect();
    let mut seen = BTreeSet::new();
    for chunk in keys.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx.store.links_by_marketo_keys(link_object, chunk).await? {
            seen.insert(l.marketo_key);
        }
    }
    Ok(seen)
}

/// Returns the CRM row of each fresh activity, linked to its lead's CRM contact; an activity
/// the mapping cannot read goes to the ledger.
///
/// # Errors
///
/// A store failure.
async fn rows_of(
    ctx: &Context,
    plan: &Plan,
    fresh: &[&Activity],
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
) -> Result<Vec<Row>, EngineError> {
    let (object, direction) = (plan.object.as_str(), Direction::MarketoToCrm);
    let lead_keys: Vec<String> = fresh
        .iter()
        .map(|a| a.lead_id.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let contacts = contacts_by_lead(ctx, &lead_keys).await?;
    let mut rows: Vec<Row> = Vec::new();
    for a in fresh {
        let guid = a.key().unwrap_or_default();
        let raw = raw_fields(a, contacts.get(&a.lead_id.to_string()).map(String::as_str));
        match plan.to_canonical(Side::Marketo, &raw) {
            Ok(canonical) => {
                let mut row = plan.render(Side::Crm, &canonical);
                row.insert(plan.crm_marketo_id.clone(), Value::Text(guid.clone()));
                rows.push((guid, canonical, row));
            }
            Err(e) => {
                super::record_invalid_value(
                    ctx, commit, summary, object, direction, &guid, &e, None,
                );
            }
        }
    }
    Ok(rows)
}

/// Adds the rows the CRM refused earlier and now due for a retry (their payload is the
/// rendered row), unless read again now or linked since.
fn add_retries(
    previous: &BTreeMap<String, SyncError>,
    seen: &BTreeSet<String>,
    rows: &mut Vec<Row>,
) {
    for e in previous.values() {
        let fresh_again = rows.iter().any(|(g, _, _)| *g == e.record_key);
        if let (false, Some(payload)) = (fresh_again, e.payload.as_object())
            && !payload.is_empty()
            && !seen.contains(&e.record_key)
        {
            let row = from_record(payload);
            rows.push((e.record_key.clone(), row.clone(), row));
        }
    }
}

/// Returns `at` moved back by `secs`, never before `floor`.
fn back(at: DateTime<Utc>, secs: u64, floor: DateTime<Utc>) -> DateTime<Utc> {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    at.checked_sub_signed(ChronoDuration::seconds(secs))
        .unwrap_or(floor)
        .max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raw_fields_carry_attributes_and_the_linked_contact() {
        let a: Activity = serde_json::from_value(json!({
            "id": 5, "marketoGUID": "g-5", "leadId": 9, "activityDate": "2030-01-01T00:00:00Z",
            "activityTypeId": 1, "primaryAttributeValue": "home",
            "attributes": [{"name": "Webpage URL", "value": "/home"}]
        }))
        .unwrap();
        let raw = raw_fields(&a, Some("11"));
        assert_eq!(raw["marketoGUID"], Value::Text("g-5".into()));
        assert_eq!(raw["Webpage URL"], Value::Text("/home".into()));
        assert_eq!(raw[CRM_CONTACT_FIELD], Value::Text("11".into()));
        assert_eq!(raw_fields(&a, None)[CRM_CONTACT_FIELD], Value::Null);
    }
}
