//! Fakes and a server harness for the HTTP tests (shared by `http_api.rs` and
//! `status_page_browser.rs` through `#[path]`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use marketo_sync::http::{
    CallsPoint, CycleOutcome, CycleSummary, Direction, HttpConfig, HttpServer, LeaseState,
    ObjectDirectionCounts, ObjectStatus, OpenError, PauseInfo, QuotaStatus, Readiness,
    RecordCounts, RecordsPoint, StatusError, StatusReport, StatusSource, WebhookSink,
};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The webhook secret every test server uses; tests grep responses and logs for it.
pub const SECRET: &str = "whsec-Zq8-TOPSECRET-4f1c9b7e";

/// A status source returning whatever the test put in.
pub struct FakeStatus {
    pub report: Mutex<Result<StatusReport, String>>,
    pub readiness: Mutex<Readiness>,
}

impl FakeStatus {
    pub fn new(report: StatusReport) -> FakeStatus {
        FakeStatus {
            report: Mutex::new(Ok(report)),
            readiness: Mutex::new(Readiness {
                store_ok: true,
                lease: LeaseState::Held,
                last_cycle: Some(CycleOutcome::Succeeded),
            }),
        }
    }

    pub fn set_readiness(&self, readiness: Readiness) {
        *self.readiness.lock().expect("lock") = readiness;
    }

    pub fn fail_with(&self, reason: &str) {
        *self.report.lock().expect("lock") = Err(reason.to_owned());
    }
}

#[async_trait]
impl StatusSource for FakeStatus {
    async fn status(&self) -> Result<StatusReport, StatusError> {
        self.report
            .lock()
            .expect("lock")
            .clone()
            .map_err(|reason| StatusError::Unavailable { reason })
    }

    async fn ready(&self) -> Readiness {
        *self.readiness.lock().expect("lock")
    }
}

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, h, m, s)
        .single()
        .expect("valid time")
}

fn counts(read: u64, created: u64, updated: u64, failed: u64) -> RecordCounts {
    RecordCounts {
        read,
        created,
        updated,
        deleted: 0,
        conflicts: 1,
        skipped: read.saturating_sub(created + updated + failed),
        failed,
    }
}

/// A report with known, distinctive values the page tests look for.
pub fn sample_report() -> StatusReport {
    let cycles = vec![
        CycleSummary {
            id: "cyc-0003".into(),
            started_at: at(10, 10, 0),
            ended_at: Some(at(10, 10, 42)),
            outcome: CycleOutcome::Partial,
            duration_ms: Some(42_000),
            api_calls: 37,
            counts: vec![
                ObjectDirectionCounts {
                    object: "lead".into(),
                    direction: Direction::MarketoToCrm,
                    counts: counts(120, 11, 22, 2),
                },
                ObjectDirectionCounts {
                    object: "company".into(),
                    direction: Direction::CrmToMarketo,
                    counts: counts(15, 3, 4, 0),
                },
            ],
        },
        CycleSummary {
            id: "cyc-0002".into(),
            started_at: at(10, 5, 0),
            ended_at: Some(at(10, 5, 9)),
            outcome: CycleOutcome::Succeeded,
            duration_ms: Some(9_000),
            api_calls: 12,
            counts: vec![ObjectDirectionCounts {
                object: "lead".into(),
                direction: Direction::MarketoToCrm,
                counts: counts(40, 5, 6, 0),
            }],
        },
        CycleSummary {
            id: "cyc-0001".into(),
            started_at: at(10, 0, 0),
            ended_at: Some(at(10, 0, 3)),
            outcome: CycleOutcome::Failed,
            duration_ms: Some(3_000),
            api_calls: 4,
            counts: vec![],
        },
    ];
    StatusReport {
        instance: "acme-prod (123-ABC-456)".into(),
        generated_at: at(10, 12, 0),
        paused: Some(PauseInfo {
            reason: "Marketo daily API quota reached (607)".into(),
            until: Some(at(23, 0, 0)),
        }),
        lease: LeaseState::Held,
        recent_cycles: cycles,
        objects: vec![
            ObjectStatus {
                object: "lead".into(),
                linked: 48_213,
                marketo_to_crm: counts(9_000, 777, 4_321, 9),
                crm_to_marketo: counts(2_000, 55, 666, 1),
                last_success_at: Some(at(10, 5, 9)),
                lag_seconds: Some(411),
            },
            ObjectStatus {
                object: "company".into(),
                linked: 3_150,
                marketo_to_crm: counts(10, 1, 2, 0),
                crm_to_marketo: counts(300, 31, 62, 0),
                last_success_at: None,
                lag_seconds: None,
            },
        ],
        quota: QuotaStatus {
            calls_today: 8_123,
            daily_budget: 10_000,
            remaining: 1_877,
            bulk_bytes_today: 150 * 1024 * 1024,
            bulk_budget_bytes: 500 * 1024 * 1024,
        },
        calls_per_cycle: vec![
            CallsPoint {
                cycle_id: "cyc-0001".into(),
                at: at(10, 0, 0),
                calls: 4,
            },
            CallsPoint {
                cycle_id: "cyc-0002".into(),
                at: at(10, 5, 0),
                calls: 12,
            },
            CallsPoint {
                cycle_id: "cyc-0003".into(),
                at: at(10, 10, 0),
                calls: 37,
            },
        ],
        records_over_time: vec![
            RecordsPoint {
                at: at(10, 0, 0),
                marketo_to_crm: 0,
                crm_to_marketo: 0,
            },
            RecordsPoint {
                at: at(10, 5, 0),
                marketo_to_crm: 11,
                crm_to_marketo: 0,
            },
            RecordsPoint {
                at: at(10, 10, 0),
                marketo_to_crm: 33,
                crm_to_marketo: 7,
            },
        ],
        open_errors: vec![
            OpenError {
                id: "err-17".into(),
                object: "lead".into(),
                direction: Direction::MarketoToCrm,
                key: "1001234".into(),
                code: "crm_constraint".into(),
                message: "CRM rejected the row: column \"phone\" is too long (max 20)".into(),
                attempts: 3,
                next_retry_at: Some(at(10, 30, 0)),
            },
            OpenError {
                id: "err-18".into(),
                object: "company".into(),
                direction: Direction::CrmToMarketo,
                key: "ACME-77".into(),
                code: "1003".into(),
                message: "<img src=x onerror=alert(1)> Marketo says: field not updatable".into(),
                attempts: 1,
                next_retry_at: None,
            },
        ],
        open_errors_total: 5,
    }
}

/// A running test server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Result<(), marketo_sync::http::HttpError>>,
    pub client: reqwest::Client,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server and waits for it to end.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.task
            .await
            .expect("server task panicked")
            .expect("server failed");
    }
}

/// Starts a server on 127.0.0.1:0 with the given parts.
pub async fn spawn_server(
    status: Arc<dyn StatusSource>,
    sink: Arc<dyn WebhookSink>,
    metrics: PrometheusHandle,
    body_limit: usize,
) -> TestServer {
    let settings = HttpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        webhook_secret: SecretString::from(SECRET),
        body_limit,
    };
    let server = HttpServer::build(settings, status, sink, metrics)
        .await
        .expect("server builds");
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server.run_until_stopped(cancel.clone()));
    TestServer {
        addr,
        cancel,
        task,
        client: reqwest::Client::new(),
    }
}
