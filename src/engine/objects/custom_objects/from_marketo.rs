//! Marketo custom object records -> the CRM table of their mapping, found through the custom
//! object's "added" activity.
//!
//! Marketo has no change feed for custom object records; what it logs is one activity per record
//! added to a person, of a type Marketo creates for each custom object and names after it ("Add
//! to Car"; the trigger is "Added to Car"). Record edits log nothing ("An activity log entry is
//! not created when a custom object record is changed", Marketo's "Trigger Off Custom Object
//! Changes"), so a Marketo-side edit reaches the CRM the next time a record is added to the same
//! person.
//!
//! Each cycle this step:
//!
//! 1. resolves the activity type by name (the mapping's `added_activity`, else "Add to <display
//!    name>" or "Added to <display name>"), from Get Activity Types read at most once a day (the
//!    answer is kept in the store's schema record `added_activity:<api name>`);
//! 2. reads the new activities of that type with a paging token kept as the watermark cursor of
//!    queue `activity:<type id>` of the object (de-duplicated by `marketoGUID`);
//! 3. reads the custom object records of the activities' leads (Get Custom Objects by `leadId`,
//!    the link field the CRM -> Marketo direction writes too), plus those waiting in the error
//!    ledger (by the key field);
//! 4. reconciles each record with its link, keyed like the CRM -> Marketo direction (the key
//!    field's value): a linked record whose values equal the agreed ones is the echo of our own
//!    write and is skipped; a changed field flows by the three-way rule (a field changed on both
//!    sides is settled by its policy); an unlinked record is matched by the mapping's `match`
//!    fields before a CRM row is created, keyed by the CRM's Marketo-id column holding the
//!    record's `marketoGUID` (so a re-read after a crash creates no second row);
//! 5. commits the links, the errors and the watermark in one transaction.
//!
//! A record whose person has no CRM contact yet waits in the error ledger (retryable) and is read
//! again on a later cycle.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::super::{
    LEAD_LINK_OBJECT, ObjectFamily, PlannedWrite, apply_marketo, due_errors, error_key,
    from_record, key_text, link, sync_error, to_record,
};
use super::{CONTACT_COLUMN, LEAD_FIELD, marketo_key_field};
use crate::crm::WriteResult;
use crate::engine::reconcile::{FieldRule, SideState, reconcile};
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::Plan;
use crate::model::{Fields, Side, Value, fields_hash};
use crate::store::{Direction, SchemaRecord, StepCommit, SyncError};

/// The prefix of the store schema record caching a custom object's added activity type.
pub const CACHE_PREFIX: &str = "added_activity:";
/// How long a resolved activity type is trusted before Get Activity Types is read again.
const CACHE_TTL: chrono::Duration = chrono::Duration::hours(24);
/// Values per Get Custom Objects call (Marketo takes up to 300; this keeps URLs short).
const QUERY_BATCH: usize = 100;

/// The activity type found for a custom object (cached in the store for a day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedType {
    /// The mapping's `added_activity` when the lookup was made (a change re-resolves at once).
    pub configured: Option<String>,
    /// The names looked for, in order.
    pub names: Vec<String>,
    /// The type found, if any.
    pub type_id: Option<i64>,
}

/// Returns true when some enabled field of the plan flows from Marketo to the CRM.
pub fn reads_from_marketo(plan: &Plan) -> bool {
    plan.enabled_fields()
        .any(|f| f.constant.is_none() && f.marketo.is_some() && f.direction.writes_to(Side::Crm))
}

/// Returns the activity type names to look for: the configured one, else "Add to <name>" and
/// "Added to <name>" for the display name and then the API name.
pub fn default_names(api_name: &str, display_name: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in display_name.into_iter().chain([api_name]) {
        for form in [format!("Add to {name}"), format!("Added to {name}")] {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(&form)) {
                out.push(form);
            }
        }
    }
    out
}

