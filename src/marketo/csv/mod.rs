//! Streaming readers and writers for Marketo bulk export and import files.
//!
//! # Reading
//!
//! A Bulk Extract file is downloaded to disk first, then read here inside `spawn_blocking`:
//! [`ExportReader`] takes any [`std::io::Read`] and yields one [`ExportRow`] at a time, so memory
//! stays bounded by one record ([`ReaderOptions::max_record_bytes`]) whatever the file size.
//! The header gives the field names; in each row the literal `null` and empty cells are
//! [`Value::Null`] and everything else is [`Value::Text`], unless a schema was given with
//! [`ExportReader::typed`].
//!
//! The reader is tolerant, because real exports are not clean RFC 4180 (failure mode 9): NUL
//! bytes and carriage returns are dropped, a UTF-8 BOM is skipped, quoted values may span
//! lines and hold U+2028/U+2029, doubled quotes (`"a""b"`) and bare quotes inside a quoted
//! field (`"a"b"`) both read as `a"b`, and invalid UTF-8 is replaced (with a
//! [`RowWarning::InvalidUtf8`] on the row). A row that still cannot be read (wrong number of
//! columns, an unterminated quote, a value that does not fit its type) comes out as
//! [`CsvError::Row`] naming its line and record, and the reader goes on with the next row.
//!
//! [`ActivityReader`] and [`ProgramMemberReader`] read activity and program member exports into
//! typed rows. [`spawn_file_reader`] runs any of them on a downloaded file in `spawn_blocking`
//! and hands the rows to async code in bounded batches, honouring a cancellation token.
//!
//! # Writing
//!
//! [`ImportFileWriter`] writes Bulk Import files (RFC 4180) and says when the next row would
//! take the file past Marketo's 10 MB limit, so the caller can start a new file.

mod blocking;
mod parse;
mod row;
mod rows;
mod value;
mod write;

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use crate::model::{FieldType, Fields, ObjectSchema, Value};

use parse::{BadRecord, Parsed, RecordParser};

pub use blocking::{ReaderTask, RowSource, spawn_file_reader};
pub use row::{Header, Row};
pub use rows::{ActivityReader, ActivityRow, ProgramMemberReader, ProgramMemberRow};
pub use value::{parse_bool, parse_date, parse_datetime, parse_decimal, parse_int};
pub use write::{DEFAULT_IMPORT_LIMIT_BYTES, ImportFileWriter, WriteOutcome};

/// The default upper bound on the size of one record, in bytes.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// The longest cell text quoted in an error message, in characters.
const MAX_VALUE_IN_ERROR: usize = 64;

/// The file format of a bulk export or import (the `format` parameter; in settings `csv`,
/// `tsv` or `ssv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Comma-separated values.
    #[default]
    Csv,
    /// Tab-separated values.
    Tsv,
    /// "SSV": Marketo's docs disagree on semicolon or space; this uses the semicolon
    /// (docs:bulk-extract.md, bulk-import.md). Use [`ReaderOptions::delimiter`] to override.
    Ssv,
}

impl FileFormat {
    /// Returns the field delimiter byte.
    pub fn delimiter(self) -> u8 {
        match self {
            FileFormat::Csv => b',',
            FileFormat::Tsv => b'\t',
            FileFormat::Ssv => b';',
        }
    }

    /// Returns the lowercase name Marketo's import endpoints take (`csv`, `tsv`, `ssv`).
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Csv => "csv",
            FileFormat::Tsv => "tsv",
            FileFormat::Ssv => "ssv",
        }
    }

    /// Returns the MIME type of an uploaded import file.
    pub fn mime(self) -> &'static str {
        match self {
            FileFormat::Csv => "text/csv",
            FileFormat::Tsv => "text/tab-separated-values",
            FileFormat::Ssv => "text/plain",
        }
    }

    /// Returns the file extension of a file in this format.
    pub fn extension(self) -> &'static str {
        self.as_str()
    }
}

/// How an [`ExportReader`] reads its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderOptions {
    /// The field delimiter byte.
    pub delimiter: u8,
    /// The largest record accepted, in bytes; longer records become [`RowErrorReason::TooLong`].
    pub max_record_bytes: usize,
}

