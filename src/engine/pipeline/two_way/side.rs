//! The Marketo side hook of the two-way runner, for an object whose Marketo records are not an
//! object family (leads): what the runner sends it, what it answers, and what the runner hands
//! back to the object.

use async_trait::async_trait;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use super::super::write::PlannedWrite;
use super::PairWrite;
use crate::engine::EngineError;
use crate::engine::ledger::Failure;
use crate::engine::summary::{PlannedAction, PlannedChange};
use crate::marketo::Record;
use crate::store::{Direction, Link, SyncError};

/// One Marketo write of a pair, as a [`MarketoSide`] hook sends it.
pub(crate) struct MarketoWrite<'a> {
    /// The Marketo key of the pair (empty for a record the write creates).
    pub marketo_key: &'a str,
    /// The record to send, with the pair's key fields.
    pub record: &'a Record,
    /// True when the write creates the record.
    pub create: bool,
    /// True when the pair is linked (a linked record Marketo no longer has is gone, not refused).
    pub linked: bool,
}

/// What became of one [`MarketoWrite`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MarketoOutcome {
    /// Created, with the key Marketo gave it.
    Created {
        /// The new record's Marketo key.
        key: String,
    },
    /// Updated (or, for a create, found by its key and updated: its Marketo key stays unknown
    /// this cycle and the pair is settled by a later one).
    Updated,
    /// A linked record Marketo no longer has: gone there (the object applies its policy).
    Gone,
    /// Refused: one ledger entry, with the payload the hook names (else the record).
    Refused {
        /// Marketo's code and message, retryable or not.
        failure: Failure,
        /// What the entry shows instead of the record (a company write's record).
        payload: Option<Json>,
    },
}

/// The Marketo side of an object whose records are not an object family (leads): the hook
/// writes them and previews them, and holds the object's open ledger entries of both
/// directions. With a hook, each direction's ledger entry of a pair is keyed by the key of the
/// side it was read from (CRM -> Marketo by the CRM key, Marketo -> CRM by the Marketo key),
/// and a pair that settles resolves both.
#[async_trait]
pub(crate) trait MarketoSide: Sync {
    /// Writes the records and returns one outcome per write, in input order.
    ///
    /// # Errors
    ///
    /// A whole-call Marketo failure, or cancellation.
    async fn write(
        &self,
        writes: &[MarketoWrite<'_>],
        cancel: &CancellationToken,
    ) -> Result<Vec<MarketoOutcome>, EngineError>;

    /// Returns a dry run's note of each write (where its values would go), in input order.
    ///
    /// # Errors
    ///
    /// A whole-call Marketo failure.
    async fn notes(&self, writes: &[MarketoWrite<'_>]) -> Result<Vec<Option<String>>, EngineError>;

    /// Returns the open ledger entry of `key` in `direction`.
    fn open(&self, direction: Direction, key: &str) -> Option<&SyncError>;

    /// The note of a dry run's CRM row create (what follows it on the Marketo side).
    fn crm_create_note(&self) -> Option<String>;
}

/// What a run hands back for its object to settle (with a [`MarketoSide`] hook).
#[derive(Debug, Default)]
pub(crate) struct Settled {
    /// The links the step staged (a created row's link holds its new CRM id).
    pub links: Vec<Link>,
    /// `(Marketo key, new CRM id)` of each CRM row created.
    pub created: Vec<(String, String)>,
    /// The Marketo keys of linked records Marketo no longer has.
    pub gone_marketo: Vec<String>,
    /// The Marketo keys whose new CRM row the CRM refused as deleted there (the row holding
    /// that key was deleted in the CRM).
    pub gone_crm: Vec<String>,
}

/// The keys a pair's ledger entries are named by.
pub(super) struct PairKeys<'a> {
    /// The pair's ledger key.
    pub ledger: &'a str,
    /// Its Marketo key (empty while Marketo has no record).
    pub marketo: &'a str,
    /// Its CRM key, when the CRM has a row.
    pub crm: Option<&'a str>,
}

impl PairKeys<'_> {
    /// Returns the key of the pair's ledger entry in `direction`: the ledger key, or, kept per
    /// side, the key of the side the direction reads from.
    pub(super) fn key_in(&self, per_side: bool, direction: Direction) -> String {
        match direction {
            _ if !per_side => self.ledger,
            Direction::CrmToMarketo => self.crm.unwrap_or(self.ledger),
            Direction::MarketoToCrm if self.marketo.is_empty() => self.ledger,
            Direction::MarketoToCrm => self.marketo,
        }
        .to_owned()
    }
}

/// Returns the hook's view of a pair's Marketo write.
pub(super) fn marketo_write_of<'a>(w: &'a PairWrite, m: &'a PlannedWrite) -> MarketoWrite<'a> {
    MarketoWrite {
        marketo_key: &w.marketo_key,
        record: &m.record,
        create: w.marketo_create,
        linked: w.linked,
    }
}

/// Returns the plan row of a Marketo write through a [`MarketoSide`] hook.
pub(super) fn side_change(
    object: &str,
    w: &PairWrite,
    m: &PlannedWrite,
    note: Option<String>,
) -> PlannedChange {
    let action = if w.marketo_create {
        PlannedAction::Create
    } else {
        PlannedAction::Update
    };
    let key_names: Vec<&str> = m.key_names.iter().map(String::as_str).collect();
    let mut change = PlannedChange::new(object, Direction::CrmToMarketo, action).fields(
        &m.record,
        m.before.as_ref(),
        &key_names,
    );
    if let Some(crm_key) = &w.crm_key {
        change = change.source(crm_key.clone());
    }
    if !w.marketo_create {
        change = change.target(w.marketo_key.clone());
    }
    match note {
        Some(note) => change.note(note),
        None => change,
    }
}
