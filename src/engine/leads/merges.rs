//! Marketo lead merges (Merge Leads activities): the CRM record linked to a merged-away lead is
//! re-pointed to the winner, or, when the winner already has a CRM record, follows the merge
//! policy. Also the links rebuilt from the CRM's Marketo-id column for leads a killed cycle
//! wrote but never committed, and the loser's record named by the CRM key a winner inherited
//! from it ([`inherited_loser_link`]).

use std::collections::BTreeSet;

use serde_json::json;

use super::LINK_OBJECT;
use super::deletes::apply_policy;
use super::gather::fetch_leads;
use super::records::{CRec, MLead, c_rec, live, match_key, value_text};
use super::step::Step;
use crate::crm::WriteResult;
use crate::engine::ledger::Failure;
use crate::engine::pipeline::commit::link;
use crate::engine::summary::{PlannedAction, PlannedChange, json_fields};
use crate::engine::{CycleSummary, EngineError};
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, Link, TombstoneKind};

/// Re-points the CRM records linked to merged-away leads to the winners.
pub(super) async fn apply_merges(
    step: &mut Step<'_>,
    merges: &[(i64, Vec<i64>)],
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    // Winners given a CRM record by an earlier merge of this cycle (not in the store yet).
    let mut given: BTreeSet<i64> = BTreeSet::new();
    for (winner, losers) in merges {
        apply_merge(step, *winner, losers, &mut given, summary).await?;
    }
    Ok(())
}

/// Applies one merge of `losers` into `winner`.
async fn apply_merge(
    step: &mut Step<'_>,
    winner: i64,
    losers: &[i64],
    given: &mut BTreeSet<i64>,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let ctx = step.ctx;
    let store = &ctx.store;
    let mut winner_link = live(
        store
            .links_by_marketo_keys(LINK_OBJECT, &[winner.to_string()])
            .await?,
    )
    .into_iter()
    .next();
    // The winner's own CRM record, written by a cycle killed before its commit, holds the
    // winner's id: the winner keeps it (the Marketo-id column is unique, so taking the loser's
    // record over would be refused). Found by the scale runs on PostgreSQL (seed 610006: a
    // kill at commit after lead 2 got contact 3, then lead 3 merged into lead 2, which Marketo
    // deleted before the next cycle, so no lead of the winner was there to match by).
    let mut recovered_own = None;
    if winner_link.is_none() {
        winner_link = recovered_links(step, &[winner]).await?.into_iter().next();
        if let Some(l) = &winner_link {
            tracing::debug!(lead = winner, crm = %l.crm_key, "a merge winner's own crm record recovered");
            // Staged as the winner's link, so that pairing keeps the winner with its own
            // record rather than pairing it by a CRM key it inherited from a loser.
            step.link(winner, &l.crm_key, l.base.clone());
            recovered_own = Some(l.crm_key.clone());
        }
    }
    let keys: Vec<String> = losers.iter().map(i64::to_string).collect();
    let mut loser_links = live(store.links_by_marketo_keys(LINK_OBJECT, &keys).await?);
    loser_links.extend(recovered_links(step, losers).await?);
    if let Some(own) = recovered_own {
        let lead = fetch_leads(ctx, step.plan, &[winner], summary).await?;
        let key = lead.into_iter().next().and_then(|m| m.crm_key);
        let inherited = inherited_loser_link(step, winner, &own, key, losers, &loser_links);
        loser_links.extend(inherited.await?);
    } else if winner_link.is_none()
        && let Some((own, key)) = match_partner(step, winner, summary).await?
        && let Some(inherited) =
            inherited_loser_link(step, winner, &own, Some(key), losers, &loser_links).await?
    {
        // The unlinked winner's own record is the one its match values name, not the one its
        // CRM key names: that key came from the loser. Found by the convergence harness (seed
        // 691001, engine as a child process): a cycle created lead 6 for contact 2 and was
        // killed before writing the lead's id into the contact or committing; Marketo merged
        // lead 6 into lead 8, whose CRM lead had just been converted into contact 7 of its
        // email. Pairing lead 8 with contact 2 by the inherited key wrote lead 8's email into
        // contact 2: two live contacts of one email, and contact 7 held as a duplicate.
        tracing::debug!(lead = winner, crm = %own, "a merge winner's own crm record found by its match values");
        step.link(winner, &own, Fields::new());
        winner_link = Some(link(
            LINK_OBJECT,
            &winner.to_string(),
            &own,
            Fields::new(),
            step.now(),
        ));
        loser_links.push(inherited);
    }
    // An unlinked winner with a CRM record of its own (one that matches it, not yet
    // paired) keeps that record: pairing links the two below, and the loser's record
    // follows the merge policy instead of taking the winner over.
    let mut repointed = winner_link.is_some()
        || given.contains(&winner)
        || (!loser_links.is_empty()
            && unlinked_partner(step, winner, &loser_links, summary).await?);
    for l in loser_links {
        let into = TombstoneKind::Merged {
            into: winner.to_string(),
        };
        if !repointed {
            if take_over(step, winner, &l, summary).await? {
                given.insert(winner);
                repointed = true;
            }
            continue;
        }
        // The winner already has its own CRM record: apply the merge policy to the loser's.
        let policy = step.ctx.settings.sync.lead_merges;
        apply_policy(step, &l, policy, summary).await?;
        step.tombstone(&l, into, Side::Marketo);
    }
    Ok(())
}

