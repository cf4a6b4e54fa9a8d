//! The lead writes: reconciled changes go to Marketo first (through the endpoint seam, which
//! routes company-type fields of a lead linked to a company to that company), then to the CRM;
//! the new CRM ids go back into the leads' CRM-key field (the CRM-id write-back); and the links,
//! conflicts and resolved ledger entries of every settled pair go into the step's commit. On a
//! dry run each write is a plan row instead.

use serde_json::json;

use super::LINK_OBJECT;
use super::deletes::apply_policy;
use super::records::{CRec, Pair, crm_pk, direction_to, text_of};
use super::step::Step;
use crate::config::DeletePolicy;
use crate::crm::{Refusal, RefusalReason, WriteResult};
use crate::engine::ledger::{self, Failure};
use crate::engine::pipeline::to_record;
use crate::engine::reconcile::Reconciled;
use crate::engine::summary::{PlannedAction, PlannedChange, json_fields};
use crate::engine::{CycleSummary, EngineError};
use crate::mapping::Plan;
use crate::marketo::endpoint::{
    CompanyLink, EndpointSettings, LeadKey, LeadOutcome, LeadWrite, MarketoEndpoint,
    RestBulkEndpoint, WriteMode,
};
use crate::marketo::leads::MAX_BATCH;
use crate::marketo::{Record, SyncAction};
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, Link, TombstoneKind};

/// One lead write of a pair.
struct MWrite {
    pair: usize,
    create: bool,
    lead: LeadWrite,
}

/// One CRM row write of a pair.
type CWrite = (usize, Fields);

/// Writes the Marketo side of every reconciled pair (or plans it on a dry run). A linked lead
/// Marketo no longer has is treated as deleted there: its CRM record follows the delete policy.
pub(super) async fn apply_marketo(
    step: &mut Step<'_>,
    pairs: &mut [Pair],
    decided: &[(usize, Reconciled)],
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let writes = marketo_writes(step, pairs, decided);
    let writes = drop_waiting(step, pairs, writes, summary);
    let endpoint = step.ctx.endpoint(EndpointSettings {
        bulk_import_threshold: step.bulk_import_threshold,
        poll: step.poll,
        ..EndpointSettings::default()
    });
    if step.dry_run {
        return preview_marketo(step, &endpoint, pairs, &writes).await;
    }
    let mut gone: Vec<Link> = Vec::new();
    for create in [true, false] {
        let batch: Vec<&MWrite> = writes.iter().filter(|w| w.create == create).collect();
        if !batch.is_empty() {
            send_marketo(step, &endpoint, pairs, &batch, &mut gone, summary).await?;
        }
    }
    let policy = step.ctx.settings.sync.lead_deletes;
    for link in gone {
        tracing::warn!(
            lead = %link.marketo_key,
            crm = %link.crm_key,
            "a linked lead is gone from marketo; its crm record follows the delete policy"
        );
        apply_policy(step, &link, policy, summary).await?;
        step.tombstone(&link, TombstoneKind::Deleted, Side::Marketo);
    }
    Ok(())
}

/// Returns the lead writes of the reconciled pairs: a create for a CRM-only pair (keyed by the
/// CRM key field), an update by id where values changed or the lead lacks its CRM key.
fn marketo_writes(step: &Step<'_>, pairs: &[Pair], decided: &[(usize, Reconciled)]) -> Vec<MWrite> {
    let plan = step.plan;
    let mut writes = Vec::new();
    for (i, r) in decided {
        let p = &pairs[*i];
        let mut record = to_record(&plan.render(Side::Marketo, &r.to_marketo));
        let needs_key = match (&p.c_id, &p.m) {
            (Some(c), Some(m)) => m.crm_key.as_deref() != Some(c.as_str()),
            (Some(_), None) => p.link.is_none(),
            _ => false,
        };
        match (p.m_id, &p.c_id) {
            (None, Some(c_id)) => {
                record.insert(plan.marketo_crm_key.clone(), json!(c_id));
                let company = CompanyLink::Known(None);
                let lead = LeadWrite { record, company };
                writes.push(MWrite {
                    pair: *i,
                    create: true,
                    lead,
                });
            }
            (Some(m_id), _) if !record.is_empty() || needs_key => {
                if needs_key && let Some(c_id) = &p.c_id {
                    record.insert(plan.marketo_crm_key.clone(), json!(c_id));
                }
                record.insert("id".into(), json!(m_id));
                // Company-type fields of a lead linked to a company go to the company.
                let company = match &p.m {
                    Some(m) => CompanyLink::Known(m.external_company_id.clone()),
                    None => CompanyLink::Unknown,
                };
                let lead = LeadWrite { record, company };
                writes.push(MWrite {
                    pair: *i,
                    create: false,
                    lead,
                });
            }
            _ => {}
        }
    }
    writes
}

