//! The bad-input corpus (issue 7, part 2): malformed export files, malformed Marketo API
//! responses, hostile webhook bodies and broken configuration. Each case must give a clear error
//! that names what was wrong and where, must never panic, and must lose nothing already accepted.
//!
//! Fixtures live in `tests/fixtures/bad_input/`; `mixed_1000.csv` is written by
//! `tests/fixtures/bad_input/generate_mixed.py` together with its expectations.

#[path = "support/http_fakes.rs"]
mod http_fakes;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use marketo_sync::marketo::csv::{
    CsvError, ExportReader, ExportRow, FileFormat, ReaderOptions, RowError, RowErrorReason,
    RowWarning,
};
use marketo_sync::model::{FieldDef, FieldType, ObjectSchema, Side, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bad_input")
        .join(name)
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// The lead schema the typed reads use: only the typed columns matter.
fn lead_schema() -> ObjectSchema {
    ObjectSchema {
        side: Side::Marketo,
        object: "lead".into(),
        id_field: Some("id".into()),
        dedupe_fields: vec!["email".into()],
        fields: vec![
            FieldDef::new("id", FieldType::Integer),
            FieldDef::new("email", FieldType::Email),
            FieldDef::new("leadScore", FieldType::Integer),
            FieldDef::new("updatedAt", FieldType::DateTime),
            FieldDef::new("unsubscribed", FieldType::Boolean),
            FieldDef::new("dateOfBirth", FieldType::Date),
        ],
    }
}

/// Reads a whole file, splitting accepted rows from row errors; any other error fails the test.
fn read_all<R: std::io::Read>(reader: ExportReader<R>) -> (Vec<ExportRow>, Vec<RowError>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for item in reader {
        match item {
            Ok(row) => rows.push(row),
            Err(CsvError::Row(e)) => errors.push(e),
            Err(other) => panic!("reading stopped: {other}"),
        }
    }
    (rows, errors)
}

fn typed_file(name: &str) -> (Vec<ExportRow>, Vec<RowError>) {
    let file = BufReader::new(File::open(fixture(name)).expect("fixture"));
    read_all(
        ExportReader::new(file, FileFormat::Csv)
            .expect("header")
            .typed(&lead_schema()),
    )
}

// ---- (a) export files ---------------------------------------------------------------------

#[test]
fn mixed_1000_keeps_every_good_row_and_reports_every_bad_one_by_line() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("mixed_1000.expected.json")).expect("expectations"),
    )
    .expect("expectations are JSON");
    let good = expected["good"].as_array().expect("good");
    let bad = expected["bad"].as_array().expect("bad");
    assert_eq!(good.len() + bad.len(), 1000);
    assert!(bad.len() >= 20, "the corpus must hold bad rows");

    let (rows, errors) = typed_file("mixed_1000.csv");

    // Every good row, in order, on its own line, with its id.
    let got: Vec<(u64, Value)> = rows
        .iter()
        .map(|r| (r.line, r.fields["id"].clone()))
        .collect();
    let want: Vec<(u64, Value)> = good
        .iter()
        .map(|g| {
            (
                g["line"].as_u64().expect("line"),
                Value::Int(g["id"].as_i64().expect("id")),
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "good rows lost or invented");
    assert_eq!(got, want);

    // Every bad row, by line, with the right reason.
    let got_bad: Vec<(u64, &'static str)> = errors
        .iter()
        .map(|e| {
            let kind = match &e.reason {
                RowErrorReason::WrongColumnCount {
                    expected: 7,
                    found: 8,
                } => "too_many",
                RowErrorReason::WrongColumnCount {
                    expected: 7,
                    found: 5,
                } => "too_few",
                RowErrorReason::UnterminatedQuote => "unbalanced",
                RowErrorReason::BadValue { field, .. } if field == "leadScore" => "bad_integer",
                RowErrorReason::BadValue { field, .. } if field == "updatedAt" => "bad_datetime",
                other => panic!("unexpected reason at line {}: {other}", e.line),
            };
            (e.line, kind)
        })
        .collect();
    let want_bad: Vec<(u64, &str)> = bad
        .iter()
        .map(|b| {
            (
                b["line"].as_u64().expect("line"),
                b["kind"].as_str().expect("kind"),
            )
        })
        .collect();
    assert_eq!(got_bad, want_bad);

    // The messages name the line and what was wrong.
    for e in &errors {
        let message = CsvError::Row(e.clone()).to_string();
        assert!(message.contains(&format!("line {}", e.line)), "{message}");
    }
    let bad_int = errors
        .iter()
        .find(
            |e| matches!(&e.reason, RowErrorReason::BadValue { field, .. } if field == "leadScore"),
        )
        .expect("a bad integer");
    assert!(
        bad_int
            .to_string()
            .contains("\"12abc\" is not a valid integer"),
        "{bad_int}"
    );

    // The tolerated oddities came through intact.
    let by_id = |id: i64| {
        rows.iter()
            .find(|r| r.fields["id"] == Value::Int(id))
            .expect("row present")
    };
    for g in good {
        let id = g["id"].as_i64().expect("id");
        let row = by_id(id);
        let notes = &row.fields["notes"];
        match id % 9 {
            0 => assert_eq!(
                notes,
                &text(&format!("called {id}, said \"call back\"\nnext week"))
            ),
            1 => assert_eq!(notes, &text("株式会社\u{2028}東京")),
            2 => assert_eq!(notes, &text("para\u{2029}two")),
            3 => assert_eq!(notes, &text("nulinnote")),
            4 => {
                assert_eq!(notes, &text("latin1 caf\u{FFFD}"));
                assert_eq!(
                    row.warnings,
                    vec![RowWarning::InvalidUtf8 {
                        field: "notes".into()
                    }]
                );
            }
            5 => assert_eq!(notes, &Value::Null),
            _ => assert_eq!(notes, &text(&format!("plain note {id}"))),
        }
        assert!(
            g["invalid_utf8"].as_bool() == Some(!row.warnings.is_empty()),
            "warnings of row {id}"
        );
        assert_eq!(row.fields["leadScore"], Value::Int(id % 100));
        assert_eq!(row.fields["firstName"], text(&format!("First{id}")));
        // No carriage return from the CRLF lines survives.
        assert!(
            !row.fields.values().any(|v| v.to_text().contains('\r')),
            "row {id}"
        );
    }
}

#[test]
fn mixed_1000_streams_the_same_through_a_one_byte_reader() {
    // The same file through a reader that returns one byte at a time: buffer boundaries in
    // the middle of quotes, CRLF pairs and UTF-8 sequences must not change a thing.
    struct OneByte<R>(R);
    impl<R: std::io::Read> std::io::Read for OneByte<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }
    let bytes = std::fs::read(fixture("mixed_1000.csv")).expect("fixture");
    let whole = read_all(
        ExportReader::new(&bytes[..], FileFormat::Csv)
            .expect("header")
            .typed(&lead_schema()),
    );
    let trickled = read_all(
        ExportReader::new(OneByte(&bytes[..]), FileFormat::Csv)
            .expect("header")
            .typed(&lead_schema()),
    );
    assert_eq!(whole, trickled);
}

#[test]
fn bad_typed_values_name_the_field_and_line_and_keep_the_rest() {
    let (rows, errors) = typed_file("bad_typed_values.csv");
    let got: Vec<(u64, String)> = errors
        .iter()
        .map(|e| (e.line, e.reason.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                3,
                r#"field "leadScore": "twelve" is not a valid integer"#.to_owned()
            ),
            (
                4,
                r#"field "leadScore": "0x1F" is not a valid integer"#.to_owned()
            ),
            (
                5,
                r#"field "unsubscribed": "maybe" is not a valid boolean"#.to_owned()
            ),
            (
                6,
                r#"field "dateOfBirth": "1980-02-30" is not a valid date"#.to_owned()
            ),
            (
                7,
                r#"field "updatedAt": "yesterday" is not a valid datetime"#.to_owned()
            ),
            (8, r#"field "id": "-" is not a valid integer"#.to_owned()),
        ]
    );
    let ids: Vec<&Value> = rows.iter().map(|r| &r.fields["id"]).collect();
    assert_eq!(ids, vec![&Value::Int(1), &Value::Int(9), &Value::Int(10)]);
    assert_eq!(rows[1].fields["unsubscribed"], Value::Bool(true));
    assert_eq!(rows[2].fields["leadScore"], Value::Null);
}

#[test]
fn an_oversized_record_is_refused_alone() {
    let mut file = String::from("id,notes\n1,short\n2,\"");
    file.push_str(&"x".repeat(10_000));
    file.push_str("\"\n3,after\n");
    let options = ReaderOptions {
        max_record_bytes: 4096,
        ..ReaderOptions::default()
    };
    let (rows, errors) = read_all(ExportReader::with_options(file.as_bytes(), options).unwrap());
    assert_eq!(
        errors,
        vec![RowError {
            line: 3,
            record: 2,
            reason: RowErrorReason::TooLong { limit: 4096 }
        }]
    );
    let ids: Vec<_> = rows.iter().map(|r| r.fields["id"].clone()).collect();
    assert_eq!(ids, vec![text("1"), text("3")]);
}

#[test]
fn unusable_headers_are_refused_with_a_reason() {
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "duplicate",
            b"id,email,id\n1,a,1\n",
            "column \"id\" appears twice",
        ),
        ("empty name", b"id,,email\n1,,a\n", "column 2 has no name"),
        (
            "unterminated quote",
            b"id,\"email\n1,a\n",
            "a quoted name is never closed",
        ),
        ("only NUL bytes", b"\0\0\0", "no header"),
        ("only a BOM", b"\xEF\xBB\xBF", "no header"),
    ];
    for (name, bytes, expected) in cases {
        let error = match ExportReader::new(bytes, FileFormat::Csv) {
            Ok(r) => panic!("{name}: header accepted: {:?}", r.headers()),
            Err(e) => e,
        };
        assert!(error.as_row_error().is_none(), "{name}");
        assert!(!error.is_retryable(), "{name}");
        let message = error.to_string();
        assert!(message.contains(expected), "{name}: {message}");
    }
}

