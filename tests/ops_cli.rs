//! The operator commands against a temporary SQLite store: `errors list|retry|discard`,
//! `pause`, `resume`, `status`, through the library functions and through the binary.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use marketo_sync::app::AppError;
use marketo_sync::app::ops::{self, ErrorsListArgs, PauseArgs};
use marketo_sync::model::{Side, Value};
use marketo_sync::store::{
    Conflict, ConflictFilter, CycleCount, CycleOutcome, CycleRecord, Direction, ErrorStatus,
    ManualClock, PauseKind, StateStore, StepCommit, SyncError,
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
    let failed = CycleRecord {
        id: Uuid::new_v4(),
        started_at: ended - Duration::seconds(600),
        ended_at: Some(ended - Duration::seconds(590)),
        outcome: CycleOutcome::Failed,
        steps: Vec::new(),
        counts: Vec::new(),
        api_calls: 2,
        message: Some("CRM unreachable: connection refused".into()),
    };
    store.record_cycle(&failed).await.expect("failed cycle");
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
    // A failed cycle says why, in the text as in the JSON.
    let reason = printed
        .lines()
        .find(|l| l.contains("CRM unreachable: connection refused"))
        .expect("the failed cycle's reason");
    assert!(reason.contains(&failed.id.to_string()[..8]), "{reason}");
    let objects_header = printed
        .lines()
        .find(|l| l.contains("LINKED"))
        .expect("an objects table");
    for column in [
        "PENDING M→C",
        "PENDING C→M",
        "NEEDS OPERATOR",
        "LAST HOUR",
        "LAG",
    ] {
        assert!(objects_header.contains(column), "{objects_header}");
    }
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
    let objects = json["objects"].as_array().expect("objects");
    let lead = objects
        .iter()
        .find(|o| o["object"] == "lead")
        .expect("lead");
    assert_eq!(lead["marketo_to_crm"]["created"], 4);
    // Lag is the age of the oldest change not yet synced: the pending entry of 2026-03-01.
    let lag = lead["lag_seconds"].as_u64().expect("lag");
    let oldest =
        u64::try_from((Utc::now() - t("2026-03-01T10:00:00Z")).num_seconds()).expect("age");
    assert!(
        lag.abs_diff(oldest) <= 60,
        "lag {lag}, oldest change {oldest}"
    );
    assert_eq!(lead["backlog_marketo_to_crm"]["pending"], 2);
    // The charts' series run oldest first: the failed cycle, then the partial one.
    assert_eq!(json["calls_per_cycle"][0]["calls"], 2);
    assert_eq!(json["calls_per_cycle"][1]["calls"], 17);
    assert_eq!(json["records_over_time"][1]["marketo_to_crm"], 7);
    assert_eq!(
        json["failed_cycles"][0]["message"],
        "CRM unreachable: connection refused"
    );

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

/// A finished run of the binary.
struct Ran {
    code: Option<i32>,
    out: String,
    err: String,
}

fn binary(config: &Path, store_url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_marketo-sync"));
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .env("MKSYNC__MARKETO__CLIENT_SECRET", "cli-client-secret")
        .env("MKSYNC__STORE__URL", store_url)
        .env_remove("MKSYNC_ENV")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR");
    command
}

fn run(mut command: Command) -> Ran {
    let output = command.output().expect("run the binary");
    Ran {
        code: output.status.code(),
        out: String::from_utf8_lossy(&output.stdout).into_owned(),
        err: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn cli(config: &Path, store_url: &str, args: &[&str]) -> (bool, String, String) {
    let ran = run(binary(config, store_url, args));
    (ran.code == Some(0), ran.out, ran.err)
}

/// A config directory (no CRM or Marketo reachable) and its SQLite store.
fn config_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "default.toml", DEFAULT_TOML);
    write(dir.path(), "mappings/leads.toml", LEADS_TOML);
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    (dir, url)
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
    assert!(out.contains("yes, by an operator: CRM upgrade"), "{out}");
    assert!(out.contains("free (no process runs cycles)"), "{out}");
    assert!(!out.contains("cli-client-secret") && !err.contains("cli-client-secret"));
    let (ok, out, _) = cli(dir.path(), &url, &["resume"]);
    assert!(ok);
    assert!(
        out.contains("resumed: ended the pause (CRM upgrade)"),
        "{out}"
    );
    let (ok, out, _) = cli(dir.path(), &url, &["resume"]);
    assert!(ok);
    assert!(out.contains("was not paused"), "{out}");
    let (ok, out, _) = cli(dir.path(), &url, &["errors", "list"]);
    assert!(ok);
    assert!(out.contains("no open sync errors"), "{out}");
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
        vec!["conflicts", "list", "--help"],
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

    // The quota pause: stored with its kind, never over an operator's pause in force, but over
    // one that has ended.
    let day_turn = t("2026-03-03T06:00:00Z");
    let quota = store
        .pause_for_quota("607", day_turn)
        .await
        .expect("quota")
        .expect("stored");
    assert_eq!(quota.kind, PauseKind::Quota);
    let read = store.pause_state().await.expect("read").expect("paused");
    assert_eq!((read.kind, read.until), (PauseKind::Quota, Some(day_turn)));
    store.pause("maintenance", None).await.expect("pause");
    assert_eq!(
        store.pause_for_quota("607", day_turn).await.expect("quota"),
        None
    );
    assert_eq!(
        store.pause_state().await.expect("read").map(|p| p.kind),
        Some(PauseKind::Operator)
    );
    store
        .pause("short", Some(t("2026-03-02T11:00:00Z")))
        .await
        .expect("pause");
    clock.set(t("2026-03-02T12:00:00Z"));
    let replaced = store.pause_for_quota("607", day_turn).await.expect("quota");
    assert_eq!(
        replaced.map(|p| p.kind),
        Some(PauseKind::Quota),
        "an ended pause gives way"
    );
    assert!(ops::resume(store.as_ref()).await.expect("resume"));

    drop(store);
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&admin)
        .await
        .expect("drop database");
    admin.close().await;
}

