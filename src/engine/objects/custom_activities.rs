//! CRM events -> Marketo custom activities, one way (`marketo_object = "custom_activity"`
//! mapping files, `Plans::custom_activities`).
//!
//! Each file maps a CRM table of events onto one custom activity type: the primary attribute
//! and up to 20 attributes from CRM columns, the activity date from a column, and the lead found
//! by the CRM contact key (the Marketo lead linked to that contact) or else by email. New event
//! rows come from the CRM adapter's change feed (queue [`UPSERTS_QUEUE`](super::UPSERTS_QUEUE) of the file's object,
//! like every other object) and are added at most 300 per call with
//! `POST /rest/v1/activities/external.json`. A record Marketo skips goes to the error ledger
//! with Marketo's code and message, as does an event the engine cannot send (no lead, a value
//! longer than the attribute holds: never shortened); the cycle succeeds.
//!
//! # Exactly once
//!
//! Marketo keeps no dedupe key for custom activities: adding the same activity twice logs it
//! twice. The store therefore keeps an outbox (links of object `<object>:outbox`, keyed by the
//! CRM event id, holding the activity as sent):
//!
//! 1. each batch is recorded in the outbox in one store commit BEFORE the call;
//! 2. after the call, one commit replaces each outbox entry with the event's link (object
//!    `<object>`, Marketo key = the activity's `marketoGUID`, CRM key = the event id) or a
//!    ledger entry, and later the watermark moves past the rows;
//! 3. an event with a link is never sent again (a re-read row, an overlap window);
//! 4. an outbox entry found at the start of a step belongs to a step killed between the call and
//!    its commit (or whose call failed ambiguously). It is resolved by reading its lead's
//!    activities of the type since the earlier of its activity date and the outbox time
//!    (`GET /rest/v1/activities.json` with `activityTypeIds` and up to 30 `leadIds` a call) and
//!    matching the event id attribute: an activity found becomes the link, only the events not
//!    found are sent again.
//!
//! The guarantee requires that the type has an attribute for the CRM event id
//! (`custom_activity.event_id_attribute`, checked by `validate` and every cycle) and that
//! nothing else writes activities of that type with the same event ids.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::LEAD_LINK_OBJECT;
use crate::crm::{Change, ChangeKind};
use crate::engine::ledger::{Failure, Subject};
use crate::engine::pipeline::commit::{error_key, ledger_entry, link};
use crate::engine::pipeline::gather::crm_with_retries;
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{CustomActivityPlan, Plans};
use crate::marketo::activities::{ActivityFilter, MAX_LEAD_IDS, NewCustomActivity};
use crate::marketo::describe::{ActivityType, CUSTOM_ATTRIBUTE_BYTES};
use crate::model::{Fields, Side, Value, fields_hash};
use crate::store::{Direction, ErrorStatus, LinkKey, StepCommit, SyncError};

/// The name the registry gives this step.
pub const OBJECT: &str = "custom_activities";
/// Most custom activities per call (Marketo's limit).
pub const BATCH: usize = 300;
/// How far before an outbox entry's dates the resolving activity read starts (clock skew).
const RESOLVE_MARGIN_MINUTES: i64 = 5;
/// The outbox key holding the activity as sent.
const OUTBOX_ACTIVITY: &str = "activity";
const DIRECTION: Direction = Direction::CrmToMarketo;

/// Returns the store object of a custom-activity file's outbox (see the module documentation).
pub fn outbox_object(object: &str) -> String {
    format!("{object}:outbox")
}

/// Writes the new events of every custom-activity file to Marketo (see the module
/// documentation). Does nothing when no such file is synced.
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
    for plan in plans.custom_activities.values() {
        run_one(ctx, plan, summary, options, cancel).await?;
    }
    Ok(())
}

/// One event ready to send: its CRM id and the activity.
struct Outgoing {
    event_id: String,
    activity: NewCustomActivity,
    /// The fingerprint of the CRM row it came from ([`row_fingerprint`]; null for an outbox
    /// entry).
    row: Json,
}

/// Why an event cannot be sent: the ledger code, message and retry class.
struct Refused {
    code: &'static str,
    message: String,
    retryable: bool,
}

