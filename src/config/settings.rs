//! The typed settings: `config/default.toml`, then `config/<env>.toml`, then `MKSYNC__*`
//! environment variables. Every field's `///` line is the operator documentation.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use super::problem::{Problem, Segment, did_you_mean, parse_lenient, span_of_path};
use crate::marketo::bulk_extract::LeadList;
use std::ops::Range;

/// Returns the reason of a settings error from the environment, in the words the file errors
/// use (the `config` crate says "enum X does not have variant constructor v").
fn env_reason(error: &config::ConfigError) -> String {
    let text = error.to_string();
    match text.split_once(" does not have variant constructor ") {
        Some((_, rest)) => {
            let value = rest.split(" for key ").next().unwrap_or(rest);
            format!("unknown value `{value}`")
        }
        None => text,
    }
}

/// The environment-variable prefix; keys are `MKSYNC__SECTION__KEY`.
pub const ENV_PREFIX: &str = "MKSYNC";

/// The earliest low watermark Marketo data can have.
pub fn earliest_watermark() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2007, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// All settings, mirroring the TOML tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The Marketo instance and how hard the service may use it.
    pub marketo: MarketoSettings,
    /// The CRM adapter and its connection.
    pub crm: CrmSettings,
    /// Where the sync state lives.
    pub store: StoreSettings,
    /// What is synced and how often.
    pub sync: SyncSettings,
    /// The HTTP listener (webhooks, health, metrics, status page).
    pub http: HttpSettings,
    /// The first, historical load.
    pub bootstrap: BootstrapSettings,
}

/// The Marketo instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketoSettings {
    /// REST base URL (`https://123-ABC-456.mktorest.com`); derived from `munchkin_id` when unset.
    pub base_url: Option<String>,
    /// Munchkin account id (`123-ABC-456`), used when `base_url` is unset.
    pub munchkin_id: Option<String>,
    /// LaunchPoint client id.
    pub client_id: Option<String>,
    /// LaunchPoint client secret: only from `MKSYNC__MARKETO__CLIENT_SECRET` or `client_secret_file`.
    pub client_secret: Option<SecretString>,
    /// A file holding the client secret (relative paths are relative to the config directory).
    pub client_secret_file: Option<PathBuf>,
    /// Calls allowed per rolling 20 seconds (Marketo's ceiling is 100; leave room for others).
    pub calls_per_20s: u32,
    /// Concurrent calls in flight (Marketo's ceiling is 10).
    pub max_concurrency: u32,
    /// Calls the service may spend per Marketo day (the day turns at midnight America/Chicago).
    pub daily_call_budget: u32,
    /// Bulk-extract megabytes the service may spend per Marketo day (Marketo's quota is 500).
    pub bulk_mb_budget: u32,
    /// The instance's daily API quota shared by every integration (Marketo's default is
    /// 50,000); 0 turns the shared-quota reads of `/rest/v1/stats/usage.json` off.
    pub instance_daily_quota: u64,
    /// The share (0 to 1] of what is left of the instance's daily quota the service may spend,
    /// read from `/rest/v1/stats/usage.json` at most once an hour.
    pub quota_share: f64,
    /// The share (0 to 1] of the day's budget that on-demand work (webhooks, `/sync/crm`,
    /// `sync --record`) may spend; past it, the next poll carries those records.
    pub on_demand_share: f64,
    /// Timeout of one REST call, in seconds.
    pub request_timeout_secs: u64,
    /// Timeout of connecting to Marketo, in seconds.
    pub connect_timeout_secs: u64,
    /// First back-off before retrying a failed call (5xx, 604, 608, 611, dropped connection),
    /// in milliseconds; it doubles on each retry.
    pub retry_min_delay_ms: u64,
    /// Longest back-off between retries of a call, in milliseconds.
    pub retry_max_delay_ms: u64,
    /// How long every call holds off after a 606 (rate limit), in milliseconds; Marketo's window
    /// is 20 seconds. Lower it only against a simulator.
    pub rate_limit_wait_ms: u64,
    /// Records of one write (leads, a custom object) above which the service writes through
    /// Bulk Import files instead of REST batches of 300.
    pub bulk_import_threshold: usize,
    /// The format of the Bulk Import files the service uploads: `csv`, `tsv` or `ssv`
    /// (semicolon-separated).
    pub import_format: crate::marketo::csv::FileFormat,
}

impl Default for MarketoSettings {
    fn default() -> Self {
        MarketoSettings {
            base_url: None,
            munchkin_id: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            calls_per_20s: 80,
            max_concurrency: 5,
            daily_call_budget: 10_000,
            bulk_mb_budget: 500,
            instance_daily_quota: 50_000,
            quota_share: 0.5,
            on_demand_share: 0.2,
            request_timeout_secs: 30,
            connect_timeout_secs: 10,
            retry_min_delay_ms: 1_000,
            retry_max_delay_ms: 60_000,
            rate_limit_wait_ms: 20_000,
            bulk_import_threshold: 3_000,
            import_format: crate::marketo::csv::FileFormat::Csv,
        }
    }
}