/// Leaves out the leads refused before and unchanged since: they wait for their retry (or an
/// operator), counted as skipped.
fn drop_waiting(
    step: &Step<'_>,
    pairs: &mut [Pair],
    writes: Vec<MWrite>,
    summary: &mut CycleSummary,
) -> Vec<MWrite> {
    let now = step.now();
    let object = step.plan.object.as_str();
    let mut sendable = Vec::with_capacity(writes.len());
    for w in writes {
        let p = &mut pairs[w.pair];
        let key = crate::engine::pipeline::commit::error_key(
            LINK_OBJECT,
            Direction::CrmToMarketo,
            &p.record_key(),
        );
        let payload = serde_json::Value::Object(w.lead.record.clone());
        if ledger::waits(step.open.get(&key), &payload, now) {
            p.failed = true;
            summary.counts_mut(object, Direction::CrmToMarketo).skipped += 1;
            continue;
        }
        sendable.push(w);
    }
    sendable
}

/// Plans the lead writes of a dry run (with the company the endpoint would route fields to).
async fn preview_marketo(
    step: &mut Step<'_>,
    endpoint: &RestBulkEndpoint,
    pairs: &[Pair],
    writes: &[MWrite],
) -> Result<(), EngineError> {
    let plan = step.plan;
    let leads: Vec<LeadWrite> = writes.iter().map(|w| w.lead.clone()).collect();
    let previews = endpoint.preview_leads(&leads).await?;
    for (w, preview) in writes.iter().zip(previews) {
        let p = &pairs[w.pair];
        // The lead's values now: as read this cycle, else the link's agreed base (a lead
        // not read this cycle has not changed since).
        let before =
            p.m.as_ref()
                .map(|m| (&m.canon, m.crm_key.clone()))
                .or_else(|| p.link.as_ref().map(|l| (&l.base, Some(l.crm_key.clone()))))
                .map(|(canon, crm_key)| {
                    let mut b = to_record(&plan.render(Side::Marketo, canon));
                    b.insert(plan.marketo_crm_key.clone(), json!(crm_key));
                    b
                });
        let action = if w.create {
            PlannedAction::Create
        } else {
            PlannedAction::Update
        };
        let mut change = PlannedChange::new(&plan.object, Direction::CrmToMarketo, action).fields(
            &w.lead.record,
            before.as_ref(),
            &["id"],
        );
        if let Some(c) = &p.c_id {
            change = change.source(c.clone());
        }
        if let (Some(m), false) = (p.m_id, w.create) {
            change = change.target(m.to_string());
        }
        if let Some((company, _)) = &preview.company {
            change = change.note(format!("company fields go to company {company}"));
        }
        step.plan_out.push(change);
    }
    Ok(())
}

