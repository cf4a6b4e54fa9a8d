//! `marketo-sync demo`: the whole service embedded, with no credentials and no servers.
//!
//! It starts the Marketo simulator with sample leads, installs the demo CRM in a SQLite file,
//! opens a SQLite state store, and runs the daemon (status page included) against them. Between
//! cycles it plays a marketer and a salesperson: it edits a lead in Marketo and a contact in the
//! CRM, and creates a new record on each side, so that a person watching the status page (or the
//! log) sees records flow both ways.
//!
//! The default settings and mapping files are embedded in the binary ([`EMBEDDED_CONFIG`]), so
//! the demo runs from any directory and inside the container; `--config DIR` reads a directory
//! instead.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::AppError;
use crate::config::{Loaded, SettingsSource};
use crate::sim::hubspot::{HubSpotConfig, HubSpotHandle, HubSpotSim};
use crate::sim::{SimConfig, SimHandle, Simulator};
use crate::store::{CycleRecord, StateStore, StoreError};
use crate::telemetry::DemoLogs;

/// The settings and mapping files the demo runs with when no `--config` is given: the
/// repository's `config/` directory (default.toml, demo.toml, mappings/*.toml and the demo's
/// not-secret demo-secrets/), as (path relative to the config directory, contents).
pub const EMBEDDED_CONFIG: &[(&str, &str)] = &[
    ("default.toml", include_str!("../../config/default.toml")),
    ("demo.toml", include_str!("../../config/demo.toml")),
    (
        "mappings/activities.toml",
        include_str!("../../config/mappings/activities.toml"),
    ),
    (
        "mappings/cars.toml",
        include_str!("../../config/mappings/cars.toml"),
    ),
    (
        "mappings/chat_events.toml",
        include_str!("../../config/mappings/chat_events.toml"),
    ),
    (
        "mappings/companies.toml",
        include_str!("../../config/mappings/companies.toml"),
    ),
    (
        "mappings/leads.toml",
        include_str!("../../config/mappings/leads.toml"),
    ),
    (
        "mappings/opportunities.toml",
        include_str!("../../config/mappings/opportunities.toml"),
    ),
    (
        "mappings/program_members.toml",
        include_str!("../../config/mappings/program_members.toml"),
    ),
    (
        "mappings/programs.toml",
        include_str!("../../config/mappings/programs.toml"),
    ),
    (
        "mappings/roles.toml",
        include_str!("../../config/mappings/roles.toml"),
    ),
    (
        "mappings/salespersons.toml",
        include_str!("../../config/mappings/salespersons.toml"),
    ),
    (
        "mappings/static_lists.toml",
        include_str!("../../config/mappings/static_lists.toml"),
    ),
    (
        "demo-secrets/marketo_client_secret",
        include_str!("../../config/demo-secrets/marketo_client_secret"),
    ),
    (
        "demo-secrets/webhook_secret",
        include_str!("../../config/demo-secrets/webhook_secret"),
    ),
];

/// The settings and mapping files `demo --crm hubspot` runs with when no `--config` is given:
/// the repository's `config/examples/hubspot/` directory (default.toml, demo.toml,
/// mappings/*.toml) and the demo's not-secret Marketo client secret.
pub const EMBEDDED_HUBSPOT_CONFIG: &[(&str, &str)] = &[
    (
        "default.toml",
        include_str!("../../config/examples/hubspot/default.toml"),
    ),
    (
        "demo.toml",
        include_str!("../../config/examples/hubspot/demo.toml"),
    ),
    (
        "mappings/cars.toml",
        include_str!("../../config/examples/hubspot/mappings/cars.toml"),
    ),
    (
        "mappings/companies.toml",
        include_str!("../../config/examples/hubspot/mappings/companies.toml"),
    ),
    (
        "mappings/leads.toml",
        include_str!("../../config/examples/hubspot/mappings/leads.toml"),
    ),
    (
        "mappings/opportunities.toml",
        include_str!("../../config/examples/hubspot/mappings/opportunities.toml"),
    ),
    (
        "mappings/roles.toml",
        include_str!("../../config/examples/hubspot/mappings/roles.toml"),
    ),
    (
        "mappings/salespersons.toml",
        include_str!("../../config/examples/hubspot/mappings/salespersons.toml"),
    ),
    (
        "demo-secrets/marketo_client_secret",
        include_str!("../../config/demo-secrets/marketo_client_secret"),
    ),
];

