//! Marketo calls and batch latency of 1,000 distinct webhooks (issue 15: at most 10 Get Leads
//! calls, each lead's write within 1 s of its batch).
//!
//! Starts the simulator, the demo CRM on SQLite and the daemon (the real engine, one cycle at
//! start and none for an hour), creates `N` leads in Marketo, posts one webhook per lead to
//! `POST /webhooks/marketo`, and waits until every lead is in the CRM. It prints the counted
//! Marketo calls by route, the Get Leads calls, the batches the on-demand worker made and the
//! longest batch (Get Leads, CRM writes and store commit: a lead's write lands within its
//! batch's duration).
//!
//! `cargo bench --bench ondemand_webhooks [-- N]` (default 1000).

#[path = "../tests/support/harness.rs"]
mod harness;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use harness::TestApp;
use marketo_sync::app::{Daemon, DaemonParts};
use marketo_sync::engine::{
    CrmRecordOutcome, CycleOptions, CycleSummary, Engine, EngineError, OnDemandOutcome, Runner,
};
use marketo_sync::http::HttpConfig;
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TARGET_CALLS: u64 = 10;
const SECRET: &str = "bench-secret";

/// The engine, recording each on-demand batch's size and duration.
struct Timed {
    engine: Engine,
    batches: Mutex<Vec<(usize, Duration)>>,
}

#[async_trait]
impl Runner for Timed {
    async fn run_one_cycle(
        &self,
        options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<CycleSummary, EngineError> {
        self.engine.run_one_cycle(options, cancel).await
    }

    async fn sync_lead_now(
        &self,
        lead_id: i64,
        cancel: &CancellationToken,
    ) -> Result<OnDemandOutcome, EngineError> {
        self.engine.sync_lead_now(lead_id, cancel).await
    }

    async fn sync_leads_now(
        &self,
        lead_ids: &[i64],
        cancel: &CancellationToken,
    ) -> Result<Vec<(i64, OnDemandOutcome)>, EngineError> {
        let started = Instant::now();
        let out = self.engine.sync_leads_now(lead_ids, cancel).await;
        let mut batches = self.batches.lock().expect("batches");
        batches.push((lead_ids.len(), started.elapsed()));
        out
    }

    async fn sync_crm_record_now(
        &self,
        object: &str,
        id: &str,
        cancel: &CancellationToken,
    ) -> Result<CrmRecordOutcome, EngineError> {
        self.engine.sync_crm_record_now(object, id, cancel).await
    }
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let app = TestApp::start().await;
    let timed = Arc::new(Timed {
        engine: Engine::new(app.engine.context().clone()),
        batches: Mutex::new(Vec::new()),
    });
    let mut parts = DaemonParts::new(
        timed.clone() as Arc<dyn Runner>,
        app.store.clone(),
        HttpConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            webhook_secret: SecretString::from(SECRET),
            body_limit: marketo_sync::http::DEFAULT_BODY_LIMIT,
            auth_token: None,
        },
        "bench-ondemand",
        "holder-1",
    );
    parts.interval = Duration::from_secs(3600);
    parts.queue_capacity = n.max(1);
    let daemon = Daemon::build(parts).await.expect("daemon");
    let port = daemon.port();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(daemon.run_until_stopped(shutdown.clone()));
    while app
        .store
        .recent_cycles(1)
        .await
        .map_or(true, |c| c.iter().all(|c| c.ended_at.is_none()))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ids: Vec<i64> = (0..n)
        .map(|i| {
            app.marketo_create(
                json!({"email": format!("hook{i}@example.com"), "firstName": "Hook"}),
            )
        })
        .collect();
    let mark = app.log_mark();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/marketo");
    let t0 = Instant::now();
    for id in &ids {
        let body = json!({"leadId": id, "event": "bench", "deliveryId": format!("d-{id}")});
        let answer = http
            .post(&url)
            .header("x-marketo-sync-secret", SECRET)
            .json(&body)
            .send()
            .await
            .expect("webhook");
        assert_eq!(answer.status(), 202);
    }
    let posted = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    let batched = |t: &Timed| {
        t.batches
            .lock()
            .expect("batches")
            .iter()
            .map(|b| b.0)
            .sum::<usize>()
    };
    while (app.crm_count().await < n || batched(&timed) < n) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = t0.elapsed();
    let synced = app.crm_count().await;
    let tally = app.calls_since(mark);
    let get_leads = get_leads_calls(&app, mark);
    let batches = timed.batches.lock().expect("batches").clone();
    let longest = batches.iter().map(|b| b.1).max().unwrap_or_default();
    println!("ondemand_webhooks: {n} distinct webhooks");
    println!("  posted in {posted:.2?}; all {synced} leads in the CRM after {done:.2?}");
    println!("  counted Marketo calls: {}", tally.counted);
    for (route, calls) in &tally.by_path {
        println!("    {calls:>5}  {route}");
    }
    println!("  Get Leads calls: {get_leads} (target <= {TARGET_CALLS})");
    println!(
        "  on-demand batches: {} (sizes {:?})",
        batches.len(),
        batches.iter().map(|b| b.0).collect::<Vec<_>>()
    );
    println!("  longest batch (read, CRM writes, commit): {longest:.2?} (target < 1 s)");
    shutdown.cancel();
    running.await.expect("join").expect("clean shutdown");
    app.cleanup().await;
}

/// Counted Get Leads calls after `mark`: `GET /rest/v1/leads.json` (or its `POST
/// ?_method=GET` form) and `GET /rest/v1/lead/{id}.json`.
fn get_leads_calls(app: &TestApp, mark: u64) -> u64 {
    let log = app.sim.request_log();
    let reads = log
        .iter()
        .filter(|e| e.seq > mark && e.counted)
        .filter(|e| {
            let by_filter = e.path == "/rest/v1/leads.json"
                && (e.method == "GET" || e.query.contains("_method=GET"));
            by_filter || (e.method == "GET" && e.path.starts_with("/rest/v1/lead/"))
        });
    reads.count() as u64
}
