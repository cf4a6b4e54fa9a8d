//! Wire types shared by every Marketo API family: the envelope, errors and record results.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value as Json};

use super::error::{ApiErrorItem, Error};

/// A Marketo record as JSON, keyed by REST API field names.
pub type Record = Map<String, Json>;

/// The envelope around every REST and Bulk response. Every member is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    /// `<short hex>#<hex epoch-millis>`.
    pub request_id: Option<String>,
    /// False when `errors` explains the failure.
    pub success: Option<bool>,
    /// The records.
    #[serde(default = "Option::default")]
    pub result: Option<Vec<T>>,
    /// Call-level errors.
    #[serde(default)]
    pub errors: Option<Vec<WireError>>,
    /// Warnings: strings or `{code,message}` objects.
    #[serde(default)]
    pub warnings: Option<Vec<Json>>,
    /// More pages follow.
    pub more_result: Option<bool>,
    /// The token for the next page.
    pub next_page_token: Option<String>,
}

impl<T> Envelope<T> {
    /// Returns the records (empty when absent).
    pub fn records(self) -> Vec<T> {
        self.result.unwrap_or_default()
    }

    /// Returns the first record, if any.
    pub(crate) fn first(self) -> Option<T> {
        self.records().into_iter().next()
    }

    /// Returns the first record, or [`Error::Decode`] for `endpoint` saying `missing`.
    pub(crate) fn one(self, endpoint: &str, missing: &str) -> Result<T, Error> {
        self.first().ok_or_else(|| Error::decode(endpoint, missing))
    }
}

/// One `{code, message}` as Marketo sends it (code may be a string or a number).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct WireError {
    /// The code, always kept as a string.
    #[serde(deserialize_with = "code_as_string", default)]
    pub code: String,
    /// The message.
    #[serde(default)]
    pub message: String,
}

impl From<WireError> for ApiErrorItem {
    fn from(w: WireError) -> Self {
        ApiErrorItem {
            code: w.code,
            message: w.message,
        }
    }
}

pub(crate) fn code_as_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Json::deserialize(d)? {
        Json::String(s) => s,
        Json::Null => String::new(),
        other => other.to_string(),
    })
}

fn opt_id_as_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Json>::deserialize(d)? {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

/// What Marketo did with one input record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    /// A new record.
    Created,
    /// An existing record changed.
    Updated,
    /// Deleted.
    Deleted,
    /// Not processed; see `reasons`.
    Skipped,
    /// Added (list membership, custom activity).
    Added,
    /// Removed from a list.
    Removed,
    /// Is a member (list membership check).
    Memberof,
    /// Is not a member (list membership check).
    Notmemberof,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

/// Marketo's result for one input record, in the order of the inputs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordResult {
    /// Index of the input this result belongs to (from `seq` or from position).
    #[serde(default)]
    pub seq: Option<usize>,
    /// The status.
    pub status: RecordStatus,
    /// The numeric id (leads, companies, salespersons), as a string.
    #[serde(default, deserialize_with = "opt_id_as_string")]
    pub id: Option<String>,
    /// The `marketoGUID` (opportunities, roles, custom objects, custom activities).
    #[serde(default, rename = "marketoGUID", deserialize_with = "opt_id_as_string")]
    pub marketo_guid: Option<String>,
    /// Why a record was skipped (`reasons`, or `errors` on custom activities).
    #[serde(default, alias = "errors")]
    pub reasons: Vec<WireError>,
}

impl RecordResult {
    /// Returns true when the record was not processed.
    pub fn is_skipped(&self) -> bool {
        self.status == RecordStatus::Skipped
    }

    /// Returns what to do about a skipped record (from its first reason), or `None` when the
    /// record was processed.
    pub fn failure_disposition(&self) -> Option<super::error::Disposition> {
        if !self.is_skipped() {
            return None;
        }
        Some(match self.reasons.first() {
            Some(r) => super::error::classify_reason(&r.code, &r.message),
            None => super::error::Disposition::FailRecord,
        })
    }

