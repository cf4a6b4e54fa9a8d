//! The convergence harness: seeded random schedules of edits on both sides, with faults injected
//! in the simulator and the CRM and the engine killed at random points, after which both sides
//! must agree.
//!
//! One schedule ([`run_schedule`]) starts a simulator, a demo CRM (SQLite in the temporary
//! directory, or a scratch PostgreSQL database) and a SQLite state store, writes a config
//! directory for them (`default.toml` and the `mappings/leads.toml` of
//! [`ConvergeOptions::config_dir`]; the client secret and the CRM URL go in the environment),
//! then plays `steps` random steps drawn from a ChaCha8 generator seeded with the schedule's seed:
//!
//! - Marketo user edits through [`SimHandle`]: create a lead, edit a mapped field, delete a lead,
//!   merge two leads;
//! - CRM user edits through raw SQL on the demo CRM (so the change feed sees them): insert a
//!   contact, update a mapped column, soft-delete a contact, merge two contacts
//!   (`merged_into` + soft delete), and a conversion (a CRM lead row converted into a contact
//!   whose email Marketo already holds);
//! - conflicting edits: the same mapped field edited on both sides between two cycles;
//! - faults: a simulator fault profile (throttling, 5xx, time-outs, 608, dropped connections,
//!   truncated and 404 bulk downloads), expired tokens, the simulator's daily quota spent (a real
//!   607, see below), and the CRM database failing during a cycle: on SQLite another connection
//!   holds the write lock; on PostgreSQL the harness terminates the adapter's connections
//!   (`pg_terminate_backend`) from a random number of Marketo requests into the cycle on;
//! - kills, then a restart on the same store and CRM (see the engine modes);
//! - cycles.
//!
//! Then faults are cleared and quiet cycles run until two in a row write nothing (at most 10),
//! and the invariants are checked (see `check_invariants`).
//!
//! # Engine modes
//!
//! [`EngineMode::Process`] runs every cycle as `marketo-sync sync --once --config DIR`, a child
//! process of the harness with the written config directory. A kill is a SIGKILL of that child:
//! either once the simulator has logged a seeded number of requests since the child started, or
//! once the CRM's contacts show the child's first write (the child is then somewhere between
//! writing the CRM and committing the store). The harness polls those counters; nothing waits
//! for a time. The next cycle is a new process: the restart. `sync --once` rather than `run`,
//! because the daemon's store lease outlives a killed holder by its time to live (60 s of real
//! time) and its interval and back-off are real time too; the cycle code is the same. As every
//! cycle is a fresh process, the CRM adapter never remembers its own writes, so each cycle
//! re-reads the previous one's CRM writes (as after any restart).
//!
//! [`EngineMode::InProcess`] runs the engine in this process on the same config (faster, and
//! its clock can be moved), one engine across cycles like the daemon's. Its kills are a cycle
//! whose N-th store commit is aborted (a process killed between writing both sides and
//! recording it) or whose cancellation token fires after a seeded number of simulator requests;
//! both followed by a restart: a new [`Engine`], Marketo client and CRM adapter on the same store
//! and CRM. The engine is also restarted before its client's 100-calls-per-20-s window would make
//! the run wait in real time; that restart is not counted as a kill. The number of cancel kills
//! can differ between runs of one seed: a cancelled cycle may finish before its cancel point.
//!
//! # Clocks
//!
//! The harness moves the simulator's clock 30 s forward before every cycle (the interval
//! between cycles; it also keeps the simulator's own 100-per-20-s window from throttling a run
//! that plays many cycles a second), so sim time runs ahead of real time, never behind it.
//! Marketo is read through paging tokens, which do not depend on the engine's clock. The CRM's
//! timestamps follow the engine's clock, as on a deployment whose engine host and database
//! agree on the time (the engine falls back to its own clock for the CRM watermark when a cycle
//! reads no CRM change, so an engine clock far ahead of the database's would lose CRM edits):
//!
//! - In process mode the engine's clock is the real clock (a child cannot share the harness's
//!   [`ManualClock`]), and CRM edits are stamped by the database. A per-record error's retry
//!   comes due minutes later in real time; before each quiet-period cycle the harness makes the
//!   open error-ledger entries due now (as `errors retry` does), standing in for that wait. The engine's side of a quota pause (the daemon waiting until the day turns)
//!   is not exercised: the paused child exits, the harness moves the simulator past its day
//!   turn, and the next child is the resumption.
//! - In in-process mode the engine's clock is a [`ManualClock`] that follows the simulator's
//!   (never behind it), and the CRM user's edits are stamped with it. Retries come due as sim
//!   time passes, and a quota pause ends when the harness moves both clocks past the Marketo day
//!   turn.
//!
//! The daily quota fault spends the simulator's quota for the current sim day
//! ([`SimHandle::spend_daily_quota`]): the cycle's first counted call answers 607, the engine
//! stops with [`EngineError::Paused`] until the next Marketo day turn (in process mode the
//! child's exit message says so), the harness moves the clocks past the turn, and the next cycle
//! must not be paused.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value as Json, json};

mod hubspot;
mod marketing;
mod objects;
mod runner;

pub use runner::CYCLE_DEADLINE;
use runner::{CrmProbe, Cycle, Ran, Runner, Watch};

use crate::config::{LoadedMapping, Policy, SettingsSource};
use crate::crm::sql::dialect::{Dialect, SqlPool};
use crate::model::{Side, Value};
use crate::sim::{FaultKind, FaultProfile, FaultRule, SimConfig, SimHandle, Simulator, demo_crm};
use crate::store::{self, StateStore, StoreError};

/// A failure to set up or run a schedule (not a violated invariant: those are in the report).
#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    /// A part could not be started (simulator, CRM, store, config, engine process).
    #[error("cannot set up seed {seed}: {what}")]
    Setup {
        /// The seed.
        seed: u64,
        /// What failed.
        what: String,
    },
    /// A user edit on the CRM could not be made.
    #[error("seed {seed}: the crm user edit `{operation}` failed: {source}")]
    CrmUser {
        /// The seed.
        seed: u64,
        /// The edit.
        operation: String,
        /// The cause.
        source: crate::crm::CrmError,
    },
    /// A cycle did not end within [`ConvergeOptions::cycle_deadline`] of real time (the engine,
    /// or the harness around it, is stuck); the engine was stopped.
    #[error(
        "seed {seed}: the cycle from simulator request {from_request} on did not end within {} s and was stopped{}; {state}",
        deadline.as_secs_f64(),
        if log_tail.is_empty() { String::new() } else { format!("; the end of its log:\n{log_tail}") }
    )]
    Stuck {
        /// The seed.
        seed: u64,
        /// The simulator's request count when the cycle started.
        from_request: u64,
        /// How long it was given.
        deadline: Duration,
        /// The last lines the engine process logged (empty in process).
        log_tail: String,
        /// What the engine was doing when it was stopped: the simulator requests it made since
        /// the cycle started, and an engine process's threads (what each waited in, and its
        /// stack when `gdb` is installed).
        state: String,
    },
    /// A store read needed by the checks failed.
    #[error("seed {seed}: reading the state store failed: {source}")]
    Store {
        /// The seed.
        seed: u64,
        /// The cause.
        source: StoreError,
    },
}

impl ConvergeError {
    /// Returns false: a harness that cannot run is not fixed by running it again.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Where the engine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineMode {
    /// In the harness's process, on a clock that follows the simulator's; kills are aborted
    /// commits and cancelled cycles.
    InProcess,
    /// Each cycle is `<binary> sync --once --config DIR`, a child process SIGKILLed at random
    /// points; the engine runs on the real clock.
    Process {
        /// The `marketo-sync` binary.
        binary: PathBuf,
    },
}

/// The demo CRM's database.
#[derive(Debug, Clone)]
pub enum CrmKind {
    /// A SQLite file in the schedule's temporary directory; the fault is a held write lock.
    Sqlite,
    /// A scratch database created (and dropped afterwards) on a PostgreSQL server; the fault is
    /// `pg_terminate_backend` of the adapter's connections during a cycle.
    Postgres {
        /// A URL of the server with the right to create databases (its path names the database
        /// to connect to for that).
        server_url: SecretString,
    },
    /// The HubSpot simulator through the HubSpot adapter (leads and contacts; see
    /// `src/converge/hubspot.rs`); the fault is HubSpot answering `429` or `5xx`.
    HubSpot,
}

impl CrmKind {
    fn name(&self) -> &'static str {
        match self {
            CrmKind::Sqlite => "sqlite",
            CrmKind::Postgres { .. } => "postgres",
            CrmKind::HubSpot => "hubspot",
        }
    }
}

/// What a schedule's steps touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Leads and contacts only, with the steps drawn exactly as before the objects were added
    /// (the regression seeds found before replay their schedules).
    LeadsOnly,
    /// The lead steps, plus CRM merges into a contact never synced followed by a kill at the
    /// store commit, plus edits of every synced object (companies, opportunities, roles,
    /// salespersons, the custom object `car_c`), web page visits (activities, with the New
    /// Lead activities of created leads) and CRM chat events (the custom activity
    /// `chatConversation_c`), each drawn from generators of their own.
    Full,
    /// [`Schedule::Full`] without activities, as drawn before they were added (the regression
    /// seeds found then replay their schedules: the activity step's calls move the kills).
    NoActivities,
    /// [`Schedule::Full`] plus programs, program members and static lists (see
    /// `src/converge/marketing.rs`): Marketo's user sets program statuses, adds leads to and
    /// removes them from the configured lists and creates programs; the CRM's user changes
    /// campaign member statuses, adds campaign members and adds or flips list membership rows;
    /// drawn from a generator of their own (the other steps of a seed are those of `Full`).
    Marketing,
}

impl Schedule {
    /// Returns true when the schedule syncs activities and custom activities.
    fn with_activities(self) -> bool {
        matches!(self, Schedule::Full | Schedule::Marketing)
    }
}