/// The winner takes over the loser's live CRM record (its Marketo-id column re-pointed);
/// returns true when it did. A loser's record gone from the CRM is only tombstoned.
async fn take_over(
    step: &mut Step<'_>,
    winner: i64,
    l: &Link,
    summary: &mut CycleSummary,
) -> Result<bool, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let into = TombstoneKind::Merged {
        into: winner.to_string(),
    };
    // The loser's CRM record was deleted or merged away in the CRM since the last commit (its
    // deletion is applied after the merges): the winner does not take a dead record over;
    // pairing finds the winner's live partner, if any. Found by the convergence harness (seed
    // 30127: a CRM merge into a contact never synced, killed at commit, then a Marketo merge of
    // that lead left the winner linked to the soft-deleted contact).
    let alive = !ctx
        .crm
        .get(&plan.crm_object, std::slice::from_ref(&l.crm_key))
        .await?
        .is_empty();
    if !alive {
        step.tombstone(l, into, Side::Marketo);
        return Ok(false);
    }
    // The CRM's own primary key (HubSpot's is `hs_object_id`), as the CRM-id write-back uses.
    let pk = super::records::crm_pk(step.ctx, step.plan).await;
    let pk = pk.as_str();
    let mut rec = Fields::new();
    rec.insert(pk.to_owned(), Value::Text(l.crm_key.clone()));
    rec.insert(plan.crm_marketo_id.clone(), Value::Text(winner.to_string()));
    if step.dry_run {
        let before =
            serde_json::Map::from_iter([(plan.crm_marketo_id.clone(), json!(l.marketo_key))]);
        step.plan_out.push(
            PlannedChange::new(
                &plan.object,
                Direction::MarketoToCrm,
                PlannedAction::Repoint,
            )
            .source(winner.to_string())
            .target(l.crm_key.clone())
            .fields(&json_fields(&rec), Some(&before), &[pk])
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
            return Ok(false);
        }
    }
    step.tombstone(l, into, Side::Marketo);
    step.link(winner, &l.crm_key, l.base.clone());
    summary
        .counts_mut(&plan.object, Direction::MarketoToCrm)
        .updated += 1;
    Ok(true)
}

/// Returns the link of the record a merge loser got from a cycle killed before its commit, found
/// by the CRM key the winner inherited (`key`, the winner's CRM-key field): Marketo fills a
/// winner's empty fields from the loser, so a winner whose own record (`own`, rebuilt from the
/// CRM's Marketo-id column, or the one its match values name) the killed cycle had not written
/// back yet carries the loser's CRM key. That record counts as the
/// loser's when it is live, linked to no lead, and holds no lead id (the kill came before the
/// CRM update that writes the new lead's id into it), and exactly one loser has no link.
///
/// Found by the convergence harness (seed 220140, engine as a child process): one cycle created
/// lead 8 for contact 6 and contact 9 for lead 6 and was killed after the CRM creates; Marketo
/// merged lead 8 into lead 6. Pairing lead 6 with contact 6 by that inherited key wrote contact
/// 6's email into lead 6 and was refused in the CRM (contact 9 held lead 6's id); the next
/// cycle linked lead 6 to contact 9, which took that email: two contacts of one email.
async fn inherited_loser_link(
    step: &Step<'_>,
    winner: i64,
    own: &str,
    key: Option<String>,
    losers: &[i64],
    known: &[Link],
) -> Result<Option<Link>, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let unlinked: Vec<i64> = losers
        .iter()
        .copied()
        .filter(|l| !known.iter().any(|k| k.marketo_key == l.to_string()))
        .collect();
    let &[loser] = unlinked.as_slice() else {
        return Ok(None);
    };
    let Some(key) = key else {
        return Ok(None);
    };
    if key == own || known.iter().any(|k| k.crm_key == key) {
        return Ok(None);
    }
    let Some(record) = ctx
        .crm
        .get(&plan.crm_object, std::slice::from_ref(&key))
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    if value_text(record.fields.get(&plan.crm_marketo_id)).is_some() {
        return Ok(None);
    }
    let linked = live(
        ctx.store
            .links_by_crm_keys(LINK_OBJECT, std::slice::from_ref(&key))
            .await?,
    );
    if !linked.is_empty() {
        return Ok(None);
    }
    tracing::debug!(lead = loser, crm = %key, winner, "a merge loser's crm record recovered from the key the winner inherited");
    let now = step.now();
    Ok(Some(link(
        LINK_OBJECT,
        &loser.to_string(),
        &key,
        Fields::new(),
        now,
    )))
}

