//! The generic SQL adapter: one adapter for PostgreSQL, MariaDB/MySQL and SQLite.
//!
//! Per object, the options name the table (or a view for reads), the primary key, the
//! modified-time column, the soft-delete predicate, the column holding the Marketo id and the
//! mapped columns. Every configured name is checked against the live catalog when the adapter
//! connects, before any query is built, and identifiers are quoted per dialect.
//!
//! Changes are read by keyset over `(modified, primary key)`, re-reading an overlap window on
//! every poll; objects with `changelog = true` also read the trigger-maintained change log
//! (see [`changelog`]), which catches hard deletes and transactions that commit out of order.
//! The adapter's own writes are never read back: the change-log triggers skip them (the adapter's
//! sessions are marked), and the keyset read skips rows whose modified time is the one the
//! adapter itself just wrote.
//!
//! Rows whose modified time is NULL are not part of the change feed. The change log must be
//! installed before the adapter connects (the SQLite writer flag is detected at connect time).
//!
//! Writes are off by default (`writable = true` per object). Each batch runs in one transaction:
//! a record the database refuses (constraint or data error) gets a per-record failure and the
//! rest are written; a batch-level failure (connection lost, deadlock) rolls everything back and
//! returns a retryable error.

pub mod catalog;
pub mod changelog;
pub mod dialect;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::model::{FieldDef, FieldType, Fields, ObjectSchema, Side, Value};

use super::{
    Capabilities, Change, ChangeFeed, ChangeKind, ChangePage, Crm, CrmError, CrmRecord, Cursor,
    DeleteFeed, DeleteHow, Precision, Tombstone, UpsertMode, WriteResult,
};
use catalog::Column;
use dialect::{Dialect, SqlPool, TextRow, parse_datetime, parse_value};

/// The adapter's registered name.
pub const ADAPTER_NAME: &str = "sql";

/// The options of the SQL adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlOptions {
    /// The objects, by the name the engine and mappings use.
    pub objects: BTreeMap<String, ObjectOptions>,
    /// The overlap window re-read on every poll, in seconds (default 300).
    #[serde(default = "default_overlap")]
    pub overlap_seconds: u64,
    /// How long an unseen change-log sequence number is waited for before it is taken as a
    /// rolled-back transaction, in seconds (default 600).
    #[serde(default = "default_gap_timeout")]
    pub gap_timeout_seconds: u64,
    /// The largest write batch (default 200).
    #[serde(default = "default_batch")]
    pub max_batch_write: usize,
    /// The connection pool size (default: [`Dialect::default_pool_size`], 1 on SQLite and 5
    /// on the others).
    #[serde(default)]
    pub max_connections: Option<u32>,
}

/// How deleted rows are recognised when they stay in the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftDelete {
    /// The flag column.
    pub column: String,
    /// The row is deleted when the column equals this value; when absent, when the column is
    /// not NULL (a `deleted_at` column).
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

/// The options of one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectOptions {
    /// The table written to (and read from when there is no `read_view`).
    pub table: String,
    /// A view read instead of the table (for joins); it must have the same key columns.
    #[serde(default)]
    pub read_view: Option<String>,
    /// The single-column primary key.
    pub primary_key: String,
    /// The modified-time column, maintained by the CRM.
    pub modified_column: String,
    /// The soft-delete predicate, if the CRM keeps deleted rows.
    #[serde(default)]
    pub soft_delete: Option<SoftDelete>,
    /// A column holding the survivor's id when a soft-deleted record was merged.
    #[serde(default)]
    pub merged_into_column: Option<String>,
    /// The column holding the Marketo id (the default upsert key).
    pub marketo_id_column: String,
    /// The mapped columns; all columns of the read source when absent.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Writes are allowed (default false).
    #[serde(default)]
    pub writable: bool,
    /// Read the trigger-maintained change log too (install it with `crm install-changelog`).
    #[serde(default)]
    pub changelog: bool,
}

fn default_overlap() -> u64 {
    300
}
fn default_gap_timeout() -> u64 {
    600
}
fn default_batch() -> usize {
    200
}

impl SqlOptions {
    /// Returns the options read from their JSON form.
    ///
    /// # Errors
    /// [`CrmError::Config`] naming the bad key.
    pub fn from_json(json: &serde_json::Value) -> Result<SqlOptions, CrmError> {
        let options: SqlOptions =
            serde_json::from_value(json.clone()).map_err(|e| CrmError::Config {
                message: format!("sql adapter options: {e}"),
            })?;
        if options.max_batch_write == 0 || options.max_connections == Some(0) {
            return Err(CrmError::Config {
                message:
                    "sql adapter options: max_batch_write and max_connections must be at least 1"
                        .into(),
            });
        }
        Ok(options)
    }
}

/// One object, checked against the catalog.
#[derive(Debug, Clone, PartialEq)]
struct ObjectInfo {
    name: String,
    options: ObjectOptions,
    /// Columns of the table.
    table_columns: Vec<Column>,
    /// Columns of the read source (the view or the table).
    read_columns: Vec<Column>,
    pk: Column,
    modified: Column,
    soft: Option<Column>,
    merged: Option<Column>,
    /// The mapped columns, in order.
    mapped: Vec<Column>,
}

impl ObjectInfo {
    fn read_source(&self) -> &str {
        self.options
            .read_view
            .as_deref()
            .unwrap_or(&self.options.table)
    }

