//! The engine steps of the objects other than leads, against the in-process Marketo simulator,
//! the demo CRM on SQLite and a SQLite state store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use marketo_sync::config::{Settings, Severity, parse_mapping};
use marketo_sync::crm::sql::dialect::SqlPool;
use marketo_sync::crm::{Crm, registry};
use marketo_sync::engine::objects::{self, activities};
use marketo_sync::engine::{Context, CycleOptions, CycleSummary};
use marketo_sync::mapping::{Plans, SchemaSet, compile_all};
use marketo_sync::marketo::{Client, ClientConfig};
use marketo_sync::model::{Fields, Side, fields_hash};
use marketo_sync::sim::{LogEntry, SimConfig, SimHandle, Simulator, demo_crm};
use marketo_sync::store::{
    self, Direction, ErrorFilter, Link, ManualClock, OpenOptions, StateStore, StepCommit,
};
use secrecy::SecretString;
use serde_json::{Map, Value as Json, json};
use tokio_util::sync::CancellationToken;

const OBJECTS: &[&str] = &[
    "salespersons",
    "companies",
    "opportunities",
    "roles",
    "cars",
    "activities",
];

struct Env {
    sim: SimHandle,
    ctx: Context,
    plans: Plans,
    db: SqlPool,
    clock: ManualClock,
    store: Arc<dyn StateStore>,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Env {
        Env::start(false, false).await
    }

