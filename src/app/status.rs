//! [`StoreStatus`]: the [`StatusSource`] behind the status page, `/api/status` and `/readyz`,
//! read from the state store and the daemon's live state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Timelike, Utc};

use super::{Live, SharedLive, live_update};
use crate::http::{
    Backlog, BurnPoint, CallsPoint, ConflictList, ConflictQuery, ConflictView, CycleOutcome,
    CycleSummary, CycleTotals, Direction, ErrorAction, ErrorList, HourlyRecords, LeaseState,
    ObjectDirectionCounts, ObjectStatus, OpenError, PauseInfo, QuotaBurn, QuotaStatus, Readiness,
    RecordCounts, RecordsPoint, StatusError, StatusReport, StatusSource,
};
use crate::model::Side;
use crate::store::{
    self, Clock, Conflict, ConflictFilter, CycleCount, CycleRecord, ErrorFilter, ErrorStatus,
    LedgerSummary, LinkCount, StateStore, StoreError, StoreTotals, SyncError,
};

/// How many recent cycles the report shows.
const RECENT_CYCLES: u32 = 50;

/// How many open errors the report carries.
const REPORT_ERRORS: u32 = 100;

/// How many conflicts the report carries (the conflicts API serves the rest).
const REPORT_CONFLICTS: u32 = 20;

/// How many failed cycles the report lists.
const REPORT_FAILED_CYCLES: usize = 10;

/// The most cycles read for the hourly chart and today's quota burn.
const CHART_CYCLES: u32 = 5_000;

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
                    message: None,
                },
            );
        }
        let failed_cycles: Vec<CycleSummary> = recent_cycles
            .iter()
            .filter(|c| c.outcome == CycleOutcome::Failed)
            .take(REPORT_FAILED_CYCLES)
            .cloned()
            .collect();
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
        let totals = self.store.totals().await?;
        let ledger = self.store.ledger_summary().await?;
        let links = self.store.link_counts().await?;
        let (day_start, day_end) = store::marketo_day_bounds(now);
        let chart_since = (now - Duration::hours(24)).min(day_start);
        let chart_cycles = self.store.cycles_since(chart_since, CHART_CYCLES).await?;
        let conflicts = self
            .store
            .list_conflicts(&ConflictFilter {
                limit: REPORT_CONFLICTS,
                ..ConflictFilter::default()
            })
            .await?;
        Ok(StatusReport {
            instance: self.instance.clone(),
            generated_at: now,
            paused,
            lease,
            objects: object_statuses(&totals, &ledger, &links, &chart_cycles, now),
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
            failed_cycles,
            cycle_totals: cycle_totals(&totals),
            records_per_hour: records_per_hour(&chart_cycles, now),
            quota_burn: quota_burn(
                &chart_cycles,
                day_start,
                day_end,
                now,
                usage.calls,
                self.daily_budget,
            ),
            recent_conflicts: conflicts.iter().map(conflict_view).collect(),
            conflicts_total: counts.conflicts,
        })
    }
}

fn seconds_since(now: DateTime<Utc>, then: DateTime<Utc>) -> u64 {
    u64::try_from((now - then).num_seconds()).unwrap_or(0)
}

fn cycle_totals(totals: &StoreTotals) -> CycleTotals {
    let mut out = CycleTotals::default();
    for t in &totals.outcomes {
        match t.outcome {
            store::CycleOutcome::Succeeded => out.succeeded += t.cycles,
            store::CycleOutcome::Partial => out.partial += t.cycles,
            store::CycleOutcome::Failed => out.failed += t.cycles,
            store::CycleOutcome::Cancelled => out.cancelled += t.cycles,
            store::CycleOutcome::Running => out.running += t.cycles,
        }
        out.api_calls += t.api_calls;
    }
    out
}

/// Records written per hour and object by the cycles that started in the last 24 hours.
fn records_per_hour(cycles: &[CycleRecord], now: DateTime<Utc>) -> Vec<HourlyRecords> {
    let since = now - Duration::hours(24);
    let mut buckets: BTreeMap<(DateTime<Utc>, String), (u64, u64)> = BTreeMap::new();
    for cycle in cycles.iter().filter(|c| c.started_at >= since) {
        let hour = hour_of(cycle.started_at);
        for count in &cycle.counts {
            let written = record_counts(count).written();
            let entry = buckets
                .entry((hour, count.object.clone()))
                .or_insert((0, 0));
            match count.direction {
                Some(store::Direction::MarketoToCrm) => entry.0 += written,
                Some(store::Direction::CrmToMarketo) => entry.1 += written,
                None => {}
            }
        }
    }
    buckets
        .into_iter()
        .map(|((hour, object), (m2c, c2m))| HourlyRecords {
            hour,
            object,
            marketo_to_crm: m2c,
            crm_to_marketo: c2m,
        })
        .collect()
}

fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_minute(0))
        .unwrap_or(at)
}

/// Today's cumulative calls per cycle and the projection to the day's end at today's rate.
fn quota_burn(
    cycles: &[CycleRecord],
    day_start: DateTime<Utc>,
    day_end: DateTime<Utc>,
    now: DateTime<Utc>,
    used: u64,
    budget: u64,
) -> QuotaBurn {
    let mut today: Vec<(DateTime<Utc>, u64)> = cycles
        .iter()
        .filter_map(|c| c.ended_at.map(|end| (end, c.api_calls)))
        .filter(|(end, _)| *end >= day_start && *end <= now)
        .collect();
    today.sort();
    let mut points = vec![BurnPoint {
        at: day_start,
        calls: 0,
    }];
    let mut sum = 0;
    for (at, calls) in today {
        sum += calls;
        points.push(BurnPoint { at, calls: sum });
    }
    // The store's count includes calls outside cycles (webhooks, commands): end on it.
    if used >= sum {
        points.push(BurnPoint {
            at: now,
            calls: used,
        });
    }
    let elapsed = (now - day_start).num_seconds();
    let left = (day_end - now).num_seconds().max(0);
    let projected = if elapsed >= 60 {
        let rate = used as f64 / elapsed as f64;
        used + (rate * left as f64).round() as u64
    } else {
        used
    };
    QuotaBurn {
        day_start: Some(day_start),
        day_end: Some(day_end),
        budget,
        used,
        points,
        projected,
        projected_over_budget: projected > budget,
    }
}

fn conflict_view(c: &Conflict) -> ConflictView {
    ConflictView {
        id: c.id,
        object: c.object.clone(),
        marketo_key: c.marketo_key.clone(),
        crm_key: c.crm_key.clone(),
        field: c.field.clone(),
        marketo_value: c.marketo_value.to_json(),
        crm_value: c.crm_value.to_json(),
        base_value: c
            .base_value
            .as_ref()
            .map_or(serde_json::Value::Null, |v| v.to_json()),
        winner: c.winner.as_str().to_owned(),
        policy: c.policy.clone(),
        at: c.at,
    }
}

fn parse_winner(text: &str) -> Result<Side, StatusError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "marketo" => Ok(Side::Marketo),
        "crm" => Ok(Side::Crm),
        other => Err(StatusError::Invalid {
            reason: format!("winner must be `marketo` or `crm`, not {other:?}"),
        }),
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
        message: c.message.clone(),
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

