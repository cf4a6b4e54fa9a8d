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
    CRM_ROW_BATCH, ObjectFamily, due_errors, from_record, key_text, ledger_entry, links_by_crm,
    read_activity_queue, record_invalid_value,
};
use super::{CONTACT_COLUMN, LEAD_FIELD, marketo_key_field};
use crate::engine::ledger::{Failure, Subject};
use crate::engine::pipeline::commit;
use crate::engine::pipeline::pair::contacts_by_lead;
use crate::engine::pipeline::spec::TwoWaySpec;
use crate::engine::pipeline::two_way::{Observed, Seen, SidePair, TwoWay, unreadable};
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

/// One Marketo record on its way to a [`SidePair`].
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

/// Returns the spec of a custom object read from Marketo: its custom object family, ledger
/// entries by the record's Marketo key, the CRM written first, linked rows updated by the
/// table's primary key `pk`, and agreed values keyed like the CRM -> Marketo direction.
fn spec(plan: &Plan, pk: &str) -> TwoWaySpec {
    TwoWaySpec {
        family: Some(ObjectFamily::Custom(plan.marketo_object.clone())),
        ledger: Direction::MarketoToCrm,
        first: Side::Crm,
        update_key: pk.to_owned(),
        keys_in_base: true,
    }
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
    let Some(type_id) = activity_type(ctx, plan, summary).await? else {
        return Ok(());
    };
    let queue = format!("activity:{type_id}");
    let read =
        read_activity_queue(ctx, object, &queue, type_id, &mut |_, _, _| None, cancel).await?;
    let (activities, watermark) = (read.activities, read.watermark);
    let mut commit = StepCommit {
        watermarks: vec![watermark],
        ..StepCommit::default()
    };
    let leads: BTreeSet<String> = activities.values().map(|a| a.lead_id.to_string()).collect();
    let (records, previous) = gather_records(ctx, plan, leads, cancel).await?;
    summary.counts_mut(object, Direction::MarketoToCrm).read += records.len() as u64;
    if records.is_empty() {
        if !options.dry_run {
            commit::finish(ctx, commit).await?;
        }
        return Ok(());
    }
    let crm_schema = ctx.crm.describe(&plan.crm_object).await?;
    let pk = crm_schema.id_field.clone().unwrap_or_else(|| "id".into());
    let has_contact = crm_schema.field(CONTACT_COLUMN).is_some();
    let gather = Gather {
        ctx,
        plan,
        previous: &previous,
        dry_run: options.dry_run,
    };
    let pairs = gather
        .pairs(records, has_contact, &mut commit, summary)
        .await?;
    let sides = gather.side_pairs(pairs, summary).await?;
    let spec = spec(plan, &pk);
    let runner = TwoWay {
        ctx,
        plan,
        spec: &spec,
        previous: &previous,
        marketo: None,
    };
    runner.run(sides, commit, summary, options, cancel).await?;
    info!(
        object,
        activity_type = type_id,
        activities = activities.len(),
        "custom object records copied from marketo"
    );
    Ok(())
}

/// Returns the id of the object's added activity type, or warns and returns `None` when
/// Marketo has none.
///
/// # Errors
///
/// A Marketo or store failure.
async fn activity_type(
    ctx: &Context,
    plan: &Plan,
    summary: &mut CycleSummary,
) -> Result<Option<i64>, EngineError> {
    let added = added_type(ctx, plan).await?;
    if added.type_id.is_none() {
        let names: Vec<String> = added.names.iter().map(|n| format!("\"{n}\"")).collect();
        summary.warnings.push(format!(
            "{}: Marketo has no activity type named {}, so records added to custom object \
             `{}` in Marketo are not copied to the CRM (set `added_activity` in the mapping)",
            plan.object,
            names.join(" or "),
            plan.marketo_object
        ));
    }
    Ok(added.type_id)
}

