//! The Marketo simulator and the demo CRM seed.
//!
//! The simulator is a stateful HTTP server that behaves like a Marketo instance: identity with
//! expiring tokens, the 100/20 s, 10-in-flight and daily limits, the Lead Database REST routes,
//! activities that follow data changes, bulk extract and import, seeded data and seeded faults.
//! Every route it serves is listed in [`routes::ROUTES`].
//!
//! - [`Simulator::start`] binds `127.0.0.1:0` and returns a [`SimHandle`] for tests.
//! - [`serve_on`] serves on a given listener until cancelled (the `simulate` command).
//! - The admin API under `/__sim/` and the [`SimHandle`] methods act as a Marketo user.

pub mod admin;
pub mod auth;
pub mod bulk;
pub mod catalog;
pub mod clock;
pub mod demo_crm;
pub mod faults;
pub mod generator;
pub mod hubspot;
pub mod limits;
pub mod routes;
pub mod schema;
pub mod server;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use faults::{FaultKind, FaultProfile, FaultRule, FaultSpecError};
pub use server::LogEntry;

/// A program as [`SimHandle::programs`] returns it: (id, name, channel, members as (lead id,
/// status name)).
pub type ProgramMembers = (i64, String, String, Vec<(i64, String)>);

/// The simulator's configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the data generator and of fault injection.
    pub seed: u64,
    /// Number of generated leads.
    pub leads: usize,
    /// The client id Identity accepts.
    pub client_id: String,
    /// The client secret Identity accepts.
    pub client_secret: SecretString,
    /// Sim time a bulk export job spends Processing.
    pub export_delay: Duration,
    /// Sim time a bulk import spends Queued before it completes.
    pub import_delay: Duration,
    /// Injected faults.
    pub faults: FaultProfile,
    /// Daily call quota (607 above it).
    pub daily_quota: u64,
    /// Daily bulk export bytes (1029 above it).
    pub bulk_daily_bytes: u64,
    /// Whether bulk lead export accepts the `updatedAt` filter (default true, as on a normal
    /// subscription; false answers 1035).
    pub updated_at_filter: bool,
    /// Sim start instant (default: now, whole seconds).
    pub start: Option<DateTime<Utc>>,
    /// Native CRM sync enabled: company, opportunity and sales person writes and every
    /// opportunity role call answer 1018 "CRM Enabled".
    pub native_crm_sync: bool,
    /// The generated leads' New Lead activities are in the activity feed and activity exports,
    /// as on a real instance (default on). A test that wants the generated leads to predate
    /// every watermark can turn it off: a first cycle from an early low watermark sees every
    /// lead generated after it as new, as it would on Marketo.
    pub generated_new_lead_activities: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            leads: 1000,
            client_id: "sim-client".to_string(),
            client_secret: SecretString::from("sim-secret"),
            export_delay: Duration::from_secs(120),
            import_delay: Duration::from_secs(10),
            faults: FaultProfile::none(),
            daily_quota: 50_000,
            bulk_daily_bytes: 500 * 1024 * 1024,
            updated_at_filter: true,
            start: None,
            native_crm_sync: false,
            generated_new_lead_activities: true,
        }
    }
}

/// A simulator error.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listener could not be bound or read.
    #[error("cannot bind the simulator listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("the simulator server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// A lead or company the caller named does not exist.
    #[error("no such {object} {key}")]
    NotFound {
        /// `lead` or `company`.
        object: &'static str,
        /// Its key.
        key: String,
    },
    /// A fault profile that cannot be parsed.
    #[error("bad fault profile: {0}")]
    Faults(#[from] FaultSpecError),
}

impl SimError {
    /// Returns whether retrying may help (only bind errors, e.g. a port in use).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SimError::Bind { .. })
    }
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Starts a simulator on `127.0.0.1:0` and returns its handle.
    ///
    /// # Errors
    ///
    /// Returns [`SimError::Bind`] when the listener cannot be bound.
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        let addr = "127.0.0.1:0";
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| SimError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let shared = Arc::new(server::Shared::new(server::SimState::new(config)));
        let cancel = CancellationToken::new();
        let app = server::router(shared.clone());
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
                .map_err(SimError::Serve)
        });
        Ok(SimHandle {
            addr: local,
            shared,
            cancel,
            task: Some(task),
        })
    }
}