    /// With `car_color`, the CRM's vehicles have a `color` column that is `NOT NULL` with a
    /// default, and the cars mapping syncs Marketo's `color` into it.
    async fn start(native_crm_sync: bool, car_color: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let crm_url = format!("sqlite://{}", dir.path().join("crm.db").display());
        demo_crm::install(&crm_url, 1, 0).await.unwrap();
        let db = SqlPool::connect(&crm_url, 1, false).await.unwrap();
        for table in demo_crm::OBJECTS {
            db.execute_raw("empty", format!("DELETE FROM {table}"))
                .await
                .unwrap();
        }
        if car_color {
            db.execute_raw(
                "color column",
                "ALTER TABLE vehicles ADD COLUMN color VARCHAR(20) NOT NULL DEFAULT 'unpainted'"
                    .to_owned(),
            )
            .await
            .unwrap();
        }
        // The demo CRM has no activities table: the CRM side of the activities mapping.
        db.execute_raw(
            "activities table",
            "CREATE TABLE marketing_activities (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             marketo_guid VARCHAR(64), kind VARCHAR(40), occurred_at DATETIME, \
             marketo_lead_id INTEGER, contact_id VARCHAR(64), detail VARCHAR(255), \
             marketo_id VARCHAR(64), \
             updated_at DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')), \
             deleted BOOLEAN NOT NULL DEFAULT 0); \
             CREATE UNIQUE INDEX ux_ma_guid ON marketing_activities (marketo_guid); \
             CREATE UNIQUE INDEX ux_ma_mid ON marketing_activities (marketo_id)"
                .to_owned(),
        )
        .await
        .unwrap();
        let mut options = demo_crm::adapter_options(true, false);
        options["objects"]["marketing_activities"] = json!({
            "table": "marketing_activities", "primary_key": "id",
            "modified_column": "updated_at",
            "soft_delete": { "column": "deleted", "value": true },
            "marketo_id_column": "marketo_id", "writable": true, "changelog": false,
        });
        let crm: Arc<dyn Crm> =
            registry::build("sql", Some(&SecretString::from(crm_url)), &options)
                .await
                .unwrap();

        let sim = Simulator::start(SimConfig {
            leads: 0,
            export_delay: Duration::ZERO,
            import_delay: Duration::ZERO,
            native_crm_sync,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let (id, secret) = sim.credentials();
        let mut config = ClientConfig::new(sim.base_url().parse().unwrap(), id, secret);
        config.identity_url = Some(sim.identity_url().parse().unwrap());
        config.calls_per_20s = 100;
        config.max_concurrency = 10;
        let marketo = Client::new(config).unwrap();

        let clock = ManualClock::new(Utc::now());
        let store = store::open_with(
            &format!("sqlite://{}", dir.path().join("state.db").display()),
            OpenOptions {
                clock: Arc::new(clock.clone()),
                ..OpenOptions::default()
            },
        )
        .await
        .unwrap();

        let mut settings = Settings::default();
        settings.sync.objects = OBJECTS.iter().map(|s| (*s).to_owned()).collect();
        let mappings_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mappings");
        let mappings: Vec<_> = OBJECTS
            .iter()
            .map(|o| {
                let path = mappings_dir.join(format!("{o}.toml"));
                let mut text = std::fs::read_to_string(&path).unwrap();
                if car_color && *o == "cars" {
                    text.push_str("\n[[fields]]\nmarketo = \"color\"\ncrm = \"color\"\n");
                }
                parse_mapping(o, &path, &text).unwrap_or_else(|p| panic!("{o}: {p:?}"))
            })
            .collect();

        let mut schemas = SchemaSet::default();
        for m in &mappings {
            if m.file.is_activities() {
                continue;
            }
            let s = marketo.object_schema(&m.file.marketo_object).await.unwrap();
            schemas.insert(s);
            schemas.insert(crm.describe(&m.file.crm_object).await.unwrap());
        }
        for t in marketo.activity_types().await.unwrap() {
            schemas.insert(activities::activity_schema(&t));
        }
        schemas.insert(crm.describe("marketing_activities").await.unwrap());
        let (plans, problems) = compile_all(&settings, &mappings, &schemas);
        for o in [
            "salespersons",
            "companies",
            "opportunities",
            "roles",
            "cars",
        ] {
            assert!(plans.objects.contains_key(o), "{o}: {problems:#?}");
        }
        assert_eq!(
            plans.activities.keys().copied().collect::<Vec<_>>(),
            vec![1, 12],
            "{problems:#?}"
        );
        // The only expected problem: the simulator has no externalCreatedDate.
        for p in problems.iter().filter(|p| p.severity == Severity::Error) {
            assert!(
                format!("{p:?}").contains("externalCreatedDate"),
                "unexpected problem {p:?}"
            );
        }

        let ctx = Context {
            settings: Arc::new(settings),
            mappings: Arc::new(mappings),
            marketo,
            crm,
            store: store.clone(),
            clock: Arc::new(clock.clone()),
        };
        Env {
            sim,
            ctx,
            plans,
            db,
            clock,
            store,
            _dir: dir,
        }
    }

    /// Changes the Marketo settings the steps run with.
    fn set_marketo(&mut self, change: impl FnOnce(&mut marketo_sync::config::MarketoSettings)) {
        let mut settings = (*self.ctx.settings).clone();
        change(&mut settings.marketo);
        self.ctx.settings = Arc::new(settings);
    }

    async fn exec(&self, sql: &str) {
        self.db.execute_raw("test", sql.to_owned()).await.unwrap();
    }

    async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.db.fetch("test", sql.to_owned(), &[]).await.unwrap()
    }

    /// Runs one step (by its name in `objects::STEPS`) and returns its summary.
    async fn step(&self, name: &str, dry_run: bool) -> CycleSummary {
        let mut summary = CycleSummary::default();
        let options = CycleOptions { dry_run };
        let cancel = CancellationToken::new();
        let (ctx, plans, s) = (&self.ctx, &self.plans, &mut summary);
        let r = if name == "all" {
            objects::run_all(ctx, plans, s, &options, &cancel).await
        } else {
            assert!(objects::step(name).is_some(), "no step {name}");
            objects::run_step(name, ctx, plans, s, &options, &cancel).await
        };
        r.unwrap_or_else(|e| panic!("step {name}: {e}"));
        summary
    }

    /// Creates a Marketo lead and links it to CRM contact `contact` (as the leads step would).
    async fn linked_lead(&self, contact: i64, email: &str, extra: Json) -> i64 {
        self.exec(&format!(
            "INSERT INTO contacts (id, email, first_name, last_name) VALUES ({contact}, '{email}', 'F', 'L')"
        ))
        .await;
        let mut values: Map<String, Json> = extra.as_object().cloned().unwrap_or_default();
        values.insert("email".into(), json!(email));
        let lead = self.sim.create_lead(values);
        let base = Fields::new();
        self.store
            .commit(StepCommit {
                links_upsert: vec![Link {
                    object: objects::LEAD_LINK_OBJECT.into(),
                    marketo_key: lead.to_string(),
                    crm_key: contact.to_string(),
                    base_hash: fields_hash(&base),
                    base,
                    agreed_at: self.clock.now_utc(),
                    tombstone: None,
                }],
                ..StepCommit::default()
            })
            .await
            .unwrap();
        lead
    }

    /// Returns the write calls (POST without `_method=GET`) logged since `from`.
    fn writes_since(&self, from: usize) -> Vec<LogEntry> {
        self.sim
            .request_log()
            .into_iter()
            .skip(from)
            .filter(|e| e.method == "POST" && !e.query.contains("_method=GET"))
            .filter(|e| !e.path.contains("oauth") && !e.path.contains("identity"))
            .collect()
    }

    fn log_len(&self) -> usize {
        self.sim.request_log().len()
    }

    async fn get(&self, endpoint: &str, filter: &str, value: &str, fields: &[&str]) -> Vec<Json> {
        let fields: Vec<String> = fields.iter().map(|s| (*s).to_owned()).collect();
        let values = vec![value.to_owned()];
        let m = &self.ctx.marketo;
        let page = match endpoint {
            "opportunities" => m.get_opportunities(filter, &values, &fields, None).await,
            "roles" => {
                m.get_opportunity_roles(filter, &values, &fields, None)
                    .await
            }
            "salespersons" => m.get_salespersons(filter, &values, &fields, None).await,
            "companies" => m.get_companies(filter, &values, &fields, None).await,
            "car_c" => {
                m.get_custom_objects("car_c", filter, &values, &fields, None)
                    .await
            }
            other => panic!("{other}"),
        }
        .unwrap();
        page.records.into_iter().map(Json::Object).collect()
    }
}

trait NowUtc {
    fn now_utc(&self) -> DateTime<Utc>;
}

impl NowUtc for ManualClock {
    fn now_utc(&self) -> DateTime<Utc> {
        use marketo_sync::store::Clock;
        self.now()
    }
}

/// A CRM user's edit time: a second from now. An edit in the same millisecond as the sync's
/// own write of that row would carry the very modified time the adapter remembers of that
/// write, and be read as its echo.
fn now_sql() -> String {
    let at = Utc::now() + chrono::Duration::seconds(1);
    format!("'{}'", at.format("%Y-%m-%d %H:%M:%S%.3f"))
}

/// A user, an account, a linked contact, an opportunity owned by the user on the account, and a
/// role of the contact on it.
async fn seed_opportunity(env: &Env) -> i64 {
    env.exec(
        "INSERT INTO users (id, email, first_name, last_name) VALUES (7, 'owner@example.com', 'Olga', 'Owner')",
    )
    .await;
    env.exec("INSERT INTO accounts (id, name, industry) VALUES (3, 'Acme', 'Retail')")
        .await;
    let lead = env.linked_lead(11, "buyer@example.com", json!({})).await;
    env.exec(
        "INSERT INTO opportunities (id, name, account_id, amount, stage, is_closed, is_won, \
         close_date, created_at, owner_id) VALUES (21, 'Big deal', 3, 5000.50, 'Won', 1, 1, \
         '2030-03-01', '2030-01-15 10:00:00', 7)",
    )
    .await;
    env.exec(
        "INSERT INTO opportunity_contact_roles (id, opportunity_id, contact_id, role, is_primary) \
         VALUES (31, 21, 11, 'Decision Maker', 1)",
    )
    .await;
    lead
}

async fn sync_all(env: &Env) {
    for step in ["salespersons", "companies", "opportunities", "roles"] {
        env.step(step, false).await;
    }
}

#[tokio::test]
async fn an_opportunity_with_roles_arrives_with_attribution_fields_and_is_deleted_roles_first() {
    let env = Env::new().await;
    let lead = seed_opportunity(&env).await;
    sync_all(&env).await;

    let opp = env
        .get(
            "opportunities",
            "externalOpportunityId",
            "21",
            &[
                "name",
                "amount",
                "isClosed",
                "isWon",
                "closeDate",
                "externalCompanyId",
                "externalSalesPersonId",
                "stage",
            ],
        )
        .await;
    assert_eq!(opp.len(), 1, "{opp:?}");
    let o = &opp[0];
    assert_eq!(o["name"], json!("Big deal"));
    assert_eq!(
        o["amount"]
            .to_string()
            .trim_matches('"')
            .parse::<f64>()
            .unwrap(),
        5000.5
    );
    assert_eq!(o["isClosed"], json!(true));
    assert_eq!(o["isWon"], json!(true));
    assert_eq!(o["closeDate"], json!("2030-03-01"));
    assert_eq!(o["externalCompanyId"], json!("3"));
    assert_eq!(o["externalSalesPersonId"], json!("7"));
    let roles = env
        .get(
            "roles",
            "externalOpportunityId",
            "21",
            &["leadId", "role", "isPrimary"],
        )
        .await;
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0]["leadId"], json!(lead));
    assert_eq!(roles[0]["role"], json!("Decision Maker"));
    assert_eq!(roles[0]["isPrimary"], json!(true));

    // Deleted in the CRM: the role goes before the opportunity.
    let from = env.log_len();
    let now = now_sql();
    env.exec(&format!(
        "UPDATE opportunity_contact_roles SET deleted = 1, updated_at = {now}"
    ))
    .await;
    env.exec(&format!(
        "UPDATE opportunities SET deleted = 1, updated_at = {now}"
    ))
    .await;
    let summary = env.step("deletions", false).await;
    assert_eq!(
        summary.objects["roles"][&Direction::CrmToMarketo].deleted,
        1
    );
    assert_eq!(
        summary.objects["opportunities"][&Direction::CrmToMarketo].deleted,
        1
    );
    let paths: Vec<String> = env.writes_since(from).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        vec![
            "/rest/v1/opportunities/roles/delete.json".to_owned(),
            "/rest/v1/opportunities/delete.json".to_owned()
        ]
    );
    assert!(
        env.get("opportunities", "externalOpportunityId", "21", &["name"])
            .await
            .is_empty()
    );
    assert!(
        env.get("roles", "externalOpportunityId", "21", &["role"])
            .await
            .is_empty()
    );
    let links = env
        .store
        .links_by_crm_keys("opportunities", &["21".into()])
        .await
        .unwrap();
    assert!(links[0].tombstone.is_some());
    // Nothing more to delete on a second run.
    let from = env.log_len();
    env.step("deletions", false).await;
    assert!(env.writes_since(from).is_empty());
}

