//! The operator commands: `status`, `errors list|retry|discard`, `conflicts list`, `pause`,
//! `resume`, and the check that `sync --once` and `bootstrap` run first ([`claim_run`]).
//!
//! Each works on an open store and writes to any `io::Write`, so tests call them directly;
//! [`open_store`] opens the store named by the settings for the command line. Text output is for
//! people (tables, relative times, human units, colour per [`Render`]); `--json` output carries
//! the exact values and is always one valid JSON document (`[]` when a list is empty).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::{Cell, Color, ContentArrangement, Table, presets};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::AppError;
use super::status::StoreStatus;
use crate::config::{Settings, SettingsSource};
use crate::http::{StatusReport, StatusSource};
use crate::model::Direction;
use crate::store::{
    Clock, Conflict, ConflictFilter, ErrorFilter, ErrorStatus, Lease, PauseKind, PauseState,
    StateStore, SyncError,
};

/// Loads the settings of a config directory and opens (and migrates) their state store. Only
/// what the store needs is checked ([`crate::config::load_for_store`]): the operator commands
/// run without the Marketo and CRM credentials.
///
/// # Errors
///
/// [`AppError::Config`] for invalid store settings, [`AppError::Store`] when the store cannot be
/// opened.
pub async fn open_store(
    source: &SettingsSource,
) -> Result<(Settings, Arc<dyn StateStore>), AppError> {
    use secrecy::ExposeSecret;
    // Only what the store needs: no Marketo or CRM credentials.
    let settings = crate::config::load_for_store(source)?;
    let store = crate::store::open(settings.store.url.expose_secret()).await?;
    Ok((settings, store))
}

/// When text output is coloured (`--color`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set (or `CLICOLOR=0`, or `TERM=dumb`);
    /// `CLICOLOR_FORCE=1` turns it on when standard output is not a terminal.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// How text output is rendered: colour, the terminal's width, and the instant relative times
/// are counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Render {
    /// Colour the output (ANSI escapes).
    pub color: bool,
    /// Standard output is a terminal: tables fit its width.
    pub terminal: bool,
    /// "Now", for "3 minutes ago".
    pub now: DateTime<Utc>,
}

impl Render {
    /// Returns plain rendering (no colour, no terminal): what a pipe or a file gets.
    pub fn plain(now: DateTime<Utc>) -> Render {
        Render {
            color: false,
            terminal: false,
            now,
        }
    }

    /// Returns the rendering for standard output under `choice`.
    pub fn for_stdout(choice: ColorChoice, now: DateTime<Utc>) -> Render {
        let terminal = std::io::stdout().is_terminal();
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => crate::config::auto_color(terminal),
        };
        Render {
            color,
            terminal,
            now,
        }
    }
}

/// A colour with a meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tone {
    Good,
    Warn,
    Bad,
    Quiet,
}

fn cell(text: impl ToString, tone: Option<Tone>, render: &Render) -> Cell {
    let cell = Cell::new(text);
    match tone {
        Some(tone) if render.color => cell.fg(match tone {
            Tone::Good => Color::Green,
            Tone::Warn => Color::Yellow,
            Tone::Bad => Color::Red,
            Tone::Quiet => Color::DarkGrey,
        }),
        _ => cell,
    }
}

fn table(render: &Render, header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    // Fit a terminal's width by wrapping long cells, unless it reports a useless width (a pty
    // without a size says 0); pipes and files get whole lines.
    if render.terminal && table.width().is_some_and(|w| w >= 40) {
        table.set_content_arrangement(ContentArrangement::Dynamic);
    } else {
        table.force_no_tty();
    }
    if render.color {
        table.enforce_styling();
        table.style_text_only();
    }
    if !header.is_empty() {
        let cells: Vec<Cell> = header
            .iter()
            .map(|h| {
                let c = Cell::new(h);
                if render.color {
                    c.add_attribute(comfy_table::Attribute::Bold)
                } else {
                    c
                }
            })
            .collect();
        table.set_header(cells);
    }
    table
}

fn write_table(out: &mut dyn Write, table: &Table) -> std::io::Result<()> {
    for line in table.lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Returns `t` relative to `now`: "just now", "3 minutes ago", "in 5 hours".
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - t).num_seconds();
    if seconds.abs() < 5 {
        return "just now".to_owned();
    }
    let span = indicatif::HumanDuration(Duration::from_secs(seconds.unsigned_abs()));
    if seconds > 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// Returns `t` as a short absolute UTC time ("2026-03-02 18:00 UTC").
pub fn short_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn relative_or_dash(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| relative(t, now))
}

/// Returns a duration for people: "0.4 s", "12.3 s", "2 min 05 s", "1 h 02 min".
pub fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        return format!("{:.1} s", d.as_secs_f64());
    }
    if secs < 3600 {
        return format!("{} min {:02} s", secs / 60, secs % 60);
    }
    format!("{} h {:02} min", secs / 3600, (secs % 3600) / 60)
}

/// Returns `n` with thousands separators: 12,345.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_owned();
    }
    let pct = u128::from(part) * 100 / u128::from(whole);
    format!("{pct}%")
}

