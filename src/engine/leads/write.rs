//! The lead writes, through the pipeline's two-way runner ([`TwoWay`]): each lead pair becomes
//! a [`SidePair`] (the lead id or, for a lead to create, the CRM key as its Marketo key fields;
//! the key a side lacks of the other as extra values), and [`LeadSide`] is the runner's Marketo
//! side: creates upserted by the CRM-key field, updates by id, company-type fields of a lead
//! linked to a company routed to that company by the endpoint (a dry run's plan row says so).
//! The runner reconciles, writes Marketo first and then the CRM, counts, keeps the ledger per
//! side and stages links in the step's one commit; what only leads settle follows the run: a
//! linked lead gone from Marketo and a lead whose CRM record was deleted there follow the
//! delete policy, and each new CRM id goes back into its lead (the CRM-id write-back).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::LINK_OBJECT;
use super::deletes::apply_policy;
use super::records::{CRec, MLead, Pair, crm_pk, text_of};
use super::step::Step;
use crate::config::DeletePolicy;
use crate::engine::ledger::Failure;
use crate::engine::pipeline::commit::error_key;
use crate::engine::pipeline::spec::TwoWaySpec;
use crate::engine::pipeline::two_way::{
    CrmBatch, MarketoOutcome, MarketoSide, MarketoWrite, Observed, Seen, SidePair, TwoWay,
};
use crate::engine::{CycleOptions, CycleSummary, EngineError};
use crate::mapping::Plan;
use crate::marketo::endpoint::{
    CompanyLink, EndpointSettings, LeadKey, LeadOutcome, LeadWrite, MarketoEndpoint,
    RestBulkEndpoint, WriteMode,
};
use crate::marketo::leads::MAX_BATCH;
use crate::marketo::{Record, RefusalKind, SyncAction};
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, ErrorKey, SyncError, TombstoneKind};

/// Reconciles and writes the step's lead pairs through the two-way runner, into the step's
/// commit, then settles what the runner hands back.
///
/// # Errors
///
/// A whole-call failure of Marketo, the CRM or the store, or cancellation.
pub(super) async fn write_pairs(
    step: &mut Step<'_>,
    mut pairs: Vec<Pair>,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let spec = TwoWaySpec {
        family: None,
        ledger: Direction::CrmToMarketo,
        first: Side::Marketo,
        update_key: crm_pk(ctx, plan).await,
        keys_in_base: false,
    };
    let side = LeadSide {
        plan,
        endpoint: ctx.endpoint(EndpointSettings {
            bulk_import_threshold: step.bulk_import_threshold,
            poll: step.poll,
            ..EndpointSettings::default()
        }),
        companies: pairs
            .iter()
            .filter_map(|p| p.m.as_ref())
            .map(|m| (m.id.to_string(), m.external_company_id.clone()))
            .collect(),
        open: &step.open,
    };
    let no_family_entries = BTreeMap::new();
    let runner = TwoWay {
        ctx,
        plan,
        spec: &spec,
        previous: &no_family_entries,
        marketo: Some(&side),
    };
    let rows = ctx
        .crm
        .capabilities(&plan.crm_object)
        .map_or(500, |c| c.max_batch_write)
        .max(1);
    let options = CycleOptions {
        dry_run: step.dry_run,
    };
    let batch = CrmBatch {
        rows,
        options: &options,
        cancel,
    };
    let side_pairs = side_pairs(plan, &mut pairs, step.dry_run);
    let settled = runner
        .run_into(side_pairs, &mut step.commit, summary, &batch)
        .await?;
    let policy = ctx.settings.sync.lead_deletes;
    for key in &settled.gone_marketo {
        let Some(link) = pairs
            .iter()
            .find(|p| p.m_id.is_some_and(|m| m.to_string() == *key))
            .and_then(|p| p.link.clone())
        else {
            continue;
        };
        tracing::warn!(
            lead = %link.marketo_key,
            crm = %link.crm_key,
            "a linked lead is gone from marketo; its crm record follows the delete policy"
        );
        apply_policy(step, &link, policy, summary).await?;
        step.tombstone(&link, TombstoneKind::Deleted, Side::Marketo);
    }
    let orphans: Vec<i64> = settled
        .gone_crm
        .iter()
        .filter_map(|k| k.parse().ok())
        .collect();
    settle_orphans(step, &orphans, summary).await?;
    write_back_crm_ids(step, &settled.created).await
}

