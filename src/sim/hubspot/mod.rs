//! The HubSpot simulator: a stateful HTTP server that behaves like a HubSpot portal's CRM API.
//!
//! It serves the CRM v3 objects API (contacts, companies, deals and custom objects: list, read,
//! batch read/create/update/upsert/archive, search with its 10,000-result cap, merge), the
//! properties, schemas and owners APIs, and associations v4 with labels; it checks the private-app
//! bearer token, enforces the 10-second, search and daily limits with HubSpot's `429` bodies and
//! `X-HubSpot-RateLimit-*` headers, and injects seeded faults. Every route is listed in
//! [`server::ROUTES`]; each handler's doc names the spec operation it follows (the specs are
//! `HubSpot/HubSpot-public-api-spec-collection` on GitHub, and the models of the Apache-licensed
//! `hubspot-api-client` 12 on PyPI).
//!
//! - [`HubSpotSim::start`] binds `127.0.0.1:0` and returns a [`HubSpotHandle`] for tests.
//! - [`serve_on`] serves on a listener until cancelled (the `simulate-hubspot` command).
//! - The admin API under `/__sim/` ([`admin`]) and the [`HubSpotHandle`] methods act as a
//!   HubSpot user; the clock is [`crate::sim::clock::SimClock`], which tests move.
//!
//! Nothing here imports the engine or the CRM adapters.

pub mod admin;
pub mod assoc;
pub mod generator;
pub mod limits;
pub mod meta;
pub mod model;
pub mod objects;
pub mod search;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::sim::faults::{FaultProfile, FaultSpecError};
pub use limits::{RateLimits, Tier};
pub use model::ApiError;
pub use server::LogEntry;

/// The HubSpot simulator's configuration.
#[derive(Debug, Clone)]
pub struct HubSpotConfig {
    /// Seed of the data generator and of fault injection.
    pub seed: u64,
    /// Generated contacts (companies are a quarter, deals a fifth, cars a tenth of them).
    pub contacts: usize,
    /// Generated owners.
    pub owners: usize,
    /// The private-app access token the portal accepts.
    pub token: SecretString,
    /// The portal (hub) id.
    pub portal_id: u64,
    /// Rate limits.
    pub limits: RateLimits,
    /// Injected faults.
    pub faults: FaultProfile,
    /// Sim start instant (default: now, whole seconds).
    pub start: Option<DateTime<Utc>>,
    /// Sim time moves only when advanced (tests that compare timestamps); otherwise it follows
    /// tokio time.
    pub manual_clock: bool,
}

impl Default for HubSpotConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            contacts: 100,
            owners: 5,
            token: SecretString::from("pat-na1-sim-token"),
            portal_id: 4_200_001,
            limits: RateLimits::default(),
            faults: FaultProfile::none(),
            start: None,
            manual_clock: false,
        }
    }
}

/// A HubSpot simulator error.
#[derive(Debug, thiserror::Error)]
pub enum HubSpotSimError {
    /// The listener could not be bound.
    #[error("cannot bind the HubSpot simulator listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("the HubSpot simulator server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// A fault profile that cannot be parsed.
    #[error("bad fault profile: {0}")]
    Faults(#[from] FaultSpecError),
    /// The simulated portal refused an admin operation (unknown type, missing record, bad value).
    #[error("the simulated portal refused: {} ({})", .0.message, .0.category)]
    Refused(Box<ApiError>),
}

impl HubSpotSimError {
    /// Returns whether retrying may help (only bind errors, e.g. a port in use).
    pub fn is_retryable(&self) -> bool {
        matches!(self, HubSpotSimError::Bind { .. })
    }
}

impl From<ApiError> for HubSpotSimError {
    fn from(error: ApiError) -> Self {
        HubSpotSimError::Refused(Box::new(error))
    }
}

/// Starts HubSpot simulators.
pub struct HubSpotSim;

impl HubSpotSim {
    /// Starts a simulator on `127.0.0.1:0` and returns its handle.
    ///
    /// # Errors
    ///
    /// Returns [`HubSpotSimError::Bind`] when the listener cannot be bound.
    pub async fn start(config: HubSpotConfig) -> Result<HubSpotHandle, HubSpotSimError> {
        let addr = "127.0.0.1:0";
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HubSpotSimError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| HubSpotSimError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let shared = Arc::new(server::Shared::new(server::HsState::new(config)));
        let cancel = CancellationToken::new();
        let app = server::router(shared.clone());
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
                .map_err(HubSpotSimError::Serve)
        });
        Ok(HubSpotHandle {
            addr: local,
            shared,
            cancel,
            task: Some(task),
        })
    }
}