/// How to run schedules.
#[derive(Debug, Clone)]
pub struct ConvergeOptions {
    /// The config directory whose `mappings/leads.toml` is used.
    pub config_dir: PathBuf,
    /// Steps per schedule.
    pub steps: usize,
    /// Inject faults (simulator faults, expired tokens, spent quotas, CRM failures).
    pub faults: bool,
    /// Kill the engine and restart it.
    pub kills: bool,
    /// Where the engine runs.
    pub engine: EngineMode,
    /// The demo CRM's database.
    pub crm: CrmKind,
    /// What the steps touch.
    pub schedule: Schedule,
    /// The longest one cycle may run in real time before the harness stops it and fails the
    /// seed with [`ConvergeError::Stuck`] (default [`CYCLE_DEADLINE`], 300 s).
    pub cycle_deadline: Duration,
    /// A file each engine process stopped stuck at start-up and restarted is appended to
    /// ([`ConvergenceReport::stuck_restarts`]); by default the file `MKSYNC_CONVERGE_STUCK_LOG`
    /// names (`scripts/test` sets it and prints the file after the suite, so that a stop the
    /// harness recovered from is seen in a passing run too).
    pub stuck_log: Option<PathBuf>,
}

impl ConvergeOptions {
    /// Returns options with 40 steps, faults and kills, the engine in process and a SQLite CRM.
    pub fn new(config_dir: impl Into<PathBuf>) -> ConvergeOptions {
        ConvergeOptions {
            config_dir: config_dir.into(),
            steps: 40,
            faults: true,
            kills: true,
            engine: EngineMode::InProcess,
            crm: CrmKind::Sqlite,
            schedule: Schedule::Full,
            cycle_deadline: CYCLE_DEADLINE,
            stuck_log: std::env::var_os("MKSYNC_CONVERGE_STUCK_LOG").map(PathBuf::from),
        }
    }
}

/// What one schedule did and whether both sides agreed afterwards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConvergenceReport {
    /// The seed.
    pub seed: u64,
    /// Steps played.
    pub steps: usize,
    /// Faults injected (all kinds).
    pub faults: usize,
    /// Faults injected per kind.
    pub faults_by_kind: BTreeMap<String, usize>,
    /// Kills that landed (a cycle killed before it finished), each followed by a restart.
    pub kills: usize,
    /// Kills per kind.
    pub kills_by_kind: BTreeMap<String, usize>,
    /// Cycles run (including failed and killed ones and the quiet ones).
    pub cycles: usize,
    /// Cycles that ended in an error (faults, kills, pauses), all survived by later cycles.
    pub failed_cycles: usize,
    /// Linked pairs alive at the end (leads and contacts, and with [`Schedule::Full`] every
    /// other synced object).
    pub records: usize,
    /// Conflicts recorded by the engine.
    pub conflicts: usize,
    /// True when no invariant was violated.
    pub ok: bool,
    /// Each violated invariant, one sentence each.
    pub violations: Vec<String>,
    /// The steps played, one line each (to reproduce a failure).
    pub trace: Vec<String>,
    /// Engine processes found stuck at start-up (before they took the sync lease or made a
    /// request) and restarted, one description each: the process's threads and log. The
    /// harness restarts one per schedule; a second fails the seed with
    /// [`ConvergeError::Stuck`].
    pub stuck_restarts: Vec<String>,
}

const EDITABLE: &[(&str, &str)] = &[
    ("firstName", "first_name"),
    ("lastName", "last_name"),
    ("title", "title"),
    ("phone", "phone"),
    ("leadStatus", "lead_status"),
    ("leadSource", "lead_source"),
];
const WORDS: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Radia", "Dennis", "Open", "Working",
    "Web", "Partner", "CTO", "Buyer",
];
/// A schedule on a SQL CRM (SQLite or PostgreSQL).
struct Rig {
    seed: u64,
    /// The simulator, the store and the engine.
    run: Runner,
    dialect: Dialect,
    user: SqlPool,
    /// SQLite: holds the write lock; PostgreSQL: terminates the other connections.
    locker: SqlPool,
    mappings: Vec<LoadedMapping>,
    /// The non-lead Marketo records the simulator generated before the schedule (object, key).
    generated: std::collections::BTreeSet<(&'static str, String)>,
    /// The PostgreSQL server and scratch database to drop at the end.
    scratch: Option<(SecretString, String)>,
    dir: tempfile::TempDir,
}

/// Starts the Marketo simulator of a schedule: no leads, bulk jobs without delays.
async fn start_simulator(seed: u64) -> Result<SimHandle, ConvergeError> {
    Simulator::start(SimConfig {
        seed,
        leads: 0,
        export_delay: Duration::ZERO,
        import_delay: Duration::ZERO,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| ConvergeError::Setup {
        seed,
        what: format!("simulator: {e}"),
    })
}

/// Returns `base` with its path replaced by `/db`.
fn with_database(base: &str, db: &str) -> Result<String, String> {
    let mut url =
        url::Url::parse(base).map_err(|_| "the postgres url does not parse".to_owned())?;
    url.set_path(&format!("/{db}"));
    Ok(url.to_string())
}

/// Returns the settings file of a schedule: the simulator, the CRM options and the store, with
/// the client's retries shortened to milliseconds (the simulator's faults would otherwise cost
/// seconds each).
fn settings_toml(
    sim: &SimHandle,
    (adapter, crm_options): (&str, &Json),
    store_url: &str,
    low_watermark: DateTime<Utc>,
    objects: &[&str],
) -> Result<String, String> {
    let doc = json!({
        "marketo": {
            "base_url": sim.base_url(),
            "client_id": sim.credentials().0,
            "calls_per_20s": 100,
            "max_concurrency": 10,
            "daily_call_budget": 10_000,
            "retry_min_delay_ms": 1,
            "retry_max_delay_ms": 5,
            "rate_limit_wait_ms": 5,
        },
        "crm": { "adapter": adapter, "options": crm_options },
        "store": { "url": store_url },
        "sync": {
            "objects": objects,
            "lead_deletes": "delete",
            "lead_merges": "delete",
            "mappings_dir": "mappings",
        },
        "bootstrap": { "low_watermarks": { "leads": low_watermark.to_rfc3339() } },
    });
    let mut doc = doc;
    if objects.contains(&"programs") {
        // A program created in Marketo reaches the CRM at the next cycle, not an hour later.
        doc["sync"]["programs_browse_secs"] = json!(0);
    }
    if objects.contains(&"activities") {
        doc["bootstrap"]["low_watermarks"]["activities"] = json!(low_watermark.to_rfc3339());
    }
    let value = toml::Value::try_from(doc).map_err(|e| format!("settings: {e}"))?;
    toml::to_string(&value).map_err(|e| format!("settings: {e}"))
}

impl Rig {
    async fn start(seed: u64, options: &ConvergeOptions) -> Result<Rig, ConvergeError> {
        let setup = |what: String| ConvergeError::Setup { seed, what };
        let dir = tempfile::tempdir().map_err(|e| setup(format!("temp dir: {e}")))?;
        let (crm_url, scratch) = match &options.crm {
            CrmKind::HubSpot => {
                return Err(setup("a HubSpot schedule has no SQL CRM".to_owned()));
            }
            CrmKind::Sqlite => (
                format!("sqlite://{}", dir.path().join("crm.db").display()),
                None,
            ),
            CrmKind::Postgres { server_url } => {
                let server = server_url.expose_secret();
                let name = format!("mks_conv_{}", uuid::Uuid::new_v4().simple());
                let admin = SqlPool::connect(server, 1, false)
                    .await
                    .map_err(|e| setup(format!("postgres server: {e}")))?;
                let created = admin
                    .execute_raw("create the scratch crm", format!("CREATE DATABASE {name}"))
                    .await;
                admin.close().await;
                created.map_err(|e| setup(format!("scratch database: {e}")))?;
                (
                    with_database(server, &name).map_err(setup)?,
                    Some((server_url.clone(), name)),
                )
            }
        };
        let rig = Self::start_on(seed, options, dir, crm_url, scratch.clone()).await;
        if rig.is_err()
            && let Some((server, name)) = &scratch
        {
            drop_database(server, name).await;
        }
        rig
    }

    async fn start_on(
        seed: u64,
        options: &ConvergeOptions,
        dir: tempfile::TempDir,
        crm_url: String,
        scratch: Option<(SecretString, String)>,
    ) -> Result<Rig, ConvergeError> {
        let setup = |what: String| ConvergeError::Setup { seed, what };
        let sim = start_simulator(seed).await?;
        demo_crm::install(&crm_url, seed, 0)
            .await
            .map_err(|e| setup(format!("demo crm: {e}")))?;
        let user = SqlPool::connect(&crm_url, 1, false)
            .await
            .map_err(|e| setup(format!("crm user pool: {e}")))?;
        let locker = SqlPool::connect(&crm_url, 1, false)
            .await
            .map_err(|e| setup(format!("crm fault pool: {e}")))?;

        // The config directory both modes run on.
        let config_dir = dir.path().join("config");
        let mappings_dir = config_dir.join("mappings");
        std::fs::create_dir_all(&mappings_dir).map_err(|e| setup(format!("config dir: {e}")))?;
        let mapping = options.config_dir.join("mappings").join("leads.toml");
        std::fs::copy(&mapping, mappings_dir.join("leads.toml"))
            .map_err(|e| setup(format!("no lead mapping at {}: {e}", mapping.display())))?;
        let mut synced = vec!["leads"];
        let mut crm_options = demo_crm::adapter_options(true, false);
        if options.schedule != Schedule::LeadsOnly {
            let with_activities = options.schedule.with_activities();
            let marketing: &[(&str, &str)] = if options.schedule == Schedule::Marketing {
                marketing::MAPPING_FILES
            } else {
                &[]
            };
            let files = objects::MAPPING_FILES
                .iter()
                .zip(objects::OBJECTS.iter().map(|o| o.name))
                .chain(with_activities.then_some((&objects::ACTIVITY_MAPPING, "activities")))
                .chain(
                    with_activities.then_some((&objects::CHAT_MAPPING.0, objects::CHAT_MAPPING.1)),
                )
                .chain(marketing.iter().map(|(f, o)| (f, *o)));
            for (file, object) in files {
                let from = options.config_dir.join("mappings").join(file);
                std::fs::copy(&from, mappings_dir.join(file))
                    .map_err(|e| setup(format!("no mapping at {}: {e}", from.display())))?;
                synced.push(object);
            }
            // The demo CRM has no table for the activities mapping.
            if with_activities {
                for sql in objects::activity_ddl(user.dialect()) {
                    user.execute_raw("create the activities table", sql)
                        .await
                        .map_err(|e| setup(format!("activities table: {e}")))?;
                }
                objects::add_activity_options(&mut crm_options);
            }
        }
        let store_url = format!("sqlite://{}", dir.path().join("state.db").display());
        let low = sim.now() - chrono::Duration::minutes(1);
        let text =
            settings_toml(&sim, ("sql", &crm_options), &store_url, low, &synced).map_err(setup)?;
        std::fs::write(config_dir.join("default.toml"), text)
            .map_err(|e| setup(format!("settings file: {e}")))?;
        let env: HashMap<String, String> = [
            (
                "MKSYNC__MARKETO__CLIENT_SECRET".to_owned(),
                sim.credentials().1.expose_secret().to_owned(),
            ),
            ("MKSYNC__CRM__URL".to_owned(), crm_url.clone()),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ]
        .into();
        let loaded =
            crate::config::load(&SettingsSource::new(&config_dir, None).with_vars(env.clone()))
                .map_err(|e| setup(format!("the written config does not load: {e}")))?;
        if loaded.mappings.is_empty() {
            return Err(setup(format!("no lead mapping in {}", mapping.display())));
        }
        let mappings = loaded.mappings.clone();

        let generated = objects::generated(&sim);
        let dialect = user.dialect();
        let run = Runner::start(
            seed,
            options,
            sim,
            loaded,
            &store_url,
            (config_dir, env),
            dir.path(),
        )
        .await?;
        Ok(Rig {
            seed,
            run,
            dialect,
            user,
            locker,
            mappings,
            generated,
            scratch,
            dir,
        })
    }

    /// Closes the pools, stops the simulator and drops the scratch database.
    async fn finish(self) {
        self.user.close().await;
        self.locker.close().await;
        drop(self.run.driver);
        drop(self.run.store);
        self.run.sim.shutdown().await;
        if let Some((server, name)) = &self.scratch {
            drop_database(server, name).await;
        }
        drop(self.dir);
    }

    /// Runs one cycle (after a tick), doing what `watch` says while it runs.
    async fn cycle(&mut self, watch: Watch) -> Result<Cycle, ConvergeError> {
        let probe = SqlProbe {
            dialect: self.dialect,
            user: &self.user,
            locker: &self.locker,
        };
        self.run.cycle(watch, &probe).await
    }

    /// Replaces the in-process engine and CRM adapter (see [`Runner::restart`]).
    async fn restart(&mut self) -> Result<(), ConvergeError> {
        self.run.restart().await
    }

    /// Returns the SQL for "now" in a CRM user's edit. CRM timestamps follow the engine's clock,
    /// as on a deployment where the engine's host and the database agree on the time: the
    /// database's clock in process mode; in process, the engine's manual clock moved a second
    /// forward (the user's edit comes after the last cycle started).
    fn crm_now(&self) -> String {
        match self.run.user_edit_instant() {
            None => self.dialect.now().to_owned(),
            Some(at) => format!("'{}'", self.dialect.datetime_text(&at)),
        }
    }

    async fn sql(&self, operation: &str, sql: String) -> Result<(), ConvergeError> {
        self.user
            .execute_raw(operation, sql)
            .await
            .map_err(|source| ConvergeError::CrmUser {
                seed: self.seed,
                operation: operation.to_owned(),
                source,
            })
    }

    async fn live_contacts(&self) -> Result<Vec<Vec<Option<String>>>, ConvergeError> {
        let cols = EDITABLE
            .iter()
            .map(|(_, c)| *c)
            .collect::<Vec<_>>()
            .join(", ");
        self.user
            .fetch(
                "read contacts",
                format!(
                    "SELECT CAST(id AS TEXT), email, marketo_id, CAST(do_not_email AS TEXT), {cols} FROM contacts WHERE deleted = FALSE ORDER BY id"
                ),
                &[],
            )
            .await
            .map_err(|source| ConvergeError::CrmUser {
                seed: self.seed,
                operation: "read contacts".into(),
                source,
            })
    }
}

/// The SQL CRM's side of a cycle's watch.
struct SqlProbe<'a> {
    dialect: Dialect,
    user: &'a SqlPool,
    locker: &'a SqlPool,
}

#[async_trait::async_trait(?Send)]
impl CrmProbe for SqlProbe<'_> {
    /// Returns a fingerprint of the contacts table that changes with any write.
    async fn mark(&self) -> Option<Vec<Option<String>>> {
        let d = self.dialect;
        let sql = format!(
            "SELECT {}, {}, {} FROM contacts",
            d.as_text("COUNT(*)"),
            d.as_text("MAX(updated_at)"),
            d.as_text("COUNT(marketo_id)")
        );
        self.user
            .fetch("contacts fingerprint", sql, &[])
            .await
            .ok()
            .and_then(|r| r.into_iter().next())
    }

