//! The Marketo client's error type and the classification of every Marketo error code.

use std::fmt;
use std::path::PathBuf;

use chrono::NaiveDate;

/// What a caller (or the client itself) should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// A transient failure: retry a limited number of times with exponential back-off.
    Retry,
    /// A throttle (606 rate, 615 concurrency, 1029 queue full): wait, then retry.
    BackOff,
    /// The access token is invalid or expired: re-authenticate and replay once.
    ReAuth,
    /// A daily quota is spent (607, 1029 export quota, the local budgets): wait until the
    /// Marketo day turns at midnight America/Chicago.
    PauseUntilDayTurns,
    /// One record failed (1xxx record-level codes); the rest of the call stands.
    FailRecord,
    /// The call cannot succeed as sent (permissions, bad request, bug): do not retry.
    FailCall,
    /// The "error" means the wanted state already holds (1029 "Job already queued").
    AlreadyDone,
}

/// Returns the disposition of a Marketo error code, using the message where the code is
/// ambiguous (1029).
pub fn classify(code: &str, message: &str) -> Disposition {
    match code {
        "500" | "502" | "604" | "608" | "611" | "614" | "713" | "719" => Disposition::Retry,
        "606" | "615" => Disposition::BackOff,
        "600" | "601" | "602" => Disposition::ReAuth,
        "607" => Disposition::PauseUntilDayTurns,
        "1029" => classify_1029(message),
        // Import/list queues that drain by themselves.
        "1016" | "1019" => Disposition::BackOff,
        // A per-day clone limit.
        "1020" => Disposition::PauseUntilDayTurns,
        // Call-level although numbered like record codes.
        "1003" | "1035" => Disposition::FailCall,
        c if c.len() == 4 && c.starts_with('1') => Disposition::FailRecord,
        _ => Disposition::FailCall,
    }
}

/// Returns the disposition of a record-level reason (`reasons[]` of a skipped record): a few
/// codes clear up by themselves (1014 create failed, 1019 import in progress, 1022 object in
/// use, transient 6xx/7xx), 1016 waits for the import queue, everything else fails the record.
pub fn classify_reason(code: &str, message: &str) -> Disposition {
    match code {
        "1014" | "1019" | "1022" => Disposition::Retry,
        "1016" => Disposition::BackOff,
        c if c.len() == 3 => match classify(c, message) {
            d @ (Disposition::Retry | Disposition::BackOff) => d,
            _ => Disposition::FailRecord,
        },
        _ => Disposition::FailRecord,
    }
}

fn classify_1029(message: &str) -> Disposition {
    let m = message.to_ascii_lowercase();
    if m.contains("already queued") {
        Disposition::AlreadyDone
    } else if m.contains("daily quota") || m.contains("quota") {
        Disposition::PauseUntilDayTurns
    } else {
        // "Too many jobs in queue" and anything unknown: the queue drains by itself.
        Disposition::BackOff
    }
}

/// What a record-level Marketo refusal means, from its 1xxx code (a skipped record's `reasons`,
/// or the same code as a call-level error). The engine acts on these kinds and never on the
/// codes themselves: the wire codes stay in this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// 1001 invalid value or type mismatch (a value too long for its field, say), 1002 a
    /// required value missing, 1003 invalid data: the record must change before it can pass.
    InvalidValue,
    /// 1004 lead not found, 1013 object not found, 1015 lead not in list. On a delete the record
    /// is gone already; on an update the record left Marketo; on a create it is a record this one
    /// references (a role's opportunity or lead) that does not exist yet.
    NotFound,
    /// 1005 lead already exists, 1017 object already exists (create only).
    AlreadyExists,
    /// 1006 field not found, 1011 field not usable as a lookup field.
    FieldNotFound,
    /// 1007 several leads match the lookup, 1036 the same key twice in one input.
    Duplicate,
    /// 1008, 1009, 1010: the lead partition refuses the write.
    Partition,
    /// 1018 "CRM Enabled": Marketo's native CRM sync owns this object and refuses API writes.
    NativeSyncOwned,
    /// 1021: company fields cannot be written through Sync Leads.
    CompanyFieldOnLead,
    /// 1022: the object is in use (a delete refused for now).
    InUse,
    /// 1014, 1016, 1019 and transient 6xx/7xx codes: it clears up by itself.
    Transient,
    /// 1020 and the daily quota: it passes when the Marketo day turns.
    Quota,
    /// 1076 to 1080: Marketo refused a merge.
    MergeRefused,
    /// Any other code.
    Other,
}

