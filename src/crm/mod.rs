//! The `Crm` trait and its adapters.
//!
//! Every CRM adapter turns its remote into the same shape (see `crm-adapters.md`, "A
//! CRM-agnostic core model"): it describes objects, reads changes since an opaque cursor
//! (upserts and tombstones), upserts batches keyed by an external key with one result per record,
//! deletes batches, and declares what it can do. Adapters are built by name in
//! [`registry::build`].

pub mod hubspot;
pub mod registry;
pub mod sql;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Fields, ObjectSchema, Value};

/// An opaque position in a CRM object's change feed, owned by the adapter that produced it.
///
/// The engine persists it atomically with the changes it applied and hands it back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub serde_json::Value);

impl Cursor {
    /// Returns the adapter's content of this cursor, refusing a damaged cursor or one written
    /// by another version of the content (`version_of` reads the version the content carries).
    ///
    /// # Errors
    /// [`CrmError::BadCursor`] naming `object`.
    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        object: &str,
        version: u32,
        version_of: impl Fn(&T) -> u32,
    ) -> Result<T, CrmError> {
        let bad = |message: String| CrmError::BadCursor {
            object: object.to_owned(),
            message,
        };
        let state: T = serde_json::from_value(self.0.clone()).map_err(|e| bad(e.to_string()))?;
        match version_of(&state) {
            v if v == version => Ok(state),
            v => Err(bad(format!("unknown version {v}"))),
        }
    }
}

/// How a record went away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum DeleteHow {
    /// The row is gone.
    Hard,
    /// The row is still there but flagged deleted (or archived).
    Soft,
    /// The record was merged into another one, whose native id is `into`.
    Merged {
        /// The survivor's native id.
        into: String,
    },
}

/// A deleted record, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// How it went away.
    pub how: DeleteHow,
    /// When it went away, as the CRM recorded it.
    pub at: DateTime<Utc>,
}

/// What happened to a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeKind {
    /// The record was created or updated; these are its current fields.
    Upserted {
        /// The record's current values of the configured fields.
        fields: Fields,
    },
    /// The record was deleted.
    Deleted(Tombstone),
}

/// One change read from a CRM object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The record's native id (primary key as text).
    pub id: String,
    /// The record's modification time as the CRM recorded it (UTC).
    pub modified_at: DateTime<Utc>,
    /// What happened.
    pub kind: ChangeKind,
}

/// The kinds of change a reader of a change feed acts on.
///
/// A feed read may say which kinds it needs, so that an adapter whose feed costs one remote call
/// per kind (HubSpot: a search for changed records, a listing for archived ones) skips the calls
/// whose results the reader would drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedNeeds {
    /// Created, updated and deleted records (the lead step).
    All,
    /// Created and updated records (the create/update steps of the other objects).
    Upserts,
    /// Deleted and merged-away records (the deletions step).
    Deletes,
}

/// One page of changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangePage {
    /// The changes, oldest first. A change can repeat across pages and polls (overlap window);
    /// consumers deduplicate by id and value.
    pub changes: Vec<Change>,
    /// The cursor to pass to the next call.
    pub next: Cursor,
    /// More changes are waiting now; call again at once with `next`.
    pub more: bool,
}

/// A record read from a CRM object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmRecord {
    /// The record's native id (primary key as text).
    pub id: String,
    /// The record's modification time (UTC).
    pub modified_at: DateTime<Utc>,
    /// The configured fields.
    pub fields: Fields,
}

/// The outcome of writing one record, in input order.
///
/// `Created`, `Updated` and `Deleted` mean the record is in the CRM as written (committed when
/// the call returned). [`WriteResult::Refused`] means the CRM did not take this one record and
/// nothing of it was written; the other records of the batch are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum WriteResult {
    /// A new record was created with this native id.
    Created {
        /// The new record's native id.
        id: String,
    },
    /// An existing record was updated.
    Updated {
        /// The record's native id.
        id: String,
    },
    /// The record was deleted.
    Deleted {
        /// The record's native id.
        id: String,
    },
    /// The CRM refused this record, and nothing of it was written; the others in the batch are
    /// unaffected.
    Refused(Refusal),
}

