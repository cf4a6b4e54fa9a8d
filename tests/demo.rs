//! `marketo-sync demo` as a person runs it: records flow both ways and it stops by itself.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marketo_sync::app::demo::{DemoOptions, run_demo, write_embedded_config};
use tokio_util::sync::CancellationToken;

fn written(line: &str, direction: &str) -> u64 {
    // "cycle 2 succeeded: 3 records written Marketo -> CRM, 2 CRM -> Marketo, 12 Marketo calls"
    let (_, rest) = line.split_once(": ").expect("a cycle line");
    for part in rest.split(", ") {
        if part.contains(direction) {
            return part
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a count");
        }
    }
    panic!("no `{direction}` in {line:?}");
}

#[test]
fn the_demo_shows_records_flowing_both_ways_and_stops_after_its_cycles() {
    let state = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
        .args([
            "demo",
            "--cycles",
            "3",
            "--interval",
            "1",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");

    assert!(
        stdout.contains("status page:    http://127.0.0.1:"),
        "{stdout}"
    );
    let secret_line = stdout
        .lines()
        .find(|l| l.contains("webhook secret:"))
        .expect("the webhook secret is printed");
    assert!(
        secret_line
            .split_whitespace()
            .nth(2)
            .is_some_and(|s| s.len() >= 16)
    );

    let cycles: Vec<&str> = stdout.lines().filter(|l| l.starts_with("cycle ")).collect();
    assert_eq!(cycles.len(), 3, "{stdout}");
    assert!(
        cycles.iter().all(|l| l.contains(" succeeded: ")),
        "{stdout}"
    );
    // The first cycle links the sample data; the later ones carry the demo's own edits made on
    // both sides in between: at least the edited and the new record each way.
    for line in &cycles[1..] {
        assert!(written(line, "Marketo -> CRM") >= 2, "{line}");
        assert!(written(line, "CRM -> Marketo") >= 2, "{line}");
    }
    assert!(stdout.contains("demo stopped after 3 cycles"), "{stdout}");

    // The marketer's first edit and new lead reached the CRM.
    let crm = live_contacts(&state.path().join("demo-crm.db"));
    assert!(
        crm.iter().any(|(_, title)| title == "Head of Demos 1"),
        "{crm:?}"
    );
    assert!(
        crm.iter()
            .any(|(email, _)| email == "new.lead.1@demo.example"),
        "{crm:?}"
    );
    // A chat conversation logged in the CRM between cycles became a Marketo custom activity:
    // the event is linked to its activity's marketoGUID, and its outbox is empty.
    assert!(stdout.contains("  chat: conversation"), "{stdout}");
    let state_db = state.path().join("demo-state.db");
    assert!(count_links(&state_db, "chat_events") >= 1, "{stdout}");
    assert_eq!(count_links(&state_db, "chat_events:outbox"), 0);

    // The simulator's programs are campaigns, and the marketer's program status change of round 1
    // reached a campaign member.
    let (campaigns, statuses) = campaigns_and_statuses(&state.path().join("demo-crm.db"));
    assert_eq!(campaigns, 2, "{stdout}");
    assert!(
        statuses.iter().any(|s| s == "Registered"),
        "{statuses:?}\n{stdout}"
    );
}

/// Counts the state store's links of one object through sqlx, on a runtime of its own.
fn count_links(path: &std::path::Path, object: &str) -> i64 {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let url = format!("sqlite://{}", path.display());
        let pool = sqlx::sqlite::SqlitePool::connect(&url)
            .await
            .expect("open state");
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM links WHERE object = ?1")
            .bind(object)
            .fetch_one(&pool)
            .await
            .expect("count links");
        n
    })
}

/// Reads the number of campaigns and the status of every campaign member, on a runtime of its
/// own.
fn campaigns_and_statuses(path: &std::path::Path) -> (i64, Vec<String>) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let url = format!("sqlite://{}", path.display());
        let pool = sqlx::sqlite::SqlitePool::connect(&url)
            .await
            .expect("open crm");
        let (campaigns,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM campaigns")
            .fetch_one(&pool)
            .await
            .expect("count campaigns");
        let rows: Vec<(Option<String>,)> =
            sqlx::query_as("SELECT status FROM campaign_members WHERE deleted = 0")
                .fetch_all(&pool)
                .await
                .expect("read campaign members");
        let statuses = rows.into_iter().filter_map(|(s,)| s).collect();
        (campaigns, statuses)
    })
}