#[tokio::test]
async fn usage_errors_exit_2_and_json_lists_are_always_one_document() {
    let (dir, url) = config_dir();
    for (args, expected) in [
        (
            vec!["errors", "list", "--status", "bogus"],
            "open, discarded, resolved",
        ),
        (vec!["errors", "list", "--limit", "0"], "--limit"),
        (
            vec!["errors", "discard", "not-an-id"],
            "not a sync error id",
        ),
        (vec!["errors", "retry", "12"], "not a sync error id"),
        (
            vec!["conflicts", "list", "--winner", "nobody"],
            "marketo, crm",
        ),
        (vec!["conflicts", "list", "--since", "last tuesday"], "24h"),
        (vec!["pause", "--until", "soon"], "RFC 3339"),
        (
            vec!["pause", "--until", "2001-01-01T00:00:00Z"],
            "not in the future",
        ),
        (
            vec!["status", "--color", "sometimes"],
            "auto, always, never",
        ),
    ] {
        let ran = run(binary(dir.path(), &url, &args));
        assert_eq!(ran.code, Some(2), "{args:?}: {}{}", ran.out, ran.err);
        assert!(ran.err.contains(expected), "{args:?}: {}", ran.err);
    }
    for args in [
        vec!["errors", "list", "--json"],
        vec!["errors", "list", "--json", "--status", "resolved"],
        vec!["conflicts", "list", "--json"],
        vec![
            "conflicts",
            "list",
            "--json",
            "--winner",
            "crm",
            "--since",
            "24h",
        ],
    ] {
        let ran = run(binary(dir.path(), &url, &args));
        assert_eq!(ran.code, Some(0), "{args:?}: {}", ran.err);
        let json: serde_json::Value = serde_json::from_str(&ran.out).expect("valid JSON");
        assert_eq!(json, serde_json::json!([]), "{args:?}");
    }
    let ran = run(binary(dir.path(), &url, &["conflicts", "list"]));
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    assert_eq!(ran.out.trim(), "no conflicts");
}