impl RefusalKind {
    /// Returns the kind of a record-level code (`message` only breaks ties for 6xx/7xx codes).
    pub fn of(code: &str, message: &str) -> RefusalKind {
        match code {
            "1001" | "1002" | "1003" => RefusalKind::InvalidValue,
            "1004" | "1013" | "1015" => RefusalKind::NotFound,
            "1005" | "1017" => RefusalKind::AlreadyExists,
            "1006" | "1011" => RefusalKind::FieldNotFound,
            "1007" | "1036" => RefusalKind::Duplicate,
            "1008" | "1009" | "1010" => RefusalKind::Partition,
            "1018" => RefusalKind::NativeSyncOwned,
            "1021" => RefusalKind::CompanyFieldOnLead,
            "1022" => RefusalKind::InUse,
            "1014" | "1016" | "1019" => RefusalKind::Transient,
            "1020" => RefusalKind::Quota,
            "1076" | "1077" | "1078" | "1079" | "1080" => RefusalKind::MergeRefused,
            c if c.len() == 3 => match classify(c, message) {
                Disposition::Retry | Disposition::BackOff | Disposition::ReAuth => {
                    RefusalKind::Transient
                }
                Disposition::PauseUntilDayTurns => RefusalKind::Quota,
                _ => RefusalKind::Other,
            },
            _ => RefusalKind::Other,
        }
    }

    /// Returns true when sending the same record again later, unchanged, may succeed: the
    /// transient kinds, a quota, an object in use, and a record that references one not written
    /// yet (`NotFound`). Every other kind waits for the record to change or for an operator.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            RefusalKind::Transient
                | RefusalKind::Quota
                | RefusalKind::InUse
                | RefusalKind::NotFound
        )
    }
}

/// Marketo's refusal of one record: its kind, and Marketo's own code and message for the
/// error ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRefusal {
    /// What the refusal means.
    pub kind: RefusalKind,
    /// Marketo's code, as sent (kept for the operator).
    pub code: String,
    /// Marketo's message.
    pub message: String,
}

impl RecordRefusal {
    /// Returns the refusal of one `{code, message}` reason.
    pub fn new(code: &str, message: &str) -> RecordRefusal {
        RecordRefusal {
            kind: RefusalKind::of(code, message),
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    /// Returns true when sending the same record again later may succeed.
    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }
}

impl fmt::Display for RecordRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

/// One `{code, message}` pair from a Marketo envelope or a record's `reasons`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiErrorItem {
    /// The Marketo code (a quoted integer).
    pub code: String,
    /// Marketo's message.
    pub message: String,
}

impl fmt::Display for ApiErrorItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