#[tokio::test]
async fn a_salesperson_deleted_in_the_crm_is_unlinked_from_its_leads_first() {
    let env = Env::new().await;
    env.exec("INSERT INTO users (id, email, first_name, last_name) VALUES (7, 'owner@example.com', 'Olga', 'Owner')")
        .await;
    env.step("salespersons", false).await;
    assert_eq!(
        env.get("salespersons", "externalSalesPersonId", "7", &["email"])
            .await[0]["email"],
        json!("owner@example.com")
    );
    let lead = env
        .linked_lead(
            11,
            "owned@example.com",
            json!({"externalSalesPersonId": "7"}),
        )
        .await;
    assert_eq!(
        env.sim.lead(lead).unwrap()["externalSalesPersonId"],
        json!("7")
    );

    let from = env.log_len();
    env.exec(&format!(
        "UPDATE users SET deleted = 1, updated_at = {}",
        now_sql()
    ))
    .await;
    let summary = env.step("deletions", false).await;
    assert_eq!(
        summary.objects["salespersons"][&Direction::CrmToMarketo].deleted,
        1
    );
    assert_eq!(
        env.sim.lead(lead).unwrap()["externalSalesPersonId"],
        Json::Null
    );
    let paths: Vec<String> = env.writes_since(from).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        vec![
            "/rest/v1/leads.json".to_owned(),
            "/rest/v1/salespersons/delete.json".to_owned()
        ]
    );
    assert!(
        env.get("salespersons", "externalSalesPersonId", "7", &["email"])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn companies_flow_both_ways_and_the_crm_wins_a_conflict() {
    let env = Env::new().await;
    env.exec("INSERT INTO accounts (id, name, industry, website, marketo_id) VALUES (3, 'Acme', 'Retail', 'acme.example', '3')")
        .await;
    let s = env.step("companies", false).await;
    assert_eq!(s.objects["companies"][&Direction::CrmToMarketo].created, 1);
    assert_eq!(env.sim.company("3").unwrap()["company"], json!("Acme"));

    // Edited in the CRM: Marketo follows.
    env.exec(&format!(
        "UPDATE accounts SET industry = 'Energy', updated_at = {} WHERE id = 3",
        now_sql()
    ))
    .await;
    env.step("companies", false).await;
    assert_eq!(env.sim.company("3").unwrap()["industry"], json!("Energy"));

    // Edited in Marketo only: the daily drift read brings it to the CRM.
    let mut edit = Map::new();
    edit.insert("externalCompanyId".into(), json!("3"));
    edit.insert("billingCity".into(), json!("Lyon"));
    env.sim.upsert_company(edit).unwrap();
    env.clock.advance(Duration::from_secs(25 * 3600));
    let s = env.step("companies", false).await;
    assert_eq!(
        s.objects["companies"][&Direction::MarketoToCrm].updated,
        1,
        "{s:?}"
    );
    let rows = env
        .rows("SELECT billing_city, name FROM accounts WHERE id = 3")
        .await;
    assert_eq!(rows[0][0].as_deref(), Some("Lyon"));

    // Both changed the name: the CRM wins, and the conflict is recorded.
    let mut edit = Map::new();
    edit.insert("externalCompanyId".into(), json!("3"));
    edit.insert("company".into(), json!("Acme Marketing"));
    env.sim.upsert_company(edit).unwrap();
    env.exec(&format!(
        "UPDATE accounts SET name = 'Acme Sales', updated_at = {} WHERE id = 3",
        now_sql()
    ))
    .await;
    let s = env.step("companies", false).await;
    assert_eq!(
        s.objects["companies"][&Direction::CrmToMarketo].conflicts,
        1,
        "{s:?}"
    );
    assert_eq!(
        env.sim.company("3").unwrap()["company"],
        json!("Acme Sales")
    );
    let rows = env.rows("SELECT name FROM accounts WHERE id = 3").await;
    assert_eq!(rows[0][0].as_deref(), Some("Acme Sales"));
    let conflicts = env.store.recent_conflicts(10).await.unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].field, "company");
    assert_eq!(conflicts[0].winner, Side::Crm);
    assert_eq!(conflicts[0].policy, "crm_wins");
}

