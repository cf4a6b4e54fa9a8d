//! Typed telemetry events.
//!
//! Each notable event is a struct whose `emit()` logs it with structured fields and updates the
//! matching metric, so a log line and a metric never drift apart. Labels are bounded: object
//! types, directions, outcomes and error codes, never record ids, keys or emails.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::metrics as m;
use crate::model::Side;

pub use crate::model::{CycleOutcome, Direction};

/// What happened to a record in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordOutcome {
    /// Read from the source (counted once per record per cycle).
    Read,
    /// Created on the target.
    Created,
    /// Updated on the target.
    Updated,
    /// Deleted (or tombstoned) on the target.
    Deleted,
    /// Nothing to write: the target already agreed.
    Skipped,
    /// The write failed and was recorded as a sync error.
    Failed,
}

impl RecordOutcome {
    /// Returns the label used in logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordOutcome::Read => "read",
            RecordOutcome::Created => "created",
            RecordOutcome::Updated => "updated",
            RecordOutcome::Deleted => "deleted",
            RecordOutcome::Skipped => "skipped",
            RecordOutcome::Failed => "failed",
        }
    }
}

/// A sync cycle finished.
#[derive(Debug, Clone)]
pub struct CycleCompleted<'a> {
    /// The cycle's id (logged only, never a label).
    pub cycle_id: &'a str,
    /// How it ended.
    pub outcome: CycleOutcome,
    /// Wall-clock duration.
    pub duration: Duration,
    /// Marketo REST calls the cycle used.
    pub api_calls: u64,
    /// When it ended.
    pub ended_at: DateTime<Utc>,
}

impl CycleCompleted<'_> {
    /// Logs the event and updates `mksync_cycles_total`, `mksync_cycle_duration_seconds` and
    /// `mksync_last_cycle_timestamp_seconds`.
    pub fn emit(&self) {
        let outcome = self.outcome.as_str();
        let duration_ms = u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX);
        match self.outcome {
            CycleOutcome::Failed => warn!(
                cycle_id = %self.cycle_id,
                outcome,
                duration_ms,
                api_calls = self.api_calls,
                "cycle completed"
            ),
            _ => info!(
                cycle_id = %self.cycle_id,
                outcome,
                duration_ms,
                api_calls = self.api_calls,
                "cycle completed"
            ),
        }
        metrics::counter!(m::CYCLES_TOTAL, "outcome" => outcome).increment(1);
        metrics::histogram!(m::CYCLE_DURATION_SECONDS, "outcome" => outcome)
            .record(self.duration.as_secs_f64());
        metrics::gauge!(m::LAST_CYCLE_TIMESTAMP_SECONDS, "outcome" => outcome)
            .set(self.ended_at.timestamp() as f64);
    }
}

/// A batch of records of one object type reached one outcome in one direction.
#[derive(Debug, Clone)]
pub struct RecordsSynced<'a> {
    /// The object type (`lead`, `company`, a custom object's API name, ...).
    pub object: &'a str,
    /// Which way the records travelled.
    pub direction: Direction,
    /// What happened to them.
    pub outcome: RecordOutcome,
    /// How many.
    pub count: u64,
}

impl RecordsSynced<'_> {
    /// Logs the event at debug level and adds `count` to `mksync_records_total`.
    pub fn emit(&self) {
        if self.count == 0 {
            return;
        }
        tracing::debug!(
            object = %self.object,
            direction = self.direction.as_str(),
            outcome = self.outcome.as_str(),
            count = self.count,
            "records synced"
        );
        metrics::counter!(
            m::RECORDS_TOTAL,
            "object" => self.object.to_owned(),
            "direction" => self.direction.as_str(),
            "outcome" => self.outcome.as_str()
        )
        .increment(self.count);
    }
}

