//! End-to-end tests of the lead sync: the simulator, the demo CRM, a store and the engine.

#[path = "support/harness.rs"]
mod harness;

use harness::{CrmKind, Options, StoreKind, TestApp, text, written};
use marketo_sync::engine::{EngineError, Runner};
use marketo_sync::model::Side;
use marketo_sync::store::Clock;
use marketo_sync::store::Direction;
use serde_json::json;

fn opts(crm: CrmKind, store: StoreKind) -> Options {
    Options {
        crm,
        store,
        ..Options::default()
    }
}

async fn new_lead_in_either_system_appears_once_with_keys(app: &TestApp) {
    // Marketo -> CRM.
    let lead = app.marketo_create(json!({
        "email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace", "title": "CTO"
    }));
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].created,
        1,
        "{s:?}"
    );
    let contacts = app.crm_by_email("ada@example.com").await;
    assert_eq!(contacts.len(), 1);
    let contact = &contacts[0];
    assert_eq!(text(&contact.fields, "first_name").as_deref(), Some("Ada"));
    assert_eq!(
        text(&contact.fields, "marketo_id").as_deref(),
        Some(lead.to_string().as_str())
    );
    let m = app.marketo_lead(lead).unwrap();
    assert_eq!(m["crmContactId"], json!(contact.id), "crm key written back");

    // CRM -> Marketo.
    let cid = app
        .crm_insert_contact("grace@example.com", "Grace", "Hopper")
        .await;
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::CrmToMarketo].created,
        1,
        "{s:?}"
    );
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

    // Nothing more to do: no duplicates on either side.
    app.settle(4).await;
    assert_eq!(app.crm_count().await, 2);
    assert_eq!(app.sim.counters().leads, 2);
}

async fn edit_propagates_and_does_not_come_back(app: &TestApp) {
    let lead = app.marketo_create(json!({"email": "alan@example.com", "firstName": "Alan"}));
    app.run_cycle().await;
    let cid = app.crm_by_email("alan@example.com").await[0].id.clone();
    app.settle(4).await;

    app.marketo_update(lead, json!({"title": "Mathematician"}));
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].updated,
        1,
        "{s:?}"
    );
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(text(&c.fields, "title").as_deref(), Some("Mathematician"));
    let quiet = app.run_cycle().await;
    assert_eq!(written(&quiet), 0, "the echo must not come back: {quiet:?}");

    app.crm_update_contact(&cid, "last_name", "Turing").await;
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::CrmToMarketo].updated,
        1,
        "{s:?}"
    );
    assert_eq!(app.marketo_lead(lead).unwrap()["lastName"], json!("Turing"));
    let quiet = app.settle(3).await;
    assert_eq!(written(&quiet), 0);
    assert_eq!(app.crm_count().await, 1);
}

