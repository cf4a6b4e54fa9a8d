//! `POST /webhooks/marketo`: Marketo webhooks asking for an immediate sync of one lead.
//!
//! A Marketo trigger campaign calls a webhook whose template renders JSON such as
//!
//! ```json
//! {"leadId": {{lead.Id}}, "email": "{{lead.Email Address}}", "event": "data_value_changed",
//!  "deliveryId": "{{trigger.Name}}-{{lead.Id}}-{{system.dateTime}}"}
//! ```
//!
//! with a custom header `X-Marketo-Sync-Secret: <the shared secret>`. The receiver checks the
//! secret in constant time before reading the body, bounds the body, validates it, hands the
//! lead to a [`WebhookSink`] and answers 202 at once; the engine syncs the lead afterwards.
//!
//! Answers: 202 `{"status":"queued"|"duplicate","leadId":N}`; 401 for a missing or wrong secret;
//! 413 for a body over the limit; 400 for malformed JSON or a missing or invalid field (the
//! message names it); 503 when the queue is full or closed. Error bodies are
//! `{"error": "..."}` and never echo the secret or the body.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The header carrying the shared secret.
pub const SECRET_HEADER: &str = "x-marketo-sync-secret";

/// The longest `deliveryId` accepted, in bytes.
pub const MAX_DELIVERY_ID_LEN: usize = 200;

/// The longest `event` accepted, in bytes.
pub const MAX_EVENT_LEN: usize = 200;

/// The longest `email` accepted, in bytes (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// A lead to sync now, as received from a Marketo webhook.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookLead {
    /// The Marketo lead id (always positive).
    pub lead_id: i64,
    /// The lead's email as Marketo rendered it, if the template sent one.
    pub email: Option<String>,
    /// A free-form event name from the template (e.g. "data_value_changed").
    pub event: Option<String>,
    /// An id for this delivery, if the template sent one; used to collapse re-deliveries.
    pub delivery_id: Option<String>,
    /// When the receiver accepted it.
    pub received_at: DateTime<Utc>,
}

// Hand-written so an email never reaches a log line through `{:?}`.
impl std::fmt::Debug for WebhookLead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookLead")
            .field("lead_id", &self.lead_id)
            .field("email", &self.email.as_ref().map(|_| "[redacted]"))
            .field("event", &self.event)
            .field("delivery_id", &self.delivery_id)
            .field("received_at", &self.received_at)
            .finish()
    }
}

/// What a [`WebhookSink`] did with a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enqueued {
    /// Queued for sync.
    New,
    /// Already queued (same lead, or the same delivery seen recently); nothing added.
    Duplicate,
}

/// Why a lead could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// The queue holds its maximum; the next polling cycle picks the lead up anyway.
    #[error("on-demand queue is full ({capacity} leads)")]
    Full {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The service is shutting down.
    #[error("on-demand queue is closed")]
    Closed,
}

impl EnqueueError {
    /// Returns whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EnqueueError::Full { .. })
    }
}

/// Takes leads from the webhook receiver for on-demand sync.
#[async_trait]
pub trait WebhookSink: Send + Sync {
    /// Queues `lead` for an immediate sync, collapsing duplicates.
    ///
    /// # Errors
    ///
    /// Returns [`EnqueueError`] when the lead cannot be queued (full or closed).
    async fn enqueue(&self, lead: WebhookLead) -> Result<Enqueued, EnqueueError>;
}

/// Why a webhook body was rejected; the message names the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or not a JSON object.
    #[error("body is not valid JSON: {detail}")]
    Malformed {
        /// Where parsing stopped (line and column, no body content).
        detail: String,
    },
    /// The body is JSON but not an object.
    #[error("body must be a JSON object")]
    NotAnObject,
    /// A required field is absent or null.
    #[error("field `{field}` is missing")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// A field the receiver reads appears more than once, so which value counts is ambiguous.
    #[error("field `{field}` appears more than once")]
    Duplicate {
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong type or value.
    #[error("field `{field}` is invalid: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What was wrong (no field content).
        reason: &'static str,
    },
}

