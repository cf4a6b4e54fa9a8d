//! The CRM-key write-back of bootstrap windows. The CRM keys of one lead window are spooled to
//! disk as Bulk Import files (`id,<CRM key field>`, CSV, each strictly below 10 MB) while the
//! window is applied, so that nothing holds them in memory whatever the window's size; then they
//! are sent by REST (300 a call, Sync Leads `updateOnly` by `id`) up to a threshold, or imported
//! (`lookupField=id`) above it. Each import batch is journalled with its window as soon as
//! Marketo returns its id, so that a restart re-attaches to it instead of importing its file
//! again; a file is deleted once its batch is complete.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::writes::{read_failure_rows, text};
use super::{
    CompanyLink, EndpointError, JobEntry, JobJournal, JobStage, LeadKey, LeadOutcome, LeadWrite,
    Refusal, RestBulkEndpoint, WriteMode,
};
use crate::marketo::bulk_import::{ImportTarget, LeadImportOptions};
use crate::marketo::csv::{
    CsvError, DEFAULT_IMPORT_LIMIT_BYTES, FileFormat, ImportFileWriter, WriteOutcome,
};
use crate::marketo::leads::MAX_BATCH;
use crate::marketo::{Record, RefusalKind};
use crate::model::{Fields, Value};

/// The spool of one window: the CRM keys to write back, in files on disk.
pub struct KeySpool {
    dir: PathBuf,
    stem: String,
    key_field: String,
    writer: Option<ImportFileWriter<BufWriter<File>>>,
    files: Vec<SpoolFile>,
    rows: u64,
    limit: u64,
}

/// One finished spool file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpoolFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its data rows.
    pub rows: u64,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> EndpointError {
    EndpointError::file(format!("write-back file {}: {e}", path.display()))
}

fn csv_error(path: &Path, e: CsvError) -> EndpointError {
    match e {
        CsvError::Write { source } => io_error(path, source),
        other => io_error(path, other),
    }
}

impl KeySpool {
    /// Returns the path of spool file `n` of `stem`.
    fn path(dir: &Path, stem: &str, n: usize) -> PathBuf {
        dir.join(format!("{stem}.{n}.csv"))
    }

    /// Returns the spool files of `stem` on disk, in order (`0, 1, ...` up to the first gap).
    fn existing(dir: &Path, stem: &str) -> Vec<PathBuf> {
        (0..)
            .map(|n| Self::path(dir, stem, n))
            .take_while(|p| p.exists())
            .collect()
    }

    /// Returns an empty spool for `stem` in `dir`, after removing the files an earlier run of the
    /// same window left.
    pub fn create(dir: &Path, stem: &str, key_field: &str) -> KeySpool {
        Self::with_limit(dir, stem, key_field, DEFAULT_IMPORT_LIMIT_BYTES)
    }

    /// As [`KeySpool::create`], with files strictly below `limit` bytes.
    fn with_limit(dir: &Path, stem: &str, key_field: &str, limit: u64) -> KeySpool {
        for stale in Self::existing(dir, stem) {
            let _ = std::fs::remove_file(stale);
        }
        KeySpool {
            dir: dir.to_owned(),
            stem: stem.to_owned(),
            key_field: key_field.to_owned(),
            writer: None,
            files: Vec::new(),
            rows: 0,
            limit,
        }
    }

    /// Returns the rows spooled so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn current_path(&self) -> PathBuf {
        Self::path(&self.dir, &self.stem, self.files.len())
    }

    fn open(&self) -> Result<ImportFileWriter<BufWriter<File>>, EndpointError> {
        let path = self.current_path();
        let file = File::create(&path).map_err(|e| io_error(&path, e))?;
        ImportFileWriter::with_limit(
            BufWriter::new(file),
            vec!["id".to_owned(), self.key_field.clone()],
            FileFormat::Csv,
            self.limit,
        )
        .map_err(|e| csv_error(&path, e))
    }

    fn close(&mut self) -> Result<(), EndpointError> {
        if let Some(writer) = self.writer.take() {
            let path = self.current_path();
            let rows = writer.rows_written();
            writer.finish().map_err(|e| csv_error(&path, e))?;
            self.files.push(SpoolFile { path, rows });
        }
        Ok(())
    }

    /// Appends the CRM key of lead `id`, starting a new file when the current one is full.
    pub fn push(&mut self, id: &str, key: &str) -> Result<(), EndpointError> {
        let mut row = Fields::new();
        row.insert("id".to_owned(), Value::Text(id.to_owned()));
        row.insert(self.key_field.clone(), Value::Text(key.to_owned()));
        loop {
            if self.writer.is_none() {
                self.writer = Some(self.open()?);
            }
            let path = self.current_path();
            let Some(writer) = self.writer.as_mut() else {
                continue;
            };
            match writer.write_row(&row).map_err(|e| csv_error(&path, e))? {
                WriteOutcome::Written => {
                    self.rows += 1;
                    return Ok(());
                }
                WriteOutcome::Full => self.close()?,
            }
        }
    }

    /// Closes the spool and returns its files (none when nothing was spooled).
    fn finish(mut self) -> Result<Vec<SpoolFile>, EndpointError> {
        self.close()?;
        Ok(std::mem::take(&mut self.files))
    }
}