/// Writes [`EMBEDDED_CONFIG`] under `dir` (created when missing), so that it loads like a
/// config directory.
///
/// # Errors
///
/// Returns the I/O error of a directory or file that cannot be written.
pub fn write_embedded_config(dir: &Path) -> std::io::Result<()> {
    write_files(dir, EMBEDDED_CONFIG)
}

/// Writes `files` (path relative to `dir`, contents) under `dir`.
fn write_files(dir: &Path, files: &[(&str, &str)]) -> std::io::Result<()> {
    for (name, text) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
    }
    Ok(())
}

/// Options of `marketo-sync demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The config directory whose `demo.toml` layer and mapping files are used (default: the
    /// copy embedded in the binary, [`EMBEDDED_CONFIG`]).
    pub config: Option<PathBuf>,
    /// Where the status page listens (default: the `http.listen` setting, 127.0.0.1:8080).
    pub listen: Option<SocketAddr>,
    /// Stop after this many completed cycles (default: run until Ctrl-C).
    pub cycles: Option<u32>,
    /// Where the SQLite files go (default: a temporary directory removed at exit).
    pub state_dir: Option<PathBuf>,
    /// Seed of the sample data.
    pub seed: u64,
    /// Leads in the simulator.
    pub leads: usize,
    /// Contacts in the demo CRM.
    pub contacts: usize,
    /// Pause between cycles.
    pub interval: Duration,
    /// Where the logs go (shown in the banner; the subscriber is installed by the caller with
    /// [`crate::telemetry::init_demo`]).
    pub logs: DemoLogs,
    /// Which CRM the demo embeds.
    pub crm: DemoCrm,
}

/// The CRM `marketo-sync demo` embeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DemoCrm {
    /// The demo CRM in a SQLite file, through the sql adapter.
    #[default]
    Sql,
    /// The HubSpot simulator, through the hubspot adapter.
    HubSpot,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            config: None,
            listen: None,
            cycles: None,
            state_dir: None,
            seed: 7,
            leads: 40,
            contacts: 30,
            interval: Duration::from_secs(10),
            logs: DemoLogs::Quiet,
            crm: DemoCrm::Sql,
        }
    }
}

/// What a demo run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoReport {
    /// Cycles completed.
    pub cycles: u32,
    /// Edits the demo made on either side.
    pub edits: u32,
}

