//! Static list membership against the Marketo simulator and the demo CRM (SQLite, PostgreSQL
//! and MariaDB): a membership added or removed on either side arrives once, a CRM row whose
//! contact has no lead waits in the ledger, an unknown list name is an error naming the mapping
//! file, and an idle cycle spends no call on lists.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{CrmKind, Options, TestApp, calls_since, log_mark, written};
use marketo_sync::marketo::{Client, ClientConfig, RecordStatus};
use marketo_sync::sim::SimHandle;

/// The simulator's lists.
const NEWSLETTER: i64 = 1001;
const INVITEES: i64 = 1002;

fn client(sim: &SimHandle) -> Client {
    let (id, secret) = sim.credentials();
    let mut config = ClientConfig::new(sim.base_url().parse().unwrap(), id, secret);
    config.calls_per_20s = 100;
    config.max_concurrency = 10;
    Client::new(config).unwrap()
}

async fn start(crm: CrmKind, objects: &[&str]) -> TestApp {
    TestApp::with(Options {
        objects: objects.iter().map(|s| (*s).to_owned()).collect(),
        ..Options::on(crm)
    })
    .await
}

/// Returns (contact id, list name, is_member as 0/1, marketo id) of every membership row.
async fn rows(app: &TestApp) -> Vec<Vec<Option<String>>> {
    app.user
        .fetch(
            "test",
            "SELECT TRIM(CAST(contact_id AS CHAR(20))), list_name, \
             CASE WHEN is_member THEN '1' ELSE '0' END, marketo_id FROM list_members ORDER BY id"
                .to_owned(),
            &[],
        )
        .await
        .unwrap()
}

async fn in_list(c: &Client, list: i64, lead: i64) -> bool {
    let r = c.are_list_members(list, &[lead]).await.unwrap();
    r[0].status == RecordStatus::Memberof
}

fn tick(app: &TestApp) {
    app.sim.advance_clock(Duration::from_secs(60));
}

fn now_sql(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Sqlite => "strftime('%Y-%m-%d %H:%M:%f','now')",
        CrmKind::Postgres => "CURRENT_TIMESTAMP",
        CrmKind::MariaDb => "CURRENT_TIMESTAMP(6)",
    }
}

fn truth(crm: CrmKind, b: bool) -> &'static str {
    match (crm, b) {
        (CrmKind::Postgres, true) => "TRUE",
        (CrmKind::Postgres, false) => "FALSE",
        (_, true) => "1",
        (_, false) => "0",
    }
}

/// Marketo merges a list member into a new lead, which takes over the loser's contact (seed 202
/// of the marketing convergence schedule): the winner inherits the membership and pairs with
/// the loser's CRM row (re-keyed to it), not a second row; a CRM removal of that row removes
/// the winner from the list, and nothing is refused.
async fn a_merged_away_members_row_follows_the_winner(crm: CrmKind) {
    let app = start(crm, &["leads", "static_lists"]).await;
    let c = client(&app.sim);
    let contact = app
        .crm_insert_contact("ada@example.com", "Ada", "Lovelace")
        .await;
    app.run_cycle().await;
    let loser = app.marketo_by_email("ada@example.com")[0];
    c.add_to_list(NEWSLETTER, &[loser]).await.unwrap();
    tick(&app);
    app.run_cycle().await;
    assert_eq!(rows(&app).await.len(), 1);

    // A lead new to the sync wins the merge: it takes over the loser's contact.
    let winner =
        app.marketo_create(serde_json::json!({"email": "ada.l@example.com", "firstName": "Ada"}));
    app.sim.merge_leads(winner, &[loser]).unwrap();
    assert!(
        in_list(&c, NEWSLETTER, winner).await,
        "the simulator moves it"
    );
    tick(&app);
    app.run_cycle().await;
    tick(&app);
    app.settle(3).await;
    let got = rows(&app).await;
    assert_eq!(got.len(), 1, "one row for the contact: {got:?}");
    assert_eq!(got[0][0].as_deref(), Some(contact.as_str()));
    assert_eq!(got[0][2].as_deref(), Some("1"));
    assert_eq!(
        got[0][3],
        Some(format!("{NEWSLETTER}:{winner}")),
        "re-keyed"
    );

    // Removed from the CRM: Marketo removes the winner, and the schedule goes quiet.
    app.crm_exec(&format!(
        "UPDATE list_members SET is_member = {}, updated_at = {} WHERE contact_id = '{contact}'",
        truth(crm, false),
        now_sql(crm)
    ))
    .await;
    tick(&app);
    app.run_cycle().await;
    assert!(!in_list(&c, NEWSLETTER, winner).await);
    tick(&app);
    assert_eq!(written(&app.settle(3).await), 0);
    assert_eq!(rows(&app).await.len(), 1);
    let open = app.open_errors("static_lists").await;
    assert!(open.is_empty(), "nothing refused: {open:?}");
    app.cleanup().await;
}

