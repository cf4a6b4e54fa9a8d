//! `marketo-sync bootstrap` of program members against the simulator and the demo CRM (SQLite,
//! PostgreSQL, MariaDB): the phase fills the campaign member rows through the status map and the
//! next cycle writes nothing either way; a member removed from its program in Marketo (no
//! activity says so) is removed from the CRM by a bootstrap re-run and by the cycle's repair
//! interval; `--since` reads by `updatedAt` in ranges of at most 7 days; a row the CRM refuses
//! is one ledger entry; an interrupted pass resumes after the programs it finished.

#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use harness::{CrmKind, Options, TestApp, calls_since, log_mark, written};
use marketo_sync::engine::EngineError;
use marketo_sync::engine::bootstrap::{
    BootstrapOptions, BootstrapReport, PHASE_PROGRAM_MEMBERS, PhaseReport, ProgressEvent,
    RecordingProgress, bootstrap,
};
use marketo_sync::marketo::{Client, ClientConfig};
use marketo_sync::sim::SimHandle;
use tokio_util::sync::CancellationToken;

/// The simulator's webinar program (channel Webinar) and its nurture program.
const WEBINAR: i64 = 1107;
const NURTURE: i64 = 1108;
const OBJECT: &str = "program_members";

fn client(sim: &SimHandle) -> Client {
    let (id, secret) = sim.credentials();
    let mut config = ClientConfig::new(sim.base_url().parse().unwrap(), id, secret);
    config.calls_per_20s = 100;
    config.max_concurrency = 10;
    Client::new(config).unwrap()
}

async fn start(crm: CrmKind) -> TestApp {
    TestApp::with(Options {
        objects: ["leads", "programs", OBJECT]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        ..Options::on(crm)
    })
    .await
}

/// Advances both clocks past the CRM change feed's overlap.
fn tick(app: &TestApp) {
    app.sim.advance_clock(Duration::from_secs(60));
    app.sync_clock();
}

/// Runs `bootstrap --object program_members` (with `since`, `dry_run`).
async fn run_bootstrap(
    app: &TestApp,
    since: Option<DateTime<Utc>>,
    dry_run: bool,
    progress: &RecordingProgress,
    cancel: &CancellationToken,
) -> Result<BootstrapReport, EngineError> {
    app.sync_clock();
    let options = BootstrapOptions {
        objects: vec![OBJECT.into()],
        since,
        dry_run,
        ..BootstrapOptions::default()
    };
    bootstrap(app.engine.context(), &options, progress, cancel).await
}

async fn bootstrap_ok(app: &TestApp, since: Option<DateTime<Utc>>, dry_run: bool) -> PhaseReport {
    let report = run_bootstrap(
        app,
        since,
        dry_run,
        &RecordingProgress::new(),
        &CancellationToken::new(),
    )
    .await
    .expect("bootstrap");
    assert!(report.complete || dry_run, "{report:?}");
    members_phase(&report)
}

fn members_phase(report: &BootstrapReport) -> PhaseReport {
    report
        .phases
        .iter()
        .find(|p| p.name == PHASE_PROGRAM_MEMBERS)
        .cloned()
        .unwrap_or_else(|| panic!("no program members phase: {report:?}"))
}

/// Returns the member rows by Marketo key: (status, soft-deleted).
async fn rows(app: &TestApp) -> BTreeMap<String, (Option<String>, bool)> {
    let got = app
        .user
        .fetch(
            "test",
            "SELECT marketo_id, status, CAST(deleted AS CHAR(1)) FROM campaign_members".to_owned(),
            &[],
        )
        .await
        .unwrap();
    got.into_iter()
        .map(|r| {
            let deleted = matches!(r[2].as_deref(), Some("1" | "t"));
            (r[0].clone().unwrap_or_default(), (r[1].clone(), deleted))
        })
        .collect()
}

async fn live(app: &TestApp) -> BTreeMap<String, String> {
    rows(app)
        .await
        .into_iter()
        .filter(|(_, (_, deleted))| !deleted)
        .map(|(k, (s, _))| (k, s.unwrap_or_default()))
        .collect()
}

fn key(program: i64, lead: i64) -> String {
    format!("{program}:{lead}")
}

/// Records the object wrote in a cycle (both ways).
fn written_of(s: &marketo_sync::engine::CycleSummary, object: &str) -> u64 {
    s.objects.get(object).map_or(0, |by| {
        by.values().map(|c| c.created + c.updated + c.deleted).sum()
    })
}

/// Creates three CRM contacts, runs a cycle (leads and programs linked) and returns their
/// Marketo lead ids.
async fn three_leads(app: &TestApp) -> [i64; 3] {
    for (email, first) in [
        ("ada@example.com", "Ada"),
        ("bob@example.com", "Bob"),
        ("cy@example.com", "Cy"),
    ] {
        app.crm_insert_contact(email, first, "Test").await;
    }
    app.settle(3).await;
    let id = |e: &str| app.marketo_by_email(e)[0];
    [
        id("ada@example.com"),
        id("bob@example.com"),
        id("cy@example.com"),
    ]
}

