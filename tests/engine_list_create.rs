//! Static lists created in Marketo from a CRM segment (`[lists] create_missing`): the CRM rows of
//! a list name Marketo does not have become a new static list in the configured folder, with
//! their contacts' leads as members; created once, even when the step is killed between the
//! create and its commit; a second cycle writes nothing; a folder Marketo does not have is an
//! error naming the mapping file.

#[path = "support/harness.rs"]
mod harness;

use std::sync::atomic::Ordering;

use harness::{Options, TestApp, calls_since, log_mark, written};
use marketo_sync::config::LoadedMapping;
use marketo_sync::engine::objects;
use marketo_sync::engine::summary::PlannedAction;
use marketo_sync::engine::{CycleOptions, CycleSummary, EngineError};
use marketo_sync::marketo::{Client, ClientConfig, RecordStatus};
use marketo_sync::sim::SimHandle;
use tokio_util::sync::CancellationToken;

const SEGMENT: &str = "VIP Segment";
const NOW: &str = "strftime('%Y-%m-%d %H:%M:%f','now')";
const CREATE: &str = "POST /rest/asset/v1/staticLists.json";

fn client(sim: &SimHandle) -> Client {
    let (id, secret) = sim.credentials();
    let mut config = ClientConfig::new(sim.base_url().parse().unwrap(), id, secret);
    config.calls_per_20s = 100;
    config.max_concurrency = 10;
    Client::new(config).unwrap()
}

fn creating(m: &mut LoadedMapping) {
    if let Some(lists) = m.file.lists.as_mut() {
        lists.names = vec!["Newsletter".into(), SEGMENT.into()];
        lists.create_missing = true;
        lists.folder = Some("Lists".into());
    }
}

fn creating_in_a_missing_folder(m: &mut LoadedMapping) {
    creating(m);
    if let Some(lists) = m.file.lists.as_mut() {
        lists.folder = Some("No Such Folder".into());
    }
}

async fn start(
    edit: fn(&mut LoadedMapping),
    hook: Option<marketo_sync::store::CommitHook>,
) -> TestApp {
    TestApp::with(Options {
        objects: vec!["leads".into(), "static_lists".into()],
        edit_mapping: Some(edit),
        commit_hook: hook,
        ..Options::default()
    })
    .await
}

/// Inserts a CRM membership row of `contact` in the list `name`.
async fn add_row(app: &TestApp, contact: &str, name: &str) {
    app.crm_exec(&format!(
        "INSERT INTO list_members (contact_id, list_name, is_member, updated_at) \
         VALUES ('{contact}', '{name}', 1, {NOW})"
    ))
    .await;
}

/// The ids of the simulator's lists named `name`.
async fn lists_named(c: &Client, name: &str) -> Vec<i64> {
    c.get_lists(&[], &[name.to_owned()], None)
        .await
        .unwrap()
        .records
        .iter()
        .filter(|l| l.name == name)
        .map(|l| l.id)
        .collect()
}

async fn in_list(c: &Client, list: i64, lead: i64) -> bool {
    let r = c.are_list_members(list, &[lead]).await.unwrap();
    r[0].status == RecordStatus::Memberof
}

/// Runs one registered step on the engine's current plans.
async fn step(app: &TestApp, name: &str) -> Result<CycleSummary, EngineError> {
    app.sync_clock();
    let mut summary = CycleSummary::default();
    let plans = app.engine.refresh_schemas(&mut summary).await?;
    let ctx = app.engine.context();
    let options = CycleOptions::default();
    objects::run_step(
        name,
        ctx,
        &plans,
        &mut summary,
        &options,
        &CancellationToken::new(),
    )
    .await
    .map(|()| summary)
}