/// Runs the demo until `shutdown` fires or `options.cycles` cycles completed, writing what it
/// does for people to `out`.
///
/// # Errors
///
/// Returns an error when the settings do not load, the simulator, the demo CRM or the store
/// cannot start, or the listener cannot be bound.
pub async fn run_demo(
    options: DemoOptions,
    out: Arc<Mutex<dyn Write + Send>>,
    shutdown: CancellationToken,
) -> Result<DemoReport, AppError> {
    let temp;
    let state_dir = match &options.state_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&state_dir).map_err(|error| AppError::InvalidArgument {
        what: "--state-dir",
        reason: format!("cannot create {}: {error}", state_dir.display()),
    })?;

    let embedded;
    let config_dir = match &options.config {
        Some(dir) => dir.clone(),
        None => {
            embedded = tempfile::tempdir()?;
            let files = match options.crm {
                DemoCrm::Sql => EMBEDDED_CONFIG,
                DemoCrm::HubSpot => EMBEDDED_HUBSPOT_CONFIG,
            };
            write_files(embedded.path(), files).map_err(|error| AppError::InvalidArgument {
                what: "--config",
                reason: format!(
                    "cannot write the built-in config to {}: {error}",
                    embedded.path().display()
                ),
            })?;
            embedded.path().to_path_buf()
        }
    };
    let mut loaded = crate::config::load(&SettingsSource::new(&config_dir, Some("demo")))?;
    let client_id = loaded
        .settings
        .marketo
        .client_id
        .clone()
        .unwrap_or_else(|| "demo-client".to_owned());
    let client_secret = loaded
        .settings
        .marketo
        .client_secret
        .clone()
        .unwrap_or_else(|| SecretString::from("demo-client-secret"));
    let sim = Simulator::start(SimConfig {
        seed: options.seed,
        leads: options.leads,
        client_id: client_id.clone(),
        client_secret: client_secret.clone(),
        export_delay: Duration::ZERO,
        import_delay: Duration::ZERO,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| AppError::InvalidArgument {
        what: "simulator",
        reason: e.to_string(),
    })?;

    let crm = EmbeddedCrm::start(&options, &state_dir).await?;
    let store_url = format!("sqlite://{}", state_dir.join("demo-state.db").display());
    let webhook_secret = uuid::Uuid::new_v4().simple().to_string();

    point_at_demo(
        &mut loaded,
        &sim,
        &crm,
        &store_url,
        &webhook_secret,
        &options,
    );
    let (runner, store) = super::build_engine(&loaded).await?;
    let settings = &loaded.settings;
    let mut parts = super::DaemonParts::new(
        runner,
        store.clone(),
        super::http_config(settings),
        super::instance_id(settings),
        super::holder_id(),
    );
    // The demo's own interval, which may be shorter than the settings' whole seconds.
    parts.interval = options.interval;
    parts.daily_call_budget = u64::from(settings.marketo.daily_call_budget);
    parts.bulk_budget_bytes = u64::from(settings.marketo.bulk_mb_budget) * 1024 * 1024;
    let daemon = super::Daemon::build(parts).await?;
    let listen = SocketAddr::new(settings.http.listen.ip(), daemon.port());

    say(
        &out,
        &format!(
            "marketo-sync demo\n  status page:    http://{listen}/\n  webhook:        POST http://{listen}/webhooks/marketo\n  webhook secret: {webhook_secret} (header {})\n  simulator:      {}\n  crm:            {}\n  config:         {}\n  state:          {}\n  logs:           {}\n  stop with Ctrl-C{}",
            settings.http.webhook_header,
            sim.base_url(),
            crm.describe(),
            options.config.as_ref().map_or_else(
                || "built in (--config DIR to use your own)".to_owned(),
                |dir| dir.display().to_string()
            ),
            state_dir.display(),
            describe_logs(&options.logs),
            options
                .cycles
                .map(|n| format!(" (or after {n} cycles)"))
                .unwrap_or_default(),
        ),
    );

    let daemon_token = shutdown.child_token();
    let daemon = tokio::spawn(daemon.run_until_stopped(daemon_token.clone()));
    let report = play(&options, &sim, &crm, store, &out, &daemon_token).await;
    daemon_token.cancel();
    match daemon.await {
        Ok(result) => result?,
        Err(join) => {
            return Err(AppError::InvalidArgument {
                what: "daemon",
                reason: join.to_string(),
            });
        }
    }
    say(
        &out,
        &format!(
            "demo stopped after {} cycles and {} edits",
            report.cycles, report.edits
        ),
    );
    sim.shutdown().await;
    crm.shutdown().await;
    Ok(report)
}

/// The CRM a demo embeds.
enum EmbeddedCrm {
    /// The demo CRM in a SQLite file.
    Sql {
        /// Its URL.
        url: String,
    },
    /// The HubSpot simulator, and the file holding the token it accepts.
    HubSpot {
        /// The simulator.
        sim: HubSpotHandle,
        /// The token file the adapter reads.
        token_file: PathBuf,
    },
}

impl EmbeddedCrm {
    /// Starts the CRM `options` name, with its sample data, in `state_dir`.
    async fn start(options: &DemoOptions, state_dir: &Path) -> Result<EmbeddedCrm, AppError> {
        match options.crm {
            DemoCrm::Sql => {
                let url = format!("sqlite://{}", state_dir.join("demo-crm.db").display());
                crate::sim::demo_crm::install(&url, options.seed, options.contacts)
                    .await
                    .map_err(|e| AppError::Engine(e.into()))?;
                Ok(EmbeddedCrm::Sql { url })
            }
            DemoCrm::HubSpot => start_hubspot(options, state_dir).await,
        }
    }

    fn describe(&self) -> String {
        match self {
            EmbeddedCrm::Sql { url } => format!("the demo CRM ({url})"),
            EmbeddedCrm::HubSpot { sim, .. } => {
                format!("the HubSpot simulator ({})", sim.base_url())
            }
        }
    }

    async fn shutdown(self) {
        if let EmbeddedCrm::HubSpot { sim, .. } = self {
            sim.shutdown().await;
        }
    }
}