/// Returns the records of the activities' `leads` and those waiting for a retry (by the key
/// field), by link key, and the due ledger entries by record key.
///
/// # Errors
///
/// A Marketo or store failure, or cancellation.
async fn gather_records(
    ctx: &Context,
    plan: &Plan,
    leads: BTreeSet<String>,
    cancel: &CancellationToken,
) -> Result<(BTreeMap<String, MarketoRecord>, BTreeMap<String, SyncError>), EngineError> {
    let object = plan.object.as_str();
    let mut previous: BTreeMap<String, SyncError> = BTreeMap::new();
    for e in due_errors(ctx, object, Direction::MarketoToCrm).await? {
        previous.insert(e.record_key.clone(), e);
    }
    let key_field = marketo_key_field(plan);
    let mut records: BTreeMap<String, MarketoRecord> = BTreeMap::new();
    let lead_list: Vec<String> = leads.into_iter().collect();
    let read = Query {
        ctx,
        plan,
        key_field: &key_field,
        cancel,
    };
    read.run(LEAD_FIELD, &lead_list, &mut records).await?;
    let missing: Vec<String> = previous
        .keys()
        .filter(|k| !records.contains_key(*k))
        .cloned()
        .collect();
    read.run(&plan.marketo_crm_key, &missing, &mut records)
        .await?;
    Ok((records, previous))
}

/// What turns the records read into the runner's pairs.
struct Gather<'a> {
    ctx: &'a Context,
    plan: &'a Plan,
    previous: &'a BTreeMap<String, SyncError>,
    dry_run: bool,
}

