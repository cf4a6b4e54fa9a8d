//! The two-way runner: the reconcile, render, write and commit stages of an object whose
//! records flow both ways or from Marketo to the CRM (companies, custom objects read from
//! Marketo). The object gathers its record pairs (each side's values read this cycle, the link
//! and its agreed values) into [`SidePair`]s; [`TwoWay::run`] does the rest:
//!
//! - **reconcile**: each pair's three values (agreed, Marketo, CRM) with
//!   [`crate::engine::reconcile`]; conflicts go to the store and the metric; a pair that writes
//!   nothing is counted skipped (or re-linked when only its agreed values moved);
//! - **render**: the writes in each side's shape, with the spec's key fields;
//! - **write**: on a dry run, one plan row per write and nothing else; else the spec's first
//!   side, then the other side for the pairs whose first write did not fail; every record is
//!   counted from its typed outcome, and a refused one is one ledger entry;
//! - **commit**: a pair's link moves only when a write landed and none failed, in the step's one
//!   [`StepCommit`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::commit::{self, error_key, ledger_entry, link};
use super::spec::TwoWaySpec;
use super::write::{CRM_ROW_BATCH, PlannedWrite, apply_marketo, planned_change};
use super::{key_text, to_record};
use crate::crm::WriteResult;
use crate::engine::ledger::{self, Failure, Subject};
use crate::engine::reconcile::{FieldRule, Reconciled, SideState, reconcile};
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{MappingError, Plan};
use crate::marketo::Record;
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, Link, StepCommit, SyncError};

/// One side's record as read this cycle.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    /// Its canonical values.
    pub canonical: Fields,
    /// Its raw values (a dry run's "before").
    pub raw: Fields,
    /// When that side last modified it, if known.
    pub modified_at: Option<DateTime<Utc>>,
}

impl Observed {
    /// Returns the record `raw` of `side` read through the plan.
    ///
    /// # Errors
    ///
    /// A value the mapping cannot read.
    pub(crate) fn read(
        plan: &Plan,
        side: Side,
        raw: Fields,
        modified_at: Option<DateTime<Utc>>,
    ) -> Result<Observed, MappingError> {
        let canonical = plan.to_canonical(side, &raw)?;
        Ok(Observed {
            canonical,
            raw,
            modified_at,
        })
    }

    fn state(&self) -> SideState<'_> {
        SideState {
            fields: &self.canonical,
            modified_at: self.modified_at,
        }
    }
}

/// What one side holds of a pair this cycle.
#[derive(Debug, Clone)]
pub(crate) enum Seen {
    /// Read this cycle.
    Read(Observed),
    /// Not read: it did not change (it holds the agreed values).
    Unchanged,
    /// The side has no such record (new on the other side, or gone).
    Missing,
}

impl Seen {
    /// Returns a side as an object's gather found it: read this cycle, else unchanged when the
    /// pair is linked, else missing.
    pub(crate) fn of(read: Option<Observed>, linked: bool) -> Seen {
        match (read, linked) {
            (Some(o), _) => Seen::Read(o),
            (None, true) => Seen::Unchanged,
            (None, false) => Seen::Missing,
        }
    }

    fn state(&self) -> Option<SideState<'_>> {
        match self {
            Seen::Read(o) => Some(o.state()),
            Seen::Unchanged | Seen::Missing => None,
        }
    }

    fn raw(&self) -> Option<&Fields> {
        match self {
            Seen::Read(o) => Some(&o.raw),
            Seen::Unchanged | Seen::Missing => None,
        }
    }

    /// Returns a raw field of the record read, as key text.
    pub(crate) fn raw_field(&self, name: &str) -> Option<String> {
        key_text(self.raw()?.get(name))
    }
}

/// One record pair gathered by an object for [`TwoWay::run`].
#[derive(Debug, Clone)]
pub(crate) struct SidePair {
    /// The Marketo key of the pair's link.
    pub marketo_key: String,
    /// The CRM key of the pair's link; `None` for a Marketo record with no CRM row yet.
    pub crm_key: Option<String>,
    /// The key its ledger entries have (see [`TwoWaySpec::ledger`]).
    pub ledger_key: String,
    /// The direction the pair was read in (its skip is counted there).
    pub read_from: Direction,
    /// The agreed values of its link; `None` when not linked.
    pub base: Option<Fields>,
    /// The Marketo side.
    pub marketo: Seen,
    /// The CRM side.
    pub crm: Seen,
    /// The Marketo fields that identify the record, sent with every Marketo write.
    pub key_fields: Fields,
    /// CRM columns sent with every CRM write of the pair (the object's hook: a custom record's
    /// contact, a new row's Marketo id).
    pub crm_extra: Fields,
}