    /// Returns the backend id of the user pool's connection (PostgreSQL), spared by the
    /// connection fault.
    async fn spare(&self) -> String {
        if self.dialect != Dialect::Postgres {
            return "0".into();
        }
        self.user
            .fetch(
                "backend id",
                "SELECT CAST(pg_backend_pid() AS TEXT)".into(),
                &[],
            )
            .await
            .ok()
            .and_then(|r| r.into_iter().next())
            .and_then(|r| r.into_iter().next().flatten())
            .unwrap_or_else(|| "0".into())
    }

    /// Returns a contact row's email, deleted flag, survivor and Marketo id.
    async fn describe_contact(&self, id: &str) -> String {
        let row = match id.parse::<i64>() {
            Ok(id) => self
                .user
                .fetch(
                    "read contact",
                    format!("SELECT email, CAST(deleted AS TEXT), CAST(merged_into AS TEXT), marketo_id FROM contacts WHERE id = {id}"),
                    &[],
                )
                .await
                .ok()
                .and_then(|r| r.into_iter().next()),
            Err(_) => None,
        };
        format!("contact email, deleted, merged_into, marketo_id: {row:?}")
    }

    /// Terminates every connection to the CRM database but the harness's own; returns how many.
    async fn drop_connections(&self, spare: &str) -> usize {
        let sql = format!(
            "SELECT CAST(pg_terminate_backend(pid) AS TEXT) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> {}",
            spare.parse::<i64>().unwrap_or(0)
        );
        match self
            .locker
            .fetch("terminate crm connections", sql, &[])
            .await
        {
            Ok(rows) => rows
                .iter()
                .filter(|r| matches!(r.first().and_then(|v| v.as_deref()), Some("true")))
                .count(),
            Err(_) => 0,
        }
    }
}

