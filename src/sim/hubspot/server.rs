//! The HTTP edge of the HubSpot simulator: the route table, token auth, limits, faults, the
//! request log, and the rendering of answers and of HubSpot's error bodies.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;

use super::HubSpotConfig;
use super::limits::{Refusal, Usage};
use super::model::{ApiError, Portal};
use super::{admin, assoc, meta, objects};
use crate::sim::clock::SimClock;

/// The simulator's clock: flowing (sim time follows tokio time, as the Marketo simulator's does)
/// or manual (sim time moves only when a test or the admin API advances it).
#[derive(Debug, Clone)]
pub enum HsClock {
    /// Follows tokio time plus advances.
    Flowing(SimClock),
    /// Moves only by advances.
    Manual(DateTime<Utc>),
}

impl HsClock {
    /// Returns current sim time.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            HsClock::Flowing(clock) => clock.now(),
            HsClock::Manual(at) => *at,
        }
    }

    /// Moves sim time forward by `by`.
    pub fn advance(&mut self, by: std::time::Duration) {
        match self {
            HsClock::Flowing(clock) => clock.advance(by),
            HsClock::Manual(at) => {
                if let Ok(by) = chrono::Duration::from_std(by) {
                    *at += by;
                }
            }
        }
    }
}
use crate::sim::faults::{FaultKind, FaultProfile};

const LOG_CAPACITY: usize = 100_000;
/// Largest request body (HTTP 413 above).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A parsed request as handlers see it: the Marketo simulator's request type (`method`, `path`,
/// `params`, `query`, `body` are used here).
pub use crate::sim::routes::Req;

/// Returns whether boolean query parameter `name` is `true`.
pub fn flag(req: &Req, name: &str) -> bool {
    req.q(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// A handler's answer.
#[derive(Debug)]
pub enum Reply {
    /// A JSON answer with a status.
    Json(u16, Value),
    /// `204 No Content`.
    NoContent,
    /// A HubSpot error body.
    Error(ApiError),
    /// A 429 of a limit.
    Limited(Refusal),
    /// A raw answer (faults, unknown routes).
    Raw {
        /// Status.
        status: u16,
        /// Content type.
        content_type: &'static str,
        /// Body.
        body: String,
    },
}

impl From<ApiError> for Reply {
    fn from(error: ApiError) -> Self {
        Reply::Error(error)
    }
}

impl Reply {
    /// Returns `200` with `value`.
    pub fn ok(value: Value) -> Self {
        Reply::Json(200, value)
    }

    fn status(&self) -> u16 {
        match self {
            Reply::Json(status, _) => *status,
            Reply::NoContent => 204,
            Reply::Error(e) => e.status,
            Reply::Limited(_) => 429,
            Reply::Raw { status, .. } => *status,
        }
    }

    fn category(&self) -> Option<String> {
        match self {
            Reply::Error(e) => Some(e.category.to_string()),
            Reply::Limited(_) => Some("RATE_LIMIT".into()),
            _ => None,
        }
    }
}

/// What a handler runs with.
pub struct Ctx<'a> {
    /// The simulator state (locked).
    pub st: &'a mut HsState,
    /// Sim time of the call.
    pub now: DateTime<Utc>,
}

/// A handler.
pub type Handler = fn(&mut Ctx<'_>, &Req) -> Reply;

/// One served route.
#[derive(Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template with `{name}` segments, as in HubSpot's specs.
    pub path: &'static str,
    /// Route family: fault rules name it; `search` has its own limit; `admin` bypasses auth,
    /// limits, faults and the log.
    pub family: &'static str,
    pub(crate) handler: Handler,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

const fn r(
    method: &'static str,
    path: &'static str,
    family: &'static str,
    handler: Handler,
) -> Route {
    Route {
        method,
        path,
        family,
        handler,
    }
}

/// Every route the HubSpot simulator serves.
#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    // CRM v3 objects (contacts.json, companies.json, deals.json, objects.json)
    r("GET", "/crm/v3/objects/{objectType}", "objects", objects::list),
    r("POST", "/crm/v3/objects/{objectType}", "objects", objects::create),
    r("GET", "/crm/v3/objects/{objectType}/{objectId}", "objects", objects::get),
    r("PATCH", "/crm/v3/objects/{objectType}/{objectId}", "objects", objects::update),
    r("DELETE", "/crm/v3/objects/{objectType}/{objectId}", "objects", objects::archive),
    r("POST", "/crm/v3/objects/{objectType}/merge", "objects", objects::merge),
    r("POST", "/crm/v3/objects/{objectType}/batch/read", "batch", objects::batch_read),
    r("POST", "/crm/v3/objects/{objectType}/batch/create", "batch", objects::batch_create),
    r("POST", "/crm/v3/objects/{objectType}/batch/update", "batch", objects::batch_update),
    r("POST", "/crm/v3/objects/{objectType}/batch/upsert", "batch", objects::batch_upsert),
    r("POST", "/crm/v3/objects/{objectType}/batch/archive", "batch", objects::batch_archive),
    r("POST", "/crm/v3/objects/{objectType}/search", "search", objects::search),
    // properties (properties.json), schemas (schemas.json), owners (owners.json)
    r("GET", "/crm/v3/properties/{objectType}", "properties", meta::properties),
    r("POST", "/crm/v3/properties/{objectType}", "properties", meta::create_property),
    r("GET", "/crm/v3/properties/{objectType}/{propertyName}", "properties", meta::property),
    r("DELETE", "/crm/v3/properties/{objectType}/{propertyName}", "properties", meta::archive_property),
    r("GET", "/crm/v3/schemas", "schemas", meta::schemas),
    r("GET", "/crm/v3/schemas/{objectType}", "schemas", meta::schema),
    r("GET", "/crm/v3/owners", "owners", meta::owners),
    r("GET", "/crm/v3/owners/{ownerId}", "owners", meta::owner),
    // associations v4 (associations.json, associationsSchema.json)
    r("PUT", "/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}/{toObjectId}", "associations", assoc::put),
    r("DELETE", "/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}/{toObjectId}", "associations", assoc::delete),
    r("PUT", "/crm/v4/objects/{fromObjectType}/{fromObjectId}/associations/default/{toObjectType}/{toObjectId}", "associations", assoc::put_default),
    r("GET", "/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}", "associations", assoc::page),
    r("POST", "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/create", "associations", assoc::batch_create),
    r("POST", "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/associate/default", "associations", assoc::batch_default),
    r("POST", "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/read", "associations", assoc::batch_read),
    r("POST", "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/archive", "associations", assoc::batch_archive),
    r("POST", "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/labels/archive", "associations", assoc::batch_archive_labels),
    r("GET", "/crm/v4/associations/{fromObjectType}/{toObjectType}/labels", "associations", assoc::labels),
    r("POST", "/crm/v4/associations/{fromObjectType}/{toObjectType}/labels", "associations", assoc::create_label),
    // the simulator's own admin API (not HubSpot)
    r("GET", "/__sim/state", "admin", admin::state),
    r("POST", "/__sim/clock/advance", "admin", admin::advance_clock),
    r("GET", "/__sim/log", "admin", admin::log),
    r("POST", "/__sim/faults", "admin", admin::set_faults),
    r("POST", "/__sim/limits/spend-daily", "admin", admin::spend_daily),
    r("POST", "/__sim/objects/{objectType}", "admin", admin::create),
    r("PATCH", "/__sim/objects/{objectType}/{objectId}", "admin", admin::edit),
    r("DELETE", "/__sim/objects/{objectType}/{objectId}", "admin", admin::archive),
    r("POST", "/__sim/objects/{objectType}/{objectId}/merge", "admin", admin::merge),
    r("DELETE", "/__sim/properties/{objectType}/{propertyName}", "admin", admin::delete_property),
];

/// Why no route matched.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// Nothing serves the path (404).
    NotFound,
    /// The path is served with other methods (405).
    Method,
}

