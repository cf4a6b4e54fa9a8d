//! Bootstrap of N leads (default 1,000,000) from the Marketo simulator (queue delays zero) into
//! the demo CRM on SQLite: wall time, rows per second, Marketo calls and peak memory.
//!
//! The simulator runs as its own process (`marketo-sync simulate`, the release binary built with
//! this benchmark), so this process's peak RSS (VmHWM) is the engine's alone (with the SQLite
//! CRM and store libraries it links); the simulator's peak is read from its `/proc/<pid>/status`
//! and printed separately.
//!
//! `cargo bench --bench bootstrap_1m [-- N]`. `MKS_BENCH_WRITE_BACK_THRESHOLD=N` sets the number
//! of CRM ids per window above which they go back to Marketo by Bulk Import instead of REST
//! (default: the engine's). `MKS_BENCH_CRM_CONNECTIONS` and `MKS_BENCH_STORE_CONNECTIONS` set the
//! pool sizes of the SQLite CRM (default 5) and state store (default 8).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use marketo_sync::config::{Settings, load_mappings};
use marketo_sync::crm::registry;
use marketo_sync::crm::sql::dialect::SqlPool;
use marketo_sync::engine::Context;
use marketo_sync::engine::bootstrap::{BootstrapOptions, RecordingProgress, bootstrap};
use marketo_sync::marketo::bulk_extract::ExportOptions;
use marketo_sync::marketo::{Client, ClientConfig};
use marketo_sync::sim::demo_crm;
use marketo_sync::store::{self, ManualClock, OpenOptions};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

const CLIENT_ID: &str = "bench-client";
const CLIENT_SECRET: &str = "bench-secret";

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

