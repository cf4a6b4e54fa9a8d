//! Activity types that ride on the lead step's activity read.
//!
//! Some objects change in Marketo without a change feed of their own but with an activity:
//! program membership logs Change Status in Progression (104, primary attribute = the program).
//! Reading such a type on a queue of its own would cost one more call every cycle; instead the
//! lead step asks for it in the same Get Lead Activities call as New Lead / Change Data Value /
//! Merge Leads (Marketo takes up to 10 types a call), so an idle cycle pays nothing more.
//!
//! The lead step hands what it read to the object's step through the store: each rider's
//! pending (lead, primary attribute id) pairs are the cursor of the watermark
//! `(marketo, <object>, `[`PENDING_QUEUE`]`)`, committed in the lead step's one transaction
//! together with its paging token, so a crash between the two steps loses nothing. The object's
//! step reads them ([`pending`]) and clears them in its own commit ([`cleared`]); a record of
//! that step that fails goes to the error ledger, never back to the pending list.
//!
//! A rider is one line in [`RIDERS`] (another object, e.g. static lists with types 24/25, is
//! one more).
//!
//! Merge Leads moves the losers' program and list memberships to the winner, and Marketo logs
//! no activity of a rider's types for that: every merge winner the lead step read is handed
//! over with each program (linked by the programs step) or list (resolved by the lists step)
//! the rider's step syncs, so that the step reads the winner's membership in each.
//!
//! A winner that took over the loser's CRM contact (the lead step re-points the contact) keeps
//! the loser's memberships: [`rekey_merged`] moves each membership link `<id>:<loser>` to
//! `<id>:<winner>` (and the CRM row's Marketo-id column with it) when the winner's membership is
//! read and has no link of its own, so that it pairs with the existing CRM row instead of
//! creating a second one, and nothing is written for the loser, which Marketo no longer has.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::info;

use crate::crm::WriteResult;
use crate::engine::ledger::{Failure, Subject};
use crate::engine::pipeline::commit::ledger_entry;
use crate::engine::pipeline::pair::contacts_by_lead;
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleSummary, EngineError};
use crate::mapping::Plan;
use crate::marketo::activities::Activity;
use crate::model::{Fields, ObjectSchema, Side, Value};
use crate::store::{
    Direction, Link, LinkKey, StepCommit, SyncError, Tombstone, TombstoneKind, Watermark,
};

/// The watermark queue whose cursor holds a rider's pending pairs.
pub const PENDING_QUEUE: &str = "pending";

/// One activity type read by the lead step for another object's step.
#[derive(Debug, Clone, Copy)]
pub struct Rider {
    /// The activity type ids (their pending pairs are one set: the step re-reads the state).
    pub type_ids: &'static [i64],
    /// The Marketo object of the mapping that consumes it (its `marketo_object`).
    pub marketo_object: &'static str,
}

/// Every rider.
pub const RIDERS: &[Rider] = &[
    Rider {
        type_ids: &[super::program_members::CHANGE_STATUS_IN_PROGRESSION],
        marketo_object: crate::mapping::programs::PROGRAM_MEMBER,
    },
    Rider {
        type_ids: super::static_lists::LIST_ACTIVITIES,
        marketo_object: crate::mapping::lists::STATIC_LIST,
    },
];

/// One pending change: (lead id, primary attribute value id).
pub type Pending = (i64, i64);

/// Returns the riders whose consuming object is synced, with the `sync.objects` name of its
/// mapping (the watermark object).
pub fn active(ctx: &Context) -> Vec<(Rider, String)> {
    let mut out = Vec::new();
    for rider in RIDERS {
        let mapping = ctx.mappings.iter().find(|m| {
            m.file.marketo_object == rider.marketo_object
                && ctx.settings.sync.objects.contains(&m.object)
        });
        if let Some(m) = mapping {
            out.push((*rider, m.object.clone()));
        }
    }
    out
}

/// Returns the activity type ids of the active riders.
pub fn type_ids(ctx: &Context) -> Vec<i64> {
    active(ctx)
        .iter()
        .flat_map(|(r, _)| r.type_ids.iter().copied())
        .collect()
}