/// Returns the first 8 characters of a cycle id (enough to tell cycles apart on screen).
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn direction_text(direction: Direction) -> &'static str {
    match direction {
        Direction::MarketoToCrm => "Marketo → CRM",
        Direction::CrmToMarketo => "CRM → Marketo",
    }
}

/// Returns at most `max` characters of `text`, with "…" when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The facts `marketo-sync status` prints.
#[derive(Debug, Clone)]
pub struct StatusFacts {
    /// The status report (as on the status page).
    pub report: StatusReport,
    /// The lease as stored: who runs the cycles and until when.
    pub lease: Option<Lease>,
    /// Whether the lease is still live (not expired).
    pub lease_live: bool,
    /// The pause in force (an operator's, or the quota pause), as stored.
    pub pause: Option<PauseState>,
}

/// The lease in `status --json`: `held` while a process holds it, else `free` (the words the
/// text uses too).
#[derive(Debug, Serialize)]
struct LeaseJson<'a> {
    state: &'static str,
    holder: Option<&'a str>,
    acquired_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

impl StatusFacts {
    /// Returns the lease state in the words both outputs use: `held` or `free`.
    pub fn lease_state(&self) -> &'static str {
        if self.lease_live { "held" } else { "free" }
    }

    /// Returns the JSON of `status --json`: the status report's fields (as `/api/status`
    /// serves them), with `lease` (`state` `held` or `free`, holder, times) and `paused`
    /// (`kind` `operator` or `quota`, reason, until, paused_at) as the text shows them.
    ///
    /// # Errors
    ///
    /// [`AppError::Output`] when the report cannot be serialized.
    pub fn to_json(&self) -> Result<serde_json::Value, AppError> {
        let mut json = serde_json::to_value(&self.report).map_err(std::io::Error::from)?;
        let lease = LeaseJson {
            state: self.lease_state(),
            holder: self.lease.as_ref().map(|l| l.holder.as_str()),
            acquired_at: self.lease.as_ref().map(|l| l.acquired_at),
            expires_at: self.lease.as_ref().map(|l| l.expires_at),
        };
        if let Some(map) = json.as_object_mut() {
            map.insert(
                "lease".to_owned(),
                serde_json::to_value(&lease).map_err(std::io::Error::from)?,
            );
            map.insert(
                "paused".to_owned(),
                serde_json::to_value(&self.pause).map_err(std::io::Error::from)?,
            );
        }
        Ok(json)
    }
}

/// Returns the status facts of `instance` read from `store`.
///
/// # Errors
///
/// [`AppError::Status`] or [`AppError::Store`] when the store cannot be read.
pub async fn status_facts(
    store: Arc<dyn StateStore>,
    instance: &str,
    daily_budget: u64,
    bulk_budget_bytes: u64,
    clock: Arc<dyn Clock>,
) -> Result<StatusFacts, AppError> {
    let now = clock.now();
    let source = StoreStatus::detached(
        Arc::clone(&store),
        instance,
        daily_budget,
        bulk_budget_bytes,
        clock,
    );
    let report = source.status().await?;
    let lease = store.lease(instance).await?;
    let lease_live = lease.as_ref().is_some_and(|l| l.expires_at > now);
    let pause = store.pause_state().await?;
    Ok(StatusFacts {
        report,
        lease,
        lease_live,
        pause,
    })
}

/// Returns a pause for people: who, why, and until when.
pub fn describe_pause(pause: &PauseState, now: DateTime<Utc>) -> String {
    let who = match pause.kind {
        PauseKind::Operator => "by an operator",
        PauseKind::Quota => "by Marketo's daily quota",
    };
    let until = match pause.until {
        Some(until) => format!("until {}, {}", short_time(until), relative(until, now)),
        None => "until `marketo-sync resume`".to_owned(),
    };
    format!(
        "{who}: {} ({until}; since {})",
        pause.reason,
        relative(pause.paused_at, now)
    )
}

/// Writes the status facts for people (plain: no colour, times relative to the report's), or
/// as JSON with `json`.
///
/// # Errors
///
/// [`AppError::Output`] when writing fails.
pub fn write_status(facts: &StatusFacts, json: bool, out: &mut dyn Write) -> Result<(), AppError> {
    write_status_with(facts, json, &Render::plain(facts.report.generated_at), out)
}

