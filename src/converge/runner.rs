//! The engine side of a schedule, shared by every CRM: the Marketo simulator, the state store
//! and the engine (in this process, or a child process per cycle), with the kills and clock
//! moves of the module docs. What a running cycle's watch needs from the CRM (a fingerprint of
//! its contacts, its connections to drop) comes through [`CrmProbe`].

use std::collections::HashMap;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use super::{ConvergeError, ConvergeOptions, EngineMode};
use crate::app::ops::LEASE_TAKEN;
use crate::crm::{Crm, registry};
use crate::engine::{
    Context, CycleOptions, CycleSummary, Engine, EngineError, Runner as _, Tunables,
};
use crate::marketo::limiter::next_day_turn;
use crate::sim::SimHandle;
use crate::store::{self, Clock, CommitHook, ManualClock, OpenOptions, StateStore, StoreError};

/// What a running cycle's watch needs from the CRM side.
#[async_trait::async_trait(?Send)]
pub(super) trait CrmProbe {
    /// Returns a fingerprint of the CRM's contacts that changes with any write.
    async fn mark(&self) -> Option<Vec<Option<String>>>;

    /// Returns the id of the harness's own connection, spared by [`CrmProbe::drop_connections`].
    async fn spare(&self) -> String {
        "0".to_owned()
    }

    /// Describes a CRM contact the checks found no longer live (for a violation's message).
    async fn describe_contact(&self, _id: &str) -> String {
        String::new()
    }

    /// Terminates the adapter's connections to the CRM (all but `spare`); returns how many.
    async fn drop_connections(&self, _spare: &str) -> usize {
        0
    }
}

/// Sim time between two cycles.
pub(super) const TICK: Duration = Duration::from_secs(30);
/// The longest a cycle may run in real time, by default, before the harness stops it and fails
/// the seed ([`ConvergeError::Stuck`]). A cycle takes well under a second; the limit turns an
/// engine waiting on something that never comes into an error naming the cycle, with the end of
/// its log, rather than a test run that never ends.
pub const CYCLE_DEADLINE: Duration = Duration::from_secs(300);
/// How many of a stuck engine process's last log lines the error quotes.
const STUCK_LOG_LINES: usize = 40;
/// How often a running cycle's kill or fault point is checked.
pub(super) const POLL: Duration = Duration::from_millis(1);

/// What to do to a cycle while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    Nothing,
    /// In process: cancel the cycle once the simulator logged this many more requests.
    CancelAfter(u64),
    /// Child: SIGKILL it once the simulator logged this many more requests.
    KillAfterRequests(u64),
    /// Child: SIGKILL it once the CRM's contacts show a write.
    KillAfterCrmWrite,
    /// PostgreSQL: terminate the CRM connections from this many more simulator requests on
    /// until the cycle ends.
    DropCrmAfter(u64),
}

/// How a cycle ended.
#[derive(Debug)]
pub(super) enum Ran {
    Done {
        written: u64,
        failed: u64,
    },
    Paused {
        until: Option<DateTime<Utc>>,
        message: String,
    },
    Cancelled,
    Killed,
    Failed(String),
}

impl Ran {
    pub(super) fn is_ok(&self) -> bool {
        matches!(self, Ran::Done { .. })
    }
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ran::Done { written, failed } => {
                write!(f, "finished ({written} written, {failed} failed)")
            }
            Ran::Paused { message, .. } => write!(f, "paused: {message}"),
            Ran::Cancelled => f.write_str("cancelled"),
            Ran::Killed => f.write_str("killed"),
            Ran::Failed(message) => write!(f, "failed: {message}"),
        }
    }
}

/// A cycle's end and whether its watch acted (cancelled, killed, or terminated a connection).
pub(super) struct Cycle {
    pub(super) ran: Ran,
    pub(super) fired: bool,
}