/// Returns the pending pairs of `object` (none when nothing is pending).
///
/// # Errors
///
/// A store failure.
pub async fn pending(ctx: &Context, object: &str) -> Result<BTreeSet<Pending>, EngineError> {
    let stored = ctx
        .store
        .watermark(Side::Marketo, object, PENDING_QUEUE)
        .await?;
    Ok(stored
        .and_then(|w| w.cursor)
        .and_then(|c| serde_json::from_value::<Vec<Pending>>(c).ok())
        .unwrap_or_default()
        .into_iter()
        .collect())
}

/// Returns the pending pairs of `object` as a dry run sees them: a dry run's lead step commits
/// nothing, so the rider activities it read were not handed over; they are read here again from
/// the lead step's stored paging token (the rider's type only, to the end of the queue), added to
/// what is pending. Costs calls on a dry run only.
///
/// # Errors
///
/// A Marketo or store failure, or cancellation.
pub async fn pending_dry_run(
    ctx: &Context,
    object: &str,
    type_ids: &[i64],
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<BTreeSet<Pending>, EngineError> {
    let mut all = pending(ctx, object).await?;
    let stored = ctx
        .store
        .watermark(
            Side::Marketo,
            crate::engine::leads::LINK_OBJECT,
            crate::engine::leads::QUEUE_ACTIVITIES,
        )
        .await?;
    let Some(mut token) = stored
        .and_then(|w| w.cursor)
        .and_then(|c| c.get("token").and_then(|t| t.as_str()).map(str::to_owned))
    else {
        return Ok(all);
    };
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx
            .marketo
            .get_activities(&token, type_ids, &Default::default())
            .await?;
        all.extend(
            page.records
                .iter()
                .filter_map(|a| a.primary_attribute_value_id.map(|p| (a.lead_id, p))),
        );
        if let Some(next) = page.next_page_token {
            token = next;
        }
        if !page.more_result {
            return Ok(all);
        }
    }
}

/// Returns the watermark holding `pending` for `object` at `at`.
fn mark(object: &str, pending: &BTreeSet<Pending>, at: DateTime<Utc>) -> Watermark {
    let list: Vec<Pending> = pending.iter().copied().collect();
    Watermark {
        system: Side::Marketo,
        object: object.to_owned(),
        queue: PENDING_QUEUE.to_owned(),
        at,
        tie: None,
        cursor: Some(json!(list)),
    }
}

/// Returns the ids a rider's step syncs: the programs linked by the programs step (program
/// members) or the lists the lists step resolved (static lists).
///
/// # Errors
///
/// A store failure.
async fn synced_ids(ctx: &Context, rider: &Rider, object: &str) -> Result<Vec<i64>, EngineError> {
    if rider.marketo_object == crate::mapping::lists::STATIC_LIST {
        let stored = ctx
            .store
            .watermark(Side::Marketo, object, super::static_lists::LISTS_QUEUE)
            .await?;
        let known: std::collections::BTreeMap<String, i64> = stored
            .and_then(|w| w.cursor)
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        return Ok(known.into_values().collect());
    }
    let Some(programs) = ctx.mappings.iter().find(|m| {
        m.file.marketo_object == crate::mapping::programs::PROGRAM
            && ctx.settings.sync.objects.contains(&m.object)
    }) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ctx
            .store
            .links_page(&programs.object, after.as_deref(), 500)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.marketo_key.clone());
        out.extend(
            page.iter()
                .filter(|l| l.tombstone.is_none())
                .filter_map(|l| l.marketo_key.parse::<i64>().ok()),
        );
    }
    Ok(out)
}

