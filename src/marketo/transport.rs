//! Sending calls: limiter, bearer token, envelope checks, retries, 413/414 handling.

use std::path::PathBuf;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use super::Client;
use super::auth::Token;
use super::config::join_path;
use super::error::{Disposition, Error};
use super::limiter::CallPermit;
use super::model::Envelope;

/// URLs longer than this are sent as `POST ?_method=GET` right away (Marketo's limit is 8 KB).
pub(crate) const MAX_GET_URL: usize = 7_000;

/// The largest REST response body read, in bytes. Marketo's biggest answers (300 records of
/// every field) stay far below it; a larger body is refused instead of filling memory.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Codes Marketo does not count against the daily quota.
const UNCOUNTED: &[&str] = &["601", "602", "604", "605", "608", "611"];

/// The body of a call.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    None,
    Json(Json),
    /// `application/x-www-form-urlencoded` pairs (the Asset API's writes).
    Form(Vec<(String, String)>),
    Multipart(MultipartSpec),
}

/// A multipart upload, rebuilt from its file on every attempt.
#[derive(Debug, Clone)]
pub(crate) struct MultipartSpec {
    pub(crate) file: PathBuf,
    pub(crate) file_name: String,
    pub(crate) mime: &'static str,
}

/// One REST or Bulk call.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) body: Body,
    /// Whether a call that may have been processed can be sent again.
    pub(crate) idempotent: bool,
}

impl Call {
    pub(crate) fn get(path: impl Into<String>) -> Self {
        Call {
            method: Method::GET,
            path: path.into(),
            query: Vec::new(),
            body: Body::None,
            idempotent: true,
        }
    }

    pub(crate) fn post(path: impl Into<String>, body: Json) -> Self {
        Call {
            method: Method::POST,
            path: path.into(),
            query: Vec::new(),
            body: Body::Json(body),
            idempotent: true,
        }
    }

    pub(crate) fn post_empty(path: impl Into<String>) -> Self {
        Call {
            method: Method::POST,
            path: path.into(),
            query: Vec::new(),
            body: Body::None,
            idempotent: true,
        }
    }

    /// A POST whose parameters travel as a form-encoded body (the Asset API's writes).
    pub(crate) fn post_form(path: impl Into<String>, pairs: Vec<(String, String)>) -> Self {
        Call {
            method: Method::POST,
            path: path.into(),
            query: Vec::new(),
            body: Body::Form(pairs),
            idempotent: true,
        }
    }

    pub(crate) fn q(mut self, key: &str, value: impl ToString) -> Self {
        self.query.push((key.to_owned(), value.to_string()));
        self
    }

    pub(crate) fn q_opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.q(key, v),
            None => self,
        }
    }

    pub(crate) fn q_list(self, key: &str, values: &[impl ToString]) -> Self {
        if values.is_empty() {
            return self;
        }
        let joined = values
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.q(key, joined)
    }

    pub(crate) fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }
}

impl Client {
    fn url(&self, path: &str) -> url::Url {
        join_path(&self.inner.config.base_url, path)
    }

