//! [`StoreStatus`]: the [`StatusSource`] behind the status page, `/api/status` and `/readyz`,
//! read from the state store and the daemon's live state.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Live, SharedLive, live_update};
use crate::http::{
    CallsPoint, CycleOutcome, CycleSummary, Direction, ErrorList, LeaseState,
    ObjectDirectionCounts, ObjectStatus, OpenError, PauseInfo, QuotaStatus, Readiness,
    RecordCounts, RecordsPoint, StatusError, StatusReport, StatusSource,
};
use crate::store::{
    self, Clock, CycleCount, CycleRecord, ErrorFilter, ErrorStatus, StateStore, StoreError,
    SyncError,
};

/// How many recent cycles the report shows.
const RECENT_CYCLES: u32 = 50;

/// How many open errors the report carries.
const REPORT_ERRORS: u32 = 100;

/// The status of one daemon, read from the store and the daemon's live state.
pub struct StoreStatus {
    store: Arc<dyn StateStore>,
    instance: String,
    daily_budget: u64,
    bulk_budget_bytes: u64,
    clock: Arc<dyn Clock>,
    live: Option<SharedLive>,
}

impl StoreStatus {
    /// Returns a status source over `store`. Without `live` (a command outside the daemon) the
    /// lease state is read from the store: `Held` when any process holds an unexpired lease.
    pub(crate) fn new(
        store: Arc<dyn StateStore>,
        instance: String,
        daily_budget: u64,
        bulk_budget_bytes: u64,
        clock: Arc<dyn Clock>,
        live: Option<SharedLive>,
    ) -> StoreStatus {
        StoreStatus {
            store,
            instance,
            daily_budget,
            bulk_budget_bytes,
            clock,
            live,
        }
    }

    /// Returns a status source over `store` for use outside the daemon.
    pub fn detached(
        store: Arc<dyn StateStore>,
        instance: impl Into<String>,
        daily_budget: u64,
        bulk_budget_bytes: u64,
        clock: Arc<dyn Clock>,
    ) -> StoreStatus {
        StoreStatus::new(
            store,
            instance.into(),
            daily_budget,
            bulk_budget_bytes,
            clock,
            None,
        )
    }

    fn live(&self) -> Option<Live> {
        self.live.as_ref().map(|l| live_update(l, |l| l.clone()))
    }

    async fn lease_state(&self, live: Option<&Live>) -> Result<LeaseState, StoreError> {
        if let Some(live) = live {
            return Ok(live.lease);
        }
        let lease = self.store.lease(&self.instance).await?;
        Ok(match lease {
            Some(lease) if lease.expires_at > self.clock.now() => LeaseState::Held,
            _ => LeaseState::Standby,
        })
    }

    async fn build_report(&self) -> Result<StatusReport, StoreError> {
        let now = self.clock.now();
        let live = self.live();
        let lease = self.lease_state(live.as_ref()).await?;
        let operator_pause = self.store.pause_state().await?;
        let paused = match operator_pause {
            Some(p) => Some(PauseInfo {
                reason: p.reason,
                until: p.until,
            }),
            None => live.as_ref().and_then(|l| l.engine_pause.clone()),
        };
        let cycles = self.store.recent_cycles(RECENT_CYCLES).await?;
        let mut recent_cycles: Vec<CycleSummary> = cycles.iter().map(cycle_summary).collect();
        if let Some(since) = live.as_ref().and_then(|l| l.running_since)
            && !recent_cycles
                .iter()
                .any(|c| c.outcome == CycleOutcome::Running)
        {
            recent_cycles.insert(
                0,
                CycleSummary {
                    id: "running".to_owned(),
                    started_at: since,
                    ended_at: None,
                    outcome: CycleOutcome::Running,
                    duration_ms: None,
                    api_calls: 0,
                    counts: Vec::new(),
                },
            );
        }
        let usage = self.store.api_usage(store::marketo_day(now)).await?;
        let quota = QuotaStatus {
            calls_today: usage.calls,
            daily_budget: self.daily_budget,
            remaining: self.daily_budget.saturating_sub(usage.calls),
            bulk_bytes_today: usage.bulk_bytes,
            bulk_budget_bytes: self.bulk_budget_bytes,
        };
        let counts = self.store.counts().await?;
        let errors = self
            .store
            .list_errors(&ErrorFilter {
                status: Some(ErrorStatus::Open),
                object: None,
                limit: REPORT_ERRORS,
            })
            .await?;
        let open_errors: Vec<OpenError> = errors.iter().map(open_error).collect();
        Ok(StatusReport {
            instance: self.instance.clone(),
            generated_at: now,
            paused,
            lease,
            objects: object_statuses(&cycles, now),
            calls_per_cycle: cycles
                .iter()
                .rev()
                .map(|c| CallsPoint {
                    cycle_id: c.id.to_string(),
                    at: c.started_at,
                    calls: c.api_calls,
                })
                .collect(),
            records_over_time: cycles.iter().rev().map(records_point).collect(),
            recent_cycles,
            quota,
            open_errors_total: counts.open_errors.max(open_errors.len() as u64),
            open_errors,
        })
    }
}

fn unavailable(error: &StoreError) -> StatusError {
    // The store's errors name the operation and the database's message, never the URL.
    if error.is_retryable() {
        StatusError::Unavailable {
            reason: error.to_string(),
        }
    } else {
        StatusError::Internal {
            reason: error.to_string(),
        }
    }
}

