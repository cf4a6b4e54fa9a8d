//! Programs and program membership against the Marketo simulator and the demo CRM (SQLite,
//! PostgreSQL and MariaDB): programs arrive as campaigns, a membership change arrives once, a
//! status flows both ways through the status map, an unknown status is one ledger entry, and
//! what programs and membership add to an idle cycle.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{CrmKind, Options, TestApp, calls_since, log_mark, written};
use marketo_sync::marketo::{Client, ClientConfig};
use marketo_sync::model::{Fields, fields_hash};
use marketo_sync::sim::SimHandle;
use marketo_sync::store;

/// The simulator's webinar program (channel Webinar) and its nurture program.
const WEBINAR: i64 = 1107;
const NURTURE: i64 = 1108;

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

async fn rows(app: &TestApp, sql: &str) -> Vec<Vec<Option<String>>> {
    app.user.fetch("test", sql.to_owned(), &[]).await.unwrap()
}

/// Returns (campaign id, status, contact id, marketo id) of every live member row.
async fn members(app: &TestApp) -> Vec<Vec<Option<String>>> {
    rows(
        app,
        "SELECT TRIM(CAST(campaign_id AS CHAR(20))), status, TRIM(CAST(contact_id AS CHAR(20))), \
         marketo_id FROM campaign_members ORDER BY id",
    )
    .await
}

/// Returns the CRM campaign row id of a program.
async fn campaign(app: &TestApp, program: i64) -> String {
    let found = rows(
        app,
        &format!("SELECT TRIM(CAST(id AS CHAR(20))) FROM campaigns WHERE marketo_id = '{program}'"),
    )
    .await;
    found[0][0].clone().unwrap()
}

/// Returns a lead's status in a program, as Marketo has it.
async fn marketo_status(c: &Client, program: i64, lead: i64) -> Option<String> {
    let page = c
        .get_program_members(program, "leadId", &[lead.to_string()], None, &[], None)
        .await
        .unwrap();
    page.records
        .first()
        .and_then(|r| r.get("statusName"))
        .and_then(|s| s.as_str())
        .map(str::to_owned)
}

/// Advances both clocks past the CRM change feed's overlap.
fn tick(app: &TestApp) {
    app.sim.advance_clock(Duration::from_secs(60));
}

