//! The convergence harness on a HubSpot CRM (`--crm hubspot`).
//!
//! The schedule plays against the HubSpot simulator ([`HubSpotSim`]) through the HubSpot
//! adapter (`crm.adapter = "hubspot"`), with the engine in this process or as child processes
//! as on the SQL CRMs ([`Runner`]). Marketo's user, the simulator's faults, the kills and the
//! cycles are the steps every CRM shares ([`common_step`]); the HubSpot user's steps go through
//! the simulator's own state, as a user of HubSpot's UI would make them:
//!
//! - create a contact, edit one of its synced properties, archive it, merge two contacts
//!   (HubSpot keeps the primary; the other id then answers with it);
//! - the same property edited on both sides between two cycles;
//! - the same new email created on both sides before a cycle (the lead and the contact must be
//!   matched, not duplicated);
//! - HubSpot failing during a cycle: `429` (rate limit) or `5xx` answers at a random rate.
//!
//! Synced: leads ⇄ contacts, with the mapping [`MAPPING`] (email, first and last name, job
//! title, phone, and two custom text properties for the lead status and source, the source
//! owned by the CRM). The simulator's clock is manual: it moves with the Marketo simulator's
//! between cycles and a second forward for each HubSpot user's edit, so the feed's
//! `hs_lastmodifieddate` follows the engine's clock. Its rate limits are raised out of the
//! way (the adapter's own limits are the tests' business, not the schedule's).
//!
//! The checks are the lead checks of every CRM ([`check_leads`]): one live contact per live
//! lead and email, keys pointing at each other, every mapped property equal, links and
//! conflicts settled by their policies.

