//! The HTTP side: webhooks, health, metrics and the status page.
//!
//! One axum listener serves:
//!
//! | route                   | what                                                          |
//! |-------------------------|---------------------------------------------------------------|
//! | `POST /webhooks/marketo`| on-demand sync of one lead ([`webhook`]), 202 at once         |
//! | `POST /sync/crm/{object}/{id}` | sync one CRM record to Marketo now ([`crm_sync`])      |
//! | `GET /healthz`          | liveness: 200 `ok` while the process serves requests          |
//! | `GET /readyz`           | readiness ([`Readiness::problems`] is the rule), 200 or 503   |
//! | `GET /metrics`          | Prometheus text format                                        |
//! | `GET /`                 | the status page for people (self-contained HTML, no network)  |
//! | `GET /api/status`       | [`StatusReport`] as JSON (what the page draws)                |
//! | `GET /api/errors`       | [`ErrorList`] as JSON, `?limit=N` (default 100, at most 1000) |
//! | `POST /api/errors/{id}/retry` | retry one open ledger entry at the next cycle           |
//! | `POST /api/errors/{id}/discard` | discard one ledger entry                              |
//! | `GET /api/conflicts`    | [`ConflictList`], `?object=&field=&winner=&since=&limit=`     |
//!
//! With [`HttpConfig::auth_token`] set, every route but `/healthz`, `/readyz` and the webhook
//! (which checks its own shared secret) needs `Authorization: Bearer <token>` or HTTP Basic
//! auth with the token as the password (any user name; browsers prompt for it). Tokens are
//! compared in constant time and never logged. The `POST` routes also refuse requests whose
//! `Origin` is another site, so a page elsewhere cannot make a signed-in browser press them.
//!
//! [`HttpServer::build`] binds the listener (port 0 is fine in tests) and
//! [`HttpServer::run_until_stopped`] serves until the cancellation token fires, then drains
//! in-flight requests, each capped by [`REQUEST_TIMEOUT`]. Request logs carry the method, the
//! route pattern, the status and a request id; never headers, query strings or bodies.

pub mod crm_sync;
mod page;
pub mod queue;
pub mod status;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use queue::OnDemandQueue;
pub use status::{
    Backlog, BurnPoint, CallsPoint, ConflictList, ConflictQuery, ConflictView, CycleOutcome,
    CycleSummary, CycleTotals, Direction, ErrorAction, ErrorList, HourlyRecords, LeaseState,
    ObjectDirectionCounts, ObjectStatus, OpenError, PauseInfo, QuotaBurn, QuotaStatus, Readiness,
    RecordCounts, RecordsPoint, StatusError, StatusReport, StatusSource,
};
pub use webhook::{EnqueueError, Enqueued, PayloadError, WebhookLead, WebhookSink};

use crate::telemetry::events::{WebhookOutcome, WebhookReceived};

/// The default cap on a webhook body: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// The longest any request may take; graceful shutdown waits at most this long per request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The default and the largest `limit` of `GET /api/errors`.
const DEFAULT_ERRORS_LIMIT: usize = 100;
const MAX_ERRORS_LIMIT: usize = 1000;

/// Settings for the HTTP listener.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpConfig {
    /// The address to listen on, e.g. `0.0.0.0:8080` (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The shared secret Marketo sends in the `X-Marketo-Sync-Secret` header. Must not be empty.
    pub webhook_secret: SecretString,
    /// The largest webhook body accepted, in bytes (default 64 KiB).
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// The token the status page, the JSON API and `/metrics` require (bearer, or the password
    /// of HTTP Basic auth); `None` leaves them open. Must not be empty when set.
    #[serde(default)]
    pub auth_token: Option<SecretString>,
}

fn default_body_limit() -> usize {
    DEFAULT_BODY_LIMIT
}