async fn membership_flows_both_ways(crm: CrmKind) {
    let app = start(crm, &["leads", "programs", "program_members"]).await;
    let c = client(&app.sim);
    let contact = app
        .crm_insert_contact("ada@example.com", "Ada", "Lovelace")
        .await;
    app.run_cycle().await;
    let lead = app.marketo_by_email("ada@example.com")[0];
    // Both programs arrived as campaigns, once.
    let names = rows(
        &app,
        "SELECT name, channel, tags FROM campaigns ORDER BY marketo_id",
    )
    .await;
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0][0].as_deref(), Some("Spring Webinar"));
    assert_eq!(names[0][1].as_deref(), Some("Webinar"));
    let webinar = campaign(&app, WEBINAR).await;

    // A Marketo status change arrives once, with the member's fields.
    c.change_lead_program_status(WEBINAR, "Registered", &[lead])
        .await
        .unwrap();
    tick(&app);
    app.run_cycle().await;
    let got = members(&app).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0][0].as_deref(), Some(webinar.as_str()));
    assert_eq!(got[0][1].as_deref(), Some("Registered"));
    assert_eq!(got[0][2].as_deref(), Some(contact.as_str()));
    assert_eq!(got[0][3], Some(format!("{WEBINAR}:{lead}")));
    let quiet = app.run_cycle().await;
    assert_eq!(written(&quiet), 0, "{quiet:?}");
    assert_eq!(members(&app).await.len(), 1);

    // Marketo's Attended is the CRM's Responded on a Webinar channel program.
    c.change_lead_program_status(WEBINAR, "Attended", &[lead])
        .await
        .unwrap();
    tick(&app);
    app.run_cycle().await;
    assert_eq!(members(&app).await[0][1].as_deref(), Some("Responded"));

    // A CRM status change goes to Marketo, and does not come back.
    tick(&app);
    app.crm_exec(&format!(
        "UPDATE campaign_members SET status = 'Influenced', updated_at = {} WHERE contact_id = '{contact}'",
        now_sql(crm)
    ))
    .await;
    tick(&app);
    app.run_cycle().await;
    assert_eq!(
        marketo_status(&c, WEBINAR, lead).await.as_deref(),
        Some("Influenced")
    );
    tick(&app);
    let quiet = app.settle(3).await;
    assert_eq!(written(&quiet), 0);
    assert_eq!(members(&app).await[0][1].as_deref(), Some("Influenced"));

    // A CRM row for a lead not yet a member makes it one.
    let nurture = campaign(&app, NURTURE).await;
    app.crm_exec(&format!(
        "INSERT INTO campaign_members (campaign_id, contact_id, status, updated_at) \
         VALUES ('{nurture}', '{contact}', 'Member', {})",
        now_sql(crm)
    ))
    .await;
    tick(&app);
    app.run_cycle().await;
    assert_eq!(
        marketo_status(&c, NURTURE, lead).await.as_deref(),
        Some("Member")
    );
    tick(&app);
    app.settle(3).await;
    assert_eq!(members(&app).await.len(), 2);

    // An unknown CRM status is one ledger entry, not a failed cycle; Marketo keeps its status.
    app.crm_exec(&format!(
        "UPDATE campaign_members SET status = 'Bogus', updated_at = {} WHERE campaign_id = '{webinar}'",
        now_sql(crm)
    ))
    .await;
    tick(&app);
    app.try_cycle().await.expect("the cycle goes on");
    let open = app.open_errors("program_members").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].code, "unknown_status");
    assert_eq!(
        marketo_status(&c, WEBINAR, lead).await.as_deref(),
        Some("Influenced")
    );
    // Put back to the agreed status, the row is readable again and its entry resolved.
    app.crm_exec(&format!(
        "UPDATE campaign_members SET status = 'Influenced', updated_at = {} WHERE campaign_id = '{webinar}'",
        now_sql(crm)
    ))
    .await;
    tick(&app);
    app.run_cycle().await;
    assert!(app.open_errors("program_members").await.is_empty());
    app.cleanup().await;
}

/// Returns the records one object wrote in a cycle.
fn written_of(s: &marketo_sync::engine::CycleSummary, object: &str) -> u64 {
    s.objects.get(object).map_or(0, |by| {
        by.values().map(|c| c.created + c.updated + c.deleted).sum()
    })
}

fn now_sql(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Sqlite => "strftime('%Y-%m-%d %H:%M:%f','now')",
        CrmKind::Postgres => "CURRENT_TIMESTAMP",
        CrmKind::MariaDb => "CURRENT_TIMESTAMP(6)",
    }
}

