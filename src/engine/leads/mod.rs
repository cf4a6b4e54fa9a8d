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
//!
//! Where each part lives:
//! - `mod.rs`: the step's flow ([`run`]) and the on-demand sync of one lead ([`sync_one`]);
//! - `gather.rs`: the Marketo activity, deleted-lead and bulk-export reads, the CRM change
//!   feeds, due ledger retries, and the watermarks the step commits;
//! - `pairing.rs`: pairing by link and by the keys each side holds;
//! - `matching.rs`: the match-field (email) match and same-key groups (duplicates, ambiguous
//!   matches held in the ledger);
//! - `write.rs`: the pairs through the pipeline's two-way runner (reconcile, writes or a dry
//!   run's plan rows, ledger, links), with leads' Marketo side (creates by the CRM-key field,
//!   updates by id, company routing), then the CRM-id write-back and the delete policy of
//!   leads gone from either side;
//! - `merges.rs`: Marketo lead merges, links recovered from the CRM after a killed cycle;
//! - `conversion.rs`: CRM lead conversion, leads held by unconverted CRM leads;
//! - `deletes.rs`: deletions both ways, CRM merges carried to Marketo;
//! - `inbound.rs`: leads one way into the CRM over linked pairs (bootstrap re-runs), by the
//!   same reconcile and CRM rows as the cycle, nothing written to Marketo;
//! - `step.rs`: the step's one commit, its ledger entries (through the pipeline's one retry
//!   policy) and tombstones; `records.rs`: the lead and CRM records read.

mod conversion;
mod deletes;
mod gather;
pub(crate) mod inbound;
mod matching;
mod merges;
mod pairing;
mod records;
mod step;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::cycle::Tunables;
use super::{Context, CrmRecordOutcome, CycleOptions, CycleSummary, EngineError, OnDemandOutcome};
use crate::mapping::Plan;
use crate::store::{Direction, StagedStore};

use records::{lead_read_fields, m_lead};
use step::Step;

/// The activity types the lead gather polls: New Lead, Change Data Value, Merge Leads.
pub const LEAD_ACTIVITY_TYPES: [i64; 3] = [12, 13, 32];
/// The watermark queue of the lead step's activity read (its cursor holds the paging token as
/// `{"token": ...}`).
pub(crate) const QUEUE_ACTIVITIES: &str = "activities";
const QUEUE_DELETED: &str = "deleted";
const QUEUE_CONVERSIONS: &str = "conversions";
/// The store object name of lead links (the `sync.objects` name of the lead mapping).
pub const LINK_OBJECT: &str = "leads";