#[tokio::test]
async fn sqlite_new_records_appear_once_with_keys_both_ways() {
    let app = TestApp::start().await;
    new_lead_in_either_system_appears_once_with_keys(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn postgres_new_records_appear_once_with_keys_both_ways() {
    let app = TestApp::with(opts(CrmKind::Postgres, StoreKind::Postgres)).await;
    new_lead_in_either_system_appears_once_with_keys(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn mariadb_new_records_appear_once_with_keys_both_ways() {
    let app = TestApp::with(opts(CrmKind::MariaDb, StoreKind::Sqlite)).await;
    new_lead_in_either_system_appears_once_with_keys(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn sqlite_an_edit_propagates_and_does_not_come_back() {
    let app = TestApp::start().await;
    edit_propagates_and_does_not_come_back(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn postgres_an_edit_propagates_and_does_not_come_back() {
    let app = TestApp::with(opts(CrmKind::Postgres, StoreKind::Postgres)).await;
    edit_propagates_and_does_not_come_back(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn mariadb_an_edit_propagates_and_does_not_come_back() {
    let app = TestApp::with(opts(CrmKind::MariaDb, StoreKind::Postgres)).await;
    edit_propagates_and_does_not_come_back(&app).await;
    app.cleanup().await;
}

async fn the_same_field_edited_on_both_sides_is_settled_by_policy_and_recorded(store: StoreKind) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    let lead = app.marketo_create(json!({"email": "bo@example.com", "leadSource": "Web"}));
    app.run_cycle().await;
    let cid = app.crm_by_email("bo@example.com").await[0].id.clone();
    app.settle(4).await;

    // leadSource is crm_wins in leads.toml.
    app.marketo_update(lead, json!({"leadSource": "Webinar"}));
    app.crm_update_contact(&cid, "lead_source", "Partner").await;
    let s = app.run_cycle().await;
    let conflicts: u64 = s.objects["leads"].values().map(|c| c.conflicts).sum();
    assert_eq!(conflicts, 1, "{s:?}");
    assert_eq!(
        app.marketo_lead(lead).unwrap()["leadSource"],
        json!("Partner")
    );
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(text(&c.fields, "lead_source").as_deref(), Some("Partner"));
    let logged = app.store.recent_conflicts(10).await.unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].field, "leadSource");
    assert_eq!(logged[0].winner, Side::Crm);
    assert_eq!(logged[0].marketo_value.to_text(), "Webinar");
    assert_eq!(logged[0].crm_value.to_text(), "Partner");
    assert_eq!(written(&app.settle(3).await), 0);
    app.cleanup().await;
}

async fn a_crm_contact_whose_email_exists_in_marketo_is_linked_not_duplicated(store: StoreKind) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    app.run_cycle().await;
    let lead = app.marketo_create(json!({"email": "dup@example.com", "firstName": "Ken"}));
    // Both appear in the same cycle: linked, not both created.
    let cid = app
        .crm_insert_contact("dup@example.com", "Ken", "Thompson")
        .await;
    let s = app.run_cycle().await;
    let created: u64 = s.objects["leads"].values().map(|c| c.created).sum();
    assert_eq!(created, 0, "{s:?}");
    assert_eq!(app.marketo_by_email("dup@example.com"), vec![lead]);
    assert_eq!(app.crm_by_email("dup@example.com").await.len(), 1);
    assert_eq!(app.marketo_lead(lead).unwrap()["crmContactId"], json!(cid));
    assert_eq!(
        app.marketo_lead(lead).unwrap()["lastName"],
        json!("Thompson")
    );

    assert_eq!(written(&app.settle(3).await), 0);
    assert_eq!(app.crm_count().await, 1);
    assert_eq!(app.sim.counters().leads, 1);
    app.cleanup().await;
}

async fn a_merge_in_marketo_repoints_the_crm_record(store: StoreKind) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    let loser = app.marketo_create(json!({"email": "m1@example.com", "firstName": "Loser"}));
    app.settle(4).await;
    let cid = app.crm_by_email("m1@example.com").await[0].id.clone();
    // The winner is a lead the CRM does not know (created and merged between two cycles).
    let winner = app.marketo_create(json!({"email": "m2@example.com", "firstName": "Winner"}));
    app.sim.merge_leads(winner, &[loser]).unwrap();
    app.settle(4).await;
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(
        text(&c.fields, "marketo_id").as_deref(),
        Some(winner.to_string().as_str()),
        "the CRM record now points at the winner"
    );
    assert_eq!(
        app.crm_count().await,
        1,
        "no contact created for the winner"
    );
    let links = app
        .store
        .links_by_marketo_keys("leads", &[loser.to_string()])
        .await
        .unwrap();
    assert!(links[0].tombstone.is_some());
    app.cleanup().await;
}

async fn deletions_follow_their_policy_both_ways(store: StoreKind) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    let a = app.marketo_create(json!({"email": "del1@example.com"}));
    let b = app.marketo_create(json!({"email": "del2@example.com"}));
    app.settle(4).await;
    let ca = app.crm_by_email("del1@example.com").await[0].id.clone();
    let cb = app.crm_by_email("del2@example.com").await[0].id.clone();
    // Marketo deletion, policy delete: the contact goes.
    assert!(app.sim.delete_lead(a));
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].deleted,
        1,
        "{s:?}"
    );
    assert!(app.crm_contact(&ca).await.is_none());
    // CRM deletion, policy delete: the lead goes.
    app.crm_delete_contact(&cb).await;
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::CrmToMarketo].deleted,
        1,
        "{s:?}"
    );
    assert!(app.marketo_lead(b).is_none());
    app.settle(3).await;
    assert_eq!(app.sim.counters().leads, 0);
    app.cleanup().await;
}

