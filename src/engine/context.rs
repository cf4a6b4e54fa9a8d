//! What every step of a cycle works with: both remotes, the store, the settings and the mappings.

use std::sync::Arc;

use secrecy::ExposeSecret;

use super::EngineError;
use crate::config::{LoadedMapping, MarketoSettings, Settings};
use crate::crm::Crm;
use crate::marketo::Client;
use crate::store::{Clock, StateStore};

/// The parts a cycle works with. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// The loaded settings.
    pub settings: Arc<Settings>,
    /// The mapping files named by `sync.objects` (compiled against live schemas each cycle).
    pub mappings: Arc<Vec<LoadedMapping>>,
    /// The Marketo client (one limiter and token cache for every task).
    pub marketo: Client,
    /// The CRM adapter.
    pub crm: Arc<dyn Crm>,
    /// The state store.
    pub store: Arc<dyn StateStore>,
    /// The clock used for agreement times, retries and quota days.
    pub clock: Arc<dyn Clock>,
}

impl Context {
    /// Returns a context from its parts (tests, the daemon when it builds the parts itself).
    pub fn new(
        settings: Settings,
        mappings: Vec<LoadedMapping>,
        marketo: Client,
        crm: Arc<dyn Crm>,
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
    ) -> Context {
        Context {
            settings: Arc::new(settings),
            mappings: Arc::new(mappings),
            marketo,
            crm,
            store,
            clock,
        }
    }

    /// Returns a context built from loaded settings: the Marketo client (base URL or munchkin
    /// id, client id and secret, limits), the CRM adapter through the registry and the store
    /// (migrated), with the system clock.
    ///
    /// # Errors
    ///
    /// Returns [`EngineError::Config`] when a required setting is missing or invalid, and the
    /// CRM's or the store's error when either cannot be reached.
    pub async fn from_settings(loaded: &crate::config::Loaded) -> Result<Context, EngineError> {
        let settings = &loaded.settings;
        let marketo = marketo_client(&settings.marketo)?;
        let crm = crate::crm::registry::build(
            &settings.crm.adapter,
            settings.crm.url.as_ref(),
            &settings.crm.options,
        )
        .await?;
        let store = crate::store::open(settings.store.url.expose_secret()).await?;
        Ok(Context::new(
            settings.clone(),
            loaded.mappings.clone(),
            marketo,
            crm,
            store,
            Arc::new(crate::store::SystemClock),
        ))
    }
}

/// Returns the Marketo client configured by the `[marketo]` settings.
///
/// # Errors
///
/// Returns [`EngineError::Config`] when the instance, the client id or the secret is missing or
/// the base URL does not parse, and [`EngineError::Marketo`] for an out-of-range limit.
pub fn marketo_client(m: &MarketoSettings) -> Result<Client, EngineError> {
    let config = m.client_config().map_err(EngineError::Config)?;
    Ok(Client::new(config)?)
}
