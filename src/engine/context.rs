//! What every step of a cycle works with: both remotes, the store, the settings and the mappings.

use std::sync::Arc;

use async_trait::async_trait;
use secrecy::ExposeSecret;

use super::EngineError;
use crate::config::{LoadedMapping, MarketoSettings, Settings};
use crate::crm::Crm;
use crate::marketo::Client;
use crate::marketo::endpoint::{
    EndpointError, EndpointSettings, JobEntry, JobJournal, JobStage, JournalError, RestBulkEndpoint,
};
use crate::store::{BulkJob, Clock, JobDirection, JobState, StateStore, StoreError};

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

impl Context {
    /// Returns the Marketo endpoint over this context's client, importing in the configured
    /// `marketo.import_format`.
    pub fn endpoint(&self, settings: EndpointSettings) -> RestBulkEndpoint {
        let settings = EndpointSettings {
            import_format: self.settings.marketo.import_format,
            ..settings
        };
        RestBulkEndpoint::new(self.marketo.clone(), settings)
    }

    /// Returns the journal of bulk jobs kept in the store.
    pub fn journal(&self) -> StoreJournal {
        StoreJournal {
            store: self.store.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// The endpoint's bulk job journal over the store's `export_jobs` / `import_jobs`.
#[derive(Clone)]
pub struct StoreJournal {
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
}

impl StoreJournal {
    /// Returns the store's row of a journalled job, timestamped now.
    pub fn bulk_job(&self, job: &JobEntry) -> BulkJob {
        let now = self.clock.now();
        BulkJob {
            direction: if job.import {
                JobDirection::Import
            } else {
                JobDirection::Export
            },
            id: job.id.clone(),
            kind: job.kind.clone(),
            object: job.object.clone(),
            window_start: job.window.map(|(s, _)| s),
            window_end: job.window.map(|(_, e)| e),
            state: match (job.stage, job.import) {
                (JobStage::Created, false) => JobState::Created,
                (JobStage::Created, true) => JobState::Queued,
                (JobStage::Completed, _) => JobState::Completed,
                (JobStage::Consumed, _) => JobState::Consumed,
                (JobStage::Failed, _) => JobState::Failed,
            },
            bytes: job.bytes,
            file_path: job.file.as_ref().map(|p| p.display().to_string()),
            file_offset: 0,
            created_at: now,
            updated_at: now,
        }
    }
}

/// Returns the journal's view of a stored job.
pub fn job_entry(job: &BulkJob) -> JobEntry {
    JobEntry {
        import: job.direction == JobDirection::Import,
        id: job.id.clone(),
        kind: job.kind.clone(),
        object: job.object.clone(),
        window: job.window_start.zip(job.window_end),
        stage: match job.state {
            JobState::Created | JobState::Queued | JobState::Processing => JobStage::Created,
            JobState::Completed => JobStage::Completed,
            JobState::Consumed => JobStage::Consumed,
            JobState::Failed | JobState::Cancelled => JobStage::Failed,
        },
        bytes: job.bytes,
        file: job.file_path.as_ref().map(std::path::PathBuf::from),
    }
}

#[async_trait]
impl JobJournal for StoreJournal {
    async fn unfinished(
        &self,
        import: bool,
        kind: &str,
        object: &str,
    ) -> Result<Vec<JobEntry>, JournalError> {
        let direction = if import {
            JobDirection::Import
        } else {
            JobDirection::Export
        };
        let jobs = self
            .store
            .unfinished_jobs(direction)
            .await
            .map_err(|e| JournalError(Box::new(e)))?;
        Ok(jobs
            .iter()
            .filter(|j| j.kind == kind && j.object == object)
            .map(job_entry)
            .collect())
    }

    async fn record(&self, job: &JobEntry) -> Result<(), JournalError> {
        self.store
            .upsert_job(&self.bulk_job(job))
            .await
            .map_err(|e| JournalError(Box::new(e)))
    }
}

impl From<EndpointError> for EngineError {
    fn from(e: EndpointError) -> Self {
        match e {
            EndpointError::Marketo(e) => EngineError::Marketo(e),
            EndpointError::Journal(JournalError(e)) => match e.downcast::<StoreError>() {
                Ok(store) => EngineError::Store(*store),
                Err(other) => EngineError::Config(format!("bulk job journal: {other}")),
            },
            EndpointError::File { what } => {
                EngineError::Marketo(crate::marketo::Error::Config { what })
            }
            EndpointError::Cancelled => EngineError::Cancelled,
        }
    }
}