/// Starts the HubSpot simulator with sample data, writes the token it accepts to a file of
/// `state_dir` (the adapter reads it from there; it is never printed), and creates the unique
/// `marketo_id` properties as `marketo-sync crm prepare` does.
async fn start_hubspot(options: &DemoOptions, state_dir: &Path) -> Result<EmbeddedCrm, AppError> {
    let token = SecretString::from(format!("pat-na1-demo-{}", uuid::Uuid::new_v4()));
    let sim = HubSpotSim::start(HubSpotConfig {
        seed: options.seed,
        contacts: options.contacts,
        token: token.clone(),
        ..HubSpotConfig::default()
    })
    .await
    .map_err(|e| AppError::InvalidArgument {
        what: "hubspot simulator",
        reason: e.to_string(),
    })?;
    let token_file = state_dir.join("hubspot-token");
    std::fs::write(&token_file, token.expose_secret())?;
    let mut crm_options =
        hubspot_example_options().map_err(|reason| AppError::InvalidArgument {
            what: "the built-in hubspot example",
            reason,
        })?;
    crm_options["base_url"] = json!(sim.base_url());
    let parsed = crate::crm::hubspot::HubSpotOptions::from_json(&crm_options)
        .map_err(|e| AppError::Engine(e.into()))?;
    crate::crm::hubspot::prepare::prepare(&parsed, token)
        .await
        .map_err(|e| AppError::Engine(e.into()))?;
    Ok(EmbeddedCrm::HubSpot { sim, token_file })
}

/// Returns the `[crm.options]` table of the built-in HubSpot example
/// (`config/examples/hubspot/default.toml`), as JSON.
///
/// # Errors
///
/// Returns why the embedded file does not parse or has no `[crm.options]`.
pub fn hubspot_example_options() -> Result<serde_json::Value, String> {
    let example = EMBEDDED_HUBSPOT_CONFIG
        .iter()
        .find(|(name, _)| *name == "default.toml")
        .map_or("", |(_, text)| *text);
    let doc: toml::Table = toml::from_str(example).map_err(|e| e.to_string())?;
    let options = doc
        .get("crm")
        .and_then(|crm| crm.get("options"))
        .ok_or("no [crm.options]")?;
    serde_json::to_value(options).map_err(|e| e.to_string())
}

/// Points the loaded demo settings at the embedded simulator, CRM and store.
fn point_at_demo(
    loaded: &mut Loaded,
    sim: &SimHandle,
    crm: &EmbeddedCrm,
    store_url: &str,
    webhook_secret: &str,
    options: &DemoOptions,
) {
    let settings = &mut loaded.settings;
    settings.marketo.base_url = Some(sim.base_url().to_string());
    settings.marketo.munchkin_id = None;
    match crm {
        EmbeddedCrm::Sql { url } => {
            settings.crm.adapter = "sql".to_owned();
            settings.crm.url = Some(SecretString::from(url.clone()));
            if settings.crm.options.get("objects").is_none() {
                settings.crm.options = crate::sim::demo_crm::adapter_options(true, false);
            }
        }
        EmbeddedCrm::HubSpot { sim, token_file } => {
            settings.crm.adapter = crate::crm::hubspot::ADAPTER_NAME.to_owned();
            settings.crm.url = None;
            let o = &mut settings.crm.options;
            if let Some(map) = o.as_object_mut() {
                map.remove("token_env");
            }
            o["base_url"] = json!(sim.base_url());
            o["token_file"] = json!(token_file);
        }
    }
    settings.store.url = SecretString::from(store_url.to_owned());
    settings.http.webhook_secret = Some(SecretString::from(webhook_secret.to_owned()));
    if let Some(listen) = options.listen {
        settings.http.listen = listen;
    }
    settings.sync.interval_secs = options.interval.as_secs().max(1);
}

