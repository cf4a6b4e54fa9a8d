//! The two-way runner: the reconcile, render, write and commit stages of an object whose
//! records flow both ways or from Marketo to the CRM (leads, companies, programs, list and
//! program members, custom objects read from Marketo). The object gathers its record pairs
//! (each side's values read this cycle, the link and its agreed values) into [`SidePair`]s;
//! [`TwoWay::run`] does the rest:
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
//!
//! An object whose Marketo records are not an object family (leads) writes them through a
//! [`MarketoSide`] hook instead: the hook owns the wire (creates by the CRM-key field, updates by
//! id, company routing), and the runner carries a key Marketo made on a create into the CRM row
//! of the pair, keeps the pair's ledger entries per side, and hands back what only the object
//! can settle ([`Settled`]: records gone from either side, the CRM rows created).

mod pairs;
mod side;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub(crate) use pairs::{CrmWrite, Observed, PairWrite, Seen, SidePair};
pub(crate) use side::{MarketoOutcome, MarketoSide, MarketoWrite, Settled};
use side::{PairKeys, marketo_write_of, side_change};

use super::commit::{self, error_key, ledger_entry, link};
use super::spec::TwoWaySpec;
use super::write::{CRM_ROW_BATCH, PlannedWrite, apply_marketo, planned_change};
use super::{key_text, to_record};
use crate::crm::{RefusalReason, WriteResult};
use crate::engine::ledger::{self, Failure, Subject};
use crate::engine::reconcile::{FieldRule, Reconciled, reconcile};
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{MappingError, Plan};
use crate::marketo::Record;
use crate::model::{Fields, Side, Value};
use crate::store::{Direction, Link, StepCommit, SyncError};

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
    /// The keys Marketo gave records it created (through a [`MarketoSide`]).
    marketo_keys: BTreeMap<usize, String>,
    /// What the object settles.
    settled: Settled,
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
    /// The object's own Marketo side, when its records are not an object family (leads).
    pub marketo: Option<&'a dyn MarketoSide>,
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

/// Returns the Marketo writes still due, by index: those of pairs none of whose writes failed.
fn marketo_due<'a>(
    writes: &'a [PairWrite],
    landed: &'a Landed,
) -> impl Iterator<Item = (usize, &'a PairWrite, &'a PlannedWrite)> + 'a {
    writes.iter().enumerate().filter_map(|(i, w)| {
        let m = w.to_marketo.as_ref()?;
        (!landed.failed.contains(&i)).then_some((i, w, m))
    })
}

