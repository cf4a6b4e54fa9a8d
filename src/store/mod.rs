//! The state store: what the service remembers between cycles and across restarts.
//!
//! [`StateStore`] is implemented twice: on PostgreSQL (production, several replicas) and on SQLite
//! (the embedded default for one instance). [`open`] picks the backend from the URL scheme and
//! applies that backend's migrations (`migrations/postgres/`, `migrations/sqlite/`) before it
//! returns.
//!
//! # What it holds (DESIGN.md section 3)
//!
//! - [`Link`]s: one per synced record pair, with the canonical values both sides last agreed on.
//! - [`Watermark`]s: one per (system, object, queue).
//! - [`BulkJob`]s: every bulk export and import job, written before it is enqueued.
//! - [`ApiUsage`]: Marketo calls and bulk-extract bytes per Marketo day.
//! - [`SchemaRecord`]s: the last Describe result per object with its hash.
//! - [`CycleRecord`]s: one per cycle, with step timings and counts.
//! - [`SyncError`]s: per-record failures with payload, code, attempts and next retry.
//! - [`Conflict`]s: every field changed on both sides, with both values and the base.
//! - [`Lease`]s: which process runs which Marketo instance.
//!
//! # The checkpoint contract
//!
//! A step's results are committed with [`StateStore::commit`]: the watermarks it reached, the
//! links (and their `base` values) of the records it wrote, the errors of the records it could not
//! write and the conflicts it settled go to the store in ONE transaction. Either all of it is
//! stored or none of it (a crash, a killed process or an error in the middle leaves the previous
//! state untouched). A re-run after a crash therefore starts from the last committed watermarks
//! and re-delivers what was not committed; every remote write is an upsert keyed by an external
//! id, so re-delivery is harmless.
//!
//! Batch writes are chunked multi-row `INSERT ... ON CONFLICT` statements, so 10,000 links take a
//! handful of round trips ([`LINK_ROWS_PER_STATEMENT`] rows per statement).

mod sql;
mod staged;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::model::{CycleOutcome, Direction};
use crate::model::{Fields, Side, Value};

pub use sql::{PgStore, SqliteStore};
pub use staged::StagedStore;

/// Rows of links written per multi-row statement (9 binds each, far below both backends' limits:
/// 65,535 binds on PostgreSQL, 32,766 on SQLite).
pub const LINK_ROWS_PER_STATEMENT: usize = 1000;

/// Keys looked up per `IN (...)` statement by the batch reads.
pub const KEYS_PER_LOOKUP: usize = 1000;

/// How long a SQLite connection waits for another writer before it reports busy, by default.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// An error of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL names no supported backend.
    #[error(
        "unsupported state store url scheme {scheme:?}: expected postgres://, postgresql:// or sqlite:"
    )]
    UnsupportedUrl {
        /// The scheme found (the URL itself is not kept: it may hold a password).
        scheme: String,
    },
    /// The store URL could not be parsed.
    #[error("invalid {backend} state store url: {source}")]
    BadUrl {
        /// "postgres" or "sqlite".
        backend: &'static str,
        /// The driver's complaint.
        #[source]
        source: sqlx::Error,
    },
    /// The database could not be reached.
    #[error("cannot connect to the {backend} state store: {source}")]
    Connect {
        /// "postgres" or "sqlite".
        backend: &'static str,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate the {backend} state store: {source}")]
    Migrate {
        /// "postgres" or "sqlite".
        backend: &'static str,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed.
    #[error("state store operation {op} failed: {source}")]
    Query {
        /// The store operation that ran it ("commit", "links_by_marketo_keys", ...).
        op: &'static str,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored row could not be read back into its type.
    #[error("corrupt {what} in the state store: {detail}")]
    Corrupt {
        /// The entity ("link", "watermark", ...).
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A value given to the store cannot be stored.
    #[error("invalid {what} given to the state store: {reason}")]
    Invalid {
        /// The entity and field ("bulk job bytes", ...).
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A commit was aborted before it was committed (by a commit hook).
    #[error("commit aborted: {reason}")]
    Aborted {
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// Returns true when retrying the same operation later may succeed: lost connections, pool
    /// timeouts, serialization failures and deadlocks on PostgreSQL, busy or locked on SQLite.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Connect { source, .. } | StoreError::Query { source, .. } => {
                sqlx_error_is_retryable(source)
            }
            StoreError::UnsupportedUrl { .. }
            | StoreError::BadUrl { .. }
            | StoreError::Migrate { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Invalid { .. }
            | StoreError::Aborted { .. } => false,
        }
    }
}

fn sqlx_error_is_retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            let code = code.as_ref();
            // PostgreSQL SQLSTATEs are five characters: serialization failure, deadlock,
            // connection exceptions, too many connections, admin shutdown and friends.
            if code.len() == 5 {
                return matches!(
                    code,
                    "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03"
                ) || code.starts_with("08");
            }
            // SQLite result codes (possibly extended, at most four digits): the primary code is
            // the low byte.
            match code.parse::<i32>() {
                Ok(n) => matches!(n & 0xff, 5 | 6), // SQLITE_BUSY, SQLITE_LOCKED
                Err(_) => false,
            }
        }
        _ => false,
    }
}

