//! Bulk import of leads and custom objects: multipart upload, status, failure and warning files.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Deserializer};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::Client;
use super::csv::FileFormat;
use super::describe::path_segment;
use super::error::Error;
use super::transport::{Body, Call, MultipartSpec};

/// Largest import file Marketo accepts.
pub const MAX_IMPORT_BYTES: u64 = 10 * 1024 * 1024;

/// What an import loads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImportTarget {
    /// Leads (`/bulk/v1/leads.json`).
    Leads,
    /// One custom object (`/bulk/v1/customobjects/{apiName}/import.json`).
    CustomObject(String),
}

/// Options of a lead import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadImportOptions {
    /// The dedupe field (Marketo's default is `email`).
    pub lookup_field: Option<String>,
    /// Also add the imported leads to this static list.
    pub list_id: Option<i64>,
    /// The lead partition.
    pub partition_name: Option<String>,
}

/// The state of an import batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportStatus {
    /// Waiting.
    Queued,
    /// Running.
    Importing,
    /// Done (rows may still have failed; see the counts).
    Complete,
    /// Failed as a whole; see `message`.
    Failed,
    /// A status this client does not know.
    Other(String),
}

impl fmt::Display for ImportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImportStatus::Queued => "Queued",
            ImportStatus::Importing => "Importing",
            ImportStatus::Complete => "Complete",
            ImportStatus::Failed => "Failed",
            ImportStatus::Other(s) => s,
        })
    }
}

impl<'de> Deserialize<'de> for ImportStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.to_ascii_lowercase().as_str() {
            "queued" => ImportStatus::Queued,
            "importing" => ImportStatus::Importing,
            "complete" | "completed" => ImportStatus::Complete,
            "failed" => ImportStatus::Failed,
            _ => ImportStatus::Other(s),
        })
    }
}

/// An import batch as Marketo reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportJob {
    /// The batch id.
    pub batch_id: i64,
    /// The same id as a string (lead imports).
    #[serde(default)]
    pub import_id: Option<String>,
    /// The state.
    pub status: ImportStatus,
    /// The custom object (custom object imports).
    #[serde(default)]
    pub object_api_name: Option<String>,
    /// Leads processed (lead imports).
    #[serde(default)]
    pub num_of_leads_processed: Option<u64>,
    /// Records processed (custom object imports).
    #[serde(default)]
    pub num_of_objects_processed: Option<u64>,
    /// Rows that failed.
    #[serde(default)]
    pub num_of_rows_failed: Option<u64>,
    /// Rows with a warning.
    #[serde(default)]
    pub num_of_rows_with_warning: Option<u64>,
    /// Marketo's summary.
    #[serde(default)]
    pub message: Option<String>,
}

impl ImportJob {
    /// Returns true once the batch will not change any more.
    pub fn is_finished(&self) -> bool {
        matches!(self.status, ImportStatus::Complete | ImportStatus::Failed)
    }
}

fn base(target: &ImportTarget) -> Result<String, Error> {
    Ok(match target {
        ImportTarget::Leads => "/bulk/v1/leads".into(),
        ImportTarget::CustomObject(n) => {
            format!("/bulk/v1/customobjects/{}/import", path_segment(n)?)
        }
    })
}

fn status_path(target: &ImportTarget, batch_id: i64) -> Result<String, Error> {
    Ok(match target {
        ImportTarget::Leads => format!("/bulk/v1/leads/batch/{batch_id}.json"),
        ImportTarget::CustomObject(_) => format!("{}/{batch_id}/status.json", base(target)?),
    })
}

fn report_path(target: &ImportTarget, batch_id: i64, which: &str) -> Result<String, Error> {
    Ok(match target {
        ImportTarget::Leads => format!("/bulk/v1/leads/batch/{batch_id}/{which}.json"),
        ImportTarget::CustomObject(_) => format!("{}/{batch_id}/{which}.json", base(target)?),
    })
}