/// One write to the CRM.
#[derive(Debug, Clone)]
pub(crate) struct CrmWrite {
    /// The row, with its key column.
    pub row: Fields,
    /// The column the upsert is keyed by.
    pub key_column: String,
    /// The row's values now (a dry run's "before"); `None` for a row the write creates.
    pub before: Option<Fields>,
}

/// What one reconciled pair writes.
#[derive(Debug, Clone)]
pub(crate) struct PairWrite {
    /// The Marketo key of the link.
    pub marketo_key: String,
    /// The CRM key of the link; `None` for a row the write creates.
    pub crm_key: Option<String>,
    /// The key of the pair's ledger entries.
    pub ledger_key: String,
    /// The Marketo write, if any.
    pub to_marketo: Option<PlannedWrite>,
    /// The CRM write, if any.
    pub to_crm: Option<CrmWrite>,
    /// The agreed values once every write landed.
    pub agreed: Fields,
}

impl PairWrite {
    /// The pair's key on the side other than its ledger key's.
    fn other_key(&self) -> Option<String> {
        if self.ledger_key == self.marketo_key {
            self.crm_key.clone()
        } else {
            Some(self.marketo_key.clone())
        }
    }
}

/// What the write stage learned, by index of the pair's write, and the step's commit.
#[derive(Default)]
struct Landed {
    /// The step's commit (ledger entries of refused writes go here).
    commit: StepCommit,
    /// A write of the pair landed.
    wrote: BTreeSet<usize>,
    /// A write of the pair failed (its ledger entry is in the commit).
    failed: BTreeSet<usize>,
    /// The ids of CRM rows created.
    created: BTreeMap<usize, String>,
}

/// How [`TwoWay::run_batched`] writes: CRM rows per write call, the step's options and its
/// cancellation.
pub(crate) struct CrmBatch<'a> {
    /// CRM rows per write call.
    pub rows: usize,
    /// The step's options (a dry run plans instead of writing).
    pub options: &'a CycleOptions,
    /// Cancels the step between write calls.
    pub cancel: &'a CancellationToken,
}

/// The two-way runner of one object's step.
pub(crate) struct TwoWay<'a> {
    /// The engine's context.
    pub ctx: &'a Context,
    /// The object's plan.
    pub plan: &'a Plan,
    /// The object's spec.
    pub spec: &'a TwoWaySpec,
    /// The object's open ledger entries by record key.
    pub previous: &'a BTreeMap<String, SyncError>,
}

/// Returns the reconcile rules of a plan's enabled, non-constant fields.
pub(crate) fn field_rules(plan: &Plan) -> Vec<FieldRule> {
    plan.enabled_fields()
        .filter(|f| f.constant.is_none())
        .map(FieldRule::of)
        .collect()
}

/// Counts a record whose other side the mapping cannot read as failed in `direction` (logged;
/// the record stays as it is until it is readable).
pub(crate) fn unreadable(
    summary: &mut CycleSummary,
    object: &str,
    direction: Direction,
    key: &str,
    error: &MappingError,
) {
    summary.counts_mut(object, direction).failed += 1;
    warn!(object, key, error = %error, "unreadable record skipped");
}

