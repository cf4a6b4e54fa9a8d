//! CRM deletions -> Marketo deletes, in the whitepaper's order: roles, then opportunities, then
//! companies, then salespersons (leads owned by a salesperson are unlinked from it first: their
//! `externalSalesPersonId` is set to null), then custom objects, then static list membership
//! rows (the lead leaves the list).
//!
//! Each object's change feed is read with its own cursor (queue [`DELETES_QUEUE`]), so the
//! create/update steps never swallow a tombstone. A deleted record is deleted in Marketo by its
//! dedupe fields and its link is tombstoned; a record Marketo no longer has counts as deleted.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::custom_objects::custom_plans;
use super::roles;
use super::{
    DELETES_QUEUE, ObjectFamily, due_errors, error_key, gather_crm, ledger_entry, links_by_crm,
    skip_reason,
};
use crate::crm::{ChangeKind, FeedNeeds};
use crate::engine::ledger::Subject;
use crate::engine::pipeline::spec::{DeleteKeyFn, delete_by_crm_key};
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{Plan, Plans};
use crate::marketo::{Record, RecordStatus, RefusalKind, SyncAction};
use crate::model::Side;
use crate::store::{Direction, Link, StepCommit, SyncError, Tombstone, TombstoneKind};

/// The error-ledger key prefix of a refused delete (`delete:<crm id>`).
pub const DELETE_PREFIX: &str = "delete:";

/// Runs the CRM deletions of every enabled non-lead object, in the whitepaper's order.
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
    // The registered objects' families, children before their parents.
    let standard = super::registry::STEPS
        .iter()
        .rev()
        .filter_map(|s| Some((s.name, s.deletes.clone()?)));
    let mut ordered: Vec<Deleted<'_>> = Vec::new();
    for (name, family) in standard {
        if let Some(plan) = plans.objects.get(name) {
            ordered.push(Deleted::of(plan, family));
        }
    }
    for plan in custom_plans(plans) {
        let family = ObjectFamily::Custom(plan.marketo_object.clone());
        ordered.push(Deleted::of(plan, family));
    }
    // A deleted (or soft-deleted) CRM list membership row removes the lead from the list.
    if let Some(plan) = super::static_lists::plan_of(plans) {
        ordered.push(Deleted::of(plan, ObjectFamily::ListMembers));
    }
    for target in ordered {
        let result = delete_object(ctx, &target, summary, options, cancel).await;
        super::skip_when_native_sync(result, &target.plan.object, summary)?;
    }
    Ok(())
}

/// One object of the deletions step: its plan, Marketo family and hooks.
struct Deleted<'a> {
    plan: &'a Plan,
    family: ObjectFamily,
    /// Builds the dedupe record deleting a link key (roles parse their composite key).
    delete: DeleteKeyFn,
    /// True when a record's Marketo key is its CRM id, so a record never linked may still have
    /// been created in Marketo (by a cycle killed before its commit) and is deleted by its id.
    keyed_by_id: bool,
    /// True when the Marketo leads owned by a deleted record are unlinked from it first
    /// (salespersons).
    unlinks_leads: bool,
}

/// A deleted CRM record with its link (or the link its CRM id gives it), when it was deleted,
/// and the dedupe record deleting it in Marketo.
type Delete = (Link, DateTime<Utc>, Record);

