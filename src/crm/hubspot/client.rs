//! Transport: the bearer token, HubSpot's rate limits (requests per 10 seconds, the search
//! endpoints' per-second limit, the daily cap), `429` with `Retry-After` and the
//! `X-HubSpot-RateLimit-*` headers, retries of 5xx and time-outs, and HubSpot's error bodies.
//!
//! The token is only ever put in the `Authorization` header (marked sensitive); it is never part
//! of a URL, a log line, an error or a `Debug` output. Every wait uses tokio's clock, so tests can
//! run on the paused clock.

use std::collections::VecDeque;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{NaiveDate, Utc};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::model::StandardError;
use crate::crm::CrmError;

/// The largest answer body read, in bytes.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The wait after a 429 that names none.
const DEFAULT_RATE_WAIT: Duration = Duration::from_secs(10);

/// Errors of the HubSpot transport.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HubSpotError {
    /// HubSpot answered with an error status.
    #[error("hubspot answered {status} to {operation}: {}", describe(.error))]
    Api {
        /// What the adapter was doing.
        operation: String,
        /// The HTTP status.
        status: u16,
        /// HubSpot's error body (category, message, context).
        error: Box<StandardError>,
        /// How long HubSpot asked to wait (429).
        retry_after: Option<Duration>,
        /// The 429 was for the daily cap (`policyName: DAILY`).
        daily: bool,
    },
    /// The request did not complete (connection refused or reset, time-out).
    #[error("hubspot request for {operation} failed: {message}")]
    Transport {
        /// What the adapter was doing.
        operation: String,
        /// What went wrong (never the token).
        message: String,
    },
    /// The answer could not be read.
    #[error("unreadable hubspot answer to {operation}: {message}")]
    Decode {
        /// What the adapter was doing.
        operation: String,
        /// What went wrong.
        message: String,
    },
    /// This process has used the day's request cap.
    #[error("hubspot's daily request cap ({limit}) is used up; {operation} waits for the next day")]
    DailyCap {
        /// What the adapter was doing.
        operation: String,
        /// The cap.
        limit: u64,
    },
}

fn describe(e: &StandardError) -> String {
    let category = e.category.as_deref().unwrap_or("ERROR");
    let message = e.message.as_deref().unwrap_or("no message");
    format!("{category}: {message}")
}

impl HubSpotError {
    /// Returns true when the same call may succeed later: 429, 5xx, time-outs, lost
    /// connections, the daily cap.
    pub fn is_retryable(&self) -> bool {
        match self {
            HubSpotError::Api { status, .. } => *status == 429 || *status >= 500,
            HubSpotError::Transport { .. } | HubSpotError::DailyCap { .. } => true,
            HubSpotError::Decode { .. } => false,
        }
    }

    /// Returns true when the call should be retried now (after a wait) within the same call.
    fn retry_now(&self) -> bool {
        match self {
            HubSpotError::Api { daily: true, .. } | HubSpotError::DailyCap { .. } => false,
            other => other.is_retryable(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            HubSpotError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Returns HubSpot's error body and status when HubSpot refused the call (4xx other than
    /// 429).
    pub(crate) fn refused(&self) -> Option<(u16, &StandardError)> {
        match self {
            HubSpotError::Api { status, error, .. }
                if *status >= 400 && *status < 500 && *status != 429 =>
            {
                Some((*status, error))
            }
            _ => None,
        }
    }
}

impl From<HubSpotError> for CrmError {
    fn from(e: HubSpotError) -> CrmError {
        let retryable = e.is_retryable();
        let operation = match &e {
            HubSpotError::Api { operation, .. }
            | HubSpotError::Transport { operation, .. }
            | HubSpotError::Decode { operation, .. }
            | HubSpotError::DailyCap { operation, .. } => operation.clone(),
        };
        CrmError::Remote {
            operation,
            message: e.to_string(),
            retryable,
        }
    }
}

/// A rolling window of request start times.
struct Window {
    max: usize,
    span: Duration,
    starts: Mutex<VecDeque<Instant>>,
}

impl Window {
    fn new(max: u32, span: Duration) -> Window {
        Window {
            max: max.max(1) as usize,
            span,
            starts: Mutex::new(VecDeque::new()),
        }
    }

    /// Waits until a request may start, and counts it.
    async fn take(&self) {
        let mut starts = self.starts.lock().await;
        loop {
            let now = Instant::now();
            while starts
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.span)
            {
                starts.pop_front();
            }
            if starts.len() < self.max {
                starts.push_back(now);
                return;
            }
            if let Some(first) = starts.front().copied() {
                tokio::time::sleep_until(first + self.span).await;
            }
        }
    }
}

/// HubSpot's limits as this process sees them.
struct Limiter {
    general: Window,
    search: Window,
    daily_limit: u64,
    /// (UTC day, requests sent that day, HubSpot said none remain).
    daily: std::sync::Mutex<(NaiveDate, u64, bool)>,
    /// Set by a 429: every request waits until then.
    paused_until: std::sync::Mutex<Option<Instant>>,
}

impl Limiter {
    async fn acquire(&self, search: bool, operation: &str) -> Result<(), HubSpotError> {
        {
            let mut daily = self
                .daily
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let today = Utc::now().date_naive();
            if daily.0 != today {
                *daily = (today, 0, false);
            }
            if daily.2 || daily.1 >= self.daily_limit {
                return Err(HubSpotError::DailyCap {
                    operation: operation.to_owned(),
                    limit: self.daily_limit,
                });
            }
            daily.1 += 1;
        }
        let pause = *self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(until) = pause {
            tokio::time::sleep_until(until).await;
        }
        if search {
            self.search.take().await;
        }
        self.general.take().await;
        Ok(())
    }

    fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    fn daily_exhausted(&self) {
        let mut daily = self
            .daily
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        daily.2 = true;
    }
}

/// Settings of the transport.
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings {
    pub(crate) base_url: url::Url,
    pub(crate) timeout: Duration,
    pub(crate) max_retries: usize,
    pub(crate) requests_per_10s: u32,
    pub(crate) search_per_second: u32,
    pub(crate) daily_limit: u64,
}

/// The HubSpot transport.
pub(crate) struct Client {
    http: reqwest::Client,
    settings: ClientSettings,
    token: SecretString,
    limiter: Limiter,
    /// Requests sent (attempts included), for benchmarks and tests.
    sent: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.settings.base_url.as_str())
            .field("token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// One request.
pub(crate) struct Request<'a> {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Vec<(&'a str, String)>,
    pub(crate) body: Option<serde_json::Value>,
    /// Counts against the search endpoints' own limit.
    pub(crate) search: bool,
    pub(crate) operation: String,
}

impl<'a> Request<'a> {
    pub(crate) fn get(path: String, operation: String) -> Request<'a> {
        Request {
            method: Method::GET,
            path,
            query: Vec::new(),
            body: None,
            search: false,
            operation,
        }
    }