/// Parses a webhook body into a [`WebhookLead`].
///
/// `leadId` is required and may be a JSON number or a numeric string (Marketo tokens render as
/// text, so a quoted token is common); it must be a positive integer. `email`, `event` and
/// `deliveryId` are optional strings; empty strings count as absent (an unset Marketo token
/// renders empty). Other fields are ignored.
///
/// # Errors
///
/// Returns [`PayloadError`] naming the first problem found.
pub fn parse_payload(body: &[u8], received_at: DateTime<Utc>) -> Result<WebhookLead, PayloadError> {
    let top: TopLevel = serde_json::from_slice(body).map_err(|error| PayloadError::Malformed {
        detail: describe_json_error(&error),
    })?;
    let Some(map) = top.object else {
        return Err(PayloadError::NotAnObject);
    };
    if let Some(field) = READ_FIELDS
        .into_iter()
        .find(|f| top.duplicates.iter().any(|d| d == f))
    {
        return Err(PayloadError::Duplicate { field });
    }
    let lead_id = match map.get("leadId") {
        None | Some(serde_json::Value::Null) => {
            return Err(PayloadError::Missing { field: "leadId" });
        }
        Some(serde_json::Value::Number(n)) => n.as_i64().ok_or(PayloadError::Invalid {
            field: "leadId",
            reason: "must be a positive integer",
        })?,
        Some(serde_json::Value::String(s)) => {
            let trimmed = s.trim();
            if trimmed.is_empty() {
                return Err(PayloadError::Missing { field: "leadId" });
            }
            trimmed.parse::<i64>().map_err(|_| PayloadError::Invalid {
                field: "leadId",
                reason: "must be a positive integer",
            })?
        }
        Some(_) => {
            return Err(PayloadError::Invalid {
                field: "leadId",
                reason: "must be a number or a numeric string",
            });
        }
    };
    if lead_id <= 0 {
        return Err(PayloadError::Invalid {
            field: "leadId",
            reason: "must be a positive integer",
        });
    }
    Ok(WebhookLead {
        lead_id,
        email: optional_string(&map, "email", MAX_EMAIL_LEN)?,
        event: optional_string(&map, "event", MAX_EVENT_LEN)?,
        delivery_id: optional_string(&map, "deliveryId", MAX_DELIVERY_ID_LEN)?,
        received_at,
    })
}

/// The members [`parse_payload`] reads; a duplicate of one of them is refused.
const READ_FIELDS: [&str; 4] = ["leadId", "email", "event", "deliveryId"];

/// A webhook body's top-level value: its members when it is an object (the first value of a
/// repeated key kept), and the names that appeared more than once (after JSON unescaping, so
/// `"lead\u0049d"` counts as `leadId`).
struct TopLevel {
    object: Option<serde_json::Map<String, serde_json::Value>>,
    duplicates: Vec<String>,
}

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl TopLevelVisitor {
    fn other<E>() -> Result<TopLevel, E> {
        Ok(TopLevel {
            object: None,
            duplicates: Vec::new(),
        })
    }
}

impl<'de> serde::de::Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<TopLevel, A::Error> {
        let mut object = serde_json::Map::new();
        let mut duplicates = Vec::new();
        while let Some(key) = access.next_key::<String>()? {
            let value: serde_json::Value = access.next_value()?;
            if object.contains_key(&key) {
                duplicates.push(key);
            } else {
                object.insert(key, value);
            }
        }
        Ok(TopLevel {
            object: Some(object),
            duplicates,
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Self::other()
    }

    fn visit_bool<E>(self, _: bool) -> Result<TopLevel, E> {
        Self::other()
    }

    fn visit_i64<E>(self, _: i64) -> Result<TopLevel, E> {
        Self::other()
    }

    fn visit_u64<E>(self, _: u64) -> Result<TopLevel, E> {
        Self::other()
    }

    fn visit_f64<E>(self, _: f64) -> Result<TopLevel, E> {
        Self::other()
    }

    fn visit_str<E>(self, _: &str) -> Result<TopLevel, E> {
        Self::other()
    }

    fn visit_unit<E>(self) -> Result<TopLevel, E> {
        Self::other()
    }
}

fn optional_string(
    map: &serde_json::Map<String, serde_json::Value>,
    field: &'static str,
    max_len: usize,
) -> Result<Option<String>, PayloadError> {
    let text = match map.get(field) {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.trim(),
        // A number is fine where text is expected (e.g. a numeric delivery id token).
        Some(serde_json::Value::Number(n)) => return Ok(Some(n.to_string())),
        Some(_) => {
            return Err(PayloadError::Invalid {
                field,
                reason: "must be a string",
            });
        }
    };
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > max_len {
        return Err(PayloadError::Invalid {
            field,
            reason: "is too long",
        });
    }
    Ok(Some(text.to_owned()))
}

