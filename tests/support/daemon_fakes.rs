//! Fakes for the daemon tests: a scripted [`Runner`] and an in-memory store of the control state
//! (lease, pause) for tests on tokio's paused clock, where a real database's I/O would let
//! virtual time jump while a query runs.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use marketo_sync::engine::{CycleOptions, CycleSummary, EngineError, OnDemandOutcome, Runner};
use marketo_sync::model::Side;
use marketo_sync::store::{
    ApiUsage, BulkJob, Clock, Conflict, ConflictFilter, CycleRecord, ErrorFilter, ErrorStatus,
    JobDirection, Lease, Link, PauseKind, PauseState, SchemaRecord, StateStore, StepCommit,
    StoreCounts, StoreError, SyncError, Watermark,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A wall clock that moves with tokio's (paused) clock.
#[derive(Debug)]
pub struct TokioClock {
    base: DateTime<Utc>,
    start: Instant,
}

impl TokioClock {
    pub fn new() -> Arc<TokioClock> {
        Arc::new(TokioClock {
            base: "2026-03-02T15:00:00Z".parse().expect("time"),
            start: Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).expect("elapsed")
    }
}

/// How one scripted cycle behaves.
#[derive(Debug, Clone)]
pub enum Step {
    /// Takes this long, then succeeds.
    Succeed(Duration),
    /// Returns `Paused` until now + this.
    PauseFor(Duration),
    /// Blocks until cancelled, then "commits" and returns `Cancelled`.
    BlockUntilCancelled,
    /// Never returns, not even when cancelled (a stuck engine).
    Hang,
    /// Fails at once (a mapping that does not compile).
    Fail,
}

/// One cycle as the fake saw it.
#[derive(Debug, Clone, Copy)]
pub struct CycleSpan {
    pub start: Instant,
    pub end: Option<Instant>,
}

/// A scripted runner: each cycle takes the next step (the last one repeats).
pub struct FakeRunner {
    name: String,
    script: Mutex<VecDeque<Step>>,
    last: Mutex<Step>,
    clock: Arc<dyn Clock>,
    pub spans: Mutex<Vec<CycleSpan>>,
    /// Cycles running right now, shared between replicas.
    pub concurrent: Arc<AtomicUsize>,
    /// The most cycles ever seen running at once, shared between replicas.
    pub max_concurrent: Arc<AtomicUsize>,
    /// Set when a cancelled cycle committed what it had done before returning.
    pub committed_on_cancel: AtomicBool,
    started_tx: watch::Sender<usize>,
    finished_tx: watch::Sender<usize>,
    pub leads: Mutex<Vec<i64>>,
    /// Print "cycle started" on stdout (the child-process test reads it).
    pub announce: bool,
}

impl FakeRunner {
    pub fn new(name: &str, script: Vec<Step>, clock: Arc<dyn Clock>) -> Arc<FakeRunner> {
        FakeRunner::shared(
            name,
            script,
            clock,
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        )
    }

    pub fn shared(
        name: &str,
        script: Vec<Step>,
        clock: Arc<dyn Clock>,
        concurrent: Arc<AtomicUsize>,
        max_concurrent: Arc<AtomicUsize>,
    ) -> Arc<FakeRunner> {
        let last = script
            .last()
            .cloned()
            .unwrap_or(Step::Succeed(Duration::ZERO));
        Arc::new(FakeRunner {
            name: name.to_owned(),
            script: Mutex::new(script.into()),
            last: Mutex::new(last),
            clock,
            spans: Mutex::new(Vec::new()),
            concurrent,
            max_concurrent,
            committed_on_cancel: AtomicBool::new(false),
            started_tx: watch::channel(0).0,
            finished_tx: watch::channel(0).0,
            leads: Mutex::new(Vec::new()),
            announce: false,
        })
    }

    pub fn announcing(mut self: Arc<Self>) -> Arc<Self> {
        Arc::get_mut(&mut self).expect("unique").announce = true;
        self
    }

    /// Waits until at least `n` cycles have started.
    pub async fn started(&self, n: usize) {
        let mut rx = self.started_tx.subscribe();
        rx.wait_for(|c| *c >= n).await.expect("runner alive");
    }

    /// Waits until at least `n` cycles have finished.
    pub async fn finished(&self, n: usize) {
        let mut rx = self.finished_tx.subscribe();
        rx.wait_for(|c| *c >= n).await.expect("runner alive");
    }

    pub fn started_count(&self) -> usize {
        *self.started_tx.borrow()
    }

    pub fn spans(&self) -> Vec<CycleSpan> {
        self.spans.lock().expect("lock").clone()
    }

    fn next_step(&self) -> Step {
        let mut script = self.script.lock().expect("lock");
        match script.pop_front() {
            Some(step) => {
                *self.last.lock().expect("lock") = step.clone();
                step
            }
            None => self.last.lock().expect("lock").clone(),
        }
    }
}

/// Counts a running cycle; the count drops even when the cycle's future is dropped (a kill).
struct Running<'a>(&'a FakeRunner);

impl<'a> Running<'a> {
    fn enter(runner: &'a FakeRunner) -> Self {
        let now = runner.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        runner.max_concurrent.fetch_max(now, Ordering::SeqCst);
        Running(runner)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.concurrent.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Runner for FakeRunner {
    async fn run_one_cycle(
        &self,
        _options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<CycleSummary, EngineError> {
        let _running = Running::enter(self);
        let index = {
            let mut spans = self.spans.lock().expect("lock");
            spans.push(CycleSpan {
                start: Instant::now(),
                end: None,
            });
            spans.len() - 1
        };
        self.started_tx.send_modify(|c| *c += 1);
        if self.announce {
            println!("cycle started by {}", self.name);
        }
        let result = match self.next_step() {
            Step::Succeed(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => Ok(CycleSummary::default()),
                    _ = cancel.cancelled() => Err(EngineError::Cancelled),
                }
            }
            Step::PauseFor(d) => Err(EngineError::Paused {
                reason: "Marketo daily API quota reached (607)".into(),
                until: Some(self.clock.now() + chrono::Duration::from_std(d).expect("d")),
            }),
            Step::BlockUntilCancelled => {
                cancel.cancelled().await;
                // The engine's safe point: commit what is done, then report the cancellation.
                self.committed_on_cancel.store(true, Ordering::SeqCst);
                Err(EngineError::Cancelled)
            }
            Step::Hang => std::future::pending().await,
            Step::Fail => Err(EngineError::Mapping("field email is missing".into())),
        };
        self.spans.lock().expect("lock")[index].end = Some(Instant::now());
        self.finished_tx.send_modify(|c| *c += 1);
        result
    }

    async fn sync_lead_now(
        &self,
        lead_id: i64,
        _cancel: &CancellationToken,
    ) -> Result<OnDemandOutcome, EngineError> {
        self.leads.lock().expect("lock").push(lead_id);
        Ok(OnDemandOutcome::Synced)
    }
}

/// An in-memory store of the control state only (lease, pause); the rest is empty.
#[derive(Debug)]
pub struct ControlStore {
    clock: Arc<dyn Clock>,
    lease: Mutex<Option<Lease>>,
    pause: Mutex<Option<PauseState>>,
}

impl ControlStore {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<ControlStore> {
        Arc::new(ControlStore {
            clock,
            lease: Mutex::new(None),
            pause: Mutex::new(None),
        })
    }
}

fn unsupported(what: &'static str) -> StoreError {
    StoreError::Invalid {
        what,
        reason: "not in the control fake".into(),
    }
}

#[async_trait]
impl StateStore for ControlStore {
    fn backend(&self) -> &'static str {
        "memory"
    }
    fn statements_executed(&self) -> u64 {
        0
    }
    async fn commit(&self, _commit: StepCommit) -> Result<(), StoreError> {
        Err(unsupported("commit"))
    }
    async fn links_by_marketo_keys(&self, _: &str, _: &[String]) -> Result<Vec<Link>, StoreError> {
        Ok(Vec::new())
    }
    async fn links_by_crm_keys(&self, _: &str, _: &[String]) -> Result<Vec<Link>, StoreError> {
        Ok(Vec::new())
    }
    async fn links_page(&self, _: &str, _: Option<&str>, _: u32) -> Result<Vec<Link>, StoreError> {
        Ok(Vec::new())
    }
    async fn watermark(&self, _: Side, _: &str, _: &str) -> Result<Option<Watermark>, StoreError> {
        Ok(None)
    }
    async fn watermarks(&self) -> Result<Vec<Watermark>, StoreError> {
        Ok(Vec::new())
    }
    async fn reset_watermark(&self, _: &Watermark) -> Result<(), StoreError> {
        Err(unsupported("reset_watermark"))
    }
    async fn upsert_job(&self, _: &BulkJob) -> Result<(), StoreError> {
        Err(unsupported("upsert_job"))
    }
    async fn job(&self, _: JobDirection, _: &str) -> Result<Option<BulkJob>, StoreError> {
        Ok(None)
    }
    async fn unfinished_jobs(&self, _: JobDirection) -> Result<Vec<BulkJob>, StoreError> {
        Ok(Vec::new())
    }
    async fn add_api_usage(&self, _: NaiveDate, _: u64, _: u64) -> Result<ApiUsage, StoreError> {
        Err(unsupported("add_api_usage"))
    }
    async fn api_usage(&self, day: NaiveDate) -> Result<ApiUsage, StoreError> {
        Ok(ApiUsage {
            day,
            calls: 0,
            bulk_bytes: 0,
        })
    }
    async fn put_schema(&self, _: &SchemaRecord) -> Result<(), StoreError> {
        Err(unsupported("put_schema"))
    }
    async fn schema(&self, _: Side, _: &str) -> Result<Option<SchemaRecord>, StoreError> {
        Ok(None)
    }
    async fn record_cycle(&self, _: &CycleRecord) -> Result<(), StoreError> {
        Err(unsupported("record_cycle"))
    }
    async fn recent_cycles(&self, _: u32) -> Result<Vec<CycleRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn errors_due(&self, _: DateTime<Utc>, _: u32) -> Result<Vec<SyncError>, StoreError> {
        Ok(Vec::new())
    }
    async fn list_errors(&self, _: &ErrorFilter) -> Result<Vec<SyncError>, StoreError> {
        Ok(Vec::new())
    }
    async fn error(&self, _: Uuid) -> Result<Option<SyncError>, StoreError> {
        Ok(None)
    }
    async fn set_error_status(
        &self,
        _: Uuid,
        _: ErrorStatus,
        _: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn list_conflicts(&self, _: &ConflictFilter) -> Result<Vec<Conflict>, StoreError> {
        Ok(Vec::new())
    }
    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        Ok(StoreCounts::default())
    }
    async fn try_acquire_lease(
        &self,
        instance: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut lease = self.lease.lock().expect("lock");
        let free = match &*lease {
            None => true,
            Some(l) => l.holder == holder || l.expires_at <= now,
        };
        if free {
            *lease = Some(Lease {
                instance: instance.to_owned(),
                holder: holder.to_owned(),
                acquired_at: now,
                expires_at: now + chrono::Duration::from_std(ttl).expect("ttl"),
            });
        }
        Ok(free)
    }
    async fn renew_lease(
        &self,
        _instance: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut lease = self.lease.lock().expect("lock");
        match &mut *lease {
            Some(l) if l.holder == holder && l.expires_at > now => {
                l.expires_at = now + chrono::Duration::from_std(ttl).expect("ttl");
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn release_lease(&self, _instance: &str, holder: &str) -> Result<bool, StoreError> {
        let mut lease = self.lease.lock().expect("lock");
        if lease.as_ref().is_some_and(|l| l.holder == holder) {
            *lease = None;
            return Ok(true);
        }
        Ok(false)
    }
    async fn lease(&self, _instance: &str) -> Result<Option<Lease>, StoreError> {
        Ok(self.lease.lock().expect("lock").clone())
    }
    async fn pause(
        &self,
        reason: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<PauseState, StoreError> {
        let state = PauseState {
            kind: PauseKind::Operator,
            reason: reason.to_owned(),
            until,
            paused_at: self.clock.now(),
        };
        *self.pause.lock().expect("lock") = Some(state.clone());
        Ok(state)
    }
    async fn pause_for_quota(
        &self,
        reason: &str,
        until: DateTime<Utc>,
    ) -> Result<Option<PauseState>, StoreError> {
        let now = self.clock.now();
        let mut pause = self.pause.lock().expect("lock");
        if let Some(p) = pause.as_ref()
            && p.kind == PauseKind::Operator
            && p.until.is_none_or(|u| u > now)
        {
            return Ok(None);
        }
        let state = PauseState {
            kind: PauseKind::Quota,
            reason: reason.to_owned(),
            until: Some(until),
            paused_at: now,
        };
        *pause = Some(state.clone());
        Ok(Some(state))
    }
    async fn resume(&self) -> Result<bool, StoreError> {
        Ok(self.pause.lock().expect("lock").take().is_some())
    }
    async fn pause_state(&self) -> Result<Option<PauseState>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .pause
            .lock()
            .expect("lock")
            .clone()
            .filter(|p| p.until.is_none_or(|u| u > now)))
    }
}