impl WriteResult {
    /// Returns the refusal, if the CRM refused the record.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            WriteResult::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// Why a CRM refused one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RefusalReason {
    /// An update-only write (or a delete) found no record with this id.
    NotFound,
    /// The record holding this key is deleted in the CRM (its key belongs to a dead record).
    Deleted,
    /// The record has no value for its key field.
    MissingKey,
    /// The record names a field the CRM object does not have.
    UnknownField {
        /// The field.
        field: String,
    },
    /// The record writes a field the CRM computes itself.
    ReadOnlyField {
        /// The field.
        field: String,
    },
    /// A text value is longer than its field allows (never shortened).
    TooLong {
        /// The field.
        field: String,
        /// The field's limit, in characters.
        max_chars: u32,
        /// The value's length, in characters.
        actual_chars: u32,
    },
    /// A number does not fit its field (too many digits or decimal places, out of range):
    /// never rounded.
    OutOfRange {
        /// The field.
        field: String,
        /// The field's type as the CRM declares it (`numeric(10,2)`, `smallint`, ...).
        column_type: String,
    },
    /// A required field is empty.
    NotNull,
    /// Another record already holds this unique value.
    Unique,
    /// A reference to a record that does not exist (or a record still referenced).
    ForeignKey,
    /// A check constraint refused the values.
    Check,
    /// A trigger or rule of the CRM refused the record (SQL `RAISE`, `SIGNAL`).
    Trigger,
    /// The CRM does not accept the value (bad format, wrong type).
    InvalidValue,
    /// The CRM reported no outcome for the record.
    NotWritten,
}

impl RefusalReason {
    /// Returns the stable snake_case code kept in the error ledger (`trigger`, `too_long`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            RefusalReason::NotFound => "not_found",
            RefusalReason::Deleted => "deleted",
            RefusalReason::MissingKey => "missing_key",
            RefusalReason::UnknownField { .. } => "unknown_field",
            RefusalReason::ReadOnlyField { .. } => "read_only_field",
            RefusalReason::TooLong { .. } => "too_long",
            RefusalReason::OutOfRange { .. } => "out_of_range",
            RefusalReason::NotNull => "not_null_violation",
            RefusalReason::Unique => "unique_violation",
            RefusalReason::ForeignKey => "foreign_key_violation",
            RefusalReason::Check => "check_violation",
            RefusalReason::Trigger => "trigger",
            RefusalReason::InvalidValue => "invalid_value",
            RefusalReason::NotWritten => "not_written",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefusalReason::NotFound => f.write_str("no such record"),
            RefusalReason::Deleted => f.write_str("the record holding this key is deleted"),
            RefusalReason::MissingKey => f.write_str("the key field has no value"),
            RefusalReason::UnknownField { field } => write!(f, "unknown field `{field}`"),
            RefusalReason::ReadOnlyField { field } => write!(f, "field `{field}` is read-only"),
            RefusalReason::TooLong {
                field,
                max_chars,
                actual_chars,
            } => write!(
                f,
                "`{field}` is {actual_chars} characters long, more than its limit of {max_chars}"
            ),
            RefusalReason::OutOfRange { field, column_type } => {
                write!(
                    f,
                    "the value of `{field}` does not fit its type {column_type}"
                )
            }
            RefusalReason::NotNull => f.write_str("a required field is empty"),
            RefusalReason::Unique => f.write_str("another record holds this unique value"),
            RefusalReason::ForeignKey => f.write_str("a referenced record is missing"),
            RefusalReason::Check => f.write_str("a check constraint refused the values"),
            RefusalReason::Trigger => f.write_str("a trigger refused the record"),
            RefusalReason::InvalidValue => f.write_str("a value is not valid for its field"),
            RefusalReason::NotWritten => f.write_str("the crm reported no outcome"),
        }
    }
}

/// One record refused by the CRM: why, the remote's own code and message, and whether trying the
/// same record again later may succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Why, as the sync classifies it.
    pub reason: RefusalReason,
    /// The remote's own code (SQLSTATE, MySQL error number, SQLite extended code, ...), when the
    /// remote refused the record rather than the adapter.
    pub remote_code: Option<String>,
    /// What went wrong, in the remote's words where it said something; never record values.
    pub message: String,
    /// Retrying the same record later may succeed (without a change to it).
    pub retryable: bool,
}

impl Refusal {
    /// Returns a refusal made by the adapter itself (no remote code), not retryable.
    pub fn new(reason: RefusalReason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            remote_code: None,
            message: message.into(),
            retryable: false,
        }
    }

    /// Returns the stable code kept in the error ledger (see [`RefusalReason::code`]).
    pub fn code(&self) -> &'static str {
        self.reason.code()
    }

    /// Returns the message kept in the error ledger: the remote's code and message
    /// ("refused by the CRM (P0001): no gmail here"), or the adapter's message.
    pub fn ledger_message(&self) -> String {
        match &self.remote_code {
            Some(code) => format!("refused by the CRM ({code}): {}", self.message),
            None => self.message.clone(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.ledger_message())
    }
}

/// Timestamp precision of a change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Whole seconds.
    Seconds,
    /// Milliseconds.
    Millis,
    /// Microseconds.
    Micros,
}

