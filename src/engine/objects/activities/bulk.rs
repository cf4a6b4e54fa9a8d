//! Bulk Activity Extract for activity queues at volume.
//!
//! The feed (Get Lead Activities) costs one call per 300 activities: a million Visit Webpage
//! activities a day would cost over 3,300 calls. One export job costs about four (create,
//! enqueue, a status read or a few, the file) whatever its size, within the daily bulk budget.
//!
//! **When.** A queue is read by export instead of the feed when the activities expected since
//! its watermark reach `sync.activity_bulk_threshold`, and at most once per
//! `sync.activity_bulk_every_secs` (the schedule). How many are expected is not known before
//! reading, so it is estimated at no extra cost:
//!
//! - from the queue's *rate* (activities per second), measured by its last read (a feed read:
//!   the activities read over the time since the watermark; an export: its rows over its range;
//!   kept in the queue's second watermark row `activity:<type id>:bulk`), times the time since
//!   the watermark. If the rate says the threshold is reached by the time the next export is
//!   due, the queue is a bulk queue: it is exported when due and, until then, *waits* (no feed
//!   calls; its activities arrive at most one schedule period late). Otherwise it is read by the
//!   feed.
//! - from the feed itself: the feed is date-ordered, so after each page the activities still to
//!   come are estimated from the pages read (`read × (now − last date) / (last date − first
//!   date)`); when the estimate reaches the threshold the feed read stops, what was read is
//!   copied and committed, and the rest is exported (now when due, else at the next due time).
//!   This catches a burst (a list import, a big email send) on its first page; a wrong guess
//!   costs one export job (about four calls), a missed one the feed's 300-a-call.
//!
//! The probe-free rate needs no call; the in-feed switch needs none either (the pages read are
//! used). A separate probe call was rejected: it is a call every cycle for every queue.
//!
//! **How.** The export covers `[watermark, now]` in windows of at most 31 days (Marketo's
//! limit), filtered by `activityTypeIds` and `createdAt`. Each window's job is journalled
//! before it is enqueued (the store's `export_jobs`, object `activity:<type id>`), so a crash
//! re-attaches to it instead of paying for another. The file is streamed in batches of
//! [`BATCH_ROWS`] (never held whole): each row becomes the feed's [`Activity`] and goes through
//! the same [`super::copy`] (dedupe by `marketoGUID` links, mapping, CRM upsert keyed by the GUID
//! column), each batch committed with its links. Once the window is applied its job is marked
//! consumed and the queue's watermark moves to the window's end less `sync.overlap_secs`,
//! without a paging token: the next feed read creates its token from that time (re-reading the
//! overlap, which the links make harmless), and the next export starts there.
//!
//! **Budget.** Before a new export, the bytes it should take (expected activities × the bytes per
//! row of the last export, [`DEFAULT_BYTES_PER_ROW`] before one) are checked against what is
//! left of `marketo.bulk_mb_budget` today; when they do not fit, or Marketo refuses the export
//! for its daily quota, the queue is read by the feed this cycle and the summary warns.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Copy, OBJECT, back, copy, due, now_secs, queue};
use crate::config::Settings;
use crate::engine::bootstrap::windows;
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::Plan;
use crate::marketo::Disposition;
use crate::marketo::activities::{Activity, AttributeValue};
use crate::marketo::bulk_extract::ACTIVITY_FIELDS;
use crate::marketo::endpoint::{
    ActivityRow, EndpointError, EndpointSettings, ExportSubject, ExportedWindow, JobJournal,
    JobStage, MarketoEndpoint,
};
use crate::model::Side;
use crate::store::{Direction, JobState, StepCommit, Watermark, marketo_day};

/// The suffix of a queue's bulk state watermark (see [`bulk_queue`]).
pub const BULK_QUEUE_SUFFIX: &str = ":bulk";

/// The directory (in the system's temporary directory) export files are downloaded to, named by
/// their export id; a file is removed once its window is applied.
pub const WORK_DIR: &str = "marketo-sync-activities";