impl MarketoSettings {
    /// Returns the REST base URL: `base_url`, or `https://<munchkin_id>.mktorest.com`.
    pub fn rest_base_url(&self) -> Option<String> {
        match (&self.base_url, &self.munchkin_id) {
            (Some(url), _) => Some(url.trim_end_matches('/').to_owned()),
            (None, Some(id)) => Some(format!("https://{id}.mktorest.com")),
            (None, None) => None,
        }
    }

    /// Returns the identity URL (`<base>/identity`).
    pub fn identity_url(&self) -> Option<String> {
        self.rest_base_url().map(|base| format!("{base}/identity"))
    }

    /// Returns the timeout of one REST call.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// Returns the connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Returns the Marketo client's configuration: base URL (or munchkin id), client id and
    /// secret, limits, time-outs and retries.
    ///
    /// # Errors
    ///
    /// A message naming the setting when the instance, the client id or the secret is missing
    /// or the base URL does not parse.
    pub fn client_config(&self) -> Result<crate::marketo::ClientConfig, String> {
        let base = self
            .rest_base_url()
            .ok_or_else(|| "marketo.base_url or marketo.munchkin_id is required".to_owned())?;
        let url: url::Url = base
            .parse()
            .map_err(|e| format!("marketo.base_url is not a valid url: {e}"))?;
        let client_id = self
            .client_id
            .clone()
            .ok_or_else(|| "marketo.client_id is required".to_owned())?;
        let secret = self.client_secret.clone().ok_or_else(|| {
            "the marketo client secret is required (MKSYNC__MARKETO__CLIENT_SECRET or marketo.client_secret_file)"
                .to_owned()
        })?;
        let mut config = crate::marketo::ClientConfig::new(url, client_id, secret);
        config.calls_per_20s = self.calls_per_20s;
        config.max_concurrency = self.max_concurrency as usize;
        config.daily_call_budget = u64::from(self.daily_call_budget);
        config.bulk_mb_budget = u64::from(self.bulk_mb_budget);
        config.request_timeout = Some(self.request_timeout());
        config.connect_timeout = Some(self.connect_timeout());
        config.retry = self.retry_policy();
        Ok(config)
    }

    /// Returns the retry policy: the configured back-off and 606 wait, the client's defaults
    /// otherwise.
    pub fn retry_policy(&self) -> crate::marketo::RetryPolicy {
        crate::marketo::RetryPolicy {
            min_delay: Duration::from_millis(self.retry_min_delay_ms),
            max_delay: Duration::from_millis(self.retry_max_delay_ms),
            rate_limit_wait: Duration::from_millis(self.rate_limit_wait_ms),
            ..crate::marketo::RetryPolicy::default()
        }
    }
}

/// The CRM adapter.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrmSettings {
    /// Which adapter: a name registered in `crm::registry::ADAPTERS` (today `sql`).
    pub adapter: String,
    /// Connection URL, required by adapters reached by URL (`sql`). A URL with a password is a secret: give it in `MKSYNC__CRM__URL` or
    /// `url_file`, never inline.
    pub url: Option<SecretString>,
    /// A file holding the connection URL.
    pub url_file: Option<PathBuf>,
    /// Adapter-specific options (per CRM object: table, primary key, modified column, soft-delete
    /// predicate, Marketo-id column, writable flag), parsed by the adapter. No secrets here.
    pub options: serde_json::Value,
}

impl Default for CrmSettings {
    fn default() -> Self {
        CrmSettings {
            adapter: "sql".to_owned(),
            url: None,
            url_file: None,
            options: serde_json::Value::Object(serde_json::Map::new()),
        }
    }
}

/// The state store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite://path` or `postgres://...`. A URL with a password goes in `MKSYNC__STORE__URL` or
    /// `url_file`.
    pub url: SecretString,
    /// A file holding the store URL.
    pub url_file: Option<PathBuf>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            url: SecretString::from("sqlite://state/marketo-sync.db"),
            url_file: None,
        }
    }
}

/// What happens in the CRM when Marketo deletes or merges away a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletePolicy {
    /// Delete the CRM record.
    Delete,
    /// Keep the CRM record and flag it (the adapter's deletion flag).
    Flag,
    /// Do nothing in the CRM.
    Ignore,
}

/// The sync cycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// Pause between cycles, in seconds, counted from the end of the previous cycle.
    pub interval_secs: u64,
    /// How far back each poll re-reads, in seconds, to catch late commits.
    pub overlap_secs: u64,
    /// The objects to sync; each has `mappings/<name>.toml`.
    pub objects: Vec<String>,
    /// The mapping-file directory, relative to the config directory.
    pub mappings_dir: PathBuf,
    /// What to do in the CRM when a lead is deleted in Marketo.
    pub lead_deletes: DeletePolicy,
    /// What to do with the CRM record of a lead merged away in Marketo.
    pub lead_merges: DeletePolicy,
    /// How long, in seconds, a cycle reuses the Describe of a Marketo company, opportunity or
    /// custom object (the lead is described every cycle; roles and salespersons once a day);
    /// 0 describes them every cycle.
    pub marketo_schema_ttl_secs: u64,
    /// How long, in seconds, the programs step waits between two browses of Marketo's programs
    /// (a new or renamed program reaches the CRM within this time; membership changes of synced
    /// programs do not wait for it); 0 browses every cycle.
    pub programs_browse_secs: u64,
    /// Hours between two full reads of the synced programs' members (one members query per
    /// 300 members and program), which remove from the CRM the members a program no longer has
    /// in Marketo (no activity reports a removal); 0 never repairs (`marketo-sync bootstrap
    /// --object program_members` still does).
    pub program_members_repair_hours: u64,
    /// Activities expected since an activity queue's watermark at which the queue is read by
    /// Bulk Activity Extract (one export job) instead of the activities feed (one call per 300);
    /// 0 never exports.
    pub activity_bulk_threshold: u64,
    /// The least time, in seconds, between two bulk exports of one activity queue. A queue
    /// expected to reach `activity_bulk_threshold` by its next export waits for it rather than
    /// reading the feed, so its activities arrive up to this late.
    pub activity_bulk_every_secs: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            interval_secs: 300,
            overlap_secs: 300,
            objects: Vec::new(),
            mappings_dir: PathBuf::from("mappings"),
            lead_deletes: DeletePolicy::Flag,
            lead_merges: DeletePolicy::Flag,
            marketo_schema_ttl_secs: 3600,
            programs_browse_secs: 3600,
            program_members_repair_hours: 24,
            activity_bulk_threshold: 30_000,
            activity_bulk_every_secs: 3600,
        }
    }
}

