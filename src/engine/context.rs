//! What every step of a cycle works with: both remotes, the store, the settings and the mappings.

use std::sync::Arc;

use crate::config::{LoadedMapping, Settings};
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
