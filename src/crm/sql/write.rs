//! Writes: upserts and deletes, one transaction per batch, one result per record.

use serde_json::Value as Json;

use crate::crm::{CrmError, Refusal, RefusalReason, WriteResult};
use crate::model::{Fields, Value};

use super::catalog::Column;
use super::changelog::WRITER_TABLE;
use super::dialect::{
    Dialect, SqlPool, TextRow, classify, exec_text, fetch_text, on_pool, record_error,
    unconstrained,
};
use super::{ObjectInfo, is_soft_deleted};

type Sql = (String, Vec<Option<String>>);

/// One record's statements.
#[derive(Clone)]
pub(super) struct Statement {
    /// A lookup run first; an empty result means the record is new (SQLite upserts).
    pre: Option<Sql>,
    /// The write itself.
    main: Sql,
    /// Run instead of `main` when `pre` found the record (MariaDB: a plain UPDATE by key, as
    /// `ON DUPLICATE KEY UPDATE` would also match other unique keys and overwrite another row).
    update_instead: Option<Sql>,
    /// The write returns `(pk, modified[, inserted])`.
    main_returns: bool,
    /// A lookup of `(pk, modified)` after the write.
    post: Option<Sql>,
    /// A delete of this id (else an upsert).
    delete_id: Option<String>,
    /// An update of an existing row only: when `pre` finds no row, the record fails with
    /// `not_found` and nothing runs.
    update_only: bool,
    /// `pre` returns the row's soft-delete column: a soft-deleted row is not written, and the
    /// record fails with `deleted` (its key belongs to a record the CRM deleted).
    refuse_deleted: bool,
    /// An update by primary key that sets the Marketo id: the other rows holding that id,
    /// `(pk, soft-delete column)`, read before the write (see [`release_plan`]).
    release: Option<Sql>,
}

/// What a batch did.
pub(super) struct Outcome {
    /// One result per input, in order.
    pub results: Vec<WriteResult>,
    /// `(pk, modified)` of every row written, as the database stored them.
    pub written: Vec<(String, String)>,
}

fn refused(reason: RefusalReason, message: String) -> WriteResult {
    WriteResult::Refused(Refusal::new(reason, message))
}

/// Returns the text form of `value` for `col`, or the record's refusal when the value does not
/// fit the column (never shortened, rounded or coerced).
fn fitted(d: Dialect, col: &Column, value: &Value) -> Result<Option<String>, WriteResult> {
    let text = d.value_text(value, &col.ty);
    if let Some(t) = &text
        && let Err(reason) = col.check_fits(d, t)
    {
        let message = match &reason {
            RefusalReason::TooLong {
                field,
                max_chars,
                actual_chars,
            } => format!(
                "the value of `{field}` is {actual_chars} characters long; column `{field}` ({}) takes at most {max_chars}",
                col.declared_type()
            ),
            other => other.to_string(),
        };
        return Err(refused(reason, message));
    }
    Ok(text)
}