/// Returns a `/proc/<pid>/status` line's value in kB (`self` for this process).
fn status_kb(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Returns the CPU seconds (user + system, all threads) of a process (`self` for this one), from
/// `/proc/<pid>/stat` in clock ticks of 1/100 s.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold blanks).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Returns a positive number from the environment variable `name`, if set.
fn env_number(name: &str) -> Option<u32> {
    std::env::var(name).ok()?.parse().ok().filter(|n| *n > 0)
}

/// Returns the 1-minute load average.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// The simulator process.
struct Sim {
    child: Child,
    pid: String,
    base_url: String,
    http: reqwest::Client,
}

impl Sim {
    fn spawn(leads: usize) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
            .args([
                "simulate",
                "--listen",
                "127.0.0.1:0",
                "--leads",
                &leads.to_string(),
                "--seed",
                "1",
                "--client-id",
                CLIENT_ID,
                "--export-delay",
                "0",
                "--import-delay",
                "0",
                "--daily-quota",
                "10000000",
                "--bulk-daily-mb",
                "51200",
            ])
            .env("MKSYNC_SIM_CLIENT_SECRET", CLIENT_SECRET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn marketo-sync simulate");
        let stdout = child.stdout.take().expect("simulator stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut base_url = None;
        for line in lines.by_ref() {
            let line = line.expect("simulator stdout");
            if let Some(url) = line.trim().strip_prefix("base url:") {
                base_url = Some(url.trim().to_owned());
                break;
            }
        }
        // Keep draining its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let pid = child.id().to_string();
        Sim {
            child,
            pid,
            base_url: base_url.expect("the simulator printed its base url"),
            http: reqwest::Client::new(),
        }
    }

    async fn admin(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}/__sim/{path}", self.base_url))
            .send()
            .await
            .expect("sim admin call")
            .json()
            .await
            .expect("sim admin json")
    }

    async fn now(&self) -> DateTime<Utc> {
        self.admin("state").await["now"]
            .as_str()
            .expect("now")
            .parse()
            .expect("sim time")
    }

    fn rss(&self) -> u64 {
        status_kb(&self.pid, "VmRSS:")
    }

    fn peak(&self) -> u64 {
        status_kb(&self.pid, "VmHWM:")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns the route of a logged path with ids replaced, e.g. `/bulk/v1/leads/batch/{id}.json`.
fn route_of(method: &str, path: &str) -> String {
    let parts: Vec<String> = path
        .split('/')
        .map(|s| {
            let (stem, ext) = s.split_once('.').unwrap_or((s, ""));
            let id = !stem.is_empty()
                && (stem.chars().all(|c| c.is_ascii_digit())
                    || (stem.len() >= 30 && stem.contains('-')));
            match (id, ext) {
                (true, "") => "{id}".to_owned(),
                (true, ext) => format!("{{id}}.{ext}"),
                _ => s.to_owned(),
            }
        })
        .collect();
    format!("{method} {}", parts.join("/"))
}

async fn run(n: usize) {
    let t = Instant::now();
    let sim = Sim::spawn(n);
    let dir = tempfile::tempdir().expect("temp dir");
    let crm_url = format!("sqlite://{}", dir.path().join("crm.db").display());
    demo_crm::install(&crm_url, 7, 0).await.expect("demo crm");
    let mut crm_options = demo_crm::adapter_options(true, false);
    if let Some(n) = env_number("MKS_BENCH_CRM_CONNECTIONS") {
        crm_options["max_connections"] = serde_json::json!(n);
    }
    let crm = registry::build(
        "sql",
        Some(&SecretString::from(crm_url.clone())),
        &crm_options,
    )
    .await
    .expect("crm adapter");
    let sim_now = sim.now().await;
    let clock = Arc::new(ManualClock::new(sim_now));
    let store_url = format!("sqlite://{}", dir.path().join("state.db").display());
    let store = store::open_with(
        &store_url,
        OpenOptions {
            clock: clock.clone(),
            max_connections: env_number("MKS_BENCH_STORE_CONNECTIONS").unwrap_or(8),
            ..OpenOptions::default()
        },
    )
    .await
    .expect("store");
    let mut settings = Settings::default();
    settings.marketo.base_url = Some(sim.base_url.clone());
    settings.marketo.client_id = Some(CLIENT_ID.into());
    settings.marketo.client_secret = Some(SecretString::from(CLIENT_SECRET));
    settings.marketo.daily_call_budget = 0;
    settings.marketo.calls_per_20s = 100;
    settings.marketo.max_concurrency = 10;
    settings.crm.url = Some(SecretString::from(crm_url.clone()));
    settings.crm.options = crm_options;
    settings.sync.objects = vec!["leads".into()];
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let (mappings, problems) = load_mappings(&config_dir, &settings);
    assert!(
        problems.iter().all(|p| !p.is_error()),
        "mapping problems: {problems:?}"
    );
    let mut cfg = ClientConfig::new(
        sim.base_url.parse().expect("sim url"),
        CLIENT_ID.to_owned(),
        SecretString::from(CLIENT_SECRET),
    );
    cfg.calls_per_20s = 100;
    cfg.max_concurrency = 10;
    cfg.daily_call_budget = 1_000_000;
    let client = Client::new(cfg).expect("client");
    let ctx = Context::new(settings, mappings, client, crm, store, clock.clone());
    let setup_rss = status_kb("self", "VmRSS:");
    println!(
        "setup: simulator process (pid {}) with {n} leads, empty demo crm (sqlite) in {:.1?}; engine rss {setup_rss} kB, simulator rss {} kB",
        sim.pid,
        t.elapsed(),
        sim.rss()
    );

    let work = dir.path().join("exports");
    let started = Instant::now();
    let sim_pid = sim.pid.clone();
    let progress = RecordingProgress::with_window_hook(move |phase, windows| {
        println!(
            "  {:>7.1} s  window {windows:>2} ({phase}): engine rss {} kB (peak {} kB), simulator rss {} kB",
            started.elapsed().as_secs_f64(),
            status_kb("self", "VmRSS:"),
            status_kb("self", "VmHWM:"),
            status_kb(&sim_pid, "VmRSS:"),
        );
    });
    let threshold = std::env::var("MKS_BENCH_WRITE_BACK_THRESHOLD")
        .ok()
        .and_then(|v| v.parse().ok());
    let (cpu_engine, cpu_sim) = (cpu_seconds("self"), cpu_seconds(&sim.pid));
    println!("load average (1 min) at the start: {}", load());
    let t = Instant::now();
    let report = bootstrap(
        &ctx,
        &BootstrapOptions {
            // Generated leads are created within 730 days of the simulator start.
            since: Some(sim_now - chrono::Duration::days(731)),
            work_dir: Some(work.clone()),
            bulk_budget_bytes: Some(u64::MAX / 4),
            export: Some(ExportOptions {
                poll_interval: Duration::from_millis(20),
                max_wait: None,
            }),
            write_back_import_threshold: threshold,
            ..BootstrapOptions::default()
        },
        &progress,
        &CancellationToken::new(),
    )
    .await
    .expect("bootstrap");
    let wall = t.elapsed();
    let cpu_engine = cpu_seconds("self") - cpu_engine;
    let cpu_sim = cpu_seconds(&sim.pid) - cpu_sim;
    let end_load = load();
    let peak = status_kb("self", "VmHWM:");
    let sim_peak = sim.peak();
    assert!(report.complete, "bootstrap incomplete: {report:?}");
    let user = SqlPool::connect(&crm_url, 1, false)
        .await
        .expect("user pool");
    let contacts: usize = user
        .fetch(
            "count",
            "SELECT CAST(COUNT(*) AS TEXT) FROM contacts WHERE deleted = FALSE".to_owned(),
            &[],
        )
        .await
        .expect("count")
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    user.close().await;
    for p in &report.phases {
        println!(
            "  phase {}: windows {} rows {} created {} updated {} failed {} held {} written back {} links {} bytes {}",
            p.name,
            p.windows_done,
            p.rows,
            p.created,
            p.updated,
            p.failed,
            p.held,
            p.written_back,
            p.links,
            p.bytes
        );
    }
    for w in &report.warnings {
        println!("  warning: {w}");
    }
    let log = sim.admin("log?since=0").await;
    let mut routes: BTreeMap<String, u64> = BTreeMap::new();
    let mut counted = 0;
    for e in log["entries"].as_array().into_iter().flatten() {
        if e["counted"].as_bool() != Some(true) {
            continue;
        }
        counted += 1;
        let method = e["method"].as_str().unwrap_or_default();
        let path = e["path"].as_str().unwrap_or_default();
        *routes.entry(route_of(method, path)).or_default() += 1;
    }
    let left_over = std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0);
    let secs = wall.as_secs_f64();
    println!("leads:            {n}");
    println!("contacts created: {contacts}");
    println!("wall time:        {secs:.1} s");
    println!("rows/s:           {:.0}", n as f64 / secs);
    println!("engine peak rss (VmHWM, this process): {peak} kB (rss after setup {setup_rss} kB)");
    println!("simulator peak rss (VmHWM, pid {}): {sim_peak} kB", sim.pid);
    println!(
        "cpu during the bootstrap: engine {cpu_engine:.1} s, simulator {cpu_sim:.1} s (of {:.1} s on 2 cores); load average at the end {end_load}",
        2.0 * secs
    );
    let today = sim.admin("counters").await["calls_today"]
        .as_u64()
        .unwrap_or(0);
    println!("marketo calls (counted): {counted} (the simulator's count today: {today})");
    for (route, calls) in &routes {
        println!("  {calls:>6}  {route}");
    }
    println!("files left in the work dir: {left_over}");
    assert_eq!(contacts, n, "not every lead reached the crm");
    let written_back: u64 = report.phases.iter().map(|p| p.written_back).sum();
    assert_eq!(written_back as usize, n, "not every crm id went back");
    drop(sim);
}
