//! Identity calls and the shared access-token cache.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use super::config::{ClientConfig, join_path};
use super::error::Error;

const IDENTITY_ENDPOINT: &str = "/identity/oauth/token";
/// How often Identity may hand out a token that is about to expire before the client gives up.
const NEAR_EXPIRY_TRIES: u32 = 3;

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<i64>,
    error: Option<String>,
    error_description: Option<String>,
}

struct Cached {
    token: SecretString,
    expires_at: Instant,
    generation: u64,
}

/// A token handed to one request, with the generation used to invalidate it.
pub(crate) struct Token {
    pub(crate) secret: SecretString,
    pub(crate) generation: u64,
}

/// One token cache per client; every clone and task shares it, so one Identity call serves all.
pub(crate) struct TokenCache {
    token_url: Url,
    client_id: String,
    client_secret: SecretString,
    margin: Duration,
    state: Mutex<Option<Cached>>,
    generations: std::sync::atomic::AtomicU64,
}

impl TokenCache {
    pub(crate) fn new(cfg: &ClientConfig) -> Self {
        TokenCache {
            token_url: join_path(&cfg.identity_base(), "oauth/token"),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            margin: cfg.token_refresh_margin,
            state: Mutex::new(None),
            generations: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Returns a token with more than the margin left, fetching one when needed.
    pub(crate) async fn token(&self, http: &reqwest::Client) -> Result<Token, Error> {
        let mut state = self.state.lock().await;
        if let Some(c) = state.as_ref()
            && c.expires_at > Instant::now() + self.margin
        {
            return Ok(Token {
                secret: c.token.clone(),
                generation: c.generation,
            });
        }
        *state = None;
        let mut tries = 0;
        loop {
            tries += 1;
            let (token, expires_in) = self.fetch(http).await?;
            let lifetime = Duration::from_secs(expires_in.max(0) as u64);
            if lifetime <= self.margin {
                // Identity returns the same token until it expires; wait it out and ask again.
                if tries >= NEAR_EXPIRY_TRIES {
                    return Err(Error::Identity {
                        message: format!(
                            "identity keeps returning a token that expires in {expires_in} s"
                        ),
                        retryable: true,
                    });
                }
                tracing::debug!(
                    expires_in,
                    "access token about to expire, waiting for a new one"
                );
                tokio::time::sleep(lifetime + Duration::from_secs(1)).await;
                continue;
            }
            let generation = self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            *state = Some(Cached {
                token: token.clone(),
                expires_at: Instant::now() + lifetime,
                generation,
            });
            tracing::debug!(expires_in, "access token obtained");
            return Ok(Token {
                secret: token,
                generation,
            });
        }
    }

    /// Forgets the token of this generation (after 601/602), unless another task already did.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.as_ref().is_some_and(|c| c.generation == generation) {
            *state = None;
        }
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<(SecretString, i64), Error> {
        // Swagger identityUsingPOST: all three parameters are query parameters. The URL is
        // never logged and reqwest errors are stripped of it.
        let resp = http
            .post(self.token_url.clone())
            .query(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose_secret()),
            ])
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| Error::transport(IDENTITY_ENDPOINT, e))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::transport(IDENTITY_ENDPOINT, e))?;
        let parsed: Option<TokenResponse> = serde_json::from_slice(&body).ok();
        if status.as_u16() == 401 {
            let message = parsed
                .and_then(|p| p.error_description.or(p.error))
                .unwrap_or_else(|| "unauthorized".into());
            return Err(Error::BadCredentials {
                client_id: self.client_id.clone(),
                message,
            });
        }
        if !status.is_success() {
            return Err(Error::Identity {
                message: format!("HTTP {}", status.as_u16()),
                retryable: status.is_server_error() || status.as_u16() == 429,
            });
        }
        let parsed = parsed.ok_or_else(|| Error::Identity {
            message: "identity answered with something that is not JSON".into(),
            retryable: true,
        })?;
        if let Some(err) = parsed.error {
            let bad = matches!(err.as_str(), "invalid_client" | "unauthorized");
            let message = parsed.error_description.unwrap_or(err);
            if bad {
                return Err(Error::BadCredentials {
                    client_id: self.client_id.clone(),
                    message,
                });
            }
            return Err(Error::Identity {
                message,
                retryable: false,
            });
        }
        match (parsed.access_token, parsed.expires_in) {
            (Some(t), Some(e)) if !t.is_empty() => Ok((SecretString::from(t), e)),
            _ => Err(Error::Identity {
                message: "identity response lacks access_token or expires_in".into(),
                retryable: true,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use crate::marketo::Client;
    use crate::marketo::test_support::*;

    async fn identity_answers(server: &MockServer, answers: &[(&str, i64)]) {
        for (i, (token, expires_in)) in answers.iter().enumerate() {
            let m = Mock::given(method("POST"))
                .and(path("/identity/oauth/token"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                    "access_token": token, "token_type": "bearer", "expires_in": expires_in, "scope": "s"})))
                .with_priority(i as u8 + 1);
            if i + 1 < answers.len() {
                m.up_to_n_times(1).mount(server).await;
            } else {
                m.mount(server).await;
            }
        }
    }

    async fn mount_lead(server: &MockServer, token: &str) {
        Mock::given(method("GET"))
            .and(path("/rest/v1/lead/1.json"))
            .and(header("Authorization", format!("Bearer {token}").as_str()))
            .respond_with(ok(json!([{"id": 1}])))
            .mount(server)
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_about_to_expire_is_treated_as_expired() {
        let server = MockServer::start().await;
        identity_answers(&server, &[("old:int", 0), ("new:int", 3600)]).await;
        mount_lead(&server, "new:int").await;
        let client = Client::new(config(&server)).unwrap();
        let lead = client.get_lead(1, &[]).await.unwrap();
        assert!(lead.is_some(), "the call used the fresh token");
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_is_refreshed_before_it_expires() {
        let server = MockServer::start().await;
        identity_answers(&server, &[("first:int", 300), ("second:int", 3600)]).await;
        mount_lead(&server, "first:int").await;
        mount_lead(&server, "second:int").await;
        let client = Client::new(config(&server)).unwrap();
        client.get_lead(1, &[]).await.unwrap();
        client.get_lead(1, &[]).await.unwrap();
        // 300 s lifetime, 60 s margin: after 241 s the token is renewed.
        tokio::time::advance(Duration::from_secs(241)).await;
        client.get_lead(1, &[]).await.unwrap();
        let used: Vec<String> = requests_to(&server, "/rest/v1/lead/1.json")
            .await
            .iter()
            .map(|r| {
                r.headers
                    .get("authorization")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            used,
            ["Bearer first:int", "Bearer first:int", "Bearer second:int"]
        );
    }

    #[test]
    fn client_futures_are_send_and_errors_are_send_sync() {
        fn is_send<T: Send>(_: &T) {}
        fn is_send_sync<T: Send + Sync + 'static>() {}
        is_send_sync::<crate::marketo::Error>();
        is_send_sync::<Client>();
        let server_uri = "http://127.0.0.1:1".parse().unwrap();
        let client = Client::new(crate::marketo::ClientConfig::new(
            server_uri,
            "id",
            secrecy::SecretString::from("x"),
        ))
        .unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let req = crate::marketo::bulk_extract::ExportRequest::default();
        let opts = crate::marketo::bulk_extract::ExportOptions::default();
        let kind = crate::marketo::bulk_extract::ExportKind::Leads;
        let dest = std::path::PathBuf::from("/nonexistent");
        let f = client.run_export(&kind, &req, None, &dest, &opts, &cancel);
        is_send(&f);
        let input = Vec::new();
        let g = client.sync_leads(
            crate::marketo::SyncAction::CreateOrUpdate,
            None,
            None,
            &input,
        );
        is_send(&g);
    }
}
