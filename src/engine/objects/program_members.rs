//! Program membership <-> a CRM campaign member table.
//!
//! A pair is one lead in one program, keyed `<programId>:<leadId>` (the link's Marketo key and
//! the value of the CRM's Marketo-id column); its CRM row points at the lead's contact and the
//! program's campaign row through the synthetic source fields `crmContactId` and
//! `crmCampaignId` (see [`crate::mapping::programs`]). Only members of programs the programs
//! step linked are synced, so the programs mapping's selection applies to members too.
//!
//! Marketo -> CRM, incrementally at no extra call on an idle cycle: the lead step's activity read
//! carries Change Status in Progression (104, primary attribute = the program) as a feed rider
//! ([`super::feed_riders`]); this step takes the pending (lead, program) pairs and reads those
//! members, 300 leads a call per program (`filterType=leadId`), for their status, success and
//! its date, membership date, acquiredBy, nurture fields and custom member fields. A program
//! linked for the first time is read whole once (its members by every status of its channel;
//! members whose lead is not in the CRM are left out, while a member changed since whose lead
//! has no CRM contact yet waits in the error ledger).
//!
//! CRM -> Marketo: a changed status on a CRM row (from the CRM change feed) is written by
//! Change Lead Program Status, one call per (program, status) and 300 leads
//! ([`ObjectFamily::ProgramMembers`]); a row for a lead that is not a member yet makes it one.
//!
//! Bootstrap and repair ([`read_pass`]): the activity feed carries no event for a member removed
//! from a program in Marketo, so a *pass* reads every linked program's members with the
//! members query and applies them like the cycle does (same plan, pairs and two-way runner, so
//! the links hold the agreed state and the next cycle finds nothing to do). A full pass reads by
//! `statusName` with every status of every channel, 300 members a call: the fewest
//! calls for a full read (one per 300 members and at least one per program, where `updatedAt`
//! ranges cost one call per 7 days of history, about 52 a year per program, empty or not, and
//! cannot see a member that is gone). A full pass removes the CRM row of every linked member
//! the program no longer has (the CRM adapter's delete: the object's soft delete where it has
//! one, e.g. `deleted = true`) and tombstones its link. A pass that reads only the members
//! changed since an instant (`bootstrap --since`) uses `updatedAt` ranges of at most 7 days
//! (Marketo refuses longer ones) and removes nothing. A pass is journalled per program
//! (watermark queue [`PASS_QUEUE`]): a restarted one skips the programs it finished.
//! Full passes run from `marketo-sync bootstrap` and, every `sync.program_members_repair_hours`
//! (default 24, 0 = never), from the cycle's step.
//!
//! Statuses are translated by the mapping's status map (the canonical value is the Marketo
//! status); a status the map does not know, on either side, is one ledger entry (it waits for
//! the record to change), never a failed cycle. Marketo refusing a status (1025) is one too.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    CRM_ROW_BATCH, ObjectFamily, error_key, feed_riders, from_record, ledger_entry, programs,
    record_invalid_value,
};
use crate::config::StatusMapping;
use crate::crm::{Change, ChangeKind};
use crate::engine::ledger::{Failure, Subject};
use crate::engine::pipeline::commit;
use crate::engine::pipeline::gather::{crm_with_retries, open_errors};
use crate::engine::pipeline::pair::{contacts_by_lead, lead_ids_by_contact, links_by_crm};
use crate::engine::pipeline::spec::TwoWaySpec;
use crate::engine::pipeline::two_way::{Observed, Seen, SidePair, TwoWay};
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::programs::{
    CRM_CAMPAIGN_FIELD, CRM_CONTACT_FIELD, PROGRAM_NAME_FIELD, STATUS_FIELD, StatusMap,
};
use crate::mapping::{Plan, Plans};
use crate::marketo::Record;
use crate::marketo::programs::{Channel, members_updated_ranges};
use crate::model::{Fields, ObjectSchema, Side, Value};
use crate::store::{Direction, Link, StepCommit, SyncError, Tombstone, TombstoneKind, Watermark};

/// The step's name (timings, warnings).
pub const OBJECT: &str = "program_members";
/// Change Status in Progression, the activity type of a membership change (a feed rider).
pub const CHANGE_STATUS_IN_PROGRESSION: i64 = 104;
/// The ledger code of a status the status map does not know.
pub const UNKNOWN_STATUS: &str = "unknown_status";
/// Leads per members query (Marketo takes 300 filter values).
const QUERY_BATCH: usize = 300;
/// The watermark queue journalling a pass: `at` is when it started, the cursor holds what it
/// reads and the programs it finished.
pub const PASS_QUEUE: &str = "pass";
/// The watermark queue of the last full pass (the repair interval counts from it).
pub const REPAIR_QUEUE: &str = "repair";
/// The ledger code of a CRM row a repair could not remove.
pub const REMOVE_REFUSED: &str = "remove_refused";
/// Links read per store page while looking for members that are gone.
const LINKS_PAGE: u32 = 500;

/// Returns the plan of the program members mapping, if one is synced.
pub fn plan_of(plans: &Plans) -> Option<&Plan> {
    plans
        .objects
        .values()
        .find(|p| p.kind() == crate::mapping::MarketoKind::ProgramMember)
}

/// Returns the Marketo key of a member.
pub fn member_key(program: i64, lead: i64) -> String {
    format!("{program}:{lead}")
}

/// Returns (program, lead) of a member key.
pub fn parse_key(key: &str) -> Option<(i64, i64)> {
    let (p, l) = key.split_once(':')?;
    Some((p.parse().ok()?, l.parse().ok()?))
}

/// A program whose members sync: its CRM campaign row and what its status map needs.
#[derive(Debug, Clone)]
struct Linked {
    crm_key: String,
    name: String,
    channel: Option<String>,
}

/// The step's view of the mapping: the plans, the status map entries and the CRM columns of
/// the synthetic fields.
struct Member<'a> {
    ctx: &'a Context,
    plan: &'a Plan,
    programs_object: &'a str,
    statuses: Vec<StatusMapping>,
    dry_run: bool,
}