/// Serves a HubSpot simulator on `listener` until `cancel` fires.
///
/// # Errors
///
/// Returns [`HubSpotSimError::Serve`] when the server fails.
pub async fn serve_on(
    listener: TcpListener,
    config: HubSpotConfig,
    cancel: CancellationToken,
) -> Result<(), HubSpotSimError> {
    let shared = Arc::new(server::Shared::new(server::HsState::new(config)));
    axum::serve(listener, server::router(shared))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(HubSpotSimError::Serve)
}

/// A running HubSpot simulator.
pub struct HubSpotHandle {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), HubSpotSimError>>>,
}

impl HubSpotHandle {
    /// Returns the base URL (`http://127.0.0.1:PORT`), the simulator's `https://api.hubapi.com`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the accepted access token.
    pub fn token(&self) -> SecretString {
        self.shared.lock().config.token.clone()
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Returns current sim time.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.lock().clock.now()
    }

    /// Moves sim time forward (limits' windows and timestamps follow it).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.lock().clock.advance(by);
    }

    fn with_type<T>(
        &self,
        object_type: &str,
        run: impl FnOnce(&mut server::HsState, usize, DateTime<Utc>) -> Result<T, ApiError>,
    ) -> Result<T, HubSpotSimError> {
        let mut st = self.shared.lock();
        let now = st.clock.now();
        let ty = st.portal.type_or_err(object_type)?;
        Ok(run(&mut st, ty, now)?)
    }

    /// Creates a record as a HubSpot user and returns its id.
    ///
    /// # Errors
    ///
    /// Returns [`HubSpotSimError::Refused`] for an unknown type, invalid values or a unique
    /// value in use.
    pub fn create(
        &self,
        object_type: &str,
        properties: Map<String, Value>,
    ) -> Result<u64, HubSpotSimError> {
        self.with_type(object_type, |st, ty, now| {
            st.portal.create(ty, &properties, now)
        })
    }

    /// Edits a record as a HubSpot user; returns whether a value changed (last-modified moves
    /// only then).
    ///
    /// # Errors
    ///
    /// Returns [`HubSpotSimError::Refused`] for a missing record or invalid values.
    pub fn update(
        &self,
        object_type: &str,
        id: u64,
        properties: Map<String, Value>,
    ) -> Result<bool, HubSpotSimError> {
        self.with_type(object_type, |st, ty, now| {
            st.portal.update(ty, id, &properties, now).map(|(_, c)| c)
        })
    }

    /// Archives (deletes) a record as a HubSpot user; returns false when it was not live.
    ///
    /// # Errors
    ///
    /// Returns [`HubSpotSimError::Refused`] for an unknown type.
    pub fn archive(&self, object_type: &str, id: u64) -> Result<bool, HubSpotSimError> {
        self.with_type(object_type, |st, ty, now| {
            Ok(st.portal.archive(ty, id, now))
        })
    }

    /// Merges `loser` into `primary` as a HubSpot user; returns the survivor id.
    ///
    /// # Errors
    ///
    /// Returns [`HubSpotSimError::Refused`] for a missing record or a self-merge.
    pub fn merge(
        &self,
        object_type: &str,
        primary: u64,
        loser: u64,
    ) -> Result<u64, HubSpotSimError> {
        self.with_type(object_type, |st, ty, now| {
            st.portal.merge(ty, primary, loser, now)
        })
    }

    /// Defines a property from a `PropertyCreate` JSON body (as an admin would in Settings).
    ///
    /// # Errors
    ///
    /// Returns [`HubSpotSimError::Refused`] for a bad definition or a name in use.
    pub fn add_property(&self, object_type: &str, body: &Value) -> Result<(), HubSpotSimError> {
        self.with_type(object_type, |st, ty, now| {
            let def = meta::parse_property_create(body)?;
            meta::add_property(&mut st.portal, ty, def, now).map(|_| ())
        })
    }

    /// Deletes (archives) a property as an admin would: schema drift for clients.
    ///
    /// # Errors
    ///
    /// Returns [`HubSpotSimError::Refused`] for a missing or HubSpot-defined property.
    pub fn delete_property(&self, object_type: &str, name: &str) -> Result<(), HubSpotSimError> {
        self.with_type(object_type, |st, ty, _| {
            meta::drop_property(&mut st.portal, ty, name)
        })
    }

    /// Associates two records with an association type id (and the default type).
    ///
    /// # Errors
    ///
    /// Returns [`HubSpotSimError::Refused`] for an unknown type id or a missing record.
    pub fn associate(
        &self,
        from_type: &str,
        from_id: u64,
        to_type: &str,
        to_id: u64,
        type_id: u32,
    ) -> Result<(), HubSpotSimError> {
        let mut st = self.shared.lock();
        let from = st.portal.type_or_err(from_type)?;
        let to = st.portal.type_or_err(to_type)?;
        Ok(st.portal.associate(from, from_id, to, to_id, type_id)?)
    }

    /// Associates two records with the default (unlabelled) association type of their object
    /// types, as a HubSpot user linking a record to a contact would.
    ///
    /// # Errors
    ///
    /// Returns [`HubSpotSimError::Refused`] for an unknown object type or a missing record.
    pub fn associate_default(
        &self,
        from_type: &str,
        from_id: u64,
        to_type: &str,
        to_id: u64,
    ) -> Result<(), HubSpotSimError> {
        let mut st = self.shared.lock();
        let from = st.portal.type_or_err(from_type)?;
        let to = st.portal.type_or_err(to_type)?;
        let from_id_text = st.portal.types[from].type_id.clone();
        let to_id_text = st.portal.types[to].type_id.clone();
        let type_id = st.portal.default_assoc_type(&from_id_text, &to_id_text);
        Ok(st.portal.associate(from, from_id, to, to_id, type_id)?)
    }

    /// Defines a labelled association type from one object type to another, as an admin would
    /// in Settings, and returns its type id (the existing one when the label is defined).
    ///
    /// # Errors
    ///
    /// Returns [`HubSpotSimError::Refused`] for an unknown object type.
    pub fn define_label(
        &self,
        from_type: &str,
        to_type: &str,
        label: &str,
    ) -> Result<u32, HubSpotSimError> {
        let mut st = self.shared.lock();
        let from = st.portal.type_or_err(from_type)?;
        let to = st.portal.type_or_err(to_type)?;
        let from = st.portal.types[from].type_id.clone();
        let to = st.portal.types[to].type_id.clone();
        let existing = st
            .portal
            .assoc_types
            .iter()
            .find(|t| t.from == from && t.to == to && t.label.as_deref() == Some(label));
        if let Some(t) = existing {
            return Ok(t.type_id);
        }
        Ok(st
            .portal
            .add_assoc_type(&from, &to, model::AssocCategory::UserDefined, Some(label)))
    }

    /// Returns a live record (merged-away ids answer with the survivor) with every set property.
    pub fn record(&self, object_type: &str, id: u64) -> Option<Value> {
        let st = self.shared.lock();
        let ty = st.portal.type_index(object_type)?;
        let object = &st.portal.types[ty];
        let rec = object.live(id)?;
        let names: Vec<String> = rec.props.keys().cloned().collect();
        Some(object.record_json(rec, &names, &[]))
    }

    /// Returns the ids of the live records of a type, ascending.
    pub fn ids(&self, object_type: &str) -> Vec<u64> {
        let st = self.shared.lock();
        let Some(ty) = st.portal.type_index(object_type) else {
            return Vec::new();
        };
        st.portal.types[ty]
            .records
            .values()
            .filter(|r| r.archived_at.is_none())
            .map(|r| r.id)
            .collect()
    }

    /// Returns the object type id of a custom object name (`cars` -> `2-…`).
    pub fn type_id(&self, object_type: &str) -> Option<String> {
        let st = self.shared.lock();
        let ty = st.portal.type_index(object_type)?;
        Some(st.portal.types[ty].type_id.clone())
    }

    /// Returns the request log (oldest first; admin calls are not logged).
    pub fn request_log(&self) -> Vec<LogEntry> {
        self.shared.lock().log.iter().cloned().collect()
    }

    /// Returns the number of calls that counted towards the limits.
    pub fn counted_calls(&self) -> usize {
        self.shared.lock().log.iter().filter(|e| e.counted).count()
    }

    /// Replaces the fault profile.
    pub fn set_faults(&self, faults: FaultProfile) {
        self.shared.lock().faults = faults;
    }

    /// Replaces the rate limits (counts so far are kept).
    pub fn set_limits(&self, limits: RateLimits) {
        self.shared.lock().config.limits = limits;
    }

    /// Spends the rest of today's daily limit: calls answer 429 `DAILY` until the day turns.
    pub fn spend_daily_limit(&self) {
        let mut st = self.shared.lock();
        let now = st.clock.now();
        let limits = st.config.limits.clone();
        st.usage.spend_today(&limits, now);
    }
}