/// A source of the current time, injected so that lease expiry can be tested without sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Returns the current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to (for tests and simulations).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// Returns a clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let delta = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = now.checked_add_signed(delta).unwrap_or(*now);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A hook run inside [`StateStore::commit`] after the watermarks and links are written and
/// before the errors, conflicts and jobs are, i.e. in the middle of the transaction. Returning an
/// error aborts (rolls back) the commit. Used by the conformance suite to test atomicity and a
/// process killed mid-transaction; production code leaves it unset.
pub type CommitHook = Arc<dyn Fn() -> BoxFuture<'static, Result<(), StoreError>> + Send + Sync>;

/// Options for [`open_with`].
#[derive(Clone)]
pub struct OpenOptions {
    /// The clock used for leases and error bookkeeping.
    pub clock: Arc<dyn Clock>,
    /// The maximum number of pooled connections (SQLite in-memory stores always use one).
    pub max_connections: u32,
    /// How long a SQLite connection waits for another process's write lock before it reports
    /// busy (a retryable error).
    pub sqlite_busy_timeout: Duration,
    /// A hook run in the middle of every commit (tests only).
    pub commit_hook: Option<CommitHook>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            clock: Arc::new(SystemClock),
            max_connections: 8,
            sqlite_busy_timeout: SQLITE_BUSY_TIMEOUT,
            commit_hook: None,
        }
    }
}

impl fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenOptions")
            .field("clock", &self.clock)
            .field("max_connections", &self.max_connections)
            .field("sqlite_busy_timeout", &self.sqlite_busy_timeout)
            .field("commit_hook", &self.commit_hook.is_some())
            .finish()
    }
}

/// Returns the store at `url`, migrated: `postgres://` or `postgresql://` for PostgreSQL,
/// `sqlite:` for SQLite (the file is created when missing; WAL mode; busy timeout).
///
/// # Errors
///
/// [`StoreError::UnsupportedUrl`] for another scheme, [`StoreError::BadUrl`],
/// [`StoreError::Connect`] or [`StoreError::Migrate`] when the database cannot be used.
pub async fn open(url: &str) -> Result<Arc<dyn StateStore>, StoreError> {
    open_with(url, OpenOptions::default()).await
}

/// Returns the store at `url`, migrated, with explicit options (see [`open`]).
///
/// # Errors
///
/// As [`open`].
pub async fn open_with(url: &str, options: OpenOptions) -> Result<Arc<dyn StateStore>, StoreError> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "postgres" | "postgresql" => Ok(Arc::new(PgStore::open(url, options).await?)),
        "sqlite" => {
            let file = create_sqlite_parent_dir(url)?;
            match SqliteStore::open(url, options).await {
                Ok(store) => Ok(Arc::new(store)),
                // "unable to open database file" names no file: name it (a SQLite path holds
                // no password). A retryable error (busy, locked) keeps its kind.
                Err(StoreError::Connect { source, .. })
                    if file.is_some() && !sqlx_error_is_retryable(&source) =>
                {
                    Err(StoreError::Invalid {
                        what: "sqlite state store file",
                        reason: format!(
                            "cannot open {}: {source}",
                            file.unwrap_or_default().display()
                        ),
                    })
                }
                Err(error) => Err(error),
            }
        }
        other => Err(StoreError::UnsupportedUrl {
            scheme: other.chars().take(32).collect(),
        }),
    }
}

/// Returns the file of a `sqlite:` URL (`None` for an in-memory database), after creating its
/// parent directories when they are missing, so that a first start with the default
/// `sqlite://state/marketo-sync.db` works.
///
/// # Errors
///
/// [`StoreError::BadUrl`] for a URL SQLite cannot parse, [`StoreError::Invalid`] naming the
/// directory when it cannot be created.
pub fn create_sqlite_parent_dir(url: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    use std::str::FromStr;
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let connect =
        sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(|source| StoreError::BadUrl {
            backend: "sqlite",
            source,
        })?;
    let file = connect.get_filename().to_path_buf();
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        std::fs::create_dir_all(parent).map_err(|error| StoreError::Invalid {
            what: "sqlite state store directory",
            reason: format!("cannot create {}: {error}", parent.display()),
        })?;
    }
    Ok(Some(file))
}

/// Returns the Marketo day of an instant: its calendar date in America/Chicago, where Marketo's
/// daily API and bulk-extract quotas turn (the key of [`ApiUsage`]).
pub fn marketo_day(at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&chrono_tz::America::Chicago).date_naive()
}