impl SyncSettings {
    /// Returns the pause between cycles.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }

    /// Returns the overlap window.
    pub fn overlap(&self) -> Duration {
        Duration::from_secs(self.overlap_secs)
    }
}

/// The HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Shared secret Marketo webhooks send: only from `MKSYNC__HTTP__WEBHOOK_SECRET` or
    /// `webhook_secret_file`. Without one the webhook endpoint is disabled.
    pub webhook_secret: Option<SecretString>,
    /// A file holding the webhook secret.
    pub webhook_secret_file: Option<PathBuf>,
    /// The header that carries the webhook secret.
    pub webhook_header: String,
    /// The token the status page, the JSON API and `/metrics` require (`Authorization: Bearer
    /// <token>`, or HTTP Basic auth with the token as the password): only from
    /// `MKSYNC__HTTP__AUTH_TOKEN` or `auth_token_file`. Without one they are open to anyone who
    /// can reach the listener (`/healthz` and `/readyz` always are).
    pub auth_token: Option<SecretString>,
    /// A file holding the access token.
    pub auth_token_file: Option<PathBuf>,
    /// How long, in milliseconds, the on-demand worker waits after a webhook for more to
    /// share one Get Leads call (at most 300 leads a batch); 0 syncs what is queued at once.
    pub webhook_batch_window_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            webhook_secret: None,
            webhook_secret_file: None,
            webhook_header: "x-marketo-sync-secret".to_owned(),
            auth_token: None,
            auth_token_file: None,
            webhook_batch_window_ms: 500,
        }
    }
}

/// The first, historical load.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapSettings {
    /// The earliest change to load per object (never before 2007-01-01); a date or an RFC 3339
    /// instant.
    #[serde(deserialize_with = "de_watermarks")]
    pub low_watermarks: BTreeMap<String, DateTime<Utc>>,
    /// The lead phase reads the members of this static list (by id) in one export instead of
    /// the leads created since the low watermark in 31-day windows. At most one of the four
    /// list settings.
    pub static_list_id: Option<i64>,
    /// As `static_list_id`, the static list by its exact name.
    pub static_list_name: Option<String>,
    /// As `static_list_id`, a smart list by id. Marketo lacks this filter on some
    /// subscriptions (1035): the lead phase then warns and falls back to the windows.
    pub smart_list_id: Option<i64>,
    /// As `smart_list_id`, the smart list by its exact name.
    pub smart_list_name: Option<String>,
}

/// The settings that name the lead phase's list, in the order [`BootstrapSettings::lead_list`]
/// reports them.
pub const LEAD_LIST_KEYS: [&str; 4] = [
    "bootstrap.static_list_id",
    "bootstrap.static_list_name",
    "bootstrap.smart_list_id",
    "bootstrap.smart_list_name",
];

impl BootstrapSettings {
    /// Returns the list the lead phase reads instead of its `createdAt` windows, if one is set.
    ///
    /// # Errors
    ///
    /// Returns the problem, naming its setting: two lists set at once (Marketo takes one lead
    /// filter per export), an empty name, or an id below 1.
    pub fn lead_list(&self) -> Result<Option<LeadList>, (&'static str, String)> {
        let lists = LeadList::by_kind(
            self.static_list_id,
            self.static_list_name.as_deref(),
            self.smart_list_id,
            self.smart_list_name.as_deref(),
        );
        let set: Vec<(&'static str, LeadList)> = LEAD_LIST_KEYS
            .into_iter()
            .zip(lists)
            .filter_map(|(key, list)| Some((key, list?)))
            .collect();
        let Some((key, list)) = set.first().cloned() else {
            return Ok(None);
        };
        if let Some((other, _)) = set.get(1) {
            return Err((
                key,
                format!(
                    "{key} and {other} are both set: the lead phase reads one list (Marketo \
                     takes one lead filter per export); keep one of them"
                ),
            ));
        }
        match &list {
            LeadList::StaticId(id) | LeadList::SmartId(id) if *id < 1 => Err((
                key,
                format!("{key} must be a list id (1 or more), got {id}"),
            )),
            LeadList::StaticName(name) | LeadList::SmartName(name) if name.trim().is_empty() => {
                Err((key, format!("{key} must not be empty")))
            }
            _ => Ok(Some(list)),
        }
    }

    /// Returns the low watermark of an object (2007-01-01 when unset).
    pub fn low_watermark(&self, object: &str) -> DateTime<Utc> {
        self.low_watermarks
            .get(object)
            .copied()
            .unwrap_or_else(earliest_watermark)
    }
}

fn de_watermarks<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, DateTime<Utc>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Toml(toml::value::Datetime),
    }
    let raw = BTreeMap::<String, Raw>::deserialize(deserializer)?;
    let mut out = BTreeMap::new();
    for (object, value) in raw {
        let text = match value {
            Raw::Text(s) => s,
            Raw::Toml(d) => d.to_string(),
        };
        let instant = parse_instant(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "low watermark of `{object}` is not a date or RFC 3339 instant: `{text}`"
            ))
        })?;
        out.insert(object, instant);
    }
    Ok(out)
}

