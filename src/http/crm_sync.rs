//! `POST /sync/crm/{object}/{id}`: sync one CRM record to Marketo now.
//!
//! Authenticated like the webhook: the `X-Marketo-Sync-Secret` header carries the shared
//! secret (checked in constant time). The sync runs before the answer, through the engine's
//! limiter, quota and store, so a CRM trigger learns what happened:
//!
//! | answer | when |
//! |---|---|
//! | 200 `{"outcome":"synced"}` / `{"outcome":"unchanged"}` | written, or Marketo already agreed |
//! | 202 `{"outcome":"deferred"}` | the on-demand share of the budget is spent, the service is paused or on standby: the next poll carries the record |
//! | 404 `{"outcome":"not_found"}` / `{"outcome":"unknown_object","known":[...]}` | no such record, or no synced object of that name |
//! | 422 `{"outcome":"refused","code":..,"message":..}` | Marketo refused it; the error ledger holds an entry |
//! | 422 `{"outcome":"poll_only"}` | the object syncs on the poll only |
//! | 400 / 401 | a bad id / a missing or wrong secret |
//! | 503 (retryable) / 500 | the sync could not run |
//!
//! `{object}` is a `sync.objects` name or its CRM object. Every object whose records the CRM
//! writes to Marketo syncs on demand through the cycle's own pipeline over one record: read by
//! id, paired with its link (and, for companies, its Marketo company: one read), reconciled
//! against the store's agreed values, written, committed; no watermark moves, so the next poll
//! finds the record agreed and writes nothing.
//!
//! | object | on demand | why |
//! |---|---|---|
//! | leads (the lead mapping) | yes | its own path: matching by email, merges |
//! | companies, opportunities, roles, salespersons | yes | the pipeline's record scope |
//! | custom objects | yes | CRM -> Marketo; the Marketo -> CRM read is the poll's |
//! | programs | `poll_only` | programs flow from Marketo to the CRM only |
//! | program members | `poll_only` | a member row is keyed by its Marketo program and lead, which the poll's program read resolves; its status write is batched per (program, status) |
//! | static list membership | `poll_only` | a row's list is resolved (or created) by name once per cycle, and its Marketo side is read through the activity riders |
//! | activities, custom activities | `poll_only` | appended, not upserted: only the feed's watermark and outbox keep an event from being sent twice |
//! | deletions | `poll_only` | a deleted record has no row to read by id; the poll's delete feed carries it |

use async_trait::async_trait;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::engine::{CrmRecordOutcome, EngineError};

/// The longest CRM record id accepted, in bytes.
pub const MAX_RECORD_ID_LEN: usize = 200;

/// Syncs one CRM record to Marketo now (the daemon's engine behind the HTTP route).
#[async_trait]
pub trait CrmRecordSync: Send + Sync {
    /// Syncs the record `id` of `object` (a `sync.objects` name or its CRM object).
    ///
    /// # Errors
    ///
    /// Returns [`EngineError`] when the sync could not run at all.
    async fn sync_crm_record(
        &self,
        object: &str,
        id: &str,
    ) -> Result<CrmRecordOutcome, EngineError>;
}

/// Returns why `value` is not a usable path segment (`object` or `id`), if it is not.
pub fn check_segment(value: &str) -> Option<&'static str> {
    if value.trim().is_empty() {
        Some("is empty")
    } else if value.len() > MAX_RECORD_ID_LEN {
        Some("is too long")
    } else if value.chars().any(char::is_control) {
        Some("holds control characters")
    } else {
        None
    }
}

/// The HTTP answer of an outcome.
pub fn outcome_response(outcome: &CrmRecordOutcome) -> Response {
    let status = match outcome {
        CrmRecordOutcome::Synced | CrmRecordOutcome::Unchanged => StatusCode::OK,
        CrmRecordOutcome::Deferred => StatusCode::ACCEPTED,
        CrmRecordOutcome::NotFound | CrmRecordOutcome::UnknownObject { .. } => {
            StatusCode::NOT_FOUND
        }
        CrmRecordOutcome::Refused { .. } | CrmRecordOutcome::PollOnly => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    (status, axum::Json(outcome)).into_response()
}

/// The HTTP status of a sync that could not run.
pub fn error_status(error: &EngineError) -> StatusCode {
    if error.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_checked() {
        assert_eq!(check_segment("42"), None);
        assert_eq!(check_segment(" "), Some("is empty"));
        assert_eq!(check_segment(&"x".repeat(201)), Some("is too long"));
        assert_eq!(check_segment("a\nb"), Some("holds control characters"));
    }

    #[test]
    fn outcomes_answer_with_their_status() {
        let refused = CrmRecordOutcome::Refused {
            code: "1003".into(),
            message: "bad".into(),
        };
        assert_eq!(outcome_response(&refused).status(), 422);
        assert_eq!(outcome_response(&CrmRecordOutcome::Synced).status(), 200);
        assert_eq!(outcome_response(&CrmRecordOutcome::Deferred).status(), 202);
        assert_eq!(outcome_response(&CrmRecordOutcome::NotFound).status(), 404);
    }
}
