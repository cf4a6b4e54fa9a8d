//! Lead writes: company routing, REST batches or Bulk Import by size, one outcome per record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    COMPANY_FIELDS_ON_LEADS, CompanyLink, EndpointError, LeadKey, LeadOutcome, LeadPreview,
    LeadWrite, Refusal, RestBulkEndpoint, WriteMode,
};
use crate::marketo::bulk_import::{ImportStatus, ImportTarget, LeadImportOptions};
use crate::marketo::csv::{ExportReader, FileFormat, ImportFileWriter, WriteOutcome};
use crate::marketo::leads::MAX_BATCH;
use crate::marketo::{DedupeBy, Error, Record, RefusalKind, SyncAction};
use crate::model::{Fields, Value};

/// Returns a JSON value as key text (`None` for null or blank).
pub(super) fn key_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.trim().is_empty() => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn has_company_field(record: &Record) -> bool {
    COMPANY_FIELDS_ON_LEADS
        .iter()
        .any(|f| record.contains_key(*f))
}

/// Splits the company-type fields off a lead record linked to company `ext`.
fn split_company(record: &Record, ext: Option<&str>) -> (Record, Option<Record>) {
    let mut lead = record.clone();
    let Some(ext) = ext else {
        return (lead, None);
    };
    let mut company = Record::new();
    for f in COMPANY_FIELDS_ON_LEADS {
        if let Some(v) = lead.remove(*f) {
            company.insert((*f).to_owned(), v);
        }
    }
    if company.is_empty() {
        return (lead, None);
    }
    company.insert("externalCompanyId".into(), json!(ext));
    (lead, Some(company))
}

/// A record split for sending: the lead part and the company part.
struct Split {
    lead: Record,
    company: Option<Record>,
}