async fn deletions_are_ignored_when_the_policy_says_so(store: StoreKind) {
    let app = TestApp::with(Options {
        lead_deletes: marketo_sync::config::DeletePolicy::Ignore,
        store,
        ..Options::default()
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

async fn killed_cycle(crm: CrmKind, store: StoreKind) {
    use std::sync::atomic::Ordering;
    let (kill, hook) = harness::kill_switch();
    let app = TestApp::with(Options {
        commit_hook: Some(hook),
        ..opts(crm, store)
    })
    .await;
    app.run_cycle().await;
    let lead = app.marketo_create(json!({"email": "k1@example.com", "firstName": "K"}));
    let cid = app.crm_insert_contact("k2@example.com", "Kay", "Two").await;
    kill.store(true, Ordering::SeqCst);
    // Both sides are written, then the commit dies.
    assert!(app.try_cycle().await.is_err());
    kill.store(false, Ordering::SeqCst);
    app.settle(4).await;
    assert_eq!(app.crm_by_email("k1@example.com").await.len(), 1);
    assert_eq!(app.marketo_by_email("k2@example.com").len(), 1);
    assert_eq!(app.crm_count().await, 2);
    assert_eq!(app.sim.counters().leads, 2);
    let c = app.crm_by_email("k1@example.com").await;
    assert_eq!(
        text(&c[0].fields, "marketo_id").as_deref(),
        Some(lead.to_string().as_str())
    );
    let m = app.marketo_by_email("k2@example.com")[0];
    assert_eq!(app.marketo_lead(m).unwrap()["crmContactId"], json!(cid));
    app.cleanup().await;
}

#[tokio::test]
async fn a_killed_cycle_reruns_without_duplicates_or_lost_changes() {
    killed_cycle(CrmKind::Sqlite, StoreKind::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_killed_cycle_reruns_without_duplicates_or_lost_changes() {
    killed_cycle(CrmKind::Postgres, StoreKind::Postgres).await;
}

#[tokio::test]
async fn mariadb_a_killed_cycle_reruns_without_duplicates_or_lost_changes() {
    killed_cycle(CrmKind::MariaDb, StoreKind::Postgres).await;
}

async fn a_spent_daily_quota_pauses_until_the_day_turns(store: StoreKind) {
    let app = TestApp::with(Options {
        daily_call_budget: 100,
        store,
        ..Options::default()
    })
    .await;
    app.run_cycle().await;
    let day = marketo_sync::store::marketo_day(app.clock.now());
    app.store.add_api_usage(day, 100, 0).await.unwrap();
    let lead = app.marketo_create(json!({"email": "q@example.com"}));
    match app.try_cycle().await {
        Err(EngineError::Paused {
            until: Some(until), ..
        }) => {
            assert!(until > app.clock.now());
            app.clock.set(until + chrono::Duration::seconds(1));
        }
        other => panic!("expected a pause, got {other:?}"),
    }
    assert!(app.crm_by_email("q@example.com").await.is_empty());
    app.run_cycle().await;
    assert_eq!(app.crm_by_email("q@example.com").await.len(), 1);
    let _ = lead;
    app.cleanup().await;
}

async fn an_idle_cycle_costs_few_calls(store: StoreKind) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    app.marketo_create(json!({"email": "idle@example.com"}));
    app.settle(4).await;
    let before = app.marketo_calls();
    let s = app.run_cycle().await;
    let used = app.marketo_calls() - before;
    assert!(used <= 6, "an idle cycle used {used} calls");
    assert_eq!(s.marketo_calls, used, "the summary counts the calls");
    app.cleanup().await;
}

async fn a_dry_run_plans_without_writing(store: StoreKind) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    app.marketo_create(json!({"email": "dry@example.com"}));
    let s = app.dry_cycle().await;
    assert!(s.dry_run);
    assert!(!s.plan.is_empty(), "{s:?}");
    assert!(app.crm_by_email("dry@example.com").await.is_empty());
    assert!(app.store.recent_cycles(5).await.unwrap().is_empty());
    // The real cycle still sees the change.
    app.run_cycle().await;
    assert_eq!(app.crm_by_email("dry@example.com").await.len(), 1);
    app.cleanup().await;
}

async fn on_demand_sync_writes_one_lead_to_the_crm(store: StoreKind) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    app.run_cycle().await;
    let lead = app.marketo_create(json!({"email": "now@example.com", "firstName": "Now"}));
    let out = app
        .engine
        .sync_lead_now(lead, &tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, marketo_sync::engine::OnDemandOutcome::Synced);
    assert_eq!(app.crm_by_email("now@example.com").await.len(), 1);
    // The next cycle sees the link: no second contact.
    app.settle(3).await;
    assert_eq!(app.crm_count().await, 1);
    app.cleanup().await;
}

async fn a_mapped_field_removed_in_marketo_disables_only_that_field(store: StoreKind) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    let lead = app.marketo_create(json!({
        "email": "drift@example.com", "firstName": "Drift", "title": "Before"
    }));
    app.settle(4).await;
    let cid = app.crm_by_email("drift@example.com").await[0].id.clone();
    app.sim.hide_lead_field("title");
    app.marketo_update(lead, json!({"title": "After", "firstName": "Still"}));
    let s = app.run_cycle().await;
    assert!(
        s.warnings.iter().any(|w| w.contains("title")),
        "a warning names the field: {:?}",
        s.warnings
    );
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(text(&c.fields, "first_name").as_deref(), Some("Still"));
    assert_eq!(text(&c.fields, "title").as_deref(), Some("Before"));
    // The rest keeps syncing both ways.
    app.crm_update_contact(&cid, "last_name", "Synced").await;
    app.run_cycle().await;
    assert_eq!(app.marketo_lead(lead).unwrap()["lastName"], json!("Synced"));
    app.cleanup().await;
}

async fn a_large_change_set_syncs(updated_at_filter: bool) -> TestApp {
    let mut o = Options::default();
    o.sim.updated_at_filter = updated_at_filter;
    o.tunables.bulk_extract_threshold = 5;
    o.tunables.export_poll = std::time::Duration::from_millis(50);
    let app = TestApp::with(o).await;
    // The bulk path and the activity path both need a first watermark.
    app.run_cycle().await;
    // More than one page of activities (300) with more changed leads than the threshold.
    for i in 0..320 {
        app.marketo_create(json!({"email": format!("bulk{i}@example.com"), "firstName": "B"}));
    }
    app.sim.advance_clock(std::time::Duration::from_secs(2));
    let s = app.run_cycle().await;
    assert_eq!(
        s.warnings.iter().any(|w| w.contains("1035")),
        !updated_at_filter,
        "{:?}",
        s.warnings
    );
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].created,
        320,
        "{:?}",
        s.warnings
    );
    assert_eq!(app.crm_count().await, 320);
    let quiet = app.settle(4).await;
    assert_eq!(written(&quiet), 0);
    assert_eq!(app.sim.counters().leads, 320);
    app
}

