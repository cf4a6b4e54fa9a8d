//! Bulk extract (leads, activities, program members, custom objects): create, enqueue, poll,
//! cancel, list, and a resumable, checksum-verified download streamed to disk.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, HeaderMap, HeaderValue, RANGE};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Client;
use super::describe::path_segment;
use super::error::{Disposition, Error};
use super::model::Page;
use super::transport::Call;

/// The standard columns of an activity export, in Marketo's default order.
pub const ACTIVITY_FIELDS: [&str; 8] = [
    "marketoGUID",
    "leadId",
    "activityDate",
    "activityTypeId",
    "campaignId",
    "primaryAttributeValueId",
    "primaryAttributeValue",
    "attributes",
];

/// Longest date range of one export filter.
pub const MAX_RANGE_DAYS: i64 = 31;

/// What an export job extracts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExportKind {
    /// Leads (`/bulk/v1/leads/export`).
    Leads,
    /// Activities (`/bulk/v1/activities/export`).
    Activities,
    /// Program members (`/bulk/v1/program/members/export`).
    ProgramMembers,
    /// One custom object (`/bulk/v1/customobjects/{apiName}/export`).
    CustomObject(String),
}

impl ExportKind {
    fn base(&self) -> Result<String, Error> {
        Ok(match self {
            ExportKind::Leads => "/bulk/v1/leads/export".into(),
            ExportKind::Activities => "/bulk/v1/activities/export".into(),
            ExportKind::ProgramMembers => "/bulk/v1/program/members/export".into(),
            ExportKind::CustomObject(name) => {
                format!("/bulk/v1/customobjects/{}/export", path_segment(name)?)
            }
        })
    }
}

/// An inclusive date range, sent as ISO-8601 without milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DateRange {
    /// The first instant.
    #[serde(serialize_with = "secs")]
    pub start_at: DateTime<Utc>,
    /// The last instant (inclusive).
    #[serde(serialize_with = "secs")]
    pub end_at: DateTime<Utc>,
}

fn secs<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// One list whose members a lead export reads: the export's one lead filter. A static list
/// filter works on every subscription; a smart list filter may answer 1035
/// ([`Error::UnsupportedFilter`]). The job reads the members the list has when Marketo starts
/// processing it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeadList {
    /// A static list, by id (`staticListId`).
    StaticId(i64),
    /// A static list, by its exact name (`staticListName`).
    StaticName(String),
    /// A smart list, by id (`smartListId`).
    SmartId(i64),
    /// A smart list, by its exact name (`smartListName`).
    SmartName(String),
}

impl LeadList {
    /// Returns the list each of the four ways to name one gives, by position: static list id,
    /// static list name, smart list id, smart list name (the settings and the `bootstrap`
    /// flags name a list these four ways).
    pub fn by_kind(
        static_id: Option<i64>,
        static_name: Option<&str>,
        smart_id: Option<i64>,
        smart_name: Option<&str>,
    ) -> [Option<LeadList>; 4] {
        [
            static_id.map(LeadList::StaticId),
            static_name.map(|n| LeadList::StaticName(n.to_owned())),
            smart_id.map(LeadList::SmartId),
            smart_name.map(|n| LeadList::SmartName(n.to_owned())),
        ]
    }

    /// Returns the name of the lead export filter this list is sent as (`staticListId`, ...).
    pub fn filter_key(&self) -> &'static str {
        match self {
            LeadList::StaticId(_) => "staticListId",
            LeadList::StaticName(_) => "staticListName",
            LeadList::SmartId(_) => "smartListId",
            LeadList::SmartName(_) => "smartListName",
        }
    }

    /// Returns true for a smart list (a filter some subscriptions lack).
    pub fn is_smart(&self) -> bool {
        matches!(self, LeadList::SmartId(_) | LeadList::SmartName(_))
    }

    /// Returns the export filter of the list's members (this list and nothing else).
    pub fn filter(&self) -> ExportFilter {
        let mut filter = ExportFilter::default();
        match self {
            LeadList::StaticId(id) => filter.static_list_id = Some(*id),
            LeadList::StaticName(name) => filter.static_list_name = Some(name.clone()),
            LeadList::SmartId(id) => filter.smart_list_id = Some(*id),
            LeadList::SmartName(name) => filter.smart_list_name = Some(name.clone()),
        }
        filter
    }
}

impl fmt::Display for LeadList {
    /// Writes the list as an operator names it: `static list "Newsletter"`, `smart list 1234`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeadList::StaticId(id) => write!(f, "static list {id}"),
            LeadList::StaticName(name) => write!(f, "static list \"{name}\""),
            LeadList::SmartId(id) => write!(f, "smart list {id}"),
            LeadList::SmartName(name) => write!(f, "smart list \"{name}\""),
        }
    }
}

