//! The CRM-key write-back of the bootstrap's lead phase. The CRM keys of the leads it creates are
//! spooled to disk as Bulk Import files (`id,<CRM key field>`, CSV, each strictly below 10 MB)
//! while the windows are applied, so that nothing holds them in memory whatever their number;
//! one spool serves all the windows of a phase. A file that reaches the size limit is imported
//! (`lookupField=id`) once the window that filled it is committed; what is left at the end of the
//! phase (or at a pause) is sent by REST (300 a call, Sync Leads `updateOnly` by `id`) up to a
//! threshold of keys, or imported above it. So many windows cost one write-back instead of one
//! each (issue 15).
//!
//! Durability: at each window commit the caller [checkpoints](KeySpool::checkpoint) the spool
//! (the open file closed, synced to disk) and stores the returned [`SpoolMark`] (the spool's
//! stem, the open file's number and its length in bytes and rows) in the same commit as the
//! window. A run that starts again [re-opens](KeySpool::reopen) the spool from the stored mark:
//! the open file is cut back to the committed length (rows of a window that was not committed
//! go, and that window is applied again), later files are removed, and earlier files (full
//! ones, committed) are still to import. A file is only deleted once its keys are written back
//! (its import batch complete, or its REST calls made); a marked file that is missing was
//! therefore written back (the caller checks that a journalled import batch names it: files sent
//! by REST are deleted only after the emptied spool's mark is committed), and the spool goes on
//! with the next file. Each import batch is
//! journalled as soon as Marketo returns its id, so that a restart re-attaches to it instead of
//! importing its file again. A crash between the write-back and the deletion of its file sends
//! the same keys again: the same CRM key written to the same lead, which changes nothing.

use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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

/// The spool of a phase: the CRM keys to write back, in numbered files on disk
/// (`<stem>.<n>.csv`). Files below the open one are full and wait for their import.
pub struct KeySpool {
    dir: PathBuf,
    stem: String,
    key_field: String,
    writer: Option<ImportFileWriter<BufWriter<File>>>,
    /// The number of the open file (the one rows go to).
    file: u64,
    /// Bytes and data rows of the open file (as of its last close while no writer is open).
    bytes: u64,
    file_rows: u64,
    /// The full files, in order.
    full: Vec<SpoolFile>,
    limit: u64,
}

/// Where a spool stands at a commit: stored with the commit, it says which keys are committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolMark {
    /// The spool's file name stem.
    pub stem: String,
    /// The number of the open file.
    pub file: u64,
    /// The open file's committed length in bytes (0: not started).
    pub bytes: u64,
    /// The open file's committed data rows.
    pub rows: u64,
}

/// One finished spool file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpoolFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its data rows (0 when unknown: a full file found again by a restart).
    pub rows: u64,
}

/// Which spooled keys a write-back sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteBackScope {
    /// Only the files that reached the size limit, by Bulk Import.
    Full,
    /// Every spooled key: by REST up to the threshold, else by Bulk Import.
    All,
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

impl SpoolMark {
    /// Returns the path of the marked (open) file in `dir`.
    pub fn path(&self, dir: &Path) -> PathBuf {
        KeySpool::path(dir, &self.stem, self.file)
    }
}

impl KeySpool {
    /// Returns the path of spool file `n` of `stem`.
    fn path(dir: &Path, stem: &str, n: u64) -> PathBuf {
        dir.join(format!("{stem}.{n}.csv"))
    }