    /// Returns the select list: pk, modified, soft flag, merged-into, then the mapped columns.
    fn select_list(&self, d: Dialect) -> String {
        let mut exprs = vec![
            d.as_text(&d.quote(&self.pk.name)),
            d.as_text(&d.quote(&self.modified.name)),
        ];
        for extra in [&self.soft, &self.merged] {
            exprs.push(match extra {
                Some(c) => d.as_text(&d.quote(&c.name)),
                None => "NULL".to_owned(),
            });
        }
        exprs.extend(self.mapped.iter().map(|c| d.as_text(&d.quote(&c.name))));
        // Aliased, so that ORDER BY and WHERE always see the typed columns, never the text.
        exprs
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} AS c{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A row read through [`ObjectInfo::select_list`].
struct ReadRow {
    id: String,
    modified_raw: String,
    modified_at: DateTime<Utc>,
    deleted: Option<DeleteHow>,
    fields: Fields,
}

/// The cursor's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct CursorState {
    v: u32,
    /// The keyset position: the last (modified, pk) read, as the database wrote them.
    #[serde(default)]
    m: Option<String>,
    #[serde(default)]
    pk: Option<String>,
    /// The next call starts a new poll (re-reading the overlap window).
    #[serde(default)]
    fresh: bool,
    /// The highest modified time read so far.
    #[serde(default)]
    high: Option<String>,
    /// The change log: last sequence number read, and sequence numbers not yet seen below it
    /// (transactions still open when the log was read), with when they were first noticed.
    #[serde(default)]
    log_seq: i64,
    #[serde(default)]
    gaps: Vec<(i64, DateTime<Utc>)>,
}

/// Most own-write echoes remembered per adapter: well above what one cycle writes, so that the
/// next cycle's feed skips them all. A larger run (a bootstrap of a million rows) keeps its last
/// 100,000; the feed reads the older ones back, and the engine finds them agreed and writes
/// nothing (issue 15: a million echoes held about 50 MB of a bootstrap's peak memory).
const ECHO_CAPACITY: usize = 100_000;
/// Most change-log gaps remembered per cursor.
const MAX_GAPS: usize = 10_000;

/// The SQL adapter.
pub struct SqlCrm {
    pool: SqlPool,
    options: SqlOptions,
    /// The objects' column facts: checked at connect, replaced whenever [`Crm::describe`] sees
    /// the catalog changed (a mapped column dropped, renamed or retyped while running), so that
    /// reads and writes never name a column that is gone.
    objects: RwLock<HashMap<String, Arc<ObjectInfo>>>,
    /// The modified value of each row the adapter last wrote, keyed by (object, pk).
    echoes: Mutex<Echoes>,
    /// SQLite only: the change-log writer flag table exists.
    sqlite_writer_flag: bool,
}

/// The adapter's own writes, so that the change feed skips them. Each entry is two 64-bit
/// hashes (of the object and primary key, and of the modified value written), about 40 bytes
/// with the eviction order, instead of three strings: about 4 MB at [`ECHO_CAPACITY`]. A hash
/// collision can only hide a change whose key collides with a row the adapter wrote AND whose
/// modified value hashes like the one it wrote.
#[derive(Default)]
struct Echoes {
    map: HashMap<u64, u64>,
    order: VecDeque<u64>,
}

fn echo_hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::Hasher;
    // SipHash with fixed keys: stable within the process, well spread.
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

impl Echoes {
    fn remember(&mut self, object: &str, pk: String, modified: String) {
        let key = echo_hash(&(object, pk.as_str()));
        if self.map.insert(key, echo_hash(modified.as_str())).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > ECHO_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn is_echo(&self, object: &str, pk: &str, modified: &str) -> bool {
        self.map
            .get(&echo_hash(&(object, pk)))
            .is_some_and(|m| *m == echo_hash(modified))
    }
}

impl std::fmt::Debug for SqlCrm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlCrm")
            .field("dialect", &self.pool.dialect())
            .field("objects", &self.options.objects.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SqlCrm {
    /// Returns an adapter connected to `url`, with every configured name checked against the
    /// live catalog.
    ///
    /// # Errors
    /// A connection failure, or [`CrmError::UnknownName`] / [`CrmError::Schema`] for a
    /// configured name that does not exist or does not fit (before any other query is built).
    pub async fn connect(url: &SecretString, options: SqlOptions) -> Result<SqlCrm, CrmError> {
        let url = url.expose_secret();
        let size = match options.max_connections {
            Some(size) => size,
            None => Dialect::from_url(url)?.default_pool_size(),
        };
        let pool = SqlPool::connect(url, size, true).await?;
        let mut objects = HashMap::new();
        for (name, object) in &options.objects {
            let info = check_object(&pool, name, object, Check::Strict).await?;
            objects.insert(name.clone(), Arc::new(info));
        }
        let wants_log = options.objects.values().any(|o| o.changelog);
        if wants_log && !catalog::exists(&pool, changelog::LOG_TABLE).await? {
            return Err(CrmError::UnknownName {
                object: options
                    .objects
                    .iter()
                    .find(|(_, o)| o.changelog)
                    .map(|(n, _)| n.clone())
                    .unwrap_or_default(),
                what: "change log table",
                name: changelog::LOG_TABLE.to_owned(),
                context: " (run `marketo-sync crm install-changelog` first)".to_owned(),
            });
        }
        let sqlite_writer_flag = pool.dialect() == Dialect::Sqlite
            && catalog::exists(&pool, changelog::WRITER_TABLE).await?;
        Ok(SqlCrm {
            pool,
            options,
            objects: RwLock::new(objects),
            echoes: Mutex::new(Echoes::default()),
            sqlite_writer_flag,
        })
    }

    /// Returns the dialect of the connected database.
    pub fn dialect(&self) -> Dialect {
        self.pool.dialect()
    }

    /// Deletes change-log rows older than `keep` (by the database's clock) and returns how
    /// many went. Run it with `keep` well above the longest time between two polls: a cursor
    /// that has not read a pruned row misses it.
    ///
    /// # Errors
    /// A database failure (the log table missing included).
    pub async fn prune_changelog(&self, keep: Duration) -> Result<u64, CrmError> {
        let d = self.dialect();
        let secs = keep.as_secs();
        let (sql, param) = match d {
            Dialect::Postgres => (
                format!(
                    "DELETE FROM {} WHERE changed_at < clock_timestamp() - CAST($1 AS interval)",
                    changelog::LOG_TABLE
                ),
                format!("{secs} seconds"),
            ),
            Dialect::MySql => (
                format!(
                    "DELETE FROM {} WHERE changed_at < CURRENT_TIMESTAMP(6) - INTERVAL ? SECOND",
                    changelog::LOG_TABLE
                ),
                secs.to_string(),
            ),
            Dialect::Sqlite => (
                format!(
                    "DELETE FROM {} WHERE changed_at < strftime('%Y-%m-%d %H:%M:%f', 'now', ?)",
                    changelog::LOG_TABLE
                ),
                format!("-{secs} seconds"),
            ),
        };
        self.pool
            .execute("prune the change log", sql, &[Some(param)])
            .await
    }

    /// Returns the current column facts of `object`.
    fn object(&self, object: &str) -> Result<Arc<ObjectInfo>, CrmError> {
        let objects = self
            .objects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        objects
            .get(object)
            .cloned()
            .ok_or_else(|| CrmError::UnknownObject {
                object: object.to_owned(),
            })
    }

    /// Re-reads `object`'s columns from the catalog and, when they changed, replaces the cached
    /// facts that reads, writes and the change log use. A configured mapped column that is gone
    /// is left out (the mapping compiler disables its field); a structural column (primary key,
    /// modified time, Marketo id, soft-delete flag) that is gone is an error naming it, and the
    /// cached facts stay as they were.
    async fn refresh(&self, object: &str) -> Result<Arc<ObjectInfo>, CrmError> {
        let configured = self.object(object)?;
        let fresh = check_object(&self.pool, object, &configured.options, Check::Lenient).await?;
        if fresh == *configured {
            return Ok(configured);
        }
        let gone: Vec<&str> = configured
            .mapped
            .iter()
            .filter(|c| !fresh.mapped.iter().any(|f| f.name == c.name))
            .map(|c| c.name.as_str())
            .collect();
        let retyped: Vec<&str> = configured
            .mapped
            .iter()
            .filter(|c| {
                fresh
                    .mapped
                    .iter()
                    .any(|f| f.name == c.name && f.ty != c.ty)
            })
            .map(|c| c.name.as_str())
            .collect();
        tracing::info!(object = %object, gone = ?gone, retyped = ?retyped, "crm columns changed; the adapter uses the new catalog");
        let fresh = Arc::new(fresh);
        let mut objects = self
            .objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        objects.insert(object.to_owned(), fresh.clone());
        Ok(fresh)
    }

    fn overlap(&self) -> Duration {
        Duration::from_secs(self.options.overlap_seconds)
    }

    fn decode(&self, info: &ObjectInfo, row: &TextRow) -> Result<ReadRow, CrmError> {
        let bad = |what: &str| CrmError::Remote {
            operation: format!("read {}", info.name),
            message: format!("{what} of a row is null or unreadable"),
            retryable: false,
        };
        let id = row
            .first()
            .cloned()
            .flatten()
            .ok_or_else(|| bad("the primary key"))?;
        let modified_raw = row
            .get(1)
            .cloned()
            .flatten()
            .ok_or_else(|| bad("the modified time"))?;
        let modified_at = parse_datetime(&modified_raw).ok_or_else(|| bad("the modified time"))?;
        let soft_raw = row.get(2).cloned().flatten();
        let deleted = match &info.soft {
            Some(col)
                if is_soft_deleted(soft_raw.as_deref(), col, info.options.soft_delete.as_ref()) =>
            {
                match row.get(3).cloned().flatten() {
                    Some(into) if !into.is_empty() => Some(DeleteHow::Merged { into }),
                    _ => Some(DeleteHow::Soft),
                }
            }
            _ => None,
        };
        let fields = info
            .mapped
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    c.name.clone(),
                    parse_value(row.get(4 + i).and_then(|v| v.as_deref()), &c.ty),
                )
            })
            .collect();
        Ok(ReadRow {
            id,
            modified_raw,
            modified_at,
            deleted,
            fields,
        })
    }

