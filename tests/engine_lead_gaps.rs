//! End-to-end tests of the lead sync's company routing, deletion flag and lead conversion: the
//! simulator, the demo CRM (SQLite; the conversion flows also on PostgreSQL and MariaDB), a state
//! store and the engine.

#[path = "support/harness.rs"]
mod harness;

use harness::{CrmKind, Options, StoreKind, TestApp, text};
use marketo_sync::config::{DeletePolicy, FieldMapping, LoadedMapping};
use marketo_sync::crm::sql::dialect::Dialect;
use marketo_sync::model::Value;
use marketo_sync::store::Direction;
use serde_json::json;

fn map_company(m: &mut LoadedMapping) {
    if m.object == "leads" {
        m.file.fields.push(FieldMapping {
            marketo: Some("company".into()),
            crm: Some("company".into()),
            ..FieldMapping::default()
        });
    }
}

fn failed(s: &marketo_sync::engine::CycleSummary) -> u64 {
    s.objects
        .values()
        .flat_map(|d| d.values())
        .map(|c| c.failed)
        .sum()
}

/// A test app whose lead mapping syncs `company`, with two synced contacts: `linked`, whose lead is linked to Marketo company
/// `acct-1` ("Acme"), and `solo`, whose lead has no company ("Solo Ltd").
struct Contacts {
    linked: String,
    solo: String,
    lead: i64,
    solo_lead: i64,
}

async fn linked_and_solo() -> (TestApp, Contacts) {
    let app = TestApp::with(Options {
        edit_mapping: Some(map_company),
        ..Options::default()
    })
    .await;
    let acme = json!({"externalCompanyId": "acct-1", "company": "Acme"});
    app.sim
        .upsert_company(acme.as_object().unwrap().clone())
        .unwrap();
    let linked = app
        .crm_insert_contact("linked@example.com", "Lin", "Ked")
        .await;
    app.crm_update_contact(&linked, "company", "Acme").await;
    let solo = app.crm_insert_contact("solo@example.com", "So", "Lo").await;
    app.crm_update_contact(&solo, "company", "Solo Ltd").await;
    app.settle(4).await;
    let lead = app.marketo_by_email("linked@example.com")[0];
    let solo_lead = app.marketo_by_email("solo@example.com")[0];
    assert_eq!(
        app.marketo_lead(solo_lead).unwrap()["company"],
        json!("Solo Ltd")
    );
    // The lead is linked to the company in Marketo.
    app.marketo_update(lead, json!({"externalCompanyId": "acct-1"}));
    app.settle(4).await;
    assert_eq!(app.marketo_lead(lead).unwrap()["company"], json!("Acme"));
    let contacts = Contacts {
        linked,
        solo,
        lead,
        solo_lead,
    };
    (app, contacts)
}

#[tokio::test]
async fn company_fields_of_a_linked_lead_go_to_the_company() {
    let (app, contacts) = linked_and_solo().await;
    let Contacts {
        linked,
        solo,
        lead,
        solo_lead,
    } = contacts;

    let from = app.sim.request_log().len();
    app.crm_update_contact(&linked, "company", "Acme Corp")
        .await;
    app.crm_update_contact(&solo, "company", "Solo Two").await;
    let s = app.run_cycle().await;
    assert_eq!(failed(&s), 0, "{s:?}");
    assert_eq!(
        s.objects["leads"][&Direction::CrmToMarketo].updated,
        2,
        "{s:?}"
    );
    // The linked lead's company field arrived on the company, not through Sync Leads.
    assert_eq!(
        app.sim.company("acct-1").unwrap()["company"],
        json!("Acme Corp")
    );
    assert_eq!(
        app.marketo_lead(lead).unwrap()["company"],
        json!("Acme Corp")
    );
    let log = app.sim.request_log();
    assert!(
        log[from..]
            .iter()
            .all(|e| e.code.as_deref() != Some("1021")),
        "no call was refused with 1021"
    );
    assert!(
        log[from..]
            .iter()
            .any(|e| e.path.ends_with("/companies.json") && e.method == "POST"),
        "the company was written through Sync Companies"
    );
    // The unlinked lead's company field went through Sync Leads as before.
    assert_eq!(
        app.marketo_lead(solo_lead).unwrap()["company"],
        json!("Solo Two")
    );
    let errors = app
        .store
        .list_errors(&marketo_sync::store::ErrorFilter::default())
        .await
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    // Nothing ping-pongs back.
    app.settle(3).await;
    let c = app.crm_contact(&linked).await.unwrap();
    assert_eq!(text(&c.fields, "company").as_deref(), Some("Acme Corp"));
    app.cleanup().await;
}