/// Returns the statements that upsert one record keyed by `key`, or the record's failure.
pub(super) fn plan_upsert(
    d: Dialect,
    info: &ObjectInfo,
    key: &Column,
    fields: &Fields,
) -> Result<Statement, WriteResult> {
    match fields.get(&key.name) {
        None | Some(Value::Null) => {
            return Err(refused(
                RefusalReason::MissingKey,
                format!("key field `{}` has no value", key.name),
            ));
        }
        Some(_) => {}
    }
    let mut columns: Vec<&Column> = Vec::new();
    let mut params: Vec<Option<String>> = Vec::new();
    for (name, value) in fields {
        let Some(col) = info.table_columns.iter().find(|c| &c.name == name) else {
            return Err(refused(
                RefusalReason::UnknownField {
                    field: name.clone(),
                },
                format!("`{}` has no column `{name}`", info.options.table),
            ));
        };
        // The key may be the generated primary key: it only selects the row to update.
        if col.generated && col.name != key.name {
            return Err(refused(
                RefusalReason::ReadOnlyField {
                    field: name.clone(),
                },
                format!("column `{name}` is computed by the database"),
            ));
        }
        columns.push(col);
        params.push(fitted(d, col, value)?);
    }
    let q = |c: &str| d.quote(c);
    let table = q(&info.options.table);
    let m = q(&info.modified.name);
    let pk = q(&info.pk.name);
    let keyq = q(&key.name);
    let mut names: Vec<String> = columns.iter().map(|c| q(&c.name)).collect();
    let mut values: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| d.param(i + 1, &c.cast))
        .collect();
    let sets_modified = columns.iter().any(|c| c.name == info.modified.name);
    if !sets_modified {
        names.push(m.clone());
        values.push(d.now().to_owned());
    }
    let insert = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        names.join(", "),
        values.join(", ")
    );
    let key_param = params[columns.iter().position(|c| c.name == key.name).unwrap_or(0)].clone();
    // The existence probe reads the soft-delete column where there is one, so that a key held
    // by a deleted row is refused rather than written into the dead row.
    let probe = match &info.soft {
        Some(col) => d.as_text(&q(&col.name)),
        None => d.as_text("1"),
    };
    let refuse_deleted = info.soft.is_some();
    Ok(match d {
        Dialect::Postgres | Dialect::Sqlite => {
            let sets: Vec<String> = names
                .iter()
                .map(|n| match (sets_modified, *n == m) {
                    (false, true) => format!("{n} = {}", d.now_not_before(&format!("{table}.{n}"))),
                    _ => format!("{n} = excluded.{n}"),
                })
                .collect();
            let returning = if d == Dialect::Postgres {
                format!(
                    "{}, {}, CAST((xmax = 0) AS TEXT)",
                    d.as_text(&pk),
                    d.as_text(&m)
                )
            } else {
                format!("{}, {}", d.as_text(&pk), d.as_text(&m))
            };
            let main = format!(
                "{insert} ON CONFLICT ({keyq}) DO UPDATE SET {} RETURNING {returning}",
                sets.join(", ")
            );
            let pre = (d == Dialect::Sqlite || refuse_deleted).then(|| {
                (
                    format!(
                        "SELECT {probe} FROM {table} WHERE {keyq} = {}",
                        d.param(1, &key.cast)
                    ),
                    vec![key_param.clone()],
                )
            });
            Statement {
                pre,
                main: (main, params),
                update_instead: None,
                main_returns: true,
                post: None,
                delete_id: None,
                update_only: false,
                refuse_deleted,
                release: None,
            }
        }
        Dialect::MySql => {
            let sets: Vec<String> = names
                .iter()
                .zip(&values)
                .map(|(n, v)| match (sets_modified, *n == m) {
                    (false, true) => format!("{n} = {}", d.now_not_before(n)),
                    _ => format!("{n} = {v}"),
                })
                .collect();
            let update = format!("UPDATE {table} SET {} WHERE {keyq} = ?", sets.join(", "));
            let mut update_params = params.clone();
            update_params.push(key_param.clone());
            let pre = format!("SELECT {probe} FROM {table} WHERE {keyq} = ? FOR UPDATE");
            let post = format!(
                "SELECT {}, {} FROM {table} WHERE {keyq} = ?",
                d.as_text(&pk),
                d.as_text(&m)
            );
            Statement {
                pre: Some((pre, vec![key_param.clone()])),
                main: (insert, params),
                update_instead: Some((update, update_params)),
                main_returns: false,
                post: Some((post, vec![key_param])),
                delete_id: None,
                update_only: false,
                refuse_deleted,
                release: None,
            }
        }
    })
}

/// Returns the statements that update one existing record by its primary key (never an
/// insert), or the record's failure. Used when `upsert` is keyed by the primary key: the row
/// exists in the CRM but may not carry its Marketo id yet.
pub(super) fn plan_update_by_pk(
    d: Dialect,
    info: &ObjectInfo,
    fields: &Fields,
) -> Result<Statement, WriteResult> {
    let pk_name = &info.pk.name;
    let id = match fields.get(pk_name) {
        None | Some(Value::Null) => {
            return Err(refused(
                RefusalReason::MissingKey,
                format!("key field `{pk_name}` has no value"),
            ));
        }
        Some(v) => d.value_text(v, &info.pk.ty),
    };
    let mut sets = Vec::new();
    let mut params: Vec<Option<String>> = Vec::new();
    let mut sets_modified = false;
    for (name, value) in fields {
        if name == pk_name {
            continue;
        }
        let Some(col) = info.table_columns.iter().find(|c| &c.name == name) else {
            return Err(refused(
                RefusalReason::UnknownField {
                    field: name.clone(),
                },
                format!("`{}` has no column `{name}`", info.options.table),
            ));
        };
        if col.generated {
            return Err(refused(
                RefusalReason::ReadOnlyField {
                    field: name.clone(),
                },
                format!("column `{name}` is computed by the database"),
            ));
        }
        params.push(fitted(d, col, value)?);
        sets.push(format!(
            "{} = {}",
            d.quote(name),
            d.param(params.len(), &col.cast)
        ));
        sets_modified |= col.name == info.modified.name;
    }
    let q = |c: &str| d.quote(c);
    let table = q(&info.options.table);
    let pk = q(pk_name);
    let m = q(&info.modified.name);
    if !sets_modified {
        sets.push(format!("{m} = {}", d.now_not_before(&m)));
    }
    params.push(id.clone());
    let main = format!(
        "UPDATE {table} SET {} WHERE {pk} = {}",
        sets.join(", "),
        d.param(params.len(), &info.pk.cast)
    );
    let lock = if d == Dialect::MySql {
        " FOR UPDATE"
    } else {
        ""
    };
    let pre = format!(
        "SELECT {} FROM {table} WHERE {pk} = {}{lock}",
        d.as_text(&pk),
        d.param(1, &info.pk.cast)
    );
    let post = format!(
        "SELECT {}, {} FROM {table} WHERE {pk} = {}",
        d.as_text(&pk),
        d.as_text(&m),
        d.param(1, &info.pk.cast)
    );
    let release = release_plan(d, info, fields, &id);
    Ok(Statement {
        pre: Some((pre, vec![id.clone()])),
        main: (main, params),
        update_instead: None,
        main_returns: false,
        post: Some((post, vec![id])),
        delete_id: None,
        update_only: true,
        refuse_deleted: false,
        release,
    })
}

