//! Problems found in settings and mapping files, and the helpers that place them: dotted keys,
//! line numbers from TOML spans, and "did you mean" suggestions.

use std::fmt;
use std::ops::Range;

use serde::Serialize;
use toml::de::{DeTable, DeValue};

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The service would misbehave or refuse to start; `validate` exits non-zero.
    Error,
    /// Works, but probably not as intended (a value may be truncated, a field disabled).
    Warning,
}

/// One configuration or mapping problem, placed by file, dotted key and (where known) line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The file the problem is in ("environment" for environment variables, "schemas" for
    /// schema snapshots).
    pub file: String,
    /// The dotted key path (`marketo.calls_per_20s`, `fields[3].crm`); empty for the whole file.
    pub key: String,
    /// The 1-based line, when the format allows it.
    pub line: Option<usize>,
    /// The 1-based column (in characters) of the offending text, when known.
    pub column: Option<usize>,
    /// What is wrong, in one sentence.
    pub reason: String,
    /// How to fix it, when there is more to say than the reason.
    pub help: Option<String>,
    /// The byte range of the offending text in the file, for the caret.
    #[serde(skip)]
    pub span: Option<Range<usize>>,
}

impl Problem {
    /// Returns an error-level problem.
    pub fn error(
        file: impl Into<String>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Problem {
            severity: Severity::Error,
            file: file.into(),
            key: key.into(),
            line: None,
            column: None,
            reason: reason.into(),
            help: None,
            span: None,
        }
    }

    /// Returns a warning-level problem.
    pub fn warning(
        file: impl Into<String>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(file, key, reason)
        }
    }

    /// Returns the problem with its line set.
    pub fn at_line(mut self, line: Option<usize>) -> Self {
        if line.is_some() {
            self.line = line;
        }
        self
    }

    /// Returns the problem placed on `span`, a byte range of the file's `text`: line, column and
    /// the range to underline.
    pub fn at_span(mut self, text: &str, span: Range<usize>) -> Self {
        let start = span.start.min(text.len());
        self.line = Some(line_of(text, start));
        self.column = Some(column_of(text, start));
        self.span = Some(start..span.end.clamp(start, text.len()));
        self
    }

    /// Returns the problem placed on `span` when there is one.
    pub fn at(self, text: &str, span: Option<Range<usize>>) -> Self {
        match span {
            Some(span) => self.at_span(text, span),
            None => self,
        }
    }

    /// Returns the problem with a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Returns true for error-level problems.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Returns the 1-based line number of a byte offset in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Returns the 1-based column, in characters, of a byte offset in `text`.
pub fn column_of(text: &str, offset: usize) -> usize {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let line_start = text[..end].rfind('\n').map_or(0, |i| i + 1);
    text[line_start..end].chars().count() + 1
}

/// Returns the candidate closest to `name`, if it is close enough to be a likely typo.
pub fn closest<'a, I>(name: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let wanted = name.to_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(&wanted, &candidate.to_lowercase());
        let distance = strsim::levenshtein(&wanted, &candidate.to_lowercase());
        let close = score >= 0.85 || distance <= 2 || (distance <= 3 && wanted.len() > 8);
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| c.to_owned())
}

/// Returns " (did you mean `x`?)" or an empty string.
pub fn did_you_mean<'a, I>(name: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match closest(name, candidates) {
        Some(c) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}

/// One segment of a dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Returns the dotted form of a key path (`fields[2].crm`).
pub fn dotted(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    out
}

/// Returns the deepest key path whose key or value span contains `span.start`, with the span
/// of the matching key (for the line number).
pub fn path_at(text: &str, span: &Range<usize>) -> (Vec<Segment>, Option<usize>) {
    let Ok(table) = DeTable::parse(text) else {
        return (Vec::new(), Some(line_of(text, span.start)));
    };
    let mut path = Vec::new();
    let mut best = None;
    walk_table(table.get_ref(), span.start, &mut path, &mut best);
    match best {
        Some((found, key_start)) => (found, Some(line_of(text, key_start))),
        None => (Vec::new(), Some(line_of(text, span.start))),
    }
}