/// Waits for each cycle to end, then edits both sides; returns when `stop` fires or enough
/// cycles ran.
async fn play(
    options: &DemoOptions,
    sim: &SimHandle,
    embedded: &EmbeddedCrm,
    store: Arc<dyn StateStore>,
    out: &Arc<Mutex<dyn Write + Send>>,
    stop: &CancellationToken,
) -> DemoReport {
    let mut report = DemoReport::default();
    let crm = match CrmUser::open(embedded).await {
        Ok(user) => user,
        Err(error) => {
            say(out, &format!("demo: cannot open the demo CRM: {error}"));
            stop.cancelled().await;
            return report;
        }
    };
    let mut watcher = CycleWatcher::default();
    // Poll about twice per interval, at most every 500 ms.
    let period =
        (options.interval / 2).clamp(Duration::from_millis(10), Duration::from_millis(500));
    let mut poll = tokio::time::interval(period);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = poll.tick() => {}
        }
        let Ok(finished) = watcher.poll(store.as_ref()).await else {
            continue;
        };
        if finished.is_empty() {
            continue;
        }
        let mut enough = false;
        for (n, cycle) in &finished {
            say(out, &describe_cycle(*n, cycle));
            report.cycles = *n;
            if options.cycles.is_some_and(|limit| *n >= limit) {
                enough = true;
                break;
            }
        }
        if enough {
            break;
        }
        report.edits += edit_both_sides(sim, &crm, &store, report.cycles, out).await;
    }
    crm.close().await;
    report
}

/// Numbers the cycles that finish, however many there are: it remembers the ids of the finished
/// cycles it last saw among the most recent ones, never a count of them (which would stop at the
/// page size).
#[derive(Debug, Default)]
pub struct CycleWatcher {
    seen: HashSet<uuid::Uuid>,
    narrated: u32,
}

impl CycleWatcher {
    /// How many recent cycles each poll reads: more than can finish between two polls.
    const WINDOW: u32 = 50;

    /// Returns the cycles that finished since the last call, oldest first, each with its number
    /// (1 for the first cycle this watcher saw finish).
    ///
    /// # Errors
    ///
    /// Returns the store's error; the next call catches up.
    pub async fn poll(
        &mut self,
        store: &dyn StateStore,
    ) -> Result<Vec<(u32, CycleRecord)>, StoreError> {
        let recent = store.recent_cycles(Self::WINDOW).await?;
        let mut finished: Vec<CycleRecord> = recent
            .into_iter()
            .filter(|c| c.ended_at.is_some())
            .collect();
        finished.sort_by_key(|c| (c.started_at, c.ended_at));
        let mut new = Vec::new();
        let mut seen = HashSet::with_capacity(finished.len());
        for cycle in finished {
            seen.insert(cycle.id);
            if !self.seen.contains(&cycle.id) {
                self.narrated = self.narrated.saturating_add(1);
                new.push((self.narrated, cycle));
            }
        }
        // Only ids that can come back in the next window are kept.
        self.seen = seen;
        Ok(new)
    }

    /// How many finished cycles it has numbered.
    pub fn count(&self) -> u32 {
        self.narrated
    }
}

fn describe_logs(logs: &DemoLogs) -> String {
    match logs {
        DemoLogs::File(path) => format!("{} (JSON lines)", path.display()),
        DemoLogs::Stderr => "standard error".to_owned(),
        DemoLogs::Quiet => "errors only (--log-file PATH or --verbose for more)".to_owned(),
    }
}

fn describe_cycle(n: u32, cycle: &CycleRecord) -> String {
    let mut to_crm = 0;
    let mut to_marketo = 0;
    for count in &cycle.counts {
        let written = count.created + count.updated + count.deleted;
        match count.direction {
            Some(crate::model::Direction::MarketoToCrm) => to_crm += written,
            Some(crate::model::Direction::CrmToMarketo) => to_marketo += written,
            None => {}
        }
    }
    let mut line = format!(
        "cycle {n} {}: {to_crm} records written Marketo -> CRM, {to_marketo} CRM -> Marketo, {} Marketo calls",
        cycle.outcome.as_str(),
        cycle.api_calls
    );
    if let Some(message) = &cycle.message {
        line.push_str(" (");
        line.push_str(message);
        line.push(')');
    }
    line
}

/// Makes one round of edits as people would: returns how many it made.
/// The simulator's webinar program, whose members the demo moves along.
const DEMO_PROGRAM: i64 = 1107;

