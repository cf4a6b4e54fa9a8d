//! The Marketo endpoint seam: what the engine asks of Marketo, in the engine's own terms.
//!
//! The engine hands over records to write (with a write mode and a key) and gets back one typed
//! [`LeadOutcome`] per record, in input order; it asks for the leads changed in a time range, or
//! an export window, and gets rows. Everything about how Marketo is spoken to stays here: REST
//! batches of 300 or Bulk Import files below 10 MB chosen by size, `lookupField`, import
//! failure files, export jobs (create, persist, enqueue, poll, download with checksum, stream),
//! the routing of company-type lead fields to the lead's company, and the classification of
//! Marketo's error codes ([`RefusalKind`]).
//!
//! # Delivery and restarts
//!
//! Every write is an upsert keyed by an external id or the lead id, so writing a record again
//! after a crash creates no duplicate. An export job is recorded through the caller's
//! [`JobJournal`] after Marketo creates it and *before* it is enqueued, so that a restart
//! re-attaches to the job (and its partly downloaded file) instead of paying for a new export.
//! The journal is a trait so that this module never depends on the state store.
//!
//! The simulator (`crate::sim`) is the test double of this seam: tests run
//! [`RestBulkEndpoint`] against it.

mod export;
pub mod families;
mod objects;
mod write_back;
mod writes;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::csv::FileFormat;
use super::{Client, Error, Record, RecordRefusal, RecordResult, RefusalKind};
use crate::model::Fields;
use families::ObjectFamily;

pub use crate::marketo::bulk_extract::{ACTIVITY_FIELDS, ExportOptions};
pub use export::{ActivityRow, ExportRow, ExportSubject, ExportedWindow, RowStream};
pub use write_back::{
    KeyRefusal, KeySpool, SpoolMark, WriteBackJob, WriteBackReport, WriteBackScope,
};

/// Lead fields that belong to the company: Sync Leads refuses them (1021) for a lead linked to a
/// company, so they are written to that company (by `externalCompanyId`) instead.
pub const COMPANY_FIELDS_ON_LEADS: &[&str] = &[
    "company",
    "site",
    "billingStreet",
    "billingCity",
    "billingState",
    "billingCountry",
    "billingPostalCode",
    "website",
    "mainPhone",
    "annualRevenue",
    "numberOfEmployees",
    "industry",
    "sicCode",
];

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create; a record whose key exists already is refused.
    CreateOnly,
    /// Update; a record whose key does not exist is refused ([`RefusalKind::NotFound`]).
    UpdateOnly,
    /// Create or update by the key.
    Upsert,
}

/// The field that identifies the lead each record writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadKey {
    /// The Marketo lead id (each record holds `id`); update only.
    Id,
    /// A custom field holding the CRM key (each record holds that field).
    Field(String),
}

impl LeadKey {
    fn field(&self) -> &str {
        match self {
            LeadKey::Id => "id",
            LeadKey::Field(f) => f,
        }
    }
}

/// The company a written lead is linked to, as far as the caller knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompanyLink {
    /// The lead's `externalCompanyId` as read this cycle (`None`: the lead has no company).
    Known(Option<String>),
    /// The lead was not read: the endpoint reads its company when the write carries company
    /// fields.
    Unknown,
}

/// One lead to write: its Marketo field values (including the key field) and its company.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadWrite {
    /// The values, by Marketo field name.
    pub record: Record,
    /// The company the lead is linked to.
    pub company: CompanyLink,
}

/// Marketo's refusal of one record, for the error ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// What the refusal means.
    pub kind: RefusalKind,
    /// Marketo's code (`"import"` for a row of a Bulk Import failures file, which has none).
    pub code: String,
    /// Marketo's message (for a company write, naming the company).
    pub message: String,
    /// Whether sending the same record again later may succeed.
    pub retryable: bool,
    /// The company record, when it was the lead's company write that Marketo refused.
    pub company: Option<Record>,
}

impl Refusal {
    fn of(r: RecordRefusal) -> Refusal {
        Refusal {
            retryable: r.retryable(),
            kind: r.kind,
            code: r.code,
            message: r.message,
            company: None,
        }
    }