#[tokio::test]
async fn sqlite_a_merged_away_members_row_follows_the_winner() {
    a_merged_away_members_row_follows_the_winner(CrmKind::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_merged_away_members_row_follows_the_winner() {
    a_merged_away_members_row_follows_the_winner(CrmKind::Postgres).await;
}

async fn membership_flows_both_ways(crm: CrmKind) {
    let app = start(crm, &["leads", "static_lists"]).await;
    let c = client(&app.sim);
    let contact = app
        .crm_insert_contact("ada@example.com", "Ada", "Lovelace")
        .await;
    app.run_cycle().await;
    let lead = app.marketo_by_email("ada@example.com")[0];
    assert!(rows(&app).await.is_empty());

    // Added in Marketo: one CRM row, once.
    c.add_to_list(NEWSLETTER, &[lead]).await.unwrap();
    tick(&app);
    app.run_cycle().await;
    let got = rows(&app).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0][0].as_deref(), Some(contact.as_str()));
    assert_eq!(got[0][1].as_deref(), Some("Newsletter"));
    assert_eq!(got[0][2].as_deref(), Some("1"));
    assert_eq!(got[0][3], Some(format!("{NEWSLETTER}:{lead}")));
    tick(&app);
    let quiet = app.settle(3).await;
    assert_eq!(written(&quiet), 0, "{quiet:?}");
    assert_eq!(rows(&app).await.len(), 1);
    assert!(in_list(&c, NEWSLETTER, lead).await);

    // Removed in Marketo: the row is soft-deleted (flag false), not duplicated.
    c.remove_from_list(NEWSLETTER, &[lead]).await.unwrap();
    tick(&app);
    app.run_cycle().await;
    let got = rows(&app).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0][2].as_deref(), Some("0"));
    tick(&app);
    assert_eq!(written(&app.settle(3).await), 0);
    assert!(!in_list(&c, NEWSLETTER, lead).await);

    // Back in the list from the CRM: Marketo adds it, and the change does not come back.
    app.crm_exec(&format!(
        "UPDATE list_members SET is_member = {}, updated_at = {} WHERE contact_id = '{contact}'",
        truth(crm, true),
        now_sql(crm)
    ))
    .await;
    tick(&app);
    app.run_cycle().await;
    assert!(in_list(&c, NEWSLETTER, lead).await);
    tick(&app);
    assert_eq!(written(&app.settle(3).await), 0);
    assert_eq!(rows(&app).await[0][2].as_deref(), Some("1"));

    // Removed from the CRM (soft delete): Marketo removes it.
    app.crm_exec(&format!(
        "UPDATE list_members SET is_member = {}, updated_at = {} WHERE contact_id = '{contact}'",
        truth(crm, false),
        now_sql(crm)
    ))
    .await;
    tick(&app);
    app.run_cycle().await;
    assert!(!in_list(&c, NEWSLETTER, lead).await);
    tick(&app);
    assert_eq!(written(&app.settle(3).await), 0);

    // A new CRM row adds the lead to another list; it is linked to that row, not duplicated.
    app.crm_exec(&format!(
        "INSERT INTO list_members (contact_id, list_name, is_member, updated_at) \
         VALUES ('{contact}', 'Event Invitees', {}, {})",
        truth(crm, true),
        now_sql(crm)
    ))
    .await;
    tick(&app);
    app.run_cycle().await;
    assert!(in_list(&c, INVITEES, lead).await);
    tick(&app);
    assert_eq!(written(&app.settle(3).await), 0);
    let got = rows(&app).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1][2].as_deref(), Some("1"));

    // A row whose contact has no Marketo lead waits in the ledger; the cycle goes on.
    app.crm_exec(&format!(
        "INSERT INTO list_members (contact_id, list_name, is_member, updated_at) \
         VALUES ('987654', 'Newsletter', {}, {})",
        truth(crm, true),
        now_sql(crm)
    ))
    .await;
    tick(&app);
    app.try_cycle().await.expect("the cycle goes on");
    let open = app.open_errors("static_lists").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].code, "contact_not_linked");
    app.cleanup().await;
}

#[tokio::test]
async fn sqlite_list_membership_arrives_once_both_ways() {
    membership_flows_both_ways(CrmKind::Sqlite).await;
}

