//! The state store conformance suite: every test runs against SQLite (a temporary file) and
//! PostgreSQL (a fresh database created from `PG_TEST_URL`, dropped afterwards).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::FutureExt;
use marketo_sync::model::{Fields, Side, Value, fields_hash};
use marketo_sync::store::{
    BulkJob, Conflict, ConflictFilter, CycleCount, CycleOutcome, CycleRecord, Direction,
    ErrorFilter, ErrorKey, ErrorStatus, JobDirection, JobState, LedgerSummary, Link, LinkCount,
    LinkKey, ManualClock, ObjectSuccess, OpenOptions, OutcomeTotals, SchemaRecord, StateStore,
    StepCommit, StepTiming, StoreError, SyncError, Tombstone, TombstoneKind, Watermark, open_with,
};
use uuid::Uuid;

const CRASH_URL_VAR: &str = "MKSYNC_STORE_CRASH_URL";
const CRASH_MARKER: &str = "STORE-CHILD-IN-COMMIT";
const CRASH_OBJECT: &str = "crash_object";

fn t0() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().expect("time")
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

// ---------------------------------------------------------------------------------------------
// Harness

struct PgDatabase {
    admin_url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; a helper thread with its own runtime can block.
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&admin_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                    pool.close().await;
                }
            });
        });
        let _ = handle.join();
    }
}

struct Harness {
    url: String,
    clock: ManualClock,
    store: Arc<dyn StateStore>,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

impl Harness {
    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let clock = ManualClock::new(t0());
        let store = open_with(&url, options(&clock)).await.expect("open sqlite");
        assert_eq!(store.backend(), "sqlite");
        Harness {
            url,
            clock,
            store,
            _dir: Some(dir),
            _pg: None,
        }
    }

    async fn postgres() -> Harness {
        let admin_url = std::env::var("PG_TEST_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("mksync_store_{}", Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .expect("connect admin");
        let sql = format!("CREATE DATABASE \"{name}\"");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let guard = PgDatabase {
            admin_url: admin_url.clone(),
            name: name.clone(),
        };
        let mut url = url::Url::parse(&admin_url).expect("PG_TEST_URL");
        url.set_path(&name);
        let url = url.to_string();
        let clock = ManualClock::new(t0());
        let store = open_with(&url, options(&clock))
            .await
            .expect("open postgres");
        assert_eq!(store.backend(), "postgres");
        Harness {
            url,
            clock,
            store,
            _dir: None,
            _pg: Some(guard),
        }
    }

    /// Returns a second store on the same database, sharing the clock.
    async fn reopen(&self) -> Arc<dyn StateStore> {
        open_with(&self.url, options(&self.clock))
            .await
            .expect("reopen")
    }

    async fn reopen_with(&self, options: OpenOptions) -> Arc<dyn StateStore> {
        open_with(&self.url, options).await.expect("reopen")
    }
}

fn options(clock: &ManualClock) -> OpenOptions {
    OpenOptions {
        clock: Arc::new(clock.clone()),
        ..OpenOptions::default()
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let harness = super::Harness::sqlite().await;
                    super::$name(&harness).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let harness = super::Harness::postgres().await;
                    super::$name(&harness).await;
                }
            )*
        }
    };
}

conformance!(
    links_round_trip,
    link_reads_are_batched_and_paged,
    watermarks_only_move_forward_in_commits,
    bulk_jobs_round_trip,
    api_usage_accumulates_per_day,
    schemas_keep_the_last_describe,
    cycles_round_trip_newest_first,
    sync_errors_lifecycle,
    conflicts_keep_both_values,
    counts_reflect_the_state,
    failed_commit_writes_nothing,
    aborted_commit_writes_nothing,
    ten_thousand_links_take_few_statements,
    concurrent_writers_lose_nothing,
    killed_process_mid_commit_leaves_nothing_half_written,
    lease_is_exclusive_and_taken_over_after_expiry,
    lease_race_has_one_winner,
    totals_are_kept_by_record_cycle,
    totals_survive_beyond_the_retained_history,
    ledger_summary_splits_scheduled_from_waiting,
    link_counts_per_object,
    cycles_since_filters_by_start,
);