/// Returns the route serving `method path`, with its path parameters; literal segments win over
/// parameters.
///
/// # Errors
///
/// Returns [`NoRoute`] when nothing serves the path or the method.
pub fn find(
    method: &str,
    path: &str,
) -> Result<(&'static Route, HashMap<String, String>), NoRoute> {
    let actual: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut path_found = false;
    let mut best: Option<(&'static Route, HashMap<String, String>, usize)> = None;
    for route in ROUTES {
        let template: Vec<&str> = route.path.split('/').collect();
        if template.len() != actual.len() {
            continue;
        }
        let mut params = HashMap::new();
        let mut literal = 0;
        let fits = template.iter().zip(&actual).all(|(t, a)| {
            if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                if a.is_empty() {
                    return false;
                }
                let decoded = percent_decode(a);
                params.insert(name.to_string(), decoded);
                true
            } else {
                literal += 1;
                t == a
            }
        });
        if !fits {
            continue;
        }
        path_found = true;
        if route.method != method {
            continue;
        }
        if best.as_ref().is_none_or(|(_, _, l)| literal > *l) {
            best = Some((route, params, literal));
        }
    }
    match best {
        Some((route, params, _)) => Ok((route, params)),
        None if path_found => Err(NoRoute::Method),
        None => Err(NoRoute::NotFound),
    }
}

fn percent_decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| segment.to_string())
}

/// One logged call.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// Sequence number.
    pub seq: u64,
    /// Sim time.
    pub at: String,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Route family (empty when no route matched).
    pub family: String,
    /// HTTP status answered.
    pub status: u16,
    /// Error category, if any.
    pub category: Option<String>,
    /// Whether the call counted towards the limits.
    pub counted: bool,
    /// Injected fault, if any.
    pub fault: Option<String>,
}

