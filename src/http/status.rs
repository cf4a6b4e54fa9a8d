//! What the status page, `GET /api/status`, `GET /api/errors` and `/readyz` show, and the
//! [`StatusSource`] trait that supplies it (implemented over the store and the engine).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::telemetry::events::{CycleOutcome, Direction};

/// Supplies the data behind the status page, the JSON API and the readiness probe.
///
/// Implementations read the store and the engine's shared state; they must be cheap enough to
/// call every few seconds (the page refreshes every 5 s) and must never put secrets into the
/// report.
#[async_trait]
pub trait StatusSource: Send + Sync {
    /// Returns the current status report.
    ///
    /// # Errors
    ///
    /// Returns [`StatusError`] when the store cannot be read.
    async fn status(&self) -> Result<StatusReport, StatusError>;

    /// Returns the open sync errors, newest first, at most `limit` of them, and the total count.
    ///
    /// The default reads them from [`StatusSource::status`].
    ///
    /// # Errors
    ///
    /// Returns [`StatusError`] when the store cannot be read.
    async fn open_errors(&self, limit: usize) -> Result<ErrorList, StatusError> {
        let report = self.status().await?;
        let total = report
            .open_errors_total
            .max(report.open_errors.len() as u64);
        let mut errors = report.open_errors;
        errors.truncate(limit);
        Ok(ErrorList { total, errors })
    }

    /// Returns what the readiness probe needs. It must not fail: an unreachable store is
    /// reported as `store_ok: false`.
    async fn ready(&self) -> Readiness;

    /// Returns the conflicts that pass `query`, newest first.
    ///
    /// The default serves the report's `recent_conflicts`, filtered.
    ///
    /// # Errors
    ///
    /// Returns [`StatusError`] when the store cannot be read.
    async fn conflicts(&self, query: &ConflictQuery) -> Result<ConflictList, StatusError> {
        let report = self.status().await?;
        let limit = query.limit_or_default();
        let conflicts: Vec<ConflictView> = report
            .recent_conflicts
            .into_iter()
            .filter(|c| query.matches(c))
            .take(limit)
            .collect();
        Ok(ConflictList { conflicts })
    }

    /// Applies an operator's action to one open ledger entry: retry it at the next cycle, or
    /// discard it. Returns the entry as it is now.
    ///
    /// The default refuses (a read-only source).
    ///
    /// # Errors
    ///
    /// [`StatusError::NotFound`] for an unknown id, [`StatusError::Unavailable`] when the
    /// store cannot be written, [`StatusError::Internal`] for a read-only source.
    async fn error_action(&self, id: &str, action: ErrorAction) -> Result<OpenError, StatusError> {
        let _ = (id, action);
        Err(StatusError::Internal {
            reason: "this status source cannot change errors".to_owned(),
        })
    }
}

/// What an operator does with an open ledger entry (`POST /api/errors/{id}/retry|discard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorAction {
    /// Retry the record at the next cycle (the entry stays open, due now).
    Retry,
    /// Give the record up (the entry leaves the open ledger).
    Discard,
}

impl ErrorAction {
    /// Returns the name used in the route and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorAction::Retry => "retry",
            ErrorAction::Discard => "discard",
        }
    }
}

/// The filter of `GET /api/conflicts` (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictQuery {
    /// Only this object.
    pub object: Option<String>,
    /// Only this field (canonical name).
    pub field: Option<String>,
    /// Only conflicts this side won: `marketo` or `crm`.
    pub winner: Option<String>,
    /// Only conflicts settled at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// The default and the largest `limit` of `GET /api/conflicts`.
pub const DEFAULT_CONFLICTS_LIMIT: usize = 100;
/// The largest `limit` of `GET /api/conflicts`.
pub const MAX_CONFLICTS_LIMIT: usize = 1000;

impl ConflictQuery {
    /// Returns the limit to apply: the one asked for (at least 1, at most 1000) or 100.
    pub fn limit_or_default(&self) -> usize {
        self.limit
            .unwrap_or(DEFAULT_CONFLICTS_LIMIT)
            .clamp(1, MAX_CONFLICTS_LIMIT)
    }

    /// Returns whether `conflict` passes the filter.
    pub fn matches(&self, conflict: &ConflictView) -> bool {
        self.object.as_ref().is_none_or(|o| *o == conflict.object)
            && self.field.as_ref().is_none_or(|f| *f == conflict.field)
            && self.winner.as_ref().is_none_or(|w| *w == conflict.winner)
            && self.since.is_none_or(|since| conflict.at >= since)
    }
}

