//! Rendering problems as compiler-style diagnostics (annotate-snippets): the file, line and
//! column, the offending line with a caret under the offending text, and a help line.
//!
//! Every command that reports configuration problems renders them here, so `validate`, `run`,
//! `status` and the rest show the same thing.

use std::collections::HashMap;
use std::io::IsTerminal;

use annotate_snippets::{AnnotationKind, Group, Level, Origin, Renderer, Snippet};

use super::problem::{Problem, Severity};

/// Returns true when output to standard error may be coloured, by [`auto_color`].
pub fn stderr_color() -> bool {
    auto_color(std::io::stderr().is_terminal())
}

/// The one colour policy of every command's output: never with `NO_COLOR` (<https://no-color.org>),
/// always with `CLICOLOR_FORCE`, otherwise on a terminal that supports colour unless
/// `CLICOLOR=0`.
pub fn auto_color(terminal: bool) -> bool {
    if !color_allowed(std::env::var_os("NO_COLOR").as_deref()) {
        return false;
    }
    if anstyle_query::clicolor_force() {
        return true;
    }
    terminal && anstyle_query::clicolor() != Some(false) && anstyle_query::term_supports_color()
}

fn color_allowed(no_color: Option<&std::ffi::OsStr>) -> bool {
    // NO_COLOR set to any non-empty value turns colour off.
    no_color.is_none_or(|v| v.is_empty())
}

/// Returns the problems rendered as diagnostics, in the order given, separated by blank lines.
/// Source lines are read from the problems' files; a problem whose file cannot be read (or that
/// has no place, such as an environment variable) is shown with its origin only.
pub fn render_problems(problems: &[Problem], color: bool) -> String {
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut sources: HashMap<&str, Option<String>> = HashMap::new();
    let mut out = String::new();
    for problem in problems {
        let text = sources.entry(problem.file.as_str()).or_insert_with(|| {
            std::fs::read_to_string(&problem.file)
                .ok()
                .map(|t| redact(&t))
        });
        out.push_str(&render_one(&renderer, problem, text.as_deref()));
        // A blank line after each, as compilers do, so each problem stands on its own.
        out.push_str("\n\n");
    }
    out
}

fn render_one(renderer: &Renderer, problem: &Problem, text: Option<&str>) -> String {
    let level = match problem.severity {
        Severity::Error => Level::ERROR,
        Severity::Warning => Level::WARNING,
    };
    let title = if problem.key.is_empty() {
        problem.reason.clone()
    } else {
        format!("{}: {}", problem.key, problem.reason)
    };
    let span = text.and_then(|t| span_in(problem, t));
    let mut group = match (text, span) {
        (Some(text), Some(span)) => level.clone().primary_title(title).element(
            Snippet::source(text)
                .line_start(1)
                .path(problem.file.as_str())
                .fold(true)
                .annotation(AnnotationKind::Primary.span(span)),
        ),
        _ => {
            let mut origin = Origin::path(problem.file.as_str());
            if let Some(line) = problem.line {
                origin = origin.line(line);
                if let Some(column) = problem.column {
                    origin = origin.char_column(column);
                }
            }
            level.clone().primary_title(title).element(origin)
        }
    };
    if let Some(help) = &problem.help {
        group = group.element(Level::HELP.message(help.as_str()));
    }
    let report: [Group<'_>; 1] = [group];
    renderer.render(&report)
}

/// Returns `text` with the values of secret-looking entries (`*secret* = ...`, `*password* =
/// ...`, a URL with a password) replaced by `*`, byte for byte so that spans still match: a
/// snippet shows the source line, and a secret must never be printed.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let Some(eq) = line.find('=') else {
            out.push_str(line);
            continue;
        };
        let key = line[..eq].trim().trim_matches('"').to_ascii_lowercase();
        let value = &line[eq + 1..];
        let body = value.trim_end_matches(['\n', '\r']);
        let secret_key =
            (key.contains("secret") || key.contains("password") || key.contains("token"))
                && !key.ends_with("_file")
                && !key.ends_with("header");
        let url_with_password = body
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', '"', '\'']).next())
            .is_some_and(|authority| {
                authority
                    .split('@')
                    .next()
                    .is_some_and(|userinfo| authority.contains('@') && userinfo.contains(':'))
            });
        let dsn_password = body.to_ascii_lowercase().contains("password=");
        if !(secret_key || url_with_password || dsn_password) {
            out.push_str(line);
            continue;
        }
        out.push_str(&line[..=eq]);
        let lead = body.len() - body.trim_start().len();
        out.push_str(&body[..lead]);
        for c in body[lead..].chars() {
            out.extend(std::iter::repeat_n('*', c.len_utf8()));
        }
        out.push_str(&value[body.len()..]);
    }
    out
}

/// Returns the byte range to underline: the problem's span when it lies in `text` on char
/// boundaries, else its whole line (without the line break) when the line is known.
fn span_in(problem: &Problem, text: &str) -> Option<std::ops::Range<usize>> {
    if let Some(span) = &problem.span
        && span.start <= span.end
        && span.end <= text.len()
        && text.is_char_boundary(span.start)
        && text.is_char_boundary(span.end)
    {
        // Only the first line of a multi-line value, so the caret stays readable.
        let end = text[span.start..span.end]
            .find('\n')
            .map_or(span.end, |i| span.start + i);
        return Some(span.start..end.max(span.start));
    }
    let line = problem.line?;
    let start = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)?)
        .map(str::len)
        .sum::<usize>();
    if start > text.len() {
        return None;
    }
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    Some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_turns_colour_off() {
        assert!(color_allowed(None));
        assert!(color_allowed(Some(std::ffi::OsStr::new(""))));
        assert!(!color_allowed(Some(std::ffi::OsStr::new("1"))));
    }

    #[test]
    fn secrets_are_masked_byte_for_byte() {
        let text = "client_secret = \"s3cr\u{e9}t\"\nurl = \"postgres://u:pw@db/x\"\nurl_file = \"x\"\ncalls = 5\n";
        let masked = redact(text);
        assert_eq!(masked.len(), text.len());
        assert!(
            !masked.contains("s3cr") && !masked.contains("pw@"),
            "{masked}"
        );
        assert!(masked.contains("url_file = \"x\"") && masked.contains("calls = 5"));
    }

    #[test]
    fn a_problem_is_shown_with_a_caret_under_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("default.toml");
        let text = "[marketo]\ncalls_per_20s = 500\n";
        std::fs::write(&path, text).unwrap();
        let problem = Problem::error(
            path.display().to_string(),
            "marketo.calls_per_20s",
            "must be between 1 and 100",
        )
        .at_span(text, 10..29)
        .with_help("Marketo allows 100 calls per 20 seconds");
        let out = render_problems(&[problem], false);
        assert!(out.contains("error: marketo.calls_per_20s: must be between 1 and 100"));
        assert!(out.contains("default.toml:2:1"), "{out}");
        assert!(out.contains("calls_per_20s = 500"), "{out}");
        assert!(out.contains("^^^^^^^^^^^^^^^^^^^"), "{out}");
        assert!(out.contains("help: Marketo allows"), "{out}");
        assert!(
            !out.contains('\u{1b}'),
            "plain output has no escape codes: {out}"
        );
    }
}
