//! Helpers for the client's wiremock tests.

use secrecy::SecretString;
use serde_json::{Value as Json, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{Client, ClientConfig, RetryPolicy};

/// The secret every test uses; tests assert it never shows up in errors.
pub(crate) const SECRET: &str = "TOP-SECRET-client-secret-value";
/// The token the identity mock hands out.
pub(crate) const TOKEN: &str = "cdf01657-110d-4155-99a7-f986b2ff13a0:int";

pub(crate) fn config(server: &MockServer) -> ClientConfig {
    let mut cfg = ClientConfig::new(
        server.uri().parse().unwrap(),
        "test-client",
        SecretString::from(SECRET),
    );
    cfg.request_timeout = None;
    cfg.download_timeout = None;
    cfg.pool_idle_timeout = None;
    cfg.retry = RetryPolicy {
        max_retries: 3,
        min_delay: std::time::Duration::from_millis(100),
        max_delay: std::time::Duration::from_secs(5),
        rate_limit_wait: std::time::Duration::from_secs(20),
        download_attempts: 4,
    };
    cfg
}

pub(crate) async fn server_with_identity() -> (MockServer, Client) {
    let server = MockServer::start().await;
    mount_identity(&server, TOKEN).await;
    let client = Client::new(config(&server)).unwrap();
    (server, client)
}

pub(crate) async fn mount_identity(server: &MockServer, token: &str) {
    Mock::given(method("POST"))
        .and(path("/identity/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token, "token_type": "bearer", "expires_in": 3599, "scope": "api@x.com"
        })))
        .mount(server)
        .await;
}

/// Returns the requests the server received for `path`, in arrival order.
pub(crate) async fn requests_to(server: &MockServer, path: &str) -> Vec<wiremock::Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == path)
        .collect()
}

pub(crate) fn ok(result: Json) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "requestId": "e42b#14272d07d78", "success": true, "result": result
    }))
}

pub(crate) fn fail(code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "requestId": "e42b#14272d07d78", "success": false,
        "errors": [{"code": code, "message": message}]
    }))
}
