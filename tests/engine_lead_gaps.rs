//! End-to-end tests of the lead sync's company routing, deletion flag and lead conversion: the
//! simulator, the demo CRM on SQLite, a SQLite store and the engine.

#[path = "support/harness.rs"]
mod harness;

use harness::{Options, TestApp, text};
use marketo_sync::config::{DeletePolicy, FieldMapping, LoadedMapping};
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

#[tokio::test]
async fn company_fields_of_a_linked_lead_go_to_the_company() {
    let app = TestApp::with(Options {
        edit_mapping: Some(map_company),
        ..Options::default()
    })
    .await;
    app.sim
        .upsert_company(
            json!({"externalCompanyId": "acct-1", "company": "Acme"})
                .as_object()
                .unwrap()
                .clone(),
        )
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
