//! The error ledger: the one retry policy and the one function that records a refused record.
//!
//! A record the other side refuses (a Marketo 1xxx reason, a CRM constraint, a value the mapping
//! cannot read, ...) becomes ONE open [`SyncError`] keyed by (object, direction, record key). Every
//! step (leads, every other object, CRM deletions, bootstrap) builds that entry with [`entry`]:
//!
//! - a failure seen again keeps the entry's id and `first_seen_at`, and counts one more attempt;
//! - a retryable failure gets `next_retry_at` from [`RetryPolicy`]; the step re-reads the record
//!   once it is due;
//! - a failure that is not retryable gets no `next_retry_at`: it stays open, and is not tried
//!   again until the record changes (the change is gathered like any other) or an operator
//!   retries it (`marketo-sync errors retry`, which makes it due now).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::crm::{Refusal, WriteResult};
use crate::marketo::{RecordRefusal, RecordResult};
use crate::store::{Direction, ErrorStatus, SyncError};

/// When a retryable ledger entry is tried again: `base`, then `base * factor`,
/// `base * factor^2`, ... after each further failure, never more than `cap`, and not at all once
/// `max_attempts` failures are counted (when set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub base: Duration,
    /// What each further failure multiplies the wait by.
    pub factor: u32,
    /// The longest wait.
    pub cap: Duration,
    /// After this many failures the entry waits for an operator or a change of the record.
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// The default: 5 minutes, doubled per failure, at most 24 hours, no attempt limit (a
    /// retryable failure, such as a parent record not written yet, may take days to clear).
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        base: Duration::from_secs(5 * 60),
        factor: 2,
        cap: Duration::from_secs(24 * 60 * 60),
        max_attempts: None,
    };

    /// Returns how long to wait after the `attempts`-th failure (1 for the first), or `None`
    /// when no automatic retry is left.
    pub fn delay(&self, attempts: u32) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempts >= max) {
            return None;
        }
        let mut wait = self.base;
        for _ in 1..attempts.max(1) {
            if wait >= self.cap {
                break;
            }
            wait = wait.saturating_mul(self.factor.max(1));
        }
        Some(wait.min(self.cap))
    }

    /// Returns when to retry after the `attempts`-th failure at `now`, or `None`.
    pub fn next_retry_at(&self, now: DateTime<Utc>, attempts: u32) -> Option<DateTime<Utc>> {
        let wait = chrono::Duration::from_std(self.delay(attempts)?).ok()?;
        Some(now + wait)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::DEFAULT
    }
}

/// Why one record was not written: the remote's code and message, and whether sending it again
/// unchanged may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The remote's code (Marketo's `1003`, a CRM's `23505`, or the engine's own, such as
    /// `invalid_value`).
    pub code: String,
    /// The remote's message (never record values beyond what the remote said).
    pub message: String,
    /// Sending the same record again later, unchanged, may succeed.
    pub retryable: bool,
}

impl Failure {
    /// Returns a failure with this code, message and retry class.
    pub fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Failure {
        Failure {
            code: code.into(),
            message: message.into(),
            retryable,
        }
    }

    /// Returns the failure of a value the mapping cannot read or render (`invalid_value`, not
    /// retryable: the record must change first).
    pub fn invalid_value(error: &dyn std::fmt::Display) -> Failure {
        Failure::new("invalid_value", error.to_string(), false)
    }

    /// Returns the failure of a record Marketo skipped (its code, message and retry class), or
    /// `None` when Marketo processed it.
    pub fn of_marketo_result(result: &RecordResult) -> Option<Failure> {
        result.refusal().map(Failure::from)
    }
}

impl Failure {
    /// Returns the failure of a record the CRM refused (its code, message and retry class), or
    /// `None` when the CRM wrote or deleted it.
    pub fn of_crm_result(result: &WriteResult) -> Option<Failure> {
        result.refusal().map(Failure::from)
    }
}

impl From<&Refusal> for Failure {
    fn from(r: &Refusal) -> Failure {
        Failure::new(r.code(), r.ledger_message(), r.retryable)
    }
}