/// Returns an instant parsed from a date, an RFC 3339 instant, or a naive datetime (taken as UTC).
pub fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%z") {
        return Some(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Where settings are read from.
#[derive(Debug, Clone)]
pub struct SettingsSource {
    /// The config directory holding `default.toml` and `<env>.toml`.
    pub dir: PathBuf,
    /// The environment name (`production`, `demo`, ...), selecting `<env>.toml`.
    pub env: Option<String>,
    /// The environment variables to read; `None` reads the process environment. Tests pass a
    /// map instead of mutating the process environment.
    pub vars: Option<HashMap<String, String>>,
}

impl SettingsSource {
    /// Returns a source reading `dir` with the process environment.
    pub fn new(dir: impl Into<PathBuf>, env: Option<&str>) -> Self {
        SettingsSource {
            dir: dir.into(),
            env: env.map(str::to_owned),
            vars: None,
        }
    }

    /// Returns the source with an injected environment.
    pub fn with_vars(mut self, vars: HashMap<String, String>) -> Self {
        self.vars = Some(vars);
        self
    }

    fn vars(&self) -> HashMap<String, String> {
        match &self.vars {
            Some(v) => v.clone(),
            None => std::env::vars().collect(),
        }
    }
}

/// One settings file as read.
struct Layer {
    name: String,
    text: String,
    /// The text with unknown keys and wrongly typed values blanked out.
    cleaned: String,
}

/// Returns the settings and every problem found in them (warnings included). Settings are `None`
/// when any error was found.
pub fn load_settings(source: &SettingsSource) -> (Option<Settings>, Vec<Problem>) {
    let (settings, problems) = check_settings(source);
    if problems.iter().any(Problem::is_error) {
        (None, problems)
    } else {
        (settings, problems)
    }
}

/// The settings keys that hold secrets: a problem about one never shows its value.
pub(crate) const SECRET_KEYS: &[&str] = &[
    "marketo.client_secret",
    "http.webhook_secret",
    "http.auth_token",
    "crm.url",
    "store.url",
];

/// Returns every problem of the settings and, unless the files could not be read at all (a
/// missing file, a syntax error, a required key missing), the settings as far as they could be
/// read: unknown keys and wrongly typed values are reported and left out (defaults apply), and the
/// remaining checks still run, so that one pass shows every problem.
pub fn check_settings(source: &SettingsSource) -> (Option<Settings>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut layers = Vec::new();
    let mut unreadable = false;
    let default_path = source.dir.join("default.toml");
    match std::fs::read_to_string(&default_path) {
        Ok(text) => layers.push(Layer {
            name: display(&default_path),
            text,
            cleaned: String::new(),
        }),
        Err(error) => {
            unreadable = true;
            problems.push(
                Problem::error(
                    display(&default_path),
                    "",
                    format!("cannot read the default settings file: {error}"),
                )
                .with_help("pass the config directory with --config DIR"),
            );
        }
    }
    if let Some(env) = &source.env {
        let path = source.dir.join(format!("{env}.toml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => layers.push(Layer {
                name: display(&path),
                text,
                cleaned: String::new(),
            }),
            Err(error) => {
                unreadable = true;
                problems.push(Problem::error(
                    display(&path),
                    "",
                    format!("cannot read the settings file of environment `{env}`: {error}"),
                ));
            }
        }
    }

    // Each file on its own first: this gives exact lines for syntax errors, unknown keys and
    // wrong types, and catches secrets written inline. The offending entries are blanked out of
    // the text that is then merged, so the other checks still run.
    for layer in &mut layers {
        let parsed = parse_lenient::<Settings>(&layer.name, &layer.text);
        match (parsed.value, parsed.cleaned) {
            (Some(partial), Some(cleaned)) => {
                check_inline_secrets(layer, &partial, &mut problems);
                layer.cleaned = cleaned;
            }
            _ => unreadable = true,
        }
        for mut problem in parsed.problems {
            // A secret of the wrong type would otherwise be echoed in the message.
            if SECRET_KEYS.contains(&problem.key.as_str()) {
                problem.reason = "must be text (the value is not shown)".to_owned();
            }
            problems.push(problem);
        }
    }
    let vars = source.vars();
    let bad_vars = check_env_keys(&vars, &mut problems);
    if unreadable {
        return (None, problems);
    }

    let mut builder = config::Config::builder();
    for layer in &layers {
        builder = builder.add_source(config::File::from_str(
            &layer.cleaned,
            config::FileFormat::Toml,
        ));
    }
    let env_vars: HashMap<String, String> = vars
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")) && !bad_vars.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Values stay strings (no `try_parsing`): it would turn a secret like `007` or `1e5` into a
    // number and back into different text. The one list, `sync.objects`, is split here.
    let objects_var = format!("{ENV_PREFIX}__SYNC__OBJECTS");
    let mut scalar_vars = env_vars.clone();
    let objects_override = scalar_vars.remove(&objects_var).map(|list| {
        list.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect::<Vec<String>>()
    });
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(Some(scalar_vars)),
    );
    if let Some(objects) = objects_override {
        builder = match builder.set_override("sync.objects", objects) {
            Ok(b) => b,
            Err(error) => {
                problems.push(Problem::error(
                    "environment",
                    objects_var,
                    error.to_string(),
                ));
                return (None, problems);
            }
        };
    }
    let merged = builder
        .build()
        .and_then(|c| c.try_deserialize::<Settings>());
    let mut settings = match merged {
        Ok(s) => s,
        Err(error) => {
            let key = env_key_of(&error);
            let var = format!(
                "{ENV_PREFIX}__{}",
                key.replace('.', "__").to_ascii_uppercase()
            );
            let key = if env_vars.contains_key(&var) {
                var
            } else {
                key
            };
            problems.push(Problem::error("environment", key, env_reason(&error)));
            return (None, problems);
        }
    };

    let place = |key: &str| -> (String, Option<(&str, Range<usize>)>) {
        let env_name = format!(
            "{ENV_PREFIX}__{}",
            key.replace('.', "__").to_ascii_uppercase()
        );
        if env_vars.contains_key(&env_name) {
            return (format!("environment ({env_name})"), None);
        }
        let path: Vec<Segment> = key.split('.').map(|s| Segment::Key(s.to_owned())).collect();
        for layer in layers.iter().rev() {
            if let Some(span) = span_of_path(&layer.text, &path) {
                return (layer.name.clone(), Some((layer.text.as_str(), span)));
            }
        }
        match layers.first() {
            Some(l) => (l.name.clone(), None),
            None => ("settings".to_owned(), None),
        }
    };
    check_semantics(&settings, &place, &mut problems);
    resolve_secret_files(&mut settings, &source.dir, &place, &mut problems);
    (Some(settings), problems)
}

