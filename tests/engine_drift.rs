//! CRM schema drift while the engine runs (no restart): a mapped column dropped, renamed or
//! retyped disables that field only, with one warning and the `mksync_disabled_fields` gauge,
//! and the field syncs again when the column is back; a structural column gone fails only its
//! object's step.

#[path = "support/harness.rs"]
mod harness;

use harness::{CrmKind, Options, TestApp, text};
use marketo_sync::crm::sql::dialect::Dialect;
use marketo_sync::engine::CycleSummary;
use marketo_sync::store::Direction;
use serde_json::json;

/// The gauge is process-wide: the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Returns the warnings of a summary that name `needle`.
fn naming<'a>(s: &'a CycleSummary, needle: &str) -> Vec<&'a String> {
    s.warnings.iter().filter(|w| w.contains(needle)).collect()
}

/// Returns the value of `mksync_disabled_fields{object="leads",field}` on /metrics, if any.
/// Takes the file's lock and installs the metrics recorder before the test's first cycle: a
/// gauge set while no recorder is installed is lost, whichever test of the file runs first.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().await;
    marketo_sync::telemetry::install_metrics_recorder();
    guard
}

fn gauge(field: &str) -> Option<f64> {
    let text = marketo_sync::telemetry::install_metrics_recorder().render();
    text.lines()
        .filter(|l| l.starts_with("mksync_disabled_fields{"))
        .find(|l| l.contains("object=\"leads\"") && l.contains(&format!("field=\"{field}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn column_type(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "VARCHAR(128)",
        _ => "VARCHAR(128) NULL",
    }
}

/// Two linked leads and one more per cycle; returns (lead synced from Marketo, its contact,
/// contact synced from the CRM, its lead).
async fn two_linked(app: &TestApp, tag: &str) -> (i64, String, String, i64) {
    let email_a = format!("a-{tag}@example.com");
    let email_b = format!("b-{tag}@example.com");
    let lead = app.marketo_create(json!({
        "email": email_a, "firstName": "Ada", "lastName": "A", "title": "Before"
    }));
    let cid_b = app.crm_insert_contact(&email_b, "Bea", "B").await;
    app.settle(4).await;
    let cid_a = app.crm_by_email(&email_a).await[0].id.clone();
    let lead_b = app.marketo_by_email(&email_b)[0];
    (lead, cid_a, cid_b, lead_b)
}

/// Drops (or renames away) `title` while running, checks that everything else syncs both ways,
/// then brings the column back and checks that `title` syncs again.
async fn a_mapped_column_goes_away_and_comes_back(crm: CrmKind, rename: bool) {
    let _serial = serial().await;
    let app = TestApp::with(Options::on(crm)).await;
    let d = app.user.dialect();
    let (lead, cid_a, cid_b, lead_b) = two_linked(&app, if rename { "ren" } else { "drop" }).await;
    assert_eq!(
        gauge("title").unwrap_or(0.0),
        0.0,
        "title syncs before the drift"
    );

    if rename {
        app.crm_exec("ALTER TABLE contacts RENAME COLUMN title TO job_title")
            .await;
    } else {
        app.crm_exec("ALTER TABLE contacts DROP COLUMN title").await;
    }
    app.marketo_update(lead, json!({"title": "After", "firstName": "Still"}));
    app.crm_update_contact(&cid_b, "last_name", "Synced").await;
    let new_lead = app.marketo_create(json!({"email": "new-drift@example.com", "firstName": "Nu"}));
    let s = app
        .try_cycle()
        .await
        .expect("the cycle after the drift succeeds");
    assert_eq!(
        naming(&s, "`title`").len(),
        1,
        "one warning names the field: {:?}",
        s.warnings
    );
    assert!(
        naming(&s, "`title`")[0].contains("contacts"),
        "{:?}",
        s.warnings
    );
    assert_eq!(
        gauge("title"),
        Some(1.0),
        "the gauge shows the disabled field"
    );
    // Other fields of the same lead, other leads, both directions.
    let c = app.crm_contact(&cid_a).await.expect("contact a");
    assert_eq!(text(&c.fields, "first_name").as_deref(), Some("Still"));
    assert!(
        !c.fields.contains_key("title"),
        "the adapter reads the new columns"
    );
    assert_eq!(
        app.marketo_lead(lead_b).unwrap()["lastName"],
        json!("Synced"),
        "CRM -> Marketo keeps syncing"
    );
    assert_eq!(app.crm_by_email("new-drift@example.com").await.len(), 1);
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].failed,
        0,
        "{s:?}"
    );
    assert_eq!(
        app.marketo_lead(lead).unwrap()["title"],
        json!("After"),
        "Marketo keeps its value"
    );
    assert!(new_lead > 0);

    // A second cycle: still one warning, still disabled, nothing failing.
    app.crm_update_contact(&cid_b, "first_name", "Again").await;
    let s = app.try_cycle().await.expect("second cycle");
    assert_eq!(naming(&s, "`title`").len(), 1, "{:?}", s.warnings);
    assert_eq!(gauge("title"), Some(1.0));
    assert_eq!(
        app.marketo_lead(lead_b).unwrap()["firstName"],
        json!("Again")
    );

    // The column comes back (same type): the field syncs again, both ways.
    if rename {
        app.crm_exec("ALTER TABLE contacts RENAME COLUMN job_title TO title")
            .await;
    } else {
        app.crm_exec(&format!(
            "ALTER TABLE contacts ADD COLUMN title {}",
            column_type(d)
        ))
        .await;
    }
    app.sim.advance_clock(std::time::Duration::from_secs(2));
    app.marketo_update(lead, json!({"title": "Back"}));
    let s = app
        .try_cycle()
        .await
        .expect("cycle after the column is back");
    assert!(naming(&s, "`title`").is_empty(), "{:?}", s.warnings);
    assert_eq!(gauge("title"), Some(0.0), "the gauge is cleared");
    let c = app.crm_contact(&cid_a).await.unwrap();
    assert_eq!(text(&c.fields, "title").as_deref(), Some("Back"));
    app.crm_update_contact(&cid_b, "title", "Crm Title").await;
    app.run_cycle().await;
    assert_eq!(
        app.marketo_lead(lead_b).unwrap()["title"],
        json!("Crm Title")
    );
    app.cleanup().await;
}