impl TwoWay<'_> {
    fn object(&self) -> &str {
        self.plan.object.as_str()
    }

    /// Returns the open ledger entry of `key` in `direction`.
    fn previous_in(&self, key: &str, direction: Direction) -> Option<&SyncError> {
        self.previous.get(key).filter(|e| e.direction == direction)
    }

    /// Reconciles, writes (or plans, on a dry run) and commits the step's pairs.
    ///
    /// # Errors
    ///
    /// A whole-call failure of the CRM, Marketo or the store, or cancellation.
    pub(crate) async fn run(
        &self,
        pairs: Vec<SidePair>,
        commit: StepCommit,
        summary: &mut CycleSummary,
        options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let batch = CrmBatch {
            rows: CRM_ROW_BATCH,
            options,
            cancel,
        };
        self.run_batched(pairs, commit, summary, &batch)
            .await
            .map(drop)
    }

    /// [`TwoWay::run`] with CRM write calls of up to `batch.rows` rows (bootstrap writes as
    /// many as the adapter takes in one transaction); returns the links the step committed (a
    /// created row's link holds its new CRM id).
    ///
    /// # Errors
    ///
    /// A whole-call failure of the CRM, Marketo or the store, or cancellation.
    pub(crate) async fn run_batched(
        &self,
        pairs: Vec<SidePair>,
        mut commit: StepCommit,
        summary: &mut CycleSummary,
        batch: &CrmBatch<'_>,
    ) -> Result<Vec<Link>, EngineError> {
        let (options, cancel) = (batch.options, batch.cancel);
        let writes = self.reconcile_pairs(pairs, &mut commit, summary);
        if options.dry_run {
            self.plan_rows(&writes, summary);
            return Ok(Vec::new());
        }
        let mut landed = Landed {
            commit,
            ..Landed::default()
        };
        let second = match self.spec.first {
            Side::Marketo => Side::Crm,
            Side::Crm => Side::Marketo,
        };
        for side in [self.spec.first, second] {
            match side {
                Side::Marketo => {
                    self.write_marketo(&writes, &mut landed, summary, cancel)
                        .await?;
                }
                Side::Crm => {
                    self.write_crm(&writes, &mut landed, summary, batch).await?;
                }
            }
        }
        self.link_landed(writes, &mut landed);
        let links = landed.commit.links_upsert.clone();
        commit::finish(self.ctx, landed.commit).await?;
        Ok(links)
    }

    /// The reconcile and render stages: returns the writes of every pair, and settles the
    /// pairs that write nothing (skipped, re-linked, waiting in the ledger).
    fn reconcile_pairs(
        &self,
        pairs: Vec<SidePair>,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
    ) -> Vec<PairWrite> {
        let rules = field_rules(self.plan);
        let no_base = Fields::new();
        let mut out = Vec::new();
        for pair in pairs {
            let write = match (&pair.marketo, &pair.crm, &pair.base) {
                (Seen::Missing, Seen::Read(c), _) => self.create_in_marketo(&pair, c, summary),
                (Seen::Missing, _, _) => None,
                (Seen::Read(m), Seen::Missing, None) => Some(self.create_in_crm(&pair, m)),
                (_, Seen::Missing, None) => None,
                (_, Seen::Missing, Some(_)) => {
                    // Gone from the CRM: the deletions step follows that.
                    summary.counts_mut(self.object(), pair.read_from).skipped += 1;
                    None
                }
                (_, _, base) => {
                    let base = base.as_ref().unwrap_or(&no_base);
                    let r = reconcile(&rules, base, pair.marketo.state(), pair.crm.state());
                    self.settle(&pair, base, r, commit, summary)
                }
            };
            out.extend(write);
        }
        out
    }

    /// Returns the Marketo record of `fields` with the pair's key fields.
    fn marketo_record(&self, fields: &Fields, pair: &SidePair) -> Record {
        let mut record = to_record(&self.plan.render(Side::Marketo, fields));
        for (k, v) in &pair.key_fields {
            record.insert(k.clone(), v.to_json());
        }
        record
    }

    /// Returns the agreed values as the spec keeps them (with `key:<field>` entries or not).
    fn with_keys(&self, fields: &Fields, pair: &SidePair) -> Fields {
        if !self.spec.keys_in_base {
            return fields.clone();
        }
        let mut base: Fields = fields
            .iter()
            .filter(|(k, _)| !k.starts_with("key:"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in &pair.key_fields {
            base.insert(format!("key:{k}"), v.clone());
        }
        base
    }

    /// True when the pair's Marketo write was refused before, unchanged since and is not due:
    /// it waits for its retry (or an operator), counted skipped.
    fn waits(&self, pair: &SidePair, record: &Record, summary: &mut CycleSummary) -> bool {
        let previous = self.previous_in(&pair.ledger_key, Direction::CrmToMarketo);
        let payload = Json::Object(record.clone());
        let waits = ledger::waits(previous, &payload, self.ctx.clock.now());
        if waits {
            summary
                .counts_mut(self.object(), Direction::CrmToMarketo)
                .skipped += 1;
        }
        waits
    }

    /// The Marketo write of a pair: the changed fields (or, for a record Marketo lacks, all).
    fn marketo_write(&self, pair: &SidePair, record: Record, base: Fields) -> PlannedWrite {
        let before = pair.marketo.raw().map(to_record);
        let key_names = if before.is_some() {
            pair.key_fields.keys().cloned().collect()
        } else {
            Vec::new()
        };
        PlannedWrite {
            crm_key: pair
                .crm_key
                .clone()
                .unwrap_or_else(|| pair.ledger_key.clone()),
            marketo_key: pair.marketo_key.clone(),
            record,
            base,
            replaces: None,
            before,
            key_names,
        }
    }

    /// A CRM record Marketo lacks (new, or gone from Marketo): the whole record is written.
    fn create_in_marketo(
        &self,
        pair: &SidePair,
        crm: &Observed,
        summary: &mut CycleSummary,
    ) -> Option<PairWrite> {
        let record = self.marketo_record(&crm.canonical, pair);
        if self.waits(pair, &record, summary) {
            return None;
        }
        let agreed = self.with_keys(&crm.canonical, pair);
        Some(PairWrite {
            marketo_key: pair.marketo_key.clone(),
            crm_key: pair.crm_key.clone(),
            ledger_key: pair.ledger_key.clone(),
            to_marketo: Some(self.marketo_write(pair, record, agreed.clone())),
            to_crm: None,
            agreed,
        })
    }

    /// A Marketo record with no CRM row: a new row, keyed by the Marketo-id column (so a re-run
    /// after a crash finds it instead of creating a second one).
    fn create_in_crm(&self, pair: &SidePair, marketo: &Observed) -> PairWrite {
        let mut row = self.plan.render(Side::Crm, &marketo.canonical);
        row.extend(pair.crm_extra.clone());
        PairWrite {
            marketo_key: pair.marketo_key.clone(),
            crm_key: None,
            ledger_key: pair.ledger_key.clone(),
            to_marketo: None,
            to_crm: Some(CrmWrite {
                row,
                key_column: self.plan.crm_marketo_id.clone(),
                before: None,
            }),
            agreed: self.with_keys(&marketo.canonical, pair),
        }
    }

    /// Records the pair's conflicts, settles a pair that writes nothing, and returns the writes
    /// of the others.
    fn settle(
        &self,
        pair: &SidePair,
        base: &Fields,
        r: Reconciled,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
    ) -> Option<PairWrite> {
        let (object, now) = (self.object(), self.ctx.clock.now());
        let crm_key = pair.crm_key.clone().unwrap_or_default();
        for c in &r.conflicts {
            let direction = match c.winner {
                Side::Crm => Direction::CrmToMarketo,
                Side::Marketo => Direction::MarketoToCrm,
            };
            summary.counts_mut(object, direction).conflicts += 1;
            let record = c.record(object, &pair.marketo_key, &crm_key, now);
            commit.conflicts.push(record);
        }
        let mut crm_row = self.plan.render(Side::Crm, &r.to_crm);
        crm_row.extend(pair.crm_extra.clone());
        let agreed = self.with_keys(&r.agreed(base), pair);
        if crm_row.is_empty() && r.to_marketo.is_empty() {
            if agreed == *base {
                summary.counts_mut(object, pair.read_from).skipped += 1;
                if self
                    .previous_in(&pair.ledger_key, self.spec.ledger)
                    .is_some()
                {
                    let key = error_key(object, self.spec.ledger, &pair.ledger_key);
                    commit.errors_resolve.push(key);
                }
            } else {
                let moved = link(object, &pair.marketo_key, &crm_key, agreed, now);
                commit.links_upsert.push(moved);
            }
            return None;
        }
        let mut to_marketo = None;
        if !r.to_marketo.is_empty() {
            let record = self.marketo_record(&r.to_marketo, pair);
            if self.waits(pair, &record, summary) {
                return None;
            }
            to_marketo = Some(self.marketo_write(pair, record, agreed.clone()));
        }
        let to_crm = (!crm_row.is_empty()).then(|| self.crm_update(pair, base, crm_row));
        Some(PairWrite {
            marketo_key: pair.marketo_key.clone(),
            crm_key: pair.crm_key.clone(),
            ledger_key: pair.ledger_key.clone(),
            to_marketo,
            to_crm,
            agreed,
        })
    }

    /// The CRM update of a linked row, keyed by the spec's update column.
    fn crm_update(&self, pair: &SidePair, base: &Fields, mut row: Fields) -> CrmWrite {
        let column = self.spec.update_key.clone();
        let key = if column == self.plan.crm_marketo_id {
            pair.marketo_key.clone()
        } else {
            pair.crm_key.clone().unwrap_or_default()
        };
        row.insert(column.clone(), Value::Text(key));
        let before = match pair.crm.raw() {
            Some(raw) => raw.clone(),
            None => self.plan.render(Side::Crm, base),
        };
        CrmWrite {
            row,
            key_column: column,
            before: Some(before),
        }
    }

    /// The dry run's write stage: one plan row per write, nothing written.
    fn plan_rows(&self, writes: &[PairWrite], summary: &mut CycleSummary) {
        let object = self.object();
        let direction = Direction::MarketoToCrm;
        for w in writes {
            if let Some(m) = &w.to_marketo {
                summary.planned(planned_change(object, Direction::CrmToMarketo, m));
            }
            let Some(c) = &w.to_crm else { continue };
            let row = to_record(&c.row);
            let change = match (&c.before, &w.crm_key) {
                (Some(before), Some(crm_key)) => {
                    PlannedChange::new(object, direction, PlannedAction::Update)
                        .target(crm_key.clone())
                        .fields(&row, Some(&to_record(before)), &[c.key_column.as_str()])
                }
                _ => PlannedChange::new(object, direction, PlannedAction::Create).fields(
                    &row,
                    None,
                    &[],
                ),
            };
            summary.planned(change.source(w.marketo_key.clone()));
        }
    }

    /// Writes the pairs' Marketo records (those whose CRM write did not fail) and notes which
    /// landed and which were refused.
    async fn write_marketo(
        &self,
        writes: &[PairWrite],
        landed: &mut Landed,
        summary: &mut CycleSummary,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let mut by_crm: BTreeMap<String, usize> = BTreeMap::new();
        let mut planned = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            if let Some(m) = w
                .to_marketo
                .as_ref()
                .filter(|_| !landed.failed.contains(&i))
            {
                by_crm.insert(m.crm_key.clone(), i);
                planned.push(m.clone());
            }
        }
        if planned.is_empty() {
            return Ok(());
        }
        // The push direction's open entries only (a Marketo write is keyed by its CRM key).
        let previous: BTreeMap<String, SyncError> = self
            .previous
            .iter()
            .filter(|(_, e)| e.direction == Direction::CrmToMarketo)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let mut scratch = StepCommit::default();
        let (ctx, family) = (self.ctx, &self.spec.family);
        apply_marketo(
            ctx,
            self.object(),
            family,
            planned,
            &previous,
            &mut scratch,
            summary,
            cancel,
        )
        .await?;
        for l in &scratch.links_upsert {
            landed.wrote.extend(by_crm.get(&l.crm_key).copied());
        }
        for e in &scratch.errors_upsert {
            landed.failed.extend(by_crm.get(&e.record_key).copied());
        }
        landed.commit.errors_upsert.extend(scratch.errors_upsert);
        landed.commit.errors_resolve.extend(scratch.errors_resolve);
        Ok(())
    }

    /// Writes the pairs' CRM rows (those whose Marketo write did not fail) through the CRM
    /// adapter, in batches per key column, and notes which landed and which were refused.
    async fn write_crm(
        &self,
        writes: &[PairWrite],
        landed: &mut Landed,
        summary: &mut CycleSummary,
        batch: &CrmBatch<'_>,
    ) -> Result<(), EngineError> {
        let cancel = batch.cancel;
        let wanted: Vec<usize> = (0..writes.len())
            .filter(|i| writes[*i].to_crm.is_some() && !landed.failed.contains(i))
            .collect();
        let unstamped = self.unstamped(writes, &wanted).await?;
        let mut by_column: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for i in wanted {
            let w = &writes[i];
            let Some(c) = &w.to_crm else { continue };
            if unstamped.contains(&i) {
                let message = format!(
                    "the crm record does not hold its marketo key in `{}`, so it cannot be \
                     updated by it",
                    self.plan.crm_marketo_id
                );
                let failure = Failure::new("crm_key_missing", message, false);
                self.refuse_crm(w, failure, &mut landed.commit, summary);
                landed.failed.insert(i);
                continue;
            }
            by_column.entry(c.key_column.as_str()).or_default().push(i);
        }
        for (column, indexes) in by_column {
            for chunk in indexes.chunks(batch.rows.max(1)) {
                if cancel.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                let rows: Vec<Fields> = chunk
                    .iter()
                    .filter_map(|i| writes[*i].to_crm.as_ref().map(|c| c.row.clone()))
                    .collect();
                let crm_object = &self.plan.crm_object;
                let results = self.ctx.crm.upsert(crm_object, column, &rows).await?;
                for (i, result) in chunk.iter().zip(results) {
                    self.crm_outcome(*i, &writes[*i], result, landed, summary);
                }
            }
        }
        Ok(())
    }

    /// Counts one CRM write from its typed outcome; a refused row is one ledger entry.
    fn crm_outcome(
        &self,
        i: usize,
        w: &PairWrite,
        result: WriteResult,
        landed: &mut Landed,
        summary: &mut CycleSummary,
    ) {
        let counts = summary.counts_mut(self.object(), Direction::MarketoToCrm);
        match result {
            WriteResult::Created { id } | WriteResult::Updated { id } => {
                if w.crm_key.is_none() {
                    counts.created += 1;
                    landed.created.insert(i, id);
                } else {
                    counts.updated += 1;
                }
                landed.wrote.insert(i);
            }
            WriteResult::Deleted { .. } => {}
            WriteResult::Refused(refusal) => {
                landed.failed.insert(i);
                self.refuse_crm(w, Failure::from(&refusal), &mut landed.commit, summary);
            }
        }
    }

    /// Puts a CRM write the CRM (or the engine) refused in the ledger, counted failed.
    fn refuse_crm(
        &self,
        w: &PairWrite,
        failure: Failure,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
    ) {
        let object = self.object();
        let direction = Direction::MarketoToCrm;
        summary.counts_mut(object, direction).failed += 1;
        warn!(object, key = %w.ledger_key, code = %failure.code, "crm refused a record");
        let payload = w.to_crm.as_ref().map(|c| to_record(&c.row));
        let subject = Subject {
            object,
            direction,
            record_key: &w.ledger_key,
            other_key: w.other_key(),
            payload: Json::Object(payload.unwrap_or_default()),
        };
        let previous = self.previous_in(&w.ledger_key, direction);
        let entry = ledger_entry(self.ctx, subject, failure, previous);
        commit.errors_upsert.push(entry);
    }

    /// Returns the updates keyed by the Marketo-id column whose CRM row does not hold its
    /// Marketo key there: an upsert by that column would insert a second row instead.
    ///
    /// # Errors
    ///
    /// A CRM failure.
    async fn unstamped(
        &self,
        writes: &[PairWrite],
        wanted: &[usize],
    ) -> Result<BTreeSet<usize>, EngineError> {
        let column = self.plan.crm_marketo_id.as_str();
        let mut by_crm: BTreeMap<String, usize> = BTreeMap::new();
        for i in wanted {
            let w = &writes[*i];
            if let (Some(c), Some(crm_key)) = (&w.to_crm, &w.crm_key)
                && c.key_column == column
            {
                by_crm.insert(crm_key.clone(), *i);
            }
        }
        let ids: Vec<String> = by_crm.keys().cloned().collect();
        for chunk in ids.chunks(CRM_ROW_BATCH) {
            for record in self.ctx.crm.get(&self.plan.crm_object, chunk).await? {
                let carried = key_text(record.fields.get(column));
                if let Some(i) = by_crm.get(&record.id)
                    && carried.as_deref() == Some(writes[*i].marketo_key.as_str())
                {
                    by_crm.remove(&record.id);
                }
            }
        }
        Ok(by_crm.into_values().collect())
    }

    /// The commit stage of the written pairs: a pair whose writes all landed (at least one) is
    /// linked at its agreed values, and its open ledger entry resolved.
    fn link_landed(&self, writes: Vec<PairWrite>, landed: &mut Landed) {
        let (object, now) = (self.object(), self.ctx.clock.now());
        for (i, w) in writes.into_iter().enumerate() {
            if landed.failed.contains(&i) || !landed.wrote.contains(&i) {
                continue;
            }
            let Some(crm_key) = landed.created.get(&i).cloned().or(w.crm_key) else {
                continue;
            };
            if self.previous_in(&w.ledger_key, self.spec.ledger).is_some() {
                let key = error_key(object, self.spec.ledger, &w.ledger_key);
                landed.commit.errors_resolve.push(key);
            }
            let agreed = link(object, &w.marketo_key, &crm_key, w.agreed, now);
            landed.commit.links_upsert.push(agreed);
        }
    }
}