#[tokio::test]
async fn a_crm_segment_becomes_a_static_list_once_across_a_kill() {
    let (kill, hook) = harness::kill_switch();
    let app = start(creating, Some(hook)).await;
    let c = client(&app.sim);
    let ada = app.crm_insert_contact("ada@example.com", "Ada", "L").await;
    let bob = app.crm_insert_contact("bob@example.com", "Bob", "B").await;
    let eve = app.crm_insert_contact("eve@example.com", "Eve", "E").await;
    add_row(&app, &ada, SEGMENT).await;
    add_row(&app, &bob, SEGMENT).await;
    // Another list's row is not a member of the segment.
    add_row(&app, &eve, "Newsletter").await;
    step(&app, "leads").await.unwrap();
    let (a, b, e) = (
        app.marketo_by_email("ada@example.com")[0],
        app.marketo_by_email("bob@example.com")[0],
        app.marketo_by_email("eve@example.com")[0],
    );
    assert!(lists_named(&c, SEGMENT).await.is_empty());

    // The list is created and its members added, then the step dies before its commit.
    let mark = log_mark(&app.sim);
    kill.store(true, Ordering::SeqCst);
    assert!(step(&app, "static_lists").await.is_err());
    kill.store(false, Ordering::SeqCst);
    assert_eq!(calls_since(&app.sim, mark).by_path.get(CREATE), Some(&1));
    let created = lists_named(&c, SEGMENT).await;
    assert_eq!(created.len(), 1);
    let create = app
        .sim
        .request_log()
        .into_iter()
        .find(|e| e.seq > mark && e.method == "POST" && e.path == "/rest/asset/v1/staticLists.json")
        .unwrap();
    assert!(
        !create.query.contains("name="),
        "the Asset API takes its writes form-encoded: {}",
        create.query
    );

    // The next cycle finds it by name: no second list; every member is in it.
    let s = app.run_cycle().await;
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(lists_named(&c, SEGMENT).await, created);
    assert_eq!(calls_since(&app.sim, mark).by_path.get(CREATE), Some(&1));
    let list = created[0];
    assert!(in_list(&c, list, a).await);
    assert!(in_list(&c, list, b).await);
    assert!(!in_list(&c, list, e).await, "a row of another list");

    // Settled: a second cycle writes nothing and creates nothing.
    app.sim.advance_clock(std::time::Duration::from_secs(60));
    let mark = log_mark(&app.sim);
    let quiet = app.run_cycle().await;
    assert_eq!(written(&quiet), 0, "{:?}", quiet.objects);
    assert_eq!(calls_since(&app.sim, mark).by_path.get(CREATE), None);
    app.cleanup().await;
}

#[tokio::test]
async fn a_list_created_in_one_cycle_gets_its_members_in_that_cycle() {
    let app = start(creating, None).await;
    let c = client(&app.sim);
    let ada = app.crm_insert_contact("ada@example.com", "Ada", "L").await;
    app.run_cycle().await;
    let a = app.marketo_by_email("ada@example.com")[0];
    // The list was created (empty) by that cycle; a row added later joins it.
    let list = lists_named(&c, SEGMENT).await;
    assert_eq!(list.len(), 1);
    add_row(&app, &ada, SEGMENT).await;
    app.sim.advance_clock(std::time::Duration::from_secs(60));
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["static_lists"][&marketo_sync::store::Direction::CrmToMarketo].created,
        1,
        "{:?}",
        s.objects
    );
    assert!(in_list(&c, list[0], a).await);
    app.sim.advance_clock(std::time::Duration::from_secs(60));
    let quiet = app.run_cycle().await;
    assert_eq!(written(&quiet), 0, "{:?}", quiet.objects);
    app.cleanup().await;
}

#[tokio::test]
async fn a_dry_run_lists_the_list_it_would_create_and_creates_nothing() {
    let app = start(creating, None).await;
    let c = client(&app.sim);
    let mark = log_mark(&app.sim);
    let s = app.dry_cycle().await;
    let planned = s
        .plan
        .iter()
        .find(|p| p.object == "static_lists" && p.action == PlannedAction::Create)
        .unwrap_or_else(|| panic!("{:?}", s.plan));
    let text = format!("{planned:?}");
    assert!(text.contains(SEGMENT) && text.contains("Lists"), "{text}");
    assert_eq!(calls_since(&app.sim, mark).by_path.get(CREATE), None);
    assert!(lists_named(&c, SEGMENT).await.is_empty());
    app.cleanup().await;
}

#[tokio::test]
async fn a_folder_marketo_does_not_have_is_an_error_naming_the_file() {
    let app = start(creating_in_a_missing_folder, None).await;
    let c = client(&app.sim);
    let s = app.try_cycle().await.expect("the cycle goes on");
    let w = s
        .warnings
        .iter()
        .find(|w| w.contains("No Such Folder"))
        .unwrap_or_else(|| panic!("{:?}", s.warnings));
    assert!(w.contains("static_lists.toml"), "{w}");
    assert!(w.contains("lists.folder"), "{w}");
    assert!(lists_named(&c, SEGMENT).await.is_empty());
    app.cleanup().await;
}