async fn drop_database(server: &SecretString, name: &str) {
    if let Ok(admin) = SqlPool::connect(server.expose_secret(), 1, false).await {
        let _ = admin
            .execute_raw(
                "drop the scratch crm",
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await;
        admin.close().await;
    }
}

fn quote(text: &str) -> String {
    text.replace('\'', "''")
}

/// Counts of what a schedule did.
#[derive(Default)]
struct Tally {
    failed: usize,
    cycles: usize,
    faults: BTreeMap<String, usize>,
    kills: BTreeMap<String, usize>,
}

impl Tally {
    fn fault(&mut self, kind: impl Into<String>) {
        *self.faults.entry(kind.into()).or_default() += 1;
    }

    fn kill(&mut self, kind: &str) {
        *self.kills.entry(kind.to_owned()).or_default() += 1;
    }

    /// Counts a cycle and whether it failed.
    fn cycle(&mut self, c: &Cycle) {
        self.cycles += 1;
        if !c.ran.is_ok() {
            self.failed += 1;
        }
    }
}

/// Runs one seeded schedule and returns its report.
///
/// # Errors
///
/// Returns [`ConvergeError`] when the set-up fails, a user edit on the CRM cannot be made or
/// the engine process cannot be started; sync failures are not errors (they are faults the
/// schedule survives, or violations).
pub async fn run_schedule(
    seed: u64,
    options: &ConvergeOptions,
) -> Result<ConvergenceReport, ConvergeError> {
    if matches!(options.crm, CrmKind::HubSpot) {
        return hubspot::run_schedule(seed, options).await;
    }
    let mut rig = Rig::start(seed, options).await?;
    let report = play(&mut rig, seed, options).await;
    rig.finish().await;
    report
}

/// The fresh emails of a schedule: `u1.s{seed}@example.com`, ..., a fifth of them in mixed case
/// with padding (the email transform, trim and lowercase, must match them).
struct Emails {
    seed: u64,
    next: u32,
}

impl Emails {
    fn fresh(&mut self, rng: &mut ChaCha8Rng) -> String {
        self.next += 1;
        let (n, seed) = (self.next, self.seed);
        if rng.random_bool(0.2) {
            format!(" U{n}.S{seed}@Example.com")
        } else {
            format!("u{n}.s{seed}@example.com")
        }
    }
}

/// A random value of an edited field.
fn word(rng: &mut ChaCha8Rng) -> String {
    format!(
        "{}{}",
        WORDS[rng.random_range(0..WORDS.len())],
        rng.random_range(0..100)
    )
}

/// What a schedule keeps while it plays: its counts, the cycle errors it survived and its trace.
struct Played {
    tally: Tally,
    cycle_errors: Vec<String>,
    trace: Vec<String>,
}

impl Played {
    fn new() -> Played {
        Played {
            tally: Tally::default(),
            cycle_errors: Vec::new(),
            trace: Vec::new(),
        }
    }

    /// Starts the trace line of a step, with the records on each side before it.
    fn start_step(&mut self, step: usize, name: &str, (leads, contacts): (usize, usize)) {
        self.trace.push(format!(
            "step {step}: {name} ({leads} leads, {contacts} contacts before)"
        ));
    }
}

/// A schedule's rig on one CRM: the engine side ([`Runner`]) and what the CRM adds to the steps
/// every CRM shares.
#[async_trait::async_trait(?Send)]
trait Rigged {
    /// The simulator, the store and the engine.
    fn run(&self) -> &Runner;

    /// Runs one cycle, doing what `watch` says while it runs.
    async fn cycle(&mut self, watch: Watch) -> Result<Cycle, ConvergeError>;

    /// Restarts the engine (in process; a child's next cycle is its restart).
    async fn restart(&mut self) -> Result<(), ConvergeError>;

    /// Makes the CRM fail during a cycle; returns the trace detail.
    async fn crm_fault(
        &mut self,
        rng: &mut ChaCha8Rng,
        tally: &mut Tally,
    ) -> Result<String, ConvergeError>;

    /// Returns whether the only records failing are orphans waiting for a parent that is gone.
    async fn only_orphans_fail(&self) -> Result<bool, ConvergeError> {
        Ok(false)
    }
}

#[async_trait::async_trait(?Send)]
impl Rigged for Rig {
    fn run(&self) -> &Runner {
        &self.run
    }

    async fn cycle(&mut self, watch: Watch) -> Result<Cycle, ConvergeError> {
        Rig::cycle(self, watch).await
    }

    async fn restart(&mut self) -> Result<(), ConvergeError> {
        self.run.restart().await
    }

    /// SQLite: another connection holds the write lock during the cycle; PostgreSQL: the
    /// adapter's connections are terminated from a random number of Marketo requests on.
    async fn crm_fault(
        &mut self,
        rng: &mut ChaCha8Rng,
        tally: &mut Tally,
    ) -> Result<String, ConvergeError> {
        if self.dialect != Dialect::Postgres {
            tally.fault("crm write-locked");
            let locked = self
                .locker
                .execute_raw("lock", "BEGIN IMMEDIATE".into())
                .await
                .is_ok();
            let c = Rig::cycle(self, Watch::Nothing).await?;
            tally.cycle(&c);
            if locked {
                let _ = self.locker.execute_raw("unlock", "ROLLBACK".into()).await;
            }
            return Ok(String::new());
        }
        tally.fault("crm connections terminated");
        let after = rng.random_range(0..10);
        let c = Rig::cycle(self, Watch::DropCrmAfter(after)).await?;
        let mut detail = format!("from request {after} on: {}", c.ran);
        if !c.fired {
            detail.push_str(" (no connection was open)");
        }
        tally.cycle(&c);
        Ok(detail)
    }

    async fn only_orphans_fail(&self) -> Result<bool, ConvergeError> {
        Rig::only_orphans_fail(self).await
    }
}

/// Plays a step no CRM user takes part in: an edit by Marketo's user, a fault, a kill and
/// restart, or a cycle (also for a CRM step whose records are missing). Returns the trace
/// detail.
async fn common_step(
    rig: &mut dyn Rigged,
    roll: u32,
    rng: &mut ChaCha8Rng,
    emails: &mut Emails,
    played: &mut Played,
    in_child: bool,
) -> Result<String, ConvergeError> {
    let leads = rig.run().sim.leads();
    let sim = &rig.run().sim;
    let tally = &mut played.tally;
    let mut detail = String::new();
    match roll {
        // Marketo: create a lead.
        0..=11 => {
            let email = emails.fresh(rng);
            let mut values = Map::new();
            values.insert("email".into(), json!(email));
            values.insert("firstName".into(), json!(word(rng)));
            values.insert("lastName".into(), json!(word(rng)));
            detail = format!("lead {} {email:?}", sim.create_lead(values));
        }
        // Marketo: edit a mapped field.
        23..=32 if !leads.is_empty() => {
            let lead = &leads[rng.random_range(0..leads.len())];
            let (field, _) = EDITABLE[rng.random_range(0..EDITABLE.len())];
            let mut values = Map::new();
            if rng.random_bool(0.15) {
                values.insert("unsubscribed".into(), json!(rng.random_bool(0.5)));
            } else {
                values.insert(field.into(), json!(word(rng)));
            }
            if let Some(id) = lead["id"].as_i64() {
                detail = format!("lead {id} {values:?}");
                let _ = sim.update_lead(id, values);
            }
        }
        // Marketo: delete a lead.
        51..=54 if !leads.is_empty() => {
            if let Some(id) = leads[rng.random_range(0..leads.len())]["id"].as_i64() {
                detail = format!("lead {id}");
                sim.delete_lead(id);
            }
        }
        // Marketo: merge two leads.
        59..=61 if leads.len() >= 2 => {
            let a = rng.random_range(0..leads.len());
            let b = (a + 1 + rng.random_range(0..leads.len() - 1)) % leads.len();
            if let (Some(w), Some(l)) = (leads[a]["id"].as_i64(), leads[b]["id"].as_i64()) {
                detail = format!("loser lead {l} into winner {w}");
                let _ = sim.merge_leads(w, &[l]);
            }
        }
        // A simulator fault profile for the next cycle.
        68..=75 => {
            let kinds = [
                ("*", FaultKind::Throttle),
                ("*", FaultKind::Http5xx),
                ("*", FaultKind::Timeout),
                ("*", FaultKind::Unavailable),
                ("*", FaultKind::Drop),
                ("bulk_file", FaultKind::Truncate),
                ("bulk_file", FaultKind::File404),
            ];
            let (route, kind) = kinds[rng.random_range(0..kinds.len())];
            let rate = rng.random_range(0.05..0.3);
            detail = format!("{} at {rate:.2}", kind.as_str());
            sim.set_faults(FaultProfile {
                rules: vec![FaultRule {
                    route: route.into(),
                    kind,
                    rate,
                    delay_ms: 0,
                }],
            });
            tally.fault(format!("simulator {}", kind.as_str()));
        }
        // Expired tokens.
        76..=78 => {
            sim.expire_tokens();
            tally.fault("expired tokens");
        }
        // The simulator's daily quota spent: a 607 pauses the cycle; after the day turns the
        // next cycle runs.
        79..=80 => detail = spent_quota(rig, played).await?,
        // The CRM failing during a cycle.
        81..=82 => detail = rig.crm_fault(rng, tally).await?,
        83..=89 => detail = kill(rig, roll, rng, tally, in_child).await?,
        // A cycle, after which the simulator faults are cleared.
        _ => {
            let c = rig.cycle(Watch::Nothing).await?;
            tally.cycle(&c);
            detail = c.ran.to_string();
            rig.run().sim.set_faults(FaultProfile::none());
        }
    }
    Ok(detail)
}

/// The least time left in the Marketo day when the harness spends the daily quota.
const QUOTA_MARGIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Spends the simulator's daily quota: the cycle must pause, and once the day turned the next
/// one must not. Returns the trace detail.
async fn spent_quota(rig: &mut dyn Rigged, played: &mut Played) -> Result<String, ConvergeError> {
    // The sim clock follows the wall clock: too close to Marketo's midnight (America/Chicago),
    // the day would turn between spending the quota and the cycle that meets it (the harness
    // moves time 30 s per cycle), and that cycle would rightly not pause. The day turns first.
    let now = rig.run().sim.now();
    if crate::marketo::limiter::next_day_turn(now) - now < QUOTA_MARGIN {
        rig.run().turn_day(None).await?;
    }
    rig.run().sim.spend_daily_quota();
    played.tally.fault("daily quota (607)");
    let c = rig.cycle(Watch::Nothing).await?;
    played.tally.cycle(&c);
    match c.ran {
        Ran::Paused { until, message } => {
            rig.run().turn_day(until).await?;
            let next = rig.cycle(Watch::Nothing).await?;
            played.tally.cycle(&next);
            if let Ran::Paused { message, .. } = &next.ran {
                played.cycle_errors.push(format!(
                    "a spent daily quota: still paused after the day turned: {message}"
                ));
            }
            Ok(format!("paused: {message}"))
        }
        other => {
            played.cycle_errors.push(format!(
                "a spent daily quota did not pause the cycle, which {other}"
            ));
            Ok(String::new())
        }
    }
}

/// A kill, then a restart: a child SIGKILLed after some simulator requests (83-86) or once it
/// wrote the CRM (87-89); in process, the n-th commit of the cycle aborted (83-86) or the
/// cycle cancelled after some simulator requests (87-89). Returns the trace detail.
async fn kill(
    rig: &mut dyn Rigged,
    roll: u32,
    rng: &mut ChaCha8Rng,
    tally: &mut Tally,
    in_child: bool,
) -> Result<String, ConvergeError> {
    let mut detail = String::new();
    match (roll, in_child) {
        (83..=86, true) => {
            let after = rng.random_range(1..16);
            let c = rig.cycle(Watch::KillAfterRequests(after)).await?;
            tally.cycle(&c);
            detail = format!("after {after} requests: {}", c.ran);
            if matches!(c.ran, Ran::Killed) {
                tally.kill("SIGKILL after Marketo requests");
            }
        }
        (83..=86, false) => {
            rig.run().arm_commit_abort(rng.random_range(1..4));
            let c = rig.cycle(Watch::Nothing).await?;
            tally.cycle(&c);
            if rig.run().disarm_commit_abort() {
                tally.kill("commit aborted");
            }
            rig.restart().await?;
        }
        (_, true) => {
            let c = rig.cycle(Watch::KillAfterCrmWrite).await?;
            tally.cycle(&c);
            detail = c.ran.to_string();
            if matches!(c.ran, Ran::Killed) {
                tally.kill("SIGKILL after a CRM write");
            }
        }
        (_, false) => {
            let after = rng.random_range(1..12);
            let c = rig.cycle(Watch::CancelAfter(after)).await?;
            tally.cycle(&c);
            if matches!(c.ran, Ran::Cancelled) {
                tally.kill("cycle cancelled");
            }
            rig.restart().await?;
        }
    }
    Ok(detail)
}

async fn play(
    rig: &mut Rig,
    seed: u64,
    options: &ConvergeOptions,
) -> Result<ConvergenceReport, ConvergeError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut emails = Emails { seed, next: 0 };
    let mut played = Played::new();
    let in_child = matches!(options.engine, EngineMode::Process { .. });
    // The full schedule's extra steps come from generators of their own, so that the lead
    // steps drawn from `rng` are the same in both schedules.
    let full = options.schedule != Schedule::LeadsOnly;
    let mut merge_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d65_7267_655f_6b69);
    let mut object_rng = objects::object_rng(seed);
    let mut activity_rng = objects::activity_rng(seed);
    let mut chat_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6368_6174_5f65_7674);
    let mut marketing_rng = marketing::marketing_rng(seed);
    let mut serial = 0u32;
    for step in 0..options.steps {
        let roll = draw_roll(&mut rng, options);
        if full && merge_rng.random_bool(0.06) {
            let email = emails.fresh(&mut merge_rng);
            let what =
                merge_into_new_contact(rig, &mut merge_rng, &email, options, &mut played.tally)
                    .await?;
            played
                .trace
                .push(format!("extra before step {step}: {what}"));
        }
        if full && object_rng.random_bool(0.4) {
            serial += 1;
            let now = rig.crm_now();
            let what = rig.object_edit(&mut object_rng, serial, &now).await?;
            if !what.is_empty() {
                played
                    .trace
                    .push(format!("object edit before step {step}: {what}"));
            }
        }
        if options.schedule.with_activities() && activity_rng.random_bool(0.2) {
            let what = rig.visit_webpage(&mut activity_rng, serial + step as u32);
            if !what.is_empty() {
                played
                    .trace
                    .push(format!("activity before step {step}: {what}"));
            }
        }
        if options.schedule.with_activities() && chat_rng.random_bool(0.2) {
            let what = rig.log_chat(&mut chat_rng, serial + step as u32).await?;
            if !what.is_empty() {
                played
                    .trace
                    .push(format!("chat before step {step}: {what}"));
            }
        }
        if options.schedule == Schedule::Marketing && marketing_rng.random_bool(0.4) {
            let now = rig.crm_now();
            let what = rig
                .marketing_edit(&mut marketing_rng, serial + step as u32, &now)
                .await?;
            if !what.is_empty() {
                played
                    .trace
                    .push(format!("marketing before step {step}: {what}"));
            }
        }
        let counts = (
            rig.run.sim.counters().leads,
            rig.live_contacts().await?.len(),
        );
        played.start_step(step, step_name(roll, in_child, &options.crm), counts);
        let now = rig.crm_now();
        let Some(detail) = crm_step(rig, roll, &mut rng, &mut emails, &now).await? else {
            continue;
        };
        let detail = match detail {
            Some(d) => d,
            None => common_step(rig, roll, &mut rng, &mut emails, &mut played, in_child).await?,
        };
        continue_trace(&mut played.trace, &detail);
    }
    finish_schedule(rig, seed, options, played, check_invariants_of).await
}

