//! The PostgreSQL and SQLite implementations of [`StateStore`].
//!
//! Both backends run the same SQL text (PostgreSQL-style `$n` placeholders, which sqlx's SQLite
//! driver accepts too, `INSERT ... ON CONFLICT ... DO UPDATE`, `RETURNING`), so one macro
//! generates both implementations; only connecting, migrating and beginning a transaction differ.
//! Dynamic SQL is built with `QueryBuilder`, which binds every value: only fixed fragments and
//! placeholders ever go into the SQL text.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row, SqlSafeStr, Transaction};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use super::{
    ApiUsage, BulkJob, Clock, CommitHook, Conflict, ConflictFilter, CycleCount, CycleOutcome,
    CycleRecord, Direction, ErrorFilter, ErrorStatus, JobDirection, JobState, KEYS_PER_LOOKUP,
    LINK_ROWS_PER_STATEMENT, Lease, LedgerSummary, Link, LinkCount, ObjectSuccess, OpenOptions,
    OutcomeTotals, PauseKind, PauseState, SchemaRecord, StateStore, StepCommit, StepTiming,
    StoreCounts, StoreError, StoreTotals, SyncError, Tombstone, Watermark, corrupt, parse_side,
    to_i64, to_u64, ttl_to_chrono,
};
use crate::model::{Fields, Side, Value};

/// How often opening and migrating a SQLite file are attempted when concurrent openers race.
const MIGRATION_ATTEMPTS: u32 = 5;

/// True when a multi-row statement of `rows` rows (or keys) goes in the connection's statement
/// cache: only when it is `full`, the size every chunk but the last has. The text of a statement
/// varies with its row count, and each pooled connection caches up to 100 compiled statements:
/// caching the odd sizes too filled every connection's cache with large statements used once
/// (a 1M-lead bootstrap's memory, issue 15).
fn cached(rows: usize, full: usize) -> bool {
    rows == full
}

/// Rows per multi-row statement for sync errors (13 binds each) and conflicts (10 binds each).
const ROWS_PER_STATEMENT: usize = 1000;

fn migrator(scripts: [(i64, &'static str, &'static str); 4]) -> Migrator {
    let migrations = scripts
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
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.set_locking(true);
    migrator
}

fn pg_migrator() -> Migrator {
    migrator([
        (
            1,
            "init",
            include_str!("../../migrations/postgres/0001_init.sql"),
        ),
        (
            2,
            "control",
            include_str!("../../migrations/postgres/0002_control.sql"),
        ),
        (
            3,
            "totals",
            include_str!("../../migrations/postgres/0003_totals.sql"),
        ),
        (
            4,
            "pause_kind",
            include_str!("../../migrations/postgres/0004_pause_kind.sql"),
        ),
    ])
}

fn sqlite_migrator() -> Migrator {
    migrator([
        (
            1,
            "init",
            include_str!("../../migrations/sqlite/0001_init.sql"),
        ),
        (
            2,
            "control",
            include_str!("../../migrations/sqlite/0002_control.sql"),
        ),
        (
            3,
            "totals",
            include_str!("../../migrations/sqlite/0003_totals.sql"),
        ),
        (
            4,
            "pause_kind",
            include_str!("../../migrations/sqlite/0004_pause_kind.sql"),
        ),
    ])
}

