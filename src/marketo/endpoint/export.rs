//! Exports: journalled jobs (created, recorded, enqueued, polled, downloaded with checksum,
//! resumed after a restart) and their rows streamed in bounded batches.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{EndpointError, JobEntry, JobJournal, JobStage, RestBulkEndpoint};
use crate::marketo::bulk_extract::{
    DateRange, ExportFilter, ExportJob, ExportKind, ExportOptions, ExportOutcome, ExportRequest,
    LeadList,
};
use crate::marketo::csv::{
    ActivityReader, CsvError, ExportReader, FileFormat, ReaderTask, spawn_file_reader,
};
use crate::marketo::{Disposition, Error};
use crate::model::{Fields, ObjectSchema};

pub use crate::marketo::csv::{ActivityRow, ExportRow};

/// Rows read per batch of [`RestBulkEndpoint::export_changed_leads`].
const GATHER_BATCH: usize = 500;

/// What an export window extracts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportSubject {
    /// The leads created in the window, with these fields.
    CreatedLeads {
        /// REST field names.
        fields: Vec<String>,
    },
    /// The members of one list, with these fields, whatever the window: the list is the
    /// export's one lead filter (the window only names the job in the journal).
    ListedLeads {
        /// REST field names.
        fields: Vec<String>,
        /// The list.
        list: LeadList,
    },
    /// The activities of these types created in the window, with these fields.
    Activities {
        /// Activity type ids.
        type_ids: Vec<i64>,
        /// Activity export field names.
        fields: Vec<String>,
    },
}

impl ExportSubject {
    fn kind(&self) -> ExportKind {
        match self {
            ExportSubject::CreatedLeads { .. } | ExportSubject::ListedLeads { .. } => {
                ExportKind::Leads
            }
            ExportSubject::Activities { .. } => ExportKind::Activities,
        }
    }

    fn kind_name(&self) -> &'static str {
        kind_name(&self.kind())
    }

    fn request(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> ExportRequest {
        let range = DateRange {
            start_at: start,
            end_at: end,
        };
        let (fields, filter) = match self {
            ExportSubject::CreatedLeads { fields } => (
                fields.clone(),
                ExportFilter {
                    created_at: Some(range),
                    ..ExportFilter::default()
                },
            ),
            ExportSubject::ListedLeads { fields, list } => (fields.clone(), list.filter()),
            ExportSubject::Activities { type_ids, fields } => (
                fields.clone(),
                ExportFilter {
                    created_at: Some(range),
                    activity_type_ids: Some(type_ids.clone()),
                    ..ExportFilter::default()
                },
            ),
        };
        ExportRequest {
            fields,
            format: Some("CSV".into()),
            column_header_names: None,
            filter,
        }
    }
}

/// A finished export of one window, its file downloaded and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedWindow {
    /// The journalled job, now [`JobStage::Completed`].
    pub job: JobEntry,
    /// The file (none when the export found nothing).
    pub path: Option<PathBuf>,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Jobs created for the window by this call.
    pub created: u64,
    /// Jobs of an earlier run re-attached to.
    pub resumed: u64,
    /// Whether an earlier run had completed the job already (its bytes were counted then).
    pub completed_before: bool,
}

impl ExportedWindow {
    /// Streams the file's rows (typed by `schema` when given) in batches of `batch_rows`.
    pub fn rows(
        &self,
        schema: Option<ObjectSchema>,
        batch_rows: usize,
        cancel: &CancellationToken,
    ) -> Option<RowStream<ExportRow>> {
        let path = self.path.clone()?;
        let (rx, task) = spawn_file_reader(
            path,
            move |f| {
                let reader = ExportReader::new(f, FileFormat::Csv)?;
                Ok(match &schema {
                    Some(s) => reader.typed(s),
                    None => reader,
                })
            },
            batch_rows,
            cancel.clone(),
        );
        Some(RowStream { rx, task })
    }

    /// Streams the file's activity rows in batches of `batch_rows`.
    pub fn activities(
        &self,
        batch_rows: usize,
        cancel: &CancellationToken,
    ) -> Option<RowStream<ActivityRow>> {
        let path = self.path.clone()?;
        let (rx, task) = spawn_file_reader(
            path,
            |f| ActivityReader::new(f, FileFormat::Csv),
            batch_rows,
            cancel.clone(),
        );
        Some(RowStream { rx, task })
    }
}

