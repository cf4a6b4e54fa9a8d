//! Custom objects, and the sync/delete/query helpers every non-lead object shares.

use serde_json::json;

use super::Client;
use super::describe::path_segment;
use super::error::Error;
use super::leads::{MAX_BATCH, check_batch, get_by_filter};
use super::model::{DedupeBy, Page, Record, RecordResult, SyncAction, match_results};
use super::transport::Call;

/// Sync (`POST <endpoint>` with `action`, `dedupeBy`, `input`) for non-lead objects.
pub(crate) async fn sync_objects(
    client: &Client,
    endpoint: &str,
    action: SyncAction,
    dedupe_by: DedupeBy,
    input: &[Record],
) -> Result<Vec<RecordResult>, Error> {
    check_batch(endpoint, "records", input.len(), MAX_BATCH)?;
    if input.is_empty() {
        return Ok(Vec::new());
    }
    if action == SyncAction::CreateDuplicate {
        return Err(Error::invalid(
            endpoint,
            "createDuplicate is only valid for leads",
        ));
    }
    if action == SyncAction::CreateOnly && dedupe_by == DedupeBy::IdField {
        return Err(Error::invalid(
            endpoint,
            "dedupeBy idField cannot be used with createOnly",
        ));
    }
    let body = json!({ "action": action, "dedupeBy": dedupe_by, "input": input });
    let env = client
        .call::<RecordResult>(&Call::post(endpoint, body))
        .await?;
    match_results(endpoint, input.len(), env.records())
}

/// Delete (`POST <object>/delete.json` with `deleteBy`, `input`) for non-lead objects.
pub(crate) async fn delete_objects(
    client: &Client,
    endpoint: &str,
    delete_by: DedupeBy,
    input: &[Record],
) -> Result<Vec<RecordResult>, Error> {
    check_batch(endpoint, "records", input.len(), MAX_BATCH)?;
    if input.is_empty() {
        return Ok(Vec::new());
    }
    let body = json!({ "deleteBy": delete_by, "input": input });
    let env = client
        .call::<RecordResult>(&Call::post(endpoint, body))
        .await?;
    match_results(endpoint, input.len(), env.records())
}

/// Compound-key query: `POST <endpoint>?_method=GET` with a JSON body; to page, every input is
/// sent again with the token.
pub(crate) async fn query_by_keys(
    client: &Client,
    endpoint: &str,
    fields: &[String],
    keys: &[Record],
    next_page_token: Option<&str>,
) -> Result<Page<Record>, Error> {
    if keys.is_empty() {
        return Err(Error::invalid(endpoint, "no keys to look up"));
    }
    check_batch(endpoint, "keys", keys.len(), MAX_BATCH)?;
    let mut body = json!({ "filterType": "dedupeFields", "input": keys });
    if !fields.is_empty() {
        body["fields"] = json!(fields);
    }
    if let Some(t) = next_page_token {
        body["nextPageToken"] = json!(t);
    }
    let call = Call::post(endpoint, body).q("_method", "GET");
    let env = client.call::<Record>(&call).await?;
    Ok(Page::from_envelope(env))
}

impl Client {
    /// Creates or updates up to 300 records of a custom object
    /// (`POST /rest/v1/customobjects/{apiName}.json`).
    ///
    /// Returns one result per input in input order (`seq`), with `marketoGUID`.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for a bad name, more than 300 records or an invalid
    /// action/dedupeBy pair, and any call-level error.
    pub async fn sync_custom_objects(
        &self,
        api_name: &str,
        action: SyncAction,
        dedupe_by: DedupeBy,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        let ep = format!("/rest/v1/customobjects/{}.json", path_segment(api_name)?);
        sync_objects(self, &ep, action, dedupe_by, input).await
    }

    /// Deletes up to 300 custom object records (`POST /rest/v1/customobjects/{apiName}/delete.json`).
    ///
    /// Returns one result per input in input order.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for a bad name or more than 300 records, and any
    /// call-level error.
    pub async fn delete_custom_objects(
        &self,
        api_name: &str,
        delete_by: DedupeBy,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        let ep = format!(
            "/rest/v1/customobjects/{}/delete.json",
            path_segment(api_name)?
        );
        delete_objects(self, &ep, delete_by, input).await
    }

    /// Reads one page of custom object records by a searchable field
    /// (`GET /rest/v1/customobjects/{apiName}.json`).
    ///
    /// Returns the page.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for a bad name or filter, and any call-level error.
    pub async fn get_custom_objects(
        &self,
        api_name: &str,
        filter_type: &str,
        filter_values: &[String],
        fields: &[String],
        next_page_token: Option<&str>,
    ) -> Result<Page<Record>, Error> {
        let ep = format!("/rest/v1/customobjects/{}.json", path_segment(api_name)?);
        get_by_filter(
            self,
            &ep,
            filter_type,
            filter_values,
            fields,
            next_page_token,
        )
        .await
    }

    /// Reads one page of custom object records by compound dedupe keys
    /// (`POST /rest/v1/customobjects/{apiName}.json?_method=GET`).
    ///
    /// Returns the page; to read the next one pass the same keys and the token.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for a bad name or no/too many keys, and any call-level
    /// error.
    pub async fn get_custom_objects_by_keys(
        &self,
        api_name: &str,
        keys: &[Record],
        fields: &[String],
        next_page_token: Option<&str>,
    ) -> Result<Page<Record>, Error> {
        let ep = format!("/rest/v1/customobjects/{}.json", path_segment(api_name)?);
        query_by_keys(self, &ep, fields, keys, next_page_token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::test_support::*;
    use serde_json::json;
    use wiremock::Mock;
    use wiremock::matchers::{body_partial_json, method, path, query_param};

    fn rec(v: serde_json::Value) -> Record {
        v.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn custom_object_sync_and_compound_query() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/customobjects/car_c.json"))
            .and(body_partial_json(json!({"action": "createOrUpdate", "dedupeBy": "dedupeFields"})))
            .respond_with(ok(json!([
                {"seq": 1, "status": "skipped", "reasons": [{"code": "1003", "message": "Invalid value"}]},
                {"seq": 0, "status": "created", "marketoGUID": "g-1"}
            ])))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/customobjects/car_c.json"))
            .and(query_param("_method", "GET"))
            .and(body_partial_json(
                json!({"filterType": "dedupeFields", "nextPageToken": "T"}),
            ))
            .respond_with(ok(json!([{"vin": "V1", "marketoGUID": "g-1"}])))
            .expect(1)
            .mount(&server)
            .await;
        let input = vec![rec(json!({"vin": "V1"})), rec(json!({"vin": "V2"}))];
        let r = client
            .sync_custom_objects(
                "car_c",
                SyncAction::CreateOrUpdate,
                DedupeBy::DedupeFields,
                &input,
            )
            .await
            .unwrap();
        assert_eq!(r[0].key(), Some("g-1"));
        assert!(r[1].is_skipped());
        let page = client
            .get_custom_objects_by_keys("car_c", &input, &[], Some("T"))
            .await
            .unwrap();
        assert_eq!(page.records[0]["vin"], "V1");
        assert!(
            client
                .sync_custom_objects("car_c", SyncAction::CreateOnly, DedupeBy::IdField, &input)
                .await
                .is_err()
        );
        assert!(
            client
                .get_custom_objects("../x", "vin", &[], &[], None)
                .await
                .is_err()
        );
    }
}