/// Everything that can go wrong talking to Marketo.
///
/// No variant ever holds the client secret, an access token or a URL with a query string.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range.
    #[error("invalid marketo client setting: {what}")]
    Config {
        /// What is wrong.
        what: String,
    },
    /// The caller passed something Marketo would refuse (too many records, empty list, ...).
    #[error("invalid request to {endpoint}: {what}")]
    InvalidInput {
        /// The endpoint path.
        endpoint: String,
        /// What is wrong.
        what: String,
    },
    /// Identity answered HTTP 401: the client id or secret is wrong.
    #[error("marketo identity rejected the credentials of client {client_id}: {message}")]
    BadCredentials {
        /// The client id (not secret).
        client_id: String,
        /// Identity's `error_description`.
        message: String,
    },
    /// Identity answered something that is not a token.
    #[error("marketo identity failed: {message}")]
    Identity {
        /// What went wrong.
        message: String,
        /// Whether trying again later may help.
        retryable: bool,
    },
    /// The connection failed or timed out (the URL is stripped from the source).
    #[error("transport error calling {endpoint}: {source}")]
    Transport {
        /// The endpoint path.
        endpoint: String,
        /// The underlying error, without its URL.
        #[source]
        source: reqwest::Error,
    },
    /// An HTTP status other than 200 where none was expected.
    #[error("marketo answered HTTP {status} to {endpoint}: {body}")]
    HttpStatus {
        /// The endpoint path.
        endpoint: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// HTTP 413: the body is over Marketo's limit (1 MB REST, 10 MB bulk import).
    #[error(
        "marketo refused the request body to {endpoint} as too large ({bytes} bytes, HTTP 413): split it into smaller batches"
    )]
    BodyTooLarge {
        /// The endpoint path.
        endpoint: String,
        /// The size that was sent.
        bytes: u64,
    },
    /// The envelope carried `success: false` with this error.
    #[error("marketo error {code} on {endpoint}: {message}")]
    Api {
        /// The endpoint path.
        endpoint: String,
        /// The Marketo code.
        code: String,
        /// Marketo's message.
        message: String,
        /// What to do about it.
        disposition: Disposition,
    },
    /// Marketo error 1035: the filter (e.g. bulk `updatedAt`) is not available on this
    /// subscription; callers fall back to another filter.
    #[error("marketo does not support this filter on {endpoint} (1035): {message}")]
    UnsupportedFilter {
        /// The endpoint path.
        endpoint: String,
        /// Marketo's message.
        message: String,
    },
    /// The local daily REST call budget is spent; no call was made.
    #[error("daily marketo call budget spent: {calls} of {budget} calls on marketo day {day}")]
    DailyBudgetSpent {
        /// The Marketo day.
        day: NaiveDate,
        /// Calls counted today.
        calls: u64,
        /// The configured budget.
        budget: u64,
    },
    /// The local daily bulk-extract budget is spent; no job was created.
    #[error("daily bulk export budget spent: {bytes} of {budget} bytes on marketo day {day}")]
    BulkBudgetSpent {
        /// The Marketo day.
        day: NaiveDate,
        /// Bytes counted today.
        bytes: u64,
        /// The configured budget in bytes.
        budget: u64,
    },
    /// A response could not be decoded.
    #[error("cannot decode marketo response from {endpoint}: {message}")]
    Decode {
        /// The endpoint path.
        endpoint: String,
        /// What did not parse, and where.
        message: String,
    },
    /// The bulk job ended Failed or Cancelled.
    #[error("bulk {kind} job {job_id} ended {status}: {message}")]
    JobFailed {
        /// "export" or "import".
        kind: &'static str,
        /// The export id or batch id.
        job_id: String,
        /// Its final status.
        status: String,
        /// Marketo's `errorMsg`/`message`, if any.
        message: String,
    },
    /// The job reported Completed but the file answered 404.
    #[error("bulk export {export_id} is Completed but its file is missing (HTTP 404)")]
    ExportFileMissing {
        /// The export id.
        export_id: String,
    },
    /// The downloaded file does not match `fileChecksum`.
    #[error("bulk export {export_id} checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The export id.
        export_id: String,
        /// The checksum Marketo reported.
        expected: String,
        /// The checksum of the file on disk.
        actual: String,
    },
    /// The downloaded file does not have `fileSize` bytes after every attempt.
    #[error("bulk export {export_id} download incomplete: {received} of {expected} bytes")]
    IncompleteDownload {
        /// The export id.
        export_id: String,
        /// Bytes on disk.
        received: u64,
        /// Bytes Marketo reported.
        expected: u64,
    },
    /// A local file could not be read or written.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The caller cancelled the operation.
    #[error("marketo operation cancelled: {what}")]
    Cancelled {
        /// What was interrupted.
        what: String,
    },
}

impl Error {
    /// Returns what should be done about this error.
    pub fn disposition(&self) -> Disposition {
        match self {
            Error::Config { .. }
            | Error::InvalidInput { .. }
            | Error::BadCredentials { .. }
            | Error::BodyTooLarge { .. }
            | Error::UnsupportedFilter { .. }
            | Error::Decode { .. }
            | Error::JobFailed { .. }
            | Error::ChecksumMismatch { .. }
            | Error::Io { .. }
            | Error::Cancelled { .. } => Disposition::FailCall,
            Error::Identity { retryable, .. } => {
                if *retryable {
                    Disposition::Retry
                } else {
                    Disposition::FailCall
                }
            }
            // A Completed job's file may answer 404 for a while; the job stays valid for 7 days.
            Error::Transport { .. }
            | Error::IncompleteDownload { .. }
            | Error::ExportFileMissing { .. } => Disposition::Retry,
            Error::HttpStatus { status, .. } => match *status {
                429 => Disposition::BackOff,
                500..=599 => Disposition::Retry,
                _ => Disposition::FailCall,
            },
            Error::Api { disposition, .. } => *disposition,
            Error::DailyBudgetSpent { .. } | Error::BulkBudgetSpent { .. } => {
                Disposition::PauseUntilDayTurns
            }
        }
    }

