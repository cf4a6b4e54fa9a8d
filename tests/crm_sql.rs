//! The SQL adapter's behaviour suite, run against SQLite (a temporary file), PostgreSQL
//! (`PG_TEST_URL`) and MariaDB (`MYSQL_TEST_URL`), each test in its own fresh database.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use marketo_sync::crm::sql::dialect::{Dialect, SqlPool};
use marketo_sync::crm::sql::{SqlOptions, changelog};
use marketo_sync::crm::{
    Change, ChangeKind, Crm, CrmError, Cursor, DeleteHow, Refusal, RefusalReason, WriteResult,
    registry,
};
use marketo_sync::model::{Fields, Value};
use marketo_sync::sim::demo_crm;
use secrecy::SecretString;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Sqlite,
    Postgres,
    MariaDb,
}

struct Env {
    engine: Engine,
    url: String,
    admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

fn with_database(base: &str, db: &str) -> String {
    let mut url = url::Url::parse(base).expect("test url");
    url.set_path(&format!("/{db}"));
    url.to_string()
}

impl Env {
    async fn new(engine: Engine) -> Env {
        let name = format!("mks_crm_{}", uuid::Uuid::new_v4().simple());
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("crm.db").display());
                Env {
                    engine,
                    url,
                    admin: None,
                    _dir: Some(dir),
                }
            }
            Engine::Postgres | Engine::MariaDb => {
                let base = if engine == Engine::Postgres {
                    std::env::var("PG_TEST_URL")
                        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
                } else {
                    std::env::var("MYSQL_TEST_URL")
                        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
                };
                let admin = SqlPool::connect(&base, 1, false).await.unwrap();
                admin
                    .execute_raw("create db", format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap();
                admin.close().await;
                Env {
                    engine,
                    url: with_database(&base, &name),
                    admin: Some((base, name)),
                    _dir: None,
                }
            }
        }
    }

    async fn cleanup(self) {
        if let Some((base, name)) = &self.admin {
            let admin = SqlPool::connect(base, 1, false).await.unwrap();
            let force = if self.engine == Engine::Postgres {
                " WITH (FORCE)"
            } else {
                ""
            };
            admin
                .execute_raw("drop db", format!("DROP DATABASE {name}{force}"))
                .await
                .unwrap();
            admin.close().await;
        }
    }

    /// A user session (unmarked: its writes are user changes). One connection, so that
    /// `BEGIN` ... `COMMIT` stay on it.
    async fn user(&self) -> SqlPool {
        SqlPool::connect(&self.url, 1, false).await.unwrap()
    }

    async fn demo(&self, contacts: usize) {
        demo_crm::install(&self.url, 42, contacts).await.unwrap();
    }

    async fn adapter(&self, changelog_on: bool, overlap: u64) -> Arc<dyn Crm> {
        let mut options = demo_crm::adapter_options(true, changelog_on);
        options["overlap_seconds"] = json!(overlap);
        if changelog_on {
            let parsed = SqlOptions::from_json(&options).unwrap();
            changelog::install(&SecretString::from(self.url.clone()), &parsed)
                .await
                .unwrap();
        }
        registry::build("sql", Some(&SecretString::from(self.url.clone())), &options)
            .await
            .unwrap()
    }

    fn ts(&self, second: u32) -> String {
        format!("'2030-01-01 00:00:{second:02}.000'")
    }

    fn truth(&self, b: bool) -> &'static str {
        match (self.engine, b) {
            (Engine::Postgres, true) => "TRUE",
            (Engine::Postgres, false) => "FALSE",
            (_, true) => "1",
            (_, false) => "0",
        }
    }
}

async fn exec(pool: &SqlPool, sql: &str) {
    pool.execute_raw("test", sql.to_owned())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Reads every page until `more` is false; returns the changes and the final cursor.
async fn drain(
    crm: &dyn Crm,
    object: &str,
    cursor: Option<Cursor>,
    limit: usize,
) -> (Vec<Change>, Cursor) {
    let mut cursor = cursor;
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let page = crm.changes(object, cursor.as_ref(), limit).await.unwrap();
        assert!(page.changes.len() <= 2 * limit);
        all.extend(page.changes);
        cursor = Some(page.next);
        if !page.more {
            return (all, cursor.unwrap());
        }
    }
    panic!("the change feed never ended");
}

fn ids(changes: &[Change]) -> Vec<String> {
    let mut ids: Vec<String> = changes.iter().map(|c| c.id.clone()).collect();
    ids.sort_by_key(|i| i.parse::<i64>().unwrap_or(i64::MAX));
    ids.dedup();
    ids
}

fn fields(pairs: &[(&str, Value)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn latest(changes: &[Change], id: &str) -> Change {
    changes
        .iter()
        .rev()
        .find(|c| c.id == id)
        .cloned()
        .unwrap_or_else(|| panic!("no change for {id}: {changes:?}"))
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

async fn inserts_updates_and_soft_deletes(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(10).await;
    let crm = env.adapter(false, 0).await;
    let (first, cursor) = drain(crm.as_ref(), "contacts", None, 4).await;
    assert_eq!(
        ids(&first),
        (1..=10).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert!(
        first
            .iter()
            .all(|c| matches!(c.kind, ChangeKind::Upserted { .. }))
    );

    let user = env.user().await;
    exec(&user, &format!("INSERT INTO contacts (email, first_name, updated_at) VALUES ('new@x.example', 'Nina', {})", env.ts(1))).await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET title = 'Chief', updated_at = {} WHERE id = 3",
            env.ts(2)
        ),
    )
    .await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET deleted = {}, updated_at = {} WHERE id = 5",
            env.truth(true),
            env.ts(3)
        ),
    )
    .await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET deleted = {}, merged_into = 2, updated_at = {} WHERE id = 6",
            env.truth(true),
            env.ts(4)
        ),
    )
    .await;

    let (changes, cursor) = drain(crm.as_ref(), "contacts", Some(cursor), 2).await;
    assert_eq!(ids(&changes), vec!["3", "5", "6", "11"]);
    match latest(&changes, "11").kind {
        ChangeKind::Upserted { fields } => {
            assert_eq!(fields["email"], Value::from("new@x.example"));
            assert_eq!(fields["deleted"], Value::Bool(false));
        }
        other => panic!("{other:?}"),
    }
    match latest(&changes, "3").kind {
        ChangeKind::Upserted { fields } => assert_eq!(fields["title"], Value::from("Chief")),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(latest(&changes, "5").kind, ChangeKind::Deleted(ref t) if t.how == DeleteHow::Soft)
    );
    assert!(
        matches!(latest(&changes, "6").kind, ChangeKind::Deleted(ref t) if t.how == DeleteHow::Merged { into: "2".into() })
    );
    let at = "2030-01-01T00:00:02Z"
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();
    assert_eq!(latest(&changes, "3").modified_at, at);

    // Nothing new: an empty page, and the cursor stays usable.
    let (again, _) = drain(crm.as_ref(), "contacts", Some(cursor), 2).await;
    assert!(again.is_empty(), "{again:?}");
    // Soft-deleted records are not returned by get.
    let got = crm
        .get("contacts", &["5".into(), "4".into()])
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["4"]
    );
    env.cleanup().await;
}

async fn equal_timestamps(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(12).await;
    let crm = env.adapter(false, 0).await;
    let (_, cursor) = drain(crm.as_ref(), "contacts", None, 100).await;
    let user = env.user().await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET title = 'Same', updated_at = {} WHERE id BETWEEN 2 AND 9",
            env.ts(5)
        ),
    )
    .await;
    let mut seen = Vec::new();
    let mut cursor = Some(cursor);
    let mut pages = 0;
    loop {
        let page = crm.changes("contacts", cursor.as_ref(), 3).await.unwrap();
        assert!(page.changes.len() <= 3);
        seen.extend(page.changes.iter().map(|c| c.id.clone()));
        cursor = Some(page.next);
        pages += 1;
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (2..=9).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each row exactly once, in (modified, id) order"
    );
    env.cleanup().await;
}

