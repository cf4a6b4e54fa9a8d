//! The daemon (`marketo-sync run`) and the operator commands (`status`, `errors`, `pause`,
//! `resume`).
//!
//! [`Daemon::build`] binds the HTTP listener; [`Daemon::run_until_stopped`] runs, on one
//! `TaskTracker`, until the shutdown token fires:
//!
//! - the lease keeper: takes the store's lease on the Marketo instance, renews it, and retries
//!   every [`DaemonParts::standby_retry`] while another replica holds it;
//! - the cycle loop: while this process holds the lease and nothing is paused, runs a cycle, then
//!   sleeps [`DaemonParts::interval`] counted from the END of the cycle;
//! - the on-demand worker: takes webhook leads from the [`OnDemandQueue`] and syncs them, only
//!   while this process holds the lease;
//! - the HTTP server (webhooks, health, metrics, status page) and the metrics upkeep.
//!
//! Shutdown stops intake first (the HTTP server and the queue), cancels the running cycle (the
//! engine abandons it at a safe point and commits what is done), waits at most
//! [`DaemonParts::shutdown_timeout`] for the tasks, releases the lease and returns.

pub mod demo;
pub mod health;
pub mod live;
pub mod ops;
pub mod status;
pub mod validate;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Loaded;
use crate::engine::{CycleOptions, EngineError, Runner};
use crate::http::{
    CycleOutcome, HttpConfig, HttpServer, LeaseState, OnDemandQueue, PauseInfo, StatusSource,
};
use crate::store::{Clock, PauseKind, StateStore, SystemClock};
use crate::telemetry::events::{CycleCompleted, PauseChanged, PauseScope};

pub use ops::{
    ErrorsListArgs, PauseArgs, RunClaim, RunKind, RunRequest, StatusFacts, claim_run,
    conflicts_list, errors_discard, errors_list, errors_retry, errors_retry_all, pause, resume,
    status_facts,
};
pub use status::StoreStatus;
pub use validate::{
    JsonProblem, SuggestArgs, ValidateArgs, check_store, collect_problems, run_suggest,
    run_suggest_with, run_validate, run_validate_with, validate_dir,
};

/// The default lease time to live: a dead holder is replaced within this long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

/// The default wait between lease attempts of a standby replica.
pub const DEFAULT_STANDBY_RETRY: Duration = Duration::from_secs(5);

/// The default bound on shutdown: tasks still running after it are aborted.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The default wait between checks of the pause state while paused.
pub const DEFAULT_PAUSE_POLL: Duration = Duration::from_secs(5);

/// The longest wait between cycles after repeated failures (unless the interval is longer).
pub const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(3600);

/// Errors of the daemon and the operator commands.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The settings or mappings could not be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The HTTP listener could not start.
    #[error("http: {0}")]
    Http(#[from] crate::http::HttpError),
    /// The status report could not be produced.
    #[error(transparent)]
    Status(#[from] crate::http::StatusError),
    /// The engine could not be built.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// A command-line argument is wrong.
    #[error("invalid argument {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `sync --once` or `bootstrap` may not run now (paused, or another process holds the
    /// lease); the message says why and what to do.
    #[error("{reason}")]
    Refused {
        /// Why, and what to do.
        reason: String,
    },
    /// No sync error has this id.
    #[error("no sync error with id {id}")]
    NoSuchError {
        /// The id asked for.
        id: String,
    },
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl AppError {
    /// Returns whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            AppError::Config(e) => e.is_retryable(),
            AppError::Store(e) => e.is_retryable(),
            AppError::Http(e) => e.is_retryable(),
            AppError::Status(e) => e.is_retryable(),
            AppError::Engine(e) => e.is_retryable(),
            AppError::InvalidArgument { .. } | AppError::NoSuchError { .. } => false,
            AppError::Refused { .. } => true,
            AppError::Output(_) => true,
        }
    }
}

