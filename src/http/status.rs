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
    /// How many sync errors are open in total.
    pub open_errors_total: u64,
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

/// Totals and lag for one object type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectStatus {
    /// The object type.
    pub object: String,
    /// Pairs linked in the store.
    pub linked: u64,
    /// Totals Marketo to CRM (since the store was created, or over the retained history).
    pub marketo_to_crm: RecordCounts,
    /// Totals CRM to Marketo.
    pub crm_to_marketo: RecordCounts,
    /// When its last successful cycle ended.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Seconds since then; `None` when it never succeeded.
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