/// Writes the status facts for people as `render` says (or as JSON with `json`): a summary
/// (lease, pause, today's quota in human units), then tables of the recent cycles, the objects
/// and the newest open errors.
///
/// # Errors
///
/// [`AppError::Output`] when writing fails.
pub fn write_status_with(
    facts: &StatusFacts,
    json: bool,
    render: &Render,
    out: &mut dyn Write,
) -> Result<(), AppError> {
    if json {
        serde_json::to_writer_pretty(&mut *out, &facts.to_json()?).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    let now = render.now;
    let r = &facts.report;
    let mut summary = table(render, &[]);
    summary.add_row(vec![
        cell("instance", None, render),
        cell(&r.instance, None, render),
    ]);
    let lease = match (&facts.lease, facts.lease_live) {
        (Some(lease), true) => cell(
            format!(
                "held by {} (since {}, expires {} unless renewed)",
                lease.holder,
                relative(lease.acquired_at, now),
                relative(lease.expires_at, now)
            ),
            Some(Tone::Good),
            render,
        ),
        (Some(lease), false) => cell(
            format!(
                "free (no process runs cycles; last held by {}, expired {})",
                lease.holder,
                relative(lease.expires_at, now)
            ),
            Some(Tone::Warn),
            render,
        ),
        (None, _) => cell("free (no process runs cycles)", Some(Tone::Warn), render),
    };
    summary.add_row(vec![cell("lease", None, render), lease]);
    let paused = match &facts.pause {
        Some(pause) => cell(
            format!("yes, {}", describe_pause(pause, now)),
            Some(Tone::Warn),
            render,
        ),
        None => cell("no", None, render),
    };
    summary.add_row(vec![cell("paused", None, render), paused]);
    let q = &r.quota;
    let calls_tone = if q.daily_budget > 0 && q.remaining == 0 {
        Some(Tone::Bad)
    } else {
        None
    };
    summary.add_row(vec![
        cell("calls today", None, render),
        cell(
            format!(
                "{} of {} ({}), {} left",
                thousands(q.calls_today),
                thousands(q.daily_budget),
                percent(q.calls_today, q.daily_budget),
                thousands(q.remaining)
            ),
            calls_tone,
            render,
        ),
    ]);
    summary.add_row(vec![
        cell("bulk export today", None, render),
        cell(
            format!(
                "{} of {} ({})",
                indicatif::HumanBytes(q.bulk_bytes_today),
                indicatif::HumanBytes(q.bulk_budget_bytes),
                percent(q.bulk_bytes_today, q.bulk_budget_bytes)
            ),
            None,
            render,
        ),
    ]);
    let errors_tone = if r.open_errors_total > 0 {
        Some(Tone::Bad)
    } else {
        Some(Tone::Good)
    };
    summary.add_row(vec![
        cell("open errors", None, render),
        cell(thousands(r.open_errors_total), errors_tone, render),
    ]);
    write_table(out, &summary)?;

    writeln!(out)?;
    writeln!(out, "recent cycles")?;
    if r.recent_cycles.is_empty() {
        writeln!(out, "  (none yet)")?;
    } else {
        let mut cycles = table(
            render,
            &[
                "CYCLE", "OUTCOME", "STARTED", "TOOK", "CALLS", "WRITTEN", "FAILED",
            ],
        );
        for c in r.recent_cycles.iter().take(10) {
            let written: u64 = c.counts.iter().map(|x| x.counts.written()).sum();
            let failed: u64 = c.counts.iter().map(|x| x.counts.failed).sum();
            let outcome = c.outcome.to_string();
            let tone = match outcome.as_str() {
                "succeeded" => Some(Tone::Good),
                "failed" => Some(Tone::Bad),
                "running" => None,
                _ => Some(Tone::Warn),
            };
            cycles.add_row(vec![
                cell(short_id(&c.id), None, render),
                cell(outcome, tone, render),
                cell(relative(c.started_at, now), None, render),
                cell(
                    c.duration_ms.map_or_else(
                        || "-".to_owned(),
                        |ms| short_duration(Duration::from_millis(ms)),
                    ),
                    None,
                    render,
                ),
                cell(thousands(c.api_calls), None, render),
                cell(thousands(written), None, render),
                cell(thousands(failed), (failed > 0).then_some(Tone::Bad), render),
            ]);
        }
        write_table(out, &cycles)?;
    }
    if !r.failed_cycles.is_empty() {
        writeln!(out)?;
        writeln!(out, "failed cycles (newest first)")?;
        let mut failed = table(render, &["CYCLE", "STARTED", "REASON"]);
        for c in r.failed_cycles.iter().take(5) {
            failed.add_row(vec![
                cell(short_id(&c.id), Some(Tone::Bad), render),
                cell(relative(c.started_at, now), None, render),
                cell(
                    clip(c.message.as_deref().unwrap_or("(no reason recorded)"), 160),
                    None,
                    render,
                ),
            ]);
        }
        write_table(out, &failed)?;
    }
    if !r.objects.is_empty() {
        writeln!(out)?;
        writeln!(out, "objects")?;
        let mut objects = table(
            render,
            &[
                "OBJECT",
                "LINKED",
                "PENDING M→C",
                "PENDING C→M",
                "NEEDS OPERATOR",
                "LAST HOUR",
                "LAST SUCCESS",
                "LAG",
            ],
        );
        for o in &r.objects {
            let (m, c) = (&o.backlog_marketo_to_crm, &o.backlog_crm_to_marketo);
            let waiting = m.waiting_for_operator + c.waiting_for_operator;
            objects.add_row(vec![
                cell(&o.object, None, render),
                cell(thousands(o.linked), None, render),
                cell(thousands(m.pending), None, render),
                cell(thousands(c.pending), None, render),
                cell(
                    thousands(waiting),
                    (waiting > 0).then_some(Tone::Bad),
                    render,
                ),
                cell(thousands(o.records_last_hour), None, render),
                cell(relative_or_dash(o.last_success_at, now), None, render),
                cell(
                    o.lag_seconds.map_or_else(
                        || "-".to_owned(),
                        |s| indicatif::HumanDuration(Duration::from_secs(s)).to_string(),
                    ),
                    None,
                    render,
                ),
            ]);
        }
        write_table(out, &objects)?;
    }
    if !r.open_errors.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "open errors (newest {} of {}; `marketo-sync errors list` shows their ids)",
            r.open_errors.len().min(10),
            thousands(r.open_errors_total)
        )?;
        let mut errors = table(render, &["OBJECT", "DIRECTION", "KEY", "CODE", "MESSAGE"]);
        for e in r.open_errors.iter().take(10) {
            errors.add_row(vec![
                cell(&e.object, None, render),
                cell(direction_text(e.direction), None, render),
                cell(&e.key, None, render),
                cell(&e.code, Some(Tone::Bad), render),
                cell(clip(&e.message, 100), None, render),
            ]);
        }
        write_table(out, &errors)?;
    }
    Ok(())
}