impl ReaderOptions {
    /// Returns the options for a file format with the default record limit.
    pub fn for_format(format: FileFormat) -> Self {
        ReaderOptions {
            delimiter: format.delimiter(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions::for_format(FileFormat::Csv)
    }
}

/// Why one row of an export could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowErrorReason {
    /// The row has more or fewer cells than the header.
    #[error("expected {expected} columns, found {found}")]
    WrongColumnCount {
        /// Columns in the header.
        expected: usize,
        /// Cells in the row.
        found: usize,
    },
    /// A quote opened on the row's line is not closed there: either it was still open at the
    /// end of the file, or it swallowed whole lines until a later quote closed it and the
    /// result had the wrong number of columns. The lines after the row's first line were read
    /// again as rows of their own.
    #[error("unbalanced quote: a quoted value opened on this line is not closed")]
    UnterminatedQuote,
    /// The record is longer than the limit.
    #[error("record longer than {limit} bytes")]
    TooLong {
        /// [`ReaderOptions::max_record_bytes`].
        limit: usize,
    },
    /// A cell that does not hold a value of its field's type.
    #[error("field {field:?}: {value:?} is not a valid {expected}")]
    BadValue {
        /// The column name.
        field: String,
        /// The expected type ("integer", "datetime", "JSON object", ...).
        expected: String,
        /// The cell text (cut to 64 characters).
        value: String,
    },
    /// A required cell is empty or `null`.
    #[error("field {field:?} is empty")]
    MissingValue {
        /// The column name.
        field: String,
    },
}

/// One row of an export that could not be accepted, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, record {record}: {reason}")]
pub struct RowError {
    /// The physical line (1-based, the header is line 1) the row starts on.
    pub line: u64,
    /// The data record number (1-based, the header not counted).
    pub record: u64,
    /// What was wrong.
    pub reason: RowErrorReason,
}

/// A problem in a row that was accepted anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowWarning {
    /// The cell held invalid UTF-8; the bad bytes were replaced by U+FFFD.
    InvalidUtf8 {
        /// The column name.
        field: String,
    },
}

/// Errors from reading export files and writing import files.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// One row was bad; reading goes on with the next row.
    #[error("bad row in export file: {0}")]
    Row(#[from] RowError),
    /// The file has no header line at all.
    #[error("export file is empty: no header line")]
    EmptyFile,
    /// The header line cannot be used.
    #[error("bad export header: {reason}")]
    BadHeader {
        /// What is wrong with it.
        reason: String,
    },
    /// A column a typed reader needs is not in the header.
    #[error("export file has no {column:?} column")]
    MissingColumn {
        /// The column name.
        column: String,
    },
    /// Reading the input failed (after `line`); the reader stops.
    #[error("reading export file failed at line {line}")]
    Read {
        /// The physical line being read.
        line: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The export file cannot be opened.
    #[error("cannot open export file {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading was cancelled.
    #[error("reading export file cancelled")]
    Cancelled,
    /// A row has a field that is not a column of the import file.
    #[error("import row has field {field:?}, which is not a column of the file")]
    UnknownColumn {
        /// The field name.
        field: String,
    },
    /// A row alone is larger than an import file may be.
    #[error("import row of {bytes} bytes cannot fit in a file limited to {limit} bytes")]
    RowTooLarge {
        /// The encoded row size.
        bytes: u64,
        /// The file size limit.
        limit: u64,
    },
    /// The import file header is unusable (no columns, an empty or duplicate name).
    #[error("bad import header: {reason}")]
    BadImportHeader {
        /// What is wrong with it.
        reason: String,
    },
    /// Writing the import file failed.
    #[error("writing import file failed")]
    Write {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl CsvError {
    /// Returns true when trying again (re-reading the file, writing again) may succeed: only
    /// I/O failures qualify; bad content stays bad, and a cancelled read was meant to stop.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CsvError::Read { .. } | CsvError::Write { .. } | CsvError::Open { .. }
        )
    }

    /// Returns the row error when this is a per-row error (the reader continues after it).
    pub fn as_row_error(&self) -> Option<&RowError> {
        match self {
            CsvError::Row(e) => Some(e),
            _ => None,
        }
    }
}

/// Counters of what a reader has read so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Data records seen (accepted or not; the header not counted).
    pub records: u64,
    /// Rows accepted.
    pub rows: u64,
    /// Rows rejected with a [`RowError`].
    pub errors: u64,
    /// Warnings attached to accepted rows.
    pub warnings: u64,
    /// Bytes read from the input (the BOM and NUL bytes included).
    pub bytes_read: u64,
    /// NUL bytes dropped.
    pub nul_bytes_removed: u64,
}

