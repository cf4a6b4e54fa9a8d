//! The Bulk Import file writer.

use std::io::Write;

use super::{CsvError, FileFormat};
use crate::model::{Fields, Value};

/// Marketo refuses import files of 10 MB or more (HTTP 413); files stay strictly below this.
pub const DEFAULT_IMPORT_LIMIT_BYTES: u64 = 10_000_000;

/// What [`ImportFileWriter::write_row`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The row is in the file.
    Written,
    /// The row was NOT written: it would take the file to the size limit. Finish this file and
    /// write the row into a new one.
    Full,
}

/// Writes a Bulk Import file: RFC 4180 (CRLF line ends, fields quoted when they need it,
/// quotes doubled), a header of REST field names, and a size limit.
///
/// Null values are written as empty cells unless [`ImportFileWriter::null_as`] says otherwise.
/// NUL bytes are dropped from values. Besides delimiters, quotes and line breaks, values with
/// U+2028/U+2029 or leading or trailing blanks are quoted too, so that no reader splits or trims
/// them.
pub struct ImportFileWriter<W: Write> {
    inner: W,
    columns: Vec<String>,
    delimiter: u8,
    limit: u64,
    bytes: u64,
    rows: u64,
    null_text: String,
    buf: Vec<u8>,
}

impl<W: Write> ImportFileWriter<W> {
    /// Returns a writer with the default 10 MB limit, after writing the header.
    ///
    /// # Errors
    ///
    /// [`CsvError::BadImportHeader`] for no columns or an empty or duplicate name,
    /// [`CsvError::Write`] when writing fails.
    pub fn new(inner: W, columns: Vec<String>, format: FileFormat) -> Result<Self, CsvError> {
        Self::with_limit(inner, columns, format, DEFAULT_IMPORT_LIMIT_BYTES)
    }

    /// Returns a writer whose file stays strictly below `limit` bytes, after writing the header.
    ///
    /// # Errors
    ///
    /// As [`ImportFileWriter::new`], and [`CsvError::BadImportHeader`] when the header alone
    /// reaches the limit.
    pub fn with_limit(
        inner: W,
        columns: Vec<String>,
        format: FileFormat,
        limit: u64,
    ) -> Result<Self, CsvError> {
        let mut writer = Self::unstarted(inner, columns, format, limit)?;
        let mut header = Vec::new();
        for (i, name) in writer.columns.iter().enumerate() {
            if i > 0 {
                header.push(writer.delimiter);
            }
            encode_cell(&mut header, name, writer.delimiter);
        }
        header.extend_from_slice(b"\r\n");
        if header.len() as u64 >= limit {
            return Err(CsvError::BadImportHeader {
                reason: format!(
                    "header of {} bytes reaches the {limit} byte limit",
                    header.len()
                ),
            });
        }
        writer
            .inner
            .write_all(&header)
            .map_err(|source| CsvError::Write { source })?;
        writer.bytes = header.len() as u64;
        Ok(writer)
    }

    /// Returns a writer that continues a file already holding the header of `columns` and
    /// `rows` data rows in `bytes` bytes (`inner` writes after them: a file re-opened for
    /// appending); it writes nothing itself.
    ///
    /// # Errors
    ///
    /// As [`ImportFileWriter::new`], and [`CsvError::BadImportHeader`] when `bytes` already
    /// reaches the limit.
    pub fn continuing(
        inner: W,
        columns: Vec<String>,
        format: FileFormat,
        limit: u64,
        (bytes, rows): (u64, u64),
    ) -> Result<Self, CsvError> {
        if bytes >= limit {
            return Err(CsvError::BadImportHeader {
                reason: format!("a file of {bytes} bytes reaches the {limit} byte limit"),
            });
        }
        let mut writer = Self::unstarted(inner, columns, format, limit)?;
        writer.bytes = bytes;
        writer.rows = rows;
        Ok(writer)
    }