async fn hard_deletes_through_the_changelog(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(6).await;
    let crm = env.adapter(true, 0).await;
    let (first, cursor) = drain(crm.as_ref(), "contacts", None, 4).await;
    assert_eq!(ids(&first).len(), 6);
    let user = env.user().await;
    exec(&user, "DELETE FROM contacts WHERE id = 4").await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET phone = '123', updated_at = {} WHERE id = 2",
            env.ts(1)
        ),
    )
    .await;
    let (changes, cursor) = drain(crm.as_ref(), "contacts", Some(cursor), 4).await;
    assert_eq!(ids(&changes), vec!["2", "4"]);
    match latest(&changes, "4").kind {
        ChangeKind::Deleted(t) => assert_eq!(t.how, DeleteHow::Hard),
        other => panic!("{other:?}"),
    }
    // Pruning keeps recent rows and drops old ones.
    let options = SqlOptions::from_json(&{
        let mut o = demo_crm::adapter_options(true, true);
        o["overlap_seconds"] = json!(0);
        o
    })
    .unwrap();
    let sql =
        marketo_sync::crm::sql::SqlCrm::connect(&SecretString::from(env.url.clone()), options)
            .await
            .unwrap();
    assert_eq!(
        sql.prune_changelog(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    // The log of other objects does not leak into contacts.
    exec(&user, "DELETE FROM leads WHERE id = 1").await;
    let (changes, _) = drain(crm.as_ref(), "contacts", Some(cursor), 4).await;
    assert!(changes.is_empty(), "{changes:?}");
    // Each object has its own cursor; a fresh leads feed sees the hard delete in the log.
    let (lead_changes, _) = drain(crm.as_ref(), "leads", None, 4).await;
    let pruned = sql.prune_changelog(Duration::ZERO).await.unwrap();
    assert!(pruned >= 2, "the two older entries at least: {pruned}");
    assert!(
        lead_changes.iter().any(|c| c.id == "1"
            && matches!(c.kind, ChangeKind::Deleted(ref t) if t.how == DeleteHow::Hard))
    );
    env.cleanup().await;
}

async fn out_of_order_commits(engine: Engine, changelog_on: bool) {
    let env = Env::new(engine).await;
    env.demo(5).await;
    // Without the change log the overlap window catches the late commit; with it (and no
    // overlap) the change log's gap tracking does.
    let crm = env
        .adapter(changelog_on, if changelog_on { 0 } else { 300 })
        .await;
    let (_, cursor) = drain(crm.as_ref(), "contacts", None, 100).await;
    let slow = env.user().await;
    let fast = env.user().await;
    exec(&slow, "BEGIN").await;
    exec(
        &slow,
        &format!(
            "UPDATE contacts SET title = 'slow', updated_at = {} WHERE id = 1",
            env.ts(1)
        ),
    )
    .await;
    exec(&fast, "BEGIN").await;
    exec(
        &fast,
        &format!(
            "UPDATE contacts SET title = 'fast', updated_at = {} WHERE id = 2",
            env.ts(2)
        ),
    )
    .await;
    exec(&fast, "COMMIT").await;
    let (changes, cursor) = drain(crm.as_ref(), "contacts", Some(cursor), 100).await;
    assert!(ids(&changes).contains(&"2".to_owned()));
    // Uncommitted work is invisible (the overlap may re-read row 1 in its committed state).
    let slow_seen = changes.iter().any(|c| c.id == "1" && matches!(&c.kind, ChangeKind::Upserted { fields } if fields["title"] == Value::from("slow")));
    assert!(!slow_seen, "uncommitted work is invisible");
    exec(&slow, "COMMIT").await;
    let (changes, _) = drain(crm.as_ref(), "contacts", Some(cursor), 100).await;
    match latest(&changes, "1").kind {
        ChangeKind::Upserted { fields } => assert_eq!(fields["title"], Value::from("slow")),
        other => panic!("{other:?}"),
    }
    env.cleanup().await;
}

async fn rolled_back_transactions_leave_no_stuck_gaps(engine: Engine) {
    // A rolled-back write consumes a change-log sequence number that never appears. The cursor
    // waits for it (it could be a slow commit) until `gap_timeout_seconds`, then gives up.
    let env = Env::new(engine).await;
    env.demo(3).await;
    let patient = env.adapter(true, 0).await;
    let mut options = demo_crm::adapter_options(true, true);
    options["overlap_seconds"] = json!(0);
    options["gap_timeout_seconds"] = json!(0);
    let impatient = registry::build("sql", Some(&SecretString::from(env.url.clone())), &options)
        .await
        .unwrap();
    let (_, c1) = drain(patient.as_ref(), "contacts", None, 100).await;
    let (_, c2) = drain(impatient.as_ref(), "contacts", None, 100).await;
    let user = env.user().await;
    exec(&user, "BEGIN").await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET title = 'never', updated_at = {} WHERE id = 1",
            env.ts(1)
        ),
    )
    .await;
    exec(&user, "ROLLBACK").await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET title = 'kept', updated_at = {} WHERE id = 2",
            env.ts(2)
        ),
    )
    .await;
    let (a, c1) = drain(patient.as_ref(), "contacts", Some(c1), 100).await;
    let (b, c2) = drain(impatient.as_ref(), "contacts", Some(c2), 100).await;
    assert_eq!(ids(&a), vec!["2"]);
    assert_eq!(ids(&b), vec!["2"]);
    let gaps = |c: &Cursor| c.0["gaps"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(gaps(&c1), 1, "{c1:?}");
    assert_eq!(gaps(&c2), 0, "{c2:?}");
    env.cleanup().await;
}

async fn out_of_order_commits_overlap(engine: Engine) {
    out_of_order_commits(engine, false).await;
}

async fn out_of_order_commits_changelog(engine: Engine) {
    out_of_order_commits(engine, true).await;
}

async fn own_writes_are_not_read_back(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(5).await;
    let crm = env.adapter(true, 300).await;
    let (_, cursor) = drain(crm.as_ref(), "contacts", None, 100).await;
    let user = env.user().await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET marketo_id = 'M1', updated_at = {} WHERE id = 1",
            env.ts(1)
        ),
    )
    .await;
    let (changes, cursor) = drain(crm.as_ref(), "contacts", Some(cursor), 100).await;
    assert!(ids(&changes).contains(&"1".to_owned()));

    let batch = vec![
        fields(&[
            ("marketo_id", "M1".into()),
            ("title", "Written by sync".into()),
        ]),
        fields(&[
            ("marketo_id", "M2".into()),
            ("email", "m2@x.example".into()),
            ("first_name", "Mo".into()),
        ]),
    ];
    let results = crm.upsert("contacts", "marketo_id", &batch).await.unwrap();
    assert_eq!(results[0], WriteResult::Updated { id: "1".into() });
    let WriteResult::Created { id: new_id } = &results[1] else {
        panic!("{results:?}")
    };
    let deleted = crm
        .delete("contacts", &["3".into(), "999".into()])
        .await
        .unwrap();
    assert_eq!(deleted[0], WriteResult::Deleted { id: "3".into() });
    assert!(matches!(&deleted[1], WriteResult::Refused(r) if r.code() == "not_found"));

    let (changes, cursor) = drain(crm.as_ref(), "contacts", Some(cursor), 100).await;
    for id in ["1", "3", new_id.as_str()] {
        assert!(
            !changes.iter().any(|c| c.id == id),
            "own write {id} read back: {changes:?}"
        );
    }
    let log = user
        .fetch("count", "SELECT CAST(COUNT(*) AS CHAR(20)) AS n FROM marketo_sync_changelog WHERE pk IN ('3', 'x')".replace("'x'", &format!("'{new_id}'")), &[])
        .await
        .unwrap();
    assert_eq!(
        log[0][0].as_deref().map(str::trim),
        Some("0"),
        "the triggers skipped the adapter's writes"
    );
    let stored = crm
        .find("contacts", "marketo_id", &["M1".into()])
        .await
        .unwrap();
    assert_eq!(stored[0].fields["title"], Value::from("Written by sync"));

    // A user change after our write is read.
    exec(
        &user,
        &format!(
            "UPDATE contacts SET title = 'User again', updated_at = {} WHERE id = 1",
            env.ts(9)
        ),
    )
    .await;
    let (changes, _) = drain(crm.as_ref(), "contacts", Some(cursor), 100).await;
    match latest(&changes, "1").kind {
        ChangeKind::Upserted { fields } => assert_eq!(fields["title"], Value::from("User again")),
        other => panic!("{other:?}"),
    }
    env.cleanup().await;
}