/// A store created before migration 3 (totals) gets totals from the cycles it already has.
async fn migration_3_fills_totals_from_existing_cycles(url: &str, clock: &ManualClock) {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let postgres = url.starts_with("postgres");
    let scripts: [(i64, &str, &str); 2] = if postgres {
        [
            (
                1,
                "init",
                include_str!("../migrations/postgres/0001_init.sql"),
            ),
            (
                2,
                "control",
                include_str!("../migrations/postgres/0002_control.sql"),
            ),
        ]
    } else {
        [
            (
                1,
                "init",
                include_str!("../migrations/sqlite/0001_init.sql"),
            ),
            (
                2,
                "control",
                include_str!("../migrations/sqlite/0002_control.sql"),
            ),
        ]
    };
    let migrator = Migrator::with_migrations(
        scripts
            .into_iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    version,
                    name.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    );
    let old = cycle(
        0,
        CycleOutcome::Succeeded,
        vec![
            count("lead", Some(Direction::MarketoToCrm), 2),
            count("lead", None, 1),
        ],
        7,
    );
    let failed = cycle(600, CycleOutcome::Failed, vec![], 3);
    let insert = "INSERT INTO cycles (id, started_at, ended_at, outcome, steps, counts, api_calls, \
                  message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    if postgres {
        let pool = sqlx::PgPool::connect(url).await.expect("connect");
        migrator.run(&pool).await.expect("migrations 1 and 2");
        for c in [&old, &failed] {
            sqlx::query(insert)
                .bind(c.id)
                .bind(c.started_at)
                .bind(c.ended_at)
                .bind(c.outcome.as_str())
                .bind(sqlx::types::Json(&c.steps))
                .bind(sqlx::types::Json(&c.counts))
                .bind(c.api_calls as i64)
                .bind(c.message.as_deref())
                .execute(&pool)
                .await
                .expect("old cycle");
        }
        pool.close().await;
    } else {
        let options = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .expect("url")
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("connect");
        migrator.run(&pool).await.expect("migrations 1 and 2");
        for c in [&old, &failed] {
            sqlx::query(insert)
                .bind(c.id)
                .bind(c.started_at)
                .bind(c.ended_at)
                .bind(c.outcome.as_str())
                .bind(sqlx::types::Json(&c.steps))
                .bind(sqlx::types::Json(&c.counts))
                .bind(c.api_calls as i64)
                .bind(c.message.as_deref())
                .execute(&pool)
                .await
                .expect("old cycle");
        }
        pool.close().await;
    }
    let store = open_with(url, options(clock)).await.expect("migrates to 3");
    let totals = store.totals().await.expect("totals");
    assert_eq!(
        totals.objects,
        // Directions in name order: marketo_to_crm before none.
        vec![
            count("lead", Some(Direction::MarketoToCrm), 2),
            count("lead", None, 1),
        ]
    );
    assert_eq!(
        totals.outcomes,
        vec![
            outcome_totals(1, 3, CycleOutcome::Failed),
            outcome_totals(1, 7, CycleOutcome::Succeeded),
        ]
    );
    assert_eq!(
        totals.last_success,
        vec![ObjectSuccess {
            object: "lead".into(),
            started_at: at(0),
            ended_at: at(30),
        }]
    );
    // Recording an old cycle again after the migration does not count it twice.
    store.record_cycle(&old).await.expect("again");
    assert_eq!(
        store.totals().await.expect("totals").objects,
        totals.objects
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migration_3_fills_totals_from_existing_cycles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    migration_3_fills_totals_from_existing_cycles(&url, &ManualClock::new(t0())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migration_3_fills_totals_from_existing_cycles() {
    let admin_url = std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("mksync_store_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url)
        .await
        .expect("connect admin");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let _guard = PgDatabase {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };
    let mut url = url::Url::parse(&admin_url).expect("PG_TEST_URL");
    url.set_path(&name);
    migration_3_fills_totals_from_existing_cycles(url.as_str(), &ManualClock::new(t0())).await;
}

// ---------------------------------------------------------------------------------------------
// Builders

fn fields(pairs: &[(&str, Value)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn link(object: &str, mkto: &str, crm: &str, email: &str) -> Link {
    let base = fields(&[
        ("email", Value::from(email)),
        ("score", Value::Int(7)),
        ("active", Value::Bool(true)),
        (
            "since",
            Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).expect("date")),
        ),
        (
            "revenue",
            Value::Decimal("1234.50".parse().expect("decimal")),
        ),
        ("nothing", Value::Null),
    ]);
    Link {
        object: object.to_owned(),
        marketo_key: mkto.to_owned(),
        crm_key: crm.to_owned(),
        base_hash: fields_hash(&base),
        base,
        agreed_at: at(10),
        tombstone: None,
    }
}

fn watermark(system: Side, object: &str, queue: &str, secs: i64) -> Watermark {
    Watermark {
        system,
        object: object.to_owned(),
        queue: queue.to_owned(),
        at: at(secs),
        tie: Some(format!("tie-{secs}")),
        cursor: Some(serde_json::json!({ "page": secs, "token": "abc" })),
    }
}

fn sync_error(object: &str, key: &str, attempts: u32, retry_secs: Option<i64>) -> SyncError {
    SyncError {
        id: Uuid::new_v4(),
        object: object.to_owned(),
        direction: Direction::CrmToMarketo,
        record_key: key.to_owned(),
        other_key: Some(format!("m-{key}")),
        payload: serde_json::json!({ "email": format!("{key}@example.com"), "score": 3 }),
        code: "1003".to_owned(),
        message: "Field 'email' is invalid".to_owned(),
        attempts,
        first_seen_at: at(0),
        last_seen_at: at(i64::from(attempts)),
        next_retry_at: retry_secs.map(at),
        status: ErrorStatus::Open,
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:05}")).collect()
}

async fn commit(store: &dyn StateStore, c: StepCommit) {
    store.commit(c).await.expect("commit");
}

// ---------------------------------------------------------------------------------------------
// Tests

async fn links_round_trip(h: &Harness) {
    let s = h.store.as_ref();
    let a = link("lead", "101", "c-1", "a@example.com");
    let b = link("lead", "102", "c-2", "b@example.com");
    let mut gone = link("company", "acme", "c-acme", "x@acme.test");
    gone.tombstone = Some(Tombstone {
        kind: TombstoneKind::Merged {
            into: "acme2".into(),
        },
        side: Side::Crm,
        at: at(20),
    });
    commit(
        s,
        StepCommit {
            links_upsert: vec![a.clone(), b.clone(), gone.clone()],
            ..StepCommit::default()
        },
    )
    .await;

    let got = s
        .links_by_marketo_keys("lead", &["101".into(), "102".into(), "999".into()])
        .await
        .expect("read");
    assert_eq!(got.len(), 2);
    assert!(got.contains(&a) && got.contains(&b), "{got:#?}");
    let got = s
        .links_by_crm_keys("company", &["c-acme".into()])
        .await
        .expect("read");
    assert_eq!(got, vec![gone.clone()]);
    // Keys of another object are not visible.
    assert!(
        s.links_by_marketo_keys("company", &["101".into()])
            .await
            .expect("read")
            .is_empty()
    );

    // Replace one, delete another, in one commit.
    let mut a2 = a.clone();
    a2.base.insert("score".into(), Value::Int(8));
    a2.base_hash = fields_hash(&a2.base);
    a2.crm_key = "c-1b".into();
    a2.agreed_at = at(30);
    commit(
        s,
        StepCommit {
            links_upsert: vec![a2.clone()],
            links_delete: vec![LinkKey {
                object: "lead".into(),
                marketo_key: "102".into(),
            }],
            ..StepCommit::default()
        },
    )
    .await;
    let got = s
        .links_by_marketo_keys("lead", &["101".into(), "102".into()])
        .await
        .expect("read");
    assert_eq!(got, vec![a2]);
    assert!(
        s.links_by_crm_keys("lead", &["c-1".into()])
            .await
            .expect("read")
            .is_empty()
    );
}

async fn link_reads_are_batched_and_paged(h: &Harness) {
    let s = h.store.as_ref();
    let mkto = keys("m", 2500);
    let links: Vec<Link> = mkto
        .iter()
        .map(|k| link("lead", k, &format!("c{k}"), "p@example.com"))
        .collect();
    commit(
        s,
        StepCommit {
            links_upsert: links,
            ..StepCommit::default()
        },
    )
    .await;

    let before = s.statements_executed();
    let got = s.links_by_marketo_keys("lead", &mkto).await.expect("read");
    assert_eq!(got.len(), 2500);
    assert!(s.statements_executed() - before <= 3, "batched lookups");
    let crm: Vec<String> = mkto.iter().map(|k| format!("c{k}")).collect();
    assert_eq!(
        s.links_by_crm_keys("lead", &crm).await.expect("read").len(),
        2500
    );

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .links_page("lead", after.as_deref(), 700)
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 700);
        after = page.last().map(|l| l.marketo_key.clone());
        seen.extend(page.into_iter().map(|l| l.marketo_key));
    }
    assert_eq!(seen, mkto, "every link once, in key order");
}

async fn watermarks_only_move_forward_in_commits(h: &Harness) {
    let s = h.store.as_ref();
    assert!(
        s.watermark(Side::Marketo, "lead", "default")
            .await
            .expect("read")
            .is_none()
    );
    let w1 = watermark(Side::Marketo, "lead", "default", 100);
    let q32 = watermark(Side::Marketo, "lead", "activity_32", 50);
    let crm = Watermark {
        cursor: None,
        tie: None,
        ..watermark(Side::Crm, "contacts", "default", 70)
    };
    commit(
        s,
        StepCommit {
            watermarks: vec![w1.clone(), q32.clone(), crm.clone()],
            ..StepCommit::default()
        },
    )
    .await;
    assert_eq!(
        s.watermark(Side::Marketo, "lead", "default")
            .await
            .expect("read"),
        Some(w1.clone())
    );
    assert_eq!(
        s.watermark(Side::Crm, "contacts", "default")
            .await
            .expect("read"),
        Some(crm.clone())
    );

    // An older watermark in a commit is ignored; a newer one moves it.
    commit(
        s,
        StepCommit {
            watermarks: vec![watermark(Side::Marketo, "lead", "default", 90)],
            ..StepCommit::default()
        },
    )
    .await;
    assert_eq!(
        s.watermark(Side::Marketo, "lead", "default")
            .await
            .expect("read"),
        Some(w1)
    );
    let w2 = watermark(Side::Marketo, "lead", "default", 200);
    commit(
        s,
        StepCommit {
            watermarks: vec![w2.clone()],
            ..StepCommit::default()
        },
    )
    .await;
    assert_eq!(
        s.watermark(Side::Marketo, "lead", "default")
            .await
            .expect("read"),
        Some(w2)
    );

    // A reset moves it back.
    let back = watermark(Side::Marketo, "lead", "default", 5);
    s.reset_watermark(&back).await.expect("reset");
    assert_eq!(
        s.watermark(Side::Marketo, "lead", "default")
            .await
            .expect("read"),
        Some(back)
    );
    assert_eq!(s.watermarks().await.expect("all").len(), 3);
}

fn job(direction: JobDirection, id: &str, state: JobState) -> BulkJob {
    BulkJob {
        direction,
        id: id.to_owned(),
        kind: "leads".to_owned(),
        object: "lead".to_owned(),
        window_start: Some(at(0)),
        window_end: Some(at(31 * 86_400)),
        state,
        bytes: 0,
        file_path: None,
        file_offset: 0,
        created_at: at(1),
        updated_at: at(1),
    }
}

async fn bulk_jobs_round_trip(h: &Harness) {
    let s = h.store.as_ref();
    let created = job(JobDirection::Export, "e-1", JobState::Created);
    s.upsert_job(&created).await.expect("insert");
    assert_eq!(
        s.job(JobDirection::Export, "e-1").await.expect("read"),
        Some(created.clone())
    );
    assert!(
        s.job(JobDirection::Import, "e-1")
            .await
            .expect("read")
            .is_none()
    );

    let mut running = created.clone();
    running.state = JobState::Completed;
    running.bytes = 5_000_000_000;
    running.file_path = Some("/var/lib/mksync/e-1.csv".into());
    running.file_offset = 1_048_576;
    running.updated_at = at(60);
    let done = job(JobDirection::Export, "e-0", JobState::Consumed);
    let import = job(JobDirection::Import, "i-1", JobState::Queued);
    commit(
        s,
        StepCommit {
            jobs: vec![running.clone(), done, import.clone()],
            ..StepCommit::default()
        },
    )
    .await;
    assert_eq!(
        s.unfinished_jobs(JobDirection::Export).await.expect("read"),
        vec![running]
    );
    assert_eq!(
        s.unfinished_jobs(JobDirection::Import).await.expect("read"),
        vec![import]
    );

    let mut too_big = created;
    too_big.bytes = u64::MAX;
    let error = s.upsert_job(&too_big).await.expect_err("u64::MAX bytes");
    assert!(matches!(error, StoreError::Invalid { .. }), "{error}");
}

async fn api_usage_accumulates_per_day(h: &Harness) {
    let s = h.store.as_ref();
    let day = NaiveDate::from_ymd_opt(2026, 3, 8).expect("date");
    let next = day.succ_opt().expect("date");
    assert_eq!(s.api_usage(day).await.expect("read").calls, 0);
    s.add_api_usage(day, 10, 0).await.expect("add");
    let usage = s.add_api_usage(day, 5, 2_000_000).await.expect("add");
    assert_eq!((usage.calls, usage.bulk_bytes), (15, 2_000_000));
    s.add_api_usage(next, 1, 1).await.expect("add");
    let usage = s.api_usage(day).await.expect("read");
    assert_eq!(
        (usage.day, usage.calls, usage.bulk_bytes),
        (day, 15, 2_000_000)
    );

    // Concurrent increments are not lost.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                store.add_api_usage(next, 2, 10).await.expect("add");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let usage = s.api_usage(next).await.expect("read");
    assert_eq!((usage.calls, usage.bulk_bytes), (81, 401));
}

async fn schemas_keep_the_last_describe(h: &Harness) {
    let s = h.store.as_ref();
    let first = SchemaRecord {
        side: Side::Marketo,
        object: "lead".into(),
        hash: "h1".into(),
        schema: serde_json::json!({ "fields": [{ "name": "email", "type": "email" }] }),
        fetched_at: at(1),
    };
    s.put_schema(&first).await.expect("put");
    assert_eq!(
        s.schema(Side::Marketo, "lead").await.expect("read"),
        Some(first.clone())
    );
    assert!(s.schema(Side::Crm, "lead").await.expect("read").is_none());
    let second = SchemaRecord {
        hash: "h2".into(),
        schema: serde_json::json!({ "fields": [] }),
        fetched_at: at(2),
        ..first
    };
    s.put_schema(&second).await.expect("put");
    assert_eq!(
        s.schema(Side::Marketo, "lead").await.expect("read"),
        Some(second)
    );
}

async fn cycles_round_trip_newest_first(h: &Harness) {
    let s = h.store.as_ref();
    let mut cycles = Vec::new();
    for i in 0..3 {
        let mut c = CycleRecord {
            id: Uuid::new_v4(),
            started_at: at(i * 300),
            ended_at: None,
            outcome: CycleOutcome::Running,
            steps: vec![],
            counts: vec![],
            api_calls: 0,
            message: None,
        };
        s.record_cycle(&c).await.expect("start");
        c.ended_at = Some(at(i * 300 + 42));
        c.outcome = if i == 1 {
            CycleOutcome::Partial
        } else {
            CycleOutcome::Succeeded
        };
        c.steps = vec![StepTiming {
            step: "gather".into(),
            started_at: at(i * 300),
            duration_ms: 1234,
        }];
        c.counts = vec![CycleCount {
            object: "lead".into(),
            direction: Some(Direction::MarketoToCrm),
            read: 10,
            created: 1,
            updated: 2,
            deleted: 3,
            conflicts: 4,
            skipped: 5,
            failed: 6,
        }];
        c.api_calls = 17;
        c.message = (i == 1).then(|| "2 records failed".to_owned());
        s.record_cycle(&c).await.expect("end");
        cycles.push(c);
    }
    let recent = s.recent_cycles(2).await.expect("read");
    assert_eq!(recent, vec![cycles[2].clone(), cycles[1].clone()]);
}

async fn sync_errors_lifecycle(h: &Harness) {
    let s = h.store.as_ref();
    let due = sync_error("lead", "k1", 1, Some(100));
    let later = sync_error("lead", "k2", 1, Some(1000));
    let manual = sync_error("company", "k3", 4, None);
    commit(
        s,
        StepCommit {
            errors_upsert: vec![due.clone(), later.clone(), manual.clone()],
            ..StepCommit::default()
        },
    )
    .await;
    assert_eq!(s.error(due.id).await.expect("read"), Some(due.clone()));
    assert_eq!(
        s.errors_due(at(500), 10).await.expect("due"),
        vec![due.clone()]
    );
    assert_eq!(s.errors_due(at(5000), 10).await.expect("due").len(), 2);

    // The same record failing again updates the row and keeps its id.
    let mut again = sync_error("lead", "k1", 2, Some(400));
    again.code = "1004".into();
    commit(
        s,
        StepCommit {
            errors_upsert: vec![again.clone()],
            ..StepCommit::default()
        },
    )
    .await;
    let stored = s.error(due.id).await.expect("read").expect("kept id");
    assert_eq!(stored.attempts, 2);
    assert_eq!(stored.code, "1004");
    assert_eq!(stored.first_seen_at, due.first_seen_at);
    assert!(s.error(again.id).await.expect("read").is_none());

    // A success resolves it.
    commit(
        s,
        StepCommit {
            errors_resolve: vec![ErrorKey {
                object: "lead".into(),
                direction: Direction::CrmToMarketo,
                record_key: "k1".into(),
            }],
            ..StepCommit::default()
        },
    )
    .await;
    let stored = s.error(due.id).await.expect("read").expect("row");
    assert_eq!(stored.status, ErrorStatus::Resolved);
    assert_eq!(
        s.errors_due(at(5000), 10).await.expect("due"),
        vec![later.clone()]
    );

    // Operators discard and retry.
    assert!(
        s.set_error_status(later.id, ErrorStatus::Discarded, None)
            .await
            .expect("discard")
    );
    assert!(s.errors_due(at(5000), 10).await.expect("due").is_empty());
    assert!(
        s.set_error_status(manual.id, ErrorStatus::Open, Some(at(0)))
            .await
            .expect("retry")
    );
    assert_eq!(
        s.errors_due(at(1), 10).await.expect("due")[0].record_key,
        "k3"
    );
    assert!(
        !s.set_error_status(Uuid::new_v4(), ErrorStatus::Open, None)
            .await
            .expect("missing")
    );

    let open = s
        .list_errors(&ErrorFilter {
            status: Some(ErrorStatus::Open),
            ..ErrorFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(open.len(), 1);
    let leads = s
        .list_errors(&ErrorFilter {
            object: Some("lead".into()),
            limit: 10,
            ..ErrorFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(leads.len(), 2);
    assert_eq!(leads[0].payload, due.payload);
}

async fn conflicts_keep_both_values(h: &Harness) {
    let s = h.store.as_ref();
    let conflict = |field: &str, base: Option<Value>| Conflict {
        id: 0,
        object: "lead".into(),
        marketo_key: "101".into(),
        crm_key: "c-1".into(),
        field: field.into(),
        marketo_value: Value::from("VP Sales"),
        crm_value: Value::Int(42),
        base_value: base,
        winner: Side::Crm,
        policy: "crm_wins".into(),
        at: at(5),
    };
    commit(
        s,
        StepCommit {
            conflicts: vec![
                conflict("title", Some(Value::Null)),
                conflict("score", None),
            ],
            ..StepCommit::default()
        },
    )
    .await;
    let got = s.recent_conflicts(10).await.expect("read");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].field, "score", "newest first");
    assert_eq!(got[0].base_value, None);
    assert_eq!(got[1].base_value, Some(Value::Null));
    for c in &got {
        assert_eq!(c.marketo_value, Value::from("VP Sales"));
        assert_eq!(c.crm_value, Value::Int(42));
        assert_eq!(c.winner, Side::Crm);
        assert_eq!(c.policy, "crm_wins");
        assert!(c.id > 0);
    }

    let mut later = conflict("name", None);
    later.object = "company".into();
    later.winner = Side::Marketo;
    later.policy = "marketo_wins".into();
    later.at = at(9);
    commit(
        s,
        StepCommit {
            conflicts: vec![later],
            ..StepCommit::default()
        },
    )
    .await;
    let list =
        |filter: ConflictFilter| async move { s.list_conflicts(&filter).await.expect("list") };
    let fields = |got: Vec<Conflict>| got.into_iter().map(|c| c.field).collect::<Vec<_>>();
    assert_eq!(
        fields(list(ConflictFilter::default()).await),
        ["name", "score", "title"]
    );
    let by_object = ConflictFilter {
        object: Some("lead".into()),
        ..ConflictFilter::default()
    };
    assert_eq!(fields(list(by_object).await), ["score", "title"]);
    let by_field = ConflictFilter {
        field: Some("title".into()),
        ..ConflictFilter::default()
    };
    assert_eq!(fields(list(by_field).await), ["title"]);
    let by_winner = ConflictFilter {
        winner: Some(Side::Marketo),
        ..ConflictFilter::default()
    };
    assert_eq!(fields(list(by_winner).await), ["name"]);
    let since = ConflictFilter {
        since: Some(at(6)),
        ..ConflictFilter::default()
    };
    assert_eq!(fields(list(since).await), ["name"]);
    let limited = ConflictFilter {
        limit: 1,
        ..ConflictFilter::default()
    };
    assert_eq!(fields(list(limited).await), ["name"]);
}

async fn counts_reflect_the_state(h: &Harness) {
    let s = h.store.as_ref();
    let mut dead = link("lead", "2", "c2", "d@example.com");
    dead.tombstone = Some(Tombstone {
        kind: TombstoneKind::Deleted,
        side: Side::Marketo,
        at: at(3),
    });
    let discarded = SyncError {
        status: ErrorStatus::Discarded,
        ..sync_error("lead", "x", 1, None)
    };
    commit(
        s,
        StepCommit {
            links_upsert: vec![link("lead", "1", "c1", "a@example.com"), dead],
            errors_upsert: vec![sync_error("lead", "y", 1, Some(1)), discarded],
            conflicts: vec![],
            jobs: vec![
                job(JobDirection::Export, "a", JobState::Processing),
                job(JobDirection::Export, "b", JobState::Failed),
            ],
            ..StepCommit::default()
        },
    )
    .await;
    let counts = s.counts().await.expect("counts");
    assert_eq!(
        (
            counts.links,
            counts.tombstones,
            counts.open_errors,
            counts.discarded_errors,
            counts.conflicts,
            counts.unfinished_jobs
        ),
        (1, 1, 1, 1, 0, 1)
    );
}

async fn assert_nothing_of(s: &dyn StateStore, object: &str) {
    let page = s.links_page(object, None, 10).await.expect("page");
    assert!(
        page.is_empty(),
        "links of {object} were written: {}",
        page.len()
    );
    assert!(
        s.watermark(Side::Marketo, object, "default")
            .await
            .expect("watermark")
            .is_none()
    );
    let errors = s
        .list_errors(&ErrorFilter {
            object: Some(object.to_owned()),
            ..ErrorFilter::default()
        })
        .await
        .expect("errors");
    assert!(errors.is_empty());
}

fn big_step(object: &str, n: usize) -> StepCommit {
    StepCommit {
        watermarks: vec![watermark(Side::Marketo, object, "default", 77)],
        links_upsert: keys("k", n)
            .iter()
            .map(|k| link(object, k, &format!("c{k}"), "z@example.com"))
            .collect(),
        errors_upsert: vec![sync_error(object, "bad", 1, Some(1))],
        conflicts: vec![],
        ..StepCommit::default()
    }
}

async fn failed_commit_writes_nothing(h: &Harness) {
    let s = h.store.as_ref();
    // Two errors sharing an id: the second insert violates the primary key, after the links and
    // the watermark were written inside the transaction.
    let mut step = big_step("atomic", 1500);
    let first = sync_error("atomic", "e1", 1, None);
    let mut second = sync_error("atomic", "e2", 1, None);
    second.id = first.id;
    step.errors_upsert = vec![first, second];
    let error = s.commit(step).await.expect_err("duplicate id must fail");
    assert!(
        matches!(error, StoreError::Query { op: "commit", .. }),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert_nothing_of(s, "atomic").await;

    // The store is still usable.
    commit(s, big_step("atomic", 10)).await;
    assert_eq!(
        s.links_page("atomic", None, 100).await.expect("page").len(),
        10
    );
}

async fn aborted_commit_writes_nothing(h: &Harness) {
    let hook: marketo_sync::store::CommitHook = Arc::new(|| {
        async {
            Err(StoreError::Aborted {
                reason: "injected".into(),
            })
        }
        .boxed()
    });
    let s = h
        .reopen_with(OpenOptions {
            commit_hook: Some(hook),
            ..options(&h.clock)
        })
        .await;
    let error = s
        .commit(big_step("aborted", 3000))
        .await
        .expect_err("aborted");
    assert!(matches!(error, StoreError::Aborted { .. }), "{error}");
    assert_nothing_of(h.store.as_ref(), "aborted").await;
}

async fn ten_thousand_links_take_few_statements(h: &Harness) {
    let s = h.store.as_ref();
    let step = StepCommit {
        links_upsert: keys("k", 10_000)
            .iter()
            .map(|k| link("bulk", k, &format!("c{k}"), "b@example.com"))
            .collect(),
        watermarks: vec![watermark(Side::Crm, "bulk", "default", 1)],
        ..StepCommit::default()
    };
    let before = s.statements_executed();
    commit(s, step).await;
    let used = s.statements_executed() - before;
    // BEGIN + 10 link chunks + 1 watermark statement + COMMIT.
    assert!(used <= 13, "10,000 links took {used} statements");
    assert_eq!(s.counts().await.expect("counts").links, 10_000);
}

async fn concurrent_writers_lose_nothing(h: &Harness) {
    let writers = 6;
    let commits = 8;
    let per_commit = 50;
    let mut tasks = Vec::new();
    for w in 0..writers {
        // Half the writers share the harness store, half have their own pool.
        let store = if w % 2 == 0 {
            h.store.clone()
        } else {
            h.reopen().await
        };
        tasks.push(tokio::spawn(async move {
            for c in 0..commits {
                let links = (0..per_commit)
                    .map(|i| {
                        let k = format!("w{w}-c{c}-{i}");
                        link("concurrent", &k, &format!("crm-{k}"), "c@example.com")
                    })
                    .collect();
                let step = StepCommit {
                    links_upsert: links,
                    watermarks: vec![
                        watermark(Side::Crm, "concurrent", &format!("w{w}"), c),
                        // Every writer moves the shared watermark; the highest must win.
                        watermark(Side::Marketo, "concurrent", "shared", w * 100 + c),
                    ],
                    errors_upsert: vec![sync_error("concurrent", &format!("w{w}-c{c}"), 1, None)],
                    ..StepCommit::default()
                };
                loop {
                    match store.commit(step.clone()).await {
                        Ok(()) => break,
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => panic!("writer {w} commit {c}: {e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let s = h.store.as_ref();
    let mut all = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .links_page("concurrent", after.as_deref(), 500)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after = Some(last.marketo_key.clone());
        all.extend(page.into_iter().map(|l| l.marketo_key));
    }
    assert_eq!(all.len(), (writers * commits * per_commit) as usize);
    for w in 0..writers {
        let wm = s
            .watermark(Side::Crm, "concurrent", &format!("w{w}"))
            .await
            .expect("wm")
            .expect("present");
        assert_eq!(wm.at, at(commits - 1));
    }
    let shared = s
        .watermark(Side::Marketo, "concurrent", "shared")
        .await
        .expect("wm")
        .expect("present");
    assert_eq!(shared.at, at((writers - 1) * 100 + commits - 1));
    let errors = s
        .list_errors(&ErrorFilter {
            object: Some("concurrent".into()),
            limit: 1000,
            ..ErrorFilter::default()
        })
        .await
        .expect("errors");
    assert_eq!(errors.len(), (writers * commits) as usize);
}

async fn killed_process_mid_commit_leaves_nothing_half_written(h: &Harness) {
    // The state before: one link (which the child's commit overwrites) and an older watermark.
    let baseline = link(CRASH_OBJECT, "k00000", "c-before", "before@example.com");
    let baseline_wm = watermark(Side::Marketo, CRASH_OBJECT, "default", 10);
    commit(
        h.store.as_ref(),
        StepCommit {
            links_upsert: vec![baseline.clone()],
            watermarks: vec![baseline_wm.clone()],
            ..StepCommit::default()
        },
    )
    .await;

    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "crash_child_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CRASH_URL_VAR, &h.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let reader = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) if l.contains(CRASH_MARKER) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    });
    // A guard against a hung child, not a timing assumption: the marker normally arrives fast.
    let in_commit = tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("child reached the commit in time")
        .expect("reader");
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("wait");
    assert!(
        in_commit,
        "the child never reached the middle of its commit"
    );
    assert!(!status.success(), "the child was killed, not finished");

    // Nothing of the killed transaction is visible, through the old pool or a fresh open: the
    // state is exactly the state before.
    let fresh = h.reopen().await;
    for s in [h.store.as_ref(), fresh.as_ref()] {
        let links = s.links_page(CRASH_OBJECT, None, 100).await.expect("page");
        assert_eq!(links, vec![baseline.clone()]);
        let wm = s
            .watermark(Side::Marketo, CRASH_OBJECT, "default")
            .await
            .expect("watermark");
        assert_eq!(wm, Some(baseline_wm.clone()));
        let errors = s
            .list_errors(&ErrorFilter {
                object: Some(CRASH_OBJECT.to_owned()),
                ..ErrorFilter::default()
            })
            .await
            .expect("errors");
        assert!(errors.is_empty());
    }
    // And the same rows can be written now (no lock left behind).
    commit(fresh.as_ref(), big_step(CRASH_OBJECT, 20)).await;
    let links = h
        .store
        .links_page(CRASH_OBJECT, None, 100)
        .await
        .expect("page");
    assert_eq!(links.len(), 20);
    assert_eq!(links[0].crm_key, "ck00000");
}

/// Runs only as the child process of the killed-process test: it starts a commit, writes links
/// and a watermark, reports that it is inside the transaction and waits to be killed.
#[tokio::test]
#[ignore = "helper process for killed_process_mid_commit_leaves_nothing_half_written"]
async fn crash_child_helper() {
    let url = std::env::var(CRASH_URL_VAR).expect("run by the crash test only");
    let hook: marketo_sync::store::CommitHook = Arc::new(|| {
        async {
            println!("{CRASH_MARKER}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            futures::future::pending::<()>().await;
            Ok(())
        }
        .boxed()
    });
    let store = open_with(
        &url,
        OpenOptions {
            commit_hook: Some(hook),
            ..OpenOptions::default()
        },
    )
    .await
    .expect("child open");
    let _ = store.commit(big_step(CRASH_OBJECT, 3000)).await;
    unreachable!("the commit hook never returns");
}

async fn lease_is_exclusive_and_taken_over_after_expiry(h: &Harness) {
    let a = h.store.as_ref();
    let other = h.reopen().await;
    let b = other.as_ref();
    let ttl = Duration::from_secs(60);

    assert!(
        a.try_acquire_lease("123-ABC-456", "a", ttl)
            .await
            .expect("a")
    );
    assert!(
        !b.try_acquire_lease("123-ABC-456", "b", ttl)
            .await
            .expect("b")
    );
    // Another instance is independent.
    assert!(
        b.try_acquire_lease("999-XYZ-000", "b", ttl)
            .await
            .expect("b")
    );
    // The holder may re-acquire (extend) and renew.
    assert!(
        a.try_acquire_lease("123-ABC-456", "a", ttl)
            .await
            .expect("a")
    );
    h.clock.advance(Duration::from_secs(50));
    assert!(a.renew_lease("123-ABC-456", "a", ttl).await.expect("renew"));
    let lease = a.lease("123-ABC-456").await.expect("read").expect("held");
    assert_eq!((lease.holder.as_str(), lease.acquired_at), ("a", t0()));
    assert_eq!(lease.expires_at, at(110));
    // Not expired yet at 109 s.
    h.clock.set(at(109));
    assert!(
        !b.try_acquire_lease("123-ABC-456", "b", ttl)
            .await
            .expect("b")
    );
    assert!(!b.renew_lease("123-ABC-456", "b", ttl).await.expect("b"));
    assert!(!b.release_lease("123-ABC-456", "b").await.expect("b"));

    // The holder dies; after the ttl the lease is taken over.
    h.clock.set(at(110));
    assert!(
        b.try_acquire_lease("123-ABC-456", "b", ttl)
            .await
            .expect("b")
    );
    let lease = b.lease("123-ABC-456").await.expect("read").expect("held");
    assert_eq!((lease.holder.as_str(), lease.acquired_at), ("b", at(110)));
    // The old holder learns it lost the lease and cannot take it back.
    assert!(!a.renew_lease("123-ABC-456", "a", ttl).await.expect("a"));
    assert!(
        !a.try_acquire_lease("123-ABC-456", "a", ttl)
            .await
            .expect("a")
    );
    assert!(!a.release_lease("123-ABC-456", "a").await.expect("a"));
    // Released, it is free at once.
    assert!(b.release_lease("123-ABC-456", "b").await.expect("b"));
    assert!(a.lease("123-ABC-456").await.expect("read").is_none());
    assert!(
        a.try_acquire_lease("123-ABC-456", "a", ttl)
            .await
            .expect("a")
    );
}

async fn lease_race_has_one_winner(h: &Harness) {
    let ttl = Duration::from_secs(30);
    for round in 0..3 {
        let instance = format!("race-{round}");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = if i % 2 == 0 {
                h.store.clone()
            } else {
                h.reopen().await
            };
            let instance = instance.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .try_acquire_lease(&instance, &format!("holder-{i}"), ttl)
                    .await
                    .expect("acquire")
            }));
        }
        let mut won = 0;
        for t in tasks {
            if t.await.expect("task") {
                won += 1;
            }
        }
        assert_eq!(won, 1, "round {round}: {won} holders at once");
        // After expiry exactly one of a new crowd wins again.
        h.clock.advance(ttl);
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite only

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fresh.db");
    assert!(!path.exists());
    let url = format!("sqlite://{}", path.display());
    let store = marketo_sync::store::open(&url).await.expect("open");
    assert!(path.exists(), "the file is created");
    commit(store.as_ref(), big_step("wal", 3)).await;
    let mut raw = sqlx::SqliteConnection::connect(&url).await.expect("raw");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut raw)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    // Opening again (migrations already applied) works and sees the data.
    let again = marketo_sync::store::open(&url).await.expect("reopen");
    assert_eq!(
        again.links_page("wal", None, 10).await.expect("page").len(),
        3
    );
}

#[tokio::test]
async fn sqlite_busy_is_a_retryable_error() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("busy.db").display());
    let store = open_with(
        &url,
        OpenOptions {
            sqlite_busy_timeout: Duration::ZERO,
            ..OpenOptions::default()
        },
    )
    .await
    .expect("open");
    // Another process (here: another connection) holds the write lock.
    let mut other = sqlx::SqliteConnection::connect(&url).await.expect("raw");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .expect("lock");
    let error = store
        .commit(big_step("busy", 5))
        .await
        .expect_err("the database is locked");
    assert!(error.is_retryable(), "{error}");
    sqlx::query("ROLLBACK")
        .execute(&mut other)
        .await
        .expect("unlock");
    store
        .commit(big_step("busy", 5))
        .await
        .expect("retry works");
    assert_eq!(
        store
            .links_page("busy", None, 10)
            .await
            .expect("page")
            .len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_first_opens_all_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("race.db").display());
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            marketo_sync::store::open(&url).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await
            .expect("task")
            .expect("every replica opens the fresh file");
    }
}

#[tokio::test]
async fn sqlite_in_memory_store_works() {
    let store = marketo_sync::store::open("sqlite::memory:")
        .await
        .expect("open");
    commit(store.as_ref(), big_step("memory", 4)).await;
    assert_eq!(
        store
            .links_page("memory", None, 10)
            .await
            .expect("page")
            .len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_first_opens_all_succeed() {
    let admin_url = std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("mksync_store_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url)
        .await
        .expect("connect admin");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let _guard = PgDatabase {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };
    let mut url = url::Url::parse(&admin_url).expect("PG_TEST_URL");
    url.set_path(&name);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            marketo_sync::store::open(&url).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await
            .expect("task")
            .expect("every replica opens the fresh database");
    }
}

// ---------------------------------------------------------------------------------------------
// Totals, ledger summary and link counts (the status page)

fn count(object: &str, direction: Option<Direction>, n: u64) -> CycleCount {
    CycleCount {
        object: object.into(),
        direction,
        read: 10 * n,
        created: n,
        updated: 2 * n,
        deleted: 0,
        conflicts: n,
        skipped: 3 * n,
        failed: n,
    }
}

fn cycle(
    start_secs: i64,
    outcome: CycleOutcome,
    counts: Vec<CycleCount>,
    calls: u64,
) -> CycleRecord {
    CycleRecord {
        id: Uuid::new_v4(),
        started_at: at(start_secs),
        ended_at: (outcome != CycleOutcome::Running).then(|| at(start_secs + 30)),
        outcome,
        steps: vec![],
        counts,
        api_calls: calls,
        message: (outcome == CycleOutcome::Failed).then(|| "CRM unreachable".to_owned()),
    }
}

fn outcome_totals(cycles: u64, calls: u64, outcome: CycleOutcome) -> OutcomeTotals {
    OutcomeTotals {
        outcome,
        cycles,
        api_calls: calls,
    }
}

async fn totals_are_kept_by_record_cycle(h: &Harness) {
    let s = h.store.as_ref();
    assert_eq!(s.totals().await.expect("empty"), Default::default());
    // Recorded at its start, then again at its end, then once more: counted once.
    let mut first = cycle(0, CycleOutcome::Running, vec![], 0);
    s.record_cycle(&first).await.expect("start");
    first.outcome = CycleOutcome::Succeeded;
    first.ended_at = Some(at(30));
    first.api_calls = 12;
    first.counts = vec![
        count("lead", Some(Direction::MarketoToCrm), 1),
        count("lead", Some(Direction::CrmToMarketo), 2),
    ];
    s.record_cycle(&first).await.expect("end");
    s.record_cycle(&first).await.expect("again");
    let failed = cycle(
        300,
        CycleOutcome::Failed,
        vec![count("company", None, 5)],
        4,
    );
    s.record_cycle(&failed).await.expect("failed");
    let partial = cycle(
        600,
        CycleOutcome::Partial,
        vec![count("lead", Some(Direction::MarketoToCrm), 3)],
        8,
    );
    s.record_cycle(&partial).await.expect("partial");
    let running = cycle(900, CycleOutcome::Running, vec![], 0);
    s.record_cycle(&running).await.expect("running");

    let totals = s.totals().await.expect("totals");
    let lead_m2c = count("lead", Some(Direction::MarketoToCrm), 4);
    assert_eq!(
        totals.objects,
        vec![
            count("company", None, 5),
            // Directions in name order: crm_to_marketo before marketo_to_crm.
            count("lead", Some(Direction::CrmToMarketo), 2),
            lead_m2c,
        ]
    );
    assert_eq!(
        totals.outcomes,
        vec![
            outcome_totals(1, 4, CycleOutcome::Failed),
            outcome_totals(1, 8, CycleOutcome::Partial),
            outcome_totals(1, 0, CycleOutcome::Running),
            outcome_totals(1, 12, CycleOutcome::Succeeded),
        ]
    );
    // The failed cycle is nobody's last success; the partial one is the lead's.
    assert_eq!(
        totals.last_success,
        vec![ObjectSuccess {
            object: "lead".into(),
            started_at: at(600),
            ended_at: at(630),
        }]
    );

    // A late re-record of an older success does not move the last success back.
    s.record_cycle(&first).await.expect("re-record");
    let again = s.totals().await.expect("totals");
    assert_eq!(again.last_success[0].started_at, at(600));
    assert_eq!(again.objects, totals.objects);

    // Another process sees the same totals.
    let other = h.reopen().await;
    assert_eq!(other.totals().await.expect("totals"), again);
}

async fn totals_survive_beyond_the_retained_history(h: &Harness) {
    let s = h.store.as_ref();
    for i in 0..60 {
        let c = cycle(
            i * 60,
            CycleOutcome::Succeeded,
            vec![count("lead", Some(Direction::MarketoToCrm), 1)],
            2,
        );
        s.record_cycle(&c).await.expect("cycle");
    }
    assert_eq!(s.recent_cycles(50).await.expect("recent").len(), 50);
    let totals = s.totals().await.expect("totals");
    assert_eq!(
        totals.objects,
        vec![count("lead", Some(Direction::MarketoToCrm), 60)]
    );
    assert_eq!(
        totals.outcomes,
        vec![outcome_totals(60, 120, CycleOutcome::Succeeded)]
    );
}

async fn ledger_summary_splits_scheduled_from_waiting(h: &Harness) {
    let s = h.store.as_ref();
    assert!(s.ledger_summary().await.expect("empty").is_empty());
    let mut old_scheduled = sync_error("lead", "k1", 1, Some(100));
    old_scheduled.first_seen_at = at(-3600);
    let scheduled = sync_error("lead", "k2", 1, Some(200));
    let mut waiting = sync_error("lead", "k3", 5, None);
    waiting.first_seen_at = at(-7200);
    let mut other_direction = sync_error("lead", "k4", 1, Some(50));
    other_direction.direction = Direction::MarketoToCrm;
    let resolved = sync_error("company", "k5", 1, Some(50));
    let discarded = sync_error("company", "k6", 1, None);
    commit(
        s,
        StepCommit {
            errors_upsert: vec![
                old_scheduled,
                scheduled,
                waiting,
                other_direction.clone(),
                resolved.clone(),
                discarded.clone(),
            ],
            ..StepCommit::default()
        },
    )
    .await;
    commit(
        s,
        StepCommit {
            errors_resolve: vec![ErrorKey {
                object: "company".into(),
                direction: resolved.direction,
                record_key: "k5".into(),
            }],
            ..StepCommit::default()
        },
    )
    .await;
    assert!(
        s.set_error_status(discarded.id, ErrorStatus::Discarded, None)
            .await
            .expect("discard")
    );
    let summary = s.ledger_summary().await.expect("summary");
    assert_eq!(
        summary,
        vec![
            LedgerSummary {
                object: "lead".into(),
                direction: Direction::CrmToMarketo,
                scheduled: 2,
                waiting: 1,
                oldest_scheduled_at: Some(at(-3600)),
                oldest_waiting_at: Some(at(-7200)),
            },
            LedgerSummary {
                object: "lead".into(),
                direction: Direction::MarketoToCrm,
                scheduled: 1,
                waiting: 0,
                oldest_scheduled_at: Some(at(0)),
                oldest_waiting_at: None,
            },
        ]
    );
}

async fn link_counts_per_object(h: &Harness) {
    let s = h.store.as_ref();
    assert!(s.link_counts().await.expect("empty").is_empty());
    let mut gone = link("lead", "3", "c3", "c@example.com");
    gone.tombstone = Some(Tombstone {
        kind: TombstoneKind::Deleted,
        side: Side::Crm,
        at: at(20),
    });
    commit(
        s,
        StepCommit {
            links_upsert: vec![
                link("lead", "1", "c1", "a@example.com"),
                link("lead", "2", "c2", "b@example.com"),
                gone,
                link("company", "X", "cx", "x@example.com"),
            ],
            ..StepCommit::default()
        },
    )
    .await;
    assert_eq!(
        s.link_counts().await.expect("counts"),
        vec![
            LinkCount {
                object: "company".into(),
                live: 1,
                tombstoned: 0,
            },
            LinkCount {
                object: "lead".into(),
                live: 2,
                tombstoned: 1,
            },
        ]
    );
}

async fn cycles_since_filters_by_start(h: &Harness) {
    let s = h.store.as_ref();
    let mut ids = Vec::new();
    for i in 0..5 {
        let c = cycle(i * 3600, CycleOutcome::Succeeded, vec![], 1);
        s.record_cycle(&c).await.expect("cycle");
        ids.push(c.id);
    }
    let since: Vec<Uuid> = s
        .cycles_since(at(2 * 3600), 100)
        .await
        .expect("since")
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(since, vec![ids[4], ids[3], ids[2]]);
    let limited = s.cycles_since(at(0), 2).await.expect("limited");
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[0].id, ids[4]);
}
