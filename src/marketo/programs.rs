//! Programs (Asset API browse) and program members (Lead Database API).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::Client;
use super::describe::{NO_DESCRIBE, ObjectMetadata};
use super::error::Error;
use super::leads::{MAX_BATCH, check_batch};
use super::model::{Page, Record, RecordResult, match_results};
use super::transport::Call;

/// Most programs per browse call.
pub const MAX_BROWSE: u32 = 200;

/// A program as the Asset API returns it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Program {
    /// The id.
    pub id: i64,
    /// The name.
    pub name: String,
    /// The description.
    #[serde(default)]
    pub description: Option<String>,
    /// Created (Asset format, e.g. `2015-05-21T22:45:13Z+0000`).
    #[serde(default)]
    pub created_at: Option<String>,
    /// Updated.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// The program's URL in the Marketo UI.
    #[serde(default)]
    pub url: Option<String>,
    /// Default, Email, Event, Engagement, ...
    #[serde(default, rename = "type")]
    pub program_type: Option<String>,
    /// The channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// The folder as sent.
    #[serde(default)]
    pub folder: Option<Json>,
    /// on, off, unlocked, or empty.
    #[serde(default)]
    pub status: Option<String>,
    /// The workspace.
    #[serde(default)]
    pub workspace: Option<String>,
}

/// Narrows a program browse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramBrowse {
    /// Skip this many programs.
    pub offset: u32,
    /// Return at most this many (1..=200; 0 means 200).
    pub max_return: u32,
    /// `id`, `programId`, `folderId` or `workspace`, with its values.
    pub filter: Option<(String, Vec<String>)>,
    /// Created or updated at or after this instant.
    pub earliest_updated_at: Option<DateTime<Utc>>,
    /// Created or updated before this instant.
    pub latest_updated_at: Option<DateTime<Utc>>,
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Client {
    /// Browses programs (`GET /rest/asset/v1/programs.json`); the end is an empty result.
    ///
    /// Returns the programs of this window.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for `max_return` over 200, and any call-level error.
    pub async fn browse_programs(&self, browse: &ProgramBrowse) -> Result<Vec<Program>, Error> {
        const EP: &str = "/rest/asset/v1/programs.json";
        let max = if browse.max_return == 0 {
            MAX_BROWSE
        } else {
            browse.max_return
        };
        check_batch(EP, "programs", max as usize, MAX_BROWSE as usize)?;
        let mut call = Call::get(EP).q("maxReturn", max).q("offset", browse.offset);
        if let Some((ty, values)) = &browse.filter {
            call = call.q("filterType", ty).q_list("filterValues", values);
        }
        call = call
            .q_opt("earliestUpdatedAt", browse.earliest_updated_at.map(iso))
            .q_opt("latestUpdatedAt", browse.latest_updated_at.map(iso));
        Ok(self.call::<Program>(&call).await?.records())
    }

    /// Reads one program (`GET /rest/asset/v1/program/{id}.json`).
    ///
    /// Returns `None` when there is no such program.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn get_program(&self, id: i64) -> Result<Option<Program>, Error> {
        let call = Call::get(format!("/rest/asset/v1/program/{id}.json"));
        Ok(self.call::<Program>(&call).await?.first())
    }

    /// Describes program members (`GET /rest/v1/programs/members/describe.json`).
    ///
    /// Returns the metadata (dedupe fields `leadId`, `programId`).
    ///
    /// # Errors
    ///
    /// Returns any call-level error, or [`Error::Decode`] when the result is empty.
    pub async fn describe_program_members(&self) -> Result<ObjectMetadata, Error> {
        const EP: &str = "/rest/v1/programs/members/describe.json";
        self.call::<ObjectMetadata>(&Call::get(EP))
            .await?
            .one(EP, NO_DESCRIBE)
    }

    /// Reads one page of a program's members (`GET /rest/v1/programs/{id}/members.json`) by
    /// `leadId`, `statusName`, a custom field, or `updatedAt` with a range of at most 7 days.
    ///
    /// Returns the page.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for no or more than 300 values, and any call-level error.
    pub async fn get_program_members(
        &self,
        program_id: i64,
        filter_type: &str,
        filter_values: &[String],
        updated_between: Option<(DateTime<Utc>, DateTime<Utc>)>,
        fields: &[String],
        next_page_token: Option<&str>,
    ) -> Result<Page<Record>, Error> {
        let ep = format!("/rest/v1/programs/{program_id}/members.json");
        if filter_values.is_empty() && updated_between.is_none() {
            return Err(Error::invalid(&ep, "no filterValues"));
        }
        check_batch(&ep, "filterValues", filter_values.len(), MAX_BATCH)?;
        let mut call = Call::get(&ep)
            .q("filterType", filter_type)
            .q_list("filterValues", filter_values);
        if let Some((start, end)) = updated_between {
            call = call.q("startAt", iso(start)).q("endAt", iso(end));
        }
        let call = call
            .q_list("fields", fields)
            .q("batchSize", MAX_BATCH)
            .q_opt("nextPageToken", next_page_token);
        Ok(Page::from_envelope(self.call::<Record>(&call).await?))
    }

    /// Sets the program status of up to 300 leads
    /// (`POST /rest/v1/programs/{id}/members/status.json`).
    ///
    /// Returns one result per lead in input order (`skipped` with 1037 when already at or past
    /// the status).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 leads, and any call-level error.
    pub async fn set_program_member_status(
        &self,
        program_id: i64,
        status_name: &str,
        lead_ids: &[i64],
    ) -> Result<Vec<RecordResult>, Error> {
        let ep = format!("/rest/v1/programs/{program_id}/members/status.json");
        check_batch(&ep, "leads", lead_ids.len(), MAX_BATCH)?;
        if lead_ids.is_empty() {
            return Ok(Vec::new());
        }
        let input: Vec<_> = lead_ids.iter().map(|id| json!({ "leadId": id })).collect();
        let body = json!({ "statusName": status_name, "input": input });
        let env = self.call::<RecordResult>(&Call::post(&ep, body)).await?;
        match_results(&ep, lead_ids.len(), env.records())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::test_support::*;
    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, ResponseTemplate};

    #[tokio::test]
    async fn browse_ends_on_the_no_assets_warning() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/asset/v1/programs.json"))
            .and(query_param("offset", "0"))
            .and(query_param("maxReturn", "200"))
            .respond_with(ok(json!([{"id": 1107, "name": "P", "type": "Default",
                "createdAt": "2015-05-21T22:45:13Z+0000", "folder": {"type": "Folder", "value": 1910}}])))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/rest/asset/v1/programs.json"))
            .and(query_param("offset", "200"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "success": true, "errors": [], "requestId": "a#1",
                "warnings": ["No assets found for the given search criteria."]})))
            .mount(&server)
            .await;
        let first = client
            .browse_programs(&ProgramBrowse::default())
            .await
            .unwrap();
        assert_eq!(first[0].program_type.as_deref(), Some("Default"));
        let next = client
            .browse_programs(&ProgramBrowse {
                offset: 200,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(next.is_empty());
    }

    #[tokio::test]
    async fn member_status_results_match_inputs() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/programs/1044/members/status.json"))
            .respond_with(ok(json!([
                {"seq": 0, "status": "updated", "leadId": 1},
                {"seq": 1, "status": "skipped", "reasons": [{"code": "1037", "message": "Lead already in status"}]}
            ])))
            .mount(&server)
            .await;
        let r = client
            .set_program_member_status(1044, "Influenced", &[1, 2])
            .await
            .unwrap();
        assert_eq!(r[1].reasons[0].code, "1037");
    }
}
