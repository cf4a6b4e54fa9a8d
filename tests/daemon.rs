//! The daemon: the cycle loop's timing and pauses (paused clock), shutdown mid-cycle (in
//! process and with a real SIGTERM to a child process), two replicas sharing one lease, and no
//! secret in anything the daemon shows.

#[path = "support/daemon_fakes.rs"]
mod fakes;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fakes::{ControlStore, FakeRunner, Step, TokioClock};
use marketo_sync::app::{Daemon, DaemonParts};
use marketo_sync::engine::Runner;
use marketo_sync::http::{HttpConfig, StatusSource};
use marketo_sync::store::{Clock, StateStore, SystemClock};
use secrecy::SecretString;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const MIN: Duration = Duration::from_secs(60);
const INSTANCE: &str = "123-ABC-456";

fn http(secret: &str) -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        webhook_secret: SecretString::from(secret.to_owned()),
        body_limit: marketo_sync::http::DEFAULT_BODY_LIMIT,
        auth_token: None,
    }
}

fn parts(
    runner: Arc<dyn Runner>,
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    holder: &str,
) -> DaemonParts {
    let mut parts = DaemonParts::new(runner, store, http("test-webhook-secret"), INSTANCE, holder);
    parts.clock = clock;
    parts.interval = 5 * MIN;
    parts
}

fn close_to(actual: Duration, expected: Duration) -> bool {
    let diff = actual.abs_diff(expected);
    diff <= Duration::from_millis(20)
}

#[tokio::test(start_paused = true)]
async fn the_interval_counts_from_the_end_of_a_cycle() {
    let clock = TokioClock::new();
    let store = ControlStore::new(clock.clone());
    let runner = FakeRunner::new("a", vec![Step::Succeed(2 * MIN)], clock.clone());
    let daemon = Daemon::build(parts(runner.clone(), store, clock, "a"))
        .await
        .expect("build");
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));

    runner.started(3).await;
    let spans = runner.spans();
    let first_end = spans[0].end.expect("first ended");
    assert!(close_to(first_end - spans[0].start, 2 * MIN));
    for pair in spans.windows(2) {
        let end = pair[0].end.expect("ended");
        let gap = pair[1].start - end;
        assert!(
            close_to(gap, 5 * MIN),
            "next cycle started {gap:?} after the end"
        );
        // Counted from the start it would have been 3 minutes after the end.
        assert!(pair[1].start - pair[0].start > 7 * MIN - Duration::from_millis(20));
    }
    token.cancel();
    task.await.expect("join").expect("clean exit");
}

#[tokio::test(start_paused = true)]
async fn a_pause_stops_cycles_and_resume_restarts_them() {
    let clock = TokioClock::new();
    let store = ControlStore::new(clock.clone());
    let runner = FakeRunner::new("a", vec![Step::Succeed(MIN)], clock.clone());
    let daemon = Daemon::build(parts(runner.clone(), store.clone(), clock, "a"))
        .await
        .expect("build");
    let status = daemon.status_source();
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));

    runner.finished(1).await;
    store
        .pause("maintenance window", None)
        .await
        .expect("pause");
    tokio::time::sleep(120 * MIN).await;
    assert_eq!(runner.started_count(), 1, "no cycle may start while paused");
    let report = status.status().await.expect("status");
    let paused = report.paused.expect("status says paused");
    assert_eq!(paused.reason, "maintenance window");
    assert_eq!(paused.until, None);

    assert!(store.resume().await.expect("resume"));
    let resumed_at = Instant::now();
    runner.started(2).await;
    assert!(
        Instant::now() - resumed_at <= marketo_sync::app::DEFAULT_PAUSE_POLL,
        "the cycle restarts within one pause poll"
    );
    assert!(status.status().await.expect("status").paused.is_none());
    token.cancel();
    task.await.expect("join").expect("clean exit");
}