#[tokio::test]
async fn a_large_change_set_is_read_by_bulk_extract() {
    let app = a_large_change_set_syncs(true).await;
    let jobs = app
        .store
        .unfinished_jobs(marketo_sync::store::JobDirection::Export)
        .await
        .unwrap();
    assert!(jobs.is_empty(), "the export job was consumed: {jobs:?}");
    let log = app.sim.request_log();
    assert!(
        log.iter()
            .any(|e| format!("{e:?}").contains("leads/export/create")),
        "a bulk lead export ran"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_instance_without_the_updated_at_filter_still_syncs() {
    let app = a_large_change_set_syncs(false).await;
    let cycles = app.store.recent_cycles(10).await.unwrap();
    assert!(cycles.iter().all(|c| c.message.is_none()), "{cycles:?}");
    app.cleanup().await;
}

async fn a_crm_merge_into_a_contact_whose_lead_marketo_deleted_does_not_stall_the_sync(
    store: StoreKind,
) {
    // Found by the convergence harness (seed 20, no faults): the CRM merges contact B into A
    // while Marketo deletes lead A; merging lead B into the gone lead A answered 1004 and every
    // later cycle failed on it.
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    let a = app.marketo_create(json!({"email": "win@example.com", "firstName": "A"}));
    let b = app.marketo_create(json!({"email": "lose@example.com", "firstName": "B"}));
    app.settle(4).await;
    let ca = app.crm_by_email("win@example.com").await[0].id.clone();
    let cb = app.crm_by_email("lose@example.com").await[0].id.clone();
    app.crm_update_contact(&cb, "merged_into", &ca).await;
    app.crm_delete_contact(&cb).await;
    assert!(app.sim.delete_lead(a));
    app.try_cycle()
        .await
        .expect("the cycle survives the gone winner");
    assert_eq!(written(&app.settle(4).await), 0);
    // Both pairs are gone on both sides (deletes follow the delete policy).
    assert!(
        app.marketo_lead(b).is_none(),
        "the loser's lead follows its contact"
    );
    assert_eq!(app.crm_count().await, 0);
    assert_eq!(app.sim.counters().leads, 0);
    app.cleanup().await;
}

async fn a_merge_in_the_crm_merges_the_marketo_leads(store: StoreKind) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    let a = app.marketo_create(json!({"email": "keep@example.com", "firstName": "A"}));
    let b = app.marketo_create(json!({"email": "gone@example.com", "firstName": "B"}));
    app.settle(4).await;
    let ca = app.crm_by_email("keep@example.com").await[0].id.clone();
    let cb = app.crm_by_email("gone@example.com").await[0].id.clone();
    // The CRM merges contact B into contact A.
    app.crm_update_contact(&cb, "merged_into", &ca).await;
    app.crm_delete_contact(&cb).await;
    app.run_cycle().await;
    assert!(
        app.marketo_lead(b).is_none(),
        "the loser lead was merged away"
    );
    assert!(app.marketo_lead(a).is_some());
    app.settle(3).await;
    assert_eq!(
        app.crm_count().await,
        1,
        "no contact re-created for the merged lead"
    );
    assert_eq!(app.sim.counters().leads, 1);
    app.cleanup().await;
}

async fn many_new_crm_records_go_to_marketo_by_bulk_import(store: StoreKind) {
    let mut o = Options {
        store,
        ..Options::default()
    };
    o.tunables.bulk_import_threshold = 5;
    o.tunables.export_poll = std::time::Duration::from_millis(50);
    let app = TestApp::with(o).await;
    app.run_cycle().await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            app.crm_insert_contact(&format!("imp{i}@example.com"), "Imp", &format!("N{i}"))
                .await,
        );
    }
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::CrmToMarketo].created,
        8,
        "{:?}",
        s
    );
    assert!(
        app.sim
            .request_log()
            .iter()
            .any(|e| format!("{e:?}").contains("/bulk/v1/leads.json")),
        "a bulk import ran"
    );
    for (i, cid) in ids.iter().enumerate() {
        let m = app.marketo_by_email(&format!("imp{i}@example.com"));
        assert_eq!(m.len(), 1);
        assert_eq!(app.marketo_lead(m[0]).unwrap()["crmContactId"], json!(cid));
        let c = app.crm_contact(cid).await.unwrap();
        assert_eq!(
            text(&c.fields, "marketo_id").as_deref(),
            Some(m[0].to_string().as_str())
        );
    }
    assert_eq!(written(&app.settle(3).await), 0);
    assert_eq!(app.sim.counters().leads, 8);
    app.cleanup().await;
}

