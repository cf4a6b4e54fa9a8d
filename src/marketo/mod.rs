//! The Marketo REST and Bulk API client.
//!
//! [`Client`] is cheap to clone; every clone shares one token cache and one limiter (a sliding
//! 20 s window, a concurrency cap and the daily counters), so any number of tasks can use it
//! without exceeding Marketo's limits. Each API family lives in its own file and adds methods
//! to [`Client`].
//!
//! Every call goes through the same path ([`transport`]): the daily budget check, a concurrency
//! permit, a slot in the 20 s window, a bearer token from the cache (refreshed 60 s before
//! expiry), the envelope check, one re-authentication and replay on 601/602, and exponential
//! back-off with jitter for transient codes (606 waits at least the 20 s window). GETs whose
//! URL is too long, or that Marketo answers with HTTP 414, are re-sent as `POST ?_method=GET`.
//! Failures come back as [`Error`], whose [`Error::disposition`] says what to do next.
//!
//! ```no_run
//! # async fn demo() -> Result<(), marketo_sync::marketo::Error> {
//! use marketo_sync::marketo::{Client, ClientConfig, SyncAction};
//! use secrecy::SecretString;
//!
//! let url = "https://123-ABC-456.mktorest.com".parse().expect("a valid url");
//! let client = Client::new(ClientConfig::new(url, "client-id", SecretString::from("secret")))?;
//! let schema = client.object_schema("lead").await?;
//! let mut lead = marketo_sync::marketo::Record::new();
//! lead.insert("email".into(), "ann@example.com".into());
//! let results = client.sync_leads(SyncAction::CreateOrUpdate, Some("email"), None, &[lead]).await?;
//! println!("{} fields, {:?}, {:?}", schema.fields.len(), results[0].status, client.usage());
//! # Ok(()) }
//! ```

pub mod activities;
pub mod auth;
pub mod bulk_extract;
pub mod bulk_import;
pub mod companies;
pub mod config;
pub mod csv;
pub mod custom_objects;
pub mod describe;
pub mod endpoint;
pub mod error;
pub mod leads;
pub mod limiter;
pub mod lists;
pub mod model;
pub mod opportunities;
pub mod programs;
pub mod salespersons;
pub mod transport;
pub mod usage;

#[cfg(test)]
mod test_support;

use std::sync::Arc;

pub use config::{ClientConfig, RetryPolicy};
pub use error::{Disposition, Error, RecordRefusal, RefusalKind};
pub use limiter::UsageSnapshot;
pub use model::{DedupeBy, Envelope, Page, Record, RecordResult, RecordStatus, SyncAction};

use auth::TokenCache;
use limiter::Limiter;

/// The Marketo client. Clones share one token cache and one limiter.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    http: reqwest::Client,
    download_http: reqwest::Client,
    auth: TokenCache,
    limiter: Limiter,
    /// Export jobs of this client whose status is being polled: Marketo processes 2 export jobs
    /// at once, so a job queued behind them cannot finish and is not polled until a slot frees
    /// (see [`bulk_extract::EXPORT_PROCESSING_SLOTS`]).
    export_polls: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Returns a client for one Marketo instance.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Config`] when a setting is out of range or the HTTP client cannot be
    /// built.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        config.validate()?;
        let ua = concat!("marketo-sync/", env!("CARGO_PKG_VERSION"));
        let mut http = reqwest::Client::builder()
            .user_agent(ua)
            .pool_idle_timeout(config.pool_idle_timeout)
            .gzip(true);
        let mut download = reqwest::Client::builder()
            .user_agent(ua)
            .pool_idle_timeout(config.pool_idle_timeout)
            .no_gzip();
        if let Some(t) = config.connect_timeout {
            http = http.connect_timeout(t);
            download = download.connect_timeout(t);
        }
        let http = http.build().map_err(|e| Error::Config {
            what: format!("cannot build the http client: {}", e.without_url()),
        })?;
        // Bulk endpoints do not support gzip, and Range offsets refer to the raw file.
        let download_http = download.build().map_err(|e| Error::Config {
            what: format!("cannot build the download client: {}", e.without_url()),
        })?;
        let limiter = Limiter::new(
            config.calls_per_20s,
            config.max_concurrency,
            config.daily_call_budget,
            config.bulk_byte_budget(),
        );
        let auth = TokenCache::new(&config);
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                http,
                download_http,
                auth,
                limiter,
                export_polls: tokio::sync::Semaphore::new(bulk_extract::EXPORT_PROCESSING_SLOTS),
            }),
        })
    }

    /// Returns the client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Returns today's counted calls and bulk bytes (Marketo day, America/Chicago).
    pub fn usage(&self) -> UsageSnapshot {
        self.inner.limiter.snapshot()
    }

    /// Restores persisted counters; a snapshot of an earlier Marketo day is ignored, and
    /// counters never go down.
    pub fn restore_usage(&self, snapshot: UsageSnapshot) {
        self.inner.limiter.restore(snapshot);
    }

    /// Sends a GET to any REST path (below the instance root) with the client's limiter,
    /// token handling and retries, for endpoints without a typed method.
    ///
    /// Returns the envelope with its records as JSON.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn get_envelope(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> Result<Envelope<serde_json::Value>, Error> {
        let mut call = transport::Call::get(path);
        call.query = query.to_vec();
        self.call_json(&call).await
    }

    /// Sends a POST with a JSON body to any REST path, like [`Client::get_envelope`]. The call
    /// is not re-sent after an ambiguous failure (timeout, 5xx), since it may have been applied.
    ///
    /// Returns the envelope with its records as JSON.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn post_envelope(
        &self,
        path: &str,
        query: &[(String, String)],
        body: serde_json::Value,
    ) -> Result<Envelope<serde_json::Value>, Error> {
        let mut call = transport::Call::post(path, body).not_idempotent();
        call.query = query.to_vec();
        self.call_json(&call).await
    }

    /// Adds bulk-extract bytes counted elsewhere (e.g. from the job list) to today's counter.
    pub fn add_bulk_bytes(&self, bytes: u64) {
        self.inner.limiter.add_bulk_bytes(bytes);
    }
}
