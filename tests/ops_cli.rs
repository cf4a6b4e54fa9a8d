//! The operator commands against a temporary SQLite store: `errors list|retry|discard`,
//! `pause`, `resume`, `status`, through the library functions and through the binary.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use marketo_sync::app::AppError;
use marketo_sync::app::ops::{self, ErrorsListArgs, PauseArgs};
use marketo_sync::store::{
    CycleCount, CycleOutcome, CycleRecord, Direction, ErrorStatus, ManualClock, StateStore,
    StepCommit, SyncError,
};
use uuid::Uuid;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("time")
}

async fn store(dir: &tempfile::TempDir) -> Arc<dyn StateStore> {
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    marketo_sync::store::open(&url).await.expect("store")
}

fn error(object: &str, key: &str, seen: &str) -> SyncError {
    SyncError {
        id: Uuid::new_v4(),
        object: object.into(),
        direction: Direction::MarketoToCrm,
        record_key: key.into(),
        other_key: None,
        payload: serde_json::json!({"email": "private@example.com"}),
        code: "1003".into(),
        message: format!("rejected {key}"),
        attempts: 3,
        first_seen_at: t(seen),
        last_seen_at: t(seen),
        next_retry_at: Some(t("2026-03-09T00:00:00Z")),
        status: ErrorStatus::Open,
    }
}

async fn seed(store: &dyn StateStore) -> Vec<Uuid> {
    let errors = vec![
        error("lead", "101", "2026-03-01T10:00:00Z"),
        error("lead", "102", "2026-03-01T11:00:00Z"),
        error("company", "C-7", "2026-03-01T12:00:00Z"),
    ];
    let ids = errors.iter().map(|e| e.id).collect();
    store
        .commit(StepCommit {
            errors_upsert: errors,
            ..StepCommit::default()
        })
        .await
        .expect("commit");
    ids
}

fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).expect("utf8")
}

#[tokio::test]
async fn errors_list_filters_and_prints_text_or_json_without_payloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let ids = seed(store.as_ref()).await;

    let mut out = Vec::new();
    let n = ops::errors_list(
        store.as_ref(),
        &ErrorsListArgs::default(),
        &plain(),
        &mut out,
    )
    .await
    .expect("list");
    let listed = text(out);
    assert_eq!(n, 3);
    for id in &ids {
        assert!(listed.contains(&id.to_string()), "{listed}");
    }
    // A header, then newest first.
    let mut lines = listed.lines();
    let header = lines.next().expect("a header");
    assert!(
        header.contains("ID") && header.contains("NEXT RETRY"),
        "{listed}"
    );
    let first = lines.next().expect("a line");
    assert!(first.contains("C-7"), "{listed}");
    assert!(first.contains("Marketo → CRM"), "{listed}");
    assert!(
        !listed.contains('\u{1b}'),
        "no colour in plain output: {listed}"
    );
    assert!(!listed.contains("private@example.com"), "payloads stay out");

    let mut out = Vec::new();
    let args = ErrorsListArgs {
        object: Some("lead".into()),
        limit: 1,
        json: true,
        ..ErrorsListArgs::default()
    };
    assert_eq!(
        ops::errors_list(store.as_ref(), &args, &plain(), &mut out)
            .await
            .expect("list"),
        1
    );
    let list: serde_json::Value = serde_json::from_slice(&out).expect("one JSON document");
    let list = list.as_array().expect("a JSON array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["record_key"], "102");
    assert_eq!(list[0]["status"], "open");
    assert!(list[0].get("payload").is_none());

    let mut out = Vec::new();
    let args = ErrorsListArgs {
        status: Some(ErrorStatus::Discarded),
        ..ErrorsListArgs::default()
    };
    assert_eq!(
        ops::errors_list(store.as_ref(), &args, &plain(), &mut out)
            .await
            .expect("list"),
        0
    );
    assert!(text(out).contains("no discarded sync errors"));

    // JSON is always one valid document: `[]` when nothing matches.
    let mut out = Vec::new();
    let args = ErrorsListArgs {
        status: Some(ErrorStatus::Resolved),
        json: true,
        ..ErrorsListArgs::default()
    };
    ops::errors_list(store.as_ref(), &args, &plain(), &mut out)
        .await
        .expect("list");
    assert_eq!(text(out).trim(), "[]");
}

fn plain() -> ops::Render {
    ops::Render::plain(Utc::now())
}