/// One accepted row of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    /// The physical line (1-based) the row starts on.
    pub line: u64,
    /// The data record number (1-based).
    pub record: u64,
    /// Every column of the header, by name.
    pub fields: Fields,
    /// Problems that did not stop the row from being read.
    pub warnings: Vec<RowWarning>,
}

/// A streaming reader of Bulk Extract files; an iterator of rows.
///
/// Items are `Ok(row)`, `Err(CsvError::Row(_))` for a row that could not be read (iteration
/// goes on), or `Err(CsvError::Read { .. })` once, after which the iterator ends.
///
/// [`ExportReader::next_row`] reads the same items without building a map per row: it lends
/// one reused [`Row`] of values in header order.
pub struct ExportReader<R> {
    parser: RecordParser<R>,
    header: Arc<Header>,
    /// The buffer rows are read into.
    row: Row,
    types: Option<Vec<Option<FieldType>>>,
    max_record_bytes: usize,
    pub(super) stats: ReadStats,
    done: bool,
}

impl<R: Read> ExportReader<R> {
    /// Returns a reader of a file in the given format, after reading its header.
    ///
    /// # Errors
    ///
    /// [`CsvError::EmptyFile`] when there is no header, [`CsvError::BadHeader`] when it has
    /// an empty or duplicate column name or cannot be parsed, [`CsvError::Read`] on I/O errors.
    pub fn new(reader: R, format: FileFormat) -> Result<Self, CsvError> {
        Self::with_options(reader, ReaderOptions::for_format(format))
    }

    /// Returns a reader with explicit options, after reading the header.
    ///
    /// # Errors
    ///
    /// As [`ExportReader::new`].
    pub fn with_options(reader: R, options: ReaderOptions) -> Result<Self, CsvError> {
        let mut parser = RecordParser::new(reader, options.delimiter, options.max_record_bytes)
            .map_err(|source| CsvError::Read { line: 1, source })?;
        let header = match parser.next_record() {
            Ok(Parsed::Record(r)) => r,
            Ok(Parsed::Eof) => return Err(CsvError::EmptyFile),
            Ok(Parsed::Bad { kind, .. }) => {
                let reason = match kind {
                    BadRecord::UnterminatedQuote => "a quoted name is never closed".to_owned(),
                    BadRecord::TooLong => {
                        format!("longer than {} bytes", options.max_record_bytes)
                    }
                };
                return Err(CsvError::BadHeader { reason });
            }
            Err(source) => return Err(CsvError::Read { line: 1, source }),
        };
        let mut headers: Vec<String> = Vec::with_capacity(header.fields);
        for i in 0..header.fields {
            let name = String::from_utf8_lossy(parser.cell(i)).trim().to_owned();
            if name.is_empty() {
                return Err(CsvError::BadHeader {
                    reason: format!("column {} has no name", i + 1),
                });
            }
            if headers.contains(&name) {
                return Err(CsvError::BadHeader {
                    reason: format!("column {name:?} appears twice"),
                });
            }
            headers.push(name);
        }
        let header = Arc::new(Header::new(headers));
        Ok(ExportReader {
            parser,
            row: Row::new(Arc::clone(&header)),
            header,
            types: None,
            max_record_bytes: options.max_record_bytes,
            stats: ReadStats::default(),
            done: false,
        })
    }

    /// Returns the reader converting cells to the types the schema gives their columns
    /// (integers, decimals, booleans as `true/false` or `0/1`, dates, datetimes); columns
    /// the schema does not know, and textual types, stay text. A cell that does not fit its
    /// type makes the row a [`RowErrorReason::BadValue`] error.
    pub fn typed(mut self, schema: &ObjectSchema) -> Self {
        let types = self
            .header
            .names()
            .iter()
            .map(|h| schema.field(h).map(|f| f.ty.clone()))
            .collect();
        self.types = Some(types);
        self
    }

    /// Returns the column names from the header, in file order.
    pub fn headers(&self) -> &[String] {
        self.header.names()
    }

    /// Returns the header, shared with the rows of [`ExportReader::next_row`].
    pub fn header(&self) -> &Arc<Header> {
        &self.header
    }

    /// Returns the next item as the iterator does, but lends an accepted row as a [`Row`] in
    /// a buffer reused from row to row (no map, no column names copied), valid until the next
    /// call. Errors and counters are the iterator's.
    pub fn next_row(&mut self) -> Option<Result<&Row, CsvError>> {
        match self.read_next()? {
            Ok(()) => Some(Ok(&self.row)),
            Err(e) => Some(Err(e)),
        }
    }