    fn import(message: impl Into<String>, kind: RefusalKind) -> Refusal {
        Refusal {
            kind,
            code: "import".into(),
            message: message.into(),
            retryable: kind.retryable(),
            company: None,
        }
    }
}

/// What became of one written lead.
#[derive(Debug, Clone, PartialEq)]
pub enum LeadOutcome {
    /// The lead was created (or, on an upsert, found by its key and updated).
    Created {
        /// The lead id.
        id: i64,
    },
    /// The lead was updated (its company write included).
    Updated {
        /// The lead id, when known.
        id: Option<i64>,
    },
    /// Marketo refused the record (or its company write).
    Refused(Refusal),
}

impl LeadOutcome {
    /// Returns the refusal, if the record was refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            LeadOutcome::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// The preview of one write on a dry run: what goes to the lead and what to its company.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadPreview {
    /// The values written to the lead.
    pub lead: Record,
    /// The company id and the values written to it, when company fields are routed there.
    pub company: Option<(String, Record)>,
}

/// The tunables of [`RestBulkEndpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSettings {
    /// Records above which writes go through Bulk Import instead of REST batches of 300.
    pub bulk_import_threshold: usize,
    /// Time between status polls of export jobs and import batches.
    pub poll: Duration,
    /// How long to wait for an export job before giving up (the job keeps running).
    pub export_max_wait: Option<Duration>,
    /// Where export files are downloaded and import files written.
    pub work_dir: PathBuf,
    /// The format of the files this endpoint imports (`marketo.import_format`).
    pub import_format: FileFormat,
}

impl Default for EndpointSettings {
    fn default() -> Self {
        EndpointSettings {
            bulk_import_threshold: 3_000,
            poll: Duration::from_secs(30),
            export_max_wait: Some(Duration::from_secs(6 * 3600)),
            work_dir: std::env::temp_dir(),
            import_format: FileFormat::Csv,
        }
    }
}

/// A bulk job as the caller's journal stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEntry {
    /// Export or import.
    pub import: bool,
    /// Marketo's id (exportId, batchId).
    pub id: String,
    /// The API family: `leads` or `activities`.
    pub kind: String,
    /// The caller's name for what the job covers.
    pub object: String,
    /// The window (export) or the window whose data it writes (import).
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Where the job is.
    pub stage: JobStage,
    /// The file size in bytes, 0 until known.
    pub bytes: u64,
    /// The local file.
    pub file: Option<PathBuf>,
}

/// Where a journalled job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStage {
    /// Created, not enqueued yet (exports); queued (imports).
    Created,
    /// Marketo finished it; its file is downloaded (exports) or its result read (imports).
    Completed,
    /// Its result was consumed fully (terminal).
    Consumed,
    /// It cannot be used (terminal).
    Failed,
}

/// Why the journal could not record or read a job.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub Box<dyn std::error::Error + Send + Sync>);

/// Where the caller keeps the bulk jobs the endpoint creates, so a restart resumes them.
#[async_trait]
pub trait JobJournal: Send + Sync {
    /// Returns the unfinished jobs (not consumed, failed or cancelled) of `kind` for `object`,
    /// exports or imports.
    ///
    /// # Errors
    ///
    /// Returns [`JournalError`] when the journal cannot be read.
    async fn unfinished(
        &self,
        import: bool,
        kind: &str,
        object: &str,
    ) -> Result<Vec<JobEntry>, JournalError>;

    /// Records a job (insert or update by id).
    ///
    /// # Errors
    ///
    /// Returns [`JournalError`] when the journal cannot be written.
    async fn record(&self, job: &JobEntry) -> Result<(), JournalError>;
}

/// Why an endpoint call failed as a whole (a refused record is a [`LeadOutcome::Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A Marketo call failed.
    #[error(transparent)]
    Marketo(#[from] Error),
    /// The journal failed.
    #[error("bulk job journal: {0}")]
    Journal(#[from] JournalError),
    /// A local file (export download, import file) could not be written or read.
    #[error("{what}")]
    File {
        /// What failed, naming the file.
        what: String,
    },
    /// The work was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl EndpointError {
    /// Returns true when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            EndpointError::Marketo(e) => e.is_retryable(),
            EndpointError::Journal(_) | EndpointError::Cancelled => true,
            EndpointError::File { .. } => false,
        }
    }

    fn file(what: impl Into<String>) -> EndpointError {
        EndpointError::File { what: what.into() }
    }
}