/// Returns when the Marketo day of `at` began and when it ends: midnight America/Chicago, when
/// the daily quotas reset (a day is 23 or 25 hours long when daylight saving time turns).
pub fn marketo_day_bounds(at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    use chrono::TimeZone;
    let midnight = |date: NaiveDate| {
        chrono_tz::America::Chicago
            .from_local_datetime(&date.and_time(chrono::NaiveTime::MIN))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    };
    let day = marketo_day(at);
    let start = midnight(day).unwrap_or(at);
    let end = day
        .succ_opt()
        .and_then(midnight)
        .unwrap_or(start + chrono::Duration::hours(24));
    (start, end)
}

/// Why a link is no longer live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TombstoneKind {
    /// The record was deleted.
    Deleted,
    /// The record was merged into another one (its key on the side that merged).
    Merged {
        /// The surviving record's key.
        into: String,
    },
}

/// The marker left on a link whose record was deleted or merged away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Deleted or merged.
    #[serde(flatten)]
    pub kind: TombstoneKind,
    /// The side where it happened.
    pub side: Side,
    /// When it was noticed.
    pub at: DateTime<Utc>,
}

/// One synced record pair and the values both sides last agreed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The object ("lead", "company", "opportunity", a custom object's name).
    pub object: String,
    /// The key on the Marketo side (lead id, externalCompanyId, ...).
    pub marketo_key: String,
    /// The key on the CRM side.
    pub crm_key: String,
    /// The canonical field values both sides last agreed on.
    pub base: Fields,
    /// `model::fields_hash(&base)`.
    pub base_hash: String,
    /// When they agreed.
    pub agreed_at: DateTime<Utc>,
    /// Set when the pair was deleted or merged away.
    pub tombstone: Option<Tombstone>,
}

/// The key of a link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LinkKey {
    /// The object.
    pub object: String,
    /// The key on the Marketo side.
    pub marketo_key: String,
}

/// How far one source has been read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watermark {
    /// The system read.
    pub system: Side,
    /// The object read.
    pub object: String,
    /// The queue ("default" for record changes; one per Marketo activity queue).
    pub queue: String,
    /// The high watermark.
    pub at: DateTime<Utc>,
    /// The tie-break key at `at`, where the source has one.
    pub tie: Option<String>,
    /// An opaque cursor (a CRM's paging state, a Marketo paging token).
    pub cursor: Option<serde_json::Value>,
}

/// Export (from Marketo) or import (into Marketo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobDirection {
    /// A bulk extract.
    Export,
    /// A bulk import.
    Import,
}

impl JobDirection {
    /// Returns the name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobDirection::Export => "export",
            JobDirection::Import => "import",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "export" => Ok(JobDirection::Export),
            "import" => Ok(JobDirection::Import),
            other => Err(corrupt("bulk job", format!("unknown direction {other:?}"))),
        }
    }
}

/// The state of a bulk job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Created in Marketo, not enqueued yet.
    Created,
    /// Enqueued in Marketo.
    Queued,
    /// Marketo is working on it.
    Processing,
    /// Marketo finished it; the file (or the import result) is ready.
    Completed,
    /// The service consumed its result fully (terminal).
    Consumed,
    /// Marketo reported it failed (terminal).
    Failed,
    /// Cancelled (terminal).
    Cancelled,
}

impl JobState {
    /// Returns the name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Created => "created",
            JobState::Queued => "queued",
            JobState::Processing => "processing",
            JobState::Completed => "completed",
            JobState::Consumed => "consumed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Returns true for states a job never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Consumed | JobState::Failed | JobState::Cancelled
        )
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "created" => JobState::Created,
            "queued" => JobState::Queued,
            "processing" => JobState::Processing,
            "completed" => JobState::Completed,
            "consumed" => JobState::Consumed,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => return Err(corrupt("bulk job", format!("unknown state {other:?}"))),
        })
    }
}

/// A bulk export or import job (`export_jobs`/`import_jobs` of DESIGN.md, one table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkJob {
    /// Export or import.
    pub direction: JobDirection,
    /// Marketo's job id (exportId, batchId).
    pub id: String,
    /// The API family ("leads", "activities", "program_members", "custom_objects", ...).
    pub kind: String,
    /// The object it covers.
    pub object: String,
    /// The start of the export window.
    pub window_start: Option<DateTime<Utc>>,
    /// The end of the export window.
    pub window_end: Option<DateTime<Utc>>,
    /// Where it is.
    pub state: JobState,
    /// The file size in bytes (as Marketo reports it), 0 until known.
    pub bytes: u64,
    /// The local file it is downloaded to or uploaded from.
    pub file_path: Option<String>,
    /// How far the file has been downloaded or consumed, for resume.
    pub file_offset: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Marketo API usage on one Marketo day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiUsage {
    /// The Marketo day (America/Chicago).
    pub day: NaiveDate,
    /// REST calls made.
    pub calls: u64,
    /// Bulk-extract bytes.
    pub bulk_bytes: u64,
}