/// The journal's kind of an activity export job.
const KIND: &str = "activities";

/// Export rows copied (and committed) at a time.
pub const BATCH_ROWS: usize = 2_000;

/// Bytes per exported activity row assumed before a queue's first export.
pub const DEFAULT_BYTES_PER_ROW: u64 = 400;

/// Jobs tried per window before giving up (a failed job, or its file gone, is created again).
const MAX_EXPORT_ATTEMPTS: u32 = 2;

/// The span a rate is measured over at most: Marketo keeps most activities 90 days.
const RATE_SPAN_DAYS: i64 = 90;

/// Returns the queue name of an activity type's bulk state (rate, last export).
pub fn bulk_queue(type_id: u32) -> String {
    format!("{}{BULK_QUEUE_SUFFIX}", queue(type_id))
}

/// The settings of the decision.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Policy {
    /// Activities expected since the watermark at which a queue is exported (0: never).
    threshold: u64,
    /// The least time between two exports of a queue.
    every: ChronoDuration,
    /// Seconds the watermark is moved back after an export.
    pub(super) overlap_secs: u64,
    /// Today's bulk bytes.
    budget_bytes: u64,
}

/// How a queue is read this cycle.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decision {
    /// By the feed (which may still switch to an export, see [`Policy::switch_estimate`]).
    Feed,
    /// By an export now; about `expected` activities.
    Bulk { expected: u64 },
    /// Not this cycle: its export is due at `due`, with about `expected` activities by then.
    Wait { due: DateTime<Utc>, expected: u64 },
}

/// Seconds from `a` to `b`, at least 1.
fn span_secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    ((b - a).num_seconds().max(1)) as f64
}

/// Returns `rate × seconds` as a count (saturating).
fn count(rate: f64, secs: f64) -> u64 {
    let n = (rate * secs).ceil();
    if n.is_finite() && n > 0.0 {
        if n >= u64::MAX as f64 {
            u64::MAX
        } else {
            n as u64
        }
    } else {
        0
    }
}

impl Policy {
    /// Returns the policy of the settings.
    pub(super) fn of(settings: &Settings) -> Policy {
        let sync = &settings.sync;
        Policy {
            threshold: sync.activity_bulk_threshold,
            every: ChronoDuration::seconds(
                i64::try_from(sync.activity_bulk_every_secs).unwrap_or(i64::MAX / 1000),
            ),
            overlap_secs: sync.overlap_secs,
            budget_bytes: u64::from(settings.marketo.bulk_mb_budget).saturating_mul(1024 * 1024),
        }
    }

    /// Returns when the queue's next export is due (now when it never had one).
    fn due(&self, state: &State, now: DateTime<Utc>) -> DateTime<Utc> {
        state
            .last_export
            .and_then(|t| t.checked_add_signed(self.every))
            .map_or(now, |t| t.min(DateTime::<Utc>::MAX_UTC))
    }

    /// Returns whether the queue's next export is due.
    pub(super) fn is_due(&self, state: &State, now: DateTime<Utc>) -> bool {
        self.due(state, now) <= now
    }