/// Draws a step's roll; without faults or kills, their rolls become a cycle.
fn draw_roll(rng: &mut ChaCha8Rng, options: &ConvergeOptions) -> u32 {
    let roll = rng.random_range(0..100u32);
    if (!options.faults && (68..=82).contains(&roll))
        || (!options.kills && (83..=89).contains(&roll))
    {
        99
    } else {
        roll
    }
}

/// Plays a step of the CRM's user on the SQL CRM (`now` is the edit's timestamp): `Some(Some)`
/// with the trace detail, `Some(None)` when the roll is no CRM step (or its records are
/// missing), `None` when the step is skipped (a conflict without a linked contact).
async fn crm_step(
    rig: &mut Rig,
    roll: u32,
    rng: &mut ChaCha8Rng,
    emails: &mut Emails,
    now: &str,
) -> Result<Option<Option<String>>, ConvergeError> {
    let contacts = rig.live_contacts().await?;
    let detail = match roll {
        // CRM: insert a contact.
        12..=22 => {
            let email = emails.fresh(rng);
            let (f, l) = (word(rng), word(rng));
            rig.sql(
                "insert contact",
                format!(
                    "INSERT INTO contacts (email, first_name, last_name, updated_at) VALUES ('{}', '{}', '{}', {now})",
                    quote(&email),
                    quote(&f),
                    quote(&l)
                ),
            )
            .await?;
            format!("{email:?}")
        }
        // CRM: update a mapped column.
        33..=42 if !contacts.is_empty() => {
            let c = &contacts[rng.random_range(0..contacts.len())];
            let id = c[0].clone().unwrap_or_default();
            let (_, column) = EDITABLE[rng.random_range(0..EDITABLE.len())];
            rig.sql(
                "update contact",
                format!(
                    "UPDATE contacts SET {column} = '{}', updated_at = {now} WHERE id = {id}",
                    quote(&word(rng))
                ),
            )
            .await?;
            format!("contact {id} {column}")
        }
        // A conflict: the same field on both sides between two cycles.
        43..=50 => {
            let linked: Vec<&Vec<Option<String>>> =
                contacts.iter().filter(|c| c[2].is_some()).collect();
            if linked.is_empty() {
                return Ok(None);
            }
            let c = linked[rng.random_range(0..linked.len())];
            let (id, mid) = (c[0].clone().unwrap_or_default(), c[2].clone());
            let Some(mid) = mid.and_then(|m| m.parse::<i64>().ok()) else {
                return Ok(None);
            };
            let (field, column) = EDITABLE[rng.random_range(0..EDITABLE.len())];
            let mut values = Map::new();
            values.insert(field.into(), json!(word(rng)));
            let _ = rig.run.sim.update_lead(mid, values);
            rig.sql(
                "conflicting update",
                format!(
                    "UPDATE contacts SET {column} = '{}', updated_at = {now} WHERE id = {id}",
                    quote(&word(rng))
                ),
            )
            .await?;
            format!("lead {mid} / contact {id} {field}")
        }
        // CRM: soft-delete a contact.
        55..=58 if !contacts.is_empty() => {
            let id = contacts[rng.random_range(0..contacts.len())][0]
                .clone()
                .unwrap_or_default();
            rig.sql(
                "delete contact",
                format!("UPDATE contacts SET deleted = TRUE, updated_at = {now} WHERE id = {id}"),
            )
            .await?;
            format!("contact {id}")
        }
        // CRM: merge two contacts.
        62..=63 if contacts.len() >= 2 => {
            let a = rng.random_range(0..contacts.len());
            let b = (a + 1 + rng.random_range(0..contacts.len() - 1)) % contacts.len();
            let (w, l) = (
                contacts[a][0].clone().unwrap_or_default(),
                contacts[b][0].clone().unwrap_or_default(),
            );
            rig.sql(
                "merge contacts",
                format!(
                    "UPDATE contacts SET merged_into = {w}, deleted = TRUE, updated_at = {now} WHERE id = {l}"
                ),
            )
            .await?;
            format!("loser contact {l} into winner {w}")
        }
        // A conversion: a CRM lead becomes a contact whose email Marketo already holds
        // (created there since the last cycle), so the two must be linked, not duplicated.
        64..=67 => {
            let email = emails.fresh(rng);
            let mut values = Map::new();
            values.insert("email".into(), json!(email.trim().to_lowercase()));
            values.insert("firstName".into(), json!(word(rng)));
            let detail = format!("lead {} {email:?}", rig.run.sim.create_lead(values));
            let last = word(rng);
            rig.sql(
                "convert lead",
                format!(
                    "INSERT INTO leads (email, last_name, updated_at) VALUES ('{e}', '{l}', {now}); \
                     INSERT INTO contacts (email, last_name, updated_at) VALUES ('{e}', '{l}', {now}); \
                     UPDATE leads SET converted_contact_id = (SELECT MAX(id) FROM contacts) WHERE id = (SELECT MAX(id) FROM leads)",
                    e = quote(&email),
                    l = quote(&last)
                ),
            )
            .await?;
            detail
        }
        _ => return Ok(Some(None)),
    };
    Ok(Some(Some(detail)))
}

/// Checks the invariants of a SQL schedule (a plain function for [`finish_schedule`]).
fn check_invariants_of<'a>(
    rig: &'a Rig,
    violations: &'a mut Vec<String>,
) -> futures::future::LocalBoxFuture<'a, Result<(usize, usize), ConvergeError>> {
    Box::pin(check_invariants(rig, violations))
}

/// The invariant checks of a rig: the number of recorded conflicts and of linked pairs, with the
/// violations pushed.
type Check<R> =
    for<'a> fn(
        &'a R,
        &'a mut Vec<String>,
    ) -> futures::future::LocalBoxFuture<'a, Result<(usize, usize), ConvergeError>>;

/// Runs the quiet period after a schedule's steps (faults cleared, cycles until two in a row
/// write nothing, at most 10), checks the invariants with `check` and returns the report.
async fn finish_schedule<R: Rigged>(
    rig: &mut R,
    seed: u64,
    options: &ConvergeOptions,
    mut played: Played,
    check: Check<R>,
) -> Result<ConvergenceReport, ConvergeError> {
    rig.run().sim.set_faults(FaultProfile::none());
    rig.run().disarm_commit_abort();
    let mut quiet = 0;
    for round in 0..10 {
        rig.run().retry_now().await?;
        let c = rig.cycle(Watch::Nothing).await?;
        played.tally.cycle(&c);
        played.trace.push(format!("quiet cycle {round}: {}", c.ran));
        let orphans = match c.ran {
            Ran::Done { written: 0, failed } if failed > 0 => rig.only_orphans_fail().await?,
            _ => false,
        };
        match c.ran {
            Ran::Done {
                written: 0,
                failed: 0,
            } => quiet += 1,
            Ran::Done { written: 0, .. } if orphans => quiet += 1,
            Ran::Done { .. } => quiet = 0,
            other => {
                quiet = 0;
                played
                    .cycle_errors
                    .push(format!("a quiet-period cycle {other}"));
            }
        }
        if quiet == 2 {
            break;
        }
    }
    let mut violations = Vec::new();
    if quiet < 2 {
        violations
            .push("no two consecutive quiet cycles after the schedule (at most 10 run)".to_owned());
        violations.extend(played.cycle_errors.iter().rev().take(3).cloned());
        violations.extend(open_errors(&rig.run().store).await);
    } else {
        violations.extend(
            played
                .cycle_errors
                .iter()
                .filter(|e| e.starts_with("a spent daily quota"))
                .cloned(),
        );
    }
    let (conflicts, records) = check(rig, &mut violations).await?;
    let tally = played.tally;
    Ok(ConvergenceReport {
        seed,
        steps: options.steps,
        faults: tally.faults.values().sum(),
        faults_by_kind: tally.faults,
        kills: tally.kills.values().sum(),
        kills_by_kind: tally.kills,
        cycles: tally.cycles,
        failed_cycles: tally.failed,
        records,
        conflicts,
        ok: violations.is_empty(),
        violations,
        trace: played.trace,
        stuck_restarts: rig.run().stuck_restarts.clone(),
    })
}

/// Returns up to 5 open error-ledger entries, one line each.
async fn open_errors(store: &Arc<dyn StateStore>) -> Vec<String> {
    let open = store
        .list_errors(&store::ErrorFilter {
            status: Some(store::ErrorStatus::Open),
            limit: 5,
            ..store::ErrorFilter::default()
        })
        .await
        .unwrap_or_default();
    open.into_iter()
        .map(|e| {
            format!(
                "open in the error ledger: {} {} {} ({}): {} {}",
                e.object,
                e.direction.as_str(),
                e.record_key,
                e.other_key.unwrap_or_default(),
                e.code,
                e.message
            )
        })
        .collect()
}