/// Returns the runner's pairs of the lead pairs with a record read this cycle (their values
/// move there; a dry run's "before" values are rendered only on a dry run).
fn side_pairs(plan: &Plan, pairs: &mut [Pair], dry_run: bool) -> Vec<SidePair> {
    let mut out = Vec::new();
    for p in pairs.iter_mut().filter(|p| p.m.is_some() || p.c.is_some()) {
        let marketo_key = p.m_id.map(|m| m.to_string()).unwrap_or_default();
        let mut key_fields = Fields::new();
        match (p.m_id, &p.c_id) {
            (Some(m_id), _) => {
                key_fields.insert("id".into(), Value::Int(m_id));
            }
            (None, Some(c_id)) => {
                let key = Value::Text(c_id.clone());
                key_fields.insert(plan.marketo_crm_key.clone(), key);
            }
            (None, None) => continue,
        }
        // The keys each side lacks of the other: written with the pair's values, or alone.
        let mut marketo_extra = Fields::new();
        if let (Some(_), Some(c_id)) = (p.m_id, &p.c_id) {
            let lacks = match &p.m {
                Some(m) => m.crm_key.as_deref() != Some(c_id.as_str()),
                None => p.link.is_none(),
            };
            if lacks {
                let key = Value::Text(c_id.clone());
                marketo_extra.insert(plan.marketo_crm_key.clone(), key);
            }
        }
        let mut crm_extra = Fields::new();
        if p.m_id.is_some() {
            let linked = p.link.is_some();
            let lacks = p.c_id.is_none() || crm_lacks_id(p.c.as_ref(), &marketo_key, linked);
            if lacks {
                let key = Value::Text(marketo_key.clone());
                crm_extra.insert(plan.crm_marketo_id.clone(), key);
            }
        }
        out.push(SidePair {
            crm_key: p.c_id.clone(),
            ledger_key: p.record_key(),
            read_from: if p.m.is_some() {
                Direction::MarketoToCrm
            } else {
                Direction::CrmToMarketo
            },
            base: p.link.as_ref().map(|l| l.base.clone()),
            marketo: Seen::of(
                p.m.as_mut().map(|m| lead_read(plan, m, dry_run)),
                p.m_id.is_some(),
            ),
            crm: Seen::of(
                p.c.as_mut().map(|c| crm_read(plan, c, dry_run)),
                p.c_id.is_some(),
            ),
            marketo_key,
            key_fields,
            marketo_extra,
            crm_extra,
        });
    }
    out
}

/// A lead as the runner sees it: its values, and on a dry run as "before" its Marketo fields
/// with its CRM key.
fn lead_read(plan: &Plan, m: &mut MLead, dry_run: bool) -> Observed {
    let raw = before(plan, Side::Marketo, &m.canon, m.crm_key.as_deref(), dry_run);
    Observed {
        canonical: std::mem::take(&mut m.canon),
        raw,
        modified_at: m.at,
    }
}

/// A CRM record as the runner sees it: its values, and on a dry run as "before" its columns
/// with the Marketo id it holds.
fn crm_read(plan: &Plan, c: &mut CRec, dry_run: bool) -> Observed {
    let raw = before(plan, Side::Crm, &c.canon, c.marketo_key.as_deref(), dry_run);
    Observed {
        canonical: std::mem::take(&mut c.canon),
        raw,
        modified_at: Some(c.at),
    }
}

/// Returns a record's values on `side` with the key it holds of the other side, as a dry run
/// shows them before a write (nothing outside a dry run).
fn before(plan: &Plan, side: Side, canon: &Fields, key: Option<&str>, dry_run: bool) -> Fields {
    if !dry_run {
        return Fields::new();
    }
    let mut raw = plan.render(side, canon);
    let column = match side {
        Side::Marketo => &plan.marketo_crm_key,
        Side::Crm => &plan.crm_marketo_id,
    };
    let key = key.map_or(Value::Null, |k| Value::Text(k.to_owned()));
    raw.insert(column.clone(), key);
    raw
}

/// The runner's Marketo side for leads.
struct LeadSide<'a> {
    plan: &'a Plan,
    endpoint: RestBulkEndpoint,
    /// The `externalCompanyId` of each lead read this cycle, by lead id.
    companies: HashMap<String, Option<String>>,
    /// The step's open lead entries.
    open: &'a HashMap<ErrorKey, SyncError>,
}

impl LeadSide<'_> {
    /// Returns the endpoint's lead write of a pair's write.
    fn lead_write(&self, w: &MarketoWrite<'_>) -> LeadWrite {
        // Company-type fields of a lead linked to a company go to the company.
        let company = match self.companies.get(w.marketo_key) {
            _ if w.create => CompanyLink::Known(None),
            Some(company) => CompanyLink::Known(company.clone()),
            None => CompanyLink::Unknown,
        };
        LeadWrite {
            record: w.record.clone(),
            company,
        }
    }
}

