//! On-demand work through the engine: batched webhook leads, one CRM record to Marketo, and the
//! shared Marketo quota (simulator, demo CRM on SQLite, and on PostgreSQL for the CRM side).

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;

use harness::{CrmKind, Options, TestApp};
use marketo_sync::engine::{CrmRecordOutcome, Engine, EngineError, OnDemandOutcome, Runner};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Counted Get Leads calls after `mark` (by filter, in either form, or by id).
fn get_leads_calls(app: &TestApp, mark: u64) -> usize {
    let log = app.sim.request_log();
    log.iter()
        .filter(|e| e.seq > mark && e.counted)
        .filter(|e| {
            let by_filter = e.path == "/rest/v1/leads.json"
                && (e.method == "GET" || e.query.contains("_method=GET"));
            by_filter || (e.method == "GET" && e.path.starts_with("/rest/v1/lead/"))
        })
        .count()
}

/// The usage reads (`/rest/v1/stats/usage.json`) after `mark`.
fn usage_reads(app: &TestApp, mark: u64) -> usize {
    let log = app.sim.request_log();
    log.iter()
        .filter(|e| e.seq > mark && e.path == "/rest/v1/stats/usage.json")
        .count()
}

/// An engine on `app`'s parts with edited Marketo settings.
fn engine_with(
    app: &TestApp,
    edit: impl FnOnce(&mut marketo_sync::config::MarketoSettings),
) -> Engine {
    let mut ctx = app.engine.context().clone();
    let mut settings = (*ctx.settings).clone();
    edit(&mut settings.marketo);
    ctx.settings = Arc::new(settings);
    Engine::new(ctx)
}