/// Describes where JSON parsing failed without quoting the body.
fn describe_json_error(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    if error.to_string().starts_with("recursion limit exceeded") {
        return format!(
            "nested too deeply at line {} column {}",
            error.line(),
            error.column()
        );
    }
    let what = match error.classify() {
        Category::Eof => "unexpected end of input",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected data",
        Category::Io => "read error",
    };
    format!("{what} at line {} column {}", error.line(), error.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<WebhookLead, PayloadError> {
        parse_payload(body.as_bytes(), Utc::now())
    }

    #[test]
    fn accepts_a_marketo_shaped_payload() {
        let lead = parse(
            r#"{"leadId": 1234, "email": "ann@example.com", "event": "data_value_changed",
                "deliveryId": "d-1", "campaignId": 77}"#,
        )
        .expect("valid");
        assert_eq!(lead.lead_id, 1234);
        assert_eq!(lead.email.as_deref(), Some("ann@example.com"));
        assert_eq!(lead.event.as_deref(), Some("data_value_changed"));
        assert_eq!(lead.delivery_id.as_deref(), Some("d-1"));
    }

    #[test]
    fn accepts_lead_id_as_text_and_empty_optionals() {
        let lead = parse(r#"{"leadId": " 42 ", "email": "", "deliveryId": 9}"#).expect("valid");
        assert_eq!(lead.lead_id, 42);
        assert_eq!(lead.email, None);
        assert_eq!(lead.delivery_id.as_deref(), Some("9"));
    }

    #[test]
    fn rejects_bad_bodies_naming_the_problem() {
        assert!(matches!(
            parse("{\"leadId\": "),
            Err(PayloadError::Malformed { .. })
        ));
        assert_eq!(parse("[1]"), Err(PayloadError::NotAnObject));
        assert_eq!(
            parse(r#"{"email":"a@b.c"}"#),
            Err(PayloadError::Missing { field: "leadId" })
        );
        assert_eq!(
            parse(r#"{"leadId":""}"#),
            Err(PayloadError::Missing { field: "leadId" })
        );
        for bad in [
            r#"{"leadId":"12a"}"#,
            r#"{"leadId":-3}"#,
            r#"{"leadId":1.5}"#,
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.to_string().contains("leadId"), "{error}");
        }
        assert!(matches!(
            parse(r#"{"leadId":true}"#),
            Err(PayloadError::Invalid {
                field: "leadId",
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"leadId":1,"email":["x"]}"#),
            Err(PayloadError::Invalid { field: "email", .. })
        ));
        let long = format!(r#"{{"leadId":1,"deliveryId":"{}"}}"#, "x".repeat(201));
        assert!(matches!(
            parse(&long),
            Err(PayloadError::Invalid {
                field: "deliveryId",
                ..
            })
        ));
    }

    #[test]
    fn a_repeated_field_that_is_read_is_refused() {
        for body in [
            r#"{"leadId": 1, "leadId": 2}"#,
            r#"{"leadId": 1, "lead\u0049d": 2}"#,
        ] {
            assert_eq!(
                parse(body),
                Err(PayloadError::Duplicate { field: "leadId" }),
                "{body}"
            );
        }
        assert_eq!(
            parse(r#"{"leadId": 1, "email": "a@x.com", "email": "b@x.com"}"#),
            Err(PayloadError::Duplicate { field: "email" })
        );
        // A repeated member the receiver does not read is harmless.
        let lead = parse(r#"{"leadId": 3, "campaignId": 1, "campaignId": 2}"#).expect("valid");
        assert_eq!(lead.lead_id, 3);
        // Non-objects are still refused as such.
        for body in ["[1]", "1", "\"x\"", "null", "true"] {
            assert_eq!(parse(body), Err(PayloadError::NotAnObject), "{body}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_as_too_deep() {
        let body = format!(
            r#"{{"leadId": 1, "x": {}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        match parse(&body) {
            Err(PayloadError::Malformed { detail }) => {
                assert!(detail.starts_with("nested too deeply"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_message_does_not_quote_the_body() {
        let error = parse(r#"{"leadId": 1, "email": "secret-ish@example.com" "#).expect_err("bad");
        assert!(!error.to_string().contains("secret-ish"), "{error}");
    }

    #[test]
    fn debug_hides_the_email() {
        let lead = parse(r#"{"leadId": 1, "email": "ann@example.com"}"#).expect("valid");
        assert!(!format!("{lead:?}").contains("ann@"));
    }
}
