//! Activities: paging tokens, lead activities, lead changes, deleted leads, custom activities.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value as Json, json};

use super::Client;
use super::error::Error;
use super::leads::{MAX_BATCH, check_batch};
use super::model::{Page, RecordResult, match_results, parse_marketo_datetime};
use super::transport::Call;

/// Most activity type ids per call.
pub const MAX_ACTIVITY_TYPES: usize = 10;
/// Most lead ids per activity call.
pub const MAX_LEAD_IDS: usize = 30;

/// Narrows an activity or lead-change read to some leads, a list or assets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityFilter {
    /// Up to 30 lead ids.
    pub lead_ids: Vec<i64>,
    /// A static list id (not together with `lead_ids`).
    pub list_id: Option<i64>,
    /// Asset ids (activities only).
    pub asset_ids: Vec<i64>,
}

/// One `{name, value}` attribute of an activity.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct AttributeValue {
    /// The attribute's display name (or API name for custom activities).
    #[serde(alias = "apiName")]
    pub name: String,
    /// The value as sent (scalar or array).
    #[serde(default)]
    pub value: Json,
}

/// One changed field of a Change Data Value (lead changes).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// The field id (Describe Lead `id`).
    #[serde(default)]
    pub id: Option<i64>,
    /// The REST field name.
    pub name: String,
    /// The value after the change.
    #[serde(default)]
    pub new_value: Json,
    /// The value before the change.
    #[serde(default)]
    pub old_value: Json,
}

/// One activity record (activities, lead changes and deleted leads share the shape).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// The integer id (may be absent or non-unique; prefer `marketo_guid`).
    #[serde(default)]
    pub id: Option<i64>,
    /// The unique key.
    #[serde(default, rename = "marketoGUID", deserialize_with = "string_or_number")]
    pub marketo_guid: Option<String>,
    /// The lead.
    pub lead_id: i64,
    /// When it happened.
    #[serde(deserialize_with = "marketo_datetime")]
    pub activity_date: DateTime<Utc>,
    /// The activity type.
    pub activity_type_id: i64,
    /// The smart campaign that caused it.
    #[serde(default)]
    pub campaign_id: Option<i64>,
    /// The primary attribute's id (deleted leads: the lead id; changes: the field id).
    #[serde(default)]
    pub primary_attribute_value_id: Option<i64>,
    /// The primary attribute's value.
    #[serde(default, deserialize_with = "string_or_number")]
    pub primary_attribute_value: Option<String>,
    /// The secondary attributes.
    #[serde(default)]
    pub attributes: Vec<AttributeValue>,
    /// Changed fields (Get Lead Changes only).
    #[serde(default)]
    pub fields: Vec<FieldChange>,
}

impl Activity {
    /// Returns the key to de-duplicate on: `marketoGUID`, else the integer id.
    pub fn key(&self) -> Option<String> {
        self.marketo_guid
            .clone()
            .or_else(|| self.id.map(|i| i.to_string()))
    }

    /// Returns the attribute with this name.
    pub fn attribute(&self, name: &str) -> Option<&Json> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Json>::deserialize(d)? {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

fn marketo_datetime<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    parse_marketo_datetime(&s)
        .ok_or_else(|| serde::de::Error::custom(format!("invalid datetime {s:?}")))
}

/// One custom activity to add (`POST /rest/v1/activities/external.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewCustomActivity {
    /// The lead.
    pub lead_id: i64,
    /// When it happened.
    pub activity_date: DateTime<Utc>,
    /// The custom activity type id.
    pub activity_type_id: i64,
    /// The primary attribute's value.
    pub primary_attribute_value: String,
    /// Secondary attributes (`apiName` and `value`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Json>,
}