/// The whole mutable state of a HubSpot simulator.
pub struct HsState {
    /// Configuration it started with.
    pub config: HubSpotConfig,
    /// The clock.
    pub clock: HsClock,
    /// The data.
    pub portal: Portal,
    /// Limit counters.
    pub usage: Usage,
    /// Active faults.
    pub faults: FaultProfile,
    /// Fault and correlation-id randomness.
    pub rng: ChaCha8Rng,
    /// Request log (bounded, oldest first).
    pub log: VecDeque<LogEntry>,
    seq: u64,
}

impl HsState {
    /// Returns a fresh state with generated data.
    pub fn new(config: HubSpotConfig) -> Self {
        let start = config.start.unwrap_or_else(|| {
            let now = Utc::now();
            DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
        });
        let portal = super::generator::generate(&config, start);
        Self {
            clock: if config.manual_clock {
                HsClock::Manual(start)
            } else {
                HsClock::Flowing(SimClock::new(start))
            },
            portal,
            usage: Usage::default(),
            faults: config.faults.clone(),
            rng: ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(0x4853)),
            log: VecDeque::new(),
            seq: 0,
            config,
        }
    }

    fn correlation_id(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.random();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    /// Runs one call through auth, limits, faults and the handler. Returns the answer, the fault
    /// injected, the delay of a slow fault, and whether the call counted.
    fn process(
        &mut self,
        route: &'static Route,
        req: &Req,
        bearer: Option<&str>,
        body_error: Option<String>,
    ) -> (Reply, Option<FaultKind>, u64, bool) {
        let now = self.clock.now();
        if route.family == "admin" {
            let mut ctx = Ctx { st: self, now };
            return ((route.handler)(&mut ctx, req), None, 0, false);
        }
        let token = self.config.token.expose_secret().as_bytes();
        let authorised = bearer.is_some_and(|b| {
            b.len() == token.len() && subtle::ConstantTimeEq::ct_eq(b.as_bytes(), token).into()
        });
        if !authorised {
            let error = ApiError::new(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            );
            return (Reply::Error(error), None, 0, false);
        }
        let search = route.family == "search";
        let limits = self.config.limits.clone();
        if let Err(refusal) = self.usage.check(&limits, now, search) {
            return (Reply::Limited(refusal), None, 0, false);
        }
        let profile = self.faults.clone();
        let fault = profile.pick(route.family, &mut self.rng);
        let kind = fault.as_ref().map(|f| f.kind);
        let mut delay = 0;
        match kind {
            Some(FaultKind::Throttle) => {
                return (Reply::Limited(Refusal::TenSecondly), kind, 0, false);
            }
            Some(FaultKind::Http5xx) => {
                let body = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>";
                return (raw(502, body), kind, 0, false);
            }
            Some(FaultKind::Timeout) => {
                let body = "<html><head><title>504 Gateway Time-out</title></head><body><h1>504 Gateway Time-out</h1></body></html>";
                return (raw(504, body), kind, 0, false);
            }
            Some(FaultKind::Unavailable) => {
                let body = "<html><head><title>503 Service Unavailable</title></head><body><h1>503 Service Unavailable</h1></body></html>";
                return (raw(503, body), kind, 0, false);
            }
            Some(FaultKind::Drop) => return (raw(200, ""), kind, 0, false),
            Some(FaultKind::Slow) => delay = fault.as_ref().map_or(0, |f| f.delay_ms),
            _ => {}
        }
        self.usage.count(&limits, now, search);
        if let Some(message) = body_error {
            return (
                Reply::Error(ApiError::validation(message)),
                kind,
                delay,
                true,
            );
        }
        let mut ctx = Ctx { st: self, now };
        ((route.handler)(&mut ctx, req), kind, delay, true)
    }

    fn record(&mut self, entry: LogEntry) {
        if self.log.len() >= LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }
}

fn raw(status: u16, body: &str) -> Reply {
    Reply::Raw {
        status,
        content_type: "text/html",
        body: body.to_string(),
    }
}

/// State shared by the server tasks.
pub struct Shared {
    state: Mutex<HsState>,
}

impl Shared {
    /// Wraps a state.
    pub fn new(state: HsState) -> Self {
        Self {
            state: Mutex::new(state),
        }
    }