async fn run_one(
    ctx: &Context,
    cap: &CustomActivityPlan,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let object = cap.plan.object.as_str();
    let pending = outbox(ctx, object).await?;
    let (mut gathered, previous) = crm_with_retries(ctx, &cap.plan, cancel).await?;
    let mut last = StepCommit {
        watermarks: gathered.watermark.take().into_iter().collect(),
        ..StepCommit::default()
    };
    let upserts: Vec<&Change> = gathered.upserts();
    summary.counts_mut(object, DIRECTION).read += upserts.len() as u64;
    if pending.is_empty() && upserts.is_empty() {
        if !last.is_empty() && !options.dry_run {
            ctx.store.commit(last).await?;
        }
        return Ok(());
    }
    let ids: Vec<String> = upserts.iter().map(|c| c.id.clone()).collect();
    let sent = linked_events(ctx, object, &ids).await?;
    let pending_ids: BTreeSet<&str> = pending.iter().map(|o| o.event_id.as_str()).collect();
    let fresh: Vec<&Change> = upserts
        .into_iter()
        .filter(|c| !sent.contains(&c.id) && !pending_ids.contains(c.id.as_str()))
        .collect();
    summary.counts_mut(object, DIRECTION).skipped += (ids.len() - fresh.len()) as u64;
    // A row refused before and unchanged since waits for its retry (the overlap window re-reads
    // it every cycle).
    let now = ctx.clock.now();
    let (fresh, waiting): (Vec<&Change>, Vec<&Change>) = fresh
        .into_iter()
        .partition(|c| !waits(previous.get(&c.id), &row_fingerprint(c), now));
    summary.counts_mut(object, DIRECTION).skipped += waiting.len() as u64;
    let leads = leads_of(ctx, cap, &fresh).await?;
    let mut outgoing = Vec::new();
    for change in fresh {
        let row = row_fingerprint(change);
        match activity_of(cap, change, &leads) {
            Ok(activity) => outgoing.push(Outgoing {
                event_id: change.id.clone(),
                activity,
                row,
            }),
            Err(refused) => {
                summary.counts_mut(object, DIRECTION).failed += 1;
                last.errors_upsert.push(refusal_entry(
                    ctx,
                    object,
                    &change.id,
                    row,
                    &refused,
                    previous.get(&change.id),
                ));
            }
        }
    }
    if options.dry_run {
        for o in pending.iter().chain(&outgoing) {
            let after = serde_json::to_value(&o.activity).unwrap_or_default();
            let after = after.as_object().cloned().unwrap_or_default();
            summary.planned(
                PlannedChange::new(object, DIRECTION, PlannedAction::Create)
                    .source(o.event_id.clone())
                    .fields(&after, None, &[]),
            );
        }
        return Ok(());
    }
    if !pending.is_empty() || !outgoing.is_empty() {
        let kind = resolve_type(ctx, cap).await?;
        let mut resend = resolve_outbox(ctx, cap, &kind, pending, summary, cancel).await?;
        for o in &mut outgoing {
            o.activity.activity_type_id = kind.id;
        }
        for o in &mut resend {
            o.activity.activity_type_id = kind.id;
        }
        // The resent ones are in the outbox already; the fresh ones are recorded per batch.
        for chunk in resend.chunks(BATCH) {
            send(ctx, object, chunk, false, &previous, summary, cancel).await?;
        }
        for chunk in outgoing.chunks(BATCH) {
            send(ctx, object, chunk, true, &previous, summary, cancel).await?;
        }
    }
    if !last.is_empty() {
        ctx.store.commit(last).await?;
    }
    Ok(())
}

/// Returns the event ids among `ids` that have a link already (sent before).
async fn linked_events(
    ctx: &Context,
    object: &str,
    ids: &[String],
) -> Result<BTreeSet<String>, EngineError> {
    let mut out = BTreeSet::new();
    for chunk in ids.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx.store.links_by_crm_keys(object, chunk).await? {
            out.insert(l.crm_key);
        }
    }
    Ok(out)
}

/// Returns the outbox entries of `object` (events recorded before a call whose outcome was not
/// committed).
async fn outbox(ctx: &Context, object: &str) -> Result<Vec<Outgoing>, EngineError> {
    let name = outbox_object(object);
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ctx.store.links_page(&name, after.as_deref(), 1000).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.marketo_key.clone());
        for l in page {
            let activity = match l.base.get(OUTBOX_ACTIVITY) {
                Some(Value::Text(t)) => serde_json::from_str::<NewCustomActivity>(t).ok(),
                _ => None,
            };
            match activity {
                Some(activity) => out.push(Outgoing {
                    event_id: l.crm_key,
                    activity,
                    row: Json::Null,
                }),
                None => {
                    warn!(object, event = %l.crm_key, "unreadable custom activity outbox entry")
                }
            }
        }
    }
    Ok(out)
}

