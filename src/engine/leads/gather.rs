//! The lead gather: Marketo's New Lead / Change Data Value / Merge Leads activities from a
//! persisted paging token (the changed leads read by id, 300 a call, or by a bulk export above
//! the threshold), deleted leads from their own token, the CRM's changes from its cursor, and
//! the records of due ledger retries.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::records::{CRec, MLead, c_rec, lead_read_fields, m_lead, m_lead_fields};
use super::step::Step;
use super::{LEAD_ACTIVITY_TYPES, LINK_OBJECT, QUEUE_ACTIVITIES, QUEUE_DELETED};
use crate::crm::{Change, ChangeKind, Cursor, DeleteHow};
use crate::engine::cycle::Tunables;
use crate::engine::objects::feed_riders;
use crate::engine::{Context, CycleSummary, EngineError};
use crate::mapping::Plan;
use crate::marketo::activities::Activity;
use crate::marketo::endpoint::{EndpointSettings, MarketoEndpoint};
use crate::marketo::leads::MAX_BATCH;
use crate::model::{Fields, Side};
use crate::store::{Direction, JobDirection, Watermark};

const NEW_LEAD: i64 = 12;
const CHANGE_DATA_VALUE: i64 = 13;
const MERGE_LEADS: i64 = 32;
/// The CRM queue of the lead mapping's object.
const QUEUE_CRM: &str = "default";

/// The stored watermarks the lead gather starts from.
pub(super) struct Marks {
    pub activities: Option<Watermark>,
    pub deleted: Option<Watermark>,
    pub crm: Option<Watermark>,
}

impl Marks {
    /// Reads the step's stored watermarks.
    pub(super) async fn read(ctx: &Context, plan: &Plan) -> Result<Self, EngineError> {
        let store = &ctx.store;
        Ok(Marks {
            activities: store
                .watermark(Side::Marketo, LINK_OBJECT, QUEUE_ACTIVITIES)
                .await?,
            deleted: store
                .watermark(Side::Marketo, LINK_OBJECT, QUEUE_DELETED)
                .await?,
            crm: store
                .watermark(Side::Crm, &plan.crm_object, QUEUE_CRM)
                .await?,
        })
    }
}

/// What the Marketo gather found.
#[derive(Debug, Default)]
pub(super) struct MarketoChanges {
    pub changed: BTreeSet<i64>,
    pub merges: Vec<(i64, Vec<i64>)>,
    pub token: Option<String>,
    pub last_at: Option<DateTime<Utc>>,
    pub bulk: bool,
    /// The activities of the feed riders (types other steps consume, see
    /// [`crate::engine::objects::feed_riders`]).
    pub riders: Vec<Activity>,
}

/// Returns the paging token stored in `wm`, or a new one from the leads' low watermark (else
/// now minus the overlap).
async fn start_token(ctx: &Context, wm: Option<&Watermark>) -> Result<String, EngineError> {
    let stored = wm
        .and_then(|w| w.cursor.as_ref())
        .and_then(|c| c.get("token"))
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    if let Some(t) = stored {
        return Ok(t);
    }
    let overlap = chrono::Duration::from_std(ctx.settings.sync.overlap())
        .unwrap_or_else(|_| chrono::Duration::minutes(5));
    let since = match ctx.settings.bootstrap.low_watermarks.get("leads") {
        Some(low) => *low,
        None => ctx.clock.now() - overlap,
    };
    Ok(ctx.marketo.paging_token(since).await?)
}

/// Returns the merge of a Merge Leads activity: (winner, losers), none without a loser.
fn merge_of(a: &Activity) -> Option<(i64, Vec<i64>)> {
    let losers: Vec<i64> = merge_ids(a.attribute("Merge IDs"))
        .into_iter()
        .filter(|l| *l != a.lead_id)
        .collect();
    (!losers.is_empty()).then_some((a.lead_id, losers))
}