async fn edit_both_sides(
    sim: &SimHandle,
    crm: &CrmUser<'_>,
    store: &Arc<dyn StateStore>,
    round: u32,
    out: &Arc<Mutex<dyn Write + Send>>,
) -> u32 {
    let mut edits = 0;
    let links = store
        .links_page("leads", None, 20)
        .await
        .unwrap_or_default();
    let live: Vec<_> = links.iter().filter(|l| l.tombstone.is_none()).collect();
    if live.is_empty() {
        return 0;
    }
    let pick = |offset: usize| live[(round as usize * 2 + offset) % live.len()];

    // A marketer edits a lead's title in Marketo.
    let lead = pick(0);
    if let Ok(id) = lead.marketo_key.parse::<i64>() {
        let title = format!("Head of Demos {round}");
        let values = json!({ "title": title });
        if let Some(map) = values.as_object()
            && sim.update_lead(id, map.clone()).is_ok()
        {
            edits += 1;
            say(
                out,
                &format!(
                    "  marketer: lead {id} title -> {title:?} in Marketo (CRM contact {} follows next cycle)",
                    lead.crm_key
                ),
            );
        }
    }

    // A salesperson edits a contact's phone in the CRM.
    let contact = pick(1);
    let phone = format!("+1 555 01{:02}", round % 100);
    if crm.set_phone(&contact.crm_key, &phone).await {
        edits += 1;
        say(
            out,
            &format!(
                "  salesperson: contact {} phone -> {phone:?} in the CRM (Marketo lead {} follows next cycle)",
                contact.crm_key, contact.marketo_key
            ),
        );
    }

    // A visitor chats with the chat product, which logs the conversation in the CRM.
    let chat = pick(2);
    let topic = format!("Pricing question {round}");
    if crm.log_chat(&chat.crm_key, &topic).await {
        edits += 1;
        say(
            out,
            &format!(
                "  chat: conversation {topic:?} of contact {} in the CRM's events (a Marketo \
                 Chat Conversation activity on lead {} next cycle)",
                chat.crm_key, chat.marketo_key
            ),
        );
    }

    // A marketer moves a lead through the webinar program (the demo CRM has campaigns).
    if matches!(crm, CrmUser::Sql(_))
        && let Ok(id) = pick(2).marketo_key.parse::<i64>()
    {
        const STEPS: &[&str] = &["Invited", "Registered", "Attended", "Influenced"];
        let status = STEPS[round as usize % STEPS.len()];
        if sim.set_program_status(DEMO_PROGRAM, id, status).is_ok() {
            edits += 1;
            say(
                out,
                &format!(
                    "  marketer: lead {id} -> {status:?} in program {DEMO_PROGRAM} (its CRM campaign member follows next cycle)"
                ),
            );
        }
    }

    // New people on both sides.
    let email = format!("new.lead.{round}@demo.example");
    let values =
        json!({ "email": email, "firstName": "Newly", "lastName": format!("Marketo{round}") });
    if let Some(map) = values.as_object() {
        let id = sim.create_lead(map.clone());
        edits += 1;
        say(
            out,
            &format!("  marketer: new lead {id} <{email}> in Marketo"),
        );
    }
    let email = format!("new.contact.{round}@demo.example");
    if crm.add_contact(&email, &format!("Crm{round}")).await {
        edits += 1;
        say(
            out,
            &format!("  salesperson: new contact <{email}> in the CRM"),
        );
    }
    edits
}

/// A salesperson at work in the embedded CRM.
enum CrmUser<'a> {
    /// Editing the demo CRM's tables.
    Sql(sqlx::SqlitePool),
    /// Editing HubSpot records (through the simulator, as a HubSpot user).
    HubSpot(&'a HubSpotHandle),
}