/// Returns the custom activity type as Marketo describes it now (its id and attribute names).
///
/// # Errors
///
/// A Marketo failure, or [`EngineError::Config`] when the type is gone.
async fn resolve_type(
    ctx: &Context,
    cap: &CustomActivityPlan,
) -> Result<ActivityType, EngineError> {
    let found = match (&cap.api_name, cap.type_id) {
        (Some(api), _) => ctx.marketo.describe_custom_activity_type(api).await?,
        (None, Some(id)) => ctx
            .marketo
            .custom_activity_types()
            .await?
            .into_iter()
            .find(|t| t.id == id),
        (None, None) => None,
    };
    found.ok_or_else(|| {
        EngineError::Config(format!(
            "{}: Marketo has no custom activity type {}",
            cap.plan.object, cap.plan.marketo_object
        ))
    })
}

/// Resolves the outbox (see the module documentation): links the events Marketo holds already
/// and returns the others, to send again.
async fn resolve_outbox(
    ctx: &Context,
    cap: &CustomActivityPlan,
    kind: &ActivityType,
    pending: Vec<Outgoing>,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<Vec<Outgoing>, EngineError> {
    if pending.is_empty() {
        return Ok(pending);
    }
    let object = cap.plan.object.as_str();
    // The feed names attributes by display name; accept the API name too.
    let mut attribute_names = vec![cap.event_id_attribute.clone()];
    for a in &kind.attributes {
        if a.api_name.as_deref() == Some(cap.event_id_attribute.as_str()) {
            attribute_names.push(a.name.clone());
        }
    }
    let wanted: BTreeSet<&str> = pending.iter().map(|o| o.event_id.as_str()).collect();
    let since = pending
        .iter()
        .map(|o| o.activity.activity_date)
        .min()
        .map_or(ctx.clock.now(), |d| d.min(ctx.clock.now()))
        - chrono::Duration::minutes(RESOLVE_MARGIN_MINUTES);
    let mut leads: Vec<i64> = pending.iter().map(|o| o.activity.lead_id).collect();
    leads.sort_unstable();
    leads.dedup();
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for chunk in leads.chunks(MAX_LEAD_IDS) {
        let filter = ActivityFilter {
            lead_ids: chunk.to_vec(),
            ..ActivityFilter::default()
        };
        let mut token = ctx.marketo.paging_token(since).await?;
        loop {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let page = ctx
                .marketo
                .get_activities(&token, &[kind.id], &filter)
                .await?;
            for a in &page.records {
                let id = attribute_names
                    .iter()
                    .find_map(|n| a.attribute(n))
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
                if let (Some(id), Some(guid)) = (id, a.key())
                    && wanted.contains(id.as_str())
                {
                    found.entry(id).or_insert(guid);
                }
            }
            let next = page.next_page_token.clone();
            match next {
                Some(n) if page.more_result && n != token => token = n,
                _ => break,
            }
        }
    }
    let mut commit = StepCommit::default();
    let mut resend = Vec::new();
    let now = ctx.clock.now();
    let outbox = outbox_object(object);
    for o in pending {
        match found.get(&o.event_id) {
            Some(guid) => {
                commit.links_delete.push(LinkKey {
                    object: outbox.clone(),
                    marketo_key: o.event_id.clone(),
                });
                commit
                    .links_upsert
                    .push(link(object, guid, &o.event_id, Fields::new(), now));
                commit
                    .errors_resolve
                    .push(error_key(object, DIRECTION, &o.event_id));
                summary.counts_mut(object, DIRECTION).skipped += 1;
            }
            None => resend.push(o),
        }
    }
    info!(
        object,
        found = commit.links_upsert.len(),
        resend = resend.len(),
        "custom activity outbox resolved"
    );
    if !commit.is_empty() {
        ctx.store.commit(commit).await?;
    }
    Ok(resend)
}

/// Sends one batch (at most [`BATCH`]): records it in the outbox first when `record` (fresh
/// events), calls Marketo, then commits each event's link or ledger entry and clears the outbox.
async fn send(
    ctx: &Context,
    object: &str,
    batch: &[Outgoing],
    record: bool,
    previous: &BTreeMap<String, SyncError>,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    let outbox = outbox_object(object);
    let now = ctx.clock.now();
    if record {
        let mut before = StepCommit::default();
        for o in batch {
            let mut base = Fields::new();
            let text = serde_json::to_string(&o.activity).unwrap_or_default();
            base.insert(OUTBOX_ACTIVITY.to_owned(), Value::Text(text));
            before
                .links_upsert
                .push(link(&outbox, &o.event_id, &o.event_id, base, now));
        }
        ctx.store.commit(before).await?;
    }
    let input: Vec<NewCustomActivity> = batch.iter().map(|o| o.activity.clone()).collect();
    let results = ctx.marketo.add_custom_activities(&input).await?;
    let mut after = StepCommit::default();
    for (o, result) in batch.iter().zip(&results) {
        after.links_delete.push(LinkKey {
            object: outbox.clone(),
            marketo_key: o.event_id.clone(),
        });
        match Failure::of_marketo_result(result) {
            None => {
                // Marketo answers each added activity's id and marketoGUID; the event id
                // keeps two answers without either from sharing a link key.
                let guid = result
                    .marketo_guid
                    .clone()
                    .or_else(|| result.id.clone())
                    .unwrap_or_else(|| format!("event:{}", o.event_id));
                after
                    .links_upsert
                    .push(link(object, &guid, &o.event_id, Fields::new(), now));
                after
                    .errors_resolve
                    .push(error_key(object, DIRECTION, &o.event_id));
                summary.counts_mut(object, DIRECTION).created += 1;
            }
            Some(failure) => {
                summary.counts_mut(object, DIRECTION).failed += 1;
                after.errors_upsert.push(ledger_entry(
                    ctx,
                    Subject {
                        object,
                        direction: DIRECTION,
                        record_key: &o.event_id,
                        other_key: Some(o.activity.lead_id.to_string()),
                        payload: payload(&o.activity, &o.row),
                    },
                    failure,
                    previous.get(&o.event_id),
                ));
            }
        }
    }
    info!(object, records = batch.len(), "custom activities added");
    ctx.store.commit(after).await?;
    Ok(())
}

/// Returns what the ledger keeps of an activity: its lead, date, type and attribute names with
/// their sizes (never a whole transcript).
fn payload(a: &NewCustomActivity, row: &Json) -> Json {
    let sizes: serde_json::Map<String, Json> = a
        .attributes
        .iter()
        .filter_map(|attr| {
            let name = attr.get("apiName")?.as_str()?.to_owned();
            let len = attr.get("value").map_or(0, |v| v.to_string().len());
            Some((name, json!(len)))
        })
        .collect();
    json!({
        "leadId": a.lead_id,
        "activityDate": a.activity_date,
        "primaryAttributeValue": a.primary_attribute_value.chars().take(255).collect::<String>(),
        "attributeBytes": sizes,
        "row": row,
    })
}

/// Returns the fingerprint of an event row kept in its ledger entries (`payload.row`): a hash
/// of the row's values, so that an unchanged row is known without keeping it.
fn row_fingerprint(change: &Change) -> Json {
    fields_of(change).map_or(Json::Null, |f| Json::String(fields_hash(f)))
}

/// Returns true when an event row must wait: its open ledger entry is not due at `now` (not
/// retryable, or its retry still ahead) and the row is unchanged since it was refused (as
/// [`crate::engine::ledger::waits`] decides for the other objects' payloads).
fn waits(previous: Option<&SyncError>, row: &Json, now: chrono::DateTime<chrono::Utc>) -> bool {
    previous.is_some_and(|p| {
        p.status == ErrorStatus::Open
            && p.next_retry_at.is_none_or(|t| t > now)
            && !row.is_null()
            && p.payload.get("row") == Some(row)
    })
}

fn refusal_entry(
    ctx: &Context,
    object: &str,
    event_id: &str,
    row: Json,
    refused: &Refused,
    previous: Option<&SyncError>,
) -> SyncError {
    ledger_entry(
        ctx,
        Subject {
            object,
            direction: DIRECTION,
            record_key: event_id,
            other_key: None,
            payload: json!({ "row": row }),
        },
        Failure::new(refused.code, refused.message.clone(), refused.retryable),
        previous,
    )
}

/// What the lead lookup found for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeadOf {
    /// The Marketo lead to write the activity to.
    Lead(i64),
    /// The event's contact was linked to a lead that is deleted or merged away (a tombstone),
    /// and no lead has its email: retrying cannot help.
    Gone,
}