/// A dry run plans the lead writes as the cycle makes them: a linked lead's company-type field
/// as an update of the lead whose values go to its company (said in the plan row), an unlinked
/// lead's through the lead, and a Marketo-only lead's new CRM row, followed by its new CRM id
/// written back into the lead. Nothing is written.
#[tokio::test]
async fn a_dry_run_plans_lead_writes_with_their_company_and_the_crm_id_write_back() {
    use marketo_sync::engine::summary::PlannedAction;
    let (app, contacts) = linked_and_solo().await;
    let Contacts {
        linked,
        solo,
        lead,
        solo_lead,
    } = contacts;

    app.crm_update_contact(&linked, "company", "Acme Corp")
        .await;
    app.crm_update_contact(&solo, "company", "Solo Two").await;
    let new_lead = app.marketo_create(json!({"email": "new@example.com", "firstName": "Nu"}));
    let from = app.sim.request_log().len();
    let s = app.dry_cycle().await;
    let to_marketo = |source: &str| {
        s.plan
            .iter()
            .find(|c| {
                c.object == "leads"
                    && c.direction == Direction::CrmToMarketo
                    && c.source_key.as_deref() == Some(source)
            })
            .unwrap_or_else(|| panic!("no plan row from contact {source}: {:?}", s.plan))
    };
    let company_value = |c: &marketo_sync::engine::summary::PlannedChange| {
        c.changes
            .iter()
            .find(|f| f.field == "company")
            .map(|f| f.after.clone())
    };
    let row = to_marketo(&linked);
    assert_eq!(row.action, PlannedAction::Update);
    assert_eq!(row.target_key.as_deref(), Some(lead.to_string().as_str()));
    assert_eq!(
        row.note.as_deref(),
        Some("company fields go to company acct-1")
    );
    assert_eq!(company_value(row), Some(json!("Acme Corp")));
    let row = to_marketo(&solo);
    assert_eq!(
        row.target_key.as_deref(),
        Some(solo_lead.to_string().as_str())
    );
    assert_eq!(
        row.note, None,
        "an unlinked lead's company field goes through the lead"
    );
    assert_eq!(company_value(row), Some(json!("Solo Two")));
    let created = s
        .plan
        .iter()
        .find(|c| {
            c.direction == Direction::MarketoToCrm
                && c.source_key.as_deref() == Some(new_lead.to_string().as_str())
        })
        .unwrap_or_else(|| panic!("no plan row of lead {new_lead}: {:?}", s.plan));
    assert_eq!(created.action, PlannedAction::Create);
    let note = created.note.as_deref().unwrap_or_default();
    assert!(
        note.starts_with("then the new CRM id goes into the lead's "),
        "{note}"
    );
    // Nothing was written: no write call, the company and the CRM as they were.
    let writes: Vec<_> = app.sim.request_log()[from..]
        .iter()
        .filter(|e| e.method == "POST" && !e.path.contains("/oauth/"))
        .map(|e| e.path.clone())
        .collect();
    assert!(
        writes
            .iter()
            .all(|p| !p.ends_with("/leads.json") && !p.ends_with("/companies.json")),
        "{writes:?}"
    );
    assert_eq!(app.sim.company("acct-1").unwrap()["company"], json!("Acme"));
    assert!(app.marketo_by_email("new@example.com").len() == 1);
    assert_eq!(find_count(&app, "new@example.com").await, 0);

    // The real cycle makes the writes the dry run planned.
    let s = app.run_cycle().await;
    assert_eq!(failed(&s), 0, "{s:?}");
    assert_eq!(
        app.sim.company("acct-1").unwrap()["company"],
        json!("Acme Corp")
    );
    assert_eq!(find_count(&app, "new@example.com").await, 1);
    app.cleanup().await;
}

