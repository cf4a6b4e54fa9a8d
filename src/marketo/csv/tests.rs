//! Unit tests of the export reader.

use super::*;
use crate::model::{FieldDef, Side};

fn read_all(input: &[u8]) -> Vec<Result<ExportRow, CsvError>> {
    ExportReader::new(input, FileFormat::Csv).unwrap().collect()
}

#[test]
fn null_and_empty_cells_are_null_the_rest_text() {
    let rows = read_all(b"a,b,c\nnull,,x\n");
    let row = rows[0].as_ref().unwrap();
    assert_eq!(row.fields["a"], Value::Null);
    assert_eq!(row.fields["b"], Value::Null);
    assert_eq!(row.fields["c"], Value::Text("x".into()));
    assert_eq!((row.line, row.record), (2, 1));
}

#[test]
fn wrong_column_count_is_a_row_error_and_reading_goes_on() {
    let rows = read_all(b"a,b\n1,2\n3\n4,5,6\n7,8\n");
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].as_ref().unwrap().fields["a"], Value::from("1"));
    let e1 = rows[1]
        .as_ref()
        .unwrap_err()
        .as_row_error()
        .unwrap()
        .clone();
    assert_eq!(
        e1,
        RowError {
            line: 3,
            record: 2,
            reason: RowErrorReason::WrongColumnCount {
                expected: 2,
                found: 1
            }
        }
    );
    assert_eq!(
        e1.to_string(),
        "line 3, record 2: expected 2 columns, found 1"
    );
    let e2 = rows[2].as_ref().unwrap_err().as_row_error().unwrap();
    assert_eq!(
        e2.reason,
        RowErrorReason::WrongColumnCount {
            expected: 2,
            found: 3
        }
    );
    assert_eq!(rows[3].as_ref().unwrap().fields["b"], Value::from("8"));
}

#[test]
fn header_problems_are_clear_errors() {
    assert!(matches!(
        ExportReader::new(&b""[..], FileFormat::Csv),
        Err(CsvError::EmptyFile)
    ));
    let dup = ExportReader::new(&b"a,b,a\n"[..], FileFormat::Csv)
        .err()
        .unwrap();
    assert_eq!(
        dup.to_string(),
        "bad export header: column \"a\" appears twice"
    );
    let empty = ExportReader::new(&b"a,,c\n"[..], FileFormat::Csv)
        .err()
        .unwrap();
    assert_eq!(empty.to_string(), "bad export header: column 2 has no name");
}

#[test]
fn typed_mode_converts_by_schema() {
    let schema = ObjectSchema {
        side: Side::Marketo,
        object: "lead".into(),
        id_field: Some("id".into()),
        dedupe_fields: vec![],
        fields: vec![
            FieldDef::new("id", FieldType::Integer),
            FieldDef::new("score", FieldType::Decimal),
            FieldDef::new("ok", FieldType::Boolean),
            FieldDef::new("member", FieldType::Boolean),
            FieldDef::new("born", FieldType::Date),
            FieldDef::new("at", FieldType::DateTime),
            FieldDef::new("zip", FieldType::Text { max_len: None }),
        ],
    };
    let input = b"id,score,ok,member,born,at,zip,extra\n\
                  7,1.50,true,0,1990-01-02,2017-09-08 16:38:14,007,9\n\
                  x,1,true,0,null,null,1,2\n\
                  8,null,false,1,,2017-09-08T08:38:14-08:00,,\n";
    let mut reader = ExportReader::new(&input[..], FileFormat::Csv)
        .unwrap()
        .typed(&schema);
    let row = reader.next().unwrap().unwrap();
    assert!(matches!(row.fields["id"], Value::Int(7)));
    assert!(matches!(row.fields["score"], Value::Decimal(_)));
    assert_eq!(row.fields["score"], Value::Decimal("1.5".parse().unwrap()));
    assert!(matches!(row.fields["ok"], Value::Bool(true)));
    assert!(matches!(row.fields["member"], Value::Bool(false)));
    assert!(matches!(row.fields["born"], Value::Date(_)));
    assert_eq!(row.fields["born"], Value::from("1990-01-02"));
    assert!(matches!(row.fields["at"], Value::DateTime(_)));
    assert_eq!(row.fields["at"], Value::from("2017-09-08T16:38:14Z"));
    assert!(matches!(&row.fields["zip"], Value::Text(s) if s == "007"));
    assert!(matches!(&row.fields["extra"], Value::Text(s) if s == "9"));
    let err = reader.next().unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad row in export file: line 3, record 2: field \"id\": \"x\" is not a valid integer"
    );
    let row = reader.next().unwrap().unwrap();
    assert!(matches!(row.fields["member"], Value::Bool(true)));
    assert_eq!(row.fields["at"], Value::from("2017-09-08T16:38:14Z"));
    assert!(row.fields["score"].is_null());
    assert!(reader.next().is_none());
}

