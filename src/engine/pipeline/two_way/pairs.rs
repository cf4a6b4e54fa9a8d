//! What the two-way runner works on: each side's record as read, the pairs an object gathers,
//! and the writes a reconciled pair makes.

use chrono::{DateTime, Utc};

use super::super::key_text;
use super::super::write::PlannedWrite;
use super::PairKeys;
use crate::engine::reconcile::SideState;
use crate::mapping::{MappingError, Plan};
use crate::model::{Fields, Side};
use crate::store::Direction;

/// One side's record as read this cycle.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    /// Its canonical values.
    pub canonical: Fields,
    /// Its raw values (a dry run's "before").
    pub raw: Fields,
    /// When that side last modified it, if known.
    pub modified_at: Option<DateTime<Utc>>,
}

impl Observed {
    /// Returns the record `raw` of `side` read through the plan.
    ///
    /// # Errors
    ///
    /// A value the mapping cannot read.
    pub(crate) fn read(
        plan: &Plan,
        side: Side,
        raw: Fields,
        modified_at: Option<DateTime<Utc>>,
    ) -> Result<Observed, MappingError> {
        let canonical = plan.to_canonical(side, &raw)?;
        Ok(Observed {
            canonical,
            raw,
            modified_at,
        })
    }

    pub(super) fn state(&self) -> SideState<'_> {
        SideState {
            fields: &self.canonical,
            modified_at: self.modified_at,
        }
    }
}

/// What one side holds of a pair this cycle.
#[derive(Debug, Clone)]
pub(crate) enum Seen {
    /// Read this cycle.
    Read(Observed),
    /// Not read: it did not change (it holds the agreed values).
    Unchanged,
    /// The side has no such record (new on the other side, or gone).
    Missing,
}

impl Seen {
    /// Returns a side as an object's gather found it: read this cycle, else unchanged when the
    /// pair is linked, else missing.
    pub(crate) fn of(read: Option<Observed>, linked: bool) -> Seen {
        match (read, linked) {
            (Some(o), _) => Seen::Read(o),
            (None, true) => Seen::Unchanged,
            (None, false) => Seen::Missing,
        }
    }

    pub(super) fn state(&self) -> Option<SideState<'_>> {
        match self {
            Seen::Read(o) => Some(o.state()),
            Seen::Unchanged | Seen::Missing => None,
        }
    }

    pub(super) fn raw(&self) -> Option<&Fields> {
        match self {
            Seen::Read(o) => Some(&o.raw),
            Seen::Unchanged | Seen::Missing => None,
        }
    }

    /// Returns a raw field of the record read, as key text.
    pub(crate) fn raw_field(&self, name: &str) -> Option<String> {
        key_text(self.raw()?.get(name))
    }
}

/// One record pair gathered by an object for [`super::TwoWay::run`].
#[derive(Debug, Clone)]
pub(crate) struct SidePair {
    /// The Marketo key of the pair's link.
    pub marketo_key: String,
    /// The CRM key of the pair's link; `None` for a Marketo record with no CRM row yet.
    pub crm_key: Option<String>,
    /// The key its ledger entries have (see [`crate::engine::pipeline::spec::TwoWaySpec::ledger`]).
    pub ledger_key: String,
    /// The direction the pair was read in (its skip is counted there).
    pub read_from: Direction,
    /// The agreed values of its link; `None` when not linked.
    pub base: Option<Fields>,
    /// The Marketo side.
    pub marketo: Seen,
    /// The CRM side.
    pub crm: Seen,
    /// The Marketo fields that identify the record, sent with every Marketo write.
    pub key_fields: Fields,
    /// Marketo fields the record lacks (a lead's CRM key): sent with its Marketo write, and a
    /// write is made for them alone when nothing else changed.
    pub marketo_extra: Fields,
    /// CRM columns sent with every CRM write of the pair (the object's hook: a custom record's
    /// contact, a new row's Marketo id).
    pub crm_extra: Fields,
}

/// One write to the CRM.
#[derive(Debug, Clone)]
pub(crate) struct CrmWrite {
    /// The row, with its key column.
    pub row: Fields,
    /// The column the upsert is keyed by.
    pub key_column: String,
    /// The row's values now (a dry run's "before", empty outside a dry run); `None` for a row
    /// the write creates.
    pub before: Option<Fields>,
}

/// What one reconciled pair writes.
#[derive(Debug, Clone)]
pub(crate) struct PairWrite {
    /// The Marketo key of the link.
    pub marketo_key: String,
    /// The CRM key of the link; `None` for a row the write creates.
    pub crm_key: Option<String>,
    /// The key of the pair's ledger entries.
    pub ledger_key: String,
    /// The Marketo write, if any.
    pub to_marketo: Option<PlannedWrite>,
    /// True when the Marketo write creates the record (Marketo has none yet).
    pub marketo_create: bool,
    /// True when the pair is linked.
    pub linked: bool,
    /// The CRM write, if any.
    pub to_crm: Option<CrmWrite>,
    /// The agreed values once every write landed.
    pub agreed: Fields,
}

impl SidePair {
    /// Returns the keys its ledger entries are named by.
    pub(super) fn keys(&self) -> PairKeys<'_> {
        PairKeys {
            ledger: &self.ledger_key,
            marketo: &self.marketo_key,
            crm: self.crm_key.as_deref(),
        }
    }
}

impl PairWrite {
    /// Returns the keys its ledger entries are named by.
    pub(super) fn keys(&self) -> PairKeys<'_> {
        PairKeys {
            ledger: &self.ledger_key,
            marketo: &self.marketo_key,
            crm: self.crm_key.as_deref(),
        }
    }

    /// The pair's key on the side other than its ledger key's.
    pub(super) fn other_key(&self) -> Option<String> {
        if self.ledger_key == self.marketo_key {
            self.crm_key.clone()
        } else {
            Some(self.marketo_key.clone())
        }
    }
}