impl CrmUser<'_> {
    async fn open(crm: &EmbeddedCrm) -> Result<CrmUser<'_>, sqlx::Error> {
        Ok(match crm {
            EmbeddedCrm::Sql { url } => CrmUser::Sql(sqlx::sqlite::SqlitePool::connect(url).await?),
            EmbeddedCrm::HubSpot { sim, .. } => CrmUser::HubSpot(sim),
        })
    }

    /// Sets a contact's phone; returns whether it was edited.
    async fn set_phone(&self, contact: &str, phone: &str) -> bool {
        match self {
            CrmUser::Sql(pool) => sqlx::query(
                "UPDATE contacts SET phone = ?1, updated_at = strftime('%Y-%m-%d %H:%M:%f','now') WHERE id = ?2",
            )
            .bind(phone)
            .bind(contact)
            .execute(pool)
            .await
            .is_ok_and(|r| r.rows_affected() == 1),
            CrmUser::HubSpot(sim) => contact.parse().is_ok_and(|id| {
                let values = json!({ "phone": phone });
                values
                    .as_object()
                    .is_some_and(|v| sim.update("contacts", id, v.clone()).is_ok_and(|c| c))
            }),
        }
    }

    /// Adds a contact; returns whether it was added.
    async fn add_contact(&self, email: &str, last_name: &str) -> bool {
        match self {
            CrmUser::Sql(pool) => sqlx::query(
                "INSERT INTO contacts (email, first_name, last_name, updated_at) VALUES (?1, 'Newly', ?2, strftime('%Y-%m-%d %H:%M:%f','now'))",
            )
            .bind(email)
            .bind(last_name)
            .execute(pool)
            .await
            .is_ok(),
            CrmUser::HubSpot(sim) => {
                let values = json!({ "email": email, "firstname": "Newly", "lastname": last_name });
                values
                    .as_object()
                    .is_some_and(|v| sim.create("contacts", v.clone()).is_ok())
            }
        }
    }

    /// Logs a chat conversation of a contact in the `events` table (the SQL demo CRM only);
    /// returns whether it was logged.
    async fn log_chat(&self, contact: &str, topic: &str) -> bool {
        match self {
            CrmUser::Sql(pool) => sqlx::query(
                "INSERT INTO events (contact_id, topic, transcript, occurred_at, updated_at) VALUES (?1, ?2, ?3, strftime('%Y-%m-%d %H:%M:%f','now'), strftime('%Y-%m-%d %H:%M:%f','now'))",
            )
            .bind(contact)
            .bind(topic)
            .bind(format!("visitor: {topic}?\nagent: Here is our pricing page."))
            .execute(pool)
            .await
            .is_ok(),
            CrmUser::HubSpot(_) => false,
        }
    }

    async fn close(self) {
        if let CrmUser::Sql(pool) = self {
            pool.close().await;
        }
    }
}

