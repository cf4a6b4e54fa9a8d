//! The convergence harness: seeded random schedules of edits on both sides, with faults injected
//! in the simulator and the CRM and cycles killed at random points, after which both sides must
//! agree.
//!
//! One schedule ([`run_schedule`]) starts a simulator, a SQLite demo CRM and a SQLite state store
//! in a temporary directory, then plays `steps` random steps drawn from a ChaCha8 generator seeded
//! with the schedule's seed:
//!
//! - Marketo user edits through [`SimHandle`]: create a lead, edit a mapped field, delete a lead,
//!   merge two leads;
//! - CRM user edits through raw SQL on the demo CRM (so the change feed sees them): insert a
//!   contact, update a mapped column, soft-delete a contact, merge two contacts
//!   (`merged_into` + soft delete), and a conversion (a CRM lead row converted into a contact
//!   whose email Marketo already holds);
//! - conflicting edits: the same mapped field edited on both sides between two cycles;
//! - faults: a simulator fault profile (throttling, 5xx, time-outs, truncated and 404 bulk
//!   downloads, dropped connections), expired tokens, a spent daily quota followed by the clock
//!   moving past the Marketo day turn, and the CRM database locked by another connection during
//!   a cycle (writes fail as they do when the connection is lost);
//! - kills: a cycle whose state commit is aborted, or whose cancellation token fires after a
//!   random number of simulator requests; both followed by a restart (a new [`Engine`] with a new
//!   Marketo client on the same store and CRM);
//! - cycles.
//!
//! Then faults are cleared and quiet cycles run until two in a row write nothing (at most 10),
//! and the invariants are checked (see `check_invariants`). The number of kills can differ by
//! one or two between runs of one seed: a cancelled cycle may finish before its cancel point. The engine is also rebuilt before
//! its client's 100-calls-per-20-s window would make the run wait in real time; that restart is
//! not counted as a kill.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use chrono::Utc;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use secrecy::SecretString;
use serde_json::{Map, Value as Json, json};
use tokio_util::sync::CancellationToken;

use crate::config::{DeletePolicy, LoadedMapping, Policy, Settings, load_mappings};
use crate::crm::sql::dialect::SqlPool;
use crate::crm::{Crm, registry};
use crate::engine::{Context, CycleOptions, CycleSummary, Engine, EngineError, Runner, Tunables};
use crate::marketo::{Client, ClientConfig};
use crate::model::{Side, Value};
use crate::sim::{FaultKind, FaultProfile, FaultRule, SimConfig, SimHandle, Simulator, demo_crm};
use crate::store::{self, Clock, CommitHook, ManualClock, OpenOptions, StateStore, StoreError};

/// A failure to set up or run a schedule (not a violated invariant: those are in the report).
#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    /// A part could not be started (simulator, CRM, store, mappings, client).
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

/// How to run schedules.
#[derive(Debug, Clone)]
pub struct ConvergeOptions {
    /// The config directory whose `mappings/leads.toml` is used.
    pub config_dir: PathBuf,
    /// Steps per schedule.
    pub steps: usize,
    /// Inject faults (simulator faults, expired tokens, spent quotas, CRM locks).
    pub faults: bool,
    /// Kill cycles and restart the engine.
    pub kills: bool,
}

/// What one schedule did and whether both sides agreed afterwards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConvergenceReport {
    /// The seed.
    pub seed: u64,
    /// Steps played.
    pub steps: usize,
    /// Faults injected (simulator profiles, expired tokens, spent quotas, CRM locks).
    pub faults: usize,
    /// Cycles killed (commit aborted or cancelled mid-way) and restarted.
    pub kills: usize,
    /// Cycles run (including failed and killed ones and the quiet ones).
    pub cycles: usize,
    /// Cycles that ended in an error (faults, kills, pauses), all survived by later cycles.
    pub failed_cycles: usize,
    /// Linked lead and contact pairs alive at the end.
    pub records: usize,
    /// Conflicts recorded by the engine.
    pub conflicts: usize,
    /// True when no invariant was violated.
    pub ok: bool,
    /// Each violated invariant, one sentence each.
    pub violations: Vec<String>,
    /// The steps played, one line each (to reproduce a failure).
    pub trace: Vec<String>,
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

