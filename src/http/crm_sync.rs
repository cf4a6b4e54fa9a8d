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