#[tokio::test]
async fn errors_retry_and_discard_change_the_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let ids = seed(store.as_ref()).await;
    let now = t("2026-03-02T08:00:00Z");

    ops::errors_retry(store.as_ref(), ids[0], now)
        .await
        .expect("retry");
    let retried = store.error(ids[0]).await.expect("read").expect("exists");
    assert_eq!(retried.next_retry_at, Some(now));
    assert_eq!(retried.status, ErrorStatus::Open);
    assert_eq!(store.errors_due(now, 10).await.expect("due").len(), 1);

    ops::errors_discard(store.as_ref(), ids[1])
        .await
        .expect("discard");
    let discarded = store.error(ids[1]).await.expect("read").expect("exists");
    assert_eq!(discarded.status, ErrorStatus::Discarded);
    assert_eq!(discarded.next_retry_at, None);

    // --all: every open error not yet due becomes due now (ids[0] already was).
    let n = ops::errors_retry_all(store.as_ref(), now)
        .await
        .expect("retry all");
    assert_eq!(n, 1);
    let due: Vec<Uuid> = store
        .errors_due(now, 10)
        .await
        .expect("due")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(due.len(), 2);
    assert!(!due.contains(&ids[1]), "a discarded error stays discarded");

    let unknown = Uuid::new_v4();
    match ops::errors_retry(store.as_ref(), unknown, now).await {
        Err(AppError::NoSuchError { id }) => assert_eq!(id, unknown.to_string()),
        other => panic!("expected NoSuchError, got {other:?}"),
    }
    assert!(matches!(
        ops::errors_discard(store.as_ref(), unknown).await,
        Err(AppError::NoSuchError { .. })
    ));
    let bad = ops::parse_error_id("12").expect_err("not a uuid");
    assert!(bad.to_string().contains("\"12\""), "{bad}");
    let bad = ops::parse_error_status("closed").expect_err("bad status");
    assert!(
        bad.to_string().contains("open, discarded, resolved"),
        "{bad}"
    );
}

#[tokio::test]
async fn pause_and_resume_persist_in_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let now = Utc::now();

    let state = ops::pause(
        store.as_ref(),
        &PauseArgs {
            reason: Some("CRM upgrade".into()),
            until: None,
        },
        now,
    )
    .await
    .expect("pause");
    assert_eq!(state.reason, "CRM upgrade");
    // Another process (another store handle) sees it.
    let other = crate::store(&dir).await;
    let seen = other.pause_state().await.expect("read").expect("paused");
    assert_eq!(seen.reason, "CRM upgrade");
    assert_eq!(seen.until, None);

    assert!(ops::resume(other.as_ref()).await.expect("resume"));
    assert_eq!(store.pause_state().await.expect("read"), None);
    assert!(!ops::resume(store.as_ref()).await.expect("resume again"));

    let past = ops::pause(
        store.as_ref(),
        &PauseArgs {
            reason: None,
            until: Some(now - Duration::minutes(1)),
        },
        now,
    )
    .await
    .expect_err("an end in the past is refused");
    assert!(past.to_string().contains("--until"), "{past}");
    let bad = ops::parse_until("tomorrow").expect_err("not rfc3339");
    assert!(bad.to_string().contains("RFC 3339"), "{bad}");
    let until = ops::parse_until("2030-01-31T18:00:00+01:00").expect("rfc3339");
    assert_eq!(until, t("2030-01-31T17:00:00Z"));
}

#[tokio::test]
async fn a_pause_with_an_end_is_over_at_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(t("2026-03-02T08:00:00Z")));
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let options = marketo_sync::store::OpenOptions {
        clock: clock.clone(),
        ..marketo_sync::store::OpenOptions::default()
    };
    let store = marketo_sync::store::open_with(&url, options)
        .await
        .expect("store");
    let until = t("2026-03-02T09:00:00Z");
    ops::pause(
        store.as_ref(),
        &PauseArgs {
            reason: Some("quota".into()),
            until: Some(until),
        },
        clock.now_utc(),
    )
    .await
    .expect("pause");
    assert!(store.pause_state().await.expect("read").is_some());
    clock.set(until);
    assert_eq!(store.pause_state().await.expect("read"), None);
}

trait NowUtc {
    fn now_utc(&self) -> DateTime<Utc>;
}

impl NowUtc for ManualClock {
    fn now_utc(&self) -> DateTime<Utc> {
        marketo_sync::store::Clock::now(self)
    }
}

