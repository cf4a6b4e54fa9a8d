//! Logging set-up and typed events.

pub mod events;
pub mod metrics;

pub use metrics::{install_metrics_recorder, run_upkeep as run_metrics_upkeep};

use tracing_indicatif::IndicatifLayer;
use tracing_indicatif::filter::{IndicatifFilter, hide_indicatif_span_fields};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (for containers and log pipelines).
    Json,
    /// Human-readable lines (for a terminal).
    Pretty,
}

/// Installs the global tracing subscriber, filtered by `RUST_LOG` (default `info`). In the
/// pretty (terminal) format it also installs the `tracing-indicatif` layer that draws the
/// progress bars of spans with an `indicatif.pb_show` field (bootstrap), log lines above them.
///
/// Calling it twice is harmless: the second call leaves the first subscriber in place.
pub fn init(format: LogFormat) {
    init_at(format, "info");
}

/// Installs the subscriber as [`init`] does, with `default` as the level filter when
/// `RUST_LOG` is not set: the report commands (`validate`, `status`, ...) log only errors by
/// default, so that their output is not interleaved with the client's retry warnings.
pub fn init_at(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => {
            // Progress bars (bootstrap) are drawn by tracing-indicatif for the spans that ask
            // for one (`indicatif.pb_show`); log lines go through its writer, so they print
            // above the bars instead of scrolling them away.
            let bars = IndicatifLayer::new()
                .with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()));
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .compact()
                        .with_writer(bars.get_stderr_writer()),
                )
                .with(bars.with_filter(IndicatifFilter::new(false)))
                .try_init()
        }
    };
    // Already installed (tests, or a command that initialised logging itself).
    drop(result);
}

/// Returns the format that suits standard error: pretty on a terminal, JSON otherwise.
pub fn default_format() -> LogFormat {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    }
}

/// Where `marketo-sync demo` sends its logs, so that they do not interleave with its narration
/// on standard output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoLogs {
    /// JSON lines appended to this file (filtered by `RUST_LOG`, default `info`).
    File(std::path::PathBuf),
    /// Human-readable lines on standard error (filtered by `RUST_LOG`, default `info`).
    Stderr,
    /// Errors only, on standard error.
    Quiet,
}

/// Installs the global tracing subscriber of `marketo-sync demo`. Call it before [`init`]
/// (which then leaves it in place).
///
/// # Errors
///
/// Returns the I/O error when the log file cannot be created or opened for appending.
pub fn init_demo(logs: &DemoLogs) -> std::io::Result<()> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry();
    let result = match logs {
        DemoLogs::File(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            registry
                .with(filter())
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_writer(std::sync::Mutex::new(file)),
                )
                .try_init()
        }
        DemoLogs::Stderr => registry
            .with(filter())
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        DemoLogs::Quiet => registry
            .with(EnvFilter::new("error"))
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Already installed (a test that initialised logging itself).
    drop(result);
    Ok(())
}