    pub(crate) fn post(path: String, body: serde_json::Value, operation: String) -> Request<'a> {
        let search = path_is_search(&path);
        Request {
            method: Method::POST,
            path,
            query: Vec::new(),
            body: Some(body),
            search,
            operation,
        }
    }

    pub(crate) fn q(mut self, key: &'a str, value: impl ToString) -> Request<'a> {
        self.query.push((key, value.to_string()));
        self
    }
}

fn path_is_search(path: &str) -> bool {
    path.ends_with("/search")
}

impl Client {
    /// Returns a transport for `settings` authenticating with `token`.
    ///
    /// # Errors
    /// [`CrmError::Config`] when the HTTP client cannot be built.
    pub(crate) fn new(settings: ClientSettings, token: SecretString) -> Result<Client, CrmError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| CrmError::Config {
                message: format!("hubspot adapter: the HTTP client cannot be built: {e}"),
            })?;
        let limiter = Limiter {
            general: Window::new(settings.requests_per_10s, Duration::from_secs(10)),
            search: Window::new(settings.search_per_second, Duration::from_secs(1)),
            daily_limit: settings.daily_limit,
            daily: std::sync::Mutex::new((Utc::now().date_naive(), 0, false)),
            paused_until: std::sync::Mutex::new(None),
        };
        Ok(Client {
            http,
            settings,
            token,
            limiter,
            sent: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Returns how many requests were sent so far (retries included).
    pub(crate) fn requests_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends `request` (with limits and retries) and returns its JSON answer (`null` for an
    /// empty body).
    ///
    /// # Errors
    /// The last attempt's [`HubSpotError`].
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        request: &Request<'_>,
    ) -> Result<T, HubSpotError> {
        let json = self.send_json(request).await?;
        serde_json::from_value(json).map_err(|e| HubSpotError::Decode {
            operation: request.operation.clone(),
            message: e.to_string(),
        })
    }

    /// As [`Client::send`], keeping the JSON.
    pub(crate) async fn send_json(
        &self,
        request: &Request<'_>,
    ) -> Result<serde_json::Value, HubSpotError> {
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(self.settings.max_retries);
        let op = || self.attempt(request);
        op.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(HubSpotError::retry_now)
            .adjust(|e: &HubSpotError, dur: Option<Duration>| {
                dur.map(|d| e.retry_after().unwrap_or(d))
            })
            .notify(|e: &HubSpotError, wait: Duration| {
                tracing::warn!(operation = %request.operation, error = %e, wait_ms = wait.as_millis() as u64, "hubspot call failed, retrying");
            })
            .await
    }

    async fn attempt(&self, request: &Request<'_>) -> Result<serde_json::Value, HubSpotError> {
        self.limiter
            .acquire(request.search, &request.operation)
            .await?;
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut url = self.settings.base_url.clone();
        {
            let base = url.path().trim_end_matches('/').to_owned();
            url.set_path(&format!("{base}{}", request.path));
        }
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .query(&request.query);
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.token.expose_secret()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        auth.set_sensitive(true);
        builder = builder.header(AUTHORIZATION, auth);
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let transport = |e: reqwest::Error| HubSpotError::Transport {
            operation: request.operation.clone(),
            message: if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.without_url().to_string()
            },
        };
        let response = builder.send().await.map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        if headers
            .get("x-hubspot-ratelimit-daily-remaining")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
        {
            self.limiter.daily_exhausted();
        }
        let bytes = response.bytes().await.map_err(transport)?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(HubSpotError::Decode {
                operation: request.operation.clone(),
                message: format!("the answer is larger than {MAX_BODY_BYTES} bytes"),
            });
        }
        if status.is_success() {
            if bytes.is_empty() || status == StatusCode::NO_CONTENT {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| HubSpotError::Decode {
                operation: request.operation.clone(),
                message: e.to_string(),
            });
        }
        let raw: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let error: StandardError =
            serde_json::from_value(raw.clone()).unwrap_or_else(|_| StandardError {
                message: Some(String::from_utf8_lossy(&bytes).chars().take(300).collect()),
                ..StandardError::default()
            });
        let daily = status == StatusCode::TOO_MANY_REQUESTS
            && raw.get("policyName").and_then(|p| p.as_str()) == Some("DAILY");
        let retry_after = if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = rate_wait(&headers);
            if daily {
                self.limiter.daily_exhausted();
            } else {
                self.limiter.pause_for(wait);
            }
            Some(wait)
        } else {
            None
        };
        Err(HubSpotError::Api {
            operation: request.operation.clone(),
            status: status.as_u16(),
            error: Box::new(error),
            retry_after,
            daily,
        })
    }
}

