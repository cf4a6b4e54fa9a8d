//! Deletions both ways: a lead deleted in Marketo makes its CRM record follow
//! `sync.lead_deletes` (delete, flag or ignore); a CRM record deleted or merged away deletes,
//! merges or re-points its lead.

use std::collections::{BTreeSet, HashMap};

use serde_json::json;

use super::LINK_OBJECT;
use super::gather::find_leads;
use super::merges::{recovered_links, survivor_link_from_crm};
use super::records::{c_rec, crm_pk, live, match_key, value_text};
use super::step::Step;
use crate::config::DeletePolicy;
use crate::crm::{DeleteHow, WriteResult};
use crate::engine::ledger::Failure;
use crate::engine::summary::{PlannedAction, PlannedChange, json_fields};
use crate::engine::{CycleSummary, EngineError};
use crate::marketo::RefusalKind;
use crate::marketo::leads::MAX_BATCH;
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, Link, TombstoneKind};

/// Applies `policy` to the CRM record of `link`, whose lead left Marketo (deleted, merged away
/// or gone).
pub(super) async fn apply_policy(
    step: &mut Step<'_>,
    link: &Link,
    policy: DeletePolicy,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    match policy {
        DeletePolicy::Ignore => return Ok(()),
        DeletePolicy::Delete => {
            if step.dry_run {
                step.plan_out.push(
                    PlannedChange::new(
                        &plan.object,
                        Direction::MarketoToCrm,
                        PlannedAction::Delete,
                    )
                    .source(link.marketo_key.clone())
                    .target(link.crm_key.clone())
                    .note("the lead left Marketo (sync.lead_deletes = \"delete\")"),
                );
            } else {
                ctx.crm
                    .delete(&plan.crm_object, std::slice::from_ref(&link.crm_key))
                    .await?;
            }
        }
        DeletePolicy::Flag => {
            if !flag_deleted(step, link, summary).await? {
                return Ok(());
            }
        }
    }
    summary
        .counts_mut(&plan.object, Direction::MarketoToCrm)
        .deleted += 1;
    Ok(())
}

/// Sets the CRM record's deleted flag (`keys.crm_deleted_flag`); returns false when it was not
/// flagged (no flag column: a warning; a refusal: a ledger entry).
async fn flag_deleted(
    step: &mut Step<'_>,
    link: &Link,
    summary: &mut CycleSummary,
) -> Result<bool, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let Some(column) = plan.crm_deleted_flag.clone() else {
        summary.warnings.push(format!(
            "lead {} left Marketo but `keys.crm_deleted_flag` is not set: CRM record {} \
             was not flagged",
            link.marketo_key, link.crm_key
        ));
        return Ok(false);
    };
    let pk = crm_pk(ctx, plan).await;
    let mut rec = Fields::new();
    rec.insert(pk.clone(), Value::Text(link.crm_key.clone()));
    rec.insert(column, Value::Bool(true));
    if step.dry_run {
        step.plan_out.push(
            PlannedChange::new(
                &plan.object,
                Direction::MarketoToCrm,
                PlannedAction::FlagDeleted,
            )
            .source(link.marketo_key.clone())
            .target(link.crm_key.clone())
            .fields(&json_fields(&rec), None, &[pk.as_str()])
            .note("the lead left Marketo (sync.lead_deletes = \"flag\")"),
        );
        return Ok(true);
    }
    let res = ctx.crm.upsert(&plan.crm_object, &pk, &[rec]).await?;
    if let Some(refusal) = res.first().and_then(WriteResult::refusal) {
        step.error(
            Direction::MarketoToCrm,
            link.marketo_key.clone(),
            Some(link.crm_key.clone()),
            json!({ "flag_deleted": link.crm_key }),
            Failure::from(refusal),
        );
        return Ok(false);
    }
    Ok(true)
}

/// Applies the Marketo deletions of leads not merged away: each linked CRM record follows the
/// delete policy and the link is tombstoned.
pub(super) async fn apply_marketo_deletes(
    step: &mut Step<'_>,
    deleted: &BTreeSet<i64>,
    merged: &BTreeSet<i64>,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let ids: Vec<i64> = deleted
        .iter()
        .filter(|id| !merged.contains(id))
        .copied()
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = ids.iter().map(i64::to_string).collect();
    let ctx = step.ctx;
    let store = &ctx.store;
    let mut links = live(store.links_by_marketo_keys(LINK_OBJECT, &keys).await?);
    links.extend(recovered_links(step, &ids).await?);
    let policy = step.ctx.settings.sync.lead_deletes;
    for l in links {
        apply_policy(step, &l, policy, summary).await?;
        step.tombstone(&l, TombstoneKind::Deleted, Side::Marketo);
    }
    Ok(())
}