impl RestBulkEndpoint {
    /// Returns the company of each write: as given, or read from Marketo (by lead id, 300 a
    /// call) for a lead not read by the caller whose write carries company fields.
    async fn companies(
        &self,
        writes: &[LeadWrite],
        key: &LeadKey,
    ) -> Result<Vec<Option<String>>, EndpointError> {
        let mut unread: Vec<String> = Vec::new();
        for w in writes {
            if w.company == CompanyLink::Unknown
                && has_company_field(&w.record)
                && let Some(id) = key_text(w.record.get(key.field()))
                && *key == LeadKey::Id
            {
                unread.push(id);
            }
        }
        let mut read: HashMap<String, Option<String>> = HashMap::new();
        let fields = vec!["id".to_owned(), "externalCompanyId".to_owned()];
        for chunk in unread.chunks(MAX_BATCH) {
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .client
                    .get_leads("id", chunk, &fields, token.as_deref())
                    .await?;
                for r in &page.records {
                    if let Some(id) = key_text(r.get("id")) {
                        read.insert(id, key_text(r.get("externalCompanyId")));
                    }
                }
                match (page.more_result, page.next_page_token) {
                    (true, Some(t)) => token = Some(t),
                    _ => break,
                }
            }
        }
        Ok(writes
            .iter()
            .map(|w| match &w.company {
                CompanyLink::Known(ext) => ext.clone(),
                CompanyLink::Unknown => key_text(w.record.get(key.field()))
                    .and_then(|id| read.get(&id).cloned().flatten()),
            })
            .collect())
    }

    async fn split(
        &self,
        writes: &[LeadWrite],
        key: &LeadKey,
    ) -> Result<Vec<Split>, EndpointError> {
        let companies = self.companies(writes, key).await?;
        Ok(writes
            .iter()
            .zip(companies)
            .map(|(w, ext)| {
                let (lead, company) = split_company(&w.record, ext.as_deref());
                Split { lead, company }
            })
            .collect())
    }

    pub(super) async fn preview(
        &self,
        writes: &[LeadWrite],
    ) -> Result<Vec<LeadPreview>, EndpointError> {
        let split = self.split(writes, &LeadKey::Id).await?;
        Ok(split
            .into_iter()
            .map(|s| LeadPreview {
                lead: s.lead,
                company: s.company.map(|c| {
                    let ext = key_text(c.get("externalCompanyId")).unwrap_or_default();
                    (ext, c)
                }),
            })
            .collect())
    }

    pub(super) async fn write(
        &self,
        writes: &[LeadWrite],
        mode: WriteMode,
        key: &LeadKey,
        cancel: &CancellationToken,
    ) -> Result<Vec<LeadOutcome>, EndpointError> {
        let split = self.split(writes, key).await?;
        let mut out: Vec<Option<LeadOutcome>> = vec![None; writes.len()];
        self.write_companies(&split, &mut out).await?;
        // A lead whose write was only company fields is done once its company is written.
        let mut send: Vec<usize> = Vec::new();
        for (i, s) in split.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            if s.company.is_some() && s.lead.keys().all(|k| k == key.field()) {
                out[i] = Some(LeadOutcome::Updated {
                    id: key_text(s.lead.get("id")).and_then(|t| t.parse().ok()),
                });
                continue;
            }
            send.push(i);
        }
        let threshold = self.settings.bulk_import_threshold;
        let bulk: Vec<Vec<usize>> = match (mode, key) {
            (WriteMode::Upsert, LeadKey::Field(_)) if send.len() > threshold => vec![send.clone()],
            (WriteMode::UpdateOnly, LeadKey::Id) => update_groups(&split, &send, threshold),
            _ => Vec::new(),
        };
        for group in &bulk {
            let records: Vec<&Record> = group.iter().map(|i| &split[*i].lead).collect();
            let failed = self.import_rows(&records, key.field(), cancel).await?;
            let ids = match key {
                LeadKey::Id => HashMap::new(),
                LeadKey::Field(f) => {
                    let keys: Vec<String> = records
                        .iter()
                        .filter_map(|r| key_text(r.get(f)))
                        .filter(|k| !failed.contains_key(k))
                        .collect();
                    self.ids_by(f, &keys).await?
                }
            };
            for i in group {
                let value = key_text(split[*i].lead.get(key.field())).unwrap_or_default();
                out[*i] = Some(match (failed.get(&value), key) {
                    (Some(reason), _) => {
                        LeadOutcome::Refused(Refusal::import(reason.clone(), RefusalKind::Other))
                    }
                    (None, LeadKey::Id) => LeadOutcome::Updated {
                        id: value.parse().ok(),
                    },
                    // Missing after the import may be Marketo catching up: retried later.
                    (None, LeadKey::Field(_)) => match ids.get(&value) {
                        Some(id) => LeadOutcome::Created { id: *id },
                        None => LeadOutcome::Refused(Refusal::import(
                            "not found after import",
                            RefusalKind::Transient,
                        )),
                    },
                });
            }
        }
        let rest: Vec<usize> = send.into_iter().filter(|i| out[*i].is_none()).collect();
        self.rest_write(&split, &rest, mode, key, &mut out).await?;
        Ok(out
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    LeadOutcome::Refused(Refusal::import("not written", RefusalKind::Transient))
                })
            })
            .collect())
    }

    /// Writes the company parts (Sync Companies, update only, 300 a call); a refused company
    /// refuses its lead's write.
    async fn write_companies(
        &self,
        split: &[Split],
        out: &mut [Option<LeadOutcome>],
    ) -> Result<(), EndpointError> {
        let with: Vec<(usize, &Record)> = split
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.company.as_ref()?)))
            .collect();
        for chunk in with.chunks(MAX_BATCH) {
            let input: Vec<Record> = chunk.iter().map(|(_, c)| (*c).clone()).collect();
            let results = self
                .client
                .sync_companies(SyncAction::UpdateOnly, DedupeBy::DedupeFields, &input)
                .await?;
            for ((i, company), res) in chunk.iter().zip(results) {
                if let Some(r) = res.refusal() {
                    let mut refusal = Refusal::of(r);
                    refusal.message = format!(
                        "company {} refused the lead's company fields: {}",
                        key_text(company.get("externalCompanyId")).unwrap_or_default(),
                        refusal.message
                    );
                    refusal.company = Some((*company).clone());
                    out[*i] = Some(LeadOutcome::Refused(refusal));
                }
            }
        }
        Ok(())
    }

    async fn rest_write(
        &self,
        split: &[Split],
        send: &[usize],
        mode: WriteMode,
        key: &LeadKey,
        out: &mut [Option<LeadOutcome>],
    ) -> Result<(), EndpointError> {
        let action = match mode {
            WriteMode::CreateOnly => SyncAction::CreateOnly,
            WriteMode::UpdateOnly => SyncAction::UpdateOnly,
            WriteMode::Upsert => SyncAction::CreateOrUpdate,
        };
        for chunk in send.chunks(MAX_BATCH) {
            let input: Vec<Record> = chunk.iter().map(|i| split[*i].lead.clone()).collect();
            let results = self
                .client
                .sync_leads(action, Some(key.field()), None, &input)
                .await?;
            for (i, res) in chunk.iter().zip(results) {
                let outcome = match res.refusal() {
                    Some(r) => {
                        let mut refusal = Refusal::of(r);
                        if res.refused_as(RefusalKind::NotFound) {
                            refusal.kind = RefusalKind::NotFound;
                        }
                        LeadOutcome::Refused(refusal)
                    }
                    None if mode == WriteMode::UpdateOnly => LeadOutcome::Updated {
                        id: res
                            .id_i64()
                            .or_else(|| key_text(split[*i].lead.get("id"))?.parse().ok()),
                    },
                    None => match res.id_i64() {
                        Some(id) => LeadOutcome::Created { id },
                        None => LeadOutcome::Refused(Refusal::import(
                            "marketo returned no lead id",
                            RefusalKind::Transient,
                        )),
                    },
                };
                out[*i] = Some(outcome);
            }
        }
        Ok(())
    }

    /// Returns the lead ids of the leads whose `field` holds one of `values`, by value.
    async fn ids_by(
        &self,
        field: &str,
        values: &[String],
    ) -> Result<HashMap<String, i64>, EndpointError> {
        let fields = vec!["id".to_owned(), field.to_owned()];
        let mut out = HashMap::new();
        for chunk in values.chunks(MAX_BATCH) {
            let page = self.client.get_leads(field, chunk, &fields, None).await?;
            for r in &page.records {
                if let (Some(k), Some(id)) = (
                    key_text(r.get(field)),
                    key_text(r.get("id")).and_then(|t| t.parse().ok()),
                ) {
                    out.insert(k, id);
                }
            }
        }
        Ok(out)
    }

    /// Writes `records` to import files (each below 10 MB), imports them with `lookup` as the
    /// lookup field, waits for them and returns the rows Marketo refused, by their `lookup`
    /// value, with the reason.
    pub(super) async fn import_rows(
        &self,
        records: &[&Record],
        lookup: &str,
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<String, String>, EndpointError> {
        let files = self.import_files(records)?;
        let mut failed = BTreeMap::new();
        let mut result = Ok(());
        for path in &files {
            if result.is_ok() {
                result = self.import_one(path, lookup, &mut failed, cancel).await;
            }
            let _ = std::fs::remove_file(path);
        }
        result.map(|()| failed)
    }

    async fn import_one(
        &self,
        path: &Path,
        lookup: &str,
        failed: &mut BTreeMap<String, String>,
        cancel: &CancellationToken,
    ) -> Result<(), EndpointError> {
        let options = LeadImportOptions {
            lookup_field: Some(lookup.to_owned()),
            ..LeadImportOptions::default()
        };
        let job = self
            .client
            .import_file(
                &ImportTarget::Leads,
                path,
                self.settings.import_format,
                &options,
            )
            .await?;
        let done = self
            .wait_import(&ImportTarget::Leads, job.batch_id, cancel)
            .await?;
        if done.num_of_rows_failed.unwrap_or(0) > 0 {
            let report = path.with_extension("failures.csv");
            if self
                .client
                .import_failures(&ImportTarget::Leads, done.batch_id, &report)
                .await?
            {
                for (key, reason) in read_failures(&report, self.settings.import_format, lookup) {
                    failed.insert(key, reason);
                }
                let _ = std::fs::remove_file(&report);
            }
        }
        if done.num_of_rows_with_warning.unwrap_or(0) > 0 {
            tracing::warn!(
                batch_id = done.batch_id,
                rows = done.num_of_rows_with_warning.unwrap_or(0),
                "marketo imported rows with warnings"
            );
        }
        Ok(())
    }

    /// Waits for an import batch; a batch that failed as a whole is an error.
    pub(super) async fn wait_import(
        &self,
        target: &ImportTarget,
        batch_id: i64,
        cancel: &CancellationToken,
    ) -> Result<crate::marketo::bulk_import::ImportJob, EndpointError> {
        let done = match self
            .client
            .wait_for_import(target, batch_id, self.settings.poll, cancel)
            .await
        {
            Err(Error::Cancelled { .. }) if cancel.is_cancelled() => {
                return Err(EndpointError::Cancelled);
            }
            other => other?,
        };
        if done.status == ImportStatus::Failed {
            return Err(EndpointError::Marketo(Error::JobFailed {
                kind: "import",
                job_id: done.batch_id.to_string(),
                status: "Failed".into(),
                message: done.message.unwrap_or_default(),
            }));
        }
        Ok(done)
    }

    /// Writes `records` into import files (in the endpoint's import format), each below 10 MB.
    fn import_files(&self, records: &[&Record]) -> Result<Vec<PathBuf>, EndpointError> {
        let mut columns: BTreeSet<String> = BTreeSet::new();
        for r in records {
            columns.extend(r.keys().cloned());
        }
        let columns: Vec<String> = columns.into_iter().collect();
        let mut files: Vec<PathBuf> = Vec::new();
        let mut i = 0;
        while i < records.len() {
            let path = self.settings.work_dir.join(format!(
                "marketo-sync-import-{}.{}",
                uuid::Uuid::new_v4(),
                self.settings.import_format.extension()
            ));
            let fail = |e: &dyn std::fmt::Display| {
                EndpointError::file(format!(
                    "cannot write the import file {}: {e}",
                    path.display()
                ))
            };
            let file = std::fs::File::create(&path).map_err(|e| fail(&e))?;
            files.push(path.clone());
            let mut writer = ImportFileWriter::new(
                std::io::BufWriter::new(file),
                columns.clone(),
                self.settings.import_format,
            )
            .map_err(|e| fail(&e))?;
            let first = i;
            while i < records.len() {
                let fields: Fields = records[i]
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect();
                match writer.write_row(&fields).map_err(|e| fail(&e))? {
                    WriteOutcome::Written => i += 1,
                    WriteOutcome::Full if i > first => break,
                    WriteOutcome::Full => i += 1,
                }
            }
            writer.finish().map_err(|e| fail(&e))?;
        }
        Ok(files)
    }
}