/// Returns the canonical name of the field mapped to the Marketo field `marketo`.
fn canonical_of<'p>(plan: &'p Plan, marketo: &str) -> Option<&'p str> {
    plan.enabled_fields()
        .find(|f| f.marketo.as_deref() == Some(marketo))
        .map(|f| f.name.as_str())
}

/// Syncs program membership both ways (see the module documentation). Does nothing when no
/// program members mapping is synced; warns when the programs mapping is not synced with it.
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
    let Some((step, programs_plan)) = Member::of(ctx, plans, summary, options) else {
        return Ok(());
    };
    step.run(programs_plan, summary, options, cancel).await?;
    step.repair_if_due(programs_plan, summary, options, cancel)
        .await
}

/// What a pass reads of each program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRead {
    /// Every member (by `statusName`, every status of every channel); members linked before
    /// that Marketo no longer has are removed from the CRM.
    Full,
    /// The members changed since this instant (by `updatedAt`, ranges of at most 7 days);
    /// nothing is removed.
    ChangedSince(DateTime<Utc>),
}

impl MemberRead {
    /// The journal's name of the read (a restarted pass resumes only the same read).
    fn tag(self) -> String {
        match self {
            MemberRead::Full => "full".to_owned(),
            MemberRead::ChangedSince(t) => format!("since {}", t.to_rfc3339()),
        }
    }
}

/// What a pass did for one program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramPass {
    /// The program id.
    pub program: i64,
    /// Its name.
    pub name: String,
    /// The start of the range read (`updatedAt` ranges only).
    pub from: Option<DateTime<Utc>>,
    /// Members read (each once).
    pub members: u64,
    /// Members queries made (pages included).
    pub calls: u64,
    /// CRM rows removed because Marketo no longer has the member (or, on a dry run, that
    /// would be).
    pub removed: u64,
    /// CRM rows the CRM refused to remove (each one ledger entry).
    pub remove_failed: u64,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// The linked programs.
    pub programs_total: u64,
    /// Programs an earlier, interrupted run of the same pass finished (skipped).
    pub programs_resumed: u64,
    /// The programs read by this run, in order.
    pub programs: Vec<ProgramPass>,
}

/// Receives the progress of a pass.
pub trait PassProgress: Send + Sync {
    /// The pass starts, with the programs it still has to read.
    fn start(&self, programs: u64);
    /// A program was read and applied.
    fn program(&self, done: &ProgramPass);
}

/// Progress nobody watches.
pub struct NoPassProgress;

impl PassProgress for NoPassProgress {
    fn start(&self, _programs: u64) {}
    fn program(&self, _done: &ProgramPass) {}
}

/// Runs a pass over every program the programs step linked (see the module documentation):
/// each program's members are read, mapped and written to the CRM, committed per page of 300,
/// and the program is journalled as done. On a dry run nothing is written: the planned writes
/// and removals go to `summary`.
///
/// Returns `None` when no program members mapping is synced (a warning says why when the
/// programs mapping is missing).
///
/// # Errors
///
/// A whole-call failure of Marketo, the CRM or the store, or cancellation (finished programs
/// stay committed).
pub async fn read_pass(
    ctx: &Context,
    plans: &Plans,
    read: MemberRead,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    progress: &dyn PassProgress,
    cancel: &CancellationToken,
) -> Result<Option<PassReport>, EngineError> {
    let Some((step, programs_plan)) = Member::of(ctx, plans, summary, options) else {
        return Ok(None);
    };
    step.pass(programs_plan, read, summary, options, progress, cancel)
        .await
        .map(Some)
}

/// Adds the member records of `program` to `out` by member key.
fn collect(program: i64, records: Vec<Record>, out: &mut BTreeMap<String, Record>) {
    for r in records {
        if let Some(lead) = r.get("leadId").and_then(serde_json::Value::as_i64) {
            out.insert(member_key(program, lead), r);
        }
    }
}

impl<'a> Member<'a> {
    /// Returns the step for `plans` with the programs plan, or `None` when no program members
    /// mapping is synced (with a warning when the programs mapping is missing).
    fn of(
        ctx: &'a Context,
        plans: &'a Plans,
        summary: &mut CycleSummary,
        options: &CycleOptions,
    ) -> Option<(Member<'a>, &'a Plan)> {
        let plan = plan_of(plans)?;
        let Some(programs_plan) = programs::plan_of(plans) else {
            summary.warnings.push(format!(
                "{}: program members sync only with a programs mapping (marketo_object = \
                 \"program\") in sync.objects",
                plan.object
            ));
            return None;
        };
        let statuses = ctx
            .mappings
            .iter()
            .find(|m| m.object == plan.object)
            .map(|m| m.file.statuses.clone())
            .unwrap_or_default();
        let step = Member {
            ctx,
            plan,
            programs_object: &programs_plan.object,
            statuses,
            dry_run: options.dry_run,
        };
        Some((step, programs_plan))
    }
}