    /// Decides how the queue whose watermark is `from` is read (see the module documentation).
    pub(super) fn decide(
        &self,
        state: &State,
        from: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Decision {
        let Some(rate) = state.rate.filter(|_| self.threshold > 0) else {
            return Decision::Feed;
        };
        let due = self.due(state, now);
        let by_due = count(rate, span_secs(from, due.max(now)));
        if by_due < self.threshold {
            return Decision::Feed;
        }
        if due <= now {
            Decision::Bulk {
                expected: count(rate, span_secs(from, now)),
            }
        } else {
            Decision::Wait {
                due,
                expected: by_due,
            }
        }
    }

    /// During a feed read: `read` activities dated `first` to `last` so far, more to come.
    /// Returns the activities expected since the watermark when they reach the threshold.
    pub(super) fn switch_estimate(
        &self,
        read: u64,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<u64> {
        if self.threshold == 0 {
            return None;
        }
        let rate = read as f64 / span_secs(first, last);
        let expected = read.saturating_add(count(rate, span_secs(last, now)));
        (expected >= self.threshold).then_some(expected)
    }
}

/// A queue's bulk state: its measured rate and its last export.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct State {
    /// Activities per second, measured by the last read; none before one.
    rate: Option<f64>,
    /// When the last export ran.
    last_export: Option<DateTime<Utc>>,
    /// Bytes per row of the last export.
    bytes_per_row: Option<u64>,
}

impl State {
    /// Returns the queue's stored state (default when it has none).
    ///
    /// # Errors
    ///
    /// A store failure.
    pub(super) async fn load(ctx: &Context, type_id: u32) -> Result<State, EngineError> {
        let stored = ctx
            .store
            .watermark(Side::Marketo, OBJECT, &bulk_queue(type_id))
            .await?;
        let cursor = stored.and_then(|w| w.cursor).unwrap_or_default();
        Ok(State {
            rate: cursor.get("per_second").and_then(serde_json::Value::as_f64),
            last_export: cursor
                .get("last_export")
                .and_then(serde_json::Value::as_str)
                .and_then(|t| t.parse().ok()),
            bytes_per_row: cursor
                .get("bytes_per_row")
                .and_then(serde_json::Value::as_u64),
        })
    }

    /// Returns the state as its watermark row (its time: when it was measured).
    pub(super) fn watermark(&self, type_id: u32, now: DateTime<Utc>) -> Watermark {
        Watermark {
            system: Side::Marketo,
            object: OBJECT.to_owned(),
            queue: bulk_queue(type_id),
            at: now,
            tie: None,
            cursor: Some(json!({
                "per_second": self.rate,
                "last_export": self.last_export.map(|t| t.to_rfc3339()),
                "bytes_per_row": self.bytes_per_row,
            })),
        }
    }

    /// Returns the state after a feed read of `read` activities since `since`: read to the end
    /// (`first`, `last` unused), or stopped early (the rate of the pages read, dated `first` to
    /// `last`).
    pub(super) fn after_feed(
        &self,
        read: u64,
        since: DateTime<Utc>,
        (first, last): (Option<DateTime<Utc>>, DateTime<Utc>),
        stopped: bool,
        now: DateTime<Utc>,
    ) -> State {
        let rate = match (stopped, first) {
            (true, Some(first)) => read as f64 / span_secs(first, last),
            _ => read as f64 / span_secs(rate_start(since, now), now),
        };
        State {
            rate: Some(rate),
            ..self.clone()
        }
    }

    /// Returns the state after an export of `rows` rows (`bytes` bytes) over `[start, end]`, run
    /// at `now`.
    fn after_export(
        &self,
        rows: u64,
        bytes: u64,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
        now: DateTime<Utc>,
    ) -> State {
        State {
            rate: Some(rows as f64 / span_secs(rate_start(start, end), end)),
            last_export: Some(now),
            bytes_per_row: if rows > 0 {
                Some(bytes.div_ceil(rows))
            } else {
                self.bytes_per_row
            },
        }
    }
}

/// The start of a rate's span: `since`, but not more than [`RATE_SPAN_DAYS`] before `end`.
fn rate_start(since: DateTime<Utc>, end: DateTime<Utc>) -> DateTime<Utc> {
    end.checked_sub_signed(ChronoDuration::days(RATE_SPAN_DAYS))
        .map_or(since, |floor| since.max(floor))
}

/// What an export run ended with.
pub(super) enum Outcome {
    /// The queue was exported (or, on a dry run, the export planned).
    Done,
    /// No export: read the feed this cycle, for this reason (a summary warning).
    Fallback(String),
}

/// One queue's export run.
pub(super) struct Run<'a> {
    pub(super) ctx: &'a Context,
    pub(super) type_id: u32,
    pub(super) plan: &'a Plan,
    pub(super) policy: &'a Policy,
    pub(super) state: &'a State,
    pub(super) options: &'a CycleOptions,
    pub(super) cancel: &'a CancellationToken,
}