    /// Returns Marketo's refusal of a skipped record (from its first reason; a reason-less skip
    /// is [`RefusalKind::Other`](super::error::RefusalKind::Other) with code `skipped`), or
    /// `None` when the record was processed.
    pub fn refusal(&self) -> Option<super::error::RecordRefusal> {
        if !self.is_skipped() {
            return None;
        }
        Some(match self.reasons.first() {
            Some(r) => super::error::RecordRefusal::new(&r.code, &r.message),
            None => super::error::RecordRefusal {
                kind: super::error::RefusalKind::Other,
                code: "skipped".to_owned(),
                message: "skipped without a reason".to_owned(),
            },
        })
    }

    /// Returns true when the record was skipped and one of its reasons is of `kind`.
    pub fn refused_as(&self, kind: super::error::RefusalKind) -> bool {
        self.is_skipped()
            && self
                .reasons
                .iter()
                .any(|r| super::error::RefusalKind::of(&r.code, &r.message) == kind)
    }

    /// Returns the numeric `id` (leads, companies, salespersons).
    pub fn id_i64(&self) -> Option<i64> {
        self.id.as_deref().and_then(|s| s.parse().ok())
    }

    /// Returns the record's id: `marketoGUID` when present, else `id`.
    pub fn key(&self) -> Option<&str> {
        self.marketo_guid.as_deref().or(self.id.as_deref())
    }
}

/// Returns the results re-ordered so that result `i` belongs to input `i`, using `seq` where
/// Marketo sends it and position otherwise.
pub(crate) fn match_results(
    endpoint: &str,
    inputs: usize,
    results: Vec<RecordResult>,
) -> Result<Vec<RecordResult>, super::error::Error> {
    if results.len() != inputs {
        return Err(super::error::Error::decode(
            endpoint,
            format!("{} results for {} inputs", results.len(), inputs),
        ));
    }
    let mut slots: Vec<Option<RecordResult>> = vec![None; inputs];
    for (pos, mut r) in results.into_iter().enumerate() {
        let i = r.seq.unwrap_or(pos);
        if i >= inputs || slots[i].is_some() {
            return Err(super::error::Error::decode(
                endpoint,
                format!("result {pos} has seq {i}, out of range or repeated"),
            ));
        }
        r.seq = Some(i);
        slots[i] = Some(r);
    }
    Ok(slots.into_iter().flatten().collect())
}

/// Write action of the sync endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum SyncAction {
    /// Create only; existing records are skipped (1005).
    CreateOnly,
    /// Update only; missing records are skipped (1004).
    UpdateOnly,
    /// Upsert (Marketo's default).
    #[default]
    CreateOrUpdate,
    /// Always create (leads only).
    CreateDuplicate,
}

impl SyncAction {
    /// Returns true when re-sending the same request cannot create a second record.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, SyncAction::CreateDuplicate)
    }
}

/// How non-lead objects are matched on sync and delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum DedupeBy {
    /// The object's dedupe fields (default).
    #[default]
    DedupeFields,
    /// The object's id field.
    IdField,
}

/// One page of records plus the paging state.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The records of this page.
    pub records: Vec<T>,
    /// The token for the next page (persist it to resume).
    pub next_page_token: Option<String>,
    /// True when Marketo said more pages follow.
    pub more_result: bool,
    /// Warnings as sent.
    pub warnings: Vec<Json>,
}

