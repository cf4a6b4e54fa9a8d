//! Leads both ways: Marketo leads <-> the CRM object of the lead mapping.
//!
//! Gather reads Marketo's New Lead / Change Data Value / Merge Leads activities from a persisted
//! paging token and fetches the changed leads by id (300 a call), deleted leads from their own
//! token, and the CRM's changes from its cursor. Identity links pairs by store link, then by
//! the keys each side holds of the other, then by the match fields; reconcile is three-way
//! against the link's base; apply writes Marketo first, then the CRM; one commit per step.
//!
//! Company-type fields of a lead mapping (`PlanField::routed_to_company`) of a lead linked to a
//! company (`externalCompanyId`) are written to that company with Sync Companies, since Sync
//! Leads refuses them (1021); leads without a company get them through Sync Leads.
//!
//! Lead conversion (`keys.crm_lead_object`, e.g. the CRM's `leads`): the step reads that object's
//! changes from its own cursor (queue `conversions`) before the CRM changes of the mapping's
//! object. A CRM lead holding a Marketo lead id that got a converted-contact id moves the Marketo
//! lead to that contact (Marketo id into the contact, contact id and the contact's account as
//! `externalCompanyId` into the lead; the pairing then links them), or, when the contact already
//! has its own Marketo lead, merges the two leads (winner = the contact's) and tombstones the
//! converted lead's link as merged. A Marketo lead held by an unconverted CRM lead gets no
//! contact of its own. CRM leads themselves are not synced field by field.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::cycle::Tunables;
use super::ledger::{self, Failure, RetryPolicy, Subject};
use super::reconcile::{FieldRule, Reconciled, SideState, reconcile};
use super::summary::{PlannedAction, PlannedChange, json_fields};
use super::{Context, CycleOptions, CycleSummary, EngineError, OnDemandOutcome};
use crate::config::DeletePolicy;
use crate::crm::{ChangeKind, Cursor, DeleteHow, Refusal, RefusalReason, WriteResult};
use crate::mapping::Plan;
use crate::marketo::endpoint::{
    CompanyLink, EndpointSettings, LeadKey, LeadOutcome, LeadWrite, MarketoEndpoint, WriteMode,
};
use crate::marketo::model::parse_marketo_datetime;
use crate::marketo::{Record, RefusalKind, SyncAction};
use crate::model::{Fields, Side, Value, fields_hash};
use crate::store::{
    Direction, ErrorKey, ErrorStatus, JobDirection, Link, StagedStore, StepCommit, SyncError,
    Tombstone, TombstoneKind, Watermark,
};

/// The activity types the lead gather polls: New Lead, Change Data Value, Merge Leads.
pub const LEAD_ACTIVITY_TYPES: [i64; 3] = [12, 13, 32];
const NEW_LEAD: i64 = 12;
const CHANGE_DATA_VALUE: i64 = 13;
const MERGE_LEADS: i64 = 32;
const QUEUE_ACTIVITIES: &str = "activities";
const QUEUE_DELETED: &str = "deleted";
const QUEUE_CONVERSIONS: &str = "conversions";
/// The store object name of lead links (the `sync.objects` name of the lead mapping).
pub const LINK_OBJECT: &str = "leads";

/// A Marketo lead as read this cycle.
#[derive(Debug, Clone)]
struct MLead {
    id: i64,
    canon: Fields,
    at: Option<DateTime<Utc>>,
    crm_key: Option<String>,
    external_company_id: Option<String>,
}

/// A CRM record as read this cycle.
#[derive(Debug, Clone)]
struct CRec {
    id: String,
    canon: Fields,
    at: DateTime<Utc>,
    marketo_key: Option<String>,
}

#[derive(Debug, Default)]
struct Pair {
    m_id: Option<i64>,
    c_id: Option<String>,
    link: Option<Link>,
    m: Option<MLead>,
    c: Option<CRec>,
    failed: bool,
}

/// What the Marketo gather found.
#[derive(Debug, Default)]
struct MarketoChanges {
    changed: BTreeSet<i64>,
    merges: Vec<(i64, Vec<i64>)>,
    token: Option<String>,
    last_at: Option<DateTime<Utc>>,
    bulk: bool,
}

fn text_of(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.trim().is_empty() => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn value_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        other => {
            let t = other.to_text();
            (!t.trim().is_empty()).then_some(t)
        }
    }
}

fn rules(plan: &Plan) -> Vec<FieldRule> {
    plan.enabled_fields()
        .map(|f| FieldRule {
            name: f.name.clone(),
            direction: f.direction,
            policy: f.policy,
        })
        .collect()
}

fn lead_read_fields(plan: &Plan) -> Vec<String> {
    let mut fields = plan.read_fields(Side::Marketo);
    for extra in [
        "id",
        "updatedAt",
        "externalCompanyId",
        plan.marketo_crm_key.as_str(),
    ] {
        if !fields.iter().any(|f| f == extra) {
            fields.push(extra.to_owned());
        }
    }
    fields
}

fn m_lead(plan: &Plan, raw: &Record) -> Option<Result<MLead, String>> {
    let fields: Fields = raw
        .iter()
        .map(|(k, v)| (k.clone(), Value::from_json(v)))
        .collect();
    m_lead_fields(plan, &fields)
}

fn m_lead_fields(plan: &Plan, fields: &Fields) -> Option<Result<MLead, String>> {
    let id = match fields.get("id")? {
        Value::Int(i) => *i,
        other => other.to_text().trim().parse().ok()?,
    };
    Some(
        plan.to_canonical(Side::Marketo, fields)
            .map(|canon| MLead {
                id,
                canon,
                at: match fields.get("updatedAt") {
                    Some(Value::DateTime(t)) => Some(*t),
                    Some(v) => parse_marketo_datetime(&v.to_text()),
                    None => None,
                },
                crm_key: value_text(fields.get(&plan.marketo_crm_key)),
                external_company_id: value_text(fields.get("externalCompanyId")),
            })
            .map_err(|e| e.to_string()),
    )
}

fn c_rec(plan: &Plan, id: &str, at: DateTime<Utc>, fields: &Fields) -> Result<CRec, String> {
    plan.to_canonical(Side::Crm, fields)
        .map(|canon| CRec {
            id: id.to_owned(),
            canon,
            at,
            marketo_key: value_text(fields.get(&plan.crm_marketo_id)),
        })
        .map_err(|e| e.to_string())
}

/// Reads the activity queue from the persisted token: changed lead ids and merges.
async fn gather_activities(
    ctx: &Context,
    wm: Option<&Watermark>,
    bulk_threshold: Option<usize>,
    cancel: &CancellationToken,
) -> Result<MarketoChanges, EngineError> {
    let mut out = MarketoChanges::default();
    let stored = wm
        .and_then(|w| w.cursor.as_ref())
        .and_then(|c| c.get("token"))
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    let mut token = match stored {
        Some(t) => t,
        None => {
            let overlap = chrono::Duration::from_std(ctx.settings.sync.overlap())
                .unwrap_or_else(|_| chrono::Duration::minutes(5));
            let since = match ctx.settings.bootstrap.low_watermarks.get("leads") {
                Some(low) => *low,
                None => ctx.clock.now() - overlap,
            };
            ctx.marketo.paging_token(since).await?
        }
    };
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx
            .marketo
            .get_activities(&token, &LEAD_ACTIVITY_TYPES, &Default::default())
            .await?;
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
                    let losers = merge_ids(a.attribute("Merge IDs"));
                    let losers: Vec<i64> = losers.into_iter().filter(|l| *l != a.lead_id).collect();
                    if !losers.is_empty() {
                        out.merges.push((a.lead_id, losers));
                    }
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
            // A large change set: the leads come from a bulk extract; only the merges are
            // still read here, paging the token to the end.
            out.bulk = true;
            loop {
                if cancel.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                let page = ctx
                    .marketo
                    .get_activities(&token, &[MERGE_LEADS], &Default::default())
                    .await?;
                for a in &page.records {
                    let losers: Vec<i64> = merge_ids(a.attribute("Merge IDs"))
                        .into_iter()
                        .filter(|l| *l != a.lead_id)
                        .collect();
                    if !losers.is_empty() {
                        out.merges.push((a.lead_id, losers));
                    }
                }
                if let Some(next) = page.next_page_token {
                    token = next;
                }
                if !page.more_result {
                    break;
                }
            }
            break;
        }
    }
    out.token = Some(token);
    Ok(out)
}

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