    /// Returns true when retrying the same call later, without any change, may succeed
    /// within the same Marketo day (Retry and BackOff).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.disposition(),
            Disposition::Retry | Disposition::BackOff
        )
    }

    /// Returns the Marketo error code, when the error came from an envelope.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            Error::UnsupportedFilter { .. } => Some("1035"),
            _ => None,
        }
    }

    /// Returns the kind of a record-level refusal carried as a call-level error (a 1xxx code
    /// such as 1004 on a merge or 1018 on a write), or `None` for any other error.
    pub fn refusal_kind(&self) -> Option<RefusalKind> {
        match self {
            Error::Api { code, message, .. } if code.len() == 4 && code.starts_with('1') => {
                Some(RefusalKind::of(code, message))
            }
            _ => None,
        }
    }

    /// Returns the error for one envelope error, with its own variant where callers need one.
    pub(crate) fn from_api(endpoint: &str, code: &str, message: &str) -> Error {
        if code == "1035" {
            return Error::UnsupportedFilter {
                endpoint: endpoint.to_owned(),
                message: message.to_owned(),
            };
        }
        Error::Api {
            endpoint: endpoint.to_owned(),
            code: code.to_owned(),
            message: message.to_owned(),
            disposition: classify(code, message),
        }
    }

    pub(crate) fn transport(endpoint: &str, source: reqwest::Error) -> Error {
        Error::Transport {
            endpoint: endpoint.to_owned(),
            source: source.without_url(),
        }
    }

    pub(crate) fn decode(endpoint: &str, message: impl Into<String>) -> Error {
        Error::Decode {
            endpoint: endpoint.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(endpoint: &str, what: impl Into<String>) -> Error {
        Error::InvalidInput {
            endpoint: endpoint.to_owned(),
            what: what.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_has_its_disposition() {
        use Disposition::*;
        let table: &[(&str, &str, Disposition)] = &[
            ("500", "Internal error", Retry),
            ("502", "Bad gateway", Retry),
            ("600", "Empty access token", ReAuth),
            ("601", "Access token invalid", ReAuth),
            ("602", "Access token expired", ReAuth),
            ("603", "Access denied", FailCall),
            ("604", "Request time-out", Retry),
            ("605", "HTTP Method not supported", FailCall),
            (
                "606",
                "Max rate limit '100' exceeded with in '20' secs",
                BackOff,
            ),
            ("607", "Daily quota reached", PauseUntilDayTurns),
            ("608", "API Temporarily Unavailable", Retry),
            ("609", "Invalid JSON", FailCall),
            ("610", "Requested resource not found", FailCall),
            ("611", "System error", Retry),
            ("612", "Invalid Content Type", FailCall),
            ("613", "Invalid Multipart Request", FailCall),
            ("614", "Invalid Subscription", Retry),
            ("615", "Concurrent access limit reached", BackOff),
            ("616", "Invalid subscription type", FailCall),
            ("701", "%s cannot be blank", FailCall),
            ("702", "No data found", FailCall),
            ("703", "Feature not enabled", FailCall),
            ("704", "Invalid date format", FailCall),
            ("709", "Business rule violation", FailCall),
            ("710", "Parent folder not found", FailCall),
            ("711", "Incompatible folder type", FailCall),
            ("712", "Merge operation invalid", FailCall),
            ("713", "Transient error", Retry),
            ("714", "Unable to find default record type", FailCall),
            ("718", "ExternalSalesPersonID not found", FailCall),
            ("719", "Lock wait timeout exception", Retry),
            ("1001", "Invalid value", FailRecord),
            ("1002", "Missing value for required parameter", FailRecord),
            ("1003", "Invalid data", FailCall),
            ("1004", "Lead not found", FailRecord),
            ("1005", "Lead already exists", FailRecord),
            ("1006", "Field not found", FailRecord),
            (
                "1007",
                "Multiple leads match the lookup criteria",
                FailRecord,
            ),
            ("1008", "Access denied to partition", FailRecord),
            ("1013", "Object not found", FailRecord),
            ("1016", "Too many imports", BackOff),
            ("1018", "CRM Enabled", FailRecord),
            ("1019", "Import in progress", BackOff),
            ("1020", "Too many clones to program", PauseUntilDayTurns),
            ("1022", "Object in use", FailRecord),
            ("1029", "Too many jobs in queue", BackOff),
            ("1029", "Job already queued", AlreadyDone),
            (
                "1029",
                "Export daily quota 500MB exceeded",
                PauseUntilDayTurns,
            ),
            ("1036", "Duplicate object found in input", FailRecord),
            ("1037", "Lead was skipped", FailRecord),
            ("1076", "Merge Leads call with mergeInCRM flag", FailRecord),
            ("1080", "Too many leadIds", FailRecord),
            ("9999", "something new", FailCall),
        ];
        for (code, message, want) in table {
            assert_eq!(classify(code, message), *want, "code {code} ({message})");
        }
    }

    #[test]
    fn record_reasons_fail_the_record_unless_they_clear_up() {
        assert_eq!(
            classify_reason("1005", "Lead already exists"),
            Disposition::FailRecord
        );
        assert_eq!(
            classify_reason("1003", "Invalid data"),
            Disposition::FailRecord
        );
        assert_eq!(classify_reason("1022", "Object in use"), Disposition::Retry);
        assert_eq!(
            classify_reason("1016", "Too many imports"),
            Disposition::BackOff
        );
        assert_eq!(
            classify_reason("604", "Request timed out"),
            Disposition::Retry
        );
        assert_eq!(
            classify_reason("603", "Access denied"),
            Disposition::FailRecord
        );
    }

    #[test]
    fn every_documented_record_code_has_its_kind() {
        use RefusalKind::*;
        let table: &[(&str, RefusalKind, bool)] = &[
            ("1001", InvalidValue, false),
            ("1002", InvalidValue, false),
            ("1003", InvalidValue, false),
            ("1004", NotFound, true),
            ("1005", AlreadyExists, false),
            ("1006", FieldNotFound, false),
            ("1007", Duplicate, false),
            ("1008", Partition, false),
            ("1009", Partition, false),
            ("1010", Partition, false),
            ("1011", FieldNotFound, false),
            ("1013", NotFound, true),
            ("1014", Transient, true),
            ("1015", NotFound, true),
            ("1016", Transient, true),
            ("1017", AlreadyExists, false),
            ("1018", NativeSyncOwned, false),
            ("1019", Transient, true),
            ("1020", Quota, true),
            ("1021", CompanyFieldOnLead, false),
            ("1022", InUse, true),
            ("1036", Duplicate, false),
            ("1076", MergeRefused, false),
            ("1080", MergeRefused, false),
            ("1099", Other, false),
            ("604", Transient, true),
            ("607", Quota, true),
            ("603", Other, false),
        ];
        for (code, kind, retryable) in table {
            let r = RecordRefusal::new(code, "m");
            assert_eq!(r.kind, *kind, "code {code}");
            assert_eq!(r.retryable(), *retryable, "code {code}");
            assert_eq!(r.code, *code);
        }
    }

    #[test]
    fn call_level_record_codes_have_a_refusal_kind() {
        let e = Error::from_api("/rest/v1/leads/1/merge.json", "1004", "Lead not found");
        assert_eq!(e.refusal_kind(), Some(RefusalKind::NotFound));
        let e = Error::from_api("/rest/v1/companies.json", "1018", "CRM Enabled");
        assert_eq!(e.refusal_kind(), Some(RefusalKind::NativeSyncOwned));
        assert_eq!(Error::from_api("/x", "606", "rate").refusal_kind(), None);
        assert_eq!(Error::from_api("/x", "1035", "filter").refusal_kind(), None);
    }

    #[test]
    fn error_1035_has_its_own_variant_and_is_not_retryable() {
        let e = Error::from_api(
            "/bulk/v1/leads/export/create.json",
            "1035",
            "Unsupported filter type for target subscription: updatedAt",
        );
        assert!(matches!(e, Error::UnsupportedFilter { .. }));
        assert_eq!(e.code(), Some("1035"));
        assert!(!e.is_retryable());
    }

    #[test]
    fn retryable_follows_the_disposition() {
        assert!(Error::from_api("/x", "606", "rate").is_retryable());
        assert!(Error::from_api("/x", "502", "gw").is_retryable());
        assert!(!Error::from_api("/x", "603", "denied").is_retryable());
        assert!(!Error::from_api("/x", "607", "quota").is_retryable());
        assert_eq!(
            Error::from_api("/x", "607", "quota").disposition(),
            Disposition::PauseUntilDayTurns
        );
        let e = Error::HttpStatus {
            endpoint: "/x".into(),
            status: 503,
            body: String::new(),
        };
        assert!(e.is_retryable());
    }
}
