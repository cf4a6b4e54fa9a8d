//! Static lists and their membership.

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::Client;
use super::error::Error;
use super::leads::{MAX_BATCH, check_batch};
use super::model::{Page, Record, RecordResult, match_results};
use super::transport::{Body, Call};

/// A static list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticList {
    /// The id.
    pub id: i64,
    /// The name.
    pub name: String,
    /// The description.
    #[serde(default)]
    pub description: Option<String>,
    /// The program it belongs to.
    #[serde(default)]
    pub program_name: Option<String>,
    /// The workspace.
    #[serde(default)]
    pub workspace_name: Option<String>,
    /// Created.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Updated.
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// A folder of the Asset API (`GET /rest/asset/v1/folder/byName.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Folder {
    /// The id.
    pub id: i64,
    /// The name.
    pub name: String,
    /// The reference to use as a parent (`{"id":..,"type":"Folder"|"Program"}`).
    #[serde(default)]
    pub folder_id: Option<FolderRef>,
}

/// A folder reference as the Asset API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct FolderRef {
    /// The folder's (or program's) id.
    pub id: i64,
    /// `Folder` or `Program`.
    #[serde(rename = "type")]
    pub kind: String,
}

impl Folder {
    /// Returns the reference to the folder as a parent.
    pub fn reference(&self) -> FolderRef {
        self.folder_id.clone().unwrap_or(FolderRef {
            id: self.id,
            kind: "Folder".into(),
        })
    }
}

fn id_call(mut call: Call, ids: &[i64]) -> Call {
    // Swagger: `id` is a multi-valued query parameter (`id=1&id=2`).
    for id in ids {
        call = call.q("id", id);
    }
    call
}