fn new_leads(app: &TestApp, prefix: &str, n: usize) -> Vec<i64> {
    (0..n)
        .map(|i| {
            app.marketo_create(
                json!({"email": format!("{prefix}{i}@example.com"), "firstName": "Hook"}),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_batch_of_webhook_leads_costs_one_get_leads_call_per_300() {
    let app = TestApp::start().await;
    app.run_cycle().await;
    let ids = new_leads(&app, "batch", 450);
    let mut asked = ids.clone();
    asked.push(999_999_999);
    let mark = app.log_mark();
    let out = app
        .engine
        .sync_leads_now(&asked, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(get_leads_calls(&app, mark), 2, "450 leads in 300-id reads");
    assert_eq!(out.len(), 451);
    let synced = out
        .iter()
        .filter(|(_, o)| *o == OnDemandOutcome::Synced)
        .count();
    assert_eq!(synced, 450, "{out:?}");
    assert!(out.contains(&(999_999_999, OnDemandOutcome::NotFound)));
    for i in [0, 299, 449] {
        let contact = app.crm_by_email(&format!("batch{i}@example.com")).await;
        assert_eq!(contact.len(), 1, "lead {i} reached the CRM");
        assert_eq!(
            harness::text(&contact[0].fields, "marketo_id").as_deref(),
            Some(ids[i].to_string().as_str())
        );
    }
    // Synced again without a change: nothing to write.
    let again = app
        .engine
        .sync_leads_now(&ids[..3], &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        again.iter().all(|(_, o)| *o == OnDemandOutcome::Unchanged),
        "{again:?}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn past_the_on_demand_share_leads_wait_for_the_poll() {
    let app = TestApp::start().await;
    app.run_cycle().await;
    // 10,000 calls a day, of which on-demand may spend 1.
    let engine = engine_with(&app, |m| m.on_demand_share = 0.00015);
    let first = new_leads(&app, "first", 1);
    let out = engine
        .sync_leads_now(&first, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, vec![(first[0], OnDemandOutcome::Synced)]);
    assert!(engine.quota().on_demand_calls(app.sim.now()) >= 1);

    let later = new_leads(&app, "later", 1);
    let mark = app.log_mark();
    let out = engine
        .sync_leads_now(&later, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, vec![(later[0], OnDemandOutcome::Deferred)]);
    assert_eq!(
        get_leads_calls(&app, mark),
        0,
        "a deferred lead costs no call"
    );
    assert!(app.crm_by_email("later0@example.com").await.is_empty());
    // Not lost: the next poll carries it.
    app.run_cycle().await;
    assert_eq!(app.crm_by_email("later0@example.com").await.len(), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn the_cycle_keeps_within_its_share_of_the_instance_quota_read_once_an_hour() {
    let app = TestApp::start().await;
    let mark = app.log_mark();
    // An instance whose quota the other integrations have spent: nothing is left to share.
    let engine = engine_with(&app, |m| m.instance_daily_quota = 1);
    let cancel = CancellationToken::new();
    app.sync_clock();
    let err = engine
        .run_one_cycle(&Default::default(), &cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Paused { reason, .. } if reason.contains("budget spent")),
        "{err}"
    );
    assert!(
        engine
            .sync_crm_record_now("leads", "1", &cancel)
            .await
            .is_err()
    );
    assert_eq!(usage_reads(&app, mark), 1, "one usage read within the hour");
    // An hour later the usage is read again.
    app.clock
        .set(app.sim.now() + chrono::TimeDelta::minutes(61));
    let _ = engine.run_one_cycle(&Default::default(), &cancel).await;
    assert_eq!(usage_reads(&app, mark), 2);

    // With the quota the sim reports far away, the same cycle runs.
    let roomy = engine_with(&app, |m| m.instance_daily_quota = 1_000_000);
    roomy
        .run_one_cycle(&Default::default(), &cancel)
        .await
        .unwrap();
    app.cleanup().await;
}

async fn a_crm_record_syncs_to_marketo_on_demand_on(crm: CrmKind) {
    let app = TestApp::with(Options::on(crm)).await;
    app.run_cycle().await;
    let cancel = CancellationToken::new();
    let id = app
        .crm_insert_contact("crm-now@example.com", "Crm", "Now")
        .await;
    let mark = app.log_mark();
    let out = app
        .engine
        .sync_crm_record_now("leads", &id, &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Synced);
    assert_eq!(app.marketo_by_email("crm-now@example.com").len(), 1);
    assert!(
        app.calls_since(mark).counted <= 6,
        "one record, a few calls"
    );
    // By the CRM object's name too; nothing changed since.
    let out = app
        .engine
        .sync_crm_record_now("contacts", &id, &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Unchanged);

    assert_eq!(
        app.engine
            .sync_crm_record_now("leads", "987654", &cancel)
            .await
            .unwrap(),
        CrmRecordOutcome::NotFound
    );
    match app
        .engine
        .sync_crm_record_now("widgets", &id, &cancel)
        .await
        .unwrap()
    {
        CrmRecordOutcome::UnknownObject { known } => assert_eq!(known, vec!["leads"]),
        other => panic!("{other:?}"),
    }

    // Marketo refuses a record: a ledger entry, and the reason in the outcome.
    app.sim.refuse_records(
        "email",
        "refused@example.com",
        "1003",
        "Invalid value for field",
    );
    let bad = app
        .crm_insert_contact("refused@example.com", "Re", "Fused")
        .await;
    match app
        .engine
        .sync_crm_record_now("leads", &bad, &cancel)
        .await
        .unwrap()
    {
        CrmRecordOutcome::Refused { code, message } => {
            assert_eq!(code, "1003", "{message}");
            assert!(message.contains("Invalid value"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let open = app.open_errors("leads").await;
    assert!(open.iter().any(|e| e.record_key == bad), "{open:?}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_crm_record_syncs_to_marketo_on_demand() {
    a_crm_record_syncs_to_marketo_on_demand_on(CrmKind::Sqlite).await;
}

#[tokio::test]
async fn a_crm_record_syncs_to_marketo_on_demand_postgres() {
    a_crm_record_syncs_to_marketo_on_demand_on(CrmKind::Postgres).await;
}