/// Plays a CRM merge into a contact that was never synced: a new contact (and, half of the
/// time, a new Marketo lead of its email), a linked contact merged into it, then a cycle killed
/// at its first store commit (in process) or once it wrote the CRM (a child process), and a
/// restart. Returns the trace line.
async fn merge_into_new_contact(
    rig: &mut Rig,
    rng: &mut ChaCha8Rng,
    email: &str,
    options: &ConvergeOptions,
    tally: &mut Tally,
) -> Result<String, ConvergeError> {
    let contacts = rig.live_contacts().await?;
    let linked: Vec<&Vec<Option<String>>> = contacts.iter().filter(|c| c[2].is_some()).collect();
    if linked.is_empty() {
        return Ok("crm merge into a new contact: no linked contact".to_owned());
    }
    let loser = linked[rng.random_range(0..linked.len())][0]
        .clone()
        .unwrap_or_default();
    let now = rig.crm_now();
    rig.sql(
        "insert the survivor",
        format!(
            "INSERT INTO contacts (email, first_name, updated_at) VALUES ('{}', 'Survivor', {now})",
            quote(email)
        ),
    )
    .await?;
    let survivor = rig
        .user
        .fetch(
            "the survivor's id",
            "SELECT CAST(MAX(id) AS TEXT) FROM contacts".into(),
            &[],
        )
        .await
        .ok()
        .and_then(|r| r.into_iter().next())
        .and_then(|r| r.into_iter().next().flatten())
        .unwrap_or_default();
    let mut what =
        format!("crm merge of contact {loser} into the new contact {survivor} {email:?}");
    if rng.random_bool(0.5) {
        let mut values = Map::new();
        values.insert("email".into(), json!(email.trim().to_lowercase()));
        let lead = rig.run.sim.create_lead(values);
        what.push_str(&format!(" (and a new Marketo lead {lead} of its email)"));
    }
    rig.sql(
        "merge into the survivor",
        format!(
            "UPDATE contacts SET merged_into = {survivor}, deleted = TRUE, updated_at = {now} WHERE id = {loser}"
        ),
    )
    .await?;
    if !options.kills {
        let c = rig.cycle(Watch::Nothing).await?;
        tally.cycle(&c);
        return Ok(format!("{what}, then a cycle: {}", c.ran));
    }
    match options.engine {
        EngineMode::Process { .. } => {
            let c = rig.cycle(Watch::KillAfterCrmWrite).await?;
            tally.cycle(&c);
            if matches!(c.ran, Ran::Killed) {
                tally.kill("SIGKILL after a CRM write");
            }
            Ok(format!(
                "{what}, then kill the process after a crm write: {}",
                c.ran
            ))
        }
        EngineMode::InProcess => {
            rig.run.arm_commit_abort(1);
            let c = rig.cycle(Watch::Nothing).await?;
            tally.cycle(&c);
            let killed = rig.run.disarm_commit_abort();
            if killed {
                tally.kill("commit aborted");
            }
            rig.restart().await?;
            Ok(format!(
                "{what}, then a kill at the first commit: {}{}",
                c.ran,
                if killed { " (aborted)" } else { "" }
            ))
        }
    }
}

/// Appends a step's detail to its trace line.
fn continue_trace(trace: &mut [String], detail: &str) {
    if !detail.is_empty()
        && let Some(line) = trace.last_mut()
    {
        line.push_str(": ");
        line.push_str(detail);
    }
}

fn step_name(roll: u32, in_child: bool, crm: &CrmKind) -> &'static str {
    match roll {
        0..=11 => "marketo create",
        12..=22 => "crm insert",
        23..=32 => "marketo edit",
        33..=42 => "crm edit",
        43..=50 => "conflicting edits",
        51..=54 => "marketo delete",
        55..=58 => "crm delete",
        59..=61 => "marketo merge",
        62..=63 => "crm merge",
        64..=67 => "conversion",
        68..=75 => "simulator faults",
        76..=78 => "expired tokens",
        79..=80 => "daily quota spent",
        81..=82 => match crm {
            CrmKind::Sqlite => "crm locked",
            CrmKind::Postgres { .. } => "crm connections dropped",
            CrmKind::HubSpot => "hubspot faults",
        },
        83..=86 if in_child => "kill the process mid-Marketo",
        83..=86 => "kill at commit",
        87..=89 if in_child => "kill the process after a crm write",
        87..=89 => "kill by cancel",
        _ => "cycle",
    }
}

fn canonical(steps: &[crate::config::Transform], v: Value) -> String {
    let v = match v {
        Value::Text(t) if t.trim().is_empty() => Value::Null,
        other => other,
    };
    crate::mapping::apply(steps, &v).to_text()
}

fn from_json(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    }
}

fn bool_text(v: Option<&str>) -> Value {
    match v {
        Some("1") | Some("true") => Value::Bool(true),
        Some("0") | Some("false") | None => Value::Bool(false),
        Some(other) => Value::Text(other.to_owned()),
    }
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::CrmWins => "crm_wins",
        Policy::MarketoWins => "marketo_wins",
        Policy::NewestWins => "newest_wins",
    }
}

/// A live CRM contact as the checks see it: its id, email, Marketo id and the values of the
/// mapped CRM fields it holds (by CRM field name).
struct LiveContact {
    id: String,
    email: String,
    marketo_id: Option<String>,
    values: BTreeMap<String, Value>,
}

impl Rig {
    /// Returns the live contacts in the checks' form.
    async fn checked_contacts(&self) -> Result<Vec<LiveContact>, ConvergeError> {
        Ok(self
            .live_contacts()
            .await?
            .into_iter()
            .map(|c| {
                let mut values: BTreeMap<String, Value> = EDITABLE
                    .iter()
                    .enumerate()
                    .map(|(i, (_, col))| {
                        let v = c[4 + i].clone().map(Value::Text).unwrap_or(Value::Null);
                        ((*col).to_owned(), v)
                    })
                    .collect();
                values.insert("do_not_email".into(), bool_text(c[3].as_deref()));
                LiveContact {
                    id: c[0].clone().unwrap_or_default(),
                    email: c[1].clone().unwrap_or_default(),
                    marketo_id: c[2].clone(),
                    values,
                }
            })
            .collect())
    }
}

/// Checks the invariants after the quiet period and returns the number of recorded conflicts
/// and of linked pairs (see [`check_leads`]; then every other synced object and activity).
async fn check_invariants(
    rig: &Rig,
    violations: &mut Vec<String>,
) -> Result<(usize, usize), ConvergeError> {
    let contacts = rig.checked_contacts().await?;
    let probe = SqlProbe {
        dialect: rig.dialect,
        user: &rig.user,
        locker: &rig.locker,
    };
    let (conflicts, records) =
        check_leads(&rig.run, &rig.mappings, &contacts, &probe, violations).await?;
    let objects = rig.check_objects(violations).await?;
    let activities = rig.check_activities(violations).await?;
    let chats = rig.check_custom_activities(violations).await?;
    let marketing = rig.check_marketing(violations).await?;
    Ok((
        conflicts,
        records + objects + activities + chats + marketing,
    ))
}

/// Checks the lead invariants on any CRM and returns the number of recorded conflicts and of
/// linked pairs:
///
/// - no two live leads, and no two live contacts, share an email (canonical form);
/// - every live lead is linked to exactly one live contact with its email and vice versa, and
///   the keys point at each other (`crmContactId`, the CRM's Marketo id);
/// - the linked pair agrees on every mapped field (compared in the mapping's canonical form);
/// - no CRM record is linked to two live leads in the store;
/// - every recorded conflict was settled by the policy the mapping gives its field.
async fn check_leads(
    run: &Runner,
    mappings: &[LoadedMapping],
    contacts: &[LiveContact],
    probe: &dyn CrmProbe,
    violations: &mut Vec<String>,
) -> Result<(usize, usize), ConvergeError> {
    let Some(mapping) = mappings
        .iter()
        .find(|m| m.object == crate::engine::leads::LINK_OBJECT)
        .map(|m| &m.file)
    else {
        violations.push("no lead mapping".to_owned());
        return Ok((0, 0));
    };
    let email_steps = mapping
        .fields
        .iter()
        .find(|f| f.marketo.as_deref() == Some("email"))
        .map(|f| f.transform.clone())
        .unwrap_or_default();
    let canon_email = |t: &str| canonical(&email_steps, Value::Text(t.to_owned()));

    let leads = run.sim.leads();
    let mut by_email: BTreeMap<String, Vec<&Json>> = BTreeMap::new();
    for lead in &leads {
        let email = lead["email"].as_str().unwrap_or_default();
        by_email.entry(canon_email(email)).or_default().push(lead);
    }
    for (email, ls) in &by_email {
        if ls.len() > 1 {
            violations.push(format!(
                "{} live Marketo leads share the email {email:?}",
                ls.len()
            ));
        }
    }
    let mut c_by_email: BTreeMap<String, Vec<&LiveContact>> = BTreeMap::new();
    for c in contacts {
        c_by_email.entry(canon_email(&c.email)).or_default().push(c);
    }
    for (email, cs) in &c_by_email {
        if cs.len() > 1 {
            violations.push(format!(
                "{} live CRM contacts share the email {email:?}",
                cs.len()
            ));
        }
    }
    for (email, ls) in &by_email {
        let lead = ls[0];
        let lead_id = lead["id"].as_i64().unwrap_or_default().to_string();
        let Some(cs) = c_by_email.get(email) else {
            let link = run
                .store
                .links_by_marketo_keys(
                    crate::engine::leads::LINK_OBJECT,
                    std::slice::from_ref(&lead_id),
                )
                .await
                .ok()
                .and_then(|l| l.into_iter().next());
            let link = match link {
                Some(l) => format!(
                    "linked to contact {} (tombstone {:?}; {})",
                    l.crm_key,
                    l.tombstone.map(|t| (t.kind, t.side)),
                    probe.describe_contact(&l.crm_key).await
                ),
                None => "never linked".to_owned(),
            };
            violations.push(format!(
                "Marketo lead {lead_id} ({email}) has no live CRM contact; {link}"
            ));
            continue;
        };
        check_pair(mapping, lead, &lead_id, cs[0], email, violations);
    }
    for (email, cs) in &c_by_email {
        if !by_email.contains_key(email) {
            violations.push(format!(
                "CRM contact {} ({email}) has no live Marketo lead",
                cs[0].id
            ));
        }
    }
    check_lead_links(run, &leads, contacts, violations).await?;
    let conflicts = check_conflicts(run, mappings, violations).await?;
    let records = by_email
        .keys()
        .filter(|e| c_by_email.contains_key(*e))
        .count();
    Ok((conflicts, records))
}