/// A mapped field stopped or resumed syncing (a CRM column dropped, renamed or retyped while
/// running, a Marketo field gone, or back again).
#[derive(Debug, Clone)]
pub struct FieldAvailability<'a> {
    /// The mapping's object (`leads`, `companies`, ...).
    pub object: &'a str,
    /// The field's canonical name (from the mapping file, bounded).
    pub field: &'a str,
    /// Why it is disabled; `None` when it syncs again.
    pub disabled: Option<&'a str>,
}

impl FieldAvailability<'_> {
    /// Logs the change and sets `mksync_disabled_fields{object, field}` to 1 or 0. The warning
    /// naming the problem is the engine's mapping-problem line; this line records the switch.
    pub fn emit(&self) {
        match self.disabled {
            Some(reason) => {
                info!(object = %self.object, field = %self.field, reason = %reason, "mapped field disabled");
            }
            None => info!(object = %self.object, field = %self.field, "mapped field enabled again"),
        }
        metrics::gauge!(
            m::DISABLED_FIELDS,
            "object" => self.object.to_owned(),
            "field" => self.field.to_owned()
        )
        .set(if self.disabled.is_some() { 1.0 } else { 0.0 });
    }
}

/// Both sides changed the same field since the last agreement and a rule picked a winner.
#[derive(Debug, Clone)]
pub struct ConflictResolved<'a> {
    /// The object type.
    pub object: &'a str,
    /// The side whose value won.
    pub winner: Side,
    /// How many conflicting fields were resolved on this record.
    pub fields: u64,
}

impl ConflictResolved<'_> {
    /// Logs the event and increments `mksync_conflicts_total`.
    pub fn emit(&self) {
        info!(
            object = %self.object,
            winner = self.winner.as_str(),
            fields = self.fields,
            "conflict resolved"
        );
        metrics::counter!(
            m::CONFLICTS_TOTAL,
            "object" => self.object.to_owned(),
            "winner" => self.winner.as_str()
        )
        .increment(1);
    }
}

/// A record could not be synced and was recorded in the error queue.
#[derive(Debug, Clone)]
pub struct SyncErrorRecorded<'a> {
    /// The object type.
    pub object: &'a str,
    /// Which way the record was travelling.
    pub direction: Direction,
    /// A short, bounded error code: a Marketo code (`1003`) or an internal one
    /// (`crm_constraint`). Never a free-text message.
    pub code: &'a str,
    /// Whether it will be retried automatically.
    pub retryable: bool,
}

impl SyncErrorRecorded<'_> {
    /// Logs the event and increments `mksync_sync_errors_total`.
    pub fn emit(&self) {
        warn!(
            object = %self.object,
            direction = self.direction.as_str(),
            code = %self.code,
            retryable = self.retryable,
            "sync error recorded"
        );
        metrics::counter!(
            m::SYNC_ERRORS_TOTAL,
            "object" => self.object.to_owned(),
            "direction" => self.direction.as_str(),
            "code" => self.code.to_owned()
        )
        .increment(1);
    }
}

/// Marketo REST calls were made.
#[derive(Debug, Clone, Copy)]
pub struct MarketoCallsUsed {
    /// How many calls.
    pub count: u64,
}

impl MarketoCallsUsed {
    /// Adds `count` to `mksync_marketo_calls_total` (no log line: this is too frequent).
    pub fn emit(&self) {
        metrics::counter!(m::MARKETO_CALLS_TOTAL).increment(self.count);
    }
}

/// The daily Marketo REST quota as last counted in the store.
#[derive(Debug, Clone, Copy)]
pub struct MarketoQuota {
    /// Calls used today (Marketo's day).
    pub used_today: u64,
    /// The configured daily budget.
    pub daily_budget: u64,
}

impl MarketoQuota {
    /// Returns the calls left today, never negative.
    pub fn remaining(&self) -> u64 {
        self.daily_budget.saturating_sub(self.used_today)
    }