/// The Marketo side of the sync, as the engine uses it.
#[async_trait]
pub trait MarketoEndpoint: Send + Sync {
    /// Writes leads and returns one outcome per record, in input order. Chooses REST batches of
    /// 300 or Bulk Import by size, and sends the company-type fields of a lead linked to a
    /// company to that company.
    ///
    /// # Errors
    ///
    /// Returns [`EndpointError`] when a call fails as a whole; refused records are outcomes.
    async fn write_leads(
        &self,
        writes: &[LeadWrite],
        mode: WriteMode,
        key: &LeadKey,
        cancel: &CancellationToken,
    ) -> Result<Vec<LeadOutcome>, EndpointError>;

    /// Creates or updates records of an object family and returns one result per record, in
    /// input order: REST batches of 300, or, for a custom object with more than
    /// `bulk_import_threshold` records, Bulk Import files (records with a null value, which an
    /// import cannot clear, still go by REST). An imported record Marketo accepted is reported
    /// `Updated` (an import does not say created or updated); a refused row is `Skipped` with
    /// the failures file's reason under the code `import`.
    ///
    /// # Errors
    ///
    /// Returns [`EndpointError`] when a call, a batch or a file fails as a whole.
    async fn upsert_objects(
        &self,
        family: &ObjectFamily,
        records: &[Record],
        cancel: &CancellationToken,
    ) -> Result<Vec<RecordResult>, EndpointError>;

    /// Returns how many records of `family` the caller should hand to one
    /// [`MarketoEndpoint::upsert_objects`] call when it has `pending` to write: all of them when
    /// they go by Bulk Import, otherwise one REST batch (300).
    fn object_batch(&self, family: &ObjectFamily, pending: usize) -> usize;

    /// Returns what [`MarketoEndpoint::write_leads`] would send, without writing (dry runs).
    ///
    /// # Errors
    ///
    /// Returns [`EndpointError`] when a lead's company cannot be read.
    async fn preview_leads(&self, writes: &[LeadWrite]) -> Result<Vec<LeadPreview>, EndpointError>;

    /// Exports the leads updated in `[since, until]` (windows of at most 31 days), resuming an
    /// unfinished job recorded for `object`, and hands every row to `sink` (`Err` names a row
    /// that could not be read). Returns the bytes downloaded.
    ///
    /// # Errors
    ///
    /// Returns [`EndpointError`]; [`Error::UnsupportedFilter`] (1035) when the instance has no
    /// `updatedAt` filter.
    async fn export_changed_leads(
        &self,
        fields: &[String],
        (since, until): (DateTime<Utc>, DateTime<Utc>),
        object: &str,
        journal: &dyn JobJournal,
        sink: &mut (dyn FnMut(Result<Fields, String>) + Send),
        cancel: &CancellationToken,
    ) -> Result<u64, EndpointError>;

