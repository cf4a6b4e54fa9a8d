//! The sync engine: one cycle of schema refresh, gather, reconcile, apply and commit, plus
//! bootstrap, identity resolution, conflicts, merges and deletes, and on-demand syncs.
//!
//! The daemon (`app`) drives the engine through the [`Runner`] trait, so that the loop, the lease
//! and shutdown can be tested with a fake runner, and the engine can be tested one cycle at a
//! time through [`Runner::run_one_cycle`].

pub mod bootstrap;
pub mod context;
pub mod cycle;
pub mod estimate;
pub mod leads;
pub mod ledger;
pub mod objects;
pub mod once;
pub mod pipeline;
pub mod reconcile;
pub mod summary;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use context::Context;
pub use cycle::{Engine, Tunables};
pub use summary::{CycleSummary, ObjectCounts};

/// Options of one cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleOptions {
    /// Plan the writes and report them without writing anything to either side or the store.
    pub dry_run: bool,
}

/// What an on-demand (webhook) sync of one lead did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDemandOutcome {
    /// The lead was written to the CRM (created or updated).
    Synced,
    /// The lead already agreed with the CRM.
    Unchanged,
    /// The lead no longer exists in Marketo.
    NotFound,
    /// The lead is not synced by the configuration (no lead mapping enabled).
    NotSynced,
    /// The lead was refused (by the CRM or the pairing); the error ledger holds an entry.
    Refused,
    /// The on-demand share of the Marketo budget is spent: the next poll carries the lead.
    Deferred,
}

/// What an on-demand sync of one CRM record to Marketo did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum CrmRecordOutcome {
    /// The record was written to Marketo (created or updated).
    Synced,
    /// Marketo already agreed with the record.
    Unchanged,
    /// No live CRM record of the object has this id.
    NotFound,
    /// Marketo (or the pairing) refused the record; the error ledger holds an entry.
    Refused {
        /// The ledger entry's code.
        code: String,
        /// The reason.
        message: String,
    },
    /// No synced object has this name (neither its `sync.objects` name nor its CRM object).
    UnknownObject {
        /// The names that would have been accepted.
        known: Vec<String>,
    },
    /// The object syncs, but only on the poll (activities, programs and memberships; see
    /// `http::crm_sync` for which and why).
    PollOnly,
    /// The on-demand share of the Marketo budget is spent: the next poll carries the record.
    Deferred,
}

/// What the daemon needs from the engine.
#[async_trait]
pub trait Runner: Send + Sync {
    /// Runs one whole cycle and returns its summary.
    ///
    /// # Errors
    ///
    /// Returns an error when the cycle could not run at all (the store is unreachable, Marketo
    /// refuses the credentials, the cycle was cancelled). Per-record failures are not errors: they
    /// are counted in the summary and kept in the store's error ledger.
    async fn run_one_cycle(
        &self,
        options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<CycleSummary, EngineError>;

    /// Syncs one Marketo lead to the CRM now, outside the polling cycle (webhooks).
    ///
    /// # Errors
    ///
    /// As [`Runner::run_one_cycle`].
    async fn sync_lead_now(
        &self,
        lead_id: i64,
        cancel: &CancellationToken,
    ) -> Result<OnDemandOutcome, EngineError>;

    /// Syncs a batch of Marketo leads to the CRM now (queued webhooks); returns each id with
    /// its outcome. The default syncs them one by one.
    ///
    /// # Errors
    ///
    /// As [`Runner::run_one_cycle`].
    async fn sync_leads_now(
        &self,
        lead_ids: &[i64],
        cancel: &CancellationToken,
    ) -> Result<Vec<(i64, OnDemandOutcome)>, EngineError> {
        let mut out = Vec::with_capacity(lead_ids.len());
        for id in lead_ids {
            out.push((*id, self.sync_lead_now(*id, cancel).await?));
        }
        Ok(out)
    }

    /// Syncs one CRM record of `object` (a `sync.objects` name or its CRM object) to Marketo
    /// now. The default knows no object.
    ///
    /// # Errors
    ///
    /// As [`Runner::run_one_cycle`].
    async fn sync_crm_record_now(
        &self,
        object: &str,
        crm_id: &str,
        cancel: &CancellationToken,
    ) -> Result<CrmRecordOutcome, EngineError> {
        let _ = (object, crm_id, cancel);
        Ok(CrmRecordOutcome::UnknownObject { known: Vec::new() })
    }
}

/// Why a cycle (or an on-demand sync) could not run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A Marketo call failed for the whole step.
    #[error("marketo: {0}")]
    Marketo(#[from] crate::marketo::Error),
    /// A CRM call failed for the whole step.
    #[error("crm: {0}")]
    Crm(#[from] crate::crm::CrmError),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A setting is missing or invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The mappings do not compile against the live schemas.
    #[error("mapping: {0}")]
    Mapping(String),
    /// Work is paused (daily quota reached, or an operator paused the service) until `until`.
    #[error("paused until {until:?}: {reason}")]
    Paused {
        /// Why.
        reason: String,
        /// When it ends by itself, if it does.
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The cycle was cancelled (shutdown).
    #[error("cancelled")]
    Cancelled,
}

impl EngineError {
    /// Returns true when running the cycle again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Marketo(e) => e.is_retryable(),
            EngineError::Crm(e) => e.is_retryable(),
            EngineError::Store(e) => e.is_retryable(),
            EngineError::Mapping(_) | EngineError::Config(_) => false,
            EngineError::Paused { .. } => true,
            EngineError::Cancelled => true,
        }
    }
}