/// Runs the lead step of a cycle: gather, conversions, merges and deletions, then pairing,
/// reconcile and writes ([`pairing::sync_pairs`]), then the one commit.
///
/// One store commit per step (DESIGN section 4, Commit). The stages (conversions, merges,
/// deletions, pairing) stage their store writes; the staged store's link reads see them, so
/// pairing never re-matches what a merge of this step linked; and the step's end commits links,
/// ledger, conflicts and watermarks in one transaction. No stage needs a commit of its own for
/// crash safety: every remote write of a stage is an idempotent upsert, merge or delete that a
/// re-run finds done (a merge or delete of a lead already gone answers 1004, handled as done),
/// and the CRM Marketo-id column a killed step wrote is read back by `recovered_links` /
/// `survivor_link_from_crm`. A step killed anywhere before the commit therefore leaves the
/// store as it found it and re-runs from the old watermarks.
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
    let staged = Arc::new(StagedStore::new(outer.store.clone()));
    let ctx = &Context {
        store: staged.clone(),
        ..outer.clone()
    };
    let mut step = Step::start(ctx, plan, tunables, options.dry_run, cancel).await?;
    let marks = gather::Marks::read(ctx, plan).await?;
    let (mut changes, bulk_leads) =
        gather::marketo(&step, tunables, marks.activities.as_ref(), summary).await?;
    let (deleted, del_token) = gather::deleted(ctx, marks.deleted.as_ref(), cancel).await?;
    // CRM lead conversions first: the contacts they touch are then read as changed below.
    let (conversions_wm, converted_contacts) =
        conversion::apply_conversions(&mut step, tunables, summary, cancel).await?;
    let crm_wm = marks.crm.as_ref();
    let mut crm = gather::crm(ctx, plan, crm_wm, tunables.crm_page, summary, cancel).await?;
    // Contacts that took over a converted lead are paired this cycle (the change feed may show
    // their new Marketo id only later).
    gather::read_crm_into(ctx, plan, converted_contacts, &mut crm.records).await?;
    gather::add_due(&step, &mut changes.changed, &mut crm.records).await?;

    // Merges first, so that the winners' links are in place before pairing.
    let merges = std::mem::take(&mut changes.merges);
    let merged_losers: std::collections::BTreeSet<i64> =
        merges.iter().flat_map(|(_, l)| l.clone()).collect();
    merges::apply_merges(&mut step, &merges, summary).await?;
    step.stage(&staged);
    deletes::apply_marketo_deletes(&mut step, &deleted, &merged_losers, summary).await?;
    // The leads of contacts merged away in the CRM: their lead moves to the survivor (taken over
    // or merged into its lead), so their memberships are read again (feed riders, below).
    let merged_away: Vec<String> = crm
        .tombstones
        .iter()
        .filter(|(_, how)| matches!(how, crate::crm::DeleteHow::Merged { .. }))
        .map(|(k, _)| k.clone())
        .collect();
    let rehomed: Vec<i64> =
        if merged_away.is_empty() || crate::engine::objects::feed_riders::active(ctx).is_empty() {
            Vec::new()
        } else {
            ctx.store
                .links_by_crm_keys(LINK_OBJECT, &merged_away)
                .await?
                .into_iter()
                .filter(|l| l.tombstone.is_none())
                .filter_map(|l| l.marketo_key.parse().ok())
                .collect()
        };
    let repointed = deletes::apply_crm_deletes(&mut step, &crm.tombstones, summary).await?;
    // Both sides are written: the tombstones are staged before pairing reads the links.
    step.stage(&staged);
    // A merge survivor that took over the loser's lead is reconciled with it now.
    gather::read_crm_into(ctx, plan, repointed, &mut crm.records).await?;

    let gone = deleted.union(&merged_losers).copied().collect();
    let leads =
        gather::changed_leads(ctx, plan, &changes.changed, bulk_leads, &gone, summary).await?;
    let cs = std::mem::take(&mut crm.records);
    summary
        .counts_mut(&plan.object, Direction::MarketoToCrm)
        .read += leads.len() as u64;
    summary
        .counts_mut(&plan.object, Direction::CrmToMarketo)
        .read += cs.len() as u64;
    let ms: BTreeMap<i64, records::MLead> = leads.into_iter().map(|l| (l.id, l)).collect();
    pairing::sync_pairs(&mut step, ms, cs, summary, cancel).await?;

    // Watermarks move with the step's commit; the feed riders' activities are handed over in
    // the same commit as the token that read them.
    let at = ctx.clock.now();
    let riders = std::mem::take(&mut changes.riders);
    let winners: Vec<i64> = merges.iter().map(|(w, _)| *w).chain(rehomed).collect();
    let handed =
        crate::engine::objects::feed_riders::handed_over(ctx, &riders, &winners, at).await?;
    step.commit.watermarks.extend(handed);
    let marks = gather::watermarks(plan, &marks, changes, del_token, crm.read, at);
    step.commit.watermarks.extend(marks);
    step.commit.watermarks.extend(conversions_wm);
    if step.dry_run {
        summary.plan.append(&mut step.plan_out);
        info!(object = %plan.object, "lead step planned (dry run: nothing written or committed)");
    } else {
        staged.commit_staged(step.commit).await?;
        info!(object = %plan.object, "lead step committed");
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
    let mut step = Step::on_demand(ctx, plan, cancel).await?;
    let ms = BTreeMap::from([(lead.id, lead)]);
    pairing::sync_pairs(&mut step, ms, BTreeMap::new(), &mut summary, cancel).await?;
    ctx.store.commit(step.commit).await?;
    Ok(if wrote(&summary, &plan.object, Direction::MarketoToCrm) {
        OnDemandOutcome::Synced
    } else {
        OnDemandOutcome::Unchanged
    })
}