/// Everything the daemon is built from.
pub struct DaemonParts {
    /// The engine.
    pub runner: Arc<dyn Runner>,
    /// The state store (lease, pause, status).
    pub store: Arc<dyn StateStore>,
    /// The HTTP listener's settings.
    pub http: HttpConfig,
    /// The Marketo instance (munchkin id or REST host): the lease is per instance.
    pub instance: String,
    /// This process's identity in the lease (see [`holder_id`]).
    pub holder: String,
    /// The pause between cycles, counted from the end of a cycle.
    pub interval: Duration,
    /// The lease's time to live (renewed every third of it).
    pub lease_ttl: Duration,
    /// The wait between lease attempts while another replica holds it.
    pub standby_retry: Duration,
    /// The bound on shutdown.
    pub shutdown_timeout: Duration,
    /// The wait between checks of the pause state while paused.
    pub pause_poll: Duration,
    /// The daily Marketo REST call budget (for the status report).
    pub daily_call_budget: u64,
    /// The daily bulk-extract budget in bytes (for the status report).
    pub bulk_budget_bytes: u64,
    /// The wall clock (pause ends, lag, the Marketo day).
    pub clock: Arc<dyn Clock>,
    /// The Prometheus handle rendered by `GET /metrics`.
    pub metrics: PrometheusHandle,
    /// How many webhook leads may wait.
    pub queue_capacity: usize,
    /// How long the on-demand worker waits after a webhook for more to share its Get Leads
    /// call (at most [`ON_DEMAND_BATCH`] leads a batch).
    pub batch_window: Duration,
}

impl DaemonParts {
    /// Returns parts with the defaults: a 5-minute interval, a 60 s lease, a 5 s standby retry,
    /// a 30 s shutdown bound, budgets of 10,000 calls and 500 MB, the system clock, the
    /// process-wide metrics recorder.
    pub fn new(
        runner: Arc<dyn Runner>,
        store: Arc<dyn StateStore>,
        http: HttpConfig,
        instance: impl Into<String>,
        holder: impl Into<String>,
    ) -> DaemonParts {
        DaemonParts {
            runner,
            store,
            http,
            instance: instance.into(),
            holder: holder.into(),
            interval: Duration::from_secs(300),
            lease_ttl: DEFAULT_LEASE_TTL,
            standby_retry: DEFAULT_STANDBY_RETRY,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            pause_poll: DEFAULT_PAUSE_POLL,
            daily_call_budget: 10_000,
            bulk_budget_bytes: 500 * 1024 * 1024,
            clock: Arc::new(SystemClock),
            metrics: crate::telemetry::install_metrics_recorder(),
            queue_capacity: crate::http::queue::DEFAULT_CAPACITY,
            batch_window: DEFAULT_BATCH_WINDOW,
        }
    }
}

/// What the daemon's tasks share and the status source reads.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) lease: LeaseState,
    pub(crate) store_ok: bool,
    /// A quota pause the store could not persist (kept in memory as a fallback).
    pub(crate) engine_pause: Option<PauseInfo>,
    /// The pause read from the store (an operator's, or a persisted quota pause).
    pub(crate) operator_pause: Option<PauseInfo>,
    /// Who set `operator_pause`.
    pub(crate) stored_pause_kind: Option<PauseKind>,
    pub(crate) running_since: Option<DateTime<Utc>>,
    pub(crate) last_outcome: Option<CycleOutcome>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            lease: LeaseState::Standby,
            store_ok: true,
            engine_pause: None,
            operator_pause: None,
            stored_pause_kind: None,
            running_since: None,
            last_outcome: None,
        }
    }
}

pub(crate) type SharedLive = Arc<Mutex<Live>>;