/// Arguments of `errors list`.
#[derive(Debug, Clone, Default)]
pub struct ErrorsListArgs {
    /// Only this status (default: open).
    pub status: Option<ErrorStatus>,
    /// Only this object.
    pub object: Option<String>,
    /// At most this many (default 100).
    pub limit: u32,
    /// Print one JSON array instead of a table.
    pub json: bool,
}

/// Parses an error status name (`open`, `discarded`, `resolved`).
///
/// # Errors
///
/// [`AppError::InvalidArgument`] naming the accepted values.
pub fn parse_error_status(text: &str) -> Result<ErrorStatus, AppError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "open" => Ok(ErrorStatus::Open),
        "discarded" => Ok(ErrorStatus::Discarded),
        "resolved" => Ok(ErrorStatus::Resolved),
        other => Err(AppError::InvalidArgument {
            what: "--status",
            reason: format!("{other:?} is not one of open, discarded, resolved"),
        }),
    }
}

/// Lists sync errors and returns how many were printed: a table, or with `json` one JSON array
/// (`[]` when there are none).
///
/// # Errors
///
/// [`AppError::Store`] or [`AppError::Output`].
pub async fn errors_list(
    store: &dyn StateStore,
    args: &ErrorsListArgs,
    render: &Render,
    out: &mut dyn Write,
) -> Result<usize, AppError> {
    let status = args.status.unwrap_or(ErrorStatus::Open);
    let errors = store
        .list_errors(&ErrorFilter {
            status: Some(status),
            object: args.object.clone(),
            limit: if args.limit == 0 { 100 } else { args.limit },
        })
        .await?;
    if args.json {
        let listed: Vec<ListedError<'_>> = errors.iter().map(ListedError::from).collect();
        serde_json::to_writer_pretty(&mut *out, &listed).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(errors.len());
    }
    if errors.is_empty() {
        let of = args
            .object
            .as_deref()
            .map(|o| format!(" for {o}"))
            .unwrap_or_default();
        writeln!(out, "no {} sync errors{of}", status.as_str())?;
        return Ok(0);
    }
    let now = render.now;
    let mut t = table(
        render,
        &[
            "ID",
            "STATUS",
            "OBJECT",
            "DIRECTION",
            "KEY",
            "CODE",
            "ATTEMPTS",
            "LAST SEEN",
            "NEXT RETRY",
            "MESSAGE",
        ],
    );
    for e in &errors {
        let tone = match e.status {
            ErrorStatus::Open => Some(Tone::Bad),
            ErrorStatus::Resolved => Some(Tone::Good),
            ErrorStatus::Discarded => Some(Tone::Quiet),
        };
        t.add_row(vec![
            cell(e.id, None, render),
            cell(e.status.as_str(), tone, render),
            cell(&e.object, None, render),
            cell(direction_text(e.direction), None, render),
            cell(&e.record_key, None, render),
            cell(&e.code, None, render),
            cell(e.attempts, None, render),
            cell(relative(e.last_seen_at, now), None, render),
            cell(
                match e.next_retry_at {
                    Some(t) if t <= now => "next cycle".to_owned(),
                    Some(t) => relative(t, now),
                    None => "-".to_owned(),
                },
                None,
                render,
            ),
            cell(clip(&e.message, 120), None, render),
        ]);
    }
    write_table(out, &t)?;
    Ok(errors.len())
}

/// One listed error, without its payload (record values stay out of terminals and logs).
#[derive(Debug, Serialize)]
struct ListedError<'a> {
    id: String,
    status: &'static str,
    object: &'a str,
    direction: &'static str,
    record_key: &'a str,
    other_key: Option<&'a str>,
    code: &'a str,
    message: &'a str,
    attempts: u32,
    first_seen_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    next_retry_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a SyncError> for ListedError<'a> {
    fn from(e: &'a SyncError) -> Self {
        ListedError {
            id: e.id.to_string(),
            status: e.status.as_str(),
            object: &e.object,
            direction: e.direction.as_str(),
            record_key: &e.record_key,
            other_key: e.other_key.as_deref(),
            code: &e.code,
            message: &e.message,
            attempts: e.attempts,
            first_seen_at: e.first_seen_at,
            last_seen_at: e.last_seen_at,
            next_retry_at: e.next_retry_at,
        }
    }
}

