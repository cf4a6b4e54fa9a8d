//! Opportunities and opportunity roles (`/rest/v1/opportunities`): sync, delete, query.

use super::Client;
use super::custom_objects::{delete_objects, query_by_keys, sync_objects};
use super::error::Error;
use super::leads::get_by_filter;
use super::model::{DedupeBy, Page, Record, RecordResult, SyncAction};

impl Client {
    /// Creates or updates up to 300 opportunities (`POST /rest/v1/opportunities.json`).
    ///
    /// Returns one result per input in input order (`seq`).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 records or an invalid action/dedupeBy
    /// pair, and any call-level error.
    pub async fn sync_opportunities(
        &self,
        action: SyncAction,
        dedupe_by: DedupeBy,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        sync_objects(
            self,
            "/rest/v1/opportunities.json",
            action,
            dedupe_by,
            input,
        )
        .await
    }

    /// Deletes up to 300 opportunities (`POST /rest/v1/opportunities/delete.json`).
    ///
    /// Returns one result per input in input order (`skipped` with 1013 for misses).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 records, and any call-level error.
    pub async fn delete_opportunities(
        &self,
        delete_by: DedupeBy,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        delete_objects(self, "/rest/v1/opportunities/delete.json", delete_by, input).await
    }

    /// Reads one page of opportunities by a searchable field (`GET /rest/v1/opportunities.json`).
    ///
    /// Returns the page; pass its `next_page_token` back for the next one.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for no or more than 300 values, and any call-level error.
    pub async fn get_opportunities(
        &self,
        filter_type: &str,
        filter_values: &[String],
        fields: &[String],
        next_page_token: Option<&str>,
    ) -> Result<Page<Record>, Error> {
        get_by_filter(
            self,
            "/rest/v1/opportunities.json",
            filter_type,
            filter_values,
            fields,
            next_page_token,
        )
        .await
    }
}

const ROLES: &str = "/rest/v1/opportunities/roles.json";

impl Client {
    /// Creates or updates up to 300 opportunity roles (`POST /rest/v1/opportunities/roles.json`).
    ///
    /// Returns one result per input in input order (`seq`, `marketoGUID`).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 records or an invalid action/dedupeBy
    /// pair, and any call-level error.
    pub async fn sync_opportunity_roles(
        &self,
        action: SyncAction,
        dedupe_by: DedupeBy,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        sync_objects(self, ROLES, action, dedupe_by, input).await
    }

    /// Deletes up to 300 opportunity roles (`POST /rest/v1/opportunities/roles/delete.json`).
    ///
    /// Returns one result per input in input order.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 records, and any call-level error.
    pub async fn delete_opportunity_roles(
        &self,
        delete_by: DedupeBy,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        delete_objects(
            self,
            "/rest/v1/opportunities/roles/delete.json",
            delete_by,
            input,
        )
        .await
    }

    /// Reads one page of opportunity roles by a searchable field
    /// (`GET /rest/v1/opportunities/roles.json`).
    ///
    /// Returns the page.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for no or more than 300 values, and any call-level error.
    pub async fn get_opportunity_roles(
        &self,
        filter_type: &str,
        filter_values: &[String],
        fields: &[String],
        next_page_token: Option<&str>,
    ) -> Result<Page<Record>, Error> {
        get_by_filter(
            self,
            ROLES,
            filter_type,
            filter_values,
            fields,
            next_page_token,
        )
        .await
    }

    /// Reads one page of opportunity roles by their compound dedupe key
    /// (`externalOpportunityId`, `leadId`, `role`) with `POST ?_method=GET` and a JSON body.
    ///
    /// Returns the page; to read the next one pass the same keys and the token.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for no or more than 300 keys, and any call-level error.
    pub async fn get_opportunity_roles_by_keys(
        &self,
        keys: &[Record],
        fields: &[String],
        next_page_token: Option<&str>,
    ) -> Result<Page<Record>, Error> {
        query_by_keys(self, ROLES, fields, keys, next_page_token).await
    }
}

#[cfg(test)]
mod tests {
    use crate::marketo::test_support::*;
    use crate::marketo::{DedupeBy, Record, SyncAction};
    use serde_json::json;
    use wiremock::Mock;
    use wiremock::matchers::{body_partial_json, method, path, query_param};

    #[tokio::test]
    async fn roles_use_compound_keys_and_companies_delete_by_dedupe_fields() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/opportunities/roles.json"))
            .and(query_param("_method", "GET"))
            .and(body_partial_json(json!({"filterType": "dedupeFields",
                "input": [{"externalOpportunityId": "O1", "leadId": 1, "role": "Captain"}]})))
            .respond_with(ok(json!([{"marketoGUID": "r1", "role": "Captain"}])))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/companies/delete.json"))
            .and(body_partial_json(json!({"deleteBy": "dedupeFields"})))
            .respond_with(ok(json!([{"seq": 0, "status": "skipped",
                "reasons": [{"code": "1013", "message": "Record not found"}]}])))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/salespersons.json"))
            .and(body_partial_json(
                json!({"action": "updateOnly", "dedupeBy": "idField"}),
            ))
            .respond_with(ok(json!([{"seq": 0, "status": "updated", "id": 7}])))
            .expect(1)
            .mount(&server)
            .await;
        let key: Record = json!({"externalOpportunityId": "O1", "leadId": 1, "role": "Captain"})
            .as_object()
            .unwrap()
            .clone();
        let page = client
            .get_opportunity_roles_by_keys(std::slice::from_ref(&key), &[], None)
            .await
            .unwrap();
        assert_eq!(page.records[0]["marketoGUID"], "r1");
        let company: Record = json!({"externalCompanyId": "C9"})
            .as_object()
            .unwrap()
            .clone();
        let r = client
            .delete_companies(DedupeBy::DedupeFields, &[company])
            .await
            .unwrap();
        assert_eq!(r[0].reasons[0].code, "1013");
        let sp: Record = json!({"id": 7, "email": "s@x.com"})
            .as_object()
            .unwrap()
            .clone();
        let r = client
            .sync_salespersons(SyncAction::UpdateOnly, DedupeBy::IdField, &[sp])
            .await
            .unwrap();
        assert_eq!(r[0].id.as_deref(), Some("7"));
    }
}