    /// Sets the `mksync_marketo_quota_*_calls` gauges.
    pub fn emit(&self) {
        metrics::gauge!(m::MARKETO_CALLS_USED_TODAY).set(self.used_today as f64);
        metrics::gauge!(m::MARKETO_CALLS_REMAINING_TODAY).set(self.remaining() as f64);
        metrics::gauge!(m::MARKETO_CALLS_BUDGET).set(self.daily_budget as f64);
    }
}

/// A bulk-extract file (or part of one) was downloaded.
#[derive(Debug, Clone, Copy)]
pub struct BulkBytesUsed {
    /// Bytes downloaded now.
    pub bytes: u64,
    /// Bytes used today, including these.
    pub used_today: u64,
    /// The daily bulk-extract budget in bytes.
    pub budget: u64,
}

impl BulkBytesUsed {
    /// Logs the event and updates the bulk-extract counter and gauges.
    pub fn emit(&self) {
        info!(
            bytes = self.bytes,
            used_today = self.used_today,
            budget = self.budget,
            "bulk extract bytes used"
        );
        metrics::counter!(m::BULK_BYTES_TOTAL).increment(self.bytes);
        metrics::gauge!(m::BULK_BYTES_USED_TODAY).set(self.used_today as f64);
        metrics::gauge!(m::BULK_BYTES_BUDGET).set(self.budget as f64);
    }
}

/// The time since an object's last successful cycle.
#[derive(Debug, Clone)]
pub struct SyncLag<'a> {
    /// The object type.
    pub object: &'a str,
    /// Time since its last successful cycle ended.
    pub lag: Duration,
}

impl SyncLag<'_> {
    /// Sets `mksync_sync_lag_seconds{object}` (no log line: it is refreshed often).
    pub fn emit(&self) {
        metrics::gauge!(m::SYNC_LAG_SECONDS, "object" => self.object.to_owned())
            .set(self.lag.as_secs_f64());
    }
}

/// How the webhook receiver answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookOutcome {
    /// Accepted and queued.
    Queued,
    /// Accepted; the same lead or delivery was already queued.
    Duplicate,
    /// Missing or wrong shared secret.
    Unauthorized,
    /// Body over the limit.
    TooLarge,
    /// Malformed JSON or a missing/invalid field.
    Invalid,
    /// The queue was full or closed.
    Unavailable,
}

impl WebhookOutcome {
    /// Returns the label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Queued => "queued",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Unauthorized => "unauthorized",
            WebhookOutcome::TooLarge => "too_large",
            WebhookOutcome::Invalid => "invalid",
            WebhookOutcome::Unavailable => "unavailable",
        }
    }
}

/// The webhook receiver answered a request.
#[derive(Debug, Clone, Copy)]
pub struct WebhookReceived {
    /// The answer.
    pub outcome: WebhookOutcome,
    /// The lead id, when the body was valid (logged only, never a label).
    pub lead_id: Option<i64>,
}

impl WebhookReceived {
    /// Logs the event and increments `mksync_webhook_requests_total{outcome}`.
    pub fn emit(&self) {
        let outcome = self.outcome.as_str();
        match self.outcome {
            WebhookOutcome::Queued | WebhookOutcome::Duplicate => {
                info!(outcome, lead_id = self.lead_id, "webhook received");
            }
            _ => warn!(outcome, lead_id = self.lead_id, "webhook rejected"),
        }
        metrics::counter!(m::WEBHOOK_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
    }
}

/// The number of leads waiting in the on-demand queue changed.
#[derive(Debug, Clone, Copy)]
pub struct WebhookQueueDepth {
    /// Leads waiting.
    pub depth: usize,
}

impl WebhookQueueDepth {
    /// Sets `mksync_webhook_queue_depth`.
    pub fn emit(&self) {
        metrics::gauge!(m::WEBHOOK_QUEUE_DEPTH).set(self.depth as f64);
    }
}

/// The kind of work a pause stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseScope {
    /// All sync work (an operator's pause).
    All,
    /// Marketo REST calls (daily quota exhausted, error 607).
    RestCalls,
    /// Bulk extracts (daily export quota exhausted, error 1029).
    BulkExtract,
}