impl<T> Page<T> {
    pub(crate) fn from_envelope(env: Envelope<T>) -> Self {
        Page {
            more_result: env.more_result.unwrap_or(false),
            next_page_token: env.next_page_token,
            warnings: env.warnings.unwrap_or_default(),
            records: env.result.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_accepts_numeric_codes_and_string_or_object_warnings() {
        let env: Envelope<Json> = serde_json::from_str(
            r#"{"requestId":"a#1","success":false,"errors":[{"code":601,"message":"x"}],
               "warnings":["No assets found", {"code":1,"message":"m"}]}"#,
        )
        .unwrap();
        assert_eq!(env.errors.unwrap()[0].code, "601");
        assert_eq!(env.warnings.unwrap().len(), 2);
        let empty: Envelope<Json> = serde_json::from_str("{}").unwrap();
        assert!(empty.records().is_empty());
    }

    #[test]
    fn skipped_results_are_matched_to_inputs_by_seq_or_position() {
        let results: Vec<RecordResult> = serde_json::from_str(
            r#"[{"seq":2,"status":"skipped","reasons":[{"code":"1013","message":"Record not found"}]},
                {"seq":0,"status":"updated","id":1232},
                {"seq":1,"status":"created","marketoGUID":"abc"}]"#,
        )
        .unwrap();
        let m = match_results("/x", 3, results).unwrap();
        assert_eq!(m[0].status, RecordStatus::Updated);
        assert_eq!(m[0].id.as_deref(), Some("1232"));
        assert_eq!(m[1].key(), Some("abc"));
        assert!(m[2].is_skipped());
        assert_eq!(m[2].reasons[0].code, "1013");
        assert_eq!(
            m[2].failure_disposition(),
            Some(crate::marketo::Disposition::FailRecord)
        );
        assert_eq!(m[0].failure_disposition(), None);
        let refusal = m[2].refusal().unwrap();
        assert_eq!(refusal.kind, crate::marketo::RefusalKind::NotFound);
        assert_eq!(
            (refusal.code.as_str(), refusal.message.as_str()),
            ("1013", "Record not found")
        );
        assert!(m[2].refused_as(crate::marketo::RefusalKind::NotFound));
        assert!(!m[2].refused_as(crate::marketo::RefusalKind::InvalidValue));
        assert_eq!(m[0].refusal(), None);
        assert_eq!(m[0].id_i64(), Some(1232));
        // Leads carry no seq: position decides; custom activities say `errors`.
        let leads: Vec<RecordResult> = serde_json::from_str(
            r#"[{"id":50,"status":"created"},{"status":"skipped","errors":[{"code":"1005","message":"Lead already exists"}]}]"#,
        )
        .unwrap();
        let m = match_results("/x", 2, leads).unwrap();
        assert_eq!(m[1].seq, Some(1));
        assert_eq!(m[1].reasons[0].code, "1005");
        assert!(match_results("/x", 3, m).is_err());
    }
}

/// Returns an instant parsed from any datetime format Marketo uses: `Z`, `+0000`, `-08:00`,
/// the Asset API's `Z+0000`, and the legacy `YYYY-MM-DD hh:mm:ss` (UTC).
pub fn parse_marketo_datetime(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{DateTime, NaiveDateTime, Utc};
    let s = s.trim();
    let s = s
        .strip_suffix("Z+0000")
        .map(|p| format!("{p}Z"))
        .unwrap_or_else(|| s.to_owned());
    if let Ok(t) = DateTime::parse_from_rfc3339(&s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(&s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod datetime_tests {
    use super::parse_marketo_datetime as p;

    #[test]
    fn every_marketo_datetime_format_parses() {
        let want: chrono::DateTime<chrono::Utc> = "2015-05-21T22:45:13Z".parse().unwrap();
        assert_eq!(p("2015-05-21T22:45:13Z"), Some(want));
        assert_eq!(p("2015-05-21T22:45:13Z+0000"), Some(want));
        assert_eq!(p("2015-05-21T22:45:13+0000"), Some(want));
        assert_eq!(p("2015-05-21T15:45:13-07:00"), Some(want));
        assert_eq!(p("2015-05-21 22:45:13"), Some(want));
        assert_eq!(p("yesterday"), None);
    }
}
