//! Lead conversion (`keys.crm_lead_object`, e.g. the CRM's `leads`): the step reads that
//! object's changes from its own cursor (queue `conversions`) before the CRM changes of the
//! mapping's object. A CRM lead holding a Marketo lead id that got a converted-contact id moves
//! the Marketo lead to that contact, or, when the contact already has its own Marketo lead,
//! merges the two leads. A Marketo lead held by an unconverted CRM lead gets no contact of its
//! own ([`hold_crm_leads`]).

use std::collections::{BTreeSet, HashMap};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::gather::read_feed;
use super::records::{Pair, crm_pk, lead_id_of, live, value_text};
use super::step::Step;
use super::{LINK_OBJECT, QUEUE_CONVERSIONS};
use crate::crm::ChangeKind;
use crate::engine::cycle::Tunables;
use crate::engine::ledger::Failure;
use crate::engine::pipeline::commit::link;
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{CycleSummary, EngineError};
use crate::mapping::{Conversion, Plan};
use crate::marketo::{Record, RefusalKind, SyncAction};
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, Link, TombstoneKind, Watermark};

/// One CRM lead converted since the last cycle.
struct Converted {
    /// The CRM lead's id.
    lead_key: String,
    /// The Marketo lead it holds.
    m_id: i64,
    /// The contact it was converted to.
    c_id: String,
}

