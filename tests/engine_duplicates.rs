//! The same email twice on one side: the sync never creates the second duplicate on the other
//! side itself; an ambiguous match is one error-ledger entry per held record, naming every
//! record of the key, and stays one entry across cycles.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{CrmKind, Options, TestApp, text};
use marketo_sync::store::{Direction, SyncError};
use serde_json::json;

fn about<'a>(errors: &'a [SyncError], email: &str) -> Vec<&'a SyncError> {
    errors
        .iter()
        .filter(|e| e.message.contains(email) || e.payload.to_string().contains(email))
        .collect()
}

/// Runs a cycle, then one more after the held records' retry is due: neither adds records on
/// either side nor a second ledger entry for the same record.
async fn stable(app: &TestApp, email: &str, marketo: usize, crm: usize, held: usize) {
    for round in 0..2 {
        if round == 1 {
            // Past the first retry's back-off: the held records are read and held again.
            app.sim.advance_clock(Duration::from_secs(600));
        }
        app.run_cycle().await;
        assert_eq!(app.marketo_by_email(email).len(), marketo, "round {round}");
        assert_eq!(app.crm_by_email(email).await.len(), crm, "round {round}");
        let errors = app.open_errors("leads").await;
        assert_eq!(
            about(&errors, email).len(),
            held,
            "round {round}: {errors:?}"
        );
    }
}

/// Asserts that the one ledger entry of `record_key` names every id and the email.
fn names_all(
    errors: &[SyncError],
    direction: Direction,
    record_key: &str,
    ids: &[String],
    email: &str,
) {
    let e = errors
        .iter()
        .find(|e| e.direction == direction && e.record_key == record_key)
        .unwrap_or_else(|| panic!("no ledger entry for {record_key}: {errors:?}"));
    for id in ids {
        assert!(
            e.message.contains(id.as_str()),
            "{id} named in {:?}",
            e.message
        );
    }
    assert_eq!(e.payload["match_key"], json!([email]), "{:?}", e.payload);
}

async fn two_crm_contacts_one_email(crm: CrmKind) {
    let app = TestApp::with(Options::on(crm)).await;
    let email = "twin-c@example.com";
    let c1 = app.crm_insert_contact(email, "One", "C").await;
    let c2 = app.crm_insert_contact(email, "Two", "C").await;
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::CrmToMarketo].created,
        1,
        "{s:?}"
    );
    let leads = app.marketo_by_email(email);
    assert_eq!(leads.len(), 1, "one Marketo lead, not two");
    let lead = app.marketo_lead(leads[0]).unwrap();
    assert_eq!(
        lead["crmContactId"],
        json!(c1),
        "the oldest contact is synced"
    );
    assert_eq!(lead["firstName"], json!("One"));
    let errors = app.open_errors("leads").await;
    assert_eq!(about(&errors, email).len(), 1, "{errors:?}");
    names_all(
        &errors,
        Direction::CrmToMarketo,
        &c2,
        &[c1.clone(), c2.clone()],
        email,
    );
    assert_eq!(errors[0].code, "duplicate");
    stable(&app, email, 1, 2, 1).await;
    // The held contact is still unlinked: no Marketo id was written into it.
    let held = app.crm_contact(&c2).await.unwrap();
    assert_eq!(text(&held.fields, "marketo_id"), None);
    app.cleanup().await;
}

async fn two_marketo_leads_one_email(crm: CrmKind) {
    let app = TestApp::with(Options::on(crm)).await;
    let email = "twin-m@example.com";
    let m1 = app.marketo_create(json!({"email": email, "firstName": "One"}));
    let m2 = app.marketo_create(json!({"email": email, "firstName": "Two"}));
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].created,
        1,
        "{s:?}"
    );
    let contacts = app.crm_by_email(email).await;
    assert_eq!(contacts.len(), 1, "one CRM contact, not two");
    assert_eq!(
        text(&contacts[0].fields, "marketo_id"),
        Some(m1.to_string()),
        "the oldest lead is synced"
    );
    let errors = app.open_errors("leads").await;
    assert_eq!(about(&errors, email).len(), 1, "{errors:?}");
    names_all(
        &errors,
        Direction::MarketoToCrm,
        &m2.to_string(),
        &[m1.to_string(), m2.to_string()],
        email,
    );
    stable(&app, email, 2, 1, 1).await;
    assert_eq!(app.marketo_lead(m2).unwrap()["crmContactId"], json!(null));
    app.cleanup().await;
}

