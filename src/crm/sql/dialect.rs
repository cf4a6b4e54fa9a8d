//! Everything that differs between PostgreSQL, MariaDB/MySQL and SQLite, in one place:
//! connecting, quoting, placeholders, casts, "now", value text forms and error classes.
//!
//! All values cross the wire as text (`Option<String>`): reads select `CAST(col AS TEXT)`
//! (`AS CHAR` on MariaDB) and writes bind text that the database converts (with an explicit
//! `CAST($n AS type)` on PostgreSQL, whose parameters are typed). The column's catalog type then
//! turns the text into a typed [`Value`].

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::crm::{CrmError, Refusal, RefusalReason};
use crate::model::{FieldType, Value};

/// The SQL engine behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MariaDB or MySQL.
    MySql,
    /// SQLite.
    Sqlite,
}

/// A connection pool for one of the three engines.
#[derive(Debug, Clone)]
pub enum SqlPool {
    /// PostgreSQL.
    Pg(PgPool),
    /// MariaDB or MySQL.
    My(MySqlPool),
    /// SQLite.
    Lite(SqlitePool),
}

/// A row with every column as text.
pub type TextRow = Vec<Option<String>>;

/// Runs `$body` with `$p` bound to the concrete pool of each variant.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::crm::sql::dialect::SqlPool::Pg($p) => $body,
            $crate::crm::sql::dialect::SqlPool::My($p) => $body,
            $crate::crm::sql::dialect::SqlPool::Lite($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Fetches all rows of a checked, parameterised statement as text.
macro_rules! fetch_text {
    ($exec:expr, $sql:expr, $params:expr) => {{
        use sqlx::Row as _;
        let mut q = sqlx::query(sqlx::AssertSqlSafe($sql));
        for p in $params.iter() {
            q = q.bind(p.clone());
        }
        match q.fetch_all($exec).await {
            Ok(rows) => rows
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.try_get::<Option<String>, _>(i))
                        .collect::<Result<Vec<Option<String>>, sqlx::Error>>()
                })
                .collect::<Result<Vec<_>, sqlx::Error>>(),
            Err(e) => Err(e),
        }
    }};
}
pub(crate) use fetch_text;

/// Executes a checked, parameterised statement and returns the rows affected.
macro_rules! exec_text {
    ($exec:expr, $sql:expr, $params:expr) => {{
        let mut q = sqlx::query(sqlx::AssertSqlSafe($sql));
        for p in $params.iter() {
            q = q.bind(p.clone());
        }
        q.execute($exec).await.map(|r| r.rows_affected())
    }};
}
pub(crate) use exec_text;