/// Follows the conversions of CRM leads (`keys.crm_lead_object`) linked to a Marketo lead (by
/// their Marketo-id column) since the last cycle, read from their own CRM cursor:
///
/// - converted to a contact without a Marketo lead (new or existing account): the contact gets
///   the Marketo id, the Marketo lead gets the contact id in its CRM-key field and the contact's
///   account as `externalCompanyId` (the companies step, which runs first, has synced a new
///   account as a company); the pairing below then links the two.
/// - converted into a contact that has its own Marketo lead: the two Marketo leads are merged
///   (Merge Leads, winner = the contact's lead) and a link of the converted lead is tombstoned as
///   merged.
///
/// Returns the cursor watermark to commit with the step and the contacts that took over a
/// Marketo lead.
pub(super) async fn apply_conversions(
    step: &mut Step<'_>,
    tunables: &Tunables,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(Option<Watermark>, Vec<String>), EngineError> {
    let mut moved = Vec::new();
    let Some(conv) = step.plan.conversion.clone() else {
        return Ok((None, moved));
    };
    let Some((mark, converted)) = read_conversions(step, &conv, tunables, summary, cancel).await?
    else {
        return Ok((None, moved));
    };
    if converted.is_empty() {
        return Ok((Some(mark), moved));
    }
    let (ctx, plan) = (step.ctx, step.plan);
    let contact_ids: Vec<String> = converted.iter().map(|c| c.c_id.clone()).collect();
    let contacts: HashMap<String, Fields> = ctx
        .crm
        .get(&plan.crm_object, &contact_ids)
        .await?
        .into_iter()
        .map(|r| (r.id, r.fields))
        .collect();
    let pk = crm_pk(ctx, plan).await;
    for c in converted {
        let Some(contact) = contacts.get(&c.c_id) else {
            summary.warnings.push(format!(
                "crm lead {} was converted to contact {}, which cannot be read: \
                 the conversion is not followed",
                c.lead_key, c.c_id
            ));
            continue;
        };
        if follow(step, &conv, &c, contact, &pk, summary).await? {
            moved.push(c.c_id);
        }
    }
    Ok((Some(mark), moved))
}

/// Reads the CRM leads' change feed: its watermark and the last state of each CRM lead that
/// holds a Marketo lead id and a converted-contact id. None when the CRM cannot read that
/// object (a warning: it must not stop the lead sync).
async fn read_conversions(
    step: &Step<'_>,
    conv: &Conversion,
    tunables: &Tunables,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<Option<(Watermark, Vec<Converted>)>, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let object = &conv.crm_lead_object;
    let wm = ctx
        .store
        .watermark(Side::Crm, object, QUEUE_CONVERSIONS)
        .await?;
    let mut converted: Vec<Converted> = Vec::new();
    let read = read_feed(ctx, object, wm.as_ref(), tunables.crm_page, cancel, |ch| {
        converted.retain(|c| c.lead_key != ch.id);
        if let ChangeKind::Upserted { fields } = ch.kind
            && let Some(m_id) = lead_id_of(fields.get(&plan.crm_marketo_id))
            && let Some(c_id) = value_text(fields.get(&conv.converted_field))
        {
            converted.push(Converted {
                lead_key: ch.id,
                m_id,
                c_id,
            });
        }
    })
    .await;
    let read = match read {
        Ok(r) => r,
        Err(EngineError::Crm(e)) if !e.is_retryable() => {
            summary.warnings.push(format!(
                "lead conversions are not followed: reading `{object}` failed: {e}"
            ));
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mark = Watermark {
        system: Side::Crm,
        object: object.clone(),
        queue: QUEUE_CONVERSIONS.to_owned(),
        at: read.last.unwrap_or_else(|| step.now()),
        tie: None,
        cursor: read.cursor.map(|c| c.0),
    };
    Ok(Some((mark, converted)))
}

/// Follows one conversion (unless already followed); returns true when the Marketo lead moved
/// to the contact.
async fn follow(
    step: &mut Step<'_>,
    conv: &Conversion,
    c: &Converted,
    contact: &Fields,
    pk: &str,
    summary: &mut CycleSummary,
) -> Result<bool, EngineError> {
    let all_links = step
        .ctx
        .store
        .links_by_marketo_keys(LINK_OBJECT, &[c.m_id.to_string()])
        .await?;
    let owner = lead_id_of(contact.get(&step.plan.crm_marketo_id));
    // Already followed (the CRM feed re-reads its overlap window): nothing to do.
    let merged_away = all_links
        .iter()
        .any(|l| matches!(&l.tombstone, Some(t) if matches!(t.kind, TombstoneKind::Merged { .. })));
    let lead_links = live(all_links);
    let moved_already = owner == Some(c.m_id) && lead_links.iter().any(|l| l.crm_key == c.c_id);
    if merged_away || moved_already {
        return Ok(false);
    }
    match owner {
        Some(winner) if winner != c.m_id => {
            merge_converted(step, c, winner, &lead_links, summary).await?;
            Ok(false)
        }
        _ => {
            let account = conv
                .company_ref
                .as_ref()
                .and_then(|f| value_text(contact.get(f)));
            let target = MoveTarget {
                account,
                owned: owner.is_some(),
                pk,
            };
            move_to_contact(step, c, &target, &lead_links, summary).await
        }
    }
}

/// Into an existing contact with its own Marketo lead `winner`: the converted lead is merged
/// into it, and its link (or a new one to the contact, as the record of the conversion) is
/// tombstoned as merged.
async fn merge_converted(
    step: &mut Step<'_>,
    c: &Converted,
    winner: i64,
    lead_links: &[Link],
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let Converted {
        lead_key,
        m_id,
        c_id,
    } = c;
    let object = step.plan.object.clone();
    if step.dry_run {
        step.plan_out.push(
            PlannedChange::new(&object, Direction::CrmToMarketo, PlannedAction::Merge)
                .source(lead_key.clone())
                .target(m_id.to_string())
                .note(format!(
                    "CRM lead {lead_key} was converted into contact {c_id}: lead {m_id} is merged into lead {winner}"
                )),
        );
        return Ok(());
    }
    if let Err(e) = step.ctx.marketo.merge_leads(winner, &[*m_id], false).await {
        if e.is_retryable() {
            return Err(e.into());
        }
        // A refused merge (a 1xxx refusal) waits for the records to change or for an
        // operator; a lead not found may appear once Marketo catches up.
        let retryable = e.refusal_kind().is_some_and(RefusalKind::retryable);
        step.error(
            Direction::CrmToMarketo,
            lead_key.clone(),
            Some(m_id.to_string()),
            json!({ "conversion": { "winner": winner, "loser": m_id, "contact": c_id } }),
            Failure::new(
                e.code().unwrap_or("merge_failed"),
                format!("merging converted lead {m_id} into {winner}: {e}"),
                retryable,
            ),
        );
        return Ok(());
    }
    let loser_link = lead_links.first().cloned().unwrap_or_else(|| {
        link(
            LINK_OBJECT,
            &m_id.to_string(),
            c_id,
            Fields::new(),
            step.now(),
        )
    });
    let into = TombstoneKind::Merged {
        into: winner.to_string(),
    };
    step.tombstone(&loser_link, into, Side::Crm);
    info!(crm_lead = %lead_key, winner, loser = m_id, "converted lead merged");
    summary.counts_mut(&object, Direction::CrmToMarketo).deleted += 1;
    Ok(())
}

/// Where a converted lead moves: the contact's account, whether the contact already holds the
/// lead id, and the CRM primary-key field.
struct MoveTarget<'a> {
    account: Option<String>,
    owned: bool,
    pk: &'a str,
}

/// To a contact without a Marketo lead: the contact gets the Marketo id, the lead gets the
/// contact id (and its account as `externalCompanyId`), and a link of the lead to another CRM
/// record moves to the contact. Returns true when the lead moved.
async fn move_to_contact(
    step: &mut Step<'_>,
    c: &Converted,
    target: &MoveTarget<'_>,
    lead_links: &[Link],
    summary: &mut CycleSummary,
) -> Result<bool, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let Converted {
        lead_key,
        m_id,
        c_id,
    } = c;
    let mut lead = Record::new();
    lead.insert("id".into(), json!(m_id));
    lead.insert(plan.marketo_crm_key.clone(), json!(c_id));
    if let Some(a) = &target.account {
        lead.insert("externalCompanyId".into(), json!(a));
    }
    if step.dry_run {
        plan_move(step, c, &lead);
        return Ok(false);
    }
    if !target.owned && !give_contact_lead(step, c, target.pk).await? {
        return Ok(false);
    }
    let res = ctx
        .marketo
        .sync_leads(SyncAction::UpdateOnly, Some("id"), None, &[lead.clone()])
        .await?;
    if let Some(failure) = res.first().and_then(Failure::of_marketo_result) {
        step.error(
            Direction::CrmToMarketo,
            c_id.clone(),
            Some(m_id.to_string()),
            serde_json::Value::Object(lead),
            failure,
        );
        return Ok(false);
    }
    for l in lead_links.iter().filter(|l| &l.crm_key != c_id) {
        let into = TombstoneKind::Merged { into: c_id.clone() };
        step.tombstone(l, into, Side::Crm);
        step.link(*m_id, c_id, l.base.clone());
    }
    info!(crm_lead = %lead_key, contact = %c_id, lead = m_id, "converted lead moved to its contact");
    summary
        .counts_mut(&plan.object, Direction::CrmToMarketo)
        .updated += 1;
    Ok(true)
}

/// Writes the Marketo lead id into the contact; returns false when the CRM refused (a ledger
/// entry).
async fn give_contact_lead(
    step: &mut Step<'_>,
    c: &Converted,
    pk: &str,
) -> Result<bool, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let mut rec = Fields::new();
    rec.insert(pk.to_owned(), Value::Text(c.c_id.clone()));
    rec.insert(plan.crm_marketo_id.clone(), Value::Text(c.m_id.to_string()));
    let res = ctx.crm.upsert(&plan.crm_object, pk, &[rec]).await?;
    let Some(refusal) = res.first().and_then(crate::crm::WriteResult::refusal) else {
        return Ok(true);
    };
    step.error(
        Direction::MarketoToCrm,
        c.m_id.to_string(),
        Some(c.c_id.clone()),
        json!({ "conversion": { "crm_lead": c.lead_key, "contact": c.c_id } }),
        Failure::from(refusal),
    );
    Ok(false)
}