fn say(out: &Arc<Mutex<dyn Write + Send>>, line: &str) {
    if let Ok(mut out) = out.lock() {
        // The demo's narration is best effort: a closed stdout must not stop the sync.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

#[cfg(test)]
#[path = "../../tests/support/prereq.rs"]
mod prereq;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CycleOutcome;

    /// The first test of `cargo test` (the library's tests run first, in name order): it says,
    /// in one line at the top, what the suite needs that is missing here and which command sets
    /// it up. Under `scripts/test` and CI (`MKSYNC_REQUIRE_ALL` or `CI`) a missing prerequisite
    /// fails it; otherwise the tests that need one skip with a notice of their own.
    #[test]
    fn a_notice_of_missing_test_prerequisites() {
        let missing = super::prereq::missing_prerequisites();
        match super::prereq::notice() {
            Some(line) => {
                super::prereq::announce(&line);
                assert!(line.contains(super::prereq::FIX), "{line}");
                for what in &missing {
                    assert!(line.contains(what.as_str()), "{what} not named in: {line}");
                }
            }
            None => assert!(missing.is_empty(), "{missing:?}"),
        }
        assert!(
            !super::prereq::require_all() || missing.is_empty(),
            "required but missing: {missing:?}; run {}",
            super::prereq::FIX
        );
    }

    #[test]
    fn every_config_file_the_demo_needs_is_embedded_as_it_is_on_disk() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut on_disk = Vec::new();
        for sub in ["mappings", "demo-secrets"] {
            for entry in std::fs::read_dir(config.join(sub)).expect("read config dir") {
                let name = entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                if sub == "demo-secrets" || name.ends_with(".toml") {
                    on_disk.push(format!("{sub}/{name}"));
                }
            }
        }
        on_disk.extend(["default.toml".to_owned(), "demo.toml".to_owned()]);
        on_disk.sort();
        let mut embedded: Vec<String> = EMBEDDED_CONFIG
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "add new config files to EMBEDDED_CONFIG");
        for (name, text) in EMBEDDED_CONFIG {
            let disk = std::fs::read_to_string(config.join(name)).expect("read");
            assert_eq!(*text, disk, "{name}");
        }
    }

    #[test]
    fn every_hubspot_example_file_is_embedded_as_it_is_on_disk() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/hubspot");
        let mut on_disk = vec![
            "default.toml".to_owned(),
            "demo.toml".to_owned(),
            "demo-secrets/marketo_client_secret".to_owned(),
        ];
        for entry in std::fs::read_dir(example.join("mappings")).expect("read mappings") {
            let name = entry.expect("entry").file_name();
            on_disk.push(format!("mappings/{}", name.to_string_lossy()));
        }
        on_disk.sort();
        let mut embedded: Vec<String> = EMBEDDED_HUBSPOT_CONFIG
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        embedded.sort();
        assert_eq!(
            embedded, on_disk,
            "add new files to EMBEDDED_HUBSPOT_CONFIG"
        );
        for (name, text) in EMBEDDED_HUBSPOT_CONFIG {
            let path = match name.strip_prefix("demo-secrets/") {
                Some(secret) => example.join("../../demo-secrets").join(secret),
                None => example.join(name),
            };
            assert_eq!(
                *text,
                std::fs::read_to_string(path).expect("read"),
                "{name}"
            );
        }
        let options = hubspot_example_options().expect("options");
        assert!(options["objects"]["contacts"].is_object(), "{options}");
    }

    #[test]
    fn the_embedded_demo_config_loads_from_a_fresh_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_embedded_config(&dir.path().join("nested/config")).expect("write");
        let source = SettingsSource::new(dir.path().join("nested/config"), Some("demo"))
            .with_vars(std::collections::HashMap::new());
        let loaded = crate::config::load(&source).expect("the embedded demo config loads");
        assert!(loaded.mappings.iter().any(|m| m.object == "leads"));
        assert_eq!(
            loaded.settings.marketo.client_id.as_deref(),
            Some("demo-client")
        );
    }

    fn cycle(start: i64) -> CycleRecord {
        let t0 = chrono::DateTime::<chrono::Utc>::from_timestamp(1_780_000_000, 0).expect("t0");
        CycleRecord {
            id: uuid::Uuid::new_v4(),
            started_at: t0 + chrono::Duration::seconds(start),
            ended_at: Some(
                t0 + chrono::Duration::seconds(start) + chrono::Duration::milliseconds(500),
            ),
            outcome: CycleOutcome::Succeeded,
            steps: Vec::new(),
            counts: Vec::new(),
            api_calls: 3,
            message: None,
        }
    }

    #[tokio::test]
    async fn the_watcher_numbers_cycles_well_past_fifty_one_or_many_at_a_time() {
        let store = crate::store::open("sqlite::memory:").await.expect("store");
        let mut watcher = CycleWatcher::default();
        assert!(watcher.poll(store.as_ref()).await.expect("poll").is_empty());
        let mut numbers = Vec::new();
        let mut next = 0i64;
        // One cycle per poll for 60 cycles, then batches of 1 to 7 between polls.
        for round in 0..90 {
            let batch = if round < 60 { 1 } else { 1 + round % 7 };
            for _ in 0..batch {
                store.record_cycle(&cycle(next)).await.expect("record");
                next += 1;
            }
            let new = watcher.poll(store.as_ref()).await.expect("poll");
            assert_eq!(new.len(), batch as usize, "round {round}");
            numbers.extend(new.into_iter().map(|(n, _)| n));
            // Polling again with nothing new narrates nothing.
            assert!(watcher.poll(store.as_ref()).await.expect("poll").is_empty());
        }
        let expected: Vec<u32> = (1..=u32::try_from(next).expect("count")).collect();
        assert_eq!(numbers, expected);
        assert_eq!(watcher.count(), u32::try_from(next).expect("count"));
        assert!(watcher.count() > 100);
    }

    #[tokio::test]
    async fn a_running_cycle_is_narrated_once_it_ends() {
        let store = crate::store::open("sqlite::memory:").await.expect("store");
        let mut watcher = CycleWatcher::default();
        let mut running = cycle(0);
        running.ended_at = None;
        running.outcome = CycleOutcome::Running;
        store.record_cycle(&running).await.expect("record");
        assert!(watcher.poll(store.as_ref()).await.expect("poll").is_empty());
        let mut done = running.clone();
        done.ended_at = Some(running.started_at + chrono::Duration::seconds(1));
        done.outcome = CycleOutcome::Failed;
        done.message = Some("crm unreachable".to_owned());
        store.record_cycle(&done).await.expect("record");
        let new = watcher.poll(store.as_ref()).await.expect("poll");
        assert_eq!(new.len(), 1);
        assert_eq!(
            describe_cycle(new[0].0, &new[0].1),
            "cycle 1 failed: 0 records written Marketo -> CRM, 0 CRM -> Marketo, 3 Marketo calls (crm unreachable)"
        );
    }
}