/// One settled conflict: a field changed on both sides since they last agreed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictView {
    /// The store's id.
    pub id: i64,
    /// The object.
    pub object: String,
    /// The record's key in Marketo.
    pub marketo_key: String,
    /// The record's key in the CRM.
    pub crm_key: String,
    /// The field (canonical name).
    pub field: String,
    /// Marketo's value.
    pub marketo_value: serde_json::Value,
    /// The CRM's value.
    pub crm_value: serde_json::Value,
    /// The value both sides agreed on before (`null` when there was none).
    pub base_value: serde_json::Value,
    /// The side whose value won: `marketo` or `crm`.
    pub winner: String,
    /// The policy that decided (`crm_wins`, `marketo_wins`, `newest_wins`).
    pub policy: String,
    /// When it was settled.
    pub at: DateTime<Utc>,
}

/// The answer of `GET /api/conflicts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictList {
    /// The conflicts, newest first.
    pub conflicts: Vec<ConflictView>,
}

/// Why a status report could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The store (or another dependency) could not be reached; try again later.
    #[error("status unavailable: {reason}")]
    Unavailable {
        /// What could not be reached (no secrets, no connection strings).
        reason: String,
    },
    /// The thing asked for does not exist (an unknown error id).
    #[error("not found: {what}")]
    NotFound {
        /// What was not found.
        what: String,
    },
    /// The request cannot be served as asked (a malformed id or filter).
    #[error("invalid request: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// Anything else.
    #[error("status failed: {reason}")]
    Internal {
        /// What went wrong (no secrets, no connection strings).
        reason: String,
    },
}

impl StatusError {
    /// Returns whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StatusError::Unavailable { .. })
    }
}

/// Everything the status page shows. Served as JSON by `GET /api/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The instance name from the settings (e.g. the Marketo munchkin id plus an environment).
    pub instance: String,
    /// When this report was produced.
    pub generated_at: DateTime<Utc>,
    /// Present while sync work is paused.
    pub paused: Option<PauseInfo>,
    /// This instance's lease on the sync (who runs the cycles).
    pub lease: LeaseState,
    /// The most recent cycles, newest first (a running cycle first, if any).
    pub recent_cycles: Vec<CycleSummary>,
    /// Per-object totals and lag.
    pub objects: Vec<ObjectStatus>,
    /// Marketo's daily quotas as counted in the store.
    pub quota: QuotaStatus,
    /// Marketo REST calls per cycle, oldest first (the quota chart).
    pub calls_per_cycle: Vec<CallsPoint>,
    /// Records written per interval, oldest first (the records chart).
    pub records_over_time: Vec<RecordsPoint>,
    /// Open sync errors, newest first (possibly only the first page).
    pub open_errors: Vec<OpenError>,
    /// How many sync errors are open in total (the whole open ledger, not only this page).
    pub open_errors_total: u64,
    /// The most recent failed cycles with their reason, newest first.
    #[serde(default)]
    pub failed_cycles: Vec<CycleSummary>,
    /// Cycles per outcome since the store was created (kept in the store, not derived from
    /// `recent_cycles`).
    #[serde(default)]
    pub cycle_totals: CycleTotals,
    /// Records written per hour and object over the last 24 hours, oldest first.
    #[serde(default)]
    pub records_per_hour: Vec<HourlyRecords>,
    /// Marketo calls used today against the budget, with a projection to the day's end.
    #[serde(default)]
    pub quota_burn: QuotaBurn,
    /// The newest conflicts (the page's first view; `GET /api/conflicts` filters them all).
    #[serde(default)]
    pub recent_conflicts: Vec<ConflictView>,
    /// How many conflicts the store holds.
    #[serde(default)]
    pub conflicts_total: u64,
}

/// Cycles per outcome since the store was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleTotals {
    /// Cycles that applied every record.
    pub succeeded: u64,
    /// Cycles that finished with some records in the ledger.
    pub partial: u64,
    /// Cycles that stopped on an error.
    pub failed: u64,
    /// Cycles stopped by shutdown or a pause.
    pub cancelled: u64,
    /// Cycles recorded as started and not ended (running now, or the process died).
    pub running: u64,
    /// Marketo REST calls used by all of them.
    pub api_calls: u64,
}

/// Records written for one object in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourlyRecords {
    /// The start of the hour (UTC).
    pub hour: DateTime<Utc>,
    /// The object.
    pub object: String,
    /// Records created, updated or deleted in the CRM by cycles that started in that hour.
    pub marketo_to_crm: u64,
    /// Records created, updated or deleted in Marketo.
    pub crm_to_marketo: u64,
}

/// Marketo calls used today (Marketo's day: midnight to midnight America/Chicago).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaBurn {
    /// When today's Marketo day began.
    pub day_start: Option<DateTime<Utc>>,
    /// When it ends (the quota resets).
    pub day_end: Option<DateTime<Utc>>,
    /// The daily call budget.
    pub budget: u64,
    /// Calls used so far today (all calls counted in the store, cycles or not).
    pub used: u64,
    /// Calls used so far by the cycles of today, cumulative, oldest first (the chart's line).
    pub points: Vec<BurnPoint>,
    /// Calls projected at the day's end at today's average rate so far.
    pub projected: u64,
    /// Whether the projection exceeds the budget.
    pub projected_over_budget: bool,
}