/// The engine of in-process mode.
pub(super) struct InProcess {
    pub(super) loaded: crate::config::Loaded,
    pub(super) crm: Arc<dyn Crm>,
    pub(super) clock: Arc<ManualClock>,
    pub(super) engine: Engine,
    pub(super) engine_calls_at: u64,
    pub(super) abort_commits: Arc<AtomicU32>,
    pub(super) killed: Arc<AtomicBool>,
    /// Store commits attempted (the commit hook runs once in each non-empty commit).
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the tests"))]
    pub(super) commits: Arc<AtomicU32>,
}

/// The engine of process mode: how to start a cycle.
pub(super) struct ChildEngine {
    pub(super) binary: PathBuf,
    pub(super) config_dir: PathBuf,
    pub(super) env: HashMap<String, String>,
    pub(super) out: PathBuf,
    pub(super) err: PathBuf,
}

/// How cycles are run.
pub(super) enum Driver {
    InProcess(Box<InProcess>),
    Process(ChildEngine),
}

/// The Marketo simulator, the state store and the engine of one schedule.
pub(super) struct Runner {
    pub(super) seed: u64,
    pub(super) sim: SimHandle,
    pub(super) store: Arc<dyn StateStore>,
    pub(super) driver: Driver,
    /// [`ConvergeOptions::cycle_deadline`].
    deadline: Duration,
    /// [`ConvergeOptions::stuck_log`].
    stuck_log: Option<PathBuf>,
    /// Engine processes stopped stuck at start-up and restarted, one description each
    /// ([`ConvergenceReport::stuck_restarts`](super::ConvergenceReport::stuck_restarts)).
    pub(super) stuck_restarts: Vec<String>,
}

impl Runner {
    /// Opens the store at `store_url` and sets up the engine of `options.engine` on the config
    /// directory `config_dir` (loaded as `loaded`, with `env` for a child process).
    pub(super) async fn start(
        seed: u64,
        options: &ConvergeOptions,
        sim: SimHandle,
        loaded: crate::config::Loaded,
        store_url: &str,
        (config_dir, env): (PathBuf, HashMap<String, String>),
        dir: &Path,
    ) -> Result<Runner, ConvergeError> {
        let setup = |what: String| ConvergeError::Setup { seed, what };
        let (store, driver) = match &options.engine {
            EngineMode::InProcess => {
                let clock = Arc::new(ManualClock::new(sim.now().max(Utc::now())));
                let abort_commits = Arc::new(AtomicU32::new(0));
                let killed = Arc::new(AtomicBool::new(false));
                let commits = Arc::new(AtomicU32::new(0));
                let store = store::open_with(
                    store_url,
                    OpenOptions {
                        clock: clock.clone(),
                        commit_hook: Some(abort_hook(
                            abort_commits.clone(),
                            killed.clone(),
                            commits.clone(),
                        )),
                        ..OpenOptions::default()
                    },
                )
                .await
                .map_err(|e| setup(format!("store: {e}")))?;
                let crm = crm_adapter(&loaded).await.map_err(setup)?;
                let engine = in_process_engine(&loaded, &crm, &store, &clock).map_err(setup)?;
                let driver = Driver::InProcess(Box::new(InProcess {
                    loaded,
                    crm,
                    clock,
                    engine,
                    engine_calls_at: 0,
                    abort_commits,
                    killed,
                    commits,
                }));
                (store, driver)
            }
            EngineMode::Process { binary } => {
                // Only read by the checks; the child opens the same file.
                let store = store::open(store_url)
                    .await
                    .map_err(|e| setup(format!("store: {e}")))?;
                let driver = Driver::Process(ChildEngine {
                    binary: binary.clone(),
                    config_dir,
                    env,
                    out: dir.join("cycle.out"),
                    err: dir.join("cycle.err"),
                });
                (store, driver)
            }
        };
        Ok(Runner {
            seed,
            sim,
            store,
            driver,
            deadline: options.cycle_deadline,
            stuck_log: options.stuck_log.clone(),
            stuck_restarts: Vec::new(),
        })
    }