/// The export filter; leads take exactly one of the list/date filters, activities require
/// `created_at`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportFilter {
    /// Created in this range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateRange>,
    /// Updated (any field) in this range; may answer 1035 ([`Error::UnsupportedFilter`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateRange>,
    /// Members of this static list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_list_id: Option<i64>,
    /// Members of this static list, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_list_name: Option<String>,
    /// Members of this smart list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smart_list_id: Option<i64>,
    /// Members of this smart list, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smart_list_name: Option<String>,
    /// Activity types (activities).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity_type_ids: Option<Vec<i64>>,
    /// Primary attribute value ids (activities; needs `activity_type_ids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_attribute_value_ids: Option<Vec<i64>>,
    /// Primary attribute values (activities; needs `activity_type_ids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_attribute_values: Option<Vec<String>>,
    /// Program ids (program members).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program_id: Option<i64>,
}

/// The body of a create call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportRequest {
    /// REST field names to export.
    pub fields: Vec<String>,
    /// `CSV` (default), `TSV` or `SSV`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Column titles by field name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column_header_names: Option<BTreeMap<String, String>>,
    /// The filter.
    pub filter: ExportFilter,
}

/// The state of an export job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportStatus {
    /// Created, not queued.
    Created,
    /// Waiting in the queue.
    Queued,
    /// Running.
    Processing,
    /// The file is ready.
    Completed,
    /// Failed; recreate it.
    Failed,
    /// Cancelled ("Cancelled" or "Canceled").
    Cancelled,
    /// A status this client does not know.
    Other(String),
}

impl ExportStatus {
    /// Returns Marketo's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            ExportStatus::Created => "Created",
            ExportStatus::Queued => "Queued",
            ExportStatus::Processing => "Processing",
            ExportStatus::Completed => "Completed",
            ExportStatus::Failed => "Failed",
            ExportStatus::Cancelled => "Cancelled",
            ExportStatus::Other(s) => s,
        }
    }
}

impl fmt::Display for ExportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ExportStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.to_ascii_lowercase().as_str() {
            "created" => ExportStatus::Created,
            "queued" => ExportStatus::Queued,
            "processing" => ExportStatus::Processing,
            "completed" => ExportStatus::Completed,
            "failed" => ExportStatus::Failed,
            "cancelled" | "canceled" => ExportStatus::Cancelled,
            _ => ExportStatus::Other(s),
        })
    }
}

/// An export job as Marketo reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportJob {
    /// The job id.
    pub export_id: String,
    /// Its state.
    pub status: ExportStatus,
    /// The file format.
    #[serde(default)]
    pub format: Option<String>,
    /// When it was created.
    #[serde(default)]
    pub created_at: Option<String>,
    /// When it was queued.
    #[serde(default)]
    pub queued_at: Option<String>,
    /// When it started.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When it finished.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Rows in the file (Completed only).
    #[serde(default)]
    pub number_of_records: Option<u64>,
    /// Bytes in the file (Completed only).
    #[serde(default)]
    pub file_size: Option<u64>,
    /// `sha256:<hex>` of the file (Completed only).
    #[serde(default)]
    pub file_checksum: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error_msg: Option<String>,
}

/// Export jobs Marketo processes at once per instance; more wait `Queued` (at most 10 queued or
/// processing: an enqueue beyond answers 1029 "Too many jobs in queue").
pub const EXPORT_PROCESSING_SLOTS: usize = 2;

/// Settings of [`Client::run_export`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// Time between status polls (Marketo updates status at most once a minute).
    pub poll_interval: Duration,
    /// Give up waiting after this long (the job keeps running; resume it by id).
    pub max_wait: Option<Duration>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            poll_interval: Duration::from_secs(60),
            max_wait: Some(Duration::from_secs(6 * 3600)),
        }
    }
}

/// A downloaded and verified export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOutcome {
    /// The final job status.
    pub job: ExportJob,
    /// The file on disk (absent when the job had no records).
    pub path: Option<PathBuf>,
    /// Bytes on disk.
    pub bytes: u64,
}

fn check_range(endpoint: &str, what: &str, r: &DateRange) -> Result<(), Error> {
    if r.end_at < r.start_at {
        return Err(Error::invalid(
            endpoint,
            format!("{what} ends before it starts"),
        ));
    }
    if r.end_at - r.start_at > chrono::Duration::days(MAX_RANGE_DAYS) {
        return Err(Error::invalid(
            endpoint,
            format!("{what} spans more than {MAX_RANGE_DAYS} days"),
        ));
    }
    Ok(())
}

impl Client {
    /// Waits for one of the client's export poll slots (in the order asked).
    async fn export_poll_slot(
        &self,
        id: &str,
        cancel: &CancellationToken,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        tokio::select! {
            _ = cancel.cancelled() => Err(cancelled(id)),
            p = self.inner.export_polls.acquire() => p.map_err(|_| cancelled(id)),
        }
    }