pub(crate) fn live_update<R>(live: &SharedLive, f: impl FnOnce(&mut Live) -> R) -> R {
    let mut guard = live
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

/// The daemon, bound and ready to run.
pub struct Daemon {
    ctx: Arc<Ctx>,
    server: HttpServer,
    queue: Arc<OnDemandQueue>,
    status: Arc<StoreStatus>,
    metrics: PrometheusHandle,
}

struct Ctx {
    runner: Arc<dyn Runner>,
    store: Arc<dyn StateStore>,
    instance: String,
    holder: String,
    interval: Duration,
    lease_ttl: Duration,
    standby_retry: Duration,
    shutdown_timeout: Duration,
    pause_poll: Duration,
    clock: Arc<dyn Clock>,
    live: SharedLive,
    daily_call_budget: u64,
    bulk_budget_bytes: u64,
    batch_window: Duration,
}

impl Daemon {
    /// Builds the daemon and binds its HTTP listener (port 0 picks a free port).
    ///
    /// # Errors
    ///
    /// Returns [`AppError::Http`] when the listener cannot be bound or the HTTP settings cannot
    /// work, and [`AppError::InvalidArgument`] for a zero lease ttl.
    pub async fn build(parts: DaemonParts) -> Result<Daemon, AppError> {
        if parts.lease_ttl.is_zero() {
            return Err(AppError::InvalidArgument {
                what: "lease_ttl",
                reason: "must be longer than zero".to_owned(),
            });
        }
        let live: SharedLive = Arc::new(Mutex::new(Live::default()));
        let queue = Arc::new(OnDemandQueue::new(parts.queue_capacity));
        let status = Arc::new(StoreStatus::new(
            Arc::clone(&parts.store),
            parts.instance.clone(),
            parts.daily_call_budget,
            parts.bulk_budget_bytes,
            Arc::clone(&parts.clock),
            Some(Arc::clone(&live)),
        ));
        let crm_sync = Arc::new(DaemonCrmSync {
            runner: Arc::clone(&parts.runner),
            store: Arc::clone(&parts.store),
            live: Arc::clone(&live),
        });
        let server = HttpServer::build_with_crm_sync(
            parts.http,
            Arc::clone(&status) as Arc<dyn StatusSource>,
            Arc::clone(&queue) as Arc<dyn crate::http::WebhookSink>,
            Some(crm_sync as Arc<dyn crate::http::crm_sync::CrmRecordSync>),
            parts.metrics.clone(),
        )
        .await?;
        let ctx = Arc::new(Ctx {
            runner: parts.runner,
            store: parts.store,
            instance: parts.instance,
            holder: parts.holder,
            interval: parts.interval,
            lease_ttl: parts.lease_ttl,
            standby_retry: parts.standby_retry.max(Duration::from_millis(1)),
            shutdown_timeout: parts.shutdown_timeout,
            pause_poll: parts.pause_poll.max(Duration::from_millis(1)),
            clock: parts.clock,
            live,
            daily_call_budget: parts.daily_call_budget,
            bulk_budget_bytes: parts.bulk_budget_bytes,
            batch_window: parts.batch_window,
        });
        Ok(Daemon {
            ctx,
            server,
            queue,
            status,
            metrics: parts.metrics,
        })
    }

    /// Returns the bound HTTP port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Returns the status source the HTTP server reads (for tests and embedding).
    pub fn status_source(&self) -> Arc<StoreStatus> {
        Arc::clone(&self.status)
    }

    /// Returns the on-demand queue the webhooks feed.
    pub fn queue(&self) -> Arc<OnDemandQueue> {
        Arc::clone(&self.queue)
    }

    /// Runs until `shutdown` fires, then stops intake, cancels the running cycle, waits at most
    /// the shutdown timeout for the tasks, releases the lease and returns.
    ///
    /// Dropping the returned future before it completes aborts every task WITHOUT releasing the
    /// lease (as a killed process would); another replica takes over when the lease expires.
    ///
    /// # Errors
    ///
    /// Returns [`AppError::Store`] when the lease cannot be released (it then expires by
    /// itself).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let Daemon {
            ctx,
            server,
            queue,
            status: _,
            metrics,
        } = self;
        let tracker = TaskTracker::new();
        let mut aborts = AbortOnDrop(Vec::new());
        let intake = CancellationToken::new();
        let work = shutdown.child_token();
        let (hold_tx, hold_rx) = watch::channel::<Option<CancellationToken>>(None);

        let http_token = intake.clone();
        aborts.0.push(
            tracker
                .spawn(async move {
                    if let Err(error) = server.run_until_stopped(http_token).await {
                        tracing::error!(error = %error, "http server failed");
                    }
                })
                .abort_handle(),
        );
        aborts.0.push(
            tracker
                .spawn(crate::telemetry::run_metrics_upkeep(metrics, work.clone()))
                .abort_handle(),
        );
        aborts.0.push(
            tracker
                .spawn(lease_loop(Arc::clone(&ctx), hold_tx, work.clone()))
                .abort_handle(),
        );
        aborts.0.push(
            tracker
                .spawn(cycle_loop(Arc::clone(&ctx), hold_rx.clone(), work.clone()))
                .abort_handle(),
        );
        aborts.0.push(
            tracker
                .spawn(on_demand_loop(
                    Arc::clone(&ctx),
                    Arc::clone(&queue),
                    hold_rx,
                    work.clone(),
                ))
                .abort_handle(),
        );
        tracker.close();
        tracing::info!(instance = %ctx.instance, holder = %ctx.holder, "daemon started");

        shutdown.cancelled().await;
        tracing::info!("shutdown requested: stopping intake");
        intake.cancel();
        queue.close();
        work.cancel();
        if tokio::time::timeout(ctx.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_ms = u64::try_from(ctx.shutdown_timeout.as_millis()).unwrap_or(u64::MAX),
                "tasks did not stop in time, aborting them"
            );
            aborts.abort_all();
            tracker.wait().await;
        }
        aborts.0.clear();
        let released = ctx.store.release_lease(&ctx.instance, &ctx.holder).await?;
        tracing::info!(lease_released = released, "shutdown complete");
        Ok(())
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl AbortOnDrop {
    fn abort_all(&self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// Waits for `duration` or cancellation; returns false when cancelled.
async fn sleep_or_cancel(duration: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Keeps (or waits for) the lease; publishes the hold token while held.
async fn lease_loop(
    ctx: Arc<Ctx>,
    hold_tx: watch::Sender<Option<CancellationToken>>,
    shutdown: CancellationToken,
) {
    let renew_every = (ctx.lease_ttl / 3).max(Duration::from_millis(1));
    let mut held: Option<CancellationToken> = None;
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let wait = match held.clone() {
            None => match ctx
                .store
                .try_acquire_lease(&ctx.instance, &ctx.holder, ctx.lease_ttl)
                .await
            {
                Ok(true) => {
                    tracing::info!(instance = %ctx.instance, holder = %ctx.holder, "sync lease acquired");
                    let token = CancellationToken::new();
                    held = Some(token.clone());
                    last_renewed = tokio::time::Instant::now();
                    live_update(&ctx.live, |l| {
                        l.lease = LeaseState::Held;
                        l.store_ok = true;
                    });
                    hold_tx.send_replace(Some(token));
                    renew_every
                }
                Ok(false) => {
                    live_update(&ctx.live, |l| {
                        l.lease = LeaseState::Standby;
                        l.store_ok = true;
                    });
                    tracing::debug!(instance = %ctx.instance, "standby: another replica holds the lease");
                    ctx.standby_retry
                }
                Err(error) => {
                    live_update(&ctx.live, |l| l.store_ok = false);
                    tracing::warn!(error = %error, "cannot take the sync lease");
                    ctx.standby_retry
                }
            },
            Some(token) => match ctx
                .store
                .renew_lease(&ctx.instance, &ctx.holder, ctx.lease_ttl)
                .await
            {
                Ok(true) => {
                    last_renewed = tokio::time::Instant::now();
                    live_update(&ctx.live, |l| l.store_ok = true);
                    renew_every
                }
                Ok(false) => {
                    tracing::warn!(instance = %ctx.instance, "sync lease lost");
                    token.cancel();
                    held = None;
                    hold_tx.send_replace(None);
                    live_update(&ctx.live, |l| {
                        l.lease = LeaseState::Lost;
                        l.store_ok = true;
                    });
                    ctx.standby_retry
                }
                Err(error) => {
                    live_update(&ctx.live, |l| l.store_ok = false);
                    tracing::warn!(error = %error, "cannot renew the sync lease");
                    if last_renewed.elapsed() >= ctx.lease_ttl {
                        // It may have expired in the store: stop working before another
                        // replica starts.
                        tracing::warn!(instance = %ctx.instance, "sync lease lost");
                        token.cancel();
                        held = None;
                        hold_tx.send_replace(None);
                        live_update(&ctx.live, |l| l.lease = LeaseState::Lost);
                    }
                    ctx.standby_retry.min(renew_every)
                }
            },
        };
        if !sleep_or_cancel(wait, &shutdown).await {
            break;
        }
    }
}

/// Returns the hold token once this process holds the lease, or `None` on shutdown.
async fn wait_for_hold(
    hold_rx: &mut watch::Receiver<Option<CancellationToken>>,
    shutdown: &CancellationToken,
) -> Option<CancellationToken> {
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        if let Some(token) = hold_rx.borrow_and_update().clone()
            && !token.is_cancelled()
        {
            return Some(token);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            changed = hold_rx.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
        }
    }
}

/// What the cycle loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Run a cycle now.
    Run,
    /// Wait this long, then look again.
    Wait(Duration),
}