/// Returns the activity type of records added to the plan's custom object, from the store's
/// cache when it is less than a day old, else from Marketo (Describe for the display name, then
/// Get Activity Types).
///
/// # Errors
///
/// A Marketo or store failure.
async fn added_type(ctx: &Context, plan: &Plan) -> Result<AddedType, EngineError> {
    let configured = ctx
        .mappings
        .iter()
        .find(|m| m.object == plan.object)
        .and_then(|m| m.file.added_activity.clone())
        .map(|n| n.trim().to_owned());
    let key = format!("{CACHE_PREFIX}{}", plan.marketo_object);
    let now = ctx.clock.now();
    if let Some(stored) = ctx.store.schema(Side::Marketo, &key).await?
        && now - stored.fetched_at < CACHE_TTL
        && let Ok(found) = serde_json::from_value::<AddedType>(stored.schema.clone())
        && found.configured == configured
    {
        return Ok(found);
    }
    let names = match &configured {
        Some(name) => vec![name.clone()],
        None => {
            let meta = ctx
                .marketo
                .describe_custom_object(&plan.marketo_object)
                .await?;
            default_names(&plan.marketo_object, meta.display_name.as_deref())
        }
    };
    let types = ctx.marketo.activity_types().await?;
    let type_id = names.iter().find_map(|n| {
        types
            .iter()
            .find(|t| t.name.trim().eq_ignore_ascii_case(n))
            .map(|t| t.id)
    });
    let found = AddedType {
        configured,
        names,
        type_id,
    };
    let schema = serde_json::to_value(&found).unwrap_or_default();
    let hash = fields_hash(
        &[(key.clone(), Value::Text(schema.to_string()))]
            .into_iter()
            .collect(),
    );
    ctx.store
        .put_schema(&SchemaRecord {
            side: Side::Marketo,
            object: key,
            hash,
            schema,
            fetched_at: now,
        })
        .await?;
    Ok(found)
}

/// One Marketo record read this cycle.
struct MarketoRecord {
    raw: Fields,
    guid: Option<String>,
    lead: Option<i64>,
    updated_at: Option<DateTime<Utc>>,
}

/// What to do with one record.
struct Pair {
    key: String,
    canonical: Fields,
    record: MarketoRecord,
    /// The CRM contact of the record's lead (when the lead has one and the table a contact column).
    contact: Option<String>,
    /// The link fields of the record (key field, and `leadId` when the contact is known).
    key_fields: Fields,
    /// The CRM row it is (or will be) linked to, and the agreed values (empty for a match).
    linked: Option<(String, Fields)>,
    /// True when its CRM match is linked to another record (it waits in the error ledger).
    refused: bool,
}