/// How an adapter finds changed records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeFeed {
    /// Keyset over (modified field, id), re-reading an overlap window on every poll.
    ModifiedSince {
        /// The modified-time field.
        field: String,
        /// The overlap window re-read on every poll.
        overlap: Duration,
    },
    /// As `ModifiedSince`, plus a trigger-maintained change log that catches late commits.
    ModifiedSinceAndTriggerLog {
        /// The modified-time field.
        field: String,
        /// The overlap window re-read on every poll.
        overlap: Duration,
    },
}

/// How an adapter learns about deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteFeed {
    /// Not at all: the engine must diff id sets to find deletes.
    None,
    /// Soft deletes only (a flag column read with the changes); hard deletes are missed.
    SoftOnly,
    /// Soft and hard deletes (a trigger-maintained change log).
    Full,
}

/// How an adapter writes records keyed by an external id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsertMode {
    /// A native upsert keyed by a unique field.
    NativeByExternalId,
    /// Writes are disabled for this object.
    None,
}

/// What the engine may rely on for one object of one adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// How changes are found.
    pub change_feed: ChangeFeed,
    /// How deletes are found.
    pub delete_feed: DeleteFeed,
    /// How writes work.
    pub upsert: UpsertMode,
    /// The largest batch `upsert` and `delete` accept in one call.
    pub max_batch_write: usize,
    /// The precision of the modified-time field.
    pub timestamp_precision: Precision,
}

/// Errors of the CRM adapters.
#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    /// No adapter is registered under this name.
    #[error("unknown crm adapter `{name}` (known adapters: {known})")]
    UnknownAdapter {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// The adapter options are invalid.
    #[error("invalid crm adapter options: {message}")]
    Config {
        /// What is wrong and where.
        message: String,
    },
    /// The object is not configured for this adapter.
    #[error("crm object `{object}` is not configured")]
    UnknownObject {
        /// The object asked for.
        object: String,
    },
    /// A name from the configuration does not exist in the CRM's catalog.
    #[error("crm object `{object}`: {what} `{name}` does not exist{context}")]
    UnknownName {
        /// The configured object.
        object: String,
        /// "table", "view", "column", "change log table".
        what: &'static str,
        /// The missing name.
        name: String,
        /// Where it was looked for (" in table `x`"), or empty.
        context: String,
    },
    /// The configuration asks for something the catalog does not allow.
    #[error("crm object `{object}`: {message}")]
    Schema {
        /// The configured object.
        object: String,
        /// What is wrong.
        message: String,
    },
    /// Writes to the object are not enabled in the configuration.
    #[error("crm object `{object}` is not writable (set `writable = true` to allow writes)")]
    NotWritable {
        /// The object.
        object: String,
    },
    /// The cursor was not produced by this adapter or is damaged.
    #[error("invalid crm cursor for `{object}`: {message}")]
    BadCursor {
        /// The object.
        object: String,
        /// What is wrong.
        message: String,
    },
    /// The database or remote failed.
    #[error("crm {operation} failed: {message}")]
    Remote {
        /// What the adapter was doing ("read changes of contacts", ...).
        operation: String,
        /// The remote's error message (never record values or secrets).
        message: String,
        /// Retrying the whole call later may succeed (connection lost, deadlock, timeout).
        retryable: bool,
    },
}

impl CrmError {
    /// Returns true when retrying the same call later may succeed (connection reset or closed,
    /// deadlock, serialization failure, pool timeout); false for configuration and schema errors.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CrmError::Remote {
                retryable: true,
                ..
            }
        )
    }
}

/// A CRM as the engine sees it: one adapter instance for one CRM.
///
/// Objects are named as in the adapter's configuration. Ids are the records' native ids as text.
#[async_trait::async_trait]
pub trait Crm: Send + Sync {
    /// Returns the adapter's registered name ("sql", ...).
    fn name(&self) -> &'static str;

    /// Returns the object's schema as read from the CRM's catalog now.
    ///
    /// # Errors
    /// Unknown object, a configured name missing from the catalog, or a remote failure.
    async fn describe(&self, object: &str) -> Result<ObjectSchema, CrmError>;

    /// Returns what the engine may rely on for this object.
    ///
    /// # Errors
    /// Unknown object.
    fn capabilities(&self, object: &str) -> Result<Capabilities, CrmError>;