/// Serves a simulator on `listener` until `cancel` fires.
///
/// # Errors
///
/// Returns [`SimError::Serve`] when the server fails.
pub async fn serve_on(
    listener: TcpListener,
    config: SimConfig,
    cancel: CancellationToken,
) -> Result<(), SimError> {
    let shared = Arc::new(server::Shared::new(server::SimState::new(config)));
    axum::serve(listener, server::router(shared))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(SimError::Serve)
}

/// Call counters of a simulator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Counted calls in the current quota day.
    pub calls_today: u64,
    /// Calls logged (every REST, bulk and identity call).
    pub calls_logged: u64,
    /// Bulk export bytes used in the current quota day.
    pub export_bytes_today: u64,
    /// Live leads.
    pub leads: usize,
}

/// A running simulator.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), SimError>>>,
}

impl SimHandle {
    /// Returns the base URL (`http://127.0.0.1:PORT`), to which `/identity`, `/rest` and `/bulk`
    /// paths are appended.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the Identity URL (`<base>/identity`).
    pub fn identity_url(&self) -> String {
        format!("{}/identity", self.base_url())
    }

    /// Returns the accepted client id and secret.
    pub fn credentials(&self) -> (String, SecretString) {
        let st = self.shared.lock();
        (st.config.client_id.clone(), st.config.client_secret.clone())
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Returns current sim time.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.lock().clock.now()
    }