/// Checks that a live lead and the live contact of its email point at each other and agree on
/// every mapped field.
fn check_pair(
    mapping: &crate::config::MappingFile,
    lead: &Json,
    lead_id: &str,
    c: &LiveContact,
    email: &str,
    violations: &mut Vec<String>,
) {
    let cid = &c.id;
    if c.marketo_id.as_deref() != Some(lead_id) {
        violations.push(format!(
            "contact {cid} ({email}) has marketo_id {:?}, not lead {lead_id}",
            c.marketo_id
        ));
    }
    if lead["crmContactId"].as_str() != Some(cid.as_str()) {
        violations.push(format!(
            "lead {lead_id} ({email}) has crmContactId {}, not contact {cid}",
            lead["crmContactId"]
        ));
    }
    for f in &mapping.fields {
        let (Some(m), Some(col)) = (f.marketo.as_deref(), f.crm.as_deref()) else {
            continue;
        };
        let crm_value = if m == "email" {
            Value::Text(c.email.clone())
        } else {
            match c.values.get(col) {
                Some(v) => v.clone(),
                None => continue,
            }
        };
        let marketo_value = if m == "unsubscribed" {
            Value::Bool(lead[m].as_bool().unwrap_or(false))
        } else {
            from_json(&lead[m])
        };
        let (a, b) = (
            canonical(&f.transform, marketo_value),
            canonical(&f.transform, crm_value),
        );
        if a != b {
            violations.push(format!(
                "lead {lead_id} and contact {cid} disagree on {m}: Marketo {a:?}, CRM {b:?}"
            ));
        }
    }
}