#[test]
fn carriage_return_only_line_ends_are_not_read_as_one_row() {
    // Old Mac line ends: every line break is a lone CR. Dropping CRs must not glue the file
    // into one line and lose every row silently.
    let bytes = b"id,name\r1,ann\r2,\"multi\nline\"\r3,cy";
    let reader = ExportReader::new(&bytes[..], FileFormat::Csv).expect("header");
    assert_eq!(reader.headers(), ["id", "name"]);
    let (rows, errors) = read_all(reader);
    assert!(errors.is_empty(), "{errors:?}");
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.line, r.fields["id"].clone(), r.fields["name"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, text("1"), text("ann")),
            (3, text("2"), text("multi\nline")),
            (5, text("3"), text("cy")),
        ]
    );
}

// ---- (b) malformed Marketo API responses --------------------------------------------------

mod api {
    use std::time::Duration;

    use marketo_sync::marketo::bulk_extract::{
        ExportJob, ExportKind, ExportOptions, ExportRequest, ExportStatus,
    };
    use marketo_sync::marketo::transport::MAX_RESPONSE_BYTES;
    use marketo_sync::marketo::{
        Client, ClientConfig, Disposition, Error, Record, RetryPolicy, SyncAction,
    };
    use secrecy::SecretString;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const SECRET: &str = "TOP-SECRET-bad-input-client-secret";
    const LEAD: &str = "/rest/v1/lead/5.json";
    const LEADS: &str = "/rest/v1/leads.json";