impl Gather<'_> {
    /// Returns the live links of these Marketo keys: CRM key and agreed values.
    async fn links(
        &self,
        keys: &[String],
    ) -> Result<BTreeMap<String, (String, Fields)>, EngineError> {
        let mut links = BTreeMap::new();
        for chunk in keys.chunks(crate::store::KEYS_PER_LOOKUP) {
            for l in self
                .ctx
                .store
                .links_by_marketo_keys(&self.plan.object, chunk)
                .await?
            {
                if l.tombstone.is_none() {
                    links.insert(l.marketo_key.clone(), (l.crm_key.clone(), l.base.clone()));
                }
            }
        }
        Ok(links)
    }

    /// Returns the CRM contact of each linked lead of `records`.
    async fn contacts(
        &self,
        records: &BTreeMap<String, MarketoRecord>,
    ) -> Result<BTreeMap<i64, String>, EngineError> {
        let lead_keys: Vec<String> = records
            .values()
            .filter_map(|r| r.lead.map(|l| l.to_string()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let contacts = contacts_by_lead(self.ctx, &lead_keys).await?;
        Ok(contacts
            .into_iter()
            .filter_map(|(lead, contact)| lead.parse::<i64>().ok().map(|l| (l, contact)))
            .collect())
    }

    /// Returns a pair for every readable record whose lead's contact is known (or not needed),
    /// linked, matched in the CRM by the mapping's match field, or new.
    ///
    /// # Errors
    ///
    /// A CRM or store failure.
    async fn pairs(
        &self,
        records: BTreeMap<String, MarketoRecord>,
        has_contact: bool,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
    ) -> Result<Vec<Pair>, EngineError> {
        let keys: Vec<String> = records.keys().cloned().collect();
        let links = self.links(&keys).await?;
        let contacts = self.contacts(&records).await?;
        let mut pairs: Vec<Pair> = Vec::new();
        for (key, record) in records {
            let canonical = match self.plan.to_canonical(Side::Marketo, &record.raw) {
                Ok(c) => c,
                Err(e) => {
                    let (ctx, object) = (self.ctx, self.plan.object.as_str());
                    let (direction, previous) = (Direction::MarketoToCrm, self.previous.get(&key));
                    record_invalid_value(
                        ctx, commit, summary, object, direction, &key, &e, previous,
                    );
                    continue;
                }
            };
            let contact = match (has_contact, record.lead) {
                (true, Some(lead)) => match contacts.get(&lead) {
                    Some(c) => Some(c.clone()),
                    None => {
                        self.waits_for_contact(&key, lead, commit, summary);
                        continue;
                    }
                },
                _ => None,
            };
            let mut key_fields = Fields::new();
            key_fields.insert(self.plan.marketo_crm_key.clone(), Value::Text(key.clone()));
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
        match_unlinked(
            self.ctx,
            self.plan,
            &mut pairs,
            commit,
            summary,
            self.previous,
        )
        .await?;
        pairs.retain(|p| !p.refused);
        Ok(pairs)
    }

    /// A record whose lead has no CRM contact yet waits in the ledger (retryable); on a dry run
    /// it is planned as waiting for its parent.
    fn waits_for_contact(
        &self,
        key: &str,
        lead: i64,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
    ) {
        let (object, direction) = (self.plan.object.as_str(), Direction::MarketoToCrm);
        let message = format!("lead {lead} has no CRM contact yet");
        if self.dry_run {
            summary.planned(
                PlannedChange::new(object, direction, PlannedAction::WaitsForParent)
                    .source(key.to_owned())
                    .note(message),
            );
            return;
        }
        summary.counts_mut(object, direction).failed += 1;
        let subject = Subject {
            object,
            direction,
            record_key: key,
            other_key: None,
            payload: json!({ "leadId": lead }),
        };
        let failure = Failure::new("lead_not_linked", message, true);
        let entry = ledger_entry(self.ctx, subject, failure, self.previous.get(key));
        commit.errors_upsert.push(entry);
    }

    /// Reads the CRM rows of the linked and matched pairs and returns the runner's pairs.
    ///
    /// # Errors
    ///
    /// A CRM failure.
    async fn side_pairs(
        &self,
        pairs: Vec<Pair>,
        summary: &mut CycleSummary,
    ) -> Result<Vec<SidePair>, EngineError> {
        let crm_keys: Vec<String> = pairs
            .iter()
            .filter_map(|p| p.linked.as_ref().map(|(c, _)| c.clone()))
            .collect();
        let mut rows: BTreeMap<String, (Fields, DateTime<Utc>)> = BTreeMap::new();
        for chunk in crm_keys.chunks(CRM_ROW_BATCH) {
            for r in self.ctx.crm.get(&self.plan.crm_object, chunk).await? {
                rows.insert(r.id, (r.fields, r.modified_at));
            }
        }
        Ok(pairs
            .into_iter()
            .filter_map(|p| self.side_pair(p, &rows, summary))
            .collect())
    }

    /// Returns one pair as the runner takes it: the Marketo record read, its CRM row (missing
    /// when new or deleted), and the object's hook: the contact column, and a new row's
    /// Marketo id (the record's `marketoGUID`).
    fn side_pair(
        &self,
        pair: Pair,
        rows: &BTreeMap<String, (Fields, DateTime<Utc>)>,
        summary: &mut CycleSummary,
    ) -> Option<SidePair> {
        let plan = self.plan;
        let mut crm_extra = Fields::new();
        let (crm, crm_key, base) = match pair.linked {
            Some((crm_key, base)) => {
                let crm = match rows.get(&crm_key) {
                    None => Seen::Missing,
                    Some((raw, at)) => {
                        match Observed::read(plan, Side::Crm, raw.clone(), Some(*at)) {
                            Ok(o) => Seen::Read(o),
                            Err(e) => {
                                let direction = Direction::MarketoToCrm;
                                unreadable(summary, &plan.object, direction, &crm_key, &e);
                                return None;
                            }
                        }
                    }
                };
                let held = crm.raw_field(CONTACT_COLUMN);
                if let Some(c) = pair.contact.filter(|c| held.as_deref() != Some(c.as_str())) {
                    crm_extra.insert(CONTACT_COLUMN.into(), Value::Text(c));
                }
                (crm, Some(crm_key), Some(base))
            }
            None => {
                if let Some(c) = pair.contact {
                    crm_extra.insert(CONTACT_COLUMN.into(), Value::Text(c));
                }
                let crm_id = pair.record.guid.clone().unwrap_or_else(|| pair.key.clone());
                crm_extra.insert(plan.crm_marketo_id.clone(), Value::Text(crm_id));
                (Seen::Missing, None, None)
            }
        };
        let marketo = Seen::Read(Observed {
            canonical: pair.canonical,
            raw: pair.record.raw,
            modified_at: pair.record.updated_at,
        });
        Some(SidePair {
            marketo_key: pair.key.clone(),
            crm_key,
            ledger_key: pair.key,
            read_from: Direction::MarketoToCrm,
            base,
            marketo,
            crm,
            key_fields: pair.key_fields,
            marketo_extra: Fields::new(),
            crm_extra,
        })
    }
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
    for chunk in values.chunks(CRM_ROW_BATCH) {
        for r in ctx.crm.find(&plan.crm_object, &crm_field, chunk).await? {
            let canonical = plan.to_canonical(Side::Crm, &r.fields).unwrap_or_default();
            if let Some(text) = key_text(canonical.get(&name)) {
                found.push((text, r.id));
            }
        }
    }
    let ids: Vec<String> = found.iter().map(|(_, id)| id.clone()).collect();
    let linked = links_by_crm(ctx, object, &ids).await?;
    for (text, crm_id) in found {
        for i in wanted.get(&text).into_iter().flatten() {
            let pair = &mut pairs[*i];
            if pair.linked.is_some() {
                continue;
            }
            match linked.get(&crm_id).filter(|l| l.tombstone.is_none()) {
                Some(other) if other.marketo_key != pair.key => {
                    let failure = Failure::new(
                        "match_linked",
                        format!(
                            "the matching CRM row {crm_id} is linked to Marketo record {}",
                            other.marketo_key
                        ),
                        false,
                    );
                    refuse_match(
                        ctx, object, pair, &crm_id, failure, commit, summary, previous,
                    );
                }
                _ => pair.linked = Some((crm_id.clone(), Fields::new())),
            }
        }
    }
    Ok(())
}

/// Puts an unlinked record whose CRM match is linked to another record in the ledger.
#[allow(clippy::too_many_arguments)]
fn refuse_match(
    ctx: &Context,
    object: &str,
    pair: &mut Pair,
    crm_id: &str,
    failure: Failure,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
    previous: &BTreeMap<String, SyncError>,
) {
    let direction = Direction::MarketoToCrm;
    summary.counts_mut(object, direction).failed += 1;
    warn!(object, marketo_key = %pair.key, "marketo record matches a linked crm row");
    let subject = Subject {
        object,
        direction,
        record_key: &pair.key,
        other_key: Some(crm_id.to_owned()),
        payload: json!({}),
    };
    let entry = ledger_entry(ctx, subject, failure, previous.get(&pair.key));
    commit.errors_upsert.push(entry);
    pair.refused = true;
}

/// A Get Custom Objects read of the plan's custom object.
struct Query<'a> {
    ctx: &'a Context,
    plan: &'a Plan,
    /// The canonical field holding the link key (else the raw Marketo key field).
    key_field: &'a Option<String>,
    cancel: &'a CancellationToken,
}

impl Query<'_> {
    /// Returns the Marketo fields read: the mapped ones and what the step needs.
    fn fields(&self) -> Vec<String> {
        let mut fields = self.plan.read_fields(Side::Marketo);
        let key = self.plan.marketo_crm_key.as_str();
        for extra in [key, LEAD_FIELD, "marketoGUID", "updatedAt"] {
            if !fields.iter().any(|f| f == extra) {
                fields.push(extra.to_owned());
            }
        }
        fields
    }

    /// Reads the records whose `filter` field holds one of `values` (paged) into `out`, by
    /// link key.
    ///
    /// # Errors
    ///
    /// A whole-call Marketo failure, or cancellation.
    async fn run(
        &self,
        filter: &str,
        values: &[String],
        out: &mut BTreeMap<String, MarketoRecord>,
    ) -> Result<(), EngineError> {
        let fields = self.fields();
        let object = self.plan.marketo_object.as_str();
        for chunk in values.chunks(QUERY_BATCH) {
            let mut token: Option<String> = None;
            loop {
                if self.cancel.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                let page = self
                    .ctx
                    .marketo
                    .get_custom_objects(object, filter, chunk, &fields, token.as_deref())
                    .await?;
                for record in &page.records {
                    out.extend(self.record(record, &fields));
                }
                match page.next_page_token {
                    Some(t) if page.more_result && !page.records.is_empty() => token = Some(t),
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// Returns one record read by its link key (`None`, logged, when it has no key value).
    fn record(
        &self,
        record: &crate::marketo::Record,
        fields: &[String],
    ) -> Option<(String, MarketoRecord)> {
        let plan = self.plan;
        let mut raw = from_record(record);
        // A requested field Marketo leaves out is null (custom-objects.md, Query).
        for f in fields {
            raw.entry(f.clone()).or_insert(Value::Null);
        }
        let key = match self.key_field {
            Some(name) => plan
                .to_canonical(Side::Marketo, &raw)
                .ok()
                .and_then(|c| key_text(c.get(name))),
            None => key_text(raw.get(&plan.marketo_crm_key)),
        };
        let Some(key) = key else {
            warn!(object = %plan.object, "marketo record without a key value skipped");
            return None;
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
        let guid = key_text(raw.get("marketoGUID"));
        let found = MarketoRecord {
            guid,
            raw,
            lead,
            updated_at,
        };
        Some((key, found))
    }
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