impl Member<'_> {
    fn object(&self) -> &str {
        self.plan.object.as_str()
    }

    /// The runner's spec for the CRM object `crm_schema`.
    fn spec(crm_schema: &ObjectSchema) -> TwoWaySpec {
        TwoWaySpec {
            family: Some(ObjectFamily::ProgramMembers),
            ledger: Direction::MarketoToCrm,
            first: Side::Crm,
            update_key: crm_schema.id_field.clone().unwrap_or_else(|| "id".into()),
            keys_in_base: false,
        }
    }

    /// Runs a full pass when `sync.program_members_repair_hours` have gone by since the last
    /// one (never on a dry run, never when the setting is 0). The first cycle only starts the
    /// clock: a program is read whole when it is first linked anyway.
    async fn repair_if_due(
        &self,
        programs_plan: &Plan,
        summary: &mut CycleSummary,
        options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let hours = self.ctx.settings.sync.program_members_repair_hours;
        if hours == 0 || self.dry_run {
            return Ok(());
        }
        let now = self.ctx.clock.now();
        let last = self
            .ctx
            .store
            .watermark(Side::Marketo, self.object(), REPAIR_QUEUE)
            .await?;
        let Some(last) = last else {
            let mut commit = StepCommit::default();
            commit.watermarks.push(self.mark(REPAIR_QUEUE, now, None));
            return commit::finish(self.ctx, commit).await;
        };
        // A pass interrupted (cancelled, failed) is resumed by the next cycle.
        let unfinished = self
            .ctx
            .store
            .watermark(Side::Marketo, self.object(), PASS_QUEUE)
            .await?
            .and_then(|w| w.cursor)
            .is_some_and(|c| c.get("complete") == Some(&json!(false)));
        let hours = i64::try_from(hours).unwrap_or(i64::MAX / 3600);
        if !unfinished && now - last.at < chrono::Duration::hours(hours) {
            return Ok(());
        }
        let result = self
            .pass(
                programs_plan,
                MemberRead::Full,
                summary,
                options,
                &NoPassProgress,
                cancel,
            )
            .await;
        // The cycle's own work is committed: a failed repair is a warning, and the next
        // cycle resumes it after the programs it finished.
        let report = match result {
            Ok(report) => report,
            Err(EngineError::Cancelled) => return Err(EngineError::Cancelled),
            Err(e) => {
                warn!(object = self.object(), error = %e, "program members repair failed");
                summary.warnings.push(format!(
                    "{}: the repair read of program members failed (resumed next cycle): {e}",
                    self.object()
                ));
                return Ok(());
            }
        };
        let removed: u64 = report.programs.iter().map(|p| p.removed).sum();
        info!(
            object = self.object(),
            programs = report.programs.len(),
            removed,
            "program members repaired"
        );
        Ok(())
    }

    /// Returns a watermark of this object.
    fn mark(&self, queue: &str, at: DateTime<Utc>, cursor: Option<serde_json::Value>) -> Watermark {
        Watermark {
            system: Side::Marketo,
            object: self.object().to_owned(),
            queue: queue.to_owned(),
            at,
            tie: None,
            cursor,
        }
    }

    /// Runs a pass (see [`read_pass`]).
    async fn pass(
        &self,
        programs_plan: &Plan,
        read: MemberRead,
        summary: &mut CycleSummary,
        options: &CycleOptions,
        progress: &dyn PassProgress,
        cancel: &CancellationToken,
    ) -> Result<PassReport, EngineError> {
        let (ctx, object) = (self.ctx, self.object());
        let now = ctx.clock.now();
        let linked = self.linked_programs(programs_plan).await?;
        let tag = read.tag();
        // Resume an unfinished pass of the same read: its finished programs are skipped.
        let stored = ctx
            .store
            .watermark(Side::Marketo, object, PASS_QUEUE)
            .await?;
        let resumed = stored.as_ref().and_then(|w| {
            let c = w.cursor.as_ref()?;
            let same = c.get("read").and_then(serde_json::Value::as_str) == Some(tag.as_str())
                && c.get("complete") == Some(&json!(false));
            let done: BTreeSet<i64> = c
                .get("done")?
                .as_array()?
                .iter()
                .filter_map(serde_json::Value::as_i64)
                .collect();
            same.then_some((w.at, done))
        });
        let (started, mut done) = resumed.unwrap_or((now, BTreeSet::new()));
        let mut report = PassReport {
            programs_total: linked.len() as u64,
            programs_resumed: linked.keys().filter(|id| done.contains(id)).count() as u64,
            programs: Vec::new(),
        };
        progress.start(report.programs_total - report.programs_resumed);
        let journal = |done: &BTreeSet<i64>, complete: bool| {
            self.mark(
                PASS_QUEUE,
                started,
                Some(json!({"read": tag, "done": done, "complete": complete})),
            )
        };
        if !self.dry_run {
            let mut commit = StepCommit::default();
            commit.watermarks.push(journal(&done, false));
            commit::finish(ctx, commit).await?;
        }
        let fields = self.query_fields();
        let channels = match read {
            MemberRead::Full if report.programs_total > report.programs_resumed => {
                ctx.marketo.channels().await?
            }
            _ => Vec::new(),
        };
        // Every channel's statuses, not only the program's: a member keeps its status when its
        // program changes channel after the programs step last read it, and a member missing
        // from a full read is removed. Channels have far fewer than 300 statuses together, so
        // this costs no call more.
        let statuses: Vec<String> = channels
            .iter()
            .flat_map(|c| c.status_names())
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let crm_schema = ctx.crm.describe(&self.plan.crm_object).await?;
        let previous: BTreeMap<String, SyncError> = open_errors(ctx, object)
            .await?
            .into_iter()
            .filter(|e| e.direction == Direction::MarketoToCrm)
            .map(|e| (e.record_key.clone(), e))
            .collect();
        let env = PassEnv {
            linked: &linked,
            fields: &fields,
            crm_schema: &crm_schema,
            previous: &previous,
            now,
        };
        for (id, program) in &linked {
            if done.contains(id) {
                continue;
            }
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let p = self
                .pass_program(
                    &env,
                    (*id, program),
                    read,
                    &statuses,
                    summary,
                    options,
                    cancel,
                )
                .await?;
            done.insert(*id);
            if !self.dry_run {
                let mut commit = StepCommit::default();
                commit.watermarks.push(journal(&done, false));
                // A program read whole needs no first read by the cycle.
                if read == MemberRead::Full {
                    commit
                        .watermarks
                        .push(self.mark(&format!("program:{id}"), now, None));
                }
                commit::finish(ctx, commit).await?;
            }
            progress.program(&p);
            report.programs.push(p);
        }
        if !self.dry_run {
            let mut commit = StepCommit::default();
            commit.watermarks.push(journal(&done, true));
            if read == MemberRead::Full {
                commit
                    .watermarks
                    .push(self.mark(REPAIR_QUEUE, ctx.clock.now(), None));
            }
            commit::finish(ctx, commit).await?;
        }
        Ok(report)
    }

    /// Reads one program for a pass, applies its members page by page, and (full read)
    /// removes the linked members it no longer has.
    #[allow(clippy::too_many_arguments)]
    async fn pass_program(
        &self,
        env: &PassEnv<'_>,
        (id, program): (i64, &Linked),
        read: MemberRead,
        statuses: &[String],
        summary: &mut CycleSummary,
        options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<ProgramPass, EngineError> {
        type Query = (
            &'static str,
            Vec<String>,
            Option<(DateTime<Utc>, DateTime<Utc>)>,
        );
        let mut p = ProgramPass {
            program: id,
            name: program.name.clone(),
            ..ProgramPass::default()
        };
        let queries: Vec<Query> = match read {
            MemberRead::Full => statuses
                .chunks(QUERY_BATCH)
                .map(|c| (STATUS_FIELD, c.to_vec(), None))
                .collect(),
            MemberRead::ChangedSince(from) => {
                p.from = Some(from);
                members_updated_ranges(from, env.now)
                    .into_iter()
                    .map(|r| ("updatedAt", Vec::new(), Some(r)))
                    .collect()
            }
        };
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for (filter, values, range) in queries {
            let mut token: Option<String> = None;
            loop {
                if cancel.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                let page = self
                    .ctx
                    .marketo
                    .get_program_members(id, filter, &values, range, env.fields, token.as_deref())
                    .await?;
                p.calls += 1;
                let mut records = BTreeMap::new();
                collect(id, page.records, &mut records);
                // Ranges share their boundary instant: a member read twice is applied once.
                records.retain(|k, _| seen.insert(k.clone()));
                p.members += records.len() as u64;
                summary
                    .counts_mut(self.object(), Direction::MarketoToCrm)
                    .read += records.len() as u64;
                if !records.is_empty() {
                    self.apply(env, records, summary, options, cancel).await?;
                }
                match page.next_page_token {
                    Some(t) if page.more_result => token = Some(t),
                    _ => break,
                }
            }
        }
        if read == MemberRead::Full {
            let (removed, failed) = self.remove_gone(env, id, &seen, summary).await?;
            p.removed = removed;
            p.remove_failed = failed;
        }
        Ok(p)
    }

    /// Applies one page of members read by a pass, as the cycle applies its reads: a member
    /// whose lead has no CRM contact is left out (counted skipped), any other is created,
    /// updated or left as it is, and its link holds the agreed values.
    async fn apply(
        &self,
        env: &PassEnv<'_>,
        records: BTreeMap<String, Record>,
        summary: &mut CycleSummary,
        options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let mut commit = StepCommit::default();
        let all: BTreeSet<String> = records.keys().cloned().collect();
        let sides = self
            .pairs(
                env.linked,
                (records, &all),
                Vec::new(),
                env.crm_schema,
                env.previous,
                &mut commit,
                summary,
            )
            .await?;
        let spec = Self::spec(env.crm_schema);
        let runner = TwoWay {
            ctx: self.ctx,
            plan: self.plan,
            spec: &spec,
            previous: env.previous,
            marketo: None,
        };
        runner.run(sides, commit, summary, options, cancel).await
    }

    /// Removes from the CRM the linked members of `program` a full read did not return
    /// (Marketo no longer has them: no activity says so), tombstoning their links; a row the
    /// CRM refuses to remove is one ledger entry. Returns (removed, refused); on a dry run the
    /// removals are planned, not made.
    async fn remove_gone(
        &self,
        env: &PassEnv<'_>,
        program: i64,
        seen: &BTreeSet<String>,
        summary: &mut CycleSummary,
    ) -> Result<(u64, u64), EngineError> {
        let (ctx, object) = (self.ctx, self.object());
        // Keys `<program>:<lead>` sort together, right after `<program>:`.
        let prefix = format!("{program}:");
        let mut gone: Vec<Link> = Vec::new();
        let mut after = prefix.clone();
        'pages: loop {
            let page = ctx
                .store
                .links_page(object, Some(&after), LINKS_PAGE)
                .await?;
            let n = page.len();
            for l in page {
                if !l.marketo_key.starts_with(&prefix) {
                    break 'pages;
                }
                after.clone_from(&l.marketo_key);
                if l.tombstone.is_none() && !seen.contains(&l.marketo_key) {
                    gone.push(l);
                }
            }
            if n < LINKS_PAGE as usize {
                break;
            }
        }
        if gone.is_empty() {
            return Ok((0, 0));
        }
        let direction = Direction::MarketoToCrm;
        if self.dry_run {
            for l in &gone {
                summary.planned(
                    PlannedChange::new(object, direction, PlannedAction::Delete)
                        .target(l.crm_key.clone())
                        .source(l.marketo_key.clone()),
                );
            }
            return Ok((gone.len() as u64, 0));
        }
        let (mut removed, mut failed) = (0, 0);
        for chunk in gone.chunks(CRM_ROW_BATCH) {
            let ids: Vec<String> = chunk.iter().map(|l| l.crm_key.clone()).collect();
            let results = ctx.crm.delete(&self.plan.crm_object, &ids).await?;
            let mut commit = StepCommit::default();
            let at = ctx.clock.now();
            for (l, result) in chunk.iter().zip(results) {
                let refusal = result.refusal().cloned();
                match refusal {
                    // A row already gone from the CRM is as good as removed.
                    None => {}
                    Some(r) if r.reason == crate::crm::RefusalReason::NotFound => {}
                    Some(r) => {
                        failed += 1;
                        summary.counts_mut(object, direction).failed += 1;
                        let subject = Subject {
                            object,
                            direction,
                            record_key: &l.marketo_key,
                            other_key: Some(l.crm_key.clone()),
                            payload: json!({}),
                        };
                        let failure = Failure::new(
                            REMOVE_REFUSED,
                            format!(
                                "member {} left program {program} in Marketo; the CRM refused \
                                 to remove row {}: {}",
                                l.marketo_key,
                                l.crm_key,
                                r.ledger_message()
                            ),
                            r.retryable,
                        );
                        let prev = env.previous.get(&l.marketo_key);
                        commit
                            .errors_upsert
                            .push(ledger_entry(ctx, subject, failure, prev));
                        continue;
                    }
                }
                removed += 1;
                summary.counts_mut(object, direction).deleted += 1;
                let mut t = l.clone();
                t.tombstone = Some(Tombstone {
                    kind: TombstoneKind::Deleted,
                    side: Side::Marketo,
                    at,
                });
                commit.links_upsert.push(t);
                if env.previous.contains_key(&l.marketo_key) {
                    commit
                        .errors_resolve
                        .push(error_key(object, direction, &l.marketo_key));
                }
            }
            commit::finish(ctx, commit).await?;
        }
        info!(
            object,
            program, removed, failed, "members gone from the program removed"
        );
        Ok((removed, failed))
    }

    /// The Marketo fields asked of the members query: the mapped ones Marketo has (the
    /// synthetic ones are the engine's), with the keys and the status.
    fn query_fields(&self) -> Vec<String> {
        let synthetic = [CRM_CONTACT_FIELD, CRM_CAMPAIGN_FIELD, PROGRAM_NAME_FIELD];
        let mut fields: BTreeSet<String> = self
            .plan
            .read_fields(Side::Marketo)
            .into_iter()
            .filter(|f| !synthetic.contains(&f.as_str()))
            .collect();
        for f in ["leadId", "programId", STATUS_FIELD, "updatedAt"] {
            fields.insert(f.to_owned());
        }
        fields.into_iter().collect()
    }

    async fn run(
        &self,
        programs_plan: &Plan,
        summary: &mut CycleSummary,
        options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let (ctx, object) = (self.ctx, self.object());
        let now = ctx.clock.now();
        let linked = self.linked_programs(programs_plan).await?;
        // CRM side: the change feed (with the due retries of CRM rows).
        let (mut gathered, mut previous) = crm_with_retries(ctx, self.plan, cancel).await?;
        let mut commit = commit::start(&mut gathered);
        // Every open entry of a member read from Marketo (so that one that goes through now is
        // resolved); the due ones are read again.
        for e in open_errors(ctx, object).await? {
            if e.direction == Direction::MarketoToCrm {
                previous.insert(e.record_key.clone(), e);
            }
        }
        // Marketo side: the feed riders' pending pairs, the due retries, the first read of
        // newly linked programs.
        let mut wanted: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
        let pending = if self.dry_run {
            let rider = [CHANGE_STATUS_IN_PROGRESSION];
            feed_riders::pending_dry_run(ctx, object, &rider, cancel).await?
        } else {
            feed_riders::pending(ctx, object).await?
        };
        for (lead, program) in pending {
            wanted.entry(program).or_default().insert(lead);
        }
        for e in previous.values() {
            if e.direction == Direction::MarketoToCrm
                && e.next_retry_at.is_some_and(|t| t <= now)
                && let Some((program, lead)) = parse_key(&e.record_key)
            {
                wanted.entry(program).or_default().insert(lead);
            }
        }
        wanted.retain(|program, _| linked.contains_key(program));
        let fields = self.query_fields();
        let mut records = self.read_members(&wanted, &fields, cancel).await?;
        let mut first_read = BTreeMap::new();
        let seeded = self
            .seed(&linked, &fields, &mut first_read, now, cancel)
            .await?;
        // Members found only by a program's first read whose lead is not in the CRM are people
        // the CRM does not hold: they are left out, not refused.
        let first_only: BTreeSet<String> = first_read
            .keys()
            .filter(|k| !records.contains_key(*k))
            .cloned()
            .collect();
        for (k, r) in first_read {
            records.entry(k).or_insert(r);
        }
        commit.watermarks.extend(seeded);
        commit.watermarks.push(feed_riders::cleared(object, now));
        let upserts: Vec<Change> = gathered.upserts().into_iter().cloned().collect();
        summary.counts_mut(object, Direction::MarketoToCrm).read += records.len() as u64;
        summary.counts_mut(object, Direction::CrmToMarketo).read += upserts.len() as u64;
        if records.is_empty() && upserts.is_empty() {
            // Nothing changed on either side: only the watermarks move.
            if !options.dry_run {
                commit::finish(ctx, commit).await?;
            }
            return Ok(());
        }
        let crm_schema = ctx.crm.describe(&self.plan.crm_object).await?;
        let sides = self
            .pairs(
                &linked,
                (records, &first_only),
                upserts,
                &crm_schema,
                &previous,
                &mut commit,
                summary,
            )
            .await?;
        let spec = Self::spec(&crm_schema);
        let runner = TwoWay {
            ctx,
            plan: self.plan,
            spec: &spec,
            previous: &previous,
            marketo: None,
        };
        let n = sides.len();
        runner.run(sides, commit, summary, options, cancel).await?;
        info!(object, members = n, "program members synced");
        Ok(())
    }

    /// Returns the programs the programs step linked, by program id.
    ///
    /// # Errors
    ///
    /// A store failure.
    async fn linked_programs(
        &self,
        programs_plan: &Plan,
    ) -> Result<BTreeMap<i64, Linked>, EngineError> {
        let name_field = canonical_of(programs_plan, "name");
        let channel_field = canonical_of(programs_plan, "channel");
        let text = |base: &Fields, name: Option<&str>| {
            name.and_then(|n| base.get(n))
                .map(Value::to_text)
                .filter(|t| !t.is_empty())
        };
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .ctx
                .store
                .links_page(self.programs_object, after.as_deref(), 500)
                .await?;
            let n = page.len();
            for l in page {
                after = Some(l.marketo_key.clone());
                let Ok(id) = l.marketo_key.parse::<i64>() else {
                    continue;
                };
                if l.tombstone.is_some() {
                    continue;
                }
                out.insert(
                    id,
                    Linked {
                        name: text(&l.base, name_field).unwrap_or_else(|| id.to_string()),
                        channel: text(&l.base, channel_field),
                        crm_key: l.crm_key,
                    },
                );
            }
            if n < 500 {
                return Ok(out);
            }
        }
    }

    /// Reads the members `wanted` (lead ids by program), 300 leads a call.
    ///
    /// # Errors
    ///
    /// A Marketo failure, or cancellation.
    async fn read_members(
        &self,
        wanted: &BTreeMap<i64, BTreeSet<i64>>,
        fields: &[String],
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<String, Record>, EngineError> {
        let mut out = BTreeMap::new();
        for (program, leads) in wanted {
            let ids: Vec<String> = leads.iter().map(i64::to_string).collect();
            for chunk in ids.chunks(QUERY_BATCH) {
                self.query(*program, "leadId", chunk, fields, &mut out, cancel)
                    .await?;
            }
        }
        Ok(out)
    }

    /// Reads every page of one members query into `out`.
    async fn query(
        &self,
        program: i64,
        filter: &str,
        values: &[String],
        fields: &[String],
        out: &mut BTreeMap<String, Record>,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let mut token: Option<String> = None;
        loop {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let page = self
                .ctx
                .marketo
                .get_program_members(program, filter, values, None, fields, token.as_deref())
                .await?;
            collect(program, page.records, out);
            match page.next_page_token {
                Some(t) if page.more_result => token = Some(t),
                _ => return Ok(()),
            }
        }
    }

    /// Reads whole, once, each linked program not read before (its members by every status of
    /// its channel), and returns the watermarks that mark them read.
    ///
    /// # Errors
    ///
    /// A Marketo or store failure, or cancellation.
    async fn seed(
        &self,
        linked: &BTreeMap<i64, Linked>,
        fields: &[String],
        out: &mut BTreeMap<String, Record>,
        now: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Watermark>, EngineError> {
        let queue = |id: i64| format!("program:{id}");
        let done: BTreeSet<String> = self
            .ctx
            .store
            .watermarks()
            .await?
            .into_iter()
            .filter(|w| w.system == Side::Marketo && w.object == self.object())
            .map(|w| w.queue)
            .collect();
        let fresh: Vec<(&i64, &Linked)> = linked
            .iter()
            .filter(|(id, _)| !done.contains(&queue(**id)))
            .collect();
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let channels = self.ctx.marketo.channels().await?;
        let mut marks = Vec::new();
        for (id, program) in fresh {
            let statuses = statuses_of(&channels, program);
            for chunk in statuses.chunks(QUERY_BATCH) {
                self.query(*id, STATUS_FIELD, chunk, fields, out, cancel)
                    .await?;
            }
            marks.push(Watermark {
                system: Side::Marketo,
                object: self.object().to_owned(),
                queue: queue(*id),
                at: now,
                tie: None,
                cursor: None,
            });
        }
        Ok(marks)
    }

    /// Returns the status map of a program.
    fn status_map(&self, program: &Linked) -> StatusMap {
        StatusMap::of(&self.statuses, &program.name, program.channel.as_deref())
    }

    /// Records an unknown status of `key` (read in `direction`) in the ledger: it waits for the
    /// record to change.
    fn unknown_status(
        &self,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
        (direction, key): (Direction, &str),
        message: String,
        previous: &BTreeMap<String, SyncError>,
    ) {
        warn!(
            object = self.object(),
            key, "program member status not in the status map"
        );
        let failure = Failure::new(UNKNOWN_STATUS, message, false);
        self.refuse(commit, summary, (direction, key), failure, previous);
    }

    /// Records a Marketo member whose lead has no CRM contact yet (retried).
    fn waits_for_contact(
        &self,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
        key: &str,
        message: String,
        previous: &BTreeMap<String, SyncError>,
    ) {
        let failure = Failure::new("lead_not_linked", message, true);
        self.refuse(
            commit,
            summary,
            (Direction::MarketoToCrm, key),
            failure,
            previous,
        );
    }

    /// Records a CRM row whose contact or campaign is not linked yet (retried).
    fn not_linked(
        &self,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
        crm_key: &str,
        message: String,
        previous: &BTreeMap<String, SyncError>,
    ) {
        let failure = Failure::new("parent_not_linked", message, true);
        self.refuse(
            commit,
            summary,
            (Direction::CrmToMarketo, crm_key),
            failure,
            previous,
        );
    }

    /// Counts a refused record of `key` (read in `direction`) and records it in the ledger
    /// (nothing in a dry run).
    fn refuse(
        &self,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
        (direction, key): (Direction, &str),
        failure: Failure,
        previous: &BTreeMap<String, SyncError>,
    ) {
        let object = self.object();
        if self.dry_run {
            return;
        }
        summary.counts_mut(object, direction).failed += 1;
        let subject = Subject {
            object,
            direction,
            record_key: key,
            other_key: None,
            payload: json!({}),
        };
        let prev = previous.get(key).filter(|e| e.direction == direction);
        commit
            .errors_upsert
            .push(ledger_entry(self.ctx, subject, failure, prev));
    }

    /// Returns the runner's pairs: each member read from Marketo and each CRM row changed,
    /// joined by member key, with statuses translated to Marketo's.
    #[allow(clippy::too_many_arguments)]
    async fn pairs(
        &self,
        linked: &BTreeMap<i64, Linked>,
        (records, first_only): (BTreeMap<String, Record>, &BTreeSet<String>),
        upserts: Vec<Change>,
        crm_schema: &ObjectSchema,
        previous: &BTreeMap<String, SyncError>,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
    ) -> Result<Vec<SidePair>, EngineError> {
        let (ctx, plan, object) = (self.ctx, self.plan, self.object());
        // Links of both sides' records.
        let mut links: BTreeMap<String, (String, Fields)> = BTreeMap::new();
        let keys: Vec<String> = records.keys().cloned().collect();
        for chunk in keys.chunks(crate::store::KEYS_PER_LOOKUP) {
            for l in ctx.store.links_by_marketo_keys(object, chunk).await? {
                if l.tombstone.is_none() {
                    links.insert(l.marketo_key.clone(), (l.crm_key.clone(), l.base.clone()));
                }
            }
        }
        // A member of a lead that won a Marketo merge and took over the loser's contact pairs
        // with the loser's row: its link is re-keyed to the winner.
        let unlinked: Vec<(i64, i64)> = records
            .keys()
            .filter(|k| !links.contains_key(*k))
            .filter_map(|k| parse_key(k))
            .collect();
        let rekeyed = feed_riders::rekey_merged(
            ctx,
            plan,
            crm_schema,
            &unlinked,
            member_key,
            self.dry_run,
            commit,
            summary,
            previous,
        )
        .await?;
        for r in &rekeyed {
            links.insert(r.to.clone(), (r.crm_key.clone(), r.base.clone()));
        }
        let crm_ids: Vec<String> = upserts.iter().map(|c| c.id.clone()).collect();
        let mut crm_links = links_by_crm(ctx, object, &crm_ids).await?;
        feed_riders::apply_rekeyed(&mut crm_links, &rekeyed);
        for l in crm_links.values().filter(|l| l.tombstone.is_none()) {
            links.insert(l.marketo_key.clone(), (l.crm_key.clone(), l.base.clone()));
        }
        let crm_sides = self
            .crm_sides(linked, upserts, &crm_links, previous, commit, summary)
            .await?;
        let leads: Vec<String> = records
            .keys()
            .filter_map(|k| parse_key(k).map(|(_, l)| l.to_string()))
            .collect();
        let contacts = contacts_by_lead(ctx, &leads).await?;
        let status_canonical = canonical_of(plan, STATUS_FIELD).map(str::to_owned);
        let status_column = plan.crm_column_of(STATUS_FIELD).map(str::to_owned);
        let mut all: BTreeSet<String> = records.keys().cloned().collect();
        all.extend(crm_sides.keys().cloned());
        let mut out = Vec::new();
        for key in all {
            let Some((program, lead)) = parse_key(&key) else {
                continue;
            };
            let Some(program_row) = linked.get(&program) else {
                continue;
            };
            let map = self.status_map(program_row);
            let marketo = match records.get(&key) {
                None => None,
                Some(record) => {
                    let contact = contacts.get(&lead.to_string()).cloned();
                    if contact.is_none()
                        && plan.crm_column_of(CRM_CONTACT_FIELD).is_some()
                        && first_only.contains(&key)
                    {
                        summary.counts_mut(object, Direction::MarketoToCrm).skipped += 1;
                        continue;
                    }
                    if contact.is_none() && plan.crm_column_of(CRM_CONTACT_FIELD).is_some() {
                        let message = format!("lead {lead} has no CRM contact yet");
                        self.waits_for_contact(commit, summary, &key, message, previous);
                        continue;
                    }
                    let raw = member_raw(record, contact, program_row);
                    // When Marketo last changed the member (newest_wins compares it).
                    let at = record
                        .get("updatedAt")
                        .and_then(serde_json::Value::as_str)
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&Utc));
                    match Observed::read(plan, Side::Marketo, raw, at) {
                        Ok(o) => Some(o),
                        Err(e) => {
                            let prev = previous.get(&key);
                            let d = Direction::MarketoToCrm;
                            record_invalid_value(ctx, commit, summary, object, d, &key, &e, prev);
                            continue;
                        }
                    }
                }
            };
            let (crm_row, crm) = match crm_sides.get(&key).cloned() {
                Some((id, o)) => (Some(id), Some(o)),
                None => (None, None),
            };
            let link = links.get(&key).cloned();
            let base = link.as_ref().map(|(_, b)| b.clone());
            let agreed_status = base
                .as_ref()
                .zip(status_canonical.as_deref())
                .and_then(|(b, s)| b.get(s).cloned());
            // The CRM status written for Marketo's, when Marketo changed it (or the row is new)
            // and the CRM did not change its own: a member read again with its agreed status
            // writes nothing (a pass, or a status change the cycle reads after a bootstrap).
            let mut crm_extra = Fields::new();
            if let (Some(m), Some(canonical), Some(column)) = (
                &marketo,
                status_canonical.as_deref(),
                status_column.as_deref(),
            ) && let Some(status) = m.canonical.get(canonical).map(Value::to_text)
                && !status.is_empty()
            {
                let crm_changed_it = crm
                    .as_ref()
                    .is_some_and(|c| c.canonical.get(canonical).cloned() != agreed_status);
                let marketo_changed_it =
                    link.is_none() || m.canonical.get(canonical).cloned() != agreed_status;
                if !crm_changed_it && marketo_changed_it {
                    match map.translate(Side::Crm, &status, &program_row.name) {
                        Ok(s) => {
                            crm_extra.insert(column.to_owned(), Value::Text(s));
                        }
                        Err(e) => {
                            let d = (Direction::MarketoToCrm, key.as_str());
                            self.unknown_status(commit, summary, d, e.to_string(), previous);
                            continue;
                        }
                    }
                }
            }
            let crm_key = link.as_ref().map(|(c, _)| c.clone());
            if crm_key.is_none() && crm.is_none() {
                let column = plan.crm_marketo_id.clone();
                crm_extra.insert(
                    column.clone(),
                    programs::id_value(crm_schema, &column, &key),
                );
            }
            let mut key_fields = Fields::new();
            key_fields.insert("programId".into(), Value::Int(program));
            key_fields.insert("leadId".into(), Value::Int(lead));
            let marketo_seen = Seen::of(marketo, link.is_some());
            let crm_seen = Seen::of(crm, link.is_some());
            let read_from = match marketo_seen {
                Seen::Read(_) => Direction::MarketoToCrm,
                _ => Direction::CrmToMarketo,
            };
            out.push(SidePair {
                marketo_key: key.clone(),
                crm_key: crm_key.or(crm_row),
                ledger_key: key,
                read_from,
                base,
                marketo: marketo_seen,
                crm: crm_seen,
                key_fields,
                marketo_extra: Fields::new(),
                crm_extra,
            });
        }
        Ok(out)
    }

    /// Returns the CRM rows changed, read through the plan with their status translated to
    /// Marketo's, by member key (from the row's link, else from its contact's lead and its
    /// campaign's program). A row whose contact or campaign is not linked, or whose status the
    /// map does not know, goes to the ledger.
    async fn crm_sides(
        &self,
        linked: &BTreeMap<i64, Linked>,
        upserts: Vec<Change>,
        crm_links: &BTreeMap<String, crate::store::Link>,
        previous: &BTreeMap<String, SyncError>,
        commit: &mut StepCommit,
        summary: &mut CycleSummary,
    ) -> Result<BTreeMap<String, (String, Observed)>, EngineError> {
        let (ctx, plan) = (self.ctx, self.plan);
        let contact_column = plan.crm_column_of(CRM_CONTACT_FIELD);
        let campaign_column = plan.crm_column_of(CRM_CAMPAIGN_FIELD);
        let status_column = plan.crm_column_of(STATUS_FIELD);
        let raw_of = |c: &Change, column: Option<&str>| match &c.kind {
            ChangeKind::Upserted { fields } => column
                .and_then(|col| fields.get(col))
                .map(Value::to_text)
                .filter(|t| !t.is_empty()),
            ChangeKind::Deleted(_) => None,
        };
        let contacts: Vec<String> = upserts
            .iter()
            .filter_map(|c| raw_of(c, contact_column))
            .collect();
        let leads = lead_ids_by_contact(ctx, &contacts).await?;
        let campaigns: Vec<String> = upserts
            .iter()
            .filter_map(|c| raw_of(c, campaign_column))
            .collect();
        let programs_by_campaign: BTreeMap<String, i64> =
            links_by_crm(ctx, self.programs_object, &campaigns)
                .await?
                .into_values()
                .filter(|l| l.tombstone.is_none())
                .filter_map(|l| l.marketo_key.parse().ok().map(|id| (l.crm_key, id)))
                .collect();
        let mut out = BTreeMap::new();
        for change in upserts {
            let ChangeKind::Upserted { fields } = &change.kind else {
                continue;
            };
            let key = match crm_links.get(&change.id) {
                Some(l) => l.marketo_key.clone(),
                None => {
                    let lead = raw_of(&change, contact_column).and_then(|c| leads.get(&c).copied());
                    let program = raw_of(&change, campaign_column)
                        .and_then(|c| programs_by_campaign.get(&c).copied());
                    match (program, lead) {
                        (Some(p), Some(l)) => member_key(p, l),
                        _ => {
                            let message = format!(
                                "campaign member {}: its contact or campaign has no Marketo lead \
                                 or program yet",
                                change.id
                            );
                            self.not_linked(commit, summary, &change.id, message, previous);
                            continue;
                        }
                    }
                }
            };
            let Some(program) = parse_key(&key).and_then(|(p, _)| linked.get(&p)) else {
                continue;
            };
            let mut raw = fields.clone();
            if let Some(column) = status_column
                && let Some(status) = raw
                    .get(column)
                    .map(Value::to_text)
                    .filter(|s| !s.is_empty())
            {
                match self
                    .status_map(program)
                    .translate(Side::Marketo, &status, &program.name)
                {
                    Ok(s) => {
                        raw.insert(column.to_owned(), Value::Text(s));
                        // A status refused before is readable now.
                        let d = Direction::CrmToMarketo;
                        if previous
                            .get(&change.id)
                            .is_some_and(|e| e.direction == d && e.code == UNKNOWN_STATUS)
                        {
                            let object = self.object();
                            commit.errors_resolve.push(error_key(object, d, &change.id));
                        }
                    }
                    Err(e) => {
                        let d = (Direction::CrmToMarketo, change.id.as_str());
                        self.unknown_status(commit, summary, d, e.to_string(), previous);
                        continue;
                    }
                }
            }
            match Observed::read(plan, Side::Crm, raw, Some(change.modified_at)) {
                Ok(o) => {
                    out.insert(key, (change.id.clone(), o));
                }
                Err(e) => {
                    let prev = previous.get(&change.id);
                    let d = Direction::CrmToMarketo;
                    record_invalid_value(
                        ctx,
                        commit,
                        summary,
                        &plan.object,
                        d,
                        &change.id,
                        &e,
                        prev,
                    );
                }
            }
        }
        Ok(out)
    }
}