/// Retypes `title` (text to integer) while running: disabled like a dropped column; retyped
/// back, it syncs again.
async fn a_mapped_column_retyped_into_what_the_mapping_cannot_carry(crm: CrmKind) {
    let _serial = serial().await;
    let app = TestApp::with(Options::on(crm)).await;
    let (lead, cid_a, cid_b, lead_b) = two_linked(&app, "retype").await;
    let (to_int, back) = match app.user.dialect() {
        Dialect::Postgres => (
            "ALTER TABLE contacts ALTER COLUMN title TYPE integer USING NULL",
            "ALTER TABLE contacts ALTER COLUMN title TYPE varchar(128)",
        ),
        _ => (
            "ALTER TABLE contacts MODIFY COLUMN title INT NULL",
            "ALTER TABLE contacts MODIFY COLUMN title VARCHAR(128) NULL",
        ),
    };
    app.crm_exec("UPDATE contacts SET title = NULL").await;
    app.crm_exec(to_int).await;
    app.marketo_update(lead, json!({"title": "Not a number", "firstName": "Typed"}));
    app.crm_update_contact(&cid_b, "last_name", "Still").await;
    let s = app.try_cycle().await.expect("the cycle after the retype");
    assert_eq!(naming(&s, "`title`").len(), 1, "{:?}", s.warnings);
    assert!(
        naming(&s, "`title`")[0].contains("changed type"),
        "{:?}",
        s.warnings
    );
    assert_eq!(gauge("title"), Some(1.0));
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].failed,
        0,
        "no record is refused for the retyped column: {s:?}"
    );
    let c = app.crm_contact(&cid_a).await.unwrap();
    assert_eq!(text(&c.fields, "first_name").as_deref(), Some("Typed"));
    assert_eq!(
        text(&c.fields, "title"),
        None,
        "nothing written to the retyped column"
    );
    assert_eq!(
        app.marketo_lead(lead_b).unwrap()["lastName"],
        json!("Still")
    );
    // Still disabled on the next cycle (the type it synced with is remembered).
    let s = app.try_cycle().await.expect("second cycle");
    assert_eq!(naming(&s, "`title`").len(), 1, "{:?}", s.warnings);

    app.crm_exec(back).await;
    app.sim.advance_clock(std::time::Duration::from_secs(2));
    app.marketo_update(lead, json!({"title": "Text Again"}));
    let s = app.try_cycle().await.expect("cycle after the retype back");
    assert!(naming(&s, "`title`").is_empty(), "{:?}", s.warnings);
    assert_eq!(gauge("title"), Some(0.0));
    let c = app.crm_contact(&cid_a).await.unwrap();
    assert_eq!(text(&c.fields, "title").as_deref(), Some("Text Again"));
    app.cleanup().await;
}