impl SqlPool {
    /// Returns a pool for the URL's scheme (`postgres://`, `mysql://`/`mariadb://`, `sqlite:`).
    /// Every connection of an adapter pool is marked as the sync's writer, so that change-log
    /// triggers skip its writes (PostgreSQL: `marketo_sync.writer` setting; MariaDB:
    /// `@marketo_sync_writer`; SQLite: see the changelog module). Sessions run in UTC.
    ///
    /// # Errors
    /// An unknown scheme or a failed connection.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        mark_writer: bool,
    ) -> Result<SqlPool, CrmError> {
        let dialect = Dialect::from_url(url)?;
        let conn_err = |e: sqlx::Error| classify("connect", &e);
        Ok(match dialect {
            Dialect::Postgres => {
                let opts = PgConnectOptions::from_str(url).map_err(|_| CrmError::Config {
                    message: "the crm url is not a valid postgres url".into(),
                })?;
                let opts = if mark_writer {
                    opts.options([("timezone", "UTC"), ("marketo_sync.writer", "on")])
                } else {
                    opts.options([("timezone", "UTC")])
                };
                SqlPool::Pg(
                    PgPoolOptions::new()
                        .max_connections(max_connections)
                        .connect_with(opts)
                        .await
                        .map_err(conn_err)?,
                )
            }
            Dialect::MySql => {
                let url = url.replacen("mariadb://", "mysql://", 1);
                let opts = MySqlConnectOptions::from_str(&url).map_err(|_| CrmError::Config {
                    message: "the crm url is not a valid mysql url".into(),
                })?;
                // Strict mode on every table: a value that does not fit is an error, never
                // silently truncated or coerced (MariaDB's non-strict modes do both).
                let pool = MySqlPoolOptions::new()
                    .max_connections(max_connections)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            sqlx::raw_sql(
                                "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')",
                            )
                            .execute(&mut *conn)
                            .await?;
                            if mark_writer {
                                sqlx::raw_sql("SET @marketo_sync_writer = 1")
                                    .execute(conn)
                                    .await?;
                            }
                            Ok(())
                        })
                    });
                SqlPool::My(pool.connect_with(opts).await.map_err(conn_err)?)
            }
            Dialect::Sqlite => {
                crate::limit_c_malloc_arenas();
                let opts = SqliteConnectOptions::from_str(url)
                    .map_err(|_| CrmError::Config {
                        message: "the crm url is not a valid sqlite url".into(),
                    })?
                    .create_if_missing(true)
                    // A page cache of 8 MiB (SQLite's default is 2 MiB): a batch's writes touch
                    // pages all over the indexes of a large table, and with the default they
                    // were spilled and read again within and between transactions. The
                    // setting is the connection's own, not the file's.
                    .pragma("cache_size", "-8192");
                // The journal mode is the file's own: the adapter does not switch a CRM's
                // file to another mode behind its application's back. The demo CRM's file is
                // created in WAL mode (`sim::demo_crm::install`), with the default
                // `synchronous = FULL`: `NORMAL` may lose a committed CRM write in a power cut
                // after the state store recorded it.
                SqlPool::Lite(
                    SqlitePoolOptions::new()
                        .max_connections(max_connections)
                        .connect_with(opts)
                        .await
                        .map_err(conn_err)?,
                )
            }
        })
    }

    /// Returns the pool's dialect.
    pub fn dialect(&self) -> Dialect {
        match self {
            SqlPool::Pg(_) => Dialect::Postgres,
            SqlPool::My(_) => Dialect::MySql,
            SqlPool::Lite(_) => Dialect::Sqlite,
        }
    }

    /// Returns all rows of a statement built only from checked identifiers, as text.
    ///
    /// # Errors
    /// The database error, classified.
    pub async fn fetch(
        &self,
        operation: &str,
        sql: String,
        params: &[Option<String>],
    ) -> Result<Vec<TextRow>, CrmError> {
        let res = on_pool!(self, p => fetch_text!(p, sql, params));
        res.map_err(|e| classify(operation, &e))
    }

    /// Executes a statement built only from checked identifiers and returns the rows affected.
    ///
    /// # Errors
    /// The database error, classified.
    pub async fn execute(
        &self,
        operation: &str,
        sql: String,
        params: &[Option<String>],
    ) -> Result<u64, CrmError> {
        let res = on_pool!(self, p => exec_text!(p, sql, params));
        res.map_err(|e| classify(operation, &e))
    }

    /// Executes DDL or several statements through the simple protocol.
    ///
    /// # Errors
    /// The database error, classified.
    pub async fn execute_raw(&self, operation: &str, sql: String) -> Result<(), CrmError> {
        let res = on_pool!(self, p => sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(p).await.map(|_| ()));
        res.map_err(|e| classify(operation, &e))
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

impl Dialect {
    /// Returns the adapter's connection pool size when the options set none: one on SQLite,
    /// whose file takes one writer at a time (and whose connection keeps its page cache only
    /// while no other connection writes the file), five on the servers.
    pub fn default_pool_size(self) -> u32 {
        match self {
            Dialect::Sqlite => 1,
            Dialect::Postgres | Dialect::MySql => 5,
        }
    }

    /// Returns the dialect for a URL.
    ///
    /// # Errors
    /// [`CrmError::Config`] for an unknown scheme (the URL itself is never echoed).
    pub fn from_url(url: &str) -> Result<Dialect, CrmError> {
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            "sqlite" => Ok(Dialect::Sqlite),
            other => Err(CrmError::Config {
                message: format!(
                    "unsupported database scheme `{other}` in the crm url (expected postgres, mysql, mariadb or sqlite)"
                ),
            }),
        }
    }

    /// Returns an identifier quoted for this dialect.
    pub fn quote(self, name: &str) -> String {
        match self {
            Dialect::MySql => format!("`{}`", name.replace('`', "``")),
            _ => format!("\"{}\"", name.replace('"', "\"\"")),
        }
    }

    /// Returns a string literal (only for checked names, never for values).
    pub fn literal(self, text: &str) -> String {
        let escaped = text.replace('\'', "''");
        match self {
            Dialect::MySql => format!("'{}'", escaped.replace('\\', "\\\\")),
            _ => format!("'{escaped}'"),
        }
    }

    /// Returns the `n`th (1-based) placeholder, cast to `cast` on PostgreSQL.
    ///
    /// The cast is to the type without its modifiers (`character varying`, not
    /// `character varying(128)`; `numeric`, not `numeric(10,2)`): PostgreSQL shortens text and
    /// rounds numbers on an explicit cast, while storing the value into the column raises an
    /// error where it does not fit.
    pub fn param(self, n: usize, cast: &str) -> String {
        match self {
            Dialect::Postgres if cast.is_empty() => format!("${n}"),
            Dialect::Postgres => format!("CAST(${n} AS {})", unconstrained(cast)),
            _ => "?".to_owned(),
        }
    }

    /// Returns an expression reading a column as text.
    pub fn as_text(self, expr: &str) -> String {
        match self {
            Dialect::MySql => format!("CAST({expr} AS CHAR)"),
            _ => format!("CAST({expr} AS TEXT)"),
        }
    }

    /// Returns the expression for "now" written into a modified column.
    pub fn now(self) -> &'static str {
        match self {
            Dialect::Postgres => "clock_timestamp()",
            Dialect::MySql => "CURRENT_TIMESTAMP(6)",
            Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f','now')",
        }
    }

    /// Returns the expression for "now, or `current` when that is later" written into the
    /// modified column of a row being updated (`current` is the column as the statement reads
    /// it: the row's value before the update, or the existing row in `ON CONFLICT DO UPDATE`).
    ///
    /// A write never moves a row's modified time backwards: another writer whose clock runs
    /// ahead of the database's may have stamped it, and a row moved behind the change cursor
    /// would never be read again, losing that writer's change when the step that wrote it fails
    /// before its commit (found by the convergence harness, seed 31591).
    pub fn now_not_before(self, current: &str) -> String {
        let now = self.now();
        match self {
            // GREATEST skips NULLs on PostgreSQL, but not on MySQL.
            Dialect::Postgres => format!("GREATEST({now}, {current})"),
            Dialect::MySql => format!("GREATEST({now}, COALESCE({current}, {now}))"),
            // Times are text in SQLite: compared as instants, whatever their text shape.
            Dialect::Sqlite => format!(
                "CASE WHEN julianday({current}) > julianday({now}) THEN {current} ELSE {now} END"
            ),
        }
    }

    /// Returns a value in the text form this dialect converts into a column of type `ty`.
    pub fn value_text(self, value: &Value, ty: &FieldType) -> Option<String> {
        match value {
            Value::Null => None,
            Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
            Value::DateTime(t) => Some(self.datetime_text(t)),
            Value::Text(s) if *ty == FieldType::Boolean => {
                Some(match s.to_ascii_lowercase().as_str() {
                    "true" | "t" | "yes" => "1".to_owned(),
                    "false" | "f" | "no" => "0".to_owned(),
                    _ => s.clone(),
                })
            }
            Value::Text(s) if *ty == FieldType::DateTime => Some(
                parse_datetime(s)
                    .map(|t| self.datetime_text(&t))
                    .unwrap_or_else(|| s.clone()),
            ),
            other => Some(other.to_text()),
        }
    }

    /// Returns an instant in the text form this dialect stores.
    pub fn datetime_text(self, t: &DateTime<Utc>) -> String {
        match self {
            Dialect::Postgres => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            Dialect::MySql => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            Dialect::Sqlite => t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        }
    }
}