/// Reads the activity queue from the persisted token: changed lead ids and merges. Above
/// `bulk_threshold` changed leads it stops collecting ids (the leads come from a bulk export)
/// and reads only the merges to the end.
async fn gather_activities(
    ctx: &Context,
    wm: Option<&Watermark>,
    bulk_threshold: Option<usize>,
    cancel: &CancellationToken,
) -> Result<MarketoChanges, EngineError> {
    let mut out = MarketoChanges::default();
    let mut token = start_token(ctx, wm).await?;
    let riders = feed_riders::type_ids(ctx);
    let types: Vec<i64> = LEAD_ACTIVITY_TYPES.iter().chain(&riders).copied().collect();
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx
            .marketo
            .get_activities(&token, &types, &Default::default())
            .await?;
        out.riders.extend(
            page.records
                .iter()
                .filter(|a| riders.contains(&a.activity_type_id))
                .cloned(),
        );
        for a in &page.records {
            out.last_at = Some(
                out.last_at
                    .map_or(a.activity_date, |l| l.max(a.activity_date)),
            );
            match a.activity_type_id {
                NEW_LEAD | CHANGE_DATA_VALUE => {
                    out.changed.insert(a.lead_id);
                }
                MERGE_LEADS => {
                    out.merges.extend(merge_of(a));
                    out.changed.insert(a.lead_id);
                }
                _ => {}
            }
        }
        if let Some(next) = page.next_page_token {
            token = next;
        }
        if !page.more_result {
            break;
        }
        if bulk_threshold.is_some_and(|t| out.changed.len() >= t) {
            out.bulk = true;
            read_merges(ctx, &mut token, &mut out, &riders, cancel).await?;
            break;
        }
    }
    out.token = Some(token);
    Ok(out)
}

/// Reads only the Merge Leads activities (and the feed riders') from `token` to the end of the
/// queue.
async fn read_merges(
    ctx: &Context,
    token: &mut String,
    out: &mut MarketoChanges,
    riders: &[i64],
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let types: Vec<i64> = std::iter::once(MERGE_LEADS)
        .chain(riders.iter().copied())
        .collect();
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx
            .marketo
            .get_activities(token, &types, &Default::default())
            .await?;
        out.merges.extend(page.records.iter().filter_map(merge_of));
        out.riders.extend(
            page.records
                .iter()
                .filter(|a| riders.contains(&a.activity_type_id))
                .cloned(),
        );
        if let Some(next) = page.next_page_token {
            *token = next;
        }
        if !page.more_result {
            return Ok(());
        }
    }
}

