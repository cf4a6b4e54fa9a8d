//! Throughput of the SQL CRM adapter on SQLite, PostgreSQL and MariaDB: reading 100,000 changed
//! rows through `changes` and upserting 100,000 rows through `upsert` (half updates, half creates).
//!
//! Run with `cargo bench --bench crm_sql`. `CRM_BENCH_ROWS` changes the row count,
//! `CRM_BENCH_ENGINES` (comma-separated: sqlite,postgres,mariadb) the engines, and
//! `PG_TEST_URL` / `MYSQL_TEST_URL` the servers (each run uses and drops its own database).

use std::time::Instant;

use marketo_sync::crm::sql::dialect::SqlPool;
use marketo_sync::crm::{Cursor, WriteResult, registry};
use marketo_sync::model::{Fields, Value};
use marketo_sync::sim::demo_crm;
use secrecy::SecretString;

const BATCH: usize = 500;

fn with_database(base: &str, db: &str) -> String {
    let mut url = url::Url::parse(base).expect("database url");
    url.set_path(&format!("/{db}"));
    url.to_string()
}

async fn bench(engine: &str, rows: usize) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let name = format!("mks_bench_{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir()?;
    let (url, admin) = match engine {
        "sqlite" => (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
        ),
        "postgres" | "mariadb" => {
            let base = if engine == "postgres" {
                std::env::var("PG_TEST_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
            } else {
                std::env::var("MYSQL_TEST_URL")
                    .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
            };
            let pool = SqlPool::connect(&base, 1, false).await?;
            pool.execute_raw("create", format!("CREATE DATABASE {name}"))
                .await?;
            pool.close().await;
            (with_database(&base, &name), Some(base))
        }
        other => return Err(format!("unknown engine {other}").into()),
    };
    demo_crm::install(&url, 1, rows).await?;
    let mut options = demo_crm::adapter_options(true, false);
    options["overlap_seconds"] = serde_json::json!(0);
    options["max_batch_write"] = serde_json::json!(BATCH);
    let crm = registry::build("sql", Some(&SecretString::from(url.clone())), &options).await?;

    // Read every contact as a change.
    let started = Instant::now();
    let mut cursor: Option<Cursor> = None;
    let mut read = 0;
    loop {
        let page = crm.changes("contacts", cursor.as_ref(), 1000).await?;
        read += page.changes.len();
        cursor = Some(page.next);
        if !page.more {
            break;
        }
    }
    let read_rate = read as f64 / started.elapsed().as_secs_f64();
    assert_eq!(read, rows, "every row is read once");

    // Link the first half to Marketo ids, then upsert: half updates, half creates.
    let user = SqlPool::connect(&url, 1, false).await?;
    let concat = if engine == "mariadb" {
        "CONCAT('M', CAST(id AS CHAR))"
    } else {
        "'M' || CAST(id AS TEXT)"
    };
    user.execute_raw(
        "link",
        format!(
            "UPDATE contacts SET marketo_id = {concat} WHERE id <= {}",
            rows / 2
        ),
    )
    .await?;
    user.close().await;
    let records: Vec<Fields> = (1..=rows)
        .map(|i| {
            let mut f = Fields::new();
            f.insert("marketo_id".into(), Value::Text(format!("M{i}")));
            f.insert("title".into(), Value::Text(format!("Title {i}")));
            f.insert("email".into(), Value::Text(format!("bench{i}@example.com")));
            f.insert("do_not_email".into(), Value::Bool(i % 7 == 0));
            f
        })
        .collect();
    let started = Instant::now();
    let (mut created, mut updated) = (0, 0);
    for batch in records.chunks(BATCH) {
        for r in crm.upsert("contacts", "marketo_id", batch).await? {
            match r {
                WriteResult::Created { .. } => created += 1,
                WriteResult::Updated { .. } => updated += 1,
                other => return Err(format!("unexpected result {other:?}").into()),
            }
        }
    }
    let write_rate = rows as f64 / started.elapsed().as_secs_f64();
    assert_eq!((created, updated), (rows - rows / 2, rows / 2));
    drop(crm);
    if let Some(base) = admin {
        let pool = SqlPool::connect(&base, 1, false).await?;
        let force = if engine == "postgres" {
            " WITH (FORCE)"
        } else {
            ""
        };
        pool.execute_raw("drop", format!("DROP DATABASE {name}{force}"))
            .await?;
        pool.close().await;
    }
    Ok((read_rate, write_rate))
}

fn main() {
    let rows: usize = std::env::var("CRM_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let engines =
        std::env::var("CRM_BENCH_ENGINES").unwrap_or_else(|_| "sqlite,postgres,mariadb".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("crm_sql: {rows} rows, upsert batches of {BATCH}");
    for engine in engines.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match runtime.block_on(bench(engine, rows)) {
            Ok((read, write)) => println!(
                "{engine:>8}: read changes {read:>10.0} rows/s   upsert {write:>10.0} rows/s"
            ),
            Err(e) => println!("{engine:>8}: failed: {e}"),
        }
    }
}