/// Returns how many CRM contacts hold this email.
async fn find_count(app: &TestApp, email: &str) -> usize {
    let email = [Value::Text(email.into())];
    let found = app.crm.find("contacts", "email", &email).await;
    found.expect("find").len()
}

#[tokio::test]
async fn the_flag_policy_sets_the_configured_crm_column() {
    let app = TestApp::with(Options {
        lead_deletes: DeletePolicy::Flag,
        lead_merges: DeletePolicy::Flag,
        ..Options::default()
    })
    .await;
    let gone = app.marketo_create(json!({"email": "gone@example.com", "firstName": "Gone"}));
    let stay = app.marketo_create(json!({"email": "stay@example.com", "firstName": "Stay"}));
    app.settle(4).await;
    let c_gone = app.crm_by_email("gone@example.com").await[0].id.clone();
    let c_stay = app.crm_by_email("stay@example.com").await[0].id.clone();
    let flag = |c: &marketo_sync::crm::CrmRecord| text(&c.fields, "deleted_in_marketo");
    assert_eq!(
        flag(&app.crm_contact(&c_gone).await.unwrap()).as_deref(),
        Some("false")
    );

    assert!(app.sim.delete_lead(gone));
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].deleted,
        1,
        "{s:?}"
    );
    // The contact stays, flagged; the other contact is not flagged.
    let c = app.crm_contact(&c_gone).await.expect("the contact is kept");
    assert_eq!(flag(&c).as_deref(), Some("true"));
    let c = app.crm_contact(&c_stay).await.unwrap();
    assert_eq!(flag(&c).as_deref(), Some("false"));
    let _ = stay;
    app.settle(3).await;
    app.cleanup().await;
}

/// The CRM database's current time, as SQL.
fn now(app: &TestApp) -> &'static str {
    match app.user.dialect() {
        Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f','now')",
        Dialect::Postgres => "CURRENT_TIMESTAMP",
        Dialect::MySql => "CURRENT_TIMESTAMP(6)",
    }
}

async fn exec(app: &TestApp, sql: String) {
    app.user.execute_raw("test", sql).await.expect("sql");
}

async fn find_one(app: &TestApp, object: &str, field: &str, value: &str) -> String {
    let found = app
        .crm
        .find(object, field, &[Value::Text(value.to_owned())])
        .await
        .expect("find");
    found.last().expect("row").id.clone()
}

async fn insert_account(app: &TestApp, name: &str) -> String {
    exec(
        app,
        format!(
            "INSERT INTO accounts (name, updated_at) VALUES ('{name}', {})",
            now(app)
        ),
    )
    .await;
    find_one(app, "accounts", "name", name).await
}

/// Inserts a CRM lead linked to Marketo lead `marketo_id`.
async fn insert_crm_lead(app: &TestApp, email: &str, marketo_id: i64) -> String {
    exec(
        app,
        format!(
            "INSERT INTO leads (email, first_name, last_name, marketo_id, updated_at) \
             VALUES ('{email}', 'Lee', 'Dee', '{marketo_id}', {})",
            now(app)
        ),
    )
    .await;
    find_one(app, "leads", "email", email).await
}

async fn convert(app: &TestApp, lead: &str, contact: &str) {
    exec(
        app,
        format!(
            "UPDATE leads SET converted_contact_id = {contact}, updated_at = {} WHERE id = {lead}",
            now(app)
        ),
    )
    .await;
}

async fn live_link(app: &TestApp, marketo_id: i64) -> Option<String> {
    app.store
        .links_by_marketo_keys("leads", &[marketo_id.to_string()])
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.tombstone.is_none())
        .map(|l| l.crm_key)
}

fn on(crm: CrmKind, store: StoreKind) -> Options {
    Options {
        crm,
        store,
        ..Options::default()
    }
}

fn with_companies(crm: CrmKind, store: StoreKind) -> Options {
    Options {
        objects: vec!["companies".into(), "leads".into()],
        ..on(crm, store)
    }
}