/// Errors of the HTTP side.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The settings cannot work (e.g. an empty webhook secret).
    #[error("invalid http settings: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("http server failed")]
    Serve {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl HttpError {
    /// Returns whether trying again may succeed (a port in use may be freed; a bad setting not).
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::InvalidConfig { .. } => false,
            HttpError::Bind { source, .. } => {
                source.kind() == std::io::ErrorKind::AddrInUse
                    || source.kind() == std::io::ErrorKind::AddrNotAvailable
            }
            HttpError::Serve { .. } => true,
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
struct AppState {
    /// SHA-256 of the webhook secret: comparing digests in constant time hides the length too.
    secret_digest: Arc<[u8; 32]>,
    /// SHA-256 of the access token, when one is required.
    auth_digest: Option<Arc<[u8; 32]>>,
    status: Arc<dyn StatusSource>,
    sink: Arc<dyn WebhookSink>,
    crm_sync: Option<Arc<dyn crm_sync::CrmRecordSync>>,
    metrics: PrometheusHandle,
}

/// The HTTP server, bound and ready to run.
pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    local_addr: SocketAddr,
}

impl HttpServer {
    /// Builds the routes and binds the listener on `settings.listen`.
    ///
    /// # Errors
    ///
    /// Returns [`HttpError::InvalidConfig`] for an empty webhook secret or a zero body limit,
    /// and [`HttpError::Bind`] when the address cannot be bound.
    pub async fn build(
        settings: HttpConfig,
        status: Arc<dyn StatusSource>,
        sink: Arc<dyn WebhookSink>,
        metrics: PrometheusHandle,
    ) -> Result<HttpServer, HttpError> {
        Self::build_with_crm_sync(settings, status, sink, None, metrics).await
    }

    /// As [`HttpServer::build`], with `POST /sync/crm/{object}/{id}` served by `crm_sync`
    /// (without it, the route answers 404).
    ///
    /// # Errors
    ///
    /// As [`HttpServer::build`].
    pub async fn build_with_crm_sync(
        settings: HttpConfig,
        status: Arc<dyn StatusSource>,
        sink: Arc<dyn WebhookSink>,
        crm_sync: Option<Arc<dyn crm_sync::CrmRecordSync>>,
        metrics: PrometheusHandle,
    ) -> Result<HttpServer, HttpError> {
        let addr = settings.listen;
        let router = router_with(&settings, status, sink, crm_sync, metrics)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { addr, source })?;
        if settings.auth_token.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                addr = %local_addr,
                "the status page, the JSON API and /metrics are served without authentication \
                 on a non-loopback address; set http.auth_token (MKSYNC__HTTP__AUTH_TOKEN)"
            );
        }
        Ok(HttpServer {
            listener,
            router,
            local_addr,
        })
    }

    /// Returns the bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the bound port.
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Serves until `shutdown` fires, then stops accepting and waits for in-flight requests
    /// (each capped by [`REQUEST_TIMEOUT`]).
    ///
    /// # Errors
    ///
    /// Returns [`HttpError::Serve`] when the listener fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), HttpError> {
        tracing::info!(addr = %self.local_addr, "http server listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(|source| HttpError::Serve { source })?;
        tracing::info!("http server stopped");
        Ok(())
    }
}

/// Returns the application's routes with their layers, for embedding in another server.
///
/// # Errors
///
/// Returns [`HttpError::InvalidConfig`] for an empty webhook secret or a zero body limit.
pub fn router(
    settings: &HttpConfig,
    status: Arc<dyn StatusSource>,
    sink: Arc<dyn WebhookSink>,
    metrics: PrometheusHandle,
) -> Result<Router, HttpError> {
    router_with(settings, status, sink, None, metrics)
}

