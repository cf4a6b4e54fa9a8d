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

/// Counted calls of `METHOD path` after `mark`.
fn calls_to(app: &TestApp, mark: u64, route: &str) -> u64 {
    app.calls_since(mark)
        .by_path
        .get(route)
        .copied()
        .unwrap_or(0)
}

/// Now, in the SQLite CRM.
const NOW: &str = "strftime('%Y-%m-%d %H:%M:%f','now')";
const COMPANY_WRITES: &str = "POST /rest/v1/companies.json";
const OPPORTUNITY_WRITES: &str = "POST /rest/v1/opportunities.json";
const SALESPERSON_WRITES: &str = "POST /rest/v1/salespersons.json";
const CAR_WRITES: &str = "POST /rest/v1/customobjects/car_c.json";

/// The Marketo companies with this `externalCompanyId`: (company name, industry).
async fn marketo_company(app: &TestApp, key: &str) -> Vec<(String, String)> {
    let fields = vec!["company".to_owned(), "industry".to_owned()];
    let page = app
        .engine
        .context()
        .marketo
        .get_companies("externalCompanyId", &[key.to_owned()], &fields, None)
        .await
        .unwrap();
    page.records
        .iter()
        .map(|r| {
            let text = |f: &str| {
                r.get(f)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            (text("company"), text("industry"))
        })
        .collect()
}

fn objects_app() -> Options {
    Options {
        objects: [
            "salespersons",
            "leads",
            "companies",
            "opportunities",
            "cars",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    }
}

#[tokio::test]
async fn companies_opportunities_salespersons_and_custom_objects_sync_on_demand_in_one_write_each()
{
    let app = TestApp::with(objects_app()).await;
    let contact = app
        .crm_insert_contact("driver@example.com", "Dee", "Driver")
        .await;
    app.run_cycle().await;
    let cancel = CancellationToken::new();
    app.crm_exec(&format!(
        "INSERT INTO accounts (id, name, industry, updated_at) VALUES (900, 'Ondemand Co', 'Retail', {NOW})"
    ))
        .await;

    // A company: one write call, and no read (it has no link yet).
    let mark = app.log_mark();
    let out = app
        .engine
        .sync_crm_record_now("companies", "900", &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Synced);
    assert_eq!(calls_to(&app, mark, COMPANY_WRITES), 1);
    assert_eq!(
        app.calls_since(mark).counted,
        1,
        "{:?}",
        app.calls_since(mark).by_path
    );
    assert_eq!(
        marketo_company(&app, "900").await,
        vec![("Ondemand Co".to_owned(), "Retail".to_owned())]
    );
    // Again, by the CRM object's name: its Marketo company is read (one call), nothing written.
    let mark = app.log_mark();
    let out = app
        .engine
        .sync_crm_record_now("accounts", "900", &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Unchanged);
    assert_eq!(calls_to(&app, mark, COMPANY_WRITES), 0);
    // A CRM edit syncs on demand as an update.
    app.crm_exec(&format!(
        "UPDATE accounts SET industry = 'Media', updated_at = {NOW} WHERE id = 900"
    ))
    .await;
    let out = app
        .engine
        .sync_crm_record_now("companies", "900", &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Synced);
    assert_eq!(
        marketo_company(&app, "900").await,
        vec![("Ondemand Co".to_owned(), "Media".to_owned())]
    );

    // An opportunity on that account.
    app.crm_exec(&format!(
        "INSERT INTO opportunities (id, name, account_id, amount, stage, is_closed, is_won, \
         close_date, updated_at) VALUES (700, 'Big deal', 900, 5000.5, 'Won', 1, 1, \
         '2030-03-01', {NOW})"
    ))
    .await;
    let mark = app.log_mark();
    let out = app
        .engine
        .sync_crm_record_now("opportunities", "700", &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Synced);
    assert_eq!(calls_to(&app, mark, OPPORTUNITY_WRITES), 1);
    assert_eq!(app.calls_since(mark).counted, 1);
    let out = app
        .engine
        .sync_crm_record_now("opportunities", "700", &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Unchanged);

    // A custom object record of a linked contact.
    app.crm_exec(&format!(
        "INSERT INTO vehicles (id, vin, contact_id, make, updated_at) \
         VALUES (40, 'VIN40', {contact}, 'Fiat', {NOW})"
    ))
    .await;
    let mark = app.log_mark();
    let out = app
        .engine
        .sync_crm_record_now("cars", "40", &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Synced);
    assert_eq!(calls_to(&app, mark, CAR_WRITES), 1);
    assert_eq!(app.calls_since(mark).counted, 1);
    let out = app
        .engine
        .sync_crm_record_now("vehicles", "40", &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Unchanged);

    // A salesperson, by the CRM object's name.
    app.crm_exec(&format!(
        "INSERT INTO users (id, email, first_name, last_name, updated_at) \
         VALUES (77, 'owner@example.com', 'Olga', 'Owner', {NOW})"
    ))
    .await;
    let mark = app.log_mark();
    let out = app
        .engine
        .sync_crm_record_now("users", "77", &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Synced);
    assert_eq!(calls_to(&app, mark, SALESPERSON_WRITES), 1);
    assert_eq!(app.calls_since(mark).counted, 1);

    assert_eq!(
        app.engine
            .sync_crm_record_now("companies", "987654", &cancel)
            .await
            .unwrap(),
        CrmRecordOutcome::NotFound
    );

    // The next cycle reads the same rows from the feed and writes none of them again.
    let mark = app.log_mark();
    let s = app.run_cycle().await;
    for route in [
        COMPANY_WRITES,
        OPPORTUNITY_WRITES,
        CAR_WRITES,
        SALESPERSON_WRITES,
    ] {
        assert_eq!(calls_to(&app, mark, route), 0, "{route}: {:?}", s.objects);
    }
    for object in ["companies", "opportunities", "cars", "salespersons"] {
        let c = s.objects[object][&marketo_sync::store::Direction::CrmToMarketo];
        assert!(c.read >= 1, "the feed carried the {object} record: {c:?}");
        assert_eq!(c.created + c.updated + c.failed, 0, "{object}: {c:?}");
    }
    assert!(app.open_errors("companies").await.is_empty());
    app.cleanup().await;
}

#[tokio::test]
async fn a_record_marketo_refuses_on_demand_is_one_ledger_entry_and_the_poll_does_not_resend_it() {
    let app = TestApp::with(objects_app()).await;
    app.run_cycle().await;
    let cancel = CancellationToken::new();
    app.sim
        .refuse_records("company", "Refused Co", "1003", "Invalid value for field");
    app.crm_exec(&format!(
        "INSERT INTO accounts (id, name, updated_at) VALUES (901, 'Refused Co', {NOW})"
    ))
    .await;
    let mark = app.log_mark();
    for _ in 0..2 {
        match app
            .engine
            .sync_crm_record_now("companies", "901", &cancel)
            .await
            .unwrap()
        {
            CrmRecordOutcome::Refused { code, message } => {
                assert_eq!(code, "1003", "{message}");
                assert!(message.contains("Invalid value"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The second call found it waiting in the ledger: one write in all, one entry.
    assert_eq!(calls_to(&app, mark, COMPANY_WRITES), 1);
    let open = app.open_errors("companies").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].record_key, "901");

    let mark = app.log_mark();
    let s = app.run_cycle().await;
    assert_eq!(calls_to(&app, mark, COMPANY_WRITES), 0, "{:?}", s.objects);
    let c = s.objects["companies"][&marketo_sync::store::Direction::CrmToMarketo];
    assert!(c.read >= 1, "the feed carried the refused account: {c:?}");
    assert_eq!(app.open_errors("companies").await.len(), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn objects_without_a_one_record_path_answer_poll_only() {
    let app = TestApp::with(Options {
        objects: ["leads", "programs", "static_lists"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await;
    app.run_cycle().await;
    let cancel = CancellationToken::new();
    let mark = app.log_mark();
    for object in ["programs", "campaigns", "static_lists", "list_members"] {
        let out = app
            .engine
            .sync_crm_record_now(object, "1", &cancel)
            .await
            .unwrap();
        assert_eq!(out, CrmRecordOutcome::PollOnly, "{object}");
    }
    assert_eq!(app.calls_since(mark).counted, 0, "poll-only costs no call");
    app.cleanup().await;
}

/// `sync --record companies:ID` (its library entry, with the shipped demo configuration): one
/// company write, then `unchanged` with none.
#[tokio::test]
async fn sync_record_of_a_company_writes_it_once() {
    use marketo_sync::config::SettingsSource;
    use marketo_sync::engine::once::run_record_with;
    use marketo_sync::sim::{SimConfig, Simulator, demo_crm};
    use secrecy::SecretString;

    let sim = Simulator::start(SimConfig {
        leads: 3,
        client_id: "demo-client".into(),
        client_secret: SecretString::from("demo-client-secret"),
        export_delay: std::time::Duration::ZERO,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let crm_url = format!("sqlite://{}", dir.path().join("crm.db").display());
    demo_crm::install(&crm_url, 3, 4).await.unwrap();
    let db = marketo_sync::crm::sql::dialect::SqlPool::connect(&crm_url, 1, false)
        .await
        .unwrap();
    db.execute_raw(
        "account",
        "INSERT INTO accounts (id, name, industry) VALUES (900, 'Record Co', 'Retail')".to_owned(),
    )
    .await
    .unwrap();
    let vars = std::collections::HashMap::from([
        ("MKSYNC__MARKETO__BASE_URL".to_owned(), sim.base_url()),
        ("MKSYNC__CRM__URL".to_owned(), crm_url),
        (
            "MKSYNC__STORE__URL".to_owned(),
            format!("sqlite://{}", dir.path().join("state.db").display()),
        ),
    ]);
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let source = SettingsSource::new(config, Some("demo")).with_vars(vars);
    let cancel = CancellationToken::new();
    let writes = |mark: u64| {
        harness::calls_since(&sim, mark)
            .by_path
            .get(COMPANY_WRITES)
            .copied()
            .unwrap_or(0)
    };

    let mark = harness::log_mark(&sim);
    let out = run_record_with(&source, "companies", "900", &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Synced);
    assert_eq!(writes(mark), 1);
    let mark = harness::log_mark(&sim);
    let out = run_record_with(&source, "companies", "900", &cancel)
        .await
        .unwrap();
    assert_eq!(out, CrmRecordOutcome::Unchanged);
    assert_eq!(writes(mark), 0);
    db.close().await;
    sim.shutdown().await;
}