/// The lead lookup's answer per event id (absent: nothing found yet, retried later).
type LeadsByEvent = BTreeMap<String, LeadOf>;

/// Finds the lead of each event: the lead linked to its CRM contact key, else the lead with its
/// email (Get Leads by email, 300 a call; the lowest id when several match).
async fn leads_of(
    ctx: &Context,
    cap: &CustomActivityPlan,
    events: &[&Change],
) -> Result<LeadsByEvent, EngineError> {
    let mut out = LeadsByEvent::new();
    if let Some(column) = &cap.lead_crm_key {
        let keys: BTreeMap<String, String> = events
            .iter()
            .filter_map(|c| Some((c.id.clone(), text_of(fields_of(c)?.get(column)?)?)))
            .collect();
        let wanted: Vec<String> = keys
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut lead_of_contact: BTreeMap<String, LeadOf> = BTreeMap::new();
        for chunk in wanted.chunks(crate::store::KEYS_PER_LOOKUP) {
            for l in ctx.store.links_by_crm_keys(LEAD_LINK_OBJECT, chunk).await? {
                match (l.tombstone.is_none(), l.marketo_key.parse::<i64>()) {
                    (true, Ok(id)) => {
                        lead_of_contact.insert(l.crm_key, LeadOf::Lead(id));
                    }
                    (false, _) => {
                        lead_of_contact.entry(l.crm_key).or_insert(LeadOf::Gone);
                    }
                    (true, Err(_)) => {}
                }
            }
        }
        for (event, contact) in keys {
            if let Some(lead) = lead_of_contact.get(&contact) {
                out.insert(event, *lead);
            }
        }
    }
    let Some(column) = &cap.lead_email else {
        return Ok(out);
    };
    let emails: BTreeMap<String, String> = events
        .iter()
        .filter(|c| !matches!(out.get(&c.id), Some(LeadOf::Lead(_))))
        .filter_map(|c| {
            Some((
                c.id.clone(),
                text_of(fields_of(c)?.get(column)?)?.to_lowercase(),
            ))
        })
        .collect();
    let wanted: Vec<String> = emails
        .values()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut lead_of_email: BTreeMap<String, i64> = BTreeMap::new();
    let fields = ["id".to_owned(), "email".to_owned()];
    for chunk in wanted.chunks(BATCH) {
        let mut token: Option<String> = None;
        loop {
            let page = ctx
                .marketo
                .get_leads("email", chunk, &fields, token.as_deref())
                .await?;
            for r in &page.records {
                let (Some(id), Some(email)) = (
                    r.get("id").and_then(Json::as_i64),
                    r.get("email").and_then(Json::as_str),
                ) else {
                    continue;
                };
                let e = lead_of_email.entry(email.to_lowercase()).or_insert(id);
                *e = (*e).min(id);
            }
            match page.next_page_token {
                Some(t) if page.more_result => token = Some(t),
                _ => break,
            }
        }
    }
    for (event, email) in emails {
        if let Some(lead) = lead_of_email.get(&email) {
            out.insert(event, LeadOf::Lead(*lead));
        }
    }
    Ok(out)
}

