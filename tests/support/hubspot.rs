//! End-to-end harness over HubSpot: the Marketo simulator, the HubSpot simulator, the HubSpot
//! adapter, a SQLite state store and the engine, wired together in code with the mapping files of
//! `config/examples/hubspot/`, with typed helpers to act as a user on either side.
//!
//! Include it next to the SQL harness, whose helpers it reuses:
//! `#[path = "support/harness.rs"] mod harness;` and
//! `#[path = "support/hubspot.rs"] mod hubspot;`.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use marketo_sync::config::{DeletePolicy, LoadedMapping, Settings, load_mappings};
use marketo_sync::crm::hubspot::{HubSpotCrm, HubSpotOptions};
use marketo_sync::crm::{Crm, CrmRecord};
use marketo_sync::engine::{
    Context, CycleOptions, CycleSummary, Engine, EngineError, Runner, Tunables,
};
use marketo_sync::marketo::{Client, ClientConfig};
use marketo_sync::model::Value;
use marketo_sync::sim::hubspot::{HubSpotConfig, HubSpotHandle, HubSpotSim};
use marketo_sync::sim::{SimConfig, SimHandle, Simulator};
use marketo_sync::store::{self, ManualClock, OpenOptions, StateStore};
use serde_json::{Map, json};
use tokio_util::sync::CancellationToken;

use super::harness::written;

/// The HubSpot object types that get the unique `marketo_id` property (`cars` is the
/// simulator's custom object).
pub const MARKETO_ID_TYPES: &[&str] = &["contacts", "companies", "deals", "cars"];

/// How to build a [`HubSpotApp`].
pub struct HsOptions {
    /// The sync objects (names of `config/examples/hubspot/mappings/*.toml`).
    pub objects: Vec<String>,
    pub lead_deletes: DeletePolicy,
    pub lead_merges: DeletePolicy,
    /// Generated HubSpot contacts (0: an empty portal but for its owners).
    pub contacts: usize,
    /// The Marketo simulator.
    pub sim: SimConfig,
    pub tunables: Tunables,
    /// Edits the adapter options (JSON) before the adapter is built.
    pub edit_options: Option<fn(&mut serde_json::Value)>,
    pub edit_mapping: Option<fn(&mut LoadedMapping)>,
}

impl Default for HsOptions {
    fn default() -> Self {
        HsOptions {
            objects: vec!["leads".into()],
            lead_deletes: DeletePolicy::Delete,
            lead_merges: DeletePolicy::Delete,
            contacts: 0,
            sim: SimConfig {
                leads: 0,
                export_delay: Duration::ZERO,
                import_delay: Duration::ZERO,
                ..SimConfig::default()
            },
            tunables: Tunables::default(),
            edit_options: None,
            edit_mapping: None,
        }
    }
}

/// A running end-to-end set-up over HubSpot.
pub struct HubSpotApp {
    pub sim: SimHandle,
    pub hs: HubSpotHandle,
    pub engine: Engine,
    pub crm: Arc<dyn Crm>,
    pub store: Arc<dyn StateStore>,
    pub clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

/// Returns the adapter options of `config/examples/hubspot/default.toml` pointed at `hs`.
pub fn adapter_options(hs: &HubSpotHandle) -> serde_json::Value {
    let mut options =
        marketo_sync::app::demo::hubspot_example_options().expect("the example's crm options");
    options["base_url"] = json!(hs.base_url());
    options["max_retries"] = json!(3);
    options
}

/// Defines the unique `marketo_id` property on `object_type`, as an admin would.
pub fn add_marketo_id(hs: &HubSpotHandle, object_type: &str) {
    hs.add_property(
        object_type,
        &json!({ "name": "marketo_id", "label": "Marketo id", "type": "string",
                 "fieldType": "text", "groupName": "contactinformation", "hasUniqueValue": true }),
    )
    .expect("marketo_id property");
}

impl HubSpotApp {
    /// Starts everything with default options.
    pub async fn start() -> HubSpotApp {
        HubSpotApp::with(HsOptions::default()).await
    }