/// A writer whose clock runs ahead of the database's stamps a row; the adapter's own write of
/// that row, in a step that then fails (its writes forgotten), keeps the row where the change
/// feed reads it: the modified time never moves backwards behind the cursor.
async fn a_write_never_moves_a_row_behind_the_cursor(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(5).await;
    let crm = env.adapter(false, 300).await;
    let user = env.user().await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET title = 'Ahead', updated_at = {} WHERE id = 1",
            env.ts(1)
        ),
    )
    .await;
    let (_, cursor) = drain(crm.as_ref(), "contacts", None, 100).await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET title = 'User', updated_at = {} WHERE id = 2",
            env.ts(5)
        ),
    )
    .await;
    let batch = vec![fields(&[("id", "2".into()), ("marketo_id", "M2".into())])];
    let results = crm.upsert("contacts", "id", &batch).await.unwrap();
    assert_eq!(results[0], WriteResult::Updated { id: "2".into() });
    crm.forget_own_writes();
    let (changes, _) = drain(crm.as_ref(), "contacts", Some(cursor), 100).await;
    match latest(&changes, "2").kind {
        ChangeKind::Upserted { fields } => assert_eq!(fields["title"], Value::from("User")),
        other => panic!("{other:?}"),
    }
    env.cleanup().await;
}

async fn per_record_results(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(10).await;
    let crm = env.adapter(false, 0).await;
    let batch = vec![
        fields(&[
            ("marketo_id", "A1".into()),
            ("external_id", "NEW-1".into()),
            ("name", "New One".into()),
        ]),
        // external_id ACC-000001 already exists: unique violation for this record only.
        fields(&[
            ("marketo_id", "A2".into()),
            ("external_id", "ACC-000001".into()),
            ("name", "Dup".into()),
        ]),
        fields(&[("marketo_id", "A3".into()), ("no_such_column", "x".into())]),
        fields(&[("name", "no key".into())]),
        fields(&[
            ("marketo_id", "A4".into()),
            ("external_id", "NEW-4".into()),
            ("annual_revenue", Value::Decimal("1234.50".parse().unwrap())),
        ]),
    ];
    let results = crm.upsert("accounts", "marketo_id", &batch).await.unwrap();
    assert_eq!(results.len(), 5);
    assert!(
        matches!(&results[0], WriteResult::Created { .. }),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], WriteResult::Refused(r) if r.code() == "unique_violation" && !r.retryable),
        "{results:?}"
    );
    assert!(
        matches!(&results[2], WriteResult::Refused(r) if r.code() == "unknown_field"),
        "{results:?}"
    );
    assert!(
        matches!(&results[3], WriteResult::Refused(r) if r.code() == "missing_key"),
        "{results:?}"
    );
    assert!(
        matches!(&results[4], WriteResult::Created { .. }),
        "{results:?}"
    );
    let found = crm
        .find(
            "accounts",
            "marketo_id",
            &["A1".into(), "A2".into(), "A4".into()],
        )
        .await
        .unwrap();
    let mut keys: Vec<Value> = found
        .iter()
        .map(|r| r.fields["marketo_id"].clone())
        .collect();
    keys.sort_by_key(|v| v.to_text());
    assert_eq!(keys, vec![Value::from("A1"), Value::from("A4")]);
    let a4 = found
        .iter()
        .find(|r| r.fields["marketo_id"] == Value::from("A4"))
        .unwrap();
    assert_eq!(
        a4.fields["annual_revenue"],
        Value::Decimal("1234.5".parse().unwrap())
    );
    // Updating the same key again updates, and writing is refused on a read-only object.
    let again = crm
        .upsert(
            "accounts",
            "marketo_id",
            &[fields(&[
                ("marketo_id", "A1".into()),
                ("industry", "Space".into()),
            ])],
        )
        .await
        .unwrap();
    assert!(matches!(&again[0], WriteResult::Updated { .. }));
    let ro = registry::build(
        "sql",
        Some(&SecretString::from(env.url.clone())),
        &demo_crm::adapter_options(false, false),
    )
    .await
    .unwrap();
    let err = ro.upsert("accounts", "marketo_id", &[]).await.unwrap_err();
    assert!(matches!(err, CrmError::NotWritable { .. }) && !err.is_retryable());
    env.cleanup().await;
}