/// Returns a PostgreSQL type name without its modifiers: `character varying(128)` ->
/// `character varying`, `numeric(10,2)` -> `numeric`, `timestamp(3) with time zone` ->
/// `timestamp with time zone`. Blank-padded `character(n)` becomes `text` (plain `character`
/// would mean `character(1)`), and `bit(n)` becomes `bit varying`.
pub fn unconstrained(cast: &str) -> String {
    let Some(open) = cast.find('(') else {
        return cast.to_owned();
    };
    let Some(close) = cast[open..].find(')').map(|i| open + i) else {
        return cast.to_owned();
    };
    let base = cast[..open].trim_end();
    let rest = &cast[close + 1..];
    match base {
        "character" | "char" | "bpchar" => format!("text{rest}"),
        "bit" => format!("bit varying{rest}"),
        _ => format!("{base}{rest}"),
    }
}

/// Returns an instant read from the text forms the three engines produce.
pub fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(text, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Returns a typed value from a column's text form; text that does not parse stays text.
pub fn parse_value(raw: Option<&str>, ty: &FieldType) -> Value {
    let Some(raw) = raw else { return Value::Null };
    let parsed = match ty {
        FieldType::Integer => raw.trim().parse::<i64>().ok().map(Value::Int),
        FieldType::Decimal => Decimal::from_str(raw.trim())
            .or_else(|_| Decimal::from_scientific(raw.trim()))
            .ok()
            .map(Value::Decimal),
        FieldType::Boolean => match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Some(Value::Bool(true)),
            "0" | "f" | "false" => Some(Value::Bool(false)),
            _ => None,
        },
        FieldType::Date => raw
            .get(..10)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .map(Value::Date),
        FieldType::DateTime => parse_datetime(raw).map(Value::DateTime),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::Text(raw.to_owned()))
}