    /// Returns rows by one column's values (live and soft-deleted).
    /// Reads the live records whose `field` is one of `values`; `folded` compares text ignoring
    /// case and surrounding white space.
    async fn find_by(
        &self,
        object: &str,
        field: &str,
        values: &[Value],
        folded: bool,
    ) -> Result<Vec<CrmRecord>, CrmError> {
        let info = self.object(object)?;
        let column = find_column(
            &info.read_columns,
            object,
            field,
            info.read_source(),
            "column",
        )?
        .clone();
        let cast = info
            .table_columns
            .iter()
            .find(|c| c.name == column.name)
            .map(|c| c.cast.clone())
            .unwrap_or_default();
        let column = Column { cast, ..column };
        let folded = folded
            && matches!(
                column.ty,
                FieldType::Text { .. } | FieldType::Email | FieldType::Phone | FieldType::Url
            );
        let d = self.dialect();
        let params: Vec<Option<String>> = values
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| {
                let text = d.value_text(v, &column.ty);
                if folded {
                    text.map(|t| t.trim().to_lowercase())
                } else {
                    text
                }
            })
            .collect();
        let rows = self.fetch_where(&info, &column, &params, folded).await?;
        Ok(live_records(rows))
    }

    async fn fetch_by(
        &self,
        info: &ObjectInfo,
        column: &Column,
        values: &[Option<String>],
    ) -> Result<Vec<ReadRow>, CrmError> {
        self.fetch_where(info, column, values, false).await
    }

    /// Reads the rows whose `column` is one of `values` (already lowercased and trimmed when
    /// `folded`, which compares `LOWER(TRIM(column))`: no plain index serves it, so it is kept
    /// for identity matching of the few records a cycle changes).
    async fn fetch_where(
        &self,
        info: &ObjectInfo,
        column: &Column,
        values: &[Option<String>],
        folded: bool,
    ) -> Result<Vec<ReadRow>, CrmError> {
        let d = self.dialect();
        let mut out = Vec::new();
        let target = if folded {
            format!("LOWER(TRIM({}))", d.quote(&column.name))
        } else {
            d.quote(&column.name)
        };
        for chunk in values.chunks(500) {
            if chunk.is_empty() {
                continue;
            }
            let params: Vec<String> = (1..=chunk.len())
                .map(|n| d.param(n, &column.cast))
                .collect();
            let sql = format!(
                "SELECT {} FROM {} WHERE {target} IN ({})",
                info.select_list(d),
                d.quote(info.read_source()),
                params.join(", ")
            );
            let rows = self
                .pool
                .fetch(&format!("read {}", info.name), sql, chunk)
                .await?;
            for row in &rows {
                out.push(self.decode(info, row)?);
            }
        }
        Ok(out)
    }

    fn parse_cursor(&self, object: &str, cursor: Option<&Cursor>) -> Result<CursorState, CrmError> {
        match cursor {
            None => Ok(CursorState {
                v: 1,
                ..CursorState::default()
            }),
            Some(c) => c.decode(object, 1, |s: &CursorState| s.v),
        }
    }

    /// Reads one keyset page; returns the changes, whether more rows wait, and updates `state`.
    async fn keyset_page(
        &self,
        info: &ObjectInfo,
        state: &mut CursorState,
        limit: usize,
    ) -> Result<(Vec<Change>, bool), CrmError> {
        let d = self.dialect();
        let m = d.quote(&info.modified.name);
        let pk = d.quote(&info.pk.name);
        let mut params: Vec<Option<String>> = Vec::new();
        let overlap = self.overlap();
        let condition = match (&state.m, &state.pk) {
            (Some(m0), _) if state.fresh && !overlap.is_zero() => {
                let high = state.high.as_deref().unwrap_or(m0);
                let start = overlap_start(high, overlap, d);
                params.push(Some(start));
                format!("WHERE {m} >= {}", d.param(1, &info.modified.cast))
            }
            (Some(m0), Some(pk0)) => {
                if d == Dialect::MySql {
                    params.extend([Some(m0.clone()), Some(m0.clone()), Some(pk0.clone())]);
                    format!(
                        "WHERE ({m} > {} OR ({m} = {} AND {pk} > {}))",
                        d.param(1, &info.modified.cast),
                        d.param(2, &info.modified.cast),
                        d.param(3, &info.pk.cast)
                    )
                } else {
                    // A row-value comparison, so that an index on (modified, pk) serves it.
                    params.extend([Some(m0.clone()), Some(pk0.clone())]);
                    format!(
                        "WHERE ({m}, {pk}) > ({}, {})",
                        d.param(1, &info.modified.cast),
                        d.param(2, &info.pk.cast)
                    )
                }
            }
            // Rows without a modified time are not part of the feed.
            _ => format!("WHERE {m} IS NOT NULL"),
        };
        let sql = format!(
            "SELECT {} FROM {} {condition} ORDER BY {m}, {pk} LIMIT {}",
            info.select_list(d),
            d.quote(info.read_source()),
            limit + 1
        );
        let rows = self
            .pool
            .fetch(&format!("read changes of {}", info.name), sql, &params)
            .await?;
        let more = rows.len() > limit;
        let mut changes = Vec::new();
        let mut last: Option<(String, String, DateTime<Utc>)> = None;
        for row in rows.iter().take(limit) {
            let r = self.decode(info, row)?;
            last = Some((r.modified_raw.clone(), r.id.clone(), r.modified_at));
            let echo = self
                .echoes
                .lock()
                .map(|e| e.is_echo(&info.name, &r.id, &r.modified_raw))
                .unwrap_or(false);
            if echo {
                continue;
            }
            changes.push(to_change(r));
        }
        if let Some((m_raw, pk_raw, m_at)) = last {
            let higher = state
                .high
                .as_deref()
                .and_then(parse_datetime)
                .is_none_or(|h| m_at > h);
            if higher {
                state.high = Some(m_raw.clone());
            }
            state.m = Some(m_raw);
            state.pk = Some(pk_raw);
        }
        state.fresh = !more;
        Ok((changes, more))
    }

    /// Reads one page of the change log; returns the changes of this object, whether more
    /// entries wait, and updates `state`.
    async fn log_page(
        &self,
        info: &ObjectInfo,
        state: &mut CursorState,
        limit: usize,
    ) -> Result<(Vec<Change>, bool), CrmError> {
        let d = self.dialect();
        let seq_cast = if d == Dialect::Postgres { "bigint" } else { "" };
        let mut params: Vec<Option<String>> = vec![Some(state.log_seq.to_string())];
        let mut condition = format!("seq > {}", d.param(1, seq_cast));
        if !state.gaps.is_empty() {
            let list: Vec<String> = (0..state.gaps.len())
                .map(|i| d.param(i + 2, seq_cast))
                .collect();
            params.extend(state.gaps.iter().map(|(s, _)| Some(s.to_string())));
            condition = format!("({condition} OR seq IN ({}))", list.join(", "));
        }
        let sql = format!(
            "SELECT {}, object, pk, op, {} FROM {} WHERE {condition} ORDER BY seq LIMIT {}",
            d.as_text("seq"),
            d.as_text("changed_at"),
            changelog::LOG_TABLE,
            limit
        );
        let rows = self
            .pool
            .fetch(
                &format!("read the change log for {}", info.name),
                sql,
                &params,
            )
            .await?;
        let more = rows.len() >= limit;
        let mut touched: Vec<(String, DateTime<Utc>)> = Vec::new();
        let mut latest: Option<DateTime<Utc>> = None;
        for row in &rows {
            let seq: i64 = row
                .first()
                .cloned()
                .flatten()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| CrmError::Remote {
                    operation: "read the change log".into(),
                    message: "a sequence number is unreadable".into(),
                    retryable: false,
                })?;
            let at = row
                .get(4)
                .cloned()
                .flatten()
                .as_deref()
                .and_then(parse_datetime)
                .unwrap_or_else(Utc::now);
            latest = Some(latest.map_or(at, |l| l.max(at)));
            if seq <= state.log_seq {
                state.gaps.retain(|(s, _)| *s != seq);
            } else {
                let expected = state.log_seq + 1;
                if seq > expected {
                    if seq - expected > MAX_GAPS as i64 {
                        warn!(object = %info.name, from = expected, to = seq - 1, "change log jumped; not tracking the skipped sequence numbers");
                    } else {
                        state.gaps.extend((expected..seq).map(|s| (s, at)));
                    }
                }
                state.log_seq = seq;
            }
            let object = row.get(1).cloned().flatten().unwrap_or_default();
            if object == info.name
                && let Some(pk) = row.get(2).cloned().flatten()
            {
                match touched.iter_mut().find(|(p, _)| *p == pk) {
                    Some(entry) => entry.1 = entry.1.max(at),
                    None => touched.push((pk, at)),
                }
            }
        }
        if let Some(latest) = latest {
            let timeout = chrono::Duration::seconds(self.options.gap_timeout_seconds as i64);
            state.gaps.retain(|(_, seen)| latest - *seen < timeout);
        }
        if state.gaps.len() > MAX_GAPS {
            let excess = state.gaps.len() - MAX_GAPS;
            warn!(object = %info.name, dropped = excess, "too many open change log gaps; dropping the oldest");
            state.gaps.drain(..excess);
        }
        let ids: Vec<Option<String>> = touched.iter().map(|(pk, _)| Some(pk.clone())).collect();
        let current = self.fetch_by(info, &info.pk, &ids).await?;
        let mut by_id: HashMap<String, ReadRow> =
            current.into_iter().map(|r| (r.id.clone(), r)).collect();
        let changes = touched
            .into_iter()
            .map(|(pk, at)| match by_id.remove(&pk) {
                Some(row) => to_change(row),
                None => Change {
                    id: pk,
                    modified_at: at,
                    kind: ChangeKind::Deleted(Tombstone {
                        how: DeleteHow::Hard,
                        at,
                    }),
                },
            })
            .collect();
        Ok((changes, more))
    }

    fn writable(&self, object: &str) -> Result<Arc<ObjectInfo>, CrmError> {
        let info = self.object(object)?;
        if !info.options.writable {
            return Err(CrmError::NotWritable {
                object: object.to_owned(),
            });
        }
        Ok(info)
    }
}