async fn gather_deleted(
    ctx: &Context,
    wm: Option<&Watermark>,
    cancel: &CancellationToken,
) -> Result<(BTreeSet<i64>, String), EngineError> {
    let stored = wm
        .and_then(|w| w.cursor.as_ref())
        .and_then(|c| c.get("token"))
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    let mut token = match stored {
        Some(t) => t,
        None => {
            let overlap = chrono::Duration::from_std(ctx.settings.sync.overlap())
                .unwrap_or_else(|_| chrono::Duration::minutes(5));
            let since = match ctx.settings.bootstrap.low_watermarks.get("leads") {
                Some(low) => *low,
                None => ctx.clock.now() - overlap,
            };
            ctx.marketo.paging_token(since).await?
        }
    };
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
async fn fetch_leads(
    ctx: &Context,
    plan: &Plan,
    ids: &[i64],
    summary: &mut CycleSummary,
) -> Result<Vec<MLead>, EngineError> {
    let fields = lead_read_fields(plan);
    let mut out = Vec::new();
    for chunk in ids.chunks(crate::marketo::leads::MAX_BATCH) {
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
async fn find_leads(
    ctx: &Context,
    plan: &Plan,
    filter: &str,
    values: &[String],
) -> Result<Vec<MLead>, EngineError> {
    let fields = lead_read_fields(plan);
    let mut out = Vec::new();
    for chunk in values.chunks(crate::marketo::leads::MAX_BATCH) {
        let page = ctx.marketo.get_leads(filter, chunk, &fields, None).await?;
        out.extend(page.records.iter().filter_map(|r| m_lead(plan, r)?.ok()));
    }
    Ok(out)
}

/// The step's accumulated store writes and the counters of one run.
struct Step<'a> {
    ctx: &'a Context,
    plan: &'a Plan,
    commit: StepCommit,
    dry_run: bool,
    plan_out: Vec<PlannedChange>,
    due: HashMap<ErrorKey, SyncError>,
    open: HashMap<ErrorKey, SyncError>,
    bulk_import_threshold: usize,
    poll: std::time::Duration,
    cancel: CancellationToken,
}

impl Step<'_> {
    fn now(&self) -> DateTime<Utc> {
        self.ctx.clock.now()
    }

    /// Records one refused lead in the ledger through [`ledger::entry`]: the open entry of the
    /// same key keeps its id and first sighting, and only a retryable failure is scheduled.
    fn error(
        &mut self,
        direction: Direction,
        record_key: String,
        other_key: Option<String>,
        payload: serde_json::Value,
        failure: Failure,
    ) {
        let key = ErrorKey {
            object: LINK_OBJECT.to_owned(),
            direction,
            record_key: record_key.clone(),
        };
        let previous = self.due.get(&key).or_else(|| self.open.get(&key));
        let entry = ledger::entry(
            &RetryPolicy::default(),
            self.now(),
            Subject {
                object: LINK_OBJECT,
                direction,
                record_key: &record_key,
                other_key,
                payload,
            },
            failure,
            previous,
        );
        self.commit.errors_upsert.push(entry);
    }

    fn link(&mut self, m_id: i64, c_id: &str, base: Fields) {
        let hash = fields_hash(&base);
        self.commit.links_upsert.push(Link {
            object: LINK_OBJECT.to_owned(),
            marketo_key: m_id.to_string(),
            crm_key: c_id.to_owned(),
            base,
            base_hash: hash,
            agreed_at: self.now(),
            tombstone: None,
        });
    }

    fn tombstone(&mut self, link: &Link, kind: TombstoneKind, side: Side) {
        let mut l = link.clone();
        l.tombstone = Some(Tombstone {
            kind,
            side,
            at: self.now(),
        });
        self.commit.links_upsert.push(l);
    }
}

fn object_name(plan: &Plan) -> String {
    plan.object.clone()
}

/// Runs the lead step of a cycle.
///
/// # Errors
///
/// Returns an error when a whole call fails (Marketo, the CRM or the store), or on cancel.
pub async fn run(
    outer: &Context,
    tunables: &Tunables,
    plan: &Plan,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    // One store commit per step (DESIGN section 4, Commit). The stages below (conversions,
    // merges, deletions, pairing) stage their store writes; the staged store's link reads see
    // them, so pairing never re-matches what a merge of this step linked; and the step's end
    // commits links, ledger, conflicts and watermarks in one transaction. No stage needs a
    // commit of its own for crash safety: every remote write of a stage is an idempotent
    // upsert, merge or delete that a re-run finds done (a merge or delete of a lead already
    // gone answers 1004, handled as done), and the CRM Marketo-id column a killed step wrote
    // is read back by `recovered_links` / `survivor_link_from_crm`. A step killed anywhere
    // before the commit therefore leaves the store as it found it and re-runs from the old
    // watermarks.
    let staged = Arc::new(StagedStore::new(outer.store.clone()));
    let ctx = &Context {
        store: staged.clone(),
        ..outer.clone()
    };
    let store = &ctx.store;
    let now = ctx.clock.now();
    let due: HashMap<ErrorKey, SyncError> = store
        .errors_due(now, 1_000)
        .await?
        .into_iter()
        .filter(|e| e.object == LINK_OBJECT)
        .map(|e| {
            (
                ErrorKey {
                    object: e.object.clone(),
                    direction: e.direction,
                    record_key: e.record_key.clone(),
                },
                e,
            )
        })
        .collect();
    let open = open_errors(ctx).await?;
    let mut step = Step {
        ctx,
        plan,
        commit: StepCommit::default(),
        dry_run: options.dry_run,
        plan_out: Vec::new(),
        due,
        open,
        bulk_import_threshold: tunables.bulk_import_threshold,
        poll: tunables.export_poll,
        cancel: cancel.clone(),
    };

    // Gather: Marketo activities, deleted leads, CRM changes.
    let act_wm = store
        .watermark(Side::Marketo, LINK_OBJECT, QUEUE_ACTIVITIES)
        .await?;
    let del_wm = store
        .watermark(Side::Marketo, LINK_OBJECT, QUEUE_DELETED)
        .await?;
    let crm_wm = store
        .watermark(Side::Crm, &plan.crm_object, "default")
        .await?;
    let resumed = store
        .unfinished_jobs(JobDirection::Export)
        .await?
        .into_iter()
        .any(|j| j.kind == "leads" && j.object == LINK_OBJECT);
    let bulk_allowed = !step.dry_run;
    let threshold = bulk_allowed.then_some(tunables.bulk_extract_threshold);
    let mut changes = gather_activities(ctx, act_wm.as_ref(), threshold, cancel).await?;
    let mut bulk_leads: Option<Vec<MLead>> = None;
    if changes.bulk || resumed {
        let since = act_wm.as_ref().map_or_else(
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
        match bulk_extract(ctx, tunables, plan, (since, until), summary, cancel).await {
            Ok(leads) => bulk_leads = Some(leads),
            Err(EngineError::Marketo(e))
                if matches!(e, crate::marketo::Error::UnsupportedFilter { .. })
                    || e.disposition() == crate::marketo::Disposition::PauseUntilDayTurns =>
            {
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
                let rest = Watermark {
                    system: Side::Marketo,
                    object: LINK_OBJECT.to_owned(),
                    queue: QUEUE_ACTIVITIES.to_owned(),
                    at: now,
                    tie: None,
                    cursor: act_wm.as_ref().and_then(|w| w.cursor.clone()),
                };
                let stored = act_wm.as_ref().map(|_| &rest);
                let all = gather_activities(ctx, stored, None, cancel).await?;
                changes.changed.extend(all.changed);
                changes.merges = all.merges;
                changes.token = all.token;
                changes.last_at = all.last_at.or(changes.last_at);
            }
            Err(e) => return Err(e),
        }
    }
    let (deleted, del_token) = gather_deleted(ctx, del_wm.as_ref(), cancel).await?;
    // CRM lead conversions first: the contacts they touch are then read as changed below.
    let (conversions_wm, converted_contacts) =
        apply_conversions(&mut step, tunables, summary, cancel).await?;

    let mut crm_cursor: Option<Cursor> = crm_wm.as_ref().and_then(|w| w.cursor.clone()).map(Cursor);
    let mut cs: BTreeMap<String, CRec> = BTreeMap::new();
    let mut crm_tombstones: Vec<(String, DeleteHow)> = Vec::new();
    let mut crm_last = crm_wm.as_ref().map(|w| w.at);
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx
            .crm
            .changes(&plan.crm_object, crm_cursor.as_ref(), tunables.crm_page)
            .await?;
        for ch in page.changes {
            crm_last = Some(crm_last.map_or(ch.modified_at, |l| l.max(ch.modified_at)));
            match ch.kind {
                ChangeKind::Upserted { fields } => {
                    match c_rec(plan, &ch.id, ch.modified_at, &fields) {
                        Ok(r) => {
                            cs.insert(ch.id.clone(), r);
                        }
                        Err(e) => summary.warnings.push(format!("crm record skipped: {e}")),
                    }
                }
                ChangeKind::Deleted(t) => {
                    cs.remove(&ch.id);
                    crm_tombstones.push((ch.id, t.how));
                }
            }
        }
        let more = page.more;
        crm_cursor = Some(page.next);
        if !more {
            break;
        }
    }

    // Contacts that took over a converted lead are paired this cycle (the change feed may show
    // their new Marketo id only later).
    read_crm_into(ctx, plan, converted_contacts, &mut cs).await?;

    // Records due for a retry are read again.
    for key in step.due.keys() {
        match key.direction {
            Direction::MarketoToCrm => {
                if let Ok(id) = key.record_key.parse::<i64>() {
                    changes.changed.insert(id);
                }
            }
            Direction::CrmToMarketo => {
                if !cs.contains_key(&key.record_key) {
                    for r in ctx
                        .crm
                        .get(&plan.crm_object, std::slice::from_ref(&key.record_key))
                        .await?
                    {
                        if let Ok(c) = c_rec(plan, &r.id, r.modified_at, &r.fields) {
                            cs.insert(r.id.clone(), c);
                        }
                    }
                }
            }
        }
    }

    let object = object_name(plan);
    // Merges first, so that the winners' links are in place before pairing.
    let merged_losers: BTreeSet<i64> = changes.merges.iter().flat_map(|(_, l)| l.clone()).collect();
    apply_merges(&mut step, &changes.merges, summary).await?;
    if !step.dry_run {
        staged.stage(std::mem::take(&mut step.commit));
    }
    // Marketo deletions.
    apply_marketo_deletes(&mut step, &deleted, &merged_losers, summary).await?;
    // CRM deletions.
    let repointed = apply_crm_deletes(&mut step, &crm_tombstones, summary).await?;
    // Both sides are written: the tombstones are staged before pairing reads the links.
    if !step.dry_run {
        staged.stage(std::mem::take(&mut step.commit));
    }
    // A merge survivor that took over the loser's lead is reconciled with it now.
    read_crm_into(ctx, plan, repointed, &mut cs).await?;

    let ids: Vec<i64> = changes
        .changed
        .iter()
        .copied()
        .filter(|id| !deleted.contains(id) && !merged_losers.contains(id))
        .collect();
    let leads = match bulk_leads {
        Some(mut leads) => {
            // Leads changed after the export's end are in the activity ids only.
            let seen: BTreeSet<i64> = leads.iter().map(|l| l.id).collect();
            let missing: Vec<i64> = ids.iter().copied().filter(|i| !seen.contains(i)).collect();
            if missing.len() <= crate::marketo::leads::MAX_BATCH * 2 {
                leads.extend(fetch_leads(ctx, plan, &missing, summary).await?);
            }
            leads.retain(|l| !deleted.contains(&l.id) && !merged_losers.contains(&l.id));
            leads
        }
        None => fetch_leads(ctx, plan, &ids, summary).await?,
    };
    summary.counts_mut(&object, Direction::MarketoToCrm).read += leads.len() as u64;
    summary.counts_mut(&object, Direction::CrmToMarketo).read += cs.len() as u64;

    let ms: BTreeMap<i64, MLead> = leads.into_iter().map(|l| (l.id, l)).collect();
    sync_pairs(&mut step, ms, cs, summary, cancel).await?;

    // Watermarks move with the step's commit.
    let at = ctx.clock.now();
    step.commit.watermarks.push(Watermark {
        system: Side::Marketo,
        object: LINK_OBJECT.to_owned(),
        queue: QUEUE_ACTIVITIES.to_owned(),
        at: changes
            .last_at
            .unwrap_or(at)
            .max(act_wm.as_ref().map_or(at, |w| w.at)),
        tie: None,
        cursor: changes.token.map(|t| json!({ "token": t })),
    });
    step.commit.watermarks.push(Watermark {
        system: Side::Marketo,
        object: LINK_OBJECT.to_owned(),
        queue: QUEUE_DELETED.to_owned(),
        at: del_wm.as_ref().map_or(at, |w| w.at.max(at)),
        tie: None,
        cursor: Some(json!({ "token": del_token })),
    });
    step.commit.watermarks.push(Watermark {
        system: Side::Crm,
        object: plan.crm_object.clone(),
        queue: "default".to_owned(),
        at: crm_last.unwrap_or(at),
        tie: None,
        cursor: crm_cursor.map(|c| c.0),
    });
    step.commit.watermarks.extend(conversions_wm);
    if step.dry_run {
        summary.plan.append(&mut step.plan_out);
        info!(object = %object, "lead step planned (dry run: nothing written or committed)");
    } else {
        staged.commit_staged(step.commit).await?;
        info!(object = %object, "lead step committed");
    }
    Ok(())
}

/// Reads the CRM records `keys` that `cs` does not hold yet into it.
async fn read_crm_into(
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

/// Syncs one lead to the CRM now (webhooks).
///
/// # Errors
///
/// As [`run`].
pub async fn sync_one(
    ctx: &Context,
    plan: &Plan,
    lead_id: i64,
    cancel: &CancellationToken,
) -> Result<OnDemandOutcome, EngineError> {
    let fields = lead_read_fields(plan);
    let Some(raw) = ctx.marketo.get_lead(lead_id, &fields).await? else {
        return Ok(OnDemandOutcome::NotFound);
    };
    let mut summary = CycleSummary::default();
    let lead = match m_lead(plan, &raw) {
        Some(Ok(l)) => l,
        Some(Err(e)) => return Err(EngineError::Mapping(e)),
        None => return Ok(OnDemandOutcome::NotFound),
    };
    let mut step = Step {
        ctx,
        plan,
        commit: StepCommit::default(),
        dry_run: false,
        plan_out: Vec::new(),
        due: HashMap::new(),
        open: open_errors(ctx).await?,
        bulk_import_threshold: usize::MAX,
        poll: std::time::Duration::from_secs(5),
        cancel: cancel.clone(),
    };
    let ms = BTreeMap::from([(lead.id, lead)]);
    sync_pairs(&mut step, ms, BTreeMap::new(), &mut summary, cancel).await?;
    ctx.store.commit(step.commit).await?;
    let c = summary
        .objects
        .get(&plan.object)
        .and_then(|d| d.get(&Direction::MarketoToCrm))
        .copied()
        .unwrap_or_default();
    Ok(if c.created + c.updated > 0 {
        OnDemandOutcome::Synced
    } else {
        OnDemandOutcome::Unchanged
    })
}

/// Returns the Marketo ids and CRM keys (from these links) of records whose partner left its
/// side under a delete or merge policy other than `ignore`, and that have no live link since.
fn retired(
    m_links: &[Link],
    c_links: &[Link],
    sync: &crate::config::SyncSettings,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let settled = |l: &Link, side: Side| {
        let Some(t) = &l.tombstone else { return false };
        if t.side != side {
            return false;
        }
        match (side, &t.kind) {
            // Marketo deleted or merged the lead; the CRM record followed the policy.
            (Side::Marketo, TombstoneKind::Deleted) => sync.lead_deletes != DeletePolicy::Ignore,
            (Side::Marketo, TombstoneKind::Merged { .. }) => {
                sync.lead_merges != DeletePolicy::Ignore
            }
            // The CRM deleted the record; the lead followed the policy.
            (Side::Crm, TombstoneKind::Deleted) => sync.lead_deletes == DeletePolicy::Delete,
            // The CRM merged the record; the lead was merged into the survivor's.
            (Side::Crm, TombstoneKind::Merged { .. }) => true,
        }
    };
    let live_m: BTreeSet<&str> = m_links
        .iter()
        .chain(c_links)
        .filter(|l| l.tombstone.is_none())
        .map(|l| l.marketo_key.as_str())
        .collect();
    let live_c: BTreeSet<&str> = m_links
        .iter()
        .chain(c_links)
        .filter(|l| l.tombstone.is_none())
        .map(|l| l.crm_key.as_str())
        .collect();
    let m = m_links
        .iter()
        .filter(|l| settled(l, Side::Crm) && !live_m.contains(l.marketo_key.as_str()))
        .map(|l| l.marketo_key.clone())
        .collect();
    let c = c_links
        .iter()
        .filter(|l| settled(l, Side::Marketo) && !live_c.contains(l.crm_key.as_str()))
        .map(|l| l.crm_key.clone())
        .collect();
    (m, c)
}

fn live(links: Vec<Link>) -> Vec<Link> {
    links
        .into_iter()
        .filter(|l| l.tombstone.is_none())
        .collect()
}

/// Pairs, matches, reconciles and writes; the step's commit collects the results.
async fn sync_pairs(
    step: &mut Step<'_>,
    ms: BTreeMap<i64, MLead>,
    cs: BTreeMap<String, CRec>,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let ctx = step.ctx;
    let plan = step.plan;
    let object = object_name(plan);
    let (mut ms, mut cs) = (ms, cs);
    let m_keys: Vec<String> = ms.keys().map(i64::to_string).collect();
    let c_keys: Vec<String> = cs.keys().cloned().collect();
    let m_links = ctx
        .store
        .links_by_marketo_keys(LINK_OBJECT, &m_keys)
        .await?;
    let c_links = ctx.store.links_by_crm_keys(LINK_OBJECT, &c_keys).await?;
    // A record whose partner was deleted or merged away on the other side, with a policy that
    // deleted or flagged it, is settled: what was read of it is older than that, so it must not
    // come back as a new record on the other side.
    let settings = &ctx.settings.sync;
    let (retired_m, retired_c) = retired(&m_links, &c_links, settings);
    ms.retain(|id, _| !retired_m.contains(&id.to_string()));
    cs.retain(|id, _| !retired_c.contains(id));
    if !retired_m.is_empty() || !retired_c.is_empty() {
        tracing::debug!(
            ?retired_m,
            ?retired_c,
            "records settled by a deletion left out"
        );
    }
    let mut links = live(m_links);
    links.extend(live(c_links));
    // Keys the records hold of the other side.
    let held_crm: Vec<String> = ms.values().filter_map(|m| m.crm_key.clone()).collect();
    let held_m: Vec<String> = cs.values().filter_map(|c| c.marketo_key.clone()).collect();
    links.extend(live(
        ctx.store.links_by_crm_keys(LINK_OBJECT, &held_crm).await?,
    ));
    links.extend(live(
        ctx.store
            .links_by_marketo_keys(LINK_OBJECT, &held_m)
            .await?,
    ));

    let mut pairs: Vec<Pair> = Vec::new();
    let mut by_m: HashMap<i64, usize> = HashMap::new();
    let mut by_c: HashMap<String, usize> = HashMap::new();
    for l in links {
        let Ok(m_id) = l.marketo_key.parse::<i64>() else {
            continue;
        };
        if by_m.contains_key(&m_id) || by_c.contains_key(&l.crm_key) {
            continue;
        }
        by_m.insert(m_id, pairs.len());
        by_c.insert(l.crm_key.clone(), pairs.len());
        pairs.push(Pair {
            m_id: Some(m_id),
            c_id: Some(l.crm_key.clone()),
            link: Some(l),
            ..Pair::default()
        });
    }
    for (id, m) in ms {
        if let Some(&i) = by_m.get(&id) {
            pairs[i].m = Some(m);
            continue;
        }
        if let Some(key) = m.crm_key.clone()
            && let Some(&i) = by_c.get(&key)
            && pairs[i].m_id.is_none()
        {
            pairs[i].m_id = Some(id);
            pairs[i].m = Some(m);
            by_m.insert(id, i);
            continue;
        }
        let c_id = m.crm_key.clone().filter(|k| !by_c.contains_key(k));
        let i = pairs.len();
        by_m.insert(id, i);
        if let Some(k) = &c_id {
            by_c.insert(k.clone(), i);
        }
        pairs.push(Pair {
            m_id: Some(id),
            c_id,
            m: Some(m),
            ..Pair::default()
        });
    }
    for (id, c) in cs {
        if let Some(&i) = by_c.get(&id) {
            pairs[i].c = Some(c);
            continue;
        }
        if let Some(mk) = c.marketo_key.as_deref().and_then(|k| k.parse::<i64>().ok()) {
            if let Some(&i) = by_m.get(&mk) {
                if pairs[i].c_id.is_none() {
                    pairs[i].c_id = Some(id.clone());
                    pairs[i].c = Some(c);
                    by_c.insert(id, i);
                    continue;
                }
            } else {
                let i = pairs.len();
                by_m.insert(mk, i);
                by_c.insert(id.clone(), i);
                pairs.push(Pair {
                    m_id: Some(mk),
                    c_id: Some(id),
                    c: Some(c),
                    ..Pair::default()
                });
                continue;
            }
        }
        let i = pairs.len();
        by_c.insert(id.clone(), i);
        pairs.push(Pair {
            c_id: Some(id),
            c: Some(c),
            ..Pair::default()
        });
    }

    // Unlinked pairs: read the other side's record where its key is known.
    let need_c: Vec<String> = pairs
        .iter()
        .filter(|p| p.link.is_none() && p.c.is_none())
        .filter_map(|p| p.c_id.clone())
        .collect();
    if !need_c.is_empty() {
        let found = ctx.crm.get(&plan.crm_object, &need_c).await?;
        for r in found {
            if let (Some(&i), Ok(c)) = (
                by_c.get(&r.id),
                c_rec(plan, &r.id, r.modified_at, &r.fields),
            ) {
                // A lead's CRM key that the record does not return (it names another lead, as
                // a merge winner inheriting the loser's key does) is no claim.
                let claims_other = matches!(
                    (&c.marketo_key, pairs[i].m_id),
                    (Some(k), Some(m)) if *k != m.to_string()
                );
                if !claims_other {
                    pairs[i].c = Some(c);
                }
            }
        }
        for p in pairs
            .iter_mut()
            .filter(|p| p.link.is_none() && p.c.is_none())
        {
            // A key pointing at nothing: match or create instead.
            p.c_id = None;
        }
    }
    let need_m: Vec<i64> = pairs
        .iter()
        .filter(|p| p.link.is_none() && p.m.is_none())
        .filter_map(|p| p.m_id)
        .collect();
    if !need_m.is_empty() {
        let found = fetch_leads(ctx, plan, &need_m, summary).await?;
        for m in found {
            if let Some(&i) = by_m.get(&m.id) {
                pairs[i].m = Some(m);
            }
        }
        for p in pairs
            .iter_mut()
            .filter(|p| p.link.is_none() && p.m.is_none())
        {
            p.m_id = None;
        }
    }

    match_pairs(step, &mut pairs, summary).await?;
    hold_crm_leads(step, &mut pairs, summary).await?;
    for p in &pairs {
        tracing::debug!(
            lead = ?p.m_id,
            crm = ?p.c_id,
            linked = p.link.is_some(),
            lead_read = p.m.is_some(),
            crm_read = p.c.is_some(),
            "lead pair"
        );
    }
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }

    // Reconcile.
    let rules = rules(plan);
    let mut decided: Vec<(usize, Reconciled)> = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        if p.m.is_none() && p.c.is_none() {
            continue;
        }
        let empty = Fields::new();
        let base = p.link.as_ref().map_or(&empty, |l| &l.base);
        let r = reconcile(
            &rules,
            base,
            p.m.as_ref().map(|m| SideState {
                fields: &m.canon,
                modified_at: m.at,
            }),
            p.c.as_ref().map(|c| SideState {
                fields: &c.canon,
                modified_at: Some(c.at),
            }),
        );
        decided.push((i, r));
    }

    // Apply to Marketo.
    apply_marketo(step, &mut pairs, &decided, summary).await?;
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    // Apply to the CRM.
    let created = apply_crm(step, &mut pairs, &decided, summary).await?;
    // The new CRM ids go back into Marketo's CRM-key field.
    if !created.is_empty() && !step.dry_run {
        let input: Vec<Record> = created
            .iter()
            .filter_map(|i| {
                let p = &pairs[*i];
                let mut r = Record::new();
                r.insert("id".into(), json!(p.m_id?));
                r.insert(plan.marketo_crm_key.clone(), json!(p.c_id.clone()?));
                Some(r)
            })
            .collect();
        for chunk in input.chunks(crate::marketo::leads::MAX_BATCH) {
            let results = ctx
                .marketo
                .sync_leads(SyncAction::UpdateOnly, Some("id"), None, chunk)
                .await?;
            for (rec, res) in chunk.iter().zip(results) {
                if let Some(failure) = Failure::of_marketo_result(&res) {
                    step.error(
                        Direction::CrmToMarketo,
                        text_of(rec.get(&plan.marketo_crm_key)).unwrap_or_default(),
                        text_of(rec.get("id")),
                        serde_json::Value::Object(rec.clone()),
                        failure,
                    );
                }
            }
        }
    }

    // Links, conflicts, resolved errors.
    let now = ctx.clock.now();
    for (i, r) in &decided {
        let p = &pairs[*i];
        if p.failed {
            continue;
        }
        let (Some(m_id), Some(c_id)) = (p.m_id, p.c_id.clone()) else {
            continue;
        };
        for c in &r.conflicts {
            summary
                .counts_mut(&object, direction_to(c.winner.other()))
                .conflicts += 1;
            step.commit
                .conflicts
                .push(c.record(LINK_OBJECT, &m_id.to_string(), &c_id, now));
        }
        let unchanged = p.link.as_ref().is_some_and(|l| {
            l.base == r.agreed && l.marketo_key == m_id.to_string() && l.crm_key == c_id
        });
        if !unchanged {
            step.link(m_id, &c_id, r.agreed.clone());
        }
        for (direction, key) in [
            (Direction::MarketoToCrm, m_id.to_string()),
            (Direction::CrmToMarketo, c_id.clone()),
        ] {
            let k = ErrorKey {
                object: LINK_OBJECT.to_owned(),
                direction,
                record_key: key,
            };
            if step.open.contains_key(&k) {
                step.commit.errors_resolve.push(k);
            }
        }
    }
    Ok(())
}

