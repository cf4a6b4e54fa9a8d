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
use crate::model::{FieldDef, FieldType, ObjectSchema, Side};

/// Most programs per browse call.
pub const MAX_BROWSE: u32 = 200;
/// Longest `updatedAt` range of one program members query (Marketo refuses a longer one).
pub const MAX_MEMBERS_UPDATED_DAYS: i64 = 7;

/// Returns the ranges of at most [`MAX_MEMBERS_UPDATED_DAYS`] that cover `from..=to`, for the
/// members query by `updatedAt`. Marketo's range includes both ends and its times may carry
/// fractions of a second, so consecutive ranges share their boundary instant (no gap; a member
/// changed exactly then is read twice and must be kept once). None when `from` is after `to`.
pub fn members_updated_ranges(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let span = chrono::Duration::days(MAX_MEMBERS_UPDATED_DAYS);
    let mut out = Vec::new();
    let mut start = from;
    while start <= to {
        let end = (start + span).min(to);
        out.push((start, end));
        if end == to {
            break;
        }
        start = end;
    }
    out
}

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
    /// The program's tags (`tagType`/`tagValue`); only Get Program by id or name returns them,
    /// the browse does not.
    #[serde(default)]
    pub tags: Vec<ProgramTag>,
}

impl Program {
    /// Returns the id of the folder holding the program (`folder.value`, or `folder.id`).
    pub fn folder_id(&self) -> Option<i64> {
        let folder = self.folder.as_ref()?;
        folder
            .get("value")
            .or_else(|| folder.get("id"))
            .and_then(Json::as_i64)
    }

    /// Returns the name of the folder holding the program, when the Asset API sent it.
    pub fn folder_name(&self) -> Option<&str> {
        self.folder.as_ref()?.get("folderName")?.as_str()
    }
}

/// One tag of a program.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgramTag {
    /// The tag type (e.g. `Region`).
    pub tag_type: String,
    /// The value.
    pub tag_value: String,
}

/// A program channel and its progression statuses (`GET /rest/asset/v1/channels.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Channel {
    /// The channel id.
    #[serde(default)]
    pub id: Option<i64>,
    /// The channel name (a program's `channel`).
    pub name: String,
    /// The program type it applies to (`program`, `event`, `webinar`, `nurture`).
    #[serde(default)]
    pub applicable_program_type: Option<String>,
    /// The statuses in progression order.
    #[serde(default)]
    pub progression_statuses: Vec<ChannelStatus>,
}