/// Reads a spool file back as `(lead id, CRM key)` batches (the REST path: a small window's
/// keys go back 300 a call), holding one batch at a time.
struct SpoolReader {
    path: PathBuf,
    records: csv::StringRecordsIntoIter<File>,
}

impl SpoolReader {
    /// Opens a spool file.
    fn open(path: &Path) -> Result<SpoolReader, EndpointError> {
        let reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(path)
            .map_err(|e| io_error(path, e))?;
        Ok(SpoolReader {
            path: path.to_owned(),
            records: reader.into_records(),
        })
    }

    /// Returns the next batch of at most `max` rows; empty at the end of the file.
    fn next_batch(&mut self, max: usize) -> Result<Vec<(String, String)>, EndpointError> {
        let mut out = Vec::with_capacity(max.min(1024));
        while out.len() < max {
            let Some(record) = self.records.next() else {
                break;
            };
            let record = record.map_err(|e| io_error(&self.path, e))?;
            if let (Some(id), Some(key)) = (record.get(0), record.get(1)) {
                out.push((id.to_owned(), key.to_owned()));
            }
        }
        Ok(out)
    }
}

/// One window's write-back, as the caller names it.
#[derive(Debug, Clone, Copy)]
pub struct WriteBackJob<'a> {
    /// The caller's name for the jobs of this work (the journal's object).
    pub object: &'a str,
    /// The window whose keys these are.
    pub window: (DateTime<Utc>, DateTime<Utc>),
    /// The lead field holding the CRM key.
    pub key_field: &'a str,
    /// The spool's file name stem (unique to the window's export).
    pub stem: &'a str,
    /// Keys up to which REST is used; above it, Bulk Import.
    pub rest_threshold: usize,
}

/// A CRM key Marketo refused to write to its lead.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRefusal {
    /// The lead id.
    pub lead_id: Option<String>,
    /// The CRM key.
    pub crm_key: Option<String>,
    /// Marketo's refusal.
    pub refusal: Refusal,
}

/// What a write-back did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBackReport {
    /// Keys written.
    pub written: u64,
    /// Keys Marketo refused (counted also when no failures file names them).
    pub failed: u64,
    /// Import batches created.
    pub imports: u64,
    /// Import batches of an earlier run re-attached to.
    pub imports_resumed: u64,
    /// The refused keys that Marketo named.
    pub refused: Vec<KeyRefusal>,
    /// The import batches, completed, for the caller to mark consumed with its window.
    pub batches: Vec<JobEntry>,
}

impl RestBulkEndpoint {
    /// Returns an empty spool for `stem` in the work directory, after removing the files an
    /// earlier run of the same window left.
    pub(super) fn spool(&self, stem: &str, key_field: &str) -> KeySpool {
        KeySpool::create(&self.settings.work_dir, stem, key_field)
    }