#[tokio::test]
async fn postgres_list_membership_arrives_once_both_ways() {
    membership_flows_both_ways(CrmKind::Postgres).await;
}

#[tokio::test]
async fn mariadb_list_membership_arrives_once_both_ways() {
    membership_flows_both_ways(CrmKind::MariaDb).await;
}

#[tokio::test]
async fn an_unknown_list_name_is_an_error_naming_the_file() {
    let app = TestApp::with(Options {
        objects: vec!["leads".into(), "static_lists".into()],
        edit_mapping: Some(|m| {
            if let Some(lists) = m.file.lists.as_mut() {
                lists.names = vec!["Newsletter".into(), "No Such List".into()];
            }
        }),
        ..Options::on(CrmKind::Sqlite)
    })
    .await;
    let s = app.try_cycle().await.expect("the cycle goes on");
    let w = s
        .warnings
        .iter()
        .find(|w| w.contains("No Such List"))
        .unwrap_or_else(|| panic!("{:?}", s.warnings));
    assert!(w.contains("static_lists.toml"), "{w}");
    app.cleanup().await;
}

#[tokio::test]
async fn an_idle_cycle_pays_nothing_for_lists() {
    let plain = start(CrmKind::Sqlite, &["leads"]).await;
    plain.crm_insert_contact("a@example.com", "A", "A").await;
    plain.settle(3).await;
    tick(&plain);
    let mark = log_mark(&plain.sim);
    plain.run_cycle().await;
    let without = calls_since(&plain.sim, mark);
    plain.cleanup().await;

    let app = start(CrmKind::Sqlite, &["leads", "static_lists"]).await;
    app.crm_insert_contact("a@example.com", "A", "A").await;
    app.settle(3).await;
    tick(&app);
    let mark = log_mark(&app.sim);
    app.run_cycle().await;
    let with = calls_since(&app.sim, mark);
    eprintln!(
        "idle cycle: {} calls with leads only, {} with static lists ({:?} / {:?})",
        without.counted, with.counted, without.by_path, with.by_path
    );
    assert_eq!(
        with.counted, without.counted,
        "{:?} vs {:?}",
        with.by_path, without.by_path
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_list_is_read_whole_once_when_first_selected() {
    use marketo_sync::model::{Fields, fields_hash};
    use marketo_sync::store;
    // The simulator's generated leads 3 and 6 are in the Newsletter list with no activity:
    // only the first read of the list can find them. Lead 6 has no CRM contact: left out.
    let app = TestApp::with(Options {
        objects: vec!["leads".into(), "static_lists".into()],
        sim: marketo_sync::sim::SimConfig {
            leads: 8,
            export_delay: Duration::ZERO,
            import_delay: Duration::ZERO,
            ..marketo_sync::sim::SimConfig::default()
        },
        ..Options::on(CrmKind::Sqlite)
    })
    .await;
    let contact = app.crm_insert_contact("m3@example.com", "M", "M").await;
    app.store
        .commit(store::StepCommit {
            links_upsert: vec![store::Link {
                object: "leads".into(),
                marketo_key: "3".into(),
                crm_key: contact.clone(),
                base_hash: fields_hash(&Fields::new()),
                base: Fields::new(),
                agreed_at: chrono::Utc::now(),
                tombstone: None,
            }],
            ..store::StepCommit::default()
        })
        .await
        .unwrap();
    app.run_cycle().await;
    let got = rows(&app).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0][0].as_deref(), Some(contact.as_str()));
    assert_eq!(got[0][3], Some(format!("{NEWSLETTER}:3")));
    tick(&app);
    let mark = log_mark(&app.sim);
    let quiet = app.run_cycle().await;
    let lists_written = quiet.objects.get("static_lists").map_or(0, |by| {
        by.values().map(|c| c.created + c.updated + c.deleted).sum()
    });
    assert_eq!(lists_written, 0, "{quiet:?}");
    let calls = calls_since(&app.sim, mark);
    assert!(
        !calls.by_path.keys().any(|p| p.contains("/lists/")),
        "{:?}",
        calls.by_path
    );
    assert_eq!(rows(&app).await.len(), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_dry_run_plans_the_membership_change_and_writes_nothing() {
    let app = start(CrmKind::Sqlite, &["leads", "static_lists"]).await;
    let c = client(&app.sim);
    app.crm_insert_contact("a@example.com", "A", "A").await;
    app.run_cycle().await;
    let a = app.marketo_by_email("a@example.com")[0];
    c.add_to_list(NEWSLETTER, &[a]).await.unwrap();
    tick(&app);
    let dry = app.dry_cycle().await;
    assert!(
        dry.plan.iter().any(|p| p.object == "static_lists"),
        "{:?}",
        dry.plan
    );
    assert!(rows(&app).await.is_empty());
    // The dry run left the hand-over in place: the real cycle carries the change.
    app.run_cycle().await;
    assert_eq!(rows(&app).await.len(), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_deleted_crm_row_removes_the_lead_from_the_list() {
    let app = start(CrmKind::Sqlite, &["leads", "static_lists"]).await;
    let c = client(&app.sim);
    let contact = app.crm_insert_contact("a@example.com", "A", "A").await;
    app.run_cycle().await;
    let a = app.marketo_by_email("a@example.com")[0];
    c.add_to_list(NEWSLETTER, &[a]).await.unwrap();
    tick(&app);
    app.run_cycle().await;
    assert_eq!(rows(&app).await.len(), 1);
    // The adapter's own soft delete (the `deleted` column).
    app.crm_exec(&format!(
        "UPDATE list_members SET deleted = 1, updated_at = {} WHERE contact_id = '{contact}'",
        now_sql(CrmKind::Sqlite)
    ))
    .await;
    tick(&app);
    app.run_cycle().await;
    assert!(!in_list(&c, NEWSLETTER, a).await);
    tick(&app);
    let quiet = app.settle(3).await;
    assert_eq!(written(&quiet), 0, "{quiet:?}");
    assert!(app.open_errors("static_lists").await.is_empty());
    app.cleanup().await;
}

/// Marketo refuses one lead of an add-to-list call (its per-lead status `skipped`, 1022 "Object
/// in use", which clears up by itself): that membership is one error-ledger entry, the other
/// leads of the same call are added, and the cycle succeeds. Once the refusal is gone the entry
/// is retried when due, the lead is added and the entry resolved, with no second CRM row.
#[tokio::test]
async fn a_lead_refused_in_an_add_to_list_call_is_one_ledger_entry() {
    let app = start(CrmKind::Sqlite, &["leads", "static_lists"]).await;
    let c = client(&app.sim);
    let names = ["a", "b", "c"];
    let mut contacts = Vec::new();
    for n in names {
        let email = format!("{n}@example.com");
        contacts.push(app.crm_insert_contact(&email, "N", "N").await);
    }
    app.run_cycle().await;
    let leads: Vec<i64> = names
        .iter()
        .map(|n| app.marketo_by_email(&format!("{n}@example.com"))[0])
        .collect();
    let refused = leads[1];
    app.sim
        .refuse_records("id", &refused.to_string(), "1022", "Object in use");
    tick(&app);
    for contact in &contacts {
        app.crm_exec(&format!(
            "INSERT INTO list_members (contact_id, list_name, is_member, updated_at) \
             VALUES ('{contact}', 'Newsletter', 1, {})",
            now_sql(CrmKind::Sqlite)
        ))
        .await;
    }
    tick(&app);
    let mark = log_mark(&app.sim);
    let s = app.try_cycle().await.expect("the cycle goes on");
    let calls = calls_since(&app.sim, mark);
    let adds: u64 = calls
        .by_path
        .iter()
        .filter(|(p, _)| p.starts_with("POST /rest/v1/lists/"))
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(adds, 1, "one add-to-list call: {:?}", calls.by_path);
    assert!(in_list(&c, NEWSLETTER, leads[0]).await);
    assert!(!in_list(&c, NEWSLETTER, refused).await);
    assert!(in_list(&c, NEWSLETTER, leads[2]).await);
    let failed: u64 = s
        .objects
        .get("static_lists")
        .map_or(0, |by| by.values().map(|c| c.failed).sum());
    assert_eq!(failed, 1, "{s:?}");
    let open = app.open_errors("static_lists").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].code, "1022", "{open:?}");
    let key = format!("{NEWSLETTER}:{refused}");
    assert!(
        open[0].record_key == key
            || open[0].record_key == contacts[1]
            || open[0].other_key.as_deref() == Some(key.as_str()),
        "the entry names the refused membership: {open:?}"
    );
    assert!(open[0].next_retry_at.is_some(), "retryable: {open:?}");

    // The refusal clears; once the entry is due, the lead is added and the entry resolved.
    app.sim.clear_record_refusals();
    app.sim.advance_clock(Duration::from_secs(30 * 60));
    app.run_cycle().await;
    assert!(in_list(&c, NEWSLETTER, refused).await);
    assert!(app.open_errors("static_lists").await.is_empty());
    tick(&app);
    assert_eq!(written(&app.settle(3).await), 0);
    let got = rows(&app).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|r| r[2].as_deref() == Some("1")), "{got:?}");
    app.cleanup().await;
}