    /// Returns a writer that has written nothing, after checking the columns.
    fn unstarted(
        inner: W,
        columns: Vec<String>,
        format: FileFormat,
        limit: u64,
    ) -> Result<Self, CsvError> {
        if columns.is_empty() {
            return Err(CsvError::BadImportHeader {
                reason: "no columns".to_owned(),
            });
        }
        for (i, name) in columns.iter().enumerate() {
            if name.trim().is_empty() || name.trim() != name {
                return Err(CsvError::BadImportHeader {
                    reason: format!(
                        "column {} name {name:?} is empty or has blanks around it",
                        i + 1
                    ),
                });
            }
            if columns[..i].contains(name) {
                return Err(CsvError::BadImportHeader {
                    reason: format!("column {name:?} appears twice"),
                });
            }
        }
        Ok(ImportFileWriter {
            inner,
            columns,
            delimiter: format.delimiter(),
            limit,
            bytes: 0,
            rows: 0,
            null_text: String::new(),
            buf: Vec::new(),
        })
    }

    /// Sets the text written for null values (empty by default).
    pub fn null_as(&mut self, text: impl Into<String>) {
        self.null_text = text.into();
    }

    /// Writes one row: each column takes the field of the same name, and a missing field is
    /// written as null. Returns [`WriteOutcome::Full`] without writing anything when the row
    /// would take the file to the limit.
    ///
    /// # Errors
    ///
    /// [`CsvError::UnknownColumn`] when a field is not a column, [`CsvError::RowTooLarge`]
    /// when the row cannot fit even in a file holding only the header, [`CsvError::Write`]
    /// when writing fails.
    pub fn write_row(&mut self, fields: &Fields) -> Result<WriteOutcome, CsvError> {
        for name in fields.keys() {
            if !self.columns.contains(name) {
                return Err(CsvError::UnknownColumn {
                    field: name.clone(),
                });
            }
        }
        self.buf.clear();
        for (i, name) in self.columns.iter().enumerate() {
            if i > 0 {
                self.buf.push(self.delimiter);
            }
            match fields.get(name) {
                None | Some(Value::Null) => {
                    encode_cell(&mut self.buf, &self.null_text, self.delimiter)
                }
                Some(value) => encode_cell(&mut self.buf, &value.to_text(), self.delimiter),
            }
        }
        if self.buf.is_empty() {
            // A lone empty cell would be a blank line, which readers skip.
            self.buf.extend_from_slice(b"\"\"");
        }
        self.buf.extend_from_slice(b"\r\n");
        let row_len = self.buf.len() as u64;
        if self.bytes + row_len >= self.limit {
            if self.rows == 0 {
                return Err(CsvError::RowTooLarge {
                    bytes: row_len,
                    limit: self.limit,
                });
            }
            return Ok(WriteOutcome::Full);
        }
        self.inner
            .write_all(&self.buf)
            .map_err(|source| CsvError::Write { source })?;
        self.bytes += row_len;
        self.rows += 1;
        Ok(WriteOutcome::Written)
    }

    /// Returns the bytes written so far (header included).
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Returns the data rows written so far.
    pub fn rows_written(&self) -> u64 {
        self.rows
    }

    /// Returns the column names, in file order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Flushes and returns the underlying writer.
    ///
    /// # Errors
    ///
    /// [`CsvError::Write`] when flushing fails.
    pub fn finish(mut self) -> Result<W, CsvError> {
        self.inner
            .flush()
            .map_err(|source| CsvError::Write { source })?;
        Ok(self.inner)
    }
}

/// Returns true when a cell must be quoted.
fn needs_quotes(text: &str, delimiter: u8) -> bool {
    text.bytes()
        .any(|b| b == delimiter || b == b'"' || b == b'\n' || b == b'\r')
        || text.contains(['\u{2028}', '\u{2029}'])
        || text.starts_with([' ', '\t'])
        || text.ends_with([' ', '\t'])
}