/// What the CRM deletions of one step leave to do after they are read.
#[derive(Default)]
struct CrmDeletes {
    /// Leads to delete from Marketo (`sync.lead_deletes = "delete"`).
    to_delete: Vec<i64>,
    /// CRM merge survivors that took over their loser's lead.
    repointed: Vec<String>,
}

/// Applies CRM deletions and merges to Marketo; returns the CRM keys of merge survivors that
/// took over their loser's lead (to be reconciled with it this cycle).
pub(super) async fn apply_crm_deletes(
    step: &mut Step<'_>,
    tombstones: &[(String, DeleteHow)],
    summary: &mut CycleSummary,
) -> Result<Vec<String>, EngineError> {
    if tombstones.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = tombstones.iter().map(|(k, _)| k.clone()).collect();
    let links: HashMap<String, Link> =
        live(step.ctx.store.links_by_crm_keys(LINK_OBJECT, &keys).await?)
            .into_iter()
            .map(|l| (l.crm_key.clone(), l))
            .collect();
    let delete_leads = step.ctx.settings.sync.lead_deletes == DeletePolicy::Delete;
    let mut out = CrmDeletes::default();
    for (key, how) in tombstones {
        let Some(l) = links.get(key) else {
            tracing::debug!(crm = %key, ?how, "crm deletion of an unlinked record");
            continue;
        };
        tracing::debug!(crm = %key, lead = %l.marketo_key, ?how, "crm deletion");
        match how {
            DeleteHow::Merged { into } => crm_merge(step, key, into, l, &mut out, summary).await?,
            DeleteHow::Hard | DeleteHow::Soft => {
                if delete_leads && let Ok(id) = l.marketo_key.parse::<i64>() {
                    out.to_delete.push(id);
                }
                step.tombstone(l, TombstoneKind::Deleted, Side::Crm);
            }
        }
    }
    delete_leads_of(step, &out.to_delete, summary).await?;
    Ok(out.repointed)
}

/// Carries the CRM merge of record `key` (linked by `l`) into `into` to Marketo: the two leads
/// are merged, or the survivor takes the loser's lead over.
async fn crm_merge(
    step: &mut Step<'_>,
    key: &str,
    into: &str,
    l: &Link,
    out: &mut CrmDeletes,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let ctx = step.ctx;
    let store = &ctx.store;
    // A survivor linked earlier in this step (it took over an earlier loser's lead: HubSpot
    // reports a chain of merges as merges into the last survivor) is not in the store yet.
    let mut survivor = match pending_link(step, into) {
        Some(pending) => pending,
        None => live(
            store
                .links_by_crm_keys(LINK_OBJECT, &[into.to_owned()])
                .await?,
        )
        .into_iter()
        .next(),
    };
    if survivor.is_none() {
        survivor = survivor_link_from_crm(step, into).await?;
    }
    let Ok(loser) = l.marketo_key.parse::<i64>() else {
        return Ok(());
    };
    match survivor {
        Some(s) => {
            let Ok(winner) = s.marketo_key.parse::<i64>() else {
                return Ok(());
            };
            if winner != loser {
                merge_into_survivor(step, key, into, loser, winner, out).await?;
            }
            let kind = TombstoneKind::Merged { into: into.into() };
            step.tombstone(l, kind, Side::Crm);
            summary
                .counts_mut(&step.plan.object, Direction::CrmToMarketo)
                .deleted += 1;
        }
        None => unlinked_survivor(step, key, into, l, loser, out, summary).await?,
    }
    Ok(())
}

/// Returns the link of CRM record `key` that this step has staged but not committed yet: `Some`
/// of the live link, or `Some(None)` when the step tombstoned it; `None` when the step has not
/// touched it.
fn pending_link(step: &Step<'_>, key: &str) -> Option<Option<Link>> {
    step.commit
        .links_upsert
        .iter()
        .rev()
        .find(|l| l.object == LINK_OBJECT && l.crm_key == key)
        .map(|l| l.tombstone.is_none().then(|| l.clone()))
}