/// Returns the updates that go through Bulk Import: when more than `threshold` leads are
/// updated, the groups of more than `threshold` updates that write the same fields with no null
/// (an import file cannot clear a field, and a blank cell must not touch a field the update does
/// not write).
fn update_groups(split: &[Split], send: &[usize], threshold: usize) -> Vec<Vec<usize>> {
    if send.len() <= threshold {
        return Vec::new();
    }
    let mut by_columns: BTreeMap<Vec<&str>, Vec<usize>> = BTreeMap::new();
    for i in send {
        let lead = &split[*i].lead;
        if lead.values().any(serde_json::Value::is_null) || !lead.contains_key("id") {
            continue;
        }
        let columns: Vec<&str> = lead.keys().map(String::as_str).collect();
        by_columns.entry(columns).or_default().push(*i);
    }
    by_columns
        .into_values()
        .filter(|g| g.len() > threshold)
        .collect()
}

/// Reads a bulk import failures file: the key column and `Import Failure Reason`.
pub(super) fn read_failures(
    path: &Path,
    format: FileFormat,
    key_field: &str,
) -> Vec<(String, String)> {
    read_failure_rows(path, format)
        .into_iter()
        .map(|(row, reason)| (text(row.get(key_field)).unwrap_or_default(), reason))
        .collect()
}