#[test]
fn stats_count_rows_errors_and_bytes() {
    let input = b"a,b\n1,2\n\0bad\n3,\xFF\n";
    let mut reader = ExportReader::new(&input[..], FileFormat::Csv).unwrap();
    let results: Vec<_> = reader.by_ref().collect();
    assert_eq!(results.len(), 3);
    let warned = results[2].as_ref().unwrap();
    assert_eq!(
        warned.warnings,
        vec![RowWarning::InvalidUtf8 { field: "b".into() }]
    );
    assert_eq!(warned.fields["b"], Value::from("\u{FFFD}"));
    assert_eq!(
        reader.stats(),
        ReadStats {
            records: 3,
            rows: 2,
            errors: 1,
            warnings: 1,
            bytes_read: input.len() as u64,
            nul_bytes_removed: 1,
        }
    );
}

struct FailingRead(usize);

impl Read for FailingRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let data = b"a,b\n1,2\n";
        if self.0 < data.len() {
            let n = (data.len() - self.0).min(buf.len());
            buf[..n].copy_from_slice(&data[self.0..self.0 + n]);
            self.0 += n;
            Ok(n)
        } else {
            Err(io::Error::other("disk gone"))
        }
    }
}

#[test]
fn an_io_error_ends_the_iteration_after_the_rows_read() {
    let mut reader = ExportReader::new(FailingRead(0), FileFormat::Csv).unwrap();
    let first = reader.next().unwrap();
    // The failing read comes while the first record is still being completed or right after.
    let mut rows = Vec::new();
    let mut io_errors = 0;
    for item in std::iter::once(first).chain(reader.by_ref()) {
        match item {
            Ok(row) => rows.push(row),
            Err(e) => {
                assert!(e.is_retryable());
                assert!(matches!(e, CsvError::Read { .. }));
                io_errors += 1;
            }
        }
    }
    assert_eq!(rows.len(), 1);
    assert_eq!(io_errors, 1);
    assert!(reader.next().is_none());
}

#[test]
fn blank_lines_and_a_lone_bom_are_an_empty_file() {
    for input in [&b"\n\r\n\n"[..], &b"\xEF\xBB\xBF"[..], &b"\0\0"[..]] {
        assert!(matches!(
            ExportReader::new(input, FileFormat::Csv),
            Err(CsvError::EmptyFile)
        ));
    }
}

#[test]
fn an_over_long_record_is_a_row_error_with_the_limit() {
    let input = b"a,b\n1,2\n333333333333,4\n5,6\n";
    let options = ReaderOptions {
        delimiter: b',',
        max_record_bytes: 8,
    };
    let results: Vec<_> = ExportReader::with_options(&input[..], options)
        .unwrap()
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[1].as_ref().unwrap_err().as_row_error(),
        Some(&RowError {
            line: 3,
            record: 2,
            reason: RowErrorReason::TooLong { limit: 8 }
        })
    );
    assert_eq!(results[2].as_ref().unwrap().fields["a"], Value::from("5"));
}

#[test]
fn semicolon_separated_files() {
    let rows: Vec<_> = ExportReader::new(&b"a;b\n\"x;y\";z\n"[..], FileFormat::Ssv)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(rows[0].fields["a"], Value::from("x;y"));
    assert_eq!(rows[0].fields["b"], Value::from("z"));
}

