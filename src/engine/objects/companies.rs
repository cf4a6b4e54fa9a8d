//! CRM accounts <-> Marketo companies, by `externalCompanyId` = the CRM account id.
//!
//! The CRM is the source of truth: every created or updated account is written to Marketo.
//! Marketo-side edits of linked companies flow back to the CRM: the step reads the linked
//! companies' current Marketo values (Get Companies by `externalCompanyId`, 300 per call) for the
//! accounts that changed in the CRM, and for every linked company once a day (drift), and
//! reconciles the three values (base, Marketo, CRM) with [`reconcile`]; a field changed on both
//! sides is a conflict settled by the field's policy and logged.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    ObjectFamily, PlannedWrite, apply_marketo, error_key, from_record, key_text, link,
    links_by_crm, sync_error,
};
use crate::crm::{ChangeKind, WriteResult};
use crate::engine::ledger;
use crate::engine::pipeline::{self, gather::crm_with_retries};
use crate::engine::reconcile::{FieldRule, SideState, reconcile};
use crate::engine::summary::{PlannedAction, PlannedChange, json_fields};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{Plan, Plans};
use crate::marketo::Record;
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, Link, StepCommit, Watermark};

/// The `sync.objects` name of this step's mapping.
pub const OBJECT: &str = "companies";
/// The Marketo watermark queue remembering the last full (drift) read of linked companies.
pub const DRIFT_QUEUE: &str = "drift";
/// How often every linked company is read back from Marketo to catch Marketo-side edits.
pub const DRIFT_INTERVAL: chrono::Duration = chrono::Duration::days(1);

/// One pair to reconcile.
struct Pair {
    crm_key: String,
    crm: Option<(Fields, DateTime<Utc>)>,
    link: Option<Link>,
}

/// Syncs companies both ways (see the module documentation). Does nothing when the object is not
/// enabled.
///
/// # Errors
///
/// A whole-call failure of the CRM, Marketo or the store, or cancellation.
pub async fn run(
    ctx: &Context,
    plans: &Plans,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let Some(plan) = plans.objects.get(OBJECT) else {
        return Ok(());
    };
    let result = run_plan(ctx, plan, summary, options, cancel).await;
    super::skip_when_native_sync(result, OBJECT, summary)
}