fn to_change(r: ReadRow) -> Change {
    let kind = match r.deleted {
        Some(how) => ChangeKind::Deleted(Tombstone {
            how,
            at: r.modified_at,
        }),
        None => ChangeKind::Upserted { fields: r.fields },
    };
    Change {
        id: r.id,
        modified_at: r.modified_at,
        kind,
    }
}

/// Returns the start of the overlap window, in the text shape of `high` for SQLite (compared as
/// text) and in the dialect's own form elsewhere.
fn overlap_start(high: &str, overlap: Duration, d: Dialect) -> String {
    let Some(at) = parse_datetime(high) else {
        return high.to_owned();
    };
    let start = at - chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::zero());
    if d != Dialect::Sqlite {
        return d.datetime_text(&start);
    }
    let sep = if high.contains('T') { "T" } else { " " };
    let digits = high
        .split_once('.')
        .map(|(_, f)| f.chars().take_while(char::is_ascii_digit).count())
        .unwrap_or(0);
    let mut text = start.format(&format!("%Y-%m-%d{sep}%H:%M:%S")).to_string();
    if digits > 0 {
        let frac = format!("{:09}", start.timestamp_subsec_nanos());
        text.push('.');
        text.push_str(&frac[..digits.min(9)]);
    }
    if high.ends_with('Z') {
        text.push('Z');
    }
    text
}

