//! Static list membership <-> a CRM membership table.
//!
//! A pair is one lead in one list, keyed `<listId>:<leadId>` (the link's Marketo key and the
//! value of the CRM's Marketo-id column). Its CRM row holds the lead's contact, the list's name
//! and a membership flag (the row's soft delete: false once the lead left the list); see
//! [`crate::mapping::lists`]. Lists are chosen by name (`[lists] names`), each resolved to its id
//! once by `staticList/byName.json` and remembered in the store (an unknown name fails the step
//! with an error naming the mapping file, unless `[lists] create_missing` creates it: see
//! [`Lists::resolve`]).
//!
//! Lists from a CRM segment (`create_missing = true`, `folder = "..."`): a name Marketo has no
//! list of is created in that marketing folder (`folder/byName.json`, then
//! `POST staticLists.json`), and every CRM row of that list name is read (not only the feed's)
//! so its contacts' leads become members in the same cycle. Created once: the name is looked up
//! before it is created, so a run stopped between the create and its commit finds the list on
//! the next cycle, and the id is committed with the step.
//!
//! Marketo -> CRM, at no extra call on an idle cycle: the lead step's activity read carries Add
//! to List (24) and Remove from List (25), primary attribute = the list, as a feed rider
//! ([`super::feed_riders`]). This step takes the pending (lead, list) pairs of the selected
//! lists and asks Marketo whether each lead is a member now (`ismember`, 300 leads a call per
//! list), so that an add and a remove in the same window end in Marketo's last state. A lead
//! with no CRM contact is skipped (counted), not a ledger entry. A list is read whole once, the
//! first time it is selected (its members, 300 a page; those whose lead has a CRM contact get
//! their row).
//!
//! CRM -> Marketo: a new membership row, or a row whose flag changed (CRM change feed), adds the
//! lead to the list or removes it ([`ObjectFamily::ListMembers`], 300 leads a call); a row
//! deleted in the CRM removes it too (the deletions step, [`delete_key`]). A row whose
//! contact has no Marketo lead yet waits in the ledger (`contact_not_linked`, retried); a lead
//! Marketo refuses is one ledger entry.
//!
//! Echoes: every write moves the pair's link (its agreed membership), so the change feed's copy
//! of a row the sync wrote, and the activity of a membership the sync added, read as unchanged.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{ObjectFamily, feed_riders, ledger_entry, programs, record_invalid_value};
use crate::crm::{Change, ChangeKind};
use crate::engine::ledger::{Failure, Subject};
use crate::engine::pipeline::commit;
use crate::engine::pipeline::gather::{crm_with_retries, open_errors};
use crate::engine::pipeline::pair::{contacts_by_lead, lead_ids_by_contact, links_by_crm};
use crate::engine::pipeline::spec::TwoWaySpec;
use crate::engine::pipeline::two_way::{Observed, Seen, SidePair, TwoWay};
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::lists::{
    CRM_CONTACT_FIELD, LIST_NAME_FIELD, MEMBER_FIELD, member_key, parse_key,
};
use crate::mapping::{Plan, Plans};
use crate::marketo::RecordStatus;
use crate::marketo::lists::FolderRef;
use crate::model::{Fields, ObjectSchema, Side, Value};
use crate::store::{Direction, StepCommit, SyncError, Watermark};

/// The step's name (timings, warnings).
pub const OBJECT: &str = "static_lists";
/// Add to List.
pub const ADD_TO_LIST: i64 = 24;
/// Remove from List.
pub const REMOVE_FROM_LIST: i64 = 25;
/// The rider activity types of list membership.
pub const LIST_ACTIVITIES: &[i64] = &[ADD_TO_LIST, REMOVE_FROM_LIST];
/// The ledger code of a CRM row whose contact has no Marketo lead yet.
pub const CONTACT_NOT_LINKED: &str = "contact_not_linked";
/// The watermark queue whose cursor remembers the resolved list ids by name.
pub(crate) const LISTS_QUEUE: &str = "lists";
/// The watermark queue whose cursor holds the ids of the lists read whole once.
const SEEDED_QUEUE: &str = "seeded";
/// Leads per ismember call.
const CHECK_BATCH: usize = 300;