    /// Sends a call with the limiter, token replay and retries, and returns its envelope.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        call: &Call,
    ) -> Result<Envelope<T>, Error> {
        let env = self.call_json(call).await?;
        convert_envelope(&call.path, env)
    }

    /// Like [`Client::call`] but keeps the records as JSON.
    pub(crate) async fn call_json(&self, call: &Call) -> Result<Envelope<Json>, Error> {
        let policy = &self.inner.config.retry;
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_max_times(policy.max_retries);
        let rate_wait = policy.rate_limit_wait;
        let idempotent = call.idempotent;
        let op = || self.attempt(call);
        op.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &Error| match e.disposition() {
                Disposition::BackOff => true,
                // A write that may have been applied is only re-sent when it cannot duplicate.
                Disposition::Retry => idempotent,
                _ => false,
            })
            .adjust(|e: &Error, dur: Option<Duration>| {
                if e.code() == Some("606") {
                    // The shared window holds every task back; this one also backs off.
                    self.inner.limiter.saturate_window(rate_wait);
                }
                dur
            })
            .notify(|e: &Error, dur: Duration| {
                tracing::warn!(endpoint = %call.path, error = %e, wait_ms = dur.as_millis() as u64, "marketo call failed, retrying");
            })
            .await
    }

    /// One attempt: limiter slot, token, send; on 601/602 a fresh token and one replay.
    async fn attempt(&self, call: &Call) -> Result<Envelope<Json>, Error> {
        let _permit = self.inner.limiter.acquire().await?;
        let mut replayed = false;
        loop {
            let token = match self.inner.auth.token(&self.inner.http).await {
                Ok(t) => t,
                Err(e) => {
                    // Nothing reached the REST API.
                    self.inner.limiter.uncount();
                    return Err(e);
                }
            };
            match self.send_once(call, &token).await {
                Err(e) if e.disposition() == Disposition::ReAuth && !replayed => {
                    tracing::info!(endpoint = %call.path, code = e.code().unwrap_or(""), "access token rejected, re-authenticating");
                    self.inner.auth.invalidate(token.generation).await;
                    replayed = true;
                    self.inner.limiter.acquire_extra().await?;
                }
                other => return other,
            }
        }
    }

    fn build(
        &self,
        http: &reqwest::Client,
        method: Method,
        url: url::Url,
        token: &Token,
        timeout: Option<Duration>,
    ) -> reqwest::RequestBuilder {
        let mut rb = http.request(method, url);
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.secret.expose_secret()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        auth.set_sensitive(true);
        rb = rb.header(AUTHORIZATION, auth);
        if let Some(t) = timeout {
            rb = rb.timeout(t);
        }
        rb
    }

    async fn send_once(&self, call: &Call, token: &Token) -> Result<Envelope<Json>, Error> {
        let endpoint = call.path.as_str();
        let timeout = self.inner.config.request_timeout;
        let http = &self.inner.http;
        let mut url = self.url(endpoint);
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(call.query.iter());
        }
        let long_get = call.method == Method::GET && url.as_str().len() > MAX_GET_URL;
        let resp = if long_get {
            self.send_as_post_get(call, token).await?
        } else {
            let mut rb = self.build(http, call.method.clone(), url, token, timeout);
            let mut size = 0u64;
            match &call.body {
                Body::None => {}
                Body::Json(j) => {
                    let bytes = serde_json::to_vec(j)
                        .map_err(|e| Error::decode(endpoint, e.to_string()))?;
                    size = bytes.len() as u64;
                    rb = rb.header(CONTENT_TYPE, "application/json").body(bytes);
                }
                Body::Form(pairs) => {
                    let encoded = url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(pairs.iter())
                        .finish();
                    size = encoded.len() as u64;
                    rb = rb
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(encoded);
                }
                Body::Multipart(spec) => {
                    let (form, len) = multipart_form(spec).await?;
                    size = len;
                    rb = rb.multipart(form);
                }
            }
            let resp = rb.send().await.map_err(|e| Error::transport(endpoint, e))?;
            match resp.status() {
                StatusCode::URI_TOO_LONG if call.method == Method::GET => {
                    tracing::info!(endpoint, "uri too long, resending as post with _method=GET");
                    self.inner.limiter.acquire_extra().await?;
                    self.send_as_post_get(call, token).await?
                }
                StatusCode::PAYLOAD_TOO_LARGE => {
                    return Err(Error::BodyTooLarge {
                        endpoint: endpoint.to_owned(),
                        bytes: size,
                    });
                }
                _ => resp,
            }
        };
        self.read_envelope(endpoint, resp).await
    }

    /// Sends a GET's query as a form body of `POST ?_method=GET`.
    async fn send_as_post_get(
        &self,
        call: &Call,
        token: &Token,
    ) -> Result<reqwest::Response, Error> {
        let endpoint = call.path.as_str();
        let mut url = self.url(endpoint);
        url.query_pairs_mut().append_pair("_method", "GET");
        let resp = self
            .build(
                &self.inner.http,
                Method::POST,
                url,
                token,
                self.inner.config.request_timeout,
            )
            .form(&call.query)
            .send()
            .await
            .map_err(|e| Error::transport(endpoint, e))?;
        if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Err(Error::BodyTooLarge {
                endpoint: endpoint.to_owned(),
                bytes: call
                    .query
                    .iter()
                    .map(|(k, v)| (k.len() + v.len() + 2) as u64)
                    .sum(),
            });
        }
        Ok(resp)
    }

    async fn read_envelope(
        &self,
        endpoint: &str,
        resp: reqwest::Response,
    ) -> Result<Envelope<Json>, Error> {
        let status = resp.status();
        let bytes = read_body(endpoint, resp, MAX_RESPONSE_BYTES).await?;
        if !status.is_success() {
            return Err(Error::HttpStatus {
                endpoint: endpoint.to_owned(),
                status: status.as_u16(),
                body: body_excerpt(&bytes),
            });
        }
        let env: Envelope<Json> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::decode(endpoint, format!("{e} in {}", body_excerpt(&bytes))))?;
        self.check_envelope(endpoint, env)
    }

    pub(crate) fn check_envelope(
        &self,
        endpoint: &str,
        env: Envelope<Json>,
    ) -> Result<Envelope<Json>, Error> {
        let first = env.errors.as_ref().and_then(|e| e.first()).cloned();
        match (env.success, first) {
            (Some(false), Some(err)) | (None, Some(err)) => {
                if UNCOUNTED.contains(&err.code.as_str()) {
                    self.inner.limiter.uncount();
                }
                Err(Error::from_api(endpoint, &err.code, &err.message))
            }
            (Some(false), None) => Err(Error::decode(
                endpoint,
                "success is false but no error is given",
            )),
            _ => Ok(env),
        }
    }

    /// Sends a GET whose body is not an envelope (bulk files), with limiter, token and one
    /// replay on 601/602; returns the response with its concurrency permit.
    pub(crate) async fn send_raw(
        &self,
        path: &str,
        headers: HeaderMap,
    ) -> Result<(reqwest::Response, CallPermit), Error> {
        let permit = self.inner.limiter.acquire().await?;
        let mut replayed = false;
        loop {
            let token = self.inner.auth.token(&self.inner.http).await?;
            let resp = self
                .build(
                    &self.inner.download_http,
                    Method::GET,
                    self.url(path),
                    &token,
                    self.inner.config.download_timeout,
                )
                .headers(headers.clone())
                .send()
                .await
                .map_err(|e| Error::transport(path, e))?;
            let is_json = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("json"));
            if resp.status().is_success() && is_json {
                // A file is CSV/TSV; a JSON body is an envelope, usually an error.
                let bytes = read_body(path, resp, MAX_RESPONSE_BYTES).await?;
                let env: Envelope<Json> = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::decode(path, e.to_string()))?;
                match self.check_envelope(path, env) {
                    Err(e) if e.disposition() == Disposition::ReAuth && !replayed => {
                        self.inner.auth.invalidate(token.generation).await;
                        replayed = true;
                        self.inner.limiter.acquire_extra().await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                    Ok(_) => {
                        return Err(Error::decode(path, "expected a file, got a JSON envelope"));
                    }
                }
            }
            return Ok((resp, permit));
        }
    }
}

