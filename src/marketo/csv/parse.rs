//! The tolerant, byte-level record parser under [`super::ExportReader`].
//!
//! It reads Marketo export files as they really are rather than as RFC 4180 says they should be:
//! NUL bytes and carriage returns are dropped wherever they appear, a UTF-8 BOM is skipped, a
//! quote inside a quoted field that is not doubled and not followed by a delimiter or a line end
//! is kept as a literal quote (as embulk-input-marketo does), and quoted values may span lines.
//! `\n` ends a record, and so does a lone `\r` (one not followed by `\n`) outside a quoted value,
//! so that a file with old Mac line ends is not read as one line; U+2028 and U+2029 are ordinary
//! bytes here.
//!
//! Memory is bounded by `max_record_bytes`: one record (plus a copy of its raw bytes, kept to
//! recover from an unterminated quote) is held at a time. The cells of a record are kept in one
//! buffer the parser reuses, so reading a record allocates nothing once the buffers have grown
//! to the longest record; runs of bytes that need no decision (no delimiter, quote, line end,
//! carriage return or NUL) are copied out of the read buffer whole.

use std::io::{self, Read};

/// Size of the read buffer.
const BUF_SIZE: usize = 64 * 1024;

/// Where one record is; its cells are read with [`RecordParser::cell`] until the next call to
/// [`RecordParser::next_record`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawRecord {
    /// The physical line (1-based) the record starts on.
    pub line: u64,
    /// The physical line the record ends on (later than `line` for multi-line values).
    pub end_line: u64,
    /// The number of cells.
    pub fields: usize,
    /// A quote was read that neither opened nor closed a quoted field.
    pub stray_quote: bool,
}

/// Why a record could not be read at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadRecord {
    /// A quoted field was still open at the end of the file.
    UnterminatedQuote,
    /// The record grew past the limit.
    TooLong,
}

/// What [`RecordParser::next_record`] found.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A complete record.
    Record(RawRecord),
    /// A record that could not be read; the parser has already moved past it.
    Bad { line: u64, kind: BadRecord },
    /// The end of the input.
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    StartField,
    Unquoted,
    Quoted,
    QuoteInQuoted,
    /// After a quote inside a quoted field and one or more blanks (held in `blanks`): the
    /// field closed with blanks before the delimiter, or the quote was a bare one.
    BlanksAfterQuote,
}

/// Splits a byte stream into records.
pub(crate) struct RecordParser<R> {
    src: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// Bytes to read again before `buf` (the tail of an abandoned record).
    pushback: Vec<u8>,
    pb_pos: usize,
    delimiter: u8,
    max_record_bytes: usize,
    /// The physical line (1-based) of the next byte.
    line: u64,
    /// Bytes taken from `src`.
    pub bytes_read: u64,
    /// NUL bytes dropped.
    pub nul_bytes_removed: u64,
    src_eof: bool,
    /// The raw bytes of the last record returned, kept for [`RecordParser::reread_tail`].
    last_raw: Vec<u8>,
    /// A byte read ahead by [`RecordParser::lone_cr`], returned before anything else.
    peeked: Option<u8>,
    /// The cells of the current record, unescaped, one after the other.
    cells: Vec<u8>,
    /// Where each finished cell of the current record ends in `cells`.
    ends: Vec<usize>,
    /// [`special_bytes`] of an unquoted cell.
    unquoted_special: [bool; 256],
    /// [`special_bytes`] of a quoted cell.
    quoted_special: [bool; 256],
}

/// Bytes that end a run the parser copies whole: in an unquoted cell the delimiter, a quote, a
/// line end, a carriage return or NUL; in a quoted cell the same but the delimiter.
fn special_bytes(delimiter: u8, quoted: bool) -> [bool; 256] {
    let mut table = [false; 256];
    for b in [b'"', b'\n', b'\r', 0] {
        table[usize::from(b)] = true;
    }
    if !quoted {
        table[usize::from(delimiter)] = true;
    }
    table
}

impl<R: Read> RecordParser<R> {
    pub(crate) fn new(src: R, delimiter: u8, max_record_bytes: usize) -> io::Result<Self> {
        let mut parser = RecordParser {
            src,
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            pos: 0,
            len: 0,
            pushback: Vec::new(),
            pb_pos: 0,
            delimiter,
            max_record_bytes: max_record_bytes.max(1),
            line: 1,
            bytes_read: 0,
            nul_bytes_removed: 0,
            src_eof: false,
            last_raw: Vec::new(),
            peeked: None,
            cells: Vec::new(),
            ends: Vec::new(),
            unquoted_special: special_bytes(delimiter, false),
            quoted_special: special_bytes(delimiter, true),
        };
        parser.skip_bom()?;
        Ok(parser)
    }