/// Returns the lookup of the soft-deleted rows that hold the Marketo id an update by primary
/// key sets, when the object has a soft-delete column: `(pk, soft-delete column)` of every other
/// row holding it. A row the CRM deleted keeps its Marketo id, and the unique Marketo-id column
/// would refuse the id to every live row for good (the engine gives a merge winner its loser's
/// CRM record, or writes a lead's id to the contact it now pairs with); [`run_once`] clears
/// the id on the dead rows first. A live row holding it still makes the write refused.
fn release_plan(
    d: Dialect,
    info: &ObjectInfo,
    fields: &Fields,
    id: &Option<String>,
) -> Option<Sql> {
    let column = &info.options.marketo_id_column;
    let soft = info.soft.as_ref()?;
    let mk = info.table_columns.iter().find(|c| &c.name == column)?;
    let value = match fields.get(column) {
        None | Some(Value::Null) => return None,
        Some(v) => d.value_text(v, &mk.ty),
    };
    let q = |c: &str| d.quote(c);
    let sql = format!(
        "SELECT {}, {} FROM {} WHERE {} = {} AND {} <> {}",
        d.as_text(&q(&info.pk.name)),
        d.as_text(&q(&soft.name)),
        q(&info.options.table),
        q(column),
        d.param(1, &mk.cast),
        q(&info.pk.name),
        d.param(2, &info.pk.cast)
    );
    Some((sql, vec![value, id.clone()]))
}

/// Returns the statements that clear the Marketo id on the soft-deleted rows among `rows` (the
/// answer of [`release_plan`]'s lookup), without moving their modified time: the CRM's change
/// feed has nothing new to read there.
fn dead_id_clears(d: Dialect, info: &ObjectInfo, rows: Vec<TextRow>) -> Vec<Sql> {
    let q = |c: &str| d.quote(c);
    let clear = format!(
        "UPDATE {} SET {} = NULL WHERE {} = {}",
        q(&info.options.table),
        q(&info.options.marketo_id_column),
        q(&info.pk.name),
        d.param(1, &info.pk.cast)
    );
    rows.into_iter()
        .filter_map(|row| {
            let pk = row.first().cloned().flatten()?;
            let raw = row.get(1).cloned().flatten();
            let col = info.soft.as_ref()?;
            is_soft_deleted(raw.as_deref(), col, info.options.soft_delete.as_ref())
                .then(|| (clear.clone(), vec![Some(pk)]))
        })
        .collect()
}

/// Returns the statements that delete one record (soft where the object has a soft-delete
/// column).
pub(super) fn plan_delete(d: Dialect, info: &ObjectInfo, id: &str) -> Statement {
    let q = |c: &str| d.quote(c);
    let table = q(&info.options.table);
    let pk = q(&info.pk.name);
    let m = q(&info.modified.name);
    let id_param = d.param(1, &info.pk.cast);
    match (&info.options.soft_delete, &info.soft) {
        (Some(rule), Some(col)) => {
            let (set, params) = match &rule.value {
                Some(v) => {
                    let value = d.value_text(&Value::from_json(v), &col.ty);
                    (
                        format!("{} = {}", q(&col.name), d.param(1, &col.cast)),
                        vec![value, Some(id.to_owned())],
                    )
                }
                None => (
                    format!("{} = {}", q(&col.name), d.now()),
                    vec![Some(id.to_owned())],
                ),
            };
            let id_param = d.param(params.len(), &info.pk.cast);
            let main = format!(
                "UPDATE {table} SET {set}, {m} = {} WHERE {pk} = {id_param}",
                d.now_not_before(&m)
            );
            let post = format!(
                "SELECT {}, {} FROM {table} WHERE {pk} = {}",
                d.as_text(&pk),
                d.as_text(&m),
                d.param(1, &info.pk.cast)
            );
            Statement {
                pre: None,
                main: (main, params),
                update_instead: None,
                main_returns: false,
                post: Some((post, vec![Some(id.to_owned())])),
                delete_id: Some(id.to_owned()),
                update_only: false,
                refuse_deleted: false,
                release: None,
            }
        }
        _ => Statement {
            pre: None,
            main: (
                format!("DELETE FROM {table} WHERE {pk} = {id_param}"),
                vec![Some(id.to_owned())],
            ),
            update_instead: None,
            main_returns: false,
            post: None,
            delete_id: Some(id.to_owned()),
            update_only: false,
            refuse_deleted: false,
            release: None,
        },
    }
}

/// What one statement returned.
enum Ran {
    Rows(Vec<TextRow>),
    Affected(u64),
}

/// How one attempt at a batch ended.
enum Attempt {
    /// Committed.
    Done(Outcome),
    /// The record at this index was refused in a way that ended the whole transaction (SQLite's
    /// `RAISE(ROLLBACK, ...)`): nothing was committed.
    Lost { index: usize, refusal: Refusal },
}