/// Returns the settings for the commands that only read and write the state store (`status`,
/// `errors`, `conflicts`, `pause`, `resume`): the files must be readable and the `[store]`
/// settings valid, but the Marketo and CRM credentials are not needed and not checked.
///
/// # Errors
///
/// [`super::ConfigError::Invalid`] with the problems that keep the store from being opened.
pub fn load_for_store(source: &SettingsSource) -> Result<Settings, super::ConfigError> {
    let (settings, problems) = check_settings(source);
    let store_problems: Vec<Problem> = problems
        .iter()
        .filter(|p| p.is_error())
        .filter(|p| settings.is_none() || p.key.starts_with("store.") || p.key.contains("STORE__"))
        .cloned()
        .collect();
    match settings {
        Some(settings) if store_problems.is_empty() => Ok(settings),
        _ => Err(super::ConfigError::Invalid(store_problems)),
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn env_key_of(error: &config::ConfigError) -> String {
    match error {
        config::ConfigError::Type { key: Some(k), .. } => k.clone(),
        config::ConfigError::At { key: Some(k), .. } => k.clone(),
        _ => String::new(),
    }
}

const SECTIONS: &[(&str, &[&str])] = &[
    (
        "marketo",
        &[
            "base_url",
            "munchkin_id",
            "client_id",
            "client_secret",
            "client_secret_file",
            "calls_per_20s",
            "max_concurrency",
            "daily_call_budget",
            "bulk_mb_budget",
            "instance_daily_quota",
            "quota_share",
            "on_demand_share",
            "request_timeout_secs",
            "connect_timeout_secs",
            "retry_min_delay_ms",
            "retry_max_delay_ms",
            "rate_limit_wait_ms",
            "bulk_import_threshold",
            "import_format",
        ],
    ),
    ("crm", &["adapter", "url", "url_file", "options"]),
    ("store", &["url", "url_file"]),
    (
        "sync",
        &[
            "interval_secs",
            "overlap_secs",
            "objects",
            "mappings_dir",
            "lead_deletes",
            "lead_merges",
            "marketo_schema_ttl_secs",
            "programs_browse_secs",
            "program_members_repair_hours",
            "activity_bulk_threshold",
            "activity_bulk_every_secs",
        ],
    ),
    (
        "http",
        &[
            "listen",
            "webhook_secret",
            "webhook_secret_file",
            "webhook_header",
            "auth_token",
            "auth_token_file",
            "webhook_batch_window_ms",
        ],
    ),
    (
        "bootstrap",
        &[
            "low_watermarks",
            "static_list_id",
            "static_list_name",
            "smart_list_id",
            "smart_list_name",
        ],
    ),
];

/// Unknown `MKSYNC__*` variables are reported with the closest valid name.
fn check_env_keys(vars: &HashMap<String, String>, problems: &mut Vec<Problem>) -> Vec<String> {
    let mut bad = Vec::new();
    let prefix = format!("{ENV_PREFIX}__");
    let mut names: Vec<&String> = vars.keys().filter(|k| k.starts_with(&prefix)).collect();
    names.sort();
    for name in names {
        let rest = name[prefix.len()..].to_ascii_lowercase();
        let parts: Vec<&str> = rest.split("__").collect();
        let section = parts.first().copied().unwrap_or_default();
        let Some((_, keys)) = SECTIONS.iter().find(|(s, _)| *s == section) else {
            let known: Vec<String> = SECTIONS
                .iter()
                .map(|(s, _)| format!("{prefix}{}", s.to_ascii_uppercase()))
                .collect();
            bad.push(name.clone());
            problems.push(Problem::error(
                "environment",
                name.clone(),
                format!(
                    "unknown settings section `{section}`{}",
                    did_you_mean(&name[..], known.iter().map(String::as_str))
                ),
            ));
            continue;
        };
        let key = parts.get(1).copied().unwrap_or_default();
        // Nested options (crm.options.*, bootstrap.low_watermarks.*) are free-form.
        if (section == "crm" && key == "options")
            || (section == "bootstrap" && key == "low_watermarks")
        {
            continue;
        }
        if !keys.contains(&key) || parts.len() != 2 {
            bad.push(name.clone());
            let valid: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "{prefix}{}__{}",
                        section.to_ascii_uppercase(),
                        k.to_ascii_uppercase()
                    )
                })
                .collect();
            problems.push(Problem::error(
                "environment",
                name.clone(),
                format!(
                    "unknown setting `{section}.{key}`{}",
                    did_you_mean(name, valid.iter().map(String::as_str))
                ),
            ));
        }
    }
    bad
}