fn direction_to(target: Side) -> Direction {
    match target {
        Side::Crm => Direction::MarketoToCrm,
        Side::Marketo => Direction::CrmToMarketo,
    }
}

fn match_key(plan: &Plan, canon: &Fields) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for f in &plan.match_fields {
        out.push(value_text(canon.get(f))?.to_lowercase());
    }
    (!out.is_empty()).then_some(out)
}

/// Matches one-sided, unlinked pairs: with each other and against the other system, by the
/// plan's match fields (email by default), so that the sync never creates a second record with
/// the same key on the other side itself.
///
/// Per match key, with the unlinked one-sided records of both sides (read this cycle or found
/// by looking the key up on the other side):
/// - one on each side: they are paired;
/// - only one side has any: the oldest (lowest id) is created on the other side, each other one
///   is held as a duplicate of it;
/// - two or more on one side and at least one on the other, or the key already belongs to a
///   linked record: every unlinked record of the key is held.
///
/// A held record is one error-ledger entry (code `duplicate` or `ambiguous_match`) naming every
/// record of the key by id, and nothing is written for it; a later cycle that finds it still
/// ambiguous updates that entry (same record key) instead of adding one. It syncs once an
/// operator merges the duplicates, edits the key or discards the entry and edits the record.
async fn match_pairs(
    step: &mut Step<'_>,
    pairs: &mut Vec<Pair>,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let ctx = step.ctx;
    let plan = step.plan;
    let Some(first) = plan.match_fields.first().cloned() else {
        return Ok(());
    };
    let lone_m = |p: &Pair| p.link.is_none() && p.c_id.is_none() && p.m.is_some();
    let lone_c = |p: &Pair| p.link.is_none() && p.m_id.is_none() && p.c.is_some();
    let mut groups: BTreeMap<Vec<String>, KeyGroup> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        if lone_m(p)
            && let Some(k) = p.m.as_ref().and_then(|m| match_key(plan, &m.canon))
        {
            groups.entry(k).or_default().m_pairs.push(i);
        } else if lone_c(p)
            && let Some(k) = p.c.as_ref().and_then(|c| match_key(plan, &c.canon))
        {
            groups.entry(k).or_default().c_pairs.push(i);
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    let field = plan.field(&first);
    let crm_field = field.and_then(|f| f.crm.clone());
    let m_field = field.and_then(|f| f.marketo.clone());

    // Marketo-only keys: look for CRM records.
    let wanted: Vec<Value> = groups
        .values()
        .flat_map(|g| g.m_pairs.iter())
        .filter_map(|i| pairs[*i].m.as_ref())
        .filter_map(|m| m.canon.get(&first).filter(|v| !v.is_null()).cloned())
        .collect();
    if let Some(crm_field) = &crm_field
        && !wanted.is_empty()
    {
        let mut found = Vec::new();
        for chunk in wanted.chunks(300) {
            found.extend(
                ctx.crm
                    .find_folded(&plan.crm_object, crm_field, chunk)
                    .await?,
            );
        }
        let keys: Vec<String> = found.iter().map(|r| r.id.clone()).collect();
        let linked: BTreeMap<String, String> =
            live(ctx.store.links_by_crm_keys(LINK_OBJECT, &keys).await?)
                .into_iter()
                .map(|l| (l.crm_key, l.marketo_key))
                .collect();
        let lone: BTreeSet<&str> = pairs
            .iter()
            .filter(|p| lone_c(p))
            .filter_map(|p| p.c_id.as_deref())
            .collect();
        let partner: BTreeMap<&str, Option<i64>> = pairs
            .iter()
            .filter(|p| !lone_c(p))
            .filter_map(|p| Some((p.c_id.as_deref()?, p.m_id)))
            .collect();
        for r in found {
            if lone.contains(r.id.as_str()) {
                continue;
            }
            let Ok(c) = c_rec(plan, &r.id, r.modified_at, &r.fields) else {
                continue;
            };
            let Some(group) = match_key(plan, &c.canon).and_then(|k| groups.get_mut(&k)) else {
                continue;
            };
            if group.c_found.iter().any(|f| f.id == c.id)
                || group.c_taken.iter().any(|(id, _)| *id == c.id)
            {
                continue;
            }
            if let Some(m) = linked.get(&c.id) {
                group.c_taken.push((c.id.clone(), Some(m.clone())));
            } else if let Some(m) = partner.get(c.id.as_str()) {
                group.c_taken.push((c.id.clone(), m.map(|m| m.to_string())));
            } else {
                group.c_found.push(c);
            }
        }
    }

    // CRM-only keys: look for Marketo leads.
    let wanted: Vec<String> = groups
        .values()
        .flat_map(|g| g.c_pairs.iter())
        .filter_map(|i| pairs[*i].c.as_ref())
        .filter_map(|c| value_text(c.canon.get(&first)))
        .collect();
    if let Some(m_field) = &m_field
        && !wanted.is_empty()
    {
        let found = find_leads(ctx, plan, m_field, &wanted).await?;
        let keys: Vec<String> = found.iter().map(|m| m.id.to_string()).collect();
        let linked: BTreeMap<String, String> =
            live(ctx.store.links_by_marketo_keys(LINK_OBJECT, &keys).await?)
                .into_iter()
                .map(|l| (l.marketo_key, l.crm_key))
                .collect();
        let lone: BTreeSet<i64> = pairs
            .iter()
            .filter(|p| lone_m(p))
            .filter_map(|p| p.m_id)
            .collect();
        let partner: BTreeMap<i64, Option<String>> = pairs
            .iter()
            .filter(|p| !lone_m(p))
            .filter_map(|p| Some((p.m_id?, p.c_id.clone())))
            .collect();
        for m in found {
            if lone.contains(&m.id) {
                continue;
            }
            let Some(group) = match_key(plan, &m.canon).and_then(|k| groups.get_mut(&k)) else {
                continue;
            };
            if group.m_found.iter().any(|f| f.id == m.id)
                || group.m_taken.iter().any(|(id, _)| *id == m.id)
            {
                continue;
            }
            if let Some(c) = linked.get(&m.id.to_string()) {
                group.m_taken.push((m.id, Some(c.clone())));
            } else if let Some(c) = partner.get(&m.id) {
                group.m_taken.push((m.id, c.clone()));
            } else {
                group.m_found.push(m);
            }
        }
    }

    let object = object_name(plan);
    for (key, group) in groups {
        match group.decide(pairs, &key) {
            Decision::Pair { m, c } => {
                let (m_pair, c_pair) = (m, c);
                match (m_pair, c_pair) {
                    (Some(i), Some(j)) => {
                        let other = std::mem::take(&mut pairs[j]);
                        pairs[i].c_id = other.c_id;
                        pairs[i].c = other.c;
                    }
                    (Some(i), None) => {
                        if let Some(c) = group.c_found.into_iter().next() {
                            pairs[i].c_id = Some(c.id.clone());
                            pairs[i].c = Some(c);
                        }
                    }
                    (None, Some(j)) => {
                        if let Some(m) = group.m_found.into_iter().next() {
                            pairs[j].m_id = Some(m.id);
                            pairs[j].m = Some(m);
                        }
                    }
                    (None, None) => {}
                }
            }
            Decision::Create => {}
            Decision::Hold {
                held,
                code,
                message,
            } => {
                let ids = serde_json::json!({
                    "match_key": key,
                    "marketo_leads": group.all_marketo(pairs),
                    "crm_records": group.all_crm(pairs),
                });
                for i in held {
                    let p = std::mem::take(&mut pairs[i]);
                    let (direction, record_key) = match (p.m_id, p.c_id) {
                        (Some(m), None) => (Direction::MarketoToCrm, m.to_string()),
                        (None, Some(c)) => (Direction::CrmToMarketo, c),
                        _ => continue,
                    };
                    summary.counts_mut(&object, direction).failed += 1;
                    step.error(
                        direction,
                        record_key,
                        None,
                        ids.clone(),
                        Failure::new(code, message.clone(), false),
                    );
                }
            }
        }
    }
    pairs.retain(|p| p.m.is_some() || p.c.is_some() || p.link.is_some());
    Ok(())
}

/// The unlinked records of one match key.
#[derive(Default)]
struct KeyGroup {
    /// Indices of the pairs holding only a Marketo lead.
    m_pairs: Vec<usize>,
    /// Indices of the pairs holding only a CRM record.
    c_pairs: Vec<usize>,
    /// Free (unlinked, not read this cycle) Marketo leads found by the key.
    m_found: Vec<MLead>,
    /// Free CRM records found by the key.
    c_found: Vec<CRec>,
    /// Marketo leads with the key that are already linked, with their CRM record.
    m_taken: Vec<(i64, Option<String>)>,
    /// CRM records with the key that are already linked, with their Marketo lead.
    c_taken: Vec<(String, Option<String>)>,
}

/// What happens to the unlinked records of one match key.
enum Decision {
    /// One record on each side: pair the lone pair(s) (indices into the pairs).
    Pair { m: Option<usize>, c: Option<usize> },
    /// One record on one side, none on the other: it is created there.
    Create,
    /// The listed pairs are held: nothing is written for them, each is one ledger entry.
    Hold {
        held: Vec<usize>,
        code: &'static str,
        message: String,
    },
}

/// Orders ids as numbers when both are, as text otherwise (the oldest record first).
fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

impl KeyGroup {
    fn all_marketo(&self, pairs: &[Pair]) -> Vec<String> {
        let mut ids: Vec<String> = self
            .m_pairs
            .iter()
            .filter_map(|i| pairs[*i].m_id)
            .chain(self.m_found.iter().map(|m| m.id))
            .chain(self.m_taken.iter().map(|(id, _)| *id))
            .map(|id| id.to_string())
            .collect();
        ids.sort_by(|a, b| id_order(a, b));
        ids.dedup();
        ids
    }

    fn all_crm(&self, pairs: &[Pair]) -> Vec<String> {
        let mut ids: Vec<String> = self
            .c_pairs
            .iter()
            .filter_map(|i| pairs[*i].c_id.clone())
            .chain(self.c_found.iter().map(|c| c.id.clone()))
            .chain(self.c_taken.iter().map(|(id, _)| id.clone()))
            .collect();
        ids.sort_by(|a, b| id_order(a, b));
        ids.dedup();
        ids
    }

    fn decide(&self, pairs: &[Pair], key: &[String]) -> Decision {
        let key = key.join(" ");
        let lone: Vec<usize> = self.m_pairs.iter().chain(&self.c_pairs).copied().collect();
        let names = |pairs: &[Pair]| {
            let m = self.all_marketo(pairs);
            let c = self.all_crm(pairs);
            let mut parts = Vec::new();
            if !m.is_empty() {
                parts.push(format!("Marketo leads [{}]", m.join(", ")));
            }
            if !c.is_empty() {
                parts.push(format!("CRM records [{}]", c.join(", ")));
            }
            parts.join(" and ")
        };
        // The key already belongs to a linked pair: every new record of it is a duplicate.
        if let Some(links) = self.describe_taken() {
            return Decision::Hold {
                held: lone,
                code: "duplicate",
                message: format!(
                    "duplicate match key `{key}`: {} share it, and {links}; nothing is synced for the \
                     unlinked ones until the duplicates are merged, the key is edited or this \
                     error is discarded",
                    names(pairs)
                ),
            };
        }
        let m_count = self.m_pairs.len() + self.m_found.len();
        let c_count = self.c_pairs.len() + self.c_found.len();
        match (m_count, c_count) {
            (1, 1) => Decision::Pair {
                m: self.m_pairs.first().copied(),
                c: self.c_pairs.first().copied(),
            },
            (0 | 1, 0) | (0, 1) => Decision::Create,
            (_, 0) | (0, _) => {
                // Duplicates on one side only: the oldest is created, the others are held.
                let mut ids: Vec<(String, usize)> = lone
                    .iter()
                    .filter_map(|i| {
                        let p = &pairs[*i];
                        let id = p.m_id.map(|m| m.to_string()).or_else(|| p.c_id.clone())?;
                        Some((id, *i))
                    })
                    .collect();
                ids.sort_by(|a, b| id_order(&a.0, &b.0));
                let Some((kept, _)) = ids.first().cloned() else {
                    return Decision::Create;
                };
                let side = if m_count > 0 { "Marketo" } else { "CRM" };
                let other = if m_count > 0 { "CRM" } else { "Marketo" };
                Decision::Hold {
                    held: ids.into_iter().skip(1).map(|(_, i)| i).collect(),
                    code: "duplicate",
                    message: format!(
                        "duplicate match key `{key}`: {} share it; only the oldest {side} record \
                         ({kept}) is synced to the {other}, the others are held until the \
                         duplicates are merged, the key is edited or this error is discarded",
                        names(pairs)
                    ),
                }
            }
            _ => Decision::Hold {
                held: lone,
                code: "ambiguous_match",
                message: format!(
                    "ambiguous match: {} share the match key `{key}`; nothing is synced for the unlinked \
                     ones until the duplicates are merged, the key is edited or this error is \
                     discarded",
                    names(pairs)
                ),
            },
        }
    }

    /// Returns the links that already hold this key, as words, if any.
    fn describe_taken(&self) -> Option<String> {
        let mut parts = Vec::new();
        for (m, c) in &self.m_taken {
            parts.push(match c {
                Some(c) => format!("Marketo lead {m} is already linked to CRM record {c}"),
                None => format!("Marketo lead {m} is already paired"),
            });
        }
        for (c, m) in &self.c_taken {
            parts.push(match m {
                Some(m) => format!("CRM record {c} is already linked to Marketo lead {m}"),
                None => format!("CRM record {c} is already paired"),
            });
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

fn to_record(fields: &Fields) -> Record {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect()
}

struct MWrite {
    pair: usize,
    create: bool,
    lead: LeadWrite,
}

async fn apply_marketo(
    step: &mut Step<'_>,
    pairs: &mut [Pair],
    decided: &[(usize, Reconciled)],
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let ctx = step.ctx;
    let plan = step.plan;
    let object = object_name(plan);
    let mut writes: Vec<MWrite> = Vec::new();
    for (i, r) in decided {
        let p = &pairs[*i];
        let mut record = to_record(&plan.render(Side::Marketo, &r.to_marketo));
        let needs_key = match (&p.c_id, &p.m) {
            (Some(c), Some(m)) => m.crm_key.as_deref() != Some(c.as_str()),
            (Some(_), None) => p.link.is_none(),
            _ => false,
        };
        match (p.m_id, &p.c_id) {
            (None, Some(c_id)) => {
                record.insert(plan.marketo_crm_key.clone(), json!(c_id));
                writes.push(MWrite {
                    pair: *i,
                    create: true,
                    lead: LeadWrite {
                        record,
                        company: CompanyLink::Known(None),
                    },
                });
            }
            (Some(m_id), _) if !record.is_empty() || needs_key => {
                if needs_key && let Some(c_id) = &p.c_id {
                    record.insert(plan.marketo_crm_key.clone(), json!(c_id));
                }
                record.insert("id".into(), json!(m_id));
                // Company-type fields of a lead linked to a company go to the company.
                let company = match &p.m {
                    Some(m) => CompanyLink::Known(m.external_company_id.clone()),
                    None => CompanyLink::Unknown,
                };
                writes.push(MWrite {
                    pair: *i,
                    create: false,
                    lead: LeadWrite { record, company },
                });
            }
            _ => {}
        }
    }
    // A lead refused before and unchanged since waits for its retry (or an operator).
    let now = step.now();
    let mut sendable = Vec::with_capacity(writes.len());
    for w in writes {
        let p = &mut pairs[w.pair];
        let key = ErrorKey {
            object: LINK_OBJECT.to_owned(),
            direction: Direction::CrmToMarketo,
            record_key: p
                .c_id
                .clone()
                .or_else(|| p.m_id.map(|m| m.to_string()))
                .unwrap_or_default(),
        };
        let payload = serde_json::Value::Object(w.lead.record.clone());
        if ledger::waits(step.open.get(&key), &payload, now) {
            p.failed = true;
            summary.counts_mut(&object, Direction::CrmToMarketo).skipped += 1;
            continue;
        }
        sendable.push(w);
    }
    let writes = sendable;
    let endpoint = ctx.endpoint(EndpointSettings {
        bulk_import_threshold: step.bulk_import_threshold,
        poll: step.poll,
        ..EndpointSettings::default()
    });
    if step.dry_run {
        let leads: Vec<LeadWrite> = writes.iter().map(|w| w.lead.clone()).collect();
        let previews = endpoint.preview_leads(&leads).await?;
        for (w, preview) in writes.iter().zip(previews) {
            let p = &pairs[w.pair];
            // The lead's values now: as read this cycle, else the link's agreed base (a lead
            // not read this cycle has not changed since).
            let before =
                p.m.as_ref()
                    .map(|m| (&m.canon, m.crm_key.clone()))
                    .or_else(|| p.link.as_ref().map(|l| (&l.base, Some(l.crm_key.clone()))))
                    .map(|(canon, crm_key)| {
                        let mut b = super::objects::to_record(&plan.render(Side::Marketo, canon));
                        b.insert(plan.marketo_crm_key.clone(), json!(crm_key));
                        b
                    });
            let action = if w.create {
                PlannedAction::Create
            } else {
                PlannedAction::Update
            };
            let mut change = PlannedChange::new(&object, Direction::CrmToMarketo, action).fields(
                &w.lead.record,
                before.as_ref(),
                &["id"],
            );
            if let Some(c) = &p.c_id {
                change = change.source(c.clone());
            }
            if let (Some(m), false) = (p.m_id, w.create) {
                change = change.target(m.to_string());
            }
            if let Some((company, _)) = &preview.company {
                change = change.note(format!("company fields go to company {company}"));
            }
            step.plan_out.push(change);
        }
        return Ok(());
    }
    let mut gone: Vec<Link> = Vec::new();
    for (create, mode, key) in [
        (
            true,
            WriteMode::Upsert,
            LeadKey::Field(plan.marketo_crm_key.clone()),
        ),
        (false, WriteMode::UpdateOnly, LeadKey::Id),
    ] {
        let batch: Vec<&MWrite> = writes.iter().filter(|w| w.create == create).collect();
        if batch.is_empty() {
            continue;
        }
        let leads: Vec<LeadWrite> = batch.iter().map(|w| w.lead.clone()).collect();
        let outcomes = endpoint
            .write_leads(&leads, mode, &key, &step.cancel)
            .await?;
        for (w, outcome) in batch.iter().zip(outcomes) {
            let p = &mut pairs[w.pair];
            let counts = summary.counts_mut(&object, Direction::CrmToMarketo);
            let refusal = match outcome {
                LeadOutcome::Created { id } => {
                    counts.created += 1;
                    p.m_id = Some(id);
                    continue;
                }
                LeadOutcome::Updated { .. } => {
                    counts.updated += 1;
                    continue;
                }
                LeadOutcome::Refused(r) => r,
            };
            p.failed = true;
            if !create
                && refusal.kind == RefusalKind::NotFound
                && refusal.company.is_none()
                && let Some(link) = &p.link
            {
                // The linked lead is gone from Marketo without a deletion or merge this
                // sync has seen: it is treated as deleted there.
                gone.push(link.clone());
                continue;
            }
            counts.failed += 1;
            let key = p
                .c_id
                .clone()
                .or_else(|| p.m_id.map(|m| m.to_string()))
                .unwrap_or_default();
            // The base does not move, so the change is tried again on later cycles.
            let payload = match &refusal.company {
                Some(company) => json!({ "company": company }),
                None => serde_json::Value::Object(w.lead.record.clone()),
            };
            step.error(
                Direction::CrmToMarketo,
                key,
                p.m_id.map(|m| m.to_string()),
                payload,
                Failure::new(refusal.code, refusal.message, refusal.retryable),
            );
        }
    }
    let policy = ctx.settings.sync.lead_deletes;
    for link in gone {
        tracing::warn!(
            lead = %link.marketo_key,
            crm = %link.crm_key,
            "a linked lead is gone from marketo; its crm record follows the delete policy"
        );
        apply_policy(step, &link, policy, summary).await?;
        step.tombstone(&link, TombstoneKind::Deleted, Side::Marketo);
    }
    Ok(())
}

async fn apply_crm(
    step: &mut Step<'_>,
    pairs: &mut [Pair],
    decided: &[(usize, Reconciled)],
    summary: &mut CycleSummary,
) -> Result<Vec<usize>, EngineError> {
    let mut created_pairs = Vec::new();
    let ctx = step.ctx;
    let plan = step.plan;
    let object = object_name(plan);
    let pk = ctx
        .crm
        .describe(&plan.crm_object)
        .await
        .ok()
        .and_then(|s| s.id_field)
        .unwrap_or_else(|| "id".to_owned());
    let max = ctx
        .crm
        .capabilities(&plan.crm_object)
        .map(|c| c.max_batch_write)
        .unwrap_or(500)
        .max(1);
    let mut creates: Vec<(usize, Fields)> = Vec::new();
    let mut updates: Vec<(usize, Fields)> = Vec::new();
    let mut orphans: Vec<i64> = Vec::new();
    for (i, r) in decided {
        let p = &pairs[*i];
        if p.failed {
            continue;
        }
        let Some(m_id) = p.m_id else { continue };
        let mut record = plan.render(Side::Crm, &r.to_crm);
        let needs_key = match &p.c {
            Some(c) => c.marketo_key.as_deref() != Some(m_id.to_string().as_str()),
            None => p.link.is_none(),
        };
        match &p.c_id {
            None => {
                record.insert(plan.crm_marketo_id.clone(), Value::Text(m_id.to_string()));
                creates.push((*i, record));
            }
            Some(c_id) if !record.is_empty() || needs_key => {
                if needs_key {
                    record.insert(plan.crm_marketo_id.clone(), Value::Text(m_id.to_string()));
                }
                record.insert(pk.clone(), Value::Text(c_id.clone()));
                updates.push((*i, record));
            }
            Some(_) => {
                summary.counts_mut(&object, Direction::MarketoToCrm).skipped += 1;
            }
        }
    }
    if step.dry_run {
        for (create, list) in [(true, &creates), (false, &updates)] {
            for (i, f) in list.iter() {
                let p = &pairs[*i];
                let before =
                    p.c.as_ref()
                        .map(|c| (&c.canon, c.marketo_key.clone()))
                        .or_else(|| {
                            p.link
                                .as_ref()
                                .map(|l| (&l.base, Some(l.marketo_key.clone())))
                        })
                        .map(|(canon, m_key)| {
                            let mut b = json_fields(&plan.render(Side::Crm, canon));
                            b.insert(plan.crm_marketo_id.clone(), json!(m_key));
                            b
                        });
                let action = if create {
                    PlannedAction::Create
                } else {
                    PlannedAction::Update
                };
                let mut change = PlannedChange::new(&object, Direction::MarketoToCrm, action)
                    .fields(&json_fields(f), before.as_ref(), &[pk.as_str()]);
                if let Some(m) = p.m_id {
                    change = change.source(m.to_string());
                }
                if let (Some(c), false) = (&p.c_id, create) {
                    change = change.target(c.clone());
                }
                if create {
                    change = change.note(format!(
                        "then the new CRM id goes into the lead's {}",
                        plan.marketo_crm_key
                    ));
                }
                step.plan_out.push(change);
            }
        }
        return Ok(created_pairs);
    }
    for (create, list, key) in [
        (true, creates, plan.crm_marketo_id.clone()),
        (false, updates, pk.clone()),
    ] {
        for chunk in list.chunks(max) {
            let batch: Vec<Fields> = chunk.iter().map(|(_, f)| f.clone()).collect();
            let results = ctx.crm.upsert(&plan.crm_object, &key, &batch).await?;
            for ((i, f), res) in chunk.iter().zip(results) {
                let p = &mut pairs[*i];
                let counts = summary.counts_mut(&object, Direction::MarketoToCrm);
                match res {
                    WriteResult::Created { id } | WriteResult::Updated { id }
                        if create || p.c_id.is_none() =>
                    {
                        counts.created += u64::from(create);
                        counts.updated += u64::from(!create);
                        p.c_id = Some(id);
                        created_pairs.push(*i);
                    }
                    WriteResult::Created { .. } | WriteResult::Updated { .. } => {
                        counts.updated += 1;
                    }
                    WriteResult::Deleted { .. } => {}
                    // The CRM record holding this lead's id was deleted there (the link to it
                    // was lost, say by a crash before the commit): the lead follows the CRM
                    // delete policy instead of being written into a dead record.
                    WriteResult::Refused(Refusal {
                        reason: RefusalReason::Deleted,
                        ..
                    }) if create => {
                        p.failed = true;
                        if let Some(m_id) = p.m_id {
                            orphans.push(m_id);
                        }
                    }
                    WriteResult::Refused(refusal) => {
                        counts.failed += 1;
                        p.failed = true;
                        let payload: serde_json::Map<String, serde_json::Value> =
                            f.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
                        step.error(
                            Direction::MarketoToCrm,
                            p.m_id.map(|m| m.to_string()).unwrap_or_default(),
                            p.c_id.clone(),
                            serde_json::Value::Object(payload),
                            Failure::from(&refusal),
                        );
                    }
                }
            }
        }
    }
    if !orphans.is_empty() {
        if ctx.settings.sync.lead_deletes == DeletePolicy::Delete {
            for chunk in orphans.chunks(crate::marketo::leads::MAX_BATCH) {
                ctx.marketo.delete_leads(chunk).await?;
            }
            summary.counts_mut(&object, Direction::CrmToMarketo).deleted += orphans.len() as u64;
        } else {
            summary.counts_mut(&object, Direction::MarketoToCrm).skipped += orphans.len() as u64;
            summary.warnings.push(format!(
                "{} lead(s) belong to CRM records deleted there (lead ids {:?}); left in Marketo \
                 by `sync.lead_deletes`",
                orphans.len(),
                orphans
            ));
        }
    }
    Ok(created_pairs)
}

/// Re-points the CRM records linked to merged-away leads to the winners.
async fn apply_merges(
    step: &mut Step<'_>,
    merges: &[(i64, Vec<i64>)],
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let ctx = step.ctx;
    let plan = step.plan;
    let object = object_name(plan);
    if merges.is_empty() {
        return Ok(());
    }
    // The CRM's own primary key (HubSpot's is `hs_object_id`), as the CRM-id write-back uses.
    let pk = ctx
        .crm
        .describe(&plan.crm_object)
        .await
        .ok()
        .and_then(|s| s.id_field)
        .unwrap_or_else(|| "id".to_owned());
    let pk = pk.as_str();
    // Winners given a CRM record by an earlier merge of this cycle (not in the store yet).
    let mut given: BTreeSet<i64> = BTreeSet::new();
    for (winner, losers) in merges {
        let winner_link = live(
            ctx.store
                .links_by_marketo_keys(LINK_OBJECT, &[winner.to_string()])
                .await?,
        )
        .into_iter()
        .next();
        let keys: Vec<String> = losers.iter().map(i64::to_string).collect();
        let mut loser_links = live(ctx.store.links_by_marketo_keys(LINK_OBJECT, &keys).await?);
        loser_links.extend(recovered_links(step, losers).await?);
        // An unlinked winner with a CRM record of its own (one that matches it, not yet
        // paired) keeps that record: pairing links the two below, and the loser's record
        // follows the merge policy instead of taking the winner over.
        let mut repointed = winner_link.is_some()
            || given.contains(winner)
            || (!loser_links.is_empty()
                && unlinked_partner(step, *winner, &loser_links, summary).await?);
        for l in loser_links {
            let into = TombstoneKind::Merged {
                into: winner.to_string(),
            };
            if !repointed {
                // The loser's CRM record was deleted or merged away in the CRM since the last
                // commit (its deletion is applied after the merges): the winner does not take a
                // dead record over; pairing finds the winner's live partner, if any. Found by
                // the convergence harness (seed 30127: a CRM merge into a contact never synced,
                // killed at commit, then a Marketo merge of that lead left the winner linked to
                // the soft-deleted contact).
                let alive = !ctx
                    .crm
                    .get(&plan.crm_object, std::slice::from_ref(&l.crm_key))
                    .await?
                    .is_empty();
                if !alive {
                    step.tombstone(&l, into, Side::Marketo);
                    continue;
                }
                // The winner takes over the loser's CRM record.
                let mut rec = Fields::new();
                rec.insert(pk.to_owned(), Value::Text(l.crm_key.clone()));
                rec.insert(plan.crm_marketo_id.clone(), Value::Text(winner.to_string()));
                if step.dry_run {
                    step.plan_out.push(
                        PlannedChange::new(&object, Direction::MarketoToCrm, PlannedAction::Repoint)
                            .source(winner.to_string())
                            .target(l.crm_key.clone())
                            .fields(
                                &json_fields(&rec),
                                Some(&serde_json::Map::from_iter([(
                                    plan.crm_marketo_id.clone(),
                                    json!(l.marketo_key),
                                )])),
                                &[pk],
                            )
                            .note(format!(
                                "lead {} was merged into lead {winner}, which takes over its CRM record",
                                l.marketo_key
                            )),
                    );
                } else {
                    // Free the loser's key first: the Marketo-id column is unique.
                    let res = ctx.crm.upsert(&plan.crm_object, pk, &[rec]).await?;
                    if let Some(refusal) = res.first().and_then(WriteResult::refusal) {
                        step.error(
                            Direction::MarketoToCrm,
                            winner.to_string(),
                            Some(l.crm_key.clone()),
                            json!({ "merge": { "winner": winner, "loser": l.marketo_key } }),
                            Failure::from(refusal),
                        );
                        continue;
                    }
                }
                step.tombstone(&l, into, Side::Marketo);
                step.link(*winner, &l.crm_key, l.base.clone());
                summary.counts_mut(&object, Direction::MarketoToCrm).updated += 1;
                given.insert(*winner);
                repointed = true;
                continue;
            }
            // The winner already has its own CRM record: apply the merge policy to the loser's.
            apply_policy(step, &l, ctx.settings.sync.lead_merges, summary).await?;
            step.tombstone(&l, into, Side::Marketo);
        }
    }
    Ok(())
}

/// Returns links rebuilt from the CRM for leads the store has never linked: a CRM record that
/// holds one of these lead ids in its Marketo-id column was written by a cycle that died before
/// its commit (the CRM write comes first). Records the store links elsewhere are left alone.
async fn recovered_links(step: &Step<'_>, leads: &[i64]) -> Result<Vec<Link>, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    if leads.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = leads.iter().map(i64::to_string).collect();
    let known: BTreeSet<String> = ctx
        .store
        .links_by_marketo_keys(LINK_OBJECT, &keys)
        .await?
        .into_iter()
        .map(|l| l.marketo_key)
        .collect();
    let unknown: Vec<Value> = keys
        .iter()
        .filter(|k| !known.contains(*k))
        .map(|k| Value::Text(k.clone()))
        .collect();
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let rows = ctx
        .crm
        .find(&plan.crm_object, &plan.crm_marketo_id, &unknown)
        .await?;
    let row_keys: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let taken: BTreeSet<String> = live(ctx.store.links_by_crm_keys(LINK_OBJECT, &row_keys).await?)
        .into_iter()
        .map(|l| l.crm_key)
        .collect();
    let now = step.now();
    Ok(rows
        .into_iter()
        .filter(|r| !taken.contains(&r.id))
        .filter_map(|r| {
            let lead = value_text(r.fields.get(&plan.crm_marketo_id))?;
            let base = Fields::new();
            Some(Link {
                object: LINK_OBJECT.to_owned(),
                marketo_key: lead,
                crm_key: r.id,
                base_hash: fields_hash(&base),
                base,
                agreed_at: now,
                tombstone: None,
            })
        })
        .collect())
}

/// Returns the link of the CRM record `key` rebuilt from its Marketo-id column, when the store
/// has never linked that lead (see [`recovered_links`]).
async fn survivor_link_from_crm(step: &Step<'_>, key: &str) -> Result<Option<Link>, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let Some(record) = ctx
        .crm
        .get(&plan.crm_object, &[key.to_owned()])
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let Some(lead) =
        value_text(record.fields.get(&plan.crm_marketo_id)).and_then(|m| m.parse::<i64>().ok())
    else {
        return Ok(None);
    };
    Ok(recovered_links(step, &[lead])
        .await?
        .into_iter()
        .find(|l| l.crm_key == key))
}

/// Returns whether an unlinked live CRM record matches the Marketo lead `id` (by its CRM-key
/// field or its match values).
async fn unlinked_partner(
    step: &Step<'_>,
    id: i64,
    losers: &[Link],
    summary: &mut CycleSummary,
) -> Result<bool, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let Some(lead) = fetch_leads(ctx, plan, &[id], summary)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(false);
    };
    let mut candidates: Vec<CRec> = Vec::new();
    if let Some(key) = &lead.crm_key {
        for r in ctx
            .crm
            .get(&plan.crm_object, std::slice::from_ref(key))
            .await?
        {
            candidates.extend(c_rec(plan, &r.id, r.modified_at, &r.fields).ok());
        }
    }
    let wanted = match_key(plan, &lead.canon);
    if let (Some(first), Some(_)) = (plan.match_fields.first(), &wanted)
        && let Some(crm_field) = plan.field(first).and_then(|f| f.crm.clone())
        && let Some(value) = lead.canon.get(first).filter(|v| !v.is_null())
    {
        for r in ctx
            .crm
            .find_folded(&plan.crm_object, &crm_field, std::slice::from_ref(value))
            .await?
        {
            if let Ok(c) = c_rec(plan, &r.id, r.modified_at, &r.fields)
                && match_key(plan, &c.canon) == wanted
            {
                candidates.push(c);
            }
        }
    }
    // The losers' own records (the merged lead may carry a loser's CRM key) do not count.
    candidates.retain(|c| !losers.iter().any(|l| l.crm_key == c.id));
    if candidates.is_empty() {
        return Ok(false);
    }
    let keys: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
    let taken: BTreeSet<String> = live(ctx.store.links_by_crm_keys(LINK_OBJECT, &keys).await?)
        .into_iter()
        .map(|l| l.crm_key)
        .collect();
    Ok(keys.iter().any(|k| !taken.contains(k)))
}

async fn apply_policy(
    step: &mut Step<'_>,
    link: &Link,
    policy: DeletePolicy,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let ctx = step.ctx;
    let plan = step.plan;
    let object = object_name(plan);
    match policy {
        DeletePolicy::Ignore => {}
        DeletePolicy::Delete => {
            if step.dry_run {
                step.plan_out.push(
                    PlannedChange::new(&object, Direction::MarketoToCrm, PlannedAction::Delete)
                        .source(link.marketo_key.clone())
                        .target(link.crm_key.clone())
                        .note("the lead left Marketo (sync.lead_deletes = \"delete\")"),
                );
            } else {
                ctx.crm
                    .delete(&plan.crm_object, std::slice::from_ref(&link.crm_key))
                    .await?;
            }
            summary.counts_mut(&object, Direction::MarketoToCrm).deleted += 1;
        }
        DeletePolicy::Flag => {
            let Some(column) = plan.crm_deleted_flag.clone() else {
                summary.warnings.push(format!(
                    "lead {} left Marketo but `keys.crm_deleted_flag` is not set: CRM record {} \
                     was not flagged",
                    link.marketo_key, link.crm_key
                ));
                return Ok(());
            };
            let pk = crm_pk(ctx, plan).await;
            let mut rec = Fields::new();
            rec.insert(pk.clone(), Value::Text(link.crm_key.clone()));
            rec.insert(column, Value::Bool(true));
            if step.dry_run {
                step.plan_out.push(
                    PlannedChange::new(
                        &object,
                        Direction::MarketoToCrm,
                        PlannedAction::FlagDeleted,
                    )
                    .source(link.marketo_key.clone())
                    .target(link.crm_key.clone())
                    .fields(&json_fields(&rec), None, &[pk.as_str()])
                    .note("the lead left Marketo (sync.lead_deletes = \"flag\")"),
                );
            } else {
                let res = ctx.crm.upsert(&plan.crm_object, &pk, &[rec]).await?;
                if let Some(refusal) = res.first().and_then(WriteResult::refusal) {
                    step.error(
                        Direction::MarketoToCrm,
                        link.marketo_key.clone(),
                        Some(link.crm_key.clone()),
                        json!({ "flag_deleted": link.crm_key }),
                        Failure::from(refusal),
                    );
                    return Ok(());
                }
            }
            summary.counts_mut(&object, Direction::MarketoToCrm).deleted += 1;
        }
    }
    Ok(())
}

/// Drops the Marketo-only pairs whose lead is linked to an unconverted CRM lead
/// (`keys.crm_lead_object`): such a lead gets a contact only by conversion.
async fn hold_crm_leads(
    step: &mut Step<'_>,
    pairs: &mut Vec<Pair>,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let ctx = step.ctx;
    let plan = step.plan;
    let Some(conv) = &plan.conversion else {
        return Ok(());
    };
    let lone = |p: &Pair| p.link.is_none() && p.c_id.is_none() && p.c.is_none();
    let ids: Vec<Value> = pairs
        .iter()
        .filter(|p| lone(p))
        .filter_map(|p| p.m_id)
        .map(|i| Value::Text(i.to_string()))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut held: BTreeSet<i64> = BTreeSet::new();
    for chunk in ids.chunks(300) {
        let found = match ctx
            .crm
            .find(&conv.crm_lead_object, &plan.crm_marketo_id, chunk)
            .await
        {
            Ok(f) => f,
            Err(e) if !e.is_retryable() => {
                summary.warnings.push(format!(
                    "leads held by CRM leads are not checked: reading `{}` failed: {e}",
                    conv.crm_lead_object
                ));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for r in found {
            if value_text(r.fields.get(&conv.converted_field)).is_none()
                && let Some(m) = value_text(r.fields.get(&plan.crm_marketo_id))
                && let Ok(m) = m.trim().parse::<i64>()
            {
                held.insert(m);
            }
        }
    }
    let before = pairs.len();
    pairs.retain(|p| !(lone(p) && p.m_id.is_some_and(|m| held.contains(&m))));
    summary
        .counts_mut(&object_name(plan), Direction::MarketoToCrm)
        .skipped += (before - pairs.len()) as u64;
    Ok(())
}

/// Follows the conversions of CRM leads (`keys.crm_lead_object`) linked to a Marketo lead (by
/// their Marketo-id column) since the last cycle, read from their own CRM cursor:
///
/// - converted to a contact without a Marketo lead (new or existing account): the contact gets
///   the Marketo id, the Marketo lead gets the contact id in its CRM-key field and the contact's
///   account as `externalCompanyId` (the companies step, which runs first, has synced a new
///   account as a company); the pairing below then links the two.
/// - converted into a contact that has its own Marketo lead: the two Marketo leads are merged
///   (Merge Leads, winner = the contact's lead) and a link of the converted lead is tombstoned as
///   merged.
///
/// Returns the cursor watermark to commit with the step and the contacts that took over a
/// Marketo lead.
async fn apply_conversions(
    step: &mut Step<'_>,
    tunables: &Tunables,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(Option<Watermark>, Vec<String>), EngineError> {
    let ctx = step.ctx;
    let plan = step.plan;
    let mut moved = Vec::new();
    let Some(conv) = plan.conversion.clone() else {
        return Ok((None, moved));
    };
    let object = object_name(plan);
    let wm = ctx
        .store
        .watermark(Side::Crm, &conv.crm_lead_object, QUEUE_CONVERSIONS)
        .await?;
    let mut cursor: Option<Cursor> = wm.as_ref().and_then(|w| w.cursor.clone()).map(Cursor);
    let mut last = wm.as_ref().map(|w| w.at);
    // (CRM lead id, Marketo lead id, contact id), the last state of each CRM lead.
    let mut converted: Vec<(String, i64, String)> = Vec::new();
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = match ctx
            .crm
            .changes(&conv.crm_lead_object, cursor.as_ref(), tunables.crm_page)
            .await
        {
            Ok(p) => p,
            Err(e) if !e.is_retryable() => {
                // A CRM without that object (or column) must not stop the lead sync.
                summary.warnings.push(format!(
                    "lead conversions are not followed: reading `{}` failed: {e}",
                    conv.crm_lead_object
                ));
                return Ok((None, moved));
            }
            Err(e) => return Err(e.into()),
        };
        for ch in page.changes {
            last = Some(last.map_or(ch.modified_at, |l| l.max(ch.modified_at)));
            converted.retain(|(id, _, _)| id != &ch.id);
            if let ChangeKind::Upserted { fields } = ch.kind
                && let Some(m_id) = value_text(fields.get(&plan.crm_marketo_id))
                    .and_then(|t| t.trim().parse::<i64>().ok())
                && let Some(contact) = value_text(fields.get(&conv.converted_field))
            {
                converted.push((ch.id, m_id, contact));
            }
        }
        let more = page.more;
        cursor = Some(page.next);
        if !more {
            break;
        }
    }
    let mark = Watermark {
        system: Side::Crm,
        object: conv.crm_lead_object.clone(),
        queue: QUEUE_CONVERSIONS.to_owned(),
        at: last.unwrap_or_else(|| step.now()),
        tie: None,
        cursor: cursor.map(|c| c.0),
    };
    if converted.is_empty() {
        return Ok((Some(mark), moved));
    }
    let contact_ids: Vec<String> = converted.iter().map(|c| c.2.clone()).collect();
    let contacts: HashMap<String, Fields> = ctx
        .crm
        .get(&plan.crm_object, &contact_ids)
        .await?
        .into_iter()
        .map(|r| (r.id, r.fields))
        .collect();
    let pk = crm_pk(ctx, plan).await;
    for (lead_key, m_id, c_id) in converted {
        let Some(contact) = contacts.get(&c_id) else {
            summary.warnings.push(format!(
                "crm lead {lead_key} was converted to contact {c_id}, which cannot be read: \
                 the conversion is not followed"
            ));
            continue;
        };
        let all_links = ctx
            .store
            .links_by_marketo_keys(LINK_OBJECT, &[m_id.to_string()])
            .await?;
        let owner = value_text(contact.get(&plan.crm_marketo_id))
            .and_then(|t| t.trim().parse::<i64>().ok());
        // Already followed (the CRM feed re-reads its overlap window): nothing to do.
        let merged_away = all_links.iter().any(
            |l| matches!(&l.tombstone, Some(t) if matches!(t.kind, TombstoneKind::Merged { .. })),
        );
        let lead_links = live(all_links);
        let moved_already = owner == Some(m_id) && lead_links.iter().any(|l| l.crm_key == c_id);
        if merged_away || moved_already {
            continue;
        }
        match owner {
            Some(winner) if winner != m_id => {
                // Into an existing contact with its own Marketo lead: merge the two leads.
                if step.dry_run {
                    step.plan_out.push(
                        PlannedChange::new(&object, Direction::CrmToMarketo, PlannedAction::Merge)
                            .source(lead_key.clone())
                            .target(m_id.to_string())
                            .note(format!(
                                "CRM lead {lead_key} was converted into contact {c_id}: lead {m_id} is merged into lead {winner}"
                            )),
                    );
                    continue;
                }
                if let Err(e) = ctx.marketo.merge_leads(winner, &[m_id], false).await {
                    if e.is_retryable() {
                        return Err(e.into());
                    }
                    // A refused merge (a 1xxx refusal) waits for the records to change or for an
                    // operator; a lead not found may appear once Marketo catches up.
                    let retryable = e.refusal_kind().is_some_and(RefusalKind::retryable);
                    step.error(
                        Direction::CrmToMarketo,
                        lead_key.clone(),
                        Some(m_id.to_string()),
                        json!({ "conversion": { "winner": winner, "loser": m_id, "contact": c_id } }),
                        Failure::new(
                            e.code().unwrap_or("merge_failed"),
                            format!("merging converted lead {m_id} into {winner}: {e}"),
                            retryable,
                        ),
                    );
                    continue;
                }
                // The converted lead's link (or a new one to the contact, as the record of the
                // conversion) is tombstoned as merged.
                let loser_link = lead_links.first().cloned().unwrap_or_else(|| Link {
                    object: LINK_OBJECT.to_owned(),
                    marketo_key: m_id.to_string(),
                    crm_key: c_id.clone(),
                    base: Fields::new(),
                    base_hash: fields_hash(&Fields::new()),
                    agreed_at: step.now(),
                    tombstone: None,
                });
                step.tombstone(
                    &loser_link,
                    TombstoneKind::Merged {
                        into: winner.to_string(),
                    },
                    Side::Crm,
                );
                info!(crm_lead = %lead_key, winner, loser = m_id, "converted lead merged");
                summary.counts_mut(&object, Direction::CrmToMarketo).deleted += 1;
            }
            _ => {
                // To a contact without a Marketo lead: the Marketo lead moves to it.
                let account = conv
                    .company_ref
                    .as_ref()
                    .and_then(|f| value_text(contact.get(f)));
                let mut lead = Record::new();
                lead.insert("id".into(), json!(m_id));
                lead.insert(plan.marketo_crm_key.clone(), json!(c_id));
                if let Some(a) = &account {
                    lead.insert("externalCompanyId".into(), json!(a));
                }
                if step.dry_run {
                    step.plan_out.push(
                        PlannedChange::new(
                            &object,
                            Direction::CrmToMarketo,
                            PlannedAction::Convert,
                        )
                        .source(c_id.clone())
                        .target(m_id.to_string())
                        .fields(
                            &lead,
                            Some(&serde_json::Map::from_iter([(
                                plan.marketo_crm_key.clone(),
                                json!(lead_key),
                            )])),
                            &["id"],
                        )
                        .note(format!(
                            "CRM lead {lead_key} was converted into contact {c_id}"
                        )),
                    );
                    continue;
                }
                if owner.is_none() {
                    let mut rec = Fields::new();
                    rec.insert(pk.clone(), Value::Text(c_id.clone()));
                    rec.insert(plan.crm_marketo_id.clone(), Value::Text(m_id.to_string()));
                    let res = ctx.crm.upsert(&plan.crm_object, &pk, &[rec]).await?;
                    if let Some(refusal) = res.first().and_then(WriteResult::refusal) {
                        step.error(
                            Direction::MarketoToCrm,
                            m_id.to_string(),
                            Some(c_id.clone()),
                            json!({ "conversion": { "crm_lead": lead_key, "contact": c_id } }),
                            Failure::from(refusal),
                        );
                        continue;
                    }
                }
                let res = ctx
                    .marketo
                    .sync_leads(SyncAction::UpdateOnly, Some("id"), None, &[lead.clone()])
                    .await?;
                if let Some(failure) = res.first().and_then(Failure::of_marketo_result) {
                    step.error(
                        Direction::CrmToMarketo,
                        c_id.clone(),
                        Some(m_id.to_string()),
                        serde_json::Value::Object(lead),
                        failure,
                    );
                    continue;
                }
                // A link of the Marketo lead to another CRM record moves to the contact.
                for l in lead_links.iter().filter(|l| l.crm_key != c_id) {
                    step.tombstone(l, TombstoneKind::Merged { into: c_id.clone() }, Side::Crm);
                    step.link(m_id, &c_id, l.base.clone());
                }
                info!(crm_lead = %lead_key, contact = %c_id, lead = m_id, "converted lead moved to its contact");
                summary.counts_mut(&object, Direction::CrmToMarketo).updated += 1;
                moved.push(c_id);
            }
        }
    }
    Ok((Some(mark), moved))
}

/// Returns the CRM object's primary-key field (`id` when the CRM does not say).
async fn crm_pk(ctx: &Context, plan: &Plan) -> String {
    ctx.crm
        .describe(&plan.crm_object)
        .await
        .ok()
        .and_then(|s| s.id_field)
        .unwrap_or_else(|| "id".to_owned())
}

async fn apply_marketo_deletes(
    step: &mut Step<'_>,
    deleted: &BTreeSet<i64>,
    merged: &BTreeSet<i64>,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let keys: Vec<String> = deleted
        .iter()
        .filter(|id| !merged.contains(id))
        .map(i64::to_string)
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    let mut links = live(
        step.ctx
            .store
            .links_by_marketo_keys(LINK_OBJECT, &keys)
            .await?,
    );
    let ids: Vec<i64> = deleted
        .iter()
        .filter(|id| !merged.contains(id))
        .copied()
        .collect();
    links.extend(recovered_links(step, &ids).await?);
    let policy = step.ctx.settings.sync.lead_deletes;
    for l in links {
        apply_policy(step, &l, policy, summary).await?;
        step.tombstone(&l, TombstoneKind::Deleted, Side::Marketo);
    }
    Ok(())
}

/// Returns the unlinked live Marketo lead (other than `loser`, lowest id) whose match values equal
/// those of the CRM record `survivor`, if there is one.
async fn lead_matching_survivor(
    step: &Step<'_>,
    survivor: &str,
    loser: i64,
) -> Result<Option<i64>, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let Some(first) = plan.match_fields.first() else {
        return Ok(None);
    };
    let Some(m_field) = plan.field(first).and_then(|f| f.marketo.clone()) else {
        return Ok(None);
    };
    let Some(record) = ctx
        .crm
        .get(&plan.crm_object, &[survivor.to_owned()])
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let Ok(c) = c_rec(plan, &record.id, record.modified_at, &record.fields) else {
        return Ok(None);
    };
    let (Some(key), Some(value)) = (match_key(plan, &c.canon), value_text(c.canon.get(first)))
    else {
        return Ok(None);
    };
    let mut found: Vec<MLead> = find_leads(ctx, plan, &m_field, &[value])
        .await?
        .into_iter()
        .filter(|m| m.id != loser && match_key(plan, &m.canon).as_ref() == Some(&key))
        .collect();
    found.sort_by_key(|m| m.id);
    for m in found {
        let linked = live(
            ctx.store
                .links_by_marketo_keys(LINK_OBJECT, &[m.id.to_string()])
                .await?,
        );
        if linked.is_empty() {
            return Ok(Some(m.id));
        }
    }
    Ok(None)
}

/// Applies CRM deletions and merges to Marketo; returns the CRM keys of merge survivors that
/// took over their loser's lead (to be reconciled with it this cycle).
async fn apply_crm_deletes(
    step: &mut Step<'_>,
    tombstones: &[(String, DeleteHow)],
    summary: &mut CycleSummary,
) -> Result<Vec<String>, EngineError> {
    let mut repointed = Vec::new();
    if tombstones.is_empty() {
        return Ok(repointed);
    }
    let ctx = step.ctx;
    let plan = step.plan;
    let object = object_name(plan);
    let keys: Vec<String> = tombstones.iter().map(|(k, _)| k.clone()).collect();
    let links: HashMap<String, Link> = live(ctx.store.links_by_crm_keys(LINK_OBJECT, &keys).await?)
        .into_iter()
        .map(|l| (l.crm_key.clone(), l))
        .collect();
    let mut to_delete: Vec<i64> = Vec::new();
    for (key, how) in tombstones {
        let Some(l) = links.get(key) else {
            tracing::debug!(crm = %key, ?how, "crm deletion of an unlinked record");
            continue;
        };
        tracing::debug!(crm = %key, lead = %l.marketo_key, ?how, "crm deletion");
        match how {
            DeleteHow::Merged { into } => {
                // A CRM merge: merge the Marketo leads too, or re-point the survivor.
                let mut survivor = live(
                    ctx.store
                        .links_by_crm_keys(LINK_OBJECT, std::slice::from_ref(into))
                        .await?,
                )
                .into_iter()
                .next();
                if survivor.is_none() {
                    survivor = survivor_link_from_crm(step, into).await?;
                }
                let loser_id: Option<i64> = l.marketo_key.parse().ok();
                match (survivor, loser_id) {
                    (Some(s), Some(loser)) => {
                        let Ok(winner) = s.marketo_key.parse::<i64>() else {
                            continue;
                        };
                        if winner != loser {
                            if step.dry_run {
                                step.plan_out
                                    .push(planned_crm_merge(&object, key, into, loser, winner));
                            } else {
                                match ctx.marketo.merge_leads(winner, &[loser], false).await {
                                    Ok(()) => {}
                                    // One of the two leads is already gone in Marketo (deleted
                                    // or merged away since the last cycle): there is nothing to
                                    // merge, and the loser's lead, if it still exists, follows
                                    // the delete policy like its contact did.
                                    Err(e) if e.refusal_kind() == Some(RefusalKind::NotFound) => {
                                        tracing::warn!(
                                            winner,
                                            loser,
                                            "a lead of a crm merge is gone in marketo; merge skipped"
                                        );
                                        if ctx.settings.sync.lead_deletes == DeletePolicy::Delete {
                                            to_delete.push(loser);
                                        }
                                    }
                                    Err(e) => return Err(e.into()),
                                }
                            }
                        }
                        step.tombstone(l, TombstoneKind::Merged { into: into.clone() }, Side::Crm);
                        summary.counts_mut(&object, Direction::CrmToMarketo).deleted += 1;
                    }
                    (None, Some(lead)) => {
                        let survivor_alive = !ctx
                            .crm
                            .get(&plan.crm_object, std::slice::from_ref(into))
                            .await?
                            .is_empty();
                        if !survivor_alive {
                            // The survivor is gone too (deleted since, or by this cycle because
                            // its own lead left Marketo): the loser's lead follows the delete
                            // policy, as for a plain delete.
                            if ctx.settings.sync.lead_deletes == DeletePolicy::Delete {
                                to_delete.push(lead);
                            }
                            step.tombstone(l, TombstoneKind::Deleted, Side::Crm);
                            continue;
                        }
                        match lead_matching_survivor(step, into, lead).await? {
                            // The unlinked survivor's match values belong to another unlinked
                            // Marketo lead: merge the loser's lead into it, so that the pairing
                            // below links that lead and the survivor, once.
                            Some(winner) => {
                                if step.dry_run {
                                    step.plan_out
                                        .push(planned_crm_merge(&object, key, into, lead, winner));
                                } else {
                                    match ctx.marketo.merge_leads(winner, &[lead], false).await {
                                        Ok(()) => {}
                                        Err(e)
                                            if e.refusal_kind() == Some(RefusalKind::NotFound) => {}
                                        Err(e) => return Err(e.into()),
                                    }
                                }
                                step.tombstone(
                                    l,
                                    TombstoneKind::Merged { into: into.clone() },
                                    Side::Crm,
                                );
                                summary.counts_mut(&object, Direction::CrmToMarketo).deleted += 1;
                            }
                            None => {
                                // The survivor takes over the loser's lead. The loser still
                                // holds the lead's id, and the Marketo-id column is unique:
                                // free it first.
                                if !step.dry_run {
                                    let pk = crm_pk(ctx, plan).await;
                                    let mut rec = Fields::new();
                                    rec.insert(pk.clone(), Value::Text(l.crm_key.clone()));
                                    rec.insert(plan.crm_marketo_id.clone(), Value::Null);
                                    let res = ctx.crm.upsert(&plan.crm_object, &pk, &[rec]).await?;
                                    if let Some(refusal) =
                                        res.first().and_then(WriteResult::refusal)
                                    {
                                        step.error(
                                            Direction::CrmToMarketo,
                                            l.crm_key.clone(),
                                            Some(l.marketo_key.clone()),
                                            json!({ "merge": { "survivor": into, "lead": lead } }),
                                            Failure::from(refusal),
                                        );
                                        continue;
                                    }
                                }
                                step.tombstone(
                                    l,
                                    TombstoneKind::Merged { into: into.clone() },
                                    Side::Crm,
                                );
                                step.link(lead, into, l.base.clone());
                                repointed.push(into.clone());
                            }
                        }
                    }
                    _ => {}
                }
            }
            DeleteHow::Hard | DeleteHow::Soft => {
                if ctx.settings.sync.lead_deletes == DeletePolicy::Delete
                    && let Ok(id) = l.marketo_key.parse::<i64>()
                {
                    to_delete.push(id);
                }
                step.tombstone(l, TombstoneKind::Deleted, Side::Crm);
            }
        }
    }
    if !to_delete.is_empty() {
        if step.dry_run {
            for id in &to_delete {
                step.plan_out.push(
                    PlannedChange::new(&object, Direction::CrmToMarketo, PlannedAction::Delete)
                        .target(id.to_string())
                        .note("its CRM record was deleted (sync.lead_deletes = \"delete\")"),
                );
            }
        } else {
            for chunk in to_delete.chunks(crate::marketo::leads::MAX_BATCH) {
                ctx.marketo.delete_leads(chunk).await?;
            }
        }
        summary.counts_mut(&object, Direction::CrmToMarketo).deleted += to_delete.len() as u64;
    }
    Ok(repointed)
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

/// Returns the open lead errors by key (resolved when their record goes through, and the
/// previous entry when the record fails again).
async fn open_errors(ctx: &Context) -> Result<HashMap<ErrorKey, SyncError>, EngineError> {
    let errors = ctx
        .store
        .list_errors(&crate::store::ErrorFilter {
            status: Some(ErrorStatus::Open),
            object: Some(LINK_OBJECT.to_owned()),
            limit: 100_000,
        })
        .await?;
    Ok(errors
        .into_iter()
        .map(|e| {
            (
                ErrorKey {
                    object: e.object.clone(),
                    direction: e.direction,
                    record_key: e.record_key.clone(),
                },
                e,
            )
        })
        .collect())
}

/// The dry run's entry for a CRM merge carried to Marketo: `loser`'s lead merged into `winner`'s.
fn planned_crm_merge(
    object: &str,
    key: &str,
    into: &str,
    loser: i64,
    winner: i64,
) -> PlannedChange {
    PlannedChange::new(object, Direction::CrmToMarketo, PlannedAction::Merge)
        .source(key.to_owned())
        .target(loser.to_string())
        .note(format!(
            "CRM record {key} was merged into {into}: lead {loser} is merged into lead {winner}"
        ))
}