#[tokio::test]
async fn status_prints_lease_pause_cycles_quota_and_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    seed(store.as_ref()).await;
    store
        .try_acquire_lease(
            "123-ABC-456",
            "host-1-abc",
            std::time::Duration::from_secs(600),
        )
        .await
        .expect("lease");
    store.pause("CRM upgrade", None).await.expect("pause");
    let ended = Utc::now() - Duration::minutes(3);
    let cycle = CycleRecord {
        id: Uuid::new_v4(),
        started_at: ended - Duration::seconds(60),
        ended_at: Some(ended),
        outcome: CycleOutcome::Partial,
        steps: Vec::new(),
        counts: vec![CycleCount {
            object: "lead".into(),
            direction: Some(Direction::MarketoToCrm),
            read: 10,
            created: 4,
            updated: 3,
            deleted: 0,
            conflicts: 1,
            skipped: 2,
            failed: 1,
        }],
        api_calls: 17,
        message: None,
    };
    store.record_cycle(&cycle).await.expect("cycle");
    let day = marketo_sync::store::marketo_day(Utc::now());
    store.add_api_usage(day, 1234, 5678).await.expect("usage");
    let clock: Arc<dyn marketo_sync::store::Clock> = Arc::new(marketo_sync::store::SystemClock);

    let facts = ops::status_facts(store.clone(), "123-ABC-456", 10_000, 500 << 20, clock)
        .await
        .expect("facts");
    let mut out = Vec::new();
    let render = ops::Render::plain(facts.report.generated_at);
    ops::write_status_with(&facts, false, &render, &mut out).expect("write");
    let printed = text(out);
    for expected in [
        "123-ABC-456",
        "held by host-1-abc",
        "yes, by an operator: CRM upgrade (until `marketo-sync resume`",
        // Human units: thousands, percent, bytes in KiB/MiB; not raw byte counts.
        "1,234 of 10,000 (12%), 8,766 left",
        "5.54 KiB of 500.00 MiB (0%)",
        "rejected 101",
        // Short cycle ids and relative times, not UUIDs and nanosecond RFC 3339.
        &format!(" {} ", &cycle.id.to_string()[..8]),
        "partial",
        "4 minutes ago",
        "3 minutes ago",
    ] {
        assert!(
            printed.contains(expected),
            "missing {expected:?} in:\n{printed}"
        );
    }
    assert!(!printed.contains(&cycle.id.to_string()), "{printed}");
    assert!(
        !printed.contains("5678"),
        "bytes are shown in KiB: {printed}"
    );
    let cycles_header = printed
        .lines()
        .find(|l| l.contains("OUTCOME"))
        .expect("a cycles table");
    for column in ["CYCLE", "STARTED", "TOOK", "CALLS", "WRITTEN", "FAILED"] {
        assert!(cycles_header.contains(column), "{cycles_header}");
    }
    let row = printed
        .lines()
        .find(|l| l.contains("partial"))
        .expect("the cycle's row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cells.ends_with(&["17", "7", "1"]),
        "calls, written, failed: {row}"
    );

    let mut out = Vec::new();
    ops::write_status_with(&facts, true, &render, &mut out).expect("write");
    let json: serde_json::Value = serde_json::from_slice(&out).expect("json");
    // JSON carries the exact values, in the same words as the text.
    assert_eq!(json["instance"], "123-ABC-456");
    assert_eq!(json["quota"]["calls_today"], 1234);
    assert_eq!(json["quota"]["bulk_bytes_today"], 5678);
    assert_eq!(json["lease"]["state"], "held");
    assert_eq!(json["lease"]["holder"], "host-1-abc");
    assert_eq!(json["paused"]["kind"], "operator");
    assert_eq!(json["paused"]["reason"], "CRM upgrade");
    assert_eq!(json["recent_cycles"][0]["id"], cycle.id.to_string());
    let lead = &json["objects"][0];
    assert_eq!(lead["object"], "lead");
    assert_eq!(lead["marketo_to_crm"]["created"], 4);
    let lag = lead["lag_seconds"].as_u64().expect("lag");
    assert!((180..300).contains(&lag), "lag {lag}");

    // A lease that expired is "free" in both.
    store.resume().await.expect("resume");
    let facts = ops::status_facts(
        store.clone(),
        "no-such-instance",
        10_000,
        500 << 20,
        Arc::new(marketo_sync::store::SystemClock),
    )
    .await
    .expect("facts");
    let mut out = Vec::new();
    ops::write_status_with(&facts, false, &render, &mut out).expect("write");
    let printed = text(out);
    assert!(
        printed.contains("free (no process runs cycles)"),
        "{printed}"
    );
    assert!(
        printed
            .lines()
            .any(|l| l.split_whitespace().eq(["paused", "no"])),
        "{printed}"
    );
    let mut out = Vec::new();
    ops::write_status_with(&facts, true, &render, &mut out).expect("write");
    let json: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(json["lease"]["state"], "free");
    assert_eq!(json["paused"], serde_json::Value::Null);
}