/// Checks the store's lead links: every live link pairs a live lead and a live contact (a live
/// lead linked to a soft-deleted contact loses the contact's partner: the reported class of
/// seed 30127), and no contact is linked to two live leads.
async fn check_lead_links(
    run: &Runner,
    leads: &[Json],
    contacts: &[LiveContact],
    violations: &mut Vec<String>,
) -> Result<(), ConvergeError> {
    let mut crm_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = run
            .store
            .links_page(crate::engine::leads::LINK_OBJECT, after.as_deref(), 500)
            .await
            .map_err(|source| ConvergeError::Store {
                seed: run.seed,
                source,
            })?;
        let Some(last) = page.last() else { break };
        after = Some(last.marketo_key.clone());
        for l in page.into_iter().filter(|l| l.tombstone.is_none()) {
            crm_keys.entry(l.crm_key).or_default().push(l.marketo_key);
        }
    }
    let live_leads: std::collections::BTreeSet<String> = leads
        .iter()
        .filter_map(|l| l["id"].as_i64())
        .map(|id| id.to_string())
        .collect();
    let live_contacts: std::collections::BTreeSet<&String> =
        contacts.iter().map(|c| &c.id).collect();
    for (crm_key, leads) in &crm_keys {
        for lead in leads {
            if !live_contacts.contains(crm_key) || !live_leads.contains(lead) {
                violations.push(format!(
                    "the live link of lead {lead} ({}) and contact {crm_key} ({}) names a deleted record",
                    if live_leads.contains(lead) { "live" } else { "gone" },
                    if live_contacts.contains(crm_key) { "live" } else { "deleted" },
                ));
            }
        }
        if leads.len() > 1 {
            violations.push(format!(
                "contact {crm_key} is linked to {} live leads: {}",
                leads.len(),
                leads.join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks that every recorded conflict was settled by its field's policy; returns how many
/// were recorded.
async fn check_conflicts(
    run: &Runner,
    mappings: &[LoadedMapping],
    violations: &mut Vec<String>,
) -> Result<usize, ConvergeError> {
    let conflicts =
        run.store
            .recent_conflicts(10_000)
            .await
            .map_err(|source| ConvergeError::Store {
                seed: run.seed,
                source,
            })?;
    for c in &conflicts {
        // Each object's conflicts are settled by its own mapping's policies.
        let Some(mapping) = mappings
            .iter()
            .find(|m| m.object == c.object)
            .map(|m| &m.file)
        else {
            violations.push(format!(
                "a conflict on {} of {} {} names no synced object",
                c.field, c.object, c.marketo_key
            ));
            continue;
        };
        let field = mapping.fields.iter().find(|f| {
            f.name.as_deref() == Some(c.field.as_str()) || f.marketo.as_deref() == Some(&c.field)
        });
        let policy = field.and_then(|f| f.policy).unwrap_or(mapping.policy);
        let expected = policy_name(policy);
        let winner_ok = match policy {
            Policy::CrmWins => c.winner == Side::Crm,
            Policy::MarketoWins => c.winner == Side::Marketo,
            Policy::NewestWins => true,
        };
        if c.policy != expected || !winner_ok {
            violations.push(format!(
                "conflict on {} of {} {} was settled by {} for {:?}, but its policy is {expected}",
                c.field, c.object, c.marketo_key, c.policy, c.winner
            ));
        }
    }
    Ok(conflicts.len())
}

/// Runs `seeds` schedules from `first_seed`, writing one line per seed (with its violations)
/// and a summary to `out`: the schedules run and converged, the faults and kills survived by
/// kind, and the violations. Returns true when every schedule converged.
///
/// # Errors
///
/// Returns [`ConvergeError`] when a schedule cannot be set up; writing to `out` failing is
/// reported as a set-up error of the seed.
pub async fn run_many(
    first_seed: u64,
    seeds: u64,
    options: &ConvergeOptions,
    out: &mut dyn std::io::Write,
) -> Result<bool, ConvergeError> {
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    let mut kills: BTreeMap<String, usize> = BTreeMap::new();
    let (mut violations, mut converged, mut cycles, mut stuck, mut restarted) = (0, 0, 0, 0, 0);
    for seed in first_seed..first_seed.saturating_add(seeds) {
        let w = |e: std::io::Error| ConvergeError::Setup {
            seed,
            what: format!("cannot write the report: {e}"),
        };
        // A stuck cycle fails its seed, not the run: the next seeds still play.
        let r = match run_schedule(seed, options).await {
            Ok(r) => r,
            Err(e @ ConvergeError::Stuck { .. }) => {
                writeln!(out, "seed {seed}: STUCK: {e}").map_err(w)?;
                stuck += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        writeln!(
            out,
            "seed {seed}: {} steps, {} faults, {} kills, {} cycles ({} failed), {} records, {} conflicts: {}",
            r.steps,
            r.faults,
            r.kills,
            r.cycles,
            r.failed_cycles,
            r.records,
            r.conflicts,
            if r.ok { "converged" } else { "FAILED" }
        )
        .map_err(w)?;
        for v in &r.violations {
            writeln!(out, "  violation: {v}").map_err(w)?;
        }
        for stop in &r.stuck_restarts {
            writeln!(out, "  {stop}").map_err(w)?;
        }
        restarted += r.stuck_restarts.len();
        let trace = std::env::var("MKSYNC_CONVERGE_TRACE").ok();
        if (!r.ok && trace.is_some()) || trace.as_deref() == Some("all") {
            for line in &r.trace {
                writeln!(out, "  {line}").map_err(w)?;
            }
        }
        for (kind, n) in r.faults_by_kind {
            *faults.entry(kind).or_default() += n;
        }
        for (kind, n) in r.kills_by_kind {
            *kills.entry(kind).or_default() += n;
        }
        violations += r.violations.len();
        cycles += r.cycles;
        converged += usize::from(r.ok);
    }
    let by_kind = |m: &BTreeMap<String, usize>| {
        let total: usize = m.values().sum();
        let parts: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
        if parts.is_empty() {
            total.to_string()
        } else {
            format!("{total} ({})", parts.join(", "))
        }
    };
    let engine = match &options.engine {
        EngineMode::InProcess => "engine in process",
        EngineMode::Process { .. } => "engine as a child process",
    };
    let text = format!(
        "{seeds} schedules ({engine}, {} crm), {cycles} cycles: {converged} converged\n\
         faults survived: {}\n\
         kills survived: {}\n\
         engine processes stuck at start-up and restarted: {restarted}\n\
         stuck cycles: {stuck}\n\
         violations: {violations}",
        options.crm.name(),
        by_kind(&faults),
        by_kind(&kills),
    );
    writeln!(out, "{text}").map_err(|e| ConvergeError::Setup {
        seed: first_seed,
        what: format!("cannot write the report: {e}"),
    })?;
    Ok(converged as u64 == seeds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::limiter::next_day_turn;
    use crate::store::Clock;
    use runner::Driver;
    use std::path::Path;
    use std::sync::atomic::Ordering;

    fn options() -> ConvergeOptions {
        ConvergeOptions::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checks_catch_unsynced_duplicated_and_disagreeing_records() {
        let mut rig = Rig::start(5, &options()).await.unwrap();
        let now = rig.crm_now();
        let mut values = Map::new();
        values.insert("email".into(), json!("only@example.com"));
        rig.run.sim.create_lead(values);
        for email in ["twice@example.com", "TWICE@example.com "] {
            rig.sql(
                "insert",
                format!("INSERT INTO contacts (email, first_name, updated_at) VALUES ('{email}', 'A', {now})"),
            )
            .await
            .unwrap();
        }
        let mut violations = Vec::new();
        check_invariants(&rig, &mut violations).await.unwrap();
        let all = violations.join("\n");
        assert!(
            all.contains("lead 1 (only@example.com) has no live CRM contact"),
            "{all}"
        );
        assert!(
            all.contains("2 live CRM contacts share the email \"twice@example.com\""),
            "{all}"
        );
        assert!(
            all.contains("CRM contact 1 (twice@example.com) has no live Marketo lead"),
            "{all}"
        );

        // Synced, then one side edited without a cycle: a disagreement.
        rig.sql(
            "dedupe",
            "UPDATE contacts SET deleted = TRUE WHERE id = 2".into(),
        )
        .await
        .unwrap();
        for _ in 0..2 {
            let c = rig.cycle(Watch::Nothing).await.unwrap();
            assert!(c.ran.is_ok(), "{}", c.ran);
        }
        let mut violations = Vec::new();
        check_invariants(&rig, &mut violations).await.unwrap();
        assert!(violations.is_empty(), "{violations:?}");
        rig.sql(
            "edit",
            format!("UPDATE contacts SET title = 'Boss', updated_at = {now} WHERE id = 1"),
        )
        .await
        .unwrap();
        check_invariants(&rig, &mut violations).await.unwrap();
        assert!(
            violations
                .iter()
                .any(|v| v.contains("disagree on title") && v.contains("\"Boss\"")),
            "{violations:?}"
        );
        rig.finish().await;
    }

    /// The store's links of every object, watermarks and ledger.
    async fn store_state(
        rig: &Rig,
    ) -> (Vec<crate::store::Link>, Vec<crate::store::Watermark>, usize) {
        let mut links = rig
            .all_links(crate::engine::leads::LINK_OBJECT)
            .await
            .unwrap();
        for o in objects::OBJECTS {
            links.extend(rig.all_links(o.name).await.unwrap());
        }
        let mut watermarks = rig.run.store.watermarks().await.unwrap();
        watermarks.sort_by(|a, b| {
            (a.system.as_str(), &a.object, &a.queue).cmp(&(b.system.as_str(), &b.object, &b.queue))
        });
        let errors = rig
            .run
            .store
            .list_errors(&crate::store::ErrorFilter {
                limit: 10_000,
                ..crate::store::ErrorFilter::default()
            })
            .await
            .unwrap()
            .len();
        (links, watermarks, errors)
    }

    fn commits(rig: &Rig) -> u32 {
        let Driver::InProcess(p) = &rig.run.driver else {
            unreachable!("in process");
        };
        p.commits.load(Ordering::SeqCst)
    }

    /// DESIGN section 4: one store commit per step. A lead step with every stage at work (a
    /// Marketo merge, a CRM merge into a contact never synced, a Marketo delete, new records on
    /// both sides) commits once; killed right after that commit's first store write, it leaves
    /// links, watermarks and ledger exactly as they were, and the restarted engine converges.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lead_step_commits_once_and_a_kill_at_its_commit_leaves_no_half_state() {
        let options = ConvergeOptions {
            schedule: Schedule::LeadsOnly,
            ..options()
        };
        let mut rig = Rig::start(7, &options).await.unwrap();
        let lead = |rig: &Rig, email: &str| {
            let mut values = Map::new();
            values.insert("email".into(), json!(email));
            rig.run.sim.create_lead(values)
        };
        let (a, b, gone) = (
            lead(&rig, "a@example.com"),
            lead(&rig, "b@example.com"),
            lead(&rig, "gone@example.com"),
        );
        let now = rig.crm_now();
        for email in ["c@example.com", "d@example.com"] {
            rig.sql(
                "insert",
                format!("INSERT INTO contacts (email, first_name, updated_at) VALUES ('{email}', 'A', {now})"),
            )
            .await
            .unwrap();
        }
        for _ in 0..2 {
            let c = rig.cycle(Watch::Nothing).await.unwrap();
            assert!(c.ran.is_ok(), "{}", c.ran);
        }
        let synced = store_state(&rig).await;
        assert_eq!(synced.0.len(), 5, "{:?}", synced.0);

        rig.run.sim.merge_leads(a, &[b]).unwrap();
        rig.run.sim.delete_lead(gone);
        lead(&rig, "new@example.com");
        let now = rig.crm_now();
        rig.sql(
            "edits",
            format!(
                "INSERT INTO contacts (email, first_name, updated_at) VALUES ('never@example.com', 'N', {now}); \
                 UPDATE contacts SET merged_into = (SELECT MAX(id) FROM contacts), deleted = TRUE, updated_at = {now} \
                 WHERE email = 'c@example.com'"
            ),
        )
        .await
        .unwrap();

        rig.run.arm_commit_abort(1);
        let at = commits(&rig);
        let c = rig.cycle(Watch::Nothing).await.unwrap();
        assert!(
            rig.run.disarm_commit_abort(),
            "no commit was aborted: {}",
            c.ran
        );
        assert!(
            matches!(&c.ran, Ran::Failed(m) if m.contains("killed")),
            "{}",
            c.ran
        );
        assert_eq!(
            commits(&rig) - at,
            1,
            "the killed cycle went on after its commit"
        );
        assert_eq!(
            store_state(&rig).await,
            synced,
            "the killed step left a half state"
        );

        rig.restart().await.unwrap();
        let at = commits(&rig);
        let c = rig.cycle(Watch::Nothing).await.unwrap();
        assert!(c.ran.is_ok(), "{}", c.ran);
        assert_eq!(
            commits(&rig) - at,
            1,
            "one cycle of leads, one store commit"
        );
        let after = store_state(&rig).await;
        assert_ne!(
            after.0, synced.0,
            "the re-run recorded the merges and deletes"
        );
        for _ in 0..3 {
            rig.cycle(Watch::Nothing).await.unwrap();
        }
        let mut violations = Vec::new();
        check_invariants(&rig, &mut violations).await.unwrap();
        assert!(violations.is_empty(), "{violations:?}");
        rig.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spent_simulator_quota_pauses_the_engine_until_the_day_turns() {
        let mut rig = Rig::start(6, &options()).await.unwrap();
        let c = rig.cycle(Watch::Nothing).await.unwrap();
        assert!(c.ran.is_ok(), "{}", c.ran);
        // Start just after a day turn, so that the harness's 30 s per cycle cannot carry the
        // simulator into the next Marketo day (and a fresh quota) before the paused cycle;
        // the sim clock follows the wall clock, and this once failed when run near 06:00 UTC.
        rig.run.turn_day(None).await.expect("turn the day");
        rig.run.sim.spend_daily_quota();
        let c = rig.cycle(Watch::Nothing).await.unwrap();
        let Ran::Paused { until, message } = c.ran else {
            panic!("not paused: {}", c.ran);
        };
        assert!(message.contains("607"), "{message}");
        let until = until.expect("a pause until the day turns");
        let Driver::InProcess(p) = &rig.run.driver else {
            unreachable!("in process");
        };
        assert_eq!(until, next_day_turn(p.clock.now()));
        // Still the same Marketo day: still paused.
        let c = rig.cycle(Watch::Nothing).await.unwrap();
        assert!(matches!(c.ran, Ran::Paused { .. }), "{}", c.ran);
        rig.run.turn_day(Some(until)).await.expect("turn the day");
        let c = rig.cycle(Watch::Nothing).await.unwrap();
        assert!(c.ran.is_ok(), "{}", c.ran);
        rig.finish().await;
    }

    /// CI failed three convergence tests run at 05:57-05:59 UTC: the sim clock follows the wall
    /// clock, and Marketo's day (America/Chicago) turned at 06:00 between the spent quota and
    /// the cycle that should have paused on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quota_spent_just_before_the_day_turns_still_pauses_the_cycle() {
        let mut rig = Rig::start(8, &options()).await.unwrap();
        let c = rig.cycle(Watch::Nothing).await.unwrap();
        assert!(c.ran.is_ok(), "{}", c.ran);
        let now = rig.run.sim.now();
        let left = next_day_turn(now) - now - chrono::TimeDelta::seconds(20);
        rig.run.sim.advance_clock(left.to_std().unwrap());
        let mut played = Played::new();
        let detail = spent_quota(&mut rig, &mut played).await.unwrap();
        assert!(played.cycle_errors.is_empty(), "{:?}", played.cycle_errors);
        assert!(detail.starts_with("paused:"), "{detail}");
        rig.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cycle_that_outlives_its_deadline_fails_the_seed_instead_of_hanging() {
        // No cycle ends within no time at all: the first check of the deadline stops it.
        let options = ConvergeOptions {
            cycle_deadline: Duration::ZERO,
            ..options()
        };
        let mut rig = Rig::start(7, &options).await.unwrap();
        let Err(error) = rig.cycle(Watch::Nothing).await else {
            panic!("the cycle ended within no time");
        };
        let ConvergeError::Stuck {
            seed,
            deadline,
            state,
            ..
        } = &error
        else {
            panic!("not stuck: {error}");
        };
        assert_eq!((*seed, *deadline), (7, Duration::ZERO));
        // The requests it made before the timer fired, as the simulator counted them (the
        // stopped cycle makes no more).
        match rig.run().sim.counters().calls_logged {
            0 => assert_eq!(state, "it made no simulator request"),
            n => assert!(
                state.starts_with(&format!("it made {n} simulator requests, the last: ")),
                "{state}"
            ),
        }
        assert!(
            error.to_string().starts_with(
                "seed 7: the cycle from simulator request 0 on did not end within 0 s"
            ),
            "{error}"
        );
        rig.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_seed_fails_alone_and_the_next_seeds_still_play() {
        let options = ConvergeOptions {
            cycle_deadline: Duration::ZERO,
            steps: 2,
            ..options()
        };
        let mut out = Vec::new();
        let all_converged = run_many(7, 2, &options, &mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!all_converged, "{out}");
        for seed in [7, 8] {
            assert!(
                out.contains(&format!("seed {seed}: STUCK: seed {seed}: the cycle from")),
                "{out}"
            );
        }
        assert!(
            out.contains("2 schedules (engine in process, sqlite crm), 0 cycles: 0 converged"),
            "{out}"
        );
        assert!(out.contains("\nstuck cycles: 2\n"), "{out}");
    }

    #[test]
    fn the_written_settings_load_with_the_short_retries() {
        let doc = json!({"objects": {"contacts": {"table": "contacts"}}});
        let start = chrono::DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sim = rt
            .block_on(Simulator::start(SimConfig {
                leads: 0,
                ..SimConfig::default()
            }))
            .unwrap();
        let text =
            settings_toml(&sim, ("sql", &doc), "sqlite:///tmp/x.db", start, &["leads"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.toml"), text).unwrap();
        let vars: HashMap<String, String> = [
            ("MKSYNC__MARKETO__CLIENT_SECRET".to_owned(), "s".to_owned()),
            (
                "MKSYNC__CRM__URL".to_owned(),
                "sqlite:///tmp/crm.db".to_owned(),
            ),
        ]
        .into();
        let (settings, problems) =
            crate::config::load_settings(&SettingsSource::new(dir.path(), None).with_vars(vars));
        let settings = settings.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(settings.marketo.base_url, Some(sim.base_url()));
        assert_eq!(
            settings.marketo.retry_policy().rate_limit_wait,
            Duration::from_millis(5)
        );
        assert_eq!(settings.sync.objects, vec!["leads".to_owned()]);
        assert_eq!(settings.bootstrap.low_watermarks["leads"], start);
        assert_eq!(settings.crm.options, doc);
    }
}
