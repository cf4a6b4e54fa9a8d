//! Activity queues at volume: Bulk Activity Extract instead of the activities feed (issue 15),
//! against the in-process Marketo simulator (exports complete at once: no waiting), the
//! activities table on SQLite and a SQLite state store. The engine's clock is a manual one set
//! to the simulator's time before each step.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Timelike;

use marketo_sync::config::{Settings, parse_mapping};
use marketo_sync::crm::sql::dialect::SqlPool;
use marketo_sync::crm::{Crm, registry};
use marketo_sync::engine::objects::{self, activities};
use marketo_sync::engine::{Context, CycleOptions, CycleSummary, EngineError};
use marketo_sync::mapping::{Plans, SchemaSet, compile_all};
use marketo_sync::marketo::{Client, ClientConfig};
use marketo_sync::model::Side;
use marketo_sync::sim::{FaultProfile, LogEntry, SimConfig, SimHandle, Simulator};
use marketo_sync::store::{
    self, Clock, Direction, JobDirection, ManualClock, OpenOptions, StateStore,
};
use secrecy::SecretString;
use serde_json::{Map, json};
use tokio_util::sync::CancellationToken;

/// The Visit Webpage activity type (the simulator's activities at volume).
const VISIT: u32 = 1;

struct Env {
    sim: SimHandle,
    ctx: Context,
    plans: Plans,
    db: SqlPool,
    clock: ManualClock,
    store: Arc<dyn StateStore>,
    leads: Vec<i64>,
    /// The PostgreSQL database of the CRM table, if not SQLite.
    crm_db: Option<String>,
    _dir: tempfile::TempDir,
}

impl Env {
    /// An environment whose queues switch to exports at `threshold` activities, at most every
    /// `every_secs`, with a daily bulk budget of `budget_mb`.
    async fn new(seed: u64, threshold: u64, every_secs: u64, budget_mb: u32) -> Env {
        Env::with_crm(seed, threshold, every_secs, budget_mb, None).await
    }

    /// As [`Env::new`], the CRM table in a fresh database of the PostgreSQL server at `pg` (a
    /// base URL) instead of SQLite.
    async fn with_crm(
        seed: u64,
        threshold: u64,
        every_secs: u64,
        budget_mb: u32,
        pg: Option<&str>,
    ) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut crm_db = None;
        let (crm_url, ddl) = match pg {
            None => (
                format!("sqlite://{}", dir.path().join("crm.db").display()),
                "CREATE TABLE marketing_activities (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 marketo_guid VARCHAR(64), kind VARCHAR(40), occurred_at DATETIME, \
                 marketo_lead_id INTEGER, contact_id VARCHAR(64), detail VARCHAR(255), \
                 marketo_id VARCHAR(64), \
                 updated_at DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')), \
                 deleted BOOLEAN NOT NULL DEFAULT 0); ",
            ),
            Some(base) => {
                let name = format!("mks_bulkact_{}", uuid::Uuid::new_v4().simple());
                let admin = SqlPool::connect(base, 1, false).await.unwrap();
                admin
                    .execute_raw("create db", format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap();
                admin.close().await;
                crm_db = Some(name.clone());
                let mut url = url::Url::parse(base).unwrap();
                url.set_path(&format!("/{name}"));
                (
                    url.to_string(),
                    "CREATE TABLE marketing_activities (id BIGSERIAL PRIMARY KEY, \
                     marketo_guid VARCHAR(64), kind VARCHAR(40), occurred_at TIMESTAMPTZ, \
                     marketo_lead_id BIGINT, contact_id VARCHAR(64), detail VARCHAR(255), \
                     marketo_id VARCHAR(64), updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
                     deleted BOOLEAN NOT NULL DEFAULT FALSE); ",
                )
            }
        };
        let db = SqlPool::connect(&crm_url, 1, false).await.unwrap();
        db.execute_raw(
            "activities table",
            format!(
                "{ddl}CREATE UNIQUE INDEX ux_ma_guid ON marketing_activities (marketo_guid); \
                 CREATE UNIQUE INDEX ux_ma_mid ON marketing_activities (marketo_id)"
            ),
        )
        .await
        .unwrap();
        let options = json!({"objects": {"marketing_activities": {
            "table": "marketing_activities", "primary_key": "id",
            "modified_column": "updated_at",
            "soft_delete": { "column": "deleted", "value": true },
            "marketo_id_column": "marketo_id", "writable": true, "changelog": false,
        }}});
        let crm: Arc<dyn Crm> =
            registry::build("sql", Some(&SecretString::from(crm_url)), &options)
                .await
                .unwrap();