/// Returns the metrics scope of a stored pause.
fn pause_scope(kind: PauseKind) -> PauseScope {
    match kind {
        PauseKind::Operator => PauseScope::All,
        PauseKind::Quota => PauseScope::RestCalls,
    }
}

/// Checks the pause in the store (an operator's, or a persisted quota pause) and the engine's
/// pause kept in memory when the store could not persist it.
async fn pause_gate(ctx: &Ctx) -> Gate {
    let now = ctx.clock.now();
    match ctx.store.pause_state().await {
        Ok(Some(pause)) => {
            let info = PauseInfo {
                reason: pause.reason.clone(),
                until: pause.until,
            };
            let (changed, replaced) = live_update(&ctx.live, |l| {
                let changed = l.operator_pause.as_ref() != Some(&info)
                    || l.stored_pause_kind != Some(pause.kind);
                let replaced = l.stored_pause_kind.filter(|k| *k != pause.kind);
                l.operator_pause = Some(info);
                l.stored_pause_kind = Some(pause.kind);
                l.store_ok = true;
                (changed, replaced)
            });
            if let Some(kind) = replaced {
                PauseChanged {
                    scope: pause_scope(kind),
                    paused: false,
                    reason: "replaced by another pause",
                    until: None,
                }
                .emit();
            }
            if changed {
                PauseChanged {
                    scope: pause_scope(pause.kind),
                    paused: true,
                    reason: &pause.reason,
                    until: pause.until,
                }
                .emit();
            }
            let mut wait = ctx.pause_poll;
            if let Some(until) = pause.until
                && let Ok(left) = (until - now).to_std()
            {
                wait = wait.min(left.max(Duration::from_millis(1)));
            }
            return Gate::Wait(wait);
        }
        Ok(None) => {
            let was = live_update(&ctx.live, |l| {
                l.store_ok = true;
                l.operator_pause = None;
                l.stored_pause_kind.take()
            });
            if let Some(kind) = was {
                PauseChanged {
                    scope: pause_scope(kind),
                    paused: false,
                    reason: "resumed",
                    until: None,
                }
                .emit();
            }
        }
        Err(error) => {
            live_update(&ctx.live, |l| l.store_ok = false);
            tracing::warn!(error = %error, "cannot read the pause state");
            return Gate::Wait(ctx.pause_poll);
        }
    }
    let engine_until = live_update(&ctx.live, |l| l.engine_pause.as_ref().map(|p| p.until));
    match engine_until {
        Some(Some(until)) if until > now => Gate::Wait(
            (until - now)
                .to_std()
                .unwrap_or(Duration::from_millis(1))
                .max(Duration::from_millis(1)),
        ),
        Some(_) => {
            live_update(&ctx.live, |l| l.engine_pause = None);
            PauseChanged {
                scope: PauseScope::RestCalls,
                paused: false,
                reason: "pause ended",
                until: None,
            }
            .emit();
            Gate::Run
        }
        None => Gate::Run,
    }
}