fn latest(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

fn query_error(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

struct ErrorRow {
    id: Uuid,
    object: String,
    direction: &'static str,
    record_key: String,
    other_key: Option<String>,
    payload: serde_json::Value,
    code: String,
    message: String,
    attempts: i64,
    first_seen_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    next_retry_at: Option<DateTime<Utc>>,
    status: &'static str,
}

struct ConflictRow {
    object: String,
    marketo_key: String,
    crm_key: String,
    field: String,
    marketo_value: serde_json::Value,
    crm_value: serde_json::Value,
    base_value: Option<serde_json::Value>,
    winner: &'static str,
    policy: String,
    at: DateTime<Utc>,
}

struct JobRow {
    direction: &'static str,
    id: String,
    kind: String,
    object: String,
    window_start: Option<DateTime<Utc>>,
    window_end: Option<DateTime<Utc>>,
    state: &'static str,
    bytes: i64,
    file_path: Option<String>,
    file_offset: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl JobRow {
    fn new(job: &BulkJob) -> Result<Self, StoreError> {
        Ok(JobRow {
            direction: job.direction.as_str(),
            id: job.id.clone(),
            kind: job.kind.clone(),
            object: job.object.clone(),
            window_start: job.window_start,
            window_end: job.window_end,
            state: job.state.as_str(),
            bytes: to_i64("bulk job bytes", job.bytes)?,
            file_path: job.file_path.clone(),
            file_offset: to_i64("bulk job file offset", job.file_offset)?,
            created_at: job.created_at,
            updated_at: job.updated_at,
        })
    }
}

/// A [`StepCommit`] checked, deduplicated, sorted (a stable lock order on PostgreSQL) and
/// serialised before the transaction begins, so that bad input fails before anything is written.
/// Links are the exception: their fields (which always serialise) are written as JSON when
/// bound, and a failure there still rolls the whole transaction back.
struct Prepared {
    links_delete: BTreeMap<String, BTreeSet<String>>,
    links: Vec<Link>,
    watermarks: Vec<Watermark>,
    errors: Vec<ErrorRow>,
    resolve: BTreeMap<(String, &'static str), BTreeSet<String>>,
    conflicts: Vec<ConflictRow>,
    jobs: Vec<JobRow>,
}

impl Prepared {
    fn new(commit: StepCommit) -> Result<Self, StoreError> {
        let mut links_delete: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for key in commit.links_delete {
            links_delete
                .entry(key.object)
                .or_default()
                .insert(key.marketo_key);
        }

        // One row per link key, the last given winning, in key order. The base and tombstone
        // are serialised when bound, straight from their fields.
        let mut links = commit.links_upsert;
        links.reverse();
        links.sort_by(|a, b| (&a.object, &a.marketo_key).cmp(&(&b.object, &b.marketo_key)));
        links.dedup_by(|later, kept| {
            later.object == kept.object && later.marketo_key == kept.marketo_key
        });

        let mut watermarks_by_key: BTreeMap<(&'static str, String, String), Watermark> =
            BTreeMap::new();
        for wm in commit.watermarks {
            let key = (wm.system.as_str(), wm.object.clone(), wm.queue.clone());
            match watermarks_by_key.get(&key) {
                Some(existing) if existing.at > wm.at => {}
                _ => {
                    watermarks_by_key.insert(key, wm);
                }
            }
        }

        let mut errors_by_key: BTreeMap<(String, &'static str, String), ErrorRow> = BTreeMap::new();
        for e in commit.errors_upsert {
            let row = ErrorRow {
                id: e.id,
                direction: e.direction.as_str(),
                other_key: e.other_key,
                payload: e.payload,
                code: e.code,
                message: e.message,
                attempts: i64::from(e.attempts),
                first_seen_at: e.first_seen_at,
                last_seen_at: e.last_seen_at,
                next_retry_at: e.next_retry_at,
                status: e.status.as_str(),
                object: e.object,
                record_key: e.record_key,
            };
            errors_by_key.insert(
                (row.object.clone(), row.direction, row.record_key.clone()),
                row,
            );
        }

        let mut resolve: BTreeMap<(String, &'static str), BTreeSet<String>> = BTreeMap::new();
        for key in commit.errors_resolve {
            resolve
                .entry((key.object, key.direction.as_str()))
                .or_default()
                .insert(key.record_key);
        }

        let mut conflicts = Vec::with_capacity(commit.conflicts.len());
        for c in commit.conflicts {
            conflicts.push(ConflictRow {
                marketo_value: c.marketo_value.to_json(),
                crm_value: c.crm_value.to_json(),
                base_value: c.base_value.as_ref().map(Value::to_json),
                winner: c.winner.as_str(),
                object: c.object,
                marketo_key: c.marketo_key,
                crm_key: c.crm_key,
                field: c.field,
                policy: c.policy,
                at: c.at,
            });
        }

        let mut jobs = Vec::with_capacity(commit.jobs.len());
        for job in &commit.jobs {
            jobs.push(JobRow::new(job)?);
        }

        Ok(Prepared {
            links_delete,
            links,
            watermarks: watermarks_by_key.into_values().collect(),
            errors: errors_by_key.into_values().collect(),
            resolve,
            conflicts,
            jobs,
        })
    }
}

/// The counts of a cycle as signed totals per (object, direction), for the totals' deltas.
type CountDeltas = BTreeMap<(String, &'static str), [i64; 7]>;

/// The direction stored in `sync_totals` for counts without one.
const NO_DIRECTION: &str = "none";

fn direction_key(direction: Option<Direction>) -> &'static str {
    direction.map_or(NO_DIRECTION, Direction::as_str)
}

/// Adds `sign` times the counts to `deltas`.
fn add_counts(
    deltas: &mut CountDeltas,
    counts: &[CycleCount],
    sign: i64,
) -> Result<(), StoreError> {
    for c in counts {
        let values = [
            c.read,
            c.created,
            c.updated,
            c.deleted,
            c.conflicts,
            c.skipped,
            c.failed,
        ];
        let entry = deltas
            .entry((c.object.clone(), direction_key(c.direction)))
            .or_insert([0; 7]);
        for (total, value) in entry.iter_mut().zip(values) {
            *total += sign * to_i64("cycle count", value)?;
        }
    }
    Ok(())
}

fn parse_count_direction(s: &str) -> Result<Option<Direction>, StoreError> {
    if s == NO_DIRECTION {
        return Ok(None);
    }
    Direction::parse(s).map(Some)
}

fn limit_i64(limit: u32, default: u32) -> i64 {
    i64::from(if limit == 0 { default } else { limit })
}

/// The PostgreSQL state store (production; several replicas may share it).
pub struct PgStore {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    hook: Option<CommitHook>,
    statements: AtomicU64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Returns the newest migration version this build knows (`validate` refuses a store
    /// migrated further by a newer build).
    pub fn latest_migration() -> i64 {
        latest(&pg_migrator())
    }

    /// Returns the store at `url` (`postgres://...`), migrated.
    ///
    /// # Errors
    ///
    /// [`StoreError::BadUrl`], [`StoreError::Connect`] or [`StoreError::Migrate`].
    pub async fn open(url: &str, options: OpenOptions) -> Result<Self, StoreError> {
        let connect = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|source| {
            StoreError::BadUrl {
                backend: "postgres",
                source,
            }
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await
            .map_err(|source| StoreError::Connect {
                backend: "postgres",
                source,
            })?;
        pg_migrator()
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: "postgres",
                source,
            })?;
        tracing::debug!(backend = "postgres", "state store opened");
        Ok(PgStore {
            pool,
            clock: options.clock,
            hook: options.commit_hook,
            statements: AtomicU64::new(0),
        })
    }

    /// Closes the pool (waits for connections in use to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write_guard(&self) -> Option<MutexGuard<'_, ()>> {
        None
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }
}

/// The SQLite state store (the embedded default for one instance).
///
/// SQLite has one writer at a time; writes of this process queue on a mutex, writes of other
/// processes wait up to [`OpenOptions::sqlite_busy_timeout`].
pub struct SqliteStore {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    hook: Option<CommitHook>,
    statements: AtomicU64,
    write_lock: Mutex<()>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Returns the newest migration version this build knows, as [`PgStore::latest_migration`].
    pub fn latest_migration() -> i64 {
        latest(&sqlite_migrator())
    }

    /// Returns the store at `url` (`sqlite:path`, `sqlite://path`, `sqlite::memory:`), migrated.
    /// The file is created when missing; the journal is WAL.
    ///
    /// # Errors
    ///
    /// [`StoreError::BadUrl`], [`StoreError::Connect`] or [`StoreError::Migrate`].
    pub async fn open(url: &str, options: OpenOptions) -> Result<Self, StoreError> {
        crate::limit_c_malloc_arenas();
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|source| StoreError::BadUrl {
                backend: "sqlite",
                source,
            })?
            .create_if_missing(true)
            // WAL: a commit appends to the log instead of journalling and rewriting pages, and
            // readers (status, the HTTP API) never block the writer. `synchronous = NORMAL` is
            // WAL's usual pairing: fsync at checkpoints, not at every commit; a power cut may
            // lose the last commits (the cycle then re-reads from the older watermark) but never
            // corrupts the file.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(options.sqlite_busy_timeout)
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let max = if in_memory {
            1
        } else {
            options.max_connections.max(1)
        };
        let mut pool_options = SqlitePoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30));
        if in_memory {
            // An in-memory database lives as long as its one connection: never recycle it.
            pool_options = pool_options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        // Opening a fresh file switches it to WAL, which needs a moment of exclusive access:
        // a replica opening the same fresh file at that moment is told "database is locked"
        // without waiting on the busy timeout. That is retried like the migration race below.
        let mut open_attempt: u32 = 1;
        let pool = loop {
            match pool_options.clone().connect_with(connect.clone()).await {
                Ok(pool) => break pool,
                Err(source) => {
                    let error = StoreError::Connect {
                        backend: "sqlite",
                        source,
                    };
                    if open_attempt >= MIGRATION_ATTEMPTS || !error.is_retryable() {
                        return Err(error);
                    }
                    tracing::debug!(open_attempt, error = %error, "sqlite open raced, retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(open_attempt))).await;
                    open_attempt += 1;
                }
            }
        };
        // SQLite has no migration lock. When two processes migrate a fresh file at once, the
        // loser fails to record the version the winner recorded; its next attempt finds the
        // migration applied (the script itself is idempotent).
        let migrator = sqlite_migrator();
        let mut attempt = 1;
        loop {
            match migrator.run(&pool).await {
                Ok(()) => break,
                Err(source) if attempt < MIGRATION_ATTEMPTS => {
                    tracing::debug!(attempt, error = %source, "sqlite migration raced, retrying");
                    attempt += 1;
                }
                Err(source) => {
                    return Err(StoreError::Migrate {
                        backend: "sqlite",
                        source,
                    });
                }
            }
        }
        tracing::debug!(backend = "sqlite", "state store opened");
        Ok(SqliteStore {
            pool,
            clock: options.clock,
            hook: options.commit_hook,
            statements: AtomicU64::new(0),
            write_lock: Mutex::new(()),
        })
    }

    /// Closes the pool (waits for connections in use to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write_guard(&self) -> Option<MutexGuard<'_, ()>> {
        Some(self.write_lock.lock().await)
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        // IMMEDIATE takes the write lock at BEGIN, so a transaction never fails half-way on a
        // read-to-write lock upgrade.
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

const LINK_COLUMNS: &str = "object, marketo_key, crm_key, base, base_hash, agreed_at, tombstone";
const WATERMARK_COLUMNS: &str = "system, object, queue, at, tie, cursor_state";
const ERROR_COLUMNS: &str = "id, object, direction, record_key, other_key, payload, code, \
                             message, attempts, first_seen_at, last_seen_at, next_retry_at, status";

macro_rules! impl_store {
    ($store:ident, $db:ty, $backend:literal) => {
        impl $store {
            fn tick(&self) {
                self.statements.fetch_add(1, Ordering::Relaxed);
            }

            /// Appends ` IN (?, ?, ...)` with one bound parameter per key.
            fn push_in_list<'k>(
                qb: &mut QueryBuilder<$db>,
                keys: impl IntoIterator<Item = &'k str>,
            ) {
                qb.push(" IN (");
                let mut sep = qb.separated(", ");
                for key in keys {
                    sep.push_bind(key);
                }
                qb.push(")");
            }

            fn get<'r, T>(
                what: &'static str,
                row: &'r <$db as sqlx::Database>::Row,
                column: &'static str,
            ) -> Result<T, StoreError>
            where
                T: sqlx::Decode<'r, $db> + sqlx::Type<$db>,
            {
                row.try_get::<T, _>(column)
                    .map_err(|e| corrupt(what, format!("column {column}: {e}")))
            }

            fn link_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Link, StoreError> {
                // Read straight into their types (no JSON tree first): a cycle reads thousands.
                let Json(base): Json<Fields> = Self::get("link base", row, "base")?;
                let tombstone: Option<Json<Tombstone>> =
                    Self::get("link tombstone", row, "tombstone")?;
                let tombstone = tombstone.map(|Json(t)| t);
                Ok(Link {
                    object: Self::get("link", row, "object")?,
                    marketo_key: Self::get("link", row, "marketo_key")?,
                    crm_key: Self::get("link", row, "crm_key")?,
                    base,
                    base_hash: Self::get("link", row, "base_hash")?,
                    agreed_at: Self::get("link", row, "agreed_at")?,
                    tombstone,
                })
            }

            fn watermark_from_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<Watermark, StoreError> {
                let system: String = Self::get("watermark", row, "system")?;
                let cursor: Option<Json<serde_json::Value>> =
                    Self::get("watermark", row, "cursor_state")?;
                Ok(Watermark {
                    system: parse_side("watermark", &system)?,
                    object: Self::get("watermark", row, "object")?,
                    queue: Self::get("watermark", row, "queue")?,
                    at: Self::get("watermark", row, "at")?,
                    tie: Self::get("watermark", row, "tie")?,
                    cursor: cursor.map(|c| c.0),
                })
            }

            fn job_from_row(row: &<$db as sqlx::Database>::Row) -> Result<BulkJob, StoreError> {
                let direction: String = Self::get("bulk job", row, "direction")?;
                let state: String = Self::get("bulk job", row, "state")?;
                let bytes: i64 = Self::get("bulk job", row, "bytes")?;
                let offset: i64 = Self::get("bulk job", row, "file_offset")?;
                Ok(BulkJob {
                    direction: JobDirection::parse(&direction)?,
                    id: Self::get("bulk job", row, "id")?,
                    kind: Self::get("bulk job", row, "kind")?,
                    object: Self::get("bulk job", row, "object")?,
                    window_start: Self::get("bulk job", row, "window_start")?,
                    window_end: Self::get("bulk job", row, "window_end")?,
                    state: JobState::parse(&state)?,
                    bytes: to_u64(bytes),
                    file_path: Self::get("bulk job", row, "file_path")?,
                    file_offset: to_u64(offset),
                    created_at: Self::get("bulk job", row, "created_at")?,
                    updated_at: Self::get("bulk job", row, "updated_at")?,
                })
            }

            fn error_from_row(row: &<$db as sqlx::Database>::Row) -> Result<SyncError, StoreError> {
                let direction: String = Self::get("sync error", row, "direction")?;
                let status: String = Self::get("sync error", row, "status")?;
                let payload: Json<serde_json::Value> = Self::get("sync error", row, "payload")?;
                let attempts: i64 = Self::get("sync error", row, "attempts")?;
                Ok(SyncError {
                    id: Self::get("sync error", row, "id")?,
                    object: Self::get("sync error", row, "object")?,
                    direction: Direction::parse(&direction)?,
                    record_key: Self::get("sync error", row, "record_key")?,
                    other_key: Self::get("sync error", row, "other_key")?,
                    payload: payload.0,
                    code: Self::get("sync error", row, "code")?,
                    message: Self::get("sync error", row, "message")?,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    first_seen_at: Self::get("sync error", row, "first_seen_at")?,
                    last_seen_at: Self::get("sync error", row, "last_seen_at")?,
                    next_retry_at: Self::get("sync error", row, "next_retry_at")?,
                    status: ErrorStatus::parse(&status)?,
                })
            }

            fn cycle_from_row(row: &<$db as sqlx::Database>::Row) -> Result<CycleRecord, StoreError> {
                let outcome: String = Self::get("cycle", row, "outcome")?;
                let steps: Json<Vec<StepTiming>> = Self::get("cycle", row, "steps")?;
                let counts: Json<Vec<CycleCount>> = Self::get("cycle", row, "counts")?;
                let api_calls: i64 = Self::get("cycle", row, "api_calls")?;
                Ok(CycleRecord {
                    id: Self::get("cycle", row, "id")?,
                    started_at: Self::get("cycle", row, "started_at")?,
                    ended_at: Self::get("cycle", row, "ended_at")?,
                    outcome: CycleOutcome::parse(&outcome)?,
                    steps: steps.0,
                    counts: counts.0,
                    api_calls: to_u64(api_calls),
                    message: Self::get("cycle", row, "message")?,
                })
            }

            fn conflict_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Conflict, StoreError> {
                let winner: String = Self::get("conflict", row, "winner")?;
                let marketo_value: Json<serde_json::Value> =
                    Self::get("conflict", row, "marketo_value")?;
                let crm_value: Json<serde_json::Value> = Self::get("conflict", row, "crm_value")?;
                let base_value: Option<Json<serde_json::Value>> =
                    Self::get("conflict", row, "base_value")?;
                Ok(Conflict {
                    id: Self::get("conflict", row, "id")?,
                    object: Self::get("conflict", row, "object")?,
                    marketo_key: Self::get("conflict", row, "marketo_key")?,
                    crm_key: Self::get("conflict", row, "crm_key")?,
                    field: Self::get("conflict", row, "field")?,
                    marketo_value: Value::from_json(&marketo_value.0),
                    crm_value: Value::from_json(&crm_value.0),
                    base_value: base_value.map(|v| Value::from_json(&v.0)),
                    winner: parse_side("conflict", &winner)?,
                    policy: Self::get("conflict", row, "policy")?,
                    at: Self::get("conflict", row, "at")?,
                })
            }

            fn usage_from_row(
                day: NaiveDate,
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<ApiUsage, StoreError> {
                let calls: i64 = Self::get("api usage", row, "calls")?;
                let bulk_bytes: i64 = Self::get("api usage", row, "bulk_bytes")?;
                Ok(ApiUsage {
                    day,
                    calls: to_u64(calls),
                    bulk_bytes: to_u64(bulk_bytes),
                })
            }

            fn lease_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Lease, StoreError> {
                Ok(Lease {
                    instance: Self::get("lease", row, "instance")?,
                    holder: Self::get("lease", row, "holder")?,
                    acquired_at: Self::get("lease", row, "acquired_at")?,
                    expires_at: Self::get("lease", row, "expires_at")?,
                })
            }

            async fn write_prepared(
                &self,
                tx: &mut Transaction<'static, $db>,
                p: &Prepared,
            ) -> Result<(), StoreError> {
                const OP: &str = "commit";
                for (object, keys) in &p.links_delete {
                    let keys: Vec<&String> = keys.iter().collect();
                    for chunk in keys.chunks(KEYS_PER_LOOKUP) {
                        let mut qb = QueryBuilder::<$db>::new("DELETE FROM links WHERE object = ");
                        qb.push_bind(object.as_str());
                        qb.push(" AND marketo_key");
                        Self::push_in_list(&mut qb, chunk.iter().map(|k| k.as_str()));
                        self.tick();
                        qb.build()
                            .persistent(cached(chunk.len(), KEYS_PER_LOOKUP))
                            .execute(&mut **tx)
                            .await
                            .map_err(query_error(OP))?;
                    }
                }

                for chunk in p.links.chunks(LINK_ROWS_PER_STATEMENT) {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO links (");
                    qb.push(LINK_COLUMNS);
                    qb.push(") ");
                    qb.push_values(chunk, |mut b, l| {
                        b.push_bind(l.object.as_str())
                            .push_bind(l.marketo_key.as_str())
                            .push_bind(l.crm_key.as_str())
                            .push_bind(Json(&l.base))
                            .push_bind(l.base_hash.as_str())
                            .push_bind(l.agreed_at)
                            .push_bind(l.tombstone.as_ref().map(Json));
                    });
                    qb.push(
                        " ON CONFLICT (object, marketo_key) DO UPDATE SET \
                         crm_key = excluded.crm_key, base = excluded.base, \
                         base_hash = excluded.base_hash, agreed_at = excluded.agreed_at, \
                         tombstone = excluded.tombstone",
                    );
                    self.tick();
                    qb.build()
                        .persistent(cached(chunk.len(), LINK_ROWS_PER_STATEMENT))
                        .execute(&mut **tx)
                        .await
                        .map_err(query_error(OP))?;
                }

                if !p.watermarks.is_empty() {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO watermarks (");
                    qb.push(WATERMARK_COLUMNS);
                    qb.push(") ");
                    qb.push_values(&p.watermarks, |mut b, w| {
                        b.push_bind(w.system.as_str())
                            .push_bind(w.object.as_str())
                            .push_bind(w.queue.as_str())
                            .push_bind(w.at)
                            .push_bind(w.tie.as_deref())
                            .push_bind(w.cursor.as_ref().map(Json));
                    });
                    qb.push(
                        " ON CONFLICT (system, object, queue) DO UPDATE SET \
                         at = excluded.at, tie = excluded.tie, cursor_state = excluded.cursor_state \
                         WHERE excluded.at >= watermarks.at",
                    );
                    self.tick();
                    qb.build().execute(&mut **tx).await.map_err(query_error(OP))?;
                }

                if let Some(hook) = &self.hook {
                    hook().await?;
                }

                for chunk in p.errors.chunks(ROWS_PER_STATEMENT) {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO sync_errors (");
                    qb.push(ERROR_COLUMNS);
                    qb.push(") ");
                    qb.push_values(chunk, |mut b, e| {
                        b.push_bind(e.id)
                            .push_bind(e.object.as_str())
                            .push_bind(e.direction)
                            .push_bind(e.record_key.as_str())
                            .push_bind(e.other_key.as_deref())
                            .push_bind(Json(&e.payload))
                            .push_bind(e.code.as_str())
                            .push_bind(e.message.as_str())
                            .push_bind(e.attempts)
                            .push_bind(e.first_seen_at)
                            .push_bind(e.last_seen_at)
                            .push_bind(e.next_retry_at)
                            .push_bind(e.status);
                    });
                    qb.push(
                        " ON CONFLICT (object, direction, record_key) DO UPDATE SET \
                         other_key = excluded.other_key, payload = excluded.payload, \
                         code = excluded.code, message = excluded.message, \
                         attempts = excluded.attempts, last_seen_at = excluded.last_seen_at, \
                         next_retry_at = excluded.next_retry_at, status = excluded.status",
                    );
                    self.tick();
                    qb.build()
                        .persistent(cached(chunk.len(), ROWS_PER_STATEMENT))
                        .execute(&mut **tx)
                        .await
                        .map_err(query_error(OP))?;
                }

                for ((object, direction), keys) in &p.resolve {
                    let keys: Vec<&String> = keys.iter().collect();
                    for chunk in keys.chunks(KEYS_PER_LOOKUP) {
                        let mut qb = QueryBuilder::<$db>::new(
                            "UPDATE sync_errors SET status = 'resolved', next_retry_at = NULL \
                             WHERE status = 'open' AND object = ",
                        );
                        qb.push_bind(object.as_str());
                        qb.push(" AND direction = ");
                        qb.push_bind(*direction);
                        qb.push(" AND record_key");
                        Self::push_in_list(&mut qb, chunk.iter().map(|k| k.as_str()));
                        self.tick();
                        qb.build()
                            .persistent(cached(chunk.len(), KEYS_PER_LOOKUP))
                            .execute(&mut **tx)
                            .await
                            .map_err(query_error(OP))?;
                    }
                }

                for chunk in p.conflicts.chunks(ROWS_PER_STATEMENT) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO conflicts (object, marketo_key, crm_key, field, \
                         marketo_value, crm_value, base_value, winner, policy, at) ",
                    );
                    qb.push_values(chunk, |mut b, c| {
                        b.push_bind(c.object.as_str())
                            .push_bind(c.marketo_key.as_str())
                            .push_bind(c.crm_key.as_str())
                            .push_bind(c.field.as_str())
                            .push_bind(Json(&c.marketo_value))
                            .push_bind(Json(&c.crm_value))
                            .push_bind(c.base_value.as_ref().map(Json))
                            .push_bind(c.winner)
                            .push_bind(c.policy.as_str())
                            .push_bind(c.at);
                    });
                    self.tick();
                    qb.build()
                        .persistent(cached(chunk.len(), ROWS_PER_STATEMENT))
                        .execute(&mut **tx)
                        .await
                        .map_err(query_error(OP))?;
                }

                for job in &p.jobs {
                    self.upsert_job_in(&mut **tx, job).await?;
                }
                Ok(())
            }

            async fn upsert_job_in<'e, E>(&self, executor: E, job: &JobRow) -> Result<(), StoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                self.tick();
                sqlx::query(
                    "INSERT INTO bulk_jobs (direction, id, kind, object, window_start, \
                     window_end, state, bytes, file_path, file_offset, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (direction, id) DO UPDATE SET kind = excluded.kind, \
                     object = excluded.object, window_start = excluded.window_start, \
                     window_end = excluded.window_end, state = excluded.state, \
                     bytes = excluded.bytes, file_path = excluded.file_path, \
                     file_offset = excluded.file_offset, updated_at = excluded.updated_at",
                )
                .bind(job.direction)
                .bind(job.id.as_str())
                .bind(job.kind.as_str())
                .bind(job.object.as_str())
                .bind(job.window_start)
                .bind(job.window_end)
                .bind(job.state)
                .bind(job.bytes)
                .bind(job.file_path.as_deref())
                .bind(job.file_offset)
                .bind(job.created_at)
                .bind(job.updated_at)
                .execute(executor)
                .await
                .map_err(query_error("upsert_job"))?;
                Ok(())
            }

            async fn links_by_keys(
                &self,
                op: &'static str,
                key_column: &'static str,
                object: &str,
                keys: &[String],
            ) -> Result<Vec<Link>, StoreError> {
                let mut links = Vec::with_capacity(keys.len());
                for chunk in keys.chunks(KEYS_PER_LOOKUP) {
                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(LINK_COLUMNS);
                    qb.push(" FROM links WHERE object = ");
                    qb.push_bind(object);
                    qb.push(" AND ");
                    qb.push(key_column);
                    Self::push_in_list(&mut qb, chunk.iter().map(String::as_str));
                    self.tick();
                    let rows = qb
                        .build()
                        .persistent(cached(chunk.len(), KEYS_PER_LOOKUP))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(query_error(op))?;
                    for row in &rows {
                        links.push(Self::link_from_row(row)?);
                    }
                }
                Ok(links)
            }
        }

        #[async_trait::async_trait]
        impl StateStore for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            fn statements_executed(&self) -> u64 {
                self.statements.load(Ordering::Relaxed)
            }

            async fn commit(&self, commit: StepCommit) -> Result<(), StoreError> {
                if commit.is_empty() {
                    return Ok(());
                }
                let prepared = Prepared::new(commit)?;
                let _guard = self.write_guard().await;
                self.tick();
                let mut tx = self.begin().await.map_err(query_error("commit"))?;
                // On an error the transaction is dropped, which rolls it back.
                self.write_prepared(&mut tx, &prepared).await?;
                self.tick();
                tx.commit().await.map_err(query_error("commit"))?;
                tracing::debug!(
                    backend = $backend,
                    links = prepared.links.len(),
                    watermarks = prepared.watermarks.len(),
                    errors = prepared.errors.len(),
                    conflicts = prepared.conflicts.len(),
                    "step committed"
                );
                Ok(())
            }

            async fn links_by_marketo_keys(
                &self,
                object: &str,
                keys: &[String],
            ) -> Result<Vec<Link>, StoreError> {
                self.links_by_keys("links_by_marketo_keys", "marketo_key", object, keys)
                    .await
            }

            async fn links_by_crm_keys(
                &self,
                object: &str,
                keys: &[String],
            ) -> Result<Vec<Link>, StoreError> {
                self.links_by_keys("links_by_crm_keys", "crm_key", object, keys)
                    .await
            }

            async fn links_page(
                &self,
                object: &str,
                after_marketo_key: Option<&str>,
                limit: u32,
            ) -> Result<Vec<Link>, StoreError> {
                self.tick();
                // Two statements rather than `($2 IS NULL OR marketo_key > $2)`, so that a
                // cached generic plan still walks the primary key index.
                let query = match after_marketo_key {
                    Some(after) => sqlx::query(
                        "SELECT object, marketo_key, crm_key, base, base_hash, agreed_at, \
                         tombstone FROM links WHERE object = $1 AND marketo_key > $2 \
                         ORDER BY marketo_key LIMIT $3",
                    )
                    .bind(object)
                    .bind(after),
                    None => sqlx::query(
                        "SELECT object, marketo_key, crm_key, base, base_hash, agreed_at, \
                         tombstone FROM links WHERE object = $1 ORDER BY marketo_key LIMIT $2",
                    )
                    .bind(object),
                };
                let rows = query
                    .bind(limit_i64(limit, 1000))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(query_error("links_page"))?;
                rows.iter().map(Self::link_from_row).collect()
            }

            async fn watermark(
                &self,
                system: Side,
                object: &str,
                queue: &str,
            ) -> Result<Option<Watermark>, StoreError> {
                self.tick();
                let row = sqlx::query(
                    "SELECT system, object, queue, at, tie, cursor_state FROM watermarks \
                     WHERE system = $1 AND object = $2 AND queue = $3",
                )
                .bind(system.as_str())
                .bind(object)
                .bind(queue)
                .fetch_optional(&self.pool)
                .await
                .map_err(query_error("watermark"))?;
                row.as_ref().map(Self::watermark_from_row).transpose()
            }

            async fn watermarks(&self) -> Result<Vec<Watermark>, StoreError> {
                self.tick();
                let rows = sqlx::query(
                    "SELECT system, object, queue, at, tie, cursor_state FROM watermarks \
                     ORDER BY system, object, queue",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("watermarks"))?;
                rows.iter().map(Self::watermark_from_row).collect()
            }

            async fn reset_watermark(&self, watermark: &Watermark) -> Result<(), StoreError> {
                let _guard = self.write_guard().await;
                self.tick();
                sqlx::query(
                    "INSERT INTO watermarks (system, object, queue, at, tie, cursor_state) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (system, object, queue) DO UPDATE SET at = excluded.at, \
                     tie = excluded.tie, cursor_state = excluded.cursor_state",
                )
                .bind(watermark.system.as_str())
                .bind(watermark.object.as_str())
                .bind(watermark.queue.as_str())
                .bind(watermark.at)
                .bind(watermark.tie.as_deref())
                .bind(watermark.cursor.as_ref().map(Json))
                .execute(&self.pool)
                .await
                .map_err(query_error("reset_watermark"))?;
                Ok(())
            }

            async fn upsert_job(&self, job: &BulkJob) -> Result<(), StoreError> {
                let row = JobRow::new(job)?;
                let _guard = self.write_guard().await;
                self.upsert_job_in(&self.pool, &row).await
            }

            async fn job(
                &self,
                direction: JobDirection,
                id: &str,
            ) -> Result<Option<BulkJob>, StoreError> {
                self.tick();
                let row = sqlx::query(
                    "SELECT direction, id, kind, object, window_start, window_end, state, bytes, \
                     file_path, file_offset, created_at, updated_at FROM bulk_jobs \
                     WHERE direction = $1 AND id = $2",
                )
                .bind(direction.as_str())
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(query_error("job"))?;
                row.as_ref().map(Self::job_from_row).transpose()
            }

            async fn unfinished_jobs(
                &self,
                direction: JobDirection,
            ) -> Result<Vec<BulkJob>, StoreError> {
                self.tick();
                let rows = sqlx::query(
                    "SELECT direction, id, kind, object, window_start, window_end, state, bytes, \
                     file_path, file_offset, created_at, updated_at FROM bulk_jobs \
                     WHERE direction = $1 AND state NOT IN ('consumed', 'failed', 'cancelled') \
                     ORDER BY created_at, id",
                )
                .bind(direction.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("unfinished_jobs"))?;
                rows.iter().map(Self::job_from_row).collect()
            }

            async fn add_api_usage(
                &self,
                day: NaiveDate,
                calls: u64,
                bulk_bytes: u64,
            ) -> Result<ApiUsage, StoreError> {
                let calls = to_i64("api usage calls", calls)?;
                let bulk_bytes = to_i64("api usage bulk bytes", bulk_bytes)?;
                let _guard = self.write_guard().await;
                self.tick();
                let row = sqlx::query(
                    "INSERT INTO api_usage (day, calls, bulk_bytes) VALUES ($1, $2, $3) \
                     ON CONFLICT (day) DO UPDATE SET calls = api_usage.calls + excluded.calls, \
                     bulk_bytes = api_usage.bulk_bytes + excluded.bulk_bytes \
                     RETURNING calls, bulk_bytes",
                )
                .bind(day)
                .bind(calls)
                .bind(bulk_bytes)
                .fetch_one(&self.pool)
                .await
                .map_err(query_error("add_api_usage"))?;
                Self::usage_from_row(day, &row)
            }

            async fn api_usage(&self, day: NaiveDate) -> Result<ApiUsage, StoreError> {
                self.tick();
                let row = sqlx::query("SELECT calls, bulk_bytes FROM api_usage WHERE day = $1")
                    .bind(day)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(query_error("api_usage"))?;
                let Some(row) = row else {
                    return Ok(ApiUsage {
                        day,
                        calls: 0,
                        bulk_bytes: 0,
                    });
                };
                Self::usage_from_row(day, &row)
            }

            async fn put_schema(&self, schema: &SchemaRecord) -> Result<(), StoreError> {
                let _guard = self.write_guard().await;
                self.tick();
                sqlx::query(
                    "INSERT INTO schemas (side, object, hash, schema, fetched_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (side, object) DO UPDATE SET \
                     hash = excluded.hash, schema = excluded.schema, \
                     fetched_at = excluded.fetched_at",
                )
                .bind(schema.side.as_str())
                .bind(schema.object.as_str())
                .bind(schema.hash.as_str())
                .bind(Json(&schema.schema))
                .bind(schema.fetched_at)
                .execute(&self.pool)
                .await
                .map_err(query_error("put_schema"))?;
                Ok(())
            }

            async fn schema(
                &self,
                side: Side,
                object: &str,
            ) -> Result<Option<SchemaRecord>, StoreError> {
                self.tick();
                let row = sqlx::query(
                    "SELECT side, object, hash, schema, fetched_at FROM schemas \
                     WHERE side = $1 AND object = $2",
                )
                .bind(side.as_str())
                .bind(object)
                .fetch_optional(&self.pool)
                .await
                .map_err(query_error("schema"))?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let side: String = Self::get("schema", &row, "side")?;
                let schema: Json<serde_json::Value> = Self::get("schema", &row, "schema")?;
                Ok(Some(SchemaRecord {
                    side: parse_side("schema", &side)?,
                    object: Self::get("schema", &row, "object")?,
                    hash: Self::get("schema", &row, "hash")?,
                    schema: schema.0,
                    fetched_at: Self::get("schema", &row, "fetched_at")?,
                }))
            }

            async fn record_cycle(&self, cycle: &CycleRecord) -> Result<(), StoreError> {
                const OP: &str = "record_cycle";
                let api_calls = to_i64("cycle api calls", cycle.api_calls)?;
                let mut deltas = CountDeltas::new();
                add_counts(&mut deltas, &cycle.counts, 1)?;
                let mut outcomes: BTreeMap<&'static str, (i64, i64)> = BTreeMap::new();
                outcomes.insert(cycle.outcome.as_str(), (1, api_calls));
                let _guard = self.write_guard().await;
                self.tick();
                let mut tx = self.begin().await.map_err(query_error(OP))?;
                // The stored version (the same cycle recorded at its start, or again): its
                // share of the totals is taken out before the new one is added.
                self.tick();
                let old = sqlx::query("SELECT outcome, counts, api_calls FROM cycles WHERE id = $1")
                    .bind(cycle.id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query_error(OP))?;
                if let Some(row) = old {
                    let outcome: String = Self::get("cycle", &row, "outcome")?;
                    let counts: Json<Vec<CycleCount>> = Self::get("cycle", &row, "counts")?;
                    let calls: i64 = Self::get("cycle", &row, "api_calls")?;
                    add_counts(&mut deltas, &counts.0, -1)?;
                    let entry = outcomes
                        .entry(CycleOutcome::parse(&outcome)?.as_str())
                        .or_insert((0, 0));
                    entry.0 -= 1;
                    entry.1 -= calls;
                }
                self.tick();
                sqlx::query(
                    "INSERT INTO cycles (id, started_at, ended_at, outcome, steps, counts, \
                     api_calls, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, \
                     ended_at = excluded.ended_at, outcome = excluded.outcome, \
                     steps = excluded.steps, counts = excluded.counts, \
                     api_calls = excluded.api_calls, message = excluded.message",
                )
                .bind(cycle.id)
                .bind(cycle.started_at)
                .bind(cycle.ended_at)
                .bind(cycle.outcome.as_str())
                .bind(Json(&cycle.steps))
                .bind(Json(&cycle.counts))
                .bind(api_calls)
                .bind(cycle.message.as_deref())
                .execute(&mut *tx)
                .await
                .map_err(query_error(OP))?;
                for ((object, direction), d) in &deltas {
                    if d.iter().all(|v| *v == 0) {
                        continue;
                    }
                    self.tick();
                    sqlx::query(
                        "INSERT INTO sync_totals (object, direction, read, created, updated, \
                         deleted, conflicts, skipped, failed) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (object, direction) DO UPDATE SET \
                         read = sync_totals.read + excluded.read, \
                         created = sync_totals.created + excluded.created, \
                         updated = sync_totals.updated + excluded.updated, \
                         deleted = sync_totals.deleted + excluded.deleted, \
                         conflicts = sync_totals.conflicts + excluded.conflicts, \
                         skipped = sync_totals.skipped + excluded.skipped, \
                         failed = sync_totals.failed + excluded.failed",
                    )
                    .bind(object.as_str())
                    .bind(*direction)
                    .bind(d[0])
                    .bind(d[1])
                    .bind(d[2])
                    .bind(d[3])
                    .bind(d[4])
                    .bind(d[5])
                    .bind(d[6])
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error(OP))?;
                }
                for (outcome, (cycles, calls)) in &outcomes {
                    if *cycles == 0 && *calls == 0 {
                        continue;
                    }
                    self.tick();
                    sqlx::query(
                        "INSERT INTO cycle_totals (outcome, cycles, api_calls) VALUES ($1, $2, $3) \
                         ON CONFLICT (outcome) DO UPDATE SET \
                         cycles = cycle_totals.cycles + excluded.cycles, \
                         api_calls = cycle_totals.api_calls + excluded.api_calls",
                    )
                    .bind(*outcome)
                    .bind(*cycles)
                    .bind(*calls)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error(OP))?;
                }
                let succeeded = matches!(
                    cycle.outcome,
                    CycleOutcome::Succeeded | CycleOutcome::Partial
                );
                if let (true, Some(ended_at)) = (succeeded, cycle.ended_at) {
                    let objects: BTreeSet<&str> =
                        cycle.counts.iter().map(|c| c.object.as_str()).collect();
                    for object in objects {
                        self.tick();
                        sqlx::query(
                            "INSERT INTO object_success (object, started_at, ended_at) \
                             VALUES ($1, $2, $3) ON CONFLICT (object) DO UPDATE SET \
                             started_at = excluded.started_at, ended_at = excluded.ended_at \
                             WHERE excluded.started_at >= object_success.started_at",
                        )
                        .bind(object)
                        .bind(cycle.started_at)
                        .bind(ended_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(query_error(OP))?;
                    }
                }
                self.tick();
                tx.commit().await.map_err(query_error(OP))?;
                Ok(())
            }

            async fn cycles_since(
                &self,
                since: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<CycleRecord>, StoreError> {
                self.tick();
                let rows = sqlx::query(
                    "SELECT id, started_at, ended_at, outcome, steps, counts, api_calls, message \
                     FROM cycles WHERE started_at >= $1 ORDER BY started_at DESC LIMIT $2",
                )
                .bind(since)
                .bind(limit_i64(limit, 1000))
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("cycles_since"))?;
                rows.iter().map(Self::cycle_from_row).collect()
            }

            async fn totals(&self) -> Result<StoreTotals, StoreError> {
                const OP: &str = "totals";
                self.tick();
                let rows = sqlx::query(
                    "SELECT object, direction, read, created, updated, deleted, conflicts, \
                     skipped, failed FROM sync_totals ORDER BY object, direction",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(query_error(OP))?;
                let mut objects = Vec::with_capacity(rows.len());
                for row in &rows {
                    let n = |column: &'static str| -> Result<u64, StoreError> {
                        let v: i64 = Self::get("totals", row, column)?;
                        Ok(to_u64(v))
                    };
                    let direction: String = Self::get("totals", row, "direction")?;
                    objects.push(CycleCount {
                        object: Self::get("totals", row, "object")?,
                        direction: parse_count_direction(&direction)?,
                        read: n("read")?,
                        created: n("created")?,
                        updated: n("updated")?,
                        deleted: n("deleted")?,
                        conflicts: n("conflicts")?,
                        skipped: n("skipped")?,
                        failed: n("failed")?,
                    });
                }
                self.tick();
                let rows = sqlx::query(
                    "SELECT outcome, cycles, api_calls FROM cycle_totals ORDER BY outcome",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(query_error(OP))?;
                let mut outcomes = Vec::with_capacity(rows.len());
                for row in &rows {
                    let outcome: String = Self::get("totals", row, "outcome")?;
                    let cycles: i64 = Self::get("totals", row, "cycles")?;
                    let calls: i64 = Self::get("totals", row, "api_calls")?;
                    outcomes.push(OutcomeTotals {
                        outcome: CycleOutcome::parse(&outcome)?,
                        cycles: to_u64(cycles),
                        api_calls: to_u64(calls),
                    });
                }
                self.tick();
                let rows = sqlx::query(
                    "SELECT object, started_at, ended_at FROM object_success ORDER BY object",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(query_error(OP))?;
                let mut last_success = Vec::with_capacity(rows.len());
                for row in &rows {
                    last_success.push(ObjectSuccess {
                        object: Self::get("totals", row, "object")?,
                        started_at: Self::get("totals", row, "started_at")?,
                        ended_at: Self::get("totals", row, "ended_at")?,
                    });
                }
                Ok(StoreTotals {
                    objects,
                    outcomes,
                    last_success,
                })
            }

            async fn ledger_summary(&self) -> Result<Vec<LedgerSummary>, StoreError> {
                self.tick();
                let rows = sqlx::query(
                    "SELECT object, direction, \
                     SUM(CASE WHEN next_retry_at IS NOT NULL THEN 1 ELSE 0 END) AS scheduled, \
                     SUM(CASE WHEN next_retry_at IS NULL THEN 1 ELSE 0 END) AS waiting, \
                     MIN(CASE WHEN next_retry_at IS NOT NULL THEN first_seen_at END) \
                        AS oldest_scheduled_at, \
                     MIN(CASE WHEN next_retry_at IS NULL THEN first_seen_at END) \
                        AS oldest_waiting_at \
                     FROM sync_errors WHERE status = 'open' \
                     GROUP BY object, direction ORDER BY object, direction",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("ledger_summary"))?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let direction: String = Self::get("ledger", row, "direction")?;
                    let scheduled: i64 = Self::get("ledger", row, "scheduled")?;
                    let waiting: i64 = Self::get("ledger", row, "waiting")?;
                    out.push(LedgerSummary {
                        object: Self::get("ledger", row, "object")?,
                        direction: Direction::parse(&direction)?,
                        scheduled: to_u64(scheduled),
                        waiting: to_u64(waiting),
                        oldest_scheduled_at: Self::get("ledger", row, "oldest_scheduled_at")?,
                        oldest_waiting_at: Self::get("ledger", row, "oldest_waiting_at")?,
                    });
                }
                Ok(out)
            }

            async fn link_counts(&self) -> Result<Vec<LinkCount>, StoreError> {
                self.tick();
                let rows = sqlx::query(
                    "SELECT object, \
                     SUM(CASE WHEN tombstone IS NULL THEN 1 ELSE 0 END) AS live, \
                     SUM(CASE WHEN tombstone IS NOT NULL THEN 1 ELSE 0 END) AS tombstoned \
                     FROM links GROUP BY object ORDER BY object",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("link_counts"))?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let live: i64 = Self::get("link counts", row, "live")?;
                    let tombstoned: i64 = Self::get("link counts", row, "tombstoned")?;
                    out.push(LinkCount {
                        object: Self::get("link counts", row, "object")?,
                        live: to_u64(live),
                        tombstoned: to_u64(tombstoned),
                    });
                }
                Ok(out)
            }

            async fn recent_cycles(&self, limit: u32) -> Result<Vec<CycleRecord>, StoreError> {
                self.tick();
                let rows = sqlx::query(
                    "SELECT id, started_at, ended_at, outcome, steps, counts, api_calls, message \
                     FROM cycles ORDER BY started_at DESC LIMIT $1",
                )
                .bind(limit_i64(limit, 20))
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("recent_cycles"))?;
                rows.iter().map(Self::cycle_from_row).collect()
            }

            async fn errors_due(
                &self,
                now: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<SyncError>, StoreError> {
                self.tick();
                let rows = sqlx::query(
                    "SELECT id, object, direction, record_key, other_key, payload, code, message, \
                     attempts, first_seen_at, last_seen_at, next_retry_at, status \
                     FROM sync_errors WHERE status = 'open' AND next_retry_at IS NOT NULL \
                     AND next_retry_at <= $1 ORDER BY next_retry_at LIMIT $2",
                )
                .bind(now)
                .bind(limit_i64(limit, 100))
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("errors_due"))?;
                rows.iter().map(Self::error_from_row).collect()
            }

            async fn list_errors(&self, filter: &ErrorFilter) -> Result<Vec<SyncError>, StoreError> {
                self.tick();
                let rows = sqlx::query(
                    "SELECT id, object, direction, record_key, other_key, payload, code, message, \
                     attempts, first_seen_at, last_seen_at, next_retry_at, status \
                     FROM sync_errors WHERE ($1 IS NULL OR status = $1) \
                     AND ($2 IS NULL OR object = $2) \
                     ORDER BY last_seen_at DESC, record_key LIMIT $3",
                )
                .bind(filter.status.map(ErrorStatus::as_str))
                .bind(filter.object.as_deref())
                .bind(limit_i64(filter.limit, 100))
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("list_errors"))?;
                rows.iter().map(Self::error_from_row).collect()
            }

            async fn error(&self, id: Uuid) -> Result<Option<SyncError>, StoreError> {
                self.tick();
                let row = sqlx::query(
                    "SELECT id, object, direction, record_key, other_key, payload, code, message, \
                     attempts, first_seen_at, last_seen_at, next_retry_at, status \
                     FROM sync_errors WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(query_error("error"))?;
                row.as_ref().map(Self::error_from_row).transpose()
            }

            async fn set_error_status(
                &self,
                id: Uuid,
                status: ErrorStatus,
                next_retry_at: Option<DateTime<Utc>>,
            ) -> Result<bool, StoreError> {
                let _guard = self.write_guard().await;
                self.tick();
                let done = sqlx::query(
                    "UPDATE sync_errors SET status = $1, next_retry_at = $2 WHERE id = $3",
                )
                .bind(status.as_str())
                .bind(next_retry_at)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(query_error("set_error_status"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn list_conflicts(
                &self,
                filter: &ConflictFilter,
            ) -> Result<Vec<Conflict>, StoreError> {
                self.tick();
                let rows = sqlx::query(
                    "SELECT id, object, marketo_key, crm_key, field, marketo_value, crm_value, \
                     base_value, winner, policy, at FROM conflicts \
                     WHERE ($1 IS NULL OR object = $1) AND ($2 IS NULL OR field = $2) \
                     AND ($3 IS NULL OR winner = $3) AND ($4 IS NULL OR at >= $4) \
                     ORDER BY id DESC LIMIT $5",
                )
                .bind(filter.object.as_deref())
                .bind(filter.field.as_deref())
                .bind(filter.winner.map(Side::as_str))
                .bind(filter.since)
                .bind(limit_i64(filter.limit, 100))
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("list_conflicts"))?;
                rows.iter().map(Self::conflict_from_row).collect()
            }

            async fn counts(&self) -> Result<StoreCounts, StoreError> {
                self.tick();
                let row = sqlx::query(
                    "SELECT \
                     (SELECT COUNT(*) FROM links WHERE tombstone IS NULL) AS links, \
                     (SELECT COUNT(*) FROM links WHERE tombstone IS NOT NULL) AS tombstones, \
                     (SELECT COUNT(*) FROM sync_errors WHERE status = 'open') AS open_errors, \
                     (SELECT COUNT(*) FROM sync_errors WHERE status = 'discarded') AS discarded, \
                     (SELECT COUNT(*) FROM conflicts) AS conflicts, \
                     (SELECT COUNT(*) FROM bulk_jobs \
                        WHERE state NOT IN ('consumed', 'failed', 'cancelled')) AS jobs",
                )
                .fetch_one(&self.pool)
                .await
                .map_err(query_error("counts"))?;
                let n = |column: &'static str| -> Result<u64, StoreError> {
                    let v: i64 = Self::get("counts", &row, column)?;
                    Ok(to_u64(v))
                };
                Ok(StoreCounts {
                    links: n("links")?,
                    tombstones: n("tombstones")?,
                    open_errors: n("open_errors")?,
                    discarded_errors: n("discarded")?,
                    conflicts: n("conflicts")?,
                    unfinished_jobs: n("jobs")?,
                })
            }

            async fn try_acquire_lease(
                &self,
                instance: &str,
                holder: &str,
                ttl: Duration,
            ) -> Result<bool, StoreError> {
                let now = self.clock.now();
                let expires = now + ttl_to_chrono(ttl);
                let _guard = self.write_guard().await;
                self.tick();
                // The conditional upsert is atomic on both backends: a live lease of another
                // holder is left alone (0 rows), a free, expired or own lease is taken (1 row).
                let done = sqlx::query(
                    "INSERT INTO leases (instance, holder, acquired_at, expires_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (instance) DO UPDATE SET \
                     holder = excluded.holder, \
                     acquired_at = CASE WHEN leases.holder = excluded.holder \
                        AND leases.expires_at > excluded.acquired_at \
                        THEN leases.acquired_at ELSE excluded.acquired_at END, \
                     expires_at = excluded.expires_at \
                     WHERE leases.holder = excluded.holder \
                        OR leases.expires_at <= excluded.acquired_at",
                )
                .bind(instance)
                .bind(holder)
                .bind(now)
                .bind(expires)
                .execute(&self.pool)
                .await
                .map_err(query_error("try_acquire_lease"))?;
                let acquired = done.rows_affected() == 1;
                tracing::debug!(backend = $backend, instance, holder, acquired, "lease attempt");
                Ok(acquired)
            }

            async fn renew_lease(
                &self,
                instance: &str,
                holder: &str,
                ttl: Duration,
            ) -> Result<bool, StoreError> {
                let now = self.clock.now();
                let expires = now + ttl_to_chrono(ttl);
                let _guard = self.write_guard().await;
                self.tick();
                let done = sqlx::query(
                    "UPDATE leases SET expires_at = $1 \
                     WHERE instance = $2 AND holder = $3 AND expires_at > $4",
                )
                .bind(expires)
                .bind(instance)
                .bind(holder)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(query_error("renew_lease"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn release_lease(&self, instance: &str, holder: &str) -> Result<bool, StoreError> {
                let _guard = self.write_guard().await;
                self.tick();
                let done = sqlx::query("DELETE FROM leases WHERE instance = $1 AND holder = $2")
                    .bind(instance)
                    .bind(holder)
                    .execute(&self.pool)
                    .await
                    .map_err(query_error("release_lease"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn pause(
                &self,
                reason: &str,
                until: Option<DateTime<Utc>>,
            ) -> Result<PauseState, StoreError> {
                let now = self.clock.now();
                let _guard = self.write_guard().await;
                self.tick();
                sqlx::query(
                    "INSERT INTO control_pause (id, reason, paused_until, paused_at, kind) \
                     VALUES (1, $1, $2, $3, 'operator') ON CONFLICT (id) DO UPDATE SET \
                     reason = excluded.reason, paused_until = excluded.paused_until, \
                     paused_at = excluded.paused_at, kind = excluded.kind",
                )
                .bind(reason)
                .bind(until)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(query_error("pause"))?;
                Ok(PauseState {
                    kind: PauseKind::Operator,
                    reason: reason.to_owned(),
                    until,
                    paused_at: now,
                })
            }

            async fn pause_for_quota(
                &self,
                reason: &str,
                until: DateTime<Utc>,
            ) -> Result<Option<PauseState>, StoreError> {
                let now = self.clock.now();
                let _guard = self.write_guard().await;
                self.tick();
                // Atomic on both backends: an operator's pause in force is left alone (0 rows);
                // no pause, a quota pause, or an operator's pause that has ended is replaced.
                let done = sqlx::query(
                    "INSERT INTO control_pause (id, reason, paused_until, paused_at, kind) \
                     VALUES (1, $1, $2, $3, 'quota') ON CONFLICT (id) DO UPDATE SET \
                     reason = excluded.reason, paused_until = excluded.paused_until, \
                     paused_at = excluded.paused_at, kind = excluded.kind \
                     WHERE control_pause.kind = 'quota' \
                        OR control_pause.paused_until <= excluded.paused_at",
                )
                .bind(reason)
                .bind(until)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(query_error("pause_for_quota"))?;
                if done.rows_affected() == 0 {
                    return Ok(None);
                }
                Ok(Some(PauseState {
                    kind: PauseKind::Quota,
                    reason: reason.to_owned(),
                    until: Some(until),
                    paused_at: now,
                }))
            }

            async fn resume(&self) -> Result<bool, StoreError> {
                let _guard = self.write_guard().await;
                self.tick();
                let done = sqlx::query("DELETE FROM control_pause WHERE id = 1")
                    .execute(&self.pool)
                    .await
                    .map_err(query_error("resume"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn pause_state(&self) -> Result<Option<PauseState>, StoreError> {
                self.tick();
                let row = sqlx::query(
                    "SELECT reason, paused_until, paused_at, kind FROM control_pause WHERE id = 1",
                )
                .fetch_optional(&self.pool)
                .await
                .map_err(query_error("pause_state"))?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let kind: String = Self::get("pause", &row, "kind")?;
                let state = PauseState {
                    kind: PauseKind::parse(&kind)?,
                    reason: Self::get("pause", &row, "reason")?,
                    until: Self::get("pause", &row, "paused_until")?,
                    paused_at: Self::get("pause", &row, "paused_at")?,
                };
                // A pause whose end has passed is over; the row stays until the next write.
                if state.until.is_some_and(|until| until <= self.clock.now()) {
                    return Ok(None);
                }
                Ok(Some(state))
            }

            async fn lease(&self, instance: &str) -> Result<Option<Lease>, StoreError> {
                self.tick();
                let row = sqlx::query(
                    "SELECT instance, holder, acquired_at, expires_at FROM leases \
                     WHERE instance = $1",
                )
                .bind(instance)
                .fetch_optional(&self.pool)
                .await
                .map_err(query_error("lease"))?;
                row.as_ref().map(Self::lease_from_row).transpose()
            }
        }
    };
}

impl_store!(PgStore, Postgres, "postgres");
impl_store!(SqliteStore, Sqlite, "sqlite");