    /// Creates an export job (`POST /bulk/v1/<kind>/export/create.json`); persist its id
    /// before enqueueing so a restart can resume it.
    ///
    /// Returns the job in state Created.
    ///
    /// # Errors
    ///
    /// Returns [`Error::BulkBudgetSpent`] without calling when today's bulk budget is spent,
    /// [`Error::InvalidInput`] for a range over 31 days or no filter,
    /// [`Error::UnsupportedFilter`] (1035) for a filter this subscription lacks, and any
    /// call-level error.
    pub async fn create_export(
        &self,
        kind: &ExportKind,
        request: &ExportRequest,
    ) -> Result<ExportJob, Error> {
        let ep = format!("{}/create.json", kind.base()?);
        self.inner.limiter.check_bulk()?;
        let f = &request.filter;
        for (what, r) in [("createdAt", &f.created_at), ("updatedAt", &f.updated_at)] {
            if let Some(r) = r {
                check_range(&ep, what, r)?;
            }
        }
        if *kind == ExportKind::Activities && f.created_at.is_none() {
            return Err(Error::invalid(
                &ep,
                "activity exports need a createdAt filter",
            ));
        }
        if f == &ExportFilter::default() {
            return Err(Error::invalid(&ep, "an export needs a filter"));
        }
        if *kind == ExportKind::Leads && request.fields.is_empty() {
            return Err(Error::invalid(&ep, "lead exports need fields"));
        }
        let mut body =
            serde_json::to_value(request).map_err(|e| Error::decode(&ep, e.to_string()))?;
        if *kind == ExportKind::Activities && request.fields.is_empty() {
            // The spec marks `fields` required for activities: send every standard column.
            body["fields"] = serde_json::json!(ACTIVITY_FIELDS);
        }
        // Creating twice only leaves an unused job behind.
        let env = self.call::<ExportJob>(&Call::post(&ep, body)).await?;
        env.one(&ep, NO_JOB)
    }

    /// Queues a Created job (`POST /bulk/v1/<kind>/export/{id}/enqueue.json`); 1029 "Job
    /// already queued" counts as success.
    ///
    /// Returns the job's status.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Api`] with [`Disposition::BackOff`] when the queue stays full,
    /// [`Disposition::PauseUntilDayTurns`] when the export quota is spent, and any other
    /// call-level error.
    pub async fn enqueue_export(
        &self,
        kind: &ExportKind,
        export_id: &str,
    ) -> Result<ExportJob, Error> {
        let ep = job_endpoint(kind, export_id, "enqueue")?;
        match self.job_call(&ep, Call::post_empty(&ep)).await {
            Ok(job) => Ok(job),
            Err(e) if e.disposition() == Disposition::AlreadyDone => {
                tracing::info!(export_id, "export job already queued");
                self.export_status(kind, export_id).await
            }
            Err(e) => Err(e),
        }
    }