fn url_has_password(url: &SecretString) -> bool {
    match url::Url::parse(url.expose_secret()) {
        Ok(parsed) => parsed.password().is_some(),
        Err(_) => {
            // Not a URL: a DSN like `host=... password=...` may still carry one.
            url.expose_secret()
                .to_ascii_lowercase()
                .contains("password")
        }
    }
}

fn check_inline_secrets(layer: &Layer, partial: &Settings, problems: &mut Vec<Problem>) {
    let mut inline = |key: &str, env: &str, file_key: &str| {
        let path: Vec<Segment> = key.split('.').map(|s| Segment::Key(s.to_owned())).collect();
        problems.push(
            Problem::error(
                layer.name.clone(),
                key,
                format!(
                    "a secret must not be written inline in a settings file; set {env} or \
                     `{file_key}` (a file holding the secret) instead"
                ),
            )
            .at(&layer.text, span_of_path(&layer.text, &path)),
        );
    };
    if partial.marketo.client_secret.is_some() {
        inline(
            "marketo.client_secret",
            "MKSYNC__MARKETO__CLIENT_SECRET",
            "marketo.client_secret_file",
        );
    }
    if partial.http.webhook_secret.is_some() {
        inline(
            "http.webhook_secret",
            "MKSYNC__HTTP__WEBHOOK_SECRET",
            "http.webhook_secret_file",
        );
    }
    if partial.http.auth_token.is_some() {
        inline(
            "http.auth_token",
            "MKSYNC__HTTP__AUTH_TOKEN",
            "http.auth_token_file",
        );
    }
    if partial.crm.url.as_ref().is_some_and(url_has_password) {
        inline("crm.url", "MKSYNC__CRM__URL", "crm.url_file");
    }
    if url_has_password(&partial.store.url) {
        inline("store.url", "MKSYNC__STORE__URL", "store.url_file");
    }
}

/// Returns the file that sets a key, with the file's text and the key's span when it is a file.
type Place<'a> = dyn Fn(&str) -> (String, Option<(&'a str, Range<usize>)>) + 'a;

fn push(problems: &mut Vec<Problem>, place: &Place<'_>, key: &str, reason: String) {
    let (file, at) = place(key);
    let problem = Problem::error(file, key, reason);
    problems.push(match at {
        Some((text, span)) => problem.at_span(text, span),
        None => problem,
    });
}