async fn many_crm_edits_of_linked_leads_go_to_marketo_by_bulk_import(store: StoreKind) {
    let mut o = Options {
        store,
        ..Options::default()
    };
    o.tunables.bulk_import_threshold = 5;
    o.tunables.export_poll = std::time::Duration::from_millis(50);
    let app = TestApp::with(o).await;
    app.run_cycle().await;
    let mut ids = Vec::new();
    for i in 0..9 {
        ids.push(
            app.crm_insert_contact(&format!("upd{i}@example.com"), "Upd", &format!("N{i}"))
                .await,
        );
    }
    app.settle(3).await;
    let imports_before = app
        .sim
        .request_log()
        .iter()
        .filter(|e| e.path == "/bulk/v1/leads.json")
        .count();
    // Eight contacts get a new title: one group writing the same fields, above the threshold
    // of 5. The ninth is not edited and must stay as it was.
    for cid in &ids[..8] {
        app.crm_update_contact(cid, "title", &format!("Title {cid}"))
            .await;
    }
    app.sim.advance_clock(std::time::Duration::from_secs(300));
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&Direction::CrmToMarketo].updated,
        8,
        "{s:?}"
    );
    let imports: Vec<_> = app
        .sim
        .request_log()
        .into_iter()
        .filter(|e| e.path == "/bulk/v1/leads.json")
        .collect();
    assert_eq!(imports.len(), imports_before + 1, "one bulk import ran");
    assert!(
        imports.last().unwrap().query.contains("lookupField=id"),
        "{:?}",
        imports.last()
    );
    for (i, cid) in ids.iter().enumerate() {
        let m = app.marketo_by_email(&format!("upd{i}@example.com"));
        assert_eq!(m.len(), 1);
        let lead = app.marketo_lead(m[0]).unwrap();
        let want = if i < 8 {
            json!(format!("Title {cid}"))
        } else {
            json!(null)
        };
        assert_eq!(lead["title"], want, "lead {i}");
        assert_eq!(
            lead["lastName"],
            json!(format!("N{i}")),
            "untouched field of {i}"
        );
    }
    assert_eq!(written(&app.settle(3).await), 0, "no echo comes back");
    app.cleanup().await;
}