#[tokio::test]
async fn rerunning_the_steps_writes_nothing_and_creates_no_duplicates() {
    let env = Env::new().await;
    seed_opportunity(&env).await;
    env.exec("INSERT INTO vehicles (id, vin, contact_id, make, model, model_year) VALUES (41, ' 1hgcm82633a004352 ', 11, 'Honda', 'Accord', 2003)")
        .await;
    env.step("all", false).await;
    let cars = env
        .get(
            "car_c",
            "vin",
            "1HGCM82633A004352",
            &["make", "leadId", "year"],
        )
        .await;
    assert_eq!(cars.len(), 1, "{cars:?}");
    assert_eq!(cars[0]["year"], json!(2003));

    let from = env.log_len();
    let s = env.step("all", false).await;
    assert!(
        env.writes_since(from).is_empty(),
        "{:?}",
        env.writes_since(from)
    );
    assert!(
        s.objects
            .values()
            .flat_map(|d| d.values())
            .all(|c| c.created + c.updated == 0)
    );
    assert_eq!(
        env.get("opportunities", "externalOpportunityId", "21", &["name"])
            .await
            .len(),
        1
    );
    assert_eq!(
        env.get("roles", "externalOpportunityId", "21", &["role"])
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_rejected_record_goes_to_sync_errors_and_the_others_still_commit() {
    let env = Env::new().await;
    seed_opportunity(&env).await;
    sync_all(&env).await;
    // A second role on an opportunity Marketo does not have yet: Marketo refuses it (1013).
    env.exec("INSERT INTO opportunities (id, name, account_id) VALUES (22, 'Later deal', 3)")
        .await;
    env.exec("INSERT INTO opportunity_contact_roles (id, opportunity_id, contact_id, role) VALUES (32, 22, 11, 'Buyer')")
        .await;
    env.exec("INSERT INTO opportunity_contact_roles (id, opportunity_id, contact_id, role) VALUES (33, 21, 11, 'Champion')")
        .await;
    let s = env.step("roles", false).await;
    let c = s.objects["roles"][&Direction::CrmToMarketo];
    assert_eq!((c.created, c.failed), (1, 1), "{c:?}");
    let errors = env
        .store
        .list_errors(&ErrorFilter {
            object: Some("roles".into()),
            limit: 10,
            ..ErrorFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].record_key, "32");
    assert_eq!(errors[0].code, "1013");
    assert!(errors[0].next_retry_at.is_some());
    let linked = env
        .store
        .links_by_crm_keys("roles", &["33".into()])
        .await
        .unwrap();
    assert_eq!(linked.len(), 1);

    // Once the opportunity exists and the retry is due, the role goes through.
    env.step("opportunities", false).await;
    env.clock.advance(Duration::from_secs(3600));
    let s = env.step("roles", false).await;
    assert_eq!(
        s.objects["roles"][&Direction::CrmToMarketo].created,
        1,
        "{s:?}"
    );
    assert_eq!(
        env.get("roles", "externalOpportunityId", "22", &["role"])
            .await
            .len(),
        1
    );
    let open = env
        .store
        .list_errors(&ErrorFilter {
            status: Some(marketo_sync::store::ErrorStatus::Open),
            object: Some("roles".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(open.is_empty(), "{open:?}");
}

#[tokio::test]
async fn a_configured_activity_type_is_copied_once_even_when_read_twice() {
    let env = Env::new().await;
    let lead = env.linked_lead(11, "new@example.com", json!({})).await;
    let s = env.step("activities", false).await;
    assert_eq!(
        s.objects["activity:12"][&Direction::MarketoToCrm].created,
        1,
        "{s:?}"
    );
    let sql = format!(
        "SELECT kind, detail, contact_id, marketo_guid FROM marketing_activities WHERE marketo_lead_id = {lead}"
    );
    let rows = env.rows(&sql).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0].as_deref(), Some("new_lead"));
    assert_eq!(rows[0][1].as_deref(), Some("New person"));
    assert_eq!(rows[0][2].as_deref(), Some("11"));

    // Read the same activities again (the queue's paging token moved back).
    let mut w = env
        .store
        .watermark(Side::Marketo, activities::OBJECT, &activities::queue(12))
        .await
        .unwrap()
        .unwrap();
    w.cursor = None;
    env.store.reset_watermark(&w).await.unwrap();
    let s = env.step("activities", false).await;
    let c = s.objects["activity:12"][&Direction::MarketoToCrm];
    assert_eq!((c.read, c.created, c.skipped), (1, 0, 1), "{c:?}");
    assert_eq!(env.rows(&sql).await.len(), 1);
}

#[tokio::test]
async fn a_dry_run_writes_nothing() {
    let env = Env::new().await;
    seed_opportunity(&env).await;
    let from = env.log_len();
    let s = env.step("all", true).await;
    assert!(env.writes_since(from).is_empty());
    assert!(s.plan.len() >= 3, "{:?}", s.plan);
    assert!(s.plan.iter().any(|p| {
        p.object == "opportunities"
            && p.changes
                .iter()
                .any(|c| c.field == "externalOpportunityId" && c.after == json!("21"))
    }));
    assert!(env.store.watermarks().await.unwrap().is_empty());
    assert!(
        env.store
            .links_page("companies", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The real run afterwards still sees everything.
    let s = env.step("salespersons", false).await;
    assert_eq!(
        s.objects["salespersons"][&Direction::CrmToMarketo].created,
        1
    );
}

#[tokio::test]
async fn a_role_whose_role_changes_replaces_the_old_marketo_role() {
    let env = Env::new().await;
    let lead = seed_opportunity(&env).await;
    sync_all(&env).await;
    env.exec(&format!(
        "UPDATE opportunity_contact_roles SET role = 'Champion', updated_at = {} WHERE id = 31",
        now_sql()
    ))
    .await;
    let s = env.step("roles", false).await;
    let c = s.objects["roles"][&Direction::CrmToMarketo];
    assert_eq!((c.created, c.deleted), (1, 1), "{c:?}");
    let roles = env
        .get("roles", "externalOpportunityId", "21", &["leadId", "role"])
        .await;
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0]["role"], json!("Champion"));
    let links = env
        .store
        .links_by_crm_keys("roles", &["31".into()])
        .await
        .unwrap();
    assert_eq!(links[0].marketo_key, format!("21|{lead}|Champion"));
}

#[tokio::test]
async fn a_marketo_edit_of_an_account_without_its_marketo_key_is_refused_not_inserted() {
    let env = Env::new().await;
    env.exec("INSERT INTO accounts (id, name) VALUES (4, 'Globex')")
        .await;
    env.step("companies", false).await;
    let mut edit = Map::new();
    edit.insert("externalCompanyId".into(), json!("4"));
    edit.insert("industry".into(), json!("Chemicals"));
    env.sim.upsert_company(edit).unwrap();
    env.clock.advance(Duration::from_secs(25 * 3600));
    let s = env.step("companies", false).await;
    assert_eq!(
        s.objects["companies"][&Direction::MarketoToCrm].failed,
        1,
        "{s:?}"
    );
    let rows = env
        .rows("SELECT CAST(COUNT(*) AS TEXT) FROM accounts")
        .await;
    assert_eq!(rows[0][0].as_deref(), Some("1"));
    let errors = env
        .store
        .list_errors(&ErrorFilter {
            object: Some("companies".into()),
            limit: 10,
            ..ErrorFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, "crm_key_missing");
    assert_eq!(errors[0].direction, Direction::MarketoToCrm);
}

#[tokio::test]
async fn native_crm_sync_skips_the_crm_objects_with_a_warning_and_keeps_their_watermarks() {
    let env = Env::start(true, false).await;
    seed_opportunity(&env).await;
    let s = env.step("all", false).await;
    for object in ["salespersons", "companies", "opportunities", "roles"] {
        assert!(
            s.warnings
                .iter()
                .any(|w| w.starts_with(object) && w.contains("1018")),
            "{object}: {:?}",
            s.warnings
        );
        assert!(
            env.store
                .links_page(object, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
    let marks = env.store.watermarks().await.unwrap();
    assert!(
        marks
            .iter()
            .filter(|w| w.queue == objects::UPSERTS_QUEUE)
            .all(|w| !["salespersons", "companies", "opportunities", "roles"]
                .contains(&w.object.as_str())),
        "{marks:?}"
    );
}

#[tokio::test]
async fn an_activity_the_crm_refused_is_retried_from_the_ledger() {
    let env = Env::new().await;
    // A row in the way: the table allows one activity per contact (a unique violation).
    env.exec("CREATE UNIQUE INDEX ux_one_per_contact ON marketing_activities (contact_id)")
        .await;
    env.exec("INSERT INTO marketing_activities (marketo_guid, contact_id) VALUES ('other', '11')")
        .await;
    let lead = env.linked_lead(11, "new@example.com", json!({})).await;
    let s = env.step("activities", false).await;
    assert_eq!(
        s.objects["activity:12"][&Direction::MarketoToCrm].failed,
        1,
        "{s:?}"
    );
    let errors = env
        .store
        .list_errors(&ErrorFilter {
            object: Some("activity:12".into()),
            limit: 10,
            ..ErrorFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");

    assert_eq!(errors[0].code, "unique_violation");
    let again = env.step("activities", false).await;
    assert_eq!(
        again.objects["activity:12"][&Direction::MarketoToCrm].failed,
        0
    );

    // The operator clears the way and asks for a retry.
    env.exec("DELETE FROM marketing_activities WHERE marketo_guid = 'other'")
        .await;
    let now = env.clock.now_utc();
    assert!(
        env.store
            .set_error_status(
                errors[0].id,
                marketo_sync::store::ErrorStatus::Open,
                Some(now)
            )
            .await
            .unwrap()
    );
    let s = env.step("activities", false).await;
    assert_eq!(
        s.objects["activity:12"][&Direction::MarketoToCrm].created,
        1,
        "{s:?}"
    );
    let sql = format!("SELECT kind FROM marketing_activities WHERE marketo_lead_id = {lead}");
    assert_eq!(env.rows(&sql).await.len(), 1);
    let open = env
        .store
        .list_errors(&ErrorFilter {
            status: Some(marketo_sync::store::ErrorStatus::Open),
            object: Some("activity:12".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(open.is_empty(), "{open:?}");
}

#[tokio::test]
async fn a_cancelled_cycle_stops_before_writing() {
    let env = Env::new().await;
    seed_opportunity(&env).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut summary = CycleSummary::default();
    let from = env.log_len();
    let r = objects::run_all(
        &env.ctx,
        &env.plans,
        &mut summary,
        &CycleOptions::default(),
        &cancel,
    )
    .await;
    assert!(matches!(
        r,
        Err(marketo_sync::engine::EngineError::Cancelled)
    ));
    assert!(env.writes_since(from).is_empty());
    assert!(env.store.watermarks().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_car_of_a_contact_not_linked_yet_waits_in_the_ledger() {
    let env = Env::new().await;
    env.exec("INSERT INTO contacts (id, email) VALUES (12, 'later@example.com')")
        .await;
    env.exec("INSERT INTO vehicles (id, vin, contact_id, make) VALUES (42, 'VIN42', 12, 'Fiat')")
        .await;
    let s = env.step("custom_objects", false).await;
    assert_eq!(
        s.objects["cars"][&Direction::CrmToMarketo].failed,
        1,
        "{s:?}"
    );
    let errors = env
        .store
        .list_errors(&ErrorFilter {
            object: Some("cars".into()),
            limit: 10,
            ..ErrorFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(errors[0].code, "contact_not_linked");
    assert!(errors[0].next_retry_at.is_some());
    assert!(env.get("car_c", "vin", "VIN42", &["make"]).await.is_empty());

    // The contact gets its lead; the retry links the car to it.
    let lead = env.sim.create_lead({
        let mut m = Map::new();
        m.insert("email".into(), json!("later@example.com"));
        m
    });
    let base = Fields::new();
    env.store
        .commit(StepCommit {
            links_upsert: vec![Link {
                object: objects::LEAD_LINK_OBJECT.into(),
                marketo_key: lead.to_string(),
                crm_key: "12".into(),
                base_hash: fields_hash(&base),
                base,
                agreed_at: env.clock.now_utc(),
                tombstone: None,
            }],
            ..StepCommit::default()
        })
        .await
        .unwrap();
    env.clock.advance(Duration::from_secs(3600));
    let s = env.step("custom_objects", false).await;
    assert_eq!(
        s.objects["cars"][&Direction::CrmToMarketo].created,
        1,
        "{s:?}"
    );
    let cars = env.get("car_c", "vin", "VIN42", &["make", "leadId"]).await;
    assert_eq!(cars[0]["leadId"], json!(lead));
}

/// Adds a car to a lead in Marketo through the API (as another integration or a Marketo user's
/// import would).
async fn add_marketo_car(env: &Env, car: Json) {
    let input = vec![car.as_object().unwrap().clone()];
    let r = env
        .ctx
        .marketo
        .sync_custom_objects(
            "car_c",
            marketo_sync::marketo::SyncAction::CreateOrUpdate,
            marketo_sync::marketo::DedupeBy::DedupeFields,
            &input,
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert!(!r[0].is_skipped(), "{r:?}");
}

/// A record created in the CRM is written without its null values: a Marketo car with no
/// colour becomes a row holding the column's default, where an explicit NULL would break the
/// column's `NOT NULL` and the car would never arrive.
#[tokio::test]
async fn a_created_record_keeps_the_crm_columns_default_for_a_value_marketo_lacks() {
    let env = Env::start(false, true).await;
    let lead = env.linked_lead(11, "driver@example.com", json!({})).await;
    add_marketo_car(
        &env,
        json!({"vin": "MKT00000000000003", "leadId": lead, "make": "Kia", "color": "Red"}),
    )
    .await;
    add_marketo_car(
        &env,
        json!({"vin": "MKT00000000000004", "leadId": lead, "make": "Seat"}),
    )
    .await;
    let s = env.step("custom_objects", false).await;
    let pulled = car_counts(&s, Direction::MarketoToCrm);
    assert_eq!((pulled.created, pulled.failed), (2, 0), "{s:?}");
    let colors = env
        .rows("SELECT vin, color, model FROM vehicles WHERE deleted = 0 ORDER BY vin")
        .await;
    assert_eq!(
        colors,
        vec![
            vec![Some("MKT00000000000003".into()), Some("Red".into()), None],
            vec![
                Some("MKT00000000000004".into()),
                Some("unpainted".into()),
                None
            ],
        ]
    );
    let open = env
        .store
        .list_errors(&ErrorFilter::default())
        .await
        .unwrap();
    assert!(open.is_empty(), "{open:?}");

    // The rows are the step's own writes: the next cycle sends nothing back and writes nothing.
    a_minute_later_the_car_step_writes_nothing(&env).await;
}

async fn vehicle_rows(env: &Env, vin: &str) -> Vec<Vec<Option<String>>> {
    env.rows(&format!(
        "SELECT CAST(id AS TEXT), CAST(contact_id AS TEXT), make, model, \
         CAST(model_year AS TEXT), marketo_id, CAST(updated_at AS TEXT) \
         FROM vehicles WHERE vin = '{vin}' AND deleted = 0"
    ))
    .await
}

/// Runs the custom-object step a minute later and checks that it wrote nothing on either side.
async fn a_minute_later_the_car_step_writes_nothing(env: &Env) {
    env.clock.advance(Duration::from_secs(60));
    let from = env.log_len();
    let s = env.step("custom_objects", false).await;
    assert!(
        env.writes_since(from).is_empty(),
        "{:?}",
        env.writes_since(from)
    );
    for d in [Direction::CrmToMarketo, Direction::MarketoToCrm] {
        let c = car_counts(&s, d);
        assert_eq!(c.created + c.updated + c.failed, 0, "{d:?}: {s:?}");
    }
}

fn car_counts(s: &CycleSummary, direction: Direction) -> marketo_sync::engine::ObjectCounts {
    s.objects
        .get("cars")
        .and_then(|d| d.get(&direction))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_car_added_in_marketo_arrives_once_and_a_crm_car_does_not_come_back() {
    let env = Env::new().await;
    let lead = env.linked_lead(11, "driver@example.com", json!({})).await;

    // Marketo -> CRM: a car added to the lead in Marketo logs "Add to Car"; the step copies it.
    add_marketo_car(
        &env,
        json!({"vin": "MKT00000000000001", "leadId": lead, "make": "Volvo", "model": "XC40", "year": 2022}),
    )
    .await;
    let added: Vec<Json> = env
        .sim
        .activities()
        .into_iter()
        .filter(|a| a["activityTypeId"] == json!(7001))
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(added[0]["leadId"], json!(lead));
    let guid = env
        .get("car_c", "vin", "MKT00000000000001", &["marketoGUID"])
        .await[0]["marketoGUID"]
        .as_str()
        .unwrap()
        .to_owned();

    let from = env.log_len();
    let s = env.step("custom_objects", false).await;
    let pulled = car_counts(&s, Direction::MarketoToCrm);
    assert_eq!((pulled.read, pulled.created), (1, 1), "{s:?}");
    assert!(
        env.writes_since(from).is_empty(),
        "nothing was written to Marketo: {:?}",
        env.writes_since(from)
    );
    let rows = vehicle_rows(&env, "MKT00000000000001").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][1].as_deref(), Some("11"), "the lead's contact");
    assert_eq!(rows[0][2].as_deref(), Some("Volvo"));
    assert_eq!(rows[0][3].as_deref(), Some("XC40"));
    assert_eq!(rows[0][4].as_deref(), Some("2022"));
    assert_eq!(rows[0][5].as_deref(), Some(guid.as_str()), "marketo_id");
    let links = env
        .store
        .links_by_marketo_keys("cars", &["MKT00000000000001".into()])
        .await
        .unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(Some(links[0].crm_key.clone()), rows[0][0]);

    // The new CRM row is in the CRM's change feed now: it is our own write, nothing goes back,
    // and re-reading the activity (a crash before the commit) creates no second row.
    a_minute_later_the_car_step_writes_nothing(&env).await;
    assert_eq!(vehicle_rows(&env, "MKT00000000000001").await, rows);

    // CRM -> Marketo: a car created in the CRM arrives in Marketo; Marketo logs "Add to Car" for
    // it, which the same step reads and recognises as its own write.
    env.exec("INSERT INTO vehicles (id, vin, contact_id, make, model, model_year) VALUES (42, 'crm00000000000042', 11, 'Fiat', 'Panda', 2019)")
        .await;
    let before = vehicle_rows(&env, "crm00000000000042").await;
    let s = env.step("custom_objects", false).await;
    assert_eq!(car_counts(&s, Direction::CrmToMarketo).created, 1, "{s:?}");
    let cars = env
        .get(
            "car_c",
            "vin",
            "CRM00000000000042",
            &["make", "leadId", "year"],
        )
        .await;
    assert_eq!(cars.len(), 1, "{cars:?}");
    assert_eq!(cars[0]["leadId"], json!(lead));
    assert_eq!(cars[0]["year"], json!(2019));
    let added = env
        .sim
        .activities()
        .into_iter()
        .filter(|a| a["activityTypeId"] == json!(7001))
        .count();
    assert_eq!(added, 2, "the CRM car's arrival was logged in Marketo");
    let pulled = car_counts(&s, Direction::MarketoToCrm);
    assert_eq!(
        (pulled.read, pulled.skipped, pulled.created, pulled.updated),
        (2, 2, 0, 0),
        "both of the lead's cars were read back and found agreed: {s:?}"
    );
    assert_eq!(
        vehicle_rows(&env, "crm00000000000042").await,
        before,
        "the CRM row was not rewritten"
    );
    assert!(vehicle_rows(&env, "CRM00000000000042").await.is_empty());

    // And nothing moves on the next run.
    a_minute_later_the_car_step_writes_nothing(&env).await;
    let total = env
        .rows("SELECT CAST(id AS TEXT) FROM vehicles WHERE deleted = 0")
        .await;
    assert_eq!(total.len(), 2, "{total:?}");
}

#[tokio::test]
async fn a_marketo_car_of_a_lead_without_a_contact_waits_and_arrives_once_linked() {
    let env = Env::new().await;
    let lead = env.sim.create_lead({
        let mut m = Map::new();
        m.insert("email".into(), json!("unlinked@example.com"));
        m
    });
    add_marketo_car(
        &env,
        json!({"vin": "MKT00000000000009", "leadId": lead, "make": "Kia"}),
    )
    .await;
    let s = env.step("custom_objects", false).await;
    assert_eq!(car_counts(&s, Direction::MarketoToCrm).failed, 1, "{s:?}");
    let errors = env
        .store
        .list_errors(&ErrorFilter {
            object: Some("cars".into()),
            limit: 10,
            ..ErrorFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, "lead_not_linked");
    assert_eq!(errors[0].direction, Direction::MarketoToCrm);
    assert!(vehicle_rows(&env, "MKT00000000000009").await.is_empty());

    // The lead gets its contact; the retry (no new activity) brings the car across.
    env.exec("INSERT INTO contacts (id, email) VALUES (13, 'unlinked@example.com')")
        .await;
    let base = Fields::new();
    env.store
        .commit(StepCommit {
            links_upsert: vec![Link {
                object: objects::LEAD_LINK_OBJECT.into(),
                marketo_key: lead.to_string(),
                crm_key: "13".into(),
                base_hash: fields_hash(&base),
                base,
                agreed_at: env.clock.now_utc(),
                tombstone: None,
            }],
            ..StepCommit::default()
        })
        .await
        .unwrap();
    env.clock.advance(Duration::from_secs(3600));
    let s = env.step("custom_objects", false).await;
    assert_eq!(car_counts(&s, Direction::MarketoToCrm).created, 1, "{s:?}");
    let rows = vehicle_rows(&env, "MKT00000000000009").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1].as_deref(), Some("13"));
    assert_eq!(rows[0][2].as_deref(), Some("Kia"));
    let open = env
        .store
        .list_errors(&ErrorFilter {
            object: Some("cars".into()),
            status: Some(marketo_sync::store::ErrorStatus::Open),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(open.is_empty(), "{open:?}");
}

#[tokio::test]
async fn a_large_car_set_is_bulk_imported_and_a_refused_row_is_one_ledger_entry() {
    let mut env = Env::new().await;
    env.set_marketo(|m| {
        m.bulk_import_threshold = 3;
        m.import_format = marketo_sync::marketo::csv::FileFormat::Ssv;
    });
    env.sim
        .refuse_records("make", "Lemon", "1003", "Validation rule: no lemons");
    for i in 0..5 {
        env.linked_lead(11 + i, &format!("driver{i}@example.com"), json!({}))
            .await;
        let make = if i == 2 { "Lemon" } else { "Fiat; Abarth" };
        env.exec(&format!(
            "INSERT INTO vehicles (id, vin, contact_id, make, model, model_year) \
             VALUES ({}, 'VIN{i}', {}, '{make}', 'Panda', {})",
            41 + i,
            11 + i,
            2015 + i
        ))
        .await;
    }
    let from = env.log_len();
    let s = env.step("custom_objects", false).await;
    let writes = env.writes_since(from);
    assert!(
        writes
            .iter()
            .any(|e| e.path == "/bulk/v1/customobjects/car_c/import.json"
                && e.query.contains("format=ssv")),
        "{writes:?}"
    );
    assert!(
        !writes
            .iter()
            .any(|e| e.path == "/rest/v1/customobjects/car_c.json"),
        "{writes:?}"
    );
    let counts = &s.objects["cars"][&Direction::CrmToMarketo];
    assert_eq!((counts.updated, counts.failed), (4, 1), "{s:?}");
    let errors = env
        .store
        .list_errors(&ErrorFilter {
            object: Some("cars".into()),
            limit: 10,
            ..ErrorFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, "import");
    assert!(errors[0].message.contains("no lemons"), "{errors:?}");
    let cars = env
        .get("car_c", "vin", "VIN4", &["make", "year", "leadId"])
        .await;
    assert_eq!(cars[0]["make"], json!("Fiat; Abarth"));
    assert_eq!(cars[0]["year"], json!(2019));
    assert!(env.get("car_c", "vin", "VIN2", &["make"]).await.is_empty());

    // Linked and agreed: the next run writes nothing.
    let from = env.log_len();
    env.step("custom_objects", false).await;
    assert!(
        env.writes_since(from).is_empty(),
        "{:?}",
        env.writes_since(from)
    );
}