    /// Runs (or re-attaches to) the export of one window and downloads its file; the rows are
    /// read with [`ExportedWindow::rows`].
    ///
    /// # Errors
    ///
    /// Returns [`EndpointError`] after `max_attempts` unusable jobs, or at once for any other
    /// failure.
    async fn export_window(
        &self,
        subject: &ExportSubject,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
        object: &str,
        max_attempts: u32,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<ExportedWindow, EndpointError>;

    /// Returns the spool of CRM keys `mark` names, as it was committed (see
    /// [`KeySpool::reopen`]), or, without a mark, a new empty spool named `stem` (files on
    /// disk) after removing what an earlier, uncommitted spool of that name left.
    ///
    /// # Errors
    ///
    /// Returns [`EndpointError::File`] when the marked spool cannot be cut back.
    fn key_spool(
        &self,
        stem: &str,
        key_field: &str,
        mark: Option<&SpoolMark>,
    ) -> Result<KeySpool, EndpointError>;

    /// Writes spooled CRM keys into their leads' key field: the files that reached the size
    /// limit by Bulk Import (`lookupField=id`), or with [`WriteBackScope::All`] every key: by
    /// REST (`updateOnly` by `id`) up to the job's threshold, by Bulk Import above it. Each
    /// batch is journalled with the job's window; refused keys are in the report.
    ///
    /// # Errors
    ///
    /// Returns [`EndpointError`] when a call, a batch or a file fails as a whole.
    async fn write_back_keys(
        &self,
        job: &WriteBackJob<'_>,
        spool: &mut KeySpool,
        scope: WriteBackScope,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<WriteBackReport, EndpointError>;

    /// Finishes the write-back imports an earlier run left unfinished (every journalled batch
    /// of `job.object`): re-attaches to each and deletes its file once complete.
    ///
    /// # Errors
    ///
    /// As [`MarketoEndpoint::write_back_keys`].
    async fn resume_write_back(
        &self,
        job: &WriteBackJob<'_>,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<WriteBackReport, EndpointError>;
}

/// The endpoint over the REST and Bulk APIs of one [`Client`].
#[derive(Debug, Clone)]
pub struct RestBulkEndpoint {
    client: Client,
    settings: EndpointSettings,
}

impl RestBulkEndpoint {
    /// Returns the endpoint over `client`.
    pub fn new(client: Client, settings: EndpointSettings) -> RestBulkEndpoint {
        RestBulkEndpoint { client, settings }
    }

    /// Returns the client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Returns the settings.
    pub fn settings(&self) -> &EndpointSettings {
        &self.settings
    }
}

#[async_trait]
impl MarketoEndpoint for RestBulkEndpoint {
    async fn write_leads(
        &self,
        writes: &[LeadWrite],
        mode: WriteMode,
        key: &LeadKey,
        cancel: &CancellationToken,
    ) -> Result<Vec<LeadOutcome>, EndpointError> {
        self.write(writes, mode, key, cancel).await
    }

    async fn upsert_objects(
        &self,
        family: &ObjectFamily,
        records: &[Record],
        cancel: &CancellationToken,
    ) -> Result<Vec<RecordResult>, EndpointError> {
        self.upsert(family, records, cancel).await
    }

    fn object_batch(&self, family: &ObjectFamily, pending: usize) -> usize {
        if self.imports(family, pending) {
            pending
        } else {
            super::leads::MAX_BATCH
        }
    }

    async fn preview_leads(&self, writes: &[LeadWrite]) -> Result<Vec<LeadPreview>, EndpointError> {
        self.preview(writes).await
    }

    async fn export_changed_leads(
        &self,
        fields: &[String],
        range: (DateTime<Utc>, DateTime<Utc>),
        object: &str,
        journal: &dyn JobJournal,
        sink: &mut (dyn FnMut(Result<Fields, String>) + Send),
        cancel: &CancellationToken,
    ) -> Result<u64, EndpointError> {
        self.changed_leads(fields, range, object, journal, sink, cancel)
            .await
    }

    async fn export_window(
        &self,
        subject: &ExportSubject,
        window: (DateTime<Utc>, DateTime<Utc>),
        object: &str,
        max_attempts: u32,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<ExportedWindow, EndpointError> {
        self.window(subject, window, object, max_attempts, journal, cancel)
            .await
    }

    fn key_spool(
        &self,
        stem: &str,
        key_field: &str,
        mark: Option<&SpoolMark>,
    ) -> Result<KeySpool, EndpointError> {
        self.spool(stem, key_field, mark)
    }

    async fn write_back_keys(
        &self,
        job: &WriteBackJob<'_>,
        spool: &mut KeySpool,
        scope: WriteBackScope,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<WriteBackReport, EndpointError> {
        self.write_back(job, spool, scope, journal, cancel).await
    }

    async fn resume_write_back(
        &self,
        job: &WriteBackJob<'_>,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<WriteBackReport, EndpointError> {
        self.resume(job, journal, cancel).await
    }
}