    /// Reads a job's status (`GET /bulk/v1/<kind>/export/{id}/status.json`).
    ///
    /// Returns the job.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn export_status(
        &self,
        kind: &ExportKind,
        export_id: &str,
    ) -> Result<ExportJob, Error> {
        let ep = job_endpoint(kind, export_id, "status")?;
        self.job_call(&ep, Call::get(&ep)).await
    }

    /// Cancels a job (`POST /bulk/v1/<kind>/export/{id}/cancel.json`).
    ///
    /// Returns the job, normally Cancelled.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn cancel_export(
        &self,
        kind: &ExportKind,
        export_id: &str,
    ) -> Result<ExportJob, Error> {
        let ep = job_endpoint(kind, export_id, "cancel")?;
        self.job_call(&ep, Call::post_empty(&ep)).await
    }

    /// Lists this user's jobs of the past 7 days (`GET /bulk/v1/<kind>/export.json`), optionally
    /// only those in the given states.
    ///
    /// Returns one page; use finished jobs' `file_size` to recompute today's bulk usage.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn list_exports(
        &self,
        kind: &ExportKind,
        statuses: &[ExportStatus],
        next_page_token: Option<&str>,
    ) -> Result<Page<ExportJob>, Error> {
        let ep = format!("{}.json", kind.base()?);
        let names: Vec<String> = statuses
            .iter()
            .map(|s| s.as_str().to_ascii_lowercase())
            .collect();
        let call = Call::get(&ep)
            .q_list("status", &names)
            .q("batchSize", 300)
            .q_opt("nextPageToken", next_page_token);
        Ok(Page::from_envelope(self.call::<ExportJob>(&call).await?))
    }

    /// Recomputes today's bulk-extract bytes from this user's Completed lead and activity jobs
    /// (their `fileSize`, finished on the current Marketo day) and raises the bulk counter to
    /// at least that. Other API users' exports are not visible.
    ///
    /// Returns the bytes found.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn refresh_bulk_usage(&self) -> Result<u64, Error> {
        let today = self.inner.limiter.snapshot().day;
        let mut total = 0u64;
        for kind in [ExportKind::Leads, ExportKind::Activities] {
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .list_exports(&kind, &[ExportStatus::Completed], token.as_deref())
                    .await?;
                for job in &page.records {
                    let finished_today = job
                        .finished_at
                        .as_deref()
                        .and_then(super::model::parse_marketo_datetime)
                        .is_some_and(|t| super::limiter::marketo_day(t) == today);
                    if job.status == ExportStatus::Completed && finished_today {
                        total += job.file_size.unwrap_or(0);
                    }
                }
                match page.next_page_token {
                    Some(t) if page.more_result && !page.records.is_empty() => token = Some(t),
                    _ => break,
                }
            }
        }
        let snap = self.inner.limiter.snapshot();
        self.inner.limiter.restore(super::limiter::UsageSnapshot {
            bulk_bytes: total,
            ..snap
        });
        Ok(total)
    }

    /// Downloads a Completed job's file to `dest`, streaming to disk. A partial file already at
    /// `dest` (from a dropped connection or an earlier run) is resumed with an HTTP Range
    /// request. The result is checked against `fileSize` and the SHA-256 `fileChecksum`.
    ///
    /// Returns the bytes on disk.
    ///
    /// # Errors
    ///
    /// Returns [`Error::ExportFileMissing`] on 404, [`Error::IncompleteDownload`] when the
    /// file stays short after every attempt, [`Error::ChecksumMismatch`] (the file is removed),
    /// [`Error::Io`], [`Error::Cancelled`], and any call-level error.
    pub async fn download_export(
        &self,
        kind: &ExportKind,
        job: &ExportJob,
        dest: &Path,
        cancel: &CancellationToken,
    ) -> Result<u64, Error> {
        let ep = job_endpoint(kind, &job.export_id, "file")?;
        let expected = job.file_size;
        let attempts = self.inner.config.retry.download_attempts.max(1);
        let mut last_err = None;
        for attempt in 1..=attempts {
            if cancel.is_cancelled() {
                return Err(cancelled(&job.export_id));
            }
            let have = match tokio::fs::metadata(dest).await {
                Ok(m) => m.len(),
                Err(_) => 0,
            };
            if expected.is_some_and(|n| have == n) && have > 0 {
                break;
            }
            if expected.is_some_and(|n| have > n) {
                truncate(dest).await?;
                continue;
            }
            match self.download_once(&ep, job, dest, have, cancel).await {
                Ok(()) => {
                    let now = file_len(dest).await?;
                    match expected {
                        Some(n) if now < n => {
                            tracing::warn!(export_id = %job.export_id, received = now, expected = n, attempt, "export download cut short, resuming");
                            last_err = Some(Error::IncompleteDownload {
                                export_id: job.export_id.clone(),
                                received: now,
                                expected: n,
                            });
                        }
                        _ => {
                            last_err = None;
                            break;
                        }
                    }
                }
                // The caller decides when to look again (run_export re-reads the status).
                Err(e @ Error::ExportFileMissing { .. }) => return Err(e),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(export_id = %job.export_id, error = %e, attempt, "export download failed, resuming");
                    last_err = Some(e);
                    let wait = self.inner.config.retry.min_delay * attempt;
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(cancelled(&job.export_id)),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        let len = file_len(dest).await?;
        if let Some(n) = expected
            && len != n
        {
            return Err(Error::IncompleteDownload {
                export_id: job.export_id.clone(),
                received: len,
                expected: n,
            });
        }
        if let Some(sum) = &job.file_checksum {
            let want = sum
                .strip_prefix("sha256:")
                .unwrap_or(sum)
                .to_ascii_lowercase();
            if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
                // Not a checksum this client can verify: the file is kept (it may well be
                // right), but it is not handed on unverified.
                return Err(Error::decode(
                    &ep,
                    format!(
                        "fileChecksum {:?} of export {} is not sha256:<64 hex digits>; the file cannot be verified",
                        sum.chars().take(80).collect::<String>(),
                        job.export_id
                    ),
                ));
            }
            let got = sha256_file(dest).await?;
            if got != want {
                let _ = tokio::fs::remove_file(dest).await;
                return Err(Error::ChecksumMismatch {
                    export_id: job.export_id.clone(),
                    expected: sum.clone(),
                    actual: format!("sha256:{got}"),
                });
            }
        }
        Ok(len)
    }

    async fn download_once(
        &self,
        ep: &str,
        job: &ExportJob,
        dest: &Path,
        offset: u64,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let v = HeaderValue::from_str(&format!("bytes={offset}-"))
                .map_err(|e| Error::invalid(ep, e.to_string()))?;
            headers.insert(RANGE, v);
        }
        let (resp, _permit) = self.send_raw(ep, headers).await?;
        let status = resp.status();
        let append = match status {
            StatusCode::OK => false,
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(offset) {
                    return Err(Error::decode(
                        ep,
                        format!(
                            "asked for bytes from {offset}, got Content-Range starting at {start:?}"
                        ),
                    ));
                }
                true
            }
            StatusCode::NOT_FOUND => {
                return Err(Error::ExportFileMissing {
                    export_id: job.export_id.clone(),
                });
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // The partial file is not a prefix of this one; start over.
                truncate(dest).await?;
                return Err(Error::IncompleteDownload {
                    export_id: job.export_id.clone(),
                    received: 0,
                    expected: job.file_size.unwrap_or(0),
                });
            }
            s if s.is_server_error() => {
                return Err(Error::HttpStatus {
                    endpoint: ep.to_owned(),
                    status: s.as_u16(),
                    body: String::new(),
                });
            }
            s => {
                return Err(Error::HttpStatus {
                    endpoint: ep.to_owned(),
                    status: s.as_u16(),
                    body: String::new(),
                });
            }
        };
        let mut opts = tokio::fs::OpenOptions::new();
        opts.create(true).write(true);
        if append {
            opts.append(true);
        } else {
            opts.truncate(true);
        }
        let file = opts.open(dest).await.map_err(|e| Error::io(dest, e))?;
        let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
        let mut stream = resp.bytes_stream();
        let result = loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => break Err(cancelled(&job.export_id)),
                n = stream.next() => n,
            };
            match next {
                None => break Ok(()),
                Some(Ok(chunk)) => {
                    if let Err(e) = out.write_all(&chunk).await {
                        break Err(Error::io(dest, e));
                    }
                }
                Some(Err(e)) => break Err(Error::transport(ep, e)),
            }
        };
        // Keep what arrived, so the next attempt resumes after it.
        out.flush().await.map_err(|e| Error::io(dest, e))?;
        result
    }

    /// Runs an export to the end: creates the job (or resumes `existing`), enqueues it
    /// (tolerating "Job already queued" and waiting out a full queue), polls until it
    /// finishes, downloads the file to `dest` with resume and checksum, and counts its size into
    /// today's bulk bytes. To make restarts safe, create the job with
    /// [`Client::create_export`], persist its id, and pass it as `existing`.
    ///
    /// Returns the final job, the file and its size (no file when the job found no records).
    ///
    /// # Errors
    ///
    /// Returns [`Error::JobFailed`] when the job ends Failed or Cancelled,
    /// [`Error::Cancelled`] when `cancel` fires or `max_wait` passes (the job keeps running),
    /// and every error of the steps above.
    pub async fn run_export(
        &self,
        kind: &ExportKind,
        request: &ExportRequest,
        existing: Option<&str>,
        dest: &Path,
        options: &ExportOptions,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, Error> {
        let job = match existing {
            Some(id) => self.export_status(kind, id).await?,
            None => self.create_export(kind, request).await?,
        };
        self.finish_export(kind, job, dest, options, cancel).await
    }

    /// As [`Client::run_export`], from a job whose state the caller knows: the one
    /// [`Client::create_export`] just answered (`Created`) needs no status read before its
    /// enqueue.
    ///
    /// # Errors
    ///
    /// As [`Client::run_export`].
    pub async fn finish_export(
        &self,
        kind: &ExportKind,
        mut job: ExportJob,
        dest: &Path,
        options: &ExportOptions,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, Error> {
        let started = tokio::time::Instant::now();
        let completed_before = job.status == ExportStatus::Completed;
        let id = job.export_id.clone();
        tracing::info!(export_id = %id, status = %job.status, "export job");
        // Several exports of this client may be queued at once (a pipelined bootstrap keeps the
        // queue full), but Marketo processes only two: a job polls only while it holds one of
        // the client's two poll slots, taken in queue order, so the jobs waiting behind cost
        // no status calls. A job that got its slot after waiting reads its status at once.
        let mut slot = None;
        let mut poll_now = false;
        loop {
            match &job.status {
                ExportStatus::Completed => break,
                ExportStatus::Failed | ExportStatus::Cancelled => {
                    return Err(Error::JobFailed {
                        kind: "export",
                        job_id: id,
                        status: job.status.to_string(),
                        message: job.error_msg.clone().unwrap_or_default(),
                    });
                }
                ExportStatus::Created => match self.enqueue_export(kind, &id).await {
                    // Marketo answers an enqueue with the job Queued. One status read at once
                    // (one call per export) lets a job that started and finished straight away
                    // go on without waiting a whole poll interval. The poll slot is taken first,
                    // right after the enqueue, so that slots go in Marketo's queue order.
                    Ok(j) if j.status == ExportStatus::Queued => {
                        if slot.is_none() {
                            slot = Some(self.export_poll_slot(&id, cancel).await?);
                        }
                        job = self.export_status(kind, &id).await?;
                        continue;
                    }
                    Ok(j) => {
                        job = j;
                        continue;
                    }
                    Err(e) if e.disposition() == Disposition::BackOff => {
                        tracing::info!(export_id = %id, error = %e, "export queue full, waiting");
                    }
                    Err(e) => return Err(e),
                },
                _ => {}
            }
            if options.max_wait.is_some_and(|m| started.elapsed() >= m) {
                return Err(Error::Cancelled {
                    what: format!("export {id} still {} after the maximum wait", job.status),
                });
            }
            if slot.is_none()
                && matches!(job.status, ExportStatus::Queued | ExportStatus::Processing)
            {
                slot = Some(match self.inner.export_polls.try_acquire() {
                    Ok(permit) => permit,
                    Err(_) => {
                        let permit = self.export_poll_slot(&id, cancel).await?;
                        poll_now = true;
                        permit
                    }
                });
            }
            if !std::mem::take(&mut poll_now) {
                tokio::select! {
                    _ = cancel.cancelled() => return Err(cancelled(&id)),
                    _ = tokio::time::sleep(options.poll_interval) => {}
                }
            }
            job = self.export_status(kind, &id).await?;
        }
        drop(slot);
        if !completed_before {
            self.inner
                .limiter
                .add_bulk_bytes(job.file_size.unwrap_or(0));
        }
        if job.number_of_records == Some(0) || job.file_size == Some(0) {
            return Ok(ExportOutcome {
                job,
                path: None,
                bytes: 0,
            });
        }
        // A job may report Completed while its file still answers 404 for a while
        // (marketo-api.md section 4): wait a poll interval, re-read the status and try again.
        let attempts = self.inner.config.retry.download_attempts.max(1);
        let mut missing = 0;
        let bytes = loop {
            match self.download_export(kind, &job, dest, cancel).await {
                Err(Error::ExportFileMissing { .. }) if missing + 1 < attempts => {
                    missing += 1;
                    tracing::warn!(export_id = %id, attempt = missing, "completed export file answered 404, waiting");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(cancelled(&id)),
                        _ = tokio::time::sleep(options.poll_interval) => {}
                    }
                    job = self.export_status(kind, &id).await?;
                }
                other => break other?,
            }
        };
        tracing::info!(export_id = %id, bytes, records = job.number_of_records.unwrap_or(0), "export downloaded");
        Ok(ExportOutcome {
            job,
            path: Some(dest.to_owned()),
            bytes,
        })
    }
}