/// Returns the rows that are not deleted, as records.
fn live_records(rows: Vec<ReadRow>) -> Vec<CrmRecord> {
    rows.into_iter()
        .filter(|r| r.deleted.is_none())
        .map(|r| CrmRecord {
            id: r.id,
            modified_at: r.modified_at,
            fields: r.fields,
        })
        .collect()
}

pub(super) fn is_soft_deleted(
    raw: Option<&str>,
    column: &Column,
    rule: Option<&SoftDelete>,
) -> bool {
    let Some(rule) = rule else { return false };
    match &rule.value {
        None => raw.is_some(),
        Some(want) => {
            let Some(raw) = raw else {
                return want.is_null();
            };
            let got = parse_value(Some(raw), &column.ty);
            let want_value = Value::from_json(want);
            if got == want_value {
                return true;
            }
            let norm = |v: &Value| match v {
                Value::Bool(true) => "1".to_owned(),
                Value::Bool(false) => "0".to_owned(),
                other => other.to_text().to_ascii_lowercase(),
            };
            let g = norm(&got);
            let w = norm(&want_value);
            g == w || (w == "1" && g == "true") || (w == "0" && g == "false")
        }
    }
}

fn find_column<'a>(
    columns: &'a [Column],
    object: &str,
    name: &str,
    source: &str,
    what: &'static str,
) -> Result<&'a Column, CrmError> {
    columns
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| CrmError::UnknownName {
            object: object.to_owned(),
            what,
            name: name.to_owned(),
            context: format!(" in `{source}`"),
        })
}

/// How [`check_object`] treats a configured mapped column missing from the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// An error: at connect time a missing name is a configuration mistake.
    Strict,
    /// Left out: while running, a dropped column disables only its field.
    Lenient,
}