fn with_filter(
    mut call: Call,
    endpoint: &str,
    filter: &ActivityFilter,
    assets: bool,
) -> Result<Call, Error> {
    check_batch(endpoint, "lead ids", filter.lead_ids.len(), MAX_LEAD_IDS)?;
    if !filter.lead_ids.is_empty() && filter.list_id.is_some() {
        return Err(Error::invalid(
            endpoint,
            "leadIds and listId cannot be combined",
        ));
    }
    call = call
        .q_list("leadIds", &filter.lead_ids)
        .q_opt("listId", filter.list_id);
    if assets {
        call = call.q_list("assetIds", &filter.asset_ids);
    } else if !filter.asset_ids.is_empty() {
        return Err(Error::invalid(endpoint, "assetIds are not accepted here"));
    }
    Ok(call)
}

fn check_token(endpoint: &str, token: &str) -> Result<(), Error> {
    if token.trim().is_empty() {
        return Err(Error::invalid(
            endpoint,
            "nextPageToken is empty; get one with paging_token",
        ));
    }
    Ok(())
}

impl Client {
    /// Returns a paging token for activities since an instant
    /// (`GET /rest/v1/activities/pagingtoken.json`).
    ///
    /// # Errors
    ///
    /// Returns any call-level error, or [`Error::Decode`] when no token comes back.
    pub async fn paging_token(&self, since: DateTime<Utc>) -> Result<String, Error> {
        const EP: &str = "/rest/v1/activities/pagingtoken.json";
        let call = Call::get(EP).q(
            "sinceDatetime",
            since.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        let env = self.call_json(&call).await?;
        env.next_page_token
            .ok_or_else(|| Error::decode(EP, "no nextPageToken in the answer"))
    }

    /// Reads one page of activities of up to 10 types (`GET /rest/v1/activities.json`).
    ///
    /// Returns the page; persist its `next_page_token` and loop while `more_result`.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for no or more than 10 types or more than 30 leads, and
    /// any call-level error.
    pub async fn get_activities(
        &self,
        next_page_token: &str,
        activity_type_ids: &[i64],
        filter: &ActivityFilter,
    ) -> Result<Page<Activity>, Error> {
        const EP: &str = "/rest/v1/activities.json";
        check_token(EP, next_page_token)?;
        if activity_type_ids.is_empty() {
            return Err(Error::invalid(EP, "no activityTypeIds"));
        }
        check_batch(
            EP,
            "activity type ids",
            activity_type_ids.len(),
            MAX_ACTIVITY_TYPES,
        )?;
        let call = Call::get(EP)
            .q("nextPageToken", next_page_token)
            .q_list("activityTypeIds", activity_type_ids)
            .q("batchSize", MAX_BATCH);
        let call = with_filter(call, EP, filter, true)?;
        Ok(Page::from_envelope(self.call::<Activity>(&call).await?))
    }

    /// Reads one page of lead changes (New Lead and Change Data Value) for the given fields
    /// (`GET /rest/v1/activities/leadchanges.json`).
    ///
    /// Returns the page with each record's changed `fields`.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for no fields or more than 30 leads, and any call-level
    /// error.
    pub async fn get_lead_changes(
        &self,
        next_page_token: &str,
        fields: &[String],
        filter: &ActivityFilter,
    ) -> Result<Page<Activity>, Error> {
        const EP: &str = "/rest/v1/activities/leadchanges.json";
        check_token(EP, next_page_token)?;
        if fields.is_empty() {
            return Err(Error::invalid(EP, "fields are required"));
        }
        let call = Call::get(EP)
            .q("nextPageToken", next_page_token)
            .q_list("fields", fields)
            .q("batchSize", MAX_BATCH);
        let call = with_filter(call, EP, filter, false)?;
        Ok(Page::from_envelope(self.call::<Activity>(&call).await?))
    }

    /// Reads one page of deleted leads (`GET /rest/v1/activities/deletedleads.json`); each
    /// record's `primary_attribute_value_id` is the deleted lead's id.
    ///
    /// Returns the page.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn get_deleted_leads(&self, next_page_token: &str) -> Result<Page<Activity>, Error> {
        const EP: &str = "/rest/v1/activities/deletedleads.json";
        check_token(EP, next_page_token)?;
        let call = Call::get(EP)
            .q("nextPageToken", next_page_token)
            .q("batchSize", MAX_BATCH);
        Ok(Page::from_envelope(self.call::<Activity>(&call).await?))
    }