fn conflict(field: &str, winner: Side, at: &str) -> Conflict {
    Conflict {
        id: 0,
        object: "leads".into(),
        marketo_key: "4711".into(),
        crm_key: "C-9".into(),
        field: field.into(),
        marketo_value: Value::from("marketo@example.com"),
        crm_value: Value::from("crm@example.com"),
        base_value: Some(Value::from("before@example.com")),
        winner,
        policy: "newest_wins".into(),
        at: t(at),
    }
}

#[tokio::test]
async fn conflicts_list_shows_both_values_the_winner_and_filters() {
    let (dir, url) = config_dir();
    let store = marketo_sync::store::open(&url).await.expect("store");
    store
        .commit(StepCommit {
            conflicts: vec![
                conflict("email", Side::Crm, "2026-03-01T10:00:00Z"),
                conflict("phone", Side::Marketo, "2026-03-02T10:00:00Z"),
            ],
            ..StepCommit::default()
        })
        .await
        .expect("commit");
    let now = t("2026-03-02T12:00:00Z");
    let mut out = Vec::new();
    let n = ops::conflicts_list(
        store.as_ref(),
        &ConflictFilter::default(),
        false,
        &ops::Render::plain(now),
        &mut out,
    )
    .await
    .expect("list");
    assert_eq!(n, 2);
    let printed = text(out);
    let mut lines = printed.lines();
    let header = lines.next().expect("header");
    for column in [
        "WHEN", "FIELD", "BEFORE", "MARKETO", "CRM", "WINNER", "POLICY",
    ] {
        assert!(header.contains(column), "{printed}");
    }
    let newest = lines.next().expect("a row");
    assert!(
        newest.contains("2 hours ago") && newest.contains("phone"),
        "{printed}"
    );
    for value in [
        "before@example.com",
        "marketo@example.com",
        "crm@example.com",
        "newest_wins",
    ] {
        assert!(newest.contains(value), "{value}: {printed}");
    }

    // The binary: filters and exact JSON values.
    let ran = run(binary(
        dir.path(),
        &url,
        &[
            "conflicts",
            "list",
            "--json",
            "--winner",
            "crm",
            "--field",
            "email",
        ],
    ));
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    let json: serde_json::Value = serde_json::from_str(&ran.out).expect("json");
    let list = json.as_array().expect("array");
    assert_eq!(list.len(), 1, "{json}");
    assert_eq!(list[0]["field"], "email");
    assert_eq!(list[0]["winner"], "crm");
    assert_eq!(list[0]["marketo_value"], "marketo@example.com");
    assert_eq!(list[0]["crm_value"], "crm@example.com");
    assert_eq!(list[0]["base_value"], "before@example.com");
    assert_eq!(list[0]["at"], "2026-03-01T10:00:00Z");
    let ran = run(binary(
        dir.path(),
        &url,
        &[
            "conflicts",
            "list",
            "--json",
            "--since",
            "2026-03-02",
            "--limit",
            "5",
        ],
    ));
    let json: serde_json::Value = serde_json::from_str(&ran.out).expect("json");
    assert_eq!(json.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json[0]["field"], "phone");
    // An age counts back from now: both are older than a day.
    let ran = run(binary(
        dir.path(),
        &url,
        &["conflicts", "list", "--since", "24h"],
    ));
    assert_eq!(ran.out.trim(), "no conflicts", "{}", ran.err);
    let since = ops::parse_since("24h", now).expect("age");
    assert_eq!(since, t("2026-03-01T12:00:00Z"));
    assert_eq!(
        ops::parse_since("2026-03-01T10:00:00+01:00", now).expect("rfc3339"),
        t("2026-03-01T09:00:00Z")
    );
}