#[tokio::test]
async fn a_rejected_record_goes_to_the_error_ledger_without_holding_back_the_rest() {
    let app = TestApp::with(opts(CrmKind::Postgres, StoreKind::Sqlite)).await;
    app.run_cycle().await;
    // The CRM refuses this first name.
    app.user
        .execute_raw(
            "constraint",
            "ALTER TABLE contacts ADD CONSTRAINT no_rejects CHECK (first_name <> 'Reject')".into(),
        )
        .await
        .unwrap();
    let bad = app.marketo_create(json!({"email": "bad@example.com", "firstName": "Reject"}));
    app.marketo_create(json!({"email": "fine@example.com", "firstName": "Fine"}));
    let s = app.run_cycle().await;
    let c = s.objects["leads"][&Direction::MarketoToCrm];
    assert_eq!((c.created, c.failed), (1, 1), "{s:?}");
    assert_eq!(app.crm_by_email("fine@example.com").await.len(), 1);
    let errors = app.store.list_errors(&Default::default()).await.unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].record_key, bad.to_string());
    // The CRM says a constraint refusal is not retryable: it waits for the record to change.
    assert_eq!(errors[0].next_retry_at, None);
    assert_eq!(errors[0].attempts, 1);
    // Fixed in Marketo: the next cycle writes it and resolves the error.
    app.marketo_update(bad, json!({"firstName": "Short"}));
    app.run_cycle().await;
    assert_eq!(app.crm_by_email("bad@example.com").await.len(), 1);
    let open = app
        .store
        .list_errors(&marketo_sync::store::ErrorFilter {
            status: Some(marketo_sync::store::ErrorStatus::Open),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(open.is_empty(), "{open:?}");
    app.cleanup().await;
}

async fn an_unfinished_export_is_resumed_after_a_restart_not_created_again(store: StoreKind) {
    use marketo_sync::engine::CycleOptions;
    use marketo_sync::store::JobDirection;
    let mut o = Options {
        store,
        ..Options::default()
    };
    o.sim.updated_at_filter = true;
    o.sim.export_delay = std::time::Duration::from_secs(120);
    o.tunables.bulk_extract_threshold = 5;
    o.tunables.export_poll = std::time::Duration::from_millis(20);
    let app = TestApp::with(o).await;
    app.run_cycle().await;
    for i in 0..310 {
        app.marketo_create(json!({"email": format!("r{i}@example.com")}));
    }
    app.sync_clock();
    let cancel = tokio_util::sync::CancellationToken::new();
    let options = CycleOptions::default();
    // "Kill" the cycle once the export job is persisted and waiting in Marketo.
    let result = {
        let cycle = app.engine.run_one_cycle(&options, &cancel);
        tokio::pin!(cycle);
        loop {
            tokio::select! {
                r = &mut cycle => break r,
                _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
                    if !app.store.unfinished_jobs(JobDirection::Export).await.unwrap().is_empty() {
                        cancel.cancel();
                    }
                }
            }
        }
    };
    assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
    assert!(app.crm_by_email("r0@example.com").await.is_empty());
    // The job finishes in Marketo meanwhile; the next cycle picks it up.
    app.sim.advance_clock(std::time::Duration::from_secs(300));
    let s = app.run_cycle().await;
    assert_eq!(s.objects["leads"][&Direction::MarketoToCrm].created, 310);
    let creates = app
        .sim
        .request_log()
        .iter()
        .filter(|e| format!("{e:?}").contains("leads/export/create"))
        .count();
    assert_eq!(creates, 1, "the export was resumed, not created again");
    assert!(
        app.store
            .unfinished_jobs(JobDirection::Export)
            .await
            .unwrap()
            .is_empty()
    );
    app.cleanup().await;
}