/// Lists conflicts (a field changed on both sides, and which side won) and returns how many
/// were printed: a table, or with `json` one JSON array (`[]` when there are none).
///
/// # Errors
///
/// [`AppError::Store`] or [`AppError::Output`].
pub async fn conflicts_list(
    store: &dyn StateStore,
    filter: &ConflictFilter,
    json: bool,
    render: &Render,
    out: &mut dyn Write,
) -> Result<usize, AppError> {
    let conflicts = store.list_conflicts(filter).await?;
    if json {
        let listed: Vec<ListedConflict<'_>> = conflicts.iter().map(ListedConflict::from).collect();
        serde_json::to_writer_pretty(&mut *out, &listed).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(conflicts.len());
    }
    if conflicts.is_empty() {
        writeln!(out, "no conflicts")?;
        return Ok(0);
    }
    let now = render.now;
    let mut t = table(
        render,
        &[
            "WHEN",
            "OBJECT",
            "FIELD",
            "MARKETO KEY",
            "CRM KEY",
            "BEFORE",
            "MARKETO",
            "CRM",
            "WINNER",
            "POLICY",
        ],
    );
    for c in &conflicts {
        let show = |v: &crate::model::Value| -> String {
            match v.to_json() {
                serde_json::Value::Null => "(empty)".to_owned(),
                serde_json::Value::String(s) => clip(&s, 40),
                other => clip(&other.to_string(), 40),
            }
        };
        let (marketo_tone, crm_tone) = match c.winner {
            crate::model::Side::Marketo => (Some(Tone::Good), Some(Tone::Quiet)),
            crate::model::Side::Crm => (Some(Tone::Quiet), Some(Tone::Good)),
        };
        t.add_row(vec![
            cell(relative(c.at, now), None, render),
            cell(&c.object, None, render),
            cell(&c.field, None, render),
            cell(&c.marketo_key, None, render),
            cell(&c.crm_key, None, render),
            cell(
                c.base_value
                    .as_ref()
                    .map_or_else(|| "(none)".to_owned(), show),
                None,
                render,
            ),
            cell(show(&c.marketo_value), marketo_tone, render),
            cell(show(&c.crm_value), crm_tone, render),
            cell(c.winner.as_str(), None, render),
            cell(&c.policy, None, render),
        ]);
    }
    write_table(out, &t)?;
    Ok(conflicts.len())
}

/// One listed conflict: both values, the value before, the winner, the policy and the time.
#[derive(Debug, Serialize)]
struct ListedConflict<'a> {
    id: i64,
    at: DateTime<Utc>,
    object: &'a str,
    field: &'a str,
    marketo_key: &'a str,
    crm_key: &'a str,
    base_value: Option<serde_json::Value>,
    marketo_value: serde_json::Value,
    crm_value: serde_json::Value,
    winner: &'static str,
    policy: &'a str,
}

impl<'a> From<&'a Conflict> for ListedConflict<'a> {
    fn from(c: &'a Conflict) -> Self {
        ListedConflict {
            id: c.id,
            at: c.at,
            object: &c.object,
            field: &c.field,
            marketo_key: &c.marketo_key,
            crm_key: &c.crm_key,
            base_value: c.base_value.as_ref().map(crate::model::Value::to_json),
            marketo_value: c.marketo_value.to_json(),
            crm_value: c.crm_value.to_json(),
            winner: c.winner.as_str(),
            policy: &c.policy,
        }
    }
}

/// Parses a relative age ("24h", "30m", "7d", "2w", "90s"; also "24 hours").
fn parse_relative(text: &str) -> Option<chrono::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().ok()?;
    let seconds = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        _ => return None,
    };
    chrono::Duration::try_seconds(n.checked_mul(seconds)?)
}

/// Parses `--since`: a date (`2026-03-01`, midnight UTC), an RFC 3339 instant, or an age
/// counted back from `now` (`24h`, `30m`, `7d`, `2w`).
///
/// # Errors
///
/// [`AppError::InvalidArgument`] naming the accepted forms.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, AppError> {
    if let Some(age) = parse_relative(text) {
        return Ok(now - age);
    }
    crate::config::parse_instant(text).ok_or_else(|| AppError::InvalidArgument {
        what: "--since",
        reason: format!(
            "{:?} is not a date (2026-03-01), an RFC 3339 instant (2026-03-01T12:00:00Z) or an \
             age like 24h, 30m, 7d",
            text.trim()
        ),
    })
}

/// Parses a sync error id.
///
/// # Errors
///
/// [`AppError::InvalidArgument`] when `text` is not a UUID.
pub fn parse_error_id(text: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(text.trim()).map_err(|_| AppError::InvalidArgument {
        what: "ID",
        reason: format!("{:?} is not a sync error id (a UUID)", text.trim()),
    })
}