/// Returns the lead ids of a Merge Leads activity's `Merge IDs` attribute.
fn merge_ids(v: Option<&serde_json::Value>) -> Vec<i64> {
    match v {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| {
                i.as_i64()
                    .or_else(|| i.as_str().and_then(|s| s.trim().parse().ok()))
            })
            .collect(),
        Some(serde_json::Value::String(s)) => {
            s.split(',').filter_map(|p| p.trim().parse().ok()).collect()
        }
        Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Returns the activities of the Marketo gather and, above the bulk threshold (or when an
/// export job of the leads is unfinished), the changed leads read by bulk export. An instance
/// without the export's `updatedAt` filter (1035), or a paused export quota, reads the rest of
/// the activity queue for lead ids instead, with a warning.
pub(super) async fn marketo(
    step: &Step<'_>,
    tunables: &Tunables,
    stored: Option<&Watermark>,
    summary: &mut CycleSummary,
) -> Result<(MarketoChanges, Option<Vec<MLead>>), EngineError> {
    let (ctx, cancel) = (step.ctx, &step.cancel);
    let now = ctx.clock.now();
    let resumed = ctx
        .store
        .unfinished_jobs(JobDirection::Export)
        .await?
        .into_iter()
        .any(|j| j.kind == "leads" && j.object == LINK_OBJECT);
    let threshold = (!step.dry_run).then_some(tunables.bulk_extract_threshold);
    let mut changes = gather_activities(ctx, stored, threshold, cancel).await?;
    if !changes.bulk && !resumed {
        return Ok((changes, None));
    }
    let since = stored.map_or_else(
        || {
            ctx.settings
                .bootstrap
                .low_watermarks
                .get("leads")
                .copied()
                .unwrap_or(now - chrono::Duration::days(1))
        },
        |w| w.at,
    ) - chrono::Duration::from_std(ctx.settings.sync.overlap())
        .unwrap_or_else(|_| chrono::Duration::minutes(5));
    // Marketo times are whole seconds: the window ends after the current second.
    let until = changes.last_at.map_or(now, |l| l.max(now)) + chrono::Duration::seconds(1);
    let e = match bulk_extract(ctx, tunables, step.plan, (since, until), summary, cancel).await {
        Ok(leads) => return Ok((changes, Some(leads))),
        Err(EngineError::Marketo(e)) if export_unavailable(&e) => e,
        Err(e) => return Err(e),
    };
    summary.warnings.push(
        if matches!(e, crate::marketo::Error::UnsupportedFilter { .. }) {
            "this instance has no updatedAt filter on bulk lead export (1035): \
             changed leads are read by id instead"
                .to_owned()
        } else {
            format!(
                "bulk export paused until the Marketo day turns ({e}): \
                 changed leads are read by id instead"
            )
        },
    );
    // Read the rest of the activity queue for the lead ids.
    let all = gather_activities(ctx, stored, None, cancel).await?;
    changes.changed.extend(all.changed);
    changes.merges = all.merges;
    changes.token = all.token;
    changes.last_at = all.last_at.or(changes.last_at);
    Ok((changes, None))
}

/// Returns true when the bulk export cannot serve this cycle (no `updatedAt` filter, or the
/// export quota paused until the Marketo day turns).
fn export_unavailable(e: &crate::marketo::Error) -> bool {
    matches!(e, crate::marketo::Error::UnsupportedFilter { .. })
        || e.disposition() == crate::marketo::Disposition::PauseUntilDayTurns
}

/// Reads the deleted leads from the persisted token; returns their ids and the next token.
pub(super) async fn deleted(
    ctx: &Context,
    wm: Option<&Watermark>,
    cancel: &CancellationToken,
) -> Result<(BTreeSet<i64>, String), EngineError> {
    let mut token = start_token(ctx, wm).await?;
    let mut ids = BTreeSet::new();
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx.marketo.get_deleted_leads(&token).await?;
        for a in &page.records {
            ids.insert(a.primary_attribute_value_id.unwrap_or(a.lead_id));
        }
        if let Some(next) = page.next_page_token {
            token = next;
        }
        if !page.more_result {
            break;
        }
    }
    Ok((ids, token))
}

/// Reads leads by id, 300 a call.
pub(super) async fn fetch_leads(
    ctx: &Context,
    plan: &Plan,
    ids: &[i64],
    summary: &mut CycleSummary,
) -> Result<Vec<MLead>, EngineError> {
    let fields = lead_read_fields(plan);
    let mut out = Vec::new();
    for chunk in ids.chunks(MAX_BATCH) {
        let values: Vec<String> = chunk.iter().map(i64::to_string).collect();
        let mut token: Option<String> = None;
        loop {
            let page = ctx
                .marketo
                .get_leads("id", &values, &fields, token.as_deref())
                .await?;
            for raw in &page.records {
                match m_lead(plan, raw) {
                    Some(Ok(l)) => out.push(l),
                    Some(Err(e)) => summary.warnings.push(format!("marketo lead skipped: {e}")),
                    None => {}
                }
            }
            match (page.more_result, page.next_page_token) {
                (true, Some(t)) => token = Some(t),
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Reads leads whose `filter` field equals one of `values`, 300 values a call.
pub(super) async fn find_leads(
    ctx: &Context,
    plan: &Plan,
    filter: &str,
    values: &[String],
) -> Result<Vec<MLead>, EngineError> {
    let fields = lead_read_fields(plan);
    let mut out = Vec::new();
    for chunk in values.chunks(MAX_BATCH) {
        let page = ctx.marketo.get_leads(filter, chunk, &fields, None).await?;
        out.extend(page.records.iter().filter_map(|r| m_lead(plan, r)?.ok()));
    }
    Ok(out)
}

/// Returns the changed leads to pair: the bulk export's (with the activity ids it missed, read
/// by id) or the activity ids read by id; deleted and merged-away leads left out.
pub(super) async fn changed_leads(
    ctx: &Context,
    plan: &Plan,
    changed: &BTreeSet<i64>,
    bulk: Option<Vec<MLead>>,
    gone: &BTreeSet<i64>,
    summary: &mut CycleSummary,
) -> Result<Vec<MLead>, EngineError> {
    let ids: Vec<i64> = changed
        .iter()
        .copied()
        .filter(|id| !gone.contains(id))
        .collect();
    let Some(mut leads) = bulk else {
        return fetch_leads(ctx, plan, &ids, summary).await;
    };
    // Leads changed after the export's end are in the activity ids only.
    let seen: BTreeSet<i64> = leads.iter().map(|l| l.id).collect();
    let missing: Vec<i64> = ids.iter().copied().filter(|i| !seen.contains(i)).collect();
    if missing.len() <= MAX_BATCH * 2 {
        leads.extend(fetch_leads(ctx, plan, &missing, summary).await?);
    }
    leads.retain(|l| !gone.contains(&l.id));
    Ok(leads)
}

/// Reads the leads updated in `[since, until]` through the endpoint's bulk export (windows of
/// at most 31 days, resuming an unfinished job), streaming each file into lead records.
async fn bulk_extract(
    ctx: &Context,
    tunables: &Tunables,
    plan: &Plan,
    range: (DateTime<Utc>, DateTime<Utc>),
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<Vec<MLead>, EngineError> {
    let endpoint = ctx.endpoint(EndpointSettings {
        poll: tunables.export_poll,
        ..EndpointSettings::default()
    });
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut sink = |row: Result<Fields, String>| match row {
        Ok(fields) => match m_lead_fields(plan, &fields) {
            Some(Ok(l)) => out.push(l),
            Some(Err(e)) => warnings.push(format!("exported lead skipped: {e}")),
            None => {}
        },
        Err(e) => warnings.push(format!("export row skipped: {e}")),
    };
    let bytes = endpoint
        .export_changed_leads(
            &lead_read_fields(plan),
            range,
            LINK_OBJECT,
            &ctx.journal(),
            &mut sink,
            cancel,
        )
        .await?;
    summary.bulk_bytes += bytes;
    summary.warnings.append(&mut warnings);
    // The newest read of a lead wins.
    out.sort_by_key(|l| (l.id, l.at));
    out.dedup_by(|b, a| {
        if a.id == b.id {
            *a = b.clone();
            true
        } else {
            false
        }
    });
    Ok(out)
}

/// Where a CRM change feed was read to: the cursor after its last page and its newest change.
pub(super) struct FeedRead {
    pub cursor: Option<Cursor>,
    pub last: Option<DateTime<Utc>>,
}

/// Reads a CRM object's change feed from the cursor stored in `from` to its end, `page`
/// changes a call, handing each change to `each` in order.
///
/// # Errors
///
/// A CRM failure ([`EngineError::Crm`]) or cancellation.
pub(super) async fn read_feed(
    ctx: &Context,
    crm_object: &str,
    from: Option<&Watermark>,
    page: usize,
    cancel: &CancellationToken,
    mut each: impl FnMut(Change),
) -> Result<FeedRead, EngineError> {
    let mut cursor: Option<Cursor> = from.and_then(|w| w.cursor.clone()).map(Cursor);
    let mut last = from.map(|w| w.at);
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let read = ctx.crm.changes(crm_object, cursor.as_ref(), page).await?;
        for ch in read.changes {
            last = Some(last.map_or(ch.modified_at, |l| l.max(ch.modified_at)));
            each(ch);
        }
        cursor = Some(read.next);
        if !read.more {
            return Ok(FeedRead { cursor, last });
        }
    }
}

/// The CRM changes of the lead mapping's object read this cycle.
pub(super) struct CrmChanges {
    /// The created or updated records by id.
    pub records: BTreeMap<String, CRec>,
    /// The deleted or merged-away records, in feed order.
    pub tombstones: Vec<(String, DeleteHow)>,
    /// Where the feed was read to.
    pub read: FeedRead,
}

/// Reads the CRM changes of the lead mapping's object from its stored cursor.
pub(super) async fn crm(
    ctx: &Context,
    plan: &Plan,
    stored: Option<&Watermark>,
    page: usize,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<CrmChanges, EngineError> {
    let mut records: BTreeMap<String, CRec> = BTreeMap::new();
    let mut tombstones: Vec<(String, DeleteHow)> = Vec::new();
    let read = read_feed(ctx, &plan.crm_object, stored, page, cancel, |ch| {
        match ch.kind {
            ChangeKind::Upserted { fields } => match c_rec(plan, &ch.id, ch.modified_at, &fields) {
                Ok(r) => {
                    records.insert(ch.id.clone(), r);
                }
                Err(e) => summary.warnings.push(format!("crm record skipped: {e}")),
            },
            ChangeKind::Deleted(t) => {
                records.remove(&ch.id);
                tombstones.push((ch.id, t.how));
            }
        }
    })
    .await?;
    Ok(CrmChanges {
        records,
        tombstones,
        read,
    })
}

/// Reads the CRM records `keys` that `cs` does not hold yet into it.
pub(super) async fn read_crm_into(
    ctx: &Context,
    plan: &Plan,
    keys: Vec<String>,
    cs: &mut BTreeMap<String, CRec>,
) -> Result<(), EngineError> {
    let unread: Vec<String> = keys.into_iter().filter(|c| !cs.contains_key(c)).collect();
    if unread.is_empty() {
        return Ok(());
    }
    for r in ctx.crm.get(&plan.crm_object, &unread).await? {
        if let Ok(c) = c_rec(plan, &r.id, r.modified_at, &r.fields) {
            cs.insert(r.id.clone(), c);
        }
    }
    Ok(())
}

/// Adds the records of the ledger entries due for a retry: a lead id to the changed leads, a
/// CRM record (read again) to the CRM records.
pub(super) async fn add_due(
    step: &Step<'_>,
    changed: &mut BTreeSet<i64>,
    cs: &mut BTreeMap<String, CRec>,
) -> Result<(), EngineError> {
    let mut crm_keys = Vec::new();
    for key in &step.due {
        match key.direction {
            Direction::MarketoToCrm => {
                if let Ok(id) = key.record_key.parse::<i64>() {
                    changed.insert(id);
                }
            }
            Direction::CrmToMarketo => crm_keys.push(key.record_key.clone()),
        }
    }
    read_crm_into(step.ctx, step.plan, crm_keys, cs).await
}

/// Returns the watermarks the step commits: the activity and deleted-lead tokens and the CRM
/// cursor, at `at` where nothing newer was read.
pub(super) fn watermarks(
    plan: &Plan,
    marks: &Marks,
    changes: MarketoChanges,
    del_token: String,
    crm: FeedRead,
    at: DateTime<Utc>,
) -> Vec<Watermark> {
    let mark = |system, object: &str, queue: &str, at, cursor| Watermark {
        system,
        object: object.to_owned(),
        queue: queue.to_owned(),
        at,
        tie: None,
        cursor,
    };
    let activities_at = changes
        .last_at
        .unwrap_or(at)
        .max(marks.activities.as_ref().map_or(at, |w| w.at));
    let token = changes.token.map(|t| json!({ "token": t }));
    let deleted_at = marks.deleted.as_ref().map_or(at, |w| w.at.max(at));
    vec![
        mark(
            Side::Marketo,
            LINK_OBJECT,
            QUEUE_ACTIVITIES,
            activities_at,
            token,
        ),
        mark(
            Side::Marketo,
            LINK_OBJECT,
            QUEUE_DELETED,
            deleted_at,
            Some(json!({ "token": del_token })),
        ),
        mark(
            Side::Crm,
            &plan.crm_object,
            QUEUE_CRM,
            crm.last.unwrap_or(at),
            crm.cursor.map(|c| c.0),
        ),
    ]
}
