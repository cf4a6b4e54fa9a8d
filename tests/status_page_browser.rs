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

use http_fakes::{
    FAILED_REASON, FakeStatus, SECRET, TOKEN, sample_report, spawn_server, spawn_server_with,
};
use marketo_sync::http::{CycleOutcome, DEFAULT_BODY_LIMIT, OnDemandQueue, StatusReport};

/// The window size of the DOM dumps.
const DESKTOP: &str = "--window-size=1280,1500";

/// Returns the Chromium binary, or `None` when the test should be skipped (see
/// `support/prereq.rs`).
fn chromium() -> Option<PathBuf> {
    prereq::chromium("status page in headless Chromium")
}

/// Loads `url` in headless Chromium, lets the page's scripts run, and returns the DOM.
async fn dump_dom(chromium: &Path, url: &str) -> String {
    dump_dom_with(chromium, url, &[DESKTOP]).await
}

/// As [`dump_dom`], with extra Chromium arguments (a window size, `--screenshot=...`).
async fn dump_dom_with(chromium: &Path, url: &str, extra: &[&str]) -> String {
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
        .args(extra)
        .args([
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ])
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
    render_at(chromium, report, "/", &[DESKTOP]).await
}

async fn render_at(chromium: &Path, report: StatusReport, path: &str, extra: &[&str]) -> String {
    let status = Arc::new(FakeStatus::new(report));
    let server = spawn_server(
        status,
        Arc::new(OnDemandQueue::new(10)),
        marketo_sync::telemetry::metrics::build_recorder().handle(),
        DEFAULT_BODY_LIMIT,
    )
    .await;
    let dom = dump_dom_with(chromium, &server.url(path), extra).await;
    server.stop().await;
    without_scripts(&dom)
}

