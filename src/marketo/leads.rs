//! Leads: sync (upsert), get by filter type or id, delete, merge.

use serde_json::json;

use super::Client;
use super::error::Error;
use super::model::{Page, Record, RecordResult, SyncAction, match_results};
use super::transport::Call;

/// Most records per write or filter.
pub const MAX_BATCH: usize = 300;
/// Most losers per merge.
pub const MAX_MERGE_LOSERS: usize = 25;

const LEADS: &str = "/rest/v1/leads.json";

pub(crate) fn check_batch(endpoint: &str, what: &str, n: usize, max: usize) -> Result<(), Error> {
    if n > max {
        return Err(Error::invalid(
            endpoint,
            format!("{n} {what}, at most {max} allowed per call"),
        ));
    }
    Ok(())
}

impl Client {
    /// Creates or updates up to 300 leads (`POST /rest/v1/leads.json`).
    ///
    /// Returns one result per input, in input order: `created`, `updated` or `skipped` with
    /// `reasons` (e.g. 1005 lead already exists, 1004 not found, 1007 several match).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 records, and any call-level error.
    pub async fn sync_leads(
        &self,
        action: SyncAction,
        lookup_field: Option<&str>,
        partition_name: Option<&str>,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        check_batch(LEADS, "leads", input.len(), MAX_BATCH)?;
        if input.is_empty() {
            return Ok(Vec::new());
        }
        let mut body = json!({ "action": action, "input": input });
        if let Some(f) = lookup_field {
            body["lookupField"] = json!(f);
        }
        if let Some(p) = partition_name {
            body["partitionName"] = json!(p);
        }
        let mut call = Call::post(LEADS, body);
        if !action.is_idempotent() {
            call = call.not_idempotent();
        }
        let env = self.call::<RecordResult>(&call).await?;
        match_results(LEADS, input.len(), env.records())
    }

    /// Reads one page of leads whose `filter_type` field equals one of `filter_values`
    /// (`GET /rest/v1/leads.json`, sent as `POST ?_method=GET` when the URL is long).
    ///
    /// Returns the page; pass its `next_page_token` back to read the next one.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for no or more than 300 values, and any call-level error
    /// (1003 when more than 1,000 leads match).
    pub async fn get_leads(
        &self,
        filter_type: &str,
        filter_values: &[String],
        fields: &[String],
        next_page_token: Option<&str>,
    ) -> Result<Page<Record>, Error> {
        get_by_filter(
            self,
            LEADS,
            filter_type,
            filter_values,
            fields,
            next_page_token,
        )
        .await
    }

    /// Reads one lead by id (`GET /rest/v1/lead/{id}.json`).
    ///
    /// Returns `None` when no lead has this id.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn get_lead(&self, id: i64, fields: &[String]) -> Result<Option<Record>, Error> {
        let call = Call::get(format!("/rest/v1/lead/{id}.json")).q_list("fields", fields);
        let env = self.call::<Record>(&call).await?;
        Ok(env.first())
    }

    /// Deletes up to 300 leads by id (`POST /rest/v1/leads/delete.json`).
    ///
    /// Returns one result per id, in input order (`deleted` or `skipped`).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 ids, and any call-level error.
    pub async fn delete_leads(&self, ids: &[i64]) -> Result<Vec<RecordResult>, Error> {
        const EP: &str = "/rest/v1/leads/delete.json";
        check_batch(EP, "lead ids", ids.len(), MAX_BATCH)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let input: Vec<_> = ids.iter().map(|id| json!({ "id": id })).collect();
        let env = self
            .call::<RecordResult>(&Call::post(EP, json!({ "input": input })))
            .await?;
        match_results(EP, ids.len(), env.records())
    }

    /// Merges up to 25 losing leads into `winner` (`POST /rest/v1/leads/{winner}/merge.json`).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for no or more than 25 losers or the winner among them,
    /// and any call-level error.
    pub async fn merge_leads(
        &self,
        winner: i64,
        losers: &[i64],
        merge_in_crm: bool,
    ) -> Result<(), Error> {
        let ep = format!("/rest/v1/leads/{winner}/merge.json");
        if losers.is_empty() {
            return Err(Error::invalid(&ep, "no losing lead ids"));
        }
        if losers.contains(&winner) {
            return Err(Error::invalid(&ep, "the winner is among the losers"));
        }
        check_batch(&ep, "losing lead ids", losers.len(), MAX_MERGE_LOSERS)?;
        let mut call = Call::post_empty(ep);
        call = if losers.len() == 1 {
            call.q("leadId", losers[0])
        } else {
            call.q_list("leadIds", losers)
        };
        if merge_in_crm {
            call = call.q("mergeInCRM", true);
        }
        self.call_json(&call.not_idempotent()).await?;
        Ok(())
    }
}