fn walk_table(
    table: &DeTable<'_>,
    at: usize,
    path: &mut Vec<Segment>,
    best: &mut Option<(Vec<Segment>, usize)>,
) {
    for (key, value) in table.iter() {
        let key_span = key.span();
        let value_span = value.span();
        let in_key = key_span.start <= at && at < key_span.end.max(key_span.start + 1);
        let in_value = value_span.start <= at && at < value_span.end.max(value_span.start + 1);
        if !in_key && !in_value {
            // Tables built from `[header]` sections have spans that cover only the header, so
            // descend into them anyway and let a child claim the offset.
            if let DeValue::Table(_) | DeValue::Array(_) = value.get_ref() {
                path.push(Segment::Key(key.get_ref().to_string()));
                walk_value(value.get_ref(), at, path, best);
                path.pop();
            }
            continue;
        }
        path.push(Segment::Key(key.get_ref().to_string()));
        *best = Some((path.clone(), key_span.start));
        walk_value(value.get_ref(), at, path, best);
        path.pop();
    }
}

fn walk_value(
    value: &DeValue<'_>,
    at: usize,
    path: &mut Vec<Segment>,
    best: &mut Option<(Vec<Segment>, usize)>,
) {
    match value {
        DeValue::Table(t) => walk_table(t, at, path, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                let span = item.span();
                if span.start <= at && at < span.end.max(span.start + 1) {
                    *best = Some((path.clone(), span.start));
                }
                walk_value(item.get_ref(), at, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Returns the line of the key at `path` (segments as in [`dotted`]); for a key that is missing,
/// the line of its nearest existing parent.
pub fn line_of_path(text: &str, path: &[Segment]) -> Option<usize> {
    span_of_path(text, path).map(|span| line_of(text, span.start))
}

/// Returns the byte range of the entry at `path`: `key = value` for a plain value, the key for
/// a table, the item for an array item. For a key that is missing, the range of its nearest
/// existing parent.
pub fn span_of_path(text: &str, path: &[Segment]) -> Option<Range<usize>> {
    let table = DeTable::parse(text).ok()?;
    let mut current: Option<&DeValue<'_>> = None;
    let mut root = Some(table.get_ref());
    let mut span = None;
    for segment in path {
        match segment {
            Segment::Key(k) => {
                let t = match (root, current) {
                    (Some(t), _) => t,
                    (None, Some(DeValue::Table(t))) => t,
                    _ => return span,
                };
                // A missing key is placed on its parent.
                let Some((key, value)) = t.iter().find(|(key, _)| key.get_ref().as_ref() == k)
                else {
                    return span;
                };
                let key_span = key.span();
                let value_span = value.span();
                span = Some(match value.get_ref() {
                    DeValue::Table(_) | DeValue::Array(_) => key_span,
                    _ if value_span.start >= key_span.start => key_span.start..value_span.end,
                    _ => key_span,
                });
                current = Some(value.get_ref());
                root = None;
            }
            Segment::Index(i) => {
                let Some(DeValue::Array(items)) = current else {
                    return span;
                };
                let Some(item) = items.get(*i) else {
                    return span;
                };
                span = Some(item.span());
                current = Some(item.get_ref());
                root = None;
            }
        }
    }
    span
}

/// Turns a TOML deserialisation error into a problem naming the file, key and line, with a
/// suggestion for unknown keys and variants.
pub fn from_toml_error(file: &str, text: &str, error: &toml::de::Error) -> Problem {
    let message = error.message().trim().to_owned();
    let (path, line) = match error.span() {
        Some(span) => path_at(text, &span),
        None => (Vec::new(), None),
    };
    let mut key = dotted(&path);
    let mut help = None;
    let reason = if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = split_expected(rest);
        // For unknown keys the span is the key itself, which the walk reports as the path; the
        // path then already ends with the unknown key.
        if key.is_empty() {
            key = name.clone();
        }
        if !expected.is_empty() {
            help = Some(format!("valid keys here: {}", expected.join(", ")));
        }
        format!(
            "unknown key `{name}`{}",
            did_you_mean(&name, expected.iter().map(String::as_str)),
        )
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (name, expected) = split_expected(rest);
        format!(
            "unknown value `{name}`{} (expected one of: {})",
            did_you_mean(&name, expected.iter().map(String::as_str)),
            expected.join(", ")
        )
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        // The span covers the table that lacks the key; name the key itself.
        key = match path.last() {
            Some(Segment::Index(_)) => format!("{}.{name}", dotted(&path)),
            _ => name.to_owned(),
        };
        format!("required key `{name}` is missing")
    } else if error.span().is_some() && path.is_empty() && is_syntax(&message) {
        format!("invalid TOML: {message}")
    } else {
        message
    };
    let mut problem = Problem::error(file, key, reason);
    problem.help = help;
    match (error.span(), line) {
        // The parser's span is the offending text itself.
        (Some(span), Some(l)) if line_of(text, span.start) == l => problem.at_span(text, span),
        // A span covering a whole table (a missing key): place it on the table's key.
        (_, Some(l)) => problem.at(text, span_of_path(text, &path)).at_line(Some(l)),
        (_, None) => problem,
    }
}

fn is_syntax(message: &str) -> bool {
    !message.starts_with("invalid type") && !message.starts_with("invalid value")
}

fn split_expected(rest: &str) -> (String, Vec<String>) {
    let mut parts = rest.splitn(2, '`');
    let name = parts.next().unwrap_or_default().to_owned();
    let tail = parts.next().unwrap_or_default();
    let expected = tail
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect();
    (name, expected)
}

/// Returns the byte range of the `key = value` pair at `path` when it is a plain (not `[header]`)
/// entry, so that it can be blanked out.
fn entry_range(text: &str, path: &[Segment]) -> Option<Range<usize>> {
    let table = DeTable::parse(text).ok()?;
    let mut range = None;
    let mut current: Option<&DeValue<'_>> = None;
    let mut root = Some(table.get_ref());
    for segment in path {
        match segment {
            Segment::Key(k) => {
                let t = match (root, current) {
                    (Some(t), _) => t,
                    (None, Some(DeValue::Table(t))) => t,
                    _ => return None,
                };
                let (key, value) = t.iter().find(|(key, _)| key.get_ref().as_ref() == k)?;
                range = Some(key.span().start..value.span().end);
                current = Some(value.get_ref());
                root = None;
            }
            Segment::Index(i) => {
                let Some(DeValue::Array(items)) = current else {
                    return None;
                };
                let item = items.get(*i)?;
                range = Some(item.span());
                current = Some(item.get_ref());
                root = None;
            }
        }
    }
    let range = range?;
    // Only `key = value` on its own line(s); a `[header]` or `[[array]]` table is left alone.
    let line_start = text[..range.start].rfind('\n').map_or(0, |i| i + 1);
    let before = text[line_start..range.start].trim();
    let is_entry = before.is_empty()
        && !text[line_start..].trim_start().starts_with('[')
        && matches!(path.last(), Some(Segment::Key(_)));
    is_entry.then_some(range)
}

/// Deserialises a TOML file, reporting every unknown key and wrongly typed value rather than
/// only the first: each offending entry is blanked out and the file is read again. Returns the
/// value when the file had no such problem.
pub fn parse_all<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> (Option<T>, Vec<Problem>) {
    let parsed = parse_lenient::<T>(file, text);
    let value = parsed.value.filter(|_| parsed.problems.is_empty());
    (value, parsed.problems)
}

/// A TOML file read by [`parse_lenient`].
#[derive(Debug)]
pub struct Lenient<T> {
    /// The value read once every offending entry was blanked out; `None` when the file could not
    /// be read even so (a syntax error, a required key missing).
    pub value: Option<T>,
    /// The text with every offending entry blanked out (same byte offsets as the original), when
    /// `value` is `Some`.
    pub cleaned: Option<String>,
    /// Every unknown key and wrongly typed value.
    pub problems: Vec<Problem>,
}

/// Like [`parse_all`], but also returns what remains readable once the offending entries are
/// blanked out, so that the checks that do not depend on them still run.
pub fn parse_lenient<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Lenient<T> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut current = text.to_owned();
    let mut blanked_names: Vec<String> = Vec::new();
    for _ in 0..64 {
        let error = match toml::from_str::<T>(&current) {
            Ok(value) => {
                return Lenient {
                    value: Some(value),
                    cleaned: Some(current),
                    problems,
                };
            }
            Err(error) => error,
        };
        let problem = from_toml_error(file, &current, &error);
        // After blanking a wrongly typed required key, serde reports it as missing: that is
        // the same problem again.
        // Likewise a misspelt required key, blanked as unknown, is then reported missing.
        let repeated = blanked_names
            .iter()
            .any(|name: &String| problem.reason == format!("required key `{name}` is missing"));
        if repeated {
            break;
        }
        let path = match error.span() {
            Some(span) => path_at(&current, &span).0,
            None => Vec::new(),
        };
        problems.push(problem);
        let Some(range) = (!path.is_empty())
            .then(|| entry_range(&current, &path))
            .flatten()
        else {
            break;
        };
        if let Some(Segment::Key(name)) = path.last() {
            blanked_names.push(name.clone());
        }
        if let Some(suggested) = problems
            .last()
            .and_then(|p| p.reason.split("did you mean `").nth(1))
            .and_then(|rest| rest.split('`').next())
        {
            blanked_names.push(suggested.to_owned());
        }
        // One space per byte, so that later spans still match the original text.
        let blanked: String = current[range.clone()]
            .chars()
            .flat_map(|c| {
                let n = if c == '\n' { 0 } else { c.len_utf8() };
                std::iter::repeat_n(' ', n).chain((c == '\n').then_some('\n'))
            })
            .collect();
        current.replace_range(range, &blanked);
    }
    Lenient {
        value: None,
        cleaned: None,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_count_from_one() {
        let text = "a = 1\nb = 2\n";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 6), 2);
        assert_eq!(line_of(text, 999), 3);
    }

    #[test]
    fn closest_suggests_typos_only() {
        let names = ["email", "firstName", "lastName"];
        assert_eq!(closest("emial", names), Some("email".to_owned()));
        assert_eq!(closest("firstname", names), Some("firstName".to_owned()));
        assert_eq!(closest("zzzzzzzz", names), None);
    }

    #[test]
    fn lenient_parsing_keeps_the_rest_and_the_offsets() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct T {
            #[serde(default)]
            a: u32,
            b: String,
        }
        // A multi-byte value is blanked byte for byte, so the next problem's span still points
        // at its text in the original file.
        let text = "a = \"h\u{e9}llo\u{2603}\"\nb = \"ok\"\nzz = 1\n";
        let parsed = parse_lenient::<T>("t.toml", text);
        let value = parsed.value.expect("readable without the bad entries");
        assert_eq!((value.a, value.b.as_str()), (0, "ok"));
        let placed: Vec<(&str, Option<usize>, Option<usize>)> = parsed
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.line, p.column))
            .collect();
        assert_eq!(placed, [("a", Some(1), Some(5)), ("zz", Some(3), Some(1))]);
        let zz = parsed.problems[1].span.clone().unwrap();
        assert_eq!(&text[zz], "zz");
        assert_eq!(parsed.cleaned.unwrap().len(), text.len());
    }

    #[test]
    fn spans_cover_the_entry_and_columns_count_characters() {
        let text = "[marketo]\n  calls_per_20s = 500 # comment\n";
        let path = [
            Segment::Key("marketo".into()),
            Segment::Key("calls_per_20s".into()),
        ];
        let span = span_of_path(text, &path).unwrap();
        assert_eq!(&text[span.clone()], "calls_per_20s = 500");
        assert_eq!(column_of(text, span.start), 3);
        assert_eq!(column_of("\u{e9}\u{e9}x", 4), 3);
        // A missing key is placed on its parent.
        let missing = [Segment::Key("marketo".into()), Segment::Key("nope".into())];
        assert_eq!(&text[span_of_path(text, &missing).unwrap()], "marketo");
    }

    #[test]
    fn path_lookup_finds_array_items() {
        let text = "x = 1\n[[fields]]\nmarketo = \"a\"\n[[fields]]\nmarketo = \"b\"\ncrm = \"c\"\n";
        let path = [
            Segment::Key("fields".into()),
            Segment::Index(1),
            Segment::Key("crm".into()),
        ];
        assert_eq!(line_of_path(text, &path), Some(6));
        assert_eq!(dotted(&path), "fields[1].crm");
    }
}