async fn fills_repairs_and_stays_quiet(crm: CrmKind) {
    let app = start(crm).await;
    let c = client(&app.sim);
    let [ada, bob, cy] = three_leads(&app).await;
    c.change_lead_program_status(WEBINAR, "Registered", &[ada])
        .await
        .unwrap();
    c.change_lead_program_status(WEBINAR, "Attended", &[bob])
        .await
        .unwrap();
    c.change_lead_program_status(NURTURE, "Member", &[cy])
        .await
        .unwrap();
    tick(&app);

    // A dry run counts what it would write and writes nothing.
    let dry = bootstrap_ok(&app, None, true).await;
    assert_eq!(
        (dry.windows_total, dry.rows, dry.created),
        (2, 3, 3),
        "{dry:?}"
    );
    assert!(rows(&app).await.is_empty());

    // The bootstrap fills the rows, statuses through the status map (Attended is the CRM's
    // Responded on a Webinar channel program).
    let phase = bootstrap_ok(&app, None, false).await;
    assert_eq!(
        (phase.windows_done, phase.rows, phase.created, phase.failed),
        (2, 3, 3, 0),
        "{phase:?}"
    );
    let want: BTreeMap<String, String> = [
        (key(WEBINAR, ada), "Registered"),
        (key(WEBINAR, bob), "Responded"),
        (key(NURTURE, cy), "Member"),
    ]
    .into_iter()
    .map(|(k, s)| (k, s.to_owned()))
    .collect();
    assert_eq!(live(&app).await, want);

    // The next cycle (its activity read carries the three status changes) writes nothing
    // either way.
    tick(&app);
    let quiet = app.run_cycle().await;
    assert_eq!(written(&quiet), 0, "{quiet:?}");
    assert_eq!(live(&app).await, want);

    // Bob leaves the webinar in Marketo: no activity says so, the cycle keeps his row.
    let removed = c.delete_program_members(WEBINAR, &[bob]).await.unwrap();
    assert!(removed[0].refusal().is_none(), "{removed:?}");
    tick(&app);
    app.run_cycle().await;
    assert_eq!(live(&app).await, want);
    // A bootstrap re-run finds it by the full read: the row is soft-deleted, the link
    // tombstoned, and nothing goes back to Marketo.
    let mark = log_mark(&app.sim);
    let phase = bootstrap_ok(&app, None, false).await;
    assert_eq!(
        (phase.removed, phase.created, phase.updated),
        (1, 0, 0),
        "{phase:?}"
    );
    let calls = calls_since(&app.sim, mark);
    assert!(
        calls
            .by_path
            .keys()
            .all(|p| !(p.starts_with("POST") && p.contains("/programs/"))),
        "{:?}",
        calls.by_path
    );
    let all = rows(&app).await;
    assert_eq!(
        all.get(&key(WEBINAR, bob)).map(|r| r.1),
        Some(true),
        "{all:?}"
    );
    let mut after = want.clone();
    after.remove(&key(WEBINAR, bob));
    assert_eq!(live(&app).await, after);
    let link = app
        .store
        .links_by_marketo_keys(OBJECT, &[key(WEBINAR, bob)])
        .await
        .unwrap();
    assert!(link[0].tombstone.is_some(), "{link:?}");
    tick(&app);
    let quiet = app.run_cycle().await;
    assert_eq!(written(&quiet), 0, "{quiet:?}");
    assert!(
        c.get_program_members(WEBINAR, "leadId", &[bob.to_string()], None, &[], None)
            .await
            .unwrap()
            .records
            .is_empty()
    );

    // The cycle repairs by itself once sync.program_members_repair_hours (24) have passed.
    c.delete_program_members(NURTURE, &[cy]).await.unwrap();
    tick(&app);
    let early = app.run_cycle().await;
    assert_eq!(written_of(&early, OBJECT), 0, "{early:?}");
    app.sim.advance_clock(Duration::from_secs(25 * 3600));
    let repair = app.run_cycle().await;
    let counts = &repair.objects[OBJECT][&marketo_sync::store::Direction::MarketoToCrm];
    assert_eq!(counts.deleted, 1, "{repair:?}");
    after.remove(&key(NURTURE, cy));
    assert_eq!(live(&app).await, after);
    tick(&app);
    let quiet = app.run_cycle().await;
    assert_eq!(written(&quiet), 0, "{quiet:?}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bootstrap_fills_members_and_repairs_removed_ones() {
    fills_repairs_and_stays_quiet(CrmKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bootstrap_fills_members_and_repairs_removed_ones() {
    fills_repairs_and_stays_quiet(CrmKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_bootstrap_fills_members_and_repairs_removed_ones() {
    fills_repairs_and_stays_quiet(CrmKind::MariaDb).await;
}

/// Returns the (startAt, endAt) of every members query by updatedAt of `program` after `mark`.
fn updated_ranges(app: &TestApp, mark: u64, program: i64) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let path = format!("/rest/v1/programs/{program}/members.json");
    app.sim
        .request_log()
        .into_iter()
        .filter(|e| e.seq > mark && e.method == "GET" && e.path == path)
        .map(|e| {
            let q: BTreeMap<String, String> = url::form_urlencoded::parse(e.query.as_bytes())
                .into_owned()
                .collect();
            assert_eq!(q.get("filterType").map(String::as_str), Some("updatedAt"));
            assert!(e.code.is_none(), "Marketo refused a range: {e:?}");
            let at = |n: &str| {
                DateTime::parse_from_rfc3339(&q[n])
                    .unwrap()
                    .with_timezone(&Utc)
            };
            (at("startAt"), at("endAt"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_reads_by_updated_at_in_ranges_of_at_most_seven_days() {
    let app = start(CrmKind::Sqlite).await;
    let c = client(&app.sim);
    let [ada, _, _] = three_leads(&app).await;
    c.change_lead_program_status(WEBINAR, "Invited", &[ada])
        .await
        .unwrap();
    tick(&app);
    let now = app.sim.now();
    let since = now - chrono::Duration::days(20);
    let mark = log_mark(&app.sim);
    let phase = bootstrap_ok(&app, Some(since), false).await;
    assert_eq!((phase.rows, phase.created), (1, 1), "{phase:?}");
    for program in [WEBINAR, NURTURE] {
        let ranges = updated_ranges(&app, mark, program);
        // 20 days: three calls (7 + 7 + 6 days), no gap.
        assert_eq!(ranges.len(), 3, "{ranges:?}");
        assert_eq!(ranges[0].0.timestamp(), since.timestamp());
        assert!(ranges.last().unwrap().1 >= now - chrono::Duration::seconds(1));
        for w in ranges.windows(2) {
            assert_eq!(w[0].1, w[1].0, "{ranges:?}");
        }
        assert!(
            ranges
                .iter()
                .all(|(a, b)| *b - *a <= chrono::Duration::days(7) && b >= a),
            "{ranges:?}"
        );
    }
    assert_eq!(
        live(&app).await.get(&key(WEBINAR, ada)).map(String::as_str),
        Some("Invited")
    );
    // The client refuses a longer range before spending a call.
    let err = c
        .get_program_members(WEBINAR, "updatedAt", &[], Some((since, now)), &[], None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("7 days"), "{err}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_row_the_crm_refuses_is_one_ledger_entry() {
    let app = start(CrmKind::Sqlite).await;
    let c = client(&app.sim);
    let [ada, bob, cy] = three_leads(&app).await;
    app.crm_exec(
        "CREATE TRIGGER refuse_registered BEFORE INSERT ON campaign_members \
         WHEN NEW.status = 'Registered' BEGIN SELECT RAISE(ABORT, 'blocked by policy'); END",
    )
    .await;
    c.change_lead_program_status(WEBINAR, "Registered", &[ada])
        .await
        .unwrap();
    c.change_lead_program_status(WEBINAR, "Invited", &[bob, cy])
        .await
        .unwrap();
    tick(&app);
    let phase = bootstrap_ok(&app, None, false).await;
    assert_eq!((phase.created, phase.failed), (2, 1), "{phase:?}");
    let open = app.open_errors(OBJECT).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].record_key, key(WEBINAR, ada));
    assert!(open[0].message.contains("blocked by policy"), "{open:?}");
    let got = live(&app).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(!got.contains_key(&key(WEBINAR, ada)));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pass_resumes_after_the_programs_it_finished() {
    let app = start(CrmKind::Sqlite).await;
    let c = client(&app.sim);
    let [ada, _, cy] = three_leads(&app).await;
    c.change_lead_program_status(WEBINAR, "Invited", &[ada])
        .await
        .unwrap();
    c.change_lead_program_status(NURTURE, "Member", &[cy])
        .await
        .unwrap();
    tick(&app);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let progress = RecordingProgress::with_window_hook(move |_, n| {
        if n == 1 {
            stop.cancel();
        }
    });
    let first = run_bootstrap(&app, None, false, &progress, &cancel).await;
    assert!(matches!(first, Err(EngineError::Cancelled)), "{first:?}");
    assert!(progress.events().contains(&ProgressEvent::Phase {
        name: PHASE_PROGRAM_MEMBERS.into(),
        windows: 2
    }));
    assert_eq!(live(&app).await.len(), 1);
    let mark = log_mark(&app.sim);
    let phase = bootstrap_ok(&app, None, false).await;
    assert_eq!(
        (phase.windows_skipped, phase.windows_done, phase.created),
        (1, 1, 1),
        "{phase:?}"
    );
    // Only the unfinished program was read again.
    let calls = calls_since(&app.sim, mark);
    assert!(
        !calls
            .by_path
            .contains_key(&format!("GET /rest/v1/programs/{WEBINAR}/members.json")),
        "{:?}",
        calls.by_path
    );
    assert_eq!(live(&app).await.len(), 2);
    app.cleanup().await;
}