/// Copies the custom object records added in Marketo since the last cycle to the plan's CRM
/// table (see the module documentation). Does nothing when no field flows to the CRM; warns and
/// does nothing when Marketo has no activity type for the object.
///
/// # Errors
///
/// A whole-call failure of Marketo, the CRM or the store, or cancellation.
pub async fn run(
    ctx: &Context,
    plan: &Plan,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    if !reads_from_marketo(plan) {
        return Ok(());
    }
    let object = plan.object.as_str();
    let direction = Direction::MarketoToCrm;
    let added = added_type(ctx, plan).await?;
    let Some(type_id) = added.type_id else {
        let names: Vec<String> = added.names.iter().map(|n| format!("\"{n}\"")).collect();
        summary.warnings.push(format!(
            "{object}: Marketo has no activity type named {}, so records added to custom object \
             `{}` in Marketo are not copied to the CRM (set `added_activity` in the mapping)",
            names.join(" or "),
            plan.marketo_object
        ));
        return Ok(());
    };

    // 1. The new activities, from the stored paging token.
    let queue = format!("activity:{type_id}");
    let (activities, watermark) =
        super::super::read_activity_queue(ctx, object, &queue, type_id, cancel).await?;
    let mut commit = StepCommit {
        watermarks: vec![watermark],
        ..StepCommit::default()
    };

    // 2. The records of the activities' leads, and those waiting for a retry.
    let leads: BTreeSet<String> = activities.values().map(|a| a.lead_id.to_string()).collect();
    let mut previous: BTreeMap<String, SyncError> = BTreeMap::new();
    let mut retry_keys: Vec<String> = Vec::new();
    for e in due_errors(ctx, object, direction).await? {
        retry_keys.push(e.record_key.clone());
        previous.insert(e.record_key.clone(), e);
    }
    let key_field = marketo_key_field(plan);
    let mut records: BTreeMap<String, MarketoRecord> = BTreeMap::new();
    let lead_list: Vec<String> = leads.into_iter().collect();
    read_marketo(
        ctx,
        plan,
        LEAD_FIELD,
        &lead_list,
        &key_field,
        &mut records,
        cancel,
    )
    .await?;
    let missing: Vec<String> = retry_keys
        .into_iter()
        .filter(|k| !records.contains_key(k))
        .collect();
    read_marketo(
        ctx,
        plan,
        &plan.marketo_crm_key,
        &missing,
        &key_field,
        &mut records,
        cancel,
    )
    .await?;
    summary.counts_mut(object, direction).read += records.len() as u64;
    if records.is_empty() {
        if !options.dry_run {
            ctx.store.commit(commit).await?;
        }
        return Ok(());
    }

    // 3. Links, contacts, the CRM table's shape.
    let keys: Vec<String> = records.keys().cloned().collect();
    let mut links: BTreeMap<String, (String, Fields)> = BTreeMap::new();
    for chunk in keys.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx.store.links_by_marketo_keys(object, chunk).await? {
            if l.tombstone.is_none() {
                links.insert(l.marketo_key.clone(), (l.crm_key.clone(), l.base.clone()));
            }
        }
    }
    let lead_keys: Vec<String> = records
        .values()
        .filter_map(|r| r.lead.map(|l| l.to_string()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut contacts: BTreeMap<i64, String> = BTreeMap::new();
    for chunk in lead_keys.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx
            .store
            .links_by_marketo_keys(LEAD_LINK_OBJECT, chunk)
            .await?
        {
            if l.tombstone.is_none()
                && let Ok(lead) = l.marketo_key.parse::<i64>()
            {
                contacts.insert(lead, l.crm_key);
            }
        }
    }
    let crm_schema = ctx.crm.describe(&plan.crm_object).await?;
    let pk = crm_schema.id_field.clone().unwrap_or_else(|| "id".into());
    let has_contact = crm_schema.field(CONTACT_COLUMN).is_some();

    // 4. Pairs: linked, matched in the CRM, or new.
    let mut pairs: Vec<Pair> = Vec::new();
    for (key, record) in records {
        let canonical = match plan.to_canonical(Side::Marketo, &record.raw) {
            Ok(c) => c,
            Err(e) => {
                super::super::record_invalid_value(
                    ctx,
                    &mut commit,
                    summary,
                    object,
                    direction,
                    &key,
                    &e,
                    previous.get(&key),
                );
                continue;
            }
        };
        let contact = match (has_contact, record.lead) {
            (true, Some(lead)) => match contacts.get(&lead) {
                Some(c) => Some(c.clone()),
                None if options.dry_run => {
                    summary.planned(
                        PlannedChange::new(object, direction, PlannedAction::WaitsForParent)
                            .source(key.clone())
                            .note(format!("lead {lead} has no CRM contact yet")),
                    );
                    continue;
                }
                None => {
                    summary.counts_mut(object, direction).failed += 1;
                    commit.errors_upsert.push(sync_error(
                        ctx,
                        object,
                        direction,
                        &key,
                        None,
                        json!({ "leadId": lead }),
                        "lead_not_linked",
                        &format!("lead {lead} has no CRM contact yet"),
                        true,
                        previous.get(&key),
                    ));
                    continue;
                }
            },
            _ => None,
        };
        let mut key_fields = Fields::new();
        key_fields.insert(plan.marketo_crm_key.clone(), Value::Text(key.clone()));
        if let (Some(lead), Some(_)) = (record.lead, &contact) {
            key_fields.insert(LEAD_FIELD.into(), Value::Int(lead));
        }
        pairs.push(Pair {
            linked: links.get(&key).cloned(),
            key,
            canonical,
            record,
            contact,
            key_fields,
            refused: false,
        });
    }
    match_unlinked(ctx, plan, &mut pairs, &mut commit, summary, &previous).await?;
    pairs.retain(|p| !p.refused);

    // The CRM rows of the linked and matched pairs.
    let crm_keys: Vec<String> = pairs
        .iter()
        .filter_map(|p| p.linked.as_ref().map(|(c, _)| c.clone()))
        .collect();
    let mut rows: BTreeMap<String, (Fields, DateTime<Utc>)> = BTreeMap::new();
    for chunk in crm_keys.chunks(super::super::CRM_ROW_BATCH) {
        for r in ctx.crm.get(&plan.crm_object, chunk).await? {
            rows.insert(r.id, (r.fields, r.modified_at));
        }
    }

    // 5. Reconcile.
    let rules: Vec<FieldRule> = plan
        .enabled_fields()
        .filter(|f| f.constant.is_none())
        .map(FieldRule::of)
        .collect();
    let now = ctx.clock.now();
    let mut creates: Vec<(String, Fields, Fields)> = Vec::new();
    let mut crm_updates: Vec<(String, String, Fields)> = Vec::new();
    let mut to_marketo: Vec<PlannedWrite> = Vec::new();
    let mut agreed: BTreeMap<String, (String, Fields)> = BTreeMap::new();
    for pair in &pairs {
        let Some((crm_key, base)) = &pair.linked else {
            let mut row = plan.render(Side::Crm, &pair.canonical);
            if let Some(c) = &pair.contact {
                row.insert(CONTACT_COLUMN.into(), Value::Text(c.clone()));
            }
            let crm_id = pair.record.guid.clone().unwrap_or_else(|| pair.key.clone());
            row.insert(plan.crm_marketo_id.clone(), Value::Text(crm_id));
            creates.push((pair.key.clone(), with_keys(&pair.canonical, pair), row));
            continue;
        };
        let Some((crm_raw, crm_at)) = rows.get(crm_key) else {
            // Deleted in the CRM: the deletions step follows that.
            summary.counts_mut(object, direction).skipped += 1;
            continue;
        };
        let crm_canonical = match plan.to_canonical(Side::Crm, crm_raw) {
            Ok(c) => c,
            Err(e) => {
                summary.counts_mut(object, direction).failed += 1;
                warn!(object, crm_key = %crm_key, error = %e, "unreadable crm row");
                continue;
            }
        };
        let r = reconcile(
            &rules,
            base,
            Some(SideState {
                fields: &pair.canonical,
                modified_at: pair.record.updated_at,
            }),
            Some(SideState {
                fields: &crm_canonical,
                modified_at: Some(*crm_at),
            }),
        );
        for c in &r.conflicts {
            let d = match c.winner {
                Side::Crm => Direction::CrmToMarketo,
                Side::Marketo => Direction::MarketoToCrm,
            };
            summary.counts_mut(object, d).conflicts += 1;
            commit
                .conflicts
                .push(c.record(object, &pair.key, crm_key, now));
        }
        let mut crm_row = plan.render(Side::Crm, &r.to_crm);
        if let Some(c) = &pair.contact
            && key_text(crm_raw.get(CONTACT_COLUMN)).as_deref() != Some(c.as_str())
        {
            crm_row.insert(CONTACT_COLUMN.into(), Value::Text(c.clone()));
        }
        let new_base = with_keys(&r.agreed, pair);
        if crm_row.is_empty() && r.to_marketo.is_empty() {
            if &new_base == base {
                summary.counts_mut(object, direction).skipped += 1;
                if previous.contains_key(&pair.key) {
                    commit
                        .errors_resolve
                        .push(error_key(object, direction, &pair.key));
                }
            } else {
                commit
                    .links_upsert
                    .push(link(object, &pair.key, crm_key, new_base, now));
            }
            continue;
        }
        if !crm_row.is_empty() {
            crm_row.insert(pk.clone(), Value::Text(crm_key.clone()));
            crm_updates.push((pair.key.clone(), crm_key.clone(), crm_row));
        }
        if !r.to_marketo.is_empty() {
            let mut record = to_record(&plan.render(Side::Marketo, &r.to_marketo));
            for (k, v) in &pair.key_fields {
                record.insert(k.clone(), v.to_json());
            }
            to_marketo.push(PlannedWrite {
                crm_key: crm_key.clone(),
                marketo_key: pair.key.clone(),
                record,
                base: new_base.clone(),
                replaces: None,
                before: None,
                key_names: Vec::new(),
            });
        }
        agreed.insert(pair.key.clone(), (crm_key.clone(), new_base));
    }

    if options.dry_run {
        for (key, _, row) in &creates {
            summary.planned(
                PlannedChange::new(object, direction, PlannedAction::Create)
                    .source(key.clone())
                    .fields(&to_record(row), None, &[]),
            );
        }
        for (key, crm_key, row) in &crm_updates {
            let before = rows.get(crm_key).map(|(raw, _)| to_record(raw));
            summary.planned(
                PlannedChange::new(object, direction, PlannedAction::Update)
                    .source(key.clone())
                    .target(crm_key.clone())
                    .fields(&to_record(row), before.as_ref(), &[pk.as_str()]),
            );
        }
        for p in &to_marketo {
            let before = pairs
                .iter()
                .find(|pair| pair.key == p.marketo_key)
                .map(|pair| to_record(&pair.record.raw));
            let keys: Vec<&str> = p.record.keys().map(String::as_str).collect();
            let keys: Vec<&str> = keys
                .into_iter()
                .filter(|k| *k == plan.marketo_crm_key || *k == LEAD_FIELD)
                .collect();
            summary.planned(
                PlannedChange::new(object, Direction::CrmToMarketo, PlannedAction::Update)
                    .source(p.crm_key.clone())
                    .target(p.marketo_key.clone())
                    .fields(&p.record, before.as_ref(), &keys),
            );
        }
        return Ok(());
    }

    // 6. Apply: new CRM rows, then updates of linked rows (CRM, then Marketo).
    let target = super::super::RowTarget {
        object,
        direction,
        previous: &previous,
    };
    super::super::create_linked_rows(ctx, plan, &target, &creates, &mut commit, summary, cancel)
        .await?;
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for chunk in crm_updates.chunks(super::super::CRM_ROW_BATCH) {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let batch: Vec<Fields> = chunk.iter().map(|(_, _, row)| row.clone()).collect();
        let results = ctx.crm.upsert(&plan.crm_object, &pk, &batch).await?;
        for ((key, crm_key, row), result) in chunk.iter().zip(results) {
            let counts = summary.counts_mut(object, direction);
            match result {
                WriteResult::Created { .. } | WriteResult::Updated { .. } => counts.updated += 1,
                WriteResult::Deleted { .. } => {}
                WriteResult::Refused(refusal) => {
                    counts.failed += 1;
                    failed.insert(key.clone());
                    commit.errors_upsert.push(sync_error(
                        ctx,
                        object,
                        direction,
                        key,
                        Some(crm_key.clone()),
                        serde_json::Value::Object(to_record(row)),
                        refusal.code(),
                        &refusal.ledger_message(),
                        refusal.retryable,
                        previous.get(key),
                    ));
                }
            }
        }
    }
    let mut marketo_commit = StepCommit::default();
    let to_marketo: Vec<PlannedWrite> = to_marketo
        .into_iter()
        .filter(|p| !failed.contains(&p.marketo_key))
        .collect();
    apply_marketo(
        ctx,
        object,
        &ObjectFamily::Custom(plan.marketo_object.clone()),
        to_marketo,
        &BTreeMap::new(),
        &mut marketo_commit,
        summary,
        cancel,
    )
    .await?;
    for e in &marketo_commit.errors_upsert {
        if let Some(k) = &e.other_key {
            failed.insert(k.clone());
        }
    }
    commit.errors_upsert.extend(marketo_commit.errors_upsert);
    for (key, (crm_key, base)) in agreed {
        if failed.contains(&key) {
            continue;
        }
        commit
            .links_upsert
            .push(link(object, &key, &crm_key, base, now));
        if previous.contains_key(&key) {
            commit
                .errors_resolve
                .push(error_key(object, direction, &key));
        }
    }
    info!(
        object,
        activity_type = type_id,
        activities = activities.len(),
        "custom object records copied from marketo"
    );
    ctx.store.commit(commit).await?;
    Ok(())
}

