//! Activities at volume (issue 15): N Visit Webpage activities of one configured type in a day
//! (default 1,000,000), copied to a CRM table on SQLite. Prints, for the Bulk Activity Extract
//! path and for the activities feed, the Marketo REST and bulk calls, the bulk bytes, CPU
//! seconds, wall time and peak memory. The feed is measured on a smaller set of the same density
//! (default 30,000, `MKS_BENCH_FEED_SAMPLE`) and scaled to N (its calls are one per 300 rows).
//!
//! The simulator runs as its own process (`marketo-sync simulate`), holding the visits as one
//! lazily read block; this process's peak RSS is the engine's (its VmHWM is reset before each
//! measured step). Exports complete at once (`--export-delay 0`).
//!
//! `cargo bench --bench activities_at_volume [-- N]`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use marketo_sync::config::{Settings, parse_mapping};
use marketo_sync::crm::sql::dialect::SqlPool;
use marketo_sync::crm::{Crm, registry};
use marketo_sync::engine::objects::{self, activities};
use marketo_sync::engine::{Context, CycleOptions, CycleSummary};
use marketo_sync::mapping::{SchemaSet, compile_all};
use marketo_sync::marketo::{Client, ClientConfig};
use marketo_sync::model::Side;
use marketo_sync::store::{self, ManualClock, OpenOptions, StateStore};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CLIENT_ID: &str = "bench-client";
const CLIENT_SECRET: &str = "bench-secret";
/// Generated leads the visits are spread over.
const LEADS: i64 = 1_000;
const DAY_SECS: u64 = 86_400;

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let sample: u64 = std::env::var("MKS_BENCH_FEED_SAMPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000)
        .min(n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n, sample));
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

/// Resets this process's peak RSS (VmHWM) to its current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Returns the CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The simulator process.
struct Sim {
    child: Child,
    pid: String,
    base_url: String,
    http: reqwest::Client,
}