use std::collections::{BTreeMap, HashMap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use secrecy::ExposeSecret;
use serde_json::{Map, Value as Json, json};

use super::runner::{CrmProbe, Cycle, Runner, TICK, Watch};
use super::{
    ConvergeError, ConvergeOptions, ConvergenceReport, EDITABLE, Emails, EngineMode, LiveContact,
    Played, Rigged, Tally, check_leads, common_step, continue_trace, draw_roll, finish_schedule,
    settings_toml, start_simulator, step_name, word,
};
use crate::config::{LoadedMapping, SettingsSource};
use crate::model::Value;
use crate::sim::hubspot::{HubSpotConfig, HubSpotHandle, HubSpotSim, RateLimits};
use crate::sim::{FaultKind, FaultProfile, FaultRule};

/// The lead mapping of the HubSpot schedules.
pub(super) const MAPPING: &str = r#"marketo_object = "lead"
crm_object = "contacts"
policy = "newest_wins"
match = ["email"]

[keys]
marketo_crm_key = "crmContactId"
crm_marketo_id = "marketo_id"

[[fields]]
marketo = "email"
crm = "email"
transform = ["trim", "lowercase"]

[[fields]]
marketo = "firstName"
crm = "firstname"

[[fields]]
marketo = "lastName"
crm = "lastname"

[[fields]]
marketo = "title"
crm = "jobtitle"
transform = ["collapse_whitespace"]

[[fields]]
marketo = "phone"
crm = "phone"

[[fields]]
marketo = "leadStatus"
crm = "mkto_lead_status"

[[fields]]
marketo = "leadSource"
crm = "mkto_lead_source"
policy = "crm_wins"
"#;

/// The HubSpot property of each of [`EDITABLE`]'s Marketo fields, in the same order.
const PROPERTIES: &[&str] = &[
    "firstname",
    "lastname",
    "jobtitle",
    "phone",
    "mkto_lead_status",
    "mkto_lead_source",
];

/// The contact properties the harness defines (as an admin would): the unique Marketo id and
/// the two custom text properties of the mapping.
const DEFINED: &[(&str, bool)] = &[
    ("marketo_id", true),
    ("mkto_lead_status", false),
    ("mkto_lead_source", false),
];

/// A schedule on the HubSpot simulator.
struct HsRig {
    seed: u64,
    run: Runner,
    hs: HubSpotHandle,
    mappings: Vec<LoadedMapping>,
    dir: tempfile::TempDir,
}

/// Runs one seeded schedule on a HubSpot CRM (see the module docs).
pub(super) async fn run_schedule(
    seed: u64,
    options: &ConvergeOptions,
) -> Result<ConvergenceReport, ConvergeError> {
    let mut rig = HsRig::start(seed, options).await?;
    let report = play(&mut rig, seed, options).await;
    rig.finish().await;
    report
}

/// Returns the adapter options of the schedule's config.
fn adapter_options(hs: &HubSpotHandle, token_file: &std::path::Path) -> Json {
    let mut properties = vec!["email", "marketo_id"];
    properties.extend(PROPERTIES);
    json!({
        "base_url": hs.base_url(),
        "token_file": token_file,
        "tier": "enterprise",
        "requests_per_10s": 1_000_000,
        "search_per_second": 1_000_000,
        "max_retries": 5,
        "timeout_seconds": 5,
        "objects": {
            "contacts": {
                "object_type": "contacts",
                "marketo_id_property": "marketo_id",
                "properties": properties,
                "writable": true
            }
        }
    })
}

impl HsRig {
    async fn start(seed: u64, options: &ConvergeOptions) -> Result<HsRig, ConvergeError> {
        let setup = |what: String| ConvergeError::Setup { seed, what };
        let dir = tempfile::tempdir().map_err(|e| setup(format!("temp dir: {e}")))?;
        let sim = start_simulator(seed).await?;
        let hs = start_hubspot(seed, sim.now()).await?;
        let config_dir = dir.path().join("config");
        let mappings_dir = config_dir.join("mappings");
        std::fs::create_dir_all(&mappings_dir).map_err(|e| setup(format!("config dir: {e}")))?;
        std::fs::write(mappings_dir.join("leads.toml"), MAPPING)
            .map_err(|e| setup(format!("lead mapping: {e}")))?;
        let token_file = dir.path().join("hubspot.token");
        std::fs::write(&token_file, hs.token().expose_secret())
            .map_err(|e| setup(format!("token file: {e}")))?;
        let store_url = format!("sqlite://{}", dir.path().join("state.db").display());
        let low = sim.now() - chrono::Duration::minutes(1);
        let crm_options = adapter_options(&hs, &token_file);
        let text = settings_toml(&sim, ("hubspot", &crm_options), &store_url, low, &["leads"])
            .map_err(setup)?;
        std::fs::write(config_dir.join("default.toml"), text)
            .map_err(|e| setup(format!("settings file: {e}")))?;
        let env: HashMap<String, String> = [
            (
                "MKSYNC__MARKETO__CLIENT_SECRET".to_owned(),
                sim.credentials().1.expose_secret().to_owned(),
            ),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ]
        .into();
        let loaded =
            crate::config::load(&SettingsSource::new(&config_dir, None).with_vars(env.clone()))
                .map_err(|e| setup(format!("the written config does not load: {e}")))?;
        let mappings = loaded.mappings.clone();
        let run = Runner::start(
            seed,
            options,
            sim,
            loaded,
            &store_url,
            (config_dir, env),
            dir.path(),
        )
        .await?;
        Ok(HsRig {
            seed,
            run,
            hs,
            mappings,
            dir,
        })
    }

    async fn finish(self) {
        drop(self.run.driver);
        drop(self.run.store);
        self.run.sim.shutdown().await;
        self.hs.shutdown().await;
        drop(self.dir);
    }

    /// Moves HubSpot's clock a second forward for a user's edit (in process, the engine's
    /// clock too, never behind HubSpot's).
    fn user_edit(&self) {
        let _ = self.run.user_edit_instant();
        self.hs.advance_clock(std::time::Duration::from_secs(1));
    }

    fn refused(&self, operation: &str, e: &crate::sim::hubspot::HubSpotSimError) -> ConvergeError {
        ConvergeError::Setup {
            seed: self.seed,
            what: format!("the HubSpot user's {operation} was refused: {e}"),
        }
    }

    /// Returns the live contacts (HubSpot id and Marketo id), ascending by id.
    fn contacts(&self) -> Vec<(u64, Option<String>)> {
        self.hs
            .ids("contacts")
            .into_iter()
            .filter_map(|id| {
                let rec = self.hs.record("contacts", id)?;
                let mid = rec["properties"]["marketo_id"].as_str().map(str::to_owned);
                Some((id, mid.filter(|m| !m.is_empty())))
            })
            .collect()
    }

    /// Returns the live contacts in the checks' form.
    fn checked_contacts(&self) -> Vec<LiveContact> {
        self.hs
            .ids("contacts")
            .into_iter()
            .filter_map(|id| self.hs.record("contacts", id))
            .map(|rec| {
                let props = &rec["properties"];
                let text = |name: &str| {
                    props[name]
                        .as_str()
                        .filter(|v| !v.is_empty())
                        .map(str::to_owned)
                };
                LiveContact {
                    id: rec["id"].as_str().unwrap_or_default().to_owned(),
                    email: text("email").unwrap_or_default(),
                    marketo_id: text("marketo_id"),
                    values: PROPERTIES
                        .iter()
                        .map(|p| ((*p).to_owned(), text(p).map_or(Value::Null, Value::Text)))
                        .collect::<BTreeMap<_, _>>(),
                }
            })
            .collect()
    }
}

/// Starts the HubSpot simulator on a manual clock at `start`, with no records, the rate limits
/// out of the way and the properties of [`DEFINED`].
async fn start_hubspot(
    seed: u64,
    start: chrono::DateTime<chrono::Utc>,
) -> Result<HubSpotHandle, ConvergeError> {
    let setup = |what: String| ConvergeError::Setup { seed, what };
    let hs = HubSpotSim::start(HubSpotConfig {
        seed,
        contacts: 0,
        owners: 0,
        limits: RateLimits {
            per_ten_seconds: 1_000_000,
            daily: 1_000_000_000,
            search_per_second: 1_000_000,
            ..RateLimits::default()
        },
        start: Some(start),
        manual_clock: true,
        ..HubSpotConfig::default()
    })
    .await
    .map_err(|e| setup(format!("hubspot simulator: {e}")))?;
    for (name, unique) in DEFINED {
        hs.add_property(
            "contacts",
            &json!({ "name": name, "label": name, "type": "string", "fieldType": "text",
                     "groupName": "contactinformation", "hasUniqueValue": unique }),
        )
        .map_err(|e| setup(format!("hubspot property {name}: {e}")))?;
    }
    Ok(hs)
}

/// The HubSpot side of a cycle's watch.
struct HsProbe<'a> {
    hs: &'a HubSpotHandle,
}