async fn check_object(
    pool: &SqlPool,
    name: &str,
    o: &ObjectOptions,
    check: Check,
) -> Result<ObjectInfo, CrmError> {
    let table_columns = catalog::columns(pool, &o.table).await?;
    if table_columns.is_empty() {
        return Err(CrmError::UnknownName {
            object: name.to_owned(),
            what: "table",
            name: o.table.clone(),
            context: String::new(),
        });
    }
    let read_columns = match &o.read_view {
        Some(view) => {
            let cols = catalog::columns(pool, view).await?;
            if cols.is_empty() {
                return Err(CrmError::UnknownName {
                    object: name.to_owned(),
                    what: "view",
                    name: view.clone(),
                    context: String::new(),
                });
            }
            cols
        }
        None => table_columns.clone(),
    };
    let source = o.read_view.as_deref().unwrap_or(&o.table);
    let mut pk = find_column(&read_columns, name, &o.primary_key, source, "column")?.clone();
    let table_pk = find_column(&table_columns, name, &o.primary_key, &o.table, "column")?;
    pk.cast = table_pk.cast.clone();
    let modified = find_column(&read_columns, name, &o.modified_column, source, "column")?.clone();
    if modified.ty != FieldType::DateTime {
        return Err(CrmError::Schema {
            object: name.to_owned(),
            message: format!(
                "modified column `{}` is {}, not a timestamp",
                modified.name,
                modified.ty.describe()
            ),
        });
    }
    find_column(&table_columns, name, &o.modified_column, &o.table, "column")?;
    find_column(
        &table_columns,
        name,
        &o.marketo_id_column,
        &o.table,
        "column",
    )?;
    let soft = match &o.soft_delete {
        Some(s) => {
            find_column(&table_columns, name, &s.column, &o.table, "column")?;
            Some(find_column(&read_columns, name, &s.column, source, "column")?.clone())
        }
        None => None,
    };
    let merged = match &o.merged_into_column {
        Some(c) => Some(find_column(&read_columns, name, c, source, "column")?.clone()),
        None => None,
    };
    let mapped = match &o.columns {
        Some(names) => {
            let mut mapped = Vec::new();
            for n in names {
                match find_column(&read_columns, name, n, source, "column") {
                    Ok(c) => mapped.push(c.clone()),
                    Err(_) if check == Check::Lenient => {}
                    Err(e) => return Err(e),
                }
            }
            mapped
        }
        None => read_columns.clone(),
    };
    if o.writable {
        let key = find_column(
            &table_columns,
            name,
            &o.marketo_id_column,
            &o.table,
            "column",
        )?;
        if !key.unique {
            return Err(CrmError::Schema {
                object: name.to_owned(),
                message: format!(
                    "marketo id column `{}` has no single-column unique index, so it cannot key upserts",
                    key.name
                ),
            });
        }
    }
    Ok(ObjectInfo {
        name: name.to_owned(),
        options: o.clone(),
        table_columns,
        read_columns,
        pk,
        modified,
        soft,
        merged,
        mapped,
    })
}