fn fields_of(change: &Change) -> Option<&Fields> {
    match &change.kind {
        ChangeKind::Upserted { fields } => Some(fields),
        ChangeKind::Deleted(_) => None,
    }
}

fn text_of(value: &Value) -> Option<String> {
    if value.is_null() {
        return None;
    }
    let t = value.to_text();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// Returns the activity of one event row, or why it cannot be sent.
fn activity_of(
    cap: &CustomActivityPlan,
    change: &Change,
    leads: &LeadsByEvent,
) -> Result<NewCustomActivity, Refused> {
    let id = change.id.as_str();
    let Some(raw) = fields_of(change) else {
        return Err(Refused {
            code: "invalid_value",
            message: format!("event {id} is deleted"),
            retryable: false,
        });
    };
    let canonical = cap.plan.to_canonical(Side::Crm, raw).map_err(|e| Refused {
        code: "invalid_value",
        message: format!("event {id}: {e}"),
        retryable: false,
    })?;
    let mut rendered = cap.plan.render(Side::Marketo, &canonical);
    check_lengths(cap, id, &rendered)?;
    let date = match raw.get(&cap.activity_date) {
        Some(Value::DateTime(d)) => Some(*d),
        Some(Value::Date(d)) => d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()),
        Some(Value::Text(t)) => crate::config::parse_instant(t),
        _ => None,
    };
    let Some(activity_date) = date else {
        return Err(Refused {
            code: "invalid_value",
            message: format!(
                "event {id}: CRM column `{}` holds no date (the activity date)",
                cap.activity_date
            ),
            retryable: false,
        });
    };
    let primary = rendered
        .remove(&cap.primary)
        .and_then(|v| text_of(&v))
        .ok_or_else(|| Refused {
            code: "invalid_value",
            message: format!(
                "event {id}: the primary attribute `{}` is empty (Marketo requires it)",
                cap.primary
            ),
            retryable: false,
        })?;
    let lead_id = match leads.get(id).copied() {
        Some(LeadOf::Lead(lead)) => lead,
        Some(LeadOf::Gone) => {
            return Err(Refused {
                code: "lead_deleted",
                message: format!(
                    "event {id}: the lead of its CRM contact is deleted or merged away in Marketo"
                ),
                retryable: false,
            });
        }
        None => {
            return Err(Refused {
                code: "lead_not_found",
                message: format!(
                    "event {id}: no Marketo lead found by {} (retried: the lead may sync later)",
                    match (&cap.lead_crm_key, &cap.lead_email) {
                        (Some(k), Some(e)) =>
                            format!("CRM contact column `{k}` or email column `{e}`"),
                        (Some(k), None) => format!("CRM contact column `{k}`"),
                        (None, Some(e)) => format!("email column `{e}`"),
                        (None, None) => "no column".to_owned(),
                    }
                ),
                retryable: true,
            });
        }
    };
    let mut attributes: Vec<Json> = vec![json!({"apiName": cap.event_id_attribute, "value": id})];
    for (name, value) in rendered {
        if value.is_null() {
            continue;
        }
        attributes.push(json!({"apiName": name, "value": value.to_json()}));
    }
    Ok(NewCustomActivity {
        lead_id,
        activity_date,
        activity_type_id: cap.type_id.unwrap_or_default(),
        primary_attribute_value: primary,
        attributes,
    })
}