/// Marketo merges a member lead into a new lead, which takes over the loser's contact (seed 202
/// of the marketing convergence schedule): the winner inherits the membership, and pairs with
/// the loser's CRM row (re-keyed to it) rather than creating a second row for the contact; a
/// later CRM status change of that row goes to the winner, and nothing is refused.
async fn a_merged_away_members_row_follows_the_winner(crm: CrmKind) {
    let app = start(crm, &["leads", "programs", "program_members"]).await;
    let c = client(&app.sim);
    let contact = app
        .crm_insert_contact("ada@example.com", "Ada", "Lovelace")
        .await;
    app.run_cycle().await;
    let loser = app.marketo_by_email("ada@example.com")[0];
    c.change_lead_program_status(WEBINAR, "Registered", &[loser])
        .await
        .unwrap();
    tick(&app);
    app.run_cycle().await;
    let before = members(&app).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0][3], Some(format!("{WEBINAR}:{loser}")));

    // A lead new to the sync wins the merge: it takes over the loser's contact.
    let winner =
        app.marketo_create(serde_json::json!({"email": "ada.l@example.com", "firstName": "Ada"}));
    app.sim.merge_leads(winner, &[loser]).unwrap();
    assert_eq!(
        marketo_status(&c, WEBINAR, winner).await.as_deref(),
        Some("Registered"),
        "the simulator moves the membership to the winner"
    );
    tick(&app);
    app.run_cycle().await;
    tick(&app);
    app.settle(3).await;
    let got = members(&app).await;
    assert_eq!(got.len(), 1, "one row for the contact: {got:?}");
    assert_eq!(got[0][1].as_deref(), Some("Registered"));
    assert_eq!(got[0][2].as_deref(), Some(contact.as_str()));
    assert_eq!(got[0][3], Some(format!("{WEBINAR}:{winner}")), "re-keyed");
    let link = app
        .store
        .links_by_marketo_keys("program_members", &[format!("{WEBINAR}:{loser}")])
        .await
        .unwrap();
    assert!(link.is_empty(), "the loser's link is gone: {link:?}");

    // A CRM status change of the row is written for the winner, and the schedule goes quiet.
    app.crm_exec(&format!(
        "UPDATE campaign_members SET status = 'Influenced', updated_at = {} WHERE contact_id = '{contact}'",
        now_sql(crm)
    ))
    .await;
    tick(&app);
    app.run_cycle().await;
    assert_eq!(
        marketo_status(&c, WEBINAR, winner).await.as_deref(),
        Some("Influenced")
    );
    tick(&app);
    let quiet = app.settle(3).await;
    assert_eq!(written(&quiet), 0, "{quiet:?}");
    let got = members(&app).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0][1].as_deref(), Some("Influenced"));
    let open = app.open_errors("program_members").await;
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

#[tokio::test]
async fn sqlite_membership_arrives_once_and_statuses_map_both_ways() {
    membership_flows_both_ways(CrmKind::Sqlite).await;
}

#[tokio::test]
async fn postgres_membership_arrives_once_and_statuses_map_both_ways() {
    membership_flows_both_ways(CrmKind::Postgres).await;
}

#[tokio::test]
async fn mariadb_membership_arrives_once_and_statuses_map_both_ways() {
    membership_flows_both_ways(CrmKind::MariaDb).await;
}

#[tokio::test]
async fn an_unmapped_marketo_status_is_a_ledger_entry_and_the_rest_arrives() {
    let app = start(CrmKind::Sqlite, &["leads", "programs", "program_members"]).await;
    let c = client(&app.sim);
    app.crm_insert_contact("a@example.com", "A", "A").await;
    app.crm_insert_contact("b@example.com", "B", "B").await;
    app.run_cycle().await;
    let a = app.marketo_by_email("a@example.com")[0];
    let b = app.marketo_by_email("b@example.com")[0];
    // "Not in Program" has no entry in the status map.
    c.change_lead_program_status(WEBINAR, "Not in Program", &[a])
        .await
        .unwrap();
    c.change_lead_program_status(WEBINAR, "Invited", &[b])
        .await
        .unwrap();
    tick(&app);
    app.try_cycle().await.expect("the cycle goes on");
    let open = app.open_errors("program_members").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].code, "unknown_status");
    assert_eq!(open[0].record_key, format!("{WEBINAR}:{a}"));
    let got = members(&app).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0][1].as_deref(), Some("Invited"));
    // Once the member moves to a mapped status it arrives and its entry is resolved.
    c.change_lead_program_status(WEBINAR, "Registered", &[a])
        .await
        .unwrap();
    tick(&app);
    app.run_cycle().await;
    assert!(app.open_errors("program_members").await.is_empty());
    assert_eq!(members(&app).await.len(), 2);
    app.cleanup().await;
}

