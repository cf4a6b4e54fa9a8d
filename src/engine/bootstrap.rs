//! `marketo-sync bootstrap`: the first full load, separate from continuous sync and resumable.
//!
//! The phases follow the whitepaper's bootstrap order:
//!
//! 1. `leads`: Bulk Lead Extract by `createdAt` with the mapped fields, `id` and the CRM-key
//!    field, streamed in batches of 300, mapped with the lead plan, upserted into the CRM keyed by
//!    its Marketo-id column when not linked yet and reconciled with its CRM record when linked
//!    (see below; re-runs do not duplicate; a lead whose first match field names a CRM
//!    record without a Marketo id is adopted by that record instead of being created: the
//!    record gets the Marketo id and the lead's values; a second lead matching the same record,
//!    or one the CRM refuses, is held in the error ledger with code `bootstrap_match`) and a
//!    link per lead committed per batch; a lead the CRM refuses is one entry in the error
//!    ledger with the CRM's code and message ([`super::ledger`], the continuous sync's one retry
//!    policy). The CRM keys Marketo does not hold yet are spooled to
//!    files on disk (`id,<crm key field>`, each below 10 MB; nothing per lead stays in memory),
//!    one spool for all the phase's windows, and written back once for the phase instead of
//!    once per window (issue 15: 24 windows cost 2 calls of write-back, not about 48): a file
//!    that reaches 10 MB is imported right after the commit of the window that filled it; the
//!    rest goes when the phase ends (or pauses): by REST (`updateOnly` by `id`, 300 a call) up
//!    to `write_back_import_threshold` keys (default 3,000), by Bulk Import (`lookupField=id`)
//!    above it; a key Marketo refuses to write back is one ledger entry. The spool is flushed
//!    and synced at each window commit and its mark (stem, open file, length in bytes and rows;
//!    [`SpoolMark`]) is stored in that commit, in the phase watermark's cursor (`write_back`):
//!    a run that starts again re-opens the spool cut back to that mark (the keys of committed
//!    windows kept, those of a window that was not committed dropped, that window being applied
//!    again) and writes them back with the windows still to do. Each import batch is stored
//!    (direction import) when Marketo accepts it and marked consumed once complete, so a
//!    restart re-attaches to it (before re-opening the spool) instead of importing its file
//!    again. The companies named on the
//!    window's leads (externalCompanyId, or the company name) are then copied into the CRM
//!    accounts, and the salespersons named on them (externalSalesPersonId, read from Marketo)
//!    into the CRM users, when those objects are synced.
//! 2. `opportunities_from_activities`: Bulk Activity Extract of Add to Opportunity (34)
//!    activities; the opportunities they name are read from Marketo and copied into the CRM,
//!    and the roles they carry are written best effort.
//!
//! Bootstrap writes through the sync pipeline ([`super::pipeline`]), with its one ledger and
//! retry policy and one store commit per batch. Companies, salespersons, opportunities and
//! roles go through its two-way runner with the object's spec, like a cycle's: a record not
//! linked yet becomes a CRM row keyed by the Marketo-id column (a re-run finds it instead of
//! creating a second one); a linked one is reconciled against its link's agreed values, so only
//! what Marketo changed since is written and an edit made in the CRM since stays. Leads are
//! split per batch by their link. A lead not linked yet is written by the pipeline's keyed-row
//! write (created and updated counted from each row's outcome) and linked in the batch's
//! commit; its own hooks are the adoption of unlinked CRM matches and the CRM-key spool. A lead
//! already linked (by an earlier run, or by the continuous sync, when the lead phase runs over
//! it again) is reconciled like a cycle's ([`super::leads::inbound`]): its CRM record is
//! read, the cycle's reconcile compares both sides with the link's agreed values under the lead
//! plan's field rules, and only the fields Marketo changed since (or that Marketo wins by their
//! policy) are written, to the linked record keyed by its primary key; the link's agreed values
//! move in the same commit. An edit made in the CRM since stays and is not written to Marketo
//! (bootstrap writes one way): its field keeps its agreed value, so the next cycle carries it.
//! A linked lead with nothing to write is neither created nor updated; one whose CRM record is
//! gone is left to the cycle's deletion handling.
//!
//! 3. `program_members` (after programs, after leads): the programs step links the programs
//!    the programs mapping selects (by name, tag or folder), then a pass of
//!    [`super::objects::program_members::read_pass`] reads each one's members with the members
//!    query and writes them to the CRM campaign member rows with the cycle's plan, status map
//!    and links (so the next cycle writes nothing either way). Without `--since` it reads every
//!    member (by `statusName`, 300 a call: the fewest calls for a full read) and removes the
//!    CRM rows of members Marketo no longer has (the repair); with `--since` it reads only the
//!    members changed since, by `updatedAt` ranges of at most 7 days (Marketo's limit), and
//!    removes nothing. It is journalled per program and its progress is one step per program.
//!
//! The whitepaper's order starts with a Bulk Activity Extract of New Lead (12) activities; it
//! is not run: its rows are the lead id and created date of exactly the leads the `createdAt`
//! lead export of the same window returns (a lead deleted since has nothing to load), so it
//! only cost calls and bulk bytes (issue 15: 72 of 225 calls at 100k leads). Nothing reads its
//! rows: continuous sync starts from its own watermarks, and the lead phase's window watermark
//! alone says how far the leads have been loaded.
//!
//! Each phase walks export windows of at most 31 days (end = start + 31 d - 1 s) from the
//! object's low watermark (never before 2007-01-01) to now. Every export job is written to the
//! store before it is enqueued, and a window's progress (watermark queue `bootstrap:<phase>`) is
//! committed only after the window is fully applied, so a restarted bootstrap resumes after the
//! last finished window and re-attaches to an unfinished job instead of paying for a new export.
//! Before each export the day's bulk bytes are compared with the budget; when the next window
//! would not fit, or Marketo answers the daily export quota (1029), the bootstrap stops cleanly
//! and says when it can resume (the next Marketo day turn).
//!
//! A list named for the lead phase (`bootstrap.static_list_id`, `static_list_name`,
//! `smart_list_id` or `smart_list_name`, or the matching `bootstrap` flags) replaces its
//! `createdAt` windows with one export filtered by the list: the members the list has when
//! Marketo starts processing the job, whatever their age. It is one window from the phase's
//! resume point to the instant it is planned, with a window's journal, budget check, spool and
//! commit; its job is journalled under the list ([`list_object`]), and a restart re-attaches to
//! it by taking that job's window. After it the phase watermark is that planned instant + 1 s:
//! before the job read the list, so a later run without the list loads by `createdAt` every lead
//! created since (a member created meanwhile is loaded twice, idempotently). A later run with
//! the list exports the list again. Continuous sync does not start from this watermark: its
//! lead step reads the activity feed from its own watermark, as after a windowed bootstrap, so
//! a member changed after the list was read reaches the CRM by the cycle. The other phases keep
//! their windows. A smart list filter the subscription lacks (1035) is one warning
//! naming the list, and the phase falls back to its `createdAt` windows from the same point; a
//! list Marketo does not hold (the export's create refused) stops the run with an error naming
//! it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use indicatif::{HumanBytes, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_indicatif::span_ext::IndicatifSpanExt;

use super::leads::inbound::{self, Inbound, LinkedLead};
use super::ledger::{self, Failure, RetryPolicy, Subject};
use super::objects::{companies, program_members};
use super::pipeline::commit::{self, ledger_entry};
use super::pipeline::gather::open_errors;
use super::pipeline::spec::TwoWaySpec;
use super::pipeline::two_way::{CrmBatch, Observed, Seen, SidePair, TwoWay};
use super::pipeline::write::{NewRow, RowTarget, write_linked_rows};
use super::reconcile::FieldConflict;
use super::{Context, CycleOptions, CycleSummary, EngineError};
use crate::config::earliest_watermark;
use crate::crm::WriteResult;
use crate::mapping::programs::PROGRAM_MEMBER;
use crate::mapping::{Plan, SchemaSet};
use crate::marketo::bulk_extract::LeadList;
use crate::marketo::endpoint::{
    ACTIVITY_FIELDS, EndpointError, EndpointSettings, ExportOptions, ExportRow, ExportSubject,
    ExportedWindow, KeyRefusal, KeySpool, MarketoEndpoint, RowStream, SpoolMark, WriteBackJob,
    WriteBackReport, WriteBackScope, families::ObjectFamily,
};
use crate::marketo::limiter::next_day_turn;
use crate::marketo::{Disposition, Error as MarketoError};
use crate::model::{Fields, Side, Value};
use crate::store::{
    BulkJob, Direction, JobDirection, JobState, Link, StepCommit, SyncError, Watermark, marketo_day,
};

/// The Add to Opportunity activity type.
pub const ADD_TO_OPPORTUNITY: i64 = 34;
/// Days after which Marketo prunes most activity types.
pub const ACTIVITY_RETENTION_DAYS: i64 = 90;
/// Rows per Marketo write-back call (Marketo's REST batch limit) and per read of the other
/// exports.
pub const BATCH_ROWS: usize = 300;
/// Lead rows read, mapped, written to the CRM and committed to the store as one batch. A CRM
/// upsert is one transaction per call of up to the adapter's `max_batch_write` records (the
/// demo CRM takes 2,000), and every store commit is one more: batches of thousands rather than
/// hundreds keep the transactions (and, on SQLite, the journal writes) of a bootstrap few
/// (issue 15: 678 CRM transactions for 100k leads).
pub const CRM_BATCH_ROWS: usize = 2_000;
/// Export jobs tried per window before the window fails.
pub const MAX_EXPORT_ATTEMPTS: u32 = 3;
/// Longest export window.
pub const WINDOW_DAYS: i64 = 31;
/// Export jobs a phase keeps queued or processing at Marketo, the window being applied
/// included: Marketo holds 10 jobs queued or processing per instance (an enqueue beyond answers
/// 1029 "Too many jobs in queue", which the client waits out) and processes 2 of them at once.
pub const EXPORT_PIPELINE: usize = 10;
/// Export jobs in flight before the size of a window is known: the two Marketo processes at
/// once. The daily bulk budget admits more only once a window's bytes give an estimate.
pub const EXPORT_PIPELINE_UNSIZED: usize = 2;

/// The phase of leads (and the companies named on them).
pub const PHASE_LEADS: &str = "leads";
/// The phase of opportunities and roles from Add to Opportunity activities.
pub const PHASE_OPPORTUNITIES: &str = "opportunities_from_activities";
/// The phase of program members (per-program reads; its "windows" are programs).
pub const PHASE_PROGRAM_MEMBERS: &str = "program_members";

/// Options of one bootstrap run.
#[derive(Debug, Clone, Default)]
pub struct BootstrapOptions {
    /// Only these objects (`sync.objects` names); all enabled objects when empty.
    pub objects: Vec<String>,
    /// Start here instead of each object's configured low watermark (never before 2007-01-01).
    pub since: Option<DateTime<Utc>>,
    /// List the windows and the estimated exports without creating any.
    pub dry_run: bool,
    /// Where export files are downloaded (default: the system temp dir + `marketo-sync-bootstrap`).
    pub work_dir: Option<PathBuf>,
    /// The daily bulk budget in bytes (default: `marketo.bulk_mb_budget` MiB).
    pub bulk_budget_bytes: Option<u64>,
    /// How the export jobs are polled (default: [`ExportOptions::default`]); write-back import
    /// batches are polled at the same interval.
    pub export: Option<ExportOptions>,
    /// CRM keys waiting at the end of the lead phase above which they are written back to
    /// Marketo by Bulk Import (`lookupField=id`) instead of REST batches of 300 (default: the
    /// cycle's `bulk_import_threshold`, 3,000).
    pub write_back_import_threshold: Option<usize>,
    /// The list whose members the lead phase reads in one export instead of its `createdAt`
    /// windows (default: the one the `bootstrap` settings name, if any).
    pub lead_list: Option<LeadList>,
}

/// One export window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    /// The first instant.
    pub start: DateTime<Utc>,
    /// The last instant (inclusive).
    pub end: DateTime<Utc>,
}