impl<'a> Deleted<'a> {
    /// Returns the deletions spec of an object on `family`.
    fn of(plan: &'a Plan, family: ObjectFamily) -> Deleted<'a> {
        let delete: DeleteKeyFn = match family {
            ObjectFamily::Roles => roles::delete_key,
            ObjectFamily::ListMembers => super::static_lists::delete_key,
            _ => delete_by_crm_key,
        };
        let keyed_by_id = matches!(
            family,
            ObjectFamily::Companies | ObjectFamily::Opportunities | ObjectFamily::SalesPersons
        );
        let unlinks_leads = family == ObjectFamily::SalesPersons;
        Deleted {
            plan,
            family,
            delete,
            keyed_by_id,
            unlinks_leads,
        }
    }
}

/// Deletes in Marketo the records of one object deleted in the CRM (and the refused deletes
/// due for a retry), and commits their tombstones, ledger entries and watermark.
///
/// # Errors
///
/// A whole-call failure of the CRM, Marketo or the store, or cancellation.
async fn delete_object(
    ctx: &Context,
    target: &Deleted<'_>,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let plan = target.plan;
    let object = plan.object.as_str();
    let direction = Direction::CrmToMarketo;
    let mut gathered = gather_crm(
        ctx,
        object,
        &plan.crm_object,
        DELETES_QUEUE,
        FeedNeeds::Deletes,
        cancel,
    )
    .await?;
    let mut commit = crate::engine::pipeline::commit::start(&mut gathered);
    let mut deleted: Vec<(String, DateTime<Utc>)> = gathered
        .changes
        .iter()
        .filter_map(|c| match &c.kind {
            ChangeKind::Deleted(t) => Some((c.id.clone(), t.at)),
            ChangeKind::Upserted { .. } => None,
        })
        .collect();
    // A deleted record's pending create/update errors are moot now.
    for (id, _) in &deleted {
        commit.errors_resolve.push(error_key(object, direction, id));
    }
    // Deletes Marketo refused earlier and now due for a retry.
    let mut previous: BTreeMap<String, SyncError> = BTreeMap::new();
    for e in due_errors(ctx, object, direction).await? {
        if let Some(id) = e.record_key.strip_prefix(DELETE_PREFIX) {
            if !deleted.iter().any(|(d, _)| d == id) {
                deleted.push((id.to_owned(), e.first_seen_at));
            }
            previous.insert(id.to_owned(), e);
        }
    }
    let todo = deletes(ctx, target, &deleted, summary).await?;
    if options.dry_run {
        for (l, _, _) in &todo {
            summary.planned(
                PlannedChange::new(object, direction, PlannedAction::Delete)
                    .source(l.crm_key.clone())
                    .target(l.marketo_key.clone())
                    .note("deleted in the CRM"),
            );
        }
        return Ok(());
    }
    if target.unlinks_leads && !todo.is_empty() {
        let ids: Vec<String> = todo.iter().map(|(l, _, _)| l.marketo_key.clone()).collect();
        unlink_leads(ctx, &ids, summary, cancel).await?;
    }
    apply_deletes(ctx, target, &todo, &previous, &mut commit, summary, cancel).await?;
    if !commit.is_empty() {
        ctx.store.commit(commit).await?;
    }
    info!(object, records = deleted.len(), "crm deletions applied");
    Ok(())
}

/// Returns the Marketo deletes of the deleted CRM records: by their live link, or (for an
/// object keyed by the CRM id) by the key a never-linked record would have; every other record
/// is counted skipped.
///
/// # Errors
///
/// A store failure.
async fn deletes(
    ctx: &Context,
    target: &Deleted<'_>,
    deleted: &[(String, DateTime<Utc>)],
    summary: &mut CycleSummary,
) -> Result<Vec<Delete>, EngineError> {
    let plan = target.plan;
    let object = plan.object.as_str();
    let ids: Vec<String> = deleted.iter().map(|(id, _)| id.clone()).collect();
    let links = links_by_crm(ctx, object, &ids).await?;
    let mut todo: Vec<Delete> = Vec::new();
    for (id, at) in deleted {
        let Some(l) = links.get(id).filter(|l| l.tombstone.is_none()) else {
            // Already deleted: nothing to do in Marketo. Never linked: a cycle killed between
            // its Marketo write and its store commit may have created the record all the same,
            // under the key its CRM id gives it (companies, opportunities, salespersons); it is
            // deleted by that key ("not found" when it never existed). Found by the convergence
            // harness (a CRM delete after a kill at commit left a live Marketo company).
            if !links.contains_key(id)
                && target.keyed_by_id
                && let Some(key) = (target.delete)(plan, id)
            {
                let base = crate::model::Fields::new();
                let unlinked = Link {
                    object: object.to_owned(),
                    marketo_key: id.clone(),
                    crm_key: id.clone(),
                    base_hash: crate::model::fields_hash(&base),
                    base,
                    agreed_at: *at,
                    tombstone: None,
                };
                todo.push((unlinked, *at, key));
            } else {
                summary.counts_mut(object, Direction::CrmToMarketo).skipped += 1;
            }
            continue;
        };
        match (target.delete)(plan, &l.marketo_key) {
            Some(key) => todo.push((l.clone(), *at, key)),
            None => summary.counts_mut(object, Direction::CrmToMarketo).skipped += 1,
        }
    }
    Ok(todo)
}

/// Deletes the records in Marketo in batches: a record deleted (or that Marketo no longer has)
/// is tombstoned and its refused delete resolved; a refused one goes to the ledger.
///
/// # Errors
///
/// A whole-call Marketo failure, or cancellation.
async fn apply_deletes(
    ctx: &Context,
    target: &Deleted<'_>,
    todo: &[Delete],
    previous: &BTreeMap<String, SyncError>,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let object = target.plan.object.as_str();
    let direction = Direction::CrmToMarketo;
    for batch in todo.chunks(300) {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let input: Vec<Record> = batch.iter().map(|(_, _, k)| k.clone()).collect();
        let results = target.family.delete(&ctx.marketo, &input).await?;
        for ((l, at, key), r) in batch.iter().zip(results) {
            let ledger_key = format!("{DELETE_PREFIX}{}", l.crm_key);
            // A record Marketo does not have (any more) is deleted already.
            let gone = r.status == RecordStatus::Deleted || r.refused_as(RefusalKind::NotFound);
            let counts = summary.counts_mut(object, direction);
            if gone {
                counts.deleted += 1;
                let mut t = l.clone();
                t.tombstone = Some(Tombstone {
                    kind: TombstoneKind::Deleted,
                    side: Side::Crm,
                    at: *at,
                });
                commit.links_upsert.push(t);
                if previous.contains_key(&l.crm_key) {
                    commit
                        .errors_resolve
                        .push(error_key(object, direction, &ledger_key));
                }
                continue;
            }
            counts.failed += 1;
            let subject = Subject {
                object,
                direction,
                record_key: &ledger_key,
                other_key: Some(l.marketo_key.clone()),
                payload: Json::Object(key.clone()),
            };
            let entry = ledger_entry(ctx, subject, skip_reason(&r), previous.get(&l.crm_key));
            commit.errors_upsert.push(entry);
        }
    }
    Ok(())
}

/// Sets `externalSalesPersonId` to null on every Marketo lead owned by one of these
/// salespersons, so that deleting them leaves no lead pointing at a missing owner.
///
/// # Errors
///
/// A whole-call Marketo failure, or cancellation.
async fn unlink_leads(
    ctx: &Context,
    salespersons: &[String],
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let fields = vec!["id".to_owned(), "externalSalesPersonId".to_owned()];
    let mut lead_ids: BTreeMap<i64, ()> = BTreeMap::new();
    for chunk in salespersons.chunks(300) {
        let mut token: Option<String> = None;
        loop {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let page = ctx
                .marketo
                .get_leads("externalSalesPersonId", chunk, &fields, token.as_deref())
                .await?;
            for r in &page.records {
                if let Some(id) = r.get("id").and_then(Json::as_i64) {
                    lead_ids.insert(id, ());
                }
            }
            match page.next_page_token {
                Some(t) if page.more_result && !page.records.is_empty() => token = Some(t),
                _ => break,
            }
        }
    }
    let input: Vec<Record> = lead_ids
        .keys()
        .map(|id| {
            let mut r = Record::new();
            r.insert("id".into(), json!(id));
            r.insert("externalSalesPersonId".into(), Json::Null);
            r
        })
        .collect();
    for batch in input.chunks(300) {
        let results = ctx
            .marketo
            .sync_leads(SyncAction::UpdateOnly, Some("id"), None, batch)
            .await?;
        let failed = results.iter().filter(|r| r.is_skipped()).count();
        summary.counts_mut("leads", Direction::CrmToMarketo).updated +=
            (results.len() - failed) as u64;
        if failed > 0 {
            summary.warnings.push(format!(
                "{failed} leads could not be unlinked from a deleted salesperson"
            ));
        }
    }
    info!(
        leads = input.len(),
        "leads unlinked from deleted salespersons"
    );
    Ok(())
}