/// Returns the watermarks that add the riders among `activities`, and each of `merge_winners`
/// with every program or list the rider's step syncs, to each active rider's pending pairs (for
/// the lead step's commit); none when neither was read.
///
/// # Errors
///
/// A store failure.
pub async fn handed_over(
    ctx: &Context,
    activities: &[Activity],
    merge_winners: &[i64],
    at: DateTime<Utc>,
) -> Result<Vec<Watermark>, EngineError> {
    let mut out = Vec::new();
    for (rider, object) in active(ctx) {
        let mut new: Vec<Pending> = activities
            .iter()
            .filter(|a| rider.type_ids.contains(&a.activity_type_id))
            .filter_map(|a| a.primary_attribute_value_id.map(|p| (a.lead_id, p)))
            .collect();
        if !merge_winners.is_empty() {
            let ids = synced_ids(ctx, &rider, &object).await?;
            for winner in merge_winners {
                new.extend(ids.iter().map(|id| (*winner, *id)));
            }
        }
        if new.is_empty() {
            continue;
        }
        let mut all = pending(ctx, &object).await?;
        all.extend(new);
        out.push(mark(&object, &all, at));
    }
    Ok(out)
}

/// Returns the watermark that clears `object`'s pending pairs (for the consuming step's commit).
pub fn cleared(object: &str, at: DateTime<Utc>) -> Watermark {
    mark(object, &BTreeSet::new(), at)
}

/// The ledger code of a membership row whose Marketo-id column the CRM refused to move to a
/// merge winner.
pub const REKEY_REFUSED: &str = "rekey_refused";

/// A membership link moved from a merged-away lead to its winner (see [`rekey_merged`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Rekeyed {
    /// The loser's membership key (`<id>:<loser>`), removed.
    pub from: String,
    /// The winner's membership key (`<id>:<winner>`).
    pub to: String,
    /// The CRM row both keys name.
    pub crm_key: String,
    /// The agreed values the link carries over.
    pub base: Fields,
}