impl Client {
    /// Reads one page of static lists (`GET /rest/v1/lists.json`), optionally by ids or names.
    ///
    /// Returns the page.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn get_lists(
        &self,
        ids: &[i64],
        names: &[String],
        next_page_token: Option<&str>,
    ) -> Result<Page<StaticList>, Error> {
        let call = Call::get("/rest/v1/lists.json")
            .q_list("id", ids)
            .q_list("name", names)
            .q("batchSize", MAX_BATCH)
            .q_opt("nextPageToken", next_page_token);
        Ok(Page::from_envelope(self.call::<StaticList>(&call).await?))
    }

    /// Finds a static list by its exact name (`GET /rest/asset/v1/staticList/byName.json`).
    ///
    /// Returns `None` when Marketo has no list of that name.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn static_list_by_name(&self, name: &str) -> Result<Option<StaticList>, Error> {
        let call = Call::get("/rest/asset/v1/staticList/byName.json").q("name", name);
        Ok(self.call::<StaticList>(&call).await?.first())
    }

    /// Finds a marketing folder by its exact name (`GET /rest/asset/v1/folder/byName.json`,
    /// `type=Folder`).
    ///
    /// Returns `None` when Marketo has no folder of that name.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn folder_by_name(&self, name: &str) -> Result<Option<Folder>, Error> {
        let call = Call::get("/rest/asset/v1/folder/byName.json")
            .q("name", name)
            .q("type", "Folder");
        Ok(self
            .call::<Folder>(&call)
            .await?
            .records()
            .into_iter()
            .find(|f| f.name == name))
    }

    /// Creates an empty static list in `folder` (`POST /rest/asset/v1/staticLists.json`).
    /// Not idempotent: a caller that may repeat it looks the name up first (names are unique:
    /// Marketo answers 709 for a taken one).
    ///
    /// Returns the list created.
    ///
    /// # Errors
    ///
    /// Returns any call-level error (709 for a name taken, 702/710 for a folder not found).
    pub async fn create_static_list(
        &self,
        name: &str,
        folder: &FolderRef,
        description: &str,
    ) -> Result<StaticList, Error> {
        const EP: &str = "/rest/asset/v1/staticLists.json";
        let folder_json = serde_json::to_string(folder).unwrap_or_default();
        let form = vec![
            ("folder".to_owned(), folder_json),
            ("name".to_owned(), name.to_owned()),
            ("description".to_owned(), description.to_owned()),
        ];
        let call = Call::post_form(EP, form).not_idempotent();
        self.call::<StaticList>(&call)
            .await?
            .one(EP, "the list created")
    }

    /// Reads one static list (`GET /rest/v1/lists/{id}.json`).
    ///
    /// Returns `None` when there is no such list.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn get_list(&self, list_id: i64) -> Result<Option<StaticList>, Error> {
        let call = Call::get(format!("/rest/v1/lists/{list_id}.json"));
        Ok(self.call::<StaticList>(&call).await?.first())
    }

    /// Reads one page of a list's members (`GET /rest/v1/lists/{id}/leads.json`).
    ///
    /// Returns the page of leads.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn list_members(
        &self,
        list_id: i64,
        fields: &[String],
        next_page_token: Option<&str>,
    ) -> Result<Page<Record>, Error> {
        let call = Call::get(format!("/rest/v1/lists/{list_id}/leads.json"))
            .q_list("fields", fields)
            .q("batchSize", MAX_BATCH)
            .q_opt("nextPageToken", next_page_token);
        Ok(Page::from_envelope(self.call::<Record>(&call).await?))
    }

    /// Adds up to 300 leads to a static list (`POST /rest/v1/lists/{id}/leads.json`).
    ///
    /// Returns one result per lead in input order (`added` or `skipped`).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 leads, and any call-level error.
    pub async fn add_to_list(
        &self,
        list_id: i64,
        lead_ids: &[i64],
    ) -> Result<Vec<RecordResult>, Error> {
        let ep = format!("/rest/v1/lists/{list_id}/leads.json");
        self.list_op(Method::POST, &ep, lead_ids, false).await
    }

    /// Removes up to 300 leads from a static list (`DELETE /rest/v1/lists/{id}/leads.json`).
    ///
    /// Returns one result per lead in input order (`removed` or `skipped`).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 leads, and any call-level error.
    pub async fn remove_from_list(
        &self,
        list_id: i64,
        lead_ids: &[i64],
    ) -> Result<Vec<RecordResult>, Error> {
        let ep = format!("/rest/v1/lists/{list_id}/leads.json");
        self.list_op(Method::DELETE, &ep, lead_ids, true).await
    }

    /// Checks which leads are members of a list (`GET /rest/v1/lists/{id}/leads/ismember.json`).
    ///
    /// Returns one result per lead in input order (`memberof`, `notmemberof` or `skipped`).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 leads, and any call-level error.
    pub async fn are_list_members(
        &self,
        list_id: i64,
        lead_ids: &[i64],
    ) -> Result<Vec<RecordResult>, Error> {
        let ep = format!("/rest/v1/lists/{list_id}/leads/ismember.json");
        check_batch(&ep, "leads", lead_ids.len(), MAX_BATCH)?;
        if lead_ids.is_empty() {
            return Ok(Vec::new());
        }
        let env = self
            .call::<RecordResult>(&id_call(Call::get(&ep), lead_ids))
            .await?;
        match_results(&ep, lead_ids.len(), env.records())
    }

    async fn list_op(
        &self,
        method: Method,
        ep: &str,
        lead_ids: &[i64],
        ids_in_query: bool,
    ) -> Result<Vec<RecordResult>, Error> {
        check_batch(ep, "leads", lead_ids.len(), MAX_BATCH)?;
        if lead_ids.is_empty() {
            return Ok(Vec::new());
        }
        let input: Vec<_> = lead_ids.iter().map(|id| json!({ "id": id })).collect();
        let mut call = Call::post(ep, json!({ "input": input }));
        call.method = method;
        if ids_in_query {
            // Swagger removeLeadsFromListUsingDELETE requires both the ids and the body.
            call = id_call(call, lead_ids);
        }
        debug_assert!(matches!(call.body, Body::Json(_)));
        let env = self.call::<RecordResult>(&call).await?;
        match_results(ep, lead_ids.len(), env.records())
    }
}

#[cfg(test)]
mod tests {
    use crate::marketo::RecordStatus;
    use crate::marketo::test_support::*;
    use serde_json::json;
    use wiremock::Mock;
    use wiremock::matchers::{body_partial_json, method, path, query_param};

    #[tokio::test]
    async fn membership_add_remove_and_check() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/lists/7/leads.json"))
            .and(body_partial_json(json!({"input": [{"id": 1}, {"id": 2}]})))
            .respond_with(ok(json!([{"id": 1, "status": "added"},
                {"id": 2, "status": "skipped", "reasons": [{"code": "1004", "message": "Lead not found"}]}])))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path("/rest/v1/lists/7/leads.json"))
            .and(query_param("id", "1"))
            .respond_with(ok(json!([{"id": 1, "status": "removed"}])))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/lists/7/leads/ismember.json"))
            .respond_with(ok(
                json!([{"id": 1, "status": "notmemberof"}, {"id": 3, "status": "memberof"}]),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let r = client.add_to_list(7, &[1, 2]).await.unwrap();
        assert_eq!(r[0].status, RecordStatus::Added);
        assert!(r[1].is_skipped());
        let r = client.remove_from_list(7, &[1]).await.unwrap();
        assert_eq!(r[0].status, RecordStatus::Removed);
        let r = client.are_list_members(7, &[1, 3]).await.unwrap();
        assert_eq!(r[1].status, RecordStatus::Memberof);
    }
}