        // Each test its own seed: the simulator's export ids (and so their files) differ.
        let sim = Simulator::start(SimConfig {
            seed,
            leads: 0,
            export_delay: Duration::ZERO,
            import_delay: Duration::ZERO,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let (id, secret) = sim.credentials();
        let mut config = ClientConfig::new(sim.base_url().parse().unwrap(), id, secret);
        config.identity_url = Some(sim.identity_url().parse().unwrap());
        config.calls_per_20s = 100;
        config.max_concurrency = 10;
        // A failed download is not tried again within a run (the next run re-attaches).
        config.retry.download_attempts = 1;
        config.retry.max_retries = 0;
        let marketo = Client::new(config).unwrap();

        let clock = ManualClock::new(sim.now());
        let store = store::open_with(
            &format!("sqlite://{}", dir.path().join("state.db").display()),
            OpenOptions {
                clock: Arc::new(clock.clone()),
                ..OpenOptions::default()
            },
        )
        .await
        .unwrap();

        let mut settings = Settings::default();
        settings.sync.objects = vec!["activities".to_owned()];
        settings.sync.activity_bulk_threshold = threshold;
        settings.sync.activity_bulk_every_secs = every_secs;
        settings.marketo.bulk_mb_budget = budget_mb;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mappings/activities.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mappings = vec![parse_mapping("activities", &path, &text).unwrap()];
        let mut schemas = SchemaSet::default();
        for t in marketo.activity_types().await.unwrap() {
            schemas.insert(activities::activity_schema(&t));
        }
        schemas.insert(crm.describe("marketing_activities").await.unwrap());
        let (plans, problems) = compile_all(&settings, &mappings, &schemas);
        assert!(plans.activities.contains_key(&VISIT), "{problems:#?}");

        let leads = (0..3)
            .map(|i| {
                let mut values = Map::new();
                values.insert("email".into(), json!(format!("visitor{i}@example.com")));
                sim.create_lead(values)
            })
            .collect();
        let ctx = Context {
            settings: Arc::new(settings),
            mappings: Arc::new(mappings),
            marketo,
            crm,
            store: store.clone(),
            clock: Arc::new(clock.clone()),
        };
        Env {
            sim,
            ctx,
            plans,
            db,
            clock,
            store,
            leads,
            crm_db,
            _dir: dir,
        }
    }

    /// Logs `count` visits over the next `secs` seconds of sim time; returns their id range.
    fn visits(&self, count: u64, secs: u64) -> (i64, i64) {
        self.sim
            .visit_webpages_at_volume(self.leads.clone(), count, Duration::from_secs(secs))
            .unwrap()
    }

    /// Runs the activities step at the simulator's time.
    async fn try_step(&self) -> Result<CycleSummary, EngineError> {
        self.run(false).await
    }

    async fn run(&self, dry_run: bool) -> Result<CycleSummary, EngineError> {
        self.clock.set(self.sim.now());
        let mut summary = CycleSummary::default();
        let options = CycleOptions { dry_run };
        objects::run_step(
            "activities",
            &self.ctx,
            &self.plans,
            &mut summary,
            &options,
            &CancellationToken::new(),
        )
        .await?;
        Ok(summary)
    }

    async fn step(&self) -> CycleSummary {
        self.try_step()
            .await
            .unwrap_or_else(|e| panic!("step: {e}"))
    }

    /// Returns (rows, distinct GUIDs) of the visits in the CRM table.
    async fn visit_rows(&self) -> (u64, u64) {
        let rows = self
            .db
            .fetch(
                "test",
                "SELECT CAST(COUNT(*) AS TEXT), CAST(COUNT(DISTINCT marketo_guid) AS TEXT) \
                 FROM marketing_activities \
                 WHERE kind = 'web_visit'"
                    .to_owned(),
                &[],
            )
            .await
            .unwrap();
        let n = |i: usize| rows[0][i].as_deref().unwrap().parse().unwrap();
        (n(0), n(1))
    }

    fn log_len(&self) -> usize {
        self.sim.request_log().len()
    }

    fn calls_since(&self, from: usize) -> Calls {
        Calls(self.sim.request_log().into_iter().skip(from).collect())
    }
}

/// The calls of a stretch of the request log.
struct Calls(Vec<LogEntry>);

impl Calls {
    /// Calls to paths ending in `suffix` (e.g. `/export/create.json`).
    fn to(&self, suffix: &str) -> usize {
        self.0.iter().filter(|e| e.path.ends_with(suffix)).count()
    }

    /// Bulk activity export calls Marketo carried out (not refused, e.g. for an expired
    /// token): (create, enqueue, status, file).
    fn export(&self) -> (usize, usize, usize, usize) {
        let of = |action: &str| {
            self.0
                .iter()
                .filter(|e| e.path.starts_with("/bulk/v1/activities/export/"))
                .filter(|e| e.http_status == 200 && e.code.is_none())
                .filter(|e| e.path.ends_with(action))
                .count()
        };
        (
            of("/create.json"),
            of("/enqueue.json"),
            of("/status.json"),
            of("/file.json"),
        )
    }