/// Per object: links, totals kept in the store, the ledger's backlog and the lag (see
/// [`ObjectStatus`] for the definitions).
fn object_statuses(
    totals: &StoreTotals,
    ledger: &[LedgerSummary],
    links: &[LinkCount],
    recent: &[CycleRecord],
    now: DateTime<Utc>,
) -> Vec<ObjectStatus> {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    names.extend(totals.objects.iter().map(|c| c.object.as_str()));
    names.extend(totals.last_success.iter().map(|s| s.object.as_str()));
    names.extend(ledger.iter().map(|l| l.object.as_str()));
    names.extend(links.iter().map(|l| l.object.as_str()));
    let hour_ago = now - Duration::hours(1);
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let mut status = ObjectStatus {
            object: name.to_owned(),
            linked: 0,
            tombstoned: 0,
            marketo_to_crm: RecordCounts::default(),
            crm_to_marketo: RecordCounts::default(),
            last_success_at: None,
            last_success_started_at: None,
            lag_seconds: None,
            backlog_marketo_to_crm: Backlog::default(),
            backlog_crm_to_marketo: Backlog::default(),
            records_last_hour: 0,
        };
        if let Some(l) = links.iter().find(|l| l.object == name) {
            status.linked = l.live;
            status.tombstoned = l.tombstoned;
        }
        for count in totals.objects.iter().filter(|c| c.object == name) {
            let counts = record_counts(count);
            match count.direction {
                Some(store::Direction::MarketoToCrm) => add(&mut status.marketo_to_crm, &counts),
                Some(store::Direction::CrmToMarketo) => add(&mut status.crm_to_marketo, &counts),
                None => {}
            }
        }
        let success = totals.last_success.iter().find(|s| s.object == name);
        status.last_success_at = success.map(|s| s.ended_at);
        status.last_success_started_at = success.map(|s| s.started_at);
        for (direction, backlog) in [
            (
                store::Direction::MarketoToCrm,
                &mut status.backlog_marketo_to_crm,
            ),
            (
                store::Direction::CrmToMarketo,
                &mut status.backlog_crm_to_marketo,
            ),
        ] {
            if let Some(l) = ledger
                .iter()
                .find(|l| l.object == name && l.direction == direction)
            {
                backlog.pending = l.scheduled;
                backlog.waiting_for_operator = l.waiting;
                backlog.oldest_pending_at = l.oldest_scheduled_at;
                backlog.oldest_waiting_at = l.oldest_waiting_at;
            }
            backlog.lag_seconds = success.map(|s| {
                let oldest = backlog
                    .oldest_pending_at
                    .map_or(s.started_at, |p| p.min(s.started_at));
                seconds_since(now, oldest)
            });
        }
        status.lag_seconds = match (
            status.backlog_marketo_to_crm.lag_seconds,
            status.backlog_crm_to_marketo.lag_seconds,
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        status.records_last_hour = recent
            .iter()
            .filter(|c| c.started_at >= hour_ago)
            .flat_map(|c| c.counts.iter())
            .filter(|c| c.object == name && c.direction.is_some())
            .map(|c| record_counts(c).written())
            .sum();
        out.push(status);
    }
    out
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
        first_seen_at: Some(e.first_seen_at),
        status: e.status.as_str().to_owned(),
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

    async fn conflicts(&self, query: &ConflictQuery) -> Result<ConflictList, StatusError> {
        let winner = query.winner.as_deref().map(parse_winner).transpose()?;
        let filter = ConflictFilter {
            object: query.object.clone(),
            field: query.field.clone(),
            winner,
            since: query.since,
            limit: u32::try_from(query.limit_or_default()).unwrap_or(u32::MAX),
        };
        let conflicts = self
            .store
            .list_conflicts(&filter)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(ConflictList {
            conflicts: conflicts.iter().map(conflict_view).collect(),
        })
    }

    async fn error_action(&self, id: &str, action: ErrorAction) -> Result<OpenError, StatusError> {
        let uuid = uuid::Uuid::parse_str(id.trim()).map_err(|_| StatusError::Invalid {
            reason: format!("{id:?} is not an error id (a UUID)"),
        })?;
        let (status, next_retry_at) = match action {
            ErrorAction::Retry => (ErrorStatus::Open, Some(self.clock.now())),
            ErrorAction::Discard => (ErrorStatus::Discarded, None),
        };
        let changed = self
            .store
            .set_error_status(uuid, status, next_retry_at)
            .await
            .map_err(|e| unavailable(&e))?;
        let entry = if changed {
            self.store.error(uuid).await.map_err(|e| unavailable(&e))?
        } else {
            None
        };
        let Some(entry) = entry else {
            return Err(StatusError::NotFound {
                what: format!("sync error {uuid}"),
            });
        };
        tracing::info!(error_id = %uuid, action = action.as_str(), "operator changed a sync error");
        Ok(open_error(&entry))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn quota_burn_projects_todays_rate_to_the_day_end() {
        let (start, end) = store::marketo_day_bounds(t("2026-11-23T12:00:00Z"));
        let cycle = |ended: &str, calls: u64| CycleRecord {
            id: uuid::Uuid::new_v4(),
            started_at: t(ended) - Duration::seconds(30),
            ended_at: Some(t(ended)),
            outcome: store::CycleOutcome::Succeeded,
            steps: Vec::new(),
            counts: Vec::new(),
            api_calls: calls,
            message: None,
        };
        // One cycle yesterday (not counted), two today.
        let cycles = vec![
            cycle("2026-11-23T05:00:00Z", 999),
            cycle("2026-11-23T08:00:00Z", 100),
            cycle("2026-11-23T11:00:00Z", 200),
        ];
        let burn = quota_burn(&cycles, start, end, t("2026-11-23T12:00:00Z"), 600, 2_000);
        let points: Vec<u64> = burn.points.iter().map(|p| p.calls).collect();
        assert_eq!(points, vec![0, 100, 300, 600]);
        // 600 calls in 6 hours, 18 hours left at the same rate.
        assert_eq!(burn.projected, 2_400);
        assert!(burn.projected_over_budget);
        // Right after midnight there is no rate yet.
        let early = quota_burn(&[], start, end, start + Duration::seconds(10), 5, 2_000);
        assert_eq!(early.projected, 5);
        assert!(!early.projected_over_budget);
    }

    #[test]
    fn hours_are_truncated() {
        assert_eq!(
            hour_of(t("2026-11-23T10:59:59.999Z")),
            t("2026-11-23T10:00:00Z")
        );
    }
}