/// Runs cycles while the lease is held: a cycle, then the interval from its end.
async fn cycle_loop(
    ctx: Arc<Ctx>,
    mut hold_rx: watch::Receiver<Option<CancellationToken>>,
    shutdown: CancellationToken,
) {
    let options = CycleOptions::default();
    let mut failures: u32 = 0;
    loop {
        let Some(hold) = wait_for_hold(&mut hold_rx, &shutdown).await else {
            break;
        };
        if let Gate::Wait(wait) = pause_gate(&ctx).await {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = hold.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let next_wait = run_cycle(&ctx, &options, &hold, &shutdown, &mut failures).await;
        let Some(next_wait) = next_wait else {
            break;
        };
        if !sleep_or_cancel(next_wait, &shutdown).await {
            break;
        }
    }
    tracing::debug!("cycle loop stopped");
}

/// Runs one cycle; returns how long to wait before the next, or `None` on shutdown.
async fn run_cycle(
    ctx: &Ctx,
    options: &CycleOptions,
    hold: &CancellationToken,
    shutdown: &CancellationToken,
    failures: &mut u32,
) -> Option<Duration> {
    let cycle_token = CancellationToken::new();
    let started = tokio::time::Instant::now();
    live_update(&ctx.live, |l| l.running_since = Some(ctx.clock.now()));
    tracing::info!(instance = %ctx.instance, "cycle started");
    let result = {
        let cycle = ctx.runner.run_one_cycle(options, &cycle_token);
        tokio::pin!(cycle);
        tokio::select! {
            result = &mut cycle => result,
            _ = shutdown.cancelled() => {
                tracing::info!("cancelling the running cycle for shutdown");
                cycle_token.cancel();
                cycle.await
            }
            _ = hold.cancelled() => {
                tracing::warn!("cancelling the running cycle: the lease was lost");
                cycle_token.cancel();
                cycle.await
            }
        }
    };
    let elapsed = started.elapsed();
    live_update(&ctx.live, |l| l.running_since = None);
    let outcome = match &result {
        Ok(summary) if summary.failed() > 0 => CycleOutcome::Partial,
        Ok(_) => CycleOutcome::Succeeded,
        Err(EngineError::Cancelled) => CycleOutcome::Cancelled,
        Err(EngineError::Paused { .. }) => CycleOutcome::Cancelled,
        Err(_) => CycleOutcome::Failed,
    };
    live_update(&ctx.live, |l| l.last_outcome = Some(outcome));
    let wait = match result {
        Ok(summary) => {
            *failures = 0;
            emit_cycle_metrics(ctx, &summary, outcome, elapsed).await;
            tracing::info!(
                outcome = %outcome,
                duration_ms = millis(elapsed),
                failed = summary.failed(),
                "cycle finished"
            );
            ctx.interval
        }
        Err(EngineError::Cancelled) => {
            tracing::info!(duration_ms = millis(elapsed), "cycle cancelled");
            ctx.interval
        }
        Err(EngineError::Paused { reason, until }) => {
            if !persist_quota_pause(ctx, &reason, until).await {
                PauseChanged {
                    scope: PauseScope::RestCalls,
                    paused: true,
                    reason: &reason,
                    until,
                }
                .emit();
                live_update(&ctx.live, |l| {
                    l.engine_pause = Some(PauseInfo { reason, until });
                });
            }
            // With an end the gate waits until then; without one, retry after the interval.
            if until.is_some() {
                Duration::ZERO
            } else {
                ctx.interval
            }
        }
        Err(error) => {
            *failures = failures.saturating_add(1);
            let id = uuid::Uuid::new_v4().to_string();
            CycleCompleted {
                cycle_id: &id,
                outcome: CycleOutcome::Failed,
                duration: elapsed,
                api_calls: 0,
                ended_at: ctx.clock.now(),
            }
            .emit();
            let wait = failure_backoff(ctx.interval, *failures);
            tracing::warn!(
                error = %error,
                retryable = error.is_retryable(),
                consecutive_failures = *failures,
                next_in_ms = millis(wait),
                "cycle failed"
            );
            wait
        }
    };
    if shutdown.is_cancelled() {
        return None;
    }
    Some(wait)
}

/// Stores the engine's quota pause, so that `status` shows it, `resume` ends it and a restarted
/// daemon honours it until the Marketo day turns. Returns false when it must be kept in memory
/// instead (no end, or the store cannot keep it); true when stored or when an operator's pause
/// in force outranks it (the gate then waits for that one).
async fn persist_quota_pause(ctx: &Ctx, reason: &str, until: Option<DateTime<Utc>>) -> bool {
    let Some(until) = until else {
        return false;
    };
    match ctx.store.pause_for_quota(reason, until).await {
        Ok(stored) => {
            tracing::info!(
                until = %until,
                stored = stored.is_some(),
                "quota pause recorded in the store"
            );
            true
        }
        Err(error) => {
            tracing::warn!(error = %error, "cannot store the quota pause: keeping it in memory");
            false
        }
    }
}

/// Emits the metrics of a finished cycle: its outcome and duration, records by object,
/// direction and outcome, Marketo calls, today's quota and bulk bytes from the store,
/// and the lag of every object the cycle synced (zero: it just succeeded).
async fn emit_cycle_metrics(
    ctx: &Ctx,
    summary: &crate::engine::CycleSummary,
    outcome: CycleOutcome,
    elapsed: Duration,
) {
    use crate::telemetry::events::{
        BulkBytesUsed, MarketoCallsUsed, MarketoQuota, RecordOutcome, RecordsSynced, SyncLag,
    };
    let id = summary.id.map(|u| u.to_string()).unwrap_or_default();
    CycleCompleted {
        cycle_id: &id,
        outcome,
        duration: elapsed,
        api_calls: summary.marketo_calls,
        ended_at: ctx.clock.now(),
    }
    .emit();
    for (object, directions) in &summary.objects {
        for (direction, counts) in directions {
            for (outcome, count) in [
                (RecordOutcome::Read, counts.read),
                (RecordOutcome::Created, counts.created),
                (RecordOutcome::Updated, counts.updated),
                (RecordOutcome::Deleted, counts.deleted),
                (RecordOutcome::Skipped, counts.skipped),
                (RecordOutcome::Failed, counts.failed),
            ] {
                if count > 0 {
                    RecordsSynced {
                        object,
                        direction: *direction,
                        outcome,
                        count,
                    }
                    .emit();
                }
            }
        }
        if outcome == CycleOutcome::Succeeded {
            SyncLag {
                object,
                lag: Duration::ZERO,
            }
            .emit();
        }
    }
    MarketoCallsUsed {
        count: summary.marketo_calls,
    }
    .emit();
    let day = crate::store::marketo_day(ctx.clock.now());
    if let Ok(usage) = ctx.store.api_usage(day).await {
        MarketoQuota {
            used_today: usage.calls,
            daily_budget: ctx.daily_call_budget,
        }
        .emit();
        BulkBytesUsed {
            bytes: summary.bulk_bytes,
            used_today: usage.bulk_bytes,
            budget: ctx.bulk_budget_bytes,
        }
        .emit();
    }
}

/// Returns the wait after `failures` consecutive failed cycles: the interval, doubled for each
/// failure after the first, at most [`MAX_FAILURE_BACKOFF`] (or the interval when longer).
pub fn failure_backoff(interval: Duration, failures: u32) -> Duration {
    let cap = MAX_FAILURE_BACKOFF.max(interval);
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    interval.saturating_mul(factor).min(cap)
}

/// The daemon's `POST /sync/crm/{object}/{id}`: syncs through the runner while this process
/// holds the lease and nothing is paused; otherwise the record is deferred to the next poll.
struct DaemonCrmSync {
    runner: Arc<dyn Runner>,
    store: Arc<dyn StateStore>,
    live: SharedLive,
}

#[async_trait::async_trait]
impl crate::http::crm_sync::CrmRecordSync for DaemonCrmSync {
    async fn sync_crm_record(
        &self,
        object: &str,
        id: &str,
    ) -> Result<crate::engine::CrmRecordOutcome, EngineError> {
        let held = live_update(&self.live, |l| l.lease == LeaseState::Held);
        if !held || self.store.pause_state().await?.is_some() {
            return Ok(crate::engine::CrmRecordOutcome::Deferred);
        }
        let cancel = CancellationToken::new();
        self.runner.sync_crm_record_now(object, id, &cancel).await
    }
}

/// The default [`DaemonParts::batch_window`].
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(500);

/// The most webhook leads synced together: one Get Leads call reads 300 ids.
pub const ON_DEMAND_BATCH: usize = 300;

/// Syncs webhook leads in batches of up to [`ON_DEMAND_BATCH`] while the lease is held and
/// nothing is paused: the leads that queued while a batch ran form the next one.
async fn on_demand_loop(
    ctx: Arc<Ctx>,
    queue: Arc<OnDemandQueue>,
    mut hold_rx: watch::Receiver<Option<CancellationToken>>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(hold) = wait_for_hold(&mut hold_rx, &shutdown).await else {
            break;
        };
        let batch = tokio::select! {
            batch = queue.next_batch(ON_DEMAND_BATCH, ctx.batch_window, &shutdown) => batch,
            _ = hold.cancelled() => continue,
        };
        if batch.is_empty() {
            break;
        }
        // An operator's pause holds on-demand syncs too (the leads wait, they are not dropped).
        loop {
            match ctx.store.pause_state().await {
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => {
                    if !sleep_or_cancel(ctx.pause_poll, &shutdown).await {
                        return;
                    }
                }
            }
        }
        let ids: Vec<i64> = batch.iter().map(|l| l.lead_id).collect();
        let cancel = shutdown.child_token();
        match ctx.runner.sync_leads_now(&ids, &cancel).await {
            Ok(outcomes) => log_on_demand(&outcomes),
            Err(error) => {
                tracing::warn!(leads = ids.len(), error = %error, "on-demand sync failed; the next poll carries the leads");
            }
        }
    }
    tracing::debug!("on-demand worker stopped");
}