/// Re-opens one sync error for a retry at the next cycle (`next_retry_at` = now).
///
/// # Errors
///
/// [`AppError::NoSuchError`] for an unknown id, [`AppError::Store`].
pub async fn errors_retry(
    store: &dyn StateStore,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    if store
        .set_error_status(id, ErrorStatus::Open, Some(now))
        .await?
    {
        Ok(())
    } else {
        Err(AppError::NoSuchError { id: id.to_string() })
    }
}

/// Schedules every open sync error for a retry at the next cycle; returns how many.
///
/// # Errors
///
/// [`AppError::Store`].
pub async fn errors_retry_all(
    store: &dyn StateStore,
    now: DateTime<Utc>,
) -> Result<usize, AppError> {
    let mut done = 0;
    loop {
        // Page through the open errors not yet due now; each update makes its error due.
        let open = store
            .list_errors(&ErrorFilter {
                status: Some(ErrorStatus::Open),
                object: None,
                limit: 1000,
            })
            .await?;
        let pending: Vec<&SyncError> = open
            .iter()
            .filter(|e| e.next_retry_at.is_none_or(|t| t > now))
            .collect();
        if pending.is_empty() {
            return Ok(done);
        }
        for e in pending {
            if store
                .set_error_status(e.id, ErrorStatus::Open, Some(now))
                .await?
            {
                done += 1;
            }
        }
        if open.len() < 1000 {
            return Ok(done);
        }
    }
}

/// Discards one sync error: it is not retried again.
///
/// # Errors
///
/// [`AppError::NoSuchError`] for an unknown id, [`AppError::Store`].
pub async fn errors_discard(store: &dyn StateStore, id: Uuid) -> Result<(), AppError> {
    if store
        .set_error_status(id, ErrorStatus::Discarded, None)
        .await?
    {
        Ok(())
    } else {
        Err(AppError::NoSuchError { id: id.to_string() })
    }
}

/// Arguments of `pause`.
#[derive(Debug, Clone, Default)]
pub struct PauseArgs {
    /// Why (default "paused by an operator").
    pub reason: Option<String>,
    /// When the pause ends by itself.
    pub until: Option<DateTime<Utc>>,
}

/// Parses `--until` (RFC 3339), or a duration from now (`2h`, `30m`).
///
/// # Errors
///
/// [`AppError::InvalidArgument`] naming the expected forms.
pub fn parse_until(text: &str) -> Result<DateTime<Utc>, AppError> {
    parse_until_at(text, Utc::now())
}

/// As [`parse_until`], with durations counted from `now`.
///
/// # Errors
///
/// [`AppError::InvalidArgument`] naming the expected forms.
pub fn parse_until_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, AppError> {
    if let Some(span) = parse_relative(text) {
        return Ok(now + span);
    }
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| AppError::InvalidArgument {
            what: "--until",
            reason: format!(
                "{:?} is not an RFC 3339 time like 2026-01-31T18:00:00Z or a duration like 2h",
                text.trim()
            ),
        })
}

/// Pauses all sync work (every process sharing the store) and returns the stored pause.
///
/// # Errors
///
/// [`AppError::InvalidArgument`] for an `until` in the past, [`AppError::Store`].
pub async fn pause(
    store: &dyn StateStore,
    args: &PauseArgs,
    now: DateTime<Utc>,
) -> Result<PauseState, AppError> {
    if let Some(until) = args.until
        && until <= now
    {
        return Err(AppError::InvalidArgument {
            what: "--until",
            reason: format!("{} is not in the future", until.to_rfc3339()),
        });
    }
    let reason = args
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("paused by an operator");
    Ok(store.pause(reason, args.until).await?)
}

/// Ends the pause; returns whether there was one.
///
/// # Errors
///
/// [`AppError::Store`].
pub async fn resume(store: &dyn StateStore) -> Result<bool, AppError> {
    Ok(store.resume().await?)
}

/// Ends the pause (of either kind) and returns the pause that was in force, if any.
///
/// # Errors
///
/// [`AppError::Store`].
pub async fn resume_pause(store: &dyn StateStore) -> Result<Option<PauseState>, AppError> {
    let before = store.pause_state().await?;
    let ended = store.resume().await?;
    Ok(before.filter(|_| ended))
}

/// Which command asks to run (see [`claim_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `sync --once`.
    SyncOnce,
    /// `bootstrap`.
    Bootstrap,
}

impl RunKind {
    fn command(self) -> &'static str {
        match self {
            RunKind::SyncOnce => "sync --once",
            RunKind::Bootstrap => "bootstrap",
        }
    }
}

/// What [`claim_run`] is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRequest {
    /// The command.
    pub kind: RunKind,
    /// A dry run writes nothing: it runs while paused or while another process holds the lease
    /// (saying so), and takes no lease.
    pub dry_run: bool,
    /// Run despite a pause (never despite the lease).
    pub force: bool,
}