async fn run_plan(
    ctx: &Context,
    plan: &Plan,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let object = plan.object.as_str();
    let now = ctx.clock.now();
    let (mut gathered, previous) = crm_with_retries(ctx, plan, cancel).await?;
    let mut commit = pipeline::commit::start(&mut gathered);

    // The pairs: every CRM upsert, plus every linked company on a drift day.
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    for change in &gathered.changes {
        if let ChangeKind::Upserted { fields } = &change.kind {
            pairs.insert(
                change.id.clone(),
                Pair {
                    crm_key: change.id.clone(),
                    crm: Some((fields.clone(), change.modified_at)),
                    link: None,
                },
            );
        }
    }
    summary.counts_mut(object, Direction::CrmToMarketo).read += pairs.len() as u64;
    let ids: Vec<String> = pairs.keys().cloned().collect();
    for (k, l) in links_by_crm(ctx, object, &ids).await? {
        if l.tombstone.is_none()
            && let Some(p) = pairs.get_mut(&k)
        {
            p.link = Some(l);
        }
    }
    add_drift_pairs(ctx, object, now, &mut pairs, &mut commit).await?;

    // Read the linked ones from Marketo.
    let wanted: Vec<String> = pairs
        .values()
        .filter_map(|p| p.link.as_ref().map(|l| l.marketo_key.clone()))
        .collect();
    let marketo = read_marketo(ctx, plan, &wanted, cancel).await?;
    summary.counts_mut(object, Direction::MarketoToCrm).read += marketo.len() as u64;

    // Reconcile.
    let rules: Vec<FieldRule> = plan
        .enabled_fields()
        .filter(|f| f.constant.is_none())
        .map(FieldRule::of)
        .collect();
    let mut to_marketo: Vec<PlannedWrite> = Vec::new();
    let mut to_crm: Vec<(String, Fields)> = Vec::new();
    let mut dry: Vec<PlannedChange> = Vec::new();
    let mut agreed: BTreeMap<String, (String, Fields)> = BTreeMap::new();
    for pair in pairs.values() {
        let crm_canonical = match &pair.crm {
            Some((raw, at)) => match plan.to_canonical(Side::Crm, raw) {
                Ok(c) => Some((c, *at)),
                Err(e) => {
                    summary.counts_mut(object, Direction::CrmToMarketo).failed += 1;
                    commit.errors_upsert.push(sync_error(
                        ctx,
                        object,
                        Direction::CrmToMarketo,
                        &pair.crm_key,
                        None,
                        json!({}),
                        "invalid_value",
                        &e.to_string(),
                        false,
                        previous.get(&pair.crm_key),
                    ));
                    continue;
                }
            },
            None => None,
        };
        let marketo_key = pair
            .link
            .as_ref()
            .map_or_else(|| pair.crm_key.clone(), |l| l.marketo_key.clone());
        let key_record = |fields: &Fields| {
            let mut r = super::to_record(&plan.render(Side::Marketo, fields));
            r.insert(plan.marketo_crm_key.clone(), json!(marketo_key));
            r
        };
        // Refused before and unchanged since: it waits for its retry (or an operator).
        let waits_in_ledger = |record: &Record| {
            ledger::waits(
                previous.get(&pair.crm_key),
                &serde_json::Value::Object(record.clone()),
                now,
            )
        };
        let m_side = marketo.get(&marketo_key);
        let (link, m_side) = match (&pair.link, m_side) {
            (Some(l), Some(m)) => (l, m),
            _ => {
                // New, or gone from Marketo: write the whole CRM record.
                let Some((c, _)) = crm_canonical else {
                    continue;
                };
                if waits_in_ledger(&key_record(&c)) {
                    summary.counts_mut(object, Direction::CrmToMarketo).skipped += 1;
                    continue;
                }
                if options.dry_run {
                    dry.push(
                        PlannedChange::new(object, Direction::CrmToMarketo, PlannedAction::Create)
                            .source(pair.crm_key.clone())
                            .fields(&key_record(&c), None, &[]),
                    );
                }
                to_marketo.push(PlannedWrite {
                    crm_key: pair.crm_key.clone(),
                    marketo_key: marketo_key.clone(),
                    record: key_record(&c),
                    base: c.clone(),
                    replaces: None,
                    before: None,
                    key_names: Vec::new(),
                });
                agreed.insert(pair.crm_key.clone(), (marketo_key, c));
                continue;
            }
        };
        let m_canonical = match plan.to_canonical(Side::Marketo, &m_side.0) {
            Ok(c) => c,
            Err(e) => {
                summary.counts_mut(object, Direction::MarketoToCrm).failed += 1;
                warn!(object, marketo_key = %marketo_key, error = %e, "unreadable marketo company");
                continue;
            }
        };
        let r = reconcile(
            &rules,
            &link.base,
            Some(SideState {
                fields: &m_canonical,
                modified_at: m_side.1,
            }),
            crm_canonical.as_ref().map(|(c, at)| SideState {
                fields: c,
                modified_at: Some(*at),
            }),
        );
        for c in &r.conflicts {
            let direction = match c.winner {
                Side::Crm => Direction::CrmToMarketo,
                Side::Marketo => Direction::MarketoToCrm,
            };
            summary.counts_mut(object, direction).conflicts += 1;
            commit
                .conflicts
                .push(c.record(object, &marketo_key, &pair.crm_key, now));
        }
        if r.is_noop() {
            if r.agreed != link.base {
                commit.links_upsert.push(super::link(
                    object,
                    &marketo_key,
                    &pair.crm_key,
                    r.agreed.clone(),
                    now,
                ));
            } else {
                let d = if pair.crm.is_some() {
                    Direction::CrmToMarketo
                } else {
                    Direction::MarketoToCrm
                };
                summary.counts_mut(object, d).skipped += 1;
            }
            continue;
        }
        // The pair waits while its refused Marketo write is unchanged and not due.
        if !r.to_marketo.is_empty() && waits_in_ledger(&key_record(&r.to_marketo)) {
            summary.counts_mut(object, Direction::CrmToMarketo).skipped += 1;
            continue;
        }
        if options.dry_run {
            let key = plan.marketo_crm_key.as_str();
            if !r.to_marketo.is_empty() {
                dry.push(
                    PlannedChange::new(object, Direction::CrmToMarketo, PlannedAction::Update)
                        .source(pair.crm_key.clone())
                        .target(marketo_key.clone())
                        .fields(
                            &key_record(&r.to_marketo),
                            Some(&json_fields(&m_side.0)),
                            &[key],
                        ),
                );
            }
            if !r.to_crm.is_empty() {
                let before = match &pair.crm {
                    Some((raw, _)) => json_fields(raw),
                    None => json_fields(&plan.render(Side::Crm, &link.base)),
                };
                dry.push(
                    PlannedChange::new(object, Direction::MarketoToCrm, PlannedAction::Update)
                        .source(marketo_key.clone())
                        .target(pair.crm_key.clone())
                        .fields(
                            &json_fields(&plan.render(Side::Crm, &r.to_crm)),
                            Some(&before),
                            &[],
                        ),
                );
            }
        }
        if !r.to_marketo.is_empty() {
            to_marketo.push(PlannedWrite {
                crm_key: pair.crm_key.clone(),
                marketo_key: marketo_key.clone(),
                record: key_record(&r.to_marketo),
                base: r.agreed.clone(),
                replaces: None,
                before: None,
                key_names: Vec::new(),
            });
        }
        if !r.to_crm.is_empty() {
            to_crm.push((pair.crm_key.clone(), r.to_crm.clone()));
        }
        agreed.insert(pair.crm_key.clone(), (marketo_key, r.agreed));
    }

    if options.dry_run {
        for change in dry {
            summary.planned(change);
        }
        return Ok(());
    }

    // Apply: Marketo first, then the CRM. A pair's link moves only when all its writes worked.
    let mut marketo_commit = StepCommit::default();
    apply_marketo(
        ctx,
        object,
        &ObjectFamily::Companies,
        to_marketo,
        &previous,
        &mut marketo_commit,
        summary,
        cancel,
    )
    .await?;
    let marketo_ok: BTreeSet<String> = marketo_commit
        .links_upsert
        .iter()
        .map(|l| l.crm_key.clone())
        .collect();
    let marketo_failed: BTreeSet<String> = marketo_commit
        .errors_upsert
        .iter()
        .map(|e| e.record_key.clone())
        .collect();
    commit.errors_upsert.extend(marketo_commit.errors_upsert);
    commit.errors_resolve.extend(marketo_commit.errors_resolve);
    let mut crm_ok: BTreeSet<String> = BTreeSet::new();
    let mut crm_failed: BTreeSet<String> = BTreeSet::new();
    // CRM writes are keyed by the column holding the Marketo key (`keys.crm_marketo_id`): the
    // adapter upserts by a unique column and refuses the generated primary key. A row that does
    // not carry its Marketo key cannot be updated safely (an upsert would insert a new account).
    let wanted: Vec<String> = to_crm
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !marketo_failed.contains(k))
        .collect();
    let mut stamped: BTreeSet<String> = BTreeSet::new();
    for chunk in wanted.chunks(200) {
        for record in ctx.crm.get(&plan.crm_object, chunk).await? {
            let carried = key_text(record.fields.get(&plan.crm_marketo_id));
            if carried.is_some() && carried == agreed.get(&record.id).map(|(m, _)| m.clone()) {
                stamped.insert(record.id);
            }
        }
    }
    let mut crm_batch: Vec<(String, Fields)> = Vec::new();
    for (k, f) in to_crm {
        if marketo_failed.contains(&k) {
            continue;
        }
        if stamped.contains(&k) {
            crm_batch.push((k, f));
            continue;
        }
        summary.counts_mut(object, Direction::MarketoToCrm).failed += 1;
        crm_failed.insert(k.clone());
        let marketo_key = agreed.get(&k).map(|(m, _)| m.clone());
        let message = format!(
            "the crm record does not hold its marketo key in `{}`, so it cannot be updated by it",
            plan.crm_marketo_id
        );
        commit.errors_upsert.push(sync_error(
            ctx,
            object,
            Direction::MarketoToCrm,
            &k,
            marketo_key,
            serde_json::Value::Object(super::to_record(&plan.render(Side::Crm, &f))),
            "crm_key_missing",
            &message,
            false,
            None,
        ));
    }
    for chunk in crm_batch.chunks(200) {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let batch: Vec<Fields> = chunk
            .iter()
            .map(|(k, f)| {
                let mut r = plan.render(Side::Crm, f);
                let key = agreed.get(k).map_or_else(|| k.clone(), |(m, _)| m.clone());
                r.insert(plan.crm_marketo_id.clone(), Value::Text(key));
                r
            })
            .collect();
        let results = ctx
            .crm
            .upsert(&plan.crm_object, &plan.crm_marketo_id, &batch)
            .await?;
        for ((k, _), (result, record)) in chunk.iter().zip(results.into_iter().zip(&batch)) {
            let counts = summary.counts_mut(object, Direction::MarketoToCrm);
            match result {
                WriteResult::Created { .. } | WriteResult::Updated { .. } => {
                    counts.updated += 1;
                    crm_ok.insert(k.clone());
                }
                WriteResult::Deleted { .. } => {}
                WriteResult::Refused(refusal) => {
                    counts.failed += 1;
                    crm_failed.insert(k.clone());
                    commit.errors_upsert.push(sync_error(
                        ctx,
                        object,
                        Direction::MarketoToCrm,
                        k,
                        agreed.get(k).map(|(m, _)| m.clone()),
                        serde_json::Value::Object(super::to_record(record)),
                        refusal.code(),
                        &refusal.ledger_message(),
                        refusal.retryable,
                        None,
                    ));
                }
            }
        }
    }
    for (crm_key, (marketo_key, base)) in agreed {
        let wrote_marketo = marketo_ok.contains(&crm_key);
        let wrote_crm = crm_ok.contains(&crm_key);
        let failed = marketo_failed.contains(&crm_key) || crm_failed.contains(&crm_key);
        if !failed && (wrote_marketo || wrote_crm) {
            commit
                .links_upsert
                .push(link(object, &marketo_key, &crm_key, base, now));
            if previous.contains_key(&crm_key) {
                commit
                    .errors_resolve
                    .push(error_key(object, Direction::CrmToMarketo, &crm_key));
            }
        }
    }
    info!(object, "companies step applied");
    pipeline::commit::finish(ctx, commit).await
}