/// Reads one page of a `filterType`/`filterValues` query (leads and the other objects).
pub(crate) async fn get_by_filter(
    client: &Client,
    endpoint: &str,
    filter_type: &str,
    filter_values: &[String],
    fields: &[String],
    next_page_token: Option<&str>,
) -> Result<Page<Record>, Error> {
    if filter_type.trim().is_empty() {
        return Err(Error::invalid(endpoint, "filterType is empty"));
    }
    if filter_values.is_empty() {
        return Err(Error::invalid(endpoint, "no filterValues"));
    }
    check_batch(endpoint, "filterValues", filter_values.len(), MAX_BATCH)?;
    if let Some(v) = filter_values.iter().find(|v| v.contains(',')) {
        return Err(Error::invalid(
            endpoint,
            format!("filter value {v:?} contains a comma"),
        ));
    }
    let call = Call::get(endpoint)
        .q("filterType", filter_type)
        .q_list("filterValues", filter_values)
        .q_list("fields", fields)
        .q("batchSize", MAX_BATCH)
        .q_opt("nextPageToken", next_page_token);
    let env = client.call::<Record>(&call).await?;
    Ok(Page::from_envelope(env))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::model::RecordStatus;
    use crate::marketo::test_support::*;
    use serde_json::json;
    use wiremock::matchers::{body_partial_json, method, path, query_param};
    use wiremock::{Mock, ResponseTemplate};

    fn rec(v: serde_json::Value) -> Record {
        v.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn sync_returns_skipped_results_matched_to_inputs() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/leads.json"))
            .and(body_partial_json(json!({"action": "createOnly", "lookupField": "email"})))
            .respond_with(ok(json!([
                {"id": 50, "status": "created"},
                {"status": "skipped", "reasons": [{"code": "1005", "message": "Lead already exists"}]},
                {"id": 51, "status": "created"}
            ])))
            .expect(1)
            .mount(&server)
            .await;
        let input = vec![
            rec(json!({"email": "a@x.com"})),
            rec(json!({"email": "b@x.com"})),
            rec(json!({"email": "c@x.com"})),
        ];
        let results = client
            .sync_leads(SyncAction::CreateOnly, Some("email"), None, &input)
            .await
            .unwrap();
        assert_eq!(results[0].id.as_deref(), Some("50"));
        assert_eq!(results[1].status, RecordStatus::Skipped);
        assert_eq!(results[1].reasons[0].code, "1005");
        assert_eq!(results[1].seq, Some(1));
        assert_eq!(results[2].id.as_deref(), Some("51"));
    }

    #[tokio::test]
    async fn too_many_records_are_refused_before_calling() {
        let (server, client) = server_with_identity().await;
        let input = vec![Record::new(); 301];
        let err = client
            .sync_leads(SyncAction::CreateOrUpdate, None, None, &input)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("301"), "{err}");
        let losers: Vec<i64> = (2..28).collect();
        assert!(client.merge_leads(1, &losers, false).await.is_err());
        assert!(server.received_requests().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn get_leads_pages_with_the_token() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/leads.json"))
            .and(query_param("filterType", "email"))
            .and(query_param("filterValues", "a@x.com,b@x.com"))
            .and(query_param("nextPageToken", "P2"))
            .respond_with(ok(json!([{"id": 2}])))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/leads.json"))
            .and(query_param("fields", "id,email"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "requestId": "a#1", "success": true, "result": [{"id": 1}],
                "moreResult": true, "nextPageToken": "P2"
            })))
            .mount(&server)
            .await;
        let values = vec!["a@x.com".to_owned(), "b@x.com".to_owned()];
        let fields = vec!["id".to_owned(), "email".to_owned()];
        let p1 = client
            .get_leads("email", &values, &fields, None)
            .await
            .unwrap();
        assert!(p1.more_result);
        assert_eq!(p1.records[0]["id"], 1);
        let p2 = client
            .get_leads("email", &values, &fields, p1.next_page_token.as_deref())
            .await
            .unwrap();
        assert_eq!(p2.records[0]["id"], 2);
        assert!(!p2.more_result);
    }

    #[tokio::test]
    async fn merge_sends_lead_ids_and_delete_matches_results() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/leads/10/merge.json"))
            .and(query_param("leadIds", "11,12"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"requestId": "a#1", "success": true})),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/leads/delete.json"))
            .and(body_partial_json(json!({"input": [{"id": 5}, {"id": 6}]})))
            .respond_with(ok(json!([
                {"id": 5, "status": "deleted"},
                {"id": 6, "status": "skipped", "reasons": [{"code": "1004", "message": "Lead not found"}]}
            ])))
            .expect(1)
            .mount(&server)
            .await;
        client.merge_leads(10, &[11, 12], false).await.unwrap();
        let r = client.delete_leads(&[5, 6]).await.unwrap();
        assert_eq!(r[0].status, RecordStatus::Deleted);
        assert!(r[1].is_skipped());
    }
}