/// Sends one batch of lead writes (all creates, upserted by the CRM key field, or all updates
/// by id) and records each outcome; a linked lead not found goes to `gone`.
async fn send_marketo(
    step: &mut Step<'_>,
    endpoint: &RestBulkEndpoint,
    pairs: &mut [Pair],
    batch: &[&MWrite],
    gone: &mut Vec<Link>,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let create = batch.first().is_some_and(|w| w.create);
    let (mode, key) = if create {
        let field = step.plan.marketo_crm_key.clone();
        (WriteMode::Upsert, LeadKey::Field(field))
    } else {
        (WriteMode::UpdateOnly, LeadKey::Id)
    };
    let object = step.plan.object.clone();
    let leads: Vec<LeadWrite> = batch.iter().map(|w| w.lead.clone()).collect();
    let outcomes = endpoint
        .write_leads(&leads, mode, &key, &step.cancel)
        .await?;
    for (w, outcome) in batch.iter().zip(outcomes) {
        let p = &mut pairs[w.pair];
        let counts = summary.counts_mut(&object, Direction::CrmToMarketo);
        let refusal = match outcome {
            LeadOutcome::Created { id } => {
                counts.created += 1;
                p.m_id = Some(id);
                continue;
            }
            LeadOutcome::Updated { .. } => {
                counts.updated += 1;
                continue;
            }
            LeadOutcome::Refused(r) => r,
        };
        p.failed = true;
        if !create
            && refusal.kind == crate::marketo::RefusalKind::NotFound
            && refusal.company.is_none()
            && let Some(link) = &p.link
        {
            // The linked lead is gone from Marketo without a deletion or merge this
            // sync has seen: it is treated as deleted there.
            gone.push(link.clone());
            continue;
        }
        counts.failed += 1;
        // The base does not move, so the change is tried again on later cycles.
        let payload = match &refusal.company {
            Some(company) => json!({ "company": company }),
            None => serde_json::Value::Object(w.lead.record.clone()),
        };
        step.error(
            Direction::CrmToMarketo,
            p.record_key(),
            p.m_id.map(|m| m.to_string()),
            payload,
            Failure::new(refusal.code, refusal.message, refusal.retryable),
        );
    }
    Ok(())
}

/// Writes the CRM side of every reconciled pair whose Marketo side went through (or plans it
/// on a dry run); returns the pairs whose CRM record was created.
pub(super) async fn apply_crm(
    step: &mut Step<'_>,
    pairs: &mut [Pair],
    decided: &[(usize, Reconciled)],
    summary: &mut CycleSummary,
) -> Result<Vec<usize>, EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let pk = crm_pk(ctx, plan).await;
    let (creates, updates) = crm_writes(step, pairs, decided, &pk, summary);
    if step.dry_run {
        preview_crm(step, pairs, &creates, true, &pk);
        preview_crm(step, pairs, &updates, false, &pk);
        return Ok(Vec::new());
    }
    let max = ctx
        .crm
        .capabilities(&plan.crm_object)
        .map(|c| c.max_batch_write)
        .unwrap_or(500)
        .max(1);
    let mut created = Vec::new();
    let mut orphans: Vec<i64> = Vec::new();
    for (create, list, key) in [
        (true, creates, plan.crm_marketo_id.clone()),
        (false, updates, pk.clone()),
    ] {
        for chunk in list.chunks(max) {
            let batch: Vec<Fields> = chunk.iter().map(|(_, f)| f.clone()).collect();
            let results = ctx.crm.upsert(&plan.crm_object, &key, &batch).await?;
            for ((i, f), res) in chunk.iter().zip(results) {
                if crm_outcome(step, &mut pairs[*i], f, res, create, &mut orphans, summary) {
                    created.push(*i);
                }
            }
        }
    }
    settle_orphans(step, &orphans, summary).await?;
    Ok(created)
}

/// Returns the CRM row creates and updates of the reconciled pairs (a linked pair with nothing
/// to write is counted as skipped).
fn crm_writes(
    step: &Step<'_>,
    pairs: &[Pair],
    decided: &[(usize, Reconciled)],
    pk: &str,
    summary: &mut CycleSummary,
) -> (Vec<CWrite>, Vec<CWrite>) {
    let plan = step.plan;
    let (mut creates, mut updates) = (Vec::new(), Vec::new());
    for (i, r) in decided {
        let p = &pairs[*i];
        if p.failed {
            continue;
        }
        let Some(m_id) = p.m_id else { continue };
        let m_key = m_id.to_string();
        let Some(c_id) = &p.c_id else {
            let mut record = plan.render(Side::Crm, &r.to_crm);
            record.insert(plan.crm_marketo_id.clone(), Value::Text(m_key));
            creates.push((*i, record));
            continue;
        };
        let update = CrmUpdate {
            pk,
            m_key: &m_key,
            c_id,
            c: p.c.as_ref(),
            linked: p.link.is_some(),
        };
        match update.row(plan, &r.to_crm) {
            Some(record) => updates.push((*i, record)),
            None => {
                summary
                    .counts_mut(&plan.object, Direction::MarketoToCrm)
                    .skipped += 1;
            }
        }
    }
    (creates, updates)
}

