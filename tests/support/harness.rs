//! End-to-end harness: the Marketo simulator, the demo CRM, a state store and the engine, wired
//! together in code, with typed helpers to act as a user on either side and read both sides.
//!
//! Include it with `#[path = "support/harness.rs"] mod harness;`.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use marketo_sync::config::{DeletePolicy, LoadedMapping, Settings, load_mappings};
use marketo_sync::crm::sql::dialect::{Dialect, SqlPool};
use marketo_sync::crm::{Crm, CrmRecord, registry};
use marketo_sync::engine::{
    Context, CycleOptions, CycleSummary, Engine, EngineError, Runner, Tunables,
};
use marketo_sync::marketo::{Client, ClientConfig};
use marketo_sync::model::{Fields, Value};
use marketo_sync::sim::{SimConfig, SimHandle, Simulator, demo_crm};
use marketo_sync::store::{self, CommitHook, ManualClock, OpenOptions, StateStore};
use secrecy::SecretString;
use serde_json::{Map, json};
use tokio_util::sync::CancellationToken;

/// Which database holds the demo CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrmKind {
    /// A SQLite temp file.
    Sqlite,
    /// A fresh PostgreSQL database (`PG_TEST_URL`).
    Postgres,
    /// A fresh MariaDB database (`MYSQL_TEST_URL`).
    MariaDb,
}

/// Which database holds the state store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// A SQLite temp file.
    Sqlite,
    /// A fresh PostgreSQL database (`PG_TEST_URL`).
    Postgres,
}

/// How to build a [`TestApp`].
pub struct Options {
    pub crm: CrmKind,
    pub store: StoreKind,
    pub sim: SimConfig,
    pub lead_deletes: DeletePolicy,
    pub lead_merges: DeletePolicy,
    pub daily_call_budget: u32,
    pub tunables: Tunables,
    pub commit_hook: Option<CommitHook>,
    pub edit_mapping: Option<fn(&mut LoadedMapping)>,
    pub objects: Vec<String>,
    /// Runs the simulator on this runtime instead of the test's (a benchmark keeps its CPU
    /// apart from the engine's).
    pub sim_runtime: Option<tokio::runtime::Handle>,
}

impl Options {
    /// The defaults with this CRM (SQLite state store).
    pub fn on(crm: CrmKind) -> Options {
        Options {
            crm,
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            crm: CrmKind::Sqlite,
            store: StoreKind::Sqlite,
            sim: SimConfig {
                leads: 0,
                export_delay: Duration::ZERO,
                import_delay: Duration::ZERO,
                ..SimConfig::default()
            },
            lead_deletes: DeletePolicy::Delete,
            lead_merges: DeletePolicy::Flag,
            daily_call_budget: 10_000,
            tunables: Tunables::default(),
            commit_hook: None,
            edit_mapping: None,
            objects: vec!["leads".into()],
            sim_runtime: None,
        }
    }
}

