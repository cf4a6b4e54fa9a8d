//! Writes of the object families (salespersons, companies, opportunities, roles, custom
//! objects): REST batches of 300, or Bulk Import files for a large custom object set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::families::ObjectFamily;
use super::{EndpointError, RestBulkEndpoint};
use crate::marketo::bulk_import::{ImportTarget, LeadImportOptions};
use crate::marketo::csv::{ImportFileWriter, WriteOutcome};
use crate::marketo::leads::MAX_BATCH;
use crate::marketo::model::WireError;
use crate::marketo::{Record, RecordResult, RecordStatus};
use crate::model::{Fields, Value};

/// The column of a failures file that holds Marketo's reason.
const FAILURE_REASON: &str = "Import Failure Reason";

/// The refusal code of a row a bulk import refused (the failures file carries only a reason).
const IMPORT_CODE: &str = "import";

/// One import file and the input records (by index) its rows hold, in order.
struct ImportFile {
    path: PathBuf,
    rows: Vec<usize>,
}

impl RestBulkEndpoint {
    /// Returns true when `count` records of `family` go by Bulk Import.
    pub(super) fn imports(&self, family: &ObjectFamily, count: usize) -> bool {
        family.import_target().is_some() && count > self.settings.bulk_import_threshold
    }

    /// See [`super::MarketoEndpoint::upsert_objects`].
    pub(super) async fn upsert(
        &self,
        family: &ObjectFamily,
        records: &[Record],
        cancel: &CancellationToken,
    ) -> Result<Vec<RecordResult>, EndpointError> {
        let mut out: Vec<Option<RecordResult>> = vec![None; records.len()];
        if let Some(target) = family
            .import_target()
            .filter(|_| self.imports(family, records.len()))
        {
            // An import cannot clear a field: a record with a null goes by REST.
            let importable: Vec<usize> = (0..records.len())
                .filter(|i| !records[*i].values().any(serde_json::Value::is_null))
                .collect();
            self.import_objects(&target, records, &importable, &mut out, cancel)
                .await?;
        }
        let rest: Vec<usize> = (0..records.len()).filter(|i| out[*i].is_none()).collect();
        for chunk in rest.chunks(MAX_BATCH) {
            if cancel.is_cancelled() {
                return Err(EndpointError::Cancelled);
            }
            let input: Vec<Record> = chunk.iter().map(|i| records[*i].clone()).collect();
            // The client matched each result to its input (by `seq`).
            let results = family.upsert(&self.client, &input).await?;
            for (i, r) in chunk.iter().zip(results) {
                out[*i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(unwritten))
            .collect())
    }

    /// Imports the records `rows` names into `target`, file by file, and records each row's
    /// result in `out`.
    async fn import_objects(
        &self,
        target: &ImportTarget,
        records: &[Record],
        rows: &[usize],
        out: &mut [Option<RecordResult>],
        cancel: &CancellationToken,
    ) -> Result<(), EndpointError> {
        let (columns, files) = self.object_files(records, rows, out)?;
        let mut result = Ok(());
        for file in &files {
            if result.is_ok() {
                result = self
                    .import_object_file(target, &columns, file, out, cancel)
                    .await;
            }
            let _ = std::fs::remove_file(&file.path);
        }
        result
    }

    /// Imports one file, waits for it and records the results of its rows.
    async fn import_object_file(
        &self,
        target: &ImportTarget,
        columns: &[String],
        file: &ImportFile,
        out: &mut [Option<RecordResult>],
        cancel: &CancellationToken,
    ) -> Result<(), EndpointError> {
        if cancel.is_cancelled() {
            return Err(EndpointError::Cancelled);
        }
        let job = self
            .client
            .import_file(
                target,
                &file.path,
                self.settings.import_format,
                &LeadImportOptions::default(),
            )
            .await?;
        let done = self.wait_import(target, job.batch_id, cancel).await?;
        let mut refused: HashMap<String, String> = HashMap::new();
        if done.num_of_rows_failed.unwrap_or(0) > 0 {
            let report = file.path.with_extension("failures");
            if self
                .client
                .import_failures(target, done.batch_id, &report)
                .await?
            {
                refused = self.failed_rows(&report, columns)?;
                let _ = std::fs::remove_file(&report);
            }
        }
        if done.num_of_rows_with_warning.unwrap_or(0) > 0 {
            tracing::warn!(
                batch_id = done.batch_id,
                rows = done.num_of_rows_with_warning.unwrap_or(0),
                "marketo imported custom object rows with warnings"
            );
        }
        let written = self.written_rows(&file.path, columns.len())?;
        for (i, key) in file.rows.iter().zip(written) {
            out[*i] = Some(match refused.get(&key) {
                Some(reason) => refused_result(*i, IMPORT_CODE, reason),
                None => RecordResult {
                    seq: Some(*i),
                    status: RecordStatus::Updated,
                    id: None,
                    marketo_guid: None,
                    reasons: Vec::new(),
                },
            });
        }
        Ok(())
    }

    /// Writes the records `rows` names into import files below 10 MB; a record too large for
    /// any file is refused in `out`. Returns the columns and the files.
    fn object_files(
        &self,
        records: &[Record],
        rows: &[usize],
        out: &mut [Option<RecordResult>],
    ) -> Result<(Vec<String>, Vec<ImportFile>), EndpointError> {
        let mut columns: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for i in rows {
            columns.extend(records[*i].keys().cloned());
        }
        let columns: Vec<String> = columns.into_iter().collect();
        let format = self.settings.import_format;
        let mut files: Vec<ImportFile> = Vec::new();
        let mut next = 0;
        while next < rows.len() {
            let path = self.settings.work_dir.join(format!(
                "marketo-sync-objects-{}.{}",
                uuid::Uuid::new_v4(),
                format.extension()
            ));
            let fail = |e: &dyn std::fmt::Display| {
                EndpointError::file(format!(
                    "cannot write the import file {}: {e}",
                    path.display()
                ))
            };
            let handle = std::fs::File::create(&path).map_err(|e| fail(&e))?;
            let mut writer =
                ImportFileWriter::new(std::io::BufWriter::new(handle), columns.clone(), format)
                    .map_err(|e| fail(&e))?;
            let mut file = ImportFile {
                path: path.clone(),
                rows: Vec::new(),
            };
            while next < rows.len() {
                let i = rows[next];
                let fields: Fields = records[i]
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect();
                match writer.write_row(&fields).map_err(|e| fail(&e))? {
                    WriteOutcome::Written => {
                        file.rows.push(i);
                        next += 1;
                    }
                    WriteOutcome::Full if !file.rows.is_empty() => break,
                    WriteOutcome::Full => {
                        out[i] = Some(refused_result(
                            i,
                            "too_large",
                            "the record does not fit in a 10 MB import file",
                        ));
                        next += 1;
                    }
                }
            }
            writer.finish().map_err(|e| fail(&e))?;
            if file.rows.is_empty() {
                let _ = std::fs::remove_file(&path);
            } else {
                files.push(file);
            }
        }
        Ok((columns, files))
    }

    /// Returns the cells of each row of an import file this endpoint wrote, joined into one
    /// key per row, in order.
    fn written_rows(&self, path: &Path, width: usize) -> Result<Vec<String>, EndpointError> {
        let mut reader = self.reader(path)?;
        let mut keys = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| read_error(path, &e))?;
            keys.push(row_key(record.iter().take(width)));
        }
        Ok(keys)
    }

    /// Returns Marketo's reason for each row of a failures file, by the row's key (its cells in
    /// the import's column order).
    fn failed_rows(
        &self,
        path: &Path,
        columns: &[String],
    ) -> Result<HashMap<String, String>, EndpointError> {
        let mut reader = self.reader(path)?;
        let header = reader.headers().map_err(|e| read_error(path, &e))?.clone();
        let position = |name: &str| header.iter().position(|h| h == name);
        let reason_at = position(FAILURE_REASON);
        let cells: Vec<Option<usize>> = columns.iter().map(|c| position(c)).collect();
        let mut out = HashMap::new();
        for record in reader.records() {
            let record = record.map_err(|e| read_error(path, &e))?;
            let key = row_key(
                cells
                    .iter()
                    .map(|at| at.and_then(|a| record.get(a)).unwrap_or("")),
            );
            let reason = reason_at
                .and_then(|a| record.get(a))
                .filter(|r| !r.trim().is_empty())
                .unwrap_or("refused by the import without a reason");
            out.insert(key, reason.to_owned());
        }
        Ok(out)
    }

    fn reader(&self, path: &Path) -> Result<csv::Reader<std::fs::File>, EndpointError> {
        csv::ReaderBuilder::new()
            .delimiter(self.settings.import_format.delimiter())
            .flexible(true)
            .from_path(path)
            .map_err(|e| read_error(path, &e))
    }
}

impl ObjectFamily {
    /// Returns the Bulk Import target of the family (custom objects only: Marketo has no bulk
    /// import of the other families).
    pub fn import_target(&self) -> Option<ImportTarget> {
        match self {
            ObjectFamily::Custom(name) => Some(ImportTarget::CustomObject(name.clone())),
            _ => None,
        }
    }
}

fn row_key<'a>(cells: impl Iterator<Item = &'a str>) -> String {
    cells.collect::<Vec<_>>().join("\u{1f}")
}

fn read_error(path: &Path, e: &dyn std::fmt::Display) -> EndpointError {
    EndpointError::file(format!(
        "cannot read the import file {}: {e}",
        path.display()
    ))
}

fn refused_result(seq: usize, code: &str, message: &str) -> RecordResult {
    RecordResult {
        seq: Some(seq),
        status: RecordStatus::Skipped,
        id: None,
        marketo_guid: None,
        reasons: vec![WireError {
            code: code.to_owned(),
            message: message.to_owned(),
        }],
    }
}

/// The result of a record neither path wrote (cannot happen; kept total, retried later).
fn unwritten() -> RecordResult {
    refused_result(0, "not_written", "the record was not written")
}
