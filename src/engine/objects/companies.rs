//! CRM accounts <-> Marketo companies, by `externalCompanyId` = the CRM account id.
//!
//! The CRM is the source of truth: every created or updated account is written to Marketo.
//! Marketo-side edits of linked companies flow back to the CRM: the step reads the linked
//! companies' current Marketo values (Get Companies by `externalCompanyId`, 300 per call) for the
//! accounts that changed in the CRM, and for every linked company once a day (drift), and
//! reconciles the three values (base, Marketo, CRM) on the pipeline's two-way runner
//! ([`TwoWay`]); a field changed on both sides is a conflict settled by the field's policy and
//! logged. This file is the spec ([`spec`]) and what is the object's own: the gather (the CRM
//! feed, the drift hook, the Marketo read).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{ObjectFamily, from_record, key_text, links_by_crm, record_invalid_value};
use crate::crm::ChangeKind;
use crate::engine::pipeline::gather::{Gathered, Scope, crm_in_scope};
use crate::engine::pipeline::spec::TwoWaySpec;
use crate::engine::pipeline::two_way::{Observed, Seen, SidePair, TwoWay, unreadable};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{Plan, Plans};
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, Link, StepCommit, SyncError, Watermark};

/// The `sync.objects` name of this step's mapping.
pub const OBJECT: &str = "companies";
/// The Marketo watermark queue remembering the last full (drift) read of linked companies.
pub const DRIFT_QUEUE: &str = "drift";
/// How often every linked company is read back from Marketo to catch Marketo-side edits.
pub const DRIFT_INTERVAL: chrono::Duration = chrono::Duration::days(1);

/// Marketo companies read per Get Companies call.
const MARKETO_BATCH: usize = 300;

/// The Marketo companies read this cycle: raw fields and `updatedAt`, by `externalCompanyId`.
type MarketoCompanies = BTreeMap<String, (Fields, Option<DateTime<Utc>>)>;

/// One pair gathered: an account changed in the CRM, or a linked company read for drift.
struct Pair {
    crm_key: String,
    crm: Option<(Fields, DateTime<Utc>)>,
    link: Option<Link>,
}

/// Returns the companies spec: Marketo's company family, ledger entries by CRM account id,
/// Marketo written first, CRM rows updated by the column holding their Marketo key (the adapter
/// upserts by a unique column and refuses the generated primary key). Bootstrap copies
/// Marketo companies into the CRM with it too.
pub(crate) fn spec(plan: &Plan) -> TwoWaySpec {
    TwoWaySpec {
        family: Some(ObjectFamily::Companies),
        ledger: Direction::CrmToMarketo,
        first: Side::Marketo,
        update_key: plan.crm_marketo_id.clone(),
        keys_in_base: false,
    }
}

/// Syncs companies both ways (see the module documentation). Does nothing when the object is not
/// enabled.
///
/// Runs over the accounts of `scope`: on demand, one CRM account (read by id) and its linked
/// Marketo company (one Get Companies call), reconciled like a cycle's; no drift read.
///
/// # Errors
///
/// A whole-call failure of the CRM, Marketo or the store, or cancellation.
pub async fn run(
    ctx: &Context,
    plans: &Plans,
    scope: Scope<'_>,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let Some(plan) = plans.objects.get(OBJECT) else {
        return Ok(());
    };
    let result = run_plan(ctx, plan, scope, summary, options, cancel).await;
    super::skip_when_native_sync(result, OBJECT, summary)
}

/// Gathers the step's pairs (CRM changes, due retries, drift) and their Marketo companies, and
/// runs them through the two-way runner.
async fn run_plan(
    ctx: &Context,
    plan: &Plan,
    scope: Scope<'_>,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let object = plan.object.as_str();
    let (mut gathered, previous) = crm_in_scope(ctx, plan, scope, cancel).await?;
    let mut commit = crate::engine::pipeline::commit::start(&mut gathered);
    let mut pairs = crm_pairs(ctx, object, &gathered).await?;
    summary.counts_mut(object, Direction::CrmToMarketo).read += pairs.len() as u64;
    if scope.is_feed() {
        add_drift_pairs(ctx, object, ctx.clock.now(), &mut pairs, &mut commit).await?;
    }
    let wanted: Vec<String> = pairs
        .values()
        .filter_map(|p| p.link.as_ref().map(|l| l.marketo_key.clone()))
        .collect();
    let marketo = read_marketo(ctx, plan, &wanted, cancel).await?;
    summary.counts_mut(object, Direction::MarketoToCrm).read += marketo.len() as u64;
    let mut sides = Vec::with_capacity(pairs.len());
    for pair in pairs.into_values() {
        let read = Read {
            ctx,
            plan,
            marketo: &marketo,
            previous: &previous,
        };
        sides.extend(read.side_pair(pair, &mut commit, summary));
    }
    let spec = spec(plan);
    let runner = TwoWay {
        ctx,
        plan,
        spec: &spec,
        previous: &previous,
        marketo: None,
    };
    runner.run(sides, commit, summary, options, cancel).await
}

/// Returns a pair for every account created or updated in the CRM, with its live link.
///
/// # Errors
///
/// A store failure.
async fn crm_pairs(
    ctx: &Context,
    object: &str,
    gathered: &Gathered,
) -> Result<BTreeMap<String, Pair>, EngineError> {
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    for change in &gathered.changes {
        if let ChangeKind::Upserted { fields } = &change.kind {
            let pair = Pair {
                crm_key: change.id.clone(),
                crm: Some((fields.clone(), change.modified_at)),
                link: None,
            };
            pairs.insert(change.id.clone(), pair);
        }
    }
    let ids: Vec<String> = pairs.keys().cloned().collect();
    for (k, l) in links_by_crm(ctx, object, &ids).await? {
        if l.tombstone.is_none()
            && let Some(p) = pairs.get_mut(&k)
        {
            p.link = Some(l);
        }
    }
    Ok(pairs)
}