/// What one phase did (or, on a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseReport {
    /// The phase name.
    pub name: String,
    /// The object whose low watermark it starts from.
    pub object: String,
    /// Where the phase starts.
    pub low_watermark: Option<DateTime<Utc>>,
    /// Windows from the low watermark to now.
    pub windows_total: u64,
    /// Windows finished by earlier runs and skipped.
    pub windows_skipped: u64,
    /// Windows finished by this run.
    pub windows_done: u64,
    /// Export jobs created by this run.
    pub exports_created: u64,
    /// Unfinished export jobs of earlier runs re-attached.
    pub exports_resumed: u64,
    /// Rows read from the export files.
    pub rows: u64,
    /// Rows that could not be read or mapped.
    pub rejected: u64,
    /// Records created in the CRM.
    pub created: u64,
    /// Records updated in the CRM.
    pub updated: u64,
    /// Records the CRM refused.
    pub failed: u64,
    /// CRM keys written back to Marketo.
    pub written_back: u64,
    /// CRM keys Marketo refused to write back (logged; the link is committed all the same, and
    /// the next cycle that touches the lead writes the key again).
    pub write_back_failed: u64,
    /// Bulk Import batches created to write CRM keys back (a full spool file, or the phase's
    /// keys above the threshold).
    pub write_back_imports: u64,
    /// Write-back import batches of earlier runs re-attached.
    pub write_back_imports_resumed: u64,
    /// Leads not created because a CRM record without a Marketo id matches them and could not
    /// adopt them (kept in the error ledger for identity resolution).
    pub held: u64,
    /// Leads adopted by an existing CRM record without a Marketo id that matches them (the
    /// record gets the Marketo id and the lead's values, Marketo gets the CRM key).
    pub adopted: u64,
    /// Links committed.
    pub links: u64,
    /// Export bytes downloaded.
    pub bytes: u64,
    /// Records removed from the CRM because Marketo no longer has them (program members a
    /// program lost; on a dry run, those it would remove).
    pub removed: u64,
    /// The windows still to run (dry run only).
    pub planned: Vec<Window>,
}

/// The outcome of a bootstrap run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BootstrapReport {
    /// True when nothing was created or written (dry run).
    pub dry_run: bool,
    /// True when every phase reached now.
    pub complete: bool,
    /// The phases, in order.
    pub phases: Vec<PhaseReport>,
    /// When the run stopped for the daily bulk budget: when it can resume (the Marketo day turn).
    pub paused_until: Option<DateTime<Utc>>,
    /// Why it stopped early.
    pub pause_reason: Option<String>,
    /// Warnings for the operator (activity retention, skipped phases).
    pub warnings: Vec<String>,
    /// Export bytes downloaded by this run.
    pub bulk_bytes: u64,
    /// Estimated export jobs still to run (dry run).
    pub estimated_exports: u64,
    /// The estimate of exports, megabytes, Marketo calls and time (dry run).
    pub estimate: Option<super::estimate::Estimate>,
}

impl BootstrapReport {
    /// Returns the report as text for a terminal: the estimate on a dry run, else a table of
    /// the phases; then the warnings and the pause.
    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if let Some(estimate) = &self.estimate {
            let _ = write!(out, "{}", estimate.render_text());
        } else {
            let mut t = comfy_table::Table::new();
            t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
                .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
                .set_header(vec![
                    "Phase", "Windows", "Rows", "Created", "Updated", "Failed", "Links", "Size",
                ]);
            for p in &self.phases {
                t.add_row(vec![
                    p.name.clone(),
                    format!("{}/{}", p.windows_done + p.windows_skipped, p.windows_total),
                    p.rows.to_string(),
                    p.created.to_string(),
                    p.updated.to_string(),
                    p.failed.to_string(),
                    p.links.to_string(),
                    HumanBytes(p.bytes).to_string(),
                ]);
            }
            let _ = writeln!(out, "{t}");
            let _ = writeln!(
                out,
                "{}: {} of bulk exports downloaded by this run.",
                if self.complete {
                    "Bootstrap complete"
                } else {
                    "Bootstrap not complete"
                },
                HumanBytes(self.bulk_bytes)
            );
        }
        if let Some(p) = self.phases.iter().find(|p| p.name == PHASE_PROGRAM_MEMBERS) {
            let verb = if self.dry_run { "would be " } else { "" };
            let _ = writeln!(
                out,
                "Program members: {} of {} programs read, {} members; {} rows {verb}created, {} \
                 {verb}updated, {} {verb}removed (gone from their program in Marketo), {} refused.",
                p.windows_done, p.windows_total, p.rows, p.created, p.updated, p.removed, p.failed
            );
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        if let (Some(until), Some(reason)) = (self.paused_until, &self.pause_reason) {
            let _ = writeln!(
                out,
                "Paused until {} ({reason}); run it again then: it resumes where it stopped.",
                until.to_rfc3339()
            );
        }
        out
    }
}

/// Receives progress of a bootstrap.
pub trait Progress: Send + Sync {
    /// A phase starts, with its number of windows still to run.
    fn phase(&self, name: &str, windows: u64);
    /// A window of a phase was applied.
    fn window(&self, phase: &str, start: DateTime<Utc>, end: DateTime<Utc>, rows: u64, bytes: u64);
    /// The run ended (completely or not).
    fn finish(&self, report: &BootstrapReport);
}

/// A progress bar per phase, drawn by the `tracing-indicatif` layer that
/// [`crate::telemetry::init`] installs on a terminal (log lines print above the bars, so they do
/// not scroll the bars away), with the windows done, the elapsed time, the ETA, the bytes and
/// rows so far and their rates; plus a log line per window. Without that layer (JSON logs, not a
/// terminal) only the log lines remain.
pub struct IndicatifProgress {
    bars: Mutex<BTreeMap<String, PhaseBar>>,
}

struct PhaseBar {
    span: tracing::Span,
    started: std::time::Instant,
    done: u64,
    total: u64,
    rows: u64,
    bytes: u64,
}

impl IndicatifProgress {
    /// Returns a progress display (bars appear where the tracing-indicatif layer is installed).
    pub fn new() -> Self {
        IndicatifProgress {
            bars: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Default for IndicatifProgress {
    fn default() -> Self {
        Self::new()
    }
}

/// What a phase's bar shows besides its windows.
#[derive(Debug, Clone, Copy)]
pub struct PhaseProgress {
    /// Windows applied by this run.
    pub done: u64,
    /// Windows this run has to apply.
    pub total: u64,
    /// Rows read so far.
    pub rows: u64,
    /// Export bytes downloaded so far.
    pub bytes: u64,
    /// Time since the phase started.
    pub elapsed: std::time::Duration,
    /// The end of the last window applied.
    pub last_end: DateTime<Utc>,
}

/// Returns the message of a phase's bar: the ETA (from the time per window so far), bytes and
/// rows so far with their rates, and how far the windows reached.
pub fn progress_message(p: &PhaseProgress) -> String {
    let secs = p.elapsed.as_secs_f64().max(0.001);
    let eta = if p.done == 0 {
        "ETA after the first window".to_owned()
    } else {
        let left = secs / p.done as f64 * p.total.saturating_sub(p.done) as f64;
        format!(
            "ETA {}",
            indicatif::HumanDuration(std::time::Duration::from_secs_f64(left))
        )
    };
    format!(
        "{eta} · {} ({}/s) · {} rows ({:.0}/s) · up to {}",
        HumanBytes(p.bytes),
        HumanBytes((p.bytes as f64 / secs) as u64),
        p.rows,
        p.rows as f64 / secs,
        p.last_end.format("%Y-%m-%d")
    )
}

impl Progress for IndicatifProgress {
    fn phase(&self, name: &str, windows: u64) {
        let span = tracing::info_span!(
            "bootstrap",
            phase = name,
            indicatif.pb_show = tracing::field::Empty
        );
        let style = ProgressStyle::with_template(
            "{span_fields} [{bar:25}] {pos}/{len} windows · {elapsed}\n    {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        span.pb_set_style(&style);
        span.pb_set_length(windows);
        span.pb_start();
        span.pb_set_message("ETA after the first window · exporting");
        info!(phase = name, windows, "bootstrap phase");
        self.bars.lock().unwrap_or_else(|p| p.into_inner()).insert(
            name.to_owned(),
            PhaseBar {
                span,
                started: std::time::Instant::now(),
                done: 0,
                total: windows,
                rows: 0,
                bytes: 0,
            },
        );
    }

    fn window(&self, phase: &str, start: DateTime<Utc>, end: DateTime<Utc>, rows: u64, bytes: u64) {
        info!(phase, %start, %end, rows, bytes, "bootstrap window applied");
        if let Some(bar) = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(phase)
        {
            bar.done += 1;
            bar.rows += rows;
            bar.bytes += bytes;
            bar.span.pb_inc(1);
            bar.span.pb_set_message(&progress_message(&PhaseProgress {
                done: bar.done,
                total: bar.total,
                rows: bar.rows,
                bytes: bar.bytes,
                elapsed: bar.started.elapsed(),
                last_end: end,
            }));
        }
    }

    fn finish(&self, report: &BootstrapReport) {
        // Closing the spans removes their bars.
        self.bars.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if report.dry_run {
            info!(
                exports = report.estimated_exports,
                "bootstrap dry run finished; nothing exported or written"
            );
            return;
        }
        info!(
            complete = report.complete,
            bulk_bytes = report.bulk_bytes,
            "bootstrap finished"
        );
    }
}

/// One recorded progress event (see [`RecordingProgress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// [`Progress::phase`].
    Phase {
        /// The phase.
        name: String,
        /// Its windows.
        windows: u64,
    },
    /// [`Progress::window`].
    Window {
        /// The phase.
        phase: String,
        /// The window.
        window: Window,
        /// Rows read.
        rows: u64,
        /// Bytes downloaded.
        bytes: u64,
    },
    /// [`Progress::finish`].
    Finish {
        /// Whether the run completed.
        complete: bool,
    },
}

/// A callback run after each window: (phase, windows applied so far).
pub type WindowHook = Box<dyn Fn(&str, u64) + Send + Sync>;

/// A progress receiver that records every event, and can run a hook on each window (tests).
#[derive(Default)]
pub struct RecordingProgress {
    events: Mutex<Vec<ProgressEvent>>,
    on_window: Option<WindowHook>,
}

impl RecordingProgress {
    /// Returns an empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns a recorder that calls `hook(phase, windows applied so far in any phase)` after
    /// each window (e.g. to cancel the run).
    pub fn with_window_hook(hook: impl Fn(&str, u64) + Send + Sync + 'static) -> Self {
        RecordingProgress {
            events: Mutex::new(Vec::new()),
            on_window: Some(Box::new(hook)),
        }
    }

    /// Returns the events so far.
    pub fn events(&self) -> Vec<ProgressEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Progress for RecordingProgress {
    fn phase(&self, name: &str, windows: u64) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ProgressEvent::Phase {
                name: name.to_owned(),
                windows,
            });
    }

    fn window(&self, phase: &str, start: DateTime<Utc>, end: DateTime<Utc>, rows: u64, bytes: u64) {
        let n = {
            let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            events.push(ProgressEvent::Window {
                phase: phase.to_owned(),
                window: Window { start, end },
                rows,
                bytes,
            });
            events
                .iter()
                .filter(|e| matches!(e, ProgressEvent::Window { .. }))
                .count() as u64
        };
        if let Some(hook) = &self.on_window {
            hook(phase, n);
        }
    }

    fn finish(&self, report: &BootstrapReport) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ProgressEvent::Finish {
                complete: report.complete,
            });
    }
}

/// Returns the windows of at most 31 days (end = start + 31 d - 1 s) that cover `from..=to`
/// without gaps or overlaps; none when `from` is after `to`.
pub fn windows(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Window> {
    let mut out = Vec::new();
    let mut start = from;
    while start <= to {
        let end = (start + ChronoDuration::days(WINDOW_DAYS) - ChronoDuration::seconds(1)).min(to);
        out.push(Window { start, end });
        start = end + ChronoDuration::seconds(1);
    }
    out
}

/// Returns the retention warning when `low` is more than 90 days before `now`, else `None`.
pub fn retention_warning(low: DateTime<Utc>, now: DateTime<Utc>) -> Option<String> {
    let cutoff = now - ChronoDuration::days(ACTIVITY_RETENTION_DAYS);
    (low < cutoff).then(|| {
        format!(
            "the low watermark {} reaches more than {ACTIVITY_RETENTION_DAYS} days back: Marketo prunes most activity types after {ACTIVITY_RETENTION_DAYS} days, so activity-derived data (opportunities and roles from Add to Opportunity) may be incomplete before {}",
            low.format("%Y-%m-%d"),
            cutoff.format("%Y-%m-%d")
        )
    })
}

/// Why a window stopped early.
enum Stop {
    Paused {
        until: DateTime<Utc>,
        reason: String,
    },
}

struct Run<'a> {
    ctx: &'a Context,
    cancel: &'a CancellationToken,
    budget: u64,
    work_dir: PathBuf,
    export: ExportOptions,
    run_bytes: u64,
    write_back_threshold: usize,
    pipeline: Pipeline,
    /// The lead phase's spool of CRM keys to write back, across its windows.
    lead_spool: Option<KeySpool>,
    /// The start of the lead phase's range (journalled with the write-back imports).
    spool_since: DateTime<Utc>,
    /// The list the lead phase reads instead of its windows (none: the windows, also after
    /// Marketo refused a smart list filter with 1035).
    lead_list: Option<LeadList>,
}