/// Appends one cell, quoted when needed, without NUL bytes.
fn encode_cell(out: &mut Vec<u8>, text: &str, delimiter: u8) {
    if !needs_quotes(text, delimiter) {
        out.extend(text.bytes().filter(|&b| b != 0));
        return;
    }
    out.push(b'"');
    for b in text.bytes() {
        match b {
            0 => {}
            b'"' => out.extend_from_slice(b"\"\""),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, Value)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn writes_rfc4180_with_quotes_only_where_needed() {
        let mut w = ImportFileWriter::new(
            Vec::new(),
            vec![
                "email".into(),
                "firstName".into(),
                "score".into(),
                "note".into(),
            ],
            FileFormat::Csv,
        )
        .unwrap();
        let row = fields(&[
            ("email", Value::from("a@b.c")),
            ("firstName", Value::from("first\"Name1")),
            ("score", Value::Int(12)),
            ("note", Value::from("x,y\nz\u{2028} ")),
        ]);
        assert_eq!(w.write_row(&row).unwrap(), WriteOutcome::Written);
        let row = fields(&[("email", Value::from("b@b.c")), ("note", Value::Null)]);
        assert_eq!(w.write_row(&row).unwrap(), WriteOutcome::Written);
        w.null_as("NULL");
        w.write_row(&fields(&[("email", Value::from("c\0@b.c"))]))
            .unwrap();
        assert_eq!(w.rows_written(), 3);
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(
            out,
            "email,firstName,score,note\r\n\
             a@b.c,\"first\"\"Name1\",12,\"x,y\nz\u{2028} \"\r\n\
             b@b.c,,,\r\n\
             c@b.c,NULL,NULL,NULL\r\n"
        );
    }

    #[test]
    fn says_full_before_the_limit_and_never_passes_it() {
        let header_len = "id\r\n".len() as u64;
        // Each row "n\r\n" is 3 bytes; room for exactly 2 rows below the limit.
        let limit = header_len + 3 * 2 + 1;
        let mut w =
            ImportFileWriter::with_limit(Vec::new(), vec!["id".into()], FileFormat::Csv, limit)
                .unwrap();
        let row = |v: i64| fields(&[("id", Value::Int(v))]);
        assert_eq!(w.write_row(&row(1)).unwrap(), WriteOutcome::Written);
        assert_eq!(w.write_row(&row(2)).unwrap(), WriteOutcome::Written);
        assert_eq!(w.write_row(&row(3)).unwrap(), WriteOutcome::Full);
        assert_eq!(w.bytes_written(), limit - 1);
        let out = w.finish().unwrap();
        assert_eq!(out, b"id\r\n1\r\n2\r\n");
    }

    #[test]
    fn refuses_rows_that_fit_nowhere_and_unknown_fields() {
        let mut w =
            ImportFileWriter::with_limit(Vec::new(), vec!["id".into()], FileFormat::Csv, 10)
                .unwrap();
        let err = w
            .write_row(&fields(&[("id", Value::from("0123456789"))]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "import row of 12 bytes cannot fit in a file limited to 10 bytes"
        );
        let err = w
            .write_row(&fields(&[("email", Value::from("x"))]))
            .unwrap_err();
        assert!(matches!(err, CsvError::UnknownColumn { field } if field == "email"));
        assert_eq!(w.rows_written(), 0);
    }

    #[test]
    fn refuses_bad_headers() {
        for columns in [
            vec![],
            vec!["a".to_string(), "a".to_string()],
            vec![" a".to_string()],
        ] {
            let err = ImportFileWriter::new(Vec::new(), columns, FileFormat::Csv)
                .err()
                .unwrap();
            assert!(matches!(err, CsvError::BadImportHeader { .. }), "{err}");
        }
    }

    #[test]
    fn a_single_empty_cell_is_quoted_so_the_row_is_not_blank() {
        let mut w = ImportFileWriter::new(Vec::new(), vec!["id".into()], FileFormat::Csv).unwrap();
        w.write_row(&Fields::new()).unwrap();
        assert_eq!(w.finish().unwrap(), b"id\r\n\"\"\r\n");
    }

    #[test]
    fn tsv_quotes_tabs() {
        let mut w =
            ImportFileWriter::new(Vec::new(), vec!["a".into(), "b".into()], FileFormat::Tsv)
                .unwrap();
        w.write_row(&fields(&[
            ("a", Value::from("x\ty")),
            ("b", Value::from("p,q")),
        ]))
        .unwrap();
        assert_eq!(w.finish().unwrap(), b"a\tb\r\n\"x\ty\"\tp,q\r\n");
    }
}