/// Reads (email, title) of every live contact through sqlx, on a runtime of its own.
fn live_contacts(path: &std::path::Path) -> Vec<(String, String)> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let url = format!("sqlite://{}", path.display());
        let pool = sqlx::sqlite::SqlitePool::connect(&url)
            .await
            .expect("open crm");
        let rows: Vec<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT email, title FROM contacts WHERE deleted = 0")
                .fetch_all(&pool)
                .await
                .expect("read contacts");
        rows.into_iter()
            .map(|(e, t)| (e.unwrap_or_default(), t.unwrap_or_default()))
            .collect()
    })
}

/// Returns the lines of `stdout` that look like JSON log lines.
fn json_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{') || l.contains("\"level\":"))
        .collect()
}

#[test]
fn the_demo_runs_from_any_directory_with_its_built_in_config_and_no_log_lines_on_stdout() {
    // A working directory with no config/ in it, as after `cargo install` or in the container.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let state = elsewhere.path().join("not/yet/there");
    let output = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
        .args([
            "demo",
            "--cycles",
            "2",
            "--interval",
            "1",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(&state)
        .env_remove("RUST_LOG")
        .current_dir(elsewhere.path())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("config:         built in (--config DIR to use your own)"),
        "{stdout}"
    );
    assert!(stdout.contains("logs:           errors only"), "{stdout}");
    assert!(stdout.contains("demo stopped after 2 cycles"), "{stdout}");
    assert_eq!(json_lines(&stdout), Vec::<&str>::new(), "{stdout}");
    // Quiet by default: no info lines on standard error either.
    assert!(!stderr.contains("INFO"), "{stderr}");
    assert!(state.join("demo-state.db").is_file());
    assert!(!elsewhere.path().join("config").exists());
}

#[test]
fn with_log_file_the_logs_go_to_the_file_and_the_banner_says_where() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("logs/demo.log");
    let output = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
        .args([
            "demo",
            "--cycles",
            "1",
            "--interval",
            "1",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--log-file")
        .arg(&log)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("RUST_LOG")
        .current_dir(dir.path())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("logs:           {} (JSON lines)", log.display())),
        "{stdout}"
    );
    assert_eq!(json_lines(&stdout), Vec::<&str>::new(), "{stdout}");
    assert!(!stderr.contains("\"level\""), "{stderr}");
    let logged = std::fs::read_to_string(&log).expect("the log file exists");
    let lines: Vec<&str> = logged.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(value.get("level").is_some(), "{line}");
    }
    // The webhook secret the banner prints is never logged.
    let secret = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("webhook secret: "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the secret is printed");
    assert!(!logged.contains(secret));
}