    /// Runs one cycle (after a tick), doing what `watch` says while it runs, with `probe` for
    /// the CRM side of the watch.
    pub(super) async fn cycle(
        &mut self,
        watch: Watch,
        probe: &dyn CrmProbe,
    ) -> Result<Cycle, ConvergeError> {
        if let Driver::InProcess(p) = &self.driver
            && self.sim.counters().calls_logged - p.engine_calls_at > 60
        {
            // Keeps the client's 20-second window from making the run wait in real time.
            self.restart().await?;
        }
        self.tick();
        let spare = match watch {
            Watch::DropCrmAfter(_) => probe.spare().await,
            _ => "0".to_owned(),
        };
        let mark = match watch {
            Watch::KillAfterCrmWrite => probe.mark().await,
            _ => None,
        };
        let start = self.sim.counters().calls_logged;
        match &self.driver {
            Driver::InProcess(p) => self.cycle_in_process(p, watch, start, &spare, probe).await,
            Driver::Process(c) => {
                let first = self
                    .cycle_in_child(c, watch, start, &spare, mark.clone(), probe)
                    .await;
                match first {
                    Err(ConvergeError::Stuck {
                        from_request,
                        log_tail,
                        state,
                        ..
                    }) if self.stuck_restarts.is_empty()
                        && self.sim.counters().calls_logged == from_request
                        && !log_tail.contains(LEASE_TAKEN) =>
                    {
                        // Stuck at start-up, before it took the lease or asked Marketo
                        // anything: no sync work was under way, so the cycle is run again,
                        // once per schedule, and the stop is reported (a second one fails the
                        // seed).
                        let log = if log_tail.is_empty() {
                            "(empty)"
                        } else {
                            log_tail.as_str()
                        };
                        let stop = format!(
                            "seed {}: the engine process of the cycle from simulator request \
                             {from_request} on was stuck at start-up and restarted; {state}\n\
                             the end of its log: {log}",
                            self.seed
                        );
                        tracing::warn!(seed = self.seed, "{stop}");
                        if let Some(path) = &self.stuck_log {
                            record_stuck_restart(path, &stop);
                        }
                        self.stuck_restarts.push(stop);
                        self.expire_dead_lease().await?;
                        let start = self.sim.counters().calls_logged;
                        self.cycle_in_child(c, watch, start, &spare, mark, probe)
                            .await
                    }
                    other => other,
                }
            }
        }
    }

    /// Returns the instant of a CRM user's edit in process (the engine's manual clock moved a
    /// second forward: the edit comes after the last cycle started), `None` in process mode
    /// (the CRM's own clock stamps it).
    pub(super) fn user_edit_instant(&self) -> Option<DateTime<Utc>> {
        match &self.driver {
            Driver::Process(_) => None,
            Driver::InProcess(p) => {
                let at = p.clock.now() + chrono::Duration::seconds(1);
                p.clock.set(at);
                Some(at)
            }
        }
    }

    pub(super) fn setup_error(&self, what: String) -> ConvergeError {
        ConvergeError::Setup {
            seed: self.seed,
            what,
        }
    }

    /// Replaces the in-process engine and CRM adapter (a process restart on the same store and
    /// CRM: the adapter's memory of its own writes is lost, as it would be).
    pub(super) async fn restart(&mut self) -> Result<(), ConvergeError> {
        let calls = self.sim.counters().calls_logged;
        let seed = self.seed;
        if let Driver::InProcess(p) = &mut self.driver {
            p.crm = crm_adapter(&p.loaded)
                .await
                .map_err(|what| ConvergeError::Setup { seed, what })?;
            p.engine = in_process_engine(&p.loaded, &p.crm, &self.store, &p.clock)
                .map_err(|what| ConvergeError::Setup { seed, what })?;
            p.engine_calls_at = calls;
        }
        Ok(())
    }

    /// Moves the simulator's clock forward by a cycle interval; in process the engine's clock
    /// follows (never behind the simulator's).
    pub(super) fn tick(&self) {
        self.sim.advance_clock(TICK);
        if let Driver::InProcess(p) = &self.driver {
            let sim = self.sim.now();
            if sim > p.clock.now() {
                p.clock.set(sim);
            }
        }
    }