#[tokio::test(start_paused = true)]
async fn an_engine_pause_waits_until_its_end() {
    let clock = TokioClock::new();
    let store = ControlStore::new(clock.clone());
    let runner = FakeRunner::new(
        "a",
        vec![Step::PauseFor(10 * MIN), Step::Succeed(Duration::ZERO)],
        clock.clone(),
    );
    let daemon = Daemon::build(parts(runner.clone(), store, clock, "a"))
        .await
        .expect("build");
    let status = daemon.status_source();
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));

    runner.finished(1).await;
    tokio::time::sleep(MIN).await;
    let paused = status
        .status()
        .await
        .expect("status")
        .paused
        .expect("paused");
    assert!(paused.reason.contains("607"), "{}", paused.reason);
    assert!(paused.until.is_some());
    assert_eq!(runner.started_count(), 1);

    runner.started(2).await;
    let spans = runner.spans();
    let gap = spans[1].start - spans[0].end.expect("ended");
    assert!(
        close_to(gap, 10 * MIN),
        "resumed {gap:?} after the pause began"
    );
    token.cancel();
    task.await.expect("join").expect("clean exit");
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_bounded_even_when_the_engine_is_stuck() {
    let clock = TokioClock::new();
    let store = ControlStore::new(clock.clone());
    let runner = FakeRunner::new("a", vec![Step::Hang], clock.clone());
    let mut p = parts(runner.clone(), store.clone(), clock, "a");
    p.shutdown_timeout = Duration::from_secs(30);
    let daemon = Daemon::build(p).await.expect("build");
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));
    runner.started(1).await;
    let stop = Instant::now();
    token.cancel();
    task.await.expect("join").expect("clean exit");
    assert!(close_to(Instant::now() - stop, Duration::from_secs(30)));
    assert_eq!(store.lease(INSTANCE).await.expect("lease"), None);
    assert_eq!(
        runner.concurrent.load(Ordering::SeqCst),
        0,
        "the cycle was aborted"
    );
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn StateStore> {
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    marketo_sync::store::open(&url).await.expect("store")
}

#[tokio::test]
async fn shutdown_mid_cycle_commits_exits_cleanly_and_the_next_start_runs_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite_store(&dir).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let runner = FakeRunner::new("first", vec![Step::BlockUntilCancelled], clock.clone());
    let mut p = parts(runner.clone(), store.clone(), clock.clone(), "first");
    p.shutdown_timeout = Duration::from_secs(5);
    let daemon = Daemon::build(p).await.expect("build");
    let status = daemon.status_source();
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));

    tokio::time::timeout(Duration::from_secs(10), runner.started(1))
        .await
        .expect("a cycle started");
    let report = status.status().await.expect("status");
    assert_eq!(report.lease, marketo_sync::http::LeaseState::Held);
    assert_eq!(
        report.recent_cycles.first().map(|c| c.outcome),
        Some(marketo_sync::http::CycleOutcome::Running)
    );
    assert!(status.ready().await.is_ready());
    assert_eq!(
        store
            .lease(INSTANCE)
            .await
            .expect("lease")
            .map(|l| l.holder),
        Some("first".to_owned())
    );
    // What the signal handler does.
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(6), task)
        .await
        .expect("the daemon stops within the bound")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
    assert!(runner.committed_on_cancel.load(Ordering::SeqCst));
    assert_eq!(runner.concurrent.load(Ordering::SeqCst), 0);
    assert_eq!(
        store.lease(INSTANCE).await.expect("lease"),
        None,
        "lease released"
    );

    // A new daemon on the same store starts a cycle at once (not after a standby retry).
    let next = FakeRunner::new("second", vec![Step::Succeed(Duration::ZERO)], clock.clone());
    let mut p = parts(next.clone(), store.clone(), clock, "second");
    p.standby_retry = Duration::from_secs(3600);
    let daemon = Daemon::build(p).await.expect("build");
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));
    tokio::time::timeout(Duration::from_secs(10), next.started(1))
        .await
        .expect("the next daemon starts a cycle at once");
    token.cancel();
    task.await.expect("join").expect("clean exit");
}

const CHILD_ENV: &str = "MKSYNC_TEST_DAEMON_CHILD_STORE";

/// Not a test on its own: the child process of `sigterm_to_a_child_process_exits_zero`, selected
/// by an environment variable. Runs the daemon with the real signal handlers.
#[test]
fn child_daemon_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let url = format!("sqlite://{dir}/state.db");
        let store = marketo_sync::store::open(&url).await.expect("store");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let runner =
            FakeRunner::new("child", vec![Step::BlockUntilCancelled], clock.clone()).announcing();
        let mut p = parts(runner.clone(), store.clone(), clock, "child");
        p.shutdown_timeout = Duration::from_secs(10);
        let daemon = Daemon::build(p).await.expect("build");
        let token = CancellationToken::new();
        marketo_sync::app::install_signal_handlers(token.clone()).expect("signals");
        daemon.run_until_stopped(token).await.expect("clean exit");
        let lease = store.lease(INSTANCE).await.expect("lease");
        let committed = runner.committed_on_cancel.load(Ordering::SeqCst);
        println!(
            "shutdown complete committed={committed} lease_released={}",
            lease.is_none()
        );
    });
}

