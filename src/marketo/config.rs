//! Settings of the Marketo client: instance URLs, credentials, limits and timeouts.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::error::Error;

/// Marketo's own ceiling: calls per sliding 20-second window per instance.
pub const MAX_CALLS_PER_20S: u32 = 100;
/// Marketo's own ceiling: calls in flight per instance.
pub const MAX_CONCURRENCY: usize = 10;

/// How the client retries transient failures (500/502/604/608/611/614/713/719, 606, 615).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt before the error is returned.
    pub max_retries: usize,
    /// First exponential back-off delay (jitter is added).
    pub min_delay: Duration,
    /// Longest exponential back-off delay.
    pub max_delay: Duration,
    /// How long every task of the client holds off after a 606 (rate limit); Marketo's
    /// window is 20 s.
    pub rate_limit_wait: Duration,
    /// Attempts at a bulk file download (each resumes where the last one stopped).
    pub download_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            rate_limit_wait: Duration::from_secs(20),
            download_attempts: 5,
        }
    }
}

/// Settings of one Marketo client (one instance, one LaunchPoint custom service).
#[derive(Clone)]
pub struct ClientConfig {
    /// The instance root, e.g. `https://123-ABC-456.mktorest.com` (or a local simulator).
    pub base_url: Url,
    /// The Identity URL; defaults to `base_url` + `/identity`.
    pub identity_url: Option<Url>,
    /// The custom service's Client ID.
    pub client_id: String,
    /// The custom service's Client Secret.
    pub client_secret: SecretString,
    /// Calls allowed per sliding 20 s window (default 80, at most 100).
    pub calls_per_20s: u32,
    /// Calls in flight at once (default 5, at most 10).
    pub max_concurrency: usize,
    /// REST calls this client may make per Marketo day (midnight America/Chicago).
    pub daily_call_budget: u64,
    /// Bulk-extract megabytes (MiB) this client may export per Marketo day.
    pub bulk_mb_budget: u64,
    /// Timeout of one REST call; `None` disables it (tests on a paused clock).
    pub request_timeout: Option<Duration>,
    /// Timeout of one bulk file download attempt; `None` disables it.
    pub download_timeout: Option<Duration>,
    /// Timeout of opening a connection (TCP and TLS); `None` disables it.
    pub connect_timeout: Option<Duration>,
    /// Retry and back-off settings.
    pub retry: RetryPolicy,
    /// How long before expiry a cached access token is refreshed (default 60 s).
    pub token_refresh_margin: Duration,
    /// Idle keep-alive connections are closed after this long (default 90 s; `None` keeps
    /// them, which tests on a paused clock need).
    pub pool_idle_timeout: Option<Duration>,
}

impl ClientConfig {
    /// Returns a configuration with the documented defaults for everything but the instance
    /// and the credentials.
    pub fn new(base_url: Url, client_id: impl Into<String>, client_secret: SecretString) -> Self {
        ClientConfig {
            base_url,
            identity_url: None,
            client_id: client_id.into(),
            client_secret,
            calls_per_20s: 80,
            max_concurrency: 5,
            daily_call_budget: 40_000,
            bulk_mb_budget: 400,
            request_timeout: Some(Duration::from_secs(300)),
            download_timeout: Some(Duration::from_secs(3600)),
            connect_timeout: Some(Duration::from_secs(10)),
            retry: RetryPolicy::default(),
            token_refresh_margin: Duration::from_secs(60),
            pool_idle_timeout: Some(Duration::from_secs(90)),
        }
    }

    /// Returns the Identity base URL (`identity_url` or `base_url` + `/identity`).
    pub fn identity_base(&self) -> Url {
        match &self.identity_url {
            Some(u) => u.clone(),
            None => join_path(&self.base_url, "identity"),
        }
    }

    /// Returns the bulk budget in bytes.
    pub fn bulk_byte_budget(&self) -> u64 {
        self.bulk_mb_budget.saturating_mul(1024 * 1024)
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Config`] naming the first setting that is out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str| {
            Err(Error::Config {
                what: what.to_owned(),
            })
        };
        if !matches!(self.base_url.scheme(), "http" | "https") {
            return bad("base_url must be an http or https URL");
        }
        if self.base_url.cannot_be_a_base() {
            return bad("base_url cannot be used as a base URL");
        }
        if self.client_id.trim().is_empty() {
            return bad("client_id is empty");
        }
        if self.calls_per_20s == 0 || self.calls_per_20s > MAX_CALLS_PER_20S {
            return bad("calls_per_20s must be between 1 and 100");
        }
        if self.max_concurrency == 0 || self.max_concurrency > MAX_CONCURRENCY {
            return bad("max_concurrency must be between 1 and 10");
        }
        if self.daily_call_budget == 0 {
            return bad("daily_call_budget must be at least 1");
        }
        Ok(())
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url.as_str())
            .field("identity_url", &self.identity_url.as_ref().map(Url::as_str))
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("calls_per_20s", &self.calls_per_20s)
            .field("max_concurrency", &self.max_concurrency)
            .field("daily_call_budget", &self.daily_call_budget)
            .field("bulk_mb_budget", &self.bulk_mb_budget)
            .field("request_timeout", &self.request_timeout)
            .field("download_timeout", &self.download_timeout)
            .field("retry", &self.retry)
            .field("token_refresh_margin", &self.token_refresh_margin)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .finish()
    }
}

/// Returns `base` with `path` appended below its own path, without double slashes.
pub(crate) fn join_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url.set_query(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_defaults_below_the_base_url() {
        let cfg = ClientConfig::new(
            Url::parse("https://123-ABC-456.mktorest.com/").unwrap(),
            "id",
            SecretString::from("s3cr3t-value"),
        );
        assert_eq!(
            cfg.identity_base().as_str(),
            "https://123-abc-456.mktorest.com/identity"
        );
        assert!(cfg.validate().is_ok());
        assert!(!format!("{cfg:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn limits_above_marketo_ceilings_are_rejected() {
        let mut cfg = ClientConfig::new(
            Url::parse("http://127.0.0.1:1").unwrap(),
            "id",
            SecretString::from("x"),
        );
        cfg.calls_per_20s = 101;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("calls_per_20s")
        );
        cfg.calls_per_20s = 100;
        cfg.max_concurrency = 11;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("max_concurrency")
        );
    }
}