/// Reads a bulk import failures file: each row's columns and its `Import Failure Reason`.
pub(super) fn read_failure_rows(path: &Path, format: FileFormat) -> Vec<(Fields, String)> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let Ok(reader) = ExportReader::new(file, format) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for row in reader.flatten() {
        let reason = row
            .fields
            .iter()
            .find(|(k, _)| k.to_lowercase().contains("failure"))
            .and_then(|(_, v)| text(Some(v)))
            .unwrap_or_else(|| "import failed".into());
        out.push((row.fields, reason));
    }
    out
}

/// Returns a value as text (`None` for null or blank).
pub(super) fn text(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(other) => Some(other.to_text()).filter(|t| !t.trim().is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn company_fields_leave_a_lead_linked_to_a_company() {
        let mut r = Record::new();
        r.insert("id".into(), json!(5));
        r.insert("industry".into(), json!("Retail"));
        r.insert("firstName".into(), json!("Ann"));
        let (lead, company) = split_company(&r, Some("ACME"));
        let mut kept: Vec<&String> = lead.keys().collect();
        kept.sort();
        assert_eq!(kept, ["firstName", "id"]);
        let company = company.unwrap();
        assert_eq!(company["industry"], json!("Retail"));
        assert_eq!(company["externalCompanyId"], json!("ACME"));
        let (lead, company) = split_company(&r, None);
        assert_eq!(lead, r);
        assert!(company.is_none());
    }
}