    /// Locks the state (a poisoned lock is recovered: handlers never leave it half-written).
    pub fn lock(&self) -> MutexGuard<'_, HsState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Returns the axum router of a HubSpot simulator.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .fallback(dispatch)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY * 2))
        .with_state(shared)
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

fn render(reply: Reply, correlation_id: &str, headers: Vec<(String, String)>) -> Response {
    let status = reply.status();
    let (content_type, body) = match reply {
        Reply::Json(_, value) => ("application/json;charset=utf-8", value.to_string()),
        Reply::NoContent => ("", String::new()),
        Reply::Error(error) => (
            "application/json;charset=utf-8",
            error.body(correlation_id).to_string(),
        ),
        Reply::Limited(refusal) => {
            let body = serde_json::json!({
                "status": "error",
                "message": refusal.message(),
                "errorType": "RATE_LIMIT",
                "correlationId": correlation_id,
                "policyName": refusal.policy_name(),
                "groupName": "hubspot-sim",
            });
            ("application/json;charset=utf-8", body.to_string())
        }
        Reply::Raw {
            content_type, body, ..
        } => (content_type, body),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let h = response.headers_mut();
    if !content_type.is_empty() {
        h.insert("content-type", HeaderValue::from_static(content_type));
    }
    if let Ok(value) = HeaderValue::from_str(correlation_id) {
        h.insert("x-hubspot-correlation-id", value);
    }
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name),
            HeaderValue::from_str(&value),
        ) {
            h.insert(name, value);
        }
    }
    response
}

async fn dispatch(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let raw_query = uri.query().unwrap_or_default().to_string();
    let found = find(method.as_str(), &path);
    let family = found.as_ref().map(|(r, _)| r.family).unwrap_or_default();
    let query: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let mut body_error = None;
    let json_body = if body.is_empty() {
        None
    } else if body.len() > MAX_BODY {
        body_error = Some(format!("Request body of {} bytes is too large", body.len()));
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => Some(v),
            Err(error) => {
                body_error = Some(format!(
                    "Invalid input JSON on line {}, column {}: {error}",
                    error.line(),
                    error.column()
                ));
                None
            }
        }
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|v| v.trim().to_string());
    let (reply, fault, delay, correlation_id, rate_headers) = {
        let mut st = shared.lock();
        let (reply, fault, delay, counted) = match found {
            Err(NoRoute::NotFound) => (
                Reply::Raw {
                    status: 404,
                    content_type: "text/plain",
                    body: String::new(),
                },
                None,
                0,
                false,
            ),
            Err(NoRoute::Method) => (
                Reply::Raw {
                    status: 405,
                    content_type: "text/plain",
                    body: String::new(),
                },
                None,
                0,
                false,
            ),
            Ok((route, params)) => {
                let req = Req {
                    method: method.as_str().to_string(),
                    path: path.clone(),
                    params,
                    query,
                    body: json_body,
                    ..Req::default()
                };
                st.process(route, &req, bearer.as_deref(), body_error)
            }
        };
        let now = st.clock.now();
        let status = reply.status();
        // Search answers carry no rate-limit headers; a refused or faulted call carries them
        // only when the 10-second window refused it.
        let with_headers = family != "admin"
            && family != "search"
            && !family.is_empty()
            && status != 401
            && (counted || matches!(reply, Reply::Limited(Refusal::TenSecondly | Refusal::Daily)));
        let limits = st.config.limits.clone();
        let rate_headers = if with_headers {
            st.usage.headers(&limits, now)
        } else {
            Vec::new()
        };
        let correlation_id = st.correlation_id();
        if family != "admin" {
            st.seq += 1;
            let seq = st.seq;
            let entry = LogEntry {
                seq,
                at: super::model::fmt_ts(now),
                method: method.as_str().to_string(),
                path: path.clone(),
                query: raw_query.clone(),
                family: family.to_string(),
                status,
                category: reply.category(),
                counted,
                fault: fault.map(|f| f.as_str().to_string()),
            };
            st.record(entry);
        }
        tracing::debug!(method = %method, path = %path, status, counted, "hubspot sim call answered");
        (reply, fault, delay, correlation_id, rate_headers)
    };
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if fault == Some(FaultKind::Drop) {
        return dropped();
    }
    render(reply, &correlation_id, rate_headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_segments_win_and_methods_are_checked() {
        let (route, params) = find("POST", "/crm/v3/objects/contacts/search").unwrap();
        assert_eq!(route.path, "/crm/v3/objects/{objectType}/search");
        assert_eq!(params["objectType"], "contacts");
        let (route, params) = find("GET", "/crm/v3/objects/2-123/42").unwrap();
        assert_eq!(route.path, "/crm/v3/objects/{objectType}/{objectId}");
        assert_eq!(params["objectId"], "42");
        assert_eq!(
            find("PUT", "/crm/v3/objects/contacts/search").unwrap_err(),
            NoRoute::Method
        );
        assert_eq!(
            find("GET", "/crm/v9/nothing").unwrap_err(),
            NoRoute::NotFound
        );
        let (route, _) = find("GET", "/crm/v3/owners/").unwrap();
        assert_eq!(route.path, "/crm/v3/owners");
    }
}