#[async_trait]
impl MarketoSide for LeadSide<'_> {
    /// Creates go first, upserted by the CRM-key field; then updates, by id.
    async fn write(
        &self,
        writes: &[MarketoWrite<'_>],
        cancel: &CancellationToken,
    ) -> Result<Vec<MarketoOutcome>, EngineError> {
        let mut out: Vec<Option<MarketoOutcome>> = vec![None; writes.len()];
        for create in [true, false] {
            let indexes: Vec<usize> = (0..writes.len())
                .filter(|i| writes[*i].create == create)
                .collect();
            if indexes.is_empty() {
                continue;
            }
            let (mode, key) = if create {
                let field = self.plan.marketo_crm_key.clone();
                (WriteMode::Upsert, LeadKey::Field(field))
            } else {
                (WriteMode::UpdateOnly, LeadKey::Id)
            };
            let leads: Vec<LeadWrite> = indexes
                .iter()
                .map(|i| self.lead_write(&writes[*i]))
                .collect();
            let outcomes = self
                .endpoint
                .write_leads(&leads, mode, &key, cancel)
                .await?;
            for (i, outcome) in indexes.into_iter().zip(outcomes) {
                out[i] = Some(lead_outcome(&writes[i], outcome));
            }
        }
        // Every write has its outcome; one the endpoint did not answer is not counted written.
        let unanswered = || MarketoOutcome::Refused {
            failure: Failure::new("no_result", "marketo returned no result for the lead", true),
            payload: None,
        };
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(unanswered))
            .collect())
    }

    async fn notes(&self, writes: &[MarketoWrite<'_>]) -> Result<Vec<Option<String>>, EngineError> {
        let leads: Vec<LeadWrite> = writes.iter().map(|w| self.lead_write(w)).collect();
        let previews = self.endpoint.preview_leads(&leads).await?;
        Ok(previews
            .into_iter()
            .map(|p| {
                let (company, _) = p.company?;
                Some(format!("company fields go to company {company}"))
            })
            .collect())
    }

    fn open(&self, direction: Direction, key: &str) -> Option<&SyncError> {
        self.open.get(&error_key(LINK_OBJECT, direction, key))
    }

    fn crm_create_note(&self) -> Option<String> {
        Some(format!(
            "then the new CRM id goes into the lead's {}",
            self.plan.marketo_crm_key
        ))
    }
}

/// Returns the runner's outcome of one lead write. A linked lead Marketo no longer has (an
/// update by id refused as not found) is gone there, without a deletion or merge this sync
/// has seen.
fn lead_outcome(w: &MarketoWrite<'_>, outcome: LeadOutcome) -> MarketoOutcome {
    match outcome {
        LeadOutcome::Created { id } => MarketoOutcome::Created {
            key: id.to_string(),
        },
        LeadOutcome::Updated { .. } => MarketoOutcome::Updated,
        LeadOutcome::Refused(r)
            if !w.create && w.linked && r.kind == RefusalKind::NotFound && r.company.is_none() =>
        {
            MarketoOutcome::Gone
        }
        LeadOutcome::Refused(r) => MarketoOutcome::Refused {
            payload: r.company.map(|company| json!({ "company": company })),
            failure: Failure::new(r.code, r.message, r.retryable),
        },
    }
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
        let needs_key = crm_lacks_id(self.c, self.m_key, self.linked);
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

/// True when a CRM record does not hold its lead's id `m_key`: as read this cycle, or, not read,
/// when it is not linked (a linked record not read holds what it held when linked).
fn crm_lacks_id(c: Option<&CRec>, m_key: &str, linked: bool) -> bool {
    match c {
        Some(c) => c.marketo_key.as_deref() != Some(m_key),
        None => !linked,
    }
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

/// The CRM-id write-back: the new CRM id of each `(lead id, CRM id)` created goes into its
/// lead's CRM-key field (a refusal is one ledger entry).
async fn write_back_crm_ids(
    step: &mut Step<'_>,
    created: &[(String, String)],
) -> Result<(), EngineError> {
    if created.is_empty() || step.dry_run {
        return Ok(());
    }
    let key_field = step.plan.marketo_crm_key.clone();
    let input: Vec<Record> = created
        .iter()
        .filter_map(|(m_key, c_id)| {
            let mut r = Record::new();
            r.insert("id".into(), json!(m_key.parse::<i64>().ok()?));
            r.insert(key_field.clone(), json!(c_id));
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