    /// Moves the clocks past the Marketo day turn after `until` (the engine's pause end, when
    /// known) and the simulator's.
    ///
    /// A `sync --once` child stopped by the quota stores a quota pause until the real Marketo
    /// day turn; the harness ends it here, standing in for that wait as it does for the clocks.
    pub(super) async fn turn_day(&self, until: Option<DateTime<Utc>>) -> Result<(), ConvergeError> {
        if matches!(self.driver, Driver::Process(_)) {
            let stored = self
                .store
                .pause_state()
                .await
                .map_err(|e| self.setup_error(format!("reading the pause: {e}")))?;
            if stored.is_some_and(|p| p.kind == store::PauseKind::Quota) {
                self.store
                    .resume()
                    .await
                    .map_err(|e| self.setup_error(format!("ending the quota pause: {e}")))?;
            }
        }
        let now = self.sim.now();
        let turn = next_day_turn(now);
        let by = (turn - now).to_std().unwrap_or_default() + Duration::from_secs(5);
        self.sim.advance_clock(by);
        if let Driver::InProcess(p) = &self.driver {
            let target = until.unwrap_or(turn).max(self.sim.now()) + chrono::Duration::seconds(5);
            if target > p.clock.now() {
                p.clock.set(target);
            }
        }
        Ok(())
    }

    /// Makes every open error-ledger entry due now (as `errors retry` does), in process mode:
    /// the child's clock is the real one, where a retry comes due minutes later; the harness
    /// stands in for that wait, as it does for leases and quota pauses. In process the manual
    /// clock brings retries due.
    pub(super) async fn retry_now(&self) -> Result<(), ConvergeError> {
        if !matches!(self.driver, Driver::Process(_)) {
            return Ok(());
        }
        let store_error = |source| ConvergeError::Store {
            seed: self.seed,
            source,
        };
        let open = self
            .store
            .list_errors(&store::ErrorFilter {
                status: Some(store::ErrorStatus::Open),
                limit: 10_000,
                ..store::ErrorFilter::default()
            })
            .await
            .map_err(store_error)?;
        let now = Utc::now();
        for e in open {
            if e.next_retry_at.is_some_and(|at| at > now) {
                self.store
                    .set_error_status(e.id, store::ErrorStatus::Open, Some(now))
                    .await
                    .map_err(store_error)?;
            }
        }
        Ok(())
    }