/// The last Describe result of one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaRecord {
    /// The side described.
    pub side: Side,
    /// The object.
    pub object: String,
    /// Its hash (`ObjectSchema::hash`).
    pub hash: String,
    /// The schema as JSON (an `ObjectSchema` or the raw Describe answer).
    pub schema: serde_json::Value,
    /// When it was fetched.
    pub fetched_at: DateTime<Utc>,
}

impl Direction {
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "marketo_to_crm" => Ok(Direction::MarketoToCrm),
            "crm_to_marketo" => Ok(Direction::CrmToMarketo),
            other => Err(corrupt("direction", format!("unknown direction {other:?}"))),
        }
    }
}

impl CycleOutcome {
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "running" => CycleOutcome::Running,
            "succeeded" => CycleOutcome::Succeeded,
            "partial" => CycleOutcome::Partial,
            "failed" => CycleOutcome::Failed,
            "cancelled" => CycleOutcome::Cancelled,
            other => return Err(corrupt("cycle", format!("unknown outcome {other:?}"))),
        })
    }
}

/// The timing of one step of a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTiming {
    /// The step ("schema", "gather", "reconcile", "apply", "commit", or finer).
    pub step: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

/// The counts of one object in one direction during a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CycleCount {
    /// The object.
    pub object: String,
    /// The direction (`None` for counts that have none, such as records read).
    pub direction: Option<Direction>,
    /// Records read.
    pub read: u64,
    /// Records created.
    pub created: u64,
    /// Records updated.
    pub updated: u64,
    /// Records deleted.
    pub deleted: u64,
    /// Conflicts settled.
    pub conflicts: u64,
    /// Records skipped (echoes, unchanged).
    pub skipped: u64,
    /// Records that failed.
    pub failed: u64,
}

/// One cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleRecord {
    /// Its id.
    pub id: Uuid,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended (`None` while running).
    pub ended_at: Option<DateTime<Utc>>,
    /// How it ended.
    pub outcome: CycleOutcome,
    /// Step timings in order.
    pub steps: Vec<StepTiming>,
    /// Counts per object and direction.
    pub counts: Vec<CycleCount>,
    /// Marketo API calls used.
    pub api_calls: u64,
    /// A short message (the error of a failed cycle); never a record.
    pub message: Option<String>,
}

/// The state of a sync error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorStatus {
    /// To be retried.
    Open,
    /// Given up on by an operator.
    Discarded,
    /// A later attempt succeeded.
    Resolved,
}

impl ErrorStatus {
    /// Returns the name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorStatus::Open => "open",
            ErrorStatus::Discarded => "discarded",
            ErrorStatus::Resolved => "resolved",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "open" => ErrorStatus::Open,
            "discarded" => ErrorStatus::Discarded,
            "resolved" => ErrorStatus::Resolved,
            other => return Err(corrupt("sync error", format!("unknown status {other:?}"))),
        })
    }
}

/// A record the remote rejected.
///
/// There is at most one per (object, direction, record key): upserting the same key again
/// replaces payload, code, message, attempts and next retry, keeps `id` and `first_seen_at`, and
/// re-opens it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncError {
    /// Its id (kept from the first upsert of the same key).
    pub id: Uuid,
    /// The object.
    pub object: String,
    /// Which way the record was going.
    pub direction: Direction,
    /// The record's key on the side it came from.
    pub record_key: String,
    /// Its key on the other side, when linked.
    pub other_key: Option<String>,
    /// The payload that was rejected (mapped fields, never secrets).
    pub payload: serde_json::Value,
    /// The remote's code ("1003", "23505", ...).
    pub code: String,
    /// The remote's message.
    pub message: String,
    /// Attempts so far (written as given).
    pub attempts: u32,
    /// When it first failed.
    pub first_seen_at: DateTime<Utc>,
    /// When it last failed.
    pub last_seen_at: DateTime<Utc>,
    /// When to retry (`None`: not automatically).
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Open, discarded or resolved.
    pub status: ErrorStatus,
}

/// The key of a sync error.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ErrorKey {
    /// The object.
    pub object: String,
    /// Which way the record was going.
    pub direction: Direction,
    /// The record's key on the side it came from.
    pub record_key: String,
}

/// Which sync errors to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFilter {
    /// Only this status.
    pub status: Option<ErrorStatus>,
    /// Only this object.
    pub object: Option<String>,
    /// At most this many (newest first); 0 means 100.
    pub limit: u32,
}

/// Which conflicts [`StateStore::list_conflicts`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictFilter {
    /// Only this object.
    pub object: Option<String>,
    /// Only this field (canonical name).
    pub field: Option<String>,
    /// Only conflicts this side won.
    pub winner: Option<Side>,
    /// Only conflicts settled at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// At most this many (newest first); 0 means 100.
    pub limit: u32,
}