/// Refuses an event whose attribute value is longer than the attribute holds (255 characters
/// for string attributes, 65,535 characters and 65,536 bytes for text ones): never shortened.
fn check_lengths(cap: &CustomActivityPlan, id: &str, rendered: &Fields) -> Result<(), Refused> {
    for (name, value) in rendered {
        let Value::Text(text) = value else {
            continue;
        };
        let limit = cap
            .plan
            .enabled_fields()
            .find(|f| f.marketo.as_deref() == Some(name.as_str()))
            .and_then(|f| f.marketo_ty.as_ref())
            .and_then(|t| t.max_len());
        let chars = text.chars().count();
        let bytes = text.len();
        let too_many_chars = limit.is_some_and(|l| chars > l as usize);
        if too_many_chars || bytes > CUSTOM_ATTRIBUTE_BYTES {
            return Err(Refused {
                code: "too_long",
                message: format!(
                    "event {id}: attribute `{name}` holds {chars} characters ({bytes} bytes); \
                     Marketo takes at most {} characters and {CUSTOM_ATTRIBUTE_BYTES} bytes, and \
                     the value is never shortened",
                    limit.map_or_else(|| "-".to_owned(), |l| l.to_string())
                ),
                retryable: false,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_payload_keeps_sizes_not_values() {
        let a = NewCustomActivity {
            lead_id: 7,
            activity_date: "2030-01-01T00:00:00Z".parse().unwrap(),
            activity_type_id: 100_002,
            primary_attribute_value: "Pricing".into(),
            attributes: vec![json!({"apiName": "transcript", "value": "x".repeat(70_000)})],
        };
        let p = payload(&a, &json!("h"));
        assert_eq!(p["leadId"], json!(7));
        assert_eq!(p["attributeBytes"]["transcript"], json!(70_002));
        assert!(p.to_string().len() < 300);
    }
}