#[async_trait::async_trait(?Send)]
impl CrmProbe for HsProbe<'_> {
    /// Returns the number of live contacts, the latest modified time and the number holding a
    /// Marketo id.
    async fn mark(&self) -> Option<Vec<Option<String>>> {
        let records: Vec<Json> = self
            .hs
            .ids("contacts")
            .into_iter()
            .filter_map(|id| self.hs.record("contacts", id))
            .collect();
        let latest = records
            .iter()
            .filter_map(|r| r["updatedAt"].as_str())
            .max()
            .map(str::to_owned);
        let with_id = records
            .iter()
            .filter(|r| r["properties"]["marketo_id"].as_str().is_some())
            .count();
        Some(vec![
            Some(records.len().to_string()),
            latest,
            Some(with_id.to_string()),
        ])
    }
}

#[async_trait::async_trait(?Send)]
impl Rigged for HsRig {
    fn run(&self) -> &Runner {
        &self.run
    }

    async fn cycle(&mut self, watch: Watch) -> Result<Cycle, ConvergeError> {
        self.hs.advance_clock(TICK);
        let probe = HsProbe { hs: &self.hs };
        self.run.cycle(watch, &probe).await
    }

    async fn restart(&mut self) -> Result<(), ConvergeError> {
        self.run.restart().await
    }

    /// HubSpot answers `429` or `5xx` at a random rate during one cycle.
    async fn crm_fault(
        &mut self,
        rng: &mut ChaCha8Rng,
        tally: &mut Tally,
    ) -> Result<String, ConvergeError> {
        let kind = if rng.random_bool(0.5) {
            FaultKind::Throttle
        } else {
            FaultKind::Http5xx
        };
        let rate = rng.random_range(0.05..0.3);
        tally.fault(format!("hubspot {}", kind.as_str()));
        self.hs.set_faults(FaultProfile {
            rules: vec![FaultRule {
                route: "*".into(),
                kind,
                rate,
                delay_ms: 0,
            }],
        });
        let c = self.cycle(Watch::Nothing).await;
        self.hs.set_faults(FaultProfile::none());
        let c = c?;
        tally.cycle(&c);
        Ok(format!("{} at {rate:.2}: {}", kind.as_str(), c.ran))
    }
}