    /// Returns the physical line (1-based) of the next byte.
    pub(crate) fn line(&self) -> u64 {
        self.line
    }

    /// Returns cell `i` (0-based) of the record last returned, unescaped.
    ///
    /// # Panics
    ///
    /// When `i` is not below that record's [`RawRecord::fields`].
    pub(crate) fn cell(&self, i: usize) -> &[u8] {
        &self.cells[self.cell_range(i)]
    }

    /// Returns where cell `i` (0-based) of the record last returned is in [`RecordParser::cells`].
    ///
    /// # Panics
    ///
    /// When `i` is not below that record's [`RawRecord::fields`].
    pub(crate) fn cell_range(&self, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        start..self.ends[i]
    }

    /// Returns the cells of the record last returned, one after the other.
    pub(crate) fn cells(&self) -> &[u8] {
        &self.cells
    }

    /// Ends the cell being read.
    fn end_cell(&mut self) {
        self.ends.push(self.cells.len());
    }

    /// Copies the longest run of bytes that need no decision (see [`special_bytes`]) from the
    /// read buffer into the cell being read and `raw`, never taking `raw` past the record limit
    /// (the byte-by-byte path reports that). Does nothing while bytes read ahead or pushed
    /// back are pending, which the byte-by-byte path returns first.
    fn take_run(&mut self, quoted: bool, raw: &mut Vec<u8>) {
        if self.peeked.is_some() || self.pb_pos < self.pushback.len() {
            return;
        }
        let room = self.max_record_bytes.saturating_sub(raw.len());
        let avail = &self.buf[self.pos..self.len];
        let avail = &avail[..avail.len().min(room)];
        let special = if quoted {
            &self.quoted_special
        } else {
            &self.unquoted_special
        };
        let run = avail
            .iter()
            .position(|&b| special[usize::from(b)])
            .unwrap_or(avail.len());
        if run > 0 {
            let bytes = &avail[..run];
            self.cells.extend_from_slice(bytes);
            raw.extend_from_slice(bytes);
            self.pos += run;
        }
    }

    /// Drops a leading UTF-8 byte order mark.
    fn skip_bom(&mut self) -> io::Result<()> {
        let mut head = Vec::with_capacity(3);
        while head.len() < 3 {
            match self.next_byte()? {
                Some(b) => head.push(b),
                None => break,
            }
        }
        if head != [0xEF, 0xBB, 0xBF] {
            self.push_back(&head);
        }
        Ok(())
    }

    /// Queues bytes to be read before the rest of the input.
    fn push_back(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut queued = bytes.to_vec();
        // A byte read ahead comes after the bytes pushed back.
        queued.extend(self.peeked.take());
        queued.extend_from_slice(&self.pushback[self.pb_pos..]);
        self.pushback = queued;
        self.pb_pos = 0;
    }