/// Logs one line per lead of an on-demand batch.
fn log_on_demand(outcomes: &[(i64, crate::engine::OnDemandOutcome)]) {
    for (lead_id, outcome) in outcomes {
        if *outcome == crate::engine::OnDemandOutcome::Deferred {
            tracing::info!(
                lead_id,
                "on-demand budget spent; the next poll carries the lead"
            );
        } else {
            tracing::info!(lead_id, outcome = ?outcome, "on-demand sync done");
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT (Ctrl-C).
///
/// # Errors
///
/// Returns [`AppError::Output`] when the signal handlers cannot be installed.
pub fn install_signal_handlers(token: CancellationToken) -> Result<(), AppError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
            }
            token.cancel();
        });
    }
    #[cfg(not(unix))]
    {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!(signal = "ctrl-c", "signal received");
            }
            token.cancel();
        });
    }
    Ok(())
}

/// Returns this process's identity in the lease: `hostname-pid-uuid`.
pub fn holder_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}-{}", std::process::id(), uuid::Uuid::new_v4())
}

/// Returns the Marketo instance id of the settings: the munchkin id, else the REST host, else
/// `default`.
pub fn instance_id(settings: &crate::config::Settings) -> String {
    if let Some(id) = &settings.marketo.munchkin_id
        && !id.trim().is_empty()
    {
        return id.trim().to_owned();
    }
    if let Some(base) = &settings.marketo.base_url
        && let Ok(url) = url::Url::parse(base)
        && let Some(host) = url.host_str()
    {
        return match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
    }
    "default".to_owned()
}