async fn homogeneous_batches(engine: Engine) {
    // Batches whose records write the same columns go through one multi-row statement where
    // the engine allows it; results, echo suppression and refusals behave the same.
    let env = Env::new(engine).await;
    env.demo(10).await;
    let crm = env.adapter(true, 300).await;
    let user = env.user().await;
    exec(
        &user,
        &format!(
            "UPDATE contacts SET marketo_id = 'M1', updated_at = {} WHERE id = 1",
            env.ts(1)
        ),
    )
    .await;
    let (_, cursor) = drain(crm.as_ref(), "contacts", None, 100).await;
    let row = |k: &str, t: &str| {
        fields(&[
            ("marketo_id", k.into()),
            ("title", t.into()),
            ("email", format!("{k}@x.example").as_str().into()),
        ])
    };
    let results = crm
        .upsert(
            "contacts",
            "marketo_id",
            &[row("M1", "one"), row("M8", "eight"), row("M9", "nine")],
        )
        .await
        .unwrap();
    assert_eq!(results[0], WriteResult::Updated { id: "1".into() });
    // (An upsert that hits the conflict may still consume a sequence value, so ids can skip.)
    let new_ids: Vec<String> = results[1..]
        .iter()
        .map(|r| match r {
            WriteResult::Created { id } => id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(new_ids[0] != new_ids[1] && new_ids.iter().all(|i| i.parse::<i64>().unwrap() > 10));
    let (changes, _) = drain(crm.as_ref(), "contacts", Some(cursor), 100).await;
    for id in ["1", new_ids[0].as_str(), new_ids[1].as_str()] {
        assert!(
            !changes.iter().any(|c| c.id == id),
            "own write {id} read back: {changes:?}"
        );
    }
    let stored = crm
        .find("contacts", "marketo_id", &["M9".into()])
        .await
        .unwrap();
    assert_eq!(stored[0].fields["title"], Value::from("nine"));

    let acc = |k: &str, ext: &str| fields(&[("marketo_id", k.into()), ("external_id", ext.into())]);
    let results = crm
        .upsert(
            "accounts",
            "marketo_id",
            &[
                acc("A1", "NEW-1"),
                acc("A2", "ACC-000001"),
                acc("A3", "NEW-3"),
            ],
        )
        .await
        .unwrap();
    assert!(
        matches!(&results[0], WriteResult::Created { .. }),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], WriteResult::Refused(r) if r.code() == "unique_violation"),
        "{results:?}"
    );
    assert!(
        matches!(&results[2], WriteResult::Created { .. }),
        "{results:?}"
    );
    assert_eq!(
        crm.find(
            "accounts",
            "marketo_id",
            &["A1".into(), "A2".into(), "A3".into()]
        )
        .await
        .unwrap()
        .len(),
        2
    );

    // Updates by primary key of the same columns: one statement, the same per-record results,
    // and the adapter's own writes are not read back.
    let (_, cursor) = drain(crm.as_ref(), "contacts", None, 100).await;
    let by_pk = |id: &str, title: &str| {
        fields(&[
            ("id", id.into()),
            ("title", title.into()),
            ("marketo_id", format!("P{id}").as_str().into()),
        ])
    };
    let results = crm
        .upsert(
            "contacts",
            "id",
            &[by_pk("2", "Two"), by_pk("3", "Three"), by_pk("4", "Four")],
        )
        .await
        .unwrap();
    assert_eq!(
        results,
        ["2", "3", "4"].map(|id| WriteResult::Updated { id: id.into() })
    );
    let stored = crm
        .get("contacts", &["2".into(), "3".into(), "4".into()])
        .await
        .unwrap();
    for r in &stored {
        let want = match r.id.as_str() {
            "2" => "Two",
            "3" => "Three",
            _ => "Four",
        };
        assert_eq!(r.fields["title"], Value::from(want), "{r:?}");
        assert_eq!(r.fields["marketo_id"], Value::from(format!("P{}", r.id)));
    }
    let (changes, cursor) = drain(crm.as_ref(), "contacts", Some(cursor), 100).await;
    assert!(changes.is_empty(), "own writes read back: {changes:?}");
    // A missing row in such a batch: it alone is refused, the others are written.
    let results = crm
        .upsert(
            "contacts",
            "id",
            &[
                by_pk("5", "Five"),
                by_pk("999999", "None"),
                by_pk("6", "Six"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(results[0], WriteResult::Updated { id: "5".into() });
    assert!(
        matches!(&results[1], WriteResult::Refused(r) if r.code() == "not_found"),
        "{results:?}"
    );
    assert_eq!(results[2], WriteResult::Updated { id: "6".into() });
    // A user's edit after them is read.
    exec(
        &user,
        &format!(
            "UPDATE contacts SET title = 'User', updated_at = {} WHERE id = 3",
            env.ts(9)
        ),
    )
    .await;
    let (changes, _) = drain(crm.as_ref(), "contacts", Some(cursor), 100).await;
    assert!(ids(&changes).contains(&"3".to_owned()), "{changes:?}");
    env.cleanup().await;
}

async fn dropped_connection_mid_batch(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(5).await;
    let crm = env.adapter(false, 0).await;
    let user = env.user().await;
    exec(
        &user,
        "UPDATE contacts SET marketo_id = CONCAT('M', CAST(id AS CHAR(10)))"
            .replace(
                "CHAR(10)",
                if engine == Engine::Postgres {
                    "TEXT"
                } else {
                    "CHAR(10)"
                },
            )
            .as_str(),
    )
    .await;
    let locker = env.user().await;
    exec(&locker, "BEGIN").await;
    exec(&locker, "UPDATE contacts SET phone = 'locked' WHERE id = 3").await;

    let batch = vec![
        fields(&[
            ("marketo_id", "NEW".into()),
            ("email", "new@x.example".into()),
        ]),
        fields(&[("marketo_id", "M1".into()), ("title", "changed".into())]),
        fields(&[("marketo_id", "M2".into()), ("title", "changed".into())]),
        fields(&[("marketo_id", "M3".into()), ("title", "changed".into())]),
    ];
    let writer = crm.clone();
    let task = tokio::spawn(async move { writer.upsert("contacts", "marketo_id", &batch).await });

    // Wait (bounded) until the batch blocks on the locked row, then kill its connection.
    let killer = env.user().await;
    let find = if engine == Engine::Postgres {
        "SELECT CAST(pid AS TEXT) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    } else {
        "SELECT CAST(ID AS CHAR) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID() AND COMMAND <> 'Sleep'"
    };
    let mut victim = None;
    for _ in 0..500 {
        let rows = killer.fetch("find", find.to_owned(), &[]).await.unwrap();
        if let Some(id) = rows.first().and_then(|r| r[0].clone()) {
            victim = Some(id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim: i64 = victim.expect("the batch never blocked").parse().unwrap();
    if engine == Engine::Postgres {
        exec(&killer, &format!("SELECT pg_terminate_backend({victim})")).await;
    } else {
        exec(&killer, &format!("KILL {victim}")).await;
    }
    let err = task.await.unwrap().expect_err("the batch must fail");
    assert!(err.is_retryable(), "{err}");
    exec(&locker, "ROLLBACK").await;

    let rows = user
        .fetch("check", "SELECT CAST(COUNT(*) AS CHAR(20)) AS n FROM contacts WHERE marketo_id = 'NEW' OR title = 'changed'".to_owned(), &[])
        .await
        .unwrap();
    assert_eq!(
        rows[0][0].as_deref().map(str::trim),
        Some("0"),
        "no part of the batch was committed"
    );
    // The adapter recovers: the same batch goes through on retry.
    let batch = vec![fields(&[
        ("marketo_id", "M1".into()),
        ("title", "changed".into()),
    ])];
    let ok = crm.upsert("contacts", "marketo_id", &batch).await.unwrap();
    assert_eq!(ok[0], WriteResult::Updated { id: "1".into() });
    env.cleanup().await;
}

async fn unknown_names_fail_before_any_query(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(2).await;
    let url = SecretString::from(env.url.clone());
    let mut options = demo_crm::adapter_options(false, false);
    options["objects"]["contacts"]["table"] = json!("contactz");
    let err = registry::build("sql", Some(&url), &options)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, CrmError::UnknownName { what: "table", name, .. } if name == "contactz"),
        "{err}"
    );
    assert!(!err.is_retryable());

    let mut options = demo_crm::adapter_options(false, false);
    options["objects"]["leads"]["modified_column"] = json!("modified_at");
    let err = registry::build("sql", Some(&url), &options)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("`modified_at` does not exist in `leads`"),
        "{err}"
    );

    let mut options = demo_crm::adapter_options(false, false);
    options["objects"]["leads"]["columns"] = json!(["email", "emial"]);
    let err = registry::build("sql", Some(&url), &options)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("emial"), "{err}");

    let mut options = demo_crm::adapter_options(false, false);
    options["objects"]["leads"]["tabel"] = json!("x");
    let err = registry::build("sql", Some(&url), &options)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, CrmError::Config { .. }) && err.to_string().contains("tabel"),
        "{err}"
    );

    // The change log must be installed before it is used.
    let err = registry::build("sql", Some(&url), &demo_crm::adapter_options(false, true))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("install-changelog"), "{err}");

    // A field name at call time is checked too.
    let crm = registry::build("sql", Some(&url), &demo_crm::adapter_options(false, false))
        .await
        .unwrap();
    let err = crm
        .find("contacts", "nope", &["x".into()])
        .await
        .unwrap_err();
    assert!(matches!(err, CrmError::UnknownName { .. }), "{err}");
    let err = crm.changes("nope", None, 10).await.unwrap_err();
    assert!(matches!(err, CrmError::UnknownObject { .. }), "{err}");
    env.cleanup().await;
}