impl Sim {
    fn spawn() -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
            .args([
                "simulate",
                "--listen",
                "127.0.0.1:0",
                "--leads",
                &LEADS.to_string(),
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
        std::thread::spawn(move || for _ in lines {});
        let pid = child.id().to_string();
        Sim {
            child,
            pid,
            base_url: base_url.expect("the simulator printed its base url"),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> Value {
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
        self.get("state").await["now"]
            .as_str()
            .expect("now")
            .parse()
            .expect("sim time")
    }

    /// Logs `count` visits over the next `secs` seconds of sim time.
    async fn visits(&self, count: u64, secs: u64) {
        let leads: Vec<i64> = (1..=LEADS).collect();
        let answer: Value = self
            .http
            .post(format!("{}/__sim/visits", self.base_url))
            .json(&json!({"leads": leads, "count": count, "overSecs": secs}))
            .send()
            .await
            .expect("sim visits")
            .json()
            .await
            .expect("sim visits json");
        assert!(answer["firstId"].is_i64(), "{answer}");
    }

    /// Returns the log's last sequence number.
    async fn mark(&self) -> u64 {
        self.log(0)
            .await
            .last()
            .map_or(0, |e| e["seq"].as_u64().unwrap_or(0))
    }

    async fn log(&self, since: u64) -> Vec<Value> {
        self.get(&format!("log?since={since}")).await["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
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

/// Marketo calls of one measured step: REST calls (but the New Lead queue's), bulk calls by
/// action.
#[derive(Debug, Default)]
struct Calls {
    rest: u64,
    bulk: BTreeMap<String, u64>,
}

impl Calls {
    fn bulk_total(&self) -> u64 {
        self.bulk.values().sum()
    }
}

async fn calls_since(sim: &Sim, mark: u64) -> Calls {
    let mut calls = Calls::default();
    for e in sim.log(mark).await {
        let path = e["path"].as_str().unwrap_or_default();
        let ok = e["http_status"].as_u64() == Some(200) && e["code"].is_null();
        if !ok && !path.ends_with("/file.json") {
            continue;
        }
        if path.starts_with("/bulk/") {
            let action = path.rsplit('/').next().unwrap_or_default().to_owned();
            *calls.bulk.entry(action).or_default() += 1;
        } else if path.starts_with("/rest/") {
            // The New Lead queue's own read each cycle is not the visits'.
            let query = e["query"].as_str().unwrap_or_default();
            if !query.split('&').any(|p| p == "activityTypeIds=12") {
                calls.rest += 1;
            }
        }
    }
    calls
}

struct Engine {
    ctx: Context,
    plans: marketo_sync::mapping::Plans,
    clock: Arc<ManualClock>,
    db: SqlPool,
}

impl Engine {
    /// Runs the activities step at `now` with `threshold` and returns its summary.
    async fn step(&mut self, now: DateTime<Utc>, threshold: u64) -> CycleSummary {
        let mut settings = (*self.ctx.settings).clone();
        settings.sync.activity_bulk_threshold = threshold;
        self.ctx.settings = Arc::new(settings);
        self.clock.set(now);
        let mut summary = CycleSummary::default();
        objects::run_step(
            "activities",
            &self.ctx,
            &self.plans,
            &mut summary,
            &CycleOptions { dry_run: false },
            &CancellationToken::new(),
        )
        .await
        .expect("activities step");
        summary
    }

    async fn visit_rows(&self) -> u64 {
        self.db
            .fetch(
                "count",
                "SELECT CAST(COUNT(DISTINCT marketo_guid) AS TEXT) FROM marketing_activities \
                 WHERE kind = 'web_visit'"
                    .to_owned(),
                &[],
            )
            .await
            .expect("count")
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// One measured step's figures.
struct Figures {
    rows: u64,
    calls: Calls,
    bytes: u64,
    cpu: f64,
    wall: f64,
    peak_kb: u64,
    /// RSS when the step started (the peak's floor).
    start_kb: u64,
}

async fn measure(
    engine: &mut Engine,
    sim: &Sim,
    threshold: u64,
    store: &Arc<dyn StateStore>,
) -> Figures {
    let now = sim.now().await;
    let rows_before = engine.visit_rows().await;
    let day = marketo_sync::store::marketo_day(now);
    let bytes_before = store.api_usage(day).await.expect("usage").bulk_bytes;
    let mark = sim.mark().await;
    reset_peak();
    let start_kb = status_kb("self", "VmRSS:");
    let cpu = cpu_seconds("self");
    let t = Instant::now();
    let summary = engine.step(now, threshold).await;
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self") - cpu;
    let peak_kb = status_kb("self", "VmHWM:");
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    let calls = calls_since(sim, mark).await;
    Figures {
        rows: engine.visit_rows().await - rows_before,
        calls,
        bytes: store.api_usage(day).await.expect("usage").bulk_bytes - bytes_before,
        cpu,
        wall,
        peak_kb,
        start_kb,
    }
}

async fn run(n: u64, sample: u64) {
    let sim = Sim::spawn();
    let dir = tempfile::tempdir().expect("temp dir");
    let crm_url = format!("sqlite://{}", dir.path().join("crm.db").display());
    let db = SqlPool::connect(&crm_url, 1, false).await.expect("crm db");
    db.execute_raw(
        "activities table",
        "CREATE TABLE marketing_activities (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         marketo_guid VARCHAR(64), kind VARCHAR(40), occurred_at DATETIME, \
         marketo_lead_id INTEGER, contact_id VARCHAR(64), detail VARCHAR(255), \
         marketo_id VARCHAR(64), \
         updated_at DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')), \
         deleted BOOLEAN NOT NULL DEFAULT 0); \
         CREATE UNIQUE INDEX ux_ma_guid ON marketing_activities (marketo_guid); \
         CREATE UNIQUE INDEX ux_ma_mid ON marketing_activities (marketo_id)"
            .to_owned(),
    )
    .await
    .expect("activities table");
    let options = json!({"objects": {"marketing_activities": {
        "table": "marketing_activities", "primary_key": "id",
        "modified_column": "updated_at",
        "soft_delete": { "column": "deleted", "value": true },
        "marketo_id_column": "marketo_id", "writable": true, "changelog": false,
    }}});
    let crm: Arc<dyn Crm> = registry::build("sql", Some(&SecretString::from(crm_url)), &options)
        .await
        .expect("crm adapter");
    let start = sim.now().await;
    let clock = Arc::new(ManualClock::new(start));
    let store = store::open_with(
        &format!("sqlite://{}", dir.path().join("state.db").display()),
        OpenOptions {
            clock: clock.clone(),
            ..OpenOptions::default()
        },
    )
    .await
    .expect("store");
    let mut cfg = ClientConfig::new(
        sim.base_url.parse().expect("sim url"),
        CLIENT_ID.to_owned(),
        SecretString::from(CLIENT_SECRET),
    );
    cfg.calls_per_20s = 100;
    cfg.max_concurrency = 10;
    cfg.daily_call_budget = 1_000_000;
    let client = Client::new(cfg).expect("client");

    let mut settings = Settings::default();
    settings.sync.objects = vec!["activities".to_owned()];
    // One export a day at most: a day of activities is one job.
    settings.sync.activity_bulk_every_secs = DAY_SECS;
    // Only the visits: the generated leads' New Lead activities are not this benchmark's.
    settings
        .bootstrap
        .low_watermarks
        .insert(activities::OBJECT.to_owned(), start);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mappings/activities.toml");
    let text = std::fs::read_to_string(&path).expect("activities mapping");
    let mappings = vec![parse_mapping("activities", &path, &text).expect("mapping")];
    let mut schemas = SchemaSet::default();
    for t in client.activity_types().await.expect("activity types") {
        schemas.insert(activities::activity_schema(&t));
    }
    schemas.insert(
        crm.describe("marketing_activities")
            .await
            .expect("describe"),
    );
    let (plans, problems) = compile_all(&settings, &mappings, &schemas);
    assert!(plans.activities.contains_key(&1), "{problems:?}");
    let ctx = Context::new(
        settings,
        mappings,
        client,
        crm,
        store.clone(),
        clock.clone(),
    );
    let mut engine = Engine {
        ctx,
        plans,
        clock,
        db,
    };
    // The queues' first read (nothing yet): watermarks and paging tokens in place.
    engine.step(sim.now().await, 30_000).await;

    // The feed, on a sample of the same density (bulk off).
    let sample_secs = (DAY_SECS * sample).div_ceil(n).max(1);
    sim.visits(sample, sample_secs).await;
    let feed = measure(&mut engine, &sim, 0, &store).await;
    assert_eq!(feed.rows, sample, "every sampled visit copied once");
    let scale = n as f64 / sample as f64;

    // The day at volume: one export.
    sim.visits(n, DAY_SECS).await;
    let bulk = measure(&mut engine, &sim, 30_000, &store).await;
    assert_eq!(bulk.rows, n, "every visit copied once");
    let w = store
        .watermark(Side::Marketo, activities::OBJECT, &activities::queue(1))
        .await
        .expect("watermark");
    let budget = 500u64 * 1024 * 1024;

    println!("activities at volume: {n} Visit Webpage activities of one configured type in a day");
    println!(
        "feed (measured on {sample} rows over {sample_secs} s, scaled x{scale:.1}): REST calls {} (measured {}), bulk calls 0, CPU {:.1} s (measured {:.2} s), wall {:.1} s (measured {:.2} s), peak RSS {} kB (measured; {} kB at its start)",
        (feed.calls.rest as f64 * scale).ceil(),
        feed.calls.rest,
        feed.cpu * scale,
        feed.cpu,
        feed.wall * scale,
        feed.wall,
        feed.peak_kb,
        feed.start_kb,
    );
    println!(
        "bulk: REST calls {}, bulk calls {} ({:?}), total {}, bulk bytes {} ({:.1} MB, {:.0}% of the 500 MB daily budget), CPU {:.1} s, wall {:.1} s, engine peak RSS {} kB ({} kB at its start); simulator peak RSS {} kB",
        bulk.calls.rest,
        bulk.calls.bulk_total(),
        bulk.calls.bulk,
        bulk.calls.rest + bulk.calls.bulk_total(),
        bulk.bytes,
        bulk.bytes as f64 / 1024.0 / 1024.0,
        bulk.bytes as f64 * 100.0 / budget as f64,
        bulk.cpu,
        bulk.wall,
        bulk.peak_kb,
        bulk.start_kb,
        sim.peak(),
    );
    println!("watermark after: {w:?}");
}