#[test]
fn a_stray_quote_closed_by_a_later_line_gives_back_the_rows_it_swallowed() {
    let input = b"id,name\n1,one\n2,\"broken\n3,three\n4,\"four\",x\n5,five\n";
    let results: Vec<_> = ExportReader::new(&input[..], FileFormat::Csv)
        .unwrap()
        .collect();
    assert_eq!(results.len(), 5);
    assert_eq!(
        results[1].as_ref().unwrap_err().as_row_error(),
        Some(&RowError {
            line: 3,
            record: 2,
            reason: RowErrorReason::UnterminatedQuote
        })
    );
    // Line 5 has a quoted value and a third column: still a wrong-column-count row of its own.
    assert_eq!(
        results[3].as_ref().unwrap_err().as_row_error(),
        Some(&RowError {
            line: 5,
            record: 4,
            reason: RowErrorReason::WrongColumnCount {
                expected: 2,
                found: 3
            }
        })
    );
    let kept: Vec<(u64, Value)> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| (r.line, r.fields["name"].clone()))
        .collect();
    assert_eq!(
        kept,
        vec![
            (2, Value::from("one")),
            (4, Value::from("three")),
            (6, Value::from("five"))
        ]
    );
}

#[test]
fn a_genuine_multi_line_value_with_a_column_too_many_is_one_error() {
    // The second line of the value, read on its own, would be a 2-column "row" with a stray
    // quote: it must not be turned into a row.
    let input = b"id,name\n1,\"line one\nline two\",extra\n2,two\n";
    let results: Vec<_> = ExportReader::new(&input[..], FileFormat::Csv)
        .unwrap()
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(
        results[0].as_ref().unwrap_err().as_row_error(),
        Some(&RowError {
            line: 2,
            record: 1,
            reason: RowErrorReason::WrongColumnCount {
                expected: 2,
                found: 3
            }
        })
    );
    let row = results[1].as_ref().unwrap();
    assert_eq!((row.line, row.record), (4, 2));
    assert_eq!(row.fields["name"], Value::from("two"));
}

#[test]
fn a_stray_quote_that_keeps_the_column_count_is_caught_too() {
    let input = b"id,name\n1,one\n2,\"broken\n3,three\n4,\"four\"\n5,five\n";
    let results: Vec<_> = ExportReader::new(&input[..], FileFormat::Csv)
        .unwrap()
        .collect();
    let errors: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| e.as_row_error().unwrap().clone())
        .collect();
    assert_eq!(
        errors,
        vec![RowError {
            line: 3,
            record: 2,
            reason: RowErrorReason::UnterminatedQuote
        }]
    );
    let kept: Vec<Value> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.fields["name"].clone())
        .collect();
    assert_eq!(
        kept,
        vec![
            Value::from("one"),
            Value::from("three"),
            Value::from("four"),
            Value::from("five")
        ]
    );
}

#[test]
fn a_genuine_multi_line_value_with_a_bare_quote_is_kept() {
    let input = b"id,note\n1,\"He said \"hi\nthen left\"\n2,two\n";
    let rows: Vec<_> = ExportReader::new(&input[..], FileFormat::Csv)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0].fields["note"],
        Value::from("He said \"hi\nthen left")
    );
    assert_eq!(rows[1].line, 4);
}

#[test]
fn a_stray_quote_before_a_multi_line_value_gives_the_value_back() {
    let input = b"id,name\n\"\"\"\n0,\"a\nb\"\n1,\"c\nd\"\n";
    let results: Vec<_> = ExportReader::new(&input[..], FileFormat::Csv)
        .unwrap()
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[0].as_ref().unwrap_err().as_row_error(),
        Some(&RowError {
            line: 2,
            record: 1,
            reason: RowErrorReason::UnterminatedQuote
        })
    );
    let first = results[1].as_ref().unwrap();
    assert_eq!((first.line, first.record), (3, 2));
    assert_eq!(first.fields["name"], Value::from("a\nb"));
    let second = results[2].as_ref().unwrap();
    assert_eq!(second.line, 5);
    assert_eq!(second.fields["name"], Value::from("c\nd"));
}

/// The schema of the row-buffer tests: typed columns among text ones.
fn small_schema() -> ObjectSchema {
    ObjectSchema {
        side: Side::Marketo,
        object: "lead".into(),
        id_field: Some("id".into()),
        dedupe_fields: vec![],
        fields: vec![
            FieldDef::new("id", FieldType::Integer),
            FieldDef::new("at", FieldType::DateTime),
            FieldDef::new("name", FieldType::Text { max_len: None }),
        ],
    }
}

/// Each item as comparable data: an accepted row as its line, record, fields and warnings.
type Item = Result<(u64, u64, Fields, Vec<RowWarning>), String>;