    /// Returns the counters so far (bytes read include the read-ahead buffer).
    pub fn stats(&self) -> ReadStats {
        let mut stats = self.stats;
        stats.bytes_read = self.parser.bytes_read;
        stats.nul_bytes_removed = self.parser.nul_bytes_removed;
        stats
    }

    fn row_error(&mut self, line: u64, reason: RowErrorReason) -> CsvError {
        self.stats.errors += 1;
        CsvError::Row(RowError {
            line,
            record: self.stats.records,
            reason,
        })
    }

    /// Reads the next accepted row into `self.row`, or returns the next error.
    fn read_next(&mut self) -> Option<Result<(), CsvError>> {
        if self.done {
            return None;
        }
        let parsed = match self.parser.next_record() {
            Ok(p) => p,
            Err(source) => {
                self.done = true;
                return Some(Err(CsvError::Read {
                    line: self.parser_line(),
                    source,
                }));
            }
        };
        let record = match parsed {
            Parsed::Eof => {
                self.done = true;
                return None;
            }
            Parsed::Bad { line, kind } => {
                self.stats.records += 1;
                let reason = match kind {
                    BadRecord::UnterminatedQuote => RowErrorReason::UnterminatedQuote,
                    BadRecord::TooLong => RowErrorReason::TooLong {
                        limit: self.max_record_bytes,
                    },
                };
                return Some(Err(self.row_error(line, reason)));
            }
            Parsed::Record(r) => r,
        };
        self.stats.records += 1;
        let expected = self.header.len();
        let wrong_count = record.fields != expected;
        // A quote that swallowed whole lines shows as a multi-line record with the wrong
        // number of columns or with a stray quote; give the swallowed lines back when they
        // look like rows.
        if (wrong_count || record.stray_quote)
            && record.end_line > record.line
            && self.parser.reread_tail(expected)
        {
            return Some(Err(
                self.row_error(record.line, RowErrorReason::UnterminatedQuote)
            ));
        }
        if wrong_count {
            let reason = RowErrorReason::WrongColumnCount {
                expected,
                found: record.fields,
            };
            return Some(Err(self.row_error(record.line, reason)));
        }
        let row = &mut self.row;
        row.warnings.clear();
        // One UTF-8 check for the whole record: a cell of a valid record is valid when it starts
        // and ends on character boundaries (`str::get`); other cells, and the cells of a record
        // with invalid bytes, are checked alone.
        let whole = std::str::from_utf8(self.parser.cells()).ok();
        let mut bad = None;
        for (i, slot) in row.values.iter_mut().enumerate() {
            let range = self.parser.cell_range(i);
            let raw = &self.parser.cells()[range.clone()];
            let checked = match whole.and_then(|w| w.get(range)) {
                Some(s) => Ok(s),
                None => std::str::from_utf8(raw),
            };
            let text = match checked {
                Ok(s) => std::borrow::Cow::Borrowed(s),
                Err(_) => {
                    row.warnings.push(RowWarning::InvalidUtf8 {
                        field: self.header.names()[i].clone(),
                    });
                    String::from_utf8_lossy(raw)
                }
            };
            if text.is_empty() || text == "null" {
                *slot = Value::Null;
                continue;
            }
            match self.types.as_ref().and_then(|t| t[i].as_ref()) {
                None => row::set_text(slot, &text),
                Some(ty) => {
                    if !value::convert_into(&text, ty, slot) {
                        bad = Some(RowErrorReason::BadValue {
                            field: self.header.names()[i].clone(),
                            expected: ty.describe(),
                            value: clip(&text),
                        });
                        break;
                    }
                }
            }
        }
        if let Some(reason) = bad {
            return Some(Err(self.row_error(record.line, reason)));
        }
        let row = &mut self.row;
        row.line = record.line;
        row.record = self.stats.records;
        self.stats.rows += 1;
        self.stats.warnings += row.warnings.len() as u64;
        Some(Ok(()))
    }

    fn parser_line(&self) -> u64 {
        self.parser.line()
    }
}

impl<R: Read> Iterator for ExportReader<R> {
    type Item = Result<ExportRow, CsvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.read_next()? {
            return Some(Err(e));
        }
        let row = &mut self.row;
        Some(Ok(ExportRow {
            line: row.line,
            record: row.record,
            fields: row.take_fields(),
            warnings: std::mem::take(&mut row.warnings),
        }))
    }
}

/// Returns cell text cut to a length fit for an error message.
pub(crate) fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_VALUE_IN_ERROR {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(MAX_VALUE_IN_ERROR).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests;