fn outcome(o: store::CycleOutcome) -> CycleOutcome {
    match o {
        store::CycleOutcome::Running => CycleOutcome::Running,
        store::CycleOutcome::Succeeded => CycleOutcome::Succeeded,
        store::CycleOutcome::Partial => CycleOutcome::Partial,
        store::CycleOutcome::Failed => CycleOutcome::Failed,
        store::CycleOutcome::Cancelled => CycleOutcome::Cancelled,
    }
}

fn direction(d: store::Direction) -> Direction {
    match d {
        store::Direction::MarketoToCrm => Direction::MarketoToCrm,
        store::Direction::CrmToMarketo => Direction::CrmToMarketo,
    }
}

fn record_counts(c: &CycleCount) -> RecordCounts {
    RecordCounts {
        read: c.read,
        created: c.created,
        updated: c.updated,
        deleted: c.deleted,
        conflicts: c.conflicts,
        skipped: c.skipped,
        failed: c.failed,
    }
}

fn add(total: &mut RecordCounts, c: &RecordCounts) {
    total.read += c.read;
    total.created += c.created;
    total.updated += c.updated;
    total.deleted += c.deleted;
    total.conflicts += c.conflicts;
    total.skipped += c.skipped;
    total.failed += c.failed;
}

fn cycle_summary(c: &CycleRecord) -> CycleSummary {
    CycleSummary {
        id: c.id.to_string(),
        started_at: c.started_at,
        ended_at: c.ended_at,
        outcome: outcome(c.outcome),
        duration_ms: c
            .ended_at
            .and_then(|end| u64::try_from((end - c.started_at).num_milliseconds()).ok()),
        api_calls: c.api_calls,
        counts: c
            .counts
            .iter()
            .filter_map(|count| {
                count.direction.map(|d| ObjectDirectionCounts {
                    object: count.object.clone(),
                    direction: direction(d),
                    counts: record_counts(count),
                })
            })
            .collect(),
    }
}

fn records_point(c: &CycleRecord) -> RecordsPoint {
    let mut point = RecordsPoint {
        at: c.started_at,
        marketo_to_crm: 0,
        crm_to_marketo: 0,
    };
    for count in &c.counts {
        let written = record_counts(count).written();
        match count.direction {
            Some(store::Direction::MarketoToCrm) => point.marketo_to_crm += written,
            Some(store::Direction::CrmToMarketo) => point.crm_to_marketo += written,
            None => {}
        }
    }
    point
}

/// Totals over the retained cycles per object, and the lag since its last successful cycle.
fn object_statuses(
    cycles: &[CycleRecord],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<ObjectStatus> {
    let mut objects: BTreeMap<String, ObjectStatus> = BTreeMap::new();
    for cycle in cycles {
        let success = matches!(
            cycle.outcome,
            store::CycleOutcome::Succeeded | store::CycleOutcome::Partial
        );
        for count in &cycle.counts {
            let entry = objects
                .entry(count.object.clone())
                .or_insert_with(|| ObjectStatus {
                    object: count.object.clone(),
                    linked: 0,
                    marketo_to_crm: RecordCounts::default(),
                    crm_to_marketo: RecordCounts::default(),
                    last_success_at: None,
                    lag_seconds: None,
                });
            let counts = record_counts(count);
            match count.direction {
                Some(store::Direction::MarketoToCrm) => add(&mut entry.marketo_to_crm, &counts),
                Some(store::Direction::CrmToMarketo) => add(&mut entry.crm_to_marketo, &counts),
                None => {}
            }
            if success
                && let Some(end) = cycle.ended_at
                && entry.last_success_at.is_none_or(|t| t < end)
            {
                entry.last_success_at = Some(end);
                entry.lag_seconds = u64::try_from((now - end).num_seconds()).ok();
            }
        }
    }
    objects.into_values().collect()
}

fn open_error(e: &SyncError) -> OpenError {
    OpenError {
        id: e.id.to_string(),
        object: e.object.clone(),
        direction: direction(e.direction),
        key: e.record_key.clone(),
        code: e.code.clone(),
        message: e.message.clone(),
        attempts: e.attempts,
        next_retry_at: e.next_retry_at,
    }
}

#[async_trait]
impl StatusSource for StoreStatus {
    async fn status(&self) -> Result<StatusReport, StatusError> {
        self.build_report().await.map_err(|e| unavailable(&e))
    }

    async fn open_errors(&self, limit: usize) -> Result<ErrorList, StatusError> {
        let limit = u32::try_from(limit.max(1)).unwrap_or(u32::MAX);
        let errors = self
            .store
            .list_errors(&ErrorFilter {
                status: Some(ErrorStatus::Open),
                object: None,
                limit,
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let counts = self.store.counts().await.map_err(|e| unavailable(&e))?;
        Ok(ErrorList {
            total: counts.open_errors.max(errors.len() as u64),
            errors: errors.iter().map(open_error).collect(),
        })
    }

    async fn ready(&self) -> Readiness {
        let live = self.live();
        let probe = self.store.lease(&self.instance).await;
        let store_ok = probe.is_ok() && live.as_ref().is_none_or(|l| l.store_ok);
        let lease = match (&live, &probe) {
            (Some(l), _) => l.lease,
            (None, Ok(Some(lease))) if lease.expires_at > self.clock.now() => LeaseState::Held,
            (None, _) => LeaseState::Standby,
        };
        let last_cycle = match live.as_ref().and_then(|l| l.last_outcome) {
            Some(o) => Some(o),
            None => self
                .store
                .recent_cycles(1)
                .await
                .ok()
                .and_then(|c| c.first().map(|c| outcome(c.outcome))),
        };
        Readiness {
            store_ok,
            lease,
            last_cycle,
        }
    }
}
