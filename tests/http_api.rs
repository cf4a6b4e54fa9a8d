//! The HTTP side end to end over a real socket: webhook, health, readiness, metrics, the JSON
//! API, and that the webhook secret never leaks.

#[path = "support/http_fakes.rs"]
mod http_fakes;

use std::io::Write;
use std::sync::{Arc, Mutex};

use http_fakes::{FakeStatus, SECRET, TestServer, sample_report, spawn_server};
use marketo_sync::http::{
    CycleOutcome, DEFAULT_BODY_LIMIT, Direction, HttpConfig, HttpError, HttpServer, LeaseState,
    OnDemandQueue, Readiness, StatusReport,
};
use marketo_sync::model::Side;
use marketo_sync::telemetry::events::{
    BulkBytesUsed, ConflictResolved, CycleCompleted, MarketoCallsUsed, MarketoQuota, PauseChanged,
    PauseScope, RecordOutcome, RecordsSynced, SyncErrorRecorded, SyncLag, WebhookOutcome,
    WebhookReceived,
};
use metrics_exporter_prometheus::PrometheusHandle;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

const MARKETO_BODY: &str = r#"{"leadId": 1001234, "email": "ann.lee@example.com", "event": "data_value_changed", "deliveryId": "trig-55-1001234-2026-11-23T10:00:00Z"}"#;

fn unused_metrics() -> PrometheusHandle {
    marketo_sync::telemetry::metrics::build_recorder().handle()
}

struct Harness {
    server: TestServer,
    queue: Arc<OnDemandQueue>,
    status: Arc<FakeStatus>,
}

async fn harness() -> Harness {
    let queue = Arc::new(OnDemandQueue::new(100));
    let status = Arc::new(FakeStatus::new(sample_report()));
    let server = spawn_server(
        status.clone(),
        queue.clone(),
        unused_metrics(),
        DEFAULT_BODY_LIMIT,
    )
    .await;
    Harness {
        server,
        queue,
        status,
    }
}

async fn post_webhook(
    server: &TestServer,
    secret: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut request = server
        .client
        .post(server.url("/webhooks/marketo"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(secret) = secret {
        request = request.header("X-Marketo-Sync-Secret", secret);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, json)
}

#[tokio::test]
async fn webhook_accepts_a_marketo_shaped_payload_and_queues_the_lead() {
    let h = harness().await;
    let (status, body) = post_webhook(&h.server, Some(SECRET), MARKETO_BODY).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"status": "queued", "leadId": 1001234}));
    let lead = h.queue.try_next().expect("lead queued");
    assert_eq!(lead.lead_id, 1001234);
    assert_eq!(lead.email.as_deref(), Some("ann.lee@example.com"));
    assert_eq!(lead.event.as_deref(), Some("data_value_changed"));
    assert_eq!(
        lead.delivery_id.as_deref(),
        Some("trig-55-1001234-2026-11-23T10:00:00Z")
    );
    assert!(h.queue.is_empty());
    h.server.stop().await;
}