/// The CRM record of a pair that has one (linked, or found by its keys or match fields), as an
/// update keyed by the CRM primary key.
pub(super) struct CrmUpdate<'a> {
    /// The CRM object's primary-key field.
    pub pk: &'a str,
    /// The pair's Marketo lead id.
    pub m_key: &'a str,
    /// The CRM record's id.
    pub c_id: &'a str,
    /// The CRM record as read this cycle, if read.
    pub c: Option<&'a CRec>,
    /// True when the pair is linked.
    pub linked: bool,
}

impl CrmUpdate<'_> {
    /// Returns the row that writes the reconciled changes `to_crm` (canonical) to the record,
    /// with the Marketo id when the record does not hold it (not read: when not linked), keyed
    /// by the primary key; `None` when there is nothing to write. The cycle's CRM updates and
    /// bootstrap's ([`super::inbound`]) are rendered by this one function.
    pub(super) fn row(&self, plan: &Plan, to_crm: &Fields) -> Option<Fields> {
        let mut record = plan.render(Side::Crm, to_crm);
        let needs_key = match self.c {
            Some(c) => c.marketo_key.as_deref() != Some(self.m_key),
            None => !self.linked,
        };
        if record.is_empty() && !needs_key {
            return None;
        }
        if needs_key {
            let m_key = Value::Text(self.m_key.to_owned());
            record.insert(plan.crm_marketo_id.clone(), m_key);
        }
        record.insert(self.pk.to_owned(), Value::Text(self.c_id.to_owned()));
        Some(record)
    }
}

/// Plans the CRM row writes of a dry run.
fn preview_crm(step: &mut Step<'_>, pairs: &[Pair], list: &[CWrite], create: bool, pk: &str) {
    let plan = step.plan;
    for (i, f) in list {
        let p = &pairs[*i];
        let before =
            p.c.as_ref()
                .map(|c| (&c.canon, c.marketo_key.clone()))
                .or_else(|| {
                    p.link
                        .as_ref()
                        .map(|l| (&l.base, Some(l.marketo_key.clone())))
                })
                .map(|(canon, m_key)| {
                    let mut b = json_fields(&plan.render(Side::Crm, canon));
                    b.insert(plan.crm_marketo_id.clone(), json!(m_key));
                    b
                });
        let action = if create {
            PlannedAction::Create
        } else {
            PlannedAction::Update
        };
        let mut change = PlannedChange::new(&plan.object, Direction::MarketoToCrm, action).fields(
            &json_fields(f),
            before.as_ref(),
            &[pk],
        );
        if let Some(m) = p.m_id {
            change = change.source(m.to_string());
        }
        if let (Some(c), false) = (&p.c_id, create) {
            change = change.target(c.clone());
        }
        if create {
            change = change.note(format!(
                "then the new CRM id goes into the lead's {}",
                plan.marketo_crm_key
            ));
        }
        step.plan_out.push(change);
    }
}

/// Records the outcome of one CRM row write; returns true when the pair got its CRM record
/// now (its id goes back into the lead).
fn crm_outcome(
    step: &mut Step<'_>,
    p: &mut Pair,
    row: &Fields,
    res: WriteResult,
    create: bool,
    orphans: &mut Vec<i64>,
    summary: &mut CycleSummary,
) -> bool {
    let counts = summary.counts_mut(&step.plan.object, Direction::MarketoToCrm);
    match res {
        WriteResult::Created { id } | WriteResult::Updated { id } if create || p.c_id.is_none() => {
            counts.created += u64::from(create);
            counts.updated += u64::from(!create);
            p.c_id = Some(id);
            return true;
        }
        WriteResult::Created { .. } | WriteResult::Updated { .. } => {
            counts.updated += 1;
        }
        WriteResult::Deleted { .. } => {}
        // The CRM record holding this lead's id was deleted there (the link to it was lost,
        // say by a crash before the commit): the lead follows the CRM delete policy instead
        // of being written into a dead record.
        WriteResult::Refused(Refusal {
            reason: RefusalReason::Deleted,
            ..
        }) if create => {
            p.failed = true;
            orphans.extend(p.m_id);
        }
        WriteResult::Refused(refusal) => {
            counts.failed += 1;
            p.failed = true;
            step.error(
                Direction::MarketoToCrm,
                p.m_id.map(|m| m.to_string()).unwrap_or_default(),
                p.c_id.clone(),
                serde_json::Value::Object(to_record(row)),
                Failure::from(&refusal),
            );
        }
    }
    false
}