#[test]
fn sigterm_to_a_child_process_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_daemon_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        let started = line.contains("cycle started");
        seen.push(line);
        if started {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("cycle started")),
        "child never started a cycle: {seen:?}"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    for line in lines {
        seen.push(line.expect("line"));
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "child exit status {status:?}: {seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("shutdown complete committed=true lease_released=true")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_second_replica_takes_over_after_the_first_is_killed_never_running_two_cycles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_a = sqlite_store(&dir).await;
    let store_b = sqlite_store(&dir).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let concurrent = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let cycle = Step::Succeed(Duration::from_millis(30));
    let runner_a = FakeRunner::shared(
        "a",
        vec![cycle.clone()],
        clock.clone(),
        concurrent.clone(),
        max.clone(),
    );
    let runner_b = FakeRunner::shared(
        "b",
        vec![cycle],
        clock.clone(),
        concurrent.clone(),
        max.clone(),
    );
    let ttl = Duration::from_secs(3);
    let replica = |runner: Arc<FakeRunner>, store: Arc<dyn StateStore>, holder: &str| {
        let mut p = parts(runner, store, clock.clone(), holder);
        p.interval = Duration::from_millis(10);
        p.lease_ttl = ttl;
        p.standby_retry = Duration::from_millis(50);
        p
    };
    let a = Daemon::build(replica(runner_a.clone(), store_a, "replica-a"))
        .await
        .expect("build a");
    let token_a = CancellationToken::new();
    let task_a = tokio::spawn(a.run_until_stopped(token_a.clone()));
    tokio::time::timeout(Duration::from_secs(10), runner_a.started(1))
        .await
        .expect("a runs");

    let b = Daemon::build(replica(runner_b.clone(), store_b.clone(), "replica-b"))
        .await
        .expect("build b");
    let status_b = b.status_source();
    let token_b = CancellationToken::new();
    let task_b = tokio::spawn(b.run_until_stopped(token_b.clone()));
    // Several of a's cycles (and b's lease attempts) go by; b stays on standby.
    let seen = runner_a.started_count();
    tokio::time::timeout(Duration::from_secs(10), runner_a.started(seen + 5))
        .await
        .expect("a keeps cycling");
    assert_eq!(
        runner_b.started_count(),
        0,
        "b must not run while a holds the lease"
    );
    assert_eq!(
        status_b.ready().await.lease,
        marketo_sync::http::LeaseState::Standby
    );

    // Kill a: its tasks stop, its lease is NOT released.
    task_a.abort();
    assert!(task_a.await.expect_err("aborted").is_cancelled());
    let killed_at = std::time::Instant::now();
    let lease = store_b
        .lease(INSTANCE)
        .await
        .expect("lease")
        .expect("still there");
    assert_eq!(lease.holder, "replica-a");

    tokio::time::timeout(Duration::from_secs(10), runner_b.started(1))
        .await
        .expect("b takes over");
    assert!(
        killed_at.elapsed() + Duration::from_millis(50) >= ttl / 3,
        "b took over before a's lease could have expired"
    );
    assert_eq!(
        store_b
            .lease(INSTANCE)
            .await
            .expect("lease")
            .map(|l| l.holder),
        Some("replica-b".to_owned())
    );
    tokio::time::timeout(Duration::from_secs(10), runner_b.started(3))
        .await
        .expect("b keeps cycling");
    assert_eq!(max.load(Ordering::SeqCst), 1, "two cycles ran at once");
    token_a.cancel();
    token_b.cancel();
    task_b.await.expect("join").expect("clean exit");
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_cancels_the_running_cycle_and_stops_cycles() {
    let clock = TokioClock::new();
    let store = ControlStore::new(clock.clone());
    let runner = FakeRunner::new("a", vec![Step::BlockUntilCancelled], clock.clone());
    let daemon = Daemon::build(parts(runner.clone(), store.clone(), clock, "a"))
        .await
        .expect("build");
    let status = daemon.status_source();
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));
    runner.started(1).await;

    // Another replica took the lease (as after a long pause of this process).
    assert!(store.release_lease(INSTANCE, "a").await.expect("release"));
    assert!(
        store
            .try_acquire_lease(INSTANCE, "intruder", Duration::from_secs(3600))
            .await
            .expect("take")
    );
    runner.finished(1).await;
    assert!(runner.committed_on_cancel.load(Ordering::SeqCst));
    tokio::time::sleep(30 * MIN).await;
    assert_eq!(runner.started_count(), 1, "no cycle without the lease");
    assert_eq!(
        status.ready().await.lease,
        marketo_sync::http::LeaseState::Standby
    );
    token.cancel();
    task.await.expect("join").expect("clean exit");
    assert_eq!(
        store
            .lease(INSTANCE)
            .await
            .expect("lease")
            .map(|l| l.holder),
        Some("intruder".to_owned()),
        "shutdown releases only its own lease"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_cycles_back_off_and_the_loop_goes_on() {
    let clock = TokioClock::new();
    let store = ControlStore::new(clock.clone());
    let runner = FakeRunner::new(
        "a",
        vec![Step::Fail, Step::Fail, Step::Succeed(Duration::ZERO)],
        clock.clone(),
    );
    let daemon = Daemon::build(parts(runner.clone(), store, clock, "a"))
        .await
        .expect("build");
    let status = daemon.status_source();
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));
    runner.finished(1).await;
    assert_eq!(
        status.ready().await.last_cycle,
        Some(marketo_sync::http::CycleOutcome::Failed)
    );
    runner.started(4).await;
    let spans = runner.spans();
    let gap = |i: usize| spans[i + 1].start - spans[i].end.expect("ended");
    assert!(close_to(gap(0), 5 * MIN), "{:?}", gap(0));
    assert!(close_to(gap(1), 10 * MIN), "{:?}", gap(1));
    // A success resets the backoff.
    assert!(close_to(gap(2), 5 * MIN), "{:?}", gap(2));
    token.cancel();
    task.await.expect("join").expect("clean exit");
}