    async fn cycle_in_process(
        &self,
        p: &InProcess,
        watch: Watch,
        start: u64,
        spare: &str,
        probe: &dyn CrmProbe,
    ) -> Result<Cycle, ConvergeError> {
        let cancel = CancellationToken::new();
        let options = CycleOptions::default();
        let mut fired = false;
        let deadline = tokio::time::Instant::now() + self.deadline;
        let result = {
            let cycle = p.engine.run_one_cycle(&options, &cancel);
            tokio::pin!(cycle);
            loop {
                // The deadline first: a cycle past it is not polled again.
                tokio::select! {
                    biased;
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(ConvergeError::Stuck {
                            seed: self.seed,
                            from_request: start,
                            deadline: self.deadline,
                            log_tail: String::new(),
                            state: self.requests_since(start),
                        });
                    }
                    r = &mut cycle => break r,
                    () = tokio::time::sleep(POLL) => {
                        let calls = self.sim.counters().calls_logged;
                        match watch {
                            Watch::CancelAfter(n) if calls >= start + n => {
                                cancel.cancel();
                                fired = true;
                            }
                            Watch::DropCrmAfter(n) if calls >= start + n => {
                                fired |= probe.drop_connections(spare).await > 0;
                            }
                            _ => {}
                        }
                    }
                }
            }
        };
        let ran = match result {
            Ok(s) => Ran::Done {
                written: written(&s),
                failed: s.failed(),
            },
            Err(EngineError::Paused { until, reason }) => Ran::Paused {
                until,
                message: reason,
            },
            Err(EngineError::Cancelled) => Ran::Cancelled,
            Err(e) => Ran::Failed(e.to_string()),
        };
        Ok(Cycle { ran, fired })
    }

    /// Describes the simulator requests the cycle that started at request `start` made: how
    /// many, and the last few.
    fn requests_since(&self, start: u64) -> String {
        let log = self.sim.request_log();
        let made = usize::try_from(start).map_or(0, |start| log.len().saturating_sub(start));
        if made == 0 {
            return "it made no simulator request".to_owned();
        }
        let last: Vec<String> = log[log.len() - made.min(5)..]
            .iter()
            .map(|e| match &e.code {
                Some(code) => format!("{} {} ({code})", e.method, e.path),
                None => format!("{} {} (HTTP {})", e.method, e.path, e.http_status),
            })
            .collect();
        format!(
            "it made {made} simulator requests, the last: {}",
            last.join(", ")
        )
    }

    /// Ends the sync lease a SIGKILLed `sync --once` left behind. A real restart waits for the
    /// lease's time to live (60 s of real time); the harness stands in for that wait, as it moves
    /// the simulator's clock for the interval between cycles.
    async fn expire_dead_lease(&self) -> Result<(), ConvergeError> {
        let url = url::Url::parse(&self.sim.base_url())
            .map_err(|e| self.setup_error(format!("the simulator's url: {e}")))?;
        let instance = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Ok(()),
        };
        let lease = self
            .store
            .lease(&instance)
            .await
            .map_err(|e| self.setup_error(format!("reading the lease: {e}")))?;
        if let Some(lease) = lease {
            self.store
                .release_lease(&instance, &lease.holder)
                .await
                .map_err(|e| self.setup_error(format!("ending the dead lease: {e}")))?;
        }
        Ok(())
    }

    async fn cycle_in_child(
        &self,
        c: &ChildEngine,
        watch: Watch,
        start: u64,
        spare: &str,
        mark: Option<Vec<Option<String>>>,
        probe: &dyn CrmProbe,
    ) -> Result<Cycle, ConvergeError> {
        let file = |path: &Path| {
            std::fs::File::create(path)
                .map_err(|e| self.setup_error(format!("{}: {e}", path.display())))
        };
        // The child logs at `RUST_LOG` (default debug), so that a stuck cycle's log tail shows
        // its last steps. `MKSYNC_CONVERGE_LOGS=DIR` keeps every child's log appended to
        // `DIR/seed-N.log`, one header per cycle: to see why a seed failed.
        // The child's stderr, and where this cycle's part of it starts (the error message of a
        // failed or paused cycle is read from there, whether it went to a kept log or not).
        let (stderr, err_path, err_from) = match std::env::var_os("MKSYNC_CONVERGE_LOGS") {
            Some(dir) => {
                let path = Path::new(&dir).join(format!("seed-{}.log", self.seed));
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| self.setup_error(format!("{}: {e}", path.display())))?;
                use std::io::Write as _;
                writeln!(log, "=== cycle (schedule step {start})")
                    .map_err(|e| self.setup_error(format!("{}: {e}", path.display())))?;
                let from = log
                    .metadata()
                    .map_err(|e| self.setup_error(format!("{}: {e}", path.display())))?
                    .len();
                (log, path, from)
            }
            None => (file(&c.err)?, c.err.clone(), 0),
        };
        let log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "marketo_sync=debug".into());
        let mut command = tokio::process::Command::new(&c.binary);
        command
            .arg("sync")
            .arg("--once")
            .arg("--json")
            .arg("--config")
            .arg(&c.config_dir)
            .env_clear()
            .envs(&c.env);
        command.env("RUST_LOG", log_filter);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(file(&c.out)?)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                self.setup_error(format!(
                    "cannot start the engine process {}: {e}",
                    c.binary.display()
                ))
            })?;
        let mut fired = false;
        let started = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => return Err(self.setup_error(format!("waiting for the engine: {e}"))),
            }
            if started.elapsed() >= self.deadline {
                // Where it waits is read before the kill ends it (the process is stopped
                // meanwhile, so that its stacks and its requests tell of one moment).
                let threads = match child.id() {
                    Some(pid) => stuck_process_threads(pid).await,
                    None => "the process had ended".to_owned(),
                };
                let requests = self.requests_since(start);
                let _ = child.kill().await;
                let log = cycle_log(&err_path, err_from);
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(STUCK_LOG_LINES)..].join("\n");
                return Err(ConvergeError::Stuck {
                    seed: self.seed,
                    from_request: start,
                    deadline: self.deadline,
                    log_tail: tail,
                    state: format!("{requests}; its threads:\n{threads}"),
                });
            }
            tokio::time::sleep(POLL).await;
            // A kill acts once; dropping connections goes on until the cycle ends.
            if fired && !matches!(watch, Watch::DropCrmAfter(_)) {
                continue;
            }
            let calls = self.sim.counters().calls_logged;
            match watch {
                Watch::KillAfterRequests(n) if calls >= start + n => {
                    let _ = child.start_kill();
                    fired = true;
                }
                Watch::KillAfterCrmWrite if probe.mark().await != mark => {
                    let _ = child.start_kill();
                    fired = true;
                }
                Watch::DropCrmAfter(n) if calls >= start + n => {
                    fired |= probe.drop_connections(spare).await > 0;
                }
                _ => {}
            }
        };
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        if status.signal() == Some(9) {
            self.expire_dead_lease().await?;
        }
        let ran = match (status.code(), status.signal()) {
            (_, Some(9)) if fired => Ran::Killed,
            // 0: done; 4: done with records refused one by one (in the error ledger).
            (Some(0 | 4), _) => match serde_json::from_str::<Json>(&read(&c.out)) {
                Ok(summary) => {
                    let (written, failed) = counts_in(&summary);
                    Ran::Done { written, failed }
                }
                Err(e) => Ran::Failed(format!("the summary does not parse: {e}")),
            },
            (code, signal) => {
                let message = cycle_log(&err_path, err_from)
                    .lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("error: "))
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        format!("exit code {code:?}, signal {signal:?}, no error message")
                    });
                if message.starts_with("paused until") {
                    Ran::Paused {
                        until: None,
                        message,
                    }
                } else {
                    Ran::Failed(message)
                }
            }
        };
        Ok(Cycle { ran, fired })
    }

    /// Aborts the n-th store commit from now (in process).
    pub(super) fn arm_commit_abort(&self, n: u32) {
        if let Driver::InProcess(p) = &self.driver {
            p.abort_commits.store(n, Ordering::SeqCst);
            p.killed.store(false, Ordering::SeqCst);
        }
    }

    /// Stops aborting commits; returns whether one was aborted since [`Rig::arm_commit_abort`].
    pub(super) fn disarm_commit_abort(&self) -> bool {
        match &self.driver {
            Driver::InProcess(p) => {
                p.abort_commits.store(0, Ordering::SeqCst);
                p.killed.swap(false, Ordering::SeqCst)
            }
            Driver::Process(_) => false,
        }
    }
}