/// Rows of an export file, read on a blocking thread, at most two batches held at a time.
pub struct RowStream<T> {
    rx: mpsc::Receiver<Vec<Result<T, CsvError>>>,
    task: ReaderTask,
}

impl<T> RowStream<T> {
    /// Returns the next batch (a row that cannot be read is an `Err` naming it), or `None` at
    /// the end.
    pub async fn next_batch(&mut self) -> Option<Vec<Result<T, String>>> {
        let batch = self.rx.recv().await?;
        Some(
            batch
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect(),
        )
    }

    /// Waits for the reader.
    ///
    /// # Errors
    ///
    /// Returns [`EndpointError::Cancelled`] when reading was cancelled and
    /// [`EndpointError::File`] when the file could not be read.
    pub async fn finish(self) -> Result<(), EndpointError> {
        drop(self.rx);
        match self.task.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(CsvError::Cancelled)) => Err(EndpointError::Cancelled),
            Ok(Err(e)) => Err(EndpointError::file(format!(
                "the export file cannot be read: {e}"
            ))),
            Err(e) => Err(EndpointError::file(format!(
                "the export reader stopped: {e}"
            ))),
        }
    }
}

/// Returns the journal's name of an export kind.
fn kind_name(kind: &ExportKind) -> &'static str {
    match kind {
        ExportKind::Activities => "activities",
        _ => "leads",
    }
}

fn in_window(job: &JobEntry, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
    job.window == Some((start, end))
}

impl RestBulkEndpoint {
    fn export_options(&self) -> ExportOptions {
        ExportOptions {
            poll_interval: self.settings.poll,
            max_wait: self.settings.export_max_wait,
        }
    }

    /// Creates an export job and records it, before it is enqueued.
    async fn create_job(
        &self,
        kind: &ExportKind,
        request: &ExportRequest,
        object: &str,
        window: (DateTime<Utc>, DateTime<Utc>),
        file: Option<PathBuf>,
        journal: &dyn JobJournal,
    ) -> Result<(JobEntry, ExportJob), EndpointError> {
        let created = self.client.create_export(kind, request).await?;
        let job = JobEntry {
            import: false,
            id: created.export_id.clone(),
            kind: kind_name(kind).to_owned(),
            object: object.to_owned(),
            window: Some(window),
            stage: JobStage::Created,
            bytes: 0,
            file: file.map(|f| f.join(format!("{}.csv", created.export_id))),
        };
        // Recorded before it is enqueued, so a restart resumes it.
        journal.record(&job).await?;
        Ok((job, created))
    }