async fn describe_and_capabilities(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(8).await;
    let crm = env.adapter(false, 0).await;
    let schema = crm.describe("contacts").await.unwrap();
    assert_eq!(schema.id_field.as_deref(), Some("id"));
    assert_eq!(schema.dedupe_fields, vec!["marketo_id".to_owned()]);
    let f = |n: &str| {
        schema
            .field(n)
            .unwrap_or_else(|| panic!("no field {n}"))
            .clone()
    };
    assert!(f("id").read_only && f("id").unique);
    assert_eq!(
        f("email").ty,
        marketo_sync::model::FieldType::Text { max_len: Some(255) }
    );
    assert!(f("email").searchable && !f("email").unique);
    assert_eq!(
        f("do_not_email").ty,
        marketo_sync::model::FieldType::Boolean
    );
    assert_eq!(f("updated_at").ty, marketo_sync::model::FieldType::DateTime);
    assert!(f("marketo_id").unique && !f("marketo_id").read_only);
    let opp = crm.describe("opportunities").await.unwrap();
    assert_eq!(
        opp.field("amount").unwrap().ty,
        marketo_sync::model::FieldType::Decimal
    );
    assert_eq!(
        opp.field("close_date").unwrap().ty,
        marketo_sync::model::FieldType::Date
    );
    let caps = crm.capabilities("contacts").unwrap();
    let want = if engine == Engine::Sqlite {
        marketo_sync::crm::Precision::Millis
    } else {
        marketo_sync::crm::Precision::Micros
    };
    assert_eq!(caps.timestamp_precision, want);
    assert_eq!(caps.delete_feed, marketo_sync::crm::DeleteFeed::SoftOnly);
    assert_eq!(
        caps.upsert,
        marketo_sync::crm::UpsertMode::NativeByExternalId
    );
    crm.healthcheck().await.unwrap();
    // Values come back typed.
    let recs = crm.get("opportunities", &["1".into()]).await.unwrap();
    let o = &recs[0].fields;
    assert!(matches!(o["amount"], Value::Decimal(_)), "{o:?}");
    assert!(matches!(o["is_closed"], Value::Bool(_)), "{o:?}");
    assert!(matches!(o["close_date"], Value::Date(_)), "{o:?}");
    assert!(matches!(o["account_id"], Value::Int(_)), "{o:?}");
    let _: BTreeMap<_, _> = o.clone();
    env.cleanup().await;
}

async fn demo_data_is_deterministic(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(20).await;
    let crm = env.adapter(false, 0).await;
    let first = crm.get("contacts", &["7".into()]).await.unwrap();
    env.demo(20).await;
    let second = crm.get("contacts", &["7".into()]).await.unwrap();
    let strip = |mut f: Fields| {
        f.remove("updated_at");
        f
    };
    assert_eq!(
        strip(first[0].fields.clone()),
        strip(second[0].fields.clone())
    );
    assert_eq!(
        Dialect::from_url(&env.url).unwrap() == Dialect::Sqlite,
        engine == Engine::Sqlite
    );
    env.cleanup().await;
}

async fn locked_database_fails_the_whole_batch(engine: Engine) {
    // SQLite has no server connection to drop; the batch-level failure it does have is a
    // database locked by another writer. The batch fails as a whole, retryably.
    let env = Env::new(engine).await;
    env.demo(3).await;
    let crm = env.adapter(false, 0).await;
    let locker = env.user().await;
    exec(&locker, "BEGIN IMMEDIATE").await;
    let batch = vec![
        fields(&[("marketo_id", "A".into()), ("email", "a@x.example".into())]),
        fields(&[("marketo_id", "B".into()), ("email", "b@x.example".into())]),
    ];
    let err = crm
        .upsert("contacts", "marketo_id", &batch)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    exec(&locker, "ROLLBACK").await;
    assert!(
        crm.find("contacts", "marketo_id", &["A".into(), "B".into()])
            .await
            .unwrap()
            .is_empty()
    );
    let ok = crm.upsert("contacts", "marketo_id", &batch).await.unwrap();
    assert!(
        ok.iter().all(|r| matches!(r, WriteResult::Created { .. })),
        "{ok:?}"
    );
    env.cleanup().await;
}

async fn reads_through_a_view(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(4).await;
    let user = env.user().await;
    exec(
        &user,
        "CREATE VIEW contacts_v AS SELECT c.id, c.email, c.updated_at, c.deleted, c.marketo_id, a.name AS account_name \
         FROM contacts c LEFT JOIN accounts a ON a.id = c.account_id",
    )
    .await;
    let mut options = demo_crm::adapter_options(false, false);
    options["objects"]["contacts"]["read_view"] = json!("contacts_v");
    options["objects"]["contacts"]["columns"] = json!(["email", "account_name"]);
    options["objects"]["contacts"]
        .as_object_mut()
        .unwrap()
        .remove("merged_into_column");
    let url = SecretString::from(env.url.clone());
    let crm = registry::build("sql", Some(&url), &options).await.unwrap();
    let (changes, _) = drain(crm.as_ref(), "contacts", None, 3).await;
    assert_eq!(ids(&changes).len(), 4);
    match &changes[0].kind {
        ChangeKind::Upserted { fields } => {
            assert_eq!(
                fields.keys().cloned().collect::<Vec<_>>(),
                vec!["account_name".to_owned(), "email".to_owned()]
            );
            assert!(
                matches!(fields["account_name"], Value::Text(_)),
                "{fields:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The view must have the configured columns.
    options["objects"]["contacts"]["merged_into_column"] = json!("merged_into");
    let err = registry::build("sql", Some(&url), &options)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("`merged_into` does not exist in `contacts_v`"),
        "{err}"
    );
    env.cleanup().await;
}

/// Returns the ids of the live accounts, ascending.
async fn live_account_ids(env: &Env, user: &SqlPool) -> Vec<String> {
    user.fetch(
        "ids",
        format!(
            "SELECT CAST(id AS CHAR(20)) FROM accounts WHERE deleted = {} ORDER BY id",
            env.truth(false)
        ),
        &[],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| r[0].clone().unwrap().trim().to_owned())
    .collect()
}

/// `upsert` keyed by the primary key updates existing rows only (their Marketo id may still be
/// empty); a missing id fails that record and inserts nothing.
async fn update_by_primary_key(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(100).await;
    let crm = env.adapter(false, 0).await;
    let user = env.user().await;
    exec(&user, "UPDATE accounts SET marketo_id = NULL").await;
    let live = live_account_ids(&env, &user).await;
    let (a, b) = (live[0].clone(), live[1].clone());
    let count = |rows: Vec<Vec<Option<String>>>| rows[0][0].clone().unwrap();
    let n_before = count(
        user.fetch(
            "count",
            "SELECT CAST(COUNT(*) AS CHAR(20)) FROM accounts".to_owned(),
            &[],
        )
        .await
        .unwrap(),
    );
    let batch = vec![
        fields(&[("id", a.as_str().into()), ("industry", "Space".into())]),
        fields(&[("id", "999999".into()), ("industry", "Nowhere".into())]),
        fields(&[
            ("id", b.as_str().into()),
            ("marketo_id", "M-2".into()),
            ("name", "Renamed".into()),
        ]),
        fields(&[("industry", "no key".into())]),
    ];
    let results = crm.upsert("accounts", "id", &batch).await.unwrap();
    assert_eq!(results.len(), 4, "{results:?}");
    assert!(
        matches!(&results[0], WriteResult::Updated { id } if *id == a),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], WriteResult::Refused(r) if r.code() == "not_found" && !r.retryable),
        "{results:?}"
    );
    assert!(
        matches!(&results[2], WriteResult::Updated { id } if *id == b),
        "{results:?}"
    );
    assert!(
        matches!(&results[3], WriteResult::Refused(r) if r.code() == "missing_key"),
        "{results:?}"
    );
    let after = crm.get("accounts", &[a.clone(), b.clone()]).await.unwrap();
    let one = after.iter().find(|r| r.id == a).unwrap();
    let two = after.iter().find(|r| r.id == b).unwrap();
    assert_eq!(one.fields["industry"], Value::from("Space"));
    assert_eq!(one.fields["marketo_id"], Value::Null);
    assert_eq!(two.fields["name"], Value::from("Renamed"));
    assert_eq!(two.fields["marketo_id"], Value::from("M-2"));
    // Nothing was inserted for the missing id.
    let n_after = count(
        user.fetch(
            "count",
            "SELECT CAST(COUNT(*) AS CHAR(20)) FROM accounts".to_owned(),
            &[],
        )
        .await
        .unwrap(),
    );
    assert_eq!(n_before, n_after);
    user.close().await;
    env.cleanup().await;
}