    /// Writes a window's spooled keys back: by REST up to the threshold, else by Bulk Import.
    pub(super) async fn write_back(
        &self,
        job: &WriteBackJob<'_>,
        spool: KeySpool,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<WriteBackReport, EndpointError> {
        let rows = spool.rows();
        let files: Vec<PathBuf> = spool.finish()?.into_iter().map(|f| f.path).collect();
        let mut report = WriteBackReport::default();
        if rows == 0 {
            remove_all(&files);
        } else if rows <= job.rest_threshold as u64 {
            for path in &files {
                self.rest_write_back(path, job.key_field, &mut report, cancel)
                    .await?;
                let _ = std::fs::remove_file(path);
            }
        } else {
            info!(
                rows,
                files = files.len(),
                "writing the crm keys back by bulk import"
            );
            self.import_write_back(job, files, Vec::new(), journal, &mut report, cancel)
                .await?;
        }
        Ok(report)
    }

    /// Finishes the write-back of a window that an earlier run left importing: re-attaches to
    /// its journalled batches and imports the spool files no batch names. `None` when no batch
    /// of the window is journalled (the window was not writing back).
    pub(super) async fn resume(
        &self,
        job: &WriteBackJob<'_>,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<Option<WriteBackReport>, EndpointError> {
        let recorded: Vec<JobEntry> = journal
            .unfinished(true, "leads", job.object)
            .await?
            .into_iter()
            .filter(|j| j.window == Some(job.window))
            .collect();
        if recorded.is_empty() {
            return Ok(None);
        }
        let files = KeySpool::existing(&self.settings.work_dir, job.stem);
        let mut report = WriteBackReport::default();
        self.import_write_back(job, files, recorded, journal, &mut report, cancel)
            .await?;
        Ok(Some(report))
    }

    /// Sends the keys of a spool file by REST (`updateOnly` by `id`), 300 a call.
    async fn rest_write_back(
        &self,
        path: &Path,
        key_field: &str,
        report: &mut WriteBackReport,
        cancel: &CancellationToken,
    ) -> Result<(), EndpointError> {
        let mut reader = SpoolReader::open(path)?;
        loop {
            let batch = reader.next_batch(MAX_BATCH)?;
            if batch.is_empty() {
                return Ok(());
            }
            let writes: Vec<LeadWrite> = batch
                .iter()
                .map(|(id, key)| LeadWrite {
                    record: key_record(id, key_field, key),
                    company: CompanyLink::Known(None),
                })
                .collect();
            let outcomes = self
                .write(&writes, WriteMode::UpdateOnly, &LeadKey::Id, cancel)
                .await?;
            for ((id, key), outcome) in batch.into_iter().zip(outcomes) {
                match outcome {
                    LeadOutcome::Refused(refusal) => {
                        warn!(lead = %id, code = %refusal.code, "marketo skipped the crm key write-back");
                        report.failed += 1;
                        report.refused.push(KeyRefusal {
                            lead_id: Some(id),
                            crm_key: Some(key),
                            refusal,
                        });
                    }
                    LeadOutcome::Created { .. } | LeadOutcome::Updated { .. } => {
                        report.written += 1;
                    }
                }
            }
        }
    }

    /// Re-attaches to the `recorded` batches, then imports each file no batch names, journalling
    /// each batch before waiting for it.
    async fn import_write_back(
        &self,
        job: &WriteBackJob<'_>,
        files: Vec<PathBuf>,
        recorded: Vec<JobEntry>,
        journal: &dyn JobJournal,
        report: &mut WriteBackReport,
        cancel: &CancellationToken,
    ) -> Result<(), EndpointError> {
        for entry in recorded {
            report.imports_resumed += 1;
            info!(batch_id = %entry.id, "re-attaching to a write-back import");
            let done = self
                .wait_write_back(job, entry, journal, report, cancel)
                .await?;
            report.batches.push(done);
        }
        for path in files {
            if report
                .batches
                .iter()
                .any(|j| j.file.as_deref() == Some(&*path))
            {
                continue;
            }
            let options = LeadImportOptions {
                lookup_field: Some("id".into()),
                ..LeadImportOptions::default()
            };
            let created = self
                .client
                .import_file(&ImportTarget::Leads, &path, FileFormat::Csv, &options)
                .await?;
            report.imports += 1;
            let entry = JobEntry {
                import: true,
                id: created.batch_id.to_string(),
                kind: "leads".into(),
                object: job.object.to_owned(),
                window: Some(job.window),
                stage: JobStage::Created,
                bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                file: Some(path),
            };
            journal.record(&entry).await?;
            let done = self
                .wait_write_back(job, entry, journal, report, cancel)
                .await?;
            report.batches.push(done);
        }
        Ok(())
    }

    /// Waits for one write-back batch, counts its rows, collects the rows Marketo refused,
    /// journals it completed (or failed) and deletes its file.
    async fn wait_write_back(
        &self,
        job: &WriteBackJob<'_>,
        mut entry: JobEntry,
        journal: &dyn JobJournal,
        report: &mut WriteBackReport,
        cancel: &CancellationToken,
    ) -> Result<JobEntry, EndpointError> {
        if entry.stage == JobStage::Completed {
            return Ok(entry);
        }
        let batch_id: i64 = entry.id.parse().map_err(|_| {
            EndpointError::file(format!(
                "write-back import `{}`: the journalled batch id is not a number",
                entry.id
            ))
        })?;
        let done = match self
            .wait_import(&ImportTarget::Leads, batch_id, cancel)
            .await
        {
            Ok(done) => done,
            Err(e @ EndpointError::Marketo(crate::marketo::Error::JobFailed { .. })) => {
                entry.stage = JobStage::Failed;
                journal.record(&entry).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        report.written += done.num_of_leads_processed.unwrap_or(0);
        let failed = done.num_of_rows_failed.unwrap_or(0);
        if failed > 0 {
            report.failed += failed;
            let failures = self
                .settings
                .work_dir
                .join(format!("import-{batch_id}.failures.csv"));
            if self
                .client
                .import_failures(&ImportTarget::Leads, batch_id, &failures)
                .await?
            {
                report
                    .refused
                    .extend(refused_rows(&failures, job.key_field, batch_id));
                let _ = std::fs::remove_file(&failures);
            }
        }
        entry.stage = JobStage::Completed;
        journal.record(&entry).await?;
        if let Some(file) = &entry.file {
            let _ = std::fs::remove_file(file);
        }
        Ok(entry)
    }
}

/// Returns the Sync Leads record writing `key` into lead `id`'s `key_field`.
fn key_record(id: &str, key_field: &str, key: &str) -> Record {
    let mut r = Record::new();
    match id.parse::<i64>() {
        Ok(n) => r.insert("id".into(), serde_json::json!(n)),
        Err(_) => r.insert("id".into(), serde_json::json!(id)),
    };
    r.insert(key_field.to_owned(), serde_json::json!(key));
    r
}

/// Returns the refusals of a write-back import's failures file (`id`, the key column and
/// Marketo's reason); logs the first few rows, then a count.
fn refused_rows(path: &Path, key_field: &str, batch_id: i64) -> Vec<KeyRefusal> {
    let rows = read_failure_rows(path, FileFormat::Csv);
    for (fields, reason) in rows.iter().take(10) {
        warn!(batch_id, row = ?fields, %reason, "marketo refused a crm key write-back");
    }
    if rows.len() > 10 {
        warn!(
            batch_id,
            refused = rows.len(),
            "marketo refused crm key write-backs"
        );
    }
    rows.into_iter()
        .map(|(fields, reason)| KeyRefusal {
            lead_id: text(fields.get("id")),
            crm_key: text(fields.get(key_field)),
            refusal: Refusal::import(reason, RefusalKind::Other),
        })
        .collect()
}

fn remove_all(files: &[PathBuf]) {
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_writes_id_and_key_files_that_read_back_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = KeySpool::create(dir.path(), "42.writeback", "crmContactId");
        for i in 0..7 {
            spool.push(&i.to_string(), &format!("c-{i}")).unwrap();
        }
        assert_eq!(spool.rows(), 7);
        let files = spool.finish().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].rows, 7);
        let text = std::fs::read_to_string(&files[0].path).unwrap();
        assert!(text.starts_with("id,crmContactId\r\n0,c-0\r\n"), "{text}");
        let mut reader = SpoolReader::open(&files[0].path).unwrap();
        let mut batches = Vec::new();
        loop {
            let b = reader.next_batch(3).unwrap();
            if b.is_empty() {
                break;
            }
            batches.push(b);
        }
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 1]
        );
        assert_eq!(batches[2][0], ("6".to_owned(), "c-6".to_owned()));
        assert_eq!(
            KeySpool::existing(dir.path(), "42.writeback"),
            vec![files[0].path.clone()]
        );
        // A new spool of the same window starts from nothing.
        let again = KeySpool::create(dir.path(), "42.writeback", "crmContactId");
        assert!(KeySpool::existing(dir.path(), "42.writeback").is_empty());
        assert!(again.finish().unwrap().is_empty());
    }

    #[test]
    fn a_full_file_continues_in_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        // Rows of 18 bytes (with CRLF) in files below 1,000 bytes (a 17-byte header): 54 a file.
        let mut spool = KeySpool::with_limit(dir.path(), "7.writeback", "crmContactId", 1_000);
        let n = 600u64;
        for i in 0..n {
            spool
                .push(&(10_000_000 + i).to_string(), &(1_000_000 + i).to_string())
                .unwrap();
        }
        let files = spool.finish().unwrap();
        assert_eq!(files.len(), 12, "{files:?}");
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), n);
        for f in &files {
            let len = std::fs::metadata(&f.path).unwrap().len();
            assert!(len < 1_000, "{len}");
        }
        assert_eq!(
            KeySpool::existing(dir.path(), "7.writeback"),
            files.iter().map(|f| f.path.clone()).collect::<Vec<_>>()
        );
        let mut read = 0;
        let mut last = None;
        for f in &files {
            let mut reader = SpoolReader::open(&f.path).unwrap();
            loop {
                let b = reader.next_batch(300).unwrap();
                if b.is_empty() {
                    break;
                }
                read += b.len();
                last = b.last().cloned();
            }
        }
        assert_eq!(read as u64, n);
        assert_eq!(
            last,
            Some((
                (10_000_000 + n - 1).to_string(),
                (1_000_000 + n - 1).to_string()
            ))
        );
    }
}