/// The dry run's entry for a converted lead moving to its contact.
fn plan_move(step: &mut Step<'_>, c: &Converted, lead: &Record) {
    let plan = step.plan;
    let before = serde_json::Map::from_iter([(plan.marketo_crm_key.clone(), json!(c.lead_key))]);
    step.plan_out.push(
        PlannedChange::new(
            &plan.object,
            Direction::CrmToMarketo,
            PlannedAction::Convert,
        )
        .source(c.c_id.clone())
        .target(c.m_id.to_string())
        .fields(lead, Some(&before), &["id"])
        .note(format!(
            "CRM lead {} was converted into contact {}",
            c.lead_key, c.c_id
        )),
    );
}

/// Drops the Marketo-only pairs whose lead is linked to an unconverted CRM lead
/// (`keys.crm_lead_object`): such a lead gets a contact only by conversion.
pub(super) async fn hold_crm_leads(
    step: &mut Step<'_>,
    pairs: &mut Vec<Pair>,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let plan = step.plan;
    let Some(conv) = &plan.conversion else {
        return Ok(());
    };
    let lone = |p: &Pair| p.link.is_none() && p.c_id.is_none() && p.c.is_none();
    let ids: Vec<Value> = pairs
        .iter()
        .filter(|p| lone(p))
        .filter_map(|p| p.m_id)
        .map(|i| Value::Text(i.to_string()))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let Some(held) = unconverted_leads(step, plan, conv, &ids, summary).await? else {
        return Ok(());
    };
    let before = pairs.len();
    pairs.retain(|p| !(lone(p) && p.m_id.is_some_and(|m| held.contains(&m))));
    summary
        .counts_mut(&plan.object, Direction::MarketoToCrm)
        .skipped += (before - pairs.len()) as u64;
    Ok(())
}

/// Returns the Marketo lead ids among `ids` held by an unconverted CRM lead; none when the CRM
/// cannot read that object (a warning).
async fn unconverted_leads(
    step: &Step<'_>,
    plan: &Plan,
    conv: &Conversion,
    ids: &[Value],
    summary: &mut CycleSummary,
) -> Result<Option<BTreeSet<i64>>, EngineError> {
    let mut held: BTreeSet<i64> = BTreeSet::new();
    for chunk in ids.chunks(300) {
        let found = match step
            .ctx
            .crm
            .find(&conv.crm_lead_object, &plan.crm_marketo_id, chunk)
            .await
        {
            Ok(f) => f,
            Err(e) if !e.is_retryable() => {
                summary.warnings.push(format!(
                    "leads held by CRM leads are not checked: reading `{}` failed: {e}",
                    conv.crm_lead_object
                ));
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        for r in found {
            if value_text(r.fields.get(&conv.converted_field)).is_none()
                && let Some(m) = lead_id_of(r.fields.get(&plan.crm_marketo_id))
            {
                held.insert(m);
            }
        }
    }
    Ok(Some(held))
}