/// What every program of a pass shares.
struct PassEnv<'e> {
    linked: &'e BTreeMap<i64, Linked>,
    fields: &'e [String],
    crm_schema: &'e ObjectSchema,
    previous: &'e BTreeMap<String, SyncError>,
    now: DateTime<Utc>,
}

/// Returns the statuses a full read of `program` asks for: those of its channel, or every
/// channel's when its channel is unknown (a member's status is always one of its channel's).
fn statuses_of(channels: &[Channel], program: &Linked) -> Vec<String> {
    channels
        .iter()
        .find(|c| Some(&c.name) == program.channel.as_ref())
        .map_or_else(
            || {
                channels
                    .iter()
                    .flat_map(|c| c.status_names())
                    .map(str::to_owned)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            },
            |c| c.status_names().into_iter().map(str::to_owned).collect(),
        )
}

/// Returns the raw source fields of a member record, with the synthetic fields.
fn member_raw(record: &Record, contact: Option<String>, program: &Linked) -> Fields {
    let mut raw = from_record(record);
    raw.insert(
        CRM_CONTACT_FIELD.into(),
        contact.map_or(Value::Null, Value::Text),
    );
    raw.insert(
        CRM_CAMPAIGN_FIELD.into(),
        Value::Text(program.crm_key.clone()),
    );
    raw.insert(PROGRAM_NAME_FIELD.into(), Value::Text(program.name.clone()));
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_keys_round_trip() {
        assert_eq!(parse_key(&member_key(1107, 42)), Some((1107, 42)));
        assert_eq!(parse_key("x:1"), None);
    }
}
