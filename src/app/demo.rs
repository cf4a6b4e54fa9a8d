//! `marketo-sync demo`: the whole service embedded, with no credentials and no servers.
//!
//! It starts the Marketo simulator with sample leads, installs the demo CRM in a SQLite file,
//! opens a SQLite state store, and runs the daemon (status page included) against them. Between
//! cycles it plays a marketer and a salesperson: it edits a lead in Marketo and a contact in the
//! CRM, and creates a new record on each side, so that a person watching the status page (or the
//! log) sees records flow both ways.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::AppError;
use crate::config::{Loaded, SettingsSource};
use crate::sim::{SimConfig, SimHandle, Simulator};
use crate::store::StateStore;

/// Options of `marketo-sync demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The config directory; its `demo.toml` layer and mapping files are used.
    pub config: PathBuf,
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
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            config: PathBuf::from("config"),
            listen: None,
            cycles: None,
            state_dir: None,
            seed: 7,
            leads: 40,
            contacts: 30,
            interval: Duration::from_secs(10),
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
    std::fs::create_dir_all(&state_dir)?;

    let mut loaded = crate::config::load(&SettingsSource::new(&options.config, Some("demo")))?;
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

    let crm_url = format!("sqlite://{}", state_dir.join("demo-crm.db").display());
    crate::sim::demo_crm::install(&crm_url, options.seed, options.contacts)
        .await
        .map_err(|e| AppError::Engine(e.into()))?;
    let store_url = format!("sqlite://{}", state_dir.join("demo-state.db").display());
    let webhook_secret = uuid::Uuid::new_v4().simple().to_string();

    point_at_demo(
        &mut loaded,
        &sim,
        &crm_url,
        &store_url,
        &webhook_secret,
        &options,
    );
    let listen = loaded.settings.http.listen;
    let (runner, store) = super::build_engine(&loaded).await?;

    say(
        &out,
        &format!(
            "marketo-sync demo\n  status page:    http://{listen}/\n  webhook:        POST http://{listen}/webhooks/marketo\n  webhook secret: {webhook_secret} (header {})\n  simulator:      {}\n  state:          {}\n  stop with Ctrl-C{}",
            loaded.settings.http.webhook_header,
            sim.base_url(),
            state_dir.display(),
            options
                .cycles
                .map(|n| format!(" (or after {n} cycles)"))
                .unwrap_or_default(),
        ),
    );

    let daemon_token = shutdown.child_token();
    let daemon = tokio::spawn(super::run_daemon_on(
        loaded,
        store.clone(),
        runner,
        daemon_token.clone(),
    ));
    let report = play(&options, &sim, &crm_url, store, &out, &daemon_token).await;
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
    Ok(report)
}

/// Points the loaded demo settings at the embedded simulator, CRM and store.
fn point_at_demo(
    loaded: &mut Loaded,
    sim: &SimHandle,
    crm_url: &str,
    store_url: &str,
    webhook_secret: &str,
    options: &DemoOptions,
) {
    let settings = &mut loaded.settings;
    settings.marketo.base_url = Some(sim.base_url().to_string());
    settings.marketo.munchkin_id = None;
    settings.crm.adapter = "sql".to_owned();
    settings.crm.url = Some(SecretString::from(crm_url.to_owned()));
    if settings.crm.options.get("objects").is_none() {
        settings.crm.options = crate::sim::demo_crm::adapter_options(true, false);
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
    crm_url: &str,
    store: Arc<dyn StateStore>,
    out: &Arc<Mutex<dyn Write + Send>>,
    stop: &CancellationToken,
) -> DemoReport {
    let mut report = DemoReport::default();
    let crm = match sqlx::sqlite::SqlitePool::connect(crm_url).await {
        Ok(pool) => pool,
        Err(error) => {
            say(out, &format!("demo: cannot open the demo CRM: {error}"));
            stop.cancelled().await;
            return report;
        }
    };
    let mut seen_cycles = 0usize;
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = poll.tick() => {}
        }
        let finished = match store.recent_cycles(50).await {
            Ok(cycles) => cycles
                .into_iter()
                .filter(|c| c.ended_at.is_some())
                .collect::<Vec<_>>(),
            Err(_) => continue,
        };
        if finished.len() <= seen_cycles {
            continue;
        }
        seen_cycles = finished.len();
        report.cycles = u32::try_from(seen_cycles).unwrap_or(u32::MAX);
        if let Some(last) = finished.first() {
            say(out, &describe_cycle(report.cycles, last));
        }
        if options.cycles.is_some_and(|n| report.cycles >= n) {
            break;
        }
        report.edits += edit_both_sides(sim, &crm, &store, report.cycles, out).await;
    }
    crm.close().await;
    report
}

fn describe_cycle(n: u32, cycle: &crate::store::CycleRecord) -> String {
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
    format!(
        "cycle {n} {}: {to_crm} records written Marketo -> CRM, {to_marketo} CRM -> Marketo, {} Marketo calls",
        cycle.outcome.as_str(),
        cycle.api_calls
    )
}

/// Makes one round of edits as people would: returns how many it made.
async fn edit_both_sides(
    sim: &SimHandle,
    crm: &sqlx::SqlitePool,
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
    let updated = sqlx::query(
        "UPDATE contacts SET phone = ?1, updated_at = strftime('%Y-%m-%d %H:%M:%f','now') WHERE id = ?2",
    )
    .bind(&phone)
    .bind(&contact.crm_key)
    .execute(crm)
    .await;
    if updated.is_ok_and(|r| r.rows_affected() == 1) {
        edits += 1;
        say(
            out,
            &format!(
                "  salesperson: contact {} phone -> {phone:?} in the CRM (Marketo lead {} follows next cycle)",
                contact.crm_key, contact.marketo_key
            ),
        );
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
    let inserted = sqlx::query(
        "INSERT INTO contacts (email, first_name, last_name, updated_at) VALUES (?1, 'Newly', ?2, strftime('%Y-%m-%d %H:%M:%f','now'))",
    )
    .bind(&email)
    .bind(format!("Crm{round}"))
    .execute(crm)
    .await;
    if inserted.is_ok() {
        edits += 1;
        say(
            out,
            &format!("  salesperson: new contact <{email}> in the CRM"),
        );
    }
    edits
}

fn say(out: &Arc<Mutex<dyn Write + Send>>, line: &str) {
    if let Ok(mut out) = out.lock() {
        // The demo's narration is best effort: a closed stdout must not stop the sync.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