/// Returns this cycle's part of a child's stderr log: from byte `from` on (a kept log holds
/// every earlier cycle's too), empty when it cannot be read.
fn cycle_log(path: &Path, from: u64) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let from = usize::try_from(from).unwrap_or(0).min(bytes.len());
            String::from_utf8_lossy(&bytes[from..]).into_owned()
        }
        Err(e) => format!("(the log {} cannot be read: {e})", path.display()),
    }
}

/// Appends a stuck engine process's description to the file at `path`
/// ([`ConvergeOptions::stuck_log`]).
fn record_stuck_restart(path: &Path, stop: &str) {
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| {
            use std::io::Write as _;
            writeln!(file, "{stop}\n")
        });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record a stuck engine process");
    }
}

/// Describes where each thread of a stuck engine process waits: its name, the kernel function
/// it sleeps in and its system call (from `/proc`), then, when `gdb` is installed, the
/// innermost frames of each thread's stack. Stops the process (SIGSTOP) after reading `/proc`
/// (a stopped thread waits in the kernel's signal stop) and leaves it stopped.
async fn stuck_process_threads(pid: u32) -> String {
    let mut out = Vec::new();
    let tasks = format!("/proc/{pid}/task");
    match std::fs::read_dir(&tasks) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let dir = entry.path();
                let read = |name: &str| {
                    std::fs::read_to_string(dir.join(name))
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_else(|_| "?".to_owned())
                };
                let syscall = read("syscall");
                let number = syscall.split_whitespace().next().unwrap_or("?").to_owned();
                out.push(format!(
                    "  {} {}: waits in {}, system call {number}",
                    entry.file_name().to_string_lossy(),
                    read("comm"),
                    read("wchan"),
                ));
            }
        }
        Err(e) => out.push(format!("  {tasks}: {e}")),
    }
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: `kill` only sends a signal, to our own child, which is not reaped yet (so
        // its pid is not reused).
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    let gdb = tokio::process::Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt 30",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), gdb).await {
        Ok(Ok(output)) => {
            let stacks = String::from_utf8_lossy(&output.stdout);
            // Each thread's two innermost frames (where it waits), then only the frames of
            // this crate and of the libraries it waits on.
            let frames: Vec<String> = stacks
                .lines()
                .filter(|l| {
                    l.starts_with("Thread ")
                        || l.starts_with("#0 ")
                        || l.starts_with("#1 ")
                        || (l.starts_with('#') && TELLING_FRAMES.iter().any(|t| l.contains(t)))
                })
                .map(|l| format!("  {}", gdb_frame(l)))
                .collect();
            if frames.is_empty() {
                let said = String::from_utf8_lossy(&output.stderr);
                let why = said.lines().find(|l| !l.trim().is_empty());
                out.push(format!(
                    "  (no stacks: gdb printed none{})",
                    why.map(|l| format!(": {l}")).unwrap_or_default()
                ));
            }
            out.extend(frames);
        }
        Ok(Err(e)) => out.push(format!("  (no stacks: gdb: {e})")),
        Err(_) => out.push("  (no stacks: gdb did not answer within 60 s)".to_owned()),
    }
    out.join("\n")
}