    /// Returns the changes after `cursor` (from the beginning when `None`), at most about
    /// `limit` per feed, with the cursor for the next call.
    ///
    /// # Errors
    /// Unknown object, a damaged cursor, or a remote failure (see [`CrmError::is_retryable`]).
    async fn changes(
        &self,
        object: &str,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage, CrmError>;

    /// Like [`Crm::changes`], for a reader that acts only on the changes `needs` names.
    ///
    /// The page may still hold changes of the other kinds (callers filter); what it must hold is
    /// every change of the kinds asked for. A cursor is only ever passed back to reads with the
    /// same `needs` (each reader keeps its own). The default reads [`Crm::changes`] unchanged,
    /// for adapters whose feed reads every kind in the same call.
    ///
    /// # Errors
    /// As [`Crm::changes`].
    async fn changes_for(
        &self,
        object: &str,
        cursor: Option<&Cursor>,
        limit: usize,
        needs: FeedNeeds,
    ) -> Result<ChangePage, CrmError> {
        let _ = needs;
        self.changes(object, cursor, limit).await
    }

    /// Returns the live (not deleted) records whose `field` equals one of `values`.
    ///
    /// # Errors
    /// Unknown object or field, or a remote failure.
    async fn find(
        &self,
        object: &str,
        field: &str,
        values: &[Value],
    ) -> Result<Vec<CrmRecord>, CrmError>;

    /// Forgets the writes this adapter made itself, so that the change feed reports them again.
    ///
    /// An adapter that leaves its own writes out of the feed (echo suppression) must report them
    /// again once the caller says the step that made them was not recorded (it failed, was
    /// cancelled or was killed before its commit): the feed's copy of such a record is then the
    /// only remaining trace of the user's change that it overwrote. The default does nothing
    /// (for adapters whose feed never hides a write).
    fn forget_own_writes(&self) {}

    /// Like [`Crm::find`], but a text field matches ignoring letter case and surrounding white
    /// space (as people type emails: ` Ada@Example.com` is `ada@example.com`); other fields
    /// match exactly. Identity matching uses it, so that a record typed differently on the two
    /// sides is linked rather than duplicated. The default is [`Crm::find`], for CRMs whose
    /// lookups fold case already.
    ///
    /// # Errors
    /// As [`Crm::find`].
    async fn find_folded(
        &self,
        object: &str,
        field: &str,
        values: &[Value],
    ) -> Result<Vec<CrmRecord>, CrmError> {
        self.find(object, field, values).await
    }

    /// Returns the live (not deleted) records with these native ids; missing ids are left out.
    ///
    /// # Errors
    /// Unknown object or a remote failure.
    async fn get(&self, object: &str, ids: &[String]) -> Result<Vec<CrmRecord>, CrmError>;

    /// Creates or updates each record keyed by `key_field`, and returns one result per record,
    /// in input order.
    ///
    /// When `key_field` is the object's primary key the write is update-only: an existing row is
    /// updated (its Marketo-id column may still be empty) and a missing one is refused with
    /// [`RefusalReason::NotFound`]; nothing is inserted.
    ///
    /// Outcomes, per record:
    /// - [`WriteResult::Created`] / [`WriteResult::Updated`]: the record is stored exactly as
    ///   given. No value is ever shortened, rounded or coerced to fit: a value that does not fit
    ///   its field is refused ([`RefusalReason::TooLong`], [`RefusalReason::OutOfRange`]).
    /// - [`WriteResult::Refused`]: nothing of this record was written. The reason is typed; a
    ///   refusal by the remote (constraint, trigger, invalid value) carries the remote's own code
    ///   and message. `NotFound` (update-only, no such row) and `Deleted` (the key belongs to a
    ///   record deleted in the CRM) are refusals the engine acts on; the others go to the error
    ///   ledger.
    ///
    /// Delivery guarantee: when the call returns `Ok`, every record reported written is
    /// committed and every refused one left untouched, whatever the other records did (a refusal
    /// that ends the remote's transaction, such as SQLite's `RAISE(ROLLBACK)`, is handled by
    /// writing the others again). When it returns `Err`, the batch failed as a whole (connection
    /// lost, deadlock, lock time-out): nothing was committed, and the same batch may be sent
    /// again. Writes are keyed, so sending a batch again is idempotent.
    ///
    /// # Errors
    /// Unknown object, object not writable, key field not unique, or a batch-level failure
    /// (see [`CrmError::is_retryable`]).
    async fn upsert(
        &self,
        object: &str,
        key_field: &str,
        batch: &[Fields],
    ) -> Result<Vec<WriteResult>, CrmError>;

    /// Deletes the records with these native ids (soft delete where the object has one), and
    /// returns one result per id, in input order: [`WriteResult::Deleted`], or
    /// [`WriteResult::Refused`] (`NotFound` for an id with no record, or the remote's refusal,
    /// such as a foreign key or a trigger). The delivery guarantee is that of [`Crm::upsert`].
    ///
    /// # Errors
    /// As [`Crm::upsert`].
    async fn delete(&self, object: &str, ids: &[String]) -> Result<Vec<WriteResult>, CrmError>;

    /// Checks that the CRM answers.
    ///
    /// # Errors
    /// A remote failure.
    async fn healthcheck(&self) -> Result<(), CrmError>;
}