/// On SQLite, checks whether the database ended the transaction behind the connection's back
/// (`RAISE(ROLLBACK)`, and some I/O errors roll back on their own), and if so opens a new empty
/// one, so that the caller's transaction handle can be rolled back or dropped cleanly. Returns
/// true when the transaction was lost. Inside a live transaction `BEGIN` fails harmlessly.
macro_rules! reopen_if_lost {
    ($tx:expr, $dialect:expr) => {
        $dialect == Dialect::Sqlite && sqlx::raw_sql("BEGIN").execute(&mut *$tx).await.is_ok()
    };
}

/// Runs a batch in one transaction, marked as the sync's own write, with one result per plan.
///
/// A record refused by the database is rolled back to its own savepoint (PostgreSQL, SQLite;
/// MariaDB rolls back the failed statement itself) and the others are written. A refusal that
/// ends the whole transaction (SQLite's `RAISE(ROLLBACK, ...)`) is detected: the batch is written
/// again without that record, so that the others still land and it alone is refused.
///
/// # Errors
/// A batch-level failure (connection lost, deadlock, ...): nothing is committed.
pub(super) async fn run(
    pool: &SqlPool,
    info: &ObjectInfo,
    sqlite_writer_flag: bool,
    plans: Vec<Result<Statement, WriteResult>>,
) -> Result<Outcome, CrmError> {
    let mut plans = plans;
    for _ in 0..=plans.len() {
        match run_once(pool, info, sqlite_writer_flag, &plans).await? {
            Attempt::Done(outcome) => return Ok(outcome),
            Attempt::Lost { index, refusal } => {
                plans[index] = Err(WriteResult::Refused(refusal));
            }
        }
    }
    Err(CrmError::Remote {
        operation: format!("write {}", info.name),
        message: "the database ended the transaction on every attempt".to_owned(),
        retryable: false,
    })
}

async fn run_once(
    pool: &SqlPool,
    info: &ObjectInfo,
    sqlite_writer_flag: bool,
    plans: &[Result<Statement, WriteResult>],
) -> Result<Attempt, CrmError> {
    let op = format!("write {}", info.name);
    let dialect = pool.dialect();
    let savepoints = dialect != Dialect::MySql;
    let err = |e: sqlx::Error| classify(&op, &e);
    let mut results = Vec::with_capacity(plans.len());
    let mut written = Vec::new();
    on_pool!(pool, p => {
        let mut tx = p.begin().await.map_err(err)?;
        if sqlite_writer_flag {
            let sql = format!("UPDATE {WRITER_TABLE} SET active = 1");
            exec_text!(&mut *tx, sql, Vec::<Option<String>>::new()).map_err(err)?;
        }
        for (index, plan) in plans.iter().enumerate() {
            let st = match plan {
                Ok(st) => st.clone(),
                Err(result) => {
                    results.push(result.clone());
                    continue;
                }
            };
            if savepoints {
                sqlx::raw_sql("SAVEPOINT marketo_sync_record").execute(&mut *tx).await.map_err(err)?;
            }
            let mut existed = None;
            let mut dead = false;
            if let Some((sql, params)) = st.pre {
                let rows = match fetch_text!(&mut *tx, sql, params) {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = reopen_if_lost!(tx, dialect);
                        return Err(err(e));
                    }
                };
                existed = Some(!rows.is_empty());
                if st.refuse_deleted && let (Some(row), Some(col)) = (rows.first(), &info.soft) {
                    let raw = row.first().cloned().flatten();
                    dead = is_soft_deleted(raw.as_deref(), col, info.options.soft_delete.as_ref());
                }
            }
            if dead {
                if savepoints {
                    sqlx::raw_sql("RELEASE SAVEPOINT marketo_sync_record").execute(&mut *tx).await.map_err(err)?;
                }
                results.push(refused(RefusalReason::Deleted, "the record holding this key is deleted in the CRM".to_owned()));
                continue;
            }
            if st.update_only && existed == Some(false) {
                if savepoints {
                    sqlx::raw_sql("RELEASE SAVEPOINT marketo_sync_record").execute(&mut *tx).await.map_err(err)?;
                }
                results.push(refused(RefusalReason::NotFound, format!("no record has this {}", info.pk.name)));
                continue;
            }
            if let Some((sql, params)) = st.release {
                let rows = fetch_text!(&mut *tx, sql, params).map_err(err)?;
                for (sql, params) in dead_id_clears(dialect, info, rows) {
                    exec_text!(&mut *tx, sql, params).map_err(err)?;
                }
            }
            let (sql, params) = match (existed, st.update_instead) {
                (Some(true), Some(update)) => update,
                _ => st.main,
            };
            let ran = if st.main_returns {
                fetch_text!(&mut *tx, sql, params).map(Ran::Rows)
            } else {
                exec_text!(&mut *tx, sql, params).map(Ran::Affected)
            };
            let ran = match ran {
                Ok(ran) => ran,
                Err(e) => {
                    if reopen_if_lost!(tx, dialect) {
                        // The refusal ended the transaction: everything before it is gone.
                        tx.rollback().await.map_err(err)?;
                        return match record_error(&e) {
                            Some(refusal) => Ok(Attempt::Lost { index, refusal }),
                            None => Err(err(e)),
                        };
                    }
                    match record_error(&e) {
                        Some(refusal) => {
                            if savepoints {
                                sqlx::raw_sql("ROLLBACK TO SAVEPOINT marketo_sync_record").execute(&mut *tx).await.map_err(err)?;
                                sqlx::raw_sql("RELEASE SAVEPOINT marketo_sync_record").execute(&mut *tx).await.map_err(err)?;
                            }
                            results.push(WriteResult::Refused(refusal));
                            continue;
                        }
                        None => return Err(err(e)),
                    }
                }
            };
            if savepoints {
                sqlx::raw_sql("RELEASE SAVEPOINT marketo_sync_record").execute(&mut *tx).await.map_err(err)?;
            }
            let mut returned: Option<TextRow> = None;
            let created;
            match ran {
                Ran::Rows(rows) => {
                    returned = rows.into_iter().next();
                    created = match existed {
                        Some(existed) => !existed,
                        None => returned.as_ref().and_then(|r| r.get(2).cloned().flatten()).as_deref() == Some("true"),
                    };
                }
                Ran::Affected(n) => {
                    if st.delete_id.is_some() && n == 0 {
                        results.push(refused(RefusalReason::NotFound, "no record has this id".to_owned()));
                        continue;
                    }
                    created = st.delete_id.is_none() && existed.map_or(n == 1, |e| !e);
                }
            }
            if let Some((sql, params)) = st.post {
                let rows = fetch_text!(&mut *tx, sql, params).map_err(err)?;
                returned = rows.into_iter().next();
            }
            let pk = returned.as_ref().and_then(|r| r.first().cloned().flatten());
            let modified = returned.as_ref().and_then(|r| r.get(1).cloned().flatten());
            if let (Some(pk), Some(m)) = (pk.clone(), modified) {
                written.push((pk, m));
            }
            results.push(match (st.delete_id, pk) {
                (Some(id), _) => WriteResult::Deleted { id },
                (None, Some(id)) if created => WriteResult::Created { id },
                (None, Some(id)) => WriteResult::Updated { id },
                (None, None) => refused(RefusalReason::NotWritten, "the database returned no row for this record".to_owned()),
            });
        }
        if sqlite_writer_flag {
            let sql = format!("UPDATE {WRITER_TABLE} SET active = 0");
            exec_text!(&mut *tx, sql, Vec::<Option<String>>::new()).map_err(err)?;
        }
        if let Err(e) = tx.commit().await {
            return Err(err(e));
        }
    });
    Ok(Attempt::Done(Outcome { results, written }))
}