    /// Returns the next byte that is not NUL, or None at the end of the input.
    fn next_byte(&mut self) -> io::Result<Option<u8>> {
        if let Some(b) = self.peeked.take() {
            return Ok(Some(b));
        }
        loop {
            if self.pb_pos < self.pushback.len() {
                let b = self.pushback[self.pb_pos];
                self.pb_pos += 1;
                if self.pb_pos == self.pushback.len() {
                    self.pushback.clear();
                    self.pb_pos = 0;
                }
                return Ok(Some(b));
            }
            if self.pos == self.len {
                if self.src_eof {
                    return Ok(None);
                }
                let n = loop {
                    match self.src.read(&mut self.buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                };
                if n == 0 {
                    self.src_eof = true;
                    return Ok(None);
                }
                self.bytes_read += n as u64;
                self.pos = 0;
                self.len = n;
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            if b == 0 {
                self.nul_bytes_removed += 1;
                continue;
            }
            return Ok(Some(b));
        }
    }

    /// Returns true when the `\r` just read is not followed by `\n` (a lone CR, which ends a
    /// line); the byte after it is read ahead and kept for the next [`RecordParser::next_byte`].
    fn lone_cr(&mut self) -> io::Result<bool> {
        let next = self.next_byte()?;
        self.peeked = next;
        Ok(next != Some(b'\n'))
    }

    /// Skips the rest of the current physical line.
    fn skip_line(&mut self) -> io::Result<()> {
        while let Some(b) = self.next_byte()? {
            if b == b'\n' || (b == b'\r' && self.lone_cr()?) {
                self.line += 1;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Abandons a record whose quoted field never closed: the bytes after its first line are
    /// read again, so that the rows a stray quote swallowed are not lost.
    fn rewind_after_first_line(&mut self, start_line: u64, raw: &[u8]) {
        if let Some(nl) = raw.iter().position(|&b| b == b'\n') {
            self.push_back(&raw[nl + 1..]);
            self.line = start_line + 1;
        }
    }

    fn finish_record(&mut self, start_line: u64, raw: Vec<u8>, stray_quote: bool) -> Parsed {
        self.end_cell();
        let newlines = raw.iter().filter(|&&b| b == b'\n').count() as u64;
        let trailing = u64::from(raw.last() == Some(&b'\n'));
        self.last_raw = raw;
        Parsed::Record(RawRecord {
            line: start_line,
            end_line: start_line + newlines - trailing,
            fields: self.ends.len(),
            stray_quote,
        })
    }

    /// Re-reads the lines after the first line of the last record returned, when that record
    /// spanned several lines and they look like records of their own: at least one has
    /// `expected` fields (or the last one opens a quoted value that goes on past them), and
    /// none that has `expected` fields holds a stray quote (the others will be row errors of
    /// their own). This undoes an unbalanced quote that swallowed whole rows
    /// until a later quote happened to close it, without turning the inside of a genuine
    /// multi-line value into rows. Returns true when the lines will be read again.
    pub(crate) fn reread_tail(&mut self, expected: usize) -> bool {
        let raw = std::mem::take(&mut self.last_raw);
        let Some(nl) = raw.iter().position(|&b| b == b'\n') else {
            return false;
        };
        let tail = &raw[nl + 1..];
        if tail.iter().all(|b| b.is_ascii_whitespace()) {
            return false;
        }
        let Ok(mut trial) = RecordParser::new(tail, self.delimiter, self.max_record_bytes) else {
            return false;
        };
        let mut plausible_rows = 0;
        let mut open_at_end = false;
        loop {
            match trial.next_record() {
                Ok(Parsed::Record(r)) if r.fields == expected => {
                    if r.stray_quote {
                        // It would be accepted, but it looks like the inside of a value.
                        return false;
                    }
                    plausible_rows += 1;
                }
                // It would be a row error of its own: reported, never accepted.
                Ok(Parsed::Record(_)) => {}
                // A quoted value opened in the tail goes on past it, in the rest of the input.
                Ok(Parsed::Bad {
                    kind: BadRecord::UnterminatedQuote,
                    ..
                }) => {
                    open_at_end = true;
                    break;
                }
                Ok(Parsed::Eof) => break,
                _ => return false,
            }
        }
        if plausible_rows == 0 && !open_at_end {
            return false;
        }
        let first_line = self.line - (raw.iter().filter(|&&b| b == b'\n').count() as u64);
        self.push_back(tail);
        self.line = first_line + 1;
        true
    }

    /// Returns the next record, a record that could not be read, or the end of the input.
    /// Blank lines are skipped.
    pub(crate) fn next_record(&mut self) -> io::Result<Parsed> {
        self.cells.clear();
        self.ends.clear();
        // The last record's raw bytes are not needed any more: reuse their buffer.
        let mut raw: Vec<u8> = std::mem::take(&mut self.last_raw);
        raw.clear();
        let mut blanks: Vec<u8> = Vec::new();
        let mut stray_quote = false;
        let mut state = State::StartField;
        let mut start_line = self.line;
        let delim = self.delimiter;
        loop {
            let Some(mut b) = self.next_byte()? else {
                // End of input.
                if state == State::Quoted {
                    self.rewind_after_first_line(start_line, &raw);
                    return Ok(Parsed::Bad {
                        line: start_line,
                        kind: BadRecord::UnterminatedQuote,
                    });
                }
                if self.ends.is_empty() && self.cells.is_empty() && state == State::StartField {
                    return Ok(Parsed::Eof);
                }
                return Ok(self.finish_record(start_line, raw, stray_quote));
            };
            if b == b'\r' && state != State::Quoted && self.lone_cr()? {
                b = b'\n';
            }
            raw.push(b);
            if raw.len() > self.max_record_bytes {
                if state == State::Quoted && raw.contains(&b'\n') {
                    self.rewind_after_first_line(start_line, &raw);
                    return Ok(Parsed::Bad {
                        line: start_line,
                        kind: BadRecord::TooLong,
                    });
                }
                if b != b'\n' {
                    self.skip_line()?;
                } else {
                    self.line += 1;
                }
                return Ok(Parsed::Bad {
                    line: start_line,
                    kind: BadRecord::TooLong,
                });
            }
            match state {
                State::StartField => {
                    if b == b'"' {
                        state = State::Quoted;
                    } else if b == delim {
                        self.end_cell();
                    } else if b == b'\n' {
                        self.line += 1;
                        if self.ends.is_empty() {
                            // A blank line (or one holding only stray bytes we drop).
                            raw.clear();
                            start_line = self.line;
                            continue;
                        }
                        return Ok(self.finish_record(start_line, raw, stray_quote));
                    } else if b != b'\r' {
                        self.cells.push(b);
                        state = State::Unquoted;
                        self.take_run(false, &mut raw);
                    }
                }
                State::Unquoted => {
                    if b == delim {
                        self.end_cell();
                        state = State::StartField;
                    } else if b == b'\n' {
                        self.line += 1;
                        return Ok(self.finish_record(start_line, raw, stray_quote));
                    } else if b != b'\r' {
                        stray_quote |= b == b'"';
                        self.cells.push(b);
                        self.take_run(false, &mut raw);
                    }
                }
                State::Quoted => {
                    if b == b'"' {
                        state = State::QuoteInQuoted;
                    } else if b == b'\n' {
                        self.line += 1;
                        self.cells.push(b);
                    } else if b != b'\r' {
                        self.cells.push(b);
                    }
                    if state == State::Quoted {
                        self.take_run(true, &mut raw);
                    }
                }
                State::QuoteInQuoted => {
                    if b == b'"' {
                        self.cells.push(b'"');
                        state = State::Quoted;
                    } else if b == delim {
                        self.end_cell();
                        state = State::StartField;
                    } else if b == b'\n' {
                        self.line += 1;
                        return Ok(self.finish_record(start_line, raw, stray_quote));
                    } else if b == b' ' || b == b'\t' {
                        blanks.push(b);
                        state = State::BlanksAfterQuote;
                    } else if b != b'\r' {
                        // A bare quote inside a quoted field: keep it, as embulk does.
                        self.cells.push(b'"');
                        self.cells.push(b);
                        stray_quote = true;
                        state = State::Quoted;
                    }
                }
                State::BlanksAfterQuote => {
                    if b == delim {
                        blanks.clear();
                        self.end_cell();
                        state = State::StartField;
                    } else if b == b'\n' {
                        self.line += 1;
                        return Ok(self.finish_record(start_line, raw, stray_quote));
                    } else if b == b' ' || b == b'\t' {
                        blanks.push(b);
                    } else if b != b'\r' {
                        self.cells.push(b'"');
                        self.cells.append(&mut blanks);
                        stray_quote = true;
                        if b == b'"' {
                            state = State::QuoteInQuoted;
                        } else {
                            self.cells.push(b);
                            state = State::Quoted;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Outcome = Result<(u64, Vec<String>), (u64, BadRecord)>;

    fn records(input: &[u8], delimiter: u8, max: usize) -> Vec<Outcome> {
        parse_all(input, delimiter, max)
    }

    fn ok(line: u64, fields: &[&str]) -> Outcome {
        Ok((line, fields.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn splits_plain_records_with_and_without_final_newline() {
        assert_eq!(
            records(b"a,b\n1,2\n", b',', 100),
            vec![ok(1, &["a", "b"]), ok(2, &["1", "2"])]
        );
        assert_eq!(
            records(b"a,b\n1,2", b',', 100),
            vec![ok(1, &["a", "b"]), ok(2, &["1", "2"])]
        );
        assert_eq!(records(b"a,,\n", b',', 100), vec![ok(1, &["a", "", ""])]);
    }

    #[test]
    fn reads_doubled_and_bare_quotes_the_same_way() {
        assert_eq!(
            records(b"\"first\"\"Name1\",x\n", b',', 100),
            vec![ok(1, &["first\"Name1", "x"])]
        );
        assert_eq!(
            records(b"\"first\"Name1\",x\n", b',', 100),
            vec![ok(1, &["first\"Name1", "x"])]
        );
    }

    #[test]
    fn blanks_after_a_closing_quote_are_dropped_but_kept_after_a_bare_one() {
        assert_eq!(
            records(b"\"abc\"  ,\"x\" \n\"a\" b\",\"c\" \"\"d\"\n", b',', 100),
            vec![ok(1, &["abc", "x"]), ok(2, &["a\" b", "c\" \"d"])]
        );
    }

    #[test]
    fn drops_nul_cr_and_bom_and_skips_blank_lines() {
        assert_eq!(
            records(b"\xEF\xBB\xBFa\0b,c\r\n\r\n\n\"x\ry\",z\r\n", b',', 100),
            vec![ok(1, &["ab", "c"]), ok(4, &["xy", "z"])]
        );
    }

    #[test]
    fn a_lone_cr_ends_a_line_outside_quotes_only() {
        assert_eq!(
            records(b"a,b\r1,\"x\ry\"\r\r2,z\r\n3,w", b',', 100),
            vec![
                ok(1, &["a", "b"]),
                ok(2, &["1", "xy"]),
                ok(4, &["2", "z"]),
                ok(5, &["3", "w"])
            ]
        );
    }

    #[test]
    fn multi_line_quoted_values_count_lines() {
        assert_eq!(
            records(b"\"a\nb\nc\",d\ne,f\n", b',', 100),
            vec![ok(1, &["a\nb\nc", "d"]), ok(4, &["e", "f"])]
        );
    }

    #[test]
    fn unterminated_quote_rereads_the_lines_it_swallowed() {
        assert_eq!(
            records(b"1,\"oops\n2,x\n3,y\n", b',', 1000),
            vec![
                Err((1, BadRecord::UnterminatedQuote)),
                ok(2, &["2", "x"]),
                ok(3, &["3", "y"])
            ]
        );
    }

    #[test]
    fn over_long_records_are_skipped_to_the_next_line() {
        assert_eq!(
            records(b"abcdefghijkl,m\n1,2\n", b',', 8),
            vec![Err((1, BadRecord::TooLong)), ok(2, &["1", "2"])]
        );
        assert_eq!(
            records(b"\"abcdefghij\n1,2\n", b',', 8),
            vec![Err((1, BadRecord::TooLong)), ok(2, &["1", "2"])]
        );
    }

    /// A reader that hands out one byte per read, so the parser never has a run to copy whole.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.is_empty()) {
                (Some((&b, rest)), false) => {
                    buf[0] = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    fn records_from<R: Read>(src: R, max: usize) -> Vec<Outcome> {
        parse_all(src, b',', max)
    }

    /// Every record of `src` (cells as text, invalid UTF-8 replaced), each bad one by its line.
    fn parse_all<R: Read>(src: R, delimiter: u8, max: usize) -> Vec<Outcome> {
        let mut p = RecordParser::new(src, delimiter, max).unwrap();
        let mut out = Vec::new();
        loop {
            match p.next_record().unwrap() {
                Parsed::Record(r) => out.push(Ok((
                    r.line,
                    (0..r.fields)
                        .map(|i| String::from_utf8_lossy(p.cell(i)).into_owned())
                        .collect(),
                ))),
                Parsed::Bad { line, kind } => out.push(Err((line, kind))),
                Parsed::Eof => return out,
            }
        }
    }

    proptest::proptest! {
        /// Copying runs of plain bytes whole reads every input, record limit included, as
        /// reading it byte by byte does.
        #[test]
        fn runs_read_as_single_bytes_do(
            input in proptest::collection::vec(
                proptest::sample::select(b"ab,\"\n\r\0 x".to_vec()), 0..80),
            max in 1usize..40,
        ) {
            proptest::prop_assert_eq!(
                records_from(&input[..], max),
                records_from(OneByte(&input), max)
            );
        }
    }

    #[test]
    fn other_delimiters() {
        assert_eq!(records(b"a\tb,c\n", b'\t', 100), vec![ok(1, &["a", "b,c"])]);
        assert_eq!(
            records(b"a;\"b;c\"\n", b';', 100),
            vec![ok(1, &["a", "b;c"])]
        );
    }
}