async fn activity_types_are_read_once_a_day_and_other_objects_do_not_stop_leads(store: StoreKind) {
    let app = TestApp::with(Options {
        objects: vec!["leads".into(), "activities".into(), "companies".into()],
        store,
        ..Options::default()
    })
    .await;
    app.marketo_create(json!({"email": "a@example.com"}));
    let s = app.run_cycle().await;
    assert_eq!(s.objects["leads"][&Direction::MarketoToCrm].created, 1);
    app.run_cycle().await;
    let types_calls = app
        .sim
        .request_log()
        .iter()
        .filter(|e| format!("{e:?}").contains("activities/types.json"))
        .count();
    assert_eq!(types_calls, 1, "activity types are cached for a day");
    let stored = app
        .store
        .schema(Side::Marketo, "activity_types")
        .await
        .unwrap()
        .expect("activity types stored");
    assert!(stored.schema.as_array().is_some_and(|a| !a.is_empty()));
    app.clock.advance(std::time::Duration::from_secs(25 * 3600));
    app.run_cycle().await;
    let types_calls = app
        .sim
        .request_log()
        .iter()
        .filter(|e| format!("{e:?}").contains("activities/types.json"))
        .count();
    assert_eq!(types_calls, 2, "read again after a day");
    app.cleanup().await;
}

/// Found by the convergence harness (seed 1 without faults): the loser's lead was re-pointed to
/// the unlinked survivor, and the new lead with the survivor's email was linked to it as well.
async fn a_crm_merge_into_a_new_contact_that_a_new_lead_matches_links_each_record_once(
    store: StoreKind,
) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    let a = app.marketo_create(json!({"email": "x@example.com", "firstName": "X"}));
    app.settle(4).await;
    let cx = app.crm_by_email("x@example.com").await[0].id.clone();
    // Before the next cycle: a lead and a contact with one email (a conversion), and the CRM
    // merges the old contact into the new one.
    let b = app.marketo_create(json!({"email": "s@example.com", "firstName": "S"}));
    let cs = app
        .crm_insert_contact("s@example.com", "S", "Survivor")
        .await;
    app.crm_update_contact(&cx, "merged_into", &cs).await;
    app.crm_delete_contact(&cx).await;
    app.settle(6).await;
    let leads: Vec<i64> = [a, b]
        .into_iter()
        .filter(|id| app.marketo_lead(*id).is_some())
        .collect();
    let survivor = app
        .crm_contact(&cs)
        .await
        .expect("the survivor contact lives");
    let linked: Vec<i64> = leads
        .iter()
        .copied()
        .filter(|id| app.marketo_lead(*id).unwrap()["crmContactId"] == json!(cs))
        .collect();
    assert_eq!(
        linked.len(),
        1,
        "one lead per contact: {leads:?} {linked:?}"
    );
    assert_eq!(
        text(&survivor.fields, "marketo_id").as_deref(),
        Some(linked[0].to_string().as_str())
    );
    assert_eq!(
        app.crm_count().await,
        app.sim.counters().leads,
        "no orphans"
    );
    app.cleanup().await;
}

