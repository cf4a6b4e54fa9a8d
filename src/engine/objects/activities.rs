//! Configured Marketo activity types -> a CRM table, one way.
//!
//! Each configured type (`[[activities]]` in the activities mapping, `Plans::activities`) has its
//! own queue `activity:<type id>`: a Get Lead Activities paging token kept as the watermark's
//! cursor. Activities are de-duplicated by `marketoGUID` twice: a copied activity has a link
//! (object `activity:<type id>`, Marketo key = GUID) and is not written again, and the CRM write
//! is an upsert keyed by the GUID column (`keys.crm_marketo_id`), so a re-read after a crash or
//! an overlapping token inserts no duplicate row. The CRM row is linked to the CRM record of the
//! lead through the synthetic source field [`CRM_CONTACT_FIELD`] (the CRM key of the lead's link).

use std::collections::{BTreeMap, BTreeSet};

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{due_errors, from_record};
use crate::engine::pipeline::pair::contacts_by_lead;
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{Plan, Plans};
use crate::marketo::activities::Activity;
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, StepCommit, SyncError};

/// The watermark object of every activity queue.
pub const OBJECT: &str = "activities";
pub use crate::mapping::activities::{CRM_CONTACT_FIELD, STANDARD_FIELDS, activity_schema};

/// Returns the queue name of an activity type.
pub fn queue(type_id: u32) -> String {
    format!("activity:{type_id}")
}

/// Returns the raw source fields of one activity (see [`STANDARD_FIELDS`]).
pub fn raw_fields(a: &Activity, crm_contact: Option<&str>) -> Fields {
    let mut raw = Fields::new();
    let opt_int = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
    raw.insert(
        "marketoGUID".into(),
        a.key().map_or(Value::Null, Value::Text),
    );
    raw.insert("activityDate".into(), Value::DateTime(a.activity_date));
    raw.insert("leadId".into(), Value::Int(a.lead_id));
    raw.insert("campaignId".into(), opt_int(a.campaign_id));
    raw.insert(
        "primaryAttributeValueId".into(),
        opt_int(a.primary_attribute_value_id),
    );
    raw.insert(
        "primaryAttributeValue".into(),
        a.primary_attribute_value
            .clone()
            .map_or(Value::Null, Value::Text),
    );
    raw.insert(
        CRM_CONTACT_FIELD.into(),
        crm_contact.map_or(Value::Null, |c| Value::Text(c.to_owned())),
    );
    for attr in &a.attributes {
        raw.entry(attr.name.clone())
            .or_insert_with(|| Value::from_json(&attr.value));
    }
    raw
}

/// Copies the new activities of every configured type to the CRM. Does nothing when no activity
/// type is configured.
///
/// # Errors
///
/// A whole-call failure of Marketo, the CRM or the store, or cancellation.
pub async fn run(
    ctx: &Context,
    plans: &Plans,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    for (type_id, plan) in &plans.activities {
        run_type(ctx, *type_id, plan, summary, options, cancel).await?;
    }
    Ok(())
}

/// One activity row to copy: `(marketoGUID, agreed values, CRM row)`.
type Row = (String, Fields, Fields);

/// Copies the new activities of one type to its CRM table (see the module documentation).
///
/// # Errors
///
/// A whole-call failure of Marketo, the CRM or the store, or cancellation.
async fn run_type(
    ctx: &Context,
    type_id: u32,
    plan: &Plan,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let q = queue(type_id);
    let link_object = plan.object.as_str();
    let direction = Direction::MarketoToCrm;
    let (activities, watermark) =
        super::read_activity_queue(ctx, OBJECT, &q, i64::from(type_id), cancel).await?;
    summary.counts_mut(link_object, direction).read += activities.len() as u64;
    let mut commit = StepCommit {
        watermarks: vec![watermark],
        ..StepCommit::default()
    };
    let seen = copied(ctx, link_object, &activities).await?;
    let fresh: Vec<&Activity> = activities
        .iter()
        .filter(|(k, _)| !seen.contains(*k))
        .map(|(_, a)| a)
        .collect();
    summary.counts_mut(link_object, direction).skipped += (activities.len() - fresh.len()) as u64;
    let mut rows = rows_of(ctx, plan, &fresh, &mut commit, summary).await?;
    let previous = add_retries(ctx, link_object, &seen, &mut rows).await?;
    if options.dry_run {
        for (guid, _, row) in &rows {
            summary.planned(
                PlannedChange::new(link_object, direction, PlannedAction::Create)
                    .source(guid.clone())
                    .fields(&super::to_record(row), None, &[]),
            );
        }
        return Ok(());
    }
    let target = super::RowTarget {
        object: link_object,
        direction,
        previous: &previous,
    };
    super::create_linked_rows(ctx, plan, &target, &rows, &mut commit, summary, cancel).await?;
    info!(
        activity_type = type_id,
        records = rows.len(),
        "activities copied"
    );
    ctx.store.commit(commit).await?;
    Ok(())
}