async fn a_new_duplicate_of_a_linked_pair(crm: CrmKind) {
    let app = TestApp::with(Options::on(crm)).await;
    let email = "linked@example.com";
    let c1 = app.crm_insert_contact(email, "Linked", "Pair").await;
    app.settle(4).await;
    let lead = app.marketo_by_email(email)[0];

    // A second contact with the linked pair's email.
    let c2 = app.crm_insert_contact(email, "Second", "Contact").await;
    app.run_cycle().await;
    assert_eq!(app.marketo_by_email(email), vec![lead], "no second lead");
    let errors = app.open_errors("leads").await;
    assert_eq!(about(&errors, email).len(), 1, "{errors:?}");
    names_all(
        &errors,
        Direction::CrmToMarketo,
        &c2,
        &[c1.clone(), c2.clone(), lead.to_string()],
        email,
    );

    // A second lead with the same email.
    let m2 = app.marketo_create(json!({"email": email, "firstName": "Second"}));
    app.run_cycle().await;
    assert_eq!(app.crm_by_email(email).await.len(), 2, "no third contact");
    let errors = app.open_errors("leads").await;
    assert_eq!(about(&errors, email).len(), 2, "{errors:?}");
    names_all(
        &errors,
        Direction::MarketoToCrm,
        &m2.to_string(),
        &[lead.to_string(), m2.to_string(), c1.clone()],
        email,
    );
    stable(&app, email, 2, 2, 2).await;
    // The linked pair keeps syncing.
    app.crm_update_contact(&c1, "last_name", "StillSynced")
        .await;
    app.run_cycle().await;
    assert_eq!(
        app.marketo_lead(lead).unwrap()["lastName"],
        json!("StillSynced")
    );
    app.cleanup().await;
}

async fn one_record_matching_two_on_the_other_side(crm: CrmKind) {
    let app = TestApp::with(Options::on(crm)).await;
    let email = "ambiguous@example.com";
    let m1 = app.marketo_create(json!({"email": email, "firstName": "M1"}));
    let m2 = app.marketo_create(json!({"email": email, "firstName": "M2"}));
    let c = app.crm_insert_contact(email, "C", "Only").await;
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].created,
        0,
        "{s:?}"
    );
    assert_eq!(
        s.objects["leads"][&Direction::CrmToMarketo].created,
        0,
        "{s:?}"
    );
    let errors = app.open_errors("leads").await;
    let all = [m1.to_string(), m2.to_string(), c.clone()];
    assert_eq!(about(&errors, email).len(), 3, "{errors:?}");
    for (direction, key) in [
        (Direction::MarketoToCrm, m1.to_string()),
        (Direction::MarketoToCrm, m2.to_string()),
        (Direction::CrmToMarketo, c.clone()),
    ] {
        names_all(&errors, direction, &key, &all, email);
    }
    assert!(
        errors.iter().all(|e| e.code == "ambiguous_match"),
        "{errors:?}"
    );
    stable(&app, email, 2, 1, 3).await;

    // The operator edits one lead's email: the other lead and the contact pair up.
    app.marketo_update(m2, json!({"email": "resolved@example.com"}));
    app.sim.advance_clock(Duration::from_secs(3_600));
    app.run_cycle().await;
    app.sim.advance_clock(Duration::from_secs(3_600));
    app.run_cycle().await;
    let contacts = app.crm_by_email(email).await;
    assert_eq!(contacts.len(), 1);
    assert_eq!(
        text(&contacts[0].fields, "marketo_id"),
        Some(m1.to_string())
    );
    assert_eq!(app.crm_by_email("resolved@example.com").await.len(), 1);
    app.cleanup().await;
}

macro_rules! on_crms {
    ($($name:ident),* $(,)?) => {
        mod sqlite_crm {
            $( #[tokio::test] async fn $name() { super::$name(super::CrmKind::Sqlite).await; } )*
        }
        mod postgres_crm {
            $( #[tokio::test] async fn $name() { super::$name(super::CrmKind::Postgres).await; } )*
        }
    };
}

on_crms!(
    two_crm_contacts_one_email,
    two_marketo_leads_one_email,
    a_new_duplicate_of_a_linked_pair,
    one_record_matching_two_on_the_other_side,
);