fn by_iterator(input: &[u8], typed: bool) -> (Vec<Item>, ReadStats) {
    let mut reader = ExportReader::new(input, FileFormat::Csv).unwrap();
    if typed {
        reader = reader.typed(&small_schema());
    }
    let items = reader
        .by_ref()
        .map(|r| {
            r.map(|row| (row.line, row.record, row.fields, row.warnings))
                .map_err(|e| e.to_string())
        })
        .collect();
    (items, reader.stats())
}

fn by_next_row(input: &[u8], typed: bool) -> (Vec<Item>, ReadStats) {
    let mut reader = ExportReader::new(input, FileFormat::Csv).unwrap();
    if typed {
        reader = reader.typed(&small_schema());
    }
    let mut items = Vec::new();
    while let Some(r) = reader.next_row() {
        items.push(
            r.map(|row| {
                (
                    row.line(),
                    row.record(),
                    row.to_fields(),
                    row.warnings().to_vec(),
                )
            })
            .map_err(|e| e.to_string()),
        );
    }
    (items, reader.stats())
}

#[test]
fn next_row_reads_what_the_iterator_reads() {
    // Long text then short, text then null, a typed cell that fails half-way through a row,
    // invalid UTF-8, a multi-line value, a row with a column missing.
    let input = b"id,name,at,other\n\
                  1,a long name here,2017-09-08T16:38:14Z,x\n\
                  2,short,null,\n\
                  3,\"two\nlines\",bad date,y\n\
                  4,\xFFbad utf8,2017-09-08 16:38:14,z\n\
                  5,only three,null\n\
                  6,,,last\n";
    for typed in [false, true] {
        let (expected, expected_stats) = by_iterator(input, typed);
        let (got, stats) = by_next_row(input, typed);
        assert_eq!(got, expected, "typed: {typed}");
        assert_eq!(stats, expected_stats, "typed: {typed}");
    }
    let (items, _) = by_next_row(input, true);
    assert_eq!(items.len(), 6);
    let (line, record, fields, _) = items[1].as_ref().unwrap();
    assert_eq!((*line, *record), (3, 2));
    assert_eq!(fields["name"], Value::from("short"));
    assert!(fields["at"].is_null() && fields["other"].is_null());
    assert_eq!(
        items[2].as_ref().unwrap_err(),
        "bad row in export file: line 4, record 3: field \"at\": \"bad date\" is not a valid datetime"
    );
    let (_, _, fields, warnings) = items[5].as_ref().unwrap();
    assert!(fields["id"] == Value::Int(6) && fields["name"].is_null());
    assert!(
        warnings.is_empty(),
        "warnings of an earlier row are not kept"
    );
}

#[test]
fn a_row_is_read_by_name_through_the_shared_header() {
    let input = b"a,b\n1,null\n";
    let mut reader = ExportReader::new(&input[..], FileFormat::Csv).unwrap();
    let header = std::sync::Arc::clone(reader.header());
    assert_eq!(header.names(), ["a", "b"]);
    assert_eq!(
        (header.index_of("b"), header.index_of("c")),
        (Some(1), None)
    );
    let row = reader.next_row().unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(row.header(), &header));
    assert_eq!(row.get("a"), Some(&Value::from("1")));
    assert_eq!(row.get("b"), Some(&Value::Null));
    assert_eq!(row.get("c"), None);
    assert_eq!(row.values(), [Value::from("1"), Value::Null]);
    assert!(reader.next_row().is_none());
}

proptest::proptest! {
    /// Whatever the cells, the reused row buffer holds what the iterator's maps hold.
    #[test]
    fn next_row_matches_the_iterator_on_any_cells(
        cells in proptest::collection::vec(
            proptest::sample::select(vec![
                "", "null", "7", "x", "a much longer cell", "\"q,\"\"d\"\"\"", "2017-09-08",
                "\"a\nb\"", "é", "\"open",
            ]),
            0..40,
        ),
        typed in proptest::bool::ANY,
    ) {
        let mut input = b"id,name,at\n".to_vec();
        for (i, cell) in cells.iter().enumerate() {
            input.extend_from_slice(cell.as_bytes());
            input.push(if i % 3 == 2 { b'\n' } else { b',' });
        }
        proptest::prop_assert_eq!(by_next_row(&input, typed), by_iterator(&input, typed));
    }
}