/// Cumulative calls at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurnPoint {
    /// The instant (a cycle's end).
    pub at: DateTime<Utc>,
    /// Calls used today up to then.
    pub calls: u64,
}

/// Why and until when sync work is paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PauseInfo {
    /// Why, for people (e.g. "Marketo daily API quota reached (607)").
    pub reason: String,
    /// When the pause ends on its own; `None` for an operator's pause.
    pub until: Option<DateTime<Utc>>,
}

/// This instance's hold on the sync lease (only one instance runs cycles at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// This instance holds the lease and runs cycles (also the single-instance case).
    Held,
    /// Another instance holds the lease; this one is healthy and waits to take over.
    Standby,
    /// This instance held the lease and could not renew it, or cannot tell who holds it.
    Lost,
}

/// One sync cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleSummary {
    /// The cycle's id.
    pub id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended; `None` while running.
    pub ended_at: Option<DateTime<Utc>>,
    /// How it ended.
    pub outcome: CycleOutcome,
    /// Its duration in milliseconds; `None` while running.
    pub duration_ms: Option<u64>,
    /// Marketo REST calls it used.
    pub api_calls: u64,
    /// Counts per object and direction.
    pub counts: Vec<ObjectDirectionCounts>,
    /// Why it failed (or what it reported), for people; `None` when there is nothing to say.
    #[serde(default)]
    pub message: Option<String>,
}

/// Counts for one object type in one direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectDirectionCounts {
    /// The object type.
    pub object: String,
    /// Which way.
    pub direction: Direction,
    /// The counts.
    #[serde(flatten)]
    pub counts: RecordCounts,
}

/// Record counts by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCounts {
    /// Records read from the source.
    pub read: u64,
    /// Records created on the target.
    pub created: u64,
    /// Records updated on the target.
    pub updated: u64,
    /// Records deleted on the target.
    pub deleted: u64,
    /// Conflicts resolved.
    pub conflicts: u64,
    /// Records that needed no write.
    pub skipped: u64,
    /// Records that failed.
    pub failed: u64,
}

impl RecordCounts {
    /// Returns the number of records written (created, updated or deleted).
    pub fn written(&self) -> u64 {
        self.created + self.updated + self.deleted
    }
}

/// Totals, backlog and lag for one object type.
///
/// Definitions (what the store knows):
///
/// - **backlog**: the open ledger entries of the object in one direction: `pending` have an
///   automatic retry scheduled (deferred records, e.g. waiting for a parent to be linked, or a
///   transient failure), `waiting_for_operator` have none and move only after a retry or a
///   discard.
/// - **lag**: the age of the oldest change not yet synced. A change made before the start of
///   the object's last successful (succeeded or partial) cycle has been read by it: it was
///   either written or put in the ledger. So the oldest unsynced change is at most as old as
///   that start, or as the oldest pending ledger entry when that is older: lag = now − the
///   earlier of the two. Entries waiting for an operator are left out (they are counted in
///   `waiting_for_operator` with their own age), so one rejected record does not make the whole
///   sync look stalled. `None` when the object never had a successful cycle.
/// - **records per hour**: records written (created, updated, deleted) in the last hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectStatus {
    /// The object type.
    pub object: String,
    /// Pairs linked in the store (live links, not deleted or merged away).
    pub linked: u64,
    /// Links of pairs deleted or merged away.
    #[serde(default)]
    pub tombstoned: u64,
    /// Totals Marketo to CRM since the store was created (kept in the store).
    pub marketo_to_crm: RecordCounts,
    /// Totals CRM to Marketo since the store was created.
    pub crm_to_marketo: RecordCounts,
    /// When its last successful cycle ended.
    pub last_success_at: Option<DateTime<Utc>>,
    /// When its last successful cycle started: changes before it have been read.
    #[serde(default)]
    pub last_success_started_at: Option<DateTime<Utc>>,
    /// The age in seconds of the oldest change not yet synced, the larger of the two
    /// directions' (see the type's docs); `None` when the object never had a successful cycle.
    pub lag_seconds: Option<u64>,
    /// The backlog and lag of Marketo → CRM.
    #[serde(default)]
    pub backlog_marketo_to_crm: Backlog,
    /// The backlog and lag of CRM → Marketo.
    #[serde(default)]
    pub backlog_crm_to_marketo: Backlog,
    /// Records written in the last hour, both directions.
    #[serde(default)]
    pub records_last_hour: u64,
}