/// The company drift hook: once every [`DRIFT_INTERVAL`], every linked company not gathered
/// from the CRM is paired too, so that its Marketo-side edits are read and reconciled; the
/// [`DRIFT_QUEUE`] watermark remembering the read goes into the step's commit.
///
/// # Errors
///
/// A store failure.
async fn add_drift_pairs(
    ctx: &Context,
    object: &str,
    now: DateTime<Utc>,
    pairs: &mut BTreeMap<String, Pair>,
    commit: &mut StepCommit,
) -> Result<(), EngineError> {
    let drift = ctx
        .store
        .watermark(Side::Marketo, object, DRIFT_QUEUE)
        .await?;
    if drift.is_some_and(|w| now - w.at < DRIFT_INTERVAL) {
        return Ok(());
    }
    let mut after: Option<String> = None;
    loop {
        let page = ctx.store.links_page(object, after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.marketo_key.clone());
        for l in page {
            if l.tombstone.is_some() || pairs.contains_key(&l.crm_key) {
                continue;
            }
            pairs.insert(
                l.crm_key.clone(),
                Pair {
                    crm_key: l.crm_key.clone(),
                    crm: None,
                    link: Some(l),
                },
            );
        }
    }
    commit.watermarks.push(Watermark {
        system: Side::Marketo,
        object: object.to_owned(),
        queue: DRIFT_QUEUE.to_owned(),
        at: now,
        tie: None,
        cursor: None,
    });
    Ok(())
}