impl Client {
    /// Sends a call about one export job and returns the job it answers with.
    async fn job_call(&self, endpoint: &str, call: Call) -> Result<ExportJob, Error> {
        let env = self.call::<ExportJob>(&call).await?;
        env.one(endpoint, NO_JOB)
    }
}

/// Returns `<kind base>/{id}/{action}.json` for one export job.
fn job_endpoint(kind: &ExportKind, export_id: &str, action: &str) -> Result<String, Error> {
    Ok(format!(
        "{}/{}/{action}.json",
        kind.base()?,
        id_segment(export_id)?
    ))
}

/// The detail of [`Error::Decode`] when a job call answers with no job.
const NO_JOB: &str = "no job in the answer";

fn id_segment(id: &str) -> Result<&str, Error> {
    path_segment(id)
}

fn cancelled(export_id: &str) -> Error {
    Error::Cancelled {
        what: format!("export {export_id} (resume it by id)"),
    }
}

fn content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

async fn file_len(path: &Path) -> Result<u64, Error> {
    Ok(tokio::fs::metadata(path)
        .await
        .map_err(|e| Error::io(path, e))?
        .len())
}

async fn truncate(path: &Path) -> Result<(), Error> {
    tokio::fs::File::create(path)
        .await
        .map(|_| ())
        .map_err(|e| Error::io(path, e))
}

async fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::test_support::*;
    use serde_json::json;
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const FILE: &[u8] = b"id,email\n1,a@x.com\n2,b@x.com\n3,c@x.com\n";

    fn checksum(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    fn job(status: &str, with_file: bool) -> serde_json::Value {
        let mut j = json!({"exportId": "job-1", "format": "CSV", "status": status,
                           "createdAt": "2026-11-20T00:00:00Z"});
        if with_file {
            j["numberOfRecords"] = json!(3);
            j["fileSize"] = json!(FILE.len());
            j["fileChecksum"] = json!(checksum(FILE));
        }
        j
    }

    #[test]
    fn a_lead_list_is_the_export_s_one_filter_under_marketo_s_name() {
        let cases = [
            (LeadList::StaticId(1001), json!({"staticListId": 1001})),
            (
                LeadList::StaticName("Newsletter".into()),
                json!({"staticListName": "Newsletter"}),
            ),
            (LeadList::SmartId(7), json!({"smartListId": 7})),
            (
                LeadList::SmartName("Hot".into()),
                json!({"smartListName": "Hot"}),
            ),
        ];
        for (list, expected) in cases {
            let sent = serde_json::to_value(list.filter()).unwrap();
            assert_eq!(sent, expected, "{list}");
            assert!(sent.get(list.filter_key()).is_some(), "{list}");
            assert_eq!(list.is_smart(), list.filter_key().starts_with("smart"));
        }
        assert_eq!(
            LeadList::StaticName("Newsletter".into()).to_string(),
            "static list \"Newsletter\""
        );
        assert_eq!(LeadList::SmartId(7).to_string(), "smart list 7");
    }

    fn request() -> ExportRequest {
        ExportRequest {
            fields: vec!["id".into(), "email".into()],
            filter: ExportFilter {
                created_at: Some(DateRange {
                    start_at: "2026-11-01T00:00:00Z".parse().unwrap(),
                    end_at: "2026-11-30T23:59:59Z".parse().unwrap(),
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    async fn mount_status_sequence(server: &MockServer, statuses: &[(&str, bool)]) {
        for (i, (s, f)) in statuses.iter().enumerate() {
            let m = Mock::given(method("GET"))
                .and(path("/bulk/v1/leads/export/job-1/status.json"))
                .respond_with(ok(json!([job(s, *f)])))
                .with_priority(i as u8 + 1);
            if i + 1 < statuses.len() {
                m.up_to_n_times(1).mount(server).await;
            } else {
                m.mount(server).await;
            }
        }
    }

    #[test]
    fn status_accepts_both_cancel_spellings_and_lowercase() {
        for s in ["Cancelled", "Canceled", "cancelled"] {
            let st: ExportStatus = serde_json::from_value(json!(s)).unwrap();
            assert_eq!(st, ExportStatus::Cancelled);
        }
        assert_eq!(
            serde_json::from_value::<ExportStatus>(json!("Weird")).unwrap(),
            ExportStatus::Other("Weird".into())
        );
        assert_eq!(content_range_start("bytes 725-999/1000"), Some(725));
    }

    #[tokio::test(start_paused = true)]
    async fn run_export_creates_enqueues_polls_downloads_and_counts_bytes() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/bulk/v1/leads/export/create.json"))
            .and(body_partial_json(json!({"fields": ["id", "email"],
                "filter": {"createdAt": {"startAt": "2026-11-01T00:00:00Z", "endAt": "2026-11-30T23:59:59Z"}}})))
            .respond_with(ok(json!([job("Created", false)])))
            .expect(1)
            .mount(&server)
            .await;
        // Marketo says the job is already queued: that counts as success.
        Mock::given(method("POST"))
            .and(path("/bulk/v1/leads/export/job-1/enqueue.json"))
            .respond_with(fail("1029", "Job already queued"))
            .expect(1)
            .mount(&server)
            .await;
        mount_status_sequence(
            &server,
            &[
                ("Queued", false),
                ("Processing", false),
                ("Completed", true),
            ],
        )
        .await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/export/job-1/file.json"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(FILE, "text/csv"))
            .expect(1)
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("leads.csv");
        let opts = ExportOptions {
            poll_interval: Duration::from_secs(60),
            max_wait: None,
        };
        let out = client
            .run_export(
                &ExportKind::Leads,
                &request(),
                None,
                &dest,
                &opts,
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(out.bytes, FILE.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), FILE);
        assert_eq!(client.usage().bulk_bytes, FILE.len() as u64);
        assert_eq!(out.job.status, ExportStatus::Completed);
    }

    #[tokio::test]
    async fn a_dropped_download_resumes_with_a_range_request() {
        let (server, client) = server_with_identity().await;
        let cut = 12;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/export/job-1/file.json"))
            .and(header("Range", format!("bytes={cut}-").as_str()))
            .respond_with(
                ResponseTemplate::new(206)
                    .insert_header(
                        "Content-Range",
                        format!("bytes {cut}-{}/{}", FILE.len() - 1, FILE.len()).as_str(),
                    )
                    .insert_header("Accept-Ranges", "bytes")
                    .set_body_raw(&FILE[cut..], "text/csv"),
            )
            .with_priority(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/export/job-1/file.json"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(&FILE[..cut], "text/csv"))
            .with_priority(2)
            .expect(1)
            .mount(&server)
            .await;
        let job: ExportJob = serde_json::from_value(job("Completed", true)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.csv");
        let n = client
            .download_export(&ExportKind::Leads, &job, &dest, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(n, FILE.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), FILE);
    }

    #[tokio::test]
    async fn a_checksum_mismatch_is_an_error_and_removes_the_file() {
        let (server, client) = server_with_identity().await;
        let mut bad = FILE.to_vec();
        bad[10] = b'X';
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/export/job-1/file.json"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(bad, "text/csv"))
            .mount(&server)
            .await;
        let job: ExportJob = serde_json::from_value(job("Completed", true)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.csv");
        let err = client
            .download_export(&ExportKind::Leads, &job, &dest, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err:?}");
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn a_malformed_checksum_is_a_decode_error_and_keeps_the_file() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/export/job-1/file.json"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(FILE.to_vec(), "text/csv"))
            .mount(&server)
            .await;
        let mut job: ExportJob = serde_json::from_value(job("Completed", true)).unwrap();
        job.file_checksum = Some("md5:0cc175b9c0f1b6a831c399e269772661".into());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.csv");
        let err = client
            .download_export(&ExportKind::Leads, &job, &dest, &CancellationToken::new())
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        assert!(
            message.contains("/bulk/v1/leads/export/job-1/file.json"),
            "{message}"
        );
        assert!(message.contains("md5:0cc1"), "{message}");
        assert!(message.contains("not sha256"), "{message}");
        assert_eq!(std::fs::read(&dest).unwrap(), FILE);
    }

    #[tokio::test]
    async fn a_missing_file_after_completed_is_its_own_error() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/activities/export/job-1/file.json"))
            .respond_with(ResponseTemplate::new(404).set_body_string("File not found"))
            .mount(&server)
            .await;
        let job: ExportJob = serde_json::from_value(job("Completed", true)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = client
            .download_export(
                &ExportKind::Activities,
                &job,
                &dir.path().join("a.csv"),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ExportFileMissing { .. }), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn enqueue_1029_variants() {
        let (server, client) = server_with_identity().await;
        // Queue full twice, then accepted: backed off and retried.
        Mock::given(method("POST"))
            .and(path("/bulk/v1/leads/export/q-1/enqueue.json"))
            .respond_with(fail("1029", "There are too many jobs in queue"))
            .up_to_n_times(2)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/bulk/v1/leads/export/q-1/enqueue.json"))
            .respond_with(ok(json!([{"exportId": "q-1", "status": "Queued"}])))
            .with_priority(2)
            .mount(&server)
            .await;
        let j = client
            .enqueue_export(&ExportKind::Leads, "q-1")
            .await
            .unwrap();
        assert_eq!(j.status, ExportStatus::Queued);
        // Daily export quota: pause until the day turns, no retry.
        Mock::given(method("POST"))
            .and(path("/bulk/v1/leads/export/q-2/enqueue.json"))
            .respond_with(fail("1029", "Export daily quota 500MB exceeded"))
            .expect(1)
            .mount(&server)
            .await;
        let err = client
            .enqueue_export(&ExportKind::Leads, "q-2")
            .await
            .unwrap_err();
        assert_eq!(err.disposition(), Disposition::PauseUntilDayTurns);
    }

    #[tokio::test]
    async fn activity_exports_send_the_standard_fields_and_type_filter() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/bulk/v1/activities/export/create.json"))
            .and(body_partial_json(json!({"fields": ACTIVITY_FIELDS,
                "filter": {"activityTypeIds": [12, 13]}})))
            .respond_with(ok(json!([{"exportId": "a-1", "status": "Created"}])))
            .expect(1)
            .mount(&server)
            .await;
        let mut req = request();
        req.fields.clear();
        req.filter.activity_type_ids = Some(vec![12, 13]);
        let job = client
            .create_export(&ExportKind::Activities, &req)
            .await
            .unwrap();
        assert_eq!(job.status, ExportStatus::Created);
        req.filter.created_at = None;
        assert!(
            client
                .create_export(&ExportKind::Activities, &req)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn bulk_usage_is_recomputed_from_todays_completed_jobs() {
        let (server, client) = server_with_identity().await;
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/export.json"))
            .and(wiremock::matchers::query_param("status", "completed"))
            .respond_with(ok(json!([
                {"exportId": "a", "status": "Completed", "finishedAt": now, "fileSize": 1000},
                {"exportId": "b", "status": "Completed", "finishedAt": "2020-01-01T00:00:00Z", "fileSize": 5000}
            ])))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/activities/export.json"))
            .respond_with(ok(json!([{"exportId": "c", "status": "Completed", "finishedAt": now, "fileSize": 24}])))
            .mount(&server)
            .await;
        assert_eq!(client.refresh_bulk_usage().await.unwrap(), 1024);
        assert_eq!(client.usage().bulk_bytes, 1024);
    }

    #[tokio::test]
    async fn unsupported_updated_at_filter_is_error_1035() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/bulk/v1/leads/export/create.json"))
            .respond_with(fail(
                "1035",
                "Unsupported filter type for target subscription: updatedAt",
            ))
            .expect(1)
            .mount(&server)
            .await;
        let mut req = request();
        req.filter = ExportFilter {
            updated_at: req.filter.created_at,
            ..Default::default()
        };
        let err = client
            .create_export(&ExportKind::Leads, &req)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::UnsupportedFilter { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_spent_bulk_budget_or_a_long_range_creates_nothing() {
        let server = MockServer::start().await;
        mount_identity(&server, TOKEN).await;
        let mut cfg = config(&server);
        cfg.bulk_mb_budget = 1;
        let client = Client::new(cfg).unwrap();
        let mut req = request();
        req.filter.created_at.as_mut().unwrap().end_at = "2026-12-15T00:00:00Z".parse().unwrap();
        let err = client
            .create_export(&ExportKind::Leads, &req)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("31 days"), "{err}");
        client.add_bulk_bytes(1024 * 1024);
        let err = client
            .create_export(&ExportKind::Leads, &request())
            .await
            .unwrap_err();
        assert_eq!(err.disposition(), Disposition::PauseUntilDayTurns);
        assert!(server.received_requests().await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn resuming_a_failed_job_reports_it_and_cancel_stops_polling() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/export/job-1/status.json"))
            .respond_with(ok(
                json!([{"exportId": "job-1", "status": "Failed", "errorMsg": "boom"}]),
            ))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/export/job-2/status.json"))
            .respond_with(ok(json!([{"exportId": "job-2", "status": "Processing"}])))
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.csv");
        let opts = ExportOptions::default();
        let err = client
            .run_export(
                &ExportKind::Leads,
                &request(),
                Some("job-1"),
                &dest,
                &opts,
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::JobFailed { ref message, .. } if message == "boom"),
            "{err:?}"
        );
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = client
            .run_export(
                &ExportKind::Leads,
                &request(),
                Some("job-2"),
                &dest,
                &opts,
                &cancel,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    }
}