/// Returns a classified [`CrmError::Remote`] for a database error. Connection loss, pool
/// timeouts, deadlocks, serialization failures, lock timeouts and busy databases are
/// retryable; everything else is not.
pub fn classify(operation: &str, error: &sqlx::Error) -> CrmError {
    let (message, retryable) = match error {
        sqlx::Error::Io(e) => (format!("connection error: {e}"), true),
        sqlx::Error::Tls(_) => ("tls error".to_owned(), true),
        sqlx::Error::Protocol(m) => (format!("protocol error: {m}"), true),
        sqlx::Error::PoolTimedOut => (
            "timed out waiting for a database connection".to_owned(),
            true,
        ),
        sqlx::Error::PoolClosed => ("the connection pool is closed".to_owned(), true),
        sqlx::Error::WorkerCrashed => ("the database worker crashed".to_owned(), true),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let number = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|e| e.number());
            let retryable = match number {
                // deadlock, lock wait timeout, server shutdown, connection killed, gone away, lost
                Some(n) => matches!(n, 1213 | 1205 | 1053 | 1927 | 2006 | 2013 | 1317 | 1290),
                None => {
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || code.starts_with("53")
                        || code == "40001"
                        || code == "40P01"
                        || code == "55P03"
                        || code
                            .parse::<i64>()
                            .map(|c| matches!(c & 0xff, 5 | 6))
                            .unwrap_or(false)
                }
            };
            (
                format!("database error {code}: {}", db.message()),
                retryable,
            )
        }
        other => (other.to_string(), false),
    };
    CrmError::Remote {
        operation: operation.to_owned(),
        message,
        retryable,
    }
}

/// Returns the refusal of one record for an error that concerns that record only, or `None`
/// when the error concerns the whole batch.
///
/// Per record: constraints (not null, unique, foreign key, check), data errors (PostgreSQL
/// class 22, MySQL 1264/1265/1292/1366/1406/3819/4025 and kin, SQLite 18/19/20) and refusals by
/// a trigger (PostgreSQL class P0 and 09/27, MySQL `SIGNAL` = SQLSTATE 45000 / errno 1644,
/// SQLite `RAISE(...)` = extended code 1811). Batch-level: connection loss, deadlocks,
/// serialization failures, lock time-outs, busy databases, unknown names and everything else.
pub fn record_error(error: &sqlx::Error) -> Option<Refusal> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let (reason, remote_code) = match db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        Some(my) => (
            mysql_reason(my.number(), &code)?,
            Some(my.number().to_string()),
        ),
        None if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => {
            (sqlite_reason(code.parse().unwrap_or(0))?, Some(code))
        }
        None => (postgres_reason(&code)?, Some(code)),
    };
    Some(Refusal {
        reason,
        remote_code,
        message: db.message().to_owned(),
        retryable: false,
    })
}