    async fn server() -> (MockServer, Client) {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/identity/oauth/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": "tok-1:ab", "token_type": "bearer", "expires_in": 3599,
                "scope": "api@x.com"
            })))
            .mount(&server)
            .await;
        let mut cfg = ClientConfig::new(
            server.uri().parse().expect("url"),
            "bad-input",
            SecretString::from(SECRET),
        );
        cfg.request_timeout = None;
        cfg.download_timeout = None;
        cfg.pool_idle_timeout = None;
        cfg.retry = RetryPolicy {
            max_retries: 2,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            rate_limit_wait: Duration::from_millis(50),
            download_attempts: 2,
        };
        let client = Client::new(cfg).expect("client");
        (server, client)
    }

    async fn answer(server: &MockServer, verb: &str, at: &str, response: ResponseTemplate) {
        Mock::given(method(verb))
            .and(path(at))
            .respond_with(response)
            .mount(server)
            .await;
    }

    fn raw(status: u16, body: &str, mime: &str) -> ResponseTemplate {
        ResponseTemplate::new(status).set_body_raw(body.as_bytes().to_vec(), mime)
    }

    /// Checks the common promises: the error names the endpoint and the problem, never the
    /// secret, and is not retried when retrying cannot help.
    fn assert_clear(error: &Error, endpoint: &str, needle: &str) {
        let message = error.to_string();
        assert!(message.contains(endpoint), "no endpoint in: {message}");
        assert!(message.contains(needle), "{needle:?} not in: {message}");
        assert!(!message.contains(SECRET), "secret in: {message}");
        assert!(
            message.len() < 2_000,
            "message too long: {} bytes",
            message.len()
        );
    }

    async fn calls_to(server: &MockServer, at: &str) -> usize {
        server
            .received_requests()
            .await
            .expect("recording")
            .iter()
            .filter(|r| r.url.path() == at)
            .count()
    }

    #[tokio::test]
    async fn non_json_with_http_200_is_a_decode_error() {
        let (server, client) = server().await;
        answer(&server, "GET", LEAD, raw(200, "OK", "text/plain")).await;
        let error = client.get_lead(5, &[]).await.unwrap_err();
        assert!(matches!(error, Error::Decode { .. }), "{error:?}");
        assert_eq!(error.disposition(), Disposition::FailCall);
        assert_clear(&error, LEAD, "expected value");
        assert_eq!(
            calls_to(&server, LEAD).await,
            1,
            "a decode error is not retried"
        );
    }

    #[tokio::test]
    async fn an_html_error_page_is_named_with_its_start() {
        let (server, client) = server().await;
        let page = format!(
            "<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head><body>{}</body></html>",
            "maintenance ".repeat(500)
        );
        answer(&server, "GET", LEAD, raw(200, &page, "text/html")).await;
        let error = client.get_lead(5, &[]).await.unwrap_err();
        assert!(matches!(error, Error::Decode { .. }), "{error:?}");
        assert_clear(&error, LEAD, "<!DOCTYPE html>");

        // The same page with HTTP 503 is a retryable status, retried a bounded number of times.
        let (server, client) = self::server().await;
        answer(&server, "GET", LEAD, raw(503, &page, "text/html")).await;
        let error = client.get_lead(5, &[]).await.unwrap_err();
        assert!(
            matches!(error, Error::HttpStatus { status: 503, .. }),
            "{error:?}"
        );
        assert!(error.is_retryable());
        assert_clear(&error, LEAD, "HTTP 503");
        assert_eq!(
            calls_to(&server, LEAD).await,
            3,
            "first call and two retries"
        );
    }

    #[tokio::test]
    async fn truncated_and_empty_json_are_decode_errors() {
        for body in [
            r#"{"requestId":"a#1","success":true,"result":[{"id":5,"email":"a@exa"#,
            "",
            "   ",
            r#"{"requestId":"a#1","success":true,"result":[{"id":5}]}}"#,
        ] {
            let (server, client) = server().await;
            answer(&server, "GET", LEAD, raw(200, body, "application/json")).await;
            let error = client.get_lead(5, &[]).await.unwrap_err();
            assert!(matches!(error, Error::Decode { .. }), "{body:?}: {error:?}");
            assert_clear(&error, LEAD, "cannot decode marketo response");
        }
    }

    #[tokio::test]
    async fn success_without_result_fails_where_results_are_owed() {
        let (server, client) = server().await;
        let envelope = json!({"requestId": "a#1", "success": true});
        answer(
            &server,
            "POST",
            LEADS,
            ResponseTemplate::new(200).set_body_json(envelope.clone()),
        )
        .await;
        let mut lead = Record::new();
        lead.insert("email".into(), json!("ann@example.com"));
        let error = client
            .sync_leads(SyncAction::CreateOrUpdate, Some("email"), None, &[lead])
            .await
            .unwrap_err();
        assert_clear(&error, LEADS, "0 results for 1 inputs");

        let status = "/bulk/v1/leads/export/job-1/status.json";
        answer(
            &server,
            "GET",
            status,
            ResponseTemplate::new(200).set_body_json(envelope),
        )
        .await;
        let error = client
            .export_status(&ExportKind::Leads, "job-1")
            .await
            .unwrap_err();
        assert_clear(&error, status, "no job in the answer");

        // `success: false` with no `errors` says so instead of passing for an empty answer.
        answer(
            &server,
            "GET",
            LEAD,
            ResponseTemplate::new(200).set_body_json(json!({"requestId": "a#2", "success": false})),
        )
        .await;
        let error = client.get_lead(5, &[]).await.unwrap_err();
        assert_clear(&error, LEAD, "success is false but no error is given");
    }

    #[tokio::test]
    async fn result_of_the_wrong_type_names_what_was_found() {
        let cases = [
            (
                json!({"success": true, "result": {"id": 1}}),
                "invalid type: map",
            ),
            (
                json!({"success": true, "result": "none"}),
                "invalid type: string",
            ),
            (json!({"success": true, "result": [1, 2]}), "result[0]"),
            (
                json!({"success": true, "result": [{"status": 7}]}),
                "result[0]",
            ),
            (
                json!({"success": true, "errors": "oops"}),
                "invalid type: string",
            ),
        ];
        for (body, needle) in cases {
            let (server, client) = server().await;
            answer(
                &server,
                "POST",
                LEADS,
                ResponseTemplate::new(200).set_body_json(body.clone()),
            )
            .await;
            let mut lead = Record::new();
            lead.insert("email".into(), json!("ann@example.com"));
            let error = client
                .sync_leads(SyncAction::CreateOrUpdate, Some("email"), None, &[lead])
                .await
                .unwrap_err();
            assert!(matches!(error, Error::Decode { .. }), "{body}: {error:?}");
            assert_clear(&error, LEADS, needle);
        }
    }

    #[tokio::test]
    async fn numeric_error_codes_are_read_as_codes() {
        let (server, client) = server().await;
        answer(
            &server,
            "GET",
            LEAD,
            ResponseTemplate::new(200).set_body_json(json!({
                "requestId": "a#1", "success": false,
                "errors": [{"code": 1003, "message": "Invalid fields: bogus"}]
            })),
        )
        .await;
        let error = client.get_lead(5, &[]).await.unwrap_err();
        assert_eq!(error.code(), Some("1003"));
        assert_eq!(error.disposition(), Disposition::FailCall);
        assert_clear(&error, LEAD, "marketo error 1003");
        assert_clear(&error, LEAD, "Invalid fields: bogus");
        assert_eq!(calls_to(&server, LEAD).await, 1);

        // A numeric transient code is retried like its quoted form.
        let (server, client) = self::server().await;
        answer(
            &server,
            "GET",
            LEAD,
            ResponseTemplate::new(200).set_body_json(json!({
                "success": false, "errors": [{"code": 604, "message": "Request timed out"}]
            })),
        )
        .await;
        let error = client.get_lead(5, &[]).await.unwrap_err();
        assert_eq!(error.code(), Some("604"));
        assert_eq!(calls_to(&server, LEAD).await, 3);
    }

    #[tokio::test]
    async fn unknown_envelope_members_are_ignored_and_nothing_is_lost() {
        let (server, client) = server().await;
        answer(
            &server,
            "GET",
            LEAD,
            ResponseTemplate::new(200).set_body_json(json!({
                "requestId": "a#1", "success": true, "futureMember": {"x": [1, 2]},
                "result": [{"id": 5, "email": "ann@example.com", "brandNewField": "kept"}],
                "warnings": ["something", {"code": "1", "message": "also"}], "moreResult": false
            })),
        )
        .await;
        let lead = client
            .get_lead(5, &[])
            .await
            .expect("read")
            .expect("a lead");
        assert_eq!(lead["email"], json!("ann@example.com"));
        assert_eq!(lead["brandNewField"], json!("kept"));
    }

    #[tokio::test]
    async fn a_response_over_the_size_limit_is_refused() {
        // A valid answer of several megabytes (300 leads with long text) still reads whole.
        let (server, client) = server().await;
        let note = "n".repeat(20_000);
        let leads: Vec<_> = (0..300)
            .map(|i| json!({"id": i, "email": format!("l{i}@example.com"), "notes": note}))
            .collect();
        let path_leads = "/rest/v1/leads.json";
        answer(
            &server,
            "GET",
            path_leads,
            ResponseTemplate::new(200).set_body_json(json!({"success": true, "result": leads})),
        )
        .await;
        let page = client
            .get_leads("id", &["1".to_owned()], &[], None)
            .await
            .expect("a 6 MB answer reads");
        assert_eq!(page.records.len(), 300);

        // One byte over the limit is refused before it fills memory.
        let (server, client) = self::server().await;
        let huge = vec![b' '; MAX_RESPONSE_BYTES + 1];
        answer(
            &server,
            "GET",
            LEAD,
            ResponseTemplate::new(200).set_body_raw(huge, "application/json"),
        )
        .await;
        let error = client.get_lead(5, &[]).await.unwrap_err();
        assert!(matches!(error, Error::Decode { .. }), "{error:?}");
        assert_clear(&error, LEAD, "larger than");
        assert_eq!(calls_to(&server, LEAD).await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_export_state_is_reported_by_name_and_never_downloaded() {
        let (server, client) = server().await;
        let status = "/bulk/v1/leads/export/job-9/status.json";
        answer(
            &server,
            "GET",
            status,
            ResponseTemplate::new(200).set_body_json(json!({"success": true, "result": [
                {"exportId": "job-9", "status": "Exploded", "format": "CSV"}
            ]})),
        )
        .await;
        let job = client
            .export_status(&ExportKind::Leads, "job-9")
            .await
            .expect("status reads");
        assert_eq!(job.status, ExportStatus::Other("Exploded".into()));

        let dir = tempfile::tempdir().expect("dir");
        let options = ExportOptions {
            poll_interval: Duration::from_secs(60),
            max_wait: Some(Duration::from_secs(300)),
        };
        let error = client
            .run_export(
                &ExportKind::Leads,
                &ExportRequest::default(),
                Some("job-9"),
                &dir.path().join("f.csv"),
                &options,
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("job-9") && message.contains("Exploded"),
            "{message}"
        );
        assert_eq!(
            calls_to(&server, "/bulk/v1/leads/export/job-9/file.json").await,
            0
        );
        // A status that is not even a string is a decode error naming the endpoint.
        answer(
            &server,
            "GET",
            "/bulk/v1/leads/export/job-8/status.json",
            ResponseTemplate::new(200).set_body_json(json!({"success": true, "result": [
                {"exportId": "job-8", "status": 3}
            ]})),
        )
        .await;
        let error = client
            .export_status(&ExportKind::Leads, "job-8")
            .await
            .unwrap_err();
        assert_clear(
            &error,
            "/bulk/v1/leads/export/job-8/status.json",
            "result[0]",
        );
    }

    #[tokio::test]
    async fn a_malformed_file_checksum_is_refused_and_the_file_kept() {
        let (server, client) = server().await;
        let file = "id,email\n1,a@example.com\n";
        let endpoint = "/bulk/v1/leads/export/job-3/file.json";
        answer(&server, "GET", endpoint, raw(200, file, "text/csv")).await;
        let dir = tempfile::tempdir().expect("dir");
        for checksum in ["sha256:xyz", "sha256:", "crc32:1234abcd", "sha256: ", "🙂"] {
            let job: ExportJob = serde_json::from_value(json!({
                "exportId": "job-3", "status": "Completed", "format": "CSV",
                "numberOfRecords": 1, "fileSize": file.len(), "fileChecksum": checksum
            }))
            .expect("job");
            let dest = dir.path().join("f.csv");
            let error = client
                .download_export(&ExportKind::Leads, &job, &dest, &CancellationToken::new())
                .await
                .unwrap_err();
            assert!(
                matches!(error, Error::Decode { .. }),
                "{checksum}: {error:?}"
            );
            assert_clear(&error, endpoint, "cannot be verified");
            assert_eq!(std::fs::read_to_string(&dest).expect("kept"), file);
            std::fs::remove_file(&dest).expect("clean");
        }
        // A well-formed checksum that does not match is a mismatch, and the file goes.
        let job: ExportJob = serde_json::from_value(json!({
            "exportId": "job-3", "status": "Completed", "fileSize": file.len(),
            "fileChecksum": format!("sha256:{}", "0".repeat(64))
        }))
        .expect("job");
        let dest = dir.path().join("g.csv");
        let error = client
            .download_export(&ExportKind::Leads, &job, &dest, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error:?}");
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn a_json_envelope_where_a_file_was_expected_is_named() {
        let (server, client) = server().await;
        let endpoint = "/bulk/v1/leads/export/job-4/file.json";
        answer(
            &server,
            "GET",
            endpoint,
            ResponseTemplate::new(200).set_body_json(json!({"success": true, "result": []})),
        )
        .await;
        let job: ExportJob = serde_json::from_value(json!({
            "exportId": "job-4", "status": "Completed", "fileSize": 10
        }))
        .expect("job");
        let dir = tempfile::tempdir().expect("dir");
        let error = client
            .download_export(
                &ExportKind::Leads,
                &job,
                &dir.path().join("f.csv"),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_clear(&error, endpoint, "expected a file, got a JSON envelope");
    }
}

// ---- (c) hostile webhook bodies -----------------------------------------------------------

mod webhook {
    use std::sync::Arc;

    use super::http_fakes::{FakeStatus, SECRET, TestServer, sample_report, spawn_server};
    use marketo_sync::http::{DEFAULT_BODY_LIMIT, OnDemandQueue};
    use reqwest::StatusCode;
    use serde_json::Value;

    async fn harness() -> (TestServer, Arc<OnDemandQueue>) {
        let queue = Arc::new(OnDemandQueue::new(100));
        let status = Arc::new(FakeStatus::new(sample_report()));
        let metrics = marketo_sync::telemetry::metrics::build_recorder().handle();
        let server = spawn_server(status, queue.clone(), metrics, DEFAULT_BODY_LIMIT).await;
        (server, queue)
    }

    async fn post(
        server: &TestServer,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, String) {
        let response = server
            .client
            .post(server.url("/webhooks/marketo"))
            .header("content-type", content_type)
            .header("X-Marketo-Sync-Secret", SECRET)
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        let json: Value = response.json().await.expect("a JSON answer, always");
        let message = json["error"]
            .as_str()
            .or(json["status"].as_str())
            .expect("error or status")
            .to_owned();
        (status, message)
    }

    /// Each hostile body gets a 4xx naming the problem, nothing is queued, and a valid webhook
    /// right after is still accepted.
    async fn refused(cases: Vec<(&str, Vec<u8>, StatusCode, &str)>) {
        let (server, queue) = harness().await;
        for (name, body, status, needle) in cases {
            let (got, message) = post(&server, "application/json", body).await;
            assert_eq!(got, status, "{name}: {message}");
            assert!(
                message.contains(needle),
                "{name}: {needle:?} not in {message:?}"
            );
            assert!(!message.contains(SECRET));
            assert!(queue.is_empty(), "{name} was queued");
        }
        let (got, message) = post(&server, "application/json", r#"{"leadId": 77}"#).await;
        assert_eq!((got, message.as_str()), (StatusCode::ACCEPTED, "queued"));
        assert_eq!(queue.len(), 1);
        server.stop().await;
    }

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[tokio::test]
    async fn structurally_hostile_bodies_are_refused() {
        let deep = format!(
            r#"{{"leadId": 1, "x": {}1{}}}"#,
            "[".repeat(20_000),
            "]".repeat(20_000)
        );
        let ten_mb = format!(
            r#"{{"leadId": 1, "pad": "{}"}}"#,
            "x".repeat(10 * 1024 * 1024)
        );
        refused(vec![
            (
                "empty body",
                vec![],
                StatusCode::BAD_REQUEST,
                "unexpected end of input",
            ),
            (
                "whitespace only",
                b("  \n "),
                StatusCode::BAD_REQUEST,
                "not valid JSON",
            ),
            (
                "deep nesting",
                b(&deep),
                StatusCode::BAD_REQUEST,
                "nested too deeply",
            ),
            (
                "10 MB body",
                b(&ten_mb),
                StatusCode::PAYLOAD_TOO_LARGE,
                "limit",
            ),
            (
                "invalid UTF-8 in a string",
                b"{\"leadId\": 1, \"email\": \"a\xff\xfe@example.com\"}".to_vec(),
                StatusCode::BAD_REQUEST,
                "not valid JSON",
            ),
            (
                "invalid UTF-8 in a key",
                b"{\"lead\xc0Id\": 1}".to_vec(),
                StatusCode::BAD_REQUEST,
                "not valid JSON",
            ),
            (
                "a byte order mark",
                b"\xEF\xBB\xBF{\"leadId\": 1}".to_vec(),
                StatusCode::BAD_REQUEST,
                "not valid JSON",
            ),
            (
                "two documents",
                b(r#"{"leadId": 1}{"leadId": 2}"#),
                StatusCode::BAD_REQUEST,
                "not valid JSON",
            ),
            (
                "duplicate leadId",
                b(r#"{"leadId": 1, "leadId": 2}"#),
                StatusCode::BAD_REQUEST,
                "`leadId` appears more than once",
            ),
            (
                "duplicate leadId through an escape",
                b(r#"{"leadId": 1, "lead\u0049d": 1}"#),
                StatusCode::BAD_REQUEST,
                "`leadId` appears more than once",
            ),
            (
                "duplicate email",
                b(r#"{"leadId": 1, "email": "a@x.com", "email": "b@x.com"}"#),
                StatusCode::BAD_REQUEST,
                "`email` appears more than once",
            ),
            (
                "a JSON array",
                b(r#"[{"leadId": 1}]"#),
                StatusCode::BAD_REQUEST,
                "JSON object",
            ),
            (
                "a JSON string",
                b(r#""leadId""#),
                StatusCode::BAD_REQUEST,
                "JSON object",
            ),
        ])
        .await;
    }

    #[tokio::test]
    async fn lead_ids_that_are_not_positive_integers_are_refused() {
        let mut cases = Vec::new();
        for body in [
            r#"{"leadId": 12.5}"#,
            r#"{"leadId": 12.0}"#,
            r#"{"leadId": 1e3}"#,
            r#"{"leadId": -5}"#,
            r#"{"leadId": "-5"}"#,
            r#"{"leadId": 9223372036854775808}"#,
            r#"{"leadId": 99999999999999999999999999}"#,
            r#"{"leadId": "99999999999999999999999999"}"#,
            r#"{"leadId": "12.0"}"#,
            r#"{"leadId": "0x1F"}"#,
            r#"{"leadId": "١٢"}"#,
            r#"{"leadId": "１２"}"#,
            r#"{"leadId": "12\u200b"}"#,
            r#"{"leadId": "\u202e21"}"#,
            r#"{"leadId": "12\u0000"}"#,
        ] {
            cases.push((
                body,
                b(body),
                StatusCode::BAD_REQUEST,
                "`leadId` is invalid",
            ));
        }
        for body in [
            r#"{"leadId": [12]}"#,
            r#"{"leadId": {"id": 12}}"#,
            r#"{"leadId": true}"#,
        ] {
            cases.push((
                body,
                b(body),
                StatusCode::BAD_REQUEST,
                "number or a numeric string",
            ));
        }
        for body in [
            r#"{"leadİd": 12}"#,
            r#"{"leadid": 12}"#,
            r#"{"leadId\u0000": 12}"#,
            r#"{"leadId": ""}"#,
            r#"{"leadId": "   "}"#,
        ] {
            cases.push((
                body,
                b(body),
                StatusCode::BAD_REQUEST,
                "`leadId` is missing",
            ));
        }
        let long_email = format!(r#"{{"leadId": 1, "email": "{}@x.com"}}"#, "a".repeat(300));
        cases.push((
            "long email",
            b(&long_email),
            StatusCode::BAD_REQUEST,
            "`email` is invalid",
        ));
        cases.push((
            "object deliveryId",
            b(r#"{"leadId": 1, "deliveryId": {"a": 1}}"#),
            StatusCode::BAD_REQUEST,
            "`deliveryId` is invalid",
        ));
        refused(cases).await;
    }

    #[tokio::test]
    async fn the_body_decides_not_the_content_type() {
        // Marketo sends whatever Content-Type the webhook's custom headers say (often none or
        // form encoding), so the receiver judges the body: a form-encoded or XML body is a 400
        // whatever its label, and a JSON body is accepted under any label.
        let (server, queue) = harness().await;
        for (content_type, body) in [
            (
                "application/x-www-form-urlencoded",
                "leadId=12&email=a%40x.com",
            ),
            ("application/xml", "<lead><leadId>12</leadId></lead>"),
            ("text/plain", "leadId: 12"),
            (
                "multipart/form-data; boundary=x",
                "--x\r\nContent-Disposition: form-data; name=\"leadId\"\r\n\r\n12\r\n--x--",
            ),
        ] {
            let (status, message) = post(&server, content_type, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{content_type}: {message}");
            assert!(
                message.contains("not valid JSON"),
                "{content_type}: {message}"
            );
        }
        assert!(queue.is_empty());
        let (status, _) = post(&server, "text/plain", r#"{"leadId": 12}"#).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let (status, _) = post(
            &server,
            "application/x-www-form-urlencoded",
            r#"{"leadId": 13}"#,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(queue.len(), 2);
        server.stop().await;
    }
}

// ---- (d) broken configuration -------------------------------------------------------------

mod config {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use marketo_sync::config::{Problem, SettingsSource};
    use marketo_sync::mapping::SchemaSet;

    const SECRET: &str = "s3cret-never-printed";

    fn case_dir(case: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/bad_input/config")
            .join(case)
    }

    fn problems(case: &str) -> Vec<Problem> {
        let (schemas, schema_problems) = SchemaSet::load_dir(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/_schemas"),
        );
        assert!(schema_problems.is_empty(), "{schema_problems:?}");
        let vars = HashMap::from([(
            "MKSYNC__MARKETO__CLIENT_SECRET".to_owned(),
            SECRET.to_owned(),
        )]);
        let source = SettingsSource::new(case_dir(case), None).with_vars(vars);
        marketo_sync::app::validate_dir(&source, Some(&schemas))
    }

    /// Returns the errors of a case, checking that no problem prints the secret.
    fn errors(case: &str) -> Vec<Problem> {
        let all = problems(case);
        for p in &all {
            assert!(!p.to_string().contains(SECRET), "{case}: secret printed");
        }
        all.into_iter().filter(Problem::is_error).collect()
    }

    /// Asserts exactly one error, in `file` (relative to the case), containing `needle`.
    fn one_error(case: &str, file: &str, needle: &str) -> Problem {
        let errors = errors(case);
        assert_eq!(errors.len(), 1, "{case}: {errors:#?}");
        let e = errors.into_iter().next().expect("one");
        assert!(
            e.file.ends_with(&format!("{case}/{file}")),
            "{case}: wrong file {}",
            e.file
        );
        let message = e.to_string();
        assert!(
            message.contains(needle),
            "{case}: {needle:?} not in {message}"
        );
        assert!(
            message.len() < 1_000,
            "{case}: message of {} bytes",
            message.len()
        );
        e
    }

    #[test]
    fn a_mapping_file_with_invalid_utf8_is_one_clear_error() {
        one_error("mapping_invalid_utf8", "mappings/leads.toml", "valid UTF-8");
    }

    #[test]
    fn a_settings_file_with_invalid_utf8_is_one_clear_error() {
        one_error("settings_invalid_utf8", "default.toml", "valid UTF-8");
    }

    #[test]
    fn a_mapping_path_that_is_a_directory_is_one_clear_error() {
        one_error(
            "mapping_is_directory",
            "mappings/leads.toml",
            "cannot read the mapping file of `leads`",
        );
    }

    #[test]
    fn an_empty_mapping_file_names_the_first_missing_key() {
        let e = one_error(
            "mapping_empty",
            "mappings/leads.toml",
            "`marketo_object` is missing",
        );
        assert_eq!(e.key, "marketo_object");
    }

    #[test]
    fn a_utf8_bom_in_a_mapping_file_is_accepted() {
        assert_eq!(errors("mapping_bom"), Vec::<Problem>::new());
    }

    #[test]
    fn a_1mb_mapping_file_with_an_oversized_default_is_one_clear_error() {
        let size = std::fs::metadata(case_dir("mapping_1mb").join("mappings/leads.toml"))
            .expect("fixture")
            .len();
        assert!(size > 1024 * 1024, "{size}");
        let e = one_error(
            "mapping_1mb",
            "mappings/leads.toml",
            "the default is 1048576 characters long but Marketo field `lastName` holds at most 255",
        );
        assert_eq!(e.key, "fields[2].default");
    }

    #[test]
    fn a_field_writing_into_the_link_key_is_one_clear_error() {
        let e = one_error(
            "mapping_key_as_field",
            "mappings/leads.toml",
            "Marketo field `crmContactId` is the link key (keys.marketo_crm_key)",
        );
        assert_eq!(e.key, "fields[2].marketo");
    }

    #[test]
    fn two_fields_under_one_canonical_name_is_one_clear_error() {
        let e = one_error(
            "mapping_duplicate_name",
            "mappings/leads.toml",
            "canonical name `first` is already used by fields[1]",
        );
        assert_eq!(e.key, "fields[2].name");
    }

    #[test]
    fn two_fields_writing_one_crm_field_is_one_clear_error() {
        let e = one_error(
            "mapping_same_field_twice_crm",
            "mappings/leads.toml",
            "CRM field `first_name` is already written by fields[1]",
        );
        assert_eq!(e.key, "fields[2].crm");
    }
}