/// Returns the agreed values of a pair as the CRM -> Marketo direction keeps them: the canonical
/// fields plus `key:<field>` for each link field.
fn with_keys(canonical: &Fields, pair: &Pair) -> Fields {
    let mut base: Fields = canonical
        .iter()
        .filter(|(k, _)| !k.starts_with("key:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in &pair.key_fields {
        base.insert(format!("key:{k}"), v.clone());
    }
    base
}

/// Links each unlinked pair whose first match field names exactly one live, unlinked CRM row to
/// that row (with an empty agreed state, so both sides' values are reconciled); a match already
/// linked to another record goes to the error ledger.
///
/// # Errors
///
/// A CRM or store failure.
async fn match_unlinked(
    ctx: &Context,
    plan: &Plan,
    pairs: &mut [Pair],
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
    previous: &BTreeMap<String, SyncError>,
) -> Result<(), EngineError> {
    let object = plan.object.as_str();
    let Some((name, crm_field)) = plan
        .match_fields
        .first()
        .and_then(|m| plan.field(m))
        .and_then(|f| f.crm.clone().map(|c| (f.name.clone(), c)))
    else {
        return Ok(());
    };
    let mut wanted: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut values: Vec<Value> = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        if p.linked.is_some() {
            continue;
        }
        let rendered = plan.render(Side::Crm, &p.canonical);
        if let (Some(text), Some(v)) = (key_text(p.canonical.get(&name)), rendered.get(&crm_field))
        {
            wanted.entry(text).or_default().push(i);
            values.push(v.clone());
        }
    }
    if values.is_empty() {
        return Ok(());
    }
    let mut found: Vec<(String, String)> = Vec::new();
    for chunk in values.chunks(super::super::CRM_ROW_BATCH) {
        for r in ctx.crm.find(&plan.crm_object, &crm_field, chunk).await? {
            let canonical = plan.to_canonical(Side::Crm, &r.fields).unwrap_or_default();
            if let Some(text) = key_text(canonical.get(&name)) {
                found.push((text, r.id));
            }
        }
    }
    let ids: Vec<String> = found.iter().map(|(_, id)| id.clone()).collect();
    let linked = super::super::links_by_crm(ctx, object, &ids).await?;
    for (text, crm_id) in found {
        let Some(indexes) = wanted.get(&text) else {
            continue;
        };
        for i in indexes {
            let pair = &mut pairs[*i];
            if pair.linked.is_some() {
                continue;
            }
            match linked.get(&crm_id).filter(|l| l.tombstone.is_none()) {
                Some(other) if other.marketo_key != pair.key => {
                    summary.counts_mut(object, Direction::MarketoToCrm).failed += 1;
                    commit.errors_upsert.push(sync_error(
                        ctx,
                        object,
                        Direction::MarketoToCrm,
                        &pair.key,
                        Some(crm_id.clone()),
                        json!({}),
                        "match_linked",
                        &format!(
                            "the matching CRM row {crm_id} is linked to Marketo record {}",
                            other.marketo_key
                        ),
                        false,
                        previous.get(&pair.key),
                    ));
                    warn!(object, marketo_key = %pair.key, "marketo record matches a linked crm row");
                    pair.refused = true;
                }
                _ => pair.linked = Some((crm_id.clone(), Fields::new())),
            }
        }
    }
    Ok(())
}

