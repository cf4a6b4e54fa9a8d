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