/// Syncs a batch of leads to the CRM now (queued webhooks): one Get Leads call per 300 ids
/// (`filterType=id`), one pairing and one store commit for the whole batch.
///
/// Returns each asked id with what happened to it.
///
/// # Errors
///
/// As [`run`].
pub async fn sync_batch(
    ctx: &Context,
    plan: &Plan,
    lead_ids: &[i64],
    cancel: &CancellationToken,
) -> Result<Vec<(i64, OnDemandOutcome)>, EngineError> {
    let asked: std::collections::BTreeSet<i64> = lead_ids.iter().copied().collect();
    let mut summary = CycleSummary::default();
    let none = std::collections::BTreeSet::new();
    let leads = gather::changed_leads(ctx, plan, &asked, None, &none, &mut summary).await?;
    let ms: BTreeMap<i64, records::MLead> = leads.into_iter().map(|l| (l.id, l)).collect();
    let found: std::collections::BTreeSet<i64> = ms.keys().copied().collect();
    let mut step = Step::on_demand(ctx, plan, cancel).await?;
    pairing::sync_pairs(&mut step, ms, BTreeMap::new(), &mut summary, cancel).await?;
    let refused: std::collections::BTreeSet<String> = step
        .commit
        .errors_upsert
        .iter()
        .map(|e| e.record_key.clone())
        .collect();
    let any_written = wrote(&summary, &plan.object, Direction::MarketoToCrm);
    // Without any write in the batch, every lead found already agreed with the CRM.
    let written = step
        .commit
        .links_upsert
        .iter()
        .map(|l| l.marketo_key.clone());
    let written: std::collections::BTreeSet<String> = written.collect();
    ctx.store.commit(step.commit).await?;
    Ok(asked
        .into_iter()
        .map(|id| {
            let key = id.to_string();
            let outcome = if !found.contains(&id) {
                OnDemandOutcome::NotFound
            } else if refused.contains(&key) {
                OnDemandOutcome::Refused
            } else if any_written && written.contains(&key) {
                OnDemandOutcome::Synced
            } else {
                OnDemandOutcome::Unchanged
            };
            (id, outcome)
        })
        .collect())
}

/// Syncs one CRM record of the lead mapping's object to Marketo now (`POST /sync/crm/...`,
/// `sync --record`), through the same pairing, writes, ledger and store commit as the cycle.
///
/// # Errors
///
/// As [`run`].
pub async fn sync_crm_record(
    ctx: &Context,
    plan: &Plan,
    crm_id: &str,
    cancel: &CancellationToken,
) -> Result<CrmRecordOutcome, EngineError> {
    let mut cs = BTreeMap::new();
    gather::read_crm_into(ctx, plan, vec![crm_id.to_owned()], &mut cs).await?;
    if cs.is_empty() {
        return Ok(CrmRecordOutcome::NotFound);
    }
    let mut summary = CycleSummary::default();
    let mut step = Step::on_demand(ctx, plan, cancel).await?;
    pairing::sync_pairs(&mut step, BTreeMap::new(), cs, &mut summary, cancel).await?;
    let refusal = step
        .commit
        .errors_upsert
        .iter()
        .find(|e| e.direction == Direction::CrmToMarketo && e.record_key == crm_id)
        .map(|e| (e.code.clone(), e.message.clone()));
    ctx.store.commit(step.commit).await?;
    if let Some((code, message)) = refusal {
        return Ok(CrmRecordOutcome::Refused { code, message });
    }
    Ok(if wrote(&summary, &plan.object, Direction::CrmToMarketo) {
        CrmRecordOutcome::Synced
    } else {
        CrmRecordOutcome::Unchanged
    })
}

/// Returns true when the step created or updated a record of `object` in `direction`.
fn wrote(summary: &CycleSummary, object: &str, direction: Direction) -> bool {
    summary
        .objects
        .get(object)
        .and_then(|d| d.get(&direction))
        .is_some_and(|c| c.created + c.updated > 0)
}