/// Returns the plan of the static list mapping, if one is synced.
pub fn plan_of(plans: &Plans) -> Option<&Plan> {
    plans
        .objects
        .values()
        .find(|p| p.kind() == crate::mapping::MarketoKind::StaticList)
}

/// Returns the record removing the membership `marketo_key` (`<listId>:<leadId>`) from its list
/// (the deletions step: a membership row deleted in the CRM).
pub(crate) fn delete_key(_plan: &Plan, marketo_key: &str) -> Option<crate::marketo::Record> {
    let (list, lead) = parse_key(marketo_key)?;
    let mut r = crate::marketo::Record::new();
    r.insert("listId".into(), json!(list));
    r.insert("leadId".into(), json!(lead));
    Some(r)
}

/// Syncs static list membership both ways (see the module documentation). Does nothing when no
/// static list mapping is synced.
///
/// # Errors
///
/// A list name Marketo does not know ([`EngineError::Mapping`], naming the file), a whole-call
/// failure of Marketo, the CRM or the store, or cancellation.
pub async fn run(
    ctx: &Context,
    plans: &Plans,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let Some(plan) = plan_of(plans) else {
        return Ok(());
    };
    let step = Lists {
        ctx,
        plan,
        dry_run: options.dry_run,
    };
    step.run(summary, options, cancel).await
}

/// Returns the canonical name of the field mapped to the Marketo field `marketo`, if mapped.
fn canonical_name(plan: &Plan, marketo: &str) -> Option<String> {
    plan.fields
        .iter()
        .find(|f| f.marketo.as_deref() == Some(marketo))
        .map(|f| f.name.clone())
}

/// The selected lists of a cycle (see [`Lists::resolve`]).
#[derive(Default)]
struct Resolved {
    /// The lists by id (id -> name).
    lists: BTreeMap<i64, String>,
    /// The watermark remembering the ids by name, when a name was resolved now.
    mark: Option<Watermark>,
    /// The lists created now (empty: nothing to read in Marketo).
    created: BTreeSet<i64>,
    /// The lists whose CRM rows are read whole now (`create_missing`, first resolved now).
    crm_seed: BTreeSet<i64>,
}

struct Lists<'a> {
    ctx: &'a Context,
    plan: &'a Plan,
    dry_run: bool,
}