#[tokio::test(start_paused = true)]
async fn the_quota_pause_is_stored_and_a_restarted_daemon_honours_it() {
    let clock = TokioClock::new();
    let store = ControlStore::new(clock.clone());
    let first = FakeRunner::new("a", vec![Step::PauseFor(10 * MIN)], clock.clone());
    let daemon = Daemon::build(parts(first.clone(), store.clone(), clock.clone(), "a"))
        .await
        .expect("build");
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));
    first.finished(1).await;
    let paused_at = Instant::now();
    tokio::time::sleep(MIN).await;
    let pause = store.pause_state().await.expect("read").expect("stored");
    assert_eq!(pause.kind, marketo_sync::store::PauseKind::Quota);
    assert!(pause.reason.contains("607"), "{}", pause.reason);
    token.cancel();
    task.await.expect("join").expect("clean exit");

    // A new process (same store): it waits for the stored pause's end, not just its interval.
    let second = FakeRunner::new("b", vec![Step::Succeed(Duration::ZERO)], clock.clone());
    let daemon = Daemon::build(parts(second.clone(), store.clone(), clock, "b"))
        .await
        .expect("build");
    let status = daemon.status_source();
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));
    tokio::time::sleep(MIN).await;
    assert_eq!(
        second.started_count(),
        0,
        "no cycle while the quota pause lasts"
    );
    let shown = status
        .status()
        .await
        .expect("status")
        .paused
        .expect("paused");
    assert!(shown.reason.contains("607"), "{}", shown.reason);
    second.started(1).await;
    let waited = Instant::now() - paused_at;
    assert!(
        close_to(waited, 10 * MIN),
        "started {waited:?} after the pause began"
    );
    assert_eq!(
        store.pause_state().await.expect("read"),
        None,
        "over at its end"
    );
    token.cancel();
    task.await.expect("join").expect("clean exit");
}

#[tokio::test(start_paused = true)]
async fn resume_ends_a_quota_pause_at_once() {
    let clock = TokioClock::new();
    let store = ControlStore::new(clock.clone());
    let runner = FakeRunner::new(
        "a",
        vec![Step::PauseFor(600 * MIN), Step::Succeed(Duration::ZERO)],
        clock.clone(),
    );
    let daemon = Daemon::build(parts(runner.clone(), store.clone(), clock, "a"))
        .await
        .expect("build");
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(token.clone()));
    runner.finished(1).await;
    tokio::time::sleep(30 * MIN).await;
    assert_eq!(runner.started_count(), 1);
    let ended = marketo_sync::app::ops::resume_pause(store.as_ref())
        .await
        .expect("resume")
        .expect("there was a pause");
    assert_eq!(ended.kind, marketo_sync::store::PauseKind::Quota);
    let resumed_at = Instant::now();
    runner.started(2).await;
    assert!(
        Instant::now() - resumed_at <= marketo_sync::app::DEFAULT_PAUSE_POLL,
        "the cycle restarts within one pause poll"
    );
    token.cancel();
    task.await.expect("join").expect("clean exit");
}

#[tokio::test(start_paused = true)]
async fn a_quota_pause_does_not_replace_an_operators_pause() {
    let clock = TokioClock::new();
    let store = ControlStore::new(clock.clone());
    store.pause("maintenance", None).await.expect("pause");
    assert_eq!(
        store
            .pause_for_quota("607", clock.now() + chrono::Duration::hours(1))
            .await
            .expect("quota"),
        None
    );
    let kept = store.pause_state().await.expect("read").expect("paused");
    assert_eq!(kept.reason, "maintenance");
}