    /// Adds up to 300 custom activities (`POST /rest/v1/activities/external.json`).
    ///
    /// Returns one result per input in input order (`added` or `skipped`).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 activities, and any call-level error.
    pub async fn add_custom_activities(
        &self,
        input: &[NewCustomActivity],
    ) -> Result<Vec<RecordResult>, Error> {
        const EP: &str = "/rest/v1/activities/external.json";
        check_batch(EP, "activities", input.len(), MAX_BATCH)?;
        if input.is_empty() {
            return Ok(Vec::new());
        }
        // Adding twice records twice: never re-sent after an ambiguous failure.
        let call = Call::post(EP, json!({ "input": input })).not_idempotent();
        let env = self.call::<RecordResult>(&call).await?;
        match_results(EP, input.len(), env.records())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::test_support::*;
    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, ResponseTemplate};

    #[tokio::test]
    async fn activities_page_until_more_result_is_false() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/activities/pagingtoken.json"))
            .and(query_param("sinceDatetime", "2026-11-01T00:00:00Z"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "requestId": "a#1", "success": true, "nextPageToken": "T1"})))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/activities.json"))
            .and(query_param("nextPageToken", "T1"))
            .and(query_param("activityTypeIds", "12,13"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "success": true, "moreResult": true, "nextPageToken": "T2",
                "result": [{"id": 1, "marketoGUID": "1", "leadId": 5, "activityDate": "2026-11-02T10:00:00Z",
                            "activityTypeId": 13, "primaryAttributeValueId": 48, "primaryAttributeValue": "firstName",
                            "attributes": [{"name": "New Value", "value": "Ann"}]}]})))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/activities.json"))
            .and(query_param("nextPageToken", "T2"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "success": true, "moreResult": false, "nextPageToken": "T3"})))
            .mount(&server)
            .await;
        let since = "2026-11-01T00:00:00Z".parse().unwrap();
        let mut token = client.paging_token(since).await.unwrap();
        let mut seen = Vec::new();
        loop {
            let page = client
                .get_activities(&token, &[12, 13], &ActivityFilter::default())
                .await
                .unwrap();
            seen.extend(page.records);
            token = page.next_page_token.unwrap();
            if !page.more_result {
                break;
            }
        }
        assert_eq!(token, "T3");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].attribute("New Value"), Some(&json!("Ann")));
        assert_eq!(seen[0].key().as_deref(), Some("1"));
        let err = client
            .get_activities(
                &token,
                &(1..=11).collect::<Vec<_>>(),
                &ActivityFilter::default(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("11 activity type ids"), "{err}");
    }

    #[tokio::test]
    async fn lead_changes_require_fields_and_parse_changes() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/activities/leadchanges.json"))
            .and(query_param("fields", "firstName"))
            .respond_with(ok(json!([{"id": 2, "leadId": 6, "activityDate": "2014-09-17T22:31:49+0000",
                "activityTypeId": 13, "fields": [{"id": 48, "name": "firstName", "newValue": "B", "oldValue": "A"}],
                "attributes": []}])))
            .mount(&server)
            .await;
        assert!(
            client
                .get_lead_changes("T", &[], &ActivityFilter::default())
                .await
                .is_err()
        );
        let page = client
            .get_lead_changes("T", &["firstName".into()], &ActivityFilter::default())
            .await
            .unwrap();
        assert_eq!(page.records[0].fields[0].new_value, json!("B"));
        assert_eq!(
            page.records[0].activity_date.to_rfc3339(),
            "2014-09-17T22:31:49+00:00"
        );
    }
}