/// Returns the Marketo companies with these `externalCompanyId`s: their raw mapped fields and
/// `updatedAt`, by key.
///
/// # Errors
///
/// A whole-call Marketo failure, or cancellation.
async fn read_marketo(
    ctx: &Context,
    plan: &Plan,
    keys: &[String],
    cancel: &CancellationToken,
) -> Result<BTreeMap<String, (Fields, Option<DateTime<Utc>>)>, EngineError> {
    let mut fields = plan.read_fields(Side::Marketo);
    for extra in [plan.marketo_crm_key.as_str(), "updatedAt"] {
        if !fields.iter().any(|f| f == extra) {
            fields.push(extra.to_owned());
        }
    }
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(300) {
        let mut token: Option<String> = None;
        loop {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let page = ctx
                .marketo
                .get_companies(&plan.marketo_crm_key, chunk, &fields, token.as_deref())
                .await?;
            for record in &page.records {
                let raw = from_record(record);
                let Some(key) = key_text(raw.get(&plan.marketo_crm_key)) else {
                    continue;
                };
                let at = record
                    .get("updatedAt")
                    .and_then(|v| v.as_str())
                    .and_then(crate::marketo::model::parse_marketo_datetime);
                out.insert(key, (raw, at));
            }
            match page.next_page_token {
                Some(t) if page.more_result && !page.records.is_empty() => token = Some(t),
                _ => break,
            }
        }
    }
    Ok(out)
}