    /// Returns the spool files of `stem` on disk with their numbers, in order.
    fn existing(dir: &Path, stem: &str) -> Vec<(u64, PathBuf)> {
        let prefix = format!("{stem}.");
        let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let n = name.strip_prefix(&prefix)?.strip_suffix(".csv")?;
                let n: u64 = n.parse().ok()?;
                Some((n, entry.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// Returns an empty spool for `stem` in `dir`, after removing the files an earlier,
    /// uncommitted spool of the same stem left.
    pub fn create(dir: &Path, stem: &str, key_field: &str) -> KeySpool {
        Self::with_limit(dir, stem, key_field, DEFAULT_IMPORT_LIMIT_BYTES)
    }

    /// As [`KeySpool::create`], with files strictly below `limit` bytes.
    fn with_limit(dir: &Path, stem: &str, key_field: &str, limit: u64) -> KeySpool {
        for (_, stale) in Self::existing(dir, stem) {
            let _ = std::fs::remove_file(stale);
        }
        KeySpool {
            dir: dir.to_owned(),
            stem: stem.to_owned(),
            key_field: key_field.to_owned(),
            writer: None,
            file: 0,
            bytes: 0,
            file_rows: 0,
            full: Vec::new(),
            limit,
        }
    }

    /// Re-opens the spool `mark` names as it was committed: the open file cut back to the
    /// marked length (or, when it is gone, written back: the spool goes on with the next file),
    /// later files removed, earlier ones kept as full files still to write back.
    ///
    /// # Errors
    ///
    /// Returns [`EndpointError::File`] when the open file cannot be cut back.
    pub fn reopen(
        dir: &Path,
        mark: &SpoolMark,
        key_field: &str,
    ) -> Result<KeySpool, EndpointError> {
        Self::reopen_with_limit(dir, mark, key_field, DEFAULT_IMPORT_LIMIT_BYTES)
    }

    fn reopen_with_limit(
        dir: &Path,
        mark: &SpoolMark,
        key_field: &str,
        limit: u64,
    ) -> Result<KeySpool, EndpointError> {
        let mut spool = KeySpool {
            dir: dir.to_owned(),
            stem: mark.stem.clone(),
            key_field: key_field.to_owned(),
            writer: None,
            file: mark.file,
            bytes: 0,
            file_rows: 0,
            full: Vec::new(),
            limit,
        };
        let mut open_found = false;
        for (n, path) in Self::existing(dir, &mark.stem) {
            if n < mark.file {
                spool.full.push(SpoolFile { path, rows: 0 });
            } else if n > mark.file || mark.rows == 0 {
                // Rows of a window that was not committed.
                std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
            } else {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_error(&path, e))?;
                let len = file.metadata().map_err(|e| io_error(&path, e))?.len();
                if len < mark.bytes {
                    return Err(io_error(
                        &path,
                        format!("holds {len} bytes, fewer than the {} committed", mark.bytes),
                    ));
                }
                file.set_len(mark.bytes).map_err(|e| io_error(&path, e))?;
                file.sync_all().map_err(|e| io_error(&path, e))?;
                open_found = true;
            }
        }
        if open_found {
            spool.bytes = mark.bytes;
            spool.file_rows = mark.rows;
        } else if mark.rows > 0 {
            // Written back before the mark could say so.
            spool.file += 1;
        }
        Ok(spool)
    }

    /// Returns the rows spooled in the open file.
    pub fn rows(&self) -> u64 {
        self.file_rows
    }

    /// Returns true when no key waits: no full file, nothing in the open one.
    pub fn is_empty(&self) -> bool {
        self.full.is_empty() && self.file_rows == 0
    }

    /// Returns true when a file reached the size limit and waits for its import.
    pub fn has_full(&self) -> bool {
        !self.full.is_empty()
    }

    fn current_path(&self) -> PathBuf {
        Self::path(&self.dir, &self.stem, self.file)
    }

    fn open(&self) -> Result<ImportFileWriter<BufWriter<File>>, EndpointError> {
        let path = self.current_path();
        let columns = vec!["id".to_owned(), self.key_field.clone()];
        if self.bytes > 0 {
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| io_error(&path, e))?;
            return ImportFileWriter::continuing(
                BufWriter::new(file),
                columns,
                FileFormat::Csv,
                self.limit,
                (self.bytes, self.file_rows),
            )
            .map_err(|e| csv_error(&path, e));
        }
        let file = File::create(&path).map_err(|e| io_error(&path, e))?;
        ImportFileWriter::with_limit(BufWriter::new(file), columns, FileFormat::Csv, self.limit)
            .map_err(|e| csv_error(&path, e))
    }

    /// Closes the open file's writer, if any, and syncs the file to disk.
    fn close(&mut self) -> Result<(), EndpointError> {
        if let Some(writer) = self.writer.take() {
            let path = self.current_path();
            self.bytes = writer.bytes_written();
            self.file_rows = writer.rows_written();
            let file = writer
                .finish()
                .map_err(|e| csv_error(&path, e))?
                .into_inner()
                .map_err(|e| io_error(&path, e.error()))?;
            file.sync_all().map_err(|e| io_error(&path, e))?;
        }
        Ok(())
    }

    /// Closes the open file as a full one and moves on to the next.
    fn roll(&mut self) -> Result<(), EndpointError> {
        self.close()?;
        self.full.push(SpoolFile {
            path: self.current_path(),
            rows: self.file_rows,
        });
        self.file += 1;
        self.bytes = 0;
        self.file_rows = 0;
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
                    self.file_rows = writer.rows_written();
                    return Ok(());
                }
                WriteOutcome::Full => self.roll()?,
            }
        }
    }

    /// Closes and syncs the open file (the next push re-opens it) and returns the mark to
    /// commit with the window whose keys it now holds.
    ///
    /// # Errors
    ///
    /// Returns [`EndpointError::File`] when the file cannot be flushed or synced.
    pub fn checkpoint(&mut self) -> Result<SpoolMark, EndpointError> {
        self.close()?;
        // A new file's directory entry too.
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(self.mark())
    }

    /// Returns the mark of the spool as it stands on disk (after [`KeySpool::checkpoint`]).
    pub fn mark(&self) -> SpoolMark {
        SpoolMark {
            stem: self.stem.clone(),
            file: self.file,
            bytes: self.bytes,
            rows: self.file_rows,
        }
    }

    /// Takes the full files out of the spool, to write back.
    fn take_full(&mut self) -> Vec<SpoolFile> {
        std::mem::take(&mut self.full)
    }

    /// Closes the open file and takes every file out of the spool, to write back; the spool
    /// goes on with the next file.
    fn take_all(&mut self) -> Result<Vec<SpoolFile>, EndpointError> {
        self.close()?;
        let mut files = self.take_full();
        let path = self.current_path();
        if self.file_rows > 0 {
            files.push(SpoolFile {
                path,
                rows: self.file_rows,
            });
        } else {
            let _ = std::fs::remove_file(&path);
        }
        self.file += 1;
        self.bytes = 0;
        self.file_rows = 0;
        Ok(files)
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

/// A write-back, as the caller names it.
#[derive(Debug, Clone, Copy)]
pub struct WriteBackJob<'a> {
    /// The caller's name for the jobs of this work (the journal's object).
    pub object: &'a str,
    /// The range of the windows whose keys these are (journalled with each import batch).
    pub window: (DateTime<Utc>, DateTime<Utc>),
    /// The lead field holding the CRM key.
    pub key_field: &'a str,
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
    /// The import batches, completed, for the caller to mark consumed.
    pub batches: Vec<JobEntry>,
    /// The files sent by REST, for the caller to delete once it committed the spool's new mark
    /// (until then a restart sends them again rather than losing them).
    pub sent: Vec<PathBuf>,
}