/// The JSON form of a uniform batch for [`bulk_upsert`] and [`bulk_update_by_pk`]: one array of
/// cell texts per record, in the order of `columns`.
struct JsonRows {
    /// The records' cells.
    rows: Vec<Json>,
}

impl JsonRows {
    /// Returns the batch as JSON rows, or `None` when a record writes other columns than
    /// `columns` or a value does not fit its column (record by record, it alone is refused).
    fn of(d: Dialect, columns: &[&Column], batch: &[Fields]) -> Option<JsonRows> {
        let mut rows = Vec::with_capacity(batch.len());
        for record in batch {
            if record.len() != columns.len() {
                return None;
            }
            let mut cells = Vec::with_capacity(columns.len());
            for c in columns {
                let text = fitted(d, c, record.get(&c.name)?).ok()?;
                cells.push(text.map_or(Json::Null, Json::String));
            }
            rows.push(Json::Array(cells));
        }
        Some(JsonRows { rows })
    }

    /// Returns the text of cell `column` of every row (`None` for a null).
    fn column(&self, column: usize) -> impl Iterator<Item = Option<&str>> {
        self.rows
            .iter()
            .map(move |row| row.get(column).and_then(Json::as_str))
    }

    /// Returns the texts of cell `column` of every row as the batch's keys, or `None` when one
    /// is null or two are the same.
    fn keys(&self, column: usize) -> Option<Vec<String>> {
        let keys: Vec<String> = self
            .column(column)
            .map(|k| k.map(str::to_owned))
            .collect::<Option<_>>()?;
        let mut sorted: Vec<&String> = keys.iter().collect();
        sorted.sort();
        sorted.windows(2).all(|w| w[0] != w[1]).then_some(keys)
    }

    /// Returns the rows as the statement's one parameter.
    fn param(self) -> [Option<String>; 1] {
        [Some(Json::Array(self.rows).to_string())]
    }

    /// Returns the `FROM` item that reads the rows parameter (`$n` / `?`), as `r`.
    ///
    /// On SQLite, `jsonb_each` rather than `json_each`: its `value` of a row (an array) is the
    /// binary JSONB form, which each cell's `->>` reads in place; `json_each` renders every row
    /// as JSON text that each of its cells parsed again (issue 15: in a 100,000-lead bootstrap's
    /// profile, SQLite's JSON functions went from 4.3% to 1.7% of the process's samples).
    fn source(d: Dialect, n: usize) -> String {
        match d {
            Dialect::Postgres => format!("jsonb_array_elements(CAST(${n} AS jsonb)) AS r(v)"),
            _ => "jsonb_each(?) AS r".to_owned(),
        }
    }