const DEFAULT_TOML: &str = r#"
[marketo]
munchkin_id = "123-ABC-456"
client_id = "client"

[crm]
adapter = "sql"
url = "sqlite://crm.db"
[crm.options.objects.contacts]
table = "Contacts"

[sync]
objects = ["leads"]
"#;

const LEADS_TOML: &str = r#"
marketo_object = "lead"
crm_object = "contacts"
[keys]
marketo_crm_key = "crmContactId"
crm_marketo_id = "marketo_lead_id"
[[fields]]
marketo = "email"
crm = "email"
"#;

fn write(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, body).expect("write");
}

fn cli(config: &Path, store_url: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("MKSYNC__MARKETO__CLIENT_SECRET", "cli-client-secret")
        .env("MKSYNC__STORE__URL", store_url)
        .env_remove("MKSYNC_ENV")
        .output()
        .expect("run the binary");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_binary_pauses_resumes_and_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "default.toml", DEFAULT_TOML);
    write(dir.path(), "mappings/leads.toml", LEADS_TOML);
    let url = format!("sqlite://{}", dir.path().join("state.db").display());

    let (ok, out, err) = cli(dir.path(), &url, &["pause", "--reason", "CRM upgrade"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("paused until `marketo-sync resume`: CRM upgrade"),
        "{out}"
    );
    let (ok, out, err) = cli(dir.path(), &url, &["status"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("paused: yes, CRM upgrade"), "{out}");
    assert!(out.contains("lease: free"), "{out}");
    assert!(!out.contains("cli-client-secret") && !err.contains("cli-client-secret"));
    let (ok, out, _) = cli(dir.path(), &url, &["resume"]);
    assert!(ok);
    assert!(out.contains("resumed"), "{out}");
    let (ok, out, _) = cli(dir.path(), &url, &["errors", "list"]);
    assert!(ok);
    assert!(out.contains("no sync errors"), "{out}");
    let (ok, _, err) = cli(dir.path(), &url, &["errors", "discard", "not-an-id"]);
    assert!(!ok);
    assert!(err.contains("not a sync error id"), "{err}");
    let (ok, _, err) = cli(dir.path(), &url, &["pause", "--until", "soon"]);
    assert!(!ok);
    assert!(err.contains("RFC 3339"), "{err}");

    for command in [
        vec!["run", "--help"],
        vec!["status", "--help"],
        vec!["errors", "list", "--help"],
        vec!["errors", "retry", "--help"],
        vec!["errors", "discard", "--help"],
        vec!["pause", "--help"],
        vec!["resume", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
            .args(&command)
            .output()
            .expect("help");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command:?}");
        assert!(help.contains("--config"), "{command:?}: {help}");
    }
}

#[tokio::test]
async fn pause_and_resume_work_on_postgres_too() {
    let admin_url = std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("mksync_ops_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url)
        .await
        .expect("connect admin");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&admin)
        .await
        .expect("create database");
    let mut url = url::Url::parse(&admin_url).expect("PG_TEST_URL");
    url.set_path(&name);
    let clock = Arc::new(ManualClock::new(t("2026-03-02T08:00:00Z")));
    let options = marketo_sync::store::OpenOptions {
        clock: clock.clone(),
        ..marketo_sync::store::OpenOptions::default()
    };
    let store = marketo_sync::store::open_with(url.as_str(), options)
        .await
        .expect("open postgres");
    assert_eq!(store.backend(), "postgres");

    assert_eq!(store.pause_state().await.expect("read"), None);
    ops::pause(
        store.as_ref(),
        &PauseArgs {
            reason: Some("first".into()),
            until: None,
        },
        clock.now_utc(),
    )
    .await
    .expect("pause");
    // A second pause replaces the first.
    let until = t("2026-03-02T10:00:00Z");
    ops::pause(
        store.as_ref(),
        &PauseArgs {
            reason: Some("second".into()),
            until: Some(until),
        },
        clock.now_utc(),
    )
    .await
    .expect("pause again");
    let state = store.pause_state().await.expect("read").expect("paused");
    assert_eq!(state.reason, "second");
    assert_eq!(state.until, Some(until));
    assert_eq!(state.paused_at, t("2026-03-02T08:00:00Z"));
    clock.set(until);
    assert_eq!(
        store.pause_state().await.expect("read"),
        None,
        "over at its end"
    );
    assert!(ops::resume(store.as_ref()).await.expect("resume"));
    assert!(!ops::resume(store.as_ref()).await.expect("resume again"));

    drop(store);
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&admin)
        .await
        .expect("drop database");
    admin.close().await;
}