impl Client {
    /// Uploads a file (first row = REST field names) as a bulk import
    /// (`POST /bulk/v1/leads.json` or `/bulk/v1/customobjects/{apiName}/import.json`,
    /// multipart `file`, `format` in the query). Lead options are ignored for custom objects.
    ///
    /// Returns the queued batch.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for a file over 10 MB or an empty one, [`Error::Io`],
    /// [`Error::BodyTooLarge`] on HTTP 413, [`Error::Api`] 1016 (too many imports, BackOff),
    /// and any call-level error.
    pub async fn import_file(
        &self,
        target: &ImportTarget,
        file: &Path,
        format: FileFormat,
        options: &LeadImportOptions,
    ) -> Result<ImportJob, Error> {
        let ep = match target {
            ImportTarget::Leads => "/bulk/v1/leads.json".to_owned(),
            ImportTarget::CustomObject(_) => format!("{}.json", base(target)?),
        };
        let len = tokio::fs::metadata(file)
            .await
            .map_err(|e| Error::io(file, e))?
            .len();
        if len == 0 {
            return Err(Error::invalid(&ep, format!("{} is empty", file.display())));
        }
        if len > MAX_IMPORT_BYTES {
            return Err(Error::invalid(
                &ep,
                format!("{} has {len} bytes; split it below 10 MB", file.display()),
            ));
        }
        let file_name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "import.csv".into());
        let mut call = Call::post_empty(&ep).q("format", format.as_str());
        if *target == ImportTarget::Leads {
            call = call
                .q_opt("lookupField", options.lookup_field.as_deref())
                .q_opt("partitionName", options.partition_name.as_deref())
                .q_opt("listId", options.list_id);
        }
        call.body = Body::Multipart(MultipartSpec {
            file: file.to_owned(),
            file_name,
            mime: format.mime(),
        });
        let env = self.call::<ImportJob>(&call).await?;
        env.one(&ep, "no batch in the answer")
    }

    /// Reads an import batch's status.
    ///
    /// Returns the batch.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn import_status(
        &self,
        target: &ImportTarget,
        batch_id: i64,
    ) -> Result<ImportJob, Error> {
        let ep = status_path(target, batch_id)?;
        let env = self.call::<ImportJob>(&Call::get(&ep)).await?;
        env.one(&ep, "no batch in the answer")
    }

    /// Polls an import batch until it is Complete or Failed.
    ///
    /// Returns the finished batch.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Cancelled`] when `cancel` fires, and any call-level error.
    pub async fn wait_for_import(
        &self,
        target: &ImportTarget,
        batch_id: i64,
        poll_interval: Duration,
        cancel: &CancellationToken,
    ) -> Result<ImportJob, Error> {
        loop {
            let job = self.import_status(target, batch_id).await?;
            if job.is_finished() {
                return Ok(job);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled { what: format!("import batch {batch_id}") }),
                _ = tokio::time::sleep(poll_interval) => {}
            }
        }
    }

    /// Downloads the failures file of a batch (original columns plus `Import Failure Reason`)
    /// to `dest`.
    ///
    /// Returns false, writing nothing, when there is no such file (HTTP 404).
    ///
    /// # Errors
    ///
    /// Returns [`Error::Io`] and any call-level error.
    pub async fn import_failures(
        &self,
        target: &ImportTarget,
        batch_id: i64,
        dest: &Path,
    ) -> Result<bool, Error> {
        self.import_report(&report_path(target, batch_id, "failures")?, dest)
            .await
    }

    /// Downloads the warnings file of a batch to `dest`.
    ///
    /// Returns false, writing nothing, when there is no such file (HTTP 404).
    ///
    /// # Errors
    ///
    /// Returns [`Error::Io`] and any call-level error.
    pub async fn import_warnings(
        &self,
        target: &ImportTarget,
        batch_id: i64,
        dest: &Path,
    ) -> Result<bool, Error> {
        self.import_report(&report_path(target, batch_id, "warnings")?, dest)
            .await
    }

    async fn import_report(&self, ep: &str, dest: &Path) -> Result<bool, Error> {
        let (resp, _permit) = self.send_raw(ep, HeaderMap::new()).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(false),
            s if !s.is_success() => {
                return Err(Error::HttpStatus {
                    endpoint: ep.to_owned(),
                    status: s.as_u16(),
                    body: String::new(),
                });
            }
            _ => {}
        }
        let file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| Error::io(dest, e))?;
        let mut out = tokio::io::BufWriter::new(file);
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::transport(ep, e))?;
            out.write_all(&chunk)
                .await
                .map_err(|e| Error::io(dest, e))?;
        }
        out.flush().await.map_err(|e| Error::io(dest, e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::test_support::*;
    use serde_json::json;
    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, ResponseTemplate};

    #[tokio::test(start_paused = true)]
    async fn lead_import_uploads_multipart_polls_and_reads_reports() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/bulk/v1/leads.json"))
            .and(query_param("format", "csv"))
            .and(query_param("lookupField", "crmId"))
            .respond_with(ok(
                json!([{"batchId": 3404, "importId": "3404", "status": "Queued"}]),
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/batch/3404.json"))
            .respond_with(ok(json!([{"batchId": 3404, "status": "Importing"}])))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/batch/3404.json"))
            .respond_with(ok(json!([{"batchId": 3404, "status": "Complete", "numOfLeadsProcessed": 2,
                "numOfRowsFailed": 1, "numOfRowsWithWarning": 0,
                "message": "Import completed with errors, 2 records imported (2 members), 1 failed"}])))
            .with_priority(2)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/batch/3404/failures.json"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(
                "email,crmId,Import Failure Reason\nbad,1,invalid email\n",
                "text/csv",
            ))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/leads/batch/3404/warnings.json"))
            .respond_with(ResponseTemplate::new(404).set_body_string("not found"))
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("leads.csv");
        std::fs::write(&csv, "email,crmId\na@x.com,1\n").unwrap();
        let opts = LeadImportOptions {
            lookup_field: Some("crmId".into()),
            ..Default::default()
        };
        let job = client
            .import_file(&ImportTarget::Leads, &csv, FileFormat::Csv, &opts)
            .await
            .unwrap();
        assert_eq!(job.batch_id, 3404);
        let done = client
            .wait_for_import(
                &ImportTarget::Leads,
                3404,
                Duration::from_secs(10),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(done.num_of_rows_failed, Some(1));
        let fails = dir.path().join("failures.csv");
        assert!(
            client
                .import_failures(&ImportTarget::Leads, 3404, &fails)
                .await
                .unwrap()
        );
        assert!(
            std::fs::read_to_string(&fails)
                .unwrap()
                .contains("invalid email")
        );
        let warns = dir.path().join("warnings.csv");
        assert!(
            !client
                .import_warnings(&ImportTarget::Leads, 3404, &warns)
                .await
                .unwrap()
        );
        let upload = requests_to(&server, "/bulk/v1/leads.json")
            .await
            .into_iter()
            .next()
            .unwrap();
        let ct = upload
            .headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(ct.starts_with("multipart/form-data"), "{ct}");
        let body = String::from_utf8_lossy(&upload.body);
        assert!(body.contains("name=\"file\"") && body.contains("a@x.com,1"));
    }

    #[tokio::test]
    async fn custom_object_import_paths_and_empty_files() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/bulk/v1/customobjects/car_c/import.json"))
            .and(query_param("format", "csv"))
            .respond_with(ok(
                json!([{"batchId": 1013, "status": "Queued", "objectApiName": "car_c"}]),
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/bulk/v1/customobjects/car_c/import/1013/status.json"))
            .respond_with(ok(
                json!([{"batchId": 1013, "operation": "import", "status": "Complete",
                "objectApiName": "car_c", "numOfObjectsProcessed": 3, "numOfRowsFailed": 0}]),
            ))
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let target = ImportTarget::CustomObject("car_c".into());
        let empty = dir.path().join("empty.csv");
        std::fs::write(&empty, "").unwrap();
        assert!(
            client
                .import_file(
                    &target,
                    &empty,
                    FileFormat::Csv,
                    &LeadImportOptions::default()
                )
                .await
                .is_err()
        );
        let csv = dir.path().join("cars.csv");
        std::fs::write(&csv, "vin\nV1\n").unwrap();
        let job = client
            .import_file(
                &target,
                &csv,
                FileFormat::Csv,
                &LeadImportOptions::default(),
            )
            .await
            .unwrap();
        let st = client.import_status(&target, job.batch_id).await.unwrap();
        assert_eq!(st.num_of_objects_processed, Some(3));
        assert!(st.is_finished());
    }
}