/// The frames of a stuck process's stacks worth quoting beyond the innermost two.
const TELLING_FRAMES: [&str; 6] = [
    "marketo_sync",
    "sqlx",
    "sqlite3",
    "hyper",
    "reqwest",
    "flume",
];

/// Shortens one line of gdb's backtrace to the frame's function and place, without the
/// address and the argument values.
fn gdb_frame(line: &str) -> String {
    let Some(rest) = line.strip_prefix('#') else {
        return line.to_owned();
    };
    let (number, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let rest = rest.trim_start();
    let rest = match rest.split_once(" in ") {
        Some((address, f)) if address.starts_with("0x") => f,
        _ => rest,
    };
    let function = rest.split(" (").next().unwrap_or(rest);
    let place = rest
        .rsplit_once(" at ")
        .or_else(|| rest.rsplit_once(" from "))
        .map(|(_, p)| p)
        .unwrap_or("");
    format!("#{number} {function} {place}")
}

/// Returns the commit hook that aborts the N-th commit from now (N in `left`; a process killed
/// between writing both sides and recording it), setting `killed` when it does, and counts
/// every commit in `commits`. The hook runs inside the commit's transaction, after its first
/// statements, so an aborted commit is a kill right after the first store write.
fn abort_hook(
    left: Arc<AtomicU32>,
    killed: Arc<AtomicBool>,
    commits: Arc<AtomicU32>,
) -> CommitHook {
    Arc::new(move || {
        let (a, k) = (left.clone(), killed.clone());
        commits.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let left = a.load(Ordering::SeqCst);
            if left == 0 {
                return Ok(());
            }
            a.store(left - 1, Ordering::SeqCst);
            if left == 1 {
                k.store(true, Ordering::SeqCst);
                return Err(StoreError::Aborted {
                    reason: "killed by the convergence harness".into(),
                });
            }
            Ok(())
        })
    })
}

