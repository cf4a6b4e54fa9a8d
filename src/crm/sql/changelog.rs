//! The change log: triggers that record inserts, updates and hard deletes of configured tables
//! into `marketo_sync_changelog`, skipping the adapter's own writes.
//!
//! How the adapter's writes are recognised:
//! - PostgreSQL: adapter sessions set `marketo_sync.writer = on`; the trigger function checks
//!   `current_setting('marketo_sync.writer', true)`.
//! - MariaDB/MySQL: adapter sessions set the user variable `@marketo_sync_writer = 1`; the
//!   triggers insert only when it is NULL.
//! - SQLite has no session variables: the adapter sets `marketo_sync_writer.active = 1` inside its
//!   write transaction and back to 0 before committing. SQLite allows one writer at a time, so no
//!   other session can write while the flag is set, and the committed value is always 0.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use tracing::info;

use crate::crm::CrmError;

use super::dialect::{Dialect, SqlPool};
use super::{Check, SqlOptions, check_object};

/// The change-log table.
pub const LOG_TABLE: &str = "marketo_sync_changelog";
/// SQLite only: the table holding the writer flag.
pub const WRITER_TABLE: &str = "marketo_sync_writer";

/// Installs (or re-installs) the change-log table and the triggers of every object with
/// `changelog = true`, and returns the objects that got triggers. Existing log rows are kept.
///
/// # Errors
/// A connection failure, a configured name missing from the catalog, or a DDL failure.
pub async fn install(url: &SecretString, options: &SqlOptions) -> Result<Vec<String>, CrmError> {
    // A plain (unmarked) pool: DDL only.
    let pool = SqlPool::connect(url.expose_secret(), 1, false).await?;
    let d = pool.dialect();
    let op = "install the change log";
    let mut statements: Vec<String> = Vec::new();
    match d {
        Dialect::Postgres => {
            statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {LOG_TABLE} (seq BIGSERIAL PRIMARY KEY, object TEXT NOT NULL, pk TEXT NOT NULL, \
                 op CHAR(1) NOT NULL, changed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
            ));
            statements.push(format!(
                "CREATE OR REPLACE FUNCTION marketo_sync_log() RETURNS trigger LANGUAGE plpgsql AS $fn$ \
                 BEGIN \
                   IF coalesce(current_setting('marketo_sync.writer', true), '') = 'on' THEN RETURN NULL; END IF; \
                   IF TG_OP = 'DELETE' THEN \
                     INSERT INTO {LOG_TABLE} (object, pk, op) VALUES (TG_ARGV[0], to_jsonb(OLD) ->> TG_ARGV[1], 'D'); \
                   ELSE \
                     INSERT INTO {LOG_TABLE} (object, pk, op) VALUES (TG_ARGV[0], to_jsonb(NEW) ->> TG_ARGV[1], substr(TG_OP, 1, 1)); \
                   END IF; \
                   RETURN NULL; \
                 END $fn$"
            ));
        }
        Dialect::MySql => statements.push(format!(
            "CREATE TABLE IF NOT EXISTS {LOG_TABLE} (seq BIGINT AUTO_INCREMENT PRIMARY KEY, object VARCHAR(255) NOT NULL, \
             pk VARCHAR(255) NOT NULL, op CHAR(1) NOT NULL, changed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
        )),
        Dialect::Sqlite => {
            statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {LOG_TABLE} (seq INTEGER PRIMARY KEY AUTOINCREMENT, object TEXT NOT NULL, \
                 pk TEXT NOT NULL, op TEXT NOT NULL, changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')))"
            ));
            statements.push(format!("CREATE TABLE IF NOT EXISTS {WRITER_TABLE} (active INTEGER NOT NULL)"));
            statements.push(format!(
                "INSERT INTO {WRITER_TABLE} (active) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {WRITER_TABLE})"
            ));
        }
    }
    for sql in statements {
        pool.execute_raw(op, sql).await?;
    }
    let mut installed = Vec::new();
    for (name, object) in options.objects.iter().filter(|(_, o)| o.changelog) {
        let info = check_object(&pool, name, object, Check::Strict).await?;
        let table = d.quote(&info.options.table);
        let obj = d.literal(name);
        let trigger_base = format!("marketo_sync_{}", sanitize(&info.options.table));
        let mut ddl = Vec::new();
        match d {
            Dialect::Postgres => {
                let trig = d.quote(&trigger_base);
                ddl.push(format!("DROP TRIGGER IF EXISTS {trig} ON {table}"));
                ddl.push(format!(
                    "CREATE TRIGGER {trig} AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW \
                     EXECUTE FUNCTION marketo_sync_log({obj}, {})",
                    d.literal(&info.pk.name)
                ));
            }
            Dialect::MySql | Dialect::Sqlite => {
                let pk = d.quote(&info.pk.name);
                for (suffix, event, row, op) in [
                    ("ai", "INSERT", "NEW", "I"),
                    ("au", "UPDATE", "NEW", "U"),
                    ("ad", "DELETE", "OLD", "D"),
                ] {
                    let trig = d.quote(&format!("{trigger_base}_{suffix}"));
                    ddl.push(format!("DROP TRIGGER IF EXISTS {trig}"));
                    ddl.push(if d == Dialect::MySql {
                        format!(
                            "CREATE TRIGGER {trig} AFTER {event} ON {table} FOR EACH ROW \
                             INSERT INTO {LOG_TABLE} (object, pk, op) SELECT {obj}, {row}.{pk}, '{op}' FROM DUAL \
                             WHERE @marketo_sync_writer IS NULL"
                        )
                    } else {
                        format!(
                            "CREATE TRIGGER {trig} AFTER {event} ON {table} FOR EACH ROW \
                             WHEN NOT EXISTS (SELECT 1 FROM {WRITER_TABLE} WHERE active = 1) \
                             BEGIN INSERT INTO {LOG_TABLE} (object, pk, op) VALUES ({obj}, {row}.{pk}, '{op}'); END"
                        )
                    });
                }
            }
        }
        for sql in ddl {
            pool.execute_raw(op, sql).await?;
        }
        info!(object = %name, "change log triggers installed");
        installed.push(name.clone());
    }
    pool.close().await;
    Ok(installed)
}

/// Returns the options read from a JSON or TOML file (the `crm install-changelog --options`
/// form, until the settings carry them).
///
/// # Errors
/// [`CrmError::Config`] naming the file.
pub fn options_from_file(path: &Path) -> Result<SqlOptions, CrmError> {
    let text = std::fs::read_to_string(path).map_err(|e| CrmError::Config {
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let json: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| CrmError::Config {
            message: format!("{}: {e}", path.display()),
        })?
    } else {
        serde_json::from_str(&text).map_err(|e| CrmError::Config {
            message: format!("{}: {e}", path.display()),
        })?
    };
    SqlOptions::from_json(&json).map_err(|e| CrmError::Config {
        message: format!("{}: {e}", path.display()),
    })
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect()
}
