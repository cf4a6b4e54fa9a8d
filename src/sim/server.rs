//! The HTTP edge: one axum fallback handler that matches the route table, applies identity,
//! limits and faults in Marketo's order, runs the handler under the state lock, records the call,
//! and renders the answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::SimConfig;
use super::auth::AuthState;
use super::bulk::BulkState;
use super::clock::{SimClock, fmt_time};
use super::faults::{FaultKind, FaultProfile};
use super::limits::{LimitError, Limits, MAX_IN_FLIGHT};
use super::routes::{self, BodyReq, Ctx, NoRoute, Reply, Req, Route};
use super::state::Db;

/// Largest REST body (HTTP 413 above).
pub const MAX_REST_BODY: usize = 1024 * 1024;
/// Largest bulk import body (HTTP 413 above).
pub const MAX_IMPORT_BODY: usize = 10 * 1024 * 1024;
/// Longest URI (HTTP 414 above).
pub const MAX_URI: usize = 8 * 1024;
const LOG_CAPACITY: usize = 100_000;
const UNCOUNTED: &[&str] = &["601", "602", "604", "605", "608", "611"];

/// One logged call.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// Sequence number.
    pub seq: u64,
    /// Sim time of the call.
    pub at: String,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Route family (empty when no route matched).
    pub family: String,
    /// HTTP status of the answer.
    pub http_status: u16,
    /// Marketo error code of the answer, if any.
    pub code: Option<String>,
    /// Whether the call counted towards the limits.
    pub counted: bool,
    /// The fault injected, if any.
    pub fault: Option<String>,
    /// Top-level field names of a JSON object body (empty for other bodies).
    #[serde(default)]
    pub body_fields: Vec<String>,
}

/// The whole mutable state of a simulator.
pub struct SimState {
    /// The configuration it was started with (faults may have changed since).
    pub config: SimConfig,
    /// The clock.
    pub clock: SimClock,
    /// The data.
    pub db: Db,
    /// Tokens.
    pub auth: AuthState,
    /// Limit counters.
    pub limits: Limits,
    /// Bulk jobs.
    pub bulk: BulkState,
    /// Active faults.
    pub faults: FaultProfile,
    /// Fault and token randomness.
    pub rng: ChaCha8Rng,
    /// The request log (most recent last, bounded).
    pub log: VecDeque<LogEntry>,
    /// Lead fields an admin removed from Describe Lead (schema drift in tests).
    pub hidden_lead_fields: std::collections::BTreeSet<String>,
    /// Record-level refusals set up by tests (see [`RecordRefusalRule`]).
    pub record_refusals: Vec<RecordRefusalRule>,
    seq: u64,
}

/// A record-level refusal the simulator applies to Sync writes (leads and every other object):
/// an input whose `field` holds `value` is skipped with `code` and `message`, as Marketo skips a
/// record for reasons the simulator does not model itself (1022 object in use, 1014, a partition
/// or a validation rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRefusalRule {
    /// The REST field name.
    pub field: String,
    /// The value (compared as text).
    pub value: String,
    /// The 1xxx code of the reason.
    pub code: String,
    /// The reason's message.
    pub message: String,
}

impl SimState {
    /// Returns the reason (code, message) a refusal rule gives an input record, if one matches.
    pub fn refusal_for(
        &self,
        input: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<(String, String)> {
        self.record_refusals.iter().find_map(|r| {
            let v = input.get(&r.field)?;
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            (text == r.value).then(|| (r.code.clone(), r.message.clone()))
        })
    }

    /// Returns a fresh state for `config`.
    pub fn new(config: SimConfig) -> Self {
        let start = config.start.unwrap_or_else(|| {
            let now = Utc::now();
            DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
        });
        let mut db = Db::generate(config.seed, start, config.leads);
        if !config.generated_new_lead_activities {
            db.drop_generated_new_leads();
        }
        Self {
            clock: SimClock::new(start),
            db,
            auth: AuthState::default(),
            limits: Limits::default(),
            bulk: BulkState::default(),
            faults: config.faults.clone(),
            rng: ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(0x5151)),
            log: VecDeque::new(),
            hidden_lead_fields: std::collections::BTreeSet::new(),
            record_refusals: Vec::new(),
            seq: 0,
            config,
        }
    }

    /// Returns sim time after advancing bulk jobs to it.
    pub fn now(&mut self) -> DateTime<Utc> {
        let now = self.clock.now();
        self.bulk
            .tick(now, &mut self.db, &mut self.limits, &self.config);
        now
    }