#[tokio::test]
async fn webhook_accepts_lead_id_as_a_string() {
    let h = harness().await;
    let (status, body) = post_webhook(&h.server, Some(SECRET), r#"{"leadId": "42"}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["leadId"], 42);
    assert_eq!(h.queue.try_next().map(|l| l.lead_id), Some(42));
    h.server.stop().await;
}

#[tokio::test]
async fn webhook_collapses_duplicate_deliveries() {
    let h = harness().await;
    let (first, _) = post_webhook(&h.server, Some(SECRET), MARKETO_BODY).await;
    let (second, body) = post_webhook(&h.server, Some(SECRET), MARKETO_BODY).await;
    assert_eq!(first, StatusCode::ACCEPTED);
    assert_eq!(second, StatusCode::ACCEPTED);
    assert_eq!(body, json!({"status": "duplicate", "leadId": 1001234}));
    assert_eq!(h.queue.len(), 1);
    // The same delivery re-sent after the engine took the lead is still a duplicate.
    assert!(h.queue.try_next().is_some());
    let (third, body) = post_webhook(&h.server, Some(SECRET), MARKETO_BODY).await;
    assert_eq!(third, StatusCode::ACCEPTED);
    assert_eq!(body["status"], "duplicate");
    assert!(h.queue.is_empty());
    // Without a delivery id, the lead id collapses events while it waits.
    for _ in 0..3 {
        post_webhook(&h.server, Some(SECRET), r#"{"leadId": 9}"#).await;
    }
    assert_eq!(h.queue.len(), 1);
    h.server.stop().await;
}

#[tokio::test]
async fn webhook_rejects_a_wrong_or_missing_secret() {
    let h = harness().await;
    let wrong = format!("{SECRET}x");
    for secret in [Some(wrong.as_str()), Some(""), Some("whsec"), None] {
        let (status, body) = post_webhook(&h.server, secret, MARKETO_BODY).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "secret {secret:?}");
        let message = body["error"].as_str().expect("json error body");
        assert!(message.contains("X-Marketo-Sync-Secret"), "{message}");
        assert!(!message.contains(SECRET));
    }
    assert!(h.queue.is_empty());
    h.server.stop().await;
}

#[tokio::test]
async fn webhook_rejects_an_oversized_body() {
    let h = harness().await;
    let padding = "x".repeat(DEFAULT_BODY_LIMIT);
    let body = format!(r#"{{"leadId": 5, "pad": "{padding}"}}"#);
    let (status, json) = post_webhook(&h.server, Some(SECRET), body.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert!(
        json["error"]
            .as_str()
            .expect("json error")
            .contains("limit")
    );
    // Also without a Content-Length (chunked), the limit holds.
    let stream = futures::stream::iter(
        body.into_bytes()
            .chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, _) =
        post_webhook(&h.server, Some(SECRET), reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Just under the limit is fine.
    let fits = format!(
        r#"{{"leadId": 5, "pad": "{}"}}"#,
        "x".repeat(DEFAULT_BODY_LIMIT - 100)
    );
    let (status, _) = post_webhook(&h.server, Some(SECRET), fits).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(h.queue.len(), 1);
    h.server.stop().await;
}

#[tokio::test]
async fn webhook_rejects_malformed_json_and_a_missing_lead_id() {
    let h = harness().await;
    let cases = [
        (r#"{"leadId": 12, "email": "#, "not valid JSON"),
        ("leadId=12", "not valid JSON"),
        (r#"[{"leadId": 12}]"#, "JSON object"),
        (r#"{"email": "ann@example.com"}"#, "`leadId` is missing"),
        (r#"{"leadId": null}"#, "`leadId` is missing"),
        (r#"{"leadId": "abc"}"#, "`leadId` is invalid"),
        (r#"{"leadId": 0}"#, "`leadId` is invalid"),
    ];
    for (body, expected) in cases {
        let (status, json) = post_webhook(&h.server, Some(SECRET), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = json["error"].as_str().expect("json error body");
        assert!(message.contains(expected), "{body}: {message}");
    }
    assert!(h.queue.is_empty());
    h.server.stop().await;
}

#[tokio::test]
async fn webhook_reports_a_full_queue_as_unavailable() {
    let queue = Arc::new(OnDemandQueue::new(1));
    let status = Arc::new(FakeStatus::new(sample_report()));
    let server = spawn_server(status, queue.clone(), unused_metrics(), DEFAULT_BODY_LIMIT).await;
    let (first, _) = post_webhook(&server, Some(SECRET), r#"{"leadId": 1}"#).await;
    let (second, body) = post_webhook(&server, Some(SECRET), r#"{"leadId": 2}"#).await;
    assert_eq!(first, StatusCode::ACCEPTED);
    assert_eq!(second, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].as_str().expect("error").contains("full"));
    server.stop().await;
}

#[tokio::test]
async fn healthz_and_readyz_states() {
    let h = harness().await;
    let health = h
        .server
        .client
        .get(h.server.url("/healthz"))
        .send()
        .await
        .expect("get");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.expect("body"), "ok");

    let cases = [
        (
            true,
            LeaseState::Held,
            Some(CycleOutcome::Succeeded),
            StatusCode::OK,
            vec![],
        ),
        (true, LeaseState::Standby, None, StatusCode::OK, vec![]),
        (
            true,
            LeaseState::Held,
            Some(CycleOutcome::Failed),
            StatusCode::OK,
            vec![],
        ),
        (
            false,
            LeaseState::Held,
            Some(CycleOutcome::Succeeded),
            StatusCode::SERVICE_UNAVAILABLE,
            vec!["store unreachable"],
        ),
        (
            true,
            LeaseState::Lost,
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            vec!["sync lease lost"],
        ),
    ];
    for (store_ok, lease, last_cycle, expected, problems) in cases {
        h.status.set_readiness(Readiness {
            store_ok,
            lease,
            last_cycle,
        });
        let response = h
            .server
            .client
            .get(h.server.url("/readyz"))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), expected, "{store_ok} {lease:?}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["ready"], expected == StatusCode::OK);
        assert_eq!(body["store_ok"], store_ok);
        assert_eq!(body["lease"], json!(lease));
        assert_eq!(body["last_cycle"], json!(last_cycle));
        assert_eq!(body["problems"], json!(problems));
    }
    h.server.stop().await;
}

#[tokio::test]
async fn api_status_and_errors_serve_the_report() {
    let h = harness().await;
    let response = h
        .server
        .client
        .get(h.server.url("/api/status"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let report: StatusReport = response.json().await.expect("status json");
    assert_eq!(report, sample_report());

    let errors: Value = h
        .server
        .client
        .get(h.server.url("/api/errors?limit=1"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(errors["total"], 5);
    assert_eq!(errors["errors"].as_array().expect("array").len(), 1);
    assert_eq!(errors["errors"][0]["id"], "err-17");
    assert_eq!(
        errors["errors"][0]["direction"],
        json!(Direction::MarketoToCrm)
    );

    let bad = h
        .server
        .client
        .get(h.server.url("/api/errors?limit=lots"))
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    h.status.fail_with("store down: connection refused");
    let down = h
        .server
        .client
        .get(h.server.url("/api/status"))
        .send()
        .await
        .expect("get");
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = down.text().await.expect("body");
    assert!(
        text.contains("unavailable") && !text.contains("connection refused"),
        "{text}"
    );
    h.server.stop().await;
}

#[tokio::test]
async fn unknown_routes_get_a_json_404() {
    let h = harness().await;
    let response = h
        .server
        .client
        .get(h.server.url("/nope"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.headers().contains_key("x-request-id"));
    h.server.stop().await;
}

#[tokio::test]
async fn metrics_render_the_expected_names_after_events() {
    let recorder = marketo_sync::telemetry::metrics::build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        marketo_sync::telemetry::events::describe_metrics();
        CycleCompleted {
            cycle_id: "cyc-1",
            outcome: CycleOutcome::Succeeded,
            duration: std::time::Duration::from_millis(2_500),
            api_calls: 7,
            ended_at: chrono::Utc::now(),
        }
        .emit();
        RecordsSynced {
            object: "lead",
            direction: Direction::MarketoToCrm,
            outcome: RecordOutcome::Created,
            count: 3,
        }
        .emit();
        RecordsSynced {
            object: "lead",
            direction: Direction::MarketoToCrm,
            outcome: RecordOutcome::Created,
            count: 2,
        }
        .emit();
        ConflictResolved {
            object: "company",
            winner: Side::Crm,
            fields: 2,
        }
        .emit();
        SyncErrorRecorded {
            object: "lead",
            direction: Direction::CrmToMarketo,
            code: "1003",
            retryable: false,
        }
        .emit();
        MarketoCallsUsed { count: 7 }.emit();
        MarketoQuota {
            used_today: 8_000,
            daily_budget: 10_000,
        }
        .emit();
        BulkBytesUsed {
            bytes: 1_048_576,
            used_today: 3_145_728,
            budget: 524_288_000,
        }
        .emit();
        SyncLag {
            object: "lead",
            lag: std::time::Duration::from_secs(90),
        }
        .emit();
        WebhookReceived {
            outcome: WebhookOutcome::Queued,
            lead_id: Some(1001234),
        }
        .emit();
        PauseChanged {
            scope: PauseScope::RestCalls,
            paused: true,
            reason: "daily quota",
            until: None,
        }
        .emit();
    });

    let status = Arc::new(FakeStatus::new(sample_report()));
    let server = spawn_server(
        status,
        Arc::new(OnDemandQueue::new(10)),
        handle,
        DEFAULT_BODY_LIMIT,
    )
    .await;
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    let text = response.text().await.expect("body");
    let expected = [
        r#"mksync_cycles_total{outcome="succeeded"} 1"#,
        r#"mksync_cycle_duration_seconds_bucket{outcome="succeeded",le="5"} 1"#,
        r#"mksync_cycle_duration_seconds_count{outcome="succeeded"} 1"#,
        r#"mksync_records_total{object="lead",direction="marketo_to_crm",outcome="created"} 5"#,
        r#"mksync_conflicts_total{object="company",winner="crm"} 1"#,
        r#"mksync_sync_errors_total{object="lead",direction="crm_to_marketo",code="1003"} 1"#,
        "mksync_marketo_calls_total 7",
        "mksync_marketo_quota_used_calls 8000",
        "mksync_marketo_quota_remaining_calls 2000",
        "mksync_marketo_quota_budget_calls 10000",
        "mksync_marketo_bulk_extract_bytes_total 1048576",
        "mksync_marketo_bulk_quota_used_bytes 3145728",
        "mksync_marketo_bulk_quota_budget_bytes 524288000",
        r#"mksync_sync_lag_seconds{object="lead"} 90"#,
        r#"mksync_webhook_requests_total{outcome="queued"} 1"#,
        r#"mksync_paused{scope="rest_calls"} 1"#,
        "# HELP mksync_records_total",
        "# TYPE mksync_cycle_duration_seconds histogram",
    ];
    for line in expected {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    // Bounded labels only: the lead id never becomes a label.
    assert!(!text.contains("1001234"), "{text}");
    assert!(!text.contains("cyc-1"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn build_refuses_an_empty_secret_and_reports_a_busy_port() {
    let status = Arc::new(FakeStatus::new(sample_report()));
    let queue = Arc::new(OnDemandQueue::new(10));
    let empty = HttpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        webhook_secret: SecretString::from("  "),
        body_limit: DEFAULT_BODY_LIMIT,
        auth_token: None,
    };
    let error = HttpServer::build(empty, status.clone(), queue.clone(), unused_metrics())
        .await
        .err()
        .expect("empty secret refused");
    assert!(matches!(error, HttpError::InvalidConfig { .. }), "{error}");

    let first = spawn_server(status.clone(), queue.clone(), unused_metrics(), 1024).await;
    let busy = HttpConfig {
        listen: first.addr,
        webhook_secret: SecretString::from(SECRET),
        body_limit: DEFAULT_BODY_LIMIT,
        auth_token: None,
    };
    let error = HttpServer::build(busy, status, queue, unused_metrics())
        .await
        .err()
        .expect("busy port refused");
    assert!(matches!(error, HttpError::Bind { .. }), "{error}");
    assert!(error.is_retryable());
    assert!(error.to_string().contains(&first.addr.to_string()));
    first.stop().await;
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let h = harness().await;
    let addr = h.server.addr;
    h.server.stop().await;
    assert!(
        reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err(),
        "server still answering after shutdown"
    );
}

/// A writer that keeps every log line in memory.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// current_thread: the server's tasks run on this thread, so the thread-local subscriber below
// sees their log lines too.
#[tokio::test(flavor = "current_thread")]
async fn the_secret_never_appears_in_responses_or_logs() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .json()
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let recorder = marketo_sync::telemetry::metrics::build_recorder();
    let handle = recorder.handle();
    let queue = Arc::new(OnDemandQueue::new(10));
    let status = Arc::new(FakeStatus::new(sample_report()));
    let server = spawn_server(status.clone(), queue, handle, 1024).await;

    let mut seen = String::new();
    // Every webhook answer, including the rejections.
    let wrong = format!("{SECRET}-wrong");
    for (secret, body) in [
        (Some(SECRET), MARKETO_BODY.to_owned()),
        (Some(SECRET), "{not json".to_owned()),
        (Some(SECRET), "x".repeat(4096)),
        (Some(wrong.as_str()), MARKETO_BODY.to_owned()),
        (None, MARKETO_BODY.to_owned()),
    ] {
        let (_, json) = post_webhook(&server, secret, body).await;
        seen.push_str(&json.to_string());
    }
    // Every page and API.
    for path in [
        "/",
        "/api/status",
        "/api/errors",
        "/metrics",
        "/readyz",
        "/healthz",
        "/missing",
    ] {
        let response = server
            .client
            .get(server.url(path))
            .header("X-Marketo-Sync-Secret", SECRET)
            .send()
            .await
            .expect("get");
        for (name, value) in response.headers() {
            seen.push_str(name.as_str());
            seen.push_str(value.to_str().unwrap_or(""));
        }
        seen.push_str(&response.text().await.expect("body"));
    }
    status.fail_with("store down");
    let response = server
        .client
        .get(server.url("/api/status"))
        .send()
        .await
        .expect("get");
    seen.push_str(&response.text().await.expect("body"));
    server.stop().await;

    assert!(seen.contains("queued"), "the requests were answered");
    assert!(!seen.contains(SECRET), "secret leaked into a response");
    let logged = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logged.contains("webhook received"),
        "logs were captured: {logged}"
    );
    assert!(
        logged.contains("webhook rejected"),
        "logs were captured: {logged}"
    );
    assert!(!logged.contains(SECRET), "secret leaked into the logs");
    assert!(
        !logged.contains("ann.lee@example.com"),
        "an email leaked into the logs"
    );
}

/// A status source whose `status()` waits until released, to hold a request in flight.
struct BlockingStatus {
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl marketo_sync::http::StatusSource for BlockingStatus {
    async fn status(&self) -> Result<StatusReport, marketo_sync::http::StatusError> {
        self.entered.notify_one();
        self.release.notified().await;
        Ok(sample_report())
    }

    async fn ready(&self) -> Readiness {
        Readiness {
            store_ok: true,
            lease: LeaseState::Held,
            last_cycle: None,
        }
    }
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_requests() {
    let status = Arc::new(BlockingStatus {
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let server = spawn_server(
        status.clone(),
        Arc::new(OnDemandQueue::new(10)),
        unused_metrics(),
        DEFAULT_BODY_LIMIT,
    )
    .await;
    let request = tokio::spawn(server.client.get(server.url("/api/status")).send());
    status.entered.notified().await;
    server.cancel.cancel();
    tokio::task::yield_now().await;
    assert!(
        !server.task.is_finished(),
        "server ended with a request in flight"
    );
    status.release.notify_one();
    let response = request.await.expect("join").expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    server
        .task
        .await
        .expect("server task panicked")
        .expect("server failed");
}

#[tokio::test(start_paused = true)]
async fn a_request_that_hangs_times_out() {
    use tower::ServiceExt;
    let status = Arc::new(BlockingStatus {
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let settings = HttpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        webhook_secret: SecretString::from(SECRET),
        body_limit: DEFAULT_BODY_LIMIT,
        auth_token: None,
    };
    let app = marketo_sync::http::router(
        &settings,
        status,
        Arc::new(OnDemandQueue::new(10)),
        unused_metrics(),
    )
    .expect("router");
    let request = axum::http::Request::get("/api/status")
        .body(axum::body::Body::empty())
        .expect("request");
    // The paused clock jumps to the timeout as soon as everything is idle.
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), axum::http::StatusCode::REQUEST_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// Auth, operator actions, conflicts and totals

use chrono::{DateTime, TimeZone, Utc};
use http_fakes::{TOKEN, spawn_server_with};
use marketo_sync::app::StoreStatus;
use marketo_sync::http::StatusSource;
use marketo_sync::model::Value as FieldValue;
use marketo_sync::store::{
    Conflict, CycleCount, CycleRecord, ErrorStatus, Link, ManualClock, OpenOptions, StateStore,
    StepCommit, SyncError,
};

const PROTECTED_GETS: [&str; 6] = [
    "/",
    "/api/status",
    "/api/errors",
    "/api/conflicts",
    "/api/conflicts?object=lead",
    "/metrics",
];

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes())
    )
}

async fn auth_harness() -> Harness {
    let queue = Arc::new(OnDemandQueue::new(100));
    let status = Arc::new(FakeStatus::new(sample_report()));
    let server = spawn_server_with(
        status.clone(),
        queue.clone(),
        unused_metrics(),
        DEFAULT_BODY_LIMIT,
        Some(TOKEN),
    )
    .await;
    Harness {
        server,
        queue,
        status,
    }
}

#[tokio::test]
async fn with_a_token_everything_but_health_and_the_webhook_needs_it() {
    let h = auth_harness().await;
    let c = &h.server.client;
    for path in PROTECTED_GETS {
        let response = c.get(h.server.url(path)).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let challenges: Vec<String> = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect();
        assert!(
            challenges.iter().any(|c| c.starts_with("Basic realm=")),
            "{path}: {challenges:?}"
        );
        let body = response.text().await.expect("body");
        assert!(body.contains("authentication required"), "{body}");
        assert!(!body.contains(TOKEN));

        for wrong in [
            format!("Bearer {TOKEN}x"),
            "Bearer ".to_owned(),
            basic("ops", "nope"),
            format!("Token {TOKEN}"),
        ] {
            let response = c
                .get(h.server.url(path))
                .header("authorization", wrong.as_str())
                .send()
                .await
                .expect("sent");
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{path} {wrong}"
            );
        }
        for good in [format!("Bearer {TOKEN}"), basic("ops", TOKEN)] {
            let response = c
                .get(h.server.url(path))
                .header("authorization", good.as_str())
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let body = response.text().await.expect("body");
            assert!(!body.contains(TOKEN), "{path} echoes the token");
        }
    }
    // The actions are protected too, and nothing happens without the token.
    let response = c
        .post(h.server.url("/api/errors/err-17/retry"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(h.status.actions.lock().expect("lock").is_empty());
    // Health, readiness and the webhook (its own secret) stay reachable without the token.
    for path in ["/healthz", "/readyz"] {
        let response = c.get(h.server.url(path)).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let (status, body) = post_webhook(&h.server, Some(SECRET), MARKETO_BODY).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(h.queue.len(), 1);
    h.server.stop().await;
}

#[tokio::test]
async fn without_a_token_the_api_is_open() {
    let h = harness().await;
    for path in PROTECTED_GETS {
        let response = h
            .server
            .client
            .get(h.server.url(path))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    h.server.stop().await;
}

#[tokio::test]
async fn an_empty_token_is_refused_at_build() {
    let settings = HttpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        webhook_secret: SecretString::from(SECRET),
        body_limit: DEFAULT_BODY_LIMIT,
        auth_token: Some(SecretString::from("  ")),
    };
    let error = HttpServer::build(
        settings,
        Arc::new(FakeStatus::new(sample_report())),
        Arc::new(OnDemandQueue::new(1)),
        unused_metrics(),
    )
    .await
    .err()
    .expect("refused");
    assert!(error.to_string().contains("auth_token is empty"), "{error}");
}

async fn post_json(server: &TestServer, path: &str, origin: Option<&str>) -> (StatusCode, Value) {
    let mut request = server.client.post(server.url(path));
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.expect("sent");
    let status = response.status();
    (status, response.json().await.expect("json body"))
}

#[tokio::test]
async fn retry_and_discard_change_the_open_ledger() {
    let h = harness().await;
    let (status, body) = post_json(&h.server, "/api/errors/err-18/retry", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["action"], "retry");
    assert_eq!(body["error"]["id"], "err-18");
    assert_eq!(body["error"]["next_retry_at"], "2026-11-23T10:12:00Z");

    // The page's own origin may act; another site may not.
    let own = format!("http://{}", h.server.addr);
    let (status, body) = post_json(
        &h.server,
        "/api/errors/err-17/discard",
        Some("http://evil.example"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = post_json(&h.server, "/api/errors/err-17/discard", Some(&own)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["error"]["status"], "discarded");

    let (status, body) = post_json(&h.server, "/api/errors/err-99/retry", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().expect("message").contains("err-99"));
    let response = h
        .server
        .client
        .get(h.server.url("/api/errors/err-18/retry"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);

    let report: Value = h
        .server
        .client
        .get(h.server.url("/api/status"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(report["open_errors_total"], 4);
    let ids: Vec<&str> = report["open_errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec!["err-18"]);
    assert_eq!(
        *h.status.actions.lock().expect("lock"),
        vec![
            ("err-18".to_owned(), marketo_sync::http::ErrorAction::Retry),
            (
                "err-17".to_owned(),
                marketo_sync::http::ErrorAction::Discard
            ),
        ]
    );
    h.server.stop().await;
}

// --- A real store behind the API -------------------------------------------------------------

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("time")
}

fn ago(minutes: i64) -> DateTime<Utc> {
    now() - chrono::Duration::minutes(minutes)
}

fn lead_count(direction: marketo_sync::store::Direction, created: u64) -> CycleCount {
    CycleCount {
        object: "lead".into(),
        direction: Some(direction),
        read: created,
        created,
        ..CycleCount::default()
    }
}

fn record(
    started: DateTime<Utc>,
    outcome: marketo_sync::store::CycleOutcome,
    counts: Vec<CycleCount>,
    message: Option<&str>,
) -> CycleRecord {
    CycleRecord {
        id: uuid::Uuid::new_v4(),
        started_at: started,
        ended_at: Some(started + chrono::Duration::seconds(30)),
        outcome,
        steps: Vec::new(),
        counts,
        api_calls: 10,
        message: message.map(str::to_owned),
    }
}

fn ledger_entry(
    object: &str,
    direction: marketo_sync::store::Direction,
    key: &str,
    first_seen: DateTime<Utc>,
    retry: Option<DateTime<Utc>>,
) -> SyncError {
    SyncError {
        id: uuid::Uuid::new_v4(),
        object: object.into(),
        direction,
        record_key: key.into(),
        other_key: None,
        payload: json!({ "email": "private@example.com" }),
        code: "1003".into(),
        message: format!("Marketo rejected {key}: field not updatable"),
        attempts: 2,
        first_seen_at: first_seen,
        last_seen_at: first_seen,
        next_retry_at: retry,
        status: ErrorStatus::Open,
    }
}

fn linked(object: &str, key: &str, tombstoned: bool) -> Link {
    Link {
        object: object.into(),
        marketo_key: key.into(),
        crm_key: format!("c-{key}"),
        base: Default::default(),
        base_hash: String::new(),
        agreed_at: ago(600),
        tombstone: tombstoned.then(|| marketo_sync::store::Tombstone {
            kind: marketo_sync::store::TombstoneKind::Deleted,
            side: Side::Crm,
            at: ago(60),
        }),
    }
}

fn settled(object: &str, field: &str, winner: Side, at: DateTime<Utc>) -> Conflict {
    Conflict {
        id: 0,
        object: object.into(),
        marketo_key: "1001".into(),
        crm_key: "C-1001".into(),
        field: field.into(),
        marketo_value: FieldValue::from("from-marketo"),
        crm_value: FieldValue::from("from-crm"),
        base_value: Some(FieldValue::from("before")),
        winner,
        policy: "newest_wins".into(),
        at,
    }
}

struct StoreSetup {
    _dir: tempfile::TempDir,
    store: Arc<dyn StateStore>,
    status: Arc<StoreStatus>,
    waiting_id: uuid::Uuid,
    pending_id: uuid::Uuid,
}

/// A SQLite store with a known history, behind the real status source, at `now()`.
async fn store_setup() -> StoreSetup {
    use marketo_sync::store::{CycleOutcome as Out, Direction as Dir};
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let clock = ManualClock::new(now());
    let store = marketo_sync::store::open_with(
        &url,
        OpenOptions {
            clock: Arc::new(clock.clone()),
            ..OpenOptions::default()
        },
    )
    .await
    .expect("store");
    // 55 old cycles, more than the 50 the report lists: the totals must still count them.
    for i in 0..55 {
        let c = record(
            ago(3 * 24 * 60 + i),
            Out::Succeeded,
            vec![lead_count(Dir::MarketoToCrm, 1)],
            None,
        );
        store.record_cycle(&c).await.expect("old cycle");
    }
    let succeeded = record(
        ago(120),
        Out::Succeeded,
        vec![lead_count(Dir::MarketoToCrm, 5)],
        None,
    );
    let failed = record(
        ago(60),
        Out::Failed,
        vec![],
        Some("CRM unreachable: connection refused"),
    );
    let partial = record(
        ago(30),
        Out::Partial,
        vec![
            lead_count(Dir::MarketoToCrm, 1),
            CycleCount {
                object: "company".into(),
                direction: Some(Dir::CrmToMarketo),
                updated: 3,
                ..CycleCount::default()
            },
        ],
        None,
    );
    for c in [&succeeded, &failed, &partial] {
        store.record_cycle(c).await.expect("cycle");
    }
    let pending = ledger_entry("lead", Dir::MarketoToCrm, "101", ago(180), Some(ago(-5)));
    let waiting = ledger_entry("lead", Dir::MarketoToCrm, "102", ago(14_400), None);
    let company = ledger_entry("company", Dir::CrmToMarketo, "C-7", ago(10), Some(ago(-5)));
    let (pending_id, waiting_id) = (pending.id, waiting.id);
    store
        .commit(StepCommit {
            errors_upsert: vec![pending, waiting, company],
            links_upsert: vec![
                linked("lead", "1", false),
                linked("lead", "2", false),
                linked("lead", "3", false),
                linked("lead", "4", true),
                linked("company", "X", false),
            ],
            conflicts: vec![
                settled("lead", "email", Side::Marketo, ago(300)),
                settled("lead", "phone", Side::Crm, ago(200)),
                settled("company", "name", Side::Crm, ago(100)),
            ],
            ..StepCommit::default()
        })
        .await
        .expect("commit");
    let day = marketo_sync::store::marketo_day(now());
    store.add_api_usage(day, 600, 0).await.expect("usage");
    let status = Arc::new(StoreStatus::detached(
        Arc::clone(&store),
        "123-ABC-456",
        2_000,
        500 << 20,
        Arc::new(clock),
    ));
    StoreSetup {
        _dir: dir,
        store,
        status,
        waiting_id,
        pending_id,
    }
}

async fn get_json(server: &TestServer, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = server.client.get(server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("sent");
    let status = response.status();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn the_report_over_a_real_store_has_totals_backlog_lag_and_failures() {
    let setup = store_setup().await;
    let server = spawn_server_with(
        setup.status.clone(),
        Arc::new(OnDemandQueue::new(1)),
        unused_metrics(),
        DEFAULT_BODY_LIMIT,
        Some(TOKEN),
    )
    .await;
    let (status, r) = get_json(&server, "/api/status", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{r}");

    // Totals come from the store, beyond the 50 listed cycles.
    assert_eq!(r["recent_cycles"].as_array().expect("cycles").len(), 50);
    assert_eq!(r["cycle_totals"]["succeeded"], 56);
    assert_eq!(r["cycle_totals"]["partial"], 1);
    assert_eq!(r["cycle_totals"]["failed"], 1);
    assert_eq!(r["cycle_totals"]["api_calls"], 580);
    let objects = r["objects"].as_array().expect("objects");
    let names: Vec<&str> = objects
        .iter()
        .map(|o| o["object"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["company", "lead"]);
    let (company, lead) = (&objects[0], &objects[1]);
    assert_eq!(lead["marketo_to_crm"]["created"], 61);
    assert_eq!(company["crm_to_marketo"]["updated"], 3);
    // Linked counts are the store's live links.
    assert_eq!(lead["linked"], 3);
    assert_eq!(lead["tombstoned"], 1);
    assert_eq!(company["linked"], 1);
    // Backlog and lag: the pending entry (3 h old) is older than the last success (30 min).
    let m2c = &lead["backlog_marketo_to_crm"];
    assert_eq!(m2c["pending"], 1);
    assert_eq!(m2c["waiting_for_operator"], 1);
    assert_eq!(m2c["lag_seconds"], 3 * 3600);
    assert_eq!(lead["backlog_crm_to_marketo"]["lag_seconds"], 30 * 60);
    assert_eq!(lead["lag_seconds"], 3 * 3600);
    // The company's pending entry (10 min) is newer than its last success: lag is 30 min.
    assert_eq!(company["lag_seconds"], 30 * 60);
    assert_eq!(company["backlog_crm_to_marketo"]["pending"], 1);
    assert_eq!(lead["records_last_hour"], 1);
    assert_eq!(company["records_last_hour"], 3);
    // The failed cycle and its reason.
    let failed = r["failed_cycles"].as_array().expect("failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["message"], "CRM unreachable: connection refused");
    assert_eq!(r["open_errors_total"], 3);
    // Quota burn: 600 calls in the first 6 h of the Marketo day (midnight Chicago is 06:00Z).
    let burn = &r["quota_burn"];
    assert_eq!(burn["day_start"], "2026-11-23T06:00:00Z");
    assert_eq!(burn["day_end"], "2026-11-24T06:00:00Z");
    assert_eq!(burn["used"], 600);
    assert_eq!(burn["projected"], 2_400);
    assert_eq!(burn["projected_over_budget"], true);
    // Records per hour: the partial cycle's hour, per object.
    let hourly = r["records_per_hour"].as_array().expect("hourly");
    assert!(
        hourly
            .iter()
            .any(|h| h["object"] == "company" && h["crm_to_marketo"] == 3),
        "{hourly:?}"
    );
    assert_eq!(r["conflicts_total"], 3);
    assert_eq!(r["recent_conflicts"][0]["field"], "name");
    server.stop().await;
}

#[tokio::test]
async fn conflicts_are_filtered_by_object_field_winner_and_since() {
    let setup = store_setup().await;
    let server = spawn_server(
        setup.status.clone(),
        Arc::new(OnDemandQueue::new(1)),
        unused_metrics(),
        DEFAULT_BODY_LIMIT,
    )
    .await;
    let fields = |v: &Value| -> Vec<String> {
        v["conflicts"]
            .as_array()
            .expect("conflicts")
            .iter()
            .map(|c| c["field"].as_str().expect("field").to_owned())
            .collect()
    };
    let cases: [(&str, &[&str]); 7] = [
        ("/api/conflicts", &["name", "phone", "email"]),
        ("/api/conflicts?object=lead", &["phone", "email"]),
        ("/api/conflicts?winner=crm", &["name", "phone"]),
        ("/api/conflicts?object=lead&winner=marketo", &["email"]),
        ("/api/conflicts?field=phone", &["phone"]),
        (
            "/api/conflicts?since=2026-11-23T08:00:00Z",
            &["name", "phone"],
        ),
        ("/api/conflicts?limit=1", &["name"]),
    ];
    for (path, expected) in cases {
        let (status, body) = get_json(&server, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(fields(&body), expected, "{path}");
    }
    let (_, body) = get_json(&server, "/api/conflicts?field=phone", None).await;
    let c = &body["conflicts"][0];
    assert_eq!(c["marketo_value"], "from-marketo");
    assert_eq!(c["crm_value"], "from-crm");
    assert_eq!(c["base_value"], "before");
    assert_eq!(c["winner"], "crm");
    assert_eq!(c["policy"], "newest_wins");
    assert_eq!(c["at"], "2026-11-23T08:40:00Z");
    for bad in [
        "/api/conflicts?winner=nobody",
        "/api/conflicts?since=yesterday",
        "/api/conflicts?limit=-1",
    ] {
        let (status, body) = get_json(&server, bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].is_string());
    }
    server.stop().await;
}

#[tokio::test]
async fn retry_and_discard_write_the_store() {
    let setup = store_setup().await;
    let server = spawn_server(
        setup.status.clone(),
        Arc::new(OnDemandQueue::new(1)),
        unused_metrics(),
        DEFAULT_BODY_LIMIT,
    )
    .await;
    let (status, body) = post_json(
        &server,
        &format!("/api/errors/{}/retry", setup.waiting_id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = setup
        .store
        .error(setup.waiting_id)
        .await
        .expect("read")
        .expect("entry");
    assert_eq!(stored.status, ErrorStatus::Open);
    assert_eq!(stored.next_retry_at, Some(now()));

    let (status, body) = post_json(
        &server,
        &format!("/api/errors/{}/discard", setup.pending_id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["error"]["status"], "discarded");
    let stored = setup
        .store
        .error(setup.pending_id)
        .await
        .expect("read")
        .expect("entry");
    assert_eq!(stored.status, ErrorStatus::Discarded);
    let list = setup.status.open_errors(10).await.expect("list");
    assert_eq!(list.total, 2);

    let unknown = uuid::Uuid::new_v4();
    let (status, _) = post_json(&server, &format!("/api/errors/{unknown}/retry"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = post_json(&server, "/api/errors/not-a-uuid/discard", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .expect("message")
            .contains("not-a-uuid")
    );
    server.stop().await;
}

// current_thread: the server's tasks log on this thread, where the subscriber below is set.
#[tokio::test(flavor = "current_thread")]
async fn the_token_never_appears_in_logs_and_an_open_public_listener_is_warned_about() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .json()
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // With a token, on loopback: no warning; requests with right and wrong tokens log nothing
    // of either.
    let h = auth_harness().await;
    for auth in [
        format!("Bearer {TOKEN}"),
        format!("Bearer {TOKEN}-wrong"),
        basic("ops", TOKEN),
    ] {
        let response = h
            .server
            .client
            .get(h.server.url("/api/status"))
            .header("authorization", auth.as_str())
            .send()
            .await
            .expect("sent");
        let body = response.text().await.expect("body");
        assert!(!body.contains(TOKEN));
    }
    h.server.stop().await;
    let logged = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logged.contains("http_request"),
        "logs were captured: {logged}"
    );
    assert!(!logged.contains(TOKEN), "the token was logged");
    assert!(!logged.contains("without authentication"), "{logged}");

    // Without a token on every interface: a warning naming the setting.
    let settings = HttpConfig {
        listen: "0.0.0.0:0".parse().expect("addr"),
        webhook_secret: SecretString::from(SECRET),
        body_limit: DEFAULT_BODY_LIMIT,
        auth_token: None,
    };
    let server = HttpServer::build(
        settings,
        Arc::new(FakeStatus::new(sample_report())),
        Arc::new(OnDemandQueue::new(1)),
        unused_metrics(),
    )
    .await
    .expect("builds");
    drop(server);
    let logged = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    let warning = logged
        .lines()
        .find(|l| l.contains("without authentication"))
        .expect("a warning about the open listener");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("http.auth_token"), "{warning}");
}

#[test]
fn the_token_setting_comes_from_the_environment_or_a_file_never_inline() {
    use marketo_sync::config::{SettingsSource, load, load_settings};
    use secrecy::ExposeSecret;
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, text).expect("write");
    };
    write(
        "default.toml",
        "[marketo]\nmunchkin_id = \"123-ABC-456\"\nclient_id = \"client\"\n\
         [crm]\nadapter = \"sql\"\nurl = \"sqlite://crm.db\"\n\
         [crm.options.objects.contacts]\ntable = \"Contacts\"\nmodifiedColumn = \"updatedAt\"\n\
         [sync]\nobjects = [\"leads\"]\n",
    );
    write(
        "mappings/leads.toml",
        "marketo_object = \"lead\"\ncrm_object = \"contacts\"\n[keys]\n\
         marketo_crm_key = \"crmContactId\"\ncrm_marketo_id = \"marketo_lead_id\"\n\
         [[fields]]\nmarketo = \"email\"\ncrm = \"email\"\n",
    );
    let env = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let secret = ("MKSYNC__MARKETO__CLIENT_SECRET", "x");

    // From the environment, into the listener's settings.
    let source = SettingsSource::new(dir.path(), None)
        .with_vars(env(&[secret, ("MKSYNC__HTTP__AUTH_TOKEN", TOKEN)]));
    let loaded = load(&source).expect("loads");
    let http = marketo_sync::app::http_config(&loaded.settings);
    assert_eq!(
        http.auth_token.as_ref().map(|t| t.expose_secret()),
        Some(TOKEN)
    );
    assert!(!format!("{loaded:?}{http:?}").contains(TOKEN));

    // From a file.
    write("secrets/token", &format!("{TOKEN}\n"));
    let source = SettingsSource::new(dir.path(), None).with_vars(env(&[
        secret,
        ("MKSYNC__HTTP__AUTH_TOKEN_FILE", "secrets/token"),
    ]));
    let loaded = load(&source).expect("loads");
    assert_eq!(
        loaded
            .settings
            .http
            .auth_token
            .as_ref()
            .map(|t| t.expose_secret()),
        Some(TOKEN)
    );

    // Inline in TOML: refused, naming the variable and without echoing the value.
    write(
        "production.toml",
        &format!("[http]\nauth_token = \"{TOKEN}\"\n"),
    );
    let source = SettingsSource::new(dir.path(), Some("production")).with_vars(env(&[secret]));
    let (settings, problems) = load_settings(&source);
    assert!(settings.is_none());
    let text = format!("{problems:?}");
    assert!(text.contains("MKSYNC__HTTP__AUTH_TOKEN"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
}
