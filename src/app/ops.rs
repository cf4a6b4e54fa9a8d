//! The operator commands: `status`, `errors list|retry|discard`, `pause`, `resume`.
//!
//! Each works on an open store and writes to any `io::Write`, so tests call them directly;
//! [`open_store`] opens the store named by the settings for the command line.

use std::io::Write;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::AppError;
use super::status::StoreStatus;
use crate::config::{Settings, SettingsSource};
use crate::http::{StatusReport, StatusSource};
use crate::store::{Clock, ErrorFilter, ErrorStatus, Lease, PauseState, StateStore, SyncError};

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

/// The facts `marketo-sync status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StatusFacts {
    /// The status report (as on the status page).
    pub report: StatusReport,
    /// The lease as stored: who runs the cycles and until when.
    pub lease: Option<Lease>,
    /// Whether the lease is still live (not expired).
    pub lease_live: bool,
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
    Ok(StatusFacts {
        report,
        lease,
        lease_live,
    })
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
}

/// Writes the status facts for people (or as JSON with `json`).
///
/// # Errors
///
/// [`AppError::Output`] when writing fails.
pub fn write_status(facts: &StatusFacts, json: bool, out: &mut dyn Write) -> Result<(), AppError> {
    if json {
        serde_json::to_writer_pretty(&mut *out, facts).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    let r = &facts.report;
    writeln!(out, "instance: {}", r.instance)?;
    match (&facts.lease, facts.lease_live) {
        (Some(lease), true) => writeln!(
            out,
            "lease: held by {} until {}",
            lease.holder,
            lease.expires_at.to_rfc3339()
        )?,
        (Some(lease), false) => writeln!(
            out,
            "lease: free (last held by {}, expired {})",
            lease.holder,
            lease.expires_at.to_rfc3339()
        )?,
        (None, _) => writeln!(out, "lease: free (no daemon running)")?,
    }
    match &r.paused {
        Some(p) => writeln!(out, "paused: yes, {} (until {})", p.reason, time(p.until))?,
        None => writeln!(out, "paused: no")?,
    }
    writeln!(
        out,
        "quota today: {} of {} calls used, {} left; bulk {} of {} bytes",
        r.quota.calls_today,
        r.quota.daily_budget,
        r.quota.remaining,
        r.quota.bulk_bytes_today,
        r.quota.bulk_budget_bytes
    )?;
    writeln!(out, "recent cycles:")?;
    if r.recent_cycles.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for c in r.recent_cycles.iter().take(10) {
        let written: u64 = c.counts.iter().map(|x| x.counts.written()).sum();
        let failed: u64 = c.counts.iter().map(|x| x.counts.failed).sum();
        writeln!(
            out,
            "  {} {} started {} ended {} calls {} written {} failed {}",
            c.id,
            c.outcome,
            c.started_at.to_rfc3339(),
            time(c.ended_at),
            c.api_calls,
            written,
            failed
        )?;
    }
    if !r.objects.is_empty() {
        writeln!(out, "objects:")?;
        for o in &r.objects {
            writeln!(
                out,
                "  {} last success {} lag {}",
                o.object,
                time(o.last_success_at),
                o.lag_seconds
                    .map_or_else(|| "-".to_owned(), |s| format!("{s}s"))
            )?;
        }
    }
    writeln!(out, "open errors: {}", r.open_errors_total)?;
    for e in r.open_errors.iter().take(10) {
        writeln!(
            out,
            "  {} {} {} {} [{}] {}",
            e.id,
            e.object,
            e.direction.as_str(),
            e.key,
            e.code,
            e.message
        )?;
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
    /// Print JSON lines instead of a table.
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

/// Lists sync errors and returns how many were printed.
///
/// # Errors
///
/// [`AppError::Store`] or [`AppError::Output`].
pub async fn errors_list(
    store: &dyn StateStore,
    args: &ErrorsListArgs,
    out: &mut dyn Write,
) -> Result<usize, AppError> {
    let errors = store
        .list_errors(&ErrorFilter {
            status: Some(args.status.unwrap_or(ErrorStatus::Open)),
            object: args.object.clone(),
            limit: if args.limit == 0 { 100 } else { args.limit },
        })
        .await?;
    if args.json {
        for e in &errors {
            serde_json::to_writer(&mut *out, &ListedError::from(e))
                .map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        return Ok(errors.len());
    }
    if errors.is_empty() {
        writeln!(out, "no sync errors")?;
    }
    for e in &errors {
        writeln!(
            out,
            "{} {} {} {} {} [{}] attempts {} next retry {} last seen {}: {}",
            e.id,
            e.status.as_str(),
            e.object,
            e.direction.as_str(),
            e.record_key,
            e.code,
            e.attempts,
            time(e.next_retry_at),
            e.last_seen_at.to_rfc3339(),
            e.message
        )?;
    }
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

/// Parses `--until` (RFC 3339).
///
/// # Errors
///
/// [`AppError::InvalidArgument`] naming the expected form.
pub fn parse_until(text: &str) -> Result<DateTime<Utc>, AppError> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| AppError::InvalidArgument {
            what: "--until",
            reason: format!(
                "{:?} is not an RFC 3339 time like 2026-01-31T18:00:00Z",
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