impl Lists<'_> {
    fn object(&self) -> &str {
        self.plan.object.as_str()
    }

    /// Returns the selected lists by id (id -> name), the watermark remembering them when a
    /// name was resolved now, and the lists whose CRM rows are read whole now: with
    /// `create_missing`, each list resolved for the first time (created now, or found by name:
    /// created by an earlier run that stopped before its commit), so that the CRM segment's rows
    /// become members whatever the change feed carried before.
    ///
    /// # Errors
    ///
    /// A name Marketo has no list of (without `create_missing`), a folder Marketo does not have,
    /// a Marketo or store failure.
    async fn resolve(&self, summary: &mut CycleSummary) -> Result<Resolved, EngineError> {
        let (ctx, object) = (self.ctx, self.object());
        let mapping = ctx.mappings.iter().find(|m| m.object == object);
        let selection = mapping
            .and_then(|m| m.file.lists.clone())
            .unwrap_or_default();
        let file = mapping.map_or_else(|| object.to_owned(), |m| m.path.display().to_string());
        let stored = ctx
            .store
            .watermark(Side::Marketo, object, LISTS_QUEUE)
            .await?;
        let mut known: BTreeMap<String, i64> = stored
            .and_then(|w| w.cursor)
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        let mut resolved_now = false;
        let mut out = Resolved::default();
        let mut folder: Option<FolderRef> = None;
        for name in selection.names.iter().filter(|n| !n.trim().is_empty()) {
            let id = match known.get(name) {
                Some(id) => *id,
                None => {
                    let found = ctx.marketo.static_list_by_name(name).await?;
                    let id = match found {
                        Some(list) => list.id,
                        None if !selection.create_missing => {
                            return Err(EngineError::Mapping(format!(
                                "{file}: Marketo has no static list named `{name}` (lists.names)"
                            )));
                        }
                        None => {
                            let folder_name = selection.folder.as_deref().unwrap_or_default();
                            if folder.is_none() {
                                folder = Some(self.folder(&file, folder_name).await?);
                            }
                            if self.dry_run {
                                summary.planned(
                                    PlannedChange::new(
                                        object,
                                        Direction::CrmToMarketo,
                                        PlannedAction::Create,
                                    )
                                    .source(name.clone())
                                    .note(format!(
                                        "creates static list `{name}` in folder `{folder_name}`; \
                                         its members are added by the next cycle"
                                    )),
                                );
                                continue;
                            }
                            let Some(folder) = folder.as_ref() else {
                                continue;
                            };
                            let id = self.create(name, folder).await?;
                            out.created.insert(id);
                            id
                        }
                    };
                    known.insert(name.clone(), id);
                    resolved_now = true;
                    if selection.create_missing {
                        out.crm_seed.insert(id);
                    }
                    id
                }
            };
            out.lists.insert(id, name.clone());
        }
        out.mark = resolved_now.then(|| Watermark {
            system: Side::Marketo,
            object: object.to_owned(),
            queue: LISTS_QUEUE.to_owned(),
            at: ctx.clock.now(),
            tie: None,
            cursor: Some(json!(known)),
        });
        Ok(out)
    }

    /// Returns the marketing folder named `name` (`[lists] folder`), new lists' parent.
    ///
    /// # Errors
    ///
    /// A folder Marketo does not have ([`EngineError::Mapping`], naming the file), a Marketo
    /// failure.
    async fn folder(&self, file: &str, name: &str) -> Result<FolderRef, EngineError> {
        match self.ctx.marketo.folder_by_name(name).await? {
            Some(f) => Ok(f.reference()),
            None => Err(EngineError::Mapping(format!(
                "{file}: Marketo has no marketing folder named `{name}` to create lists in \
                 (lists.folder)"
            ))),
        }
    }

    /// Creates the static list `name` in `folder` and returns its id; a name taken meanwhile
    /// (709: names are unique) is the list of that name.
    ///
    /// # Errors
    ///
    /// A Marketo failure.
    async fn create(&self, name: &str, folder: &FolderRef) -> Result<i64, EngineError> {
        const DESCRIPTION: &str = "Created by marketo-sync from a CRM segment";
        let marketo = &self.ctx.marketo;
        match marketo.create_static_list(name, folder, DESCRIPTION).await {
            Ok(list) => {
                info!(
                    object = self.object(),
                    list = list.id,
                    name,
                    "static list created"
                );
                Ok(list.id)
            }
            Err(e) if e.code() == Some("709") => match marketo.static_list_by_name(name).await? {
                Some(list) => Ok(list.id),
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Adds to `upserts` every live CRM row of the lists in `seed` (by list name), so that a
    /// CRM segment's rows become the new list's members.
    ///
    /// # Errors
    ///
    /// A CRM failure.
    async fn crm_segment(
        &self,
        lists: &BTreeMap<i64, String>,
        seed: &BTreeSet<i64>,
        upserts: &mut Vec<Change>,
    ) -> Result<(), EngineError> {
        let Some(column) = self.plan.crm_column_of(LIST_NAME_FIELD) else {
            return Ok(());
        };
        let names: Vec<Value> = seed
            .iter()
            .filter_map(|id| lists.get(id))
            .map(|n| Value::Text(n.clone()))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let have: BTreeSet<String> = upserts.iter().map(|c| c.id.clone()).collect();
        let rows = self
            .ctx
            .crm
            .find(&self.plan.crm_object, column, &names)
            .await?;
        for row in rows.into_iter().filter(|r| !have.contains(&r.id)) {
            upserts.push(Change {
                id: row.id,
                modified_at: row.modified_at,
                kind: ChangeKind::Upserted { fields: row.fields },
            });
        }
        Ok(())
    }

    async fn run(
        &self,
        summary: &mut CycleSummary,
        options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let (ctx, object) = (self.ctx, self.object());
        let now = ctx.clock.now();
        let Resolved {
            lists,
            mark,
            created,
            crm_seed,
        } = self.resolve(summary).await?;
        let (mut gathered, mut previous) = crm_with_retries(ctx, self.plan, cancel).await?;
        let mut commit = commit::start(&mut gathered);
        commit.watermarks.extend(mark);
        for e in open_errors(ctx, object).await? {
            if e.direction == Direction::MarketoToCrm {
                previous.insert(e.record_key.clone(), e);
            }
        }
        // Marketo side: the riders' pending (lead, list) pairs and the due retries.
        let mut wanted: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
        let pending = if self.dry_run {
            feed_riders::pending_dry_run(ctx, object, LIST_ACTIVITIES, cancel).await?
        } else {
            feed_riders::pending(ctx, object).await?
        };
        for (lead, list) in pending {
            wanted.entry(list).or_default().insert(lead);
        }
        for e in previous.values() {
            if e.direction == Direction::MarketoToCrm
                && e.next_retry_at.is_some_and(|t| t <= now)
                && let Some((list, lead)) = parse_key(&e.record_key)
            {
                wanted.entry(list).or_default().insert(lead);
            }
        }
        wanted.retain(|list, _| lists.contains_key(list));
        let mut membership = self.check(&wanted, cancel).await?;
        commit
            .watermarks
            .extend(self.seed(&lists, &created, &mut membership, cancel).await?);
        commit.watermarks.push(feed_riders::cleared(object, now));
        let mut upserts: Vec<Change> = gathered.upserts().into_iter().cloned().collect();
        self.crm_segment(&lists, &crm_seed, &mut upserts).await?;
        summary.counts_mut(object, Direction::MarketoToCrm).read += membership.len() as u64;
        summary.counts_mut(object, Direction::CrmToMarketo).read += upserts.len() as u64;
        if membership.is_empty() && upserts.is_empty() {
            if !options.dry_run {
                commit::finish(ctx, commit).await?;
            }
            return Ok(());
        }
        let crm_schema = ctx.crm.describe(&self.plan.crm_object).await?;
        let sides = self
            .pairs(
                &lists,
                membership,
                upserts,
                &crm_schema,
                &previous,
                &mut commit,
                summary,
            )
            .await?;
        let pk = crm_schema.id_field.clone().unwrap_or_else(|| "id".into());
        let spec = TwoWaySpec {
            family: Some(ObjectFamily::ListMembers),
            ledger: Direction::MarketoToCrm,
            first: Side::Crm,
            update_key: pk,
            keys_in_base: false,
        };
        let runner = TwoWay {
            ctx,
            plan: self.plan,
            spec: &spec,
            previous: &previous,
            marketo: None,
        };
        let n = sides.len();
        runner.run(sides, commit, summary, options, cancel).await?;
        info!(object, members = n, "static list membership synced");
        Ok(())
    }

    /// Returns whether each wanted lead is in its list now, by membership key (leads Marketo no
    /// longer has are left out).
    ///
    /// # Errors
    ///
    /// A Marketo failure, or cancellation.
    async fn check(
        &self,
        wanted: &BTreeMap<i64, BTreeSet<i64>>,
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<String, bool>, EngineError> {
        let mut out = BTreeMap::new();
        for (list, leads) in wanted {
            let ids: Vec<i64> = leads.iter().copied().collect();
            for chunk in ids.chunks(CHECK_BATCH) {
                if cancel.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                let results = self.ctx.marketo.are_list_members(*list, chunk).await?;
                for (lead, r) in chunk.iter().zip(results) {
                    let member = match r.status {
                        RecordStatus::Memberof => true,
                        RecordStatus::Notmemberof => false,
                        _ => continue,
                    };
                    out.insert(member_key(*list, *lead), member);
                }
            }
        }
        Ok(out)
    }

    /// Reads whole, once, each selected list not read before: its members whose lead has a CRM
    /// contact join `membership` (the others are people the CRM does not hold); a list in
    /// `created` (created empty by this step) is marked read without a call. Returns the
    /// watermark that marks them read, if any list was read now.
    ///
    /// # Errors
    ///
    /// A Marketo or store failure, or cancellation.
    async fn seed(
        &self,
        lists: &BTreeMap<i64, String>,
        created: &BTreeSet<i64>,
        membership: &mut BTreeMap<String, bool>,
        cancel: &CancellationToken,
    ) -> Result<Option<Watermark>, EngineError> {
        let (ctx, object) = (self.ctx, self.object());
        let stored = ctx
            .store
            .watermark(Side::Marketo, object, SEEDED_QUEUE)
            .await?;
        let mut seeded: BTreeSet<i64> = stored
            .and_then(|w| w.cursor)
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        let fresh: Vec<i64> = lists
            .keys()
            .filter(|id| !seeded.contains(id))
            .copied()
            .collect();
        if fresh.is_empty() {
            return Ok(None);
        }
        let fields = vec!["id".to_owned()];
        for list in fresh {
            if created.contains(&list) {
                seeded.insert(list);
                continue;
            }
            let mut token: Option<String> = None;
            loop {
                if cancel.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                let page = ctx
                    .marketo
                    .list_members(list, &fields, token.as_deref())
                    .await?;
                let leads: Vec<String> = page
                    .records
                    .iter()
                    .filter_map(|r| r.get("id").and_then(serde_json::Value::as_i64))
                    .map(|id| id.to_string())
                    .collect();
                // Only the members the CRM holds are kept (a page at a time).
                for lead in contacts_by_lead(ctx, &leads).await?.into_keys() {
                    if let Ok(lead) = lead.parse::<i64>() {
                        membership.entry(member_key(list, lead)).or_insert(true);
                    }
                }
                match page.next_page_token {
                    Some(t) if page.more_result => token = Some(t),
                    _ => break,
                }
            }
            seeded.insert(list);
        }
        Ok(Some(Watermark {
            system: Side::Marketo,
            object: object.to_owned(),
            queue: SEEDED_QUEUE.to_owned(),
            at: ctx.clock.now(),
            tie: None,
            cursor: Some(json!(seeded)),
        }))
    }

    /// Records a CRM row whose contact has no Marketo lead yet (retried).
    fn not_linked(
        &self,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
        crm_key: &str,
        message: String,
        previous: &BTreeMap<String, SyncError>,
    ) {
        let (object, direction) = (self.object(), Direction::CrmToMarketo);
        if self.dry_run {
            return;
        }
        summary.counts_mut(object, direction).failed += 1;
        let subject = Subject {
            object,
            direction,
            record_key: crm_key,
            other_key: None,
            payload: json!({}),
        };
        let failure = Failure::new(CONTACT_NOT_LINKED, message, true);
        let prev = previous.get(crm_key).filter(|e| e.direction == direction);
        commit
            .errors_upsert
            .push(ledger_entry(self.ctx, subject, failure, prev));
    }

    /// Returns the runner's pairs: each membership read from Marketo and each CRM row changed,
    /// joined by membership key.
    #[allow(clippy::too_many_arguments)]
    async fn pairs(
        &self,
        lists: &BTreeMap<i64, String>,
        membership: BTreeMap<String, bool>,
        upserts: Vec<Change>,
        crm_schema: &ObjectSchema,
        previous: &BTreeMap<String, SyncError>,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
    ) -> Result<Vec<SidePair>, EngineError> {
        let (ctx, plan, object) = (self.ctx, self.plan, self.object());
        let mut links: BTreeMap<String, (String, Fields)> = BTreeMap::new();
        let keys: Vec<String> = membership.keys().cloned().collect();
        for chunk in keys.chunks(crate::store::KEYS_PER_LOOKUP) {
            for l in ctx.store.links_by_marketo_keys(object, chunk).await? {
                if l.tombstone.is_none() {
                    links.insert(l.marketo_key.clone(), (l.crm_key.clone(), l.base.clone()));
                }
            }
        }
        // A membership of a lead that won a Marketo merge and took over the loser's contact
        // pairs with the loser's row: its link is re-keyed to the winner.
        let unlinked: Vec<(i64, i64)> = membership
            .iter()
            .filter(|(k, member)| **member && !links.contains_key(*k))
            .filter_map(|(k, _)| parse_key(k))
            .collect();
        let rekeyed = feed_riders::rekey_merged(
            ctx,
            plan,
            crm_schema,
            &unlinked,
            member_key,
            self.dry_run,
            commit,
            summary,
            previous,
        )
        .await?;
        for r in &rekeyed {
            links.insert(r.to.clone(), (r.crm_key.clone(), r.base.clone()));
        }
        let crm_ids: Vec<String> = upserts.iter().map(|c| c.id.clone()).collect();
        let mut crm_links = links_by_crm(ctx, object, &crm_ids).await?;
        feed_riders::apply_rekeyed(&mut crm_links, &rekeyed);
        for l in crm_links.values().filter(|l| l.tombstone.is_none()) {
            links.insert(l.marketo_key.clone(), (l.crm_key.clone(), l.base.clone()));
        }
        let crm_sides = self
            .crm_sides(lists, upserts, &crm_links, previous, commit, summary)
            .await?;
        let leads: Vec<String> = membership
            .keys()
            .filter_map(|k| parse_key(k).map(|(_, l)| l.to_string()))
            .collect();
        let contacts = contacts_by_lead(ctx, &leads).await?;
        let mut all: BTreeSet<String> = membership.keys().cloned().collect();
        all.extend(crm_sides.keys().cloned());
        let mut out = Vec::new();
        for key in all {
            let Some((list, lead)) = parse_key(&key) else {
                continue;
            };
            let Some(list_name) = lists.get(&list) else {
                continue;
            };
            let link = links.get(&key).cloned();
            let (crm_row, crm) = match crm_sides.get(&key).cloned() {
                Some((id, o)) => (Some(id), Some(o)),
                None => (None, None),
            };
            let marketo = match membership.get(&key) {
                None => None,
                Some(member) => {
                    let Some(contact) = contacts.get(&lead.to_string()).cloned() else {
                        // A lead the CRM does not hold: skipped, not refused.
                        summary.counts_mut(object, Direction::MarketoToCrm).skipped += 1;
                        continue;
                    };
                    if !member && link.is_none() && crm.is_none() {
                        // Left a list the CRM never knew it was in: nothing to record.
                        summary.counts_mut(object, Direction::MarketoToCrm).skipped += 1;
                        continue;
                    }
                    let mut raw = Fields::new();
                    raw.insert(MEMBER_FIELD.into(), Value::Bool(*member));
                    raw.insert(CRM_CONTACT_FIELD.into(), Value::Text(contact));
                    raw.insert(LIST_NAME_FIELD.into(), Value::Text(list_name.clone()));
                    match Observed::read(plan, Side::Marketo, raw, None) {
                        Ok(o) => Some(o),
                        Err(e) => {
                            let prev = previous.get(&key);
                            let d = Direction::MarketoToCrm;
                            record_invalid_value(ctx, commit, summary, object, d, &key, &e, prev);
                            continue;
                        }
                    }
                }
            };
            let mut crm_extra = Fields::new();
            let crm_key = link.as_ref().map(|(c, _)| c.clone());
            if crm_key.is_none() && crm.is_none() {
                let column = plan.crm_marketo_id.clone();
                crm_extra.insert(
                    column.clone(),
                    programs::id_value(crm_schema, &column, &key),
                );
            }
            let mut key_fields = Fields::new();
            key_fields.insert("listId".into(), Value::Int(list));
            key_fields.insert("leadId".into(), Value::Int(lead));
            let base = link.as_ref().map(|(_, b)| b.clone());
            let marketo_seen = Seen::of(marketo, link.is_some());
            let crm_seen = Seen::of(crm, link.is_some());
            let read_from = match marketo_seen {
                Seen::Read(_) => Direction::MarketoToCrm,
                _ => Direction::CrmToMarketo,
            };
            out.push(SidePair {
                marketo_key: key.clone(),
                crm_key: crm_key.or(crm_row),
                ledger_key: key,
                read_from,
                base,
                marketo: marketo_seen,
                crm: crm_seen,
                key_fields,
                marketo_extra: Fields::new(),
                crm_extra,
            });
        }
        Ok(out)
    }

    /// Returns the CRM rows changed, read through the plan, by membership key (from the row's
    /// link, else from its contact's lead and its list name). A row whose contact has no lead
    /// yet goes to the ledger; a row of a list not selected is left alone.
    async fn crm_sides(
        &self,
        lists: &BTreeMap<i64, String>,
        upserts: Vec<Change>,
        crm_links: &BTreeMap<String, crate::store::Link>,
        previous: &BTreeMap<String, SyncError>,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
    ) -> Result<BTreeMap<String, (String, Observed)>, EngineError> {
        let (ctx, plan) = (self.ctx, self.plan);
        let contact_column = plan.crm_column_of(CRM_CONTACT_FIELD);
        let list_column = plan.crm_column_of(LIST_NAME_FIELD);
        let raw_of = |c: &Change, column: Option<&str>| match &c.kind {
            ChangeKind::Upserted { fields } => column
                .and_then(|col| fields.get(col))
                .map(Value::to_text)
                .filter(|t| !t.is_empty()),
            ChangeKind::Deleted(_) => None,
        };
        let contacts: Vec<String> = upserts
            .iter()
            .filter_map(|c| raw_of(c, contact_column))
            .collect();
        let leads = lead_ids_by_contact(ctx, &contacts).await?;
        let by_name: BTreeMap<&str, i64> = lists.iter().map(|(id, n)| (n.as_str(), *id)).collect();
        let mut out = BTreeMap::new();
        for change in upserts {
            let ChangeKind::Upserted { fields } = &change.kind else {
                continue;
            };
            let key = match crm_links.get(&change.id) {
                Some(l) => l.marketo_key.clone(),
                None => {
                    let Some(list) =
                        raw_of(&change, list_column).and_then(|n| by_name.get(n.as_str()).copied())
                    else {
                        // A row of a list this mapping does not sync.
                        summary
                            .counts_mut(self.object(), Direction::CrmToMarketo)
                            .skipped += 1;
                        continue;
                    };
                    match raw_of(&change, contact_column).and_then(|c| leads.get(&c).copied()) {
                        Some(lead) => member_key(list, lead),
                        None => {
                            let message = format!(
                                "list member {}: its contact has no Marketo lead yet",
                                change.id
                            );
                            self.not_linked(commit, summary, &change.id, message, previous);
                            continue;
                        }
                    }
                }
            };
            match Observed::read(plan, Side::Crm, fields.clone(), Some(change.modified_at)) {
                Ok(mut o) => {
                    // The row's contact and list name are what Marketo's side of the pair
                    // reports: agreed as written, so the echo of the write changes nothing.
                    for (field, column) in [
                        (CRM_CONTACT_FIELD, contact_column),
                        (LIST_NAME_FIELD, list_column),
                    ] {
                        if let (Some(name), Some(value)) =
                            (canonical_name(plan, field), raw_of(&change, column))
                        {
                            o.canonical.insert(name, Value::Text(value));
                        }
                    }
                    if previous
                        .get(&change.id)
                        .is_some_and(|e| e.direction == Direction::CrmToMarketo)
                    {
                        let d = Direction::CrmToMarketo;
                        let object = self.object();
                        commit
                            .errors_resolve
                            .push(super::error_key(object, d, &change.id));
                    }
                    out.insert(key, (change.id.clone(), o));
                }
                Err(e) => {
                    let prev = previous.get(&change.id);
                    let d = Direction::CrmToMarketo;
                    record_invalid_value(
                        ctx,
                        commit,
                        summary,
                        &plan.object,
                        d,
                        &change.id,
                        &e,
                        prev,
                    );
                }
            }
        }
        Ok(out)
    }
}