impl Channel {
    /// Returns the names of the channel's statuses.
    pub fn status_names(&self) -> Vec<&str> {
        self.progression_statuses
            .iter()
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// One progression status of a channel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// The status name.
    pub name: String,
    /// Its step in the progression.
    #[serde(default)]
    pub step: Option<i64>,
    /// Whether reaching it is the program's success.
    #[serde(default)]
    pub success: bool,
    /// Whether it is hidden in the UI.
    #[serde(default)]
    pub hidden: bool,
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

/// The program fields: (name, Marketo data type). `folderId`/`folderName` flatten the
/// Asset API's `folder`; `tags` is `type: value` pairs joined by `; `.
pub const PROGRAM_FIELDS: &[(&str, FieldType)] = &[
    ("id", FieldType::Integer),
    ("name", FieldType::Text { max_len: Some(255) }),
    ("description", FieldType::Text { max_len: None }),
    ("type", FieldType::Text { max_len: Some(255) }),
    ("channel", FieldType::Text { max_len: Some(255) }),
    ("status", FieldType::Text { max_len: Some(255) }),
    ("workspace", FieldType::Text { max_len: Some(255) }),
    ("url", FieldType::Url),
    ("createdAt", FieldType::DateTime),
    ("updatedAt", FieldType::DateTime),
    ("folderId", FieldType::Integer),
    ("folderName", FieldType::Text { max_len: Some(255) }),
    ("tags", FieldType::Text { max_len: None }),
];

/// Returns the fixed Marketo-side schema of programs.
pub fn program_schema() -> ObjectSchema {
    let fields = PROGRAM_FIELDS
        .iter()
        .map(|(name, ty)| {
            let mut f = FieldDef::new(*name, ty.clone());
            f.read_only = true;
            f.unique = *name == "id";
            f
        })
        .collect();
    ObjectSchema {
        side: Side::Marketo,
        object: "program".into(),
        id_field: Some("id".into()),
        dedupe_fields: vec!["id".into()],
        fields,
    }
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

    /// Reads every program channel with its statuses (`GET /rest/asset/v1/channels.json`,
    /// paged 200 at a time).
    ///
    /// Returns the channels.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn channels(&self) -> Result<Vec<Channel>, Error> {
        const EP: &str = "/rest/asset/v1/channels.json";
        let mut out = Vec::new();
        loop {
            let call = Call::get(EP)
                .q("maxReturn", MAX_BROWSE)
                .q("offset", out.len());
            let page = self.call::<Channel>(&call).await?.records();
            let n = page.len();
            out.extend(page);
            if n < MAX_BROWSE as usize {
                return Ok(out);
            }
        }
    }

    /// Sets the program status of up to 300 leads, forward or back, adding the leads that are
    /// not members yet (Change Lead Program Status,
    /// `POST /rest/v1/leads/programs/{id}/status.json`).
    ///
    /// Returns one result per lead in input order (`skipped` with 1025 for a status the
    /// program's channel lacks).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 leads, and any call-level error (1025
    /// for an unknown status is call-level on this route).
    pub async fn change_lead_program_status(
        &self,
        program_id: i64,
        status: &str,
        lead_ids: &[i64],
    ) -> Result<Vec<RecordResult>, Error> {
        let ep = format!("/rest/v1/leads/programs/{program_id}/status.json");
        check_batch(&ep, "leads", lead_ids.len(), MAX_BATCH)?;
        if lead_ids.is_empty() {
            return Ok(Vec::new());
        }
        let input: Vec<_> = lead_ids.iter().map(|id| json!({ "id": id })).collect();
        let body = json!({ "status": status, "input": input });
        let env = self.call::<RecordResult>(&Call::post(&ep, body)).await?;
        match_results(&ep, lead_ids.len(), env.records())
    }

    /// Removes up to 300 leads from a program
    /// (`POST /rest/v1/programs/{id}/members/delete.json`).
    ///
    /// Returns one result per lead in input order.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 leads, and any call-level error.
    pub async fn delete_program_members(
        &self,
        program_id: i64,
        lead_ids: &[i64],
    ) -> Result<Vec<RecordResult>, Error> {
        let ep = format!("/rest/v1/programs/{program_id}/members/delete.json");
        check_batch(&ep, "leads", lead_ids.len(), MAX_BATCH)?;
        if lead_ids.is_empty() {
            return Ok(Vec::new());
        }
        let input: Vec<_> = lead_ids.iter().map(|id| json!({ "leadId": id })).collect();
        let env = self
            .call::<RecordResult>(&Call::post(&ep, json!({ "input": input })))
            .await?;
        match_results(&ep, lead_ids.len(), env.records())
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
    /// Returns [`Error::InvalidInput`] for no or more than 300 values, for `updatedAt` without
    /// a range or with one longer than 7 days (Marketo refuses it: the check saves the call),
    /// and any call-level error.
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
        match updated_between {
            None if filter_type == "updatedAt" => {
                return Err(Error::invalid(
                    &ep,
                    "filterType updatedAt needs startAt and endAt",
                ));
            }
            Some((start, end))
                if end < start
                    || end - start > chrono::Duration::days(MAX_MEMBERS_UPDATED_DAYS) =>
            {
                return Err(Error::invalid(
                    &ep,
                    format!(
                        "the updatedAt range {} .. {} is not a range of at most \
                         {MAX_MEMBERS_UPDATED_DAYS} days",
                        iso(start),
                        iso(end)
                    ),
                ));
            }
            _ => {}
        }
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

    #[test]
    fn updated_ranges_are_at_most_seven_days_and_leave_no_gap() {
        let from = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let day = chrono::Duration::days(1);
        let ranges = members_updated_ranges(from, from + day * 20);
        assert_eq!(
            ranges,
            vec![
                (from, from + day * 7),
                (from + day * 7, from + day * 14),
                (from + day * 14, from + day * 20),
            ]
        );
        assert_eq!(
            members_updated_ranges(from, from + day * 7),
            vec![(from, from + day * 7)]
        );
        assert_eq!(members_updated_ranges(from, from), vec![(from, from)]);
        assert!(members_updated_ranges(from + day, from).is_empty());
    }

    #[tokio::test]
    async fn a_members_range_over_seven_days_is_refused_before_the_call() {
        let (_server, client) = server_with_identity().await;
        let from = Utc::now();
        let long = Some((
            from,
            from + chrono::Duration::days(7) + chrono::Duration::seconds(1),
        ));
        let err = client
            .get_program_members(1107, "updatedAt", &[], long, &[], None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        let none = client
            .get_program_members(1107, "updatedAt", &[], None, &[], None)
            .await
            .unwrap_err();
        assert!(matches!(none, Error::InvalidInput { .. }), "{none}");
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