    /// Moves sim time forward.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.lock().clock.advance(by);
    }

    /// Removes a lead field from Describe Lead and Describe Lead2 (an admin deleting a field:
    /// schema drift). The field's data stays.
    pub fn hide_lead_field(&self, name: &str) {
        self.shared
            .lock()
            .hidden_lead_fields
            .insert(name.to_owned());
    }

    /// Makes Sync writes (Sync Leads, the Sync endpoints of every other object, and Add Custom
    /// Activities, whose records are matched on their top-level keys), Add to List (the lead's
    /// `id`) and Bulk Import rows
    /// (queued while the rule holds; their failures file gives `message`) skip any input
    /// record whose `field` holds `value`, with `code` and `message` as its reason, until
    /// [`SimHandle::clear_record_refusals`]. Models the record-level refusals the simulator does
    /// not produce by itself (1022 object in use, 1014, partitions, validation rules).
    pub fn refuse_records(&self, field: &str, value: &str, code: &str, message: &str) {
        self.shared
            .lock()
            .record_refusals
            .push(server::RecordRefusalRule {
                field: field.to_owned(),
                value: value.to_owned(),
                code: code.to_owned(),
                message: message.to_owned(),
            });
    }

    /// Removes every rule of [`SimHandle::refuse_records`].
    pub fn clear_record_refusals(&self) {
        self.shared.lock().record_refusals.clear();
    }

    /// Creates a lead as a Marketo user (New Lead activity) and returns its id.
    pub fn create_lead(&self, values: Map<String, Value>) -> i64 {
        admin::op_create_lead(&mut self.shared.lock(), &values)
    }

    /// Edits a lead as a Marketo user (Change Data Value per changed field; company fields of a
    /// linked lead are ignored). Returns the number of changed fields.
    ///
    /// # Errors
    ///
    /// Returns [`SimError::NotFound`] when the lead does not exist.
    pub fn update_lead(&self, id: i64, values: Map<String, Value>) -> Result<usize, SimError> {
        admin::op_update_lead(&mut self.shared.lock(), id, &values).ok_or(SimError::NotFound {
            object: "lead",
            key: id.to_string(),
        })
    }

    /// Sets a lead's status in a program as a marketer would in the Marketo UI (any status of
    /// the channel, forward or back; a lead not yet a member becomes one), logging Change Status
    /// in Progression (104).
    ///
    /// # Errors
    ///
    /// Returns [`SimError::NotFound`] for an unknown program, lead or status, or a status the
    /// lead already has.
    pub fn set_program_status(
        &self,
        program: i64,
        lead: i64,
        status: &str,
    ) -> Result<(), SimError> {
        let mut st = self.shared.lock();
        let now = st.now();
        routes::members::change_status(&mut st.db, now, program, lead, status, false).map_err(
            |(code, message)| SimError::NotFound {
                object: "program member",
                key: format!("{program}:{lead} ({code} {message})"),
            },
        )
    }

    /// Logs a web page visit of a lead (Visit Webpage, type 1, as Munchkin tracking does) and
    /// returns the activity's id, or `None` when the lead does not exist.
    pub fn visit_webpage(&self, lead_id: i64, page_id: i64, url: &str) -> Option<i64> {
        let mut st = self.shared.lock();
        st.db.lead(lead_id)?;
        let now = st.now();
        let mut attrs = Map::new();
        attrs.insert("Client IP Address".into(), Value::from("192.0.2.1"));
        attrs.insert("Webpage URL".into(), Value::from(url));
        Some(st.db.log_activity(
            lead_id,
            now,
            1,
            (Some(page_id), Some(url.to_owned())),
            attrs,
            None,
        ))
    }

    /// Adds a lead to a static list (`add`) or removes it, as a marketer does in the Marketo UI,
    /// logging Add to List (24) or Remove from List (25) with the list as primary attribute.
    /// Returns false (and logs nothing) when the list or lead does not exist or the membership
    /// is already so.
    pub fn set_list_membership(&self, list: i64, lead: i64, add: bool) -> bool {
        let mut st = self.shared.lock();
        if st.db.lead(lead).is_none() {
            return false;
        }
        let now = st.now();
        let Some(l) = st.db.lists.get_mut(&list) else {
            return false;
        };
        let changed = if add {
            l.members.insert(lead)
        } else {
            l.members.remove(&lead)
        };
        if !changed {
            return false;
        }
        let name = l.name.clone();
        let mut attrs = Map::new();
        attrs.insert("Source".into(), Value::from("Marketo UI"));
        let type_id = if add { 24 } else { 25 };
        st.db
            .log_activity(lead, now, type_id, (Some(list), Some(name)), attrs, None);
        true
    }

    /// Returns the static lists: (id, name, member lead ids).
    pub fn static_lists(&self) -> Vec<(i64, String, Vec<i64>)> {
        let st = self.shared.lock();
        st.db
            .lists
            .values()
            .map(|l| (l.id, l.name.clone(), l.members.iter().copied().collect()))
            .collect()
    }

    /// Creates a program as a marketer does in the Marketo UI (no members, in folder 19, no
    /// tags) of a simulated channel (`Webinar` makes an Event program, `Nurture` an Engagement
    /// one, any other a Default one) and returns its id; `None` for a channel the simulator
    /// does not have.
    pub fn create_program(&self, name: &str, channel: &str) -> Option<i64> {
        let &(_, channel, _) = routes::members::CHANNELS.iter().find(|c| c.1 == channel)?;
        let kind = match channel {
            "Webinar" => "Event",
            "Nurture" => "Engagement",
            _ => "Default",
        };
        let mut st = self.shared.lock();
        let now = st.now();
        let id = st.db.programs.keys().max().copied().unwrap_or(1000) + 1;
        st.db.programs.insert(
            id,
            state::Program {
                id,
                name: name.to_owned(),
                kind,
                channel,
                created_at: now,
                updated_at: now,
                members: std::collections::BTreeMap::new(),
                member_fields: std::collections::BTreeMap::new(),
                member_updated: std::collections::BTreeMap::new(),
                folder: (19, "Marketing Activities"),
                tags: Vec::new(),
            },
        );
        Some(id)
    }

    /// Returns the programs: (id, name, channel, members as lead id -> status name).
    pub fn programs(&self) -> Vec<ProgramMembers> {
        let st = self.shared.lock();
        st.db
            .programs
            .values()
            .map(|p| {
                let members = p.members.iter().map(|(l, m)| (*l, m.0.clone())).collect();
                (p.id, p.name.clone(), p.channel.to_owned(), members)
            })
            .collect()
    }

    /// Logs `count` Visit Webpage activities of `leads` (in turn) dated evenly over the next
    /// `over` of sim time, and moves the clock past them; returns their first and last ids.
    /// Stored as one lazily read block, so a million cost a few bytes (benchmarks).
    pub fn visit_webpages_at_volume(
        &self,
        leads: Vec<i64>,
        count: u64,
        over: Duration,
    ) -> Option<(i64, i64)> {
        admin::op_log_visits(&mut self.shared.lock(), leads, count, over.as_secs())
    }

    /// Deletes a lead (Delete Lead activity). Returns false when it did not exist.
    pub fn delete_lead(&self, id: i64) -> bool {
        let mut st = self.shared.lock();
        let now = st.now();
        st.db.delete_lead(id, now)
    }

    /// Merges `losers` into `winner` (Merge Leads activity).
    ///
    /// # Errors
    ///
    /// Returns [`SimError::NotFound`] naming the first missing lead.
    pub fn merge_leads(&self, winner: i64, losers: &[i64]) -> Result<(), SimError> {
        let mut st = self.shared.lock();
        let now = st.now();
        st.db
            .merge_leads(winner, losers, now)
            .map_err(|id| SimError::NotFound {
                object: "lead",
                key: id.to_string(),
            })
    }

    /// Returns a lead with every field (company fields read through), or `None`.
    pub fn lead(&self, id: i64) -> Option<Value> {
        let st = self.shared.lock();
        let lead = st.db.lead(id)?;
        Some(st.db.lead_json(&lead, &state::Db::lead_field_names()))
    }

    /// Returns every live lead with every field, in id order.
    pub fn leads(&self) -> Vec<Value> {
        let st = self.shared.lock();
        let names = state::Db::lead_field_names();
        let mut out = Vec::new();
        st.db
            .for_each_lead(|lead| out.push(st.db.lead_json(lead, &names)));
        out
    }

    /// Returns the ids of live leads whose `field` equals `value`.
    pub fn find_leads(&self, field: &str, value: &str) -> Vec<i64> {
        self.shared.lock().db.find_leads(field, value)
    }

    /// Creates or updates a company by `externalCompanyId` and returns its id.
    ///
    /// # Errors
    ///
    /// Returns [`SimError::NotFound`] when `externalCompanyId` is missing.
    pub fn upsert_company(&self, values: Map<String, Value>) -> Result<i64, SimError> {
        admin::op_upsert_company(&mut self.shared.lock(), &values).ok_or(SimError::NotFound {
            object: "company",
            key: "(no externalCompanyId)".into(),
        })
    }

    /// Deletes a company by `externalCompanyId`. Returns false when it did not exist.
    pub fn delete_company(&self, external_company_id: &str) -> bool {
        admin::op_delete_company(&mut self.shared.lock(), external_company_id)
    }

    /// Returns the company with `externalCompanyId`, all fields.
    pub fn company(&self, external_company_id: &str) -> Option<Value> {
        let st = self.shared.lock();
        let store = st.db.objs(schema::ObjKind::Company);
        let id = store.by_key.get(external_company_id)?;
        Some(Value::Object(state::Db::obj_json(
            schema::ObjKind::Company,
            store.records.get(id)?,
            &[],
        )))
    }

    /// Returns every live record of a non-lead object, all fields, by id.
    pub fn objects(&self, kind: schema::ObjKind) -> Vec<Value> {
        let st = self.shared.lock();
        st.db
            .objs(kind)
            .records
            .values()
            .map(|r| Value::Object(state::Db::obj_json(kind, r, &[])))
            .collect()
    }

    /// Creates and approves a custom activity type as a Marketo admin does in the UI, and
    /// returns its id. `primary` and each attribute are `(apiName, display name, dataType)`;
    /// an existing type of that API name is returned unchanged.
    pub fn add_custom_activity_type(
        &self,
        api_name: &str,
        name: &str,
        primary: (&str, &str, &str),
        attributes: &[(&str, &str, &str)],
    ) -> i64 {
        let mut st = self.shared.lock();
        let now = st.now();
        let types = &mut st.db.catalog.custom_types;
        if let Some(t) = types.get(api_name) {
            return t.id;
        }
        let id = types
            .values()
            .map(|t| t.id)
            .max()
            .unwrap_or(catalog::CUSTOM_TYPE_BASE)
            + 1;
        let own = |(a, n, d): (&str, &str, &str)| (a.to_owned(), n.to_owned(), d.to_owned());
        types.insert(
            api_name.to_owned(),
            catalog::CustomType {
                id,
                api_name: api_name.to_owned(),
                name: name.to_owned(),
                description: String::new(),
                trigger_name: format!("{name} is logged"),
                filter_name: format!("{name} was logged"),
                primary: own(primary),
                attributes: attributes.iter().copied().map(own).collect(),
                draft: None,
                approved: true,
                created_at: now,
                updated_at: now,
            },
        );
        id
    }

    /// Returns the activities (all types, including Delete Lead) as REST activity JSON.
    pub fn activities(&self) -> Vec<Value> {
        let st = self.shared.lock();
        st.db
            .activities
            .iter()
            .map(routes::activities::activity_json)
            .collect()
    }

    /// Returns the call counters.
    pub fn counters(&self) -> Counters {
        admin::op_counters(&mut self.shared.lock())
    }

    /// Returns the request log (oldest first).
    pub fn request_log(&self) -> Vec<LogEntry> {
        self.shared.lock().log.iter().cloned().collect()
    }

    /// Replaces the fault profile.
    pub fn set_faults(&self, faults: FaultProfile) {
        self.shared.lock().faults = faults;
    }

    /// Spends the rest of today's daily call quota (the quota day of sim time): every counted
    /// call answers 607 "Daily quota reached" until sim time passes midnight America/Chicago.
    pub fn spend_daily_quota(&self) {
        let mut st = self.shared.lock();
        let now = st.now();
        let quota = st.config.daily_quota;
        let used = st.limits.daily.entry(clock::quota_day(now)).or_default();
        *used = (*used).max(quota);
    }

    /// Expires every issued token now.
    pub fn expire_tokens(&self) {
        let mut st = self.shared.lock();
        let now = st.clock.now();
        st.auth.expire_all(now);
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Options of the `simulate` command.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Listen address.
    pub listen: String,
    /// Generated leads.
    pub leads: usize,
    /// Seed.
    pub seed: u64,
    /// Client id (generated when absent).
    pub client_id: Option<String>,
    /// Client secret (generated when absent).
    pub client_secret: Option<SecretString>,
    /// Export delay.
    pub export_delay: Duration,
    /// Import delay.
    pub import_delay: Duration,
    /// Daily call quota.
    pub daily_quota: u64,
    /// Daily bulk export bytes.
    pub bulk_daily_bytes: u64,
    /// Fault profile name or spec.
    pub faults: String,
    /// Accept the bulk `updatedAt` filter.
    pub updated_at_filter: bool,
}