/// Returns how long a 429 asks to wait: `Retry-After` (seconds), else the rate-limit window
/// (`X-HubSpot-RateLimit-Interval-Milliseconds`) when it says none remain, else 10 seconds.
pub(crate) fn rate_wait(headers: &HeaderMap) -> Duration {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(secs) = number(RETRY_AFTER.as_str()) {
        return Duration::from_secs_f64(secs.min(3600.0));
    }
    let remaining = number("x-hubspot-ratelimit-remaining");
    if let (Some(ms), Some(0.0) | None) = (
        number("x-hubspot-ratelimit-interval-milliseconds"),
        remaining,
    ) {
        return Duration::from_secs_f64((ms / 1000.0).min(3600.0));
    }
    DEFAULT_RATE_WAIT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_429_waits_as_long_as_hubspot_says() {
        assert_eq!(
            rate_wait(&headers(&[("retry-after", "3")])),
            Duration::from_secs(3)
        );
        assert_eq!(
            rate_wait(&headers(&[
                ("x-hubspot-ratelimit-interval-milliseconds", "10000"),
                ("x-hubspot-ratelimit-remaining", "0"),
            ])),
            Duration::from_secs(10)
        );
        assert_eq!(
            rate_wait(&headers(&[(
                "x-hubspot-ratelimit-interval-milliseconds",
                "2000"
            )])),
            Duration::from_secs(2)
        );
        assert_eq!(rate_wait(&HeaderMap::new()), DEFAULT_RATE_WAIT);
    }

    #[test]
    fn retryable_classification_follows_the_status() {
        let api = |status: u16, daily: bool| HubSpotError::Api {
            operation: "x".into(),
            status,
            error: Box::default(),
            retry_after: None,
            daily,
        };
        assert!(api(429, false).is_retryable() && api(429, false).retry_now());
        assert!(api(429, true).is_retryable() && !api(429, true).retry_now());
        assert!(api(502, false).retry_now());
        assert!(!api(400, false).is_retryable());
        assert!(api(400, false).refused().is_some());
        assert!(api(429, false).refused().is_none());
        let crm: CrmError = api(503, false).into();
        assert!(crm.is_retryable());
        let crm: CrmError = api(401, false).into();
        assert!(!crm.is_retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rolling_window_holds_the_eleventh_request_for_the_rest_of_the_span() {
        let w = Window::new(10, Duration::from_secs(10));
        let start = Instant::now();
        for _ in 0..10 {
            w.take().await;
        }
        assert_eq!(Instant::now(), start);
        w.take().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_daily_cap_refuses_without_sending() {
        let client = Client::new(
            ClientSettings {
                base_url: url::Url::parse("http://127.0.0.1:9").unwrap(),
                timeout: Duration::from_secs(1),
                max_retries: 0,
                requests_per_10s: 100,
                search_per_second: 4,
                daily_limit: 0,
            },
            SecretString::from("pat-secret-value"),
        )
        .unwrap();
        let err = client
            .send_json(&Request::get("/crm/v3/owners".into(), "list owners".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, HubSpotError::DailyCap { .. }), "{err}");
        assert_eq!(client.requests_sent(), 0);
        assert!(!format!("{client:?}").contains("pat-secret-value"));
    }
}