async fn multipart_form(spec: &MultipartSpec) -> Result<(reqwest::multipart::Form, u64), Error> {
    let file = tokio::fs::File::open(&spec.file)
        .await
        .map_err(|e| Error::io(&spec.file, e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| Error::io(&spec.file, e))?
        .len();
    let stream = tokio_util::io::ReaderStream::new(file);
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
            .file_name(spec.file_name.clone())
            .mime_str(spec.mime)
            .map_err(|e| Error::invalid("multipart", e.without_url().to_string()))?;
    Ok((reqwest::multipart::Form::new().part("file", part), len))
}

/// Returns a response body of at most `limit` bytes.
///
/// # Errors
///
/// Returns [`Error::Decode`] when the body is larger (by its `Content-Length` or as it
/// arrives), and [`Error::Transport`] when reading fails.
pub(crate) async fn read_body(
    endpoint: &str,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let too_large = || {
        Error::decode(
            endpoint,
            format!("response body is larger than {limit} bytes; refused"),
        )
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Error::transport(endpoint, e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Returns the start of a body for error messages (never more than 300 characters).
pub(crate) fn body_excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        s.push('…');
    }
    s
}

/// Converts the JSON records of an envelope into typed records, naming the failing index.
pub(crate) fn convert_envelope<T: DeserializeOwned>(
    endpoint: &str,
    env: Envelope<Json>,
) -> Result<Envelope<T>, Error> {
    let result = match env.result {
        None => None,
        Some(items) => Some(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_json::from_value(v)
                        .map_err(|e| Error::decode(endpoint, format!("result[{i}]: {e}")))
                })
                .collect::<Result<Vec<T>, Error>>()?,
        ),
    };
    Ok(Envelope {
        request_id: env.request_id,
        success: env.success,
        result,
        errors: env.errors,
        warnings: env.warnings,
        more_result: env.more_result,
        next_page_token: env.next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::marketo::Disposition;
    use crate::marketo::test_support::*;

    fn values(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("someone.with.a.long.address.{i}@example.com"))
            .collect()
    }

    #[tokio::test]
    async fn token_goes_in_the_header_only_and_is_fetched_once() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/lead/7.json"))
            .and(header("Authorization", format!("Bearer {TOKEN}").as_str()))
            .and(query_param_is_missing("access_token"))
            .respond_with(ok(json!([{"id": 7}])))
            .expect(3)
            .mount(&server)
            .await;
        for _ in 0..3 {
            assert!(client.get_lead(7, &[]).await.unwrap().is_some());
        }
        let reqs = server.received_requests().await.unwrap();
        let identity = reqs
            .iter()
            .filter(|r| r.url.path() == "/identity/oauth/token")
            .count();
        assert_eq!(identity, 1);
        let id_req = reqs
            .iter()
            .find(|r| r.url.path() == "/identity/oauth/token")
            .unwrap();
        assert_eq!(id_req.method.as_str(), "POST");
        assert!(
            id_req
                .url
                .query()
                .unwrap()
                .contains("grant_type=client_credentials")
        );
        // Identity calls do not count.
        assert_eq!(client.usage().calls, 3);
    }

    async fn mount_two_tokens(server: &MockServer) {
        Mock::given(method("POST"))
            .and(path("/identity/oauth/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": "token-A:int", "token_type": "bearer", "expires_in": 3599, "scope": "s"})))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(server)
            .await;
        Mock::given(method("POST"))
            .and(path("/identity/oauth/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": "token-B:int", "token_type": "bearer", "expires_in": 3599, "scope": "s"})))
            .with_priority(2)
            .mount(server)
            .await;
    }

    #[tokio::test]
    async fn token_expiry_mid_paging_reauthenticates_and_replays_once() {
        let server = MockServer::start().await;
        mount_two_tokens(&server).await;
        let client = Client::new(config(&server)).unwrap();
        Mock::given(method("GET"))
            .and(path("/rest/v1/leads.json"))
            .and(query_param_is_missing("nextPageToken"))
            .and(header("Authorization", "Bearer token-A:int"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "success": true, "result": [{"id": 1}], "moreResult": true, "nextPageToken": "P2"})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/leads.json"))
            .and(query_param("nextPageToken", "P2"))
            .and(header("Authorization", "Bearer token-A:int"))
            .respond_with(fail("602", "Access token expired"))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/leads.json"))
            .and(query_param("nextPageToken", "P2"))
            .and(header("Authorization", "Bearer token-B:int"))
            .respond_with(ok(json!([{"id": 2}])))
            .expect(1)
            .mount(&server)
            .await;
        let v = vec!["1".to_owned(), "2".to_owned()];
        let p1 = client.get_leads("id", &v, &[], None).await.unwrap();
        let p2 = client
            .get_leads("id", &v, &[], p1.next_page_token.as_deref())
            .await
            .unwrap();
        assert_eq!(p2.records[0]["id"], 2);
        // The 602 is not counted; the replay is.
        assert_eq!(client.usage().calls, 2);
    }

    #[tokio::test]
    async fn invalid_token_after_the_replay_fails_cleanly() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/lead/1.json"))
            .respond_with(fail("601", "Access token invalid"))
            .expect(2)
            .mount(&server)
            .await;
        let err = client.get_lead(1, &[]).await.unwrap_err();
        assert_eq!(err.disposition(), Disposition::ReAuth);
        assert_eq!(err.code(), Some("601"));
        assert!(!err.is_retryable());
        let identity = requests_to(&server, "/identity/oauth/token").await.len();
        assert_eq!(identity, 2, "one initial token and one re-authentication");
    }

    #[tokio::test]
    async fn bad_credentials_are_not_retried_and_never_show_the_secret() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/identity/oauth/token"))
            .respond_with(ResponseTemplate::new(401).set_body_json(json!({
                "error": "invalid_client", "error_description": "Bad client credentials"})))
            .expect(1)
            .mount(&server)
            .await;
        let client = Client::new(config(&server)).unwrap();
        let err = client.get_lead(1, &[]).await.unwrap_err();
        assert!(matches!(err, Error::BadCredentials { .. }), "{err:?}");
        assert!(!err.is_retryable());
        for text in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
            assert!(!text.contains(SECRET), "secret leaked: {text}");
            assert!(text.contains("test-client") || text.contains("Bad client credentials"));
        }
    }

    #[tokio::test]
    async fn transport_errors_never_show_the_secret_or_token() {
        // Nothing listens on this port; the identity URL (with the secret in its query) fails.
        let mut cfg = config(&MockServer::start().await);
        cfg.base_url = "http://127.0.0.1:9".parse().unwrap();
        cfg.retry.max_retries = 0;
        let client = Client::new(cfg).unwrap();
        let err = client.get_lead(1, &[]).await.unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(SECRET), "secret leaked: {shown}");
        assert!(!shown.contains("client_secret"), "url leaked: {shown}");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_606_backs_off_for_the_window_then_retries() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/lead/3.json"))
            .respond_with(fail(
                "606",
                "Max rate limit '100' exceeded with in '20' secs",
            ))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/lead/3.json"))
            .respond_with(ok(json!([{"id": 3}])))
            .with_priority(2)
            .mount(&server)
            .await;
        let t0 = tokio::time::Instant::now();
        let lead = client.get_lead(3, &[]).await.unwrap().unwrap();
        assert_eq!(lead["id"], 3);
        let waited = tokio::time::Instant::now() - t0;
        assert!(waited >= Duration::from_secs(20), "waited {waited:?}");
        assert!(waited < Duration::from_secs(25), "waited {waited:?}");
        let calls = requests_to(&server, "/rest/v1/lead/3.json").await.len();
        assert_eq!(calls, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_a_limited_number_of_times() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/lead/4.json"))
            .respond_with(fail("604", "Request time-out"))
            .expect(4)
            .mount(&server)
            .await;
        let err = client.get_lead(4, &[]).await.unwrap_err();
        assert_eq!(err.code(), Some("604"));
        // 604 is not counted by Marketo.
        assert_eq!(client.usage().calls, 0);
    }

    #[tokio::test]
    async fn daily_quota_607_and_call_errors_are_not_retried() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/lead/5.json"))
            .respond_with(fail("607", "Daily quota reached"))
            .expect(1)
            .mount(&server)
            .await;
        let err = client.get_lead(5, &[]).await.unwrap_err();
        assert_eq!(err.disposition(), Disposition::PauseUntilDayTurns);
    }

    #[tokio::test]
    async fn a_spent_daily_budget_makes_no_call() {
        let server = MockServer::start().await;
        mount_identity(&server, TOKEN).await;
        let mut cfg = config(&server);
        cfg.daily_call_budget = 1;
        let client = Client::new(cfg).unwrap();
        Mock::given(method("GET"))
            .and(path("/rest/v1/lead/6.json"))
            .respond_with(ok(json!([{"id": 6}])))
            .expect(1)
            .mount(&server)
            .await;
        client.get_lead(6, &[]).await.unwrap();
        let err = client.clone().get_lead(6, &[]).await.unwrap_err();
        assert!(matches!(
            err,
            Error::DailyBudgetSpent {
                calls: 1,
                budget: 1,
                ..
            }
        ));
        assert_eq!(err.disposition(), Disposition::PauseUntilDayTurns);
    }

    #[tokio::test]
    async fn http_414_is_resent_as_post_with_method_get() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/leads.json"))
            .respond_with(ResponseTemplate::new(414))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/leads.json"))
            .and(query_param("_method", "GET"))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .respond_with(ok(json!([{"id": 9}])))
            .expect(1)
            .mount(&server)
            .await;
        let page = client
            .get_leads("email", &values(3), &[], None)
            .await
            .unwrap();
        assert_eq!(page.records[0]["id"], 9);
        let post = server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.method.as_str() == "POST" && r.url.path() == "/rest/v1/leads.json")
            .unwrap();
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&post.body)
            .into_owned()
            .collect();
        assert!(form.contains(&("filterType".into(), "email".into())));
        assert!(
            form.iter()
                .any(|(k, v)| k == "filterValues" && v.contains("address.2@"))
        );
    }

    #[tokio::test]
    async fn long_urls_go_straight_to_method_get() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/leads.json"))
            .and(query_param("_method", "GET"))
            .respond_with(ok(json!([])))
            .expect(1)
            .mount(&server)
            .await;
        let page = client
            .get_leads("email", &values(300), &[], None)
            .await
            .unwrap();
        assert!(page.records.is_empty());
        assert_eq!(server.received_requests().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn http_413_says_the_body_must_be_split() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/leads.json"))
            .respond_with(ResponseTemplate::new(413))
            .expect(1)
            .mount(&server)
            .await;
        let input = vec![serde_json::Map::new(); 2];
        let err = client
            .sync_leads(
                crate::marketo::SyncAction::CreateOrUpdate,
                None,
                None,
                &input,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BodyTooLarge { .. }));
        assert!(err.to_string().contains("split"));
    }

    #[derive(Default)]
    struct Counting {
        now: AtomicUsize,
        max: AtomicUsize,
        arrivals: std::sync::Mutex<Vec<tokio::time::Instant>>,
    }

    /// A fake Marketo on the test's own (paused) runtime, so the server sees virtual time.
    async fn spawn_counting_server(state: Arc<Counting>) -> String {
        use axum::routing::{get, post};
        async fn token() -> axum::Json<Json> {
            axum::Json(
                json!({"access_token": TOKEN, "token_type": "bearer", "expires_in": 3599, "scope": "s"}),
            )
        }
        async fn lead(
            axum::extract::State(st): axum::extract::State<Arc<Counting>>,
        ) -> axum::Json<Json> {
            st.arrivals
                .lock()
                .unwrap()
                .push(tokio::time::Instant::now());
            let n = st.now.fetch_add(1, Ordering::SeqCst) + 1;
            st.max.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3)).await;
            st.now.fetch_sub(1, Ordering::SeqCst);
            axum::Json(json!({"requestId": "a#1", "success": true, "result": [{"id": 1}]}))
        }
        let app = axum::Router::new()
            .route("/identity/oauth/token", post(token))
            .route("/rest/v1/lead/1.json", get(lead))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_tasks_sharing_a_client_respect_window_and_concurrency() {
        let state = Arc::new(Counting::default());
        let uri = spawn_counting_server(state.clone()).await;
        let mut cfg = config(&MockServer::start().await);
        cfg.base_url = uri.parse().unwrap();
        cfg.calls_per_20s = 5;
        cfg.max_concurrency = 2;
        let client = Client::new(cfg).unwrap();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move { c.get_lead(1, &[]).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(
            state.max.load(Ordering::SeqCst),
            2,
            "never more than 2 in flight, and the cap is used"
        );
        let mut arrivals = state.arrivals.lock().unwrap().clone();
        arrivals.sort();
        assert_eq!(arrivals.len(), 12);
        for (i, a) in arrivals.iter().enumerate() {
            let in_window = arrivals[i..]
                .iter()
                .take_while(|t| t.duration_since(*a) < Duration::from_secs(20))
                .count();
            assert!(in_window <= 5, "{in_window} calls within 20 s of call {i}");
        }
        assert!(arrivals[11].duration_since(arrivals[0]) >= Duration::from_secs(40));
        assert_eq!(client.usage().calls, 12);
    }
}