/// Two linked contacts merged in the CRM into one new contact before a cycle (HubSpot reports
/// a chain of merges so, found by its convergence seed 300091): the survivor takes over the
/// first loser's lead and the second loser's lead is merged into it, so the survivor ends with
/// one lead, not two.
async fn two_crm_merges_into_one_new_contact_leave_it_one_lead(store: StoreKind) {
    let app = TestApp::with(Options {
        store,
        ..Options::default()
    })
    .await;
    let a = app.marketo_create(json!({"email": "a@example.com", "firstName": "A"}));
    let b = app.marketo_create(json!({"email": "b@example.com", "firstName": "B"}));
    app.settle(4).await;
    let ca = app.crm_by_email("a@example.com").await[0].id.clone();
    let cb = app.crm_by_email("b@example.com").await[0].id.clone();
    let cs = app
        .crm_insert_contact("s@example.com", "S", "Survivor")
        .await;
    for loser in [&ca, &cb] {
        app.crm_update_contact(loser, "merged_into", &cs).await;
        app.crm_delete_contact(loser).await;
    }
    app.settle(6).await;
    let live: Vec<i64> = [a, b]
        .into_iter()
        .filter(|id| app.marketo_lead(*id).is_some())
        .collect();
    assert_eq!(live.len(), 1, "the two leads were merged: {live:?}");
    assert_eq!(
        app.marketo_lead(live[0]).unwrap()["crmContactId"],
        json!(cs)
    );
    let links = app
        .store
        .links_by_crm_keys("leads", std::slice::from_ref(&cs))
        .await
        .unwrap();
    let live_links: Vec<_> = links.iter().filter(|l| l.tombstone.is_none()).collect();
    assert_eq!(live_links.len(), 1, "{links:?}");
    assert_eq!(live_links[0].marketo_key, live[0].to_string());
    assert_eq!(
        app.crm_count().await,
        app.sim.counters().leads,
        "no orphans"
    );
    app.cleanup().await;
}

async fn a_marketo_merge_of_two_linked_leads_deletes_only_the_losers_contact(store: StoreKind) {
    let app = TestApp::with(Options {
        lead_merges: marketo_sync::config::DeletePolicy::Delete,
        store,
        ..Options::default()
    })
    .await;
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
    assert_eq!(app.crm_count().await, 1);
    app.cleanup().await;
}

macro_rules! on_stores {
    ($module:ident, $store:expr; $($name:ident),* $(,)?) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($store).await;
                }
            )*
        }
    };
}

on_stores!(sqlite_store, StoreKind::Sqlite;
    the_same_field_edited_on_both_sides_is_settled_by_policy_and_recorded, a_crm_contact_whose_email_exists_in_marketo_is_linked_not_duplicated, a_merge_in_marketo_repoints_the_crm_record, deletions_follow_their_policy_both_ways, deletions_are_ignored_when_the_policy_says_so, a_spent_daily_quota_pauses_until_the_day_turns, an_idle_cycle_costs_few_calls, a_dry_run_plans_without_writing, on_demand_sync_writes_one_lead_to_the_crm, a_mapped_field_removed_in_marketo_disables_only_that_field, a_crm_merge_into_a_contact_whose_lead_marketo_deleted_does_not_stall_the_sync, a_merge_in_the_crm_merges_the_marketo_leads, many_new_crm_records_go_to_marketo_by_bulk_import, many_crm_edits_of_linked_leads_go_to_marketo_by_bulk_import, an_unfinished_export_is_resumed_after_a_restart_not_created_again, activity_types_are_read_once_a_day_and_other_objects_do_not_stop_leads, a_crm_merge_into_a_new_contact_that_a_new_lead_matches_links_each_record_once, a_marketo_merge_of_two_linked_leads_deletes_only_the_losers_contact, two_crm_merges_into_one_new_contact_leave_it_one_lead);
on_stores!(postgres_store, StoreKind::Postgres;
    the_same_field_edited_on_both_sides_is_settled_by_policy_and_recorded, a_crm_contact_whose_email_exists_in_marketo_is_linked_not_duplicated, a_merge_in_marketo_repoints_the_crm_record, deletions_follow_their_policy_both_ways, deletions_are_ignored_when_the_policy_says_so, a_spent_daily_quota_pauses_until_the_day_turns, an_idle_cycle_costs_few_calls, a_dry_run_plans_without_writing, on_demand_sync_writes_one_lead_to_the_crm, a_mapped_field_removed_in_marketo_disables_only_that_field, a_crm_merge_into_a_contact_whose_lead_marketo_deleted_does_not_stall_the_sync, a_merge_in_the_crm_merges_the_marketo_leads, many_new_crm_records_go_to_marketo_by_bulk_import, many_crm_edits_of_linked_leads_go_to_marketo_by_bulk_import, an_unfinished_export_is_resumed_after_a_restart_not_created_again, activity_types_are_read_once_a_day_and_other_objects_do_not_stop_leads, a_crm_merge_into_a_new_contact_that_a_new_lead_matches_links_each_record_once, a_marketo_merge_of_two_linked_leads_deletes_only_the_losers_contact, two_crm_merges_into_one_new_contact_leave_it_one_lead);