/// Returns the HTTP settings of the daemon. Without a webhook secret the webhook endpoint
/// cannot be used: a random secret nobody knows is set, so every webhook gets 401.
pub fn http_config(settings: &crate::config::Settings) -> HttpConfig {
    let secret = match &settings.http.webhook_secret {
        Some(secret) => secret.clone(),
        None => {
            tracing::warn!("no webhook secret configured: the webhook endpoint refuses every call");
            SecretString::from(format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ))
        }
    };
    HttpConfig {
        listen: settings.http.listen,
        webhook_secret: secret,
        body_limit: crate::http::DEFAULT_BODY_LIMIT,
        auth_token: settings.http.auth_token.clone(),
    }
}

/// Builds the engine for `marketo-sync run` and `demo` from loaded settings, and returns it with
/// the store it opened, so the daemon shares the engine's pool.
///
/// # Errors
///
/// Returns [`AppError::Engine`] when the Marketo client, the CRM adapter or the store cannot be
/// built from the settings.
pub async fn build_engine(
    loaded: &Loaded,
) -> Result<(Arc<dyn Runner>, Arc<dyn StateStore>), AppError> {
    let context = crate::engine::Context::from_settings(loaded).await?;
    let store = context.store.clone();
    let engine: Arc<dyn Runner> = Arc::new(crate::engine::Engine::new(context));
    Ok((engine, store))
}

