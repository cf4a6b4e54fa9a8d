//! End-to-end tests of custom activities, CRM -> Marketo: the demo CRM's `events` table is
//! written to the simulator as the custom activity type `chatConversation_c`
//! (`config/mappings/chat_events.toml`), on SQLite, PostgreSQL and MariaDB CRMs.

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use harness::{CrmKind, Options, StoreKind, TestApp};
use marketo_sync::sim::demo_crm;
use marketo_sync::store::{CommitHook, StoreError};
use serde_json::json;

const OBJECT: &str = "chat_events";

/// Creates the approved type the mapping names, as a Marketo admin would.
fn add_type(app: &TestApp) -> i64 {
    app.sim.add_custom_activity_type(
        "chatConversation_c",
        "Chat Conversation",
        ("topic", "Topic", "string"),
        &[
            ("eventId", "Event Id", "string"),
            ("transcript", "Transcript", "text"),
        ],
    )
}

async fn start(crm: CrmKind, store: StoreKind, commit_hook: Option<CommitHook>) -> TestApp {
    let app = TestApp::with(Options {
        crm,
        store,
        commit_hook,
        objects: vec!["leads".into(), OBJECT.into()],
        ..Options::default()
    })
    .await;
    add_type(&app);
    app
}

/// The activities of the type Marketo holds: (event id, lead id, topic, transcript).
fn activities(app: &TestApp, type_id: i64) -> Vec<(String, i64, String, Option<String>)> {
    app.sim
        .activities()
        .into_iter()
        .filter(|a| a["activityTypeId"] == json!(type_id))
        .map(|a| {
            let attr = |name: &str| {
                a["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["name"] == name)
                    .and_then(|x| x["value"].as_str().map(str::to_owned))
            };
            (
                attr("Event Id").unwrap_or_default(),
                a["leadId"].as_i64().unwrap_or_default(),
                a["primaryAttributeValue"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                attr("Transcript"),
            )
        })
        .collect()
}

async fn event_ids(app: &TestApp) -> Vec<String> {
    let page = app
        .crm
        .changes("events", None, 1000)
        .await
        .expect("events feed");
    let mut ids: Vec<String> = page.changes.into_iter().map(|c| c.id).collect();
    ids.sort_by_key(|id| id.parse::<i64>().unwrap_or_default());
    ids.dedup();
    ids
}

/// A chat transcript of 64,000 bytes with non-ASCII text (each line names its number).
fn transcript() -> String {
    let mut t = String::new();
    let mut i = 0;
    while t.len() < 63_900 {
        t.push_str(&format!(
            "{i:05} visitor: Grüße, ¿precio? — agent: ça marche ✓\n"
        ));
        i += 1;
    }
    while t.len() < 64_000 {
        t.push('.');
    }
    t
}

async fn events_arrive_once_intact_and_refusals_go_to_the_ledger(crm: CrmKind, store: StoreKind) {
    let app = start(crm, store, None).await;
    let type_id = add_type(&app);
    let contact = app
        .crm_insert_contact("chat@example.com", "Chat", "Person")
        .await;
    let marketo_only = app.marketo_create(json!({"email": "mo@example.com", "firstName": "Mo"}));
    app.settle(4).await;
    let lead = app.marketo_by_email("chat@example.com")[0];
    let long = transcript();
    assert_eq!(long.len(), 64_000);
    let pool = &app.user;
    // By the linked contact, with a 64 KB transcript.
    demo_crm::insert_event(pool, Some(&contact), None, "Pricing", &long)
        .await
        .unwrap();
    // By email only (a Marketo lead with no CRM contact).
    demo_crm::insert_event(pool, None, Some("MO@example.com"), "Support", "short")
        .await
        .unwrap();
    // Beyond the text attribute's limit: refused, never shortened.
    let too_long = "y".repeat(65_536);
    demo_crm::insert_event(pool, Some(&contact), None, "Too long", &too_long)
        .await
        .unwrap();
    // No lead at all.
    demo_crm::insert_event(pool, None, Some("nobody@example.com"), "Lost", "x")
        .await
        .unwrap();
    // Marketo itself refuses this one (a record-level skip).
    app.sim.refuse_records(
        "primaryAttributeValue",
        "Blocked",
        "1003",
        "Blocked by a validation rule",
    );
    demo_crm::insert_event(pool, Some(&contact), None, "Blocked", "z")
        .await
        .unwrap();
    let s = app.run_cycle().await;
    let counts = &s.objects[OBJECT][&marketo_sync::store::Direction::CrmToMarketo];
    assert_eq!((counts.created, counts.failed), (2, 3), "{s:?}");

    let ids = event_ids(&app).await;
    assert_eq!(ids.len(), 5, "{ids:?}");
    let mut got = activities(&app, type_id);
    got.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    let first = got.iter().find(|a| a.0 == ids[0]).expect("first event");
    assert_eq!((first.1, first.2.as_str()), (lead, "Pricing"));
    assert_eq!(
        first.3.as_deref(),
        Some(long.as_str()),
        "the transcript arrives intact"
    );
    let second = got.iter().find(|a| a.0 == ids[1]).expect("second event");
    assert_eq!((second.1, second.2.as_str()), (marketo_only, "Support"));

    let errors = app.open_errors(OBJECT).await;
    assert_eq!(errors.len(), 3, "{errors:?}");
    let blocked = errors.iter().find(|e| e.record_key == ids[4]).unwrap();
    assert_eq!(
        (blocked.code.as_str(), blocked.message.as_str()),
        ("1003", "Blocked by a validation rule"),
        "Marketo's code and message: {blocked:?}"
    );
    let long_error = errors
        .iter()
        .find(|e| e.record_key == ids[2])
        .expect("ledger entry of the long event");
    assert_eq!(long_error.code, "too_long");
    assert!(
        long_error.message.contains(&format!("event {}", ids[2]))
            && long_error.message.contains("`transcript`")
            && long_error.message.contains("never shortened"),
        "{}",
        long_error.message
    );
    let lost = errors.iter().find(|e| e.record_key == ids[3]).unwrap();
    assert_eq!(lost.code, "lead_not_found", "{lost:?}");

    // An event of a contact whose lead was deleted: a ledger entry not retried.
    let gone = app
        .crm_insert_contact("gone@example.com", "Gone", "Soon")
        .await;
    app.settle(4).await;
    app.crm_delete_contact(&gone).await;
    app.settle(4).await;
    demo_crm::insert_event(pool, Some(&gone), None, "Late", "x")
        .await
        .unwrap();
    app.run_cycle().await;
    let late = app
        .open_errors(OBJECT)
        .await
        .into_iter()
        .find(|e| e.code == "lead_deleted")
        .expect("a lead_deleted entry");
    assert!(late.next_retry_at.is_none(), "{late:?}");

    // Later cycles write nothing again, and touching an event does not re-send it.
    app.crm_exec(&format!(
        "UPDATE events SET topic = 'Pricing v2' WHERE id = {}",
        ids[0]
    ))
    .await;
    app.run_cycle().await;
    app.run_cycle().await;
    assert_eq!(activities(&app, type_id).len(), 2);
    // An idle cycle costs the custom activities no Marketo call (the type's describe is cached
    // for the schema TTL): the lead step's three calls only (Describe Lead, its activity feed
    // and deleted leads).
    let mark = app.log_mark();
    app.run_cycle().await;
    let tally = app.calls_since(mark);
    assert!(
        !tally
            .by_path
            .keys()
            .any(|p| p.contains("activities/external")),
        "{:?}",
        tally.by_path
    );
    assert_eq!(
        tally.by_path.values().sum::<u64>(),
        3,
        "{:?}",
        tally.by_path
    );
    app.cleanup().await;
}

#[tokio::test]
async fn custom_activities_arrive_once_intact_and_refusals_go_to_the_ledger() {
    events_arrive_once_intact_and_refusals_go_to_the_ledger(CrmKind::Sqlite, StoreKind::Sqlite)
        .await;
}

#[tokio::test]
async fn postgres_custom_activities_arrive_once_intact_and_refusals_go_to_the_ledger() {
    events_arrive_once_intact_and_refusals_go_to_the_ledger(CrmKind::Postgres, StoreKind::Postgres)
        .await;
}

#[tokio::test]
async fn mariadb_custom_activities_arrive_once_intact_and_refusals_go_to_the_ledger() {
    events_arrive_once_intact_and_refusals_go_to_the_ledger(CrmKind::MariaDb, StoreKind::Postgres)
        .await;
}

/// A commit hook that counts commits and, once `budget` is 0 or more, lets that many more
/// commits through and aborts every one after them (a process killed there).
fn counting_kill() -> (Arc<AtomicI64>, Arc<AtomicI64>, CommitHook) {
    let budget = Arc::new(AtomicI64::new(-1));
    let count = Arc::new(AtomicI64::new(0));
    let (b, c) = (budget.clone(), count.clone());
    let hook: CommitHook = Arc::new(move || {
        let (b, c) = (b.clone(), c.clone());
        Box::pin(async move {
            c.fetch_add(1, Ordering::SeqCst);
            let left = b.load(Ordering::SeqCst);
            if left < 0 {
                return Ok(());
            }
            if left == 0 {
                return Err(StoreError::Aborted {
                    reason: "killed".into(),
                });
            }
            b.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
    });
    (budget, count, hook)
}

/// Runs a cycle and returns how many store commits it made.
async fn quiet_commits(app: &TestApp, count: &AtomicI64) -> i64 {
    let before = count.load(Ordering::SeqCst);
    app.run_cycle().await;
    count.load(Ordering::SeqCst) - before
}

async fn killed_between_write_and_commit(crm: CrmKind, store: StoreKind) {
    let (budget, count, hook) = counting_kill();
    let app = start(crm, store, Some(hook)).await;
    let type_id = add_type(&app);
    let contact = app.crm_insert_contact("k@example.com", "Kay", "Ill").await;
    app.settle(4).await;
    // A quiet cycle's commits (the steps before this one), measured twice to be sure.
    let q1 = quiet_commits(&app, &count).await;
    let q2 = quiet_commits(&app, &count).await;
    assert_eq!(q1, q2, "quiet cycles commit the same number of times");
    for topic in ["One", "Two", "Three"] {
        demo_crm::insert_event(&app.user, Some(&contact), None, topic, "hello")
            .await
            .unwrap();
    }
    // The quiet steps commit, then the outbox commit, then the write, then the kill.
    budget.store(q1 + 1, Ordering::SeqCst);
    let _ = app.try_cycle().await;
    budget.store(-1, Ordering::SeqCst);
    assert_eq!(
        activities(&app, type_id).len(),
        3,
        "Marketo took the batch before the kill"
    );
    let s = app.run_cycle().await;
    app.run_cycle().await;
    let got = activities(&app, type_id);
    assert_eq!(got.len(), 3, "no activity written twice: {got:?} {s:?}");
    let mut ids: Vec<&str> = got.iter().map(|a| a.0.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    // The links exist: a new event is the only one written next.
    demo_crm::insert_event(&app.user, Some(&contact), None, "Four", "bye")
        .await
        .unwrap();
    app.run_cycle().await;
    assert_eq!(activities(&app, type_id).len(), 4);
    assert!(app.open_errors(OBJECT).await.is_empty());
    app.cleanup().await;
}

#[tokio::test]
async fn a_kill_between_write_and_commit_duplicates_no_custom_activity() {
    killed_between_write_and_commit(CrmKind::Sqlite, StoreKind::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_kill_between_write_and_commit_duplicates_no_custom_activity() {
    killed_between_write_and_commit(CrmKind::Postgres, StoreKind::Postgres).await;
}

#[tokio::test]
async fn mariadb_a_kill_between_write_and_commit_duplicates_no_custom_activity() {
    killed_between_write_and_commit(CrmKind::MariaDb, StoreKind::Postgres).await;
}

/// An outbox entry whose call never reached Marketo (a process killed after the outbox commit,
/// before the call) is found missing in Marketo on the next cycle and written once.
#[tokio::test]
async fn an_outbox_entry_never_written_is_written_once_on_the_next_cycle() {
    use marketo_sync::model::{Fields, Value, fields_hash};
    use marketo_sync::store::{Link, StepCommit};

    let app = start(CrmKind::Sqlite, StoreKind::Sqlite, None).await;
    let type_id = add_type(&app);
    let contact = app.crm_insert_contact("o@example.com", "Oh", "Box").await;
    app.settle(4).await;
    let lead = app.marketo_by_email("o@example.com")[0];
    // The state a kill leaves: the event's row and its outbox entry, nothing in Marketo.
    demo_crm::insert_event(&app.user, Some(&contact), None, "Only", "once")
        .await
        .unwrap();
    let event = event_ids(&app).await.pop().expect("the event");
    let activity = json!({
        "leadId": lead, "activityDate": "2030-01-01T00:00:00Z", "activityTypeId": type_id,
        "primaryAttributeValue": "Only",
        "attributes": [{"apiName": "eventId", "value": event}, {"apiName": "transcript", "value": "once"}],
    });
    let mut base = Fields::new();
    base.insert("activity".into(), Value::Text(activity.to_string()));
    app.store
        .commit(StepCommit {
            links_upsert: vec![Link {
                object: format!("{OBJECT}:outbox"),
                marketo_key: event.clone(),
                crm_key: event.clone(),
                base_hash: fields_hash(&base),
                base,
                agreed_at: app.sim.now(),
                tombstone: None,
            }],
            ..StepCommit::default()
        })
        .await
        .unwrap();
    app.run_cycle().await;
    app.run_cycle().await;
    let got = activities(&app, type_id);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].2.as_str()),
        (event.as_str(), "Only")
    );
    let outbox = app
        .store
        .links_page(&format!("{OBJECT}:outbox"), None, 10)
        .await
        .unwrap();
    assert!(outbox.is_empty(), "{outbox:?}");
    app.cleanup().await;
}
