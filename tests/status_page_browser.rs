//! The status page rendered by headless Chromium: the page's JavaScript fetches `/api/status`
//! and draws the tables and SVG charts; the test reads the resulting DOM.
//!
//! Needs Chromium (`scripts/test` installs it). Without it the tests are skipped with a notice,
//! or fail when `CI` or `MKSYNC_REQUIRE_ALL=1` is set; `MKSYNC_SKIP_BROWSER_TESTS=1` skips them.

#[path = "support/http_fakes.rs"]
mod http_fakes;
#[path = "support/prereq.rs"]
mod prereq;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_fakes::{FakeStatus, SECRET, sample_report, spawn_server};
use marketo_sync::http::{DEFAULT_BODY_LIMIT, OnDemandQueue, StatusReport};

/// Returns the Chromium binary, or `None` when the test should be skipped (see
/// `support/prereq.rs`).
fn chromium() -> Option<PathBuf> {
    prereq::chromium("status page in headless Chromium")
}

/// Loads `url` in headless Chromium, lets the page's scripts run, and returns the DOM.
async fn dump_dom(chromium: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().expect("temp profile dir");
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=5000", "--dump-dom", url])
        .kill_on_drop(true);
    // A guard against a hung browser, not a timing assumption: a healthy run takes seconds.
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("chromium did not finish within 120 s")
        .expect("chromium could not be started");
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && !dom.is_empty(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    dom
}

async fn render(chromium: &Path, report: StatusReport) -> String {
    let status = Arc::new(FakeStatus::new(report));
    let server = spawn_server(
        status,
        Arc::new(OnDemandQueue::new(10)),
        marketo_sync::telemetry::metrics::build_recorder().handle(),
        DEFAULT_BODY_LIMIT,
    )
    .await;
    let dom = dump_dom(chromium, &server.url("/")).await;
    server.stop().await;
    without_scripts(&dom)
}

/// Returns the DOM without `<script>` elements, so assertions see only what the page shows.
fn without_scripts(dom: &str) -> String {
    let mut out = String::with_capacity(dom.len());
    let mut rest = dom;
    while let Some(start) = rest.find("<script") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</script>") {
            Some(end) => rest = &rest[start + end + "</script>".len()..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn assert_contains(dom: &str, needle: &str) {
    assert!(
        dom.contains(needle),
        "rendered page lacks `{needle}`:\n{dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_the_report_in_a_browser() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dom = render(&chromium, sample_report()).await;

    // The script ran and loaded the report.
    assert_contains(&dom, r#"data-loaded="true""#);
    assert_contains(&dom, "acme-prod (123-ABC-456)");
    // Recent cycles.
    for id in ["cyc-0003", "cyc-0002", "cyc-0001"] {
        assert_contains(&dom, &format!(r#"<tr data-cycle="{id}">"#));
    }
    assert_contains(&dom, "partial");
    // Per-object counts (formatted by the page).
    assert_contains(&dom, r#"<tr data-object="lead">"#);
    assert_contains(&dom, "48,213");
    assert_contains(&dom, "4,321");
    assert_contains(&dom, "3,150");
    // Quota.
    assert_contains(&dom, "8,123 / 10,000");
    assert_contains(&dom, "1,877 remaining");
    assert_contains(&dom, "150 MB / 500 MB");
    // Open errors, with hostile text shown as text, not markup.
    assert_contains(&dom, r#"column "phone" is too long (max 20)"#);
    assert_contains(
        &dom,
        "&lt;img src=x onerror=alert(1)&gt; Marketo says: field not updatable",
    );
    assert!(
        !dom.contains("<img"),
        "an error message was rendered as markup"
    );
    assert_contains(&dom, "crm_constraint");
    assert_contains(&dom, "newest 2 of 5");
    // Pause state.
    assert_contains(&dom, "Paused: ");
    assert_contains(&dom, "Marketo daily API quota reached (607)");
    assert_contains(&dom, "until 2026-11-23 23:00:00 UTC");
    // Charts drawn as inline SVG.
    let quota_chart = dom.find(r#"id="svg-quota""#).expect("quota chart svg");
    let records_chart = dom.find(r#"id="svg-records""#).expect("records chart svg");
    assert_eq!(
        dom[quota_chart..].matches("<rect").count(),
        3,
        "one bar per cycle"
    );
    assert!(dom[records_chart..].contains("series-marketo_to_crm"));
    assert!(dom[records_chart..].contains("series-crm_to_marketo"));
    assert!(dom.matches("<svg").count() >= 2);
    // The load-error banner stayed hidden and the secret is nowhere.
    assert!(!dom.contains("Could not load the status"), "{dom}");
    assert!(!dom.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_running_state_and_empty_tables() {
    let Some(chromium) = chromium() else {
        return;
    };
    let mut report = sample_report();
    report.paused = None;
    report.recent_cycles.clear();
    report.calls_per_cycle.clear();
    report.records_over_time.clear();
    report.open_errors.clear();
    report.open_errors_total = 0;
    let dom = render(&chromium, report).await;
    assert_contains(&dom, r#"data-loaded="true""#);
    assert_contains(&dom, "Running: not paused");
    assert!(!dom.contains("Paused: "));
    assert_contains(&dom, "no cycles yet");
    assert_contains(&dom, "no open errors");
    assert_contains(&dom, "no data yet");
    assert_contains(&dom, r#"<tr data-object="company">"#);
}

/// Takes a screenshot for a person to look at: `MKSYNC_STATUS_SCREENSHOT=/tmp/status.png`.
/// Does nothing without that variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_screenshot_on_request() {
    let Ok(target) = std::env::var("MKSYNC_STATUS_SCREENSHOT") else {
        return;
    };
    let Some(chromium) = chromium() else {
        return;
    };
    let status = Arc::new(FakeStatus::new(sample_report()));
    let server = spawn_server(
        status,
        Arc::new(OnDemandQueue::new(10)),
        marketo_sync::telemetry::metrics::build_recorder().handle(),
        DEFAULT_BODY_LIMIT,
    )
    .await;
    let profile = tempfile::tempdir().expect("temp profile dir");
    let output = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1500",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={target}"))
        .arg(server.url("/"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("chromium could not be started");
    server.stop().await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(Path::new(&target).is_file(), "no screenshot written");
}