/// Returns the value of `attribute` on the `<body>` element of a dumped DOM.
fn body_attribute<'d>(dom: &'d str, attribute: &str) -> Option<&'d str> {
    let body = &dom[dom.find("<body")?..];
    let tag = &body[..body.find('>')?];
    let start = tag.find(&format!("{attribute}=\""))? + attribute.len() + 2;
    let end = tag[start..].find('"')? + start;
    Some(&tag[start..end])
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

    // The failed cycle says why, in its own table and in the cycles table.
    assert_contains(&dom, r#"<tr data-failed-cycle="cyc-0001">"#);
    assert_eq!(dom.matches(FAILED_REASON).count(), 2, "{dom}");
    // The real open-error count, not the length of the first page.
    assert_contains(&dom, r#"<div id="errors-total" class="big">5</div>"#);
    // Backlog, lag and rate per object.
    assert_contains(&dom, "17 pending · 2 need an operator");
    assert_contains(&dom, "1h 12m");
    assert_contains(&dom, "5,432");
    assert_contains(&dom, "never synced");
    // Totals since the store was created.
    assert_contains(&dom, "1,204 succeeded · 31 partial · 7 failed");
    // Retry and discard buttons per open error.
    assert_contains(&dom, r#"data-action="retry" data-id="err-17""#);
    assert_contains(&dom, r#"data-action="discard" data-id="err-18""#);
    // The conflicts view: both values, the winner and the policy.
    assert_contains(&dom, r#"<tr data-conflict="3">"#);
    assert_contains(&dom, "mkto-phone-3");
    assert_contains(&dom, "crm-phone-3");
    assert_contains(&dom, "crm_wins");
    assert_contains(&dom, "newest_wins");
    // The new charts: quota burn with budget and projection, lag, records per hour.
    let burn = &dom[dom.find(r#"id="svg-burn""#).expect("burn chart")..];
    assert!(burn.contains("budget-line") && burn.contains("projection-line"));
    assert_contains(&dom, "projected 48,000 by the Marketo day's end");
    assert_contains(&dom, "over budget");
    let lag = &dom[dom.find(r#"id="svg-lag""#).expect("lag chart")..];
    assert!(lag.contains(r#"data-lag="lead""#) && lag.contains(r#"data-lag="company""#));
    let hourly = &dom[dom.find(r#"id="svg-hourly""#).expect("hourly chart")..];
    assert!(hourly.contains("hourly-lead") && hourly.contains("hourly-company"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_last_cycle_is_announced_with_its_reason() {
    let Some(chromium) = chromium() else {
        return;
    };
    let mut report = sample_report();
    report
        .recent_cycles
        .retain(|c| c.outcome == CycleOutcome::Failed);
    let dom = render(&chromium, report).await;
    assert_contains(&dom, r#"data-loaded="true""#);
    assert_contains(&dom, "Last cycle failed: ");
    assert_contains(&dom, FAILED_REASON);
    let banner = &dom[dom.find(r#"id="failed-banner""#).expect("banner")..];
    assert!(
        !banner[..banner.find('>').expect("tag")].contains("hidden"),
        "{dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_filtered_from_the_page() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dom = render_at(
        &chromium,
        sample_report(),
        "/#object=company&winner=crm",
        &[DESKTOP],
    )
    .await;
    assert_contains(&dom, r#"data-loaded="true""#);
    assert_contains(&dom, r#"<tr data-conflict="1">"#);
    assert!(!dom.contains(r#"<tr data-conflict="3">"#), "{dom}");
    assert_contains(&dom, "(1 matching)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_fits_a_phone_and_screenshots_are_taken() {
    let Some(chromium) = chromium() else {
        return;
    };
    let shots = tempfile::tempdir().expect("screenshot dir");
    let status = Arc::new(FakeStatus::new(sample_report()));
    let server = spawn_server(
        status,
        Arc::new(OnDemandQueue::new(10)),
        marketo_sync::telemetry::metrics::build_recorder().handle(),
        DEFAULT_BODY_LIMIT,
    )
    .await;
    for (name, width, height) in [("desktop", 1280_u32, 1500_u32), ("phone", 375, 812)] {
        let target = shots.path().join(format!("status-{name}.png"));
        let (url, chromium, shot) = (server.url("/"), chromium.clone(), target.clone());
        // Headless Chromium's windows are at least 500 px wide, so the phone viewport is set
        // through the DevTools protocol (device metrics), as a phone would report it.
        let dom =
            tokio::task::spawn_blocking(move || cdp::render(&chromium, &url, width, height, &shot))
                .await
                .expect("cdp thread");
        let dom = without_scripts(&dom);
        assert_contains(&dom, r#"data-loaded="true""#);
        // The page measured itself at this width: nothing wider than the viewport.
        assert_eq!(
            body_attribute(&dom, "data-viewport-width"),
            Some(width.to_string().as_str()),
            "{name}"
        );
        let page_width: u32 = body_attribute(&dom, "data-page-width")
            .and_then(|w| w.parse().ok())
            .expect("page width");
        assert!(page_width <= width, "{name}: page is {page_width} px wide");
        assert_eq!(
            body_attribute(&dom, "data-overflow"),
            Some("false"),
            "{name}"
        );
        // The content is all there at this width.
        for needle in ["48,213", FAILED_REASON, "mkto-phone-3", "newest 2 of 5"] {
            assert_contains(&dom, needle);
        }
        let png = std::fs::read(&target).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        if let Ok(dir) = std::env::var("MKSYNC_STATUS_SCREENSHOT_DIR") {
            std::fs::copy(&target, Path::new(&dir).join(format!("status-{name}.png")))
                .expect("copy screenshot");
        }
    }
    server.stop().await;
}

/// A minimal DevTools-protocol client over `--remote-debugging-pipe` (two FIFOs), enough to
/// set a phone's viewport, load a page, read its DOM and take a screenshot.
mod cdp {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::path::Path;
    use std::process::{Child, Command};

    use serde_json::{Value, json};

    struct Session {
        child: Child,
        input: std::fs::File,
        output: BufReader<std::fs::File>,
        next_id: u64,
        _dir: tempfile::TempDir,
    }

    impl Session {
        fn start(chromium: &Path) -> Session {
            let dir = tempfile::tempdir().expect("cdp dir");
            let to_browser = dir.path().join("to-browser");
            let from_browser = dir.path().join("from-browser");
            for fifo in [&to_browser, &from_browser] {
                let ok = Command::new("mkfifo")
                    .arg(fifo)
                    .status()
                    .expect("mkfifo")
                    .success();
                assert!(ok, "mkfifo failed");
            }
            let profile = dir.path().join("profile");
            let child = Command::new("sh")
                .arg("-c")
                .arg(
                    r#"exec "$0" --headless --no-sandbox --disable-gpu --disable-quic \
                    --no-first-run --disable-background-networking --disable-component-update \
                    --disable-sync --disable-dev-shm-usage --hide-scrollbars \
                    --remote-debugging-pipe --user-data-dir="$1" about:blank 3<"$2" 4>"$3""#,
                )
                .arg(chromium)
                .arg(&profile)
                .arg(&to_browser)
                .arg(&from_browser)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("chromium starts");
            // The shell opens the browser's input first, then its output: same order here.
            let input = std::fs::OpenOptions::new()
                .write(true)
                .open(&to_browser)
                .expect("open pipe to the browser");
            let output = BufReader::new(std::fs::File::open(&from_browser).expect("open pipe"));
            Session {
                child,
                input,
                output,
                next_id: 0,
                _dir: dir,
            }
        }

        fn read_message(&mut self) -> Value {
            let mut raw = Vec::new();
            let n = self
                .output
                .read_until(0, &mut raw)
                .expect("read from the browser");
            assert!(n > 0, "the browser closed the DevTools pipe");
            raw.pop();
            serde_json::from_slice(&raw).expect("DevTools JSON")
        }

        /// Sends a command and returns its result, skipping events.
        fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
            self.next_id += 1;
            let id = self.next_id;
            let mut message = json!({ "id": id, "method": method, "params": params });
            if let Some(session) = session {
                message["sessionId"] = json!(session);
            }
            let mut bytes = serde_json::to_vec(&message).expect("json");
            bytes.push(0);
            self.input.write_all(&bytes).expect("write to the browser");
            loop {
                let reply = self.read_message();
                if reply["id"] == json!(id) {
                    assert!(reply.get("error").is_none(), "{method} failed: {reply}");
                    return reply["result"].clone();
                }
            }
        }

        fn wait_for_event(&mut self, method: &str) {
            loop {
                if self.read_message()["method"] == json!(method) {
                    return;
                }
            }
        }
    }

    impl Drop for Session {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Loads `url` at `width` x `height` CSS pixels, waits for the page to load its report,
    /// writes a PNG screenshot to `screenshot` and returns the DOM.
    pub fn render(
        chromium: &Path,
        url: &str,
        width: u32,
        height: u32,
        screenshot: &Path,
    ) -> String {
        let mut s = Session::start(chromium);
        let target = s.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("target id").to_owned();
        let attached = s.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        let sid = Some(session.as_str());
        s.call(
            sid,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 }),
        );
        s.call(sid, "Page.enable", json!({}));
        s.call(sid, "Page.navigate", json!({ "url": url }));
        s.wait_for_event("Page.loadEventFired");
        // Resolves once the page's script has drawn the report (it sets data-loaded).
        let expression = "new Promise(function (resolve) { var t = setInterval(function () { \
             if (document.body && document.body.getAttribute('data-loaded') === 'true') { \
             clearInterval(t); resolve(document.documentElement.outerHTML); } }, 50); })";
        let evaluated = s.call(
            sid,
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        let dom = evaluated["result"]["value"]
            .as_str()
            .expect("DOM string")
            .to_owned();
        let shot = s.call(sid, "Page.captureScreenshot", json!({ "format": "png" }));
        let png = data_encoding::BASE64
            .decode(shot["data"].as_str().expect("png data").as_bytes())
            .expect("base64 png");
        std::fs::write(screenshot, png).expect("write screenshot");
        let _ = s.call(None, "Browser.close", json!({}));
        let mut rest = Vec::new();
        let _ = s.output.read_to_end(&mut rest);
        dom
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_loads_through_basic_auth() {
    let Some(chromium) = chromium() else {
        return;
    };
    let status = Arc::new(FakeStatus::new(sample_report()));
    let server = spawn_server_with(
        status,
        Arc::new(OnDemandQueue::new(10)),
        marketo_sync::telemetry::metrics::build_recorder().handle(),
        DEFAULT_BODY_LIMIT,
        Some(TOKEN),
    )
    .await;
    let url = format!("http://ops:{TOKEN}@{}/", server.addr);
    let dom = without_scripts(&dump_dom(&chromium, &url).await);
    server.stop().await;
    assert_contains(&dom, r#"data-loaded="true""#);
    assert_contains(&dom, "48,213");
    assert!(!dom.contains(TOKEN), "the token is shown on the page");
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