#[tokio::test]
async fn a_program_is_read_whole_once_when_first_linked() {
    // The simulator's generated leads 4 and 8 are members of the webinar program, with no
    // status activity: only the first read of the program can find them.
    let app = TestApp::with(Options {
        objects: vec!["leads".into(), "programs".into(), "program_members".into()],
        sim: marketo_sync::sim::SimConfig {
            leads: 8,
            export_delay: Duration::ZERO,
            import_delay: Duration::ZERO,
            ..marketo_sync::sim::SimConfig::default()
        },
        ..Options::on(CrmKind::Sqlite)
    })
    .await;
    let mut links = Vec::new();
    for lead in [4_i64, 8] {
        let contact = app
            .crm_insert_contact(&format!("m{lead}@example.com"), "M", "M")
            .await;
        links.push(store::Link {
            object: "leads".into(),
            marketo_key: lead.to_string(),
            crm_key: contact,
            base_hash: fields_hash(&Fields::new()),
            base: Fields::new(),
            agreed_at: chrono::Utc::now(),
            tombstone: None,
        });
    }
    app.store
        .commit(store::StepCommit {
            links_upsert: links,
            ..store::StepCommit::default()
        })
        .await
        .unwrap();
    app.run_cycle().await;
    let got = members(&app).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|r| r[1].as_deref() == Some("Member")));
    tick(&app);
    let mark = log_mark(&app.sim);
    let quiet = app.run_cycle().await;
    assert!(
        !quiet.objects.contains_key("program_members")
            || written_of(&quiet, "program_members") == 0,
        "{quiet:?}"
    );
    let calls = calls_since(&app.sim, mark);
    assert!(
        !calls.by_path.keys().any(|p| p.contains("/members.json")),
        "{:?}",
        calls.by_path
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_idle_cycle_pays_nothing_for_membership_and_programs_are_browsed_hourly() {
    let plain = start(CrmKind::Sqlite, &["leads"]).await;
    plain.crm_insert_contact("a@example.com", "A", "A").await;
    plain.settle(3).await;
    tick(&plain);
    let mark = log_mark(&plain.sim);
    plain.run_cycle().await;
    let without = calls_since(&plain.sim, mark);
    plain.cleanup().await;

    let app = start(CrmKind::Sqlite, &["leads", "programs", "program_members"]).await;
    app.crm_insert_contact("a@example.com", "A", "A").await;
    app.settle(3).await;
    tick(&app);
    let mark = log_mark(&app.sim);
    app.run_cycle().await;
    let with = calls_since(&app.sim, mark);
    eprintln!(
        "idle cycle: {} calls with leads only, {} with programs and membership ({:?} / {:?})",
        without.counted, with.counted, without.by_path, with.by_path
    );
    // Membership rides on the lead step's activity read.
    assert_eq!(
        with.counted, without.counted,
        "{:?} vs {:?}",
        with.by_path, without.by_path
    );
    // An hour on, the programs are browsed (one call) and the member describe is read again.
    app.sim.advance_clock(Duration::from_secs(3600));
    let mark = log_mark(&app.sim);
    app.run_cycle().await;
    let hourly = calls_since(&app.sim, mark);
    eprintln!(
        "hourly cycle: {} calls ({:?})",
        hourly.counted, hourly.by_path
    );
    assert_eq!(
        hourly.by_path.get("GET /rest/asset/v1/programs.json"),
        Some(&1)
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_dry_run_plans_the_membership_change_and_writes_nothing() {
    let app = start(CrmKind::Sqlite, &["leads", "programs", "program_members"]).await;
    let c = client(&app.sim);
    app.crm_insert_contact("a@example.com", "A", "A").await;
    app.run_cycle().await;
    let a = app.marketo_by_email("a@example.com")[0];
    c.change_lead_program_status(WEBINAR, "Registered", &[a])
        .await
        .unwrap();
    tick(&app);
    let dry = app.dry_cycle().await;
    assert!(
        dry.plan.iter().any(|p| p.object == "program_members"),
        "{:?}",
        dry.plan
    );
    assert!(members(&app).await.is_empty());
    // The dry run left the hand-over in place: the real cycle carries the change.
    app.run_cycle().await;
    assert_eq!(members(&app).await.len(), 1);
    app.cleanup().await;
}