    fn request_id(&mut self, now: DateTime<Utc>) -> String {
        self.seq += 1;
        format!("{:x}#{:x}", 0x1000 + self.seq, now.timestamp_millis())
    }

    fn record(&mut self, entry: LogEntry) {
        if self.log.len() >= LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }

    /// Runs one call through identity, limits, faults and the handler.
    fn process(
        &mut self,
        route: &'static Route,
        req: &Req,
        bearer: Option<&str>,
        in_flight: usize,
    ) -> (Reply, Option<FaultKind>, u64) {
        let now = self.now();
        let family = route.family;
        if family == "admin" || family == "identity" {
            let mut ctx = Ctx {
                st: self,
                now,
                fault: None,
            };
            return ((route.handler)(&mut ctx, req), None, 0);
        }
        if req.query.iter().any(|(k, _)| k == "access_token") {
            return (
                Reply::err(
                    "603",
                    "Access denied: access_token query parameter is not accepted",
                ),
                None,
                0,
            );
        }
        if let Err(error) = self.auth.check(bearer, now) {
            let (code, message) = error.code();
            return (Reply::err(code, message), None, 0);
        }
        if in_flight > MAX_IN_FLIGHT {
            return (
                Reply::err("615", "Concurrent access limit reached"),
                None,
                0,
            );
        }
        match self.limits.check(now, self.config.daily_quota) {
            Err(LimitError::Daily) => return (Reply::err("607", "Daily quota reached"), None, 0),
            Err(LimitError::Rate) => {
                return (
                    Reply::err("606", "Max rate limit '100' exceeded with in '20' secs"),
                    None,
                    0,
                );
            }
            Ok(()) => {}
        }
        let profile = self.faults.clone();
        let fault = profile.pick(family, &mut self.rng);
        let mut delay = 0;
        match fault.as_ref().map(|f| f.kind) {
            Some(FaultKind::Throttle) => {
                return (
                    Reply::err("606", "Max rate limit '100' exceeded with in '20' secs"),
                    Some(FaultKind::Throttle),
                    0,
                );
            }
            Some(FaultKind::Timeout) => {
                return (
                    Reply::err("604", "Request timed out"),
                    Some(FaultKind::Timeout),
                    0,
                );
            }
            Some(FaultKind::Unavailable) => {
                return (
                    Reply::err("608", "API Temporarily Unavailable"),
                    Some(FaultKind::Unavailable),
                    0,
                );
            }
            Some(FaultKind::Http5xx) => {
                let reply = Reply::Http {
                    status: 502,
                    headers: vec![("content-type".into(), "text/html".into())],
                    body: Bytes::from_static(b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"),
                    truncate_at: None,
                };
                return (reply, Some(FaultKind::Http5xx), 0);
            }
            Some(FaultKind::Drop) => return (Reply::text(200, ""), Some(FaultKind::Drop), 0),
            Some(FaultKind::Slow) => delay = fault.as_ref().map_or(0, |f| f.delay_ms),
            _ => {}
        }
        if !req.method_get && route.body != BodyReq::Multipart {
            for name in route.required_query {
                if req.q(name).is_none() {
                    return (
                        Reply::err("1003", format!("{name} cannot be blank")),
                        None,
                        delay,
                    );
                }
            }
        }
        if route.body == BodyReq::Json
            && !req.method_get
            && !req.body.as_ref().is_some_and(Value::is_object)
        {
            return (Reply::err("609", "Invalid JSON"), None, delay);
        }
        if route.body == BodyReq::Multipart && !req.content_type.starts_with("multipart/form-data")
        {
            return (Reply::err("613", "Invalid multipart request"), None, delay);
        }
        let kind = fault.as_ref().map(|f| f.kind);
        let mut ctx = Ctx {
            st: self,
            now,
            fault,
        };
        ((route.handler)(&mut ctx, req), kind, delay)
    }
}

/// State shared by the server tasks.
pub struct Shared {
    state: Mutex<SimState>,
    in_flight: AtomicUsize,
}

impl Shared {
    /// Wraps a state.
    pub fn new(state: SimState) -> Self {
        Self {
            state: Mutex::new(state),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Locks the state (a poisoned lock is recovered: handlers never leave it half-written).
    pub fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Returns the axum router of a simulator.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .fallback(dispatch)
        .layer(DefaultBodyLimit::max(MAX_IMPORT_BODY * 2))
        .with_state(shared)
}

fn envelope(request_id: String, reply: Reply) -> Response {
    let (status, headers, body, truncate_at) = match reply {
        Reply::Ok(value) => {
            let mut out = Map::new();
            out.insert("requestId".into(), json!(request_id));
            if let Value::Object(members) = value {
                out.extend(members);
            }
            out.insert("success".into(), json!(true));
            (
                200,
                vec![],
                Bytes::from(Value::Object(out).to_string()),
                None,
            )
        }
        Reply::Err(code, message) => {
            let body = json!({"requestId": request_id, "success": false, "errors": [{"code": code, "message": message}]});
            (200, vec![], Bytes::from(body.to_string()), None)
        }
        Reply::Http {
            status,
            headers,
            body,
            truncate_at,
        } => (status, headers, body, truncate_at),
    };
    let mut response = match truncate_at {
        Some(cut) => {
            let head = body.slice(..cut.min(body.len()));
            // The head goes out first; the break comes a moment later so that the client has
            // received the headers and part of the body, as with a real cut connection.
            let stream = futures::stream::unfold(Some(head), |state| async move {
                match state {
                    Some(head) => Some((Ok::<Bytes, std::io::Error>(head), None)),
                    None => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        let error = std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "simulated truncated download",
                        );
                        Some((Err(error), None))
                    }
                }
            });
            let mut response = Response::new(Body::from_stream(stream));
            if let Ok(len) = HeaderValue::from_str(&body.len().to_string()) {
                response.headers_mut().insert("content-length", len);
            }
            response
        }
        None => Response::new(Body::from(body)),
    };
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let has_type = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !has_type {
        response.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
    }
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn dropped() -> Response {
    let stream = futures::stream::iter(vec![Err::<Bytes, std::io::Error>(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "simulated dropped connection",
    ))]);
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert("content-length", HeaderValue::from_static("100"));
    response
}

/// Returns the query string with secret values (`client_secret`, `access_token`) replaced, so
/// the request log never holds a secret.
fn redact_query(raw: &str) -> String {
    let pairs = url::form_urlencoded::parse(raw.as_bytes()).map(|(k, v)| {
        let secret = k == "client_secret" || k == "access_token";
        (
            k.into_owned(),
            if secret {
                "REDACTED".to_string()
            } else {
                v.into_owned()
            },
        )
    });
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Returns `path` with `.` and `..` segments resolved (RFC 3986 section 5.2.4), as Marketo's
/// front end does: node-marketo-rest reaches bulk routes as `/rest/../bulk/v1/...`.
fn remove_dot_segments(path: &str) -> String {
    if !path.split('/').any(|s| s == "." || s == "..") {
        return path.to_string();
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        if i == last && (*segment == "." || *segment == "..") {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

async fn dispatch(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_query = uri.query().unwrap_or_default().to_string();
    let uri_len = uri.path().len() + raw_query.len() + 1;
    let path = remove_dot_segments(uri.path());
    // `POST ?_method=GET` (in the query string or in a form body) runs the path's GET operation.
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    // `POST ?_method=DELETE` likewise runs the path's DELETE operation (where the spec has one).
    let says = |bytes: &[u8], wanted: &str| {
        url::form_urlencoded::parse(bytes)
            .any(|(k, v)| k == "_method" && v.eq_ignore_ascii_case(wanted))
    };
    let tunnel_to = |wanted: &str| {
        method == Method::POST
            && (says(raw_query.as_bytes(), wanted) || (is_form && says(&body, wanted)))
    };
    let tunnelled = tunnel_to("GET");
    let found = if tunnelled {
        routes::find("GET", &path).or_else(|_| routes::find(method.as_str(), &path))
    } else if tunnel_to("DELETE") {
        routes::find("DELETE", &path).or_else(|_| routes::find(method.as_str(), &path))
    } else {
        routes::find(method.as_str(), &path)
    };
    let family = found.as_ref().map(|(r, _)| r.family).unwrap_or_default();
    let limit = if family == "bulk_import" {
        MAX_IMPORT_BODY
    } else {
        MAX_REST_BODY
    };
    let early = if uri_len > MAX_URI {
        Some(Reply::text(414, "Request-URI Too Large"))
    } else if body.len() > limit && family != "admin" {
        Some(Reply::text(413, "Request Entity Too Large"))
    } else {
        match &found {
            Err(NoRoute::NotFound) => Some(Reply::err("610", "Requested resource not found")),
            Err(NoRoute::Method) => Some(Reply::err("605", "Request method not supported")),
            Ok(_) => None,
        }
    };
    let _guard = (family != "admin" && family != "identity").then(|| {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(&shared.in_flight)
    });
    let in_flight = shared.in_flight.load(Ordering::SeqCst);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut query: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let mut json_body = None;
    if content_type.starts_with("application/x-www-form-urlencoded") {
        query.extend(url::form_urlencoded::parse(&body).into_owned());
    } else if !content_type.starts_with("multipart/") && !body.is_empty() {
        json_body = serde_json::from_slice::<Value>(&body).ok();
    }
    let body_fields: Vec<String> = json_body
        .as_ref()
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    // Marketo honours `_method=GET` in the query string or in the form body (widely used clients
    // such as marketorestpython send it in the body).
    let method_get = tunnelled;
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|v| v.trim().to_string());
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (reply, fault, delay, request_id) = {
        let mut st = shared.lock();
        let (reply, fault, delay) = match (early, found) {
            (Some(reply), _) => (reply, None, 0),
            (None, Ok((route, params))) => {
                let req = Req {
                    method: method.as_str().to_string(),
                    path: path.clone(),
                    params,
                    query,
                    method_get,
                    body: json_body,
                    raw: body,
                    content_type,
                    range,
                };
                st.process(route, &req, bearer.as_deref(), in_flight)
            }
            (None, Err(_)) => (Reply::err("610", "Requested resource not found"), None, 0),
        };
        let now = st.clock.now();
        let code = reply.code().map(str::to_string);
        let http_status = match &reply {
            Reply::Http { status, .. } => *status,
            _ => 200,
        };
        let counted = family != "admin"
            && family != "identity"
            && http_status < 500
            && !matches!(fault, Some(FaultKind::Drop))
            && !code
                .as_deref()
                .is_some_and(|c| UNCOUNTED.contains(&c) || c == "607");
        if counted {
            let in_window = !code.as_deref().is_some_and(|c| c == "606" || c == "615");
            st.limits.count(now, &path, in_window);
        }
        if let Some(code) = &code {
            st.limits.record_error(now, code);
        }
        tracing::debug!(method = %method, path = %path, status = http_status, code = code.as_deref().unwrap_or(""), counted, "sim call answered");
        if family != "admin" {
            let seq = st.seq + 1;
            st.record(LogEntry {
                seq,
                at: fmt_time(now),
                method: method.as_str().to_string(),
                path: path.clone(),
                query: redact_query(&raw_query),
                family: family.to_string(),
                http_status,
                code,
                counted,
                fault: fault.map(|f| f.as_str().to_string()),
                body_fields,
            });
        }
        let request_id = st.request_id(now);
        (reply, fault, delay, request_id)
    };
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if fault == Some(FaultKind::Drop) {
        return dropped();
    }
    if family == "identity"
        && let Reply::Ok(value) = reply
    {
        let mut response = Response::new(Body::from(value.to_string()));
        let h = response.headers_mut();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
        h.insert("cache-control", HeaderValue::from_static("no-store"));
        h.insert("pragma", HeaderValue::from_static("no-cache"));
        return response;
    }
    if family == "admin"
        && let Reply::Ok(value) = reply
    {
        let mut response = Response::new(Body::from(value.to_string()));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        return response;
    }
    envelope(request_id, reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_log_queries_hide_secrets() {
        let q = redact_query(
            "grant_type=client_credentials&client_id=a&client_secret=s3cr3t&access_token=t0k",
        );
        assert!(!q.contains("s3cr3t") && !q.contains("t0k"));
        assert!(q.contains("client_id=a"));
    }

    #[test]
    fn dot_segments_resolve_like_a_front_end() {
        assert_eq!(
            remove_dot_segments("/rest/../bulk/v1/leads/export/create.json"),
            "/bulk/v1/leads/export/create.json"
        );
        assert_eq!(
            remove_dot_segments("/rest/./v1/leads.json"),
            "/rest/v1/leads.json"
        );
        assert_eq!(remove_dot_segments("/a/b/.."), "/a/");
        assert_eq!(remove_dot_segments("/../../x"), "/x");
        assert_eq!(
            remove_dot_segments("/rest/v1/leads.json"),
            "/rest/v1/leads.json"
        );
    }
}