/// Identity lookups fold case and white space; a key held by a soft-deleted row is refused,
/// not written into the dead row (one record at a time and in a uniform batch); and writes the
/// adapter forgot are read back.
async fn identity_lookups_and_dead_keys(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(3).await;
    let crm = env.adapter(false, 300).await;
    // The adapter's own write is left out of the feed until it is told to forget it (before
    // the user writes below, whose 2030 stamps would move the cursor past it).
    let (_, before) = drain(crm.as_ref(), "contacts", None, 100).await;
    let written = crm
        .upsert(
            "contacts",
            "marketo_id",
            &[fields(&[
                ("marketo_id", "M20".into()),
                ("title", "Sync".into()),
            ])],
        )
        .await
        .unwrap();
    let WriteResult::Created { id: own } = &written[0] else {
        panic!("{written:?}")
    };
    let (changes, _) = drain(crm.as_ref(), "contacts", Some(before.clone()), 100).await;
    assert!(
        !ids(&changes).contains(own),
        "own write hidden: {changes:?}"
    );
    crm.forget_own_writes();
    let (changes, _) = drain(crm.as_ref(), "contacts", Some(before), 100).await;
    assert!(
        ids(&changes).contains(own),
        "a forgotten own write is read again: {changes:?}"
    );

    let user = env.user().await;
    exec(
        &user,
        &format!(
            "INSERT INTO contacts (email, first_name, updated_at) VALUES (' Ada.Lovelace@Example.COM ', 'Ada', {})",
            env.ts(1)
        ),
    )
    .await;
    let wanted = [Value::from("ada.lovelace@example.com")];
    let exact = crm.find("contacts", "email", &wanted).await.unwrap();
    assert!(exact.is_empty(), "find is exact: {exact:?}");
    let folded = crm.find_folded("contacts", "email", &wanted).await.unwrap();
    assert_eq!(folded.len(), 1, "{folded:?}");
    assert_eq!(folded[0].fields["first_name"], Value::from("Ada"));
    let ada = folded[0].id.clone();

    // Ada gets a Marketo id, then is deleted in the CRM.
    exec(
        &user,
        &format!(
            "UPDATE contacts SET marketo_id = 'M9', deleted = {}, updated_at = {} WHERE id = {ada}",
            env.truth(true),
            env.ts(2)
        ),
    )
    .await;
    assert!(
        crm.find_folded("contacts", "email", &wanted)
            .await
            .unwrap()
            .is_empty(),
        "a deleted row is not found"
    );
    let one = crm
        .upsert(
            "contacts",
            "marketo_id",
            &[fields(&[
                ("marketo_id", "M9".into()),
                ("first_name", "Zombie".into()),
            ])],
        )
        .await
        .unwrap();
    assert!(
        matches!(&one[0], WriteResult::Refused(r) if r.code() == "deleted" && !r.retryable),
        "{one:?}"
    );
    let batch = crm
        .upsert(
            "contacts",
            "marketo_id",
            &[
                fields(&[("marketo_id", "M9".into()), ("first_name", "Zombie".into())]),
                fields(&[("marketo_id", "M10".into()), ("first_name", "New".into())]),
            ],
        )
        .await
        .unwrap();
    assert!(
        matches!(&batch[0], WriteResult::Refused(r) if r.code() == "deleted"),
        "{batch:?}"
    );
    let WriteResult::Created { .. } = &batch[1] else {
        panic!("the live record of the batch is still written: {batch:?}")
    };
    let rows = user
        .fetch(
            "read ada",
            format!("SELECT first_name FROM contacts WHERE id = {ada}"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows[0][0].as_deref(),
        Some("Ada"),
        "the dead row is untouched"
    );

    user.close().await;
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Refusals: one record's failure, never the batch's; nothing shortened or rounded
// ---------------------------------------------------------------------------------------------

/// Returns the refusal at `i`, or panics with the results.
fn refusal_at(results: &[WriteResult], i: usize) -> Refusal {
    match &results[i] {
        WriteResult::Refused(r) => r.clone(),
        _ => panic!("record {i} was not refused: {results:?}"),
    }
}

/// Installs a trigger on `contacts` that refuses any insert or update whose email ends in
/// `@blocked.example`, with the message `blocked domain`. `how` is SQLite's RAISE action.
async fn install_refusing_trigger(env: &Env, how: &str) {
    let user = env.user().await;
    match env.engine {
        Engine::Postgres => {
            exec(
                &user,
                "CREATE FUNCTION refuse_blocked() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.email LIKE '%@blocked.example' THEN \
                 RAISE EXCEPTION 'blocked domain'; END IF; RETURN NEW; END $$",
            )
            .await;
            exec(
                &user,
                "CREATE TRIGGER refuse_blocked BEFORE INSERT OR UPDATE ON contacts \
                 FOR EACH ROW EXECUTE FUNCTION refuse_blocked()",
            )
            .await;
        }
        Engine::MariaDb => {
            for event in ["INSERT", "UPDATE"] {
                exec(
                    &user,
                    &format!(
                        "CREATE TRIGGER refuse_blocked_{event} BEFORE {event} ON contacts \
                         FOR EACH ROW BEGIN IF NEW.email LIKE '%@blocked.example' THEN \
                         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'blocked domain'; END IF; END"
                    ),
                )
                .await;
            }
        }
        Engine::Sqlite => {
            for event in ["INSERT", "UPDATE"] {
                exec(
                    &user,
                    &format!(
                        "CREATE TRIGGER refuse_blocked_{event} BEFORE {event} ON contacts \
                         WHEN NEW.email LIKE '%@blocked.example' \
                         BEGIN SELECT RAISE({how}, 'blocked domain'); END"
                    ),
                )
                .await;
            }
        }
    }
    user.close().await;
}

fn contact(key: &str, email: &str) -> Fields {
    fields(&[
        ("marketo_id", key.into()),
        ("email", email.into()),
        ("first_name", "Ada".into()),
    ])
}

async fn marketo_ids(crm: &dyn Crm, object: &str, keys: &[&str]) -> Vec<String> {
    let values: Vec<Value> = keys.iter().map(|k| Value::from(*k)).collect();
    let mut found: Vec<String> = crm
        .find(object, "marketo_id", &values)
        .await
        .unwrap()
        .iter()
        .map(|r| r.fields["marketo_id"].to_text())
        .collect();
    found.sort();
    found
}

async fn a_trigger_refuses_one_row_of_a_batch(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(3).await;
    install_refusing_trigger(&env, "ABORT").await;
    let crm = env.adapter(false, 0).await;
    let want_code = match engine {
        Engine::Postgres => "P0001",
        Engine::MariaDb => "1644",
        Engine::Sqlite => "1811",
    };
    // Same columns (the multi-row statement, then its fallback) and mixed columns (record by
    // record): either way the refused record alone fails.
    let homogeneous = vec![
        contact("M1", "one@x.example"),
        contact("M2", "two@blocked.example"),
        contact("M3", "three@x.example"),
    ];
    let mut mixed = vec![
        contact("M4", "four@x.example"),
        contact("M5", "five@blocked.example"),
        contact("M6", "six@x.example"),
    ];
    mixed[2].insert("title".into(), "CTO".into());
    for (batch, keys) in [
        (homogeneous, ["M1", "M2", "M3"]),
        (mixed, ["M4", "M5", "M6"]),
    ] {
        let results = crm.upsert("contacts", "marketo_id", &batch).await.unwrap();
        assert_eq!(results.len(), 3);
        assert!(
            matches!(&results[0], WriteResult::Created { .. }),
            "{results:?}"
        );
        assert!(
            matches!(&results[2], WriteResult::Created { .. }),
            "{results:?}"
        );
        let r = refusal_at(&results, 1);
        assert_eq!(r.reason, RefusalReason::Trigger, "{r:?}");
        assert_eq!(r.code(), "trigger");
        assert_eq!(r.remote_code.as_deref(), Some(want_code), "{r:?}");
        assert!(r.message.contains("blocked domain"), "{r:?}");
        assert!(!r.retryable);
        assert!(
            r.ledger_message().contains(want_code) && r.ledger_message().contains("blocked domain"),
            "{}",
            r.ledger_message()
        );
        assert_eq!(
            marketo_ids(crm.as_ref(), "contacts", &keys).await,
            vec![keys[0].to_owned(), keys[2].to_owned()]
        );
    }
    // An update the trigger refuses leaves the row as it was, and the next batch is fine.
    let results = crm
        .upsert(
            "contacts",
            "marketo_id",
            &[
                contact("M1", "one@blocked.example"),
                contact("M3", "three@y.example"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(refusal_at(&results, 0).reason, RefusalReason::Trigger);
    assert!(
        matches!(&results[1], WriteResult::Updated { .. }),
        "{results:?}"
    );
    let stored = crm
        .find("contacts", "marketo_id", &["M1".into()])
        .await
        .unwrap();
    assert_eq!(stored[0].fields["email"], Value::from("one@x.example"));
    // A refusal of the last row of a batch: the rows before it are not left written by the
    // multi-row statement and then written again (they are created, once).
    let keys: Vec<String> = (10..17).map(|i| format!("M{i}")).collect();
    let batch: Vec<Fields> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let domain = if i == 6 { "blocked" } else { "x" };
            contact(k, &format!("{k}@{domain}.example"))
        })
        .collect();
    let results = crm.upsert("contacts", "marketo_id", &batch).await.unwrap();
    assert_eq!(refusal_at(&results, 6).reason, RefusalReason::Trigger);
    assert!(
        results[..6]
            .iter()
            .all(|r| matches!(r, WriteResult::Created { .. })),
        "{results:?}"
    );
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(
        marketo_ids(crm.as_ref(), "contacts", &key_refs).await,
        keys[..6].to_vec()
    );
    env.cleanup().await;
}

async fn a_check_constraint_refuses_one_row(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(3).await;
    let user = env.user().await;
    exec(
        &user,
        "ALTER TABLE accounts ADD COLUMN score INTEGER CHECK (score >= 0)",
    )
    .await;
    user.close().await;
    let crm = env.adapter(false, 0).await;
    let acc =
        |k: &str, score: i64| fields(&[("marketo_id", k.into()), ("score", Value::Int(score))]);
    let results = crm
        .upsert(
            "accounts",
            "marketo_id",
            &[acc("A1", 1), acc("A2", -5), acc("A3", 3)],
        )
        .await
        .unwrap();
    let r = refusal_at(&results, 1);
    assert_eq!(r.reason, RefusalReason::Check, "{r:?}");
    assert_eq!(r.code(), "check_violation");
    let want_code = match engine {
        Engine::Postgres => "23514",
        Engine::MariaDb => "4025",
        Engine::Sqlite => "275",
    };
    assert_eq!(r.remote_code.as_deref(), Some(want_code), "{r:?}");
    assert!(
        matches!(&results[0], WriteResult::Created { .. }),
        "{results:?}"
    );
    assert!(
        matches!(&results[2], WriteResult::Created { .. }),
        "{results:?}"
    );
    assert_eq!(
        marketo_ids(crm.as_ref(), "accounts", &["A1", "A2", "A3"]).await,
        vec!["A1".to_owned(), "A3".to_owned()]
    );
    env.cleanup().await;
}

async fn stored_code(env: &Env, key: &str) -> Option<String> {
    let user = env.user().await;
    let rows = user
        .fetch(
            "test",
            format!(
                "SELECT CAST(code AS {}) FROM accounts WHERE marketo_id = '{key}'",
                if env.engine == Engine::MariaDb {
                    "CHAR"
                } else {
                    "TEXT"
                }
            ),
            &[],
        )
        .await
        .unwrap();
    user.close().await;
    rows.first().cloned().and_then(|r| r[0].clone())
}

async fn a_too_long_value_is_refused_not_truncated(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(3).await;
    let user = env.user().await;
    exec(&user, "ALTER TABLE accounts ADD COLUMN code VARCHAR(8)").await;
    user.close().await;
    let crm = env.adapter(false, 0).await;
    let acc = |k: &str, code: &str| fields(&[("marketo_id", k.into()), ("code", code.into())]);
    let results = crm
        .upsert(
            "accounts",
            "marketo_id",
            &[
                acc("A1", "ABCDEFGHIJ"),
                acc("A2", "ABC"),
                acc("A3", "äöüäöüäö"),
            ],
        )
        .await
        .unwrap();
    let r = refusal_at(&results, 0);
    assert_eq!(
        r.reason,
        RefusalReason::TooLong {
            field: "code".into(),
            max_chars: 8,
            actual_chars: 10
        }
    );
    assert_eq!(r.code(), "too_long");
    assert!(
        !r.message.contains("ABCDEFGH"),
        "the value is never echoed: {r:?}"
    );
    assert!(
        r.message.contains("code") && r.message.contains('8'),
        "{r:?}"
    );
    assert!(
        matches!(&results[1], WriteResult::Created { .. }),
        "{results:?}"
    );
    assert!(
        matches!(&results[2], WriteResult::Created { .. }),
        "eight characters fit, whatever their bytes: {results:?}"
    );
    assert_eq!(
        stored_code(&env, "A1").await,
        None,
        "nothing written for A1"
    );
    assert_eq!(
        marketo_ids(crm.as_ref(), "accounts", &["A1"]).await,
        Vec::<String>::new()
    );
    // An update with a too-long value leaves the stored value whole; record by record too.
    let mut upd = acc("A2", "ABCDEFGHI");
    upd.insert("industry".into(), "Space".into());
    let results = crm
        .upsert("accounts", "marketo_id", &[upd, acc("A3", "12345678")])
        .await
        .unwrap();
    assert!(
        matches!(
            refusal_at(&results, 0).reason,
            RefusalReason::TooLong {
                actual_chars: 9,
                ..
            }
        ),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], WriteResult::Updated { .. }),
        "{results:?}"
    );
    assert_eq!(stored_code(&env, "A2").await.as_deref(), Some("ABC"));
    assert_eq!(stored_code(&env, "A3").await.as_deref(), Some("12345678"));
    env.cleanup().await;
}

async fn numbers_that_do_not_fit_are_refused_not_rounded(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(3).await;
    let crm = env.adapter(false, 0).await;
    let dec = |s: &str| Value::Decimal(s.parse().unwrap());
    let acc = |k: &str, field: &str, v: Value| fields(&[("marketo_id", k.into()), (field, v)]);
    // annual_revenue is DECIMAL(15,2); employees INTEGER.
    let results = crm
        .upsert(
            "accounts",
            "marketo_id",
            &[
                acc("A1", "annual_revenue", dec("12.345")),
                acc("A2", "annual_revenue", dec("12.5")),
                acc("A3", "annual_revenue", dec("12345678901234.5")),
                acc("A4", "employees", dec("1.5")),
                acc("A5", "employees", Value::Int(3_000_000_000)),
                acc("A6", "annual_revenue", dec("99999999999.99")),
            ],
        )
        .await
        .unwrap();
    for i in [0, 2, 3] {
        let r = refusal_at(&results, i);
        assert!(
            matches!(&r.reason, RefusalReason::OutOfRange { .. }),
            "{i}: {r:?}"
        );
        assert_eq!(r.code(), "out_of_range");
    }
    assert!(
        matches!(&results[1], WriteResult::Created { .. }),
        "{results:?}"
    );
    assert!(
        matches!(&results[5], WriteResult::Created { .. }),
        "{results:?}"
    );
    if engine == Engine::Sqlite {
        // SQLite keeps every INTEGER in 64 bits: three billion fits.
        assert!(
            matches!(&results[4], WriteResult::Created { .. }),
            "{results:?}"
        );
    } else {
        assert!(
            matches!(&refusal_at(&results, 4).reason, RefusalReason::OutOfRange { field, .. } if field == "employees"),
            "{results:?}"
        );
    }
    let found = crm
        .find(
            "accounts",
            "marketo_id",
            &["A1".into(), "A2".into(), "A6".into()],
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    let a2 = found
        .iter()
        .find(|r| r.fields["marketo_id"] == Value::from("A2"))
        .unwrap();
    assert_eq!(a2.fields["annual_revenue"], dec("12.5"));
    env.cleanup().await;
}

async fn a_trigger_that_rolls_back_the_transaction_loses_no_other_row(engine: Engine) {
    // SQLite's RAISE(ROLLBACK, ...) ends the whole transaction, not only the statement.
    let env = Env::new(engine).await;
    env.demo(3).await;
    install_refusing_trigger(&env, "ROLLBACK").await;
    let crm = env.adapter(false, 0).await;
    let mut mixed = vec![
        contact("M4", "four@x.example"),
        contact("M5", "five@blocked.example"),
        contact("M6", "six@x.example"),
        contact("M7", "seven@blocked.example"),
    ];
    mixed[2].insert("title".into(), "CTO".into());
    let homogeneous = vec![
        contact("M1", "one@x.example"),
        contact("M2", "two@blocked.example"),
        contact("M3", "three@x.example"),
    ];
    for batch in [homogeneous, mixed] {
        let results = crm.upsert("contacts", "marketo_id", &batch).await.unwrap();
        for (i, (r, rec)) in results.iter().zip(&batch).enumerate() {
            let blocked = rec["email"].to_text().ends_with("@blocked.example");
            if blocked {
                let refusal = refusal_at(&results, i);
                assert_eq!(refusal.reason, RefusalReason::Trigger);
                assert_eq!(refusal.remote_code.as_deref(), Some("1811"));
            } else {
                assert!(matches!(r, WriteResult::Created { .. }), "{results:?}");
            }
        }
    }
    assert_eq!(
        marketo_ids(
            crm.as_ref(),
            "contacts",
            &["M1", "M2", "M3", "M4", "M5", "M6", "M7"]
        )
        .await,
        vec!["M1", "M3", "M4", "M6"]
    );
    // The adapter's connections are still sound: plain writes and reads go on.
    for _ in 0..3 {
        let ok = crm
            .upsert(
                "contacts",
                "marketo_id",
                &[
                    contact("M1", "uno@x.example"),
                    contact("M8", "eight@x.example"),
                ],
            )
            .await
            .unwrap();
        assert!(
            ok.iter()
                .all(|r| matches!(r, WriteResult::Created { .. } | WriteResult::Updated { .. })),
            "{ok:?}"
        );
    }
    env.cleanup().await;
}

/// An update by primary key that gives a row the Marketo id a soft-deleted row still holds
/// clears it on the dead row first (the unique column would refuse it to every live row for
/// good); a live row holding the id still gets the write refused.
async fn a_deleted_row_gives_up_its_marketo_id(engine: Engine) {
    let env = Env::new(engine).await;
    env.demo(100).await;
    let crm = env.adapter(false, 0).await;
    let user = env.user().await;
    exec(&user, "UPDATE accounts SET marketo_id = NULL").await;
    let live = live_account_ids(&env, &user).await;
    let id = |i: usize| live[i].clone();
    let (dead, taker, holder, refused) = (id(0), id(1), id(2), id(3));
    let set = |id: &str, extra: &str| {
        format!("UPDATE accounts SET marketo_id = 'M-{id}'{extra} WHERE id = {id}")
    };
    let deleted = format!(", deleted = {}", env.truth(true));
    exec(&user, &set(&dead, &deleted)).await;
    exec(&user, &set(&holder, "")).await;
    let batch = vec![
        fields(&[
            ("id", taker.as_str().into()),
            ("marketo_id", format!("M-{dead}").as_str().into()),
        ]),
        fields(&[
            ("id", refused.as_str().into()),
            ("marketo_id", format!("M-{holder}").as_str().into()),
        ]),
    ];
    let results = crm.upsert("accounts", "id", &batch).await.unwrap();
    assert!(
        matches!(&results[0], WriteResult::Updated { id } if *id == taker),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], WriteResult::Refused(r) if r.code() == "unique_violation"),
        "{results:?}"
    );
    let marketo_id = |id: String| {
        let user = &user;
        async move {
            user.fetch(
                "marketo id",
                format!("SELECT marketo_id FROM accounts WHERE id = {id}"),
                &[],
            )
            .await
            .unwrap()[0][0]
                .clone()
        }
    };
    assert_eq!(
        marketo_id(dead.clone()).await,
        None,
        "the dead row kept the id"
    );
    assert_eq!(marketo_id(taker).await, Some(format!("M-{dead}")));
    assert_eq!(
        marketo_id(holder.clone()).await,
        Some(format!("M-{holder}"))
    );
    assert_eq!(marketo_id(refused).await, None);
    user.close().await;
    env.cleanup().await;
}