    /// Starts everything.
    pub async fn with(options: HsOptions) -> HubSpotApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let sim = Simulator::start(options.sim.clone())
            .await
            .expect("marketo simulator");
        let hs = HubSpotSim::start(HubSpotConfig {
            contacts: options.contacts,
            ..HubSpotConfig::default()
        })
        .await
        .expect("hubspot simulator");
        for t in MARKETO_ID_TYPES {
            add_marketo_id(&hs, t);
        }
        let mut crm_options = adapter_options(&hs);
        if let Some(edit) = options.edit_options {
            edit(&mut crm_options);
        }
        let parsed = HubSpotOptions::from_json(&crm_options).expect("adapter options");
        let crm: Arc<dyn Crm> = Arc::new(
            HubSpotCrm::connect_with_token(parsed, hs.token())
                .await
                .expect("hubspot adapter"),
        );

        let clock = Arc::new(ManualClock::new(Utc::now()));
        let store_url = format!("sqlite://{}", dir.path().join("state.db").display());
        let store = store::open_with(
            &store_url,
            OpenOptions {
                clock: clock.clone(),
                ..OpenOptions::default()
            },
        )
        .await
        .expect("store");

        let settings = settings(&sim, crm_options, &options);
        let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/hubspot");
        let (mut mappings, problems) = load_mappings(&config_dir, &settings);
        // The only expected problem: the Marketo simulator has no externalCreatedDate.
        assert!(
            problems
                .iter()
                .all(|p| !p.is_error() || format!("{p:?}").contains("externalCreatedDate")),
            "mapping problems: {problems:?}"
        );
        if let Some(edit) = options.edit_mapping {
            mappings.iter_mut().for_each(edit);
        }
        let ctx = Context::new(
            settings,
            mappings,
            marketo_client(&sim),
            crm.clone(),
            store.clone(),
            clock.clone(),
        );
        HubSpotApp {
            sim,
            hs,
            engine: Engine::with_tunables(ctx, options.tunables.clone()),
            crm,
            store,
            clock,
            _dir: dir,
        }
    }

    /// Runs one cycle and returns its summary (panics on a cycle error).
    pub async fn run_cycle(&self) -> CycleSummary {
        self.try_cycle().await.expect("cycle")
    }

    /// Runs one cycle.
    pub async fn try_cycle(&self) -> Result<CycleSummary, EngineError> {
        use marketo_sync::store::Clock;
        let now = self.sim.now().max(self.hs.now());
        if now > self.clock.now() {
            self.clock.set(now);
        }
        self.engine
            .run_one_cycle(&CycleOptions::default(), &CancellationToken::new())
            .await
    }

    /// Runs cycles until one writes nothing (at most `max`), returning the quiet one.
    pub async fn settle(&self, max: usize) -> CycleSummary {
        for _ in 0..max {
            let s = self.run_cycle().await;
            if written(&s) == 0 {
                return s;
            }
        }
        panic!("no quiet cycle after {max} cycles");
    }

    /// Creates a lead as a Marketo user.
    pub fn marketo_create(&self, values: serde_json::Value) -> i64 {
        self.sim.create_lead(as_map(values))
    }

    /// Edits a lead as a Marketo user.
    pub fn marketo_update(&self, id: i64, values: serde_json::Value) {
        self.sim
            .update_lead(id, as_map(values))
            .expect("lead exists");
    }

    /// Returns a lead with every field.
    pub fn marketo_lead(&self, id: i64) -> Option<serde_json::Value> {
        self.sim.lead(id)
    }

    /// Returns the ids of live leads with this email.
    pub fn marketo_by_email(&self, email: &str) -> Vec<i64> {
        self.sim.find_leads("email", email)
    }

    /// Creates a HubSpot record as a HubSpot user and returns its id.
    pub fn hs_create(&self, object_type: &str, values: serde_json::Value) -> String {
        self.hs
            .create(object_type, as_map(values))
            .unwrap_or_else(|e| panic!("create {object_type}: {e}"))
            .to_string()
    }

    /// Edits a HubSpot record as a HubSpot user.
    pub fn hs_update(&self, object_type: &str, id: &str, values: serde_json::Value) {
        let changed = self
            .hs
            .update(object_type, parse_id(id), as_map(values))
            .unwrap_or_else(|e| panic!("update {object_type} {id}: {e}"));
        assert!(changed, "the edit of {object_type} {id} changed nothing");
    }