impl PauseScope {
    /// Returns the label used in logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseScope::All => "all",
            PauseScope::RestCalls => "rest_calls",
            PauseScope::BulkExtract => "bulk_extract",
        }
    }
}

/// A kind of work was paused or resumed.
#[derive(Debug, Clone)]
pub struct PauseChanged<'a> {
    /// What is paused.
    pub scope: PauseScope,
    /// `true` when the pause starts, `false` when it ends.
    pub paused: bool,
    /// Why, for people (logged only).
    pub reason: &'a str,
    /// When the pause ends on its own, if known.
    pub until: Option<DateTime<Utc>>,
}

impl PauseChanged<'_> {
    /// Logs the event and sets `mksync_paused{scope}` to 1 or 0.
    pub fn emit(&self) {
        let scope = self.scope.as_str();
        if self.paused {
            let until = self.until.map(|t| t.to_rfc3339());
            warn!(scope, reason = %self.reason, until = ?until, "sync paused");
        } else {
            info!(scope, "sync resumed");
        }
        metrics::gauge!(m::PAUSED, "scope" => scope).set(if self.paused { 1.0 } else { 0.0 });
    }
}

/// Registers help text for every metric with the installed recorder.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        m::CYCLES_TOTAL,
        Unit::Count,
        "Sync cycles finished, by outcome."
    );
    describe_histogram!(
        m::CYCLE_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of sync cycles."
    );
    describe_gauge!(
        m::LAST_CYCLE_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of the end of the last cycle, by outcome."
    );
    describe_counter!(
        m::RECORDS_TOTAL,
        Unit::Count,
        "Records handled, by object, direction and outcome."
    );
    describe_counter!(
        m::CONFLICTS_TOTAL,
        Unit::Count,
        "Conflicts resolved, by object and winner."
    );
    describe_counter!(
        m::SYNC_ERRORS_TOTAL,
        Unit::Count,
        "Sync errors recorded, by object, direction and code."
    );
    describe_counter!(
        m::MARKETO_CALLS_TOTAL,
        Unit::Count,
        "Marketo REST calls made."
    );
    describe_gauge!(
        m::MARKETO_CALLS_USED_TODAY,
        Unit::Count,
        "Marketo REST calls used today."
    );
    describe_gauge!(
        m::MARKETO_CALLS_REMAINING_TODAY,
        Unit::Count,
        "Marketo REST calls left today under the budget."
    );
    describe_gauge!(
        m::MARKETO_CALLS_BUDGET,
        Unit::Count,
        "Daily Marketo REST call budget."
    );
    describe_counter!(
        m::BULK_BYTES_TOTAL,
        Unit::Bytes,
        "Bulk-extract bytes downloaded."
    );
    describe_gauge!(
        m::BULK_BYTES_USED_TODAY,
        Unit::Bytes,
        "Bulk-extract bytes used today."
    );
    describe_gauge!(
        m::BULK_BYTES_BUDGET,
        Unit::Bytes,
        "Daily bulk-extract budget."
    );
    describe_gauge!(
        m::SYNC_LAG_SECONDS,
        Unit::Seconds,
        "Seconds since the last successful cycle, by object."
    );
    describe_counter!(
        m::WEBHOOK_REQUESTS_TOTAL,
        Unit::Count,
        "Webhook requests, by outcome."
    );
    describe_gauge!(
        m::WEBHOOK_QUEUE_DEPTH,
        Unit::Count,
        "Leads waiting for on-demand sync."
    );
    describe_gauge!(
        m::PAUSED,
        Unit::Count,
        "1 while a kind of work is paused, by scope."
    );
    describe_gauge!(
        m::DISABLED_FIELDS,
        Unit::Count,
        "1 while a mapped field is disabled (schema drift, a mapping problem), by object and field."
    );
}