#[async_trait::async_trait]
impl Crm for SqlCrm {
    fn name(&self) -> &'static str {
        ADAPTER_NAME
    }

    async fn describe(&self, object: &str) -> Result<ObjectSchema, CrmError> {
        let info = self.refresh(object).await?;
        let fields = info
            .table_columns
            .iter()
            .map(|c| FieldDef {
                name: c.name.clone(),
                label: None,
                ty: c.ty.clone(),
                read_only: !info.options.writable || c.generated || c.name == info.modified.name,
                required: !c.nullable && !c.has_default,
                unique: c.unique || c.primary,
                searchable: c.searchable || c.primary,
            })
            .collect();
        Ok(ObjectSchema {
            side: Side::Crm,
            object: object.to_owned(),
            id_field: Some(info.pk.name.clone()),
            dedupe_fields: vec![info.options.marketo_id_column.clone()],
            fields,
        })
    }

    fn capabilities(&self, object: &str) -> Result<Capabilities, CrmError> {
        let info = self.object(object)?;
        let field = info.modified.name.clone();
        let overlap = self.overlap();
        let precision = match info.modified.precision {
            Some(0) => Precision::Seconds,
            Some(1..=3) => Precision::Millis,
            Some(_) => Precision::Micros,
            None => Precision::Seconds,
        };
        Ok(Capabilities {
            change_feed: if info.options.changelog {
                ChangeFeed::ModifiedSinceAndTriggerLog { field, overlap }
            } else {
                ChangeFeed::ModifiedSince { field, overlap }
            },
            delete_feed: match (info.options.changelog, info.soft.is_some()) {
                (true, _) => DeleteFeed::Full,
                (false, true) => DeleteFeed::SoftOnly,
                (false, false) => DeleteFeed::None,
            },
            upsert: if info.options.writable {
                UpsertMode::NativeByExternalId
            } else {
                UpsertMode::None
            },
            max_batch_write: self.options.max_batch_write,
            timestamp_precision: precision,
        })
    }

    async fn changes(
        &self,
        object: &str,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage, CrmError> {
        let info = self.object(object)?;
        let limit = limit.max(1);
        let mut state = self.parse_cursor(object, cursor)?;
        let (mut changes, mut more) = self.keyset_page(&info, &mut state, limit).await?;
        if info.options.changelog {
            let (log_changes, log_more) = self.log_page(&info, &mut state, limit).await?;
            let seen: HashSet<String> = changes.iter().map(|c| c.id.clone()).collect();
            changes.extend(log_changes.into_iter().filter(|c| !seen.contains(&c.id)));
            more |= log_more;
        }
        changes.sort_by(|a, b| {
            a.modified_at
                .cmp(&b.modified_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        debug!(object = %object, changes = changes.len(), more, "crm changes read");
        let next = Cursor(
            serde_json::to_value(&state).map_err(|e| CrmError::BadCursor {
                object: object.to_owned(),
                message: e.to_string(),
            })?,
        );
        Ok(ChangePage {
            changes,
            next,
            more,
        })
    }

    fn forget_own_writes(&self) {
        if let Ok(mut echoes) = self.echoes.lock() {
            *echoes = Echoes::default();
        }
    }

    async fn find(
        &self,
        object: &str,
        field: &str,
        values: &[Value],
    ) -> Result<Vec<CrmRecord>, CrmError> {
        self.find_by(object, field, values, false).await
    }

    async fn find_folded(
        &self,
        object: &str,
        field: &str,
        values: &[Value],
    ) -> Result<Vec<CrmRecord>, CrmError> {
        self.find_by(object, field, values, true).await
    }

    async fn get(&self, object: &str, ids: &[String]) -> Result<Vec<CrmRecord>, CrmError> {
        let info = self.object(object)?;
        let params: Vec<Option<String>> = ids.iter().map(|i| Some(i.clone())).collect();
        let rows = self.fetch_by(&info, &info.pk, &params).await?;
        Ok(live_records(rows))
    }

    async fn upsert(
        &self,
        object: &str,
        key_field: &str,
        batch: &[Fields],
    ) -> Result<Vec<WriteResult>, CrmError> {
        let info = self.writable(object)?;
        let key = find_column(
            &info.table_columns,
            object,
            key_field,
            &info.options.table,
            "column",
        )?;
        if !key.unique {
            return Err(CrmError::Schema {
                object: object.to_owned(),
                message: format!("key field `{key_field}` has no single-column unique index"),
            });
        }
        if batch.len() > self.options.max_batch_write {
            return Err(CrmError::Config {
                message: format!(
                    "batch of {} records is larger than max_batch_write = {}",
                    batch.len(),
                    self.options.max_batch_write
                ),
            });
        }
        // Keyed by the primary key: update-only, a missing row is a per-record failure. A
        // uniform batch goes as one statement; any other, or one the database refuses a record
        // of, record by record.
        let by_pk = key.name == info.pk.name;
        let flag = self.sqlite_writer_flag;
        let bulk = if by_pk {
            write::bulk_update_by_pk(&self.pool, &info, batch, flag).await?
        } else {
            write::bulk_upsert(&self.pool, &info, key, batch, flag).await?
        };
        let outcome = match bulk {
            Some(outcome) => outcome,
            None => {
                let d = self.dialect();
                let plans: Vec<Result<write::Statement, WriteResult>> = batch
                    .iter()
                    .map(|fields| match by_pk {
                        true => write::plan_update_by_pk(d, &info, fields),
                        false => write::plan_upsert(d, &info, key, fields),
                    })
                    .collect();
                write::run(&self.pool, &info, flag, plans).await?
            }
        };
        if let Ok(mut echoes) = self.echoes.lock() {
            for (pk, m) in &outcome.written {
                echoes.remember(object, pk.clone(), m.clone());
            }
        }
        Ok(outcome.results)
    }

    async fn delete(&self, object: &str, ids: &[String]) -> Result<Vec<WriteResult>, CrmError> {
        let info = self.writable(object)?;
        if ids.len() > self.options.max_batch_write {
            return Err(CrmError::Config {
                message: format!(
                    "batch of {} ids is larger than max_batch_write = {}",
                    ids.len(),
                    self.options.max_batch_write
                ),
            });
        }
        let plans = ids
            .iter()
            .map(|id| Ok(write::plan_delete(self.dialect(), &info, id)))
            .collect();
        let outcome = write::run(&self.pool, &info, self.sqlite_writer_flag, plans).await?;
        if let Ok(mut echoes) = self.echoes.lock() {
            for (pk, m) in &outcome.written {
                echoes.remember(object, pk.clone(), m.clone());
            }
        }
        Ok(outcome.results)
    }

    async fn healthcheck(&self) -> Result<(), CrmError> {
        self.pool
            .fetch("healthcheck", "SELECT 'ok'".to_owned(), &[])
            .await
            .map(|_| ())
    }
}

mod write;

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, ty: FieldType) -> Column {
        Column {
            name: name.into(),
            type_name: String::new(),
            cast: String::new(),
            ty,
            nullable: true,
            has_default: false,
            generated: false,
            primary: false,
            unique: false,
            searchable: false,
            precision: None,
        }
    }

    /// The pool size of an adapter connected with `options` (JSON) to a new SQLite file.
    async fn sqlite_pool_size(options: serde_json::Value) -> u32 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("crm.db").display());
        let options = SqlOptions::from_json(&options).unwrap();
        let crm = SqlCrm::connect(&SecretString::from(url), options)
            .await
            .unwrap();
        match &crm.pool {
            SqlPool::Lite(pool) => pool.options().get_max_connections(),
            _ => unreachable!("a sqlite url gives a sqlite pool"),
        }
    }

    #[tokio::test]
    async fn a_uniform_batch_of_updates_by_an_auto_increment_key_is_one_statement() {
        // The demo contacts' `id` is an auto-increment key (a column the database computes):
        // the bulk update must still take it as its key, not send the batch record by record.
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("crm.db").display());
        crate::sim::demo_crm::install(&url, 1, 3).await.unwrap();
        let options =
            SqlOptions::from_json(&crate::sim::demo_crm::adapter_options(true, false)).unwrap();
        let crm = SqlCrm::connect(&SecretString::from(url), options)
            .await
            .unwrap();
        let info = crm.writable("contacts").unwrap();
        assert!(info.pk.generated, "the demo key is auto-increment");
        let batch: Vec<Fields> = ["1", "2"]
            .iter()
            .map(|id| {
                Fields::from([
                    ("id".to_owned(), Value::Text((*id).to_owned())),
                    ("title".to_owned(), Value::Text(format!("T{id}"))),
                ])
            })
            .collect();
        let outcome = write::bulk_update_by_pk(&crm.pool, &info, &batch, false)
            .await
            .unwrap()
            .expect("one statement for the batch");
        assert_eq!(
            outcome.results,
            ["1", "2"].map(|id| WriteResult::Updated { id: id.into() })
        );
        let stored = crm.get("contacts", &["2".into()]).await.unwrap();
        assert_eq!(stored[0].fields["title"], Value::from("T2"));
    }

    #[tokio::test]
    async fn a_sqlite_crm_gets_one_connection_unless_the_options_set_a_size() {
        // One writer at a time is all a SQLite file takes, and a lone connection keeps its
        // page cache from one transaction to the next.
        assert_eq!(
            sqlite_pool_size(serde_json::json!({ "objects": {} })).await,
            1
        );
        let three = serde_json::json!({ "objects": {}, "max_connections": 3 });
        assert_eq!(sqlite_pool_size(three).await, 3);
        let zero = serde_json::json!({ "objects": {}, "max_connections": 0 });
        let err = SqlOptions::from_json(&zero).unwrap_err();
        assert!(err.to_string().contains("max_connections"), "{err}");
    }

    #[tokio::test]
    async fn the_adapter_leaves_a_sqlite_files_journal_mode_as_it_is() {
        // The page cache is the adapter connection's own setting; the journal mode belongs to
        // the file and to the CRM application that chose it (WAL is the mode a file keeps).
        for mode in ["wal", "delete"] {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("crm.db").display());
            let app = SqlPool::connect(&url, 1, false).await.unwrap();
            let set = format!("PRAGMA journal_mode = {mode}");
            app.fetch("set", set, &[]).await.unwrap();
            let options = SqlOptions::from_json(&serde_json::json!({ "objects": {} })).unwrap();
            let crm = SqlCrm::connect(&SecretString::from(url), options)
                .await
                .unwrap();
            for pool in [&crm.pool, &app] {
                let rows = pool
                    .fetch("read", "PRAGMA journal_mode".into(), &[])
                    .await
                    .unwrap();
                let got = rows.first().and_then(|r| r.first().cloned().flatten());
                assert_eq!(got.as_deref(), Some(mode));
            }
            let cache = crm
                .pool
                .fetch(
                    "read",
                    "SELECT CAST(cache_size AS TEXT) FROM pragma_cache_size()".into(),
                    &[],
                )
                .await
                .unwrap();
            let got = cache.first().and_then(|r| r.first().cloned().flatten());
            assert_eq!(
                got.as_deref(),
                Some("-8192"),
                "the adapter's own page cache"
            );
        }
    }

    #[test]
    fn the_overlap_start_keeps_sqlite_text_shape() {
        let five = Duration::from_secs(300);
        assert_eq!(
            overlap_start("2030-01-01 00:05:00.250", five, Dialect::Sqlite),
            "2030-01-01 00:00:00.250"
        );
        assert_eq!(
            overlap_start("2030-01-01T00:05:00Z", five, Dialect::Sqlite),
            "2030-01-01T00:00:00Z"
        );
        assert_eq!(
            overlap_start("2030-01-01 00:05:00+00", five, Dialect::MySql),
            "2030-01-01 00:00:00.000000"
        );
        assert_eq!(
            overlap_start("not a time", five, Dialect::Postgres),
            "not a time"
        );
    }

    #[test]
    fn soft_delete_rules_match_flags_and_timestamps() {
        let flag = column("deleted", FieldType::Boolean);
        let rule = SoftDelete {
            column: "deleted".into(),
            value: Some(serde_json::json!(true)),
        };
        assert!(is_soft_deleted(Some("1"), &flag, Some(&rule)));
        assert!(is_soft_deleted(Some("true"), &flag, Some(&rule)));
        assert!(!is_soft_deleted(Some("0"), &flag, Some(&rule)));
        assert!(!is_soft_deleted(None, &flag, Some(&rule)));
        let int_flag = column("is_deleted", FieldType::Integer);
        assert!(is_soft_deleted(Some("1"), &int_flag, Some(&rule)));
        let active = SoftDelete {
            column: "active".into(),
            value: Some(serde_json::json!(false)),
        };
        assert!(is_soft_deleted(Some("f"), &flag, Some(&active)));
        let stamp = SoftDelete {
            column: "deleted_at".into(),
            value: None,
        };
        let at = column("deleted_at", FieldType::DateTime);
        assert!(is_soft_deleted(
            Some("2030-01-01 00:00:00"),
            &at,
            Some(&stamp)
        ));
        assert!(!is_soft_deleted(None, &at, Some(&stamp)));
        assert!(!is_soft_deleted(Some("1"), &flag, None));
    }

    #[test]
    fn echoes_match_only_the_written_version_and_stay_bounded() {
        let mut echoes = Echoes::default();
        echoes.remember("contacts", "1".into(), "t1".into());
        assert!(echoes.is_echo("contacts", "1", "t1"));
        assert!(
            !echoes.is_echo("contacts", "1", "t2"),
            "a later user change is not an echo"
        );
        assert!(!echoes.is_echo("leads", "1", "t1"));
        echoes.remember("contacts", "1".into(), "t3".into());
        assert!(echoes.is_echo("contacts", "1", "t3"));
        assert!(!echoes.is_echo("contacts", "1", "t1"));
        assert_eq!(echoes.order.len(), 1);
        // Object and key are hashed together: ("contacts", "1") is not ("contacts1", "").
        echoes.remember("contacts1", String::new(), "t3".into());
        assert!(!echoes.is_echo("contacts", "", "t3"));
        assert!(!echoes.is_echo("contacts", "11", "t3"));
        assert_eq!(echoes.order.len(), 2);
    }

    #[test]
    fn options_refuse_unknown_keys_and_zero_sizes() {
        let base = serde_json::json!({ "objects": { "c": {
            "table": "contacts", "primary_key": "id", "modified_column": "m", "marketo_id_column": "mk"
        } } });
        let opts = SqlOptions::from_json(&base).unwrap();
        assert!(!opts.objects["c"].writable, "writes are off by default");
        assert_eq!(opts.overlap_seconds, 300);
        let mut bad = base.clone();
        bad["objects"]["c"]["soft_delete"] = serde_json::json!({ "column": "d", "sql": "x" });
        let err = SqlOptions::from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("sql"), "{err}");
        let mut zero = base;
        zero["max_batch_write"] = serde_json::json!(0);
        assert!(SqlOptions::from_json(&zero).is_err());
    }

    #[test]
    fn cursors_round_trip_and_damaged_ones_are_refused() {
        let state = CursorState {
            v: 1,
            m: Some("x".into()),
            pk: Some("2".into()),
            log_seq: 7,
            ..CursorState::default()
        };
        let json = serde_json::to_value(&state).unwrap();
        let back: CursorState = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
        assert!(serde_json::from_value::<CursorState>(serde_json::json!({ "v": "one" })).is_err());
    }
}