impl RunRequest {
    /// Returns the request of `sync --once`.
    pub fn sync_once(dry_run: bool, force: bool) -> RunRequest {
        RunRequest {
            kind: RunKind::SyncOnce,
            dry_run,
            force,
        }
    }

    /// Returns the request of `bootstrap`.
    pub fn bootstrap(dry_run: bool, force: bool) -> RunRequest {
        RunRequest {
            kind: RunKind::Bootstrap,
            dry_run,
            force,
        }
    }
}

/// What a `sync --once` or `bootstrap` logs (at info) once it holds the sync lease, its first
/// step (the convergence harness reads it in an engine process's log).
pub const LEASE_TAKEN: &str = "sync lease taken for a one-off run";

/// The right to run one `sync --once` or `bootstrap`: the instance's sync lease, held (and
/// renewed in the background) until [`RunClaim::release`] or drop, so a daemon starting
/// meanwhile waits in standby. A dry run's claim holds no lease.
pub struct RunClaim {
    lease: Option<HeldLease>,
    keeper: Option<tokio::task::JoinHandle<()>>,
    cancel: CancellationToken,
}

struct HeldLease {
    store: Arc<dyn StateStore>,
    instance: String,
    holder: String,
}

impl std::fmt::Debug for RunClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunClaim")
            .field("holder", &self.lease.as_ref().map(|l| l.holder.as_str()))
            .finish_non_exhaustive()
    }
}

impl RunClaim {
    /// Returns a token cancelled when the lease is lost (another process took it after a
    /// renewal failed): the run should stop at a safe point.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Returns the lease holder id while the claim holds the lease.
    pub fn holder(&self) -> Option<&str> {
        self.lease.as_ref().map(|l| l.holder.as_str())
    }

    /// Stops renewing and gives the lease up. Returns true when it was still held.
    ///
    /// # Errors
    ///
    /// [`AppError::Store`] (the lease then expires by itself).
    pub async fn release(mut self) -> Result<bool, AppError> {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        let Some(lease) = self.lease.take() else {
            return Ok(false);
        };
        Ok(lease
            .store
            .release_lease(&lease.instance, &lease.holder)
            .await?)
    }
}

impl Drop for RunClaim {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        let Some(lease) = self.lease.take() else {
            return;
        };
        // Give the lease up now rather than making a daemon wait for it to expire. The command
        // line runs on a multi-threaded runtime, where this may block; elsewhere, spawn it.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let release = async move {
            if let Err(error) = lease
                .store
                .release_lease(&lease.instance, &lease.holder)
                .await
            {
                tracing::warn!(error = %error, "cannot release the sync lease; it expires by itself");
            }
        };
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| handle.block_on(release));
        } else {
            handle.spawn(release);
        }
    }
}

/// Checks that a `sync --once` or `bootstrap` may run, and takes the sync lease for it.
///
/// Refuses ([`AppError::Refused`]) while sync is paused (unless `force`) and while another
/// process holds the lease (always: two writers on one instance would race). A dry run is
/// never refused: it writes nothing, so it runs and says why it otherwise would not. Notes go
/// to standard error. `config` and `env` are the command's `--config` and `--env`.
///
/// # Errors
///
/// [`AppError::Refused`], [`AppError::Config`] or [`AppError::Store`].
pub async fn claim_run(
    config: &std::path::Path,
    env: Option<&str>,
    request: RunRequest,
) -> Result<RunClaim, AppError> {
    let (settings, store) = open_store(&SettingsSource::new(config, env)).await?;
    claim_run_on(
        store,
        &super::instance_id(&settings),
        &super::holder_id(),
        request,
        super::DEFAULT_LEASE_TTL,
        &mut std::io::stderr(),
    )
    .await
}

/// As [`claim_run`], on an open store, for `holder`, with a lease of `ttl` renewed every third
/// of it.
///
/// # Errors
///
/// As [`claim_run`].
pub async fn claim_run_on(
    store: Arc<dyn StateStore>,
    instance: &str,
    holder: &str,
    request: RunRequest,
    ttl: Duration,
    notes: &mut dyn Write,
) -> Result<RunClaim, AppError> {
    let now = Utc::now();
    let command = request.kind.command();
    if let Some(pause) = store.pause_state().await? {
        let described = describe_pause(&pause, now);
        if request.dry_run {
            writeln!(
                notes,
                "note: sync is paused {described}; a dry run writes nothing, so it runs"
            )?;
        } else if request.force {
            writeln!(
                notes,
                "warning: sync is paused {described}; running anyway (--force)"
            )?;
        } else {
            return Err(AppError::Refused {
                reason: format!(
                    "`{command}` refused: sync is paused {described}. `marketo-sync resume` \
                     ends the pause; --force runs anyway"
                ),
            });
        }
    }
    let cancel = CancellationToken::new();
    if request.dry_run {
        if let Some(lease) = store.lease(instance).await?
            && lease.expires_at > now
        {
            writeln!(
                notes,
                "note: {} holds the sync lease of {instance} (a daemon runs cycles); a dry run \
                 writes nothing, so it runs",
                lease.holder
            )?;
        }
        return Ok(RunClaim {
            lease: None,
            keeper: None,
            cancel,
        });
    }
    if !store.try_acquire_lease(instance, holder, ttl).await? {
        let holder_text = match store.lease(instance).await? {
            Some(lease) => format!(
                "{} (renewed {}, expires {} unless renewed again)",
                lease.holder,
                relative(lease.expires_at - chrono_ttl(ttl), now),
                relative(lease.expires_at, now)
            ),
            None => "another process".to_owned(),
        };
        return Err(AppError::Refused {
            reason: format!(
                "`{command}` refused: another process holds the sync lease of {instance}: \
                 {holder_text}. Stop the daemon (or wait for the other run to end) and try \
                 again; --force does not override the lease"
            ),
        });
    }
    tracing::info!(instance, holder, command, "{LEASE_TAKEN}");
    let keeper = tokio::spawn(keep_lease(
        Arc::clone(&store),
        instance.to_owned(),
        holder.to_owned(),
        ttl,
        cancel.clone(),
    ));
    Ok(RunClaim {
        lease: Some(HeldLease {
            store,
            instance: instance.to_owned(),
            holder: holder.to_owned(),
        }),
        keeper: Some(keeper),
        cancel,
    })
}