fn check_semantics(s: &Settings, place: &Place<'_>, problems: &mut Vec<Problem>) {
    let m = &s.marketo;
    if !(1..=100).contains(&m.calls_per_20s) {
        push(
            problems,
            place,
            "marketo.calls_per_20s",
            format!(
                "must be between 1 and 100 (Marketo allows 100 calls per 20 seconds), got {}",
                m.calls_per_20s
            ),
        );
    }
    if !(1..=10).contains(&m.max_concurrency) {
        push(
            problems,
            place,
            "marketo.max_concurrency",
            format!(
                "must be between 1 and 10 (Marketo allows 10 concurrent calls), got {}",
                m.max_concurrency
            ),
        );
    }
    if m.daily_call_budget == 0 {
        push(
            problems,
            place,
            "marketo.daily_call_budget",
            "must be at least 1".to_owned(),
        );
    }
    for (name, share) in [
        ("marketo.quota_share", m.quota_share),
        ("marketo.on_demand_share", m.on_demand_share),
    ] {
        if !(share > 0.0 && share <= 1.0) {
            push(
                problems,
                place,
                name,
                format!("must be a fraction above 0 and at most 1, got {share}"),
            );
        }
    }
    if m.bulk_mb_budget == 0 || m.bulk_mb_budget > 500 {
        push(
            problems,
            place,
            "marketo.bulk_mb_budget",
            format!(
                "must be between 1 and 500 (Marketo's daily bulk-extract quota), got {}",
                m.bulk_mb_budget
            ),
        );
    }
    if m.request_timeout_secs == 0 {
        push(
            problems,
            place,
            "marketo.request_timeout_secs",
            "must be at least 1".to_owned(),
        );
    }
    if m.connect_timeout_secs == 0 {
        push(
            problems,
            place,
            "marketo.connect_timeout_secs",
            "must be at least 1".to_owned(),
        );
    }
    if m.retry_min_delay_ms == 0 || m.retry_min_delay_ms > m.retry_max_delay_ms {
        push(
            problems,
            place,
            "marketo.retry_min_delay_ms",
            format!(
                "must be at least 1 and at most retry_max_delay_ms ({}), got {}",
                m.retry_max_delay_ms, m.retry_min_delay_ms
            ),
        );
    }
    if m.rate_limit_wait_ms == 0 {
        push(
            problems,
            place,
            "marketo.rate_limit_wait_ms",
            "must be at least 1".to_owned(),
        );
    }
    match (&m.base_url, &m.munchkin_id) {
        (None, None) => push(
            problems,
            place,
            "marketo.base_url",
            "set either `marketo.base_url` or `marketo.munchkin_id`".to_owned(),
        ),
        (Some(url), _) => match url::Url::parse(url) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
            Ok(u) => push(
                problems,
                place,
                "marketo.base_url",
                format!("must be an http(s) URL, got scheme `{}`", u.scheme()),
            ),
            Err(error) => push(
                problems,
                place,
                "marketo.base_url",
                format!("is not a URL: {error}"),
            ),
        },
        (None, Some(id)) => {
            let ok = id.len() == 11
                && id.chars().enumerate().all(|(i, c)| {
                    if i == 3 || i == 7 {
                        c == '-'
                    } else {
                        c.is_ascii_alphanumeric()
                    }
                });
            if !ok {
                push(
                    problems,
                    place,
                    "marketo.munchkin_id",
                    format!("`{id}` is not a munchkin id (expected the form 123-ABC-456)"),
                );
            }
        }
    }
    if m.client_id.as_deref().is_none_or(|c| c.trim().is_empty()) {
        push(
            problems,
            place,
            "marketo.client_id",
            "is required (the LaunchPoint client id)".to_owned(),
        );
    }
    if m.client_secret.is_none() && m.client_secret_file.is_none() {
        push(
            problems,
            place,
            "marketo.client_secret",
            "is required: set MKSYNC__MARKETO__CLIENT_SECRET or `marketo.client_secret_file`"
                .to_owned(),
        );
    }
    match crate::crm::registry::find(&s.crm.adapter) {
        Err(_) => {
            let known = crate::crm::registry::ADAPTERS.iter().map(|a| a.name);
            push(
                problems,
                place,
                "crm.adapter",
                format!(
                    "unknown CRM adapter `{}`{} (known: {})",
                    s.crm.adapter,
                    did_you_mean(&s.crm.adapter, known),
                    crate::crm::registry::known()
                ),
            );
        }
        Ok(adapter) => {
            if adapter.connection == crate::crm::registry::Connection::Url
                && s.crm.url.is_none()
                && s.crm.url_file.is_none()
            {
                push(
                    problems,
                    place,
                    "crm.url",
                    format!(
                        "is required by the `{}` adapter: set MKSYNC__CRM__URL, `crm.url_file` or (without a password) `crm.url`",
                        adapter.name
                    ),
                );
            }
        }
    }
    if !s.crm.options.is_object() {
        push(problems, place, "crm.options", "must be a table".to_owned());
    }
    let store_url = s.store.url.expose_secret();
    if s.store.url_file.is_none()
        && !["sqlite:", "postgres:", "postgresql:"]
            .iter()
            .any(|p| store_url.starts_with(p))
    {
        push(
            problems,
            place,
            "store.url",
            "must start with `sqlite:` or `postgres://`".to_owned(),
        );
    }
    if s.sync.interval_secs == 0 {
        push(
            problems,
            place,
            "sync.interval_secs",
            "must be at least 1".to_owned(),
        );
    }
    if s.sync.overlap_secs > 86_400 {
        push(
            problems,
            place,
            "sync.overlap_secs",
            format!(
                "must be at most 86400 (one day), got {}",
                s.sync.overlap_secs
            ),
        );
    }
    if s.sync.activity_bulk_every_secs > 30 * 86_400 {
        push(
            problems,
            place,
            "sync.activity_bulk_every_secs",
            format!(
                "must be at most 2592000 (30 days: Marketo prunes most activities after 90 days), got {}",
                s.sync.activity_bulk_every_secs
            ),
        );
    }
    if s.sync.objects.is_empty() {
        push(
            problems,
            place,
            "sync.objects",
            "lists no object to sync".to_owned(),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for object in &s.sync.objects {
        if !seen.insert(object) {
            push(
                problems,
                place,
                "sync.objects",
                format!("lists `{object}` twice"),
            );
        }
        if object.is_empty()
            || !object
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            push(
                problems,
                place,
                "sync.objects",
                format!("`{object}` is not a valid object name (letters, digits, `_` and `-`)"),
            );
        }
    }
    if s.http.webhook_batch_window_ms > 5_000 {
        push(
            problems,
            place,
            "http.webhook_batch_window_ms",
            format!(
                "must be at most 5000 (a webhook's lead should sync within seconds), got {}",
                s.http.webhook_batch_window_ms
            ),
        );
    }
    if s.http.webhook_header.trim().is_empty() {
        push(
            problems,
            place,
            "http.webhook_header",
            "must not be empty".to_owned(),
        );
    }
    if let Err((key, reason)) = s.bootstrap.lead_list() {
        push(problems, place, key, reason);
    }
    for (object, mark) in &s.bootstrap.low_watermarks {
        let key = format!("bootstrap.low_watermarks.{object}");
        if *mark < earliest_watermark() {
            push(
                problems,
                place,
                &key,
                format!(
                    "is {}, before 2007-01-01, the earliest data Marketo can hold",
                    mark.format("%Y-%m-%d")
                ),
            );
        }
        if *mark > Utc::now() {
            push(problems, place, &key, "is in the future".to_owned());
        }
        if !s.sync.objects.contains(object) {
            push(
                problems,
                place,
                &key,
                format!(
                    "names `{object}`, which is not in `sync.objects`{}",
                    did_you_mean(object, s.sync.objects.iter().map(String::as_str))
                ),
            );
        }
    }
}