    /// Returns the expression reading cell `i` of a row of [`JsonRows::source`] as a value of
    /// `column` (cast as a single record's parameter is).
    fn cell(d: Dialect, i: usize, column: &Column) -> String {
        match (d, column.cast.as_str()) {
            (Dialect::Postgres, "") => format!("r.v ->> {i}"),
            (Dialect::Postgres, cast) => format!("CAST(r.v ->> {i} AS {})", unconstrained(cast)),
            _ => format!("r.value ->> {i}"),
        }
    }

    /// Returns a subquery of the texts of a JSON array parameter (`$n` / `?`), cast as `column`
    /// (as text when `None`).
    fn texts(d: Dialect, n: usize, column: Option<&Column>) -> String {
        let list = format!("jsonb_array_elements_text(CAST(${n} AS jsonb))");
        match (d, column) {
            (Dialect::Postgres, Some(c)) => {
                format!(
                    "SELECT CAST(value AS {}) FROM {list}",
                    unconstrained(&c.cast)
                )
            }
            (Dialect::Postgres, None) => format!("SELECT value FROM {list}"),
            _ => "SELECT value FROM json_each(?)".to_owned(),
        }
    }
}

/// Returns the table's columns of `names`, or `None` when one is not a column the adapter
/// writes (unknown or computed: record by record, that record alone is refused).
fn written_columns<'a, 'n>(
    info: &'a ObjectInfo,
    names: impl Iterator<Item = &'n String>,
) -> Option<Vec<&'a Column>> {
    names
        .map(|name| {
            info.table_columns
                .iter()
                .find(|c| &c.name == name && !c.generated)
        })
        .collect()
}

/// Returns texts as one JSON array parameter (for [`JsonRows::texts`]).
fn json_texts<'a>(texts: impl Iterator<Item = &'a str>) -> Option<String> {
    Some(Json::Array(texts.map(|t| Json::String(t.to_owned())).collect()).to_string())
}

/// Judges a bulk write's probe: true when the batch goes record by record instead.
type GivesUp<'a> = &'a (dyn Fn(&[TextRow]) -> bool + Sync);

/// One statement of a bulk write (see [`bulk_transaction`]).
struct BulkStatement {
    sql: String,
    params: Vec<Option<String>>,
}