fn postgres_reason(sqlstate: &str) -> Option<RefusalReason> {
    Some(match sqlstate {
        "23505" => RefusalReason::Unique,
        "23503" | "23001" => RefusalReason::ForeignKey,
        "23502" => RefusalReason::NotNull,
        "23514" | "23P01" => RefusalReason::Check,
        s if s.starts_with("P0") || s.starts_with("09") || s.starts_with("27") => {
            RefusalReason::Trigger
        }
        s if s.starts_with("22") || s.starts_with("23") => RefusalReason::InvalidValue,
        _ => return None,
    })
}

fn mysql_reason(number: u16, sqlstate: &str) -> Option<RefusalReason> {
    Some(match number {
        1062 | 1586 => RefusalReason::Unique,
        1451 | 1452 | 1216 | 1217 => RefusalReason::ForeignKey,
        1048 | 1364 => RefusalReason::NotNull,
        3819 | 4025 => RefusalReason::Check,
        1644 => RefusalReason::Trigger,
        1264 | 1265 | 1292 | 1366 | 1367 | 1406 | 1411 | 1690 | 1916 | 3756 => {
            RefusalReason::InvalidValue
        }
        // A `SIGNAL` with its own error number keeps its SQLSTATE (class 45 is "unhandled
        // user-defined exception").
        _ if sqlstate.starts_with("45") => RefusalReason::Trigger,
        _ => return None,
    })
}

fn sqlite_reason(extended: i64) -> Option<RefusalReason> {
    Some(match extended {
        // SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY, _ROWID
        2067 | 1555 | 2579 => RefusalReason::Unique,
        787 => RefusalReason::ForeignKey,
        1299 => RefusalReason::NotNull,
        275 => RefusalReason::Check,
        // SQLITE_CONSTRAINT_TRIGGER: RAISE(ABORT | FAIL | ROLLBACK, ...)
        1811 => RefusalReason::Trigger,
        // SQLITE_CONSTRAINT_DATATYPE (strict tables), other constraints, SQLITE_TOOBIG,
        // SQLITE_MISMATCH
        c if c & 0xff == 19 || c & 0xff == 18 || c & 0xff == 20 => RefusalReason::InvalidValue,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_per_dialect() {
        assert_eq!(Dialect::Postgres.quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(Dialect::MySql.quote("a`b"), "`a``b`");
        assert_eq!(Dialect::Postgres.param(2, "bigint"), "CAST($2 AS bigint)");
        assert_eq!(Dialect::Sqlite.param(2, "bigint"), "?");
        assert_eq!(
            Dialect::Postgres.param(1, "character varying(128)"),
            "CAST($1 AS character varying)"
        );
        assert_eq!(unconstrained("numeric(10,2)"), "numeric");
        assert_eq!(
            unconstrained("timestamp(3) with time zone"),
            "timestamp with time zone"
        );
        assert_eq!(unconstrained("character(10)"), "text");
        assert_eq!(
            unconstrained("character varying(8)[]"),
            "character varying[]"
        );
    }

    #[test]
    fn text_forms_of_all_engines_parse() {
        let want = "2030-01-02T03:04:05.123Z".parse::<DateTime<Utc>>().unwrap();
        for text in [
            "2030-01-02 03:04:05.123+00",
            "2030-01-02 03:04:05.123",
            "2030-01-02T03:04:05.123Z",
            "2030-01-02 03:04:05.123000",
        ] {
            assert_eq!(parse_datetime(text), Some(want), "{text}");
        }
        assert_eq!(
            parse_value(Some("t"), &FieldType::Boolean),
            Value::Bool(true)
        );
        assert_eq!(
            parse_value(Some("0"), &FieldType::Boolean),
            Value::Bool(false)
        );
        assert_eq!(
            parse_value(Some("12.50"), &FieldType::Decimal),
            Value::Decimal("12.5".parse().unwrap())
        );
        assert_eq!(
            parse_value(Some("x1"), &FieldType::Integer),
            Value::Text("x1".into())
        );
        assert_eq!(parse_value(None, &FieldType::Integer), Value::Null);
    }

    #[test]
    fn unknown_schemes_are_refused_without_echoing_the_url() {
        let err = Dialect::from_url("oracle://user:secret@host/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("oracle") && !err.contains("secret"), "{err}");
    }
}
