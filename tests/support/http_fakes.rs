//! Fakes and a server harness for the HTTP tests (shared by `http_api.rs` and
//! `status_page_browser.rs` through `#[path]`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use marketo_sync::http::{
    Backlog, BurnPoint, CallsPoint, ConflictView, CycleOutcome, CycleSummary, CycleTotals,
    Direction, ErrorAction, HourlyRecords, HttpConfig, HttpServer, LeaseState,
    ObjectDirectionCounts, ObjectStatus, OpenError, PauseInfo, QuotaBurn, QuotaStatus, Readiness,
    RecordCounts, RecordsPoint, StatusError, StatusReport, StatusSource, WebhookSink,
};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The webhook secret every test server uses; tests grep responses and logs for it.
pub const SECRET: &str = "whsec-Zq8-TOPSECRET-4f1c9b7e";

/// The access token of the servers started with auth on; tests grep responses and logs for it.
pub const TOKEN: &str = "tok-Hq2-TOPSECRET-77aa01";

/// A status source returning whatever the test put in; operator actions change its report's
/// open errors like the store would.
pub struct FakeStatus {
    pub report: Mutex<Result<StatusReport, String>>,
    pub readiness: Mutex<Readiness>,
    /// Every action applied, in order.
    pub actions: Mutex<Vec<(String, ErrorAction)>>,
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
            actions: Mutex::new(Vec::new()),
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

    async fn error_action(&self, id: &str, action: ErrorAction) -> Result<OpenError, StatusError> {
        let mut guard = self.report.lock().expect("lock");
        let report = guard.as_mut().map_err(|reason| StatusError::Unavailable {
            reason: reason.clone(),
        })?;
        let Some(index) = report.open_errors.iter().position(|e| e.id == id) else {
            return Err(StatusError::NotFound {
                what: format!("sync error {id}"),
            });
        };
        self.actions
            .lock()
            .expect("lock")
            .push((id.to_owned(), action));
        match action {
            ErrorAction::Retry => {
                let entry = &mut report.open_errors[index];
                entry.next_retry_at = Some(report.generated_at);
                Ok(entry.clone())
            }
            ErrorAction::Discard => {
                let mut entry = report.open_errors.remove(index);
                report.open_errors_total = report.open_errors_total.saturating_sub(1);
                entry.status = "discarded".into();
                Ok(entry)
            }
        }
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

/// The reason of the sample's failed cycle.
pub const FAILED_REASON: &str = "CRM unreachable: connection refused (crm.example.internal:5432)";

fn backlog(pending: u64, waiting: u64, lag: Option<u64>) -> Backlog {
    Backlog {
        pending,
        waiting_for_operator: waiting,
        oldest_pending_at: (pending > 0).then(|| at(9, 0, 0)),
        oldest_waiting_at: (waiting > 0).then(|| at(8, 0, 0)),
        lag_seconds: lag,
    }
}

fn conflict(id: i64, object: &str, field: &str, winner: &str, h: u32) -> ConflictView {
    ConflictView {
        id,
        object: object.into(),
        marketo_key: format!("10{id}"),
        crm_key: format!("C-{id}"),
        field: field.into(),
        marketo_value: serde_json::json!(format!("mkto-{field}-{id}")),
        crm_value: serde_json::json!(format!("crm-{field}-{id}")),
        base_value: serde_json::Value::Null,
        winner: winner.into(),
        policy: if winner == "crm" {
            "crm_wins"
        } else {
            "newest_wins"
        }
        .into(),
        at: at(h, 0, 0),
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
            message: None,
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
            message: None,
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
            message: Some(FAILED_REASON.into()),
            counts: vec![],
        },
    ];
    let cycles_failed: Vec<CycleSummary> = cycles
        .iter()
        .filter(|c| c.outcome == CycleOutcome::Failed)
        .cloned()
        .collect();
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
                tombstoned: 12,
                marketo_to_crm: counts(9_000, 777, 4_321, 9),
                crm_to_marketo: counts(2_000, 55, 666, 1),
                last_success_at: Some(at(10, 5, 9)),
                last_success_started_at: Some(at(10, 5, 0)),
                lag_seconds: Some(4_321),
                backlog_marketo_to_crm: backlog(17, 2, Some(4_321)),
                backlog_crm_to_marketo: backlog(0, 0, Some(420)),
                records_last_hour: 5_432,
            },
            ObjectStatus {
                object: "company".into(),
                linked: 3_150,
                tombstoned: 0,
                marketo_to_crm: counts(10, 1, 2, 0),
                crm_to_marketo: counts(300, 31, 62, 0),
                last_success_at: None,
                last_success_started_at: None,
                lag_seconds: None,
                backlog_marketo_to_crm: Backlog::default(),
                backlog_crm_to_marketo: backlog(0, 1, None),
                records_last_hour: 0,
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
                first_seen_at: Some(at(9, 0, 0)),
                status: "open".into(),
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
                first_seen_at: Some(at(8, 0, 0)),
                status: "open".into(),
            },
        ],
        open_errors_total: 5,
        failed_cycles: cycles_failed,
        cycle_totals: CycleTotals {
            succeeded: 1_204,
            partial: 31,
            failed: 7,
            cancelled: 2,
            running: 0,
            api_calls: 98_765,
        },
        records_per_hour: vec![
            HourlyRecords {
                hour: at(9, 0, 0),
                object: "lead".into(),
                marketo_to_crm: 120,
                crm_to_marketo: 30,
            },
            HourlyRecords {
                hour: at(10, 0, 0),
                object: "lead".into(),
                marketo_to_crm: 44,
                crm_to_marketo: 7,
            },
            HourlyRecords {
                hour: at(10, 0, 0),
                object: "company".into(),
                marketo_to_crm: 0,
                crm_to_marketo: 7,
            },
        ],
        quota_burn: QuotaBurn {
            day_start: Some(at(6, 0, 0)),
            day_end: Some(
                Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0)
                    .single()
                    .expect("time"),
            ),
            budget: 10_000,
            used: 8_123,
            points: vec![
                BurnPoint {
                    at: at(6, 0, 0),
                    calls: 0,
                },
                BurnPoint {
                    at: at(8, 0, 0),
                    calls: 3_000,
                },
                BurnPoint {
                    at: at(10, 12, 0),
                    calls: 8_123,
                },
            ],
            projected: 48_000,
            projected_over_budget: true,
        },
        recent_conflicts: vec![
            conflict(3, "lead", "phone", "crm", 10),
            conflict(2, "lead", "email", "marketo", 9),
            conflict(1, "company", "name", "crm", 8),
        ],
        conflicts_total: 3,
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

/// Starts a server on 127.0.0.1:0 with the given parts, without an access token.
pub async fn spawn_server(
    status: Arc<dyn StatusSource>,
    sink: Arc<dyn WebhookSink>,
    metrics: PrometheusHandle,
    body_limit: usize,
) -> TestServer {
    spawn_server_with(status, sink, metrics, body_limit, None).await
}

/// Starts a server on 127.0.0.1:0 with the given parts and access token.
pub async fn spawn_server_with(
    status: Arc<dyn StatusSource>,
    sink: Arc<dyn WebhookSink>,
    metrics: PrometheusHandle,
    body_limit: usize,
    auth_token: Option<&str>,
) -> TestServer {
    let settings = HttpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        webhook_secret: SecretString::from(SECRET),
        body_limit,
        auth_token: auth_token.map(|t| SecretString::from(t.to_owned())),
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