impl Drop for HubSpotHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Options of the `simulate-hubspot` command.
#[derive(Debug, Clone)]
pub struct SimulateHubSpotOptions {
    /// Listen address.
    pub listen: String,
    /// The access token to accept (generated when absent).
    pub token: Option<SecretString>,
    /// Seed.
    pub seed: u64,
    /// Generated contacts.
    pub contacts: usize,
    /// Account tier of the limits.
    pub tier: Tier,
    /// Fault profile name or spec.
    pub faults: String,
}

/// Runs the `simulate-hubspot` command: prints the base URL and the accepted token, then serves
/// until `cancel` fires.
///
/// # Errors
///
/// Returns [`HubSpotSimError`] for a bad fault profile, a listener that cannot be bound, or a
/// server failure.
pub async fn run_simulate_hubspot(
    options: SimulateHubSpotOptions,
    cancel: CancellationToken,
) -> Result<(), HubSpotSimError> {
    let faults: FaultProfile = options.faults.parse()?;
    let token = options
        .token
        .unwrap_or_else(|| SecretString::from(format!("pat-na1-{}", uuid::Uuid::new_v4())));
    let listener =
        TcpListener::bind(&options.listen)
            .await
            .map_err(|source| HubSpotSimError::Bind {
                addr: options.listen.clone(),
                source,
            })?;
    let local = listener
        .local_addr()
        .map_err(|source| HubSpotSimError::Bind {
            addr: options.listen.clone(),
            source,
        })?;
    // The operator needs the token to configure a client; it is a test token of this local
    // simulator, printed to stdout only, never logged.
    println!("hubspot simulator listening");
    println!("  base url:     http://{local}");
    println!("  access token: {}", token.expose_secret());
    println!(
        "  contacts: {}  seed: {}  faults: {}",
        options.contacts, options.seed, options.faults
    );
    let config = HubSpotConfig {
        seed: options.seed,
        contacts: options.contacts,
        token,
        limits: RateLimits::for_tier(options.tier),
        faults,
        ..HubSpotConfig::default()
    };
    tracing::info!(addr = %local, contacts = options.contacts, "hubspot simulator started");
    serve_on(listener, config, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn simulate_rejects_bad_fault_profiles_before_binding() {
        let options = SimulateHubSpotOptions {
            listen: "127.0.0.1:0".into(),
            token: None,
            seed: 1,
            contacts: 1,
            tier: Tier::Starter,
            faults: "route=objects,kind=nope".into(),
        };
        let error = run_simulate_hubspot(options, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(error, HubSpotSimError::Faults(_)), "{error}");
        assert!(!error.is_retryable());
    }

    #[tokio::test]
    async fn generation_is_seeded() {
        let config = HubSpotConfig {
            contacts: 40,
            start: model::parse_ts("2024-05-01T00:00:00Z"),
            ..HubSpotConfig::default()
        };
        let a = generator::generate(&config, config.start.unwrap());
        let b = generator::generate(&config, config.start.unwrap());
        let emails = |p: &model::Portal| -> Vec<String> {
            p.types[0]
                .records
                .values()
                .filter_map(|r| r.props.get("email").cloned())
                .collect()
        };
        assert_eq!(emails(&a).len(), 40);
        assert_eq!(emails(&a), emails(&b));
        assert_eq!(a.assoc.len(), b.assoc.len());
        assert!(!a.assoc.is_empty());
    }
}