/// As [`router`], with the on-demand CRM sync route served by `crm_sync`.
///
/// # Errors
///
/// As [`router`].
pub fn router_with(
    settings: &HttpConfig,
    status: Arc<dyn StatusSource>,
    sink: Arc<dyn WebhookSink>,
    crm_sync: Option<Arc<dyn crm_sync::CrmRecordSync>>,
    metrics: PrometheusHandle,
) -> Result<Router, HttpError> {
    let secret = settings.webhook_secret.expose_secret();
    if secret.trim().is_empty() {
        return Err(HttpError::InvalidConfig {
            reason: "webhook_secret is empty",
        });
    }
    if settings.body_limit == 0 {
        return Err(HttpError::InvalidConfig {
            reason: "body_limit is 0",
        });
    }
    let auth_digest = match &settings.auth_token {
        Some(token) if token.expose_secret().trim().is_empty() => {
            return Err(HttpError::InvalidConfig {
                reason: "auth_token is empty",
            });
        }
        Some(token) => Some(Arc::new(
            Sha256::digest(token.expose_secret().as_bytes()).into(),
        )),
        None => None,
    };
    let state = AppState {
        secret_digest: Arc::new(Sha256::digest(secret.as_bytes()).into()),
        auth_digest,
        status,
        sink,
        crm_sync,
        metrics,
    };

    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                // The route pattern, not the URI: no query strings, no ids from paths.
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", MatchedPath::as_str);
                let request_id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!(
                    "http_request",
                    method = %request.method(),
                    route = %route,
                    request_id = %request_id,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));

    // Everything for people and scrapers; behind the token when one is set.
    let protected = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/", get(page::status_page))
        .route("/api/status", get(api_status))
        .route("/api/errors", get(api_errors))
        .route("/api/errors/{id}/retry", post(api_error_retry))
        .route("/api/errors/{id}/discard", post(api_error_discard))
        .route("/api/conflicts", get(api_conflicts))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    Ok(Router::new()
        .route(
            "/webhooks/marketo",
            post(marketo_webhook).layer(DefaultBodyLimit::max(settings.body_limit)),
        )
        .route("/sync/crm/{object}/{id}", post(sync_crm_record))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(not_found)
        .with_state(state)
        .layer(layers))
}

/// Returns whether the request carries the token: `Authorization: Bearer <token>`, or Basic
/// auth whose password is the token (the user name is ignored).
fn authorized(headers: &axum::http::HeaderMap, digest: &[u8; 32]) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return secret_matches(rest.as_bytes(), digest);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = data_encoding::BASE64.decode(rest.as_bytes()) else {
            return false;
        };
        let password = match decoded.iter().position(|b| *b == b':') {
            Some(i) => &decoded[i + 1..],
            None => return false,
        };
        return secret_matches(password, digest);
    }
    false
}

/// Requires the access token when one is configured (see the module docs).
async fn require_auth(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Some(digest) = &app.auth_digest else {
        return next.run(request).await;
    };
    if authorized(request.headers(), digest) {
        return next.run(request).await;
    }
    let mut response = json_error(
        StatusCode::UNAUTHORIZED,
        "authentication required: send `Authorization: Bearer <token>` or HTTP Basic auth \
         with the token as the password",
    );
    let headers = response.headers_mut();
    headers.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"marketo-sync\", charset=\"UTF-8\""),
    );
    headers.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"marketo-sync\""),
    );
    response
}

