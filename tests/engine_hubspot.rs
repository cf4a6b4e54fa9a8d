//! The engine, unchanged, over the HubSpot adapter: the end-to-end scenarios of the lead,
//! company, opportunity and refusal tests (new records both ways, edits, conflicts, merges on
//! either side, deletes, refusals to the ledger) against the Marketo simulator and the HubSpot
//! simulator, with the mapping files of `config/examples/hubspot/`.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/hubspot.rs"]
mod hubspot;

use harness::{text, written};
use hubspot::{HsOptions, HubSpotApp, add_cars};
use marketo_sync::config::DeletePolicy;
use marketo_sync::model::{Side, Value};
use marketo_sync::store::Direction;
use serde_json::json;

fn count(s: &marketo_sync::engine::CycleSummary, object: &str, d: Direction) -> (u64, u64, u64) {
    s.objects
        .get(object)
        .and_then(|o| o.get(&d))
        .map_or((0, 0, 0), |c| (c.created, c.updated, c.deleted))
}

#[tokio::test]
async fn new_records_appear_once_with_keys_both_ways() {
    let app = HubSpotApp::start().await;
    // Marketo -> HubSpot.
    let lead = app.marketo_create(json!({
        "email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace", "title": "CTO"
    }));
    let s = app.run_cycle().await;
    assert_eq!(count(&s, "leads", Direction::MarketoToCrm).0, 1, "{s:?}");
    let contacts = app.crm_by_email("ada@example.com").await;
    assert_eq!(contacts.len(), 1);
    let contact = &contacts[0];
    assert_eq!(text(&contact.fields, "firstname").as_deref(), Some("Ada"));
    assert_eq!(text(&contact.fields, "jobtitle").as_deref(), Some("CTO"));
    assert_eq!(
        text(&contact.fields, "marketo_id").as_deref(),
        Some(lead.to_string().as_str())
    );
    let m = app.marketo_lead(lead).unwrap();
    assert_eq!(
        m["crmContactId"],
        json!(contact.id),
        "hubspot id written back"
    );

    // HubSpot -> Marketo.
    let cid = app.hs_create(
        "contacts",
        json!({"email": "grace@example.com", "firstname": "Grace", "lastname": "Hopper"}),
    );
    let s = app.run_cycle().await;
    assert_eq!(count(&s, "leads", Direction::CrmToMarketo).0, 1, "{s:?}");
    let ids = app.marketo_by_email("grace@example.com");
    assert_eq!(ids.len(), 1);
    let m = app.marketo_lead(ids[0]).unwrap();
    assert_eq!(m["firstName"], json!("Grace"));
    assert_eq!(m["crmContactId"], json!(cid));
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(
        text(&c.fields, "marketo_id").as_deref(),
        Some(ids[0].to_string().as_str())
    );

    app.settle(4).await;
    assert_eq!(app.hs_count("contacts"), 2, "no duplicate contact");
    assert_eq!(app.sim.counters().leads, 2, "no duplicate lead");
    app.cleanup().await;
}