fn pg_base() -> String {
    std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn mysql_base() -> String {
    std::env::var("MYSQL_TEST_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn with_database(base: &str, db: &str) -> String {
    let mut url = url::Url::parse(base).expect("test url");
    url.set_path(&format!("/{db}"));
    url.to_string()
}

async fn fresh_database(base: &str) -> (String, String) {
    let name = format!("mks_e2e_{}", uuid::Uuid::new_v4().simple());
    let admin = SqlPool::connect(base, 1, false)
        .await
        .expect("admin connection");
    admin
        .execute_raw("create db", format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    admin.close().await;
    (with_database(base, &name), name)
}

async fn drop_database(base: &str, name: &str, postgres: bool) {
    if let Ok(admin) = SqlPool::connect(base, 1, false).await {
        let force = if postgres { " WITH (FORCE)" } else { "" };
        let _ = admin
            .execute_raw("drop db", format!("DROP DATABASE {name}{force}"))
            .await;
        admin.close().await;
    }
}

/// A running end-to-end set-up.
pub struct TestApp {
    pub sim: SimHandle,
    pub engine: Engine,
    pub crm: Arc<dyn Crm>,
    pub user: SqlPool,
    pub store: Arc<dyn StateStore>,
    pub clock: Arc<ManualClock>,
    pub crm_url: String,
    dialect: Dialect,
    dbs: Vec<(String, String, bool)>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    /// Starts everything with default options.
    pub async fn start() -> TestApp {
        TestApp::with(Options::default()).await
    }

    /// Starts everything.
    pub async fn with(options: Options) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut dbs = Vec::new();
        let sim = match &options.sim_runtime {
            None => Simulator::start(options.sim).await,
            Some(rt) => rt
                .spawn(Simulator::start(options.sim))
                .await
                .expect("simulator start task"),
        }
        .expect("simulator");
        let crm_url = match options.crm {
            CrmKind::Sqlite => format!("sqlite://{}", dir.path().join("crm.db").display()),
            CrmKind::Postgres => {
                let (url, name) = fresh_database(&pg_base()).await;
                dbs.push((pg_base(), name, true));
                url
            }
            CrmKind::MariaDb => {
                let (url, name) = fresh_database(&mysql_base()).await;
                dbs.push((mysql_base(), name, false));
                url
            }
        };
        demo_crm::install(&crm_url, 7, 0).await.expect("demo crm");
        let crm_options = demo_crm::adapter_options(true, false);
        let crm = registry::build(
            "sql",
            Some(&SecretString::from(crm_url.clone())),
            &crm_options,
        )
        .await
        .expect("crm adapter");
        let user = SqlPool::connect(&crm_url, 1, false)
            .await
            .expect("user pool");
        let dialect = user.dialect();

        let clock = Arc::new(ManualClock::new(Utc::now()));
        let store_url = match options.store {
            StoreKind::Sqlite => format!("sqlite://{}", dir.path().join("state.db").display()),
            StoreKind::Postgres => {
                let (url, name) = fresh_database(&pg_base()).await;
                dbs.push((pg_base(), name, true));
                url
            }
        };
        let store = store::open_with(
            &store_url,
            OpenOptions {
                clock: clock.clone(),
                commit_hook: options.commit_hook,
                ..OpenOptions::default()
            },
        )
        .await
        .expect("store");

        let mut settings = Settings::default();
        settings.marketo.base_url = Some(sim.base_url());
        settings.marketo.client_id = Some(sim.credentials().0);
        settings.marketo.client_secret = Some(sim.credentials().1);
        settings.marketo.daily_call_budget = options.daily_call_budget;
        settings.marketo.calls_per_20s = 100;
        settings.marketo.max_concurrency = 10;
        settings.crm.url = Some(SecretString::from(crm_url.clone()));
        settings.crm.options = crm_options;
        settings.sync.objects = options.objects.clone();
        settings.sync.lead_deletes = options.lead_deletes;
        settings.sync.lead_merges = options.lead_merges;
        settings
            .bootstrap
            .low_watermarks
            .insert("leads".into(), sim.now() - chrono::Duration::minutes(1));
        let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let (mut mappings, problems) = load_mappings(&config_dir, &settings);
        assert!(
            options.objects.len() > 1 || problems.iter().all(|p| !p.is_error()),
            "mapping problems: {problems:?}"
        );
        if let Some(edit) = options.edit_mapping {
            for m in &mut mappings {
                edit(m);
            }
        }
        let mut cfg = ClientConfig::new(
            sim.base_url().parse().expect("sim url"),
            sim.credentials().0,
            sim.credentials().1,
        );
        cfg.calls_per_20s = 100;
        cfg.max_concurrency = 10;
        cfg.daily_call_budget = 1_000_000;
        let client = Client::new(cfg).expect("client");
        let ctx = Context::new(
            settings,
            mappings,
            client,
            crm.clone(),
            store.clone(),
            clock.clone(),
        );
        let engine = Engine::with_tunables(ctx, options.tunables);
        TestApp {
            sim,
            engine,
            crm,
            user,
            store,
            clock,
            crm_url,
            dialect,
            dbs,
            _dir: dir,
        }
    }

    /// Runs one cycle and returns its summary (panics on a cycle error).
    pub async fn run_cycle(&self) -> CycleSummary {
        self.try_cycle().await.expect("cycle")
    }

    /// Runs one cycle.
    pub async fn try_cycle(&self) -> Result<CycleSummary, EngineError> {
        self.sync_clock();
        self.engine
            .run_one_cycle(&CycleOptions::default(), &CancellationToken::new())
            .await
    }

    /// Runs one dry-run cycle.
    pub async fn dry_cycle(&self) -> CycleSummary {
        self.sync_clock();
        self.engine
            .run_one_cycle(&CycleOptions { dry_run: true }, &CancellationToken::new())
            .await
            .expect("dry cycle")
    }

    /// Moves the engine's clock up to the simulator's (never back).
    pub fn sync_clock(&self) {
        use marketo_sync::store::Clock;
        let sim = self.sim.now();
        if sim > self.clock.now() {
            self.clock.set(sim);
        }
    }

    /// Runs cycles until one writes nothing (at most `max`), returning the quiet one.
    pub async fn settle(&self, max: usize) -> CycleSummary {
        for _ in 0..max {
            let s = self.run_cycle().await;
            if written(&s) == 0 {
                return s;
            }
        }
        panic!("no quiet cycle after {max} cycles");
    }

    /// Creates a lead as a Marketo user.
    pub fn marketo_create(&self, values: serde_json::Value) -> i64 {
        self.sim.create_lead(as_map(values))
    }

    /// Edits a lead as a Marketo user.
    pub fn marketo_update(&self, id: i64, values: serde_json::Value) {
        self.sim
            .update_lead(id, as_map(values))
            .expect("lead exists");
    }

    /// Returns a lead with every field.
    pub fn marketo_lead(&self, id: i64) -> Option<serde_json::Value> {
        self.sim.lead(id)
    }

    /// Returns the ids of live leads with this email.
    pub fn marketo_by_email(&self, email: &str) -> Vec<i64> {
        self.sim.find_leads("email", email)
    }

    /// Returns the simulator's counted calls today.
    pub fn marketo_calls(&self) -> u64 {
        self.sim.counters().calls_today
    }

    fn now_sql(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f','now')",
            Dialect::Postgres => "CURRENT_TIMESTAMP",
            Dialect::MySql => "CURRENT_TIMESTAMP(6)",
        }
    }

    /// Inserts a contact as a CRM user and returns its id.
    pub async fn crm_insert_contact(&self, email: &str, first: &str, last: &str) -> String {
        let sql = format!(
            "INSERT INTO contacts (email, first_name, last_name, updated_at) VALUES ('{email}', '{first}', '{last}', {})",
            self.now_sql()
        );
        self.user
            .execute_raw("insert contact", sql)
            .await
            .expect("insert");
        let found = self.crm_by_email(email).await;
        found.last().expect("inserted contact").id.clone()
    }

    /// Sets one text column of a contact as a CRM user.
    pub async fn crm_update_contact(&self, id: &str, column: &str, value: &str) {
        let sql = format!(
            "UPDATE contacts SET {column} = '{value}', updated_at = {} WHERE id = {id}",
            self.now_sql()
        );
        self.user
            .execute_raw("update contact", sql)
            .await
            .expect("update");
    }

    /// Soft-deletes a contact as a CRM user.
    pub async fn crm_delete_contact(&self, id: &str) {
        let truth = if self.dialect == Dialect::Postgres {
            "TRUE"
        } else {
            "1"
        };
        let sql = format!(
            "UPDATE contacts SET deleted = {truth}, updated_at = {} WHERE id = {id}",
            self.now_sql()
        );
        self.user
            .execute_raw("delete contact", sql)
            .await
            .expect("delete");
    }

    /// Returns a live contact.
    pub async fn crm_contact(&self, id: &str) -> Option<CrmRecord> {
        self.crm
            .get("contacts", &[id.to_owned()])
            .await
            .expect("crm get")
            .into_iter()
            .next()
    }

    /// Returns the live contacts with this email.
    pub async fn crm_by_email(&self, email: &str) -> Vec<CrmRecord> {
        self.crm
            .find("contacts", "email", &[Value::Text(email.to_owned())])
            .await
            .expect("crm find")
    }

    /// Returns the number of live contacts.
    pub async fn crm_count(&self) -> usize {
        let rows = self
            .user
            .fetch(
                "count",
                if self.dialect == Dialect::MySql {
                    "SELECT CAST(COUNT(*) AS CHAR) FROM contacts WHERE deleted = FALSE".to_owned()
                } else {
                    "SELECT CAST(COUNT(*) AS TEXT) FROM contacts WHERE deleted = FALSE".to_owned()
                },
                &[],
            )
            .await
            .expect("count");
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Runs one statement on the CRM as a user (DDL, triggers, seed rows); panics naming it.
    pub async fn crm_exec(&self, sql: &str) {
        self.user
            .execute_raw("test", sql.to_owned())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Returns the open error-ledger entries of `object`.
    pub async fn open_errors(&self, object: &str) -> Vec<store::SyncError> {
        self.store
            .list_errors(&store::ErrorFilter {
                status: Some(store::ErrorStatus::Open),
                object: Some(object.to_owned()),
                limit: 1_000,
            })
            .await
            .expect("open ledger entries")
    }

    /// Stops the simulator and drops the fresh databases.
    pub async fn cleanup(self) {
        self.user.close().await;
        self.sim.shutdown().await;
        for (base, name, pg) in &self.dbs {
            drop_database(base, name, *pg).await;
        }
    }
}

/// Returns a text field of a CRM record.
pub fn text(fields: &Fields, name: &str) -> Option<String> {
    match fields.get(name)? {
        Value::Null => None,
        v => Some(v.to_text()),
    }
}

/// Returns the records written (created, updated, deleted) in a summary.
pub fn written(s: &CycleSummary) -> u64 {
    s.objects
        .values()
        .flat_map(|d| d.values())
        .map(|c| c.created + c.updated + c.deleted)
        .sum()
}

fn as_map(v: serde_json::Value) -> Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Returns a JSON object (shorthand).
pub fn obj(v: serde_json::Value) -> serde_json::Value {
    json!(v)
}

/// A commit hook that aborts every store commit while the returned flag is set (a process
/// killed between writing both sides and recording it), and the flag.
#[allow(dead_code)]
pub fn kill_switch() -> (
    Arc<std::sync::atomic::AtomicBool>,
    marketo_sync::store::CommitHook,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let kill = Arc::new(AtomicBool::new(false));
    let k = kill.clone();
    let hook: marketo_sync::store::CommitHook = Arc::new(move || {
        let k = k.clone();
        Box::pin(async move {
            if k.load(Ordering::SeqCst) {
                Err(marketo_sync::store::StoreError::Aborted {
                    reason: "killed".into(),
                })
            } else {
                Ok(())
            }
        })
    });
    (kill, hook)
}

/// The simulator requests logged after a sequence number: how many in all, and the counted ones
/// (those Marketo's limits count) by route family and by `METHOD path`.
#[allow(dead_code)]
pub struct CallTally {
    pub logged: usize,
    pub counted: u64,
    pub by_family: std::collections::BTreeMap<String, u64>,
    pub by_path: std::collections::BTreeMap<String, u64>,
}

#[allow(dead_code)]
impl TestApp {
    /// The last sequence number of the simulator's request log (0 when empty).
    pub fn log_mark(&self) -> u64 {
        log_mark(&self.sim)
    }

    /// Tallies the simulator requests logged after `mark` (see [`TestApp::log_mark`]).
    pub fn calls_since(&self, mark: u64) -> CallTally {
        calls_since(&self.sim, mark)
    }
}

/// The last sequence number of a Marketo simulator's request log (0 when empty).
pub fn log_mark(sim: &SimHandle) -> u64 {
    sim.request_log().last().map_or(0, |e| e.seq)
}

/// Tallies a Marketo simulator's requests logged after `mark` (see [`log_mark`]).
pub fn calls_since(sim: &SimHandle, mark: u64) -> CallTally {
    let log: Vec<_> = sim
        .request_log()
        .into_iter()
        .filter(|e| e.seq > mark)
        .collect();
    let mut tally = CallTally {
        logged: log.len(),
        counted: 0,
        by_family: std::collections::BTreeMap::new(),
        by_path: std::collections::BTreeMap::new(),
    };
    for e in log.iter().filter(|e| e.counted) {
        tally.counted += 1;
        *tally.by_family.entry(e.family.clone()).or_default() += 1;
        *tally
            .by_path
            .entry(format!("{} {}", e.method, e.path))
            .or_default() += 1;
    }
    tally
}