/// A field changed on both sides since `base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The store's id (ignored on insert).
    pub id: i64,
    /// The object.
    pub object: String,
    /// The Marketo key.
    pub marketo_key: String,
    /// The CRM key.
    pub crm_key: String,
    /// The field (canonical name).
    pub field: String,
    /// Marketo's value.
    pub marketo_value: Value,
    /// The CRM's value.
    pub crm_value: Value,
    /// The agreed value before (`None` when the field had none).
    pub base_value: Option<Value>,
    /// The side that won.
    pub winner: Side,
    /// The policy that decided ("crm_wins", "marketo_wins", "newest_wins").
    pub policy: String,
    /// When it was settled.
    pub at: DateTime<Utc>,
}

/// Who runs a Marketo instance, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The Marketo instance (munchkin id).
    pub instance: String,
    /// The holder (a process identity).
    pub holder: String,
    /// When the holder acquired it.
    pub acquired_at: DateTime<Utc>,
    /// When it lapses unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// A pause of all sync work, kept in the store so that `marketo-sync pause` in one process
/// pauses the daemon running in another, and a restarted daemon honours a quota pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseState {
    /// Who paused: an operator, or the engine when Marketo's daily quota ran out.
    #[serde(default)]
    pub kind: PauseKind,
    /// Why, for people.
    pub reason: String,
    /// When the pause ends by itself; `None` until `resume`.
    pub until: Option<DateTime<Utc>>,
    /// When it was set.
    pub paused_at: DateTime<Utc>,
}

/// Who set a [`PauseState`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseKind {
    /// `marketo-sync pause` (or the API): until `resume` or its `until`.
    #[default]
    Operator,
    /// The engine, after Marketo's daily quota ran out (607, or the configured daily budget):
    /// until the Marketo day turns (midnight America/Chicago), or `resume`.
    Quota,
}

impl PauseKind {
    /// Returns the stored name (`operator`, `quota`).
    pub fn as_str(self) -> &'static str {
        match self {
            PauseKind::Operator => "operator",
            PauseKind::Quota => "quota",
        }
    }

    /// Parses a stored name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] for an unknown name.
    pub fn parse(text: &str) -> Result<PauseKind, StoreError> {
        match text {
            "operator" => Ok(PauseKind::Operator),
            "quota" => Ok(PauseKind::Quota),
            other => Err(corrupt(
                "pause kind",
                format!("unknown pause kind {other:?}"),
            )),
        }
    }
}

/// The writes of one step, committed in one transaction by [`StateStore::commit`].
///
/// Applied in this order: link deletions, link upserts, watermarks, error upserts, error
/// resolutions, conflicts, jobs. Links are deduplicated by key (the last one wins), errors too.
#[derive(Debug, Clone, Default)]
pub struct StepCommit {
    /// Watermarks to set. A watermark only moves forward: one older than the stored one is
    /// ignored (use [`StateStore::reset_watermark`] to move one back).
    pub watermarks: Vec<Watermark>,
    /// Links to insert or replace (a tombstoned link is an upsert with `tombstone` set).
    pub links_upsert: Vec<Link>,
    /// Links to remove.
    pub links_delete: Vec<LinkKey>,
    /// Errors to record or update.
    pub errors_upsert: Vec<SyncError>,
    /// Errors whose record now went through (set to resolved).
    pub errors_resolve: Vec<ErrorKey>,
    /// Conflicts to log.
    pub conflicts: Vec<Conflict>,
    /// Bulk jobs to insert or update.
    pub jobs: Vec<BulkJob>,
}

impl StepCommit {
    /// Returns true when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.watermarks.is_empty()
            && self.links_upsert.is_empty()
            && self.links_delete.is_empty()
            && self.errors_upsert.is_empty()
            && self.errors_resolve.is_empty()
            && self.conflicts.is_empty()
            && self.jobs.is_empty()
    }
}

/// Counts for the status page and `marketo-sync status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounts {
    /// Live links (no tombstone).
    pub links: u64,
    /// Tombstoned links.
    pub tombstones: u64,
    /// Open sync errors.
    pub open_errors: u64,
    /// Discarded sync errors.
    pub discarded_errors: u64,
    /// Conflicts logged.
    pub conflicts: u64,
    /// Bulk jobs not in a terminal state.
    pub unfinished_jobs: u64,
}

/// How many cycles ended one way, and the Marketo calls they used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeTotals {
    /// How they ended (`Running` for cycles not finished yet).
    pub outcome: CycleOutcome,
    /// How many cycles.
    pub cycles: u64,
    /// Marketo REST calls they used.
    pub api_calls: u64,
}

/// The last successful (succeeded or partial) cycle that covered an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSuccess {
    /// The object.
    pub object: String,
    /// When that cycle started: every change made before this instant has been read.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: DateTime<Utc>,
}

/// Everything [`StateStore::totals`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreTotals {
    /// Record totals per object and direction (`direction` is `None` for counts that have
    /// none), ordered by object then direction. Kept by [`StateStore::record_cycle`] in the
    /// cycle's own transaction, so they cover every cycle since the store was created.
    pub objects: Vec<CycleCount>,
    /// Cycle totals per outcome.
    pub outcomes: Vec<OutcomeTotals>,
    /// The last successful cycle per object.
    pub last_success: Vec<ObjectSuccess>,
}