/// A started export of one window: (or re-attached to) created, enqueued, polled and downloaded
/// on its own task.
type ExportTask = tokio::task::JoinHandle<Result<ExportedWindow, EndpointError>>;

/// The exports of one phase: the windows not started yet and those started, in window order.
///
/// A window's export is started when the window before it is being exported or applied, so
/// Marketo's queue stays full (within [`EXPORT_PIPELINE`] and the daily bulk budget) while the
/// CRM side applies the windows in order, one after the other: a window is still committed only
/// once fully applied, and a later window's job stays journalled for a restart to re-attach to.
/// Its tasks stop at their next safe point when it is stopped or dropped: a job Marketo
/// created is journalled first, so a later run re-attaches to it instead of paying for another.
#[derive(Default)]
struct Pipeline {
    ahead: VecDeque<Window>,
    running: VecDeque<(Window, ExportTask)>,
    /// Bytes of the phase's largest exported window (the estimate of the next); none yet.
    estimate: Option<u64>,
    /// The tasks' token: a child of the run's.
    cancel: CancellationToken,
}

impl Pipeline {
    fn new(todo: &[Window], estimate: Option<u64>, cancel: &CancellationToken) -> Pipeline {
        Pipeline {
            ahead: todo.iter().copied().collect(),
            running: VecDeque::new(),
            estimate,
            cancel: cancel.child_token(),
        }
    }

    /// Stops the exports started ahead and waits for their tasks.
    async fn stop(&mut self) {
        self.cancel.cancel();
        for (_, task) in self.running.drain(..) {
            let _ = task.await;
        }
        self.ahead.clear();
    }