fn chrono_ttl(ttl: Duration) -> chrono::Duration {
    chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX)
}

/// Renews the lease every third of `ttl`; cancels `lost` when it is lost (or cannot be renewed
/// for a whole `ttl`, when another process may already have taken it).
async fn keep_lease(
    store: Arc<dyn StateStore>,
    instance: String,
    holder: String,
    ttl: Duration,
    lost: CancellationToken,
) {
    let every = (ttl / 3).max(Duration::from_millis(1));
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match store.renew_lease(&instance, &holder, ttl).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::warn!(instance = %instance, "sync lease lost: stopping the run");
                lost.cancel();
                return;
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot renew the sync lease");
                if last_renewed.elapsed() >= ttl {
                    tracing::warn!(instance = %instance, "sync lease lost: stopping the run");
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

/// Stores a quota pause (Marketo's daily quota ran out) until `until`, as the daemon does after
/// a cycle stopped by it, so `status` shows it, `resume` ends it and a daemon honours it. An
/// operator's pause in force is kept (it outranks the quota pause).
///
/// # Errors
///
/// [`AppError::Config`] or [`AppError::Store`] when the store cannot be opened or written.
pub async fn record_quota_pause(
    source: &SettingsSource,
    reason: &str,
    until: DateTime<Utc>,
) -> Result<Option<PauseState>, AppError> {
    let (_, store) = open_store(source).await?;
    Ok(store.pause_for_quota(reason, until).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn people_read_numbers_times_and_ids() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234), "1,234");
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(percent(1_234, 10_000), "12%");
        assert_eq!(percent(5, 0), "-");
        let now = t("2026-03-02T12:00:00Z");
        assert_eq!(relative(t("2026-03-02T11:57:00Z"), now), "3 minutes ago");
        assert_eq!(relative(t("2026-03-02T17:00:00Z"), now), "in 5 hours");
        assert_eq!(relative(t("2026-03-02T11:59:58Z"), now), "just now");
        assert_eq!(short_time(now), "2026-03-02 12:00 UTC");
        assert_eq!(short_duration(Duration::from_millis(400)), "0.4 s");
        assert_eq!(short_duration(Duration::from_secs(125)), "2 min 05 s");
        assert_eq!(short_duration(Duration::from_secs(3720)), "1 h 02 min");
        assert_eq!(short_id("9e6c37fb-1111-2222-3333-444455556666"), "9e6c37fb");
        assert_eq!(short_id("running"), "running");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }

    #[test]
    fn since_and_until_take_dates_instants_and_ages() {
        let now = t("2026-03-02T12:00:00Z");
        assert_eq!(
            parse_since("24h", now).expect("h"),
            t("2026-03-01T12:00:00Z")
        );
        assert_eq!(
            parse_since("30m", now).expect("m"),
            t("2026-03-02T11:30:00Z")
        );
        assert_eq!(
            parse_since("7d", now).expect("d"),
            t("2026-02-23T12:00:00Z")
        );
        assert_eq!(
            parse_since("2 weeks", now).expect("w"),
            t("2026-02-16T12:00:00Z")
        );
        assert_eq!(
            parse_since("2026-03-01", now).expect("date"),
            t("2026-03-01T00:00:00Z")
        );
        let bad = parse_since("yesterday", now).expect_err("words");
        assert!(bad.to_string().contains("--since"), "{bad}");
        assert!(parse_since("12x", now).is_err());
        assert_eq!(
            parse_until_at("2h", now).expect("h"),
            t("2026-03-02T14:00:00Z")
        );
        assert!(parse_until_at("soon", now).is_err());
    }

    #[test]
    fn colour_is_off_in_plain_rendering_and_never_choice() {
        let now = t("2026-03-02T12:00:00Z");
        assert!(!Render::plain(now).color);
        assert!(!Render::for_stdout(ColorChoice::Never, now).color);
        assert!(Render::for_stdout(ColorChoice::Always, now).color);
    }
}