#[tokio::test]
async fn an_edit_propagates_and_does_not_come_back() {
    let app = HubSpotApp::start().await;
    let lead = app.marketo_create(json!({"email": "alan@example.com", "firstName": "Alan"}));
    app.run_cycle().await;
    let cid = app.crm_by_email("alan@example.com").await[0].id.clone();
    app.settle(4).await;

    app.marketo_update(lead, json!({"title": "Mathematician"}));
    let s = app.run_cycle().await;
    assert_eq!(count(&s, "leads", Direction::MarketoToCrm).1, 1, "{s:?}");
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(
        text(&c.fields, "jobtitle").as_deref(),
        Some("Mathematician")
    );
    let quiet = app.run_cycle().await;
    assert_eq!(written(&quiet), 0, "the echo must not come back: {quiet:?}");

    app.hs_update("contacts", &cid, json!({"lastname": "Turing"}));
    let s = app.run_cycle().await;
    assert_eq!(count(&s, "leads", Direction::CrmToMarketo).1, 1, "{s:?}");
    assert_eq!(app.marketo_lead(lead).unwrap()["lastName"], json!("Turing"));
    assert_eq!(written(&app.settle(3).await), 0);
    assert_eq!(app.hs_count("contacts"), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn the_same_field_edited_on_both_sides_is_settled_by_policy_and_recorded() {
    let app = HubSpotApp::start().await;
    let lead = app.marketo_create(json!({"email": "bo@example.com", "leadStatus": "New"}));
    app.run_cycle().await;
    let cid = app.crm_by_email("bo@example.com").await[0].id.clone();
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(
        text(&c.fields, "hs_lead_status").as_deref(),
        Some("NEW"),
        "the example maps Marketo's statuses to HubSpot's options"
    );
    app.settle(4).await;

    // leadStatus is crm_wins in the example leads.toml.
    app.marketo_update(lead, json!({"leadStatus": "Open"}));
    app.hs_update("contacts", &cid, json!({"hs_lead_status": "IN_PROGRESS"}));
    let s = app.run_cycle().await;
    let conflicts: u64 = s.objects["leads"].values().map(|c| c.conflicts).sum();
    assert_eq!(conflicts, 1, "{s:?}");
    assert_eq!(
        app.marketo_lead(lead).unwrap()["leadStatus"],
        json!("Working")
    );
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(
        text(&c.fields, "hs_lead_status").as_deref(),
        Some("IN_PROGRESS")
    );
    let logged = app.store.recent_conflicts(10).await.unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].field, "leadStatus");
    assert_eq!(logged[0].winner, Side::Crm);
    assert_eq!(logged[0].marketo_value.to_text(), "Open");
    assert_eq!(logged[0].crm_value.to_text(), "Working", "{logged:?}");
    assert_eq!(written(&app.settle(3).await), 0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_hubspot_contact_whose_email_exists_in_marketo_is_linked_not_duplicated() {
    let app = HubSpotApp::start().await;
    app.run_cycle().await;
    let lead = app.marketo_create(json!({"email": "dup@example.com", "firstName": "Ken"}));
    let cid = app.hs_create(
        "contacts",
        json!({"email": "dup@example.com", "firstname": "Ken", "lastname": "Thompson"}),
    );
    let s = app.run_cycle().await;
    let created: u64 = s.objects["leads"].values().map(|c| c.created).sum();
    assert_eq!(created, 0, "{s:?}");
    assert_eq!(app.marketo_by_email("dup@example.com"), vec![lead]);
    assert_eq!(app.crm_by_email("dup@example.com").await.len(), 1);
    let m = app.marketo_lead(lead).unwrap();
    assert_eq!(m["crmContactId"], json!(cid));
    assert_eq!(m["lastName"], json!("Thompson"));
    assert_eq!(written(&app.settle(3).await), 0);
    assert_eq!(app.hs_count("contacts"), 1);
    assert_eq!(app.sim.counters().leads, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_merge_in_marketo_repoints_the_hubspot_contact() {
    let app = HubSpotApp::start().await;
    let loser = app.marketo_create(json!({"email": "m1@example.com", "firstName": "Loser"}));
    app.settle(4).await;
    let cid = app.crm_by_email("m1@example.com").await[0].id.clone();
    // The winner is a lead HubSpot does not know (created and merged between two cycles).
    let winner = app.marketo_create(json!({"email": "m2@example.com", "firstName": "Winner"}));
    app.sim.merge_leads(winner, &[loser]).unwrap();
    app.settle(4).await;
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(
        text(&c.fields, "marketo_id").as_deref(),
        Some(winner.to_string().as_str()),
        "the contact now points at the winner"
    );
    assert_eq!(
        app.hs_count("contacts"),
        1,
        "no contact created for the winner"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_marketo_merge_of_two_linked_leads_archives_only_the_losers_contact() {
    let app = HubSpotApp::start().await;
    let w = app.marketo_create(json!({"email": "w@example.com", "firstName": "W"}));
    let l = app.marketo_create(json!({"email": "l@example.com", "firstName": "L"}));
    app.settle(4).await;
    let cw = app.crm_by_email("w@example.com").await[0].id.clone();
    app.sim.merge_leads(w, &[l]).unwrap();
    app.settle(4).await;
    assert!(app.marketo_lead(l).is_none());
    assert_eq!(app.marketo_lead(w).unwrap()["crmContactId"], json!(cw));
    assert!(
        app.crm_contact(&cw).await.is_some(),
        "the winner's contact stays"
    );
    assert!(app.crm_by_email("l@example.com").await.is_empty());
    assert_eq!(app.hs_count("contacts"), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_merge_in_hubspot_merges_the_marketo_leads() {
    let app = HubSpotApp::start().await;
    let a = app.marketo_create(json!({"email": "keep@example.com", "firstName": "A"}));
    let b = app.marketo_create(json!({"email": "gone@example.com", "firstName": "B"}));
    app.settle(4).await;
    let ca = app.crm_by_email("keep@example.com").await[0].id.clone();
    let cb = app.crm_by_email("gone@example.com").await[0].id.clone();
    // A HubSpot user merges contact B into contact A.
    app.hs_merge("contacts", &ca, &cb);
    app.run_cycle().await;
    assert!(
        app.marketo_lead(b).is_none(),
        "the loser lead was merged away"
    );
    assert!(app.marketo_lead(a).is_some());
    app.settle(3).await;
    assert_eq!(
        app.hs_count("contacts"),
        1,
        "no contact re-created for the merged lead"
    );
    assert_eq!(app.sim.counters().leads, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn deletions_follow_their_policy_both_ways() {
    let app = HubSpotApp::start().await;
    let a = app.marketo_create(json!({"email": "del1@example.com"}));
    let b = app.marketo_create(json!({"email": "del2@example.com"}));
    app.settle(4).await;
    let ca = app.crm_by_email("del1@example.com").await[0].id.clone();
    let cb = app.crm_by_email("del2@example.com").await[0].id.clone();
    // Marketo deletion, policy delete: the contact is archived.
    assert!(app.sim.delete_lead(a));
    let s = app.run_cycle().await;
    assert_eq!(count(&s, "leads", Direction::MarketoToCrm).2, 1, "{s:?}");
    assert!(app.crm_contact(&ca).await.is_none());
    // HubSpot archive, policy delete: the lead goes.
    app.hs_archive("contacts", &cb);
    let s = app.run_cycle().await;
    assert_eq!(count(&s, "leads", Direction::CrmToMarketo).2, 1, "{s:?}");
    assert!(app.marketo_lead(b).is_none());
    app.settle(3).await;
    assert_eq!(app.sim.counters().leads, 0);
    assert_eq!(app.hs_count("contacts"), 0);
    app.cleanup().await;
}

#[tokio::test]
async fn deletions_are_ignored_when_the_policy_says_so() {
    let app = HubSpotApp::with(HsOptions {
        lead_deletes: DeletePolicy::Ignore,
        ..HsOptions::default()
    })
    .await;
    let a = app.marketo_create(json!({"email": "keep@example.com"}));
    app.settle(4).await;
    let ca = app.crm_by_email("keep@example.com").await[0].id.clone();
    assert!(app.sim.delete_lead(a));
    app.run_cycle().await;
    assert!(app.crm_contact(&ca).await.is_some());
    app.cleanup().await;
}

#[tokio::test]
async fn a_lead_hubspot_refuses_is_one_ledger_entry_and_the_others_sync() {
    let app = HubSpotApp::start().await;
    // Marketo takes this address; HubSpot refuses it (INVALID_EMAIL, no dot in the domain).
    let bad = app.marketo_create(json!({"email": "ops@intranet", "firstName": "Bad"}));
    let good = app.marketo_create(json!({"email": "good@example.com", "firstName": "Good"}));
    let s = app.run_cycle().await;
    let counts = &s.objects["leads"][&Direction::MarketoToCrm];
    assert_eq!((counts.created, counts.failed), (1, 1), "{s:?}");
    assert_eq!(app.crm_by_email("good@example.com").await.len(), 1);
    let errors = app.open_errors("leads").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.record_key, bad.to_string());
    assert_eq!(e.direction, Direction::MarketoToCrm);
    assert_eq!(e.code, "invalid_value", "{e:?}");
    assert!(e.message.contains("INVALID_EMAIL"), "{e:?}");
    assert_eq!(app.hs_count("contacts"), 1);
    // The refusal is not retried as a new record every cycle, and the good lead stays linked.
    app.settle(3).await;
    assert_eq!(app.open_errors("leads").await.len(), 1);
    assert!(app.marketo_lead(good).unwrap()["crmContactId"].is_string());
    app.cleanup().await;
}

#[tokio::test]
async fn an_idle_lead_cycle_costs_at_most_three_hubspot_calls() {
    let app = HubSpotApp::start().await;
    app.marketo_create(json!({"email": "idle@example.com", "firstName": "Idle"}));
    app.settle(4).await;
    let before = app.hs_requests();
    let s = app.run_cycle().await;
    assert_eq!(written(&s), 0, "{s:?}");
    let calls: Vec<String> = app.hs.request_log()[before..]
        .iter()
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    assert!(
        calls.len() <= 3,
        "an idle cycle of one object cost {} HubSpot calls: {calls:?}",
        calls.len()
    );
    app.cleanup().await;
}

fn objects_options() -> HsOptions {
    HsOptions {
        objects: vec!["leads".into(), "companies".into(), "opportunities".into()],
        ..HsOptions::default()
    }
}

#[tokio::test]
async fn companies_flow_both_ways_and_hubspot_wins_a_conflict() {
    let app = HubSpotApp::with(objects_options()).await;
    // As in the SQL test, the company holds its Marketo key (externalCompanyId, its own id).
    let id = app.hs_create(
        "companies",
        json!({"name": "Acme", "domain": "acme.example", "industry": "RETAIL"}),
    );
    app.hs_update("companies", &id, json!({"marketo_id": id}));
    let s = app.run_cycle().await;
    assert_eq!(
        count(&s, "companies", Direction::CrmToMarketo).0,
        1,
        "{s:?}"
    );
    assert_eq!(app.sim.company(&id).unwrap()["company"], json!("Acme"));
    assert_eq!(app.sim.company(&id).unwrap()["industry"], json!("RETAIL"));

    // Edited in HubSpot: Marketo follows.
    app.hs_update("companies", &id, json!({"industry": "MACHINERY"}));
    app.run_cycle().await;
    assert_eq!(
        app.sim.company(&id).unwrap()["industry"],
        json!("MACHINERY")
    );

    // Edited in Marketo only: the daily drift read brings it to HubSpot.
    let mut edit = serde_json::Map::new();
    edit.insert("externalCompanyId".into(), json!(id));
    edit.insert("billingCity".into(), json!("Lyon"));
    app.sim.upsert_company(edit).unwrap();
    app.clock.advance(std::time::Duration::from_secs(25 * 3600));
    let s = app.run_cycle().await;
    assert_eq!(
        count(&s, "companies", Direction::MarketoToCrm).1,
        1,
        "{s:?}"
    );
    let c = app.crm_get("companies", &id).await.unwrap();
    assert_eq!(text(&c.fields, "city").as_deref(), Some("Lyon"));
    assert_eq!(text(&c.fields, "name").as_deref(), Some("Acme"));

    // Both changed the name: HubSpot wins (crm_wins), and the conflict is recorded.
    let mut edit = serde_json::Map::new();
    edit.insert("externalCompanyId".into(), json!(id));
    edit.insert("company".into(), json!("Acme Marketing"));
    app.sim.upsert_company(edit).unwrap();
    app.hs_update("companies", &id, json!({"name": "Acme Sales"}));
    let s = app.run_cycle().await;
    let conflicts: u64 = s.objects["companies"].values().map(|c| c.conflicts).sum();
    assert_eq!(conflicts, 1, "{s:?}");
    assert_eq!(
        app.sim.company(&id).unwrap()["company"],
        json!("Acme Sales")
    );
    let c = app.crm_get("companies", &id).await.unwrap();
    assert_eq!(text(&c.fields, "name").as_deref(), Some("Acme Sales"));
    let logged = app.store.recent_conflicts(10).await.unwrap();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].field, "company");
    assert_eq!(logged[0].winner, Side::Crm);
    assert_eq!(app.hs_count("companies"), 1, "no duplicate company");
    app.cleanup().await;
}

#[tokio::test]
async fn a_deal_arrives_as_an_opportunity_and_its_edits_follow() {
    let app = HubSpotApp::with(objects_options()).await;
    let deal = app.hs_create(
        "deals",
        json!({"dealname": "Big deal", "amount": "1200.5", "dealstage": "appointmentscheduled"}),
    );
    let s = app.run_cycle().await;
    assert_eq!(
        count(&s, "opportunities", Direction::CrmToMarketo).0,
        1,
        "{s:?}"
    );
    let find = || {
        app.sim
            .objects(marketo_sync::sim::schema::ObjKind::Opportunity)
            .into_iter()
            .filter(|o| o["externalOpportunityId"] == json!(deal))
            .collect::<Vec<_>>()
    };
    let opps = find();
    assert_eq!(opps.len(), 1, "{opps:?}");
    assert_eq!(opps[0]["name"], json!("Big deal"));
    // As over the SQL adapter, a decimal reaches Marketo as its text.
    let amount = opps[0]["amount"].to_string();
    assert_eq!(
        amount.trim_matches('"').parse::<f64>().ok(),
        Some(1200.5),
        "{opps:?}"
    );

    app.hs_update("deals", &deal, json!({"dealname": "Bigger deal"}));
    app.settle(4).await;
    let opps = find();
    assert_eq!(opps.len(), 1, "one opportunity, updated: {opps:?}");
    assert_eq!(opps[0]["name"], json!("Bigger deal"));
    app.cleanup().await;
}

/// Archived in HubSpot, a deal and a company are deleted in Marketo by the deletions step, and
/// a car (a custom object) too; nothing else is touched and nothing comes back.
#[tokio::test]
async fn archived_deals_companies_and_custom_records_are_deleted_in_marketo() {
    let mut options = objects_options();
    options.objects.push("cars".into());
    options.edit_options = Some(add_cars);
    let app = HubSpotApp::with(options).await;
    let deal = app.hs_create("deals", json!({"dealname": "Gone deal", "amount": "10"}));
    let kept = app.hs_create("deals", json!({"dealname": "Kept deal", "amount": "20"}));
    let company = app.hs_create(
        "companies",
        json!({"name": "Gone Inc", "domain": "gone.example"}),
    );
    let car = app.hs_create("cars", json!({"vin": "VINGONE", "make": "Ford"}));
    app.settle(4).await;
    let opportunities = |id: &str| {
        app.sim
            .objects(marketo_sync::sim::schema::ObjKind::Opportunity)
            .into_iter()
            .filter(|o| o["externalOpportunityId"] == json!(id))
            .count()
    };
    let cars = |vin: &str| {
        app.sim
            .objects(marketo_sync::sim::schema::ObjKind::Car)
            .into_iter()
            .filter(|c| c["vin"] == json!(vin))
            .count()
    };
    assert_eq!((opportunities(&deal), opportunities(&kept)), (1, 1));
    assert!(app.sim.company(&company).is_some());
    assert_eq!(cars("VINGONE"), 1);

    app.hs_archive("deals", &deal);
    app.hs_archive("companies", &company);
    app.hs_archive("cars", &car);
    let s = app.run_cycle().await;
    for object in ["opportunities", "companies", "cars"] {
        assert_eq!(
            s.objects[object][&Direction::CrmToMarketo].deleted,
            1,
            "{object}: {s:?}"
        );
    }
    assert_eq!(opportunities(&deal), 0);
    assert_eq!(opportunities(&kept), 1, "the other deal stays");
    assert!(app.sim.company(&company).is_none());
    assert_eq!(cars("VINGONE"), 0);
    assert_eq!(written(&app.settle(3).await), 0, "nothing comes back");
    app.cleanup().await;
}

#[tokio::test]
async fn owners_arrive_as_salespersons() {
    let app = HubSpotApp::with(HsOptions {
        objects: vec!["leads".into(), "salespersons".into()],
        ..HsOptions::default()
    })
    .await;
    let s = app.run_cycle().await;
    let owners: Vec<u64> = (1..=5).map(|i| 70_000_000 + i).collect();
    let people: Vec<_> = app
        .sim
        .objects(marketo_sync::sim::schema::ObjKind::SalesPerson)
        .into_iter()
        .filter(|p| {
            p["externalSalesPersonId"]
                .as_str()
                .and_then(|k| k.parse().ok())
                .is_some_and(|k: u64| owners.contains(&k))
        })
        .collect();
    assert_eq!(
        count(&s, "salespersons", Direction::CrmToMarketo).0,
        5,
        "{s:?} {people:?}"
    );
    assert_eq!(people.len(), 5, "{people:?}");
    for p in &people {
        let id = p["externalSalesPersonId"]
            .as_str()
            .expect("keyed by owner id");
        let owner = app.crm_get("owners", id).await.expect("an owner");
        assert_eq!(
            p["email"].as_str(),
            text(&owner.fields, "email").as_deref(),
            "{p}"
        );
    }
    let before = app
        .sim
        .objects(marketo_sync::sim::schema::ObjKind::SalesPerson)
        .len();
    assert_eq!(written(&app.settle(3).await), 0);
    assert_eq!(
        app.sim
            .objects(marketo_sync::sim::schema::ObjKind::SalesPerson)
            .len(),
        before,
        "no salesperson created twice"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_labelled_deal_contact_association_arrives_as_an_opportunity_role() {
    let app = HubSpotApp::with(HsOptions {
        objects: vec!["leads".into(), "opportunities".into(), "roles".into()],
        ..HsOptions::default()
    })
    .await;
    let lead = app.marketo_create(json!({"email": "buyer@example.com", "firstName": "Bea"}));
    app.settle(4).await;
    let contact = app.crm_by_email("buyer@example.com").await[0].id.clone();
    let deal = app.hs_create("deals", json!({"dealname": "Fleet", "amount": "5000"}));
    let label = app
        .hs
        .define_label("deals", "contacts", "Decision Maker")
        .unwrap();
    app.hs
        .associate(
            "deals",
            deal.parse().unwrap(),
            "contacts",
            contact.parse().unwrap(),
            label,
        )
        .unwrap();
    app.settle(4).await;
    let roles: Vec<_> = app
        .sim
        .objects(marketo_sync::sim::schema::ObjKind::Role)
        .into_iter()
        .filter(|r| r["externalOpportunityId"] == json!(deal))
        .collect();
    let decision: Vec<_> = roles
        .iter()
        .filter(|r| r["role"] == json!("Decision Maker"))
        .collect();
    assert_eq!(decision.len(), 1, "{roles:?}");
    assert_eq!(roles.len(), 1, "one role for one labelled pair: {roles:?}");
    assert_eq!(decision[0]["leadId"], json!(lead), "{roles:?}");
    assert_eq!(decision[0]["isPrimary"], json!(true), "{roles:?}");
    assert_eq!(written(&app.settle(3).await), 0);
    app.cleanup().await;
}

fn cars_options() -> HsOptions {
    HsOptions {
        objects: vec!["leads".into(), "cars".into()],
        edit_options: Some(add_cars),
        ..HsOptions::default()
    }
}

/// Adds a car to a lead in Marketo through the API (as another integration would).
async fn add_marketo_car(app: &HubSpotApp, car: serde_json::Value) {
    let input = vec![car.as_object().unwrap().clone()];
    let r = app
        .engine
        .context()
        .marketo
        .sync_custom_objects(
            "car_c",
            marketo_sync::marketo::SyncAction::CreateOrUpdate,
            marketo_sync::marketo::DedupeBy::DedupeFields,
            &input,
        )
        .await
        .unwrap();
    assert!(!r[0].is_skipped(), "{r:?}");
}

/// Returns the Marketo cars with this vin.
async fn marketo_cars(
    app: &HubSpotApp,
    vin: &str,
) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let fields: Vec<String> = ["vin", "make", "model", "year", "leadId", "marketoGUID"]
        .iter()
        .map(|f| (*f).to_owned())
        .collect();
    app.engine
        .context()
        .marketo
        .get_custom_objects("car_c", "vin", &[vin.to_owned()], &fields, None)
        .await
        .unwrap()
        .records
}

async fn hubspot_cars(app: &HubSpotApp, vin: &str) -> Vec<marketo_sync::crm::CrmRecord> {
    app.crm
        .find("cars", "vin", &[Value::Text(vin.to_owned())])
        .await
        .unwrap()
}

#[tokio::test]
async fn custom_object_records_flow_both_ways_with_their_contact() {
    let app = HubSpotApp::with(cars_options()).await;
    let lead = app.marketo_create(json!({"email": "driver@example.com", "firstName": "Dee"}));
    app.settle(4).await;
    let contact = app.crm_by_email("driver@example.com").await[0].id.clone();

    // Marketo -> HubSpot: the car is created in HubSpot and associated with the lead's contact.
    add_marketo_car(
        &app,
        json!({"vin": "MKT00000000000001", "leadId": lead, "make": "Volvo", "model": "XC40", "year": 2022}),
    )
    .await;
    let s = app.run_cycle().await;
    assert_eq!(count(&s, "cars", Direction::MarketoToCrm).0, 1, "{s:?}");
    let cars = hubspot_cars(&app, "MKT00000000000001").await;
    assert_eq!(cars.len(), 1, "{cars:?}");
    let car = &cars[0].fields;
    assert_eq!(text(car, "make").as_deref(), Some("Volvo"));
    assert_eq!(text(car, "model").as_deref(), Some("XC40"));
    assert_eq!(text(car, "year").as_deref(), Some("2022"), "{car:?}");
    assert_eq!(text(car, "contact_id").as_deref(), Some(contact.as_str()));
    let guid = marketo_cars(&app, "MKT00000000000001").await[0]["marketoGUID"].clone();
    assert_eq!(text(car, "marketo_id").as_deref(), guid.as_str());

    // HubSpot -> Marketo: a car a HubSpot user creates and associates with the contact arrives
    // on the contact's lead.
    let id = app.hs_create(
        "cars",
        json!({"vin": "HUB00000000000042", "make": "Fiat", "model": "Panda", "year": "2019"}),
    );
    app.hs
        .associate_default(
            "cars",
            id.parse().unwrap(),
            "contacts",
            contact.parse().unwrap(),
        )
        .unwrap();
    let s = app.run_cycle().await;
    assert_eq!(count(&s, "cars", Direction::CrmToMarketo).0, 1, "{s:?}");
    let m = marketo_cars(&app, "HUB00000000000042").await;
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["leadId"], json!(lead));
    assert_eq!(m[0]["make"], json!("Fiat"));
    assert_eq!(m[0]["model"], json!("Panda"));

    // Edited in HubSpot: Marketo follows; then everything is quiet, with no duplicate.
    app.hs_update("cars", &id, json!({"model": "Panda Cross"}));
    app.run_cycle().await;
    assert_eq!(
        marketo_cars(&app, "HUB00000000000042").await[0]["model"],
        json!("Panda Cross")
    );
    app.settle(4).await;
    assert_eq!(app.hs_count("cars"), 2, "no duplicate car in HubSpot");
    assert_eq!(marketo_cars(&app, "MKT00000000000001").await.len(), 1);
    assert!(app.open_errors("cars").await.is_empty());
    app.cleanup().await;
}

#[tokio::test]
async fn a_hubspot_car_marketo_refuses_is_one_ledger_entry_and_the_other_syncs() {
    let app = HubSpotApp::with(cars_options()).await;
    let lead = app.marketo_create(json!({"email": "known@example.com", "firstName": "Known"}));
    app.settle(4).await;
    let known = app.crm_by_email("known@example.com").await[0].id.clone();
    // A Marketo validation rule refuses one car; the other car of the contact goes through.
    app.sim.refuse_records(
        "vin",
        "REFUSED000000001",
        "1003",
        "Validation rule: vin is blocked",
    );
    let refused = app.hs_create("cars", json!({"vin": "REFUSED000000001", "make": "Kia"}));
    let good = app.hs_create("cars", json!({"vin": "GOOD000000000002", "make": "Seat"}));
    for car in [&refused, &good] {
        app.hs
            .associate_default(
                "cars",
                car.parse().unwrap(),
                "contacts",
                known.parse().unwrap(),
            )
            .unwrap();
    }
    let s = app.run_cycle().await;
    let c = &s.objects["cars"][&Direction::CrmToMarketo];
    assert_eq!((c.created, c.failed), (1, 1), "{s:?}");
    let errors = app.open_errors("cars").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].record_key, refused);
    assert_eq!(errors[0].direction, Direction::CrmToMarketo);
    assert!(errors[0].message.contains("vin is blocked"), "{errors:?}");
    let synced = marketo_cars(&app, "GOOD000000000002").await;
    assert_eq!(synced.len(), 1);
    assert_eq!(synced[0]["leadId"], json!(lead));
    assert!(marketo_cars(&app, "REFUSED000000001").await.is_empty());
    // Still one entry after another cycle (not duplicated, and a validation rule's refusal
    // is not retried by itself).
    app.run_cycle().await;
    let errors = app.open_errors("cars").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, "1003");
    assert_eq!(errors[0].attempts, 1, "{errors:?}");
    app.cleanup().await;
}