/// Merges the loser's lead into the survivor's (planned on a dry run). A lead already gone in
/// Marketo means there is nothing to merge: the loser's lead, if it still exists, follows the
/// delete policy like its CRM record did.
async fn merge_into_survivor(
    step: &mut Step<'_>,
    key: &str,
    into: &str,
    loser: i64,
    winner: i64,
    out: &mut CrmDeletes,
) -> Result<(), EngineError> {
    if step.dry_run {
        let change = planned_crm_merge(&step.plan.object, key, into, loser, winner);
        step.plan_out.push(change);
        return Ok(());
    }
    let ctx = step.ctx;
    match ctx.marketo.merge_leads(winner, &[loser], false).await {
        Ok(()) => Ok(()),
        Err(e) if e.refusal_kind() == Some(RefusalKind::NotFound) => {
            tracing::warn!(
                winner,
                loser,
                "a lead of a crm merge is gone in marketo; merge skipped"
            );
            if ctx.settings.sync.lead_deletes == DeletePolicy::Delete {
                out.to_delete.push(loser);
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// A CRM merge into a survivor that has no lead linked: the loser's lead follows the delete
/// policy when the survivor is gone too; it is merged into another unlinked lead holding the
/// survivor's match values; or the survivor takes it over.
#[allow(clippy::too_many_arguments)]
async fn unlinked_survivor(
    step: &mut Step<'_>,
    key: &str,
    into: &str,
    l: &Link,
    lead: i64,
    out: &mut CrmDeletes,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let survivor_alive = !ctx
        .crm
        .get(&plan.crm_object, &[into.to_owned()])
        .await?
        .is_empty();
    if !survivor_alive {
        // The survivor is gone too (deleted since, or by this cycle because its own lead left
        // Marketo): the loser's lead follows the delete policy, as for a plain delete.
        if ctx.settings.sync.lead_deletes == DeletePolicy::Delete {
            out.to_delete.push(lead);
        }
        step.tombstone(l, TombstoneKind::Deleted, Side::Crm);
        return Ok(());
    }
    let merged = TombstoneKind::Merged { into: into.into() };
    let Some(winner) = lead_matching_survivor(step, into, lead).await? else {
        // The survivor takes over the loser's lead.
        if take_lead(step, into, l, lead).await? {
            step.tombstone(l, merged, Side::Crm);
            step.link(lead, into, l.base.clone());
            out.repointed.push(into.to_owned());
        }
        return Ok(());
    };
    // The unlinked survivor's match values belong to another unlinked Marketo lead: merge the
    // loser's lead into it, so that the pairing below links that lead and the survivor, once.
    if step.dry_run {
        let change = planned_crm_merge(&plan.object, key, into, lead, winner);
        step.plan_out.push(change);
    } else {
        match ctx.marketo.merge_leads(winner, &[lead], false).await {
            Ok(()) => {}
            Err(e) if e.refusal_kind() == Some(RefusalKind::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    step.tombstone(l, merged, Side::Crm);
    summary
        .counts_mut(&plan.object, Direction::CrmToMarketo)
        .deleted += 1;
    Ok(())
}

/// Frees the lead id the merged-away CRM record `l` holds (the Marketo-id column is unique), so
/// that the survivor `into` can take the lead over; returns false when the CRM refused (a
/// ledger entry). Nothing is written on a dry run.
async fn take_lead(
    step: &mut Step<'_>,
    into: &str,
    l: &Link,
    lead: i64,
) -> Result<bool, EngineError> {
    if step.dry_run {
        return Ok(true);
    }
    let (ctx, plan) = (step.ctx, step.plan);
    let pk = crm_pk(ctx, plan).await;
    let mut rec = Fields::new();
    rec.insert(pk.clone(), Value::Text(l.crm_key.clone()));
    rec.insert(plan.crm_marketo_id.clone(), Value::Null);
    let res = ctx.crm.upsert(&plan.crm_object, &pk, &[rec]).await?;
    let Some(refusal) = res.first().and_then(WriteResult::refusal) else {
        return Ok(true);
    };
    step.error(
        Direction::CrmToMarketo,
        l.crm_key.clone(),
        Some(l.marketo_key.clone()),
        json!({ "merge": { "survivor": into, "lead": lead } }),
        Failure::from(refusal),
    );
    Ok(false)
}

/// Deletes the leads of CRM records deleted there (planned on a dry run).
async fn delete_leads_of(
    step: &mut Step<'_>,
    to_delete: &[i64],
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    if to_delete.is_empty() {
        return Ok(());
    }
    let object = step.plan.object.clone();
    if step.dry_run {
        for id in to_delete {
            step.plan_out.push(
                PlannedChange::new(&object, Direction::CrmToMarketo, PlannedAction::Delete)
                    .target(id.to_string())
                    .note("its CRM record was deleted (sync.lead_deletes = \"delete\")"),
            );
        }
    } else {
        for chunk in to_delete.chunks(MAX_BATCH) {
            step.ctx.marketo.delete_leads(chunk).await?;
        }
    }
    summary.counts_mut(&object, Direction::CrmToMarketo).deleted += to_delete.len() as u64;
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
    let mut found: Vec<i64> = find_leads(ctx, plan, &m_field, &[value])
        .await?
        .into_iter()
        .filter(|m| m.id != loser && match_key(plan, &m.canon).as_ref() == Some(&key))
        .map(|m| m.id)
        .collect();
    found.sort_unstable();
    for id in found {
        let linked = live(
            ctx.store
                .links_by_marketo_keys(LINK_OBJECT, &[id.to_string()])
                .await?,
        );
        if linked.is_empty() {
            return Ok(Some(id));
        }
    }
    Ok(None)
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