/// The open ledger (open sync errors) of one object in one direction, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSummary {
    /// The object.
    pub object: String,
    /// Which way the records were going.
    pub direction: Direction,
    /// Open entries with an automatic retry scheduled (deferred: waiting for a parent record
    /// or for a retry after a failure the engine expects to clear).
    pub scheduled: u64,
    /// Open entries without an automatic retry: they wait for an operator.
    pub waiting: u64,
    /// When the oldest scheduled entry first failed.
    pub oldest_scheduled_at: Option<DateTime<Utc>>,
    /// When the oldest entry waiting for an operator first failed.
    pub oldest_waiting_at: Option<DateTime<Utc>>,
}

/// Live and tombstoned links of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCount {
    /// The object.
    pub object: String,
    /// Linked pairs (no tombstone).
    pub live: u64,
    /// Pairs deleted or merged away.
    pub tombstoned: u64,
}

/// The persistent state of the service. Object-safe; share it as `Arc<dyn StateStore>`.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Returns "postgres" or "sqlite".
    fn backend(&self) -> &'static str;

    /// Returns how many SQL statements this store has sent so far (for metrics and tests).
    fn statements_executed(&self) -> u64;

    /// Writes one step's results in ONE transaction: all of it or none of it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] when a statement fails (the transaction is rolled back),
    /// [`StoreError::Invalid`] for a value that cannot be stored (checked before writing),
    /// [`StoreError::Aborted`] when the commit hook aborted it.
    async fn commit(&self, commit: StepCommit) -> Result<(), StoreError>;

    /// Returns the links of `object` with these Marketo keys (unknown keys are left out).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn links_by_marketo_keys(
        &self,
        object: &str,
        keys: &[String],
    ) -> Result<Vec<Link>, StoreError>;

    /// Returns the links of `object` with these CRM keys (unknown keys are left out).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn links_by_crm_keys(
        &self,
        object: &str,
        keys: &[String],
    ) -> Result<Vec<Link>, StoreError>;

    /// Returns up to `limit` links of `object` ordered by Marketo key, starting after
    /// `after_marketo_key` (keyset paging: pass the last key of the previous page).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn links_page(
        &self,
        object: &str,
        after_marketo_key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Link>, StoreError>;

    /// Returns the stored watermark of (system, object, queue).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn watermark(
        &self,
        system: Side,
        object: &str,
        queue: &str,
    ) -> Result<Option<Watermark>, StoreError>;

    /// Returns every stored watermark.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn watermarks(&self) -> Result<Vec<Watermark>, StoreError>;

    /// Sets a watermark unconditionally, also backwards (bootstrap, operator reset).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn reset_watermark(&self, watermark: &Watermark) -> Result<(), StoreError>;

    /// Inserts or updates a bulk job (call it before enqueueing the job).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Invalid`].
    async fn upsert_job(&self, job: &BulkJob) -> Result<(), StoreError>;

    /// Returns one bulk job.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn job(&self, direction: JobDirection, id: &str) -> Result<Option<BulkJob>, StoreError>;

    /// Returns the jobs of `direction` not in a terminal state, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn unfinished_jobs(&self, direction: JobDirection) -> Result<Vec<BulkJob>, StoreError>;

    /// Adds calls and bulk bytes to a Marketo day's usage atomically and returns the new totals.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Invalid`].
    async fn add_api_usage(
        &self,
        day: NaiveDate,
        calls: u64,
        bulk_bytes: u64,
    ) -> Result<ApiUsage, StoreError>;

    /// Returns a Marketo day's usage (zeros when nothing was recorded).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn api_usage(&self, day: NaiveDate) -> Result<ApiUsage, StoreError>;

    /// Stores the last Describe result of (side, object), replacing the previous one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn put_schema(&self, schema: &SchemaRecord) -> Result<(), StoreError>;

    /// Returns the last Describe result of (side, object).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn schema(&self, side: Side, object: &str) -> Result<Option<SchemaRecord>, StoreError>;

    /// Inserts or replaces a cycle (call it at the start and again at the end).
    ///
    /// In the same transaction it adds the difference between the new and the stored version
    /// of the cycle to the totals ([`StateStore::totals`]), so recording a cycle again never
    /// counts it twice, and a succeeded or partial cycle that ended becomes the last success of
    /// every object it has counts for.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Invalid`].
    async fn record_cycle(&self, cycle: &CycleRecord) -> Result<(), StoreError>;

    /// Returns the cycles that started at or after `since`, newest first, at most `limit`.
    ///
    /// The default filters [`StateStore::recent_cycles`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn cycles_since(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<CycleRecord>, StoreError> {
        let mut cycles = self.recent_cycles(limit).await?;
        cycles.retain(|c| c.started_at >= since);
        Ok(cycles)
    }

    /// Returns the totals kept by [`StateStore::record_cycle`]: records per object and
    /// direction, cycles per outcome, and the last successful cycle per object.
    ///
    /// The default reports none (stores without totals, such as test fakes).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn totals(&self) -> Result<StoreTotals, StoreError> {
        Ok(StoreTotals::default())
    }

    /// Returns the open ledger per object and direction (see [`LedgerSummary`]).
    ///
    /// The default reports an empty ledger.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn ledger_summary(&self) -> Result<Vec<LedgerSummary>, StoreError> {
        Ok(Vec::new())
    }

    /// Returns the live and tombstoned links per object, ordered by object.
    ///
    /// The default reports none.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn link_counts(&self) -> Result<Vec<LinkCount>, StoreError> {
        Ok(Vec::new())
    }

    /// Returns the `limit` most recent cycles, newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn recent_cycles(&self, limit: u32) -> Result<Vec<CycleRecord>, StoreError>;

    /// Returns up to `limit` open errors whose `next_retry_at` is at or before `now`, earliest
    /// first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn errors_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<SyncError>, StoreError>;

    /// Returns sync errors matching `filter`, most recently seen first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn list_errors(&self, filter: &ErrorFilter) -> Result<Vec<SyncError>, StoreError>;

    /// Returns one sync error.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn error(&self, id: Uuid) -> Result<Option<SyncError>, StoreError>;

    /// Sets an error's status and next retry (operator retry: `Open` + now; discard:
    /// `Discarded` + `None`). Returns false when there is no such error.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn set_error_status(
        &self,
        id: Uuid,
        status: ErrorStatus,
        next_retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError>;

    /// Returns the `limit` most recent conflicts, newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn recent_conflicts(&self, limit: u32) -> Result<Vec<Conflict>, StoreError> {
        self.list_conflicts(&ConflictFilter {
            limit,
            ..ConflictFilter::default()
        })
        .await
    }

    /// Returns the conflicts that pass `filter`, newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn list_conflicts(&self, filter: &ConflictFilter) -> Result<Vec<Conflict>, StoreError>;

    /// Returns the counts shown by status.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn counts(&self) -> Result<StoreCounts, StoreError>;

    /// Takes the lease of `instance` for `holder` for `ttl` when it is free, expired, or already
    /// held by `holder` (then it is extended). Returns true when `holder` now holds it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn try_acquire_lease(
        &self,
        instance: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Extends the lease of `instance` by `ttl` from now if `holder` still holds it and it has
    /// not expired. Returns false when the lease was lost (stop working on the instance).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn renew_lease(
        &self,
        instance: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Gives the lease of `instance` up if `holder` holds it. Returns true when it did.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn release_lease(&self, instance: &str, holder: &str) -> Result<bool, StoreError>;

    /// Pauses all sync work until `until` (or until [`StateStore::resume`] when `None`),
    /// replacing any earlier pause, and returns the stored pause.
    ///
    /// The default refuses: stores that cannot persist a pause (test fakes) report
    /// [`StoreError::Invalid`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn pause(
        &self,
        reason: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<PauseState, StoreError> {
        let _ = (reason, until);
        Err(StoreError::Invalid {
            what: "pause",
            reason: "this store cannot persist a pause".to_owned(),
        })
    }

    /// Records a quota pause (Marketo's daily quota ran out) until `until`, unless an
    /// operator's pause is in force (it is left alone: it outranks the quota pause). Returns the
    /// stored pause, or `None` when an operator's pause was kept.
    ///
    /// The default refuses like [`StateStore::pause`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn pause_for_quota(
        &self,
        reason: &str,
        until: DateTime<Utc>,
    ) -> Result<Option<PauseState>, StoreError> {
        let _ = (reason, until);
        Err(StoreError::Invalid {
            what: "pause",
            reason: "this store cannot persist a pause".to_owned(),
        })
    }

    /// Ends the pause (of either kind). Returns true when there was one.
    ///
    /// The default reports no pause.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn resume(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Returns the pause in force now (a pause whose `until` has passed is over), if any.
    ///
    /// The default reports none.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] or [`StoreError::Corrupt`].
    async fn pause_state(&self) -> Result<Option<PauseState>, StoreError> {
        Ok(None)
    }

    /// Returns the lease of `instance`, expired or not.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    async fn lease(&self, instance: &str) -> Result<Option<Lease>, StoreError>;
}