/// Returns the feed's activity of an export row.
pub fn activity_of(row: ActivityRow) -> Activity {
    Activity {
        id: row.marketo_guid.parse().ok(),
        marketo_guid: Some(row.marketo_guid),
        lead_id: row.lead_id,
        activity_date: row.activity_date,
        activity_type_id: row.activity_type_id,
        campaign_id: row.campaign_id,
        primary_attribute_value_id: row.primary_attribute_value_id,
        primary_attribute_value: row.primary_attribute_value,
        attributes: row
            .attributes
            .into_iter()
            .map(|(name, value)| AttributeValue { name, value })
            .collect(),
        fields: Vec::new(),
    }
}

impl Run<'_> {
    /// Exports the queue's activities from `from` to now (about `expected`), resuming a
    /// journalled job of its first window, and copies them.
    ///
    /// # Errors
    ///
    /// A whole-call failure of Marketo (but its daily export quota, a [`Outcome::Fallback`]),
    /// the CRM or the store, an export file that cannot be read, or cancellation. The windows
    /// applied before stay committed; an unfinished job stays journalled for the next run.
    pub(super) async fn export(
        &self,
        from: DateTime<Utc>,
        expected: u64,
        summary: &mut CycleSummary,
    ) -> Result<Outcome, EngineError> {
        let ctx = self.ctx;
        let q = queue(self.type_id);
        let now = now_secs(ctx);
        let journal = ctx.journal();
        let unfinished = journal
            .unfinished(false, KIND, &q)
            .await
            .map_err(EndpointError::from)?;
        let resumed = unfinished
            .iter()
            .filter_map(|j| j.window)
            .find(|(start, _)| *start == from);
        if self.options.dry_run {
            summary.warnings.push(format!(
                "{q}: about {expected} activities since {from} would be read by Bulk Activity Extract (a dry run exports nothing)"
            ));
            return Ok(Outcome::Done);
        }
        if resumed.is_none()
            && let Some(reason) = self.over_budget(expected, now).await?
        {
            return Ok(Outcome::Fallback(reason));
        }
        // A job of an earlier start (the feed has moved the watermark past it since) is not
        // re-attached to any more: it is closed rather than left unfinished.
        for mut stale in unfinished {
            if stale.window.is_some_and(|(start, _)| start != from) {
                info!(export_id = %stale.id, "closing an activity export the watermark has passed");
                stale.stage = JobStage::Failed;
                journal.record(&stale).await.map_err(EndpointError::from)?;
            }
        }
        // A journalled window alone, as it was (what came after it is decided next cycle, not
        // paid for with a second job now); else the windows up to now.
        let todo: Vec<(DateTime<Utc>, DateTime<Utc>)> = match resumed {
            Some(window) => vec![window],
            None => windows(from, now)
                .into_iter()
                .map(|w| (w.start, w.end))
                .collect(),
        };
        let work_dir = std::env::temp_dir().join(WORK_DIR);
        tokio::fs::create_dir_all(&work_dir)
            .await
            .map_err(|e| EngineError::Marketo(crate::marketo::Error::io(&work_dir, e)))?;
        let endpoint = ctx.endpoint(EndpointSettings {
            poll: Duration::from_secs(60),
            export_max_wait: Some(Duration::from_secs(6 * 3600)),
            work_dir,
            ..EndpointSettings::default()
        });
        let subject = ExportSubject::Activities {
            type_ids: vec![i64::from(self.type_id)],
            fields: ACTIVITY_FIELDS.map(String::from).to_vec(),
        };
        let mut state = self.state.clone();
        for window in todo {
            let exported = match endpoint
                .export_window(
                    &subject,
                    window,
                    &q,
                    MAX_EXPORT_ATTEMPTS,
                    &journal,
                    self.cancel,
                )
                .await
            {
                Ok(exported) => exported,
                Err(EndpointError::Marketo(e))
                    if e.disposition() == Disposition::PauseUntilDayTurns =>
                {
                    return Ok(Outcome::Fallback(format!(
                        "Bulk Activity Extract refused for today's quota ({e}); read through the activities feed instead"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            let now = now_secs(ctx);
            if !exported.completed_before {
                ctx.store
                    .add_api_usage(marketo_day(now), 0, exported.bytes)
                    .await?;
            }
            let rows = self.apply(&exported, summary).await?;
            info!(
                activity_type = self.type_id,
                export_id = %exported.job.id,
                rows,
                bytes = exported.bytes,
                resumed = exported.resumed > 0,
                "activities copied from a bulk export"
            );
            state = state.after_export(rows, exported.bytes, window, now);
            let mut job = journal.bulk_job(&exported.job);
            job.state = JobState::Consumed;
            job.file_offset = job.bytes;
            ctx.store
                .commit(StepCommit {
                    watermarks: vec![
                        Watermark {
                            system: Side::Marketo,
                            object: OBJECT.to_owned(),
                            queue: q.clone(),
                            at: back(window.1, self.policy.overlap_secs, window.0),
                            tie: None,
                            // The next feed read creates its token from `at`.
                            cursor: None,
                        },
                        state.watermark(self.type_id, now),
                    ],
                    jobs: vec![job],
                    ..StepCommit::default()
                })
                .await?;
            if let Some(path) = &exported.path {
                let _ = tokio::fs::remove_file(path).await;
            }
        }
        Ok(Outcome::Done)
    }

    /// Returns why an export of about `expected` activities does not fit today's bulk budget.
    ///
    /// # Errors
    ///
    /// A store failure.
    async fn over_budget(
        &self,
        expected: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, EngineError> {
        let day = marketo_day(now);
        let stored = self.ctx.store.api_usage(day).await?.bulk_bytes;
        let client = self.ctx.marketo.usage();
        let live = if client.day == day {
            client.bulk_bytes
        } else {
            0
        };
        let used = stored.max(live);
        let per_row = self.state.bytes_per_row.unwrap_or(DEFAULT_BYTES_PER_ROW);
        let estimate = expected.saturating_mul(per_row);
        let budget = self.policy.budget_bytes;
        Ok((used.saturating_add(estimate) > budget).then(|| {
            format!(
                "Bulk Activity Extract skipped: about {expected} activities (~{estimate} bytes) do not fit in what is left of today's bulk budget ({used} of {budget} bytes used); read through the activities feed instead"
            )
        }))
    }

    /// Streams an exported file's rows in batches through [`copy`], committing each batch's
    /// links and ledger entries, and returns the rows read.
    ///
    /// # Errors
    ///
    /// A whole-call failure of the CRM or the store, a file that cannot be read, or
    /// cancellation.
    async fn apply(
        &self,
        exported: &ExportedWindow,
        summary: &mut CycleSummary,
    ) -> Result<u64, EngineError> {
        let ctx = self.ctx;
        let Some(mut stream) = exported.activities(BATCH_ROWS, self.cancel) else {
            return Ok(0);
        };
        let object = self.plan.object.as_str();
        let previous = due(ctx, self.plan).await?;
        let mut retries = true;
        let mut rows = 0u64;
        while let Some(batch) = stream.next_batch().await {
            let mut activities = BTreeMap::new();
            let mut commit = StepCommit::default();
            for row in batch {
                rows += 1;
                match row {
                    Ok(row) => {
                        let a = activity_of(row);
                        if let Some(k) = a.key() {
                            activities.insert(k, a);
                        }
                    }
                    Err(e) => super::super::record_invalid_value(
                        ctx,
                        &mut commit,
                        summary,
                        object,
                        Direction::MarketoToCrm,
                        &format!("export {} row {rows}", exported.job.id),
                        &e,
                        None,
                    ),
                }
            }
            let how = Copy {
                previous: &previous,
                retries,
                options: self.options,
                cancel: self.cancel,
            };
            copy(ctx, self.plan, activities, &how, &mut commit, summary).await?;
            retries = false;
            ctx.store.commit(commit).await?;
        }
        stream.finish().await?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn policy(threshold: u64, every_secs: i64) -> Policy {
        Policy {
            threshold,
            every: ChronoDuration::seconds(every_secs),
            overlap_secs: 300,
            budget_bytes: 500 * 1024 * 1024,
        }
    }

    #[test]
    fn an_unknown_rate_reads_the_feed() {
        let p = policy(30_000, 3600);
        let now = t("2030-01-02T00:00:00Z");
        assert_eq!(
            p.decide(&State::default(), t("2030-01-01T00:00:00Z"), now),
            Decision::Feed
        );
    }

    #[test]
    fn a_queue_expected_over_the_threshold_by_its_due_time_waits_then_exports() {
        // 1,000,000 a day, exported at most once a day.
        let p = policy(30_000, 86_400);
        let rate = 1_000_000.0 / 86_400.0;
        let exported = t("2030-01-01T00:00:00Z");
        let state = State {
            rate: Some(rate),
            last_export: Some(exported),
            bytes_per_row: None,
        };
        let from = exported;
        let soon = t("2030-01-01T00:05:00Z");
        match p.decide(&state, from, soon) {
            Decision::Wait { due, expected } => {
                assert_eq!(due, t("2030-01-02T00:00:00Z"));
                assert!((999_000..=1_001_000).contains(&expected), "{expected}");
            }
            other => panic!("{other:?}"),
        }
        let day_later = t("2030-01-02T00:00:00Z");
        assert!(matches!(
            p.decide(&state, from, day_later),
            Decision::Bulk { expected } if expected >= 999_000
        ));
        // A quiet queue stays on the feed.
        let quiet = State {
            rate: Some(100.0 / 86_400.0),
            ..state
        };
        assert_eq!(p.decide(&quiet, from, day_later), Decision::Feed);
        // Threshold 0 turns bulk off.
        assert_eq!(
            policy(0, 86_400).decide(
                &State {
                    rate: Some(rate),
                    ..quiet
                },
                from,
                day_later
            ),
            Decision::Feed
        );
    }

    #[test]
    fn the_feed_switches_when_its_pages_extrapolate_past_the_threshold() {
        let p = policy(30_000, 3600);
        let now = t("2030-01-02T00:00:00Z");
        // 300 activities in 26 seconds at the start of a day: about a million by now.
        let first = t("2030-01-01T00:00:00Z");
        let est = p.switch_estimate(300, first, t("2030-01-01T00:00:26Z"), now);
        assert!(est.is_some_and(|e| e > 900_000), "{est:?}");
        // 300 activities spread over the day so far: a few hundred more expected.
        let est = p.switch_estimate(300, first, t("2030-01-01T23:00:00Z"), now);
        assert_eq!(est, None);
    }

    #[test]
    fn rates_are_measured_over_the_time_read_and_exports_keep_their_row_size() {
        let now = t("2030-01-02T00:00:00Z");
        let s =
            State::default().after_feed(8_640, t("2030-01-01T00:00:00Z"), (None, now), false, now);
        assert!((s.rate.unwrap() - 0.1).abs() < 1e-9);
        // A read from the 2007 low watermark measures over at most 90 days.
        let s = State::default().after_feed(
            90 * 86_400,
            t("2007-01-01T00:00:00Z"),
            (None, now),
            false,
            now,
        );
        assert!((s.rate.unwrap() - 1.0).abs() < 1e-9);
        let e = s.after_export(
            1_000,
            150_000,
            (t("2030-01-01T00:00:00Z"), t("2030-01-01T00:16:40Z")),
            now,
        );
        assert_eq!(e.bytes_per_row, Some(150));
        assert_eq!(e.last_export, Some(now));
        assert!((e.rate.unwrap() - 1.0).abs() < 1e-9);
    }
}