fn read_secret(dir: &Path, file: &Path) -> Result<SecretString, String> {
    let path = if file.is_absolute() {
        file.to_path_buf()
    } else {
        dir.join(file)
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let trimmed = text.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                Err(format!("the secret file {} is empty", path.display()))
            } else {
                Ok(SecretString::from(trimmed.to_owned()))
            }
        }
        Err(error) => Err(format!(
            "cannot read the secret file {}: {error}",
            path.display()
        )),
    }
}

fn resolve_secret_files(
    s: &mut Settings,
    dir: &Path,
    place: &Place<'_>,
    problems: &mut Vec<Problem>,
) {
    let mut resolve = |value: &mut Option<SecretString>,
                       file: &Option<PathBuf>,
                       key: &str,
                       file_key: &str| {
        let Some(file) = file else { return };
        if value.is_some() {
            push(
                problems,
                place,
                file_key,
                format!("both `{key}` (from the environment) and `{file_key}` are set; keep one"),
            );
            return;
        }
        match read_secret(dir, file) {
            Ok(secret) => *value = Some(secret),
            Err(reason) => push(problems, place, file_key, reason),
        }
    };
    resolve(
        &mut s.marketo.client_secret,
        &s.marketo.client_secret_file,
        "marketo.client_secret",
        "marketo.client_secret_file",
    );
    resolve(
        &mut s.http.webhook_secret,
        &s.http.webhook_secret_file,
        "http.webhook_secret",
        "http.webhook_secret_file",
    );
    resolve(
        &mut s.http.auth_token,
        &s.http.auth_token_file,
        "http.auth_token",
        "http.auth_token_file",
    );
    resolve(&mut s.crm.url, &s.crm.url_file, "crm.url", "crm.url_file");
    let mut store = None;
    resolve(&mut store, &s.store.url_file, "store.url", "store.url_file");
    if let Some(url) = store {
        s.store.url = url;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap(text: &str) -> BootstrapSettings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_lead_list_is_read_from_any_one_of_its_four_keys() {
        assert_eq!(bootstrap("").lead_list(), Ok(None));
        assert_eq!(
            bootstrap("static_list_id = 1001").lead_list(),
            Ok(Some(LeadList::StaticId(1001)))
        );
        assert_eq!(
            bootstrap("static_list_name = \"Newsletter\"").lead_list(),
            Ok(Some(LeadList::StaticName("Newsletter".into())))
        );
        assert_eq!(
            bootstrap("smart_list_id = 7").lead_list(),
            Ok(Some(LeadList::SmartId(7)))
        );
        assert_eq!(
            bootstrap("smart_list_name = \"Hot Leads\"").lead_list(),
            Ok(Some(LeadList::SmartName("Hot Leads".into())))
        );
    }

    #[test]
    fn two_lists_an_empty_name_or_a_bad_id_name_their_keys() {
        let (key, reason) = bootstrap("static_list_name = \"Newsletter\"\nsmart_list_id = 7")
            .lead_list()
            .unwrap_err();
        assert_eq!(key, "bootstrap.static_list_name");
        assert!(
            reason.contains("bootstrap.static_list_name")
                && reason.contains("bootstrap.smart_list_id"),
            "{reason}"
        );
        let (key, reason) = bootstrap("smart_list_name = \" \"")
            .lead_list()
            .unwrap_err();
        assert_eq!(key, "bootstrap.smart_list_name");
        assert!(reason.contains("must not be empty"), "{reason}");
        let (key, reason) = bootstrap("static_list_id = 0").lead_list().unwrap_err();
        assert_eq!(key, "bootstrap.static_list_id");
        assert!(reason.contains("got 0"), "{reason}");
    }
}
