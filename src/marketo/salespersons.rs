//! Sales persons (`/rest/v1/salespersons`): sync, delete, query.

use super::Client;
use super::custom_objects::{delete_objects, sync_objects};
use super::error::Error;
use super::leads::get_by_filter;
use super::model::{DedupeBy, Page, Record, RecordResult, SyncAction};

impl Client {
    /// Creates or updates up to 300 sales persons (`POST /rest/v1/salespersons.json`).
    ///
    /// Returns one result per input in input order (`seq`).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 records or an invalid action/dedupeBy
    /// pair, and any call-level error.
    pub async fn sync_salespersons(
        &self,
        action: SyncAction,
        dedupe_by: DedupeBy,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        sync_objects(self, "/rest/v1/salespersons.json", action, dedupe_by, input).await
    }

    /// Deletes up to 300 sales persons (`POST /rest/v1/salespersons/delete.json`).
    ///
    /// Returns one result per input in input order (`skipped` with 1013 for misses).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for more than 300 records, and any call-level error.
    pub async fn delete_salespersons(
        &self,
        delete_by: DedupeBy,
        input: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        delete_objects(self, "/rest/v1/salespersons/delete.json", delete_by, input).await
    }

    /// Reads one page of sales persons by a searchable field (`GET /rest/v1/salespersons.json`).
    ///
    /// Returns the page; pass its `next_page_token` back for the next one.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for no or more than 300 values, and any call-level error.
    pub async fn get_salespersons(
        &self,
        filter_type: &str,
        filter_values: &[String],
        fields: &[String],
        next_page_token: Option<&str>,
    ) -> Result<Page<Record>, Error> {
        get_by_filter(
            self,
            "/rest/v1/salespersons.json",
            filter_type,
            filter_values,
            fields,
            next_page_token,
        )
        .await
    }
}