/// A Marketo lead linked to a CRM lead, synced once: it gets no contact of its own.
async fn marketo_lead_with_crm_lead(app: &TestApp, email: &str) -> (i64, String) {
    let m = app.marketo_create(json!({"email": email, "firstName": "Lee", "lastName": "Dee"}));
    let l = insert_crm_lead(app, email, m).await;
    let s = app.run_cycle().await;
    assert_eq!(failed(&s), 0, "{s:?}");
    assert!(
        app.crm_by_email(email).await.is_empty(),
        "a Marketo lead linked to a CRM lead gets no contact"
    );
    (m, l)
}

async fn converted_to_a_contact_in_a_new_account(crm: CrmKind, store: StoreKind) {
    let app = TestApp::with(with_companies(crm, store)).await;
    let (m, l) = marketo_lead_with_crm_lead(&app, "conv-a@example.com").await;

    let acct = insert_account(&app, "NewCo").await;
    let c = app
        .crm_insert_contact("conv-a@example.com", "Lee", "Dee")
        .await;
    app.crm_update_contact(&c, "account_id", &acct).await;
    convert(&app, &l, &c).await;
    let s = app.run_cycle().await;
    assert_eq!(failed(&s), 0, "{s:?}");

    let contact = app.crm_contact(&c).await.unwrap();
    assert_eq!(
        text(&contact.fields, "marketo_id"),
        Some(m.to_string()),
        "the contact holds the Marketo id"
    );
    let lead = app.marketo_lead(m).unwrap();
    assert_eq!(
        lead["crmContactId"],
        json!(c),
        "Marketo holds the contact id"
    );
    assert_eq!(lead["externalCompanyId"], json!(acct));
    assert_eq!(app.sim.company(&acct).unwrap()["company"], json!("NewCo"));
    assert_eq!(live_link(&app, m).await, Some(c.clone()));
    // No duplicates on either side, and nothing more to do.
    app.settle(4).await;
    assert_eq!(app.crm_by_email("conv-a@example.com").await.len(), 1);
    assert_eq!(app.marketo_by_email("conv-a@example.com"), vec![m]);
    app.cleanup().await;
}

async fn converted_to_a_contact_in_an_existing_account(crm: CrmKind, store: StoreKind) {
    let app = TestApp::with(with_companies(crm, store)).await;
    let acct = insert_account(&app, "OldCo").await;
    let (m, l) = marketo_lead_with_crm_lead(&app, "conv-b@example.com").await;
    assert_eq!(
        app.sim.company(&acct).unwrap()["company"],
        json!("OldCo"),
        "the account was synced as a company before the conversion"
    );

    let c = app
        .crm_insert_contact("conv-b@example.com", "Lee", "Dee")
        .await;
    app.crm_update_contact(&c, "account_id", &acct).await;
    convert(&app, &l, &c).await;
    let s = app.run_cycle().await;
    assert_eq!(failed(&s), 0, "{s:?}");

    let lead = app.marketo_lead(m).unwrap();
    assert_eq!(lead["crmContactId"], json!(c));
    assert_eq!(lead["externalCompanyId"], json!(acct));
    assert_eq!(lead["company"], json!("OldCo"), "read through the company");
    let contact = app.crm_contact(&c).await.unwrap();
    assert_eq!(text(&contact.fields, "marketo_id"), Some(m.to_string()));
    assert_eq!(live_link(&app, m).await, Some(c.clone()));
    app.settle(4).await;
    assert_eq!(app.crm_by_email("conv-b@example.com").await.len(), 1);
    app.cleanup().await;
}