/// Runs the `simulate` command: serves a simulator until `cancel` fires, after printing the base
/// URL and the accepted credentials to stdout.
///
/// # Errors
///
/// Returns [`SimError`] for a bad fault profile, a listener that cannot be bound, or a server failure.
pub async fn run_simulate(
    options: SimulateOptions,
    cancel: CancellationToken,
) -> Result<(), SimError> {
    let faults: FaultProfile = options.faults.parse()?;
    let client_id = options
        .client_id
        .unwrap_or_else(|| format!("sim-{}", uuid::Uuid::new_v4().simple()));
    let client_secret = options
        .client_secret
        .unwrap_or_else(|| SecretString::from(uuid::Uuid::new_v4().simple().to_string()));
    let listener = TcpListener::bind(&options.listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: options.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| SimError::Bind {
        addr: options.listen.clone(),
        source,
    })?;
    // The operator needs the credentials to configure a client; they are test credentials of
    // this local simulator, printed to stdout only, never logged.
    println!("marketo simulator listening");
    println!("  base url:      http://{local}");
    println!("  identity url:  http://{local}/identity");
    println!("  client id:     {client_id}");
    println!("  client secret: {}", client_secret.expose_secret());
    println!(
        "  leads: {}  seed: {}  faults: {}",
        options.leads, options.seed, options.faults
    );
    let config = SimConfig {
        seed: options.seed,
        leads: options.leads,
        client_id,
        client_secret,
        export_delay: options.export_delay,
        import_delay: options.import_delay,
        daily_quota: options.daily_quota,
        bulk_daily_bytes: options.bulk_daily_bytes,
        faults,
        updated_at_filter: options.updated_at_filter,
        // A standalone instance serves clients of every kind: as real Marketo, each generated
        // lead carries its New Lead activity.
        generated_new_lead_activities: true,
        ..SimConfig::default()
    };
    tracing::info!(addr = %local, leads = options.leads, "simulator started");
    serve_on(listener, config, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn simulate_rejects_bad_fault_profiles_before_binding() {
        let options = SimulateOptions {
            listen: "127.0.0.1:0".into(),
            leads: 1,
            seed: 1,
            client_id: None,
            client_secret: None,
            export_delay: Duration::from_secs(1),
            import_delay: Duration::from_secs(1),
            daily_quota: 1,
            bulk_daily_bytes: 1,
            faults: "route=leads,kind=nope".into(),
            updated_at_filter: false,
        };
        let error = run_simulate(options, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(error, SimError::Faults(_)), "{error}");
        assert!(!error.is_retryable());
    }

    #[tokio::test]
    async fn serve_on_stops_when_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let config = SimConfig {
            leads: 5,
            ..SimConfig::default()
        };
        serve_on(listener, config, cancel).await.unwrap();
    }
}