/// Runs a bulk write in one transaction, marked as the sync's own write: first `probe`, when
/// given, whose rows `gives_up` may judge (the batch then goes record by record), then `main`,
/// which must return `expected` rows. Returns the probe's and the main statement's rows, or
/// `None`, having written nothing, when the probe gave up, the main statement returned another
/// number of rows, or the database refused a record.
///
/// # Errors
/// A batch-level failure (connection lost, deadlock, ...): nothing is committed.
async fn bulk_transaction(
    pool: &SqlPool,
    op: &str,
    sqlite_writer_flag: bool,
    probe: Option<(BulkStatement, GivesUp<'_>)>,
    main: BulkStatement,
    expected: usize,
) -> Result<Option<(Vec<TextRow>, Vec<TextRow>)>, CrmError> {
    let d = pool.dialect();
    let err = |e: sqlx::Error| classify(op, &e);
    on_pool!(pool, p => {
        let mut tx = p.begin().await.map_err(err)?;
        if sqlite_writer_flag {
            let flag = format!("UPDATE {WRITER_TABLE} SET active = 1");
            exec_text!(&mut *tx, flag, Vec::<Option<String>>::new()).map_err(err)?;
        }
        let mut probed = Vec::new();
        if let Some((statement, gives_up)) = probe {
            probed = fetch_text!(&mut *tx, statement.sql, statement.params).map_err(err)?;
            if gives_up(&probed) {
                tx.rollback().await.map_err(err)?;
                return Ok(None);
            }
        }
        match fetch_text!(&mut *tx, main.sql, main.params) {
            Ok(returned) if returned.len() == expected => {
                if sqlite_writer_flag {
                    let flag = format!("UPDATE {WRITER_TABLE} SET active = 0");
                    exec_text!(&mut *tx, flag, Vec::<Option<String>>::new()).map_err(err)?;
                }
                tx.commit().await.map_err(err)?;
                Ok(Some((probed, returned)))
            }
            // A record missing or not written: record by record, so that it alone is refused.
            Ok(_) => {
                tx.rollback().await.map_err(err)?;
                Ok(None)
            }
            // A refused record: nothing is written here, and the caller writes record by record
            // (a refusal that ended the transaction leaves a new empty one to roll back).
            // The rollback is explicit: a transaction merely dropped is rolled back only when
            // its connection is next used, and until then it holds SQLite's write lock against
            // the record-by-record retry on another connection ("database is locked").
            Err(e) if record_error(&e).is_some() => {
                let _ = reopen_if_lost!(tx, d);
                tx.rollback().await.map_err(err)?;
                Ok(None)
            }
            Err(e) => {
                let _ = reopen_if_lost!(tx, d);
                let _ = tx.rollback().await;
                Err(err(e))
            }
        }
    })
}

/// Upserts a whole batch with one statement in one transaction (PostgreSQL and SQLite), when
/// every record writes the same columns, keys are distinct text and no record is refused.
/// Returns `None`, having written nothing, when the batch does not qualify or the database
/// refuses a record: the caller then writes record by record to get per-record results.
///
/// The rows travel as one JSON array parameter ([`JsonRows`]), read back by the statement with
/// `json_each` / `jsonb_array_elements` and cast to the column types as a single record's
/// parameters are. The statement text is therefore the same for every batch size of a column
/// set: one text per batch size (up to `max_batch_write` rows, one placeholder per cell) filled
/// the statement cache of every pooled connection with large compiled statements, a 1M-lead
/// bootstrap's memory (issue 15).
///
/// # Errors
/// A batch-level failure (connection lost, deadlock, ...): nothing is committed.
pub(super) async fn bulk_upsert(
    pool: &SqlPool,
    info: &ObjectInfo,
    key: &Column,
    batch: &[Fields],
    sqlite_writer_flag: bool,
) -> Result<Option<Outcome>, CrmError> {
    let d = pool.dialect();
    let Some(first) = batch.first() else {
        return Ok(None);
    };
    if d == Dialect::MySql || batch.len() < 2 || !key.ty.is_textual() {
        return Ok(None);
    }
    let Some(columns) = written_columns(info, first.keys()) else {
        return Ok(None);
    };
    let Some(key_at) = columns.iter().position(|c| c.name == key.name) else {
        return Ok(None);
    };
    let Some(rows) = JsonRows::of(d, &columns, batch) else {
        return Ok(None);
    };
    let Some(keys) = rows.keys(key_at) else {
        return Ok(None);
    };
    let q = |c: &str| d.quote(c);
    let table = q(&info.options.table);
    let m = q(&info.modified.name);
    let keyq = q(&key.name);
    let mut names: Vec<String> = columns.iter().map(|c| q(&c.name)).collect();
    let sets_modified = columns.iter().any(|c| c.name == info.modified.name);
    let mut cells: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| JsonRows::cell(d, i, c))
        .collect();
    if !sets_modified {
        names.push(m.clone());
        cells.push(d.now().to_owned());
    }
    let sets: Vec<String> = names
        .iter()
        .map(|c| match (sets_modified, *c == m) {
            (false, true) => format!("{c} = {}", d.now_not_before(&format!("{table}.{c}"))),
            _ => format!("{c} = excluded.{c}"),
        })
        .collect();
    let inserted = if d == Dialect::Postgres {
        ", CAST((xmax = 0) AS TEXT)"
    } else {
        ""
    };
    // `WHERE true`: without it SQLite reads `ON CONFLICT` after `INSERT ... SELECT` as a join's
    // `ON`.
    let main = BulkStatement {
        sql: format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {} WHERE true ON CONFLICT ({keyq}) DO UPDATE SET {} RETURNING {}, {}, {}{inserted}",
            names.join(", "),
            cells.join(", "),
            JsonRows::source(d, 1),
            sets.join(", "),
            d.as_text(&keyq),
            d.as_text(&q(&info.pk.name)),
            d.as_text(&m),
        ),
        params: rows.param().into(),
    };
    // The keys that exist (SQLite: to tell created from updated) and whether their row is
    // deleted (a key held by a deleted row: record by record, so that it alone is refused).
    let soft_probe = match &info.soft {
        Some(col) => format!(", {}", d.as_text(&q(&col.name))),
        None => String::new(),
    };
    let probe = BulkStatement {
        sql: format!(
            "SELECT {}{soft_probe} FROM {table} WHERE {keyq} IN ({})",
            d.as_text(&keyq),
            JsonRows::texts(d, 1, Some(key)),
        ),
        params: vec![json_texts(keys.iter().map(String::as_str))],
    };
    let is_dead = |row: &TextRow| match &info.soft {
        Some(col) => is_soft_deleted(
            row.get(1).cloned().flatten().as_deref(),
            col,
            info.options.soft_delete.as_ref(),
        ),
        None => false,
    };
    let gives_up = |rows: &[TextRow]| rows.iter().any(is_dead);
    let probe = (d == Dialect::Sqlite || info.soft.is_some()).then_some((probe, &gives_up as _));
    let op = format!("write {}", info.name);
    let done = bulk_transaction(pool, &op, sqlite_writer_flag, probe, main, keys.len()).await?;
    let Some((existing, returned)) = done else {
        return Ok(None);
    };
    let existing: std::collections::HashSet<String> = existing
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    let by_key: std::collections::HashMap<String, TextRow> = returned
        .into_iter()
        .filter_map(|r| r.first().cloned().flatten().map(|k| (k, r)))
        .collect();
    let mut results = Vec::with_capacity(keys.len());
    let mut written = Vec::with_capacity(keys.len());
    for k in &keys {
        let row = by_key.get(k);
        let pk = row.and_then(|r| r.get(1).cloned().flatten());
        let m = row.and_then(|r| r.get(2).cloned().flatten());
        let created = match d {
            Dialect::Postgres => {
                row.and_then(|r| r.get(3).cloned().flatten()).as_deref() == Some("true")
            }
            _ => !existing.contains(k),
        };
        match (pk, m) {
            (Some(pk), Some(m)) => {
                written.push((pk.clone(), m));
                results.push(if created {
                    WriteResult::Created { id: pk }
                } else {
                    WriteResult::Updated { id: pk }
                });
            }
            _ => results.push(not_written()),
        }
    }
    Ok(Some(Outcome { results, written }))
}