#[tokio::test]
async fn colour_follows_no_color_clicolor_force_and_the_flag() {
    let (dir, url) = config_dir();
    let colours = |envs: &[(&str, &str)], extra: &[&str]| -> bool {
        let mut args = vec!["status"];
        args.extend_from_slice(extra);
        let mut command = binary(dir.path(), &url, &args);
        command.envs(envs.iter().copied());
        let ran = run(command);
        assert_eq!(ran.code, Some(0), "{}", ran.err);
        ran.out.contains('\u{1b}')
    };
    // Standard output is a pipe here: no colour by default.
    assert!(!colours(&[], &[]));
    assert!(colours(&[("CLICOLOR_FORCE", "1")], &[]));
    assert!(!colours(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")], &[]));
    assert!(colours(&[("NO_COLOR", "1")], &["--color", "always"]));
    assert!(!colours(&[("CLICOLOR_FORCE", "1")], &["--color", "never"]));
}

#[tokio::test]
async fn piping_into_a_reader_that_stops_early_exits_quietly() {
    let (dir, url) = config_dir();
    let store = marketo_sync::store::open(&url).await.expect("store");
    // Far more output than a pipe buffers (64 KiB), so the writer meets the closed pipe.
    let errors: Vec<SyncError> = (0..3000)
        .map(|i| {
            let mut e = error("lead", &format!("{i:05}"), "2026-03-01T10:00:00Z");
            e.message =
                format!("rejected record {i:05} with a long enough explanation to fill lines");
            e
        })
        .collect();
    store
        .commit(StepCommit {
            errors_upsert: errors,
            ..StepCommit::default()
        })
        .await
        .expect("commit");
    for args in [
        vec!["errors", "list", "--limit", "5000"],
        vec!["errors", "list", "--limit", "5000", "--json"],
    ] {
        let mut child = binary(dir.path(), &url, &args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = std::io::BufReader::new(stdout);
        let mut first = String::new();
        std::io::BufRead::read_line(&mut reader, &mut first).expect("read a line");
        assert!(!first.is_empty());
        drop(reader); // like `head -1`: the reader goes away
        let output = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.to_lowercase().contains("broken pipe"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn sync_once_and_bootstrap_refuse_while_paused_or_leased() {
    let (dir, url) = config_dir();
    let store = marketo_sync::store::open(&url).await.expect("store");
    store.pause("CRM upgrade", None).await.expect("pause");
    for args in [vec!["sync", "--once"], vec!["bootstrap"]] {
        let ran = run(binary(dir.path(), &url, &args));
        assert_eq!(ran.code, Some(3), "{args:?}: {}{}", ran.out, ran.err);
        assert!(
            ran.err
                .contains("refused: sync is paused by an operator: CRM upgrade"),
            "{}",
            ran.err
        );
        assert!(
            ran.err.contains("marketo-sync resume") && ran.err.contains("--force"),
            "{}",
            ran.err
        );
    }
    store.resume().await.expect("resume");
    // A daemon holds the lease: refused, even with --force.
    assert!(
        store
            .try_acquire_lease(
                "123-ABC-456",
                "daemon-host-1",
                std::time::Duration::from_secs(600)
            )
            .await
            .expect("lease")
    );
    for args in [
        vec!["sync", "--once"],
        vec!["sync", "--once", "--force"],
        vec!["bootstrap", "--force"],
    ] {
        let ran = run(binary(dir.path(), &url, &args));
        assert_eq!(ran.code, Some(3), "{args:?}: {}{}", ran.out, ran.err);
        assert!(
            ran.err
                .contains("holds the sync lease of 123-ABC-456: daemon-host-1"),
            "{}",
            ran.err
        );
        assert!(
            ran.err.contains("--force does not override the lease"),
            "{}",
            ran.err
        );
    }
    let lease = store
        .lease("123-ABC-456")
        .await
        .expect("read")
        .expect("lease");
    assert_eq!(
        lease.holder, "daemon-host-1",
        "the refused runs left the lease alone"
    );
}

#[tokio::test]
async fn a_claimed_run_holds_the_lease_until_released() {
    let (_dir, url) = config_dir();
    let store = marketo_sync::store::open(&url).await.expect("store");
    let ttl = std::time::Duration::from_secs(60);
    let request = ops::RunRequest {
        kind: ops::RunKind::SyncOnce,
        dry_run: false,
        force: false,
    };
    let mut notes = Vec::new();
    let claim = ops::claim_run_on(store.clone(), "i-1", "once-1", request, ttl, &mut notes)
        .await
        .expect("claim");
    assert_eq!(claim.holder(), Some("once-1"));
    assert!(
        !store
            .try_acquire_lease("i-1", "daemon", ttl)
            .await
            .expect("try"),
        "a daemon starting meanwhile waits"
    );
    let second = ops::claim_run_on(store.clone(), "i-1", "once-2", request, ttl, &mut notes)
        .await
        .expect_err("a second run is refused");
    assert!(matches!(second, AppError::Refused { .. }), "{second}");
    assert!(claim.release().await.expect("release"));
    assert!(
        store
            .try_acquire_lease("i-1", "daemon", ttl)
            .await
            .expect("try")
    );

    // A dry run takes no lease and runs while leased and paused, saying so.
    store.pause("maintenance", None).await.expect("pause");
    let dry = ops::RunRequest {
        dry_run: true,
        ..request
    };
    let claim = ops::claim_run_on(store.clone(), "i-1", "once-3", dry, ttl, &mut notes)
        .await
        .expect("a dry run runs");
    assert_eq!(claim.holder(), None);
    let said = text(notes);
    assert!(
        said.contains("sync is paused by an operator: maintenance"),
        "{said}"
    );
    assert!(
        said.contains("daemon holds the sync lease of i-1"),
        "{said}"
    );
    assert!(said.contains("a dry run writes nothing"), "{said}");
    // --force overrides the pause (not the lease: the daemon still holds it).
    let forced = ops::RunRequest {
        force: true,
        ..request
    };
    let refused = ops::claim_run_on(store.clone(), "i-1", "once-4", forced, ttl, &mut Vec::new())
        .await
        .expect_err("leased");
    assert!(
        refused.to_string().contains("holds the sync lease"),
        "{refused}"
    );
    store.release_lease("i-1", "daemon").await.expect("release");
    let mut notes = Vec::new();
    let claim = ops::claim_run_on(store.clone(), "i-1", "once-4", forced, ttl, &mut notes)
        .await
        .expect("forced past the pause");
    assert!(text(notes).contains("running anyway (--force)"));
    claim.release().await.expect("release");
}

#[tokio::test]
async fn the_quota_pause_is_stored_shown_resumable_and_yields_to_an_operator() {
    let (dir, url) = config_dir();
    let store = marketo_sync::store::open(&url).await.expect("store");
    let until = Utc::now() + Duration::hours(6);
    let stored = store
        .pause_for_quota("Marketo daily API quota reached (607)", until)
        .await
        .expect("pause")
        .expect("stored");
    assert_eq!(stored.kind, PauseKind::Quota);
    let (ok, out, err) = cli(dir.path(), &url, &["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("yes, by Marketo's daily quota: Marketo daily API quota reached (607)"),
        "{out}"
    );
    assert!(out.contains("in 6 hours"), "{out}");
    let (ok, out, _) = cli(dir.path(), &url, &["status", "--json"]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["paused"]["kind"], "quota");
    let ran = run(binary(dir.path(), &url, &["sync", "--once"]));
    assert_eq!(ran.code, Some(3), "{}", ran.err);
    assert!(
        ran.err.contains("paused by Marketo's daily quota"),
        "{}",
        ran.err
    );
    let (ok, out, _) = cli(dir.path(), &url, &["resume"]);
    assert!(ok);
    assert!(
        out.contains("resumed: ended the Marketo quota pause"),
        "{out}"
    );
    assert_eq!(store.pause_state().await.expect("read"), None);

    // An operator's pause outranks a quota pause; a quota pause gives way to an operator's.
    store.pause("maintenance", None).await.expect("pause");
    assert_eq!(
        store.pause_for_quota("607", until).await.expect("quota"),
        None
    );
    let kept = store.pause_state().await.expect("read").expect("paused");
    assert_eq!(
        (kept.kind, kept.reason.as_str()),
        (PauseKind::Operator, "maintenance")
    );
    store.resume().await.expect("resume");
    store
        .pause_for_quota("607", until)
        .await
        .expect("quota")
        .expect("stored");
    store.pause("maintenance", None).await.expect("pause");
    let kept = store.pause_state().await.expect("read").expect("paused");
    assert_eq!(kept.kind, PauseKind::Operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_forced_through_a_pause_writes_and_gives_the_lease_back() {
    use marketo_sync::sim::{SimConfig, Simulator, demo_crm};
    let sim = Simulator::start(SimConfig {
        leads: 3,
        client_id: "demo-client".into(),
        client_secret: secrecy::SecretString::from("demo-client-secret"),
        export_delay: std::time::Duration::ZERO,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let crm_url = format!("sqlite://{}", dir.path().join("crm.db").display());
    demo_crm::install(&crm_url, 3, 4).await.expect("crm");
    let store_url = format!("sqlite://{}", dir.path().join("state.db").display());
    let store = marketo_sync::store::open(&store_url).await.expect("store");
    store.pause("maintenance", None).await.expect("pause");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let base_url = sim.base_url();
    let once = move |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_marketo-sync"));
        command
            .args(["sync", "--once", "--env", "demo"])
            .args(extra)
            .arg("--config")
            .arg(&config)
            .env("MKSYNC__MARKETO__BASE_URL", &base_url)
            .env("MKSYNC__CRM__URL", &crm_url)
            .env("MKSYNC__STORE__URL", &store_url)
            .env_remove("MKSYNC_ENV");
        command
    };
    let in_thread = |command: Command| async move {
        tokio::task::spawn_blocking(move || run(command))
            .await
            .expect("join")
    };
    let leads_before = sim.counters().leads;

    let ran = in_thread(once(&[])).await;
    assert_eq!(ran.code, Some(3), "{}", ran.err);
    assert_eq!(
        sim.counters().leads,
        leads_before,
        "refused: nothing written"
    );

    let ran = in_thread(once(&["--dry-run"])).await;
    assert_ne!(
        ran.code,
        Some(3),
        "a dry run runs while paused: {}",
        ran.err
    );
    assert!(ran.err.contains("a dry run writes nothing"), "{}", ran.err);
    assert_eq!(
        sim.counters().leads,
        leads_before,
        "the dry run wrote nothing"
    );

    let ran = in_thread(once(&["--force", "--json"])).await;
    assert!(ran.err.contains("running anyway (--force)"), "{}", ran.err);
    assert!(matches!(ran.code, Some(0 | 4)), "{}{}", ran.out, ran.err);
    let summary: serde_json::Value = serde_json::from_str(&ran.out).expect("summary JSON");
    assert!(summary["objects"]["leads"].is_object(), "{summary}");
    assert!(
        sim.counters().leads > leads_before,
        "the forced run wrote to Marketo"
    );

    // The run held the lease of the instance and gave it back at its end.
    let url = url::Url::parse(&sim.base_url()).expect("url");
    let instance = format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().expect("port")
    );
    assert_eq!(store.lease(&instance).await.expect("read"), None);
    assert!(
        store.pause_state().await.expect("read").is_some(),
        "--force leaves the pause"
    );
    // ... the same lease a daemon takes: while one holds it, even --force is refused.
    let ttl = std::time::Duration::from_secs(600);
    assert!(
        store
            .try_acquire_lease(&instance, "daemon-1", ttl)
            .await
            .expect("take")
    );
    let leads = sim.counters().leads;
    let ran = in_thread(once(&["--force"])).await;
    assert_eq!(ran.code, Some(3), "{}", ran.err);
    assert!(
        ran.err
            .contains(&format!("holds the sync lease of {instance}: daemon-1")),
        "{}",
        ran.err
    );
    assert_eq!(sim.counters().leads, leads);

    // Marketo's daily quota runs out during a run: it exits 3 and the pause is stored, so
    // `status` shows it and a daemon waits for the Marketo day to turn.
    assert!(
        store
            .release_lease(&instance, "daemon-1")
            .await
            .expect("release")
    );
    assert!(store.resume().await.expect("resume"));
    sim.spend_daily_quota();
    let ran = in_thread(once(&[])).await;
    assert_eq!(ran.code, Some(3), "{}{}", ran.out, ran.err);
    let pause = store
        .pause_state()
        .await
        .expect("read")
        .expect("the quota pause is stored");
    assert_eq!(pause.kind, marketo_sync::store::PauseKind::Quota);
    assert!(pause.until.is_some_and(|u| u > Utc::now()), "{pause:?}");
    sim.shutdown().await;
}