struct Rig {
    seed: u64,
    sim: SimHandle,
    crm: Arc<dyn Crm>,
    user: SqlPool,
    locker: SqlPool,
    store: Arc<dyn StateStore>,
    clock: Arc<ManualClock>,
    settings: Settings,
    mappings: Vec<LoadedMapping>,
    engine: Engine,
    engine_calls_at: u64,
    abort_commits: Arc<AtomicU32>,
    killed: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

fn client_for(sim: &SimHandle) -> Result<Client, String> {
    let mut cfg = ClientConfig::new(
        sim.base_url()
            .parse()
            .map_err(|e| format!("sim url: {e}"))?,
        sim.credentials().0,
        sim.credentials().1,
    );
    cfg.calls_per_20s = 100;
    cfg.max_concurrency = 10;
    cfg.daily_call_budget = 1_000_000;
    cfg.retry.min_delay = Duration::from_millis(1);
    cfg.retry.max_delay = Duration::from_millis(5);
    cfg.retry.rate_limit_wait = Duration::from_millis(5);
    Client::new(cfg).map_err(|e| format!("client: {e}"))
}

impl Rig {
    async fn start(seed: u64, config_dir: &Path) -> Result<Rig, ConvergeError> {
        let setup = |what: String| ConvergeError::Setup { seed, what };
        let dir = tempfile::tempdir().map_err(|e| setup(format!("temp dir: {e}")))?;
        let sim = Simulator::start(SimConfig {
            seed,
            leads: 0,
            export_delay: Duration::ZERO,
            import_delay: Duration::ZERO,
            ..SimConfig::default()
        })
        .await
        .map_err(|e| setup(format!("simulator: {e}")))?;
        let crm_url = format!("sqlite://{}", dir.path().join("crm.db").display());
        demo_crm::install(&crm_url, seed, 0)
            .await
            .map_err(|e| setup(format!("demo crm: {e}")))?;
        let crm_options = demo_crm::adapter_options(true, false);
        let crm = registry::build("sql", &SecretString::from(crm_url.clone()), &crm_options)
            .await
            .map_err(|e| setup(format!("crm adapter: {e}")))?;
        let user = SqlPool::connect(&crm_url, 1, false)
            .await
            .map_err(|e| setup(format!("crm user pool: {e}")))?;
        let locker = SqlPool::connect(&crm_url, 1, false)
            .await
            .map_err(|e| setup(format!("crm lock pool: {e}")))?;
        let clock = Arc::new(ManualClock::new(sim.now().max(Utc::now())));
        let abort_commits = Arc::new(AtomicU32::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let (a, k) = (abort_commits.clone(), killed.clone());
        // Aborts the N-th commit from now (a process killed between writing both sides and
        // recording it).
        let hook: CommitHook = Arc::new(move || {
            let (a, k) = (a.clone(), k.clone());
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
        });
        let store_url = format!("sqlite://{}", dir.path().join("state.db").display());
        let store = store::open_with(
            &store_url,
            OpenOptions {
                clock: clock.clone(),
                commit_hook: Some(hook),
                ..OpenOptions::default()
            },
        )
        .await
        .map_err(|e| setup(format!("store: {e}")))?;

        let mut settings = Settings::default();
        settings.marketo.base_url = Some(sim.base_url());
        settings.marketo.client_id = Some(sim.credentials().0);
        settings.marketo.client_secret = Some(sim.credentials().1);
        settings.marketo.daily_call_budget = 10_000;
        settings.marketo.calls_per_20s = 100;
        settings.marketo.max_concurrency = 10;
        settings.crm.url = Some(SecretString::from(crm_url));
        settings.crm.options = crm_options;
        settings.sync.objects = vec!["leads".into()];
        settings.sync.lead_deletes = DeletePolicy::Delete;
        settings.sync.lead_merges = DeletePolicy::Delete;
        settings
            .bootstrap
            .low_watermarks
            .insert("leads".into(), sim.now() - chrono::Duration::minutes(1));
        let (mappings, problems) = load_mappings(config_dir, &settings);
        if let Some(p) = problems.iter().find(|p| p.is_error()) {
            return Err(setup(format!("mappings: {p}")));
        }
        if mappings.is_empty() {
            return Err(setup(format!(
                "no lead mapping under {}",
                config_dir.join("mappings").display()
            )));
        }
        let engine =
            Self::engine(&sim, &settings, &mappings, &crm, &store, &clock).map_err(setup)?;
        Ok(Rig {
            seed,
            sim,
            crm,
            user,
            locker,
            store,
            clock,
            settings,
            mappings,
            engine,
            engine_calls_at: 0,
            abort_commits,
            killed,
            _dir: dir,
        })
    }

    fn engine(
        sim: &SimHandle,
        settings: &Settings,
        mappings: &[LoadedMapping],
        crm: &Arc<dyn Crm>,
        store: &Arc<dyn StateStore>,
        clock: &Arc<ManualClock>,
    ) -> Result<Engine, String> {
        let ctx = Context::new(
            settings.clone(),
            mappings.to_vec(),
            client_for(sim)?,
            crm.clone(),
            store.clone(),
            clock.clone(),
        );
        Ok(Engine::with_tunables(ctx, Tunables::default()))
    }

    /// Replaces the engine (a process restart on the same store and CRM).
    fn restart(&mut self) -> Result<(), ConvergeError> {
        self.engine = Self::engine(
            &self.sim,
            &self.settings,
            &self.mappings,
            &self.crm,
            &self.store,
            &self.clock,
        )
        .map_err(|what| ConvergeError::Setup {
            seed: self.seed,
            what,
        })?;
        self.engine_calls_at = self.sim.counters().calls_logged;
        Ok(())
    }

    /// Moves both clocks forward by a cycle interval, the engine's never behind the simulator's.
    fn tick(&self) {
        self.sim.advance_clock(Duration::from_secs(30));
        let sim = self.sim.now();
        if sim > self.clock.now() {
            self.clock.set(sim);
        }
    }

    /// Runs one cycle; `cancel_after` cancels it once the simulator has logged that many more
    /// requests.
    async fn cycle(&mut self, cancel_after: Option<u64>) -> Result<CycleSummary, EngineError> {
        if self.sim.counters().calls_logged - self.engine_calls_at > 60 {
            // Keeps the client's 20-second window from making the run wait in real time.
            let _ = self.restart();
        }
        self.tick();
        let cancel = CancellationToken::new();
        let options = CycleOptions::default();
        let Some(after) = cancel_after else {
            return self.engine.run_one_cycle(&options, &cancel).await;
        };
        let start = self.sim.counters().calls_logged;
        let cycle = self.engine.run_one_cycle(&options, &cancel);
        tokio::pin!(cycle);
        loop {
            tokio::select! {
                r = &mut cycle => break r,
                () = tokio::time::sleep(Duration::from_millis(1)) => {
                    if self.sim.counters().calls_logged >= start + after {
                        cancel.cancel();
                    }
                }
            }
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
                    "SELECT CAST(id AS TEXT), email, marketo_id, CAST(do_not_email AS TEXT), {cols} FROM contacts WHERE deleted = 0 ORDER BY id"
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

const NOW: &str = "strftime('%Y-%m-%d %H:%M:%f','now')";

fn quote(text: &str) -> String {
    text.replace('\'', "''")
}

#[derive(Default)]
struct Tally {
    failed: usize,
    faults: usize,
    kills: usize,
    cycles: usize,
}

/// Runs one seeded schedule and returns its report.
///
/// # Errors
///
/// Returns [`ConvergeError`] when the set-up fails or a user edit on the CRM cannot be made;
/// sync failures are not errors (they are faults the schedule survives or violations).
pub async fn run_schedule(
    seed: u64,
    options: &ConvergeOptions,
) -> Result<ConvergenceReport, ConvergeError> {
    let mut rig = Rig::start(seed, &options.config_dir).await?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let mut next_email = 0u32;
    let mut fresh_email = |rng: &mut ChaCha8Rng| {
        next_email += 1;
        // Mixed case and padding: the email transform (trim, lowercase) must match them.
        if rng.random_bool(0.2) {
            format!(" U{next_email}.S{seed}@Example.com")
        } else {
            format!("u{next_email}.s{seed}@example.com")
        }
    };
    let mut cycle_errors: Vec<String> = Vec::new();
    let mut trace: Vec<String> = Vec::new();
    for step in 0..options.steps {
        let mut roll = rng.random_range(0..100u32);
        if (!options.faults && (68..=82).contains(&roll))
            || (!options.kills && (83..=89).contains(&roll))
        {
            roll = 99;
        }
        let (n_leads, n_contacts) = (rig.sim.counters().leads, rig.live_contacts().await?.len());
        trace.push(format!(
            "step {step}: {} ({n_leads} leads, {n_contacts} contacts before)",
            step_name(roll)
        ));
        let mut detail = String::new();
        let leads = rig.sim.leads();
        let contacts = rig.live_contacts().await?;
        let word = |rng: &mut ChaCha8Rng| {
            format!(
                "{}{}",
                WORDS[rng.random_range(0..WORDS.len())],
                rng.random_range(0..100)
            )
        };
        match roll {
            // Marketo: create a lead.
            0..=11 => {
                let email = fresh_email(&mut rng);
                let mut values = Map::new();
                values.insert("email".into(), json!(email));
                values.insert("firstName".into(), json!(word(&mut rng)));
                values.insert("lastName".into(), json!(word(&mut rng)));
                detail = format!("lead {} {email:?}", rig.sim.create_lead(values));
            }
            // CRM: insert a contact.
            12..=22 => {
                let email = fresh_email(&mut rng);
                let (f, l) = (word(&mut rng), word(&mut rng));
                detail = format!("{email:?}");
                rig.sql(
                    "insert contact",
                    format!(
                        "INSERT INTO contacts (email, first_name, last_name, updated_at) VALUES ('{}', '{}', '{}', {NOW})",
                        quote(&email),
                        quote(&f),
                        quote(&l)
                    ),
                )
                .await?;
            }
            // Marketo: edit a mapped field.
            23..=32 if !leads.is_empty() => {
                let lead = &leads[rng.random_range(0..leads.len())];
                let (field, _) = EDITABLE[rng.random_range(0..EDITABLE.len())];
                let mut values = Map::new();
                if rng.random_bool(0.15) {
                    values.insert("unsubscribed".into(), json!(rng.random_bool(0.5)));
                } else {
                    values.insert(field.into(), json!(word(&mut rng)));
                }
                if let Some(id) = lead["id"].as_i64() {
                    detail = format!("lead {id} {values:?}");
                    let _ = rig.sim.update_lead(id, values);
                }
            }
            // CRM: update a mapped column.
            33..=42 if !contacts.is_empty() => {
                let c = &contacts[rng.random_range(0..contacts.len())];
                let id = c[0].clone().unwrap_or_default();
                let (_, column) = EDITABLE[rng.random_range(0..EDITABLE.len())];
                detail = format!("contact {id} {column}");
                rig.sql(
                    "update contact",
                    format!(
                        "UPDATE contacts SET {column} = '{}', updated_at = {NOW} WHERE id = {id}",
                        quote(&word(&mut rng))
                    ),
                )
                .await?;
            }
            // A conflict: the same field on both sides between two cycles.
            43..=50 => {
                let linked: Vec<&Vec<Option<String>>> =
                    contacts.iter().filter(|c| c[2].is_some()).collect();
                if linked.is_empty() {
                    continue;
                }
                let c = linked[rng.random_range(0..linked.len())];
                let (id, mid) = (c[0].clone().unwrap_or_default(), c[2].clone());
                let Some(mid) = mid.and_then(|m| m.parse::<i64>().ok()) else {
                    continue;
                };
                let (field, column) = EDITABLE[rng.random_range(0..EDITABLE.len())];
                let mut values = Map::new();
                values.insert(field.into(), json!(word(&mut rng)));
                detail = format!("lead {mid} / contact {id} {field}");
                let _ = rig.sim.update_lead(mid, values);
                rig.sql(
                    "conflicting update",
                    format!(
                        "UPDATE contacts SET {column} = '{}', updated_at = {NOW} WHERE id = {id}",
                        quote(&word(&mut rng))
                    ),
                )
                .await?;
            }
            // Marketo: delete a lead.
            51..=54 if !leads.is_empty() => {
                if let Some(id) = leads[rng.random_range(0..leads.len())]["id"].as_i64() {
                    detail = format!("lead {id}");
                    rig.sim.delete_lead(id);
                }
            }
            // CRM: soft-delete a contact.
            55..=58 if !contacts.is_empty() => {
                let id = contacts[rng.random_range(0..contacts.len())][0]
                    .clone()
                    .unwrap_or_default();
                detail = format!("contact {id}");
                rig.sql(
                    "delete contact",
                    format!("UPDATE contacts SET deleted = 1, updated_at = {NOW} WHERE id = {id}"),
                )
                .await?;
            }
            // Marketo: merge two leads.
            59..=61 if leads.len() >= 2 => {
                let a = rng.random_range(0..leads.len());
                let b = (a + 1 + rng.random_range(0..leads.len() - 1)) % leads.len();
                if let (Some(w), Some(l)) = (leads[a]["id"].as_i64(), leads[b]["id"].as_i64()) {
                    detail = format!("loser lead {l} into winner {w}");
                    let _ = rig.sim.merge_leads(w, &[l]);
                }
            }
            // CRM: merge two contacts.
            62..=63 if contacts.len() >= 2 => {
                let a = rng.random_range(0..contacts.len());
                let b = (a + 1 + rng.random_range(0..contacts.len() - 1)) % contacts.len();
                let (w, l) = (
                    contacts[a][0].clone().unwrap_or_default(),
                    contacts[b][0].clone().unwrap_or_default(),
                );
                detail = format!("loser contact {l} into winner {w}");
                rig.sql(
                    "merge contacts",
                    format!(
                        "UPDATE contacts SET merged_into = {w}, deleted = 1, updated_at = {NOW} WHERE id = {l}"
                    ),
                )
                .await?;
            }
            // A conversion: a CRM lead becomes a contact whose email Marketo already holds
            // (created there since the last cycle), so the two must be linked, not duplicated.
            64..=67 => {
                let email = fresh_email(&mut rng);
                let mut values = Map::new();
                values.insert("email".into(), json!(email.trim().to_lowercase()));
                values.insert("firstName".into(), json!(word(&mut rng)));
                detail = format!("lead {} {email:?}", rig.sim.create_lead(values));
                let last = word(&mut rng);
                rig.sql(
                    "convert lead",
                    format!(
                        "INSERT INTO leads (email, last_name, updated_at) VALUES ('{e}', '{l}', {NOW}); \
                         INSERT INTO contacts (email, last_name, updated_at) VALUES ('{e}', '{l}', {NOW}); \
                         UPDATE leads SET converted_contact_id = (SELECT MAX(id) FROM contacts) WHERE id = (SELECT MAX(id) FROM leads)",
                        e = quote(&email),
                        l = quote(&last)
                    ),
                )
                .await?;
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
                rig.sim.set_faults(FaultProfile {
                    rules: vec![FaultRule {
                        route: route.into(),
                        kind,
                        rate: rng.random_range(0.05..0.3),
                        delay_ms: 0,
                    }],
                });
                tally.faults += 1;
            }
            // Expired tokens.
            76..=78 => {
                rig.sim.expire_tokens();
                tally.faults += 1;
            }
            // The daily quota spent: the cycle pauses, then the day turns.
            79..=80 => {
                let day = store::marketo_day(rig.clock.now());
                let budget = u64::from(rig.settings.marketo.daily_call_budget);
                let _ = rig.store.add_api_usage(day, budget, 0).await;
                tally.faults += 1;
                tally.cycles += 1;
                match rig.cycle(None).await {
                    Err(EngineError::Paused {
                        until: Some(until), ..
                    }) => {
                        let by = (until - rig.sim.now()).num_seconds().max(0) as u64 + 5;
                        rig.sim.advance_clock(Duration::from_secs(by));
                        rig.clock.set(until + chrono::Duration::seconds(5));
                    }
                    other => cycle_errors.push(format!(
                        "a spent daily quota did not pause the cycle: {:?}",
                        other.map(|s| s.objects.len())
                    )),
                }
            }
            // The CRM database locked by another connection during a cycle.
            81..=82 => {
                tally.faults += 1;
                let locked = rig
                    .locker
                    .execute_raw("lock", "BEGIN IMMEDIATE".into())
                    .await
                    .is_ok();
                tally.cycles += 1;
                if rig.cycle(None).await.is_err() {
                    tally.failed += 1;
                }
                if locked {
                    let _ = rig.locker.execute_raw("unlock", "ROLLBACK".into()).await;
                }
            }
            // A kill: the n-th commit of the cycle aborted, then a restart.
            83..=86 => {
                rig.abort_commits
                    .store(rng.random_range(1..4), Ordering::SeqCst);
                rig.killed.store(false, Ordering::SeqCst);
                tally.cycles += 1;
                if rig.cycle(None).await.is_err() {
                    tally.failed += 1;
                }
                rig.abort_commits.store(0, Ordering::SeqCst);
                if rig.killed.load(Ordering::SeqCst) {
                    tally.kills += 1;
                }
                rig.restart()?;
            }
            // A kill: the cycle cancelled after some simulator requests, then a restart.
            87..=89 => {
                let after = rng.random_range(1..12);
                tally.cycles += 1;
                match rig.cycle(Some(after)).await {
                    Err(EngineError::Cancelled) => {
                        tally.kills += 1;
                        tally.failed += 1;
                    }
                    Err(_) => tally.failed += 1,
                    Ok(_) => {}
                }
                rig.restart()?;
            }
            // A cycle, after which the simulator faults are cleared.
            _ => {
                tally.cycles += 1;
                if rig.cycle(None).await.is_err() {
                    tally.failed += 1;
                }
                rig.sim.set_faults(FaultProfile::none());
            }
        }
        if !detail.is_empty()
            && let Some(line) = trace.last_mut()
        {
            line.push_str(": ");
            line.push_str(&detail);
        }
    }

    // The quiet period.
    rig.sim.set_faults(FaultProfile::none());
    rig.abort_commits.store(0, Ordering::SeqCst);
    let mut quiet = 0;
    for _ in 0..10 {
        tally.cycles += 1;
        match rig.cycle(None).await {
            Ok(s) if written(&s) == 0 && s.failed() == 0 => {
                quiet += 1;
                if quiet == 2 {
                    break;
                }
            }
            Ok(_) => quiet = 0,
            Err(e) => {
                tally.failed += 1;
                quiet = 0;
                cycle_errors.push(format!("a quiet-period cycle failed: {e}"));
            }
        }
    }
    let mut violations = Vec::new();
    if quiet < 2 {
        violations
            .push("no two consecutive quiet cycles after the schedule (at most 10 run)".to_owned());
        violations.extend(cycle_errors.iter().rev().take(3).cloned());
    } else {
        violations.extend(
            cycle_errors
                .iter()
                .filter(|e| e.starts_with("a spent daily quota"))
                .cloned(),
        );
    }
    let (conflicts, records) = check_invariants(&rig, &mut violations).await?;
    rig.user.close().await;
    rig.locker.close().await;
    rig.sim.shutdown().await;
    Ok(ConvergenceReport {
        seed,
        steps: options.steps,
        faults: tally.faults,
        kills: tally.kills,
        cycles: tally.cycles,
        failed_cycles: tally.failed,
        records,
        conflicts,
        ok: violations.is_empty(),
        violations,
        trace,
    })
}

fn step_name(roll: u32) -> &'static str {
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
        81..=82 => "crm locked",
        83..=86 => "kill at commit",
        87..=89 => "kill by cancel",
        _ => "cycle",
    }
}

/// Returns the records written (created, updated, deleted) in a summary.
fn written(s: &CycleSummary) -> u64 {
    s.objects
        .values()
        .flat_map(|d| d.values())
        .map(|c| c.created + c.updated + c.deleted)
        .sum()
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

/// Checks the invariants after the quiet period and returns the number of recorded conflicts
/// and of linked pairs.
///
/// - no two live leads, and no two live contacts, share an email (canonical form);
/// - every live lead is linked to exactly one live contact with its email and vice versa, and
///   the keys point at each other (`crmContactId`, `marketo_id`);
/// - the linked pair agrees on every mapped field (compared in the mapping's canonical form);
/// - no CRM record is linked to two live leads in the store;
/// - every recorded conflict was settled by the policy the mapping gives its field.
async fn check_invariants(
    rig: &Rig,
    violations: &mut Vec<String>,
) -> Result<(usize, usize), ConvergeError> {
    use std::collections::BTreeMap;
    let mapping = &rig.mappings[0].file;
    let email_steps = mapping
        .fields
        .iter()
        .find(|f| f.marketo.as_deref() == Some("email"))
        .map(|f| f.transform.clone())
        .unwrap_or_default();
    let canon_email = |t: &str| canonical(&email_steps, Value::Text(t.to_owned()));

    let leads = rig.sim.leads();
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
    let contacts = rig.live_contacts().await?;
    let mut c_by_email: BTreeMap<String, Vec<&Vec<Option<String>>>> = BTreeMap::new();
    for c in &contacts {
        c_by_email
            .entry(canon_email(c[1].as_deref().unwrap_or_default()))
            .or_default()
            .push(c);
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
            let link = rig
                .store
                .links_by_marketo_keys(
                    crate::engine::leads::LINK_OBJECT,
                    std::slice::from_ref(&lead_id),
                )
                .await
                .ok()
                .and_then(|l| l.into_iter().next());
            let link = match link {
                Some(l) => {
                    let row = match l.crm_key.parse::<i64>() {
                        Ok(id) => rig
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
                    format!(
                        "linked to contact {} (tombstone {:?}; contact email, deleted, merged_into, marketo_id: {row:?})",
                        l.crm_key,
                        l.tombstone.map(|t| (t.kind, t.side))
                    )
                }
                None => "never linked".to_owned(),
            };
            violations.push(format!(
                "Marketo lead {lead_id} ({email}) has no live CRM contact; {link}"
            ));
            continue;
        };
        let c = cs[0];
        let cid = c[0].clone().unwrap_or_default();
        if c[2].as_deref() != Some(lead_id.as_str()) {
            violations.push(format!(
                "contact {cid} ({email}) has marketo_id {:?}, not lead {lead_id}",
                c[2]
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
            let crm_value = match col {
                "email" => Value::Text(c[1].clone().unwrap_or_default()),
                "do_not_email" => bool_text(c[3].as_deref()),
                _ => match EDITABLE.iter().position(|(_, cc)| *cc == col) {
                    Some(i) => c[4 + i].clone().map(Value::Text).unwrap_or(Value::Null),
                    None => continue,
                },
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
    for (email, cs) in &c_by_email {
        if !by_email.contains_key(email) {
            violations.push(format!(
                "CRM contact {} ({email}) has no live Marketo lead",
                cs[0][0].clone().unwrap_or_default()
            ));
        }
    }
    // No CRM record is linked to two live Marketo leads.
    let mut crm_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = rig
            .store
            .links_page(crate::engine::leads::LINK_OBJECT, after.as_deref(), 500)
            .await
            .map_err(|source| ConvergeError::Store {
                seed: rig.seed,
                source,
            })?;
        let Some(last) = page.last() else { break };
        after = Some(last.marketo_key.clone());
        for l in page.into_iter().filter(|l| l.tombstone.is_none()) {
            crm_keys.entry(l.crm_key).or_default().push(l.marketo_key);
        }
    }
    for (crm_key, leads) in &crm_keys {
        if leads.len() > 1 {
            violations.push(format!(
                "contact {crm_key} is linked to {} live leads: {}",
                leads.len(),
                leads.join(", ")
            ));
        }
    }
    let conflicts =
        rig.store
            .recent_conflicts(10_000)
            .await
            .map_err(|source| ConvergeError::Store {
                seed: rig.seed,
                source,
            })?;
    for c in &conflicts {
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
                "conflict on {} of lead {} was settled by {} for {:?}, but its policy is {expected}",
                c.field, c.marketo_key, c.policy, c.winner
            ));
        }
    }
    let records = by_email
        .keys()
        .filter(|e| c_by_email.contains_key(*e))
        .count();
    Ok((conflicts.len(), records))
}

/// Runs `seeds` schedules from `first_seed`, writing one line per seed and a final line
/// ("N schedules, F faults, K kills survived, V violations") to `out`. Returns true when every
/// schedule converged.
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
    let (mut faults, mut kills, mut violations, mut ok) = (0, 0, 0, true);
    for seed in first_seed..first_seed.saturating_add(seeds) {
        let r = run_schedule(seed, options).await?;
        let w = |e: std::io::Error| ConvergeError::Setup {
            seed,
            what: format!("cannot write the report: {e}"),
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
        if !r.ok && std::env::var_os("MKSYNC_CONVERGE_TRACE").is_some() {
            for line in &r.trace {
                writeln!(out, "  {line}").map_err(w)?;
            }
        }
        faults += r.faults;
        kills += r.kills;
        violations += r.violations.len();
        ok &= r.ok;
    }
    writeln!(
        out,
        "{seeds} schedules, {faults} faults, {kills} kills survived, {violations} violations"
    )
    .map_err(|e| ConvergeError::Setup {
        seed: first_seed,
        what: format!("cannot write the report: {e}"),
    })?;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checks_catch_unsynced_duplicated_and_disagreeing_records() {
        let rig = Rig::start(5, &config_dir()).await.unwrap();
        let mut values = Map::new();
        values.insert("email".into(), json!("only@example.com"));
        rig.sim.create_lead(values);
        for email in ["twice@example.com", "TWICE@example.com "] {
            rig.sql(
                "insert",
                format!("INSERT INTO contacts (email, first_name, updated_at) VALUES ('{email}', 'A', {NOW})"),
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
        let mut rig = rig;
        rig.sql(
            "dedupe",
            "UPDATE contacts SET deleted = 1 WHERE id = 2".into(),
        )
        .await
        .unwrap();
        rig.cycle(None).await.unwrap();
        rig.cycle(None).await.unwrap();
        let mut violations = Vec::new();
        check_invariants(&rig, &mut violations).await.unwrap();
        assert!(violations.is_empty(), "{violations:?}");
        rig.sql(
            "edit",
            format!("UPDATE contacts SET title = 'Boss', updated_at = {NOW} WHERE id = 1"),
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
    }
}