/// Returns the GUIDs of the activities copied already (linked).
///
/// # Errors
///
/// A store failure.
async fn copied(
    ctx: &Context,
    link_object: &str,
    activities: &BTreeMap<String, Activity>,
) -> Result<BTreeSet<String>, EngineError> {
    let keys: Vec<String> = activities.keys().cloned().collect();
    let mut seen = BTreeSet::new();
    for chunk in keys.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx.store.links_by_marketo_keys(link_object, chunk).await? {
            seen.insert(l.marketo_key);
        }
    }
    Ok(seen)
}

/// Returns the CRM row of each fresh activity, linked to its lead's CRM contact; an activity
/// the mapping cannot read goes to the ledger.
///
/// # Errors
///
/// A store failure.
async fn rows_of(
    ctx: &Context,
    plan: &Plan,
    fresh: &[&Activity],
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
) -> Result<Vec<Row>, EngineError> {
    let (object, direction) = (plan.object.as_str(), Direction::MarketoToCrm);
    let lead_keys: Vec<String> = fresh.iter().map(|a| a.lead_id.to_string()).collect();
    let contacts = contacts_by_lead(ctx, &lead_keys).await?;
    let mut rows: Vec<Row> = Vec::new();
    for a in fresh {
        let guid = a.key().unwrap_or_default();
        let raw = raw_fields(a, contacts.get(&a.lead_id.to_string()).map(String::as_str));
        match plan.to_canonical(Side::Marketo, &raw) {
            Ok(canonical) => {
                let mut row = plan.render(Side::Crm, &canonical);
                row.insert(plan.crm_marketo_id.clone(), Value::Text(guid.clone()));
                rows.push((guid, canonical, row));
            }
            Err(e) => {
                super::record_invalid_value(
                    ctx, commit, summary, object, direction, &guid, &e, None,
                );
            }
        }
    }
    Ok(rows)
}

/// Adds the rows the CRM refused earlier and now due for a retry (their payload is the
/// rendered row) and returns the due ledger entries by GUID.
///
/// # Errors
///
/// A store failure.
async fn add_retries(
    ctx: &Context,
    link_object: &str,
    seen: &BTreeSet<String>,
    rows: &mut Vec<Row>,
) -> Result<BTreeMap<String, SyncError>, EngineError> {
    let mut previous: BTreeMap<String, SyncError> = BTreeMap::new();
    for e in due_errors(ctx, link_object, Direction::MarketoToCrm).await? {
        let fresh_again = rows.iter().any(|(g, _, _)| *g == e.record_key);
        if let (false, Some(payload)) = (fresh_again, e.payload.as_object())
            && !payload.is_empty()
            && !seen.contains(&e.record_key)
        {
            let row = from_record(payload);
            rows.push((e.record_key.clone(), row.clone(), row));
        }
        previous.insert(e.record_key.clone(), e);
    }
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raw_fields_carry_attributes_and_the_linked_contact() {
        let a: Activity = serde_json::from_value(json!({
            "id": 5, "marketoGUID": "g-5", "leadId": 9, "activityDate": "2030-01-01T00:00:00Z",
            "activityTypeId": 1, "primaryAttributeValue": "home",
            "attributes": [{"name": "Webpage URL", "value": "/home"}]
        }))
        .unwrap();
        let raw = raw_fields(&a, Some("11"));
        assert_eq!(raw["marketoGUID"], Value::Text("g-5".into()));
        assert_eq!(raw["Webpage URL"], Value::Text("/home".into()));
        assert_eq!(raw[CRM_CONTACT_FIELD], Value::Text("11".into()));
        assert_eq!(raw_fields(&a, None)[CRM_CONTACT_FIELD], Value::Null);
    }
}