    /// Whether the window's export was started ahead (its bytes were admitted then).
    fn started(&self, window: Window) -> bool {
        self.running.iter().any(|(w, _)| *w == window)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct PhaseSpec {
    name: &'static str,
    object: String,
}

/// Runs the bootstrap: every enabled phase in the whitepaper's order, window by window, resuming
/// where an earlier run stopped.
///
/// Returns the report; `complete` is false and `paused_until` set when the daily bulk budget
/// stopped it (run it again after that time).
///
/// # Errors
///
/// Returns [`EngineError::Mapping`] when the lead mapping does not compile against the live
/// schemas, [`EngineError::Cancelled`] when `cancel` fires (finished windows stay committed),
/// and Marketo, CRM or store errors that stop a whole window.
pub async fn bootstrap(
    ctx: &Context,
    options: &BootstrapOptions,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<BootstrapReport, EngineError> {
    let mut report = BootstrapReport {
        dry_run: options.dry_run,
        ..BootstrapReport::default()
    };
    let wanted = |object: &str| {
        ctx.settings.sync.objects.iter().any(|o| o == object)
            && (options.objects.is_empty() || options.objects.iter().any(|o| o == object))
    };
    for object in &options.objects {
        if !ctx.settings.sync.objects.contains(object) {
            report.warnings.push(format!(
                "object `{object}` is not in sync.objects; nothing to bootstrap for it"
            ));
        }
    }
    // Marketo's filters take whole seconds.
    let now = ctx.clock.now();
    let now = now.with_nanosecond(0).unwrap_or(now);
    let low = |object: &str| {
        options
            .since
            .unwrap_or_else(|| ctx.settings.bootstrap.low_watermark(object))
            .max(earliest_watermark())
    };

    // Activity retention: only matters when activity-derived phases run.
    let activity_objects = ["activities", "opportunities", "roles"];
    if let Some(w) = activity_objects
        .iter()
        .filter(|o| wanted(o))
        .filter_map(|o| retention_warning(low(o), now))
        .next()
    {
        warn!(warning = %w, "bootstrap reaches past activity retention");
        report.warnings.push(w);
    }
    if wanted("salespersons") && !wanted("leads") {
        report.warnings.push(
            "object `salespersons`: bootstrapped from the leads' externalSalesPersonId, so only together with `leads`"
                .to_owned(),
        );
    }

    let mut phases = Vec::new();
    let lead_plan = if wanted("leads") {
        phases.push(PhaseSpec {
            name: PHASE_LEADS,
            object: "leads".into(),
        });
        // A dry run compiles the plans too: the estimate samples the leads with the export's
        // fields.
        Some(
            plans(
                ctx,
                wanted("companies"),
                wanted("salespersons"),
                &mut report.warnings,
            )
            .await?,
        )
    } else {
        None
    };
    let opp_plans = if wanted("opportunities") || wanted("roles") {
        phases.push(PhaseSpec {
            name: PHASE_OPPORTUNITIES,
            object: if wanted("opportunities") {
                "opportunities".into()
            } else {
                "roles".into()
            },
        });
        if options.dry_run {
            None
        } else {
            Some(
                opportunity_plans(
                    ctx,
                    wanted("opportunities"),
                    wanted("roles"),
                    &mut report.warnings,
                )
                .await?,
            )
        }
    } else {
        None
    };

    let lead_list = match (&options.lead_list, wanted("leads")) {
        (_, false) => None,
        (Some(list), true) => Some(list.clone()),
        (None, true) => ctx
            .settings
            .bootstrap
            .lead_list()
            .map_err(|(_, reason)| EngineError::Config(reason))?,
    };
    let mut run = Run {
        ctx,
        cancel,
        budget: options.bulk_budget_bytes.unwrap_or_else(|| {
            u64::from(ctx.settings.marketo.bulk_mb_budget).saturating_mul(1024 * 1024)
        }),
        work_dir: options
            .work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("marketo-sync-bootstrap")),
        export: options.export.clone().unwrap_or_default(),
        run_bytes: 0,
        write_back_threshold: options
            .write_back_import_threshold
            .unwrap_or_else(|| super::Tunables::default().bulk_import_threshold),
        pipeline: Pipeline::default(),
        lead_spool: None,
        spool_since: now,
        lead_list,
    };
    if !options.dry_run {
        tokio::fs::create_dir_all(&run.work_dir)
            .await
            .map_err(|e| EngineError::Marketo(crate::marketo::Error::io(&run.work_dir, e)))?;
    }

    let mut paused = None;
    let mut to_estimate: Vec<(String, u64, super::estimate::PhaseRows)> = Vec::new();
    let mut leads_from: Option<DateTime<Utc>> = None;
    for spec in &phases {
        let from = low(&spec.object);
        let mut phase = PhaseReport {
            name: spec.name.to_owned(),
            object: spec.object.clone(),
            low_watermark: Some(from),
            ..PhaseReport::default()
        };
        let stored = ctx
            .store
            .watermark(Side::Marketo, &spec.object, &queue(spec.name))
            .await?;
        // Resume right after the last finished window (a later run only adds the time since).
        let resume = stored.as_ref().map_or(from, |w| w.at.max(from));
        let listed = match spec.name {
            PHASE_LEADS => run.lead_list.clone(),
            _ => None,
        };
        let todo = match &listed {
            Some(list) => {
                let todo = list_window(ctx, &list_object(spec.name, list), resume, now).await?;
                phase.windows_total = todo.len() as u64;
                todo
            }
            None => plan_windows(&mut phase, from, resume, now),
        };
        if options.dry_run {
            info!(
                phase = spec.name,
                windows = todo.len(),
                "bootstrap dry run: windows to export"
            );
            report.estimated_exports += todo.len() as u64;
            use super::estimate::PhaseRows;
            let rows = match spec.name {
                PHASE_LEADS => PhaseRows::Leads,
                _ => PhaseRows::Unknown,
            };
            if spec.name == PHASE_LEADS {
                leads_from = Some(resume);
            }
            if let Some(list) = &listed {
                // A list may hold leads of any age: the estimate counts them all.
                leads_from = Some(earliest_watermark());
                report.warnings.push(format!(
                    "the lead phase reads the members of the {list} in one export; Marketo \
                     has no cheap count of a list's members, so the estimate counts every lead \
                     (an upper bound)"
                ));
            }
            to_estimate.push((spec.name.to_owned(), todo.len() as u64, rows));
            phase.planned = todo;
            report.phases.push(phase);
            continue;
        }
        progress.phase(spec.name, todo.len() as u64);
        if paused.is_some() {
            report.phases.push(phase);
            continue;
        }
        // The next window is estimated from the last one, also across runs.
        let mut last_bytes = stored
            .as_ref()
            .and_then(|w| w.cursor.as_ref())
            .and_then(|c| c.get("last_window_bytes"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if spec.name == PHASE_LEADS {
            let plans = lead_plan
                .as_ref()
                .ok_or_else(|| EngineError::Mapping("the lead mapping did not compile".into()))?;
            run.spool_since = from;
            run.open_spool(spec, &plans.lead, stored.as_ref(), &mut phase)
                .await?;
        }
        run.pipeline = Pipeline::new(&todo, (last_bytes > 0).then_some(last_bytes), cancel);
        let mut remaining: VecDeque<Window> = todo.into();
        while let Some(window) = remaining.pop_front() {
            if cancel.is_cancelled() {
                run.pipeline.stop().await;
                report.phases.push(phase);
                progress.finish(&report);
                return Err(EngineError::Cancelled);
            }
            // A window started ahead was admitted by the budget then.
            if !run.pipeline.started(window)
                && let Some(stop) = run.check_budget(last_bytes).await?
            {
                paused = Some(stop);
                break;
            }
            let rows_before = phase.rows;
            let result = match spec.name {
                PHASE_OPPORTUNITIES => {
                    let plans = opp_plans.as_ref().ok_or_else(|| {
                        EngineError::Mapping("the opportunity mappings did not compile".into())
                    })?;
                    run.opportunity_window(spec, window, plans, &mut phase)
                        .await
                }
                _ => {
                    let plans = lead_plan.as_ref().ok_or_else(|| {
                        EngineError::Mapping("the lead mapping did not compile".into())
                    })?;
                    run.lead_window(spec, window, plans, &mut phase).await
                }
            };
            match result {
                Ok(bytes) => {
                    last_bytes = bytes;
                    phase.windows_done += 1;
                    phase.bytes += bytes;
                    progress.window(
                        spec.name,
                        window.start,
                        window.end,
                        phase.rows - rows_before,
                        bytes,
                    );
                }
                Err(WindowError::Stop(stop)) => {
                    paused = Some(stop);
                    break;
                }
                Err(WindowError::Engine(EngineError::Marketo(e)))
                    if listed.is_some() && run.lead_list.is_some() && list_refusal(&e) =>
                {
                    run.pipeline.stop().await;
                    match (run.lead_list.take(), &e) {
                        // A smart list filter this subscription lacks: once per run, the
                        // createdAt windows from where the list export would have started.
                        (Some(list), MarketoError::UnsupportedFilter { .. }) => {
                            warn!(list = %list, error = %e, "lead list filter unsupported; loading by createdAt windows");
                            report.warnings.push(format!(
                                "the {list} cannot be exported on this Marketo subscription \
                                 (1035: no {} filter on lead exports); the lead phase loads the \
                                 leads created since {} in 31-day windows instead",
                                list.filter_key(),
                                window.start.format("%Y-%m-%d %H:%M:%S UTC")
                            ));
                            let windowed = plan_windows(&mut phase, from, window.start, now);
                            progress.phase(spec.name, windowed.len() as u64);
                            run.pipeline = Pipeline::new(
                                &windowed,
                                (last_bytes > 0).then_some(last_bytes),
                                cancel,
                            );
                            remaining = windowed.into();
                        }
                        (list, _) => {
                            report.phases.push(phase);
                            progress.finish(&report);
                            return Err(list_refused(list, e));
                        }
                    }
                }
                Err(WindowError::Engine(e)) => {
                    run.pipeline.stop().await;
                    report.phases.push(phase);
                    progress.finish(&report);
                    return Err(e);
                }
            }
        }
        // Exports started ahead of a pause stay journalled; the next run re-attaches to them.
        run.pipeline.stop().await;
        // The keys of the committed windows go back once for the phase (also at a pause).
        if spec.name == PHASE_LEADS
            && let Some(plans) = &lead_plan
            && let Err(e) = run
                .write_back_spool(spec, &plans.lead, WriteBackScope::All, now, &mut phase)
                .await
        {
            report.phases.push(phase);
            progress.finish(&report);
            return Err(e);
        }
        report.phases.push(phase);
    }
    let member_object = ctx
        .mappings
        .iter()
        .find(|m| m.file.marketo_object == PROGRAM_MEMBER && wanted(&m.object))
        .map(|m| m.object.clone());
    if let Some(object) = member_object {
        let mut phase = PhaseReport {
            name: PHASE_PROGRAM_MEMBERS.to_owned(),
            object,
            low_watermark: options.since,
            ..PhaseReport::default()
        };
        // The members of leads still to load would be left out: the phase waits for them.
        if paused.is_none() {
            let result =
                program_members_phase(ctx, options, now, &mut phase, progress, cancel).await;
            match result {
                Ok(warnings) => report.warnings.extend(warnings),
                Err(e) => {
                    report.phases.push(phase);
                    progress.finish(&report);
                    return Err(e);
                }
            }
        }
        report.phases.push(phase);
    }
    report.bulk_bytes = run.run_bytes;
    if options.dry_run {
        let sample = match (&lead_plan, leads_from) {
            (Some(plans), Some(from)) => {
                super::estimate::sample_leads(&ctx.marketo, &lead_export_fields(plans), from)
                    .await?
            }
            _ => super::estimate::LeadSample::default(),
        };
        let assume = super::estimate::Assumptions {
            export_processing: super::estimate::EXPORT_PROCESSING,
            poll_interval: run.export.poll_interval,
            calls_per_20s: ctx.settings.marketo.calls_per_20s,
            bulk_budget_bytes: run.budget,
        };
        report.estimate = Some(super::estimate::estimate(&to_estimate, &sample, &assume));
    }
    match paused {
        Some(Stop::Paused { until, reason }) => {
            warn!(%until, reason = %reason, "bootstrap paused by the daily bulk budget");
            report.paused_until = Some(until);
            report.pause_reason = Some(reason);
        }
        None => report.complete = !options.dry_run,
    }
    progress.finish(&report);
    Ok(report)
}

/// The progress of the program members phase: one step per program.
struct MembersProgress<'a> {
    progress: &'a dyn Progress,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

impl program_members::PassProgress for MembersProgress<'_> {
    fn start(&self, programs: u64) {
        self.progress.phase(PHASE_PROGRAM_MEMBERS, programs);
    }

    fn program(&self, done: &program_members::ProgramPass) {
        let from = done.from.unwrap_or(self.from);
        self.progress
            .window(PHASE_PROGRAM_MEMBERS, from, self.to, done.members, 0);
    }
}

/// Runs the program members phase (see the module documentation) into `phase`.
///
/// Returns the warnings for the operator.
///
/// # Errors
///
/// The plans' schema reads, and Marketo, CRM or store failures of the pass; cancellation.
async fn program_members_phase(
    ctx: &Context,
    options: &BootstrapOptions,
    now: DateTime<Utc>,
    phase: &mut PhaseReport,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<Vec<String>, EngineError> {
    let mut summary = CycleSummary {
        dry_run: options.dry_run,
        ..CycleSummary::default()
    };
    let cycle_options = CycleOptions {
        dry_run: options.dry_run,
    };
    // The cycle's plans (every synced object described: the mappings compile as a cycle's).
    let plans = super::Engine::new(ctx.clone())
        .refresh_schemas(&mut summary)
        .await?;
    if !options.dry_run {
        // Links the selected programs (new or renamed ones since the last browse).
        super::objects::programs::run(ctx, &plans, &mut summary, &cycle_options, cancel).await?;
    }
    let read = options.since.map_or(
        program_members::MemberRead::Full,
        program_members::MemberRead::ChangedSince,
    );
    let watch = MembersProgress {
        progress,
        from: options.since.unwrap_or_else(earliest_watermark),
        to: now,
    };
    let pass = program_members::read_pass(
        ctx,
        &plans,
        read,
        &mut summary,
        &cycle_options,
        &watch,
        cancel,
    )
    .await?;
    let mut warnings = std::mem::take(&mut summary.warnings);
    let Some(pass) = pass else {
        if plans.objects.values().all(|p| p.object != phase.object) {
            warnings.push(format!(
                "object `{}`: its mapping did not compile; nothing to bootstrap for it",
                phase.object
            ));
        }
        return Ok(warnings);
    };
    if options.dry_run {
        summary.count_plan();
        if pass.programs_total == 0 {
            warnings.push(
                "program members: no program is linked yet, so a dry run reads none (a run \
                 without --dry-run, or a cycle, links the selected programs first)"
                    .to_owned(),
            );
        }
    }
    phase.windows_total = pass.programs_total;
    phase.windows_skipped = pass.programs_resumed;
    phase.windows_done = pass.programs.len() as u64;
    phase.rows = pass.programs.iter().map(|p| p.members).sum();
    phase.removed = pass.programs.iter().map(|p| p.removed).sum();
    if let Some(counts) = summary
        .objects
        .get(&phase.object)
        .and_then(|d| d.get(&Direction::MarketoToCrm))
    {
        phase.created = counts.created;
        phase.updated = counts.updated;
        phase.failed = counts.failed;
        phase.links = if options.dry_run {
            0
        } else {
            counts.created + counts.updated
        };
    }
    Ok(warnings)
}

/// Returns the watermark queue of a phase.
pub fn queue(phase: &str) -> String {
    format!("bootstrap:{phase}")
}

/// Returns the journal object of a phase's list export: the phase's queue and the list, so a
/// restart re-attaches only to an export of the same list (never to a window's).
pub fn list_object(phase: &str, list: &LeadList) -> String {
    format!("{}:{list}", queue(phase))
}

/// Returns the journal object of a phase's export of `subject`.
fn export_object(phase: &str, subject: &ExportSubject) -> String {
    match subject {
        ExportSubject::ListedLeads { list, .. } => list_object(phase, list),
        _ => queue(phase),
    }
}

/// Returns the windows still to run from `resume` to `now` and sets the phase's windows from
/// `from` (all) and those before `resume` (skipped).
fn plan_windows(
    phase: &mut PhaseReport,
    from: DateTime<Utc>,
    resume: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<Window> {
    let all = windows(from, now);
    phase.windows_total = all.len() as u64;
    phase.windows_skipped = all.iter().filter(|w| w.end < resume).count() as u64;
    windows(resume, now)
}

/// Returns the lead phase's one window when it reads a list (none when `resume` is after
/// `now`): from `resume` to `now`, or to the end of the export of this list an earlier run
/// journalled from `resume` and did not finish, so that a restart re-attaches to that job
/// instead of paying for another.
///
/// The window's end becomes the phase watermark (+1 s) once the export is applied. It is the
/// instant the export was planned, before Marketo starts processing the job (when the job reads
/// the list's members), so a later run by windows loads every lead created after the list was
/// read.
///
/// # Errors
///
/// Returns [`EngineError::Store`] when the journal cannot be read.
async fn list_window(
    ctx: &Context,
    object: &str,
    resume: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Window>, EngineError> {
    if resume > now {
        return Ok(Vec::new());
    }
    let journalled = ctx
        .store
        .unfinished_jobs(JobDirection::Export)
        .await?
        .into_iter()
        .filter(|j| j.object == object && j.window_start == Some(resume))
        .filter_map(|j| j.window_end)
        .find(|end| *end >= resume);
    Ok(vec![Window {
        start: resume,
        end: journalled.unwrap_or(now),
    }])
}

/// Returns the error of a list export Marketo refused, naming the list (the error as it is
/// without one).
fn list_refused(list: Option<LeadList>, e: MarketoError) -> EngineError {
    let Some(list) = list else {
        return EngineError::Marketo(e);
    };
    let what = match list {
        LeadList::StaticId(_) | LeadList::SmartId(_) => "id",
        LeadList::StaticName(_) | LeadList::SmartName(_) => "name",
    };
    EngineError::Config(format!(
        "the lead phase cannot export the members of the {list} (filter {}): {e}; check that \
         Marketo holds a list of exactly this {what} and that the API user's workspace can see it",
        list.filter_key()
    ))
}

/// Whether Marketo refused a list export's filter: 1035 (a smart list filter the subscription
/// lacks) or a 1xxx refusal that no wait cures (a list it does not hold: 1003 in the
/// simulator; marketo-api.md names no code of its own for it, so 1013 "not found" counts too).
fn list_refusal(e: &MarketoError) -> bool {
    matches!(e, MarketoError::UnsupportedFilter { .. })
        || (e.refusal_kind().is_some()
            && matches!(
                e.disposition(),
                Disposition::FailCall | Disposition::FailRecord
            ))
}

/// Returns the fields of a lead export: `id`, the mapped fields, the CRM-key field, and the
/// company and salesperson fields when those objects are synced (those the schema holds).
fn lead_export_fields(plans: &LeadPlans) -> Vec<String> {
    let plan = &plans.lead;
    let mut fields: Vec<String> = vec!["id".into()];
    let mut add = |f: String| {
        if !fields.contains(&f) && plans.lead_schema.field(&f).is_some() {
            fields.push(f);
        }
    };
    for f in plan.read_fields(Side::Marketo) {
        add(f);
    }
    add(plan.marketo_crm_key.clone());
    if let Some(company) = &plans.company {
        for f in company.read_fields(Side::Marketo) {
            add(f);
        }
        add("externalCompanyId".into());
    }
    if plans.salesperson.is_some() {
        add("externalSalesPersonId".into());
    }
    fields
}

struct LeadPlans {
    lead: Plan,
    company: Option<Plan>,
    salesperson: Option<Plan>,
    lead_schema: crate::model::ObjectSchema,
}

async fn plans(
    ctx: &Context,
    companies: bool,
    salespersons: bool,
    warnings: &mut Vec<String>,
) -> Result<LeadPlans, EngineError> {
    let mut schemas = SchemaSet::default();
    let lead_schema = ctx.marketo.object_schema("lead").await?;
    schemas.insert(lead_schema.clone());
    if companies {
        schemas.insert(marketo_schema(ctx, "companies", "company").await?);
    }
    if salespersons {
        schemas.insert(marketo_schema(ctx, "salespersons", "salesperson").await?);
    }
    for m in ctx.mappings.iter() {
        let needed = m.object == "leads"
            || (companies && m.object == "companies")
            || (salespersons && m.object == "salespersons");
        if needed && !m.file.is_activities() {
            schemas.insert(ctx.crm.describe(&m.file.crm_object).await?);
        }
    }
    let (compiled, problems) = crate::mapping::compile_all(&ctx.settings, &ctx.mappings, &schemas);
    let Some(lead) = compiled.objects.get("leads").cloned() else {
        let text: Vec<String> = problems
            .iter()
            .filter(|p| p.is_error())
            .map(ToString::to_string)
            .collect();
        return Err(EngineError::Mapping(format!(
            "the lead mapping does not compile: {}",
            text.join("; ")
        )));
    };
    let company = if companies {
        let plan = compiled.objects.get("companies").cloned();
        if plan.is_none() {
            let text: Vec<String> = problems
                .iter()
                .filter(|p| p.is_error())
                .map(ToString::to_string)
                .collect();
            warnings.push(format!(
                "companies are skipped: their mapping does not compile: {}",
                text.join("; ")
            ));
        }
        plan
    } else {
        None
    };
    let salesperson = if salespersons {
        let plan = compiled.objects.get("salespersons").cloned();
        if plan.is_none() {
            let text: Vec<String> = problems
                .iter()
                .filter(|p| p.is_error() && p.to_string().contains("salespersons.toml"))
                .map(ToString::to_string)
                .collect();
            warnings.push(format!(
                "salespersons are skipped: their mapping does not compile: {}",
                text.join("; ")
            ));
        }
        plan
    } else {
        None
    };
    Ok(LeadPlans {
        lead,
        company,
        salesperson,
        lead_schema,
    })
}

/// Returns the Marketo schema of a standard object under the name its mapping file uses
/// (`salesPerson` and `salesperson`, `opportunityRole` and `opportunity_role` are the same).
async fn marketo_schema(
    ctx: &Context,
    object: &str,
    standard: &str,
) -> Result<crate::model::ObjectSchema, EngineError> {
    let mut schema = ctx.marketo.object_schema(standard).await?;
    if let Some(m) = ctx.mappings.iter().find(|m| m.object == object) {
        schema.object = m.file.marketo_object.clone();
    }
    Ok(schema)
}

struct OppPlans {
    opportunity: Option<Plan>,
    role: Option<Plan>,
}

async fn opportunity_plans(
    ctx: &Context,
    opportunities: bool,
    roles: bool,
    warnings: &mut Vec<String>,
) -> Result<OppPlans, EngineError> {
    let mut schemas = SchemaSet::default();
    let mut wanted = Vec::new();
    if opportunities {
        schemas.insert(marketo_schema(ctx, "opportunities", "opportunity").await?);
        wanted.push("opportunities");
    }
    if roles {
        schemas.insert(marketo_schema(ctx, "roles", "opportunity_role").await?);
        wanted.push("roles");
    }
    for m in ctx.mappings.iter() {
        if wanted.contains(&m.object.as_str()) && !m.file.is_activities() {
            schemas.insert(ctx.crm.describe(&m.file.crm_object).await?);
        }
    }
    let (compiled, problems) = crate::mapping::compile_all(&ctx.settings, &ctx.mappings, &schemas);
    let mut get = |object: &str| {
        let plan = compiled.objects.get(object).cloned();
        if plan.is_none() {
            let text: Vec<String> = problems
                .iter()
                .filter(|p| p.is_error() && p.to_string().contains(&format!("{object}.toml")))
                .map(ToString::to_string)
                .collect();
            warnings.push(format!(
                "{object} are skipped: their mapping does not compile: {}",
                text.join("; ")
            ));
        }
        plan
    };
    // Bootstrap copies Marketo into the CRM: an object none of whose fields flow that way (the
    // shipped roles mapping is CRM -> Marketo only) is left to the regular cycle, which writes
    // it to Marketo; copying its bare keys would create empty CRM rows.
    let mut skipped = Vec::new();
    let mut inbound = |object: &str| {
        let plan = get(object)?;
        if plan.read_fields(Side::Marketo).is_empty() {
            skipped.push(format!(
                "{object} are not bootstrapped: no field of their mapping flows to the CRM \
                 (the regular cycle writes them to Marketo)"
            ));
            return None;
        }
        Some(plan)
    };
    let plans = OppPlans {
        opportunity: if opportunities {
            inbound("opportunities")
        } else {
            None
        },
        role: if roles { inbound("roles") } else { None },
    };
    warnings.append(&mut skipped);
    Ok(plans)
}

enum WindowError {
    Stop(Stop),
    Engine(EngineError),
}

impl<E: Into<EngineError>> From<E> for WindowError {
    fn from(e: E) -> Self {
        WindowError::Engine(e.into())
    }
}

fn pause_of(e: &crate::marketo::Error, now: DateTime<Utc>) -> Option<Stop> {
    (e.disposition() == Disposition::PauseUntilDayTurns).then(|| Stop::Paused {
        until: next_day_turn(now),
        reason: format!("the daily bulk export quota is spent: {e}"),
    })
}

fn text(fields: &Fields, name: &str) -> Option<String> {
    match fields.get(name)? {
        Value::Null => None,
        Value::Text(t) if t.is_empty() => None,
        Value::Text(t) => Some(t.clone()),
        Value::Int(i) => Some(i.to_string()),
        other => Some(other.to_text()),
    }
}

impl Run<'_> {
    /// Returns the CRM rows per write call of `object`: the adapter's `max_batch_write` (a
    /// window's batch of [`CRM_BATCH_ROWS`] can be larger and is split).
    fn crm_batch_rows(&self, object: &str) -> usize {
        self.ctx
            .crm
            .capabilities(object)
            .map(|c| c.max_batch_write)
            .unwrap_or(BATCH_ROWS)
            .max(1)
    }

    /// Returns the pause when today's bulk bytes plus the estimate of the next window do not fit.
    async fn check_budget(&self, estimate: u64) -> Result<Option<Stop>, EngineError> {
        let now = self.ctx.clock.now();
        let day = marketo_day(now);
        let stored = self.ctx.store.api_usage(day).await?.bulk_bytes;
        let client = self.ctx.marketo.usage();
        let live = if client.day == day {
            client.bulk_bytes
        } else {
            0
        };
        let used = stored.max(live);
        if used >= self.budget || used.saturating_add(estimate) > self.budget {
            return Ok(Some(Stop::Paused {
                until: next_day_turn(now),
                reason: format!(
                    "the daily bulk budget would be exceeded: {used} bytes used today, next window estimated at {estimate} bytes, budget {} bytes",
                    self.budget
                ),
            }));
        }
        Ok(None)
    }

    /// Runs (or resumes) the export of one window through the endpoint, counts its bytes into
    /// the day's usage (once per job), and returns it.
    async fn export(
        &mut self,
        spec: &PhaseSpec,
        window: Window,
        subject: &ExportSubject,
        phase: &mut PhaseReport,
    ) -> Result<ExportedWindow, WindowError> {
        self.pipeline.ahead.retain(|w| w.start > window.start);
        let task = match self.pipeline.running.front() {
            Some((w, _)) if *w == window => self.pipeline.running.pop_front().map(|(_, t)| t),
            _ => None,
        };
        let task = match task {
            Some(task) => task,
            None => self.start_export(spec, subject, window),
        };
        // The next windows' exports queue at Marketo while this one runs and is applied.
        self.fill_pipeline(spec, subject, 1).await?;
        let result = match task.await {
            Ok(result) => result,
            Err(e) if e.is_cancelled() => Err(EndpointError::Cancelled),
            Err(e) => Err(EndpointError::File {
                what: format!(
                    "the export of {} to {} stopped: {e}",
                    window.start, window.end
                ),
            }),
        };
        let exported = match result {
            Ok(e) => e,
            Err(EndpointError::Marketo(e)) => {
                return Err(match pause_of(&e, self.ctx.clock.now()) {
                    Some(stop) => WindowError::Stop(stop),
                    None => WindowError::Engine(e.into()),
                });
            }
            Err(e) => return Err(WindowError::Engine(e.into())),
        };
        phase.exports_created += exported.created;
        phase.exports_resumed += exported.resumed;
        // A job an earlier run already completed was counted then.
        if !exported.completed_before {
            let day = marketo_day(self.ctx.clock.now());
            self.ctx.store.add_api_usage(day, 0, exported.bytes).await?;
            self.run_bytes += exported.bytes;
        }
        // The largest window so far: windows differ in size, and a budget is a limit.
        let largest = self.pipeline.estimate.unwrap_or(0).max(exported.bytes);
        self.pipeline.estimate = Some(largest);
        self.fill_pipeline(spec, subject, 0).await?;
        Ok(exported)
    }

    /// Starts the export of one window on its own task.
    fn start_export(
        &self,
        spec: &PhaseSpec,
        subject: &ExportSubject,
        window: Window,
    ) -> ExportTask {
        let endpoint = self.endpoint();
        let journal = self.ctx.journal();
        let object = export_object(spec.name, subject);
        let subject = subject.clone();
        let cancel = self.pipeline.cancel.clone();
        tokio::spawn(async move {
            endpoint
                .export_window(
                    &subject,
                    (window.start, window.end),
                    &object,
                    MAX_EXPORT_ATTEMPTS,
                    &journal,
                    &cancel,
                )
                .await
        })
    }

    /// Starts the exports of the next windows while fewer than [`EXPORT_PIPELINE`] are in flight
    /// (the window being exported or applied counts as one; [`EXPORT_PIPELINE_UNSIZED`] before
    /// a window's size is known) and today's bulk bytes plus the estimate of each started window
    /// stay within the budget.
    ///
    /// `unsized_current` is 1 while the current window's bytes are not in today's usage yet.
    async fn fill_pipeline(
        &mut self,
        spec: &PhaseSpec,
        subject: &ExportSubject,
        unsized_current: u64,
    ) -> Result<(), EngineError> {
        let depth = match self.pipeline.estimate {
            Some(_) => EXPORT_PIPELINE,
            None => EXPORT_PIPELINE_UNSIZED,
        };
        while self.pipeline.running.len() + 1 < depth && !self.cancel.is_cancelled() {
            let Some(&next) = self.pipeline.ahead.front() else {
                break;
            };
            let estimate = self.pipeline.estimate.unwrap_or(0);
            // The stored usage counts a window's bytes once it is applied: every window
            // started ahead counts with the estimate until then, and one more estimated window
            // is kept free because windows differ in size (a window started ahead cannot be
            // held back once its real size is known).
            let in_flight = self.pipeline.running.len() as u64 + 2 + unsized_current;
            if self
                .check_budget(estimate.saturating_mul(in_flight))
                .await?
                .is_some()
            {
                break;
            }
            self.pipeline.ahead.pop_front();
            let task = self.start_export(spec, subject, next);
            self.pipeline.running.push_back((next, task));
        }
        Ok(())
    }

    /// Commits an exported window as done (see [`Run::finish_window`]) and returns its bytes.
    async fn finish_exported(
        &self,
        spec: &PhaseSpec,
        window: Window,
        exported: ExportedWindow,
        spool: Option<SpoolMark>,
    ) -> Result<u64, WindowError> {
        let job = self.ctx.journal().bulk_job(&exported.job);
        self.finish_window(spec, window, job, exported.path, spool)
            .await?;
        Ok(exported.bytes)
    }

    /// Commits a window as done: its export job consumed and the phase watermark after its end
    /// (its cursor holding the write-back spool's mark, when the phase has one), in one commit.
    async fn finish_window(
        &self,
        spec: &PhaseSpec,
        window: Window,
        mut job: BulkJob,
        path: Option<PathBuf>,
        spool: Option<SpoolMark>,
    ) -> Result<(), EngineError> {
        let now = self.ctx.clock.now();
        let bytes = job.bytes;
        job.state = JobState::Consumed;
        job.updated_at = now;
        job.file_offset = job.bytes;
        let mut cursor = serde_json::json!({ "last_window_bytes": bytes });
        if let (Some(mark), Some(c)) = (spool, cursor.as_object_mut()) {
            c.insert(SPOOL_CURSOR.into(), spool_json(&mark)?);
        }
        self.ctx
            .store
            .commit(StepCommit {
                watermarks: vec![Watermark {
                    system: Side::Marketo,
                    object: spec.object.clone(),
                    queue: queue(spec.name),
                    at: window.end + ChronoDuration::seconds(1),
                    tie: None,
                    cursor: Some(cursor),
                }],
                jobs: vec![job],
                ..StepCommit::default()
            })
            .await?;
        if let Some(path) = path {
            let _ = tokio::fs::remove_file(path).await;
        }
        Ok(())
    }

    /// Returns what the lead phase exports: the members of its list, or the leads created in
    /// the window.
    fn lead_subject(&self, plans: &LeadPlans) -> ExportSubject {
        let fields = lead_export_fields(plans);
        match &self.lead_list {
            Some(list) => ExportSubject::ListedLeads {
                fields,
                list: list.clone(),
            },
            None => ExportSubject::CreatedLeads { fields },
        }
    }

    async fn lead_window(
        &mut self,
        spec: &PhaseSpec,
        window: Window,
        plans: &LeadPlans,
        phase: &mut PhaseReport,
    ) -> Result<u64, WindowError> {
        let plan = &plans.lead;
        let subject = self.lead_subject(plans);
        let exported = self.export(spec, window, &subject, phase).await?;
        // The CRM keys to write back go to the phase's spool on disk, not memory.
        let mut spool = self.lead_spool.take().ok_or_else(|| {
            EngineError::Config("the lead phase's write-back spool is not open".into())
        })?;
        let schema = plans.lead_schema.clone();
        if let Some(mut rx) = exported.rows(Some(schema), CRM_BATCH_ROWS, self.cancel) {
            let mut companies: BTreeMap<String, Observed> = BTreeMap::new();
            let mut sales: BTreeSet<String> = BTreeSet::new();
            while let Some(batch) = rx.next_batch().await {
                if self.cancel.is_cancelled() {
                    break;
                }
                let rows: Vec<ExportRow> = batch
                    .into_iter()
                    .filter_map(|r| match r {
                        Ok(row) => Some(row),
                        Err(e) => {
                            warn!(error = %e, "export row rejected");
                            phase.rejected += 1;
                            None
                        }
                    })
                    .collect();
                phase.rows += rows.len() as u64;
                if let Some(company) = &plans.company {
                    collect_companies(company, &rows, &mut companies, phase);
                }
                if plans.salesperson.is_some() {
                    sales.extend(
                        rows.iter()
                            .filter_map(|r| text(&r.fields, "externalSalesPersonId")),
                    );
                }
                self.apply_leads(plan, rows, phase, &mut spool).await?;
            }
            join_reader(rx).await?;
            if self.cancel.is_cancelled() {
                return Err(WindowError::Engine(EngineError::Cancelled));
            }
            if let Some(company) = &plans.company {
                let spec = TwoWaySpec {
                    // Keyed as this copy keys them (by Marketo key), see `inbound_pair`.
                    ledger: Direction::MarketoToCrm,
                    ..companies::spec(company)
                };
                let named = companies.into_iter().collect();
                self.apply_pairs(company, &spec, named, phase, false)
                    .await?;
            }
            if let Some(plan) = &plans.salesperson {
                self.apply_named(plan, Named::Salespersons, sales, phase, false)
                    .await?;
            }
        }
        // The window's keys are on disk before the commit that counts them as the window's.
        let mark = spool.checkpoint().map_err(EngineError::from)?;
        self.lead_spool = Some(spool);
        let bytes = self
            .finish_exported(spec, window, exported, Some(mark))
            .await?;
        // A file that reached the size limit goes now; the rest at the end of the phase.
        self.write_back_spool(spec, plan, WriteBackScope::Full, window.end, phase)
            .await?;
        Ok(bytes)
    }

    /// Finishes the write-back imports an earlier run left, then opens the phase's spool: the
    /// one the stored watermark's cursor marks (cut back to what was committed), or a new one.
    async fn open_spool(
        &mut self,
        spec: &PhaseSpec,
        plan: &Plan,
        stored: Option<&Watermark>,
        phase: &mut PhaseReport,
    ) -> Result<(), EngineError> {
        let object = queue(spec.name);
        let now = self.ctx.clock.now();
        let job = self.write_back_job(&object, (self.spool_since, now), plan);
        let endpoint = self.endpoint();
        let resumed = endpoint
            .resume_write_back(&job, &self.ctx.journal(), self.cancel)
            .await?;
        let imported: Vec<PathBuf> = resumed
            .batches
            .iter()
            .filter_map(|b| b.file.clone())
            .collect();
        self.settle_write_back(plan, resumed, phase, None).await?;
        let mark = match stored
            .and_then(|w| w.cursor.as_ref())
            .and_then(|c| c.get(SPOOL_CURSOR))
        {
            Some(v) => Some(serde_json::from_value::<SpoolMark>(v.clone()).map_err(|e| {
                EngineError::Config(format!(
                    "the stored write-back spool mark of {object} cannot be read ({e}): {v}"
                ))
            })?),
            None => None,
        };
        // The marked file holds keys of committed windows: it is gone only when an import
        // wrote it back (files sent by REST go after the next mark is committed). Gone without
        // one (the work directory changed or was cleaned), its keys would be lost unsaid.
        if let Some(mark) = &mark {
            let path = mark.path(&self.work_dir);
            if mark.rows > 0 && !path.exists() && !imported.contains(&path) {
                return Err(EngineError::Config(format!(
                    "the write-back spool file {} holding {} CRM keys of committed windows is missing (was the work directory changed or cleaned?); the keys cannot be written back to Marketo",
                    path.display(),
                    mark.rows
                )));
            }
        }
        let stem = format!(
            "{}-{}.writeback",
            object.replace(':', "-"),
            now.format("%Y%m%dT%H%M%S%3f")
        );
        self.lead_spool = Some(endpoint.key_spool(&stem, &plan.marketo_crm_key, mark.as_ref())?);
        Ok(())
    }

    /// Writes the spooled keys of `scope` back (nothing when none is due), puts each refused
    /// key into the error ledger and marks the import batches consumed; after
    /// [`WriteBackScope::All`] the phase watermark's cursor gets the emptied spool's mark, in
    /// the same commit.
    async fn write_back_spool(
        &mut self,
        spec: &PhaseSpec,
        plan: &Plan,
        scope: WriteBackScope,
        until: DateTime<Utc>,
        phase: &mut PhaseReport,
    ) -> Result<(), EngineError> {
        let Some(mut spool) = self.lead_spool.take() else {
            return Ok(());
        };
        let due = match scope {
            WriteBackScope::Full => spool.has_full(),
            WriteBackScope::All => !spool.is_empty(),
        };
        if !due {
            self.lead_spool = Some(spool);
            return Ok(());
        }
        let object = queue(spec.name);
        let job = self.write_back_job(&object, (self.spool_since, until), plan);
        let report = self
            .endpoint()
            .write_back_keys(&job, &mut spool, scope, &self.ctx.journal(), self.cancel)
            .await?;
        let watermark = match scope {
            WriteBackScope::Full => None,
            WriteBackScope::All => {
                let mark = spool.checkpoint()?;
                let stored = self
                    .ctx
                    .store
                    .watermark(Side::Marketo, &spec.object, &object)
                    .await?;
                match stored {
                    Some(mut w) => {
                        let mut cursor = w.cursor.take().unwrap_or_else(|| serde_json::json!({}));
                        if let Some(c) = cursor.as_object_mut() {
                            c.insert(SPOOL_CURSOR.into(), spool_json(&mark)?);
                        }
                        w.cursor = Some(cursor);
                        Some(w)
                    }
                    None => None,
                }
            }
        };
        self.lead_spool = Some(spool);
        let sent = report.sent.clone();
        self.settle_write_back(plan, report, phase, watermark)
            .await?;
        for path in sent {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// Returns the endpoint as bootstrap configures it (its poll interval, waits, work directory).
    fn endpoint(&self) -> impl MarketoEndpoint + use<> {
        self.ctx.endpoint(EndpointSettings {
            poll: self.export.poll_interval,
            export_max_wait: self.export.max_wait,
            work_dir: self.work_dir.clone(),
            ..EndpointSettings::default()
        })
    }

    /// Returns the write-back of the lead phase's windows in `range`, named for the endpoint.
    fn write_back_job<'a>(
        &self,
        object: &'a str,
        range: (DateTime<Utc>, DateTime<Utc>),
        plan: &'a Plan,
    ) -> WriteBackJob<'a> {
        WriteBackJob {
            object,
            window: range,
            key_field: &plan.marketo_crm_key,
            rest_threshold: self.write_back_threshold,
        }
    }

    /// Counts a write-back into the phase and commits, in one commit, each refused key as an
    /// error-ledger entry, its import batches consumed and `watermark` (when given).
    async fn settle_write_back(
        &self,
        plan: &Plan,
        report: WriteBackReport,
        phase: &mut PhaseReport,
        watermark: Option<Watermark>,
    ) -> Result<(), EngineError> {
        phase.written_back += report.written;
        phase.write_back_failed += report.failed;
        phase.write_back_imports += report.imports;
        phase.write_back_imports_resumed += report.imports_resumed;
        let now = self.ctx.clock.now();
        let errors = report
            .refused
            .into_iter()
            .map(|r| write_back_error(plan, now, r))
            .collect();
        let journal = self.ctx.journal();
        let jobs = report
            .batches
            .iter()
            .map(|b| {
                let mut j = journal.bulk_job(b);
                j.state = JobState::Consumed;
                j.file_offset = j.bytes;
                j
            })
            .collect();
        let commit = StepCommit {
            watermarks: watermark.into_iter().collect(),
            errors_upsert: errors,
            jobs,
            ..StepCommit::default()
        };
        if !commit.is_empty() {
            self.ctx.store.commit(commit).await?;
        }
        Ok(())
    }

    /// Maps one batch of lead rows and applies it in one store commit: the leads not linked yet
    /// are upserted into the CRM keyed by the Marketo id ([`Run::apply_new_leads`]), those
    /// linked already are reconciled ([`Run::apply_linked_leads`]); the CRM keys Marketo lacks
    /// go to the write-back spool.
    async fn apply_leads(
        &mut self,
        plan: &Plan,
        rows: Vec<ExportRow>,
        phase: &mut PhaseReport,
        spool: &mut KeySpool,
    ) -> Result<(), EngineError> {
        let leads = map_leads(plan, rows, phase);
        if leads.is_empty() {
            return Ok(());
        }
        let object = plan.object.as_str();
        let direction = Direction::MarketoToCrm;
        let keys: Vec<String> = leads.iter().map(|l| l.id.clone()).collect();
        let previous = self.open_entries(object, &keys).await?;
        let mut links: BTreeMap<String, Link> = BTreeMap::new();
        for l in self.ctx.store.links_by_marketo_keys(object, &keys).await? {
            if l.tombstone.is_none() {
                links.insert(l.marketo_key.clone(), l);
            }
        }
        let (mut linked, mut fresh) = (Vec::new(), Vec::new());
        for lead in leads {
            match links.remove(&lead.id) {
                Some(link) => linked.push((lead, link)),
                None => fresh.push(lead),
            }
        }
        let mut batch = LeadBatch {
            target: RowTarget {
                object,
                direction,
                previous: &previous,
            },
            step: StepCommit::default(),
            summary: CycleSummary::default(),
        };
        self.apply_new_leads(plan, fresh, &mut batch, phase, spool)
            .await?;
        self.apply_linked_leads(plan, linked, &mut batch, spool)
            .await?;
        let LeadBatch {
            step, mut summary, ..
        } = batch;
        let counts = summary.counts_mut(object, direction);
        phase.created += counts.created;
        phase.updated += counts.updated;
        phase.failed += counts.failed;
        phase.links += step.links_upsert.len() as u64;
        commit::finish(self.ctx, step).await
    }

    /// Upserts the leads not linked yet into the CRM keyed by the Marketo id (a re-run finds
    /// the rows instead of creating them again) and spools the CRM keys Marketo lacks.
    async fn apply_new_leads(
        &mut self,
        plan: &Plan,
        leads: Vec<MappedLead>,
        batch: &mut LeadBatch<'_>,
        phase: &mut PhaseReport,
        spool: &mut KeySpool,
    ) -> Result<(), EngineError> {
        if leads.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = leads.iter().map(|l| l.id.clone()).collect();
        let (leads, mut crm_rows): (Vec<MappedLead>, Vec<Fields>) = leads
            .into_iter()
            .map(|mut l| {
                let row = std::mem::take(&mut l.row);
                (l, row)
            })
            .unzip();
        // A lead whose match value already names a CRM record not linked to Marketo is not
        // created (that would duplicate it): the record adopts it. Its Marketo-id column is
        // written first (an upsert keyed by the CRM primary key, which only updates that row),
        // so the upsert below keyed by the Marketo id updates it with the lead's values, and
        // the CRM key goes back to Marketo and the link is committed like any other lead's. Only
        // the first lead matching a record adopts it; a lead whose adoption the CRM refuses, or
        // a second lead with the same match value, goes to the error ledger for identity
        // resolution.
        let matches = self.unlinked_matches(plan, &ids, &crm_rows).await?;
        let mut held: BTreeMap<usize, (String, String)> = BTreeMap::new();
        if !matches.is_empty() {
            let pk = self
                .ctx
                .crm
                .describe(&plan.crm_object)
                .await
                .ok()
                .and_then(|s| s.id_field)
                .unwrap_or_else(|| "id".to_owned());
            let mut adopted: BTreeSet<String> = BTreeSet::new();
            for (i, (field, crm_id)) in matches {
                let Some(id) = ids.get(i) else { continue };
                if !adopted.insert(crm_id.clone()) {
                    held.insert(i, (field, crm_id));
                    continue;
                }
                let mut rec = Fields::new();
                rec.insert(pk.clone(), Value::Text(crm_id.clone()));
                rec.insert(plan.crm_marketo_id.clone(), Value::Text(id.clone()));
                let res = self.ctx.crm.upsert(&plan.crm_object, &pk, &[rec]).await?;
                match res.first() {
                    Some(WriteResult::Updated { id: got } | WriteResult::Created { id: got })
                        if *got == crm_id =>
                    {
                        info!(lead = %id, crm = %crm_id, "existing crm record adopts the lead");
                        phase.adopted += 1;
                        // The lead's empty fields do not blank the record's values.
                        if let Some(row) = crm_rows.get_mut(i) {
                            row.retain(|_, v| !v.is_null());
                        }
                    }
                    other => {
                        warn!(lead = %id, crm = %crm_id, result = ?other, "crm record cannot adopt the lead");
                        held.insert(i, (field, crm_id));
                    }
                }
            }
        }
        let target = &batch.target;
        let (object, direction) = (target.object, target.direction);
        let mut rows: Vec<NewRow> = Vec::with_capacity(crm_rows.len());
        let mut kept_keys = Vec::with_capacity(crm_rows.len());
        for (i, (lead, record)) in leads.into_iter().zip(crm_rows).enumerate() {
            let Some((field, crm_id)) = held.get(&i) else {
                rows.push((lead.id, lead.canonical, record));
                kept_keys.push(lead.known);
                continue;
            };
            phase.held += 1;
            // Retryable: the continuous sync pairs it once identity resolution (or an
            // operator) links the two records.
            let failure = Failure::new(
                "bootstrap_match",
                format!(
                    "CRM record {crm_id} has the same `{field}` and no Marketo id; the lead was not created to avoid a duplicate (link them by identity resolution)"
                ),
                true,
            );
            let subject = Subject {
                object,
                direction,
                record_key: &lead.id,
                other_key: Some(crm_id.clone()),
                payload: serde_json::to_value(&lead.canonical).unwrap_or_default(),
            };
            let entry = ledger_entry(self.ctx, subject, failure, target.previous.get(&lead.id));
            batch.step.errors_upsert.push(entry);
        }
        let size = self.crm_batch_rows(&plan.crm_object);
        let (ctx, cancel) = (self.ctx, self.cancel);
        let row_ids: Vec<String> = rows.iter().map(|(id, _, _)| id.clone()).collect();
        let written = write_linked_rows(
            ctx,
            plan,
            target,
            &plan.crm_marketo_id,
            rows,
            size,
            &mut batch.step,
            &mut batch.summary,
            cancel,
        )
        .await?;
        // The CRM keys Marketo does not hold yet go to the write-back spool.
        for ((id, known), crm_id) in row_ids.iter().zip(&kept_keys).zip(&written) {
            if let Some(crm_id) = crm_id
                && known.as_deref() != Some(crm_id.as_str())
            {
                spool.push(id, crm_id)?;
            }
        }
        Ok(())
    }

    /// Reconciles the leads an earlier run (or the cycle) linked with their CRM records against
    /// the links' agreed values ([`leads::inbound`]): only what Marketo changed since is written
    /// (keyed by the CRM primary key), a CRM edit since stays and is not written to Marketo
    /// (the next cycle carries it), and the links' agreed values move in the batch's commit. A
    /// lead with nothing to write is neither created nor updated. Their CRM keys Marketo lacks
    /// go to the write-back spool.
    async fn apply_linked_leads(
        &mut self,
        plan: &Plan,
        leads: Vec<(MappedLead, Link)>,
        batch: &mut LeadBatch<'_>,
        spool: &mut KeySpool,
    ) -> Result<(), EngineError> {
        if leads.is_empty() {
            return Ok(());
        }
        let input: Vec<LinkedLead<'_>> = leads
            .iter()
            .map(|(lead, link)| LinkedLead {
                link,
                canonical: &lead.canonical,
            })
            .collect();
        let reconciled = inbound::reconcile_inbound(self.ctx, plan, &input).await?;
        let target = &batch.target;
        let (object, direction) = (target.object, target.direction);
        let now = self.ctx.clock.now();
        let mut rows: Vec<NewRow> = Vec::new();
        let mut settled: Vec<(&Link, Vec<FieldConflict>)> = Vec::new();
        for ((lead, link), outcome) in leads.iter().zip(reconciled.leads) {
            let (row, agreed, conflicts) = match outcome {
                Inbound::Gone => {
                    warn!(lead = %lead.id, crm = %link.crm_key, "the linked crm record is gone; left to the sync's deletion handling");
                    continue;
                }
                Inbound::Reconciled {
                    row,
                    agreed,
                    conflicts,
                } => (row, agreed, conflicts),
            };
            if lead.known.as_deref() != Some(link.crm_key.as_str()) {
                spool.push(&lead.id, &link.crm_key)?;
            }
            if let Some(row) = row {
                rows.push((lead.id.clone(), agreed, row));
                settled.push((link, conflicts));
                continue;
            }
            record_conflicts(&mut batch.step, object, link, &conflicts, now);
            if agreed != link.base {
                let moved = commit::link(object, &lead.id, &link.crm_key, agreed, now);
                batch.step.links_upsert.push(moved);
            }
            if target.previous.contains_key(&lead.id) {
                let key = commit::error_key(object, direction, &lead.id);
                batch.step.errors_resolve.push(key);
            }
        }
        let size = self.crm_batch_rows(&plan.crm_object);
        let (ctx, cancel) = (self.ctx, self.cancel);
        let written = write_linked_rows(
            ctx,
            plan,
            target,
            &reconciled.key_column,
            rows,
            size,
            &mut batch.step,
            &mut batch.summary,
            cancel,
        )
        .await?;
        for ((link, conflicts), crm_id) in settled.into_iter().zip(&written) {
            if crm_id.is_some() {
                record_conflicts(&mut batch.step, object, link, &conflicts, now);
            }
        }
        Ok(())
    }

    async fn opportunity_window(
        &mut self,
        spec: &PhaseSpec,
        window: Window,
        plans: &OppPlans,
        phase: &mut PhaseReport,
    ) -> Result<u64, WindowError> {
        let subject = ExportSubject::Activities {
            type_ids: vec![ADD_TO_OPPORTUNITY],
            fields: ACTIVITY_FIELDS.map(String::from).to_vec(),
        };
        let exported = self.export(spec, window, &subject, phase).await?;
        if let Some(mut rx) = exported.activities(BATCH_ROWS, self.cancel) {
            while let Some(batch) = rx.next_batch().await {
                let mut keys = BTreeSet::new();
                let mut roles: BTreeMap<String, Fields> = BTreeMap::new();
                for row in batch {
                    let row = match row {
                        Ok(row) => row,
                        Err(e) => {
                            warn!(error = %e, "activity row rejected");
                            phase.rejected += 1;
                            continue;
                        }
                    };
                    phase.rows += 1;
                    let key = row
                        .attributes
                        .get("Oppty ID")
                        .and_then(|v| match v {
                            serde_json::Value::String(s) => Some(s.clone()),
                            serde_json::Value::Null => None,
                            other => Some(other.to_string()),
                        })
                        .or_else(|| row.primary_attribute_value.clone());
                    let Some(key) = key.filter(|k| !k.is_empty()) else {
                        phase.rejected += 1;
                        continue;
                    };
                    keys.insert(key.clone());
                    let role = row
                        .attributes
                        .get("Role")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let mut raw = Fields::new();
                    raw.insert("externalOpportunityId".into(), Value::Text(key.clone()));
                    raw.insert("leadId".into(), Value::Int(row.lead_id));
                    raw.insert("role".into(), Value::Text(role.clone()));
                    if let Some(p) = row.attributes.get("Is Primary") {
                        raw.insert("isPrimary".into(), Value::from_json(p));
                    }
                    roles.insert(format!("{key}:{}:{role}", row.lead_id), raw);
                }
                if let Some(plan) = &plans.opportunity {
                    self.apply_named(plan, Named::Opportunities, keys, phase, true)
                        .await?;
                }
                if let Some(plan) = &plans.role {
                    let spec = TwoWaySpec::marketo_to_crm(ObjectFamily::Roles, plan);
                    self.apply_raw(plan, &spec, roles, phase, false).await?;
                }
            }
            join_reader(rx).await?;
            if self.cancel.is_cancelled() {
                return Err(WindowError::Engine(EngineError::Cancelled));
            }
        }
        self.finish_exported(spec, window, exported, None).await
    }

    /// Reads the Marketo records named by `keys` (opportunities named by Add to Opportunity
    /// activities, salespersons named on a window's leads) and upserts them into the CRM keyed
    /// by the object's external key.
    async fn apply_named(
        &mut self,
        plan: &Plan,
        object: Named,
        keys: BTreeSet<String>,
        phase: &mut PhaseReport,
        primary: bool,
    ) -> Result<(), EngineError> {
        let key_field = object.key_field();
        let keys: Vec<String> = keys.into_iter().collect();
        let mut fields = plan.read_fields(Side::Marketo);
        if !fields.iter().any(|f| f == key_field) {
            fields.push(key_field.into());
        }
        for chunk in keys.chunks(BATCH_ROWS) {
            let mut found: BTreeMap<String, Fields> = BTreeMap::new();
            let mut token: Option<String> = None;
            loop {
                let marketo = &self.ctx.marketo;
                let page = match object {
                    Named::Opportunities => {
                        marketo
                            .get_opportunities(key_field, chunk, &fields, token.as_deref())
                            .await?
                    }
                    Named::Salespersons => {
                        marketo
                            .get_salespersons(key_field, chunk, &fields, token.as_deref())
                            .await?
                    }
                };
                for record in &page.records {
                    let raw: Fields = record
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::from_json(v)))
                        .collect();
                    if let Some(key) = text(&raw, key_field) {
                        found.insert(key, raw);
                    }
                }
                match page.next_page_token {
                    Some(t) if page.more_result && !page.records.is_empty() => token = Some(t),
                    _ => break,
                }
            }
            let spec = TwoWaySpec::marketo_to_crm(object.family(), plan);
            self.apply_raw(plan, &spec, found, phase, primary).await?;
        }
        Ok(())
    }

    /// Reads raw Marketo records (by their Marketo key) through the plan and copies them into
    /// the CRM through the pipeline (see [`Run::apply_pairs`]); a record the mapping cannot
    /// read is counted rejected.
    async fn apply_raw(
        &mut self,
        plan: &Plan,
        spec: &TwoWaySpec,
        raw: BTreeMap<String, Fields>,
        phase: &mut PhaseReport,
        primary: bool,
    ) -> Result<(), EngineError> {
        let mut read = Vec::with_capacity(raw.len());
        for (key, fields) in raw {
            match Observed::read(plan, Side::Marketo, fields, None) {
                Ok(o) => read.push((key, o)),
                Err(e) => {
                    warn!(object = %plan.object, key = %key, error = %e, "record cannot be mapped");
                    phase.rejected += 1;
                }
            }
        }
        self.apply_pairs(plan, spec, read, phase, primary).await
    }

    /// Returns, by batch position, the leads not yet in the CRM (no record holds their Marketo
    /// id) whose first match field names a CRM record without a Marketo id, with the field and
    /// that record's id.
    async fn unlinked_matches(
        &self,
        plan: &Plan,
        ids: &[String],
        crm_rows: &[Fields],
    ) -> Result<BTreeMap<usize, (String, String)>, EngineError> {
        let mut out = BTreeMap::new();
        let Some(field) = plan
            .match_fields
            .first()
            .and_then(|m| plan.field(m))
            .and_then(|f| f.crm.clone())
        else {
            return Ok(out);
        };
        let keys: Vec<Value> = ids.iter().cloned().map(Value::Text).collect();
        let present: BTreeSet<String> = self
            .ctx
            .crm
            .find(&plan.crm_object, &plan.crm_marketo_id, &keys)
            .await?
            .iter()
            .filter_map(|r| text(&r.fields, &plan.crm_marketo_id))
            .collect();
        let mut wanted: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut values = Vec::new();
        for (i, (id, row)) in ids.iter().zip(crm_rows).enumerate() {
            if present.contains(id) {
                continue;
            }
            if let (Some(v), Some(raw)) = (text(row, &field), row.get(&field)) {
                wanted.entry(v.to_lowercase()).or_default().push(i);
                values.push(raw.clone());
            }
        }
        if values.is_empty() {
            return Ok(out);
        }
        for record in self.ctx.crm.find(&plan.crm_object, &field, &values).await? {
            if text(&record.fields, &plan.crm_marketo_id).is_some() {
                continue;
            }
            let Some(v) = text(&record.fields, &field) else {
                continue;
            };
            for i in wanted.get(&v.to_lowercase()).into_iter().flatten() {
                out.entry(*i)
                    .or_insert_with(|| (field.clone(), record.id.clone()));
            }
        }
        Ok(out)
    }

    /// Copies Marketo records (by their Marketo key) into the CRM through the pipeline's
    /// two-way runner with the object's `spec`, in batches of [`BATCH_ROWS`]: a record not
    /// linked yet is a new CRM row keyed by the Marketo-id column (a re-run finds it instead of
    /// creating a second one); a linked one is reconciled against its link's agreed values
    /// with its CRM side unchanged, so only the fields Marketo changed since are written and a
    /// CRM-side edit of another field stays. Each record is counted from its outcome (the
    /// phase's own object, `primary`, in created and updated; every object in failed and
    /// links), a refused one is one ledger entry under the one retry policy, and each batch is
    /// one store commit. A CRM error for a whole batch that retrying cannot fix is counted as
    /// failed records, not fatal (best effort).
    async fn apply_pairs(
        &mut self,
        plan: &Plan,
        spec: &TwoWaySpec,
        records: Vec<(String, Observed)>,
        phase: &mut PhaseReport,
        primary: bool,
    ) -> Result<(), EngineError> {
        let object = plan.object.as_str();
        let rows = self.crm_batch_rows(&plan.crm_object);
        let options = CycleOptions::default();
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let chunk: Vec<(String, Observed)> = records.by_ref().take(BATCH_ROWS).collect();
            let keys: Vec<String> = chunk.iter().map(|(k, _)| k.clone()).collect();
            let mut links: BTreeMap<String, Link> = BTreeMap::new();
            for l in self.ctx.store.links_by_marketo_keys(object, &keys).await? {
                if l.tombstone.is_none() {
                    links.insert(l.marketo_key.clone(), l);
                }
            }
            let previous = self.open_entries(object, &keys).await?;
            let pairs: Vec<SidePair> = chunk
                .into_iter()
                .map(|(key, read)| {
                    let link = links.remove(&key);
                    inbound_pair(plan, key, read, link)
                })
                .collect();
            let runner = TwoWay {
                ctx: self.ctx,
                plan,
                spec,
                previous: &previous,
                marketo: None,
            };
            let batch = CrmBatch {
                rows,
                options: &options,
                cancel: self.cancel,
            };
            let mut summary = CycleSummary::default();
            let commit = StepCommit::default();
            let linked = match runner
                .run_batched(pairs, commit, &mut summary, &batch)
                .await
            {
                Ok(linked) => linked,
                Err(EngineError::Crm(e)) if !e.is_retryable() => {
                    warn!(object, error = %e, "crm refused a batch");
                    phase.failed += keys.len() as u64;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let counts = summary.counts_mut(object, Direction::MarketoToCrm);
            if primary {
                phase.created += counts.created;
                phase.updated += counts.updated;
            }
            phase.failed += counts.failed;
            phase.links += linked.len() as u64;
        }
        Ok(())
    }

    /// Returns the open ledger entries of `object` in the Marketo -> CRM direction for these
    /// record keys (a refusal again counts its attempts on, under the one retry policy).
    async fn open_entries(
        &self,
        object: &str,
        keys: &[String],
    ) -> Result<BTreeMap<String, SyncError>, EngineError> {
        let wanted: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        let mut out = BTreeMap::new();
        for e in open_errors(self.ctx, object).await? {
            if e.direction == Direction::MarketoToCrm && wanted.contains(e.record_key.as_str()) {
                out.insert(e.record_key.clone(), e);
            }
        }
        Ok(out)
    }
}

/// One lead row of an export batch, mapped.
struct MappedLead {
    /// The Marketo lead id.
    id: String,
    /// Its canonical values.
    canonical: Fields,
    /// Its CRM row (with the Marketo id), for a lead not linked yet.
    row: Fields,
    /// The CRM key Marketo holds for it (the CRM-key field).
    known: Option<String>,
}

/// One batch of leads being applied: its ledger context, its one store commit and its counts.
struct LeadBatch<'a> {
    target: RowTarget<'a>,
    step: StepCommit,
    summary: CycleSummary,
}

/// Maps a batch of lead rows through the lead plan; a row without an id, or one the mapping
/// cannot read, is counted rejected.
fn map_leads(plan: &Plan, rows: Vec<ExportRow>, phase: &mut PhaseReport) -> Vec<MappedLead> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(id) = text(&row.fields, "id") else {
            phase.rejected += 1;
            continue;
        };
        let canonical = match plan.to_canonical(Side::Marketo, &row.fields) {
            Ok(c) => c,
            Err(e) => {
                warn!(lead = %id, error = %e, "lead cannot be mapped");
                phase.rejected += 1;
                continue;
            }
        };
        let mut record = plan.render(Side::Crm, &canonical);
        record.insert(plan.crm_marketo_id.clone(), Value::Text(id.clone()));
        out.push(MappedLead {
            known: text(&row.fields, &plan.marketo_crm_key),
            id,
            canonical,
            row: record,
        });
    }
    out
}

/// Records the conflicts a linked lead's reconcile settled (for Marketo's value) in `step`.
fn record_conflicts(
    step: &mut StepCommit,
    object: &str,
    link: &Link,
    conflicts: &[FieldConflict],
    now: DateTime<Utc>,
) {
    for c in conflicts {
        let conflict = c.record(object, &link.marketo_key, &link.crm_key, now);
        step.conflicts.push(conflict);
    }
}

/// Returns the pair of a Marketo record bootstrap copies into the CRM: its CRM side unchanged
/// at the link's agreed values when linked (so a re-run reconciles), else missing (a new row,
/// carrying its Marketo key in the Marketo-id column).
fn inbound_pair(plan: &Plan, key: String, read: Observed, link: Option<Link>) -> SidePair {
    let mut crm_extra = Fields::new();
    if link.is_none() {
        crm_extra.insert(plan.crm_marketo_id.clone(), Value::Text(key.clone()));
    }
    SidePair {
        crm_key: link.as_ref().map(|l| l.crm_key.clone()),
        ledger_key: key.clone(),
        read_from: Direction::MarketoToCrm,
        crm: Seen::of(None, link.is_some()),
        base: link.map(|l| l.base),
        marketo: Seen::Read(read),
        // Nothing is written to Marketo: its side is the one read.
        key_fields: Fields::new(),
        marketo_extra: Fields::new(),
        crm_extra,
        marketo_key: key,
    }
}

/// Returns the ledger entry of a CRM key Marketo refused to write back to a lead: keyed by the
/// CRM record (direction CRM -> Marketo), retried by the one policy when the refusal may clear.
fn write_back_error(plan: &Plan, now: DateTime<Utc>, refused: KeyRefusal) -> SyncError {
    let crm_key = refused.crm_key.unwrap_or_default();
    let mut payload = serde_json::Map::new();
    payload.insert(plan.marketo_crm_key.clone(), serde_json::json!(crm_key));
    if let Some(id) = &refused.lead_id {
        payload.insert("id".into(), serde_json::json!(id));
    }
    let r = refused.refusal;
    ledger::entry(
        &RetryPolicy::default(),
        now,
        Subject {
            object: &plan.object,
            direction: Direction::CrmToMarketo,
            record_key: &crm_key,
            other_key: refused.lead_id,
            payload: serde_json::Value::Object(payload),
        },
        Failure::new(r.code, r.message, r.retryable),
        None,
    )
}

/// The key of the write-back spool's mark in the lead phase watermark's cursor.
const SPOOL_CURSOR: &str = "write_back";

fn spool_json(mark: &SpoolMark) -> Result<serde_json::Value, EngineError> {
    serde_json::to_value(mark)
        .map_err(|e| EngineError::Config(format!("the write-back spool mark: {e}")))
}

/// Collects the companies named on a window's lead rows (by externalCompanyId, else the
/// company name), each read through the company plan from the first row naming it.
fn collect_companies(
    plan: &Plan,
    rows: &[ExportRow],
    out: &mut BTreeMap<String, Observed>,
    phase: &mut PhaseReport,
) {
    for row in rows {
        let key = text(&row.fields, "externalCompanyId").or_else(|| text(&row.fields, "company"));
        let Some(key) = key else { continue };
        if out.contains_key(&key) {
            continue;
        }
        match Observed::read(plan, Side::Marketo, row.fields.clone(), None) {
            Ok(o) if !o.canonical.is_empty() => {
                out.insert(key, o);
            }
            Ok(_) => {}
            Err(e) => {
                warn!(company = %key, error = %e, "company cannot be mapped");
                phase.rejected += 1;
            }
        }
    }
}

async fn join_reader<T>(rows: RowStream<T>) -> Result<(), WindowError> {
    match rows.finish().await {
        Ok(()) => Ok(()),
        Err(EndpointError::Cancelled) => Err(WindowError::Engine(EngineError::Cancelled)),
        Err(EndpointError::File { what }) => Err(WindowError::Engine(EngineError::Mapping(what))),
        Err(e) => Err(WindowError::Engine(e.into())),
    }
}

/// The Marketo objects bootstrap reads by the keys other records name.
#[derive(Debug, Clone, Copy)]
enum Named {
    /// Opportunities, by externalOpportunityId.
    Opportunities,
    /// Salespersons, by externalSalesPersonId.
    Salespersons,
}

impl Named {
    /// Returns the Marketo family the object's records belong to.
    fn family(self) -> ObjectFamily {
        match self {
            Named::Opportunities => ObjectFamily::Opportunities,
            Named::Salespersons => ObjectFamily::SalesPersons,
        }
    }