impl RestBulkEndpoint {
    /// Returns the spool `mark` names as it was committed ([`KeySpool::reopen`]), or a new
    /// empty spool `stem` in the work directory.
    pub(super) fn spool(
        &self,
        stem: &str,
        key_field: &str,
        mark: Option<&SpoolMark>,
    ) -> Result<KeySpool, EndpointError> {
        match mark {
            Some(mark) => KeySpool::reopen(&self.settings.work_dir, mark, key_field),
            None => Ok(KeySpool::create(&self.settings.work_dir, stem, key_field)),
        }
    }

    /// Writes spooled keys back ([`WriteBackScope`]): the full files by Bulk Import; with
    /// [`WriteBackScope::All`] every key, by REST up to the threshold (and no full file), else
    /// by Bulk Import. Each file is deleted once written back.
    pub(super) async fn write_back(
        &self,
        job: &WriteBackJob<'_>,
        spool: &mut KeySpool,
        scope: WriteBackScope,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<WriteBackReport, EndpointError> {
        let any_full = spool.has_full();
        let files = match scope {
            WriteBackScope::Full => spool.take_full(),
            WriteBackScope::All => spool.take_all()?,
        };
        let mut report = WriteBackReport::default();
        if files.is_empty() {
            return Ok(report);
        }
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        if !any_full && rows <= job.rest_threshold as u64 {
            for file in files {
                self.rest_write_back(&file.path, job.key_field, &mut report, cancel)
                    .await?;
                report.sent.push(file.path);
            }
        } else {
            info!(
                files = files.len(),
                "writing the crm keys back by bulk import"
            );
            let paths = files.into_iter().map(|f| f.path).collect();
            self.import_write_back(job, paths, Vec::new(), journal, &mut report, cancel)
                .await?;
        }
        Ok(report)
    }

    /// Re-attaches to the write-back import batches an earlier run left unfinished (any of
    /// `job.object`), waits for them and deletes their files; empty when there are none.
    pub(super) async fn resume(
        &self,
        job: &WriteBackJob<'_>,
        journal: &dyn JobJournal,
        cancel: &CancellationToken,
    ) -> Result<WriteBackReport, EndpointError> {
        let recorded = journal.unfinished(true, "leads", job.object).await?;
        let mut report = WriteBackReport::default();
        self.import_write_back(job, Vec::new(), recorded, journal, &mut report, cancel)
            .await?;
        Ok(report)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path) -> Vec<(String, String)> {
        let mut reader = SpoolReader::open(path).unwrap();
        let mut out = Vec::new();
        loop {
            let b = reader.next_batch(300).unwrap();
            if b.is_empty() {
                return out;
            }
            out.extend(b);
        }
    }

    /// Spools key `c-<i>` for lead `100 + i`, for each `i` of `range`.
    fn push_keys(spool: &mut KeySpool, range: std::ops::Range<u32>) {
        for i in range {
            spool
                .push(&(100 + i).to_string(), &format!("c-{i}"))
                .unwrap();
        }
    }

    fn numbers(dir: &Path, stem: &str) -> Vec<u64> {
        KeySpool::existing(dir, stem)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn a_spool_writes_id_and_key_files_that_read_back_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = KeySpool::create(dir.path(), "42.writeback", "crmContactId");
        for i in 0..7 {
            spool.push(&i.to_string(), &format!("c-{i}")).unwrap();
        }
        assert_eq!(spool.rows(), 7);
        let files = spool.take_all().unwrap();
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
        assert_eq!(numbers(dir.path(), "42.writeback"), vec![0]);
        // After everything was taken the spool goes on in the next file.
        assert!(spool.is_empty());
        assert_eq!(spool.mark().file, 1);
        // A new spool of the same stem starts from nothing.
        let mut again = KeySpool::create(dir.path(), "42.writeback", "crmContactId");
        assert!(numbers(dir.path(), "42.writeback").is_empty());
        assert!(again.take_all().unwrap().is_empty());
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
        assert!(spool.has_full());
        let full = spool.take_full();
        assert_eq!(full.len(), 11, "{full:?}");
        assert!(!spool.has_full());
        let mut files = full;
        files.extend(spool.take_all().unwrap());
        assert_eq!(files.len(), 12, "{files:?}");
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), n);
        for f in &files {
            let len = std::fs::metadata(&f.path).unwrap().len();
            assert!(len < 1_000, "{len}");
        }
        assert_eq!(
            numbers(dir.path(), "7.writeback"),
            (0..12).collect::<Vec<_>>()
        );
        let rows: Vec<(String, String)> = files.iter().flat_map(|f| read_all(&f.path)).collect();
        assert_eq!(rows.len() as u64, n);
        assert_eq!(
            rows.last().cloned(),
            Some((
                (10_000_000 + n - 1).to_string(),
                (1_000_000 + n - 1).to_string()
            ))
        );
    }

    #[test]
    fn a_reopened_spool_keeps_exactly_the_committed_rows_and_goes_on_appending() {
        let dir = tempfile::tempdir().unwrap();
        let stem = "leads.writeback";
        let mut spool = KeySpool::with_limit(dir.path(), stem, "crmContactId", 1_000);
        // A first window of 3 keys, committed.
        push_keys(&mut spool, 0..3);
        let mark = spool.checkpoint().unwrap();
        assert_eq!((mark.file, mark.rows), (0, 3));
        assert_eq!(
            mark.bytes,
            std::fs::metadata(dir.path().join("leads.writeback.0.csv"))
                .unwrap()
                .len()
        );
        // A second window appends to the same file, fills it and rolls over to file 1, then
        // the process dies before its commit.
        push_keys(&mut spool, 3..250);
        assert!(spool.has_full());
        drop(spool);
        assert_eq!(numbers(dir.path(), stem), vec![0, 1, 2]);

        // The restart keeps the 3 committed keys only, and appends after them.
        let mut spool =
            KeySpool::reopen_with_limit(dir.path(), &mark, "crmContactId", 1_000).unwrap();
        assert_eq!(numbers(dir.path(), stem), vec![0]);
        assert!(!spool.has_full());
        assert_eq!(spool.rows(), 3);
        spool.push("900", "c-900").unwrap();
        let mark2 = spool.checkpoint().unwrap();
        assert_eq!((mark2.file, mark2.rows), (0, 4));
        let files = spool.take_all().unwrap();
        let rows = read_all(&files[0].path);
        assert_eq!(
            rows,
            vec![
                ("100".to_owned(), "c-0".to_owned()),
                ("101".to_owned(), "c-1".to_owned()),
                ("102".to_owned(), "c-2".to_owned()),
                ("900".to_owned(), "c-900".to_owned()),
            ]
        );
        let text = std::fs::read_to_string(&files[0].path).unwrap();
        assert_eq!(text.matches("id,crmContactId").count(), 1, "{text}");

        // Written back and deleted before the emptied spool's mark was committed: a restart
        // from mark2 goes on with the next file instead of sending the keys again.
        std::fs::remove_file(&files[0].path).unwrap();
        let spool = KeySpool::reopen_with_limit(dir.path(), &mark2, "crmContactId", 1_000).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.mark().file, 1);
    }

    #[test]
    fn a_reopened_spool_keeps_committed_full_files_to_import() {
        let dir = tempfile::tempdir().unwrap();
        let stem = "leads.writeback";
        let mut spool = KeySpool::with_limit(dir.path(), stem, "crmContactId", 1_000);
        push_keys(&mut spool, 0..100);
        let mark = spool.checkpoint().unwrap();
        assert_eq!(mark.file, 1);
        drop(spool);
        let mut spool =
            KeySpool::reopen_with_limit(dir.path(), &mark, "crmContactId", 1_000).unwrap();
        assert!(spool.has_full());
        let full = spool.take_full();
        assert_eq!(full.len(), 1);
        let mut rows = read_all(&full[0].path);
        assert_eq!(spool.rows(), mark.rows);
        for f in spool.take_all().unwrap() {
            rows.extend(read_all(&f.path));
        }
        assert_eq!(rows.len(), 100);
        assert_eq!(rows[99], ("199".to_owned(), "c-99".to_owned()));
    }
}