#[test]
fn a_bad_config_dir_is_named_in_the_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
        .args(["demo", "--cycles", "1", "--config", "no-such-config"])
        .current_dir(dir.path())
        .output()
        .expect("run the demo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-config/default.toml"), "{stderr}");
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_keeps_narrating_past_fifty_cycles() {
    let state = tempfile::tempdir().expect("temp dir");
    // The built-in config with leads only: Marketo's 100 calls per 20 s (which the client keeps
    // to) then allow more cycles per second than with every object.
    let config = tempfile::tempdir().expect("temp dir");
    write_embedded_config(config.path()).expect("write config");
    let demo_toml = config.path().join("demo.toml");
    let text = std::fs::read_to_string(&demo_toml).expect("read demo.toml");
    let mut replaced = 0;
    let text: Vec<String> = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("objects =") {
                replaced += 1;
                "objects = [\"leads\"]".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(replaced, 1, "demo.toml has one sync.objects line");
    std::fs::write(&demo_toml, text.join("\n")).expect("write demo.toml");
    let captured = Captured::default();
    let out: Arc<Mutex<dyn std::io::Write + Send>> = Arc::new(Mutex::new(captured.clone()));
    let options = DemoOptions {
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        config: Some(config.path().to_path_buf()),
        cycles: Some(51),
        state_dir: Some(state.path().to_path_buf()),
        leads: 5,
        contacts: 5,
        // A fast cycle clock: a 20 ms pause between cycles.
        interval: Duration::from_millis(20),
        ..DemoOptions::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(300),
        run_demo(options, out, CancellationToken::new()),
    )
    .await
    .expect("51 cycles within 5 minutes")
    .expect("the demo runs");
    assert_eq!(report.cycles, 51);
    let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    let numbers: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("cycle "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(numbers, (1..=51).collect::<Vec<u32>>(), "{text}");
    assert!(text.contains("demo stopped after 51 cycles"), "{text}");
    assert!(report.edits > 0);
}

#[test]
fn the_hubspot_demo_shows_records_flowing_both_ways_and_never_logs_the_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let log = dir.path().join("demo.log");
    let output = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
        .args([
            "demo",
            "--crm",
            "hubspot",
            "--cycles",
            "3",
            "--interval",
            "1",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--log-file")
        .arg(&log)
        .env_remove("RUST_LOG")
        .env_remove("HUBSPOT_ACCESS_TOKEN")
        .current_dir(dir.path())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("crm:            the HubSpot simulator (http://127.0.0.1:"),
        "{stdout}"
    );
    let cycles: Vec<&str> = stdout.lines().filter(|l| l.starts_with("cycle ")).collect();
    assert_eq!(cycles.len(), 3, "{stdout}");
    assert!(
        cycles.iter().all(|l| l.contains(" succeeded: ")),
        "{stdout}"
    );
    // The first cycle links the sample data both ways; the later ones carry the demo's edits.
    assert!(written(cycles[0], "Marketo -> CRM") > 0, "{}", cycles[0]);
    assert!(written(cycles[0], "CRM -> Marketo") > 0, "{}", cycles[0]);
    for line in &cycles[1..] {
        assert!(written(line, "Marketo -> CRM") >= 2, "{line}");
        assert!(written(line, "CRM -> Marketo") >= 2, "{line}");
    }
    let token = std::fs::read_to_string(state.join("hubspot-token")).expect("the token file");
    assert!(token.starts_with("pat-"), "{token}");
    let logged = std::fs::read_to_string(&log).expect("the log file exists");
    assert!(
        logged.contains("hubspot") || logged.contains("cycle"),
        "{logged}"
    );
    for (what, text) in [
        ("stdout", &*stdout),
        ("stderr", &*stderr),
        ("log", &*logged),
    ] {
        assert!(!text.contains(token.trim()), "the token is in the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubspot_token_is_not_on_the_status_page_or_api() {
    let state = tempfile::tempdir().expect("temp dir");
    let captured = Captured::default();
    let out: Arc<Mutex<dyn std::io::Write + Send>> = Arc::new(Mutex::new(captured.clone()));
    let options = DemoOptions {
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        cycles: Some(4),
        state_dir: Some(state.path().to_path_buf()),
        leads: 5,
        contacts: 5,
        interval: Duration::from_millis(500),
        crm: marketo_sync::app::demo::DemoCrm::HubSpot,
        ..DemoOptions::default()
    };
    let stop = CancellationToken::new();
    let demo = tokio::spawn(run_demo(options, out, stop.clone()));
    let text = || String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    let mut base = None;
    for _ in 0..600 {
        let now = text();
        if now.contains("cycle 1 ") {
            base = now.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("status page:")
                    .map(|u| u.trim().trim_end_matches('/').to_owned())
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = base.unwrap_or_else(|| panic!("no cycle ran: {}", text()));
    let token = std::fs::read_to_string(state.path().join("hubspot-token")).expect("token file");
    let client = reqwest::Client::new();
    for path in ["/", "/api/status", "/api/errors", "/metrics", "/readyz"] {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let headers = format!("{:?}", response.headers());
        let body = response.text().await.expect("body");
        if path == "/" || path == "/api/status" {
            assert!(!body.trim().is_empty(), "GET {path} answered nothing");
        }
        assert!(
            !body.contains(token.trim()) && !headers.contains(token.trim()),
            "the token is in GET {path}"
        );
    }
    stop.cancel();
    demo.await.expect("join").expect("the demo runs");
    assert!(
        !text().contains(token.trim()),
        "the token is in the narration"
    );
}