/// The leads whose CRM record was deleted there follow the CRM delete policy: deleted from
/// Marketo under `delete`, else left there with a warning.
async fn settle_orphans(
    step: &Step<'_>,
    orphans: &[i64],
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    if orphans.is_empty() {
        return Ok(());
    }
    let object = step.plan.object.as_str();
    if step.ctx.settings.sync.lead_deletes == DeletePolicy::Delete {
        for chunk in orphans.chunks(MAX_BATCH) {
            step.ctx.marketo.delete_leads(chunk).await?;
        }
        summary.counts_mut(object, Direction::CrmToMarketo).deleted += orphans.len() as u64;
    } else {
        summary.counts_mut(object, Direction::MarketoToCrm).skipped += orphans.len() as u64;
        summary.warnings.push(format!(
            "{} lead(s) belong to CRM records deleted there (lead ids {:?}); left in Marketo \
             by `sync.lead_deletes`",
            orphans.len(),
            orphans
        ));
    }
    Ok(())
}

/// The CRM-id write-back: the new CRM ids of `created` pairs go into their leads' CRM-key
/// field (a refusal is one ledger entry).
pub(super) async fn write_back_crm_ids(
    step: &mut Step<'_>,
    pairs: &[Pair],
    created: &[usize],
) -> Result<(), EngineError> {
    if created.is_empty() || step.dry_run {
        return Ok(());
    }
    let key_field = step.plan.marketo_crm_key.clone();
    let input: Vec<Record> = created
        .iter()
        .filter_map(|i| {
            let p = &pairs[*i];
            let mut r = Record::new();
            r.insert("id".into(), json!(p.m_id?));
            r.insert(key_field.clone(), json!(p.c_id.clone()?));
            Some(r)
        })
        .collect();
    for chunk in input.chunks(MAX_BATCH) {
        let results = step
            .ctx
            .marketo
            .sync_leads(SyncAction::UpdateOnly, Some("id"), None, chunk)
            .await?;
        for (rec, res) in chunk.iter().zip(results) {
            if let Some(failure) = Failure::of_marketo_result(&res) {
                step.error(
                    Direction::CrmToMarketo,
                    text_of(rec.get(&key_field)).unwrap_or_default(),
                    text_of(rec.get("id")),
                    serde_json::Value::Object(rec.clone()),
                    failure,
                );
            }
        }
    }
    Ok(())
}

/// Records every pair settled on both sides: its conflicts, its link (when its agreed values
/// or keys moved) and the resolution of its open ledger entries.
pub(super) fn record_agreed(
    step: &mut Step<'_>,
    pairs: &[Pair],
    decided: &[(usize, Reconciled)],
    summary: &mut CycleSummary,
) {
    let now = step.now();
    let object = step.plan.object.clone();
    let no_base = Fields::new();
    for (i, r) in decided {
        let p = &pairs[*i];
        if p.failed {
            continue;
        }
        let (Some(m_id), Some(c_id)) = (p.m_id, p.c_id.clone()) else {
            continue;
        };
        let m_key = m_id.to_string();
        for c in &r.conflicts {
            summary
                .counts_mut(&object, direction_to(c.winner.other()))
                .conflicts += 1;
            let conflict = c.record(LINK_OBJECT, &m_key, &c_id, now);
            step.commit.conflicts.push(conflict);
        }
        // Reconciled against the link's base, or none (`pairing::reconcile_pairs`).
        let base = p.link.as_ref().map_or(&no_base, |l| &l.base);
        let unchanged = p
            .link
            .as_ref()
            .is_some_and(|l| r.agrees_with(&l.base) && l.marketo_key == m_key && l.crm_key == c_id);
        if !unchanged {
            step.link(m_id, &c_id, r.agreed(base));
        }
        step.resolve(Direction::MarketoToCrm, &m_key);
        step.resolve(Direction::CrmToMarketo, &c_id);
    }
}
