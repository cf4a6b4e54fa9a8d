//! A Marketo webhook reaches the CRM through the running daemon and the real engine, outside the
//! polling cycle.

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::TestApp;
use marketo_sync::app::{Daemon, DaemonParts};
use marketo_sync::engine::{Engine, Runner};
use marketo_sync::http::HttpConfig;
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Waits for `done` to hold, checking every 50 ms, for at most 20 s of real time (the daemon
/// and the simulator run on real sockets).
async fn wait_for<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Starts the daemon on `app` (one cycle at start, then none for an hour) and waits for the
/// first cycle; returns the port, the queue, the shutdown token and the running task.
async fn start_daemon(
    app: &TestApp,
    secret: &str,
) -> (
    u16,
    Arc<marketo_sync::http::OnDemandQueue>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), marketo_sync::app::AppError>>,
) {
    let runner: Arc<dyn Runner> = Arc::new(Engine::new(app.engine.context().clone()));
    let mut parts = DaemonParts::new(
        runner,
        app.store.clone(),
        HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            webhook_secret: SecretString::from(secret),
            body_limit: marketo_sync::http::DEFAULT_BODY_LIMIT,
            auth_token: None,
        },
        "webhook-e2e",
        "holder-1",
    );
    parts.interval = Duration::from_secs(3600);
    let daemon = Daemon::build(parts).await.expect("daemon");
    let port = daemon.port();
    let queue = daemon.queue();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(daemon.run_until_stopped(shutdown.clone()));
    let store = app.store.clone();
    wait_for("the first cycle", || {
        let store = store.clone();
        async move {
            store
                .recent_cycles(5)
                .await
                .map(|c| c.iter().any(|c| c.ended_at.is_some()))
                .unwrap_or(false)
        }
    })
    .await;
    (port, queue, shutdown, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_webhooks_shares_get_leads_calls_of_300() {
    let app = TestApp::start().await;
    let (_port, queue, shutdown, running) = start_daemon(&app, "burst-secret").await;
    let ids: Vec<i64> = (0..700)
        .map(|i| app.marketo_create(json!({"email": format!("burst{i}@example.com")})))
        .collect();
    let mark = app.log_mark();
    for id in &ids {
        queue
            .push(marketo_sync::http::WebhookLead {
                lead_id: *id,
                email: None,
                event: None,
                delivery_id: None,
                received_at: chrono::Utc::now(),
            })
            .expect("queued");
    }
    wait_for("the burst in the CRM", || async {
        app.crm_count().await >= 700
    })
    .await;
    let reads = app
        .sim
        .request_log()
        .into_iter()
        .filter(|e| e.seq > mark && e.counted)
        .filter(|e| {
            (e.path == "/rest/v1/leads.json"
                && (e.method == "GET" || e.query.contains("_method=GET")))
                || e.path.starts_with("/rest/v1/lead/")
        })
        .count();
    assert!(reads <= 3, "700 webhook leads took {reads} Get Leads calls");
    shutdown.cancel();
    running.await.unwrap().expect("clean shutdown");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crm_sync_route_syncs_one_record_to_marketo_now() {
    let app = TestApp::start().await;
    let secret = "crm-route-secret";
    let (port, _queue, shutdown, running) = start_daemon(&app, secret).await;
    let id = app
        .crm_insert_contact("route@example.com", "Route", "Now")
        .await;
    let http = reqwest::Client::new();
    let post = |path: String, secret: &'static str| {
        let http = http.clone();
        async move {
            let answer = http
                .post(format!("http://127.0.0.1:{port}{path}"))
                .header("x-marketo-sync-secret", secret)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let body: serde_json::Value = answer.json().await.unwrap_or_default();
            (status, body)
        }
    };
    let (status, _) = post(format!("/sync/crm/leads/{id}"), "wrong").await;
    assert_eq!(status, 401);
    assert!(app.marketo_by_email("route@example.com").is_empty());
    let (status, body) = post(format!("/sync/crm/leads/{id}"), "crm-route-secret").await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("synced")),
        "{body}"
    );
    assert_eq!(app.marketo_by_email("route@example.com").len(), 1);
    let (status, body) = post("/sync/crm/leads/987654".into(), "crm-route-secret").await;
    assert_eq!(
        (status, &body["outcome"]),
        (404, &json!("not_found")),
        "{body}"
    );
    let (status, body) = post(format!("/sync/crm/widgets/{id}"), "crm-route-secret").await;
    assert_eq!(
        (status, &body["outcome"]),
        (404, &json!("unknown_object")),
        "{body}"
    );
    assert_eq!(body["known"], json!(["leads"]));
    // Still the one cycle: the route did the work.
    assert_eq!(app.store.recent_cycles(10).await.unwrap().len(), 1);
    shutdown.cancel();
    running.await.unwrap().expect("clean shutdown");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crm_sync_route_writes_a_company_in_one_call_and_then_answers_unchanged() {
    let app = TestApp::with(harness::Options {
        objects: vec!["leads".into(), "companies".into()],
        ..harness::Options::default()
    })
    .await;
    let secret = "company-route-secret";
    let (port, _queue, shutdown, running) = start_daemon(&app, secret).await;
    app.crm_exec("INSERT INTO accounts (id, name, industry) VALUES (900, 'Route Co', 'Retail')")
        .await;
    let http = reqwest::Client::new();
    let post = |path: &'static str| {
        let http = http.clone();
        async move {
            let answer = http
                .post(format!("http://127.0.0.1:{port}{path}"))
                .header("x-marketo-sync-secret", secret)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let body: serde_json::Value = answer.json().await.unwrap_or_default();
            (status, body)
        }
    };
    let writes = |mark: u64| {
        app.calls_since(mark)
            .by_path
            .get("POST /rest/v1/companies.json")
            .copied()
            .unwrap_or(0)
    };
    let mark = app.log_mark();
    let (status, body) = post("/sync/crm/companies/900").await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("synced")),
        "{body}"
    );
    assert_eq!(writes(mark), 1);
    assert_eq!(app.calls_since(mark).counted, 1, "one call: the write");
    let mark = app.log_mark();
    let (status, body) = post("/sync/crm/accounts/900").await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("unchanged")),
        "{body}"
    );
    assert_eq!(writes(mark), 0);
    let (status, body) = post("/sync/crm/companies/987654").await;
    assert_eq!(
        (status, &body["outcome"]),
        (404, &json!("not_found")),
        "{body}"
    );
    shutdown.cancel();
    running.await.unwrap().expect("clean shutdown");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_syncs_its_lead_to_the_crm_between_cycles() {
    let app = TestApp::start().await;
    // Something for the first cycle to carry, so that it has records to count.
    app.crm_insert_contact("first@example.com", "First", "Cycle")
        .await;
    let runner: Arc<dyn Runner> = Arc::new(Engine::new(app.engine.context().clone()));
    let secret = "webhook-e2e-secret";
    let mut parts = DaemonParts::new(
        runner,
        app.store.clone(),
        HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            webhook_secret: SecretString::from(secret),
            body_limit: marketo_sync::http::DEFAULT_BODY_LIMIT,
            auth_token: None,
        },
        "webhook-e2e",
        "holder-1",
    );
    // One cycle at start, then none for an hour: only the webhook can carry the new lead.
    parts.interval = Duration::from_secs(3600);
    let daemon = Daemon::build(parts).await.expect("daemon");
    let port = daemon.port();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(daemon.run_until_stopped(shutdown.clone()));

    let store = app.store.clone();
    wait_for("the first cycle", || {
        let store = store.clone();
        async move {
            store
                .recent_cycles(5)
                .await
                .map(|c| c.iter().any(|c| c.ended_at.is_some()))
                .unwrap_or(false)
        }
    })
    .await;

    let http = reqwest::Client::new();
    // The cycle's figures reach /metrics: cycles, records by object and direction, Marketo
    // calls, today's quota and the lag of the synced objects.
    let metrics = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "mksync_cycles_total{outcome=\"succeeded\"}",
        "mksync_cycle_duration_seconds",
        "mksync_records_total{object=\"leads\"",
        "mksync_marketo_calls_total",
        "mksync_marketo_quota_used_calls",
        "mksync_marketo_quota_remaining_calls",
        "mksync_sync_lag_seconds{object=\"leads\"} 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }

    let lead = app.marketo_create(json!({"email": "hook@example.com", "firstName": "Hook"}));
    let url = format!("http://127.0.0.1:{port}/webhooks/marketo");
    let body = json!({"leadId": lead.to_string(), "email": "hook@example.com", "event": "test"});

    let refused = http
        .post(&url)
        .header("x-marketo-sync-secret", "wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let accepted = http
        .post(&url)
        .header("x-marketo-sync-secret", secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);

    wait_for("the lead in the CRM", || async {
        app.crm_by_email("hook@example.com").await.len() == 1
    })
    .await;
    let contact = &app.crm_by_email("hook@example.com").await[0];
    assert_eq!(
        harness::text(&contact.fields, "first_name").as_deref(),
        Some("Hook")
    );
    assert_eq!(
        harness::text(&contact.fields, "marketo_id").as_deref(),
        Some(lead.to_string().as_str())
    );
    // Still exactly one cycle: the webhook path did the work.
    let cycles = app.store.recent_cycles(10).await.unwrap();
    assert_eq!(cycles.len(), 1, "{cycles:?}");

    shutdown.cancel();
    running.await.unwrap().expect("clean shutdown");
    app.cleanup().await;
}