async fn crm_adapter(loaded: &crate::config::Loaded) -> Result<Arc<dyn Crm>, String> {
    registry::build(
        &loaded.settings.crm.adapter,
        loaded.settings.crm.url.as_ref(),
        &loaded.settings.crm.options,
    )
    .await
    .map_err(|e| format!("crm adapter: {e}"))
}

fn in_process_engine(
    loaded: &crate::config::Loaded,
    crm: &Arc<dyn Crm>,
    store: &Arc<dyn StateStore>,
    clock: &Arc<ManualClock>,
) -> Result<Engine, String> {
    let client = crate::engine::context::marketo_client(&loaded.settings.marketo)
        .map_err(|e| format!("marketo client: {e}"))?;
    let ctx = Context::new(
        loaded.settings.clone(),
        loaded.mappings.clone(),
        client,
        crm.clone(),
        store.clone(),
        clock.clone(),
    );
    Ok(Engine::with_tunables(ctx, Tunables::default()))
}

/// Returns the records written and failed in a summary printed by `sync --once`.
fn counts_in(summary: &Json) -> (u64, u64) {
    let (mut written, mut failed) = (0, 0);
    for directions in summary["objects"]
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
    {
        for c in directions.as_object().into_iter().flat_map(|d| d.values()) {
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            written += n("created") + n("updated") + n("deleted");
            failed += n("failed");
        }
    }
    (written, failed)
}

/// Returns the records written (created, updated, deleted) in a summary.
fn written(s: &CycleSummary) -> u64 {
    s.objects
        .values()
        .flat_map(|d| d.values())
        .map(|c| c.created + c.updated + c.deleted)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gdb_frame_keeps_its_function_and_place() {
        let cases = [
            (
                "#0  0x00007f1c2b0d2e2e in __futex_abstimed_wait_common64 (private=128, \
                 futex_word=0x55d3) at ./nptl/futex-internal.c:57",
                "#0 __futex_abstimed_wait_common64 ./nptl/futex-internal.c:57",
            ),
            (
                "#3  std::thread::Thread::join (self=...) at library/std/src/thread.rs:199",
                "#3 std::thread::Thread::join library/std/src/thread.rs:199",
            ),
            (
                "#1  0x00007f3a in poll () from /lib/x86_64-linux-gnu/libc.so.6",
                "#1 poll /lib/x86_64-linux-gnu/libc.so.6",
            ),
            (
                "Thread 2 (Thread 0x7f (LWP 12) \"tokio-runtime-w\"):",
                "Thread 2 (Thread 0x7f (LWP 12) \"tokio-runtime-w\"):",
            ),
        ];
        for (line, short) in cases {
            assert_eq!(gdb_frame(line), short);
        }
    }

    #[tokio::test]
    async fn a_stuck_process_is_described_by_where_its_threads_wait() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("600")
            .kill_on_drop(true)
            .spawn()
            .expect("sleep starts");
        let pid = child.id().expect("running");
        // Until it has become `sleep` (the name before is the parent's).
        let comm = format!("/proc/{pid}/comm");
        while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
            tokio::task::yield_now().await;
        }
        let threads = stuck_process_threads(pid).await;
        child.kill().await.expect("killed");
        assert!(
            threads.starts_with(&format!("  {pid} sleep: waits in ")),
            "{threads}"
        );
        // Read before the process is stopped for gdb, not the stop's own wait.
        assert!(!threads.contains("waits in do_signal_stop"), "{threads}");
        // Its stack, or why there is none (no gdb, or not allowed to attach).
        assert!(
            threads.contains("\n  #0 ") || threads.contains("(no stacks: "),
            "{threads}"
        );
    }
}