/// Re-keys to the winner the membership links of leads merged away in Marketo whose winner
/// took over their CRM contact.
///
/// `unlinked` are the (program or list id, lead id) memberships read from Marketo that have no
/// live link. For each, the lead's contact is looked up, and the leads merged away in Marketo
/// whose link named that contact (tombstoned `Merged`, side Marketo) are its losers; the first
/// loser with a live link `key(id, loser)` has it moved to `key(id, lead)`: the CRM row's
/// Marketo-id column (`plan.crm_marketo_id`, when the CRM object has it) is written first, then
/// the old link is removed and the new one carries the same row and agreed values (both in
/// `commit`). A row the CRM refuses to write is one ledger entry (the pair is left as it was:
/// the member waits in the ledger rather than being created twice). On a dry run nothing is
/// written: the re-keys are planned and returned all the same, so that pairing sees them.
///
/// # Errors
///
/// A whole-call failure of the CRM or the store.
#[allow(clippy::too_many_arguments)]
pub async fn rekey_merged(
    ctx: &Context,
    plan: &Plan,
    crm_schema: &ObjectSchema,
    unlinked: &[(i64, i64)],
    key: fn(i64, i64) -> String,
    dry_run: bool,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
    previous: &BTreeMap<String, SyncError>,
) -> Result<Vec<Rekeyed>, EngineError> {
    let object = plan.object.as_str();
    if unlinked.is_empty() {
        return Ok(Vec::new());
    }
    let leads: Vec<String> = unlinked
        .iter()
        .map(|(_, l)| l.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let contacts = contacts_by_lead(ctx, &leads).await?;
    if contacts.is_empty() {
        return Ok(Vec::new());
    }
    // The leads merged away in Marketo whose link named each contact.
    let contact_keys: Vec<String> = contacts
        .values()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut losers: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for chunk in contact_keys.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx
            .store
            .links_by_crm_keys(super::LEAD_LINK_OBJECT, chunk)
            .await?
        {
            let merged = matches!(
                l.tombstone,
                Some(Tombstone {
                    kind: TombstoneKind::Merged { .. },
                    side: Side::Marketo,
                    ..
                })
            );
            if let (true, Ok(id)) = (merged, l.marketo_key.parse::<i64>()) {
                losers.entry(l.crm_key).or_default().push(id);
            }
        }
    }
    if losers.is_empty() {
        return Ok(Vec::new());
    }
    // Candidate moves: (old key, new key), the old keys looked up at once.
    let mut candidates: Vec<(String, String)> = Vec::new();
    for (id, lead) in unlinked {
        let Some(contact) = contacts.get(&lead.to_string()) else {
            continue;
        };
        for loser in losers.get(contact).into_iter().flatten() {
            if loser != lead {
                candidates.push((key(*id, *loser), key(*id, *lead)));
            }
        }
    }
    let olds: Vec<String> = candidates.iter().map(|(o, _)| o.clone()).collect();
    let news: Vec<String> = candidates.iter().map(|(_, n)| n.clone()).collect();
    let mut live_old: BTreeMap<String, Link> = BTreeMap::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for chunk in olds.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx.store.links_by_marketo_keys(object, chunk).await? {
            if l.tombstone.is_none() {
                live_old.insert(l.marketo_key.clone(), l);
            }
        }
    }
    for chunk in news.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx.store.links_by_marketo_keys(object, chunk).await? {
            if l.tombstone.is_none() {
                taken.insert(l.marketo_key);
            }
        }
    }
    let column = plan.crm_marketo_id.as_str();
    let pk = crm_schema.id_field.clone().unwrap_or_else(|| "id".into());
    let has_column = crm_schema.field(column).is_some();
    let mut out = Vec::new();
    for (old, new) in candidates {
        if taken.contains(&new) {
            continue;
        }
        let Some(link) = live_old.remove(&old) else {
            continue;
        };
        if dry_run {
            summary.planned(
                PlannedChange::new(object, Direction::MarketoToCrm, PlannedAction::Repoint)
                    .source(new.clone())
                    .target(link.crm_key.clone())
                    .note(format!(
                        "membership {old}: its lead was merged into the lead of {new}, which \
                         keeps the CRM row"
                    )),
            );
        } else if has_column {
            let mut rec = Fields::new();
            rec.insert(pk.clone(), Value::Text(link.crm_key.clone()));
            rec.insert(
                column.to_owned(),
                super::programs::id_value(crm_schema, column, &new),
            );
            let res = ctx.crm.upsert(&plan.crm_object, &pk, &[rec]).await?;
            if let Some(refusal) = res.first().and_then(WriteResult::refusal) {
                summary.counts_mut(object, Direction::MarketoToCrm).failed += 1;
                let subject = Subject {
                    object,
                    direction: Direction::MarketoToCrm,
                    record_key: &new,
                    other_key: Some(link.crm_key.clone()),
                    payload: json!({ "rekey": { "from": old, "to": new } }),
                };
                let failure = Failure::new(
                    REKEY_REFUSED,
                    format!(
                        "membership {old}: its lead was merged into the lead of {new}; the CRM \
                         refused to move row {} to it: {}",
                        link.crm_key,
                        refusal.ledger_message()
                    ),
                    refusal.retryable,
                );
                let prev = previous.get(&new);
                commit
                    .errors_upsert
                    .push(ledger_entry(ctx, subject, failure, prev));
                taken.insert(new);
                continue;
            }
        }
        info!(object, from = %old, to = %new, row = %link.crm_key, "membership re-keyed to the merge winner");
        if !dry_run {
            commit.links_delete.push(LinkKey {
                object: object.to_owned(),
                marketo_key: old.clone(),
            });
            commit.links_upsert.push(Link {
                marketo_key: new.clone(),
                ..link.clone()
            });
        }
        taken.insert(new.clone());
        out.push(Rekeyed {
            from: old,
            to: new,
            crm_key: link.crm_key,
            base: link.base,
        });
    }
    Ok(out)
}

/// Points the links of `crm_links` (by CRM row) that `rekeyed` moved at their new key, as the
/// step's commit will store them.
pub fn apply_rekeyed(crm_links: &mut BTreeMap<String, Link>, rekeyed: &[Rekeyed]) {
    for r in rekeyed {
        if let Some(l) = crm_links.get_mut(&r.crm_key)
            && l.marketo_key == r.from
        {
            l.marketo_key.clone_from(&r.to);
        }
    }
}