async fn converted_into_an_existing_contact(crm: CrmKind, store: StoreKind) {
    let app = TestApp::with(on(crm, store)).await;
    let c = app
        .crm_insert_contact("known@example.com", "Known", "Person")
        .await;
    app.settle(4).await;
    let w = app.marketo_by_email("known@example.com")[0];
    assert_eq!(live_link(&app, w).await, Some(c.clone()));
    let (m, l) = marketo_lead_with_crm_lead(&app, "known.alias@example.com").await;

    convert(&app, &l, &c).await;
    let s = app.run_cycle().await;
    assert_eq!(failed(&s), 0, "{s:?}");
    assert!(
        app.marketo_lead(m).is_none(),
        "the converted lead lost the merge"
    );
    assert!(app.marketo_lead(w).is_some(), "the contact's lead won");
    let merges: Vec<_> = app
        .sim
        .activities()
        .into_iter()
        .filter(|a| a["activityTypeId"] == json!(32))
        .collect();
    assert_eq!(merges.len(), 1, "{merges:?}");
    assert_eq!(merges[0]["leadId"], json!(w));
    let contact = app.crm_contact(&c).await.unwrap();
    assert_eq!(text(&contact.fields, "marketo_id"), Some(w.to_string()));
    assert_eq!(live_link(&app, w).await, Some(c.clone()));
    assert_eq!(live_link(&app, m).await, None);
    let loser = app
        .store
        .links_by_marketo_keys("leads", &[m.to_string()])
        .await
        .unwrap();
    assert!(
        matches!(
            loser.first().and_then(|l| l.tombstone.as_ref()).map(|t| &t.kind),
            Some(marketo_sync::store::TombstoneKind::Merged { into }) if *into == w.to_string()
        ),
        "the converted lead's link is tombstoned as merged: {loser:?}"
    );
    app.settle(4).await;
    assert_eq!(app.crm_count().await, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_lead_converted_to_a_contact_in_a_new_account_moves_with_its_new_company() {
    converted_to_a_contact_in_a_new_account(CrmKind::Sqlite, StoreKind::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_lead_converted_to_a_contact_in_a_new_account_moves_with_its_new_company() {
    converted_to_a_contact_in_a_new_account(CrmKind::Postgres, StoreKind::Postgres).await;
}

#[tokio::test]
async fn mariadb_a_lead_converted_to_a_contact_in_a_new_account_moves_with_its_new_company() {
    converted_to_a_contact_in_a_new_account(CrmKind::MariaDb, StoreKind::Sqlite).await;
}

#[tokio::test]
async fn a_lead_converted_to_a_contact_in_an_existing_account_joins_the_company() {
    converted_to_a_contact_in_an_existing_account(CrmKind::Sqlite, StoreKind::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_lead_converted_to_a_contact_in_an_existing_account_joins_the_company() {
    converted_to_a_contact_in_an_existing_account(CrmKind::Postgres, StoreKind::Postgres).await;
}

#[tokio::test]
async fn mariadb_a_lead_converted_to_a_contact_in_an_existing_account_joins_the_company() {
    converted_to_a_contact_in_an_existing_account(CrmKind::MariaDb, StoreKind::Sqlite).await;
}

#[tokio::test]
async fn a_lead_converted_into_an_existing_contact_is_merged_into_its_marketo_lead() {
    converted_into_an_existing_contact(CrmKind::Sqlite, StoreKind::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_lead_converted_into_an_existing_contact_is_merged_into_its_marketo_lead() {
    converted_into_an_existing_contact(CrmKind::Postgres, StoreKind::Postgres).await;
}

#[tokio::test]
async fn mariadb_a_lead_converted_into_an_existing_contact_is_merged_into_its_marketo_lead() {
    converted_into_an_existing_contact(CrmKind::MariaDb, StoreKind::Sqlite).await;
}

fn missing_lead_object(m: &mut LoadedMapping) {
    if m.object == "leads" {
        m.file.keys.crm_lead_object = Some("no_such_leads".into());
    }
}

#[tokio::test]
async fn a_missing_crm_lead_object_is_a_warning_and_leads_still_sync() {
    let app = TestApp::with(Options {
        edit_mapping: Some(missing_lead_object),
        ..Options::default()
    })
    .await;
    app.marketo_create(json!({"email": "still@example.com", "firstName": "Still"}));
    let s = app.run_cycle().await;
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("lead conversions are not followed") && w.contains("no_such_leads")),
        "{:?}",
        s.warnings
    );
    assert_eq!(app.crm_by_email("still@example.com").await.len(), 1);
    app.cleanup().await;
}