/// Returns the record an unlinked merge winner's match values name, with the CRM key the
/// winner holds (which it may have inherited from a loser): the one live CRM record with the
/// winner's match key that is not the record that key names, holds no lead id and is linked to
/// no lead. `None` when the winner holds no CRM key, or there is no such record or more than
/// one.
async fn match_partner(
    step: &Step<'_>,
    winner: i64,
    summary: &mut CycleSummary,
) -> Result<Option<(String, String)>, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let Some(lead) = fetch_leads(ctx, plan, &[winner], summary)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let Some(key) = lead.crm_key.clone() else {
        return Ok(None);
    };
    let ids: Vec<String> = by_match_values(step, &lead)
        .await?
        .into_iter()
        .filter(|c| c.id != key && c.marketo_key.is_none())
        .map(|c| c.id)
        .collect();
    let linked: BTreeSet<String> = live(ctx.store.links_by_crm_keys(LINK_OBJECT, &ids).await?)
        .into_iter()
        .map(|l| l.crm_key)
        .collect();
    let free: Vec<String> = ids.into_iter().filter(|id| !linked.contains(id)).collect();
    Ok(match free.as_slice() {
        [own] => Some((own.clone(), key)),
        _ => None,
    })
}

/// Returns the CRM records whose match values are `lead`'s (looked up by the first match
/// field, folded).
async fn by_match_values(step: &Step<'_>, lead: &MLead) -> Result<Vec<CRec>, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let wanted = match_key(plan, &lead.canon);
    let (Some(first), Some(_)) = (plan.match_fields.first(), &wanted) else {
        return Ok(Vec::new());
    };
    let (Some(crm_field), Some(value)) = (
        plan.field(first).and_then(|f| f.crm.clone()),
        lead.canon.get(first).filter(|v| !v.is_null()),
    ) else {
        return Ok(Vec::new());
    };
    let found = ctx
        .crm
        .find_folded(&plan.crm_object, &crm_field, std::slice::from_ref(value))
        .await?;
    Ok(found
        .iter()
        .filter_map(|r| c_rec(plan, &r.id, r.modified_at, &r.fields).ok())
        .filter(|c| match_key(plan, &c.canon) == wanted)
        .collect())
}

/// Returns links rebuilt from the CRM for leads the store has never linked: a CRM record that
/// holds one of these lead ids in its Marketo-id column was written by a cycle that died before
/// its commit (the CRM write comes first). Records the store links elsewhere are left alone.
pub(super) async fn recovered_links(
    step: &Step<'_>,
    leads: &[i64],
) -> Result<Vec<Link>, EngineError> {
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
            Some(link(LINK_OBJECT, &lead, &r.id, Fields::new(), now))
        })
        .collect())
}

/// Returns the link of the CRM record `key` rebuilt from its Marketo-id column, when the store
/// has never linked that lead (see [`recovered_links`]).
pub(super) async fn survivor_link_from_crm(
    step: &Step<'_>,
    key: &str,
) -> Result<Option<Link>, EngineError> {
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
    let mut candidates = partner_candidates(step, id, summary).await?;
    // The losers' own records (the merged lead may carry a loser's CRM key) do not count.
    candidates.retain(|c| !losers.iter().any(|l| l.crm_key == c.id));
    if candidates.is_empty() {
        return Ok(false);
    }
    let keys: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
    let taken: BTreeSet<String> = live(step.ctx.store.links_by_crm_keys(LINK_OBJECT, &keys).await?)
        .into_iter()
        .map(|l| l.crm_key)
        .collect();
    Ok(keys.iter().any(|k| !taken.contains(k)))
}

/// Returns the CRM records that could be lead `id`'s partner: the one its CRM-key field names
/// and those with its match values.
async fn partner_candidates(
    step: &Step<'_>,
    id: i64,
    summary: &mut CycleSummary,
) -> Result<Vec<CRec>, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let Some(lead) = fetch_leads(ctx, plan, &[id], summary)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(Vec::new());
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
    candidates.extend(by_match_values(step, &lead).await?);
    Ok(candidates)
}