    fn key_field(self) -> &'static str {
        match self {
            Named::Opportunities => "externalOpportunityId",
            Named::Salespersons => "externalSalesPersonId",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn windows_cover_the_range_without_gaps_and_stay_within_31_days() {
        let from = t("2024-01-01T00:00:00Z");
        let to = t("2024-04-15T12:00:00Z");
        let w = windows(from, to);
        assert_eq!(w.len(), 4);
        assert_eq!(w[0].start, from);
        assert_eq!(w[0].end, t("2024-01-31T23:59:59Z"));
        for pair in w.windows(2) {
            assert_eq!(pair[1].start, pair[0].end + ChronoDuration::seconds(1));
        }
        for x in &w {
            assert!(x.end - x.start < ChronoDuration::days(31));
        }
        assert_eq!(w.last().unwrap().end, to);
        assert!(windows(to, from).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn windows_always_tile_the_range(start in 0i64..2_000_000_000, len in 0i64..200_000_000) {
            let from = DateTime::from_timestamp(start, 0).unwrap();
            let to = from + ChronoDuration::seconds(len);
            let w = windows(from, to);
            proptest::prop_assert_eq!(w[0].start, from);
            proptest::prop_assert_eq!(w.last().unwrap().end, to);
            for x in &w {
                proptest::prop_assert!(x.start <= x.end);
                proptest::prop_assert!(x.end - x.start <= ChronoDuration::days(31) - ChronoDuration::seconds(1));
            }
            for pair in w.windows(2) {
                proptest::prop_assert_eq!(pair[1].start, pair[0].end + ChronoDuration::seconds(1));
            }
        }
    }

    #[test]
    fn the_recorder_keeps_events_in_order_and_runs_its_hook() {
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let hook_seen = seen.clone();
        let p = RecordingProgress::with_window_hook(move |phase, n| {
            hook_seen.lock().unwrap().push((phase.to_owned(), n));
        });
        let (a, b) = (t("2024-01-01T00:00:00Z"), t("2024-01-31T23:59:59Z"));
        p.phase("leads", 2);
        p.window("leads", a, b, 10, 100);
        p.window("leads", a, b, 5, 50);
        p.finish(&BootstrapReport::default());
        assert_eq!(p.events().len(), 4);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("leads".to_owned(), 1), ("leads".to_owned(), 2)]
        );
        // The indicatif display draws nothing when stderr is not a terminal and never panics.
        let bars = IndicatifProgress::new();
        bars.phase("leads", 2);
        bars.window("leads", a, b, 10, 100);
        bars.window("unknown", a, b, 1, 1);
        bars.finish(&BootstrapReport::default());
    }

    #[test]
    fn the_retention_warning_only_fires_past_90_days() {
        let now = t("2024-06-01T00:00:00Z");
        assert!(retention_warning(t("2024-04-01T00:00:00Z"), now).is_none());
        let w = retention_warning(t("2024-01-01T00:00:00Z"), now).unwrap();
        assert!(w.contains("90 days") && w.contains("2024-01-01"), "{w}");
    }
}
