//! The Prometheus recorder: installed once per process, rendered by `GET /metrics`.
//!
//! Metric names follow `mksync_<name>_<unit>[_total]` in base units (seconds, bytes), with
//! bounded labels only (object type, direction, outcome, error code): never record ids, keys or
//! emails. Every metric is emitted through a typed event in [`super::events`].

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

/// Counter: finished sync cycles, labelled `outcome`.
pub const CYCLES_TOTAL: &str = "mksync_cycles_total";
/// Histogram: wall-clock duration of a sync cycle in seconds, labelled `outcome`.
pub const CYCLE_DURATION_SECONDS: &str = "mksync_cycle_duration_seconds";
/// Gauge: Unix time in seconds of the end of the last cycle, labelled `outcome`.
pub const LAST_CYCLE_TIMESTAMP_SECONDS: &str = "mksync_last_cycle_timestamp_seconds";
/// Counter: records handled, labelled `object`, `direction` and `outcome`.
pub const RECORDS_TOTAL: &str = "mksync_records_total";
/// Counter: conflicts resolved, labelled `object` and `winner`.
pub const CONFLICTS_TOTAL: &str = "mksync_conflicts_total";
/// Counter: sync errors recorded, labelled `object`, `direction` and `code`.
pub const SYNC_ERRORS_TOTAL: &str = "mksync_sync_errors_total";
/// Counter: Marketo REST calls made by this process.
pub const MARKETO_CALLS_TOTAL: &str = "mksync_marketo_calls_total";
/// Gauge: Marketo REST calls used today (Marketo's day, all processes sharing the store).
pub const MARKETO_CALLS_USED_TODAY: &str = "mksync_marketo_quota_used_calls";
/// Gauge: Marketo REST calls still available today under the configured budget.
pub const MARKETO_CALLS_REMAINING_TODAY: &str = "mksync_marketo_quota_remaining_calls";
/// Gauge: the configured daily Marketo REST call budget.
pub const MARKETO_CALLS_BUDGET: &str = "mksync_marketo_quota_budget_calls";
/// Counter: bytes of bulk-extract files downloaded by this process.
pub const BULK_BYTES_TOTAL: &str = "mksync_marketo_bulk_extract_bytes_total";
/// Gauge: bulk-extract bytes used today.
pub const BULK_BYTES_USED_TODAY: &str = "mksync_marketo_bulk_quota_used_bytes";
/// Gauge: the daily bulk-extract budget in bytes.
pub const BULK_BYTES_BUDGET: &str = "mksync_marketo_bulk_quota_budget_bytes";
/// Gauge: seconds since the last successful cycle, labelled `object`.
pub const SYNC_LAG_SECONDS: &str = "mksync_sync_lag_seconds";
/// Counter: webhook requests, labelled `outcome`.
pub const WEBHOOK_REQUESTS_TOTAL: &str = "mksync_webhook_requests_total";
/// Gauge: leads waiting in the on-demand queue.
pub const WEBHOOK_QUEUE_DEPTH: &str = "mksync_webhook_queue_depth";
/// Gauge: 1 while a kind of work is paused, 0 otherwise, labelled `scope`.
pub const PAUSED: &str = "mksync_paused";
/// Gauge: 1 while a mapped field is disabled (schema drift or a mapping problem), 0 once it
/// syncs again, labelled `object` (the mapping's object) and `field` (its canonical name).
pub const DISABLED_FIELDS: &str = "mksync_disabled_fields";

/// How often [`run_upkeep`] drains histogram data.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Cycle duration buckets in seconds, from a quiet cycle to a long bulk extract.
const CYCLE_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Returns a recorder configured like the global one, for tests that pair it with
/// `metrics::with_local_recorder` instead of installing a second global recorder.
pub fn build_recorder() -> PrometheusRecorder {
    // The bucket list is a non-empty constant, so this cannot fail; fall back to summaries if it
    // ever did rather than refusing to start.
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(CYCLE_DURATION_SECONDS.to_owned()),
            CYCLE_BUCKETS,
        )
        .unwrap_or_else(|_| PrometheusBuilder::new())
        .build_recorder()
}

/// Installs the process-wide Prometheus recorder on first call and returns its handle; later
/// calls return the same handle.
///
/// If another global `metrics` recorder was installed first (not by this function), the
/// returned handle renders an empty registry and a warning is logged.
pub fn install_metrics_recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %error, "a metrics recorder was already installed");
            }
            super::events::describe_metrics();
            handle
        })
        .clone()
}

/// Runs the recorder's upkeep every [`UPKEEP_INTERVAL`] until `cancel` fires, so histogram data
/// is drained and memory stays bounded.
pub async fn run_upkeep(handle: PrometheusHandle, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => handle.run_upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_returns_the_same_handle_twice() {
        let first = install_metrics_recorder();
        let second = install_metrics_recorder();
        metrics::counter!("mksync_test_install_total").increment(3);
        // Both handles see the one global registry (other tests may add to it concurrently).
        for handle in [first, second] {
            let text = handle.render();
            assert!(text.contains("mksync_test_install_total 3"), "{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn upkeep_stops_when_cancelled() {
        let handle = build_recorder().handle();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_upkeep(handle, cancel.clone()));
        tokio::time::advance(UPKEEP_INTERVAL * 3).await;
        assert!(!task.is_finished());
        cancel.cancel();
        task.await.expect("upkeep task panicked");
    }
}