    /// Archives (deletes) a HubSpot record as a HubSpot user.
    pub fn hs_archive(&self, object_type: &str, id: &str) {
        let live = self.hs.archive(object_type, parse_id(id)).expect("archive");
        assert!(live, "{object_type} {id} was not live");
    }

    /// Merges `loser` into `primary` as a HubSpot user.
    pub fn hs_merge(&self, object_type: &str, primary: &str, loser: &str) {
        self.hs
            .merge(object_type, parse_id(primary), parse_id(loser))
            .expect("merge");
    }

    /// Returns a live HubSpot record as the adapter reads it.
    pub async fn crm_get(&self, object: &str, id: &str) -> Option<CrmRecord> {
        self.crm
            .get(object, &[id.to_owned()])
            .await
            .expect("crm get")
            .into_iter()
            .next()
    }

    /// Returns a live contact.
    pub async fn crm_contact(&self, id: &str) -> Option<CrmRecord> {
        self.crm_get("contacts", id).await
    }

    /// Returns the live contacts with this email.
    pub async fn crm_by_email(&self, email: &str) -> Vec<CrmRecord> {
        self.crm
            .find("contacts", "email", &[Value::Text(email.to_owned())])
            .await
            .expect("crm find")
    }

    /// Returns the number of live HubSpot records of a type.
    pub fn hs_count(&self, object_type: &str) -> usize {
        self.hs.ids(object_type).len()
    }

    /// Returns the open error-ledger entries of `object`.
    pub async fn open_errors(&self, object: &str) -> Vec<store::SyncError> {
        self.store
            .list_errors(&store::ErrorFilter {
                status: Some(store::ErrorStatus::Open),
                object: Some(object.to_owned()),
                limit: 1_000,
            })
            .await
            .expect("open ledger entries")
    }

    /// The number of HubSpot requests served so far (every one, counted or not).
    pub fn hs_requests(&self) -> usize {
        self.hs.request_log().len()
    }

    /// Stops both simulators.
    pub async fn cleanup(self) {
        self.sim.shutdown().await;
        self.hs.shutdown().await;
    }
}

fn settings(sim: &SimHandle, crm_options: serde_json::Value, options: &HsOptions) -> Settings {
    let mut settings = Settings::default();
    settings.marketo.base_url = Some(sim.base_url());
    settings.marketo.client_id = Some(sim.credentials().0);
    settings.marketo.client_secret = Some(sim.credentials().1);
    settings.marketo.daily_call_budget = 10_000;
    settings.marketo.calls_per_20s = 100;
    settings.marketo.max_concurrency = 10;
    settings.crm.adapter = "hubspot".to_owned();
    settings.crm.options = crm_options;
    settings.sync.objects = options.objects.clone();
    settings.sync.mappings_dir = "mappings".into();
    settings.sync.lead_deletes = options.lead_deletes;
    settings.sync.lead_merges = options.lead_merges;
    settings
        .bootstrap
        .low_watermarks
        .insert("leads".into(), sim.now() - chrono::Duration::minutes(1));
    settings
}

fn marketo_client(sim: &SimHandle) -> Client {
    let mut cfg = ClientConfig::new(
        sim.base_url().parse().expect("sim url"),
        sim.credentials().0,
        sim.credentials().1,
    );
    cfg.calls_per_20s = 100;
    cfg.max_concurrency = 10;
    cfg.daily_call_budget = 1_000_000;
    Client::new(cfg).expect("client")
}

fn parse_id(id: &str) -> u64 {
    id.parse()
        .unwrap_or_else(|_| panic!("hubspot id {id} is a number"))
}

fn as_map(v: serde_json::Value) -> Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Adds the HubSpot custom object `cars` (the simulator's) to the adapter options, as
/// `config/examples/hubspot/mappings/cars.toml` describes: its contact is a field filled from
/// its contact associations.
pub fn add_cars(options: &mut serde_json::Value) {
    options["objects"]["cars"] = json!({
        "object_type": "cars",
        "marketo_id_property": "marketo_id",
        "properties": ["vin", "make", "model", "year", "marketo_id"],
        "contact_field": "contact_id",
        "writable": true,
    });
}