/// What turns a gathered pair into the runner's [`SidePair`].
struct Read<'a> {
    ctx: &'a Context,
    plan: &'a Plan,
    marketo: &'a MarketoCompanies,
    previous: &'a BTreeMap<String, SyncError>,
}

impl Read<'_> {
    /// Returns the pair's two sides as the runner takes them; an account the mapping cannot
    /// read is refused to the ledger, a Marketo company it cannot read is counted failed.
    fn side_pair(
        &self,
        pair: Pair,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
    ) -> Option<SidePair> {
        let (plan, object) = (self.plan, self.plan.object.as_str());
        let read_from = match pair.crm {
            Some(_) => Direction::CrmToMarketo,
            None => Direction::MarketoToCrm,
        };
        let crm = match pair.crm {
            Some((raw, at)) => match Observed::read(plan, Side::Crm, raw, Some(at)) {
                Ok(o) => Seen::Read(o),
                Err(e) => {
                    let (direction, key) = (Direction::CrmToMarketo, &pair.crm_key);
                    let previous = self.previous.get(key);
                    let ctx = self.ctx;
                    record_invalid_value(
                        ctx, commit, summary, object, direction, key, &e, previous,
                    );
                    return None;
                }
            },
            None => Seen::Unchanged,
        };
        let marketo_key = pair
            .link
            .as_ref()
            .map_or_else(|| pair.crm_key.clone(), |l| l.marketo_key.clone());
        let marketo = match (&pair.link, self.marketo.get(&marketo_key)) {
            (Some(_), Some((raw, at))) => {
                match Observed::read(plan, Side::Marketo, raw.clone(), *at) {
                    Ok(o) => Seen::Read(o),
                    Err(e) => {
                        let direction = Direction::MarketoToCrm;
                        unreadable(summary, object, direction, &marketo_key, &e);
                        return None;
                    }
                }
            }
            _ => Seen::Missing,
        };
        let mut key_fields = Fields::new();
        key_fields.insert(
            plan.marketo_crm_key.clone(),
            Value::Text(marketo_key.clone()),
        );
        Some(SidePair {
            marketo_key,
            crm_key: Some(pair.crm_key.clone()),
            ledger_key: pair.crm_key,
            read_from,
            base: pair.link.map(|l| l.base),
            marketo,
            crm,
            key_fields,
            marketo_extra: Fields::new(),
            crm_extra: Fields::new(),
        })
    }
}

/// The company drift hook: once every [`DRIFT_INTERVAL`], every linked company not gathered
/// from the CRM is paired too, so that its Marketo-side edits are read and reconciled; the
/// [`DRIFT_QUEUE`] watermark remembering the read goes into the step's commit.
///
/// # Errors
///
/// A store failure.
async fn add_drift_pairs(
    ctx: &Context,
    object: &str,
    now: DateTime<Utc>,
    pairs: &mut BTreeMap<String, Pair>,
    commit: &mut StepCommit,
) -> Result<(), EngineError> {
    let drift = ctx
        .store
        .watermark(Side::Marketo, object, DRIFT_QUEUE)
        .await?;
    if drift.is_some_and(|w| now - w.at < DRIFT_INTERVAL) {
        return Ok(());
    }
    let mut after: Option<String> = None;
    loop {
        let page = ctx.store.links_page(object, after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.marketo_key.clone());
        for l in page {
            if l.tombstone.is_some() || pairs.contains_key(&l.crm_key) {
                continue;
            }
            pairs.insert(
                l.crm_key.clone(),
                Pair {
                    crm_key: l.crm_key.clone(),
                    crm: None,
                    link: Some(l),
                },
            );
        }
    }
    commit.watermarks.push(Watermark {
        system: Side::Marketo,
        object: object.to_owned(),
        queue: DRIFT_QUEUE.to_owned(),
        at: now,
        tie: None,
        cursor: None,
    });
    Ok(())
}

/// Returns the Marketo companies with these `externalCompanyId`s: their raw mapped fields and
/// `updatedAt`, by key.
///
/// # Errors
///
/// A whole-call Marketo failure, or cancellation.
async fn read_marketo(
    ctx: &Context,
    plan: &Plan,
    keys: &[String],
    cancel: &CancellationToken,
) -> Result<MarketoCompanies, EngineError> {
    let mut fields = plan.read_fields(Side::Marketo);
    for extra in [plan.marketo_crm_key.as_str(), "updatedAt"] {
        if !fields.iter().any(|f| f == extra) {
            fields.push(extra.to_owned());
        }
    }
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(MARKETO_BATCH) {
        let mut token: Option<String> = None;
        loop {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let page = ctx
                .marketo
                .get_companies(&plan.marketo_crm_key, chunk, &fields, token.as_deref())
                .await?;
            for record in &page.records {
                let raw = from_record(record);
                let Some(key) = key_text(raw.get(&plan.marketo_crm_key)) else {
                    continue;
                };
                let at = record
                    .get("updatedAt")
                    .and_then(|v| v.as_str())
                    .and_then(crate::marketo::model::parse_marketo_datetime);
                out.insert(key, (raw, at));
            }
            match page.next_page_token {
                Some(t) if page.more_result && !page.records.is_empty() => token = Some(t),
                _ => break,
            }
        }
    }
    Ok(out)
}
