//! The bad-input corpus (issue 7, part 2): malformed export files, malformed Marketo API
//! responses, hostile webhook bodies and broken configuration. Each case must give a clear error
//! that names what was wrong and where, must never panic, and must lose nothing already accepted.
//!
//! Fixtures live in `tests/fixtures/bad_input/`; `mixed_1000.csv` is written by
//! `tests/fixtures/bad_input/generate_mixed.py` together with its expectations.

#[path = "support/http_fakes.rs"]
mod http_fakes;

use std::collections::BTreeSet;
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