/// Returns false for a request sent by a page of another origin (the `Origin` header names
/// another host than the one the request was sent to). Clients that send no `Origin` (curl,
/// scripts) pass.
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let origin = origin.to_str().unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// A JSON error body: `{"error": message}`.
fn json_error(status: StatusCode, message: &str) -> Response {
    let mut response =
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    no_store(&mut response);
    response
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn secret_matches(provided: &[u8], expected_digest: &[u8; 32]) -> bool {
    let digest: [u8; 32] = Sha256::digest(provided).into();
    digest.ct_eq(expected_digest).into()
}

fn rejected(outcome: WebhookOutcome, status: StatusCode, message: &str) -> Response {
    WebhookReceived {
        outcome,
        lead_id: None,
    }
    .emit();
    json_error(status, message)
}

/// `POST /sync/crm/{object}/{id}`: authenticates like the webhook, then syncs the record now.
async fn sync_crm_record(
    State(app): State<AppState>,
    Path((object, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    let authorized = headers
        .get(webhook::SECRET_HEADER)
        .is_some_and(|value| secret_matches(value.as_bytes(), &app.secret_digest));
    if !authorized {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Marketo-Sync-Secret header",
        );
    }
    for (name, value) in [("object", &object), ("id", &id)] {
        if let Some(reason) = crm_sync::check_segment(value) {
            return json_error(StatusCode::BAD_REQUEST, &format!("`{name}` {reason}"));
        }
    }
    let Some(sync) = &app.crm_sync else {
        return json_error(
            StatusCode::NOT_FOUND,
            "on-demand CRM sync is not served here",
        );
    };
    let mut response = match sync.sync_crm_record(&object, &id).await {
        Ok(outcome) => {
            tracing::info!(object = %object, outcome = ?outcome, "on-demand CRM record sync");
            crm_sync::outcome_response(&outcome)
        }
        Err(error) => {
            tracing::warn!(object = %object, error = %error, "on-demand CRM record sync failed");
            let status = crm_sync::error_status(&error);
            return json_error(status, &error.to_string());
        }
    };
    no_store(&mut response);
    response
}

/// `POST /webhooks/marketo`: authenticates before reading the body, then validates and queues.
async fn marketo_webhook(State(app): State<AppState>, request: Request) -> Response {
    let authorized = request
        .headers()
        .get(webhook::SECRET_HEADER)
        .is_some_and(|value| secret_matches(value.as_bytes(), &app.secret_digest));
    if !authorized {
        return rejected(
            WebhookOutcome::Unauthorized,
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Marketo-Sync-Secret header",
        );
    }
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return rejected(
                WebhookOutcome::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body is larger than the webhook body limit",
            );
        }
        Err(_) => {
            return rejected(
                WebhookOutcome::Invalid,
                StatusCode::BAD_REQUEST,
                "request body could not be read",
            );
        }
    };
    let lead = match webhook::parse_payload(&body, chrono::Utc::now()) {
        Ok(lead) => lead,
        Err(error) => {
            return rejected(
                WebhookOutcome::Invalid,
                StatusCode::BAD_REQUEST,
                &error.to_string(),
            );
        }
    };
    let lead_id = lead.lead_id;
    let (outcome, status) = match app.sink.enqueue(lead).await {
        Ok(Enqueued::New) => (WebhookOutcome::Queued, "queued"),
        Ok(Enqueued::Duplicate) => (WebhookOutcome::Duplicate, "duplicate"),
        Err(error) => {
            WebhookReceived {
                outcome: WebhookOutcome::Unavailable,
                lead_id: Some(lead_id),
            }
            .emit();
            tracing::warn!(error = %error, lead_id, "webhook lead not queued");
            let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, &error.to_string());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return response;
        }
    };
    WebhookReceived {
        outcome,
        lead_id: Some(lead_id),
    }
    .emit();
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "status": status, "leadId": lead_id })),
    )
        .into_response();
    no_store(&mut response);
    response
}

/// `GET /healthz`: the process is up and serving.
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 or 503 per [`Readiness::problems`], with the details as JSON.
async fn readyz(State(app): State<AppState>) -> Response {
    let readiness = app.status.ready().await;
    let problems = readiness.problems();
    let ready = problems.is_empty();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "store_ok": readiness.store_ok,
        "lease": readiness.lease,
        "last_cycle": readiness.last_cycle,
        "problems": problems,
    });
    let mut response = (code, axum::Json(body)).into_response();
    no_store(&mut response);
    response
}

/// `GET /metrics`: Prometheus text exposition format.
async fn metrics_text(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// `GET /api/status`.
async fn api_status(State(app): State<AppState>) -> Response {
    match app.status.status().await {
        Ok(report) => {
            let mut response = axum::Json(report).into_response();
            no_store(&mut response);
            response
        }
        Err(error) => status_failed(&error),
    }
}

#[derive(Debug, Deserialize)]
struct ErrorsQuery {
    limit: Option<usize>,
}

/// `GET /api/errors?limit=N`.
async fn api_errors(
    State(app): State<AppState>,
    query: Result<Query<ErrorsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "query parameter `limit` must be a non-negative integer",
        );
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_ERRORS_LIMIT)
        .min(MAX_ERRORS_LIMIT);
    match app.status.open_errors(limit).await {
        Ok(list) => {
            let mut response = axum::Json(list).into_response();
            no_store(&mut response);
            response
        }
        Err(error) => status_failed(&error),
    }
}