impl TwoWay<'_> {
    fn object(&self) -> &str {
        self.plan.object.as_str()
    }

    /// Returns the open ledger entry of `key` in `direction`.
    fn previous_in(&self, key: &str, direction: Direction) -> Option<&SyncError> {
        match self.marketo {
            Some(side) => side.open(direction, key),
            None => self.previous.get(key).filter(|e| e.direction == direction),
        }
    }

    /// True when the pair's ledger entries are kept per side (see [`MarketoSide`]).
    fn per_side(&self) -> bool {
        self.marketo.is_some()
    }

    /// Returns the key of a ledger entry in `direction` of the pair with these keys.
    fn key(&self, keys: &PairKeys<'_>, direction: Direction) -> String {
        keys.key_in(self.per_side(), direction)
    }

    /// Resolves the open entries of a settled pair: the ledger direction's, or, kept per side,
    /// both.
    fn resolve(&self, keys: &PairKeys<'_>, commit: &mut StepCommit) {
        let directions = if self.per_side() {
            vec![Direction::CrmToMarketo, Direction::MarketoToCrm]
        } else {
            vec![self.spec.ledger]
        };
        for direction in directions {
            let key = self.key(keys, direction);
            if self.previous_in(&key, direction).is_some() {
                let resolved = error_key(self.object(), direction, &key);
                commit.errors_resolve.push(resolved);
            }
        }
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
        let settled = self.run_into(pairs, &mut commit, summary, batch).await?;
        // A dry run commits nothing (its watermarks included).
        if !batch.options.dry_run {
            commit::finish(self.ctx, commit).await?;
        }
        Ok(settled.links)
    }

    /// The stages of [`TwoWay::run_batched`] without the commit: the step's store writes go into
    /// `commit` (the object commits them with its own, in one transaction), and what only the
    /// object can settle comes back.
    ///
    /// # Errors
    ///
    /// A whole-call failure of the CRM, Marketo or the store, or cancellation.
    pub(crate) async fn run_into(
        &self,
        pairs: Vec<SidePair>,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
        batch: &CrmBatch<'_>,
    ) -> Result<Settled, EngineError> {
        let (options, cancel) = (batch.options, batch.cancel);
        let mut writes = self.reconcile_pairs(pairs, commit, summary, options.dry_run);
        if options.dry_run {
            self.plan_rows(&writes, summary).await?;
            return Ok(Settled::default());
        }
        let mut landed = Landed {
            commit: std::mem::take(commit),
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
                    self.stamp_new_keys(&mut writes, &landed);
                }
                Side::Crm => {
                    self.write_crm(&writes, &mut landed, summary, batch).await?;
                }
            }
        }
        self.link_landed(writes, &mut landed);
        landed.settled.links = landed.commit.links_upsert.clone();
        *commit = landed.commit;
        Ok(landed.settled)
    }

    /// Carries each key Marketo gave a record it created into the pair's write: the link's
    /// Marketo key, and the CRM row's Marketo-id column (a row updated by its own key; one
    /// keyed by the Marketo-id column gets it from its key).
    fn stamp_new_keys(&self, writes: &mut [PairWrite], landed: &Landed) {
        let column = &self.plan.crm_marketo_id;
        for (i, key) in &landed.marketo_keys {
            let w = &mut writes[*i];
            w.marketo_key.clone_from(key);
            let Some(crm_key) = &w.crm_key else { continue };
            if self.spec.update_key == *column {
                continue;
            }
            let update_key = &self.spec.update_key;
            let write = w.to_crm.get_or_insert_with(|| {
                let mut row = Fields::new();
                row.insert(update_key.clone(), Value::Text(crm_key.clone()));
                CrmWrite {
                    row,
                    key_column: update_key.clone(),
                    before: Some(Fields::new()),
                }
            });
            write.row.insert(column.clone(), Value::Text(key.clone()));
        }
    }

    /// The reconcile and render stages: returns the writes of every pair, and settles the
    /// pairs that write nothing (skipped, re-linked, waiting in the ledger).
    fn reconcile_pairs(
        &self,
        pairs: Vec<SidePair>,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
        dry_run: bool,
    ) -> Vec<PairWrite> {
        let rules = field_rules(self.plan);
        let no_base = Fields::new();
        let mut out = Vec::new();
        for pair in pairs {
            let write = match (&pair.marketo, &pair.crm, &pair.base) {
                (Seen::Missing, Seen::Read(c), _) => {
                    let (values, agreed) = self.created(&rules, Side::Crm, c);
                    self.create_in_marketo(&pair, &values, agreed, summary, dry_run)
                }
                (Seen::Missing, _, _) => None,
                (Seen::Read(m), Seen::Missing, None) => {
                    let (values, agreed) = self.created(&rules, Side::Marketo, m);
                    Some(self.create_in_crm(&pair, &values, agreed))
                }
                (_, Seen::Missing, None) => None,
                (_, Seen::Missing, Some(_)) => {
                    // Gone from the CRM: the deletions step follows that.
                    summary.counts_mut(self.object(), pair.read_from).skipped += 1;
                    None
                }
                (_, _, base) => {
                    let base = base.as_ref().unwrap_or(&no_base);
                    let r = reconcile(&rules, base, pair.marketo.state(), pair.crm.state());
                    self.settle(&pair, base, r, commit, summary, dry_run)
                }
            };
            out.extend(write);
        }
        out
    }

    /// Returns what a create writes of a record read on side `from` and the values agreed once
    /// it landed: every value but the nulls (an object family's record is whole), or, through
    /// a [`MarketoSide`] (leads), what reconciling it against no agreed values writes. Either
    /// way a null is not written: the new record keeps its own default (an explicit null
    /// would override a CRM column's `DEFAULT`, and be refused by a `NOT NULL` one).
    fn created(&self, rules: &[FieldRule], from: Side, read: &Observed) -> (Fields, Fields) {
        if !self.per_side() {
            let values = read
                .canonical
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            return (values, read.canonical.clone());
        }
        let none = Fields::new();
        let r = match from {
            Side::Marketo => reconcile(rules, &none, Some(read.state()), None),
            Side::Crm => reconcile(rules, &none, None, Some(read.state())),
        };
        let agreed = r.agreed(&none);
        match from {
            Side::Marketo => (r.to_crm, agreed),
            Side::Crm => (r.to_marketo, agreed),
        }
    }

    /// Returns the Marketo record of `fields` with the pair's key fields.
    fn marketo_record(&self, fields: &Fields, pair: &SidePair) -> Record {
        let mut record = to_record(&self.plan.render(Side::Marketo, fields));
        for (k, v) in pair.marketo_extra.iter().chain(&pair.key_fields) {
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
        let key = self.key(&pair.keys(), Direction::CrmToMarketo);
        let previous = self.previous_in(&key, Direction::CrmToMarketo);
        let payload = Json::Object(record.clone());
        let waits = ledger::waits(previous, &payload, self.ctx.clock.now());
        if waits {
            summary
                .counts_mut(self.object(), Direction::CrmToMarketo)
                .skipped += 1;
        }
        waits
    }

    /// The Marketo write of a pair: the changed fields (or, for a record Marketo lacks, all);
    /// on a dry run, with the record's values now.
    fn marketo_write(
        &self,
        pair: &SidePair,
        record: Record,
        base: Fields,
        dry_run: bool,
    ) -> PlannedWrite {
        let mut before = pair.marketo.raw().filter(|_| dry_run).map(to_record);
        if dry_run
            && self.per_side()
            && before.is_none()
            && let (Seen::Unchanged, Some(agreed)) = (&pair.marketo, &pair.base)
        {
            // Not read: it holds the agreed values.
            before = Some(to_record(&self.plan.render(Side::Marketo, agreed)));
        }
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
        values: &Fields,
        agreed: Fields,
        summary: &mut CycleSummary,
        dry_run: bool,
    ) -> Option<PairWrite> {
        let record = self.marketo_record(values, pair);
        if self.waits(pair, &record, summary) {
            return None;
        }
        let agreed = self.with_keys(&agreed, pair);
        Some(PairWrite {
            marketo_key: pair.marketo_key.clone(),
            crm_key: pair.crm_key.clone(),
            ledger_key: pair.ledger_key.clone(),
            to_marketo: Some(self.marketo_write(pair, record, agreed.clone(), dry_run)),
            marketo_create: true,
            linked: pair.base.is_some(),
            to_crm: None,
            agreed,
        })
    }

    /// A Marketo record with no CRM row: a new row, keyed by the Marketo-id column (so a re-run
    /// after a crash finds it instead of creating a second one).
    fn create_in_crm(&self, pair: &SidePair, values: &Fields, agreed: Fields) -> PairWrite {
        let mut row = self.plan.render(Side::Crm, values);
        row.extend(pair.crm_extra.clone());
        PairWrite {
            marketo_key: pair.marketo_key.clone(),
            crm_key: None,
            ledger_key: pair.ledger_key.clone(),
            to_marketo: None,
            marketo_create: false,
            linked: false,
            to_crm: Some(CrmWrite {
                row,
                key_column: self.plan.crm_marketo_id.clone(),
                before: None,
            }),
            agreed: self.with_keys(&agreed, pair),
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
        dry_run: bool,
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
        let marketo_writes = !r.to_marketo.is_empty() || !pair.marketo_extra.is_empty();
        if crm_row.is_empty() && !marketo_writes {
            let same = agreed == *base;
            if same {
                summary.counts_mut(object, pair.read_from).skipped += 1;
            } else {
                let moved = link(object, &pair.marketo_key, &crm_key, agreed, now);
                commit.links_upsert.push(moved);
            }
            if same || self.per_side() {
                self.resolve(&pair.keys(), commit);
            }
            return None;
        }
        let mut to_marketo = None;
        if marketo_writes {
            let record = self.marketo_record(&r.to_marketo, pair);
            if self.waits(pair, &record, summary) {
                return None;
            }
            to_marketo = Some(self.marketo_write(pair, record, agreed.clone(), dry_run));
        }
        let to_crm = (!crm_row.is_empty()).then(|| self.crm_update(pair, base, crm_row, dry_run));
        Some(PairWrite {
            marketo_key: pair.marketo_key.clone(),
            crm_key: pair.crm_key.clone(),
            ledger_key: pair.ledger_key.clone(),
            to_marketo,
            marketo_create: false,
            linked: pair.base.is_some(),
            to_crm,
            agreed,
        })
    }

    /// The CRM update of a linked row, keyed by the spec's update column; on a dry run, with the
    /// row's values now.
    fn crm_update(
        &self,
        pair: &SidePair,
        base: &Fields,
        mut row: Fields,
        dry_run: bool,
    ) -> CrmWrite {
        let column = self.spec.update_key.clone();
        let key = if column == self.plan.crm_marketo_id {
            pair.marketo_key.clone()
        } else {
            pair.crm_key.clone().unwrap_or_default()
        };
        row.insert(column.clone(), Value::Text(key));
        let before = match pair.crm.raw() {
            _ if !dry_run => Fields::new(),
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
    async fn plan_rows(
        &self,
        writes: &[PairWrite],
        summary: &mut CycleSummary,
    ) -> Result<(), EngineError> {
        let object = self.object();
        let direction = Direction::MarketoToCrm;
        let mut notes = self.marketo_notes(writes).await?.into_iter();
        for w in writes {
            if let Some(m) = &w.to_marketo {
                let change = match self.marketo {
                    None => planned_change(object, Direction::CrmToMarketo, m),
                    Some(_) => side_change(object, w, m, notes.next().flatten()),
                };
                summary.planned(change);
            }
            let Some(c) = &w.to_crm else { continue };
            let row = to_record(&c.row);
            let change = match (&c.before, &w.crm_key) {
                (Some(before), Some(crm_key)) => {
                    PlannedChange::new(object, direction, PlannedAction::Update)
                        .target(crm_key.clone())
                        .fields(&row, Some(&to_record(before)), &[c.key_column.as_str()])
                }
                _ => {
                    let change = PlannedChange::new(object, direction, PlannedAction::Create)
                        .fields(&row, None, &[]);
                    match self.marketo.and_then(|side| side.crm_create_note()) {
                        Some(note) => change.note(note),
                        None => change,
                    }
                }
            };
            summary.planned(change.source(w.marketo_key.clone()));
        }
        Ok(())
    }

    /// Returns a dry run's note of each Marketo write, from the [`MarketoSide`] hook (none
    /// without one).
    async fn marketo_notes(
        &self,
        writes: &[PairWrite],
    ) -> Result<Vec<Option<String>>, EngineError> {
        let Some(side) = self.marketo else {
            return Ok(Vec::new());
        };
        let sent: Vec<MarketoWrite<'_>> = writes
            .iter()
            .filter_map(|w| Some(marketo_write_of(w, w.to_marketo.as_ref()?)))
            .collect();
        if sent.is_empty() {
            return Ok(Vec::new());
        }
        side.notes(&sent).await
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
        if let Some(side) = self.marketo {
            return self.write_side(side, writes, landed, summary, cancel).await;
        }
        let mut by_crm: BTreeMap<String, usize> = BTreeMap::new();
        let mut planned = Vec::new();
        for (i, _, m) in marketo_due(writes, landed) {
            by_crm.insert(m.crm_key.clone(), i);
            planned.push(m.clone());
        }
        if planned.is_empty() {
            return Ok(());
        }
        let Some(family) = &self.spec.family else {
            let object = self.object();
            return Err(EngineError::Config(format!(
                "`{object}` has neither a marketo object family nor a marketo side to write to"
            )));
        };
        // The push direction's open entries only (a Marketo write is keyed by its CRM key).
        let previous: BTreeMap<String, SyncError> = self
            .previous
            .iter()
            .filter(|(_, e)| e.direction == Direction::CrmToMarketo)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let mut scratch = StepCommit::default();
        let ctx = self.ctx;
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

    /// [`TwoWay::write_marketo`] through the object's [`MarketoSide`]: every record is counted
    /// from its typed outcome, a refused one is one ledger entry, a created one's key is kept
    /// for its link and CRM row, and a linked one gone from Marketo is handed to the object.
    async fn write_side(
        &self,
        side: &dyn MarketoSide,
        writes: &[PairWrite],
        landed: &mut Landed,
        summary: &mut CycleSummary,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let (object, direction) = (self.object(), Direction::CrmToMarketo);
        let mut sent = Vec::new();
        let mut indexes = Vec::new();
        for (i, w, m) in marketo_due(writes, landed) {
            sent.push(marketo_write_of(w, m));
            indexes.push(i);
        }
        if sent.is_empty() {
            return Ok(());
        }
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let outcomes = side.write(&sent, cancel).await?;
        for (i, outcome) in indexes.into_iter().zip(outcomes) {
            let (w, counts) = (&writes[i], summary.counts_mut(object, direction));
            match outcome {
                MarketoOutcome::Created { key } => {
                    counts.created += 1;
                    landed.wrote.insert(i);
                    landed.marketo_keys.insert(i, key);
                }
                MarketoOutcome::Updated if w.marketo_create => {
                    // Found by its key: which record it is shows on a later cycle.
                    counts.updated += 1;
                    landed.failed.insert(i);
                }
                MarketoOutcome::Updated => {
                    counts.updated += 1;
                    landed.wrote.insert(i);
                }
                MarketoOutcome::Gone => {
                    landed.failed.insert(i);
                    landed.settled.gone_marketo.push(w.marketo_key.clone());
                }
                MarketoOutcome::Refused { failure, payload } => {
                    counts.failed += 1;
                    landed.failed.insert(i);
                    let key = self.key(&w.keys(), direction);
                    warn!(object, key = %key, code = %failure.code, "marketo refused a record");
                    let record = w.to_marketo.as_ref().map(|m| m.record.clone());
                    let subject = Subject {
                        object,
                        direction,
                        record_key: &key,
                        other_key: (!w.marketo_key.is_empty()).then(|| w.marketo_key.clone()),
                        payload: payload.unwrap_or(Json::Object(record.unwrap_or_default())),
                    };
                    let previous = self.previous_in(&key, direction);
                    let entry = ledger_entry(self.ctx, subject, failure, previous);
                    landed.commit.errors_upsert.push(entry);
                }
            }
        }
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
            // The row holding this Marketo key was deleted in the CRM (its link was lost, say
            // by a crash before the commit): the object follows its delete policy instead of
            // writing into a dead row.
            WriteResult::Refused(refusal)
                if self.per_side()
                    && w.crm_key.is_none()
                    && refusal.reason == RefusalReason::Deleted =>
            {
                landed.failed.insert(i);
                landed.settled.gone_crm.push(w.marketo_key.clone());
            }
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
        let key = self.key(&w.keys(), direction);
        warn!(object, key = %key, code = %failure.code, "crm refused a record");
        let payload = w.to_crm.as_ref().map(|c| to_record(&c.row));
        let other_key = if self.per_side() {
            w.crm_key.clone()
        } else {
            w.other_key()
        };
        let subject = Subject {
            object,
            direction,
            record_key: &key,
            other_key,
            payload: Json::Object(payload.unwrap_or_default()),
        };
        let previous = self.previous_in(&key, direction);
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
            let created = landed.created.get(&i).cloned();
            let Some(crm_key) = created.clone().or_else(|| w.crm_key.clone()) else {
                continue;
            };
            if let Some(id) = created {
                let made = (w.marketo_key.clone(), id);
                landed.settled.created.push(made);
            }
            let keys = PairKeys {
                crm: Some(&crm_key),
                ..w.keys()
            };
            self.resolve(&keys, &mut landed.commit);
            let agreed = link(object, &w.marketo_key, &crm_key, w.agreed, now);
            landed.commit.links_upsert.push(agreed);
        }
    }
}
