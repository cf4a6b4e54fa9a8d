//! Bootstrap of N leads (default 1,000,000) from the Marketo simulator (queue delays zero) into
//! the demo CRM on SQLite: wall time, rows per second and peak memory (VmHWM).
//!
//! The simulator runs in the same process, so the peak includes its generated leads; the RSS
//! after setting up (simulator and empty CRM, before the bootstrap) is printed to tell the two
//! apart.
//!
//! `cargo bench --bench bootstrap_1m [-- N]`.

#[path = "../tests/support/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Options, TestApp};
use marketo_sync::engine::Tunables;
use marketo_sync::engine::bootstrap::{BootstrapOptions, RecordingProgress, bootstrap};
use marketo_sync::marketo::bulk_extract::ExportOptions;
use marketo_sync::sim::SimConfig;
use tokio_util::sync::CancellationToken;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n));
}

/// Returns a `/proc/self/status` line's value in kB.
fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn run(n: usize) {
    let t = Instant::now();
    let app = TestApp::with(Options {
        sim: SimConfig {
            leads: n,
            export_delay: Duration::ZERO,
            import_delay: Duration::ZERO,
            daily_quota: 10_000_000,
            bulk_daily_bytes: 50 * 1024 * 1024 * 1024,
            ..SimConfig::default()
        },
        daily_call_budget: 0,
        tunables: Tunables {
            export_poll: Duration::from_millis(20),
            ..Tunables::default()
        },
        ..Options::default()
    })
    .await;
    let setup_rss = status_kb("VmRSS:");
    println!(
        "setup: simulator with {n} leads and an empty demo crm (sqlite) in {:.1?}; rss {setup_rss} kB",
        t.elapsed()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    app.sync_clock();
    let t = Instant::now();
    let report = bootstrap(
        app.engine.context(),
        &BootstrapOptions {
            // Generated leads are created within 730 days of the simulator start.
            since: Some(app.sim.now() - chrono::Duration::days(731)),
            work_dir: Some(dir.path().to_path_buf()),
            bulk_budget_bytes: Some(u64::MAX / 4),
            export: Some(ExportOptions {
                poll_interval: Duration::from_millis(20),
                max_wait: None,
            }),
            ..BootstrapOptions::default()
        },
        &RecordingProgress::new(),
        &CancellationToken::new(),
    )
    .await
    .expect("bootstrap");
    let wall = t.elapsed();
    let peak = status_kb("VmHWM:");
    assert!(report.complete, "bootstrap incomplete: {report:?}");
    let contacts = app.crm_count().await;
    for p in &report.phases {
        println!(
            "  phase {}: windows {} rows {} created {} updated {} failed {} held {} links {} bytes {}",
            p.name,
            p.windows_done,
            p.rows,
            p.created,
            p.updated,
            p.failed,
            p.held,
            p.links,
            p.bytes
        );
    }
    for w in &report.warnings {
        println!("  warning: {w}");
    }
    let secs = wall.as_secs_f64();
    println!("leads:            {n}");
    println!("contacts created: {contacts}");
    println!("wall time:        {secs:.1} s");
    println!("rows/s:           {:.0}", n as f64 / secs);
    println!(
        "peak rss (VmHWM): {peak} kB (rss before the bootstrap {setup_rss} kB, growth {} kB)",
        peak.saturating_sub(setup_rss)
    );
    println!("marketo calls:    {}", app.sim.counters().calls_logged);
    assert_eq!(contacts, n, "not every lead reached the crm");
    app.cleanup().await;
}