/// The refusal of a record the database returned no row for.
fn not_written() -> WriteResult {
    refused(
        RefusalReason::NotWritten,
        "the database returned no row for this record".to_owned(),
    )
}

/// Updates a whole batch by primary key with one statement in one transaction (PostgreSQL and
/// SQLite), when every record writes the same columns, their keys are distinct and every row
/// exists: the rows travel as one JSON parameter, as in [`bulk_upsert`]. Returns `None`, having
/// written nothing, when the batch does not qualify, a row is missing, another row holds a
/// Marketo id the batch writes (the record-by-record path releases a dead row's id or refuses
/// the record), or the database refuses a record: the caller then writes record by record.
///
/// Record by record, an update costs five statements (each a round trip to the connection's
/// worker thread); a 5,000-row batch was about 25,000 of them (issue 15: the 10k-change cycle).
///
/// # Errors
/// A batch-level failure (connection lost, deadlock, ...): nothing is committed.
pub(super) async fn bulk_update_by_pk(
    pool: &SqlPool,
    info: &ObjectInfo,
    batch: &[Fields],
    sqlite_writer_flag: bool,
) -> Result<Option<Outcome>, CrmError> {
    let d = pool.dialect();
    let pk = &info.pk;
    let Some(first) = batch.first() else {
        return Ok(None);
    };
    if d == Dialect::MySql || batch.len() < 2 {
        return Ok(None);
    }
    // The key first, then the columns set. The key is the primary key as it is, not looked up
    // among the columns written: an auto-increment key counts as generated there, which sent
    // every batch record by record (a review in session 14 did; the 10k-change cycle's engine
    // CPU went from 0.7 s to 2.2 s).
    let set = first.keys().filter(|n| **n != pk.name);
    let Some(columns) = written_columns(info, set)
        .filter(|c| !c.is_empty())
        .map(|set| std::iter::once(pk).chain(set).collect::<Vec<&Column>>())
    else {
        return Ok(None);
    };
    let Some(rows) = JsonRows::of(d, &columns, batch) else {
        return Ok(None);
    };
    let Some(keys) = rows.keys(0) else {
        return Ok(None);
    };
    let q = |c: &str| d.quote(c);
    let table = q(&info.options.table);
    let m = q(&info.modified.name);
    let pkq = q(&pk.name);
    let mut sets: Vec<String> = columns
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, c)| format!("{} = v.c{i}", q(&c.name)))
        .collect();
    if !columns.iter().any(|c| c.name == info.modified.name) {
        sets.push(format!(
            "{m} = {}",
            d.now_not_before(&format!("{table}.{m}"))
        ));
    }
    let reads: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} AS c{i}", JsonRows::cell(d, i, c)))
        .collect();
    // Another row holding a Marketo id the batch writes: record by record (which releases it
    // from a dead row, or refuses the record).
    let mid = &info.options.marketo_id_column;
    let probe = columns
        .iter()
        .position(|c| &c.name == mid)
        .map(|at| BulkStatement {
            sql: format!(
                "SELECT CAST({pkq} AS TEXT) FROM {table} WHERE {} IN ({}) AND CAST({pkq} AS TEXT) NOT IN ({}) LIMIT 1",
                q(mid),
                JsonRows::texts(d, 1, Some(columns[at])),
                JsonRows::texts(d, 2, None),
            ),
            params: vec![
                json_texts(rows.column(at).flatten()),
                json_texts(keys.iter().map(String::as_str)),
            ],
        });
    let main = BulkStatement {
        sql: format!(
            "UPDATE {table} SET {} FROM (SELECT {} FROM {}) AS v WHERE {table}.{pkq} = v.c0 RETURNING {}, {}",
            sets.join(", "),
            reads.join(", "),
            JsonRows::source(d, 1),
            d.as_text(&format!("{table}.{pkq}")),
            d.as_text(&format!("{table}.{m}")),
        ),
        params: rows.param().into(),
    };
    let held = |rows: &[TextRow]| !rows.is_empty();
    let probe = probe.map(|p| (p, &held as _));
    let op = format!("write {}", info.name);
    let done = bulk_transaction(pool, &op, sqlite_writer_flag, probe, main, keys.len()).await?;
    let Some((_, returned)) = done else {
        return Ok(None);
    };
    let by_key: std::collections::HashMap<String, Option<String>> = returned
        .into_iter()
        .filter_map(|r| {
            let k = r.first().cloned().flatten()?;
            Some((k, r.get(1).cloned().flatten()))
        })
        .collect();
    let mut results = Vec::with_capacity(keys.len());
    let mut written = Vec::with_capacity(keys.len());
    for k in keys {
        match by_key.get(&k) {
            Some(m) => {
                written.extend(m.clone().map(|m| (k.clone(), m)));
                results.push(WriteResult::Updated { id: k });
            }
            None => results.push(not_written()),
        }
    }
    Ok(Some(Outcome { results, written }))
}