impl From<RecordRefusal> for Failure {
    fn from(r: RecordRefusal) -> Failure {
        let retryable = r.retryable();
        Failure {
            code: r.code,
            message: r.message,
            retryable,
        }
    }
}

/// The record a ledger entry is about.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// The store object (`leads`, `companies`, `car_c`, ...).
    pub object: &'a str,
    /// Which way the record was going.
    pub direction: Direction,
    /// Its key on the side it came from.
    pub record_key: &'a str,
    /// Its key on the other side, when known.
    pub other_key: Option<String>,
    /// What was sent (mapped fields, never secrets).
    pub payload: Json,
}

/// Returns true when a record must wait instead of being sent now: it has an open ledger entry
/// (`previous`) that is not due at `now` (not retryable, or its retry still ahead) and holds the
/// same `payload` as the one to send, so the record has not changed since it was refused. A
/// changed record, a due retry and an operator's retry (due now) are sent.
pub fn waits(previous: Option<&SyncError>, payload: &Json, now: DateTime<Utc>) -> bool {
    previous.is_some_and(|p| {
        p.status == ErrorStatus::Open
            && p.next_retry_at.is_none_or(|t| t > now)
            && p.payload == *payload
    })
}

/// Returns the open ledger entry for `subject` failing with `failure` at `now`: a new one, or
/// `previous` (the open entry of the same key) with its id and `first_seen_at` kept and one more
/// attempt counted. `next_retry_at` is set by `policy` for a retryable failure only.
pub fn entry(
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    subject: Subject<'_>,
    failure: Failure,
    previous: Option<&SyncError>,
) -> SyncError {
    let attempts = previous.map_or(0, |p| p.attempts).saturating_add(1);
    let next_retry_at = if failure.retryable {
        policy.next_retry_at(now, attempts)
    } else {
        None
    };
    SyncError {
        id: previous.map_or_else(Uuid::new_v4, |p| p.id),
        object: subject.object.to_owned(),
        direction: subject.direction,
        record_key: subject.record_key.to_owned(),
        other_key: subject.other_key,
        payload: subject.payload,
        code: failure.code,
        message: failure.message,
        attempts,
        first_seen_at: previous.map_or(now, |p| p.first_seen_at),
        last_seen_at: now,
        next_retry_at,
        status: ErrorStatus::Open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t0() -> DateTime<Utc> {
        "2026-01-05T10:00:00Z".parse().unwrap()
    }

    fn subject() -> Subject<'static> {
        Subject {
            object: "companies",
            direction: Direction::CrmToMarketo,
            record_key: "acc-1",
            other_key: Some("ext-1".into()),
            payload: json!({"company": "Acme"}),
        }
    }

    #[test]
    fn the_default_schedule_doubles_from_five_minutes_up_to_a_day() {
        let p = RetryPolicy::default();
        let mins: Vec<u64> = (1..=12)
            .map(|n| p.delay(n).unwrap().as_secs() / 60)
            .collect();
        assert_eq!(
            mins,
            vec![5, 10, 20, 40, 80, 160, 320, 640, 1280, 1440, 1440, 1440]
        );
        assert_eq!(p.delay(u32::MAX), Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn max_attempts_ends_automatic_retries() {
        let p = RetryPolicy {
            max_attempts: Some(3),
            ..RetryPolicy::DEFAULT
        };
        assert!(p.delay(2).is_some());
        assert_eq!(p.delay(3), None);
        assert_eq!(p.next_retry_at(t0(), 3), None);
    }

    #[test]
    fn a_retryable_failure_counts_attempts_and_keeps_its_identity() {
        let p = RetryPolicy::default();
        let first = entry(
            &p,
            t0(),
            subject(),
            Failure::new("in_use", "Object in use", true),
            None,
        );
        assert_eq!(first.attempts, 1);
        assert_eq!(first.first_seen_at, t0());
        assert_eq!(
            first.next_retry_at,
            Some(t0() + chrono::Duration::minutes(5))
        );
        assert_eq!(first.status, ErrorStatus::Open);
        let later = t0() + chrono::Duration::minutes(6);
        let second = entry(
            &p,
            later,
            subject(),
            Failure::new("in_use", "Object in use", true),
            Some(&first),
        );
        assert_eq!(second.id, first.id);
        assert_eq!(second.first_seen_at, t0());
        assert_eq!(second.last_seen_at, later);
        assert_eq!(second.attempts, 2);
        assert_eq!(
            second.next_retry_at,
            Some(later + chrono::Duration::minutes(10))
        );
        assert_eq!(second.code, "in_use");
        assert_eq!(second.other_key.as_deref(), Some("ext-1"));
    }

    #[test]
    fn a_failure_that_is_not_retryable_has_no_next_retry() {
        let p = RetryPolicy::default();
        let e = entry(
            &p,
            t0(),
            subject(),
            Failure::new("invalid", "Invalid value for field 'site'", false),
            None,
        );
        assert_eq!(e.next_retry_at, None);
        assert_eq!(e.attempts, 1);
        assert_eq!(e.code, "invalid");
        // Seen again (the record changed and failed again): still open, still not scheduled.
        let again = entry(
            &p,
            t0() + chrono::Duration::hours(1),
            subject(),
            Failure::invalid_value(&"not a number"),
            Some(&e),
        );
        assert_eq!(again.next_retry_at, None);
        assert_eq!(again.attempts, 2);
        assert_eq!(again.id, e.id);
        assert_eq!(again.code, "invalid_value");
    }

    #[test]
    fn an_unchanged_record_waits_until_its_entry_is_due() {
        let p = RetryPolicy::default();
        let payload = json!({"company": "Acme"});
        let retryable = entry(&p, t0(), subject(), Failure::new("busy", "m", true), None);
        assert!(waits(Some(&retryable), &payload, t0()));
        assert!(waits(
            Some(&retryable),
            &payload,
            t0() + chrono::Duration::minutes(4)
        ));
        assert!(!waits(
            Some(&retryable),
            &payload,
            t0() + chrono::Duration::minutes(5)
        ));
        // A changed record is sent at once.
        assert!(!waits(
            Some(&retryable),
            &json!({"company": "Acme Inc"}),
            t0()
        ));
        let stuck = entry(
            &p,
            t0(),
            subject(),
            Failure::new("invalid", "m", false),
            None,
        );
        assert!(waits(
            Some(&stuck),
            &payload,
            t0() + chrono::Duration::days(30)
        ));
        // An operator's retry makes it due now.
        let retried = SyncError {
            next_retry_at: Some(t0()),
            ..stuck.clone()
        };
        assert!(!waits(Some(&retried), &payload, t0()));
        let discarded = SyncError {
            status: ErrorStatus::Discarded,
            ..stuck
        };
        assert!(!waits(Some(&discarded), &payload, t0()));
        assert!(!waits(None, &payload, t0()));
    }

    #[test]
    fn marketo_refusals_carry_their_code_and_retry_class() {
        let result: RecordResult = serde_json::from_value(json!({
            "seq": 0, "status": "skipped",
            "reasons": [{"code": 1013, "message": "Opportunity 'o1' not found"}]
        }))
        .unwrap();
        let parent = Failure::of_marketo_result(&result).unwrap();
        assert!(parent.retryable);
        assert_eq!(parent.code, 1013.to_string());
        assert_eq!(parent.message, "Opportunity 'o1' not found");
        let result: RecordResult = serde_json::from_value(json!({
            "seq": 0, "status": "skipped",
            "reasons": [{"code": 1001, "message": "Invalid value"}]
        }))
        .unwrap();
        let bad = Failure::of_marketo_result(&result).unwrap();
        assert!(!bad.retryable);
        let ok: RecordResult =
            serde_json::from_value(json!({"seq": 0, "status": "updated", "id": 4})).unwrap();
        assert_eq!(Failure::of_marketo_result(&ok), None);
    }
}