/// `POST /api/errors/{id}/retry`.
async fn api_error_retry(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Response {
    error_action(&app, &headers, &id, ErrorAction::Retry).await
}

/// `POST /api/errors/{id}/discard`.
async fn api_error_discard(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Response {
    error_action(&app, &headers, &id, ErrorAction::Discard).await
}

async fn error_action(
    app: &AppState,
    headers: &axum::http::HeaderMap,
    id: &str,
    action: ErrorAction,
) -> Response {
    if !same_origin(headers) {
        return json_error(
            StatusCode::FORBIDDEN,
            "cross-origin requests may not change sync errors",
        );
    }
    match app.status.error_action(id, action).await {
        Ok(entry) => {
            let body = serde_json::json!({ "action": action, "error": entry });
            let mut response = axum::Json(body).into_response();
            no_store(&mut response);
            response
        }
        Err(error) => status_failed(&error),
    }
}

/// `GET /api/conflicts?object=&field=&winner=&since=&limit=`.
async fn api_conflicts(
    State(app): State<AppState>,
    query: Result<Query<ConflictQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "bad query: {} (object, field: text; winner: marketo or crm; since: an \
                     RFC 3339 time such as 2026-11-23T10:00:00Z; limit: 1 to 1000)",
                    rejection.body_text()
                ),
            );
        }
    };
    match app.status.conflicts(&query).await {
        Ok(list) => {
            let mut response = axum::Json(list).into_response();
            no_store(&mut response);
            response
        }
        Err(error) => status_failed(&error),
    }
}

fn status_failed(error: &StatusError) -> Response {
    match error {
        // These name only what the client sent.
        StatusError::NotFound { .. } => {
            return json_error(StatusCode::NOT_FOUND, &error.to_string());
        }
        StatusError::Invalid { .. } => {
            return json_error(StatusCode::BAD_REQUEST, &error.to_string());
        }
        StatusError::Unavailable { .. } | StatusError::Internal { .. } => {}
    }
    // The detail goes to the log only; the response stays generic.
    tracing::warn!(error = %error, "status report failed");
    let code = if error.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    json_error(code, "status is unavailable right now; see the service log")
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_comparison() {
        let digest: [u8; 32] = Sha256::digest(b"s3cret-value").into();
        assert!(secret_matches(b"s3cret-value", &digest));
        assert!(!secret_matches(b"s3cret-valuf", &digest));
        assert!(!secret_matches(b"", &digest));
        assert!(!secret_matches(b"s3cret-value ", &digest));
    }

    #[test]
    fn http_config_debug_hides_the_secret() {
        let settings = HttpConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            webhook_secret: SecretString::from("hunter2-hunter2"),
            body_limit: DEFAULT_BODY_LIMIT,
            auth_token: Some(SecretString::from("tok-hunter3")),
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert!(!format!("{settings:?}").contains("hunter3"));
    }

    #[test]
    fn bearer_and_basic_auth_are_checked_against_the_token() {
        let digest: [u8; 32] = Sha256::digest(b"tok-123").into();
        let with = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("value"),
            );
            authorized(&headers, &digest)
        };
        assert!(with("Bearer tok-123"));
        assert!(with("bearer  tok-123"));
        assert!(!with("Bearer tok-1234"));
        assert!(!with("Bearer "));
        let basic = |pair: &str| format!("Basic {}", data_encoding::BASE64.encode(pair.as_bytes()));
        assert!(with(&basic("ops:tok-123")));
        assert!(with(&basic(":tok-123")));
        assert!(!with(&basic("tok-123")));
        assert!(!with(&basic("ops:tok-12")));
        assert!(!with("Basic !!!"));
        assert!(!with("Token tok-123"));
        assert!(!authorized(&axum::http::HeaderMap::new(), &digest));
    }

    #[test]
    fn cross_origin_posts_are_told_apart() {
        let headers = |origin: Option<&str>| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("origin"));
            }
            h
        };
        assert!(same_origin(&headers(None)));
        assert!(same_origin(&headers(Some("http://127.0.0.1:8080"))));
        assert!(!same_origin(&headers(Some("http://evil.example"))));
        assert!(!same_origin(&headers(Some("null"))));
    }

    #[test]
    fn retryable_classification() {
        let in_use = HttpError::Bind {
            addr: "127.0.0.1:1".parse().expect("addr"),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert!(in_use.is_retryable());
        assert!(!HttpError::InvalidConfig { reason: "x" }.is_retryable());
    }
}