/// Runs the daemon from loaded settings with `runner` until `shutdown` fires (see [`Daemon`]).
///
/// # Errors
///
/// Returns [`AppError::Store`] when the store cannot be opened, [`AppError::Http`] when the
/// listener cannot be bound.
pub async fn run_daemon(
    loaded: Loaded,
    runner: Arc<dyn Runner>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    use secrecy::ExposeSecret;
    let store = crate::store::open(loaded.settings.store.url.expose_secret()).await?;
    run_daemon_on(loaded, store, runner, shutdown).await
}

/// Runs the daemon like [`run_daemon`] on a store that is already open (the one the engine
/// was built with, so both share one pool).
///
/// # Errors
///
/// Returns [`AppError::Http`] when the listener cannot be bound.
pub async fn run_daemon_on(
    loaded: Loaded,
    store: Arc<dyn StateStore>,
    runner: Arc<dyn Runner>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let settings = &loaded.settings;
    let mut parts = DaemonParts::new(
        runner,
        store,
        http_config(settings),
        instance_id(settings),
        holder_id(),
    );
    parts.interval = settings.sync.interval();
    parts.daily_call_budget = u64::from(settings.marketo.daily_call_budget);
    parts.bulk_budget_bytes = u64::from(settings.marketo.bulk_mb_budget) * 1024 * 1024;
    parts.batch_window = Duration::from_millis(settings.http.webhook_batch_window_ms);
    let daemon = Daemon::build(parts).await?;
    tracing::info!(port = daemon.port(), "http listener bound");
    daemon.run_until_stopped(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_interval_and_is_capped() {
        let five = Duration::from_secs(300);
        assert_eq!(failure_backoff(five, 1), five);
        assert_eq!(failure_backoff(five, 2), five * 2);
        assert_eq!(failure_backoff(five, 3), five * 4);
        assert_eq!(failure_backoff(five, 10), MAX_FAILURE_BACKOFF);
        let long = Duration::from_secs(7200);
        assert_eq!(failure_backoff(long, 5), long);
    }

    #[test]
    fn the_holder_id_is_unique_per_call() {
        let a = holder_id();
        let b = holder_id();
        assert_ne!(a, b);
        assert!(a.contains(&std::process::id().to_string()));
    }
}