    /// Get Lead Activities pages of the visit type.
    fn visit_pages(&self) -> usize {
        self.0
            .iter()
            .filter(|e| e.path == "/rest/v1/activities.json")
            .filter(|e| {
                e.query
                    .split('&')
                    .any(|p| p == format!("activityTypeIds={VISIT}"))
            })
            .count()
    }
}

fn created(s: &CycleSummary) -> u64 {
    s.objects
        .get(&activities::queue(VISIT))
        .and_then(|d| d.get(&Direction::MarketoToCrm))
        .map_or(0, |c| c.created)
}

#[tokio::test]
async fn above_the_threshold_one_export_job_copies_each_activity_once_then_the_feed_resumes() {
    one_export_then_the_feed(&Env::new(11, 1_000, 0, 500).await).await;
}

/// The same on a PostgreSQL CRM (`PG_TEST_URL`; skipped with a notice when none answers).
#[tokio::test]
async fn on_postgres_one_export_job_copies_each_activity_once_then_the_feed_resumes() {
    let base = std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if SqlPool::connect(&base, 1, false).await.is_err() {
        eprintln!("skipped: no PostgreSQL at PG_TEST_URL");
        return;
    }
    let env = Env::with_crm(16, 1_000, 0, 500, Some(&base)).await;
    one_export_then_the_feed(&env).await;
    let name = env.crm_db.clone().unwrap();
    drop(env);
    let admin = SqlPool::connect(&base, 1, false).await.unwrap();
    let _ = admin
        .execute_raw("drop db", format!("DROP DATABASE {name} WITH (FORCE)"))
        .await;
    admin.close().await;
}

async fn one_export_then_the_feed(env: &Env) {
    let (first, last) = env.visits(5_000, 3_600);
    assert_eq!(last - first + 1, 5_000);

    let mark = env.log_len();
    let s = env.step().await;
    let calls = env.calls_since(mark);
    // One feed page (the estimate), then one export job.
    assert_eq!(calls.visit_pages(), 1);
    let (create, enqueue, status, file) = calls.export();
    assert_eq!((create, enqueue, file), (1, 1, 1), "{:?}", calls.export());
    assert!(status >= 1);
    assert_eq!(created(&s), 5_000, "{s:?}");
    assert_eq!(env.visit_rows().await, (5_000, 5_000));
    assert!(
        env.store
            .unfinished_jobs(JobDirection::Export)
            .await
            .unwrap()
            .is_empty()
    );
    // The watermark is the export's end less the overlap, without a paging token.
    let w = env
        .store
        .watermark(Side::Marketo, activities::OBJECT, &activities::queue(VISIT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.cursor, None);
    let now = Clock::now(&env.clock).with_nanosecond(0).unwrap();
    assert_eq!(w.at, now - chrono::Duration::seconds(300), "{w:?}");

    // A few more: the feed, from a token created at the new watermark; the overlap re-read is
    // skipped, nothing is written twice.
    for _ in 0..10 {
        env.sim.visit_webpage(env.leads[0], 7, "/late").unwrap();
    }
    let mark = env.log_len();
    let s = env.step().await;
    let calls = env.calls_since(mark);
    assert_eq!(calls.export(), (0, 0, 0, 0));
    assert_eq!(calls.to("/activities/pagingtoken.json"), 1);
    assert!(calls.visit_pages() >= 1);
    let c = s.objects[&activities::queue(VISIT)][&Direction::MarketoToCrm];
    assert_eq!(c.created, 10, "{c:?}");
    assert!(c.skipped > 0, "the overlap is read again: {c:?}");
    assert_eq!(env.visit_rows().await, (5_010, 5_010));
}

#[tokio::test]
async fn a_queue_on_a_schedule_waits_for_its_next_export() {
    let env = Env::new(12, 1_000, 3_600, 500).await;
    env.visits(5_000, 3_600);
    let s = env.step().await;
    assert_eq!(created(&s), 5_000);

    // More within the hour: the queue waits (no feed, no export).
    env.visits(2_000, 600);
    let mark = env.log_len();
    let s = env.step().await;
    let calls = env.calls_since(mark);
    assert_eq!(calls.visit_pages(), 0);
    assert_eq!(calls.export(), (0, 0, 0, 0));
    assert_eq!(created(&s), 0);

    // Once the hour is over: one export of what waited.
    env.sim.advance_clock(Duration::from_secs(3_600));
    let mark = env.log_len();
    let s = env.step().await;
    let calls = env.calls_since(mark);
    assert_eq!(calls.visit_pages(), 0);
    assert_eq!(calls.export().0, 1);
    assert_eq!(created(&s), 2_000, "{s:?}");
    assert_eq!(env.visit_rows().await, (7_000, 7_000));
}

#[tokio::test]
async fn an_export_interrupted_after_marketo_ran_it_is_re_attached_not_paid_again() {
    let env = Env::new(13, 1_000, 0, 500).await;
    env.visits(5_000, 3_600);
    env.sim.set_faults(
        "route=bulk_file,kind=5xx,rate=1"
            .parse::<FaultProfile>()
            .unwrap(),
    );
    let err = env.try_step().await.unwrap_err();
    assert!(err.to_string().contains("502"), "{err}");
    let jobs = env
        .store
        .unfinished_jobs(JobDirection::Export)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    // The feed page read before the export is committed.
    let (before, _) = env.visit_rows().await;
    assert_eq!(before, 300);

    env.sim.set_faults(FaultProfile::none());
    let mark = env.log_len();
    let s = env.step().await;
    let calls = env.calls_since(mark);
    let (create, enqueue, status, file) = calls.export();
    assert_eq!((create, enqueue, file), (0, 0, 1), "{:?}", calls.export());
    assert!(status >= 1);
    assert_eq!(calls.visit_pages(), 0);
    let c = s.objects[&activities::queue(VISIT)][&Direction::MarketoToCrm];
    assert_eq!(c.created, 4_700, "{c:?}");
    assert_eq!(env.visit_rows().await, (5_000, 5_000));
    assert!(
        env.store
            .unfinished_jobs(JobDirection::Export)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_export_that_does_not_fit_the_bulk_budget_reads_the_feed_and_warns() {
    // 5,000 rows at the assumed 400 bytes are about 2 MB: more than a 1 MB budget.
    let env = Env::new(14, 1_000, 0, 1).await;
    env.visits(5_000, 3_600);
    let mark = env.log_len();
    let s = env.step().await;
    let calls = env.calls_since(mark);
    assert_eq!(calls.export(), (0, 0, 0, 0));
    // The first page (the estimate, committed), then the other 4,700 in 16 pages.
    assert_eq!(calls.visit_pages(), 17);
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("activity:1") && w.contains("bulk budget")),
        "{:?}",
        s.warnings
    );
    assert_eq!(created(&s), 5_000);
    assert_eq!(env.visit_rows().await, (5_000, 5_000));
}

#[tokio::test]
async fn a_dry_run_says_it_would_export_and_exports_nothing() {
    let env = Env::new(15, 1_000, 0, 500).await;
    env.visits(5_000, 3_600);
    let mark = env.log_len();
    let s = env.run(true).await.unwrap();
    let calls = env.calls_since(mark);
    assert_eq!(calls.export(), (0, 0, 0, 0));
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("activity:1") && w.contains("would be read by Bulk")),
        "{:?}",
        s.warnings
    );
    assert_eq!(env.visit_rows().await, (0, 0));
    assert!(env.store.watermarks().await.unwrap().is_empty());
}