/// The pending work of one object in one direction (see [`ObjectStatus`] for the definitions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// Open ledger entries the engine retries by itself (deferred records).
    pub pending: u64,
    /// Open ledger entries that wait for an operator's retry or discard.
    pub waiting_for_operator: u64,
    /// When the oldest pending entry first failed.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// When the oldest entry waiting for an operator first failed.
    pub oldest_waiting_at: Option<DateTime<Utc>>,
    /// The age in seconds of the oldest change not yet synced in this direction.
    pub lag_seconds: Option<u64>,
}

/// Marketo's daily quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaStatus {
    /// REST calls used today (Marketo's day).
    pub calls_today: u64,
    /// The configured daily call budget.
    pub daily_budget: u64,
    /// Calls left today.
    pub remaining: u64,
    /// Bulk-extract bytes used today.
    pub bulk_bytes_today: u64,
    /// The daily bulk-extract budget in bytes.
    pub bulk_budget_bytes: u64,
}

/// Marketo REST calls used by one cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallsPoint {
    /// The cycle.
    pub cycle_id: String,
    /// When it started.
    pub at: DateTime<Utc>,
    /// Calls it used.
    pub calls: u64,
}

/// Records written in one interval (one cycle or one time bucket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsPoint {
    /// The start of the interval.
    pub at: DateTime<Utc>,
    /// Records written into the CRM.
    pub marketo_to_crm: u64,
    /// Records written into Marketo.
    pub crm_to_marketo: u64,
}

/// One open sync error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenError {
    /// The error's id in the store.
    pub id: String,
    /// The object type.
    pub object: String,
    /// Which way the record was travelling.
    pub direction: Direction,
    /// The record's key on its source side.
    pub key: String,
    /// A short error code (a Marketo code or an internal one).
    pub code: String,
    /// What went wrong, for people (no secrets, no whole records).
    pub message: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When it is retried next; `None` when it waits for an operator.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// When it first failed.
    #[serde(default)]
    pub first_seen_at: Option<DateTime<Utc>>,
    /// `open`, `discarded` or `resolved` (`open` in the open ledger).
    #[serde(default = "open_status")]
    pub status: String,
}

fn open_status() -> String {
    "open".to_owned()
}

/// A page of open sync errors. Served as JSON by `GET /api/errors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorList {
    /// How many errors are open in total.
    pub total: u64,
    /// The errors, newest first.
    pub errors: Vec<OpenError>,
}

/// What the readiness probe needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// Whether the store answered.
    pub store_ok: bool,
    /// This instance's lease.
    pub lease: LeaseState,
    /// How the last finished cycle ended, if any.
    pub last_cycle: Option<CycleOutcome>,
}

impl Readiness {
    /// Returns the reasons this instance is not ready; empty means ready.
    ///
    /// The rule: ready when the store answers and the lease is held, or when the store answers
    /// and another instance holds the lease (a healthy standby). A lost lease is not ready. The
    /// last cycle's outcome is reported but does not make the instance unready: a failed cycle
    /// is retried by the next one, and taking the instance out of service would only drop
    /// webhooks.
    pub fn problems(&self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if !self.store_ok {
            problems.push("store unreachable");
        }
        if self.lease == LeaseState::Lost {
            problems.push("sync lease lost");
        }
        problems
    }

    /// Returns whether this instance is ready (see [`Readiness::problems`]).
    pub fn is_ready(&self) -> bool {
        self.problems().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readiness(store_ok: bool, lease: LeaseState, last: Option<CycleOutcome>) -> Readiness {
        Readiness {
            store_ok,
            lease,
            last_cycle: last,
        }
    }

    #[test]
    fn readiness_rule() {
        assert!(readiness(true, LeaseState::Held, None).is_ready());
        assert!(readiness(true, LeaseState::Standby, None).is_ready());
        assert!(readiness(true, LeaseState::Held, Some(CycleOutcome::Failed)).is_ready());
        assert_eq!(
            readiness(false, LeaseState::Held, None).problems(),
            vec!["store unreachable"]
        );
        assert_eq!(
            readiness(false, LeaseState::Lost, None).problems(),
            vec!["store unreachable", "sync lease lost"]
        );
        assert!(!readiness(true, LeaseState::Lost, None).is_ready());
    }

    #[test]
    fn counts_flatten_into_object_direction_rows() {
        let row = ObjectDirectionCounts {
            object: "lead".into(),
            direction: Direction::MarketoToCrm,
            counts: RecordCounts {
                created: 2,
                updated: 3,
                ..RecordCounts::default()
            },
        };
        let json = serde_json::to_value(&row).expect("serialise");
        assert_eq!(json["direction"], "marketo_to_crm");
        assert_eq!(json["created"], 2);
        assert_eq!(json["updated"], 3);
        assert_eq!(row.counts.written(), 5);
    }
}