fn corrupt(what: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.into(),
    }
}

fn parse_side(what: &'static str, s: &str) -> Result<Side, StoreError> {
    match s {
        "marketo" => Ok(Side::Marketo),
        "crm" => Ok(Side::Crm),
        other => Err(corrupt(what, format!("unknown side {other:?}"))),
    }
}

fn to_i64(what: &'static str, n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid {
        what,
        reason: format!("{n} is larger than {}", i64::MAX),
    })
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn ttl_to_chrono(ttl: Duration) -> chrono::Duration {
    chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(365))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_schemes_are_refused_without_echoing_the_url() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let error = match rt.block_on(open("mysql://root:hunter2@host/db")) {
            Err(e) => e,
            Ok(_) => panic!("mysql must be refused"),
        };
        let text = error.to_string();
        assert!(text.contains("\"mysql\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!error.is_retryable());
    }

    #[test]
    fn marketo_days_turn_at_midnight_in_chicago() {
        let day = |s: &str| marketo_day(s.parse().expect("time")).to_string();
        // Winter: CST is UTC-6.
        assert_eq!(day("2026-01-15T05:59:59Z"), "2026-01-14");
        assert_eq!(day("2026-01-15T06:00:00Z"), "2026-01-15");
        // Summer: CDT is UTC-5.
        assert_eq!(day("2026-07-01T04:59:59Z"), "2026-06-30");
        assert_eq!(day("2026-07-01T05:00:00Z"), "2026-07-01");
    }

    #[test]
    fn marketo_day_bounds_follow_chicago_midnight_and_dst() {
        let t = |s: &str| -> DateTime<Utc> { s.parse().expect("time") };
        let bounds = |s: &str| {
            let (start, end) = marketo_day_bounds(t(s));
            (start.to_rfc3339(), end.to_rfc3339())
        };
        assert_eq!(
            bounds("2026-11-23T12:00:00Z"),
            (
                "2026-11-23T06:00:00+00:00".into(),
                "2026-11-24T06:00:00+00:00".into()
            )
        );
        // Before 06:00Z in winter it is still the previous Marketo day.
        assert_eq!(
            bounds("2026-11-23T05:59:59Z").0,
            "2026-11-22T06:00:00+00:00"
        );
        // 2026-03-08 springs forward (23 hours), 2026-11-01 falls back (25 hours).
        assert_eq!(
            bounds("2026-03-08T12:00:00Z"),
            (
                "2026-03-08T06:00:00+00:00".into(),
                "2026-03-09T05:00:00+00:00".into()
            )
        );
        assert_eq!(
            bounds("2026-11-01T12:00:00Z"),
            (
                "2026-11-01T05:00:00+00:00".into(),
                "2026-11-02T06:00:00+00:00".into()
            )
        );
    }

    #[derive(Debug)]
    struct FakeDbError(&'static str);

    impl fmt::Display for FakeDbError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "fake database error {}", self.0)
        }
    }

    impl std::error::Error for FakeDbError {}

    impl sqlx::error::DatabaseError for FakeDbError {
        fn message(&self) -> &str {
            "fake"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn query_error(code: &'static str) -> StoreError {
        StoreError::Query {
            op: "commit",
            source: sqlx::Error::Database(Box::new(FakeDbError(code))),
        }
    }

    #[test]
    fn retryable_errors_are_classified_by_code() {
        // PostgreSQL: serialization failure, deadlock, connection failure, admin shutdown.
        for code in ["40001", "40P01", "08006", "57P01"] {
            assert!(query_error(code).is_retryable(), "{code}");
        }
        // SQLite: BUSY, LOCKED and the extended BUSY_SNAPSHOT (517).
        for code in ["5", "6", "517"] {
            assert!(query_error(code).is_retryable(), "{code}");
        }
        // Unique violation (PostgreSQL, SQLite), syntax error, SQLite constraint.
        for code in ["23505", "2067", "42601", "19"] {
            assert!(!query_error(code).is_retryable(), "{code}");
        }
        let pool = StoreError::Query {
            op: "counts",
            source: sqlx::Error::PoolTimedOut,
        };
        assert!(pool.is_retryable());
        let corrupt = corrupt("link", "bad json");
        assert!(!corrupt.is_retryable());
        assert!(corrupt.to_string().contains("link"));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = "2026-01-01T00:00:00Z".parse().expect("time");
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), start + chrono::Duration::seconds(90));
    }

    #[test]
    fn tombstones_serialise_flat() {
        let t = Tombstone {
            kind: TombstoneKind::Merged { into: "42".into() },
            side: Side::Marketo,
            at: "2026-01-01T00:00:00Z".parse().expect("time"),
        };
        let json = serde_json::to_value(&t).expect("json");
        assert_eq!(json["kind"], "merged");
        assert_eq!(json["into"], "42");
        let back: Tombstone = serde_json::from_value(json).expect("back");
        assert_eq!(back, t);
    }

    #[test]
    fn enum_names_round_trip() {
        for s in [
            JobState::Created,
            JobState::Queued,
            JobState::Processing,
            JobState::Completed,
            JobState::Consumed,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert_eq!(JobState::parse(s.as_str()).expect("parse"), s);
        }
        assert!(JobState::parse("bogus").is_err());
        for d in [Direction::MarketoToCrm, Direction::CrmToMarketo] {
            assert_eq!(Direction::parse(d.as_str()).expect("parse"), d);
        }
    }
}
