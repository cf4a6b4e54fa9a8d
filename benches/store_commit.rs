//! Measures state store commit throughput on both backends: commits/s for small steps and
//! links/s for 10,000-link steps. Run by hand: `cargo bench --bench store_commit`.
//! PostgreSQL is reached through `PG_TEST_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! a scratch database is created and dropped.

use std::time::Instant;

use chrono::{DateTime, Utc};
use marketo_sync::model::{Fields, Side, Value, fields_hash};
use marketo_sync::store::{Link, StateStore, StepCommit, Watermark, open};

const SMALL_COMMITS: usize = 200;
const LINKS_PER_SMALL_COMMIT: usize = 10;
const BIG_COMMITS: usize = 5;
const LINKS_PER_BIG_COMMIT: usize = 10_000;

fn link(object: &str, key: &str, now: DateTime<Utc>) -> Link {
    let mut base = Fields::new();
    base.insert("email".into(), Value::Text(format!("{key}@example.com")));
    base.insert("firstName".into(), Value::from("Ada"));
    base.insert("score".into(), Value::Int(42));
    Link {
        object: object.to_owned(),
        marketo_key: key.to_owned(),
        crm_key: format!("crm-{key}"),
        base_hash: fields_hash(&base),
        base,
        agreed_at: now,
        tombstone: None,
    }
}

fn step(object: &str, round: usize, links: usize) -> StepCommit {
    let now = Utc::now();
    StepCommit {
        watermarks: vec![Watermark {
            system: Side::Marketo,
            object: object.to_owned(),
            queue: "default".to_owned(),
            at: now,
            tie: None,
            cursor: None,
        }],
        links_upsert: (0..links)
            .map(|i| link(object, &format!("{round}-{i}"), now))
            .collect(),
        ..StepCommit::default()
    }
}

async fn run(name: &str, store: &dyn StateStore) {
    let started = Instant::now();
    for round in 0..SMALL_COMMITS {
        store
            .commit(step("small", round, LINKS_PER_SMALL_COMMIT))
            .await
            .expect("commit");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<9} small commits ({LINKS_PER_SMALL_COMMIT} links): {:>9.0} commits/s",
        SMALL_COMMITS as f64 / secs
    );

    let started = Instant::now();
    for round in 0..BIG_COMMITS {
        store
            .commit(step("big", round, LINKS_PER_BIG_COMMIT))
            .await
            .expect("commit");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<9} big commits ({LINKS_PER_BIG_COMMIT} links):   {:>9.0} links/s ({:.2} s per commit)",
        (BIG_COMMITS * LINKS_PER_BIG_COMMIT) as f64 / secs,
        secs / BIG_COMMITS as f64
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite = open(&sqlite_url).await.expect("open sqlite");
    run("sqlite", sqlite.as_ref()).await;

    let admin_url = std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("mksync_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = match sqlx::PgPool::connect(&admin_url).await {
        Ok(pool) => pool,
        Err(error) => {
            println!("postgres  skipped: cannot connect ({error})");
            return;
        }
    };
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&admin)
        .await
        .expect("create database");
    let mut url = url::Url::parse(&admin_url).expect("PG_TEST_URL");
    url.set_path(&name);
    {
        let pg = open(url.as_str()).await.expect("open postgres");
        run("postgres", pg.as_ref()).await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .expect("drop database");
}