/// The modified-time column of contacts goes away: the lead step fails with a warning naming
/// it, companies keep syncing, and leads sync again once it is back.
async fn a_structural_column_gone_fails_only_its_step(crm: CrmKind) {
    let _serial = serial().await;
    let app = TestApp::with(Options {
        objects: vec!["companies".into(), "leads".into()],
        ..Options::on(crm)
    })
    .await;
    app.settle(4).await;
    app.crm_exec("ALTER TABLE contacts RENAME COLUMN updated_at TO changed_on")
        .await;
    let now = match app.user.dialect() {
        Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f','now')",
        Dialect::Postgres => "CURRENT_TIMESTAMP",
        Dialect::MySql => "CURRENT_TIMESTAMP(6)",
    };
    app.crm_exec(&format!(
        "INSERT INTO accounts (name, updated_at) VALUES ('DriftCo', {now})"
    ))
    .await;
    let lead = app.marketo_create(json!({"email": "held@example.com", "firstName": "Held"}));
    let s = app
        .try_cycle()
        .await
        .expect("the cycle goes on without the lead step");
    let failed = naming(&s, "step `leads` failed");
    assert_eq!(failed.len(), 1, "{:?}", s.warnings);
    assert!(
        failed[0].contains("updated_at"),
        "names the column: {failed:?}"
    );
    let cast = if app.user.dialect() == Dialect::MySql {
        "CHAR"
    } else {
        "TEXT"
    };
    let acct = app
        .user
        .fetch(
            "account id",
            format!("SELECT CAST(id AS {cast}) FROM accounts WHERE name = 'DriftCo'"),
            &[],
        )
        .await
        .unwrap()[0][0]
        .clone()
        .unwrap();
    assert_eq!(
        app.sim.company(&acct).expect("the company step ran")["company"],
        json!("DriftCo")
    );
    // Read as a CRM user: the adapter's facts of contacts stay as they were until it describes
    // the table successfully again.
    let held = app
        .user
        .fetch(
            "held contacts",
            format!("SELECT CAST(id AS {cast}) FROM contacts WHERE email = 'held@example.com'"),
            &[],
        )
        .await
        .unwrap();
    assert!(held.is_empty(), "the lead step wrote nothing: {held:?}");

    app.crm_exec("ALTER TABLE contacts RENAME COLUMN changed_on TO updated_at")
        .await;
    let s = app.try_cycle().await.expect("leads sync again");
    assert!(
        naming(&s, "step `leads` failed").is_empty(),
        "{:?}",
        s.warnings
    );
    let found = app.crm_by_email("held@example.com").await;
    assert_eq!(found.len(), 1);
    assert_eq!(text(&found[0].fields, "marketo_id"), Some(lead.to_string()));

    // The other way round: the accounts' modified column goes; leads keep syncing.
    app.crm_exec("ALTER TABLE accounts RENAME COLUMN updated_at TO changed_on")
        .await;
    app.marketo_create(json!({"email": "later@example.com", "firstName": "Later"}));
    let s = app
        .try_cycle()
        .await
        .expect("the cycle goes on without companies");
    let failed = naming(&s, "step `companies` cannot run");
    assert_eq!(failed.len(), 1, "{:?}", s.warnings);
    assert!(
        failed[0].contains("updated_at"),
        "names the column: {failed:?}"
    );
    assert!(
        naming(&s, "step `leads` failed").is_empty(),
        "{:?}",
        s.warnings
    );
    assert_eq!(app.crm_by_email("later@example.com").await.len(), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn sqlite_dropped_column() {
    a_mapped_column_goes_away_and_comes_back(CrmKind::Sqlite, false).await;
}

#[tokio::test]
async fn sqlite_renamed_column() {
    a_mapped_column_goes_away_and_comes_back(CrmKind::Sqlite, true).await;
}

#[tokio::test]
async fn sqlite_structural_column() {
    a_structural_column_gone_fails_only_its_step(CrmKind::Sqlite).await;
}

#[tokio::test]
async fn postgres_dropped_column() {
    a_mapped_column_goes_away_and_comes_back(CrmKind::Postgres, false).await;
}

#[tokio::test]
async fn postgres_renamed_column() {
    a_mapped_column_goes_away_and_comes_back(CrmKind::Postgres, true).await;
}

#[tokio::test]
async fn postgres_retyped_column() {
    a_mapped_column_retyped_into_what_the_mapping_cannot_carry(CrmKind::Postgres).await;
}

#[tokio::test]
async fn postgres_structural_column() {
    a_structural_column_gone_fails_only_its_step(CrmKind::Postgres).await;
}

#[tokio::test]
async fn mariadb_dropped_column() {
    a_mapped_column_goes_away_and_comes_back(CrmKind::MariaDb, false).await;
}

#[tokio::test]
async fn mariadb_retyped_column() {
    a_mapped_column_retyped_into_what_the_mapping_cannot_carry(CrmKind::MariaDb).await;
}

/// A cycle describes the lead every time, but reuses a company's and an opportunity's Describe
/// for `sync.marketo_schema_ttl_secs` (an hour by default): an idle day reads them 24 times, not
/// 288.
#[tokio::test]
async fn marketo_company_and_opportunity_describes_are_reused_for_an_hour() {
    let app = TestApp::with(Options {
        objects: vec!["leads".into(), "companies".into(), "opportunities".into()],
        ..Options::default()
    })
    .await;
    app.settle(3).await;
    let describes = |mark: u64| {
        let t = app.calls_since(mark);
        let n = |p: &str| t.by_path.get(p).copied().unwrap_or(0);
        (
            n("GET /rest/v1/leads/describe2.json"),
            n("GET /rest/v1/companies/describe.json"),
            n("GET /rest/v1/opportunities/describe.json"),
        )
    };
    let mark = app.log_mark();
    for _ in 0..3 {
        app.clock.advance(std::time::Duration::from_secs(300));
        app.run_cycle().await;
    }
    assert_eq!(describes(mark), (3, 0, 0), "within the hour");
    let mark = app.log_mark();
    app.clock.advance(std::time::Duration::from_secs(3600));
    app.run_cycle().await;
    assert_eq!(describes(mark), (1, 1, 1), "after the hour");
    app.cleanup().await;
}