/// Plays a step of the HubSpot user (see the module docs): `Some(Some)` with the trace detail,
/// `Some(None)` when the roll is no CRM step (or its records are missing), `None` when the step
/// is skipped (a conflict without a linked contact).
async fn crm_step(
    rig: &mut HsRig,
    roll: u32,
    rng: &mut ChaCha8Rng,
    emails: &mut Emails,
) -> Result<Option<Option<String>>, ConvergeError> {
    let contacts = rig.contacts();
    let pick = |rng: &mut ChaCha8Rng| contacts[rng.random_range(0..contacts.len())].0;
    let props = |pairs: &[(&str, String)]| -> Map<String, Json> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect()
    };
    let detail = match roll {
        12..=22 => {
            let email = emails.fresh(rng);
            let (f, l) = (word(rng), word(rng));
            let values = props(&[
                ("email", email.trim().to_owned()),
                ("firstname", f),
                ("lastname", l),
            ]);
            rig.user_edit();
            let id = rig
                .hs
                .create("contacts", values)
                .map_err(|e| rig.refused("create", &e))?;
            format!("contact {id} {email:?}")
        }
        33..=42 if !contacts.is_empty() => {
            let id = pick(rng);
            let property = PROPERTIES[rng.random_range(0..PROPERTIES.len())];
            rig.user_edit();
            let _ = rig
                .hs
                .update("contacts", id, props(&[(property, word(rng))]));
            format!("contact {id} {property}")
        }
        43..=50 => {
            let linked: Vec<(u64, i64)> = contacts
                .iter()
                .filter_map(|(id, m)| Some((*id, m.as_deref()?.parse().ok()?)))
                .collect();
            if linked.is_empty() {
                return Ok(None);
            }
            let (id, mid) = linked[rng.random_range(0..linked.len())];
            let i = rng.random_range(0..EDITABLE.len());
            let mut values = Map::new();
            values.insert(EDITABLE[i].0.into(), json!(word(rng)));
            let _ = rig.run.sim.update_lead(mid, values);
            rig.user_edit();
            let _ = rig
                .hs
                .update("contacts", id, props(&[(PROPERTIES[i], word(rng))]));
            format!("lead {mid} / contact {id} {}", EDITABLE[i].0)
        }
        55..=58 if !contacts.is_empty() => {
            let id = pick(rng);
            rig.user_edit();
            let _ = rig.hs.archive("contacts", id);
            format!("contact {id}")
        }
        62..=63 if contacts.len() >= 2 => {
            let a = rng.random_range(0..contacts.len());
            let b = (a + 1 + rng.random_range(0..contacts.len() - 1)) % contacts.len();
            let (w, l) = (contacts[a].0, contacts[b].0);
            rig.user_edit();
            let _ = rig.hs.merge("contacts", w, l);
            format!("loser contact {l} into primary {w}")
        }
        // The same new email on both sides before a cycle.
        64..=67 => {
            let email = emails.fresh(rng);
            let mut values = Map::new();
            values.insert("email".into(), json!(email.trim().to_lowercase()));
            values.insert("firstName".into(), json!(word(rng)));
            let lead = rig.run.sim.create_lead(values);
            rig.user_edit();
            let values = props(&[("email", email.trim().to_owned()), ("lastname", word(rng))]);
            let id = rig
                .hs
                .create("contacts", values)
                .map_err(|e| rig.refused("create", &e))?;
            format!("lead {lead} and contact {id} {email:?}")
        }
        _ => return Ok(Some(None)),
    };
    Ok(Some(Some(detail)))
}

async fn play(
    rig: &mut HsRig,
    seed: u64,
    options: &ConvergeOptions,
) -> Result<ConvergenceReport, ConvergeError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut emails = Emails { seed, next: 0 };
    let mut played = Played::new();
    let in_child = matches!(options.engine, EngineMode::Process { .. });
    for step in 0..options.steps {
        let roll = draw_roll(&mut rng, options);
        let counts = (rig.run.sim.counters().leads, rig.contacts().len());
        played.start_step(step, step_name(roll, in_child, &options.crm), counts);
        let Some(detail) = crm_step(rig, roll, &mut rng, &mut emails).await? else {
            continue;
        };
        let detail = match detail {
            Some(d) => d,
            None => common_step(rig, roll, &mut rng, &mut emails, &mut played, in_child).await?,
        };
        continue_trace(&mut played.trace, &detail);
    }
    finish_schedule(rig, seed, options, played, check).await
}

/// Checks the lead invariants of a HubSpot schedule.
fn check<'a>(
    rig: &'a HsRig,
    violations: &'a mut Vec<String>,
) -> futures::future::LocalBoxFuture<'a, Result<(usize, usize), ConvergeError>> {
    Box::pin(async move {
        let contacts = rig.checked_contacts();
        let probe = HsProbe { hs: &rig.hs };
        check_leads(&rig.run, &rig.mappings, &contacts, &probe, violations).await
    })
}