macro_rules! on_engines {
    ($engine_mod:ident, $engine:expr; $($name:ident),* $(,)?) => {
        mod $engine_mod {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($engine).await;
                }
            )*
        }
    };
}

on_engines!(sqlite, super::Engine::Sqlite;
    a_write_never_moves_a_row_behind_the_cursor,
    inserts_updates_and_soft_deletes, equal_timestamps, hard_deletes_through_the_changelog,
    own_writes_are_not_read_back, per_record_results, unknown_names_fail_before_any_query,
    describe_and_capabilities, demo_data_is_deterministic, locked_database_fails_the_whole_batch,
    reads_through_a_view, homogeneous_batches, update_by_primary_key,
    a_deleted_row_gives_up_its_marketo_id,
    identity_lookups_and_dead_keys, a_trigger_refuses_one_row_of_a_batch,
    a_check_constraint_refuses_one_row, a_too_long_value_is_refused_not_truncated,
    numbers_that_do_not_fit_are_refused_not_rounded,
    a_trigger_that_rolls_back_the_transaction_loses_no_other_row);
on_engines!(postgres, super::Engine::Postgres;
    a_write_never_moves_a_row_behind_the_cursor,
    inserts_updates_and_soft_deletes, equal_timestamps, hard_deletes_through_the_changelog,
    out_of_order_commits_overlap, out_of_order_commits_changelog, own_writes_are_not_read_back,
    rolled_back_transactions_leave_no_stuck_gaps,
    per_record_results, dropped_connection_mid_batch, unknown_names_fail_before_any_query,
    describe_and_capabilities, demo_data_is_deterministic, reads_through_a_view, homogeneous_batches, update_by_primary_key,
    a_deleted_row_gives_up_its_marketo_id,
    identity_lookups_and_dead_keys, a_trigger_refuses_one_row_of_a_batch,
    a_check_constraint_refuses_one_row, a_too_long_value_is_refused_not_truncated,
    numbers_that_do_not_fit_are_refused_not_rounded);
on_engines!(mariadb, super::Engine::MariaDb;
    a_write_never_moves_a_row_behind_the_cursor,
    inserts_updates_and_soft_deletes, equal_timestamps, hard_deletes_through_the_changelog,
    out_of_order_commits_overlap, out_of_order_commits_changelog, own_writes_are_not_read_back,
    rolled_back_transactions_leave_no_stuck_gaps,
    per_record_results, dropped_connection_mid_batch, unknown_names_fail_before_any_query,
    describe_and_capabilities, demo_data_is_deterministic, reads_through_a_view, homogeneous_batches, update_by_primary_key,
    a_deleted_row_gives_up_its_marketo_id,
    identity_lookups_and_dead_keys, a_trigger_refuses_one_row_of_a_batch,
    a_check_constraint_refuses_one_row, a_too_long_value_is_refused_not_truncated,
    numbers_that_do_not_fit_are_refused_not_rounded);