    /// Runs a job to its file: `fresh` is the job as its create answered it (no status read
    /// is needed before the enqueue); without it (a journalled job) its status is read first.
    async fn run_job(
        &self,
        kind: &ExportKind,
        request: &ExportRequest,
        (job, fresh): (&JobEntry, Option<ExportJob>),
        dest: &std::path::Path,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, EndpointError> {
        let options = self.export_options();
        let run = match fresh {
            Some(created) => {
                self.client
                    .finish_export(kind, created, dest, &options, cancel)
                    .await
            }
            None => {
                self.client
                    .run_export(kind, request, Some(&job.id), dest, &options, cancel)
                    .await
            }
        };
        match run {
            Err(Error::Cancelled { .. }) if cancel.is_cancelled() => Err(EndpointError::Cancelled),
            other => Ok(other?),
        }
    }

    pub(super) async fn changed_leads(
        &self,
        fields: &[String],
        (since, until): (DateTime<Utc>, DateTime<Utc>),
        object: &str,
        journal: &dyn JobJournal,
        sink: &mut (dyn FnMut(Result<Fields, String>) + Send),
        cancel: &CancellationToken,
    ) -> Result<u64, EndpointError> {
        let mut resumed = journal
            .unfinished(false, "leads", object)
            .await?
            .into_iter()
            .next();
        let mut start = resumed
            .as_ref()
            .and_then(|j| j.window)
            .map_or(since, |(s, _)| s);
        let mut bytes = 0;
        while start < until {
            let end =
                (start + chrono::Duration::days(31) - chrono::Duration::seconds(1)).min(until);
            let request = ExportRequest {
                fields: fields.to_vec(),
                format: Some("CSV".into()),
                column_header_names: None,
                filter: ExportFilter {
                    updated_at: Some(DateRange {
                        start_at: start,
                        end_at: end,
                    }),
                    ..ExportFilter::default()
                },
            };
            let (job, fresh) = match resumed.take() {
                Some(job) => (job, None),
                None => {
                    let (job, created) = self
                        .create_job(
                            &ExportKind::Leads,
                            &request,
                            object,
                            (start, end),
                            None,
                            journal,
                        )
                        .await?;
                    (job, Some(created))
                }
            };
            let dest = self
                .settings
                .work_dir
                .join(format!("marketo-sync-leads-{}.csv", job.id));
            let outcome = self
                .run_job(&ExportKind::Leads, &request, (&job, fresh), &dest, cancel)
                .await?;
            bytes += outcome.bytes;
            if let Some(path) = outcome.path.clone() {
                let window = ExportedWindow {
                    job: job.clone(),
                    path: Some(path.clone()),
                    bytes: outcome.bytes,
                    created: 0,
                    resumed: 0,
                    completed_before: false,
                };
                if let Some(mut rows) = window.rows(None, GATHER_BATCH, cancel) {
                    while let Some(batch) = rows.next_batch().await {
                        for row in batch {
                            sink(row.map(|r| r.fields));
                        }
                    }
                    rows.finish().await.map_err(|e| match e {
                        EndpointError::File { what } => {
                            EndpointError::file(format!("export {}: {what}", job.id))
                        }
                        other => other,
                    })?;
                }
                let _ = std::fs::remove_file(&path);
            }
            journal
                .record(&JobEntry {
                    stage: JobStage::Consumed,
                    bytes: outcome.bytes,
                    ..job
                })
                .await?;
            start = end + chrono::Duration::seconds(1);
        }
        Ok(bytes)
    }

    pub(super) async fn window(
        &self,
        subject: &ExportSubject,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
        object: &str,
        max_attempts: u32,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<ExportedWindow, EndpointError> {
        let kind = subject.kind();
        let request = subject.request(start, end);
        let mut created = 0;
        let mut resumed_count = 0;
        let mut attempt = 1;
        loop {
            let existing = journal
                .unfinished(false, subject.kind_name(), object)
                .await?
                .into_iter()
                .find(|j| in_window(j, start, end));
            let resumed = existing.is_some();
            let (mut job, fresh) = match existing {
                Some(job) => {
                    resumed_count += 1;
                    tracing::info!(export_id = %job.id, object, "re-attaching to an unfinished export");
                    (job, None)
                }
                None => {
                    let (job, created_job) = self
                        .create_job(
                            &kind,
                            &request,
                            object,
                            (start, end),
                            Some(self.settings.work_dir.clone()),
                            journal,
                        )
                        .await?;
                    created += 1;
                    (job, Some(created_job))
                }
            };
            let dest = job
                .file
                .clone()
                .unwrap_or_else(|| self.settings.work_dir.join(format!("{}.csv", job.id)));
            let outcome = match self
                .run_job(&kind, &request, (&job, fresh), &dest, cancel)
                .await
            {
                Ok(o) => o,
                Err(EndpointError::Marketo(e))
                    if attempt < max_attempts
                        && (matches!(
                            e,
                            Error::JobFailed { .. } | Error::ExportFileMissing { .. }
                        ) || (resumed && e.disposition() == Disposition::FailCall)) =>
                {
                    // The job cannot be used any more (failed, its file gone, or unknown to
                    // Marketo after its 7-day retention): mark it and pay for a new one.
                    job.stage = JobStage::Failed;
                    journal.record(&job).await?;
                    tracing::warn!(export_id = %job.id, error = %e, "export job unusable; creating a new one");
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let completed_before = job.stage == JobStage::Completed;
            job.stage = JobStage::Completed;
            job.bytes = outcome.bytes;
            journal.record(&job).await?;
            return Ok(ExportedWindow {
                job,
                path: outcome.path,
                bytes: outcome.bytes,
                created,
                resumed: resumed_count,
                completed_before,
            });
        }
    }
}