#[test]
fn the_bulk_settings_come_from_the_environment_and_a_too_long_schedule_names_the_key() {
    use marketo_sync::config::{SettingsSource, load_settings};
    use std::collections::HashMap;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("default.toml"),
        "[marketo]\nmunchkin_id = \"123-ABC-456\"\nclient_id = \"c\"\n\
         [crm]\nadapter = \"sql\"\nurl = \"sqlite://crm.db\"\n[sync]\nobjects = [\"activities\"]\n",
    )
    .unwrap();
    let vars = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let defaults = Settings::default();
    assert_eq!(defaults.sync.activity_bulk_threshold, 30_000);
    assert_eq!(defaults.sync.activity_bulk_every_secs, 3_600);
    let source = SettingsSource::new(dir.path(), None).with_vars(vars(&[
        ("MKSYNC__MARKETO__CLIENT_SECRET", "s"),
        ("MKSYNC__SYNC__ACTIVITY_BULK_THRESHOLD", "5000"),
        ("MKSYNC__SYNC__ACTIVITY_BULK_EVERY_SECS", "86400"),
    ]));
    let (s, p) = load_settings(&source);
    let s = s.unwrap_or_else(|| panic!("{p:#?}"));
    assert_eq!(s.sync.activity_bulk_threshold, 5_000);
    assert_eq!(s.sync.activity_bulk_every_secs, 86_400);

    let source = SettingsSource::new(dir.path(), None).with_vars(vars(&[
        ("MKSYNC__MARKETO__CLIENT_SECRET", "s"),
        ("MKSYNC__SYNC__ACTIVITY_BULK_EVERY_SECS", "7776000"),
    ]));
    let (s, p) = load_settings(&source);
    assert!(s.is_none());
    let text = format!("{p:?}");
    assert!(text.contains("sync.activity_bulk_every_secs"), "{text}");
    assert!(text.contains("7776000"), "{text}");
}