/// Reads the plan's custom object records whose `filter` field holds one of `values` (Get Custom
/// Objects, paged) into `out`, by link key.
///
/// # Errors
///
/// A whole-call Marketo failure, or cancellation.
async fn read_marketo(
    ctx: &Context,
    plan: &Plan,
    filter: &str,
    values: &[String],
    key_field: &Option<String>,
    out: &mut BTreeMap<String, MarketoRecord>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let mut fields = plan.read_fields(Side::Marketo);
    for extra in [
        plan.marketo_crm_key.as_str(),
        LEAD_FIELD,
        "marketoGUID",
        "updatedAt",
    ] {
        if !fields.iter().any(|f| f == extra) {
            fields.push(extra.to_owned());
        }
    }
    for chunk in values.chunks(QUERY_BATCH) {
        let mut token: Option<String> = None;
        loop {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let page = ctx
                .marketo
                .get_custom_objects(
                    &plan.marketo_object,
                    filter,
                    chunk,
                    &fields,
                    token.as_deref(),
                )
                .await?;
            for record in &page.records {
                let mut raw = from_record(record);
                // A requested field Marketo leaves out is null (custom-objects.md, Query).
                for f in &fields {
                    raw.entry(f.clone()).or_insert(Value::Null);
                }
                let key = match key_field {
                    Some(name) => plan
                        .to_canonical(Side::Marketo, &raw)
                        .ok()
                        .and_then(|c| key_text(c.get(name))),
                    None => key_text(raw.get(&plan.marketo_crm_key)),
                };
                let Some(key) = key else {
                    warn!(object = %plan.object, "marketo record without a key value skipped");
                    continue;
                };
                let lead = match raw.get(LEAD_FIELD) {
                    Some(Value::Int(i)) => Some(*i),
                    Some(Value::Text(t)) => t.parse().ok(),
                    _ => None,
                };
                let updated_at = record
                    .get("updatedAt")
                    .and_then(|v| v.as_str())
                    .and_then(crate::marketo::model::parse_marketo_datetime);
                out.insert(
                    key,
                    MarketoRecord {
                        guid: key_text(raw.get("marketoGUID")),
                        raw,
                        lead,
                        updated_at,
                    },
                );
            }
            match page.next_page_token {
                Some(t) if page.more_result && !page.records.is_empty() => token = Some(t),
                _ => break,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_try_both_forms_of_the_display_and_api_names() {
        assert_eq!(
            default_names("car_c", Some("Car")),
            vec![
                "Add to Car",
                "Added to Car",
                "Add to car_c",
                "Added to car_c"
            ]
        );
        assert_eq!(
            default_names("car_c", None),
            vec!["Add to car_c", "Added to car_c"]
        );
        assert_eq!(default_names("car", Some("car")).len(), 2);
    }
}
